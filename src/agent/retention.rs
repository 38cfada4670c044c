//! The agent's retention step: forget this host's snapshots by `agent.retention`'s keep
//! rules, then prune if asked, through the same `ops::forget::run` as `volguard forget`.

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
    let report = forget::run(
        repo,
        &forget::ForgetOptions {
            keep: r.policy().map_err(Error::Other)?,
            volume: None,
            host: Some(ctx.host.clone()),
            dry_run: false,
            prune: r.prune.then(|| prune::Options {
                dry_run: false,
                grace: r.prune_grace,
                max_unused_percent: prune::DEFAULT_MAX_UNUSED_PERCENT,
                host: ctx.host.clone(),
            }),
        },
    )?;
    if let Some(e) = report.refusal() {
        return Err(e);
    }
    tracing::info!("retention: {} snapshot(s) forgotten", report.forgotten);
    if let Some(p) = &report.prune {
        tracing::info!("retention: prune: {p:?}");
    }
    let failed: Vec<_> = report.real_failures().collect();
    if let Some(f) = failed.first() {
        return Err(Error::Other(format!(
            "retention: {} snapshot(s) could not be forgotten, first: snapshot {}: {}",
            failed.len(),
            f.id.short(),
            f.error
        )));
    }
    Ok(())
}
