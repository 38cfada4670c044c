//! Benchmark: `forget` + `prune` on a repository of 1,000 snapshots and over 1M blobs,
//! volguard against restic on an equivalent repository (issue 5: "record time and peak
//! memory"; prune must keep its memory bounded on large repositories).
//!
//! The repositories. Content-defined chunks are large, so a million blobs come from many
//! small files, each of unique random content (one data blob in either tool): snapshot `i`
//! adds a directory of `--files` new files (100 to 600 bytes) and drops the directory added
//! `--window` snapshots earlier, so each snapshot holds the newest `window` batches and
//! forgetting old snapshots frees real data. Snapshots are dated 6 hours apart from
//! 2025-01-01 (volguard `backup --time`, restic `backup --time`), one real backup of the
//! same directory by each tool per snapshot. Populating is not timed and is slow (2,000
//! backups at full scale, restic's taking most of the time), so the pristine repositories
//! are cached under `~/.cache/volguard/bench-prune/f<files>-w<window>/` and every run copies
//! them to a work directory first: forget and prune are destructive. The cache grows one
//! snapshot at a time and can be stopped cleanly and continued (see `populate`), so a run
//! with `--snapshots N` measures the first N snapshots of the same sequence.
//!
//! Timed, each from a cold page cache, peak RSS from `wait4` (benches/core/measure.rs):
//! * volguard: `forget POLICY --prune --grace 0s` (forgets, then prune marks the garbage),
//!   then `prune --grace 0s` (deletes what the first run marked: volguard's prune deletes in
//!   a later run than the one that marks, see src/prune.rs). Both runs together are the
//!   figure; with the default 24 h grace the second run would come a day later.
//! * restic: `forget POLICY --prune --max-unused 10%` (10 % is volguard's default
//!   threshold for repacking; restic's own default is 5 %).
//!
//! POLICY is `--keep-daily 7 --keep-weekly 4 --keep-monthly 12` for both. Afterwards (not
//! timed) both repositories must pass their tool's `check`, and keep the same number of
//! snapshots.
//!
//! Run: `cargo bench --bench prune [-- --scale 0.1 --snapshots N --volguard PATH --keep]` (root for
//! dropping the page cache, restic on PATH). The table is printed and written to
//! `<target>/bench-prune.md`.

#[allow(dead_code)]
mod common;
#[allow(dead_code)]
#[path = "core/measure.rs"]
mod measure;

use anyhow::{Context as _, Result, bail, ensure};
use clap::Parser;
use common::{MIB, quiet};
use measure::{Runner, Usage, dir_bytes};
use rand::{Rng as _, RngCore as _, SeedableRng as _};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

const NAME: &str = "bench";
/// The keep rules both tools apply.
const POLICY: [&str; 6] = [
    "--keep-daily",
    "7",
    "--keep-weekly",
    "4",
    "--keep-monthly",
    "12",
];
/// Seconds between two synthetic snapshots.
const SNAPSHOT_STEP_SECS: i64 = 6 * 3600;
/// 2025-01-01T00:00:00Z.
const FIRST_SNAPSHOT_UNIX: i64 = 1_735_689_600;
/// In a cache directory: how many snapshots it holds (see `populate`).
const PROGRESS: &str = "progress.json";

#[derive(Parser)]
#[command(about = "forget + prune: volguard vs restic on 1,000 snapshots and 1M+ blobs")]
struct Args {
    /// Multiplies snapshots and files per snapshot (1.0 = 1,000 x 1,000 = 1M data blobs).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// New files (= new data blobs) per snapshot at scale 1.
    #[arg(long, default_value_t = 1000)]
    files: usize,
    /// Snapshots at scale 1.
    #[arg(long, default_value_t = 1000)]
    snapshots: usize,
    /// Batches of files each snapshot holds (older ones are dropped from the data).
    #[arg(long, default_value_t = 3)]
    window: usize,
    /// volguard binary to use instead of building this checkout's.
    #[arg(long)]
    volguard: Option<PathBuf>,
    /// Where the populated (pristine) repositories are cached.
    #[arg(long, default_value = "/root/.cache/volguard/bench-prune")]
    cache: PathBuf,
    /// Scratch space for the copies that forget and prune work on.
    #[arg(long, default_value = "/var/tmp/volguard-bench/prune")]
    workdir: PathBuf,
    /// Keep the work copies and logs after the run.
    #[arg(long)]
    keep: bool,
    /// Measure with a warm page cache (for non-root runs; not comparable).
    #[arg(long)]
    no_drop_caches: bool,
    /// Set by `cargo bench`; without it (as under `cargo test --all-targets`) nothing runs.
    #[arg(long)]
    bench: bool,
}

