//! Benchmark: getting data back without a restore (issue 26): `find` over 100 snapshots,
//! a 1 GiB file read sequentially through `mount`, and `dump` of that file, volguard
//! against restic 0.18 on the same data in the same run.
//!
//! The data: one directory holding a 1 GiB incompressible file (`big.bin`) and `--files`
//! small files (200 B to 4 KiB) in 100 subdirectories. Each of `--snapshots` steps edits
//! 20 small files and adds one `.log` file, then both tools back the directory up (volguard
//! `backup --path`, restic `backup`). Populating is not timed; the pristine repositories are
//! cached under `~/.cache/volguard/bench-browse/<shape>/` and reused while that shape's
//! marker file is there. Nothing measured writes to them.
//!
//! Timed, each from a cold page cache, peak RSS from `wait4` (benches/core/measure.rs):
//! * find: `volguard find '*.log'` and `restic find '*.log'`, every snapshot searched;
//! * mount: both tools' mounts are started untimed; then `dd` reads `big.bin` of the latest
//!   snapshot through the mount (1 MiB reads). The time is dd's; the memory is the mount
//!   process's own high-water mark (`VmHWM`) when the read is done. Both read through their
//!   FUSE filesystem the first time, so neither has the file in its own cache;
//! * dump: `volguard dump bench:latest /big.bin | dd` and `restic dump latest PATH | dd`.
//!
//! Every byte read back is checked against the source's BLAKE3 (not timed).
//!
//! Run: `cargo bench --bench browse [-- --files N --snapshots N --big-mib N --no-drop-caches]`
//! (root, /dev/fuse and fusermount3 for the mounts). The table is printed and written to
//! `<target>/bench-browse.md`.

#[allow(dead_code)]
mod common;
#[allow(dead_code)]
#[path = "core/measure.rs"]
mod measure;

use anyhow::{Context as _, Result, bail, ensure};
use clap::Parser;
use common::{MIB, quiet};
use measure::{Runner, Usage};
use rand::{Rng as _, RngCore as _, SeedableRng as _};
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NAME: &str = "bench";
/// Small files edited per snapshot.
const EDITS_PER_SNAPSHOT: usize = 20;
/// Written once the cache directory holds every snapshot of its shape.
const POPULATED: &str = "populated";

#[derive(Parser)]
#[command(about = "find, mount and dump: volguard vs restic 0.18 on the same repository data")]
struct Args {
    /// Small files in the backed-up directory.
    #[arg(long, default_value_t = 10_000)]
    files: usize,
    /// Snapshots in each repository.
    #[arg(long, default_value_t = 100)]
    snapshots: usize,
    /// Size of the large file, MiB.
    #[arg(long, default_value_t = 1024)]
    big_mib: u64,
    /// Where the populated repositories are cached.
    #[arg(long, default_value = "/root/.cache/volguard/bench-browse")]
    cache: PathBuf,
    /// Logs and mountpoints.
    #[arg(long, default_value = "/var/tmp/volguard-bench/browse")]
    workdir: PathBuf,
    /// Measure with a warm page cache (for non-root runs; not comparable).
    #[arg(long)]
    no_drop_caches: bool,
    /// Set by `cargo bench`; without it (as under `cargo test --all-targets`) nothing runs.
    #[arg(long)]
    bench: bool,
}

/// The two repositories and the data they were made from.
struct Repos {
    root: PathBuf,
    volguard_bin: PathBuf,
    restic_bin: PathBuf,
}

impl Repos {
    fn data(&self) -> PathBuf {
        self.root.join("data")
    }
    fn volguard(&self) -> Command {
        common::volguard_cmd(
            &self.volguard_bin,
            self.root.join("volguard-repo"),
            &self.root.join("volguard.key"),
        )
    }
    fn restic(&self) -> Command {
        common::restic_cmd(
            &self.restic_bin,
            self.root.join("restic-repo"),
            &self.root.join("restic-cache"),
        )
    }
    /// `big.bin` as restic names it: under the absolute path it was backed up from.
    fn restic_big_path(&self) -> PathBuf {
        self.data().join("big.bin")
    }
}

