//! Running the tools' commands and measuring them.
//!
//! Every timed command starts from a cold page cache (when allowed), and its
//! peak RSS comes from the kernel's own accounting (`wait4` rusage), so the
//! numbers do not depend on sampling.
//!
//! One trap shapes this module: on exec, Linux folds the *old* address
//! space's RSS high-water mark into the new program's `ru_maxrss`. A command
//! spawned straight from this bench, which holds a 1 GiB database buffer
//! while generating data, would report at least that peak. So timed commands
//! are started by a launcher: this same bench binary re-executed with
//! [`LAUNCH_FLAG`], a fresh process a few MiB big. It spawns the command (or
//! both halves of `tar | zstd`, each its own process, not `sh -c`), times
//! it, reaps each process with `wait4`, and writes the figures to a file.

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// First argument that turns the bench binary into the launcher.
pub const LAUNCH_FLAG: &str = "--launch-measured";

/// What one timed command cost.
#[derive(Clone, Copy, Debug)]
pub struct Usage {
    pub wall: Duration,
    /// Peak resident set size in bytes; for a pipeline the larger of the two.
    pub peak_rss: u64,
    /// User and system CPU time, summed over the pipeline: tells a slow run that worked
    /// more from one that waited.
    pub user: Duration,
    pub sys: Duration,
    /// CPU time the bench's own S3 server used meanwhile, when there is one.
    pub server_cpu: Option<Duration>,
}

impl std::fmt::Display for Usage {
    /// As the progress lines show it: wall time, CPU time, peak RSS.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.2} s ({:.2} s user, {:.2} s system CPU), {:.0} MiB RSS",
            self.wall.as_secs_f64(),
            self.user.as_secs_f64(),
            self.sys.as_secs_f64(),
            self.peak_rss as f64 / (1024.0 * 1024.0)
        )?;
        match self.server_cpu {
            Some(t) => write!(f, ", S3 server {:.2} s CPU", t.as_secs_f64()),
            None => Ok(()),
        }
    }
}

/// Parent to launcher: argv of each process; each one's stdout feeds the
/// next one's stdin. The launcher's own stdio is inherited at both ends.
#[derive(Serialize, Deserialize)]
struct LaunchRequest {
    pipeline: Vec<Vec<OsString>>,
    report: PathBuf,
}

/// Launcher to parent, one entry per process of the pipeline.
#[derive(Serialize, Deserialize)]
struct LaunchReport {
    wall_s: f64,
    peak_rss: Vec<u64>,
    user_s: f64,
    sys_s: f64,
    /// Raw wait statuses, as `ExitStatus::into_raw`.
    statuses: Vec<i32>,
}

/// Runs commands with stdout/stderr captured to files under `logs`, and
/// drops the page cache before each timed one.
pub struct Runner {
    logs: PathBuf,
    drop_caches: bool,
    launcher: PathBuf,
    /// The bench's own S3 server, whose CPU time each timed command reports.
    pub server_pid: Option<u32>,
}

impl Runner {
    /// Fails early if cold-cache runs were requested but are not permitted,
    /// rather than silently producing warm-cache numbers.
    pub fn new(logs: PathBuf, drop_caches: bool) -> Result<Self> {
        let launcher = std::env::current_exe().context("locating the bench executable")?;
        let runner = Self {
            server_pid: None,
            logs,
            drop_caches,
            launcher,
        };
        if drop_caches {
            runner.drop_page_cache().context(
                "cannot drop the page cache (needs root); pass --no-drop-caches \
                 to measure with a warm cache instead",
            )?;
        }
        Ok(runner)
    }

    pub fn drops_caches(&self) -> bool {
        self.drop_caches
    }

    /// Path of a log file; `name` identifies the step, e.g. `restic-backup-a`.
    pub fn log_path(&self, name: &str, suffix: &str) -> PathBuf {
        self.logs.join(format!("{name}.{suffix}"))
    }

    /// Runs a setup command (not measured), failing on a non-zero exit.
    pub fn untimed(&self, cmd: &mut Command, name: &str) -> Result<()> {
        let status = cmd
            .stdin(Stdio::null())
            .stdout(self.log_file(name, "out")?)
            .stderr(self.log_file(name, "err")?)
            .status()
            .with_context(|| format!("running {:?} for {name}", cmd.get_program()))?;
        self.check(status, name)
    }

    /// Runs one command cold and measures it; stdout lands in `<name>.out`.
    pub fn timed(&self, cmd: &Command, name: &str) -> Result<Usage> {
        self.timed_pipeline(&[cmd], name)
    }

