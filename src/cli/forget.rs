//! `volguard forget`: remove snapshots by keep rules; the rules are `ops::forget::KeepOptions`,
//! which the agent's `[agent.retention]` table shares.

use clap::Args;
use serde::Serialize;

use super::prune::Pruned;
use super::render::{Render, emit, ln};
use crate::context::Ctx;
use crate::error::{Error, Result, exit};
use crate::fmt::parse_grace;
use crate::ops::forget::{self, ForgetReport, KeepOptions, Reason};
use crate::ops::prune;

#[derive(Debug, Args)]
pub struct ForgetArgs {
    #[command(flatten)]
    pub keep: KeepOptions,
    /// Only consider snapshots of this volume (or --name).
    #[arg(long)]
    pub volume: Option<String>,
    /// Only consider snapshots from this host.
    #[arg(long)]
    pub host: Option<String>,
    /// List every snapshot as kept or forgotten, with the rules that keep it; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Then run `prune` (with its defaults and --grace) on the repository.
    #[arg(long)]
    pub prune: bool,
    /// With --prune: time between marking data and deleting it (see `prune --grace`).
    #[arg(long, default_value = "24h", value_parser = parse_grace, requires = "prune")]
    pub grace: std::time::Duration,
}

pub(super) fn run(ctx: &Ctx, a: &ForgetArgs) -> Result<i32> {
    let keep = a.keep.policy();
    if keep.is_empty() {
        return Err(Error::Usage(
            "forget needs at least one keep rule: --keep-last, --keep-hourly, --keep-daily, \
             --keep-weekly, --keep-monthly, --keep-yearly (N, or -1 for all), --keep-within \
             DURATION or --keep-tag TAGS. A count or duration of 0 is no rule; nothing was \
             changed"
                .into(),
        ));
    }
    let repo = ctx.open()?;
    let report = forget::run(
        &repo,
        &forget::ForgetOptions {
            keep,
            volume: a.volume.clone(),
            host: a.host.clone(),
            skip_volumes: Vec::new(),
            dry_run: a.dry_run,
            prune: a.prune.then(|| prune::Options {
                dry_run: a.dry_run,
                grace: a.grace,
                max_unused_percent: prune::DEFAULT_MAX_UNUSED_PERCENT,
                host: ctx.host.clone(),
            }),
        },
    )?;
    if let Some(p) = &report.prune {
        for problem in &p.problems {
            tracing::warn!("{problem}");
        }
    }
    emit(
        ctx.json,
        &Forgotten {
            repository: repo.location(),
            report: &report,
        },
    );
    if let Some(e) = report.refusal() {
        return Err(e);
    }
    Ok(if report.real_failures().next().is_some() {
        exit::ERROR
    } else if report.partial {
        exit::PARTIAL
    } else {
        exit::OK
    })
}

#[derive(Serialize)]
struct Forgotten<'a> {
    #[serde(skip)]
    repository: String,
    #[serde(flatten)]
    report: &'a ForgetReport,
}

impl Render for Forgotten<'_> {
    /// The policy, then per group every snapshot, newest first, as kept (with the rules
    /// that keep it) or forgotten; then what was deleted.
    fn text(&self) -> String {
        let (r, mut t) = (self.report, String::new());
        ln!(t, "policy: {}", r.policy);
        if r.plan.groups.is_empty() {
            ln!(t, "no snapshots match");
        }
        for g in &r.plan.groups {
            ln!(
                t,
                "\nhost {}, volume {}: keep {}, forget {} of {} snapshot(s)",
                g.host,
                g.volume,
                g.kept().count(),
                g.removed().count(),
                g.decisions.len()
            );
            ln!(
                t,
                "{:<10} {:<20} {:<7} REASONS",
                "ID",
                "TIME (UTC)",
                "ACTION"
            );
            for d in &g.decisions {
                let reasons: Vec<String> = d.reasons.iter().map(Reason::to_string).collect();
                let row = format!(
                    "{:<10} {:<20} {:<7} {}",
                    d.id.short(),
                    crate::fmt::table_time(d.time),
                    if d.keep() { "keep" } else { "forget" },
                    reasons.join(", ")
                );
                ln!(t, "{}", row.trim_end());
            }
        }
        for f in &r.failed {
            let what = if f.locked {
                "kept for now"
            } else {
                "NOT forgotten"
            };
            ln!(t, "snapshot {}: {what}: {}", f.id.short(), f.error);
        }
        if r.dry_run {
            ln!(
                t,
                "dry run: would forget {} snapshot(s); nothing was deleted",
                r.plan.to_remove().count()
            );
        } else if r.refused.is_empty() {
            ln!(
                t,
                "forgot {} snapshot(s); the data only they used stays in the repository until it is pruned",
                r.forgotten
            );
        }
        if let Some(p) = &r.prune {
            let pruned = Pruned {
                repository: self.repository.clone(),
                dry_run: r.dry_run,
                report: p,
            };
            t.push_str(&pruned.text());
        }
        t
    }
}