fn main() -> Result<()> {
    if let Some(request) = measure::launch_request() {
        return measure::launch(&request);
    }
    let args = Args::parse();
    if !args.bench {
        eprintln!("browse: benchmark not run (no --bench); use `cargo bench --bench browse`");
        return Ok(());
    }
    ensure!(
        args.files >= 100 && args.snapshots >= 1 && args.big_mib >= 1,
        "--files must be at least 100, --snapshots and --big-mib at least 1"
    );
    let repos = Repos {
        root: args.cache.join(format!(
            "f{}-s{}-b{}-restic{}",
            args.files,
            args.snapshots,
            args.big_mib,
            common::anchors::RESTIC_VERSION
        )),
        volguard_bin: common::build_volguard("browse")?,
        restic_bin: common::anchors::restic()?,
    };
    populate(&repos, &args)?;
    let big_hash = blake3_of_file(&repos.data().join("big.bin"))?;

    if args.workdir.exists() {
        fs::remove_dir_all(&args.workdir)?;
    }
    let logs = args.workdir.join("logs");
    fs::create_dir_all(&logs)?;
    let runner = Runner::new(logs, !args.no_drop_caches)?;

    let find = measure_find(&runner, &repos)?;
    let mount = measure_mount(&runner, &repos, &args.workdir, &big_hash)?;
    let dump = measure_dump(&runner, &repos, &big_hash)?;

    let table = report(&args, &find, &mount, &dump);
    println!("{table}");
    let out = common::target_dir()?.join("bench-browse.md");
    fs::write(&out, &table).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("[browse] table written to {}", out.display());
    Ok(())
}

/// Builds both repositories unless the cache already holds them.
fn populate(repos: &Repos, args: &Args) -> Result<()> {
    if repos.root.join(POPULATED).exists() {
        eprintln!(
            "[browse] using the cached repositories in {}",
            repos.root.display()
        );
        return Ok(());
    }
    if repos.root.exists() {
        fs::remove_dir_all(&repos.root)?;
    }
    let data = repos.data();
    fs::create_dir_all(&data)?;
    eprintln!(
        "[browse] writing {} MiB + {} small files, then {} snapshots by each tool into {}",
        args.big_mib,
        args.files,
        args.snapshots,
        repos.root.display()
    );
    write_big(&data.join("big.bin"), args.big_mib << 20)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xb20e);
    for j in 0..args.files {
        write_small(&data, j, &mut rng)?;
    }
    common::write_key_file(&repos.root.join("volguard.key"))?;
    let log = repos.root.join("populate.log");
    quiet(repos.volguard().arg("init"), &log)?;
    quiet(repos.restic().arg("init"), &log)?;
    let started = Instant::now();
    for i in 0..args.snapshots {
        if i > 0 {
            for _ in 0..EDITS_PER_SNAPSHOT {
                write_small(&data, rng.gen_range(0..args.files), &mut rng)?;
            }
            fs::write(
                data.join(format!("d{:02}/step-{i:04}.log", i % 100)),
                format!("step {i}\n"),
            )?;
        }
        let mut vg = repos.volguard();
        vg.args(["backup", "--path"])
            .arg(&data)
            .args(["--name", NAME]);
        quiet(&mut vg, &log)?;
        let mut rs = repos.restic();
        rs.args(["backup", "--quiet", "--host", NAME]).arg(&data);
        quiet(&mut rs, &log)?;
        if (i + 1) % 10 == 0 {
            eprintln!(
                "[browse] {} of {} snapshots ({:.0} s)",
                i + 1,
                args.snapshots,
                started.elapsed().as_secs_f64()
            );
        }
    }
    fs::write(repos.root.join(POPULATED), b"")?;
    Ok(())
}

