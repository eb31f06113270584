//! Running the `hg` command: the one way repovault reads and writes Mercurial.
//!
//! Every call gets a clean environment and the same options, because the repositories are
//! the forge's customers' and hg would otherwise act on their configuration:
//! - `HGPLAIN=1`, `HGRCPATH=` (empty): no user or system configuration, aliases or
//!   defaults; `HGENCODING=utf-8`: names as UTF-8 in JSON output.
//! - `HGRCSKIPREPO=1`: the repository's own `.hg/hgrc` is never read, so its hooks (`hg
//!   bundle` fires `preoutgoing`) and extensions never run in the backup process. (Its
//!   bytes are still backed up: see `files`.)
//! - the persistent-nodemap and dirstate-v2 "slow path" allowed: repositories written by a
//!   Rust-enabled hg carry those requirements, which a C-only hg otherwise refuses to open.
//! - obsolescence markers enabled: reading a repository that has some then prints no
//!   warning, and `hg unbundle`/`hg init` keep them.

use std::{
    path::Path,
    process::{Command, Output, Stdio},
};

use anyhow::{Context, Result, bail};

const OPTIONS: [&str; 6] = [
    "--config",
    "storage.revlog.persistent-nodemap.slow-path=allow",
    "--config",
    "storage.dirstate-v2.slow-path=allow",
    "--config",
    "experimental.evolution.createmarkers=yes",
];

/// An `hg` command with the clean environment and options above, and `args`.
pub fn hg(args: &[&str]) -> Command {
    let mut command = Command::new("hg");
    command
        .env("HGPLAIN", "1")
        .env("HGRCPATH", "")
        .env("HGENCODING", "utf-8")
        .env("HGRCSKIPREPO", "1")
        .env_remove("HGUSER")
        .args(OPTIONS)
        .args(args)
        .stdin(Stdio::null());
    command
}

/// `hg -R repo args...`.
pub fn hg_in(repo: &Path, args: &[&str]) -> Command {
    let mut command = hg(&[]);
    command.arg("-R").arg(repo).args(args);
    command
}

/// Runs `command` to completion; `what` names the step in errors. Exit codes other than
/// 0 are returned for the caller to judge (`hg bundle` says "nothing new" with 1).
pub fn run(mut command: Command, what: &str) -> Result<Output> {
    command.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow::anyhow!("{what}: the `hg` command (Mercurial) is not installed on this host")
        } else {
            anyhow::anyhow!("{what}: cannot run hg: {e}")
        }
    })
}

/// Runs `command` and requires success; the error carries what hg said.
pub fn run_ok(command: Command, what: &str) -> Result<Vec<u8>> {
    let output = run(command, what)?;
    if !output.status.success() {
        bail!("{what}: hg failed ({}): {}", output.status, said(&output));
    }
    Ok(output.stdout)
}

/// What hg said on stderr (its `abort:` line last), one line.
pub fn said(output: &Output) -> String {
    let text = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('*')).collect();
    let shown = lines.iter().rev().take(3).rev().copied().collect::<Vec<_>>().join(" / ");
    if shown.is_empty() { "no message".into() } else { shown }
}

/// The nodes (40 hex) in `text`, one a line; anything else is an error naming `what`.
pub fn nodes(text: &[u8], what: &str) -> Result<Vec<String>> {
    let text = std::str::from_utf8(text).with_context(|| format!("{what}: hg printed non-UTF-8"))?;
    text.lines()
        .filter(|l| !l.is_empty())
        .map(
            |l| {
                if is_node(l) { Ok(l.to_owned()) } else { bail!("{what}: hg printed {l:?} where a node was expected") }
            },
        )
        .collect()
}

pub fn is_node(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}
