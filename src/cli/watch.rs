//! The `watch` and `events` commands: thin wrappers that print, as JSON lines or text
//! lines while they come, what `watch::run` reports and what the event log holds.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use time::OffsetDateTime;

use clap::Args;

use crate::error::{Error, Result, exit};
use crate::watch::alerts::{self, WatchSettings};
use crate::watch::{Notice, WatchEvent, WatchOptions};

#[derive(Debug, Args)]
pub struct WatchArgs {}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only events at or after this time: RFC 3339, or a duration back from now (30m, 24h, 7d).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only events of this volume.
    #[arg(long)]
    pub volume: Option<String>,
}

fn short(id: &str) -> &str {
    &id[..12.min(id.len())]
}

/// One readable line per change.
pub fn text_line(e: &WatchEvent) -> String {
    let who = match (&e.container, &e.container_name) {
        (Some(_), Some(n)) => format!(" container={n}"),
        (Some(c), None) => format!(" container={}", short(c)),
        _ => String::new(),
    };
    let from = match (&e.from_volume, &e.from) {
        (Some(v), Some(f)) => format!(" from={v}:{f}"),
        (None, Some(f)) => format!(" from={f}"),
        _ => String::new(),
    };
    let tag = if e.warning {
        "WARN"
    } else if e.rate_limited {
        "warn(rate-limited)"
    } else if e.allowed_by.is_some() {
        "allowed"
    } else {
        "ok"
    };
    format!(
        "{} {tag} {} {}:{} {}{from} pid={} comm={} exe={} uid={}{}{}{}{}",
        e.time,
        e.verdict.as_str(),
        e.volume,
        e.path,
        e.op.as_str(),
        e.pid,
        e.comm.as_deref().unwrap_or("?"),
        e.exe.as_deref().unwrap_or("?"),
        e.uid.map(|u| u.to_string()).unwrap_or_else(|| "?".into()),
        e.unit
            .as_deref()
            .map(|u| format!(" unit={u}"))
            .unwrap_or_default(),
        who,
        e.reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default(),
        if e.process_gone {
            " [process had exited]"
        } else {
            ""
        },
    )
}

/// `volguard watch`: runs in the foreground until interrupted.
pub fn watch(
    docker_root: &Path,
    settings: &WatchSettings,
    json: bool,
    _args: &WatchArgs,
    volguard_args: Vec<std::ffi::OsString>,
) -> Result<i32> {
    let opts = WatchOptions {
        docker_root: docker_root.to_path_buf(),
        state_dir: crate::paths::state_dir(),
        settings: settings.clone(),
        volguard_args,
    };
    let stop = AtomicBool::new(false);
    let stdout = std::io::stdout();
    let mut broken = false;
    let mut sink = |n: Notice<'_>| match n {
        Notice::Ready(s) => {
            eprintln!(
                "volguard watch: watching {} volume(s) on {} filesystem(s) ({}); warnings go to {}",
                s.watched.len(),
                s.filesystems.len(),
                s.filesystems.join(", "),
                s.event_log
            );
            for u in &s.unwatched {
                eprintln!(
                    "volguard watch: NOT watched: volume {}: {}",
                    u.volume, u.reason
                );
            }
            if let Some(e) = &s.process_connector_error {
                eprintln!("volguard watch: {e}");
            }
        }
        Notice::Unwatched(u) => eprintln!(
            "volguard watch: NOT watched: volume {}: {}",
            u.volume, u.reason
        ),
        Notice::Lost { .. } => {}
        Notice::Event(e) => {
            let line = if json {
                serde_json::to_string(e).unwrap_or_default()
            } else {
                text_line(e)
            };
            let mut out = stdout.lock();
            if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() && !broken {
                broken = true;
                tracing::warn!("stdout is closed; events still go to the event log");
            }
        }
    };
    crate::watch::run(&opts, &stop, &mut sink)?;
    Ok(exit::OK)
}

