//! The backup tools under comparison, behind one small interface.
//!
//! * volguard: the tool being built, driven through its CLI contract.
//! * restic: the closest established tool (dedup, encryption, compression).
//! * tar | zstd -3 -T0: no dedup, no incrementals; the raw-throughput anchor
//!   for what "reading everything and compressing it" costs on this machine.
//!   It writes to local disk only, so it takes no part in S3 runs.
//!
//! volguard and restic store either in a local directory or in a bucket on
//! the loopback S3 server (see store.rs); their keys, cache and restores stay
//! local either way.

use crate::measure::{Runner, Usage};
use crate::store::Storage;
use anyhow::{Context, Result, bail, ensure};
use clap::ValueEnum;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const VOLUME_NAME: &str = "bench";
/// Key prefix of volguard's repository inside its bucket: a prefix is how a
/// bucket shared between hosts is used, so the bench exercises it.
const VOLGUARD_S3_PREFIX: &str = "bench";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum ToolId {
    Volguard,
    Restic,
    Tar,
}

impl ToolId {
    pub fn label(self) -> &'static str {
        match self {
            ToolId::Volguard => "volguard",
            ToolId::Restic => "restic",
            ToolId::Tar => "tar-zstd",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    Initial,
    NoChange,
    Changed,
    Restore,
}

impl Scenario {
    pub const ALL: [Scenario; 4] = [
        Scenario::Initial,
        Scenario::NoChange,
        Scenario::Changed,
        Scenario::Restore,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Scenario::Initial => "(a) initial backup",
            Scenario::NoChange => "(b) no-change backup",
            Scenario::Changed => "(c) backup after 1% change",
            Scenario::Restore => "(d) full restore",
        }
    }

    /// Short form for log file names.
    pub fn tag(self) -> &'static str {
        match self {
            Scenario::Initial => "a-initial",
            Scenario::NoChange => "b-nochange",
            Scenario::Changed => "c-changed",
            Scenario::Restore => "d-restore",
        }
    }
}

/// One measured step, plus what the tool itself said about it.
pub struct Run {
    pub usage: Usage,
    /// Bytes added to the repository according to the tool's own summary.
    pub reported_added: Option<u64>,
    /// New + changed files according to the tool (0 expected for (b)).
    pub reported_changed_files: Option<u64>,
}

impl Run {
    fn plain(usage: Usage) -> Self {
        Self {
            usage,
            reported_added: None,
            reported_changed_files: None,
        }
    }
}

pub trait Tool {
    fn id(&self) -> ToolId;
    /// Everything the tool stores lives here; its size is "bytes stored".
    fn storage(&self) -> &Storage;
    /// Creates the repository (not measured).
    fn init(&mut self, runner: &Runner) -> Result<()>;
    /// Backs up the data directory; `None` when the scenario does not apply.
    fn backup(&mut self, runner: &Runner, scenario: Scenario) -> Result<Option<Run>>;
    /// Restores the latest backup into the empty directory `target`.
    fn restore(&mut self, runner: &Runner, target: &Path) -> Result<Run>;
    /// Where inside `target` the restored copy of the data directory is.
    fn restored_root(&self, target: &Path) -> PathBuf;
    /// Version string for the report.
    fn version(&self) -> String;
}

/// Constructs a tool that backs up `data` into `storage`. `scratch` is a
/// local path of the tool's own (the storage itself in local runs): its key
/// file and cache are put beside it, where they do not count as stored.
pub fn make(
    id: ToolId,
    storage: Storage,
    scratch: &Path,
    data: PathBuf,
    volguard: Option<&Path>,
) -> Result<Box<dyn Tool>> {
    Ok(match id {
        ToolId::Volguard => {
            let bin = volguard.context("volguard selected but no binary resolved")?;
            Box::new(Volguard::new(bin.to_path_buf(), storage, scratch, data))
        }
        ToolId::Restic => Box::new(Restic::new(
            crate::common::anchors::restic()?,
            storage,
            scratch,
            data,
        )),
        ToolId::Tar => {
            let Storage::Dir(dir) = storage else {
                bail!("tar|zstd has no S3 backend; it only runs with --backend local");
            };
            Box::new(TarZstd::new(dir, data))
        }
    })
}