/// The repository shape; names the cache directory.
#[derive(Clone, Copy)]
struct Shape {
    snapshots: usize,
    files: usize,
    window: usize,
}

impl Shape {
    /// The cache directory does not depend on the snapshot count (see `populate`).
    fn cache_name(self) -> String {
        // The restic version is in the name: a repository made by another release is not reused.
        format!(
            "f{}-w{}-restic{}",
            self.files,
            self.window,
            common::anchors::RESTIC_VERSION
        )
    }

    fn work_name(self) -> String {
        format!("s{}-f{}-w{}", self.snapshots, self.files, self.window)
    }
}

/// Paths of one tool set inside a directory (the cache or the work copy).
struct Repos {
    root: PathBuf,
    /// restic 0.18 from Debian 13's package (benches/common/anchors.rs).
    restic_bin: PathBuf,
}

impl Repos {
    fn volguard(&self) -> PathBuf {
        self.root.join("volguard-repo")
    }
    fn key(&self) -> PathBuf {
        self.root.join("volguard.key")
    }
    fn restic(&self) -> PathBuf {
        self.root.join("restic-repo")
    }
    fn restic_cache(&self) -> PathBuf {
        self.root.join("restic-cache")
    }

    fn volguard_cmd(&self, bin: &Path) -> Command {
        common::volguard_cmd(bin, self.volguard(), &self.key())
    }

    fn restic_cmd(&self) -> Command {
        common::restic_cmd(&self.restic_bin, self.restic(), &self.restic_cache())
    }
}

fn main() -> Result<()> {
    if let Some(request) = measure::launch_request() {
        return measure::launch(&request);
    }
    let args = Args::parse();
    if !args.bench {
        eprintln!("prune: benchmark not run (no --bench); use `cargo bench --bench prune`");
        return Ok(());
    }
    ensure!(
        args.scale > 0.0 && args.scale <= 1.0,
        "--scale must be in (0, 1]"
    );
    let scaled = |n: usize| ((n as f64 * args.scale).round() as usize).max(1);
    let shape = Shape {
        snapshots: scaled(args.snapshots),
        files: scaled(args.files),
        window: args.window.max(1),
    };
    let bin = resolve_volguard(&args)?;
    let restic_bin = common::anchors::restic()?;
    let cached = Repos {
        root: args.cache.join(shape.cache_name()),
        restic_bin: restic_bin.clone(),
    };
    let populated = populate(&cached, &bin, shape)?;
    let restic_blob_count = restic_blobs(&cached)?;

    fs::create_dir_all(&args.workdir)?;
    let work = Repos {
        root: args.workdir.join(shape.work_name()),
        restic_bin,
    };
    if work.root.exists() {
        fs::remove_dir_all(&work.root)
            .with_context(|| format!("clearing {}", work.root.display()))?;
    }
    let logs = work.root.join("logs");
    fs::create_dir_all(&logs)?;
    eprintln!(
        "[prune] copying the pristine repositories to {}",
        work.root.display()
    );
    for (from, to) in [
        (cached.volguard(), work.volguard()),
        (cached.key(), work.key()),
        (cached.restic(), work.restic()),
        (cached.restic_cache(), work.restic_cache()),
    ] {
        let status = Command::new("cp").arg("-a").arg(&from).arg(&to).status()?;
        ensure!(
            status.success(),
            "cp -a {} {} failed",
            from.display(),
            to.display()
        );
    }
    let runner = Runner::new(logs.clone(), !args.no_drop_caches)?;

    let vg = measure_volguard(&runner, &work, &bin)?;
    let rs = measure_restic(&runner, &work)?;
    ensure!(
        vg.snapshots_after == rs.snapshots_after,
        "the tools kept different numbers of snapshots (volguard {}, restic {}): the policies \
         do not agree, so the figures are not comparable",
        vg.snapshots_after,
        rs.snapshots_after
    );

    let bins = (bin.as_path(), work.restic_bin.as_path());
    let table = report(&args, shape, &populated, restic_blob_count, bins, &vg, &rs);
    println!("{table}");
    let out = common::target_dir()?.join("bench-prune.md");
    fs::write(&out, &table).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("[prune] table written to {}", out.display());
    if !args.keep {
        fs::remove_dir_all(&work.root)?;
    }
    Ok(())
}

