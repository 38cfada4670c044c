//! Where warnings about foreign changes go: a WARN through tracing (journald under
//! systemd), a JSON line in the event log (`$VOLGUARD_STATE_DIR/events.jsonl`, rotated by
//! size), an optional webhook (JSON POST over plain HTTP) and command hook; plus the
//! config that shapes them (`[watch]` table): allow rules and the per (process, volume)
//! rate limit that keeps a runaway writer from flooding every sink.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::attribution::ProcInfo;

/// Event log rotation defaults: 10 MiB per file, 5 rotated files kept.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 10 * 1024 * 1024;
pub const DEFAULT_LOG_KEEP: usize = 5;
/// Default rate limit: 10 warnings per (process, volume) per minute.
pub const DEFAULT_RATE_LIMIT: u32 = 10;
pub const DEFAULT_RATE_WINDOW_SECS: u64 = 60;
/// Webhook deliveries waiting; more are dropped (and counted) rather than stalling the
/// watcher behind a slow receiver.
const DELIVERY_QUEUE: usize = 1024;
/// Each webhook delivery is bounded by this (connect, send, answer).
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// The `[watch]` table of the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchSettings {
    /// `http://host:port/path`: each warning is POSTed there as JSON.
    pub webhook: Option<String>,
    /// Program and arguments run for each warning, with the warning's JSON on stdin.
    pub command: Option<Vec<String>>,
    /// Legitimate host writers; a change matching any rule is reported but not warned.
    #[serde(default)]
    pub allow: Vec<AllowRule>,
    /// Warnings per (process, volume) per `rate_window_secs` (default 10 per 60 s).
    pub rate_limit: Option<u32>,
    pub rate_window_secs: Option<u64>,
    /// Event log size before rotation (default 10 MiB) and rotated files kept (default 5).
    pub event_log_max_bytes: Option<u64>,
    pub event_log_keep: Option<usize>,
    /// Back up a volume at once (tags `forensic`, `foreign-write`) when a foreign change
    /// warning hits it, so the evidence is kept before anyone tidies up.
    #[serde(default)]
    pub forensic_snapshot: bool,
    /// At most one forensic snapshot per volume within this many seconds (default 600):
    /// a runaway writer must not turn into a backup loop.
    pub forensic_snapshot_interval_secs: Option<u64>,
}

/// Default spacing of forensic snapshots of one volume.
pub const DEFAULT_FORENSIC_INTERVAL_SECS: u64 = 600;

/// One allow rule: every field given must match.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AllowRule {
    /// Executable path, exactly as /proc/<pid>/exe shows it.
    pub exe: Option<String>,
    /// systemd unit (e.g. `backup.service`).
    pub unit: Option<String>,
    pub uid: Option<u32>,
    /// Limit the rule to one volume.
    pub volume: Option<String>,
}

impl AllowRule {
    fn is_empty(&self) -> bool {
        self.exe.is_none() && self.unit.is_none() && self.uid.is_none()
    }

    pub fn matches(&self, p: &ProcInfo, volume: &str) -> bool {
        !self.is_empty()
            && self.exe.as_ref().is_none_or(|e| p.exe.as_ref() == Some(e))
            && self
                .unit
                .as_ref()
                .is_none_or(|u| p.unit.as_ref() == Some(u))
            && self.uid.is_none_or(|u| p.uid == Some(u))
            && self.volume.as_ref().is_none_or(|v| v == volume)
    }

    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(e) = &self.exe {
            parts.push(format!("exe={e}"));
        }
        if let Some(u) = &self.unit {
            parts.push(format!("unit={u}"));
        }
        if let Some(u) = self.uid {
            parts.push(format!("uid={u}"));
        }
        if let Some(v) = &self.volume {
            parts.push(format!("volume={v}"));
        }
        parts.join(",")
    }
}

impl WatchSettings {
    /// Refuses settings that cannot work, naming the key and what to do.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(w) = &self.webhook {
            crate::http::parse_http_url(w).map_err(|e| format!("[watch] webhook {w:?}: {e}"))?;
        }
        if let Some(c) = &self.command
            && c.is_empty()
        {
            return Err("[watch] command is empty; give the program and its arguments as a list, e.g. [\"/usr/local/bin/notify\", \"--urgent\"]".into());
        }
        for (i, r) in self.allow.iter().enumerate() {
            if r.is_empty() {
                return Err(format!(
                    "[[watch.allow]] rule {} names no exe, unit or uid; it would allow everything",
                    i + 1
                ));
            }
        }
        if self.rate_limit == Some(0) {
            return Err("[watch] rate_limit = 0 would drop every warning; remove it for the default (10) or give a positive number".into());
        }
        Ok(())
    }
}

