//! Everything repovault prints goes through here, so that three rules hold everywhere:
//!
//! - **A closed pipe ends output quietly.** `repovault snapshots | head -1` closes stdout
//!   early; further lines are dropped and the command goes on (a `run` still finishes its
//!   backups). Any other write error (`> /dev/full`) is returned, so the command fails
//!   with one error line.
//! - **Names from outside are escaped once, at the end.** Repository names and paths come
//!   from disks and databases and may hold escape sequences or newlines. Messages are built
//!   with them raw; [`escape`] is applied when a line is printed, so a hostile name can
//!   neither drive the terminal nor split a "one line per problem" message, and nothing is
//!   escaped twice.
//! - **One mode for people or machines.** With `--log-format json` every line on stderr is
//!   a JSON object (notices and fatal errors become log events); `-q` keeps only errors.

use std::{
    borrow::Cow,
    fmt::Write as _,
    io::{self, Write},
    sync::atomic::{AtomicBool, Ordering},
};

static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);
static JSON_LOGS: AtomicBool = AtomicBool::new(false);
static QUIET: AtomicBool = AtomicBool::new(false);

/// Sets the mode for the whole process; `main` calls it once, before any command runs.
pub fn init(json_logs: bool, quiet: bool) {
    JSON_LOGS.store(json_logs, Ordering::Relaxed);
    QUIET.store(quiet, Ordering::Relaxed);
}

/// `--log-format json`: stderr carries JSON lines only.
pub fn json_logs() -> bool {
    JSON_LOGS.load(Ordering::Relaxed)
}

/// `-q`: only errors on stderr, no progress.
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// Escapes control characters (ESC, newline, CR, DEL, C1 controls ...) as `\n`, `\x1b`,
/// `\u{9b}`, and a backslash as `\\`, so that what is shown tells a name holding the four
/// characters `\x1b` from one holding an escape character. Messages are built raw (no `{:?}`
/// of names) and escaped here, once.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() || c == '\\') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() && (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A path for a message, bytes that are not UTF-8 shown as `\xNN` (escaping of control
/// characters happens when the line is printed).
pub fn path(p: &std::path::Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let bytes = p.as_os_str().as_bytes();
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => {
            let mut out = String::new();
            for chunk in bytes.utf8_chunks() {
                out.push_str(chunk.valid());
                for b in chunk.invalid() {
                    let _ = write!(out, "\\x{b:02x}");
                }
            }
            out
        }
    }
}

fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return Ok(());
    }
    let mut stdout = io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
            STDOUT_CLOSED.store(true, Ordering::Relaxed);
            Ok(())
        }
        Err(e) => Err(anyhow::Error::new(e).context("writing to standard output")),
    }
}

/// One line of a result for people on stdout (a table row, a summary line), escaped.
pub fn line(text: &str) -> anyhow::Result<()> {
    let mut text = escape(text).into_owned();
    text.push('\n');
    write_stdout(text.as_bytes())
}

/// A result for machines on stdout: pretty JSON followed by a newline.
/// Streamed: a report of a million repositories is never held as one string.
pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return Ok(());
    }
    let mut out = io::BufWriter::with_capacity(1 << 16, PipeAware(io::stdout().lock()));
    let written = serde_json::to_writer_pretty(&mut out, value)
        .map_err(io::Error::from)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    written.map_err(|e| anyhow::Error::new(e).context("writing to standard output"))
}

/// Stdout that takes a closed pipe for the end of output: what follows is dropped.
struct PipeAware<W: Write>(W);

impl<W: Write> Write for PipeAware<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if STDOUT_CLOSED.load(Ordering::Relaxed) {
            return Ok(buf.len());
        }
        match self.0.write(buf) {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                STDOUT_CLOSED.store(true, Ordering::Relaxed);
                Ok(buf.len())
            }
            other => other,
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.0.flush() {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                STDOUT_CLOSED.store(true, Ordering::Relaxed);
                Ok(())
            }
            other => other,
        }
    }
}

/// A result for machines on stdout as one JSON line (for `--log-format json` streams).
pub fn json_line<T: serde::Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    let mut text = serde_json::to_string(value)?;
    text.push('\n');
    write_stdout(text.as_bytes())
}

/// Writes one line to stderr; a failure to write there is ignored (there is nowhere left to
/// report it), never a panic.
fn stderr_line(text: &str) {
    let _ = writeln!(io::stderr().lock(), "{}", escape(text));
}

/// A notice for people (a store created, a lock held by another run, a restore done): on
/// stderr, silenced by `-q`, a JSON log event with `--log-format json`.
pub fn notice(message: &str) {
    if quiet() {
        return;
    }
    if json_logs() {
        tracing::warn!(target: "repovault", "{message}");
    } else {
        stderr_line(message);
    }
}

/// A notice about one repository (`repo` is a field of its JSON event).
pub fn repo_notice(repo: &str, message: &str) {
    if quiet() {
        return;
    }
    if json_logs() {
        tracing::warn!(target: "repovault", repo, "{message}");
    } else {
        stderr_line(&format!("repository {repo}: {message}"));
    }
}

/// An error line: `error: ...` on stderr, or a JSON event at level ERROR. Never silenced.
pub fn error(message: &str) {
    if json_logs() && !tracing::dispatcher::has_been_set() {
        // Before logging is set up (a bad config file, bad flags), the event is written here
        // in the shape the JSON log lines have.
        let event = serde_json::json!({
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "level": "ERROR",
            "fields": {"message": message},
            "target": "repovault",
        });
        let _ = writeln!(io::stderr().lock(), "{event}");
    } else if json_logs() {
        tracing::error!(target: "repovault", "{message}");
    } else {
        stderr_line(&format!("error: {message}"));
    }
}

/// An error about one repository: names it in the text and, as JSON, in a `repo` field.
pub fn repo_error(repo: &str, message: &str) {
    if json_logs() {
        tracing::error!(target: "repovault", repo, result = "failed", error = message, "repository failed");
    } else {
        stderr_line(&format!("error: repository {repo}: {message}"));
    }
}

/// A progress bar on stderr, shown only on a terminal and never with `-q` or JSON logs.
pub fn progress_bar(total: u64, template: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if quiet() || json_logs() || !io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(template).unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(250));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_once() {
        assert_eq!(escape("team/app.git"), "team/app.git");
        assert_eq!(escape("a\nb"), "a\\nb");
        assert_eq!(escape("x\x1b[31mred"), "x\\x1b[31mred");
        assert_eq!(escape("c1\u{9b}"), "c1\\u{9b}");
        // A backslash is escaped too, so an escape character and the text `\x1b` differ.
        assert_eq!(escape("a\\x1b"), "a\\\\x1b");
        assert_eq!(escape("ünïcødé"), "ünïcødé");
    }

    #[test]
    fn paths_that_are_not_utf8_show_their_bytes() {
        use std::os::unix::ffi::OsStrExt;
        let p = std::path::Path::new(std::ffi::OsStr::from_bytes(b"/srv/\xffx"));
        assert_eq!(path(p), "/srv/\\xffx");
    }
}