/// How far the population of a cache directory got, rewritten after every snapshot.
#[derive(Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
struct Progress {
    snapshots: usize,
    data_bytes: u64,
    seconds: f64,
}

/// Makes (or continues) the pristine repositories up to `shape.snapshots` snapshots.
///
/// Snapshot `i` does not depend on how many follow it, so one cache directory serves every
/// snapshot count: a run asking for more snapshots than the cache has continues where the
/// last one stopped (the data directory is regenerated from the seeds). Creating the file
/// `STOP` in the cache directory ends a population cleanly after the current snapshot.
fn populate(repos: &Repos, bin: &Path, shape: Shape) -> Result<Progress> {
    let progress_path = repos.root.join(PROGRESS);
    let mut progress = match fs::read(&progress_path) {
        Ok(bytes) => serde_json::from_slice::<Progress>(&bytes)?,
        Err(_) => {
            if repos.root.exists() {
                // Never got past `init`: start over.
                fs::remove_dir_all(&repos.root)
                    .with_context(|| format!("clearing {}", repos.root.display()))?;
            }
            init_repos(repos, bin)?;
            let p = Progress::default();
            save_progress(&progress_path, &p)?;
            p
        }
    };
    ensure!(
        progress.snapshots <= shape.snapshots,
        "{} holds {} snapshots, more than the {} asked for: pass --snapshots {} (at --scale 1) \
         or use another --cache",
        repos.root.display(),
        progress.snapshots,
        shape.snapshots,
        progress.snapshots
    );
    if progress.snapshots == shape.snapshots {
        eprintln!(
            "[prune] using the cached repositories in {} ({} snapshots)",
            repos.root.display(),
            progress.snapshots
        );
        return Ok(progress);
    }
    let log = repos.root.join("populate.log");
    let stop = repos.root.join("STOP");
    let data = repos.root.join("data");
    if data.exists() {
        fs::remove_dir_all(&data)?;
    }
    fs::create_dir_all(&data)?;
    for i in progress.snapshots.saturating_sub(shape.window)..progress.snapshots {
        write_batch(&data.join(batch_name(i)), i, shape.files)?;
    }
    eprintln!(
        "[prune] populating snapshots {} to {} ({} new files each, window {}) in {}; \
         `touch {}` stops after the current one",
        progress.snapshots + 1,
        shape.snapshots,
        shape.files,
        shape.window,
        repos.root.display(),
        stop.display()
    );
    let started = Instant::now();
    let seconds_before = progress.seconds;
    for i in progress.snapshots..shape.snapshots {
        if stop.exists() {
            fs::remove_file(&stop)?;
            bail!(
                "population stopped by {} after {} snapshots; measure them with --snapshots {} \
                 (at --scale 1), or run again to continue",
                stop.display(),
                i,
                i
            );
        }
        let bytes = write_batch(&data.join(batch_name(i)), i, shape.files)?;
        if i >= shape.window {
            fs::remove_dir_all(data.join(batch_name(i - shape.window)))?;
        }
        backup_both(repos, bin, &data, i, &log)?;
        progress.snapshots = i + 1;
        progress.data_bytes += bytes;
        progress.seconds = seconds_before + started.elapsed().as_secs_f64();
        save_progress(&progress_path, &progress)?;
        if (i + 1) % 50 == 0 || i + 1 == shape.snapshots {
            eprintln!(
                "[prune] {} / {} snapshots, {:.0} s",
                i + 1,
                shape.snapshots,
                progress.seconds
            );
        }
    }
    fs::remove_dir_all(&data)?;
    Ok(progress)
}

