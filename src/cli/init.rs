//! `volguard init`: create a repository, with the retention mode it keeps for life.

use clap::Args;
use serde::Serialize;

use super::render::{Render, emit};
use crate::backend::LockMode;
use crate::context::Ctx;
use crate::error::{Error, Result, exit};
use crate::repo::format::crypto::Secret;
use crate::repo::retention::RetentionConfig;
use crate::repo::{self, Location, Repository};

#[derive(Debug, Args)]
pub struct InitArgs {
    /// How the repository coexists with bucket retention: `none`, `object-lock` (every
    /// object under S3 Object Lock, extended by each backup), or `epochs` (objects grouped
    /// by time epoch so a bucket lifecycle rule can expire them); the last two need
    /// --retain-days. Fixed for the repository's life.
    #[arg(long, default_value = "none", value_parser = ["none", "object-lock", "epochs"])]
    pub retention_mode: String,
    /// epochs mode: length of one epoch in days (each epoch's first backup uploads
    /// everything anew; the lifecycle rule expires objects after retention + epoch + 1 day).
    #[arg(long, value_name = "N", default_value_t = 7,
          value_parser = clap::value_parser!(u64).range(1..=366))]
    pub epoch_days: u64,
    /// Days every snapshot is kept at least (object-lock: its objects cannot be deleted
    /// before its time plus this).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=36500))]
    pub retain_days: Option<u64>,
    /// The retention in seconds instead of days. For tests that watch a retention expire;
    /// not for production use.
    #[arg(long, value_name = "N", hide = true, conflicts_with = "retain_days",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub retain_seconds: Option<u64>,
    /// Object Lock mode: compliance (nobody can shorten it) or governance (principals with
    /// s3:BypassGovernanceRetention can).
    #[arg(long, default_value = "compliance", value_parser = ["compliance", "governance"])]
    pub lock_mode: String,
}

pub(super) fn run(ctx: &Ctx, a: &InitArgs) -> Result<i32> {
    let retention = retention_from_args(a, &ctx.location)?;
    let backend = ctx.backend()?;
    let secret = match ctx.secret()? {
        Some(s) => s,
        None if ctx.embedded => {
            let p = crate::config::default_key_file();
            if !p.exists() {
                crate::context::create_key_file(&p)?;
            }
            Secret::KeyFile(crate::secrets::read_secret_file(&p, "key file")?)
        }
        None => return Err(crate::context::no_secret(&backend.location())),
    };
    let repo = Repository::init_with_retention(backend, &secret, repo::DEFAULT_CHUNKER, retention)?;
    emit(
        ctx.json,
        &Created {
            repository: repo.location(),
            id: repo.config().id.clone(),
            retention: repo.config().retention,
        },
    );
    Ok(exit::OK)
}

#[derive(Serialize)]
struct Created {
    repository: String,
    id: String,
    retention: RetentionConfig,
}

impl Render for Created {
    fn text(&self) -> String {
        format!(
            "created repository {} (id {}); retention mode: {}\n",
            self.repository,
            self.id,
            self.retention.describe()
        )
    }
}

/// The retention mode `init` asked for, checked against where the repository goes.
fn retention_from_args(a: &InitArgs, location: &Location) -> Result<RetentionConfig> {
    let retain = a
        .retain_seconds
        .or(a.retain_days.map(|d| d.saturating_mul(86_400)));
    let lock_mode = match a.lock_mode.as_str() {
        "governance" => LockMode::Governance,
        _ => LockMode::Compliance,
    };
    let needs_retain = |mode: &str| {
        Error::Usage(format!(
            "--retention-mode {mode} needs --retain-days N: how long every snapshot must be \
             kept at least"
        ))
    };
    match a.retention_mode.as_str() {
        "none" => {
            if retain.is_some() {
                return Err(Error::Usage(
                    "--retain-days only means something with --retention-mode object-lock or \
                     epochs"
                        .into(),
                ));
            }
            Ok(RetentionConfig::None)
        }
        "object-lock" => {
            let retain_secs = retain.ok_or_else(|| needs_retain("object-lock"))?;
            if let Location::Local(p) = location {
                return Err(Error::Usage(format!(
                    "--retention-mode object-lock needs an S3 bucket with Object Lock enabled; \
                     {} is a local directory",
                    p.display()
                )));
            }
            Ok(RetentionConfig::ObjectLock {
                retain_secs,
                lock_mode,
            })
        }
        "epochs" => Ok(RetentionConfig::Epochs {
            retain_secs: retain.ok_or_else(|| needs_retain("epochs"))?,
            epoch_secs: a.epoch_days.saturating_mul(86_400),
        }),
        other => Err(Error::Usage(format!(
            "--retention-mode {other} is not known; use none, object-lock or epochs"
        ))),
    }
}
