//! The agent's Prometheus metrics: what it did per volume and job, served as the text
//! exposition format on a loopback port. A handful of counters and gauges do not need a
//! metrics library; the format is plain lines. Host memory, load and uptime and the
//! agent's own memory and CPU (from `host`, read at each scrape) come with them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::host::{self, ProcessFacts, SystemFacts};

/// Per-volume backup figures.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct VolumeFigures {
    pub backups_ok: u64,
    pub backups_failed: u64,
    pub last_success_time: Option<f64>,
    pub last_duration_s: f64,
    pub bytes_read: u64,
    pub bytes_added: u64,
    pub foreign_writes: u64,
}

/// Figures of a periodic job (check, drill, retention).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct JobFigures {
    pub ok: u64,
    pub failed: u64,
    pub last_success_time: Option<f64>,
    pub last_duration_s: f64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub started: f64,
    pub volumes: BTreeMap<String, VolumeFigures>,
    pub jobs: BTreeMap<&'static str, JobFigures>,
    pub events_lost: u64,
    pub config_reloads_failed: u64,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// The exposition text; `system` and `own` (the agent's process) add the host gauges.
    pub fn render(&self, system: Option<&SystemFacts>, own: Option<&ProcessFacts>) -> String {
        let mut o = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, rows: Vec<(String, f64)>| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in rows {
                let _ = writeln!(o, "{name}{labels} {v}");
            }
        };
        let per_volume = |f: &dyn Fn(&VolumeFigures) -> Option<f64>| {
            self.volumes
                .iter()
                .filter_map(|(n, v)| f(v).map(|x| (format!("{{volume=\"{}\"}}", escape(n)), x)))
                .collect::<Vec<_>>()
        };
        metric(
            "volguard_agent_start_time_seconds",
            "gauge",
            "When the agent started (Unix time).",
            vec![(String::new(), self.started)],
        );
        metric(
            "volguard_backup_last_success_timestamp_seconds",
            "gauge",
            "Time of the last successful backup per volume.",
            per_volume(&|v| v.last_success_time),
        );
        metric(
            "volguard_backup_last_duration_seconds",
            "gauge",
            "Duration of the last backup per volume.",
            per_volume(&|v| Some(v.last_duration_s)),
        );
        metric(
            "volguard_backups_total",
            "counter",
            "Successful backups per volume.",
            per_volume(&|v| Some(v.backups_ok as f64)),
        );
        metric(
            "volguard_backup_failures_total",
            "counter",
            "Failed backups per volume.",
            per_volume(&|v| Some(v.backups_failed as f64)),
        );
        metric(
            "volguard_backup_read_bytes_total",
            "counter",
            "Bytes read from volumes.",
            per_volume(&|v| Some(v.bytes_read as f64)),
        );
        metric(
            "volguard_backup_added_bytes_total",
            "counter",
            "Bytes written to the repository.",
            per_volume(&|v| Some(v.bytes_added as f64)),
        );
        metric(
            "volguard_foreign_writes_total",
            "counter",
            "Writes to volume data by processes that are neither Docker nor a container mounting the volume.",
            per_volume(&|v| Some(v.foreign_writes as f64)),
        );
        let per_job = |f: &dyn Fn(&JobFigures) -> Option<f64>| {
            self.jobs
                .iter()
                .filter_map(|(n, j)| f(j).map(|x| (format!("{{job=\"{n}\"}}"), x)))
                .collect::<Vec<_>>()
        };
        metric(
            "volguard_job_last_success_timestamp_seconds",
            "gauge",
            "Last success of check, drill and retention.",
            per_job(&|j| j.last_success_time),
        );
        metric(
            "volguard_job_failures_total",
            "counter",
            "Failed runs of check, drill and retention.",
            per_job(&|j| Some(j.failed as f64)),
        );
        metric(
            "volguard_job_runs_total",
            "counter",
            "Successful runs of check, drill and retention.",
            per_job(&|j| Some(j.ok as f64)),
        );
        metric(
            "volguard_watch_events_lost_total",
            "counter",
            "Times the watcher may have lost events (queue overflow, restart).",
            vec![(String::new(), self.events_lost as f64)],
        );
        metric(
            "volguard_config_reload_failures_total",
            "counter",
            "SIGHUP reloads refused because the new config was invalid.",
            vec![(String::new(), self.config_reloads_failed as f64)],
        );
        let (s, p) = (system, own);
        for (name, kind, help, value) in [
            (
                "volguard_host_memory_total_bytes",
                "gauge",
                "Memory of the host.",
                s.map(|s| s.memory_total_bytes as f64),
            ),
            (
                "volguard_host_memory_available_bytes",
                "gauge",
                "Memory of the host available without swapping.",
                s.map(|s| s.memory_available_bytes as f64),
            ),
            (
                "volguard_host_load1",
                "gauge",
                "Load average of the host over 1 minute.",
                s.map(|s| s.load1),
            ),
            (
                "volguard_host_load5",
                "gauge",
                "Load average of the host over 5 minutes.",
                s.map(|s| s.load5),
            ),
            (
                "volguard_host_load15",
                "gauge",
                "Load average of the host over 15 minutes.",
                s.map(|s| s.load15),
            ),
            (
                "volguard_host_uptime_seconds",
                "gauge",
                "Seconds since the host booted.",
                s.map(|s| s.uptime_seconds as f64),
            ),
            (
                "volguard_process_resident_memory_bytes",
                "gauge",
                "Resident memory of the agent.",
                p.map(|p| p.resident_memory_bytes as f64),
            ),
            (
                "volguard_process_cpu_seconds_total",
                "counter",
                "User and system CPU time of the agent.",
                p.map(|p| p.cpu_seconds_total),
            ),
        ] {
            metric(
                name,
                kind,
                help,
                value.map(|v| (String::new(), v)).into_iter().collect(),
            );
        }
        o
    }
}

