//! The agent's status file (`<state dir>/agent-status.json`): what it is doing, the last
//! and next run of every volume and job, and its health. The agent rewrites it atomically
//! whenever something changes; `volguard status` reads it, so it works without any socket
//! or API, and survives an agent restart (the last times are read back from it).
//! The report `volguard status` renders is made here too.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::host;
use super::metrics::{JobFigures, VolumeFigures};
use crate::docker::containers;
use crate::error::{Error, Result, exit};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VolumeStatus {
    pub schedule: String,
    pub consistency: String,
    pub last_success: Option<f64>,
    pub last_failure: Option<f64>,
    pub last_error: Option<String>,
    pub next_run: Option<f64>,
    pub figures: VolumeFigures,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JobStatus {
    pub schedule: String,
    pub last_error: Option<String>,
    pub last_failure: Option<f64>,
    pub next_run: Option<f64>,
    pub figures: JobFigures,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentStatus {
    pub pid: u32,
    pub started: f64,
    pub updated: f64,
    pub repository: String,
    pub host: String,
    /// What it is doing now: "idle", "backing up VOLUME", "check", ...
    pub activity: String,
    pub metrics_addr: Option<String>,
    pub volumes: BTreeMap<String, VolumeStatus>,
    pub jobs: BTreeMap<String, JobStatus>,
}

impl AgentStatus {
    /// Volumes and jobs whose last run failed (and has not succeeded since).
    pub fn failing(&self) -> Vec<String> {
        let failed = |s: Option<f64>, f: Option<f64>| f.is_some_and(|f| s.is_none_or(|s| f > s));
        let mut out: Vec<String> = self
            .volumes
            .iter()
            .filter(|(_, v)| failed(v.last_success, v.last_failure))
            .map(|(n, v)| {
                format!(
                    "volume {n}: {}",
                    v.last_error.as_deref().unwrap_or("failed")
                )
            })
            .collect();
        out.extend(
            self.jobs
                .iter()
                .filter(|(_, j)| failed(j.figures.last_success_time, j.last_failure))
                .map(|(n, j)| format!("{n}: {}", j.last_error.as_deref().unwrap_or("failed"))),
        );
        out
    }
}

pub fn path() -> PathBuf {
    crate::paths::state_dir().join("agent-status.json")
}

/// Writes the status atomically (temp file + rename), so a reader never sees half of it.
pub fn write(path: &Path, status: &AgentStatus) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("json.tmp-{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(status).unwrap_or_default())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Reads the status file; None when it does not exist, an error when it is damaged.
pub fn read(path: &Path) -> std::result::Result<Option<AgentStatus>, String> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            format!(
                "{} is damaged ({e}); the agent rewrites it on its next change",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// What `volguard status` reports: the status file, whether the agent runs, its health,
/// and the host and agent process as they are now.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    #[serde(flatten)]
    pub status: AgentStatus,
    pub running: bool,
    pub health: Health,
    pub failing: Vec<String>,
    pub system: host::SystemFacts,
    /// The agent's process; None when it does not run.
    pub process: Option<host::ProcessFacts>,
}

/// The agent's health as `status` judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Health {
    #[serde(rename = "ok")]
    Ok,
    #[serde(rename = "failing")]
    Failing,
    #[serde(rename = "not running")]
    NotRunning,
}

impl Health {
    /// The words the JSON and the text use.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Failing => "failing",
            Health::NotRunning => "not running",
        }
    }
}

impl StatusReport {
    /// 0 when the agent runs and nothing is failing, 3 when it runs with failures, 1 when
    /// it does not run.
    pub fn exit_code(&self) -> i32 {
        match self.health {
            Health::Ok => exit::OK,
            Health::Failing => exit::PARTIAL,
            Health::NotRunning => exit::ERROR,
        }
    }
}

/// Reads the status file and judges it; an error when the agent has never run here.
pub fn report() -> Result<StatusReport> {
    let path = path();
    let st = read(&path).map_err(Error::Other)?;
    let Some(st) = st else {
        return Err(Error::Other(format!(
            "no agent status at {}: the agent has never run on this host (systemctl start volguard)",
            path.display()
        )));
    };
    let running = st.activity != "stopped" && containers::pid_alive(st.pid as i64);
    let failing = st.failing();
    let health = match (running, failing.is_empty()) {
        (false, _) => Health::NotRunning,
        (true, true) => Health::Ok,
        (true, false) => Health::Failing,
    };
    // Live, not from the file: the host now, and the agent's process if it runs.
    let process = running.then(|| host::process(st.pid)).flatten();
    Ok(StatusReport {
        status: st,
        running,
        health,
        failing,
        system: host::system(),
        process,
    })
}