/// Gives `cmd` the S3 server's settings when `storage` is a bucket. Only
/// the tools' processes get them; the launcher passes them on (measure.rs).
fn apply_s3_env(cmd: &mut Command, storage: &Storage) {
    if let Storage::Bucket { server, .. } = storage {
        for (key, value) in server.child_env() {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
    }
}

/// First line of `program args...`' stdout, or "unknown".
fn version_of(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| {
            // zstd decorates its banner with asterisks.
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .map(|line| line.trim_matches(['*', ' ']).to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

// ---------------------------------------------------------------- volguard

struct Volguard {
    bin: PathBuf,
    storage: Storage,
    /// Beside the repository, not in it: the key is not stored data.
    key_file: PathBuf,
    data: PathBuf,
}

impl Volguard {
    fn new(bin: PathBuf, storage: Storage, scratch: &Path, data: PathBuf) -> Self {
        Self {
            bin,
            key_file: scratch.with_extension("key"),
            storage,
            data,
        }
    }

    /// `volguard` with the global options every invocation needs.
    fn command(&self) -> Command {
        let repo: OsString = match &self.storage {
            Storage::Dir(dir) => dir.into(),
            Storage::Bucket { bucket, .. } => format!("s3://{bucket}/{VOLGUARD_S3_PREFIX}").into(),
        };
        let mut cmd = crate::common::volguard_cmd(&self.bin, repo, &self.key_file);
        apply_s3_env(&mut cmd, &self.storage);
        cmd
    }
}

impl Tool for Volguard {
    fn id(&self) -> ToolId {
        ToolId::Volguard
    }

    fn storage(&self) -> &Storage {
        &self.storage
    }

    fn init(&mut self, runner: &Runner) -> Result<()> {
        crate::common::write_key_file(&self.key_file)?;
        runner.untimed(self.command().arg("init"), "volguard-init")
    }

    fn backup(&mut self, runner: &Runner, scenario: Scenario) -> Result<Option<Run>> {
        let name = format!("volguard-{}", scenario.tag());
        let mut cmd = self.command();
        cmd.arg("--json")
            .arg("backup")
            .arg("--path")
            .arg(&self.data)
            .arg("--name")
            .arg(VOLUME_NAME);
        let usage = runner.timed(&cmd, &name)?;
        let stdout = fs::read_to_string(runner.log_path(&name, "out"))?;
        let summary = parse_volguard_summary(&stdout)
            .with_context(|| format!("reading volguard's --json output for {name}"))?;
        Ok(Some(Run {
            usage,
            reported_added: Some(summary.bytes_added),
            reported_changed_files: Some(summary.changed_files),
        }))
    }

    fn restore(&mut self, runner: &Runner, target: &Path) -> Result<Run> {
        let mut cmd = self.command();
        cmd.arg("restore")
            .arg(VOLUME_NAME)
            .arg("--snapshot")
            .arg("latest")
            .arg("--target")
            .arg(target);
        Ok(Run::plain(runner.timed(&cmd, "volguard-d-restore")?))
    }

    fn restored_root(&self, target: &Path) -> PathBuf {
        target.to_path_buf()
    }

    fn version(&self) -> String {
        version_of(Command::new(&self.bin).arg("--version"))
    }
}

struct BackupSummary {
    bytes_added: u64,
    changed_files: u64,
}

/// Reads `{"snapshots":[{...}]}`; a backup that reports errors fails the
/// bench, because its timing would not be of a complete backup.
fn parse_volguard_summary(stdout: &str) -> Result<BackupSummary> {
    let doc: serde_json::Value = serde_json::from_str(stdout.trim())?;
    let snapshots = doc["snapshots"]
        .as_array()
        .context("no \"snapshots\" array")?;
    ensure!(
        snapshots.len() == 1,
        "expected one snapshot, got {}",
        snapshots.len()
    );
    let snap = &snapshots[0];
    if let Some(errors) = snap["errors"].as_array().filter(|e| !e.is_empty()) {
        bail!("backup reported {} errors: {:?}", errors.len(), errors);
    }
    let field = |name: &str| {
        snap[name]
            .as_u64()
            .with_context(|| format!("missing or non-integer \"{name}\""))
    };
    Ok(BackupSummary {
        bytes_added: field("bytes_added")?,
        changed_files: field("files_new")? + field("files_changed")?,
    })
}

// ------------------------------------------------------------------ restic

struct Restic {
    /// restic 0.18 from Debian 13's package (benches/common/anchors.rs).
    bin: PathBuf,
    storage: Storage,
    /// Outside the repository so that it does not count as stored bytes, and
    /// outside $HOME so that runs do not share (or pollute) a cache. With S3
    /// it is what spares restic re-downloading its index on every run.
    cache: PathBuf,
    data: PathBuf,
}

impl Restic {
    fn new(bin: PathBuf, storage: Storage, scratch: &Path, data: PathBuf) -> Self {
        Self {
            bin,
            cache: scratch.with_extension("cache"),
            storage,
            data,
        }
    }

    fn command(&self) -> Command {
        // restic's S3 backend (minio-go) takes the endpoint from the URL and
        // uses path-style requests for a non-AWS host; keys from the env.
        let repo: OsString = match &self.storage {
            Storage::Dir(dir) => dir.into(),
            Storage::Bucket { server, bucket } => format!("s3:{}/{bucket}", server.endpoint).into(),
        };
        let mut cmd = crate::common::restic_cmd(&self.bin, repo, &self.cache);
        apply_s3_env(&mut cmd, &self.storage);
        cmd
    }
}

impl Tool for Restic {
    fn id(&self) -> ToolId {
        ToolId::Restic
    }

    fn storage(&self) -> &Storage {
        &self.storage
    }

    fn init(&mut self, runner: &Runner) -> Result<()> {
        runner.untimed(self.command().arg("init"), "restic-init")
    }

    fn backup(&mut self, runner: &Runner, scenario: Scenario) -> Result<Option<Run>> {
        let name = format!("restic-{}", scenario.tag());
        // Same host and path each time, so restic picks the previous
        // snapshot as parent by itself and skips unchanged files.
        let mut cmd = self.command();
        cmd.arg("backup")
            .arg(&self.data)
            .args(["--host", "bench", "--json"]);
        let usage = runner.timed(&cmd, &name)?;
        let stdout = fs::read_to_string(runner.log_path(&name, "out"))?;
        let summary = parse_restic_summary(&stdout)
            .with_context(|| format!("reading restic's --json output for {name}"))?;
        Ok(Some(Run {
            usage,
            reported_added: Some(summary.bytes_added),
            reported_changed_files: Some(summary.changed_files),
        }))
    }

    fn restore(&mut self, runner: &Runner, target: &Path) -> Result<Run> {
        let mut cmd = self.command();
        cmd.args(["restore", "latest", "--target"]).arg(target);
        Ok(Run::plain(runner.timed(&cmd, "restic-d-restore")?))
    }

    /// restic recreates the backed-up absolute path below the target.
    fn restored_root(&self, target: &Path) -> PathBuf {
        target.join(self.data.strip_prefix("/").unwrap_or(&self.data))
    }

    fn version(&self) -> String {
        version_of(Command::new(&self.bin).arg("version"))
    }
}

/// The last `"message_type":"summary"` line of `restic backup --json`.
fn parse_restic_summary(stdout: &str) -> Result<BackupSummary> {
    let summary = stdout
        .lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|msg| msg["message_type"] == "summary")
        .context("no summary message")?;
    let field = |name: &str| {
        summary[name]
            .as_u64()
            .with_context(|| format!("missing or non-integer \"{name}\""))
    };
    Ok(BackupSummary {
        bytes_added: field("data_added")?,
        changed_files: field("files_new")? + field("files_changed")?,
    })
}

// --------------------------------------------------------------- tar | zstd

struct TarZstd {
    /// `Storage::Dir(dir)`, for `storage()` to lend.
    storage: Storage,
    dir: PathBuf,
    data: PathBuf,
    /// Archives written so far; a restore unpacks the newest.
    archives: Vec<PathBuf>,
}

impl TarZstd {
    fn new(dir: PathBuf, data: PathBuf) -> Self {
        Self {
            storage: Storage::Dir(dir.clone()),
            dir,
            data,
            archives: Vec::new(),
        }
    }
}

impl Tool for TarZstd {
    fn id(&self) -> ToolId {
        ToolId::Tar
    }

    fn storage(&self) -> &Storage {
        &self.storage
    }

    fn init(&mut self, _runner: &Runner) -> Result<()> {
        fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))
    }

    /// A full archive for (a) and, since tar has no incrementals, again for
    /// (c); the previous archive is kept, as a backup rotation would.
    fn backup(&mut self, runner: &Runner, scenario: Scenario) -> Result<Option<Run>> {
        if scenario == Scenario::NoChange {
            return Ok(None);
        }
        let archive = self
            .dir
            .join(format!("backup-{}.tar.zst", self.archives.len() + 1));
        let mut tar = Command::new("tar");
        tar.arg("-c").arg("-C").arg(&self.data).arg(".");
        let mut zstd = Command::new("zstd");
        zstd.args(["-3", "-T0", "-q", "-o"]).arg(&archive);
        let usage = runner.timed_pipeline(&[&tar, &zstd], &format!("tar-{}", scenario.tag()))?;
        self.archives.push(archive);
        Ok(Some(Run::plain(usage)))
    }

    fn restore(&mut self, runner: &Runner, target: &Path) -> Result<Run> {
        let archive = self.archives.last().context("no archive to restore")?;
        let mut zstd = Command::new("zstd");
        zstd.args(["-d", "-c", "-q"]).arg(archive);
        let mut tar = Command::new("tar");
        tar.arg("-x").arg("-C").arg(target);
        let usage = runner.timed_pipeline(&[&zstd, &tar], "tar-d-restore")?;
        Ok(Run::plain(usage))
    }

    fn restored_root(&self, target: &Path) -> PathBuf {
        target.to_path_buf()
    }

    fn version(&self) -> String {
        format!(
            "{}; {}",
            version_of(Command::new("tar").arg("--version")),
            version_of(Command::new("zstd").arg("--version"))
        )
    }
}
