//! Change feeds: where `run` and `lag` learn which repositories exist and when they last
//! changed. `scan` walks a directory tree (the default for a small install); a PostgreSQL
//! feed is planned.

pub mod root_guard;
pub mod scan;

use std::path::PathBuf;

use crate::snapshot::Vcs;

/// A repository a feed reported.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The repository's NAME in the store (validated).
    pub name: String,
    /// The repository on disk (for git: the working copy or the bare repository).
    pub path: PathBuf,
    pub vcs: Vcs,
}

/// A path the feed could not turn into a repository, with why.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub path: PathBuf,
    pub reason: String,
    pub kind: RejectionKind,
}

/// Whether a rejection is a decision (reported, not an error) or a failure to look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionKind {
    /// A repository was found and deliberately not backed up (its name is refused): the
    /// operator is told every night, but it does not fail the night.
    Refused,
    /// The feed could not look (an unreadable directory may hide repositories): a failure.
    Unreadable,
}
