//! `volguard agent` and `volguard status`: the service, and what it says it is doing.

use clap::Args;

use super::render::{Render, emit, ln};
use crate::agent::StatusReport;
use crate::fmt::human_bytes;

#[derive(Debug, Args)]
pub struct AgentArgs {}

#[derive(Debug, Args)]
pub struct StatusArgs {}

/// Exits 0 when the agent runs and nothing is failing, 3 when it runs with failures, 1
/// when it does not run.
pub(super) fn run(json: bool) -> crate::error::Result<i32> {
    let report = crate::agent::status_report()?;
    emit(json, &report);
    Ok(report.exit_code())
}

/// Unix time as RFC 3339, for people; `-` for never.
fn when(t: Option<f64>) -> String {
    t.map_or_else(|| "-".into(), |t| crate::fmt::unix_time(t as u64))
}

impl Render for StatusReport {
    fn text(&self) -> String {
        let (r, mut t) = (self, String::new());
        ln!(
            t,
            "agent: {} (pid {}, since {}), {}; repository {}, host {}",
            if r.running { "running" } else { "NOT RUNNING" },
            r.status.pid,
            when(Some(r.status.started)),
            r.status.activity,
            r.status.repository,
            r.status.host
        );
        if let Some(a) = &r.status.metrics_addr {
            ln!(t, "metrics: http://{a}/metrics");
        }
        ln!(
            t,
            "system: memory {} available of {}, load {:.2} {:.2} {:.2}, up {}",
            human_bytes(r.system.memory_available_bytes),
            human_bytes(r.system.memory_total_bytes),
            r.system.load1,
            r.system.load5,
            r.system.load15,
            crate::fmt::human_duration(r.system.uptime_seconds)
        );
        if let Some(p) = &r.process {
            ln!(
                t,
                "agent process: {} resident, {:.1} s CPU in {}",
                human_bytes(p.resident_memory_bytes),
                p.cpu_seconds_total,
                crate::fmt::human_duration(p.run_time_seconds)
            );
        }
        ln!(
            t,
            "{:<30} {:<10} {:<9} {:<21} {:<21} last error",
            "volume",
            "schedule",
            "mode",
            "last success",
            "next run"
        );
        for (n, v) in &r.status.volumes {
            ln!(
                t,
                "{:<30} {:<10} {:<9} {:<21} {:<21} {}",
                n,
                v.schedule,
                v.consistency,
                when(v.last_success),
                when(v.next_run),
                v.last_error.as_deref().unwrap_or("")
            );
        }
        for (n, j) in &r.status.jobs {
            ln!(
                t,
                "{:<30} {:<10} {:<9} {:<21} {:<21} {}",
                format!("[{n}]"),
                j.schedule,
                "",
                when(j.figures.last_success_time),
                when(j.next_run),
                j.last_error.as_deref().unwrap_or("")
            );
        }
        ln!(t, "health: {}", r.health.as_str());
        for f in &r.failing {
            ln!(t, "  failing: {f}");
        }
        t
    }
}
