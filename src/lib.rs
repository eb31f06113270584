//! repovault: incremental disk-to-disk backup of a forge's repositories.
//!
//! Layers, from the bottom: `store` (content-addressed objects and snapshot manifests on a
//! backend), `vcs` (reading and writing git repositories), `commands` (one module per
//! subcommand, mirroring the CLI). Library code returns errors; `main` decides exit codes.

pub mod backup;
pub mod commands;
pub mod config;
pub mod db;
pub mod error;
pub mod memory;
pub mod name;
pub mod output;
pub mod retention;
pub mod scheduler;
pub mod snapshot;
pub mod source;
pub mod store;
pub mod throttle;
pub mod vcs;