fn init_repos(repos: &Repos, bin: &Path) -> Result<()> {
    fs::create_dir_all(&repos.root)?;
    let log = repos.root.join("populate.log");
    common::write_key_file(&repos.key())?;
    quiet(repos.volguard_cmd(bin).arg("init"), &log)?;
    quiet(repos.restic_cmd().arg("init"), &log)
}

fn save_progress(path: &Path, progress: &Progress) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(progress)?)?;
    fs::rename(&tmp, path)?;
    Ok(())
}

/// Snapshot `i` of `data` by both tools, at the same synthetic time.
fn backup_both(repos: &Repos, bin: &Path, data: &Path, i: usize, log: &Path) -> Result<()> {
    let secs = FIRST_SNAPSHOT_UNIX + i as i64 * SNAPSHOT_STEP_SECS;
    let when = time::OffsetDateTime::from_unix_timestamp(secs)?;
    let rfc3339 = when.format(&time::format_description::well_known::Rfc3339)?;
    let restic_time = format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        when.year(),
        u8::from(when.month()),
        when.day(),
        when.hour(),
        when.minute(),
        when.second()
    );
    // Both backups of one step read the same directory at once: half the wall time.
    let mut vg = repos.volguard_cmd(bin);
    vg.args(["backup", "--path"])
        .arg(data)
        .args(["--name", NAME, "--time", &rfc3339]);
    let mut rs = repos.restic_cmd();
    rs.args(["backup", "--quiet", "--host", NAME, "--time", &restic_time])
        .arg(data);
    let mut children = Vec::new();
    for (tool, cmd) in [("volguard", &mut vg), ("restic", &mut rs)] {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {tool}"))?;
        children.push((tool, child));
    }
    for (tool, child) in children {
        let out = child.wait_with_output()?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let _ = fs::write(log, err.as_bytes());
            bail!(
                "{tool} backup of snapshot {i} failed ({}): {err}",
                out.status
            );
        }
    }
    Ok(())
}

/// Blobs in restic's repository (data and trees), from `restic list blobs`.
fn restic_blobs(repos: &Repos) -> Result<u64> {
    let listed = repos
        .restic_cmd()
        .args(["list", "blobs"])
        .stderr(Stdio::inherit())
        .output()?;
    ensure!(listed.status.success(), "restic list blobs failed");
    Ok(listed.stdout.iter().filter(|b| **b == b'\n').count() as u64)
}

fn batch_name(i: usize) -> String {
    format!("b{i:05}")
}

/// Batch `i`: `files` files of 100 to 600 random bytes, the same for every run (seeded by
/// `i`), unique across batches. Returns the bytes written.
fn write_batch(dir: &Path, i: usize, files: usize) -> Result<u64> {
    fs::create_dir_all(dir)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_0000 + i as u64);
    let mut buf = [0u8; 600];
    let mut total = 0u64;
    for j in 0..files {
        let len = rng.gen_range(100..=600);
        rng.fill_bytes(&mut buf[..len]);
        fs::write(dir.join(format!("f{j:05}")), &buf[..len])?;
        total += len as u64;
    }
    Ok(total)
}

/// One tool's figures.
struct Measured {
    /// The timed steps: label, command line, usage.
    steps: Vec<(String, String, Usage)>,
    bytes_before: u64,
    bytes_after: u64,
    snapshots_before: usize,
    snapshots_after: usize,
    /// The tool's own summary of what prune did.
    summary: String,
}

