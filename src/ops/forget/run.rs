//! Applying a keep policy to a repository: list, plan, delete, then optionally prune. One
//! orchestration for `volguard forget` and the agent's retention job, so both refuse,
//! delete and report alike.

use serde::{Serialize, Serializer};
use time::OffsetDateTime;

use super::{ForgetPlan, KeepPolicy, Reason, candidates, plan};
use crate::backend::Kind;
use crate::error::{Error, Result};
use crate::ids::SnapshotId;
use crate::ops::prune;
use crate::repo::Repository;

/// One snapshot that could not be forgotten.
#[derive(Debug, Clone)]
pub struct DeleteFailure {
    pub id: SnapshotId,
    pub error: String,
    /// Refused because the snapshot is still under Object Lock retention (object-lock
    /// mode): not an error, it can be forgotten once the retention has passed.
    pub locked: bool,
}

/// Deletes the snapshot objects the plan forgets; the data they referenced stays until a
/// prune. Deletion goes on after a failure (each snapshot is independent) and the failures
/// are returned; a snapshot already gone (another `forget` was faster) counts as forgotten.
pub fn execute(repo: &Repository, plan: &ForgetPlan) -> (usize, Vec<DeleteFailure>) {
    let mut removed = 0;
    let mut failures = Vec::new();
    for d in plan.to_remove() {
        let name = d.id.to_hex();
        match repo.block_on(repo.backend().delete(Kind::Snapshot, &name)) {
            Ok(()) => removed += 1,
            Err(e) if e.is_not_found() => removed += 1,
            Err(e) => failures.push(DeleteFailure {
                id: d.id,
                error: e.to_string(),
                locked: e.is_locked(),
            }),
        }
    }
    (removed, failures)
}

/// What to forget: the policy, which snapshots it judges, and what follows.
#[derive(Debug, Clone)]
pub struct ForgetOptions {
    pub keep: KeepPolicy,
    /// Only snapshots of this volume (None: all).
    pub volume: Option<String>,
    /// Only snapshots from this host (None: all).
    pub host: Option<String>,
    /// Leave these volumes' snapshots alone (the agent forgets them by their own labels).
    pub skip_volumes: Vec<String>,
    /// Plan only; delete nothing.
    pub dry_run: bool,
    /// Prune afterwards with these options; never after a refused plan.
    pub prune: Option<prune::Options>,
}

/// What a forget run decided and did.
#[derive(Debug, Clone)]
pub struct ForgetReport {
    pub dry_run: bool,
    pub policy: KeepPolicy,
    pub plan: ForgetPlan,
    pub forgotten: usize,
    pub failed: Vec<DeleteFailure>,
    /// Groups the rules would have emptied ("volume V of host H"): the run refused and
    /// deleted nothing.
    pub refused: Vec<String>,
    pub prune: Option<prune::Report>,
    /// Some snapshots could not be read or dated; they were left alone.
    pub partial: bool,
}

impl ForgetReport {
    /// The error a refused plan is: a typo in a tag must not wipe a volume's history.
    pub fn refusal(&self) -> Option<Error> {
        (!self.refused.is_empty()).then(|| {
            Error::Other(format!(
                "refusing to forget: the rules keep no snapshot of {}, so its whole history \
                 would go; check the keep rules (a --keep-tag or keep_tags spelling), or add a \
                 rule such as keep-last 1. Nothing was deleted",
                self.refused.join(", ")
            ))
        })
    }

    /// Failures other than snapshots still under Object Lock retention: in object-lock
    /// mode those are the mode working, not an error (a daily forget would always fail).
    pub fn real_failures(&self) -> impl Iterator<Item = &DeleteFailure> {
        self.failed.iter().filter(|f| !f.locked)
    }
}

/// Lists the snapshots, plans by `opts.keep`, deletes what the plan forgets (unless dry
/// run or refused) and prunes if asked. Deletion failures are in the report, not an error.
pub fn run(repo: &Repository, opts: &ForgetOptions) -> Result<ForgetReport> {
    let (all, problems) = repo.list_snapshots()?;
    for p in &problems {
        tracing::warn!("{p}; that snapshot is left alone");
    }
    let (mut candidates, unparsed) = candidates(all, opts.volume.as_deref(), opts.host.as_deref());
    candidates.retain(|c| !opts.skip_volumes.contains(&c.volume));
    let plan = plan(&candidates, &opts.keep, OffsetDateTime::now_utc());
    let refused: Vec<String> = plan
        .emptied_groups()
        .iter()
        .map(|g| format!("volume {} of host {}", g.volume, g.host))
        .collect();
    let (forgotten, failed) = if opts.dry_run || !refused.is_empty() {
        (0, Vec::new())
    } else {
        execute(repo, &plan)
    };
    let prune = match &opts.prune {
        Some(p) if refused.is_empty() => Some(prune::run(repo, p)?),
        _ => None,
    };
    Ok(ForgetReport {
        dry_run: opts.dry_run,
        policy: opts.keep.clone(),
        plan,
        forgotten,
        failed,
        refused,
        prune,
        partial: !problems.is_empty() || unparsed,
    })
}

/// The `--json` form: `{"dry_run", "policy", "groups": [{"host", "volume", "keep": [{"id",
/// "time", "reasons"}], "remove": [{"id", "time"}]}], "forgotten", "failed": [{"id",
/// "error", "locked"}], "refused", "prune"?}`, times in RFC 3339 UTC, lists newest first.
impl Serialize for ForgetReport {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Entry {
            id: String,
            time: String,
            #[serde(skip_serializing_if = "Option::is_none")]
            reasons: Option<Vec<String>>,
        }
        #[derive(Serialize)]
        struct Group<'a> {
            host: &'a str,
            volume: &'a str,
            keep: Vec<Entry>,
            remove: Vec<Entry>,
        }
        #[derive(Serialize)]
        struct Failed<'a> {
            id: String,
            error: &'a str,
            locked: bool,
        }
        #[derive(Serialize)]
        struct View<'a> {
            dry_run: bool,
            policy: String,
            groups: Vec<Group<'a>>,
            forgotten: usize,
            failed: Vec<Failed<'a>>,
            refused: &'a [String],
            #[serde(skip_serializing_if = "Option::is_none")]
            prune: Option<&'a prune::Report>,
        }
        let entry = |d: &super::Decision, reasons: bool| Entry {
            id: d.id.to_hex(),
            time: crate::fmt::format_time(d.time),
            reasons: reasons.then(|| d.reasons.iter().map(Reason::to_string).collect()),
        };
        View {
            dry_run: self.dry_run,
            policy: self.policy.to_string(),
            groups: self
                .plan
                .groups
                .iter()
                .map(|g| Group {
                    host: &g.host,
                    volume: &g.volume,
                    keep: g.kept().map(|d| entry(d, true)).collect(),
                    remove: g.removed().map(|d| entry(d, false)).collect(),
                })
                .collect(),
            forgotten: self.forgotten,
            failed: self
                .failed
                .iter()
                .map(|f| Failed {
                    id: f.id.to_hex(),
                    error: &f.error,
                    locked: f.locked,
                })
                .collect(),
            refused: &self.refused,
            prune: self.prune.as_ref(),
        }
        .serialize(s)
    }
}
