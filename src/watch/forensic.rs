//! Forensic snapshots: when a foreign-change warning hits a volume, back the volume up at
//! once (`[watch] forensic_snapshot = true`), so the evidence is kept before anyone tidies
//! up. The backup runs in a volguard process of its own, so the watcher never waits for
//! it; its outcome becomes a line in the event log.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::alerts::{DEFAULT_FORENSIC_INTERVAL_SECS, EventLog};
use super::{WatchOptions, now};

/// Tags every forensic snapshot carries, so `snapshots` and `forget --keep-tag` find them.
pub const TAGS: [&str; 2] = ["forensic", "foreign-write"];

pub struct Forensic {
    /// Global flags that make the child use this process's configuration, repository, key
    /// and Docker root.
    args: Vec<OsString>,
    interval: Duration,
    last: HashMap<String, Instant>,
    /// Volumes whose forensic backup is still running: never two at once.
    running: Arc<Mutex<HashSet<String>>>,
    log: EventLog,
}

impl Forensic {
    /// None when forensic snapshots are off.
    pub fn new(opts: &WatchOptions, log: EventLog) -> Option<Forensic> {
        opts.settings.forensic_snapshot.then(|| Forensic {
            args: opts.volguard_args.clone(),
            interval: Duration::from_secs(
                opts.settings
                    .forensic_snapshot_interval_secs
                    .unwrap_or(DEFAULT_FORENSIC_INTERVAL_SECS),
            ),
            last: HashMap::new(),
            running: Arc::new(Mutex::new(HashSet::new())),
            log,
        })
    }

    /// A warning hit `volume`: start its backup unless one runs or ran within the interval.
    pub fn on_warning(&mut self, volume: &str, at: Instant) {
        if self
            .last
            .get(volume)
            .is_some_and(|t| at.duration_since(*t) < self.interval)
        {
            return;
        }
        {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            if !running.insert(volume.to_string()) {
                return;
            }
        }
        self.last.insert(volume.to_string(), at);
        let exe = match std::env::current_exe() {
            Ok(p) => p,
            Err(e) => {
                self.finish(
                    volume,
                    Err(format!("cannot find volguard's own binary: {e}")),
                );
                return;
            }
        };
        let mut cmd = Command::new(exe);
        cmd.args(&self.args)
            .args(["--json", "backup", volume])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for t in TAGS {
            cmd.args(["--tag", t]);
        }
        tracing::info!("foreign change to volume {volume}: taking a forensic snapshot");
        let (name, log, running) = (volume.to_string(), self.log.clone(), self.running.clone());
        let spawned = std::thread::Builder::new()
            .name("forensic".into())
            .spawn(move || {
                let result = run(cmd);
                record(&log, &name, result);
                running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&name);
            });
        if let Err(e) = spawned {
            self.finish(volume, Err(format!("cannot start a thread: {e}")));
        }
    }

    fn finish(&self, volume: &str, result: Result<String, String>) {
        record(&self.log, volume, result);
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(volume);
    }
}

/// Runs the backup; Ok(snapshot id) or Err(what went wrong, from its own error lines).
fn run(mut cmd: Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run volguard backup: {e}"))?;
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let id = doc["snapshots"][0]["snapshot_id"]
        .as_str()
        .map(str::to_string);
    match (out.status.success(), id) {
        (true, Some(id)) => Ok(id),
        (_, id) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
            Err(format!(
                "volguard backup exited with {}{}: {}",
                out.status,
                id.map(|i| format!(" (snapshot {i} written)"))
                    .unwrap_or_default(),
                last.unwrap_or("no error output")
            ))
        }
    }
}

fn record(log: &EventLog, volume: &str, result: Result<String, String>) {
    let line = match &result {
        Ok(id) => {
            tracing::info!("forensic snapshot {id} of volume {volume} taken");
            serde_json::json!({
                "time": now(), "op": "forensic_snapshot", "volume": volume,
                "snapshot": id, "ok": true,
            })
        }
        Err(e) => {
            tracing::warn!(
                "forensic snapshot of volume {volume} failed: {e}; back it up by hand: volguard backup {volume} --tag forensic"
            );
            serde_json::json!({
                "time": now(), "op": "forensic_snapshot", "volume": volume,
                "ok": false, "error": e,
            })
        }
    };
    if let Err(e) = log.append(&line) {
        tracing::error!("cannot write the event log {}: {e}", log.path().display());
    }
}