/// Incompressible bytes from a seeded xorshift, written 1 MiB at a time.
fn write_big(path: &Path, len: u64) -> Result<()> {
    let mut f = std::io::BufWriter::new(fs::File::create(path)?);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for b in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

/// Small file `j` (200 B to 4 KiB of random bytes) in directory `d<j mod 100>`.
fn write_small(data: &Path, j: usize, rng: &mut rand::rngs::StdRng) -> Result<()> {
    let dir = data.join(format!("d{:02}", j % 100));
    fs::create_dir_all(&dir)?;
    let mut buf = vec![0u8; rng.gen_range(200..=4096)];
    rng.fill_bytes(&mut buf);
    fs::write(dir.join(format!("f{j:06}.dat")), buf)?;
    Ok(())
}

fn blake3_of_file(path: &Path) -> Result<blake3::Hash> {
    let mut h = blake3::Hasher::new();
    h.update_reader(fs::File::open(path).with_context(|| format!("opening {}", path.display()))?)?;
    Ok(h.finalize())
}

/// One operation measured for both tools: (volguard, restic), plus what each found.
struct Pair {
    volguard: Usage,
    restic: Usage,
    note: String,
}

fn measure_find(runner: &Runner, repos: &Repos) -> Result<Pair> {
    eprintln!("[browse] find '*.log' over every snapshot");
    let mut vg = repos.volguard();
    vg.args(["--json", "find", "*.log"]);
    let volguard = runner.timed(&vg, "volguard-find")?;
    let mut rs = repos.restic();
    rs.args(["--json", "find", "*.log"]);
    let restic = runner.timed(&rs, "restic-find")?;
    // Both must have found the same thing: every snapshot but the first holds a log file.
    let vg_out: serde_json::Value =
        serde_json::from_slice(&fs::read(runner.log_path("volguard-find", "out"))?)?;
    let vg_hits: u64 = vg_out["snapshots"]
        .as_array()
        .context("volguard find --json: no snapshots array")?
        .iter()
        .filter_map(|s| s["hits"].as_u64())
        .sum();
    let rs_out = fs::read_to_string(runner.log_path("restic-find", "out"))?;
    let rs_hits = rs_out.matches("step-").count();
    ensure!(
        vg_hits > 0 && rs_hits > 0,
        "find found nothing (volguard {vg_hits} hits, restic {rs_hits} matches); see the logs"
    );
    Ok(Pair {
        volguard,
        restic,
        note: format!("volguard {vg_hits} hits, restic {rs_hits}"),
    })
}

/// A background mount, unmounted (and reaped) on drop.
struct Mounted {
    child: Child,
    mp: PathBuf,
}

impl Mounted {
    fn start(mut cmd: Command, mp: &Path, log: &Path) -> Result<Mounted> {
        fs::create_dir_all(mp)?;
        let file = fs::File::create(log)?;
        let child = cmd
            .arg(mp)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {:?}", cmd.get_program()))?;
        let mut m = Mounted {
            child,
            mp: mp.to_path_buf(),
        };
        let t = Instant::now();
        while !is_mounted(mp)? {
            if let Some(st) = m.child.try_wait()? {
                bail!(
                    "the mount exited ({st}) before mounting; see {}",
                    log.display()
                );
            }
            ensure!(
                t.elapsed() < Duration::from_secs(120),
                "no mount at {} after 2 minutes; see {}",
                mp.display(),
                log.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(m)
    }

    /// The mount process's peak RSS so far, bytes.
    fn peak_rss(&self) -> Result<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmHWM in the mount process's status")?;
        Ok(kib * 1024)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3").arg("-u").arg(&self.mp).status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_mounted(mp: &Path) -> Result<bool> {
    let mounts = fs::read_to_string("/proc/mounts")?;
    let mp = mp.to_str().context("mountpoint is not UTF-8")?;
    Ok(mounts.lines().any(|l| l.split(' ').nth(1) == Some(mp)))
}

/// `dd if=FILE of=/dev/null bs=1M`.
fn dd_read(file: &Path) -> Command {
    let mut dd = Command::new("dd");
    dd.arg(format!("if={}", file.display()))
        .args(["of=/dev/null", "bs=1M"]);
    dd
}

fn measure_mount(
    runner: &Runner,
    repos: &Repos,
    work: &Path,
    big_hash: &blake3::Hash,
) -> Result<Pair> {
    let mut measured = Vec::new();
    for tool in ["volguard", "restic"] {
        eprintln!("[browse] {tool} mount: sequential read of big.bin");
        let mp = work.join(format!("mnt-{tool}"));
        let (cmd, file) = if tool == "volguard" {
            let mut c = repos.volguard();
            c.arg("mount");
            (c, mp.join("by-volume").join(NAME).join("latest/big.bin"))
        } else {
            let mut c = repos.restic();
            c.arg("mount");
            let inside = repos.restic_big_path();
            let inside = inside.strip_prefix("/").unwrap_or(&inside);
            (c, mp.join("snapshots/latest").join(inside))
        };
        let m = Mounted::start(cmd, &mp, &runner.log_path(&format!("{tool}-mount"), "log"))?;
        // Listing the way to the file is part of setting up, not of the read.
        let t = Instant::now();
        while !file.exists() {
            ensure!(
                t.elapsed() < Duration::from_secs(120),
                "{} did not appear in the {tool} mount",
                file.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let mut usage = runner.timed(&dd_read(&file), &format!("{tool}-mount-read"))?;
        usage.peak_rss = m.peak_rss()?;
        let got = blake3_of_file(&file)?;
        ensure!(
            got == *big_hash,
            "big.bin read through the {tool} mount differs from the source"
        );
        drop(m);
        measured.push(usage);
    }
    Ok(Pair {
        volguard: measured[0],
        restic: measured[1],
        note: "RSS is the mount process's".into(),
    })
}

fn measure_dump(runner: &Runner, repos: &Repos, big_hash: &blake3::Hash) -> Result<Pair> {
    eprintln!("[browse] dump of big.bin");
    let mut vg = repos.volguard();
    vg.args(["dump", &format!("{NAME}:latest"), "/big.bin"]);
    let mut rs = repos.restic();
    rs.args(["dump", "latest"]).arg(repos.restic_big_path());
    let mut sink = Command::new("dd");
    sink.args(["of=/dev/null", "bs=1M"]);
    let volguard = runner.timed_pipeline(&[&vg, &sink], "volguard-dump")?;
    let restic = runner.timed_pipeline(&[&rs, &sink], "restic-dump")?;
    // The bytes themselves, untimed.
    for (tool, cmd) in [("volguard", &mut vg), ("restic", &mut rs)] {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut h = blake3::Hasher::new();
        h.update_reader(child.stdout.take().context("no stdout")?)?;
        ensure!(child.wait()?.success(), "{tool} dump failed");
        ensure!(
            h.finalize() == *big_hash,
            "{tool} dump of big.bin differs from the source"
        );
    }
    Ok(Pair {
        volguard,
        restic,
        note: "RSS is the larger of the tool and dd".into(),
    })
}

fn report(args: &Args, find: &Pair, mount: &Pair, dump: &Pair) -> String {
    let mib = |u: &Usage| u.peak_rss as f64 / MIB;
    let rate = |u: &Usage| (args.big_mib as f64) / u.wall.as_secs_f64();
    let mut t = String::new();
    let _ = writeln!(
        t,
        "Browse: {} snapshots of {} small files and a {} MiB file; restic {}; {} page cache.\n",
        args.snapshots,
        args.files,
        args.big_mib,
        common::anchors::RESTIC_VERSION,
        if args.no_drop_caches {
            "warm"
        } else {
            "cold (dropped before each)"
        }
    );
    let _ = writeln!(
        t,
        "| operation | volguard | restic 0.18 | speed-up | RSS volguard / restic | note |"
    );
    let _ = writeln!(t, "|---|---:|---:|---:|---:|---|");
    let _ = writeln!(
        t,
        "| find `*.log`, all snapshots | {:.2} s, {:.0} MiB | {:.2} s, {:.0} MiB | {:.2}x | {:.2} | {} |",
        find.volguard.wall.as_secs_f64(),
        mib(&find.volguard),
        find.restic.wall.as_secs_f64(),
        mib(&find.restic),
        find.restic.wall.as_secs_f64() / find.volguard.wall.as_secs_f64(),
        mib(&find.volguard) / mib(&find.restic),
        find.note
    );
    for (label, p) in [("mount, sequential read", mount), ("dump", dump)] {
        let _ = writeln!(
            t,
            "| {label} of {} MiB | {:.0} MiB/s, {:.0} MiB | {:.0} MiB/s, {:.0} MiB | {:.2}x | {:.2} | {} |",
            args.big_mib,
            rate(&p.volguard),
            mib(&p.volguard),
            rate(&p.restic),
            mib(&p.restic),
            rate(&p.volguard) / rate(&p.restic),
            mib(&p.volguard) / mib(&p.restic),
            p.note
        );
    }
    t
}
