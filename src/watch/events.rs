//! Stage 2 of the watcher, per located event: coalescing, the verdict, allow rules, the
//! rate limit and the warning sinks; and the notices for events that were lost.

use std::collections::HashMap;
use std::time::Instant;

use super::alerts::{self, Delivery, EventLog, RateLimiter};
use super::attribution::{self, ProcInfo, Verdict};
use super::model::Model;
use super::{COALESCE_QUIET, Notice, Op, WatchEvent, WatchOptions, forensic, now};

/// An event that passed the read-time stage: located in a volume, process captured.
pub(super) struct Staged {
    pub(super) op: Op,
    pub(super) pid: i32,
    pub(super) volume: String,
    pub(super) path: String,
    pub(super) from: Option<(String, String)>,
}

/// Stage 2 state: coalescing, rate limit, sinks.
pub(super) struct Watcher<'a> {
    pub(super) opts: &'a WatchOptions,
    pub(super) log: EventLog,
    pub(super) limiter: RateLimiter,
    pub(super) delivery: Delivery,
    pub(super) forensic: Option<forensic::Forensic>,
    /// (pid, start time, volume, path) → (ops already reported or implied, last event).
    pub(super) coalesce: HashMap<(i32, u64, String, String), (u8, Instant)>,
}

impl Watcher<'_> {
    pub(super) fn handle(
        &mut self,
        model: &mut Model,
        s: Staged,
        info: &ProcInfo,
        gone: bool,
        sink: &mut dyn FnMut(Notice),
    ) {
        let now_i = Instant::now();
        let key = (s.pid, info.start_time, s.volume.clone(), s.path.clone());
        let entry = self.coalesce.entry(key).or_insert((0, now_i));
        let fresh = entry.0 == 0 || now_i.duration_since(entry.1) >= COALESCE_QUIET;
        if fresh {
            entry.0 = 0;
        }
        entry.1 = now_i;
        if entry.0 & s.op.bit() != 0 {
            return;
        }
        entry.0 = match s.op {
            // After a delete, a re-created file is a new operation.
            Op::Delete => s.op.implies(),
            _ => entry.0 | s.op.implies(),
        };

        let container_name = info
            .container
            .as_deref()
            .and_then(|c| model.container(c).map(|m| m.name.clone()));
        let (verdict, reason) = attribution::verdict(info, &s.volume, &|c: &str, v: &str| {
            model
                .containers
                .get(c)
                .is_some_and(|m| m.volumes.contains(v))
        });
        let allowed_by = (verdict == Verdict::Foreign)
            .then(|| {
                self.opts
                    .settings
                    .allow
                    .iter()
                    .find(|r| r.matches(info, &s.volume))
                    .map(|r| r.describe())
            })
            .flatten();
        let (from_volume, from) = match s.from {
            Some((v, p)) if v != s.volume => (Some(v), Some(p)),
            Some((_, p)) => (None, Some(p)),
            None => (None, None),
        };
        let mut ev = WatchEvent {
            time: now(),
            volume: s.volume,
            path: s.path,
            op: s.op,
            verdict,
            pid: s.pid,
            comm: info.comm.clone(),
            exe: info.exe.clone(),
            uid: info.uid,
            container: info.container.clone(),
            container_name,
            cmdline: info.cmdline.clone(),
            ppid: info.ppid,
            parents: info.parents.clone(),
            unit: info.unit.clone(),
            from,
            from_volume,
            reason,
            allowed_by,
            process_gone: gone,
            warning: false,
            rate_limited: false,
            suppressed_before: 0,
        };
        if ev.verdict == Verdict::Foreign && ev.allowed_by.is_none() {
            let key = format!("{}:{}:{}", ev.pid, info.start_time, ev.volume);
            match self.limiter.admit(&key, now_i) {
                Some(suppressed) => {
                    ev.warning = true;
                    ev.suppressed_before = suppressed;
                    self.warn(&ev);
                }
                None => ev.rate_limited = true,
            }
        }
        sink(Notice::Event(&ev));
    }

    fn warn(&mut self, ev: &WatchEvent) {
        tracing::warn!(
            volume = %ev.volume,
            path = %ev.path,
            op = ev.op.as_str(),
            pid = ev.pid,
            comm = ev.comm.as_deref().unwrap_or("?"),
            exe = ev.exe.as_deref().unwrap_or("?"),
            uid = ev.uid.map(i64::from).unwrap_or(-1),
            container = ev.container.as_deref().unwrap_or("-"),
            "foreign change to volume {}: {} {} by pid {} ({}){}",
            ev.volume,
            ev.op.as_str(),
            ev.path,
            ev.pid,
            ev.exe.as_deref().or(ev.comm.as_deref()).unwrap_or("unknown process"),
            ev.reason.as_deref().map(|r| format!("; {r}")).unwrap_or_default(),
        );
        let value = match serde_json::to_value(ev) {
            Ok(v) => v,
            Err(_) => return,
        };
        if let Err(e) = self.log.append(&value) {
            tracing::error!(
                "cannot write the event log {}: {e}; the warning above is not recorded there",
                self.log.path().display()
            );
        }
        self.delivery.send(value.to_string().into_bytes());
        if let Some(f) = &mut self.forensic {
            f.on_warning(&ev.volume, Instant::now());
        }
    }

    pub(super) fn lost(&mut self, volumes: &[String], reason: &str, sink: &mut dyn FnMut(Notice)) {
        let time = now();
        // Recorded before it is said: whoever reads the warning finds the marks in place.
        alerts::mark_for_verify(&self.opts.state_dir, volumes, reason, &time);
        let line = serde_json::json!({
            "time": time, "op": "events_lost", "reason": reason, "volumes": volumes,
            "warning": true,
        });
        let _ = self.log.append(&line);
        tracing::warn!(
            "events may have been lost: {reason}; volumes marked for `volguard verify`: {}",
            if volumes.is_empty() {
                "none known".to_string()
            } else {
                volumes.join(", ")
            }
        );
        self.delivery.send(line.to_string().into_bytes());
        sink(Notice::Lost { volumes, reason });
    }

    /// A previous run left `watch_start` in the log: whatever happened between its last
    /// line and now was not seen.
    pub(super) fn note_restart(&mut self, model: &Model, sink: &mut dyn FnMut(Notice)) {
        let (lines, _) = self.log.read_all();
        if !lines.iter().any(|l| l["op"] == "watch_start") {
            return;
        }
        let last = lines
            .last()
            .and_then(|l| l["time"].as_str())
            .unwrap_or("?")
            .to_string();
        let all: Vec<String> = model.volumes.keys().cloned().collect();
        self.lost(
            &all,
            &format!("the watcher was not running between {last} and now"),
            sink,
        );
    }
}
