//! `volguard bucket`: the bucket's own rules (versioning, Object Lock, lifecycle) judged
//! against this repository by `ops::bucket`, and the lifecycle configuration that is safe.

use clap::{Args, Subcommand};
use serde::Serialize;

use super::render::{Render, emit, ln};
use crate::backend::{BucketSettings, LifecycleRule};
use crate::context::Ctx;
use crate::error::{Error, Result, exit};
use crate::ops::bucket::{Finding, Severity, audit, describe_rule, merge, policy};
use crate::repo::Location;
use crate::repo::retention::RetentionConfig;

#[derive(Debug, Args)]
pub struct BucketArgs {
    #[command(subcommand)]
    pub command: BucketCommand,
}

#[derive(Debug, Subcommand)]
pub enum BucketCommand {
    /// Say whether any bucket rule can destroy data that kept snapshots need, and exactly
    /// what to change. Exit 1 when one can.
    Audit(BucketAuditArgs),
    /// Print the lifecycle configuration that is safe for this repository; --apply
    /// installs it (other rules of the bucket are kept).
    Policy(BucketPolicyArgs),
}

#[derive(Debug, Args)]
pub struct BucketAuditArgs {
    /// How long snapshots must be kept at least (default: the repository's retention, if
    /// its mode has one); lifecycle rules shorter than this are flagged.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=36500))]
    pub retain_days: Option<u64>,
}

#[derive(Debug, Args)]
pub struct BucketPolicyArgs {
    /// Install the configuration (PutBucketLifecycleConfiguration).
    #[arg(long)]
    pub apply: bool,
}

pub(super) fn run(ctx: &Ctx, a: &BucketArgs) -> Result<i32> {
    let Location::S3 { prefix, .. } = &ctx.location else {
        return Err(Error::Usage(format!(
            "`volguard bucket` judges S3 bucket rules; the repository is a local directory{}",
            match &ctx.location {
                Location::Local(p) => format!(" ({})", p.display()),
                Location::S3 { .. } => String::new(),
            }
        )));
    };
    let repo = ctx.open()?;
    let settings = repo.block_on(repo.backend().bucket_settings())?;
    let retention = repo.config().retention;
    let repository = repo.location();
    match &a.command {
        BucketCommand::Audit(a) => {
            let needed = a
                .retain_days
                .map(|d| d * 86_400)
                .or(retention.retain().map(|d| d.as_secs()));
            let findings = audit(&settings, prefix, &retention, needed);
            let safe = !findings.iter().any(|f| f.severity == Severity::Danger);
            emit(
                ctx.json,
                &Audit {
                    repository,
                    retention,
                    bucket: settings,
                    findings,
                    safe,
                },
            );
            Ok(if safe { exit::OK } else { exit::ERROR })
        }
        BucketCommand::Policy(a) => {
            let versioned = matches!(
                settings.versioning.as_deref(),
                Some("Enabled" | "Suspended")
            );
            let rules = policy(prefix, versioned, &retention);
            let bucket_rules = if a.apply {
                let m = merge(&settings.lifecycle, rules.clone(), prefix).map_err(Error::Other)?;
                repo.block_on(repo.backend().put_lifecycle(&m))?;
                Some(m)
            } else {
                None
            };
            emit(
                ctx.json,
                &Policy {
                    repository,
                    retention,
                    rules,
                    applied: a.apply,
                    bucket_rules,
                },
            );
            Ok(exit::OK)
        }
    }
}

#[derive(Serialize)]
struct Audit {
    repository: String,
    retention: RetentionConfig,
    bucket: BucketSettings,
    findings: Vec<Finding>,
    safe: bool,
}

impl Render for Audit {
    fn text(&self) -> String {
        let (b, mut t) = (&self.bucket, String::new());
        ln!(
            t,
            "{}: retention mode {}; versioning {}; Object Lock {}; {} lifecycle rule(s)",
            self.repository,
            self.retention.describe(),
            b.versioning.as_deref().unwrap_or("never enabled"),
            match (b.object_lock, &b.object_lock_error) {
                (Some(true), _) => "enabled".to_string(),
                (Some(false), _) => "not enabled".to_string(),
                (None, Some(e)) => format!("not available ({e})"),
                (None, None) => "unknown".to_string(),
            },
            b.lifecycle.len()
        );
        for r in &b.lifecycle {
            ln!(t, "  {}", describe_rule(r));
        }
        for f in &self.findings {
            let tag = match f.severity {
                Severity::Danger => "DANGER",
                Severity::Warning => "WARNING",
                Severity::Ok => "ok",
            };
            ln!(t, "{tag}: {}", f.problem);
            if let Some(c) = &f.change {
                ln!(t, "  change: {c}");
            }
        }
        t
    }
}

#[derive(Serialize)]
struct Policy {
    repository: String,
    retention: RetentionConfig,
    rules: Vec<LifecycleRule>,
    applied: bool,
    bucket_rules: Option<Vec<LifecycleRule>>,
}

impl Render for Policy {
    fn text(&self) -> String {
        let mut t = String::new();
        ln!(
            t,
            "lifecycle rules for {} (retention mode {}):",
            self.repository,
            self.retention.describe()
        );
        for r in &self.rules {
            ln!(t, "  {}", describe_rule(r));
        }
        if self.retention.name() != "epochs" {
            ln!(
                t,
                "  no Expiration: in this mode only `volguard forget --prune` deletes data"
            );
        }
        if self.applied {
            ln!(t, "installed (the bucket's other rules were kept)");
        } else {
            ln!(t, "run with --apply to install them");
        }
        t
    }
}
