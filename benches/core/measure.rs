//! Running the tools' commands and measuring them.
//!
//! Every timed command starts from a cold page cache (when allowed), its wall
//! time covers spawn to reap, and its peak RSS comes from the kernel's own
//! accounting (`wait4` rusage), so the numbers do not depend on sampling.
//! Pipelines (`tar | zstd`) are spawned as two processes by us rather than via
//! `sh -c`, so each process is reaped, and measured, individually.

use anyhow::{Context, Result, bail, ensure};
use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What one timed command cost.
#[derive(Clone, Copy, Debug)]
pub struct Usage {
    pub wall: Duration,
    /// Peak resident set size in bytes; for a pipeline the larger of the two.
    pub peak_rss: u64,
}

/// Runs commands with stdout/stderr captured to files under `logs`, and
/// drops the page cache before each timed one.
pub struct Runner {
    logs: PathBuf,
    drop_caches: bool,
}

impl Runner {
    /// Fails early if cold-cache runs were requested but are not permitted,
    /// rather than silently producing warm-cache numbers.
    pub fn new(logs: PathBuf, drop_caches: bool) -> Result<Self> {
        let runner = Self { logs, drop_caches };
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
        let mut child = self.spawn_logged(cmd, name)?;
        let status = child
            .wait()
            .with_context(|| format!("waiting for {name}"))?;
        self.check(status, name, "err")
    }

    /// Runs one command cold and measures it; stdout lands in `<name>.out`.
    pub fn timed(&self, cmd: &mut Command, name: &str) -> Result<Usage> {
        self.drop_page_cache()?;
        let started = Instant::now();
        let child = self.spawn_logged(cmd, name)?;
        let (status, peak_rss) = wait_with_rusage(&child)?;
        let wall = started.elapsed();
        self.check(status, name, "err")?;
        Ok(Usage { wall, peak_rss })
    }

    /// Runs `producer | consumer` cold and measures both processes.
    pub fn timed_pipeline(
        &self,
        producer: &mut Command,
        consumer: &mut Command,
        name: &str,
    ) -> Result<Usage> {
        self.drop_page_cache()?;
        let started = Instant::now();
        let mut first = producer
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(self.log_file(name, "1.err")?)
            .spawn()
            .with_context(|| format!("spawning {:?}", producer.get_program()))?;
        let pipe = first.stdout.take().context("producer has no stdout pipe")?;
        let second = consumer
            .stdin(pipe)
            .stdout(self.log_file(name, "out")?)
            .stderr(self.log_file(name, "2.err")?)
            .spawn();
        // Reap the producer even if the consumer failed to start, so that no
        // zombie outlives the bench.
        let second = match second {
            Ok(child) => child,
            Err(err) => {
                let _ = first.kill();
                let _ = first.wait();
                return Err(err).context("spawning the pipeline's consumer");
            }
        };
        let (status2, rss2) = wait_with_rusage(&second)?;
        let (status1, rss1) = wait_with_rusage(&first)?;
        let wall = started.elapsed();
        self.check(status1, name, "1.err")?;
        self.check(status2, name, "2.err")?;
        Ok(Usage {
            wall,
            peak_rss: rss1.max(rss2),
        })
    }

    fn spawn_logged(&self, cmd: &mut Command, name: &str) -> Result<Child> {
        cmd.stdin(Stdio::null())
            .stdout(self.log_file(name, "out")?)
            .stderr(self.log_file(name, "err")?)
            .spawn()
            .with_context(|| format!("spawning {:?} for {name}", cmd.get_program()))
    }

    fn log_file(&self, name: &str, suffix: &str) -> Result<File> {
        let path = self.log_path(name, suffix);
        File::create(&path).with_context(|| format!("creating {}", path.display()))
    }

    /// Turns a failed exit into an error that quotes the end of its stderr.
    fn check(&self, status: ExitStatus, name: &str, stderr_suffix: &str) -> Result<()> {
        if status.success() {
            return Ok(());
        }
        let log = self.log_path(name, stderr_suffix);
        let stderr = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
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

/// Reaps `child` with wait4(2) to get its exit status and peak RSS. The
/// std `Child` is left unreaped in its own eyes, which is harmless: dropping
/// it neither waits nor kills.
fn wait_with_rusage(child: &Child) -> Result<(ExitStatus, u64)> {
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
    let peak_rss = u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024;
    Ok((ExitStatus::from_raw(status), peak_rss))
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