/// `--since`: RFC 3339, or a duration back from now (`90s`, `30m`, `24h`, `7d`).
fn parse_since(s: &str) -> Result<OffsetDateTime> {
    if let Ok(t) = crate::fmt::parse_time(s) {
        return Ok(t);
    }
    let d = crate::fmt::parse_grace(s).map_err(|_| {
        Error::Usage(format!(
            "--since {s:?}: give an RFC 3339 time (2024-05-01T12:00:00Z) or a duration back from now (90s, 30m, 24h, 7d)"
        ))
    })?;
    Ok(OffsetDateTime::now_utc() - d)
}

/// `volguard events`: the event log (rotated files too), oldest first.
pub fn events(settings: &WatchSettings, json: bool, args: &EventsArgs) -> Result<i32> {
    let opts = WatchOptions {
        docker_root: Default::default(),
        state_dir: crate::paths::state_dir(),
        settings: settings.clone(),
        volguard_args: Vec::new(),
    };
    let since = args.since.as_deref().map(parse_since).transpose()?;
    let log = opts.event_log();
    let (lines, bad) = log.read_all();
    let selected: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| {
            since.is_none_or(|s| {
                l["time"]
                    .as_str()
                    .and_then(|t| crate::fmt::parse_time(t).ok())
                    .is_some_and(|t| t >= s)
            })
        })
        .filter(|l| {
            args.volume.as_ref().is_none_or(|v| {
                l["volume"].as_str() == Some(v.as_str())
                    || l["volumes"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(v.as_str())))
            })
        })
        .collect();
    let marks = alerts::verify_marks(&opts.state_dir);
    if bad > 0 {
        tracing::warn!(
            "{bad} line(s) of {} (or its rotated files) are not JSON and were skipped",
            log.path().display()
        );
    }
    if json {
        let doc = serde_json::json!({
            "event_log": log.path().display().to_string(),
            "events": selected,
            "verify_needed": marks["volumes"],
        });
        crate::outln!("{doc}");
        return Ok(exit::OK);
    }
    for l in &selected {
        match l["op"].as_str() {
            Some("watch_start") | Some("watch_stop") => crate::outln!(
                "{} {} (pid {})",
                l["time"].as_str().unwrap_or("?"),
                l["op"].as_str().unwrap_or("?"),
                l["pid"]
            ),
            Some("events_lost") => crate::outln!(
                "{} EVENTS MAY HAVE BEEN LOST: {}; volumes: {}",
                l["time"].as_str().unwrap_or("?"),
                l["reason"].as_str().unwrap_or("?"),
                l["volumes"]
            ),
            _ => match serde_json::from_value::<LoggedEvent>((*l).clone()) {
                Ok(e) => crate::outln!("{}", e.line()),
                Err(_) => crate::outln!("{l}"),
            },
        }
    }
    if let Some(m) = marks["volumes"].as_object()
        && !m.is_empty()
    {
        let names: Vec<&String> = m.keys().collect();
        crate::outln!(
            "volumes to check with `volguard verify` (events may have been lost): {}",
            names
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(exit::OK)
}

/// The fields `events` prints from a logged warning.
#[derive(serde::Deserialize)]
struct LoggedEvent {
    time: String,
    volume: String,
    path: String,
    op: String,
    verdict: String,
    pid: i64,
    comm: Option<String>,
    exe: Option<String>,
    uid: Option<u32>,
    container: Option<String>,
}

impl LoggedEvent {
    fn line(&self) -> String {
        format!(
            "{} {} {}:{} {} pid={} comm={} exe={} uid={}{}",
            self.time,
            self.verdict,
            self.volume,
            self.path,
            self.op,
            self.pid,
            self.comm.as_deref().unwrap_or("?"),
            self.exe.as_deref().unwrap_or("?"),
            self.uid
                .map(|u| u.to_string())
                .unwrap_or_else(|| "?".into()),
            self.container
                .as_deref()
                .map(|c| format!(" container={}", short(c)))
                .unwrap_or_default()
        )
    }
}
