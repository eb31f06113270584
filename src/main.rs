//! The `repovault` binary: parses the command line, sets up logging, runs one command and
//! turns its outcome into the exit code the contract defines.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};
use repovault::{
    commands::{self, Context, Outcome},
    config::Config,
    error::is_usage,
    output,
};

#[derive(Debug, Parser)]
#[command(name = "repovault", version, about = "Incremental backup of a forge's git repositories")]
struct Cli {
    /// TOML config file.
    #[arg(long, global = true, env = "REPOVAULT_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    /// More log output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    verbose: u8,
    /// Errors only.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create an empty store.
    Init(commands::init::InitArgs),
    /// Back up one repository now (incremental against its latest snapshot).
    Backup(commands::backup::BackupArgs),
    /// List snapshots, oldest first.
    Snapshots(commands::snapshots::SnapshotsArgs),
    /// Rebuild a repository as it was at a snapshot.
    Restore(commands::restore::RestoreArgs),
    /// Check the store's integrity.
    Verify(commands::verify::VerifyArgs),
    /// The nightly job: back up every repository that changed.
    Run(commands::run::RunArgs),
    /// Freshness: how far each repository's latest snapshot is behind its source.
    Lag(commands::lag::LagArgs),
    /// Drop snapshots (a damaged one, or one not wanted).
    Forget(commands::forget::ForgetArgs),
    /// Apply a retention policy: forget the snapshots it does not keep and delete the data no
    /// snapshot names, safely while backups run (--dry-run: only say what it would do).
    Prune(commands::prune::PruneArgs),
    /// The remote end of an ssh:// store (run by ssh for a client, not by people).
    #[command(hide = true)]
    Serve(commands::serve::ServeArgs),
    /// Create or upgrade the PostgreSQL tables of the change feed and the scheduler.
    Migrate(commands::migrate::MigrateArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return bad_command_line(&e),
    };
    // Until the config is read, errors are plain text (or JSON when the flag says so).
    output::init(matches!(cli.log_format, Some(LogFormat::Json)), cli.quiet);
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => return report(&e),
    };
    let format = match (cli.log_format, config.log_format.as_deref()) {
        (Some(f), _) => f,
        (None, Some("json")) => LogFormat::Json,
        (None, Some("text") | None) => LogFormat::Text,
        (None, Some(other)) => {
            output::error(&format!("config: log_format must be \"text\" or \"json\", not {other:?}"));
            return ExitCode::from(2);
        }
    };
    let quiet = cli.quiet || (cli.verbose == 0 && config.quiet.unwrap_or(false));
    let verbose = if cli.verbose > 0 { cli.verbose } else { config.verbose.unwrap_or(0) };
    let json = matches!(format, LogFormat::Json);
    output::init(json, quiet);
    init_logging(format, verbose, quiet);
    let ctx = Context { config, scratch_dir: None, log_json: json, quiet };
    let result = match &cli.command {
        Command::Init(args) => commands::init::run(&ctx, args),
        Command::Backup(args) => commands::backup::run(&ctx, args),
        Command::Snapshots(args) => commands::snapshots::run(&ctx, args),
        Command::Restore(args) => commands::restore::run(&ctx, args),
        Command::Verify(args) => commands::verify::run(&ctx, args),
        Command::Run(args) => commands::run::run(&ctx, args),
        Command::Lag(args) => commands::lag::run(&ctx, args),
        Command::Forget(args) => commands::forget::run(&ctx, args),
        Command::Prune(args) => commands::prune::run(&ctx, args),
        Command::Migrate(args) => commands::migrate::run(&ctx, args),
        Command::Serve(args) => commands::serve::run(&ctx, args),
    };
    match result {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::PartlyFailed) => ExitCode::from(1),
        Ok(Outcome::Damaged) => ExitCode::from(3),
        Ok(Outcome::Stale) => ExitCode::from(4),
        Err(e) => report(&e),
    }
}

/// Help and version go to stdout; a command line clap cannot parse is exit 2, said as clap
/// says it, or as one JSON error event when JSON logs were asked for.
fn bad_command_line(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    if json_logs_asked() {
        output::init(true, false);
        // clap's text: the error (perhaps over several lines), a blank line, then usage.
        let text = e.render().to_string();
        let what: Vec<&str> = text.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
        let what = what.join(" ");
        output::error(&format!("{} (see --help)", what.strip_prefix("error: ").unwrap_or(&what)));
    } else {
        let _ = e.print();
    }
    ExitCode::from(2)
}

/// Whether `--log-format json` (flag or config file) was asked for, read without clap: for
/// reporting a command line that clap refused.
fn json_logs_asked() -> bool {
    let args: Vec<String> = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
    let flag = args.iter().position(|a| a == "--log-format").and_then(|i| args.get(i + 1)).map(String::as_str);
    if flag == Some("json") || args.iter().any(|a| a == "--log-format=json") {
        return true;
    }
    let config = std::env::var_os("REPOVAULT_CONFIG").map(PathBuf::from);
    flag.is_none() && Config::load(config.as_deref()).is_ok_and(|c| c.log_format.as_deref() == Some("json"))
}

/// One readable line per error: the context chain joined, no backtrace.
fn report(err: &anyhow::Error) -> ExitCode {
    output::error(&format!("{err:#}"));
    ExitCode::from(if is_usage(err) { 2 } else { 1 })
}

fn init_logging(format: LogFormat, verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        // Machines reading JSON want one line per repository result, which is info.
        (false, 0) if matches!(format, LogFormat::Json) => "info",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, _) => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("REPOVAULT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("repovault={level}")));
    // Colours only for a person at a terminal; a log file or journal gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
