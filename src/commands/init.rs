//! `repovault init`: create an empty store.

use anyhow::Result;
use clap::Args;

use super::{Context, Outcome, StoreArg};
use crate::{
    output,
    store::{InitOutcome, Store},
};

#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub store: StoreArg,
}

pub fn run(ctx: &Context, args: &InitArgs) -> Result<Outcome> {
    let location = ctx.config.store(args.store.store.as_deref())?;
    match Store::init_with(&location, &ctx.access(&args.store)?)? {
        InitOutcome::Created => output::notice(&format!("created repovault store at {location}")),
        InitOutcome::AlreadyAStore => {
            output::notice(&format!("{location} is already a repovault store; nothing to do"))
        }
    }
    Ok(Outcome::Done)
}