    /// Runs `first | second | ...` cold and measures every process.
    /// Environment variables set on the commands are passed through the
    /// launcher; working directories are not supported (none is needed).
    pub fn timed_pipeline(&self, pipeline: &[&Command], name: &str) -> Result<Usage> {
        let report_path = self.log_path(name, "rusage.json");
        let request = LaunchRequest {
            pipeline: pipeline
                .iter()
                .map(|cmd| argv(cmd))
                .collect::<Result<_>>()?,
            report: report_path.clone(),
        };
        let mut launcher = Command::new(&self.launcher);
        launcher
            .arg(LAUNCH_FLAG)
            .arg(serde_json::to_string(&request)?)
            .stdin(Stdio::null())
            .stdout(self.log_file(name, "out")?)
            .stderr(self.log_file(name, "err")?);
        for cmd in pipeline {
            for (key, value) in cmd.get_envs() {
                match value {
                    Some(value) => launcher.env(key, value),
                    None => launcher.env_remove(key),
                };
            }
        }
        self.drop_page_cache()?;
        wait_until_quiet(name);
        let server_before = self.server_pid.and_then(cpu_time);
        let status = launcher
            .status()
            .with_context(|| format!("running the launcher for {name}"))?;
        self.check(status, name)?;
        let report: LaunchReport = serde_json::from_slice(
            &std::fs::read(&report_path)
                .with_context(|| format!("reading {}", report_path.display()))?,
        )?;
        for raw in &report.statuses {
            self.check(ExitStatus::from_raw(*raw), name)?;
        }
        Ok(Usage {
            wall: Duration::from_secs_f64(report.wall_s),
            peak_rss: report.peak_rss.iter().copied().max().unwrap_or(0),
            user: Duration::from_secs_f64(report.user_s),
            sys: Duration::from_secs_f64(report.sys_s),
            server_cpu: server_before
                .zip(self.server_pid.and_then(cpu_time))
                .map(|(before, after)| after.saturating_sub(before)),
        })
    }

    fn log_file(&self, name: &str, suffix: &str) -> Result<File> {
        let path = self.log_path(name, suffix);
        File::create(&path).with_context(|| format!("creating {}", path.display()))
    }

    /// Turns a failed exit into an error that quotes the end of its stderr.
    fn check(&self, status: ExitStatus, name: &str) -> Result<()> {
        if status.success() {
            return Ok(());
        }
        let log = self.log_path(name, "err");
        let stderr = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = stderr.lines().collect();
        let tail = &lines[lines.len().saturating_sub(15)..];
        bail!(
            "{name} failed ({status}); last lines of {}:\n{}",
            log.display(),
            tail.join("\n")
        )
    }

    /// `sync; echo 3 > /proc/sys/vm/drop_caches`: every tool then reads its
    /// input (and its repository, for restores) from disk, not from memory
    /// left warm by the tool that ran before it.
    fn drop_page_cache(&self) -> Result<()> {
        if !self.drop_caches {
            return Ok(());
        }
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() };
        std::fs::write("/proc/sys/vm/drop_caches", "3").context("writing /proc/sys/vm/drop_caches")
    }
}

/// User plus system CPU time of process `pid` so far, from /proc.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
    Some(Duration::from_secs_f64(ticks as f64 / hz as f64))
}

/// Share of all cores busy below which the machine counts as quiet.
const QUIET_BUSY: f64 = 0.05;
/// How long to wait for quiet at most before a timed command starts anyway.
const QUIET_MAX_WAIT: Duration = Duration::from_secs(60);

/// Waits until the cores have been nearly idle for half a second, so that a timed command
/// does not share them with work left over from the one before: the S3 server goes on
/// working for a while after a backup's last upload (in one run, the first restore after
/// the backups took 5.46 s, the next two 3.92 and 4.06 s).
fn wait_until_quiet(name: &str) {
    let started = Instant::now();
    loop {
        let Some(busy) = busy_share(Duration::from_millis(500)) else {
            return;
        };
        if busy < QUIET_BUSY {
            break;
        }
        if started.elapsed() >= QUIET_MAX_WAIT {
            eprintln!(
                "[core] {name}: the cores were still {:.0}% busy after {} s; starting anyway",
                busy * 100.0,
                QUIET_MAX_WAIT.as_secs()
            );
            return;
        }
    }
    if started.elapsed() > Duration::from_secs(1) {
        eprintln!(
            "[core] {name}: waited {:.1} s for the cores to go quiet",
            started.elapsed().as_secs_f64()
        );
    }
}

