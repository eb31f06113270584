//! `repovault forget`: drop snapshots an operator no longer wants, damaged ones included.

use anyhow::Result;
use clap::Args;

use super::{Context, Outcome, StoreArg};

#[derive(Debug, Args)]
pub struct ForgetArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// The repository's name in the store.
    pub name: String,
    /// The snapshot to forget: its id or a unique prefix (repeat for several).
    #[arg(long = "snapshot", value_name = "ID", required = true)]
    pub snapshots: Vec<String>,
}

pub fn run(_ctx: &Context, _args: &ForgetArgs) -> Result<Outcome> {
    Err(crate::error::usage("forget is not implemented yet"))
}
