//! Error classification shared by the library and `main`.
//!
//! Library code returns `anyhow::Error` with context describing which repository, file
//! and step failed. Errors that are the user's to fix (bad flags, a refused name, an
//! unreachable or read-only store, a non-empty restore target) are wrapped in [`UsageError`] so that
//! `main` can map them to exit code 2 without string matching.

use std::fmt;

/// An error caused by how repovault was invoked or configured (exit code 2).
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Shorthand for returning a [`UsageError`] as an `anyhow::Error`.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(message.into()))
}

/// True when `err` (or anything in its context chain) is a [`UsageError`], or a write to a
/// read-only file system: a store (or restore target) mounted read-only is the machine's
/// set-up, not work that failed, whichever command met it first.
pub fn is_usage(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause.is::<UsageError>()
            || cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::ReadOnlyFilesystem)
    })
}
