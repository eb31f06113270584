//! The storage-target abstraction: everything the repository layer needs from a place
//! that holds files. Paths are store-relative and always use `/`.
//!
//! The contract every backend keeps: a file appears whole or not at all, is durable once
//! `write_new` returns, and is never modified after it is written. That is what lets many
//! hosts write one store and `prune` delete while backups run (see docs/FORMAT.md).

use std::io;

pub use super::protocol::RootState;

pub trait Backend: Send + Sync {
    /// Human-readable location, for error messages.
    fn location(&self) -> String;

    /// Reads a whole file.
    fn read(&self, path: &str) -> io::Result<Vec<u8>>;

    /// Atomically and durably creates `path` with `data`. Returns `false` without writing
    /// when the file already exists: content-addressed files never need rewriting.
    fn write_new(&self, path: &str, data: &[u8]) -> io::Result<bool>;

    /// True when `path` exists.
    fn exists(&self, path: &str) -> io::Result<bool>;

    /// Names (not paths) of the entries of directory `dir`; empty when it does not exist.
    /// Temporary files of unfinished writes are not listed.
    fn list(&self, dir: &str) -> io::Result<Vec<String>>;

    /// Removes a file durably (once it returns, the file does not come back after a crash);
    /// removing a missing file is not an error.
    fn remove(&self, path: &str) -> io::Result<()>;

    /// Creates `path` with `data` only if it does not exist, atomically even on NFS (the
    /// link-count recipe). Returns `false` when it already exists. Used for locks.
    fn create_exclusive(&self, path: &str, data: &[u8]) -> io::Result<bool>;

    /// Renames a file or a directory atomically, replacing a file at `to`; fails when `from`
    /// does not exist (that failure is what fences a revoked session's commit, see
    /// docs/FORMAT.md, "Prune"). Durable once it returns.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;

    /// Sets a file's modification time to now *by the storage's clock* (a heartbeat): times
    /// written by different hosts are compared with each other only through the storage.
    fn touch(&self, path: &str) -> io::Result<()>;

    /// A file's modification time.
    fn modified(&self, path: &str) -> io::Result<std::time::SystemTime>;

    /// Size in bytes of a file as stored.
    fn size(&self, path: &str) -> io::Result<u64>;

    /// Names of the unfinished writes (temporary files) in `dir`, which `list` hides; empty
    /// when `dir` does not exist. Only `prune` looks at them, to remove old ones.
    fn list_unfinished(&self, dir: &str) -> io::Result<Vec<String>>;

    /// Removes an empty directory durably; a missing one is not an error.
    fn remove_dir(&self, dir: &str) -> io::Result<()>;

    /// Creates a directory durably; existing is fine. Its parent must exist: a missing one
    /// means the store is gone, and is an error.
    fn create_dir(&self, dir: &str) -> io::Result<()>;

    /// What is at the store's root path (for `init`, which must not take over a directory
    /// holding something else).
    fn root_state(&self) -> io::Result<RootState>;

    /// Creates the store's root directory and any missing parents (for `init` only).
    fn create_root(&self) -> io::Result<()>;
}