/// Runs the command hook with the warning on stdin; waits for it (in the delivery thread).
/// The hook never gets the repository's secrets in its environment.
pub fn run_command(cmd: &[String], body: &[u8]) -> Result<(), String> {
    let (prog, args) = cmd.split_first().ok_or("empty command")?;
    let mut command = std::process::Command::new(prog);
    for k in crate::hooks::SECRET_ENV {
        command.env_remove(k);
    }
    let mut child = command
        .args(args)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {prog}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(body);
    }
    let status = child.wait().map_err(|e| format!("{prog}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{prog} exited with {status}"))
    }
}

/// A size-rotated JSON lines file: `events.jsonl`, then `events.jsonl.1` (newest rotated)
/// to `.N`. Each line is written with one `write` on an O_APPEND file, so readers never see
/// half a line from a crash between lines.
#[derive(Clone)]
pub struct EventLog {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
}

impl EventLog {
    pub fn new(path: PathBuf, max_bytes: u64, keep: usize) -> EventLog {
        EventLog {
            path,
            max_bytes: max_bytes.max(4096),
            keep: keep.max(1),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn append(&self, line: &serde_json::Value) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let size = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        if size >= self.max_bytes {
            self.rotate()?;
        }
        let mut bytes = serde_json::to_vec(line).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        f.write_all(&bytes)
    }

    fn rotate(&self) -> std::io::Result<()> {
        let name = |i: usize| PathBuf::from(format!("{}.{i}", self.path.display()));
        let _ = std::fs::remove_file(name(self.keep));
        for i in (1..self.keep).rev() {
            let from = name(i);
            if from.exists() {
                std::fs::rename(&from, name(i + 1))?;
            }
        }
        std::fs::rename(&self.path, name(1))
    }

    /// Every line of every file, oldest first; lines that are not JSON are skipped and
    /// counted (a truncated last line after a crash).
    pub fn read_all(&self) -> (Vec<serde_json::Value>, usize) {
        let mut files: Vec<PathBuf> = (1..=self.keep.max(64))
            .map(|i| PathBuf::from(format!("{}.{i}", self.path.display())))
            .filter(|p| p.exists())
            .collect();
        files.reverse();
        files.push(self.path.clone());
        let mut out = Vec::new();
        let mut bad = 0;
        for f in files {
            let Ok(text) = std::fs::read_to_string(&f) else {
                continue;
            };
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                match serde_json::from_str(line) {
                    Ok(v) => out.push(v),
                    Err(_) => bad += 1,
                }
            }
        }
        (out, bad)
    }
}

/// The file listing volumes whose events may have been lost (queue overflow, watcher
/// down): `verify` them. JSON `{"volumes": {"name": {"since", "reason"}}}`.
pub fn verify_marks_path(state_dir: &Path) -> PathBuf {
    state_dir.join("verify-needed.json")
}

pub fn mark_for_verify(state_dir: &Path, volumes: &[String], reason: &str, time: &str) {
    let path = verify_marks_path(state_dir);
    let mut doc: serde_json::Value = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| serde_json::json!({"volumes": {}}));
    if !doc["volumes"].is_object() {
        doc = serde_json::json!({"volumes": {}});
    }
    for v in volumes {
        if doc["volumes"].get(v).is_none() {
            doc["volumes"][v] = serde_json::json!({"since": time, "reason": reason});
        }
    }
    let tmp = path.with_extension("json.tmp");
    let write = std::fs::create_dir_all(state_dir)
        .and_then(|_| std::fs::write(&tmp, doc.to_string()))
        .and_then(|_| std::fs::rename(&tmp, &path));
    if let Err(e) = write {
        tracing::error!(
            "cannot record volumes needing verify in {}: {e}",
            path.display()
        );
    }
}

/// Removes `volume`'s verify mark (a `verify` found nothing unexplained); true when there
/// was one.
pub fn clear_verify_mark(state_dir: &Path, volume: &str) -> std::io::Result<bool> {
    let path = verify_marks_path(state_dir);
    let mut doc = verify_marks(state_dir);
    let removed = doc["volumes"]
        .as_object_mut()
        .is_some_and(|m| m.remove(volume).is_some());
    if removed {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, doc.to_string())?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(removed)
}

