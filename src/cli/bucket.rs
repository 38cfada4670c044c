//! `volguard bucket`: runs the bucket reports of `ops::bucket` and renders them as text
//! or `--json`.

use crate::cli::{BucketArgs, BucketCommand};
use crate::context::Ctx;
use crate::error::{Error, Result, exit};
use crate::ops::bucket::{Severity, audit, describe_rule, merge, policy};
use crate::repo::{Location, Repository};

/// `bucket audit` / `bucket policy`: the logic and its output live in bucket.rs.
pub(crate) fn bucket_cmd(ctx: &Ctx, a: &BucketArgs) -> Result<i32> {
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
    run(&repo, prefix, &a.command, ctx.json)
}

/// Runs `bucket audit` or `bucket policy` and prints the result; returns the exit code.
fn run(repo: &Repository, repo_prefix: &str, command: &BucketCommand, json: bool) -> Result<i32> {
    let settings = repo.block_on(repo.backend().bucket_settings())?;
    let mode = repo.config().retention;
    match command {
        BucketCommand::Audit(a) => {
            let needed = a
                .retain_days
                .map(|d| d * 86_400)
                .or(mode.retain().map(|d| d.as_secs()));
            let findings = audit(&settings, repo_prefix, &mode, needed);
            let danger = findings.iter().any(|f| f.severity == Severity::Danger);
            if json {
                let v = serde_json::json!({
                    "repository": repo.location(),
                    "retention": mode,
                    "bucket": settings,
                    "findings": findings,
                    "safe": !danger,
                });
                crate::outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                crate::outln!(
                    "{}: retention mode {}; versioning {}; Object Lock {}; {} lifecycle rule(s)",
                    repo.location(),
                    mode.describe(),
                    settings.versioning.as_deref().unwrap_or("never enabled"),
                    match (settings.object_lock, &settings.object_lock_error) {
                        (Some(true), _) => "enabled".to_string(),
                        (Some(false), _) => "not enabled".to_string(),
                        (None, Some(e)) => format!("not available ({e})"),
                        (None, None) => "unknown".to_string(),
                    },
                    settings.lifecycle.len()
                );
                for r in &settings.lifecycle {
                    crate::outln!("  {}", describe_rule(r));
                }
                for f in &findings {
                    let tag = match f.severity {
                        Severity::Danger => "DANGER",
                        Severity::Warning => "WARNING",
                        Severity::Ok => "ok",
                    };
                    crate::outln!("{tag}: {}", f.problem);
                    if let Some(c) = &f.change {
                        crate::outln!("  change: {c}");
                    }
                }
            }
            Ok(if danger { exit::ERROR } else { exit::OK })
        }
        BucketCommand::Policy(a) => {
            let versioned = matches!(
                settings.versioning.as_deref(),
                Some("Enabled" | "Suspended")
            );
            let ours = policy(repo_prefix, versioned, &mode);
            let merged = if a.apply {
                let m =
                    merge(&settings.lifecycle, ours.clone(), repo_prefix).map_err(Error::Other)?;
                repo.block_on(repo.backend().put_lifecycle(&m))?;
                Some(m)
            } else {
                None
            };
            if json {
                let v = serde_json::json!({
                    "repository": repo.location(),
                    "retention": mode,
                    "rules": ours,
                    "applied": a.apply,
                    "bucket_rules": merged,
                });
                crate::outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                crate::outln!(
                    "lifecycle rules for {} (retention mode {}):",
                    repo.location(),
                    mode.describe()
                );
                for r in &ours {
                    crate::outln!("  {}", describe_rule(r));
                }
                if mode.name() != "epochs" {
                    crate::outln!(
                        "  no Expiration: in this mode only `volguard forget --prune` deletes data"
                    );
                }
                if a.apply {
                    crate::outln!("installed (the bucket's other rules were kept)");
                } else {
                    crate::outln!("run with --apply to install them");
                }
            }
            Ok(exit::OK)
        }
    }
}
