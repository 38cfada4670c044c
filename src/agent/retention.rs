//! The agent's retention step: forget this host's snapshots by `agent.retention`'s keep
//! rules, or by a volume's own `volguard.keep-*` labels, then prune if asked, through the
//! same `ops::forget::run` as `volguard forget`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::agent::AgentSettings;
use crate::context::Ctx;
use crate::docker::{containers, labels, volumes};
use crate::error::{Error, Result};
use crate::ops::forget::{KeepCount, KeepDuration, KeepOptions, KeepPolicy};
use crate::repo::Repository;
use crate::{ops::forget, ops::prune};

/// Forgets by `agent.retention` (refusing a plan that would empty a volume's history),
/// except for the volumes whose labels set their own keep rules, which are forgotten by
/// those; then prunes when `agent.retention.prune` is set. Off (Ok) without
/// `agent.retention`. A failure on one labelled volume does not stop the others.
pub(super) fn retention(ctx: &Ctx, repo: &Repository, settings: &AgentSettings) -> Result<()> {
    let Some(r) = &settings.retention else {
        return Ok(());
    };
    let labelled = label_policies(&ctx.docker_root);
    let mut first_error = None;
    for (volume, keep) in &labelled {
        let opts = forget::ForgetOptions {
            keep: keep.clone(),
            volume: Some(volume.clone()),
            host: Some(ctx.host.clone()),
            skip_volumes: Vec::new(),
            dry_run: false,
            prune: None,
        };
        if let Err(e) = forget_by(
            repo,
            &opts,
            &format!("volume {volume} (its labels: {keep})"),
        ) {
            tracing::error!("{e}");
            first_error.get_or_insert(e);
        }
    }
    let opts = forget::ForgetOptions {
        keep: r.policy().map_err(Error::Other)?,
        volume: None,
        host: Some(ctx.host.clone()),
        skip_volumes: labelled.into_iter().map(|(v, _)| v).collect(),
        dry_run: false,
        prune: r.prune.then(|| prune::Options {
            dry_run: false,
            grace: r.prune_grace,
            max_unused_percent: prune::DEFAULT_MAX_UNUSED_PERCENT,
            host: ctx.host.clone(),
        }),
    };
    forget_by(repo, &opts, "agent.retention")?;
    first_error.map_or(Ok(()), Err)
}

/// One forget run; `by` says whose rules, for the log and the errors.
fn forget_by(repo: &Repository, opts: &forget::ForgetOptions, by: &str) -> Result<()> {
    let report = forget::run(repo, opts)?;
    if let Some(e) = report.refusal() {
        return Err(e);
    }
    tracing::info!(
        "retention by {by}: {} snapshot(s) forgotten",
        report.forgotten
    );
    if let Some(p) = &report.prune {
        tracing::info!("retention: prune: {p:?}");
    }
    let failed: Vec<_> = report.real_failures().collect();
    if let Some(f) = failed.first() {
        return Err(Error::Other(format!(
            "retention by {by}: {} snapshot(s) could not be forgotten, first: snapshot {}: {}",
            failed.len(),
            f.id.short(),
            f.error
        )));
    }
    Ok(())
}

/// The volumes whose labels set keep rules, each with its policy: the volume's own labels,
/// else those of the first container that mounts it and has any. A label that does not
/// parse is a warning, and that volume stays under `[agent.retention]`'s rules.
fn label_policies(root: &Path) -> Vec<(String, KeepPolicy)> {
    let (defs, _) = volumes::read_volumes(root);
    let (ctrs, _) = containers::read_containers(root);
    let mut out = Vec::new();
    for d in &defs {
        for (owner, l) in labels::owners(&d.name, &d.labels, &ctrs) {
            match keep_rules(&owner, l) {
                Ok(None) => continue,
                Ok(Some(p)) => out.push((d.name.clone(), p)),
                Err(e) => tracing::warn!("{e}; volume {} keeps agent.retention's rules", d.name),
            }
            break;
        }
    }
    out
}

/// The keep rules `volguard.keep-*` labels set, None when there are none.
fn keep_rules(owner: &str, l: &BTreeMap<String, String>) -> Result<Option<KeepPolicy>, String> {
    let mut k = KeepOptions::default();
    let mut any = false;
    for key in labels::KEEP {
        let Some(v) = l.get(key) else { continue };
        any = true;
        let bad = |e: String| format!("{owner}: label {key}={v:?}: {e}");
        let count = || KeepCount::parse(v).map(Some).map_err(bad);
        match key.trim_start_matches("volguard.keep-") {
            "last" => k.keep_last = count()?,
            "hourly" => k.keep_hourly = count()?,
            "daily" => k.keep_daily = count()?,
            "weekly" => k.keep_weekly = count()?,
            "monthly" => k.keep_monthly = count()?,
            "yearly" => k.keep_yearly = count()?,
            _ => k.keep_within = Some(KeepDuration::parse(v).map_err(bad)?),
        }
    }
    if !any {
        return Ok(None);
    }
    let policy = k.policy();
    if policy.is_empty() {
        return Err(format!(
            "{owner}: its volguard.keep-* labels are all 0, which would keep everything"
        ));
    }
    Ok(Some(policy))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::labels::from_pairs as labels;

    #[test]
    fn keep_labels_make_the_forget_policy_of_the_same_flags() {
        let p = keep_rules(
            "volume v",
            &labels(&[("volguard.keep-daily", "7"), ("volguard.keep-within", "1m")]),
        )
        .unwrap()
        .unwrap();
        let flags = KeepOptions {
            keep_daily: Some(KeepCount::N(7)),
            keep_within: Some(KeepDuration::parse("1m").unwrap()),
            ..KeepOptions::default()
        };
        assert_eq!(p, flags.policy());
        assert_eq!(
            keep_rules("v", &labels(&[("volguard.exclude", "x")])),
            Ok(None)
        );
    }

    #[test]
    fn bad_keep_labels_are_named() {
        let e =
            keep_rules("container web", &labels(&[("volguard.keep-last", "many")])).unwrap_err();
        assert!(
            e.starts_with("container web: label volguard.keep-last=\"many\""),
            "{e}"
        );
        let e = keep_rules("volume v", &labels(&[("volguard.keep-last", "0")])).unwrap_err();
        assert!(e.contains("keep everything"), "{e}");
        assert!(keep_rules("v", &labels(&[("volguard.keep-within", "soon")])).is_err());
    }
}