pub fn verify_marks(state_dir: &Path) -> serde_json::Value {
    std::fs::read(verify_marks_path(state_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| serde_json::json!({"volumes": {}}))
}

/// Sliding-window limit per key.
pub struct RateLimiter {
    limit: u32,
    window: Duration,
    seen: HashMap<String, (Instant, u32, u64)>,
}

impl RateLimiter {
    pub fn new(limit: u32, window: Duration) -> RateLimiter {
        RateLimiter {
            limit: limit.max(1),
            window,
            seen: HashMap::new(),
        }
    }

    /// Some(n) when a warning for `key` may go out now, n = warnings suppressed for that
    /// key since the last one that went out; None when it must be suppressed.
    pub fn admit(&mut self, key: &str, now: Instant) -> Option<u64> {
        if self.seen.len() > 10_000 {
            let w = self.window;
            self.seen
                .retain(|_, (start, _, _)| now.duration_since(*start) < w);
        }
        let e = self.seen.entry(key.to_string()).or_insert((now, 0, 0));
        if now.duration_since(e.0) >= self.window {
            *e = (now, 0, e.2);
        }
        if e.1 < self.limit {
            e.1 += 1;
            let suppressed = e.2;
            e.2 = 0;
            Some(suppressed)
        } else {
            e.2 += 1;
            None
        }
    }
}

/// Sends warnings to the slow sinks (webhook, command) from a thread of their own.
pub struct Delivery {
    tx: Option<crossbeam_channel::Sender<Vec<u8>>>,
    handle: Option<std::thread::JoinHandle<()>>,
    dropped: u64,
}

impl Delivery {
    pub fn start(webhook: Option<String>, command: Option<Vec<String>>) -> Delivery {
        if webhook.is_none() && command.is_none() {
            return Delivery {
                tx: None,
                handle: None,
                dropped: 0,
            };
        }
        let (tx, rx) = crossbeam_channel::bounded::<Vec<u8>>(DELIVERY_QUEUE);
        let handle = std::thread::Builder::new()
            .name("watch-delivery".into())
            .spawn(move || {
                for body in rx {
                    if let Some(url) = &webhook
                        && let Err(e) = crate::http::post(url, &body, WEBHOOK_TIMEOUT)
                    {
                        tracing::error!("webhook {url}: {e}; the warning is in the event log");
                    }
                    if let Some(cmd) = &command
                        && let Err(e) = run_command(cmd, &body)
                    {
                        tracing::error!("command hook: {e}; the warning is in the event log");
                    }
                }
            })
            .ok();
        Delivery {
            tx: Some(tx),
            handle,
            dropped: 0,
        }
    }

    pub fn send(&mut self, body: Vec<u8>) {
        if let Some(tx) = &self.tx
            && tx.try_send(body).is_err()
        {
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                tracing::error!(
                    "{} warnings not delivered to the webhook/command hook: they are slower than the warnings arrive; all are in the event log",
                    self.dropped
                );
            }
        }
    }

    /// Waits for queued deliveries (on stop).
    pub fn finish(mut self) {
        self.tx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_counts_what_it_drops() {
        let mut r = RateLimiter::new(2, Duration::from_secs(60));
        let t = Instant::now();
        assert_eq!(r.admit("p", t), Some(0));
        assert_eq!(r.admit("p", t), Some(0));
        assert_eq!(r.admit("p", t), None);
        assert_eq!(r.admit("p", t), None);
        assert_eq!(r.admit("q", t), Some(0));
        assert_eq!(r.admit("p", t + Duration::from_secs(61)), Some(2));
    }

    #[test]
    fn event_log_rotates_and_reads_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::new(dir.path().join("events.jsonl"), 4096, 3);
        for i in 0..400 {
            log.append(&serde_json::json!({"i": i, "pad": "x".repeat(40)}))
                .unwrap();
        }
        assert!(dir.path().join("events.jsonl.1").exists());
        assert!(!dir.path().join("events.jsonl.4").exists());
        let (all, bad) = log.read_all();
        assert_eq!(bad, 0);
        let idx: Vec<i64> = all.iter().map(|v| v["i"].as_i64().unwrap()).collect();
        assert!(idx.windows(2).all(|w| w[1] == w[0] + 1), "{idx:?}");
        assert_eq!(*idx.last().unwrap(), 399);
    }

    #[test]
    fn settings_are_validated() {
        let ok = WatchSettings {
            webhook: Some("http://127.0.0.1:9/x".into()),
            ..Default::default()
        };
        assert!(ok.validate().is_ok());
        let https = WatchSettings {
            webhook: Some("https://x".into()),
            ..Default::default()
        };
        assert!(https.validate().unwrap_err().contains("http://"));
        let empty_rule = WatchSettings {
            allow: vec![AllowRule::default()],
            ..Default::default()
        };
        assert!(empty_rule.validate().is_err());
    }

    #[test]
    fn allow_rules_need_every_field() {
        let p = ProcInfo {
            exe: Some("/usr/bin/rsync".into()),
            uid: Some(0),
            ..Default::default()
        };
        let r = AllowRule {
            exe: Some("/usr/bin/rsync".into()),
            uid: Some(0),
            ..Default::default()
        };
        assert!(r.matches(&p, "v"));
        let r2 = AllowRule {
            uid: Some(1000),
            ..r.clone()
        };
        assert!(!r2.matches(&p, "v"));
        let r3 = AllowRule {
            volume: Some("other".into()),
            ..r
        };
        assert!(!r3.matches(&p, "v"));
    }
}