impl Measured {
    fn wall(&self) -> f64 {
        self.steps.iter().map(|s| s.2.wall.as_secs_f64()).sum()
    }
    fn peak(&self) -> u64 {
        self.steps.iter().map(|s| s.2.peak_rss).max().unwrap_or(0)
    }
}

fn describe(cmd: &Command, skip: usize) -> String {
    let args: Vec<String> = cmd
        .get_args()
        .skip(skip)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    format!(
        "{} {}",
        Path::new(cmd.get_program())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        args.join(" ")
    )
}

fn measure_volguard(runner: &Runner, repos: &Repos, bin: &Path) -> Result<Measured> {
    let count = |runner: &Runner, name: &str| -> Result<usize> {
        runner.untimed(repos.volguard_cmd(bin).args(["--json", "snapshots"]), name)?;
        let v: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(runner.log_path(name, "out"))?)?;
        v.as_array()
            .or_else(|| v["snapshots"].as_array())
            .map(Vec::len)
            .context("volguard snapshots --json: no list")
    };
    let snapshots_before = count(runner, "volguard-snapshots-before")?;
    let bytes_before = dir_bytes(&repos.volguard())?;
    eprintln!("[prune] volguard: forget --prune, then prune");
    let mut forget = repos.volguard_cmd(bin);
    forget
        .arg("forget")
        .args(POLICY)
        .args(["--prune", "--grace", "0s"]);
    let u1 = runner.timed(&forget, "volguard-forget-prune")?;
    let mut prune = repos.volguard_cmd(bin);
    prune.args(["prune", "--grace", "0s"]);
    let u2 = runner.timed(&prune, "volguard-prune")?;
    let bytes_after = dir_bytes(&repos.volguard())?;
    let snapshots_after = count(runner, "volguard-snapshots-after")?;
    eprintln!("[prune] volguard: check");
    runner.untimed(repos.volguard_cmd(bin).arg("check"), "volguard-check")?;
    let tail = |name: &str| -> Result<String> {
        let out = fs::read_to_string(runner.log_path(name, "out"))?;
        Ok(out
            .lines()
            .filter(|l| l.contains("packs"))
            .collect::<Vec<_>>()
            .join("; "))
    };
    Ok(Measured {
        steps: vec![
            ("forget + mark".into(), describe(&forget, 6), u1),
            ("delete marked".into(), describe(&prune, 6), u2),
        ],
        bytes_before,
        bytes_after,
        snapshots_before,
        snapshots_after,
        summary: format!(
            "run 1: {} / run 2: {}",
            tail("volguard-forget-prune")?,
            tail("volguard-prune")?
        ),
    })
}

fn measure_restic(runner: &Runner, repos: &Repos) -> Result<Measured> {
    let count = |runner: &Runner, name: &str| -> Result<usize> {
        runner.untimed(repos.restic_cmd().args(["snapshots", "--json"]), name)?;
        let v: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(runner.log_path(name, "out"))?)?;
        v.as_array()
            .map(Vec::len)
            .context("restic snapshots --json: no list")
    };
    let snapshots_before = count(runner, "restic-snapshots-before")?;
    let bytes_before = dir_bytes(&repos.restic())?;
    eprintln!("[prune] restic: forget --prune");
    let mut forget = repos.restic_cmd();
    forget
        .arg("forget")
        .args(POLICY)
        .args(["--prune", "--max-unused", "10%"]);
    let u = runner.timed(&forget, "restic-forget-prune")?;
    let bytes_after = dir_bytes(&repos.restic())?;
    let snapshots_after = count(runner, "restic-snapshots-after")?;
    eprintln!("[prune] restic: check");
    runner.untimed(repos.restic_cmd().arg("check"), "restic-check")?;
    let out = fs::read_to_string(runner.log_path("restic-forget-prune", "out"))?;
    let summary = out
        .lines()
        .filter(|l| {
            l.starts_with("to delete")
                || l.starts_with("to repack")
                || l.starts_with("total prune")
                || l.starts_with("remaining:")
        })
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ");
    Ok(Measured {
        steps: vec![("forget + prune".into(), describe(&forget, 4), u)],
        bytes_before,
        bytes_after,
        snapshots_before,
        snapshots_after,
        summary,
    })
}