/// The share of all cores busy over `window`, from /proc/stat (None if it cannot be read).
fn busy_share(window: Duration) -> Option<f64> {
    fn times() -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal: idle and iowait are not busy.
        let total: u64 = cpu.iter().take(8).sum();
        let idle = cpu.get(3)? + cpu.get(4).unwrap_or(&0);
        Some((total, idle))
    }
    let (t0, i0) = times()?;
    std::thread::sleep(window);
    let (t1, i1) = times()?;
    let total = t1.checked_sub(t0)?;
    // iowait may go backwards on a tickless kernel: a share outside 0..1 is clamped.
    let idle = i1.saturating_sub(i0).min(total);
    (total > 0).then(|| 1.0 - idle as f64 / total as f64)
}

fn argv(cmd: &Command) -> Result<Vec<OsString>> {
    ensure!(
        cmd.get_current_dir().is_none(),
        "timed commands cannot set a working directory"
    );
    let mut argv = vec![cmd.get_program().to_owned()];
    argv.extend(cmd.get_args().map(ToOwned::to_owned));
    Ok(argv)
}

/// The launcher's side: `bench --launch-measured <request json>`. Returns
/// the request when the process was started as a launcher.
pub fn launch_request() -> Option<OsString> {
    let mut args = std::env::args_os().skip(1);
    match args.next() {
        Some(flag) if flag == LAUNCH_FLAG => args.next(),
        _ => None,
    }
}

/// Runs the pipeline described by `request` and writes its report. The
/// clock covers the first spawn to the last reap, nothing of the launcher's
/// own start-up.
pub fn launch(request: &OsString) -> Result<()> {
    let request: LaunchRequest = serde_json::from_str(
        request
            .to_str()
            .context("launch request is not UTF-8 JSON")?,
    )?;
    let started = Instant::now();
    let children = spawn_pipeline(&request.pipeline)?;
    let mut peak_rss = Vec::new();
    let mut statuses = Vec::new();
    let (mut user_s, mut sys_s) = (0.0, 0.0);
    for child in &children {
        let (status, usage) = wait_with_rusage(child)?;
        peak_rss.push(u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024);
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        user_s += secs(usage.ru_utime);
        sys_s += secs(usage.ru_stime);
        statuses.push(status.into_raw());
    }
    let report = LaunchReport {
        wall_s: started.elapsed().as_secs_f64(),
        peak_rss,
        user_s,
        sys_s,
        statuses,
    };
    std::fs::write(&request.report, serde_json::to_vec(&report)?)
        .with_context(|| format!("writing {}", request.report.display()))
}

fn spawn_pipeline(pipeline: &[Vec<OsString>]) -> Result<Vec<Child>> {
    let mut children: Vec<Child> = Vec::new();
    for (i, argv) in pipeline.iter().enumerate() {
        let (program, args) = argv.split_first().context("empty command")?;
        let mut cmd = Command::new(program);
        cmd.args(args);
        if let Some(upstream) = children.last_mut().and_then(|c| c.stdout.take()) {
            cmd.stdin(upstream);
        }
        if i + 1 < pipeline.len() {
            cmd.stdout(Stdio::piped());
        }
        match cmd.spawn() {
            Ok(child) => children.push(child),
            Err(err) => {
                // Do not leave the upstream half running without a reader.
                for child in &mut children {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                return Err(err).with_context(|| format!("spawning {program:?}"));
            }
        }
    }
    Ok(children)
}

/// Reaps `child` with wait4(2) to get its exit status and resource usage. The
/// std `Child` is left unreaped in its own eyes, which is harmless: dropping
/// it neither waits nor kills.
fn wait_with_rusage(child: &Child) -> Result<(ExitStatus, libc::rusage)> {
    let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pid` is our own child, not yet reaped; both out-pointers
        // point to live, properly typed locals.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if rc == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        ensure!(
            err.kind() == std::io::ErrorKind::Interrupted,
            "wait4({pid}) failed: {err}"
        );
    }
    // ru_maxrss is in KiB on Linux.
    Ok((ExitStatus::from_raw(status), usage))
}

/// Total apparent size (sum of file lengths) of everything under `dir`.
/// Apparent size rather than allocated blocks: it is what a copy of the
/// repository to other storage would cost, independent of the filesystem.
pub fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in walkdir::WalkDir::new(dir) {
        let entry = entry.with_context(|| format!("walking {}", dir.display()))?;
        if entry.file_type().is_file() {
            total += entry
                .metadata()
                .with_context(|| format!("stat {}", entry.path().display()))?
                .len();
        }
    }
    Ok(total)
}
