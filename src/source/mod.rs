//! Change feeds: where `run` and `lag` learn which repositories exist and when they last
//! changed. `scan` walks a directory tree (the default for a small install); a PostgreSQL
//! feed is planned.

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
}