/// Largest request read: a scraper's GET is a few hundred bytes.
const MAX_REQUEST_BYTES: usize = 8192;

/// Serves `GET /metrics` (and `/`) on `addr` from a thread of its own. Returns the bound
/// address (port 0 picks a free one).
pub fn serve(addr: &str, metrics: Arc<Mutex<Metrics>>) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
                let mut buf = vec![0u8; MAX_REQUEST_BYTES];
                let mut n = 0;
                // The request line may come in pieces; read until the headers end.
                while n < buf.len() && !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf[n..]) {
                        Ok(0) => break,
                        Ok(k) => n += k,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    }
                }
                let req = String::from_utf8_lossy(&buf[..n]);
                let path = req.split_whitespace().nth(1).unwrap_or("");
                let (status, body) = if path == "/metrics" || path == "/" {
                    let (system, own) = (host::system(), host::own_process());
                    let m = metrics.lock().unwrap_or_else(|p| p.into_inner());
                    ("200 OK", m.render(Some(&system), own.as_ref()))
                } else {
                    ("404 Not Found", "only /metrics is served\n".to_string())
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        })?;
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_format() {
        let mut m = Metrics {
            started: 1.0,
            ..Default::default()
        };
        m.volumes.insert(
            "db\"x".into(),
            VolumeFigures {
                backups_ok: 2,
                last_success_time: Some(5.0),
                ..Default::default()
            },
        );
        let text = m.render(None, None);
        assert!(
            text.contains("volguard_backups_total{volume=\"db\\\"x\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("volguard_backup_last_success_timestamp_seconds{volume=\"db\\\"x\"} 5\n")
        );
        assert!(text.contains("# TYPE volguard_backup_failures_total counter\n"));
        assert!(
            !text.contains("\nvolguard_host_memory_total_bytes "),
            "{text}"
        );
    }

    #[test]
    fn host_and_process_gauges() {
        let system = SystemFacts {
            memory_total_bytes: 1000,
            memory_available_bytes: 400,
            load1: 0.5,
            load5: 0.25,
            load15: 2.0,
            uptime_seconds: 77,
        };
        let own = ProcessFacts {
            pid: 1,
            resident_memory_bytes: 300,
            cpu_seconds_total: 1.5,
            run_time_seconds: 9,
        };
        let text = Metrics::default().render(Some(&system), Some(&own));
        for line in [
            "volguard_host_memory_total_bytes 1000\n",
            "volguard_host_memory_available_bytes 400\n",
            "volguard_host_load1 0.5\n",
            "volguard_host_load5 0.25\n",
            "volguard_host_load15 2\n",
            "volguard_host_uptime_seconds 77\n",
            "volguard_process_resident_memory_bytes 300\n",
            "volguard_process_cpu_seconds_total 1.5\n",
            "# TYPE volguard_process_cpu_seconds_total counter\n",
            "# TYPE volguard_host_load15 gauge\n",
        ] {
            assert!(text.contains(line), "{line:?} missing:\n{text}");
        }
    }
}
