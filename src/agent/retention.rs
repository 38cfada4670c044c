//! The agent's retention step: forget this host's snapshots by `agent.retention`'s keep
//! rules, then prune if asked. One function on its own, so it can later be shared with
//! `volguard forget` through ops::forget.

use crate::config::agent::AgentSettings;
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::repo::Repository;
use crate::{ops::forget, ops::prune};

/// Forgets by `agent.retention` (refusing a plan that would empty a volume's history),
/// then prunes when `agent.retention.prune` is set. Off (Ok) without `agent.retention`.
pub(super) fn retention(ctx: &Ctx, repo: &Repository, settings: &AgentSettings) -> Result<()> {
    let Some(r) = &settings.retention else {
        return Ok(());
    };
    let policy = r.policy().map_err(Error::Other)?;
    let (all, _) = repo.list_snapshots()?;
    let (candidates, _) = forget::candidates(all, None, Some(&ctx.host));
    let plan = forget::plan(&candidates, &policy, time::OffsetDateTime::now_utc());
    if !plan.emptied_groups().is_empty() {
        return Err(Error::Other(
            "retention would forget every snapshot of a volume; nothing was forgotten (check agent.retention)".into(),
        ));
    }
    let (forgotten, failures) = forget::execute(repo, &plan);
    tracing::info!("retention: {forgotten} snapshot(s) forgotten");
    if let Some(f) = failures.first() {
        return Err(Error::Other(format!(
            "retention: {} snapshot(s) could not be forgotten, first: {f:?}",
            failures.len()
        )));
    }
    if r.prune {
        let report = prune::run(
            repo,
            &prune::Options {
                dry_run: false,
                grace: r.prune_grace,
                max_unused_percent: prune::DEFAULT_MAX_UNUSED_PERCENT,
                host: ctx.host.clone(),
            },
        )?;
        tracing::info!("retention: prune: {report:?}");
    }
    Ok(())
}