fn report(
    args: &Args,
    shape: Shape,
    populated: &Progress,
    restic_blobs: u64,
    (bin, restic_bin): (&Path, &Path),
    vg: &Measured,
    rs: &Measured,
) -> String {
    let version = |cmd: &mut Command| {
        cmd.output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.lines().next().map(str::to_owned))
            .unwrap_or_else(|| "unknown".into())
    };
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / MIB);
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.2}x", a / b)
        } else {
            "-".into()
        }
    };
    let mut t = String::new();
    let _ = writeln!(
        t,
        "### forget + prune: {} snapshots, {} data blobs ({} blobs in restic's repository)\n",
        shape.snapshots,
        shape.snapshots * shape.files,
        restic_blobs
    );
    let _ = writeln!(
        t,
        "Each snapshot adds {} files of 100-600 random bytes and holds the newest {} batches; \
         {:.0} MiB of file data in all; snapshots 6 h apart from 2025-01-01. Policy for both: \
         `{}`. {}; {}; scale {}; page cache {}.\n",
        shape.files,
        shape.window,
        populated.data_bytes as f64 / MIB,
        POLICY.join(" "),
        version(Command::new(bin).arg("--version")),
        version(Command::new(restic_bin).arg("version")),
        args.scale,
        if runner_cold(args) {
            "dropped before each timed run"
        } else {
            "warm"
        }
    );
    let _ = writeln!(t, "| | volguard | restic | volguard / restic |");
    let _ = writeln!(t, "|---|---:|---:|---:|");
    let _ = writeln!(
        t,
        "| wall time, forget + prune | {:.1} s | {:.1} s | {} |",
        vg.wall(),
        rs.wall(),
        ratio(vg.wall(), rs.wall())
    );
    let _ = writeln!(
        t,
        "| peak RSS | {} | {} | {} |",
        mib(vg.peak()),
        mib(rs.peak()),
        ratio(vg.peak() as f64, rs.peak() as f64)
    );
    let _ = writeln!(
        t,
        "| snapshots before / after | {} / {} | {} / {} | |",
        vg.snapshots_before, vg.snapshots_after, rs.snapshots_before, rs.snapshots_after
    );
    let _ = writeln!(
        t,
        "| repository bytes before | {} | {} | {} |",
        mib(vg.bytes_before),
        mib(rs.bytes_before),
        ratio(vg.bytes_before as f64, rs.bytes_before as f64)
    );
    let _ = writeln!(
        t,
        "| repository bytes after | {} | {} | {} |",
        mib(vg.bytes_after),
        mib(rs.bytes_after),
        ratio(vg.bytes_after as f64, rs.bytes_after as f64)
    );
    let _ = writeln!(t, "| `check` afterwards | passed | passed | |");
    let _ = writeln!(t, "\nTimed steps:\n");
    for (tool, m) in [("volguard", vg), ("restic", rs)] {
        for (label, cmd, u) in &m.steps {
            let _ = writeln!(
                t,
                "- {tool}, {label}: `{cmd}`: {:.1} s, peak RSS {}",
                u.wall.as_secs_f64(),
                mib(u.peak_rss)
            );
        }
    }
    let _ = writeln!(t, "\nvolguard said: {}\n", vg.summary);
    let _ = writeln!(t, "restic said: {}", rs.summary);
    t
}

fn runner_cold(args: &Args) -> bool {
    !args.no_drop_caches
}

/// The volguard binary: `--volguard`, else this checkout's release build, (re)built now.
fn resolve_volguard(args: &Args) -> Result<PathBuf> {
    if let Some(path) = &args.volguard {
        ensure!(
            path.is_file(),
            "--volguard {} does not exist",
            path.display()
        );
        return Ok(path.clone());
    }
    common::build_volguard("prune")
}
