//! `volguard agent` and `volguard status`: the service, and what it says it is doing.

use clap::Args;

#[derive(Debug, Args)]
pub struct AgentArgs {}

#[derive(Debug, Args)]
pub struct StatusArgs {}

pub(super) fn run(json: bool) -> crate::error::Result<i32> {
    crate::agent::status_cmd(json)
}
