//! End-to-end benchmark: volguard against restic and `tar | zstd`.
//!
//! Why this exists: volguard's issue sets concrete targets (initial backup
//! 2x faster than restic and within 1.5x of `tar | zstd -3 -T0`, no-change
//! backup 3x faster than restic, a third of restic's bytes after a 1 %
//! change, restore 2x faster, less memory everywhere). This bench measures
//! them on a volume-like data set, with every tool backing up the same bytes
//! in the same run from a cold page cache, checks that every restore is
//! byte-exact, and prints a Markdown table with a verdict per target.
//!
//! With `--backend s3`, volguard and restic back up to S3 instead of a local
//! directory: each to a fresh bucket of its own on a SeaweedFS server that the
//! run starts for itself on 127.0.0.1 and an empty directory (seaweed.rs says
//! why), or on the server `--s3-env` names; both over loopback in the same
//! run. tar|zstd has no S3 backend and is left out. The same targets are
//! judged; the server and its data (or, with `--s3-env`, the buckets) are
//! removed afterwards unless --keep.
//!
//! Run: `cargo bench --bench core [-- --scale 0.1 --tools tar,restic --keep]`
//! or `cargo bench --bench core -- --backend s3` (needs root to drop the page
//! cache, restic, zstd, tar and curl on PATH, and about 30 GiB free at scale
//! 1.0 under --workdir, 20 GiB for S3 with the server's data). The table is
//! printed and written to `<target>/bench-core.md` (`bench-core-s3.md`).

// A bench's crate root resolves `mod x;` next to itself, so the pieces that
// belong to this bench alone are pointed to in `benches/core/` explicitly.
mod common;
#[path = "core/dataset.rs"]
mod dataset;
#[path = "core/measure.rs"]
mod measure;
#[path = "core/report.rs"]
mod report;
#[path = "core/seaweed.rs"]
mod seaweed;
#[path = "core/store.rs"]
mod store;
#[path = "core/text.rs"]
mod text;
#[path = "core/tools.rs"]
mod tools;
#[path = "core/verify.rs"]
mod verify;

use anyhow::{Context as _, Result, ensure};
use clap::Parser;
use common::MIB;
use measure::{Runner, dir_bytes};
use report::{Cell, Results};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use store::{S3Server, Storage};
use tools::{Scenario, Tool, ToolId};
use verify::Manifest;

/// Marks a directory as created by this bench, so that only such a
/// directory is ever deleted when a stale run is cleared away.
const MARKER: &str = ".volguard-bench-core";
/// In the run's directory: the buckets an S3 run created, one a line, so
/// that the next run deletes those (and only those) if this one failed.
const BUCKETS_FILE: &str = "s3-buckets";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Backend {
    /// Repositories in directories under --workdir.
    Local,
    /// Repositories in fresh buckets on a loopback S3 server.
    S3,
}

#[derive(Parser)]
#[command(about = "volguard vs restic vs tar|zstd on a synthetic Docker volume")]
struct Args {
    /// Multiplies all data sizes (1.0 = 1 GiB DB, 50k files, 800 MiB media).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Where volguard and restic store their repositories.
    #[arg(long, value_enum, default_value_t = Backend::Local)]
    backend: Backend,
    /// With --backend s3: use the S3 server these settings name (KEY=value
    /// lines: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    /// AWS_REGION; the endpoint must be http://127.0.0.1:<port>), e.g.
    /// ~/.cache/volguard/s3.env for the test server of tests/env/setup.sh,
    /// instead of a SeaweedFS started for this run on an empty directory.
    #[arg(long)]
    s3_env: Option<PathBuf>,
    /// Tools to compare, in run order
    /// [default: volguard,restic,tar; volguard,restic with --backend s3].
    #[arg(long, value_enum, value_delimiter = ',')]
    tools: Option<Vec<ToolId>>,
    /// volguard binary to use instead of building this checkout's.
    #[arg(long)]
    volguard: Option<PathBuf>,
    /// Scratch space for data, repositories and restores; must not be tmpfs.
    #[arg(long, default_value = "/var/tmp/volguard-bench")]
    workdir: PathBuf,
    /// Keep data, repositories, restores and logs after a successful run.
    #[arg(long)]
    keep: bool,
    /// Full restores per tool, in rounds that alternate the tools' order. The table
    /// shows each tool's median; every run is listed below it. One restore of the same
    /// binary on the same data varied by ±15% from run to run, as much as the margins
    /// the targets are judged on.
    #[arg(long, default_value_t = 3)]
    restore_runs: usize,
    /// Measure with a warm page cache (for non-root runs; not comparable).
    #[arg(long)]
    no_drop_caches: bool,
    /// Set by `cargo bench`. Without it (as under `cargo test
    /// --all-targets`, which also runs benches) nothing is measured.
    #[arg(long)]
    bench: bool,
}

/// The directories of one run, all under `<workdir>/core`.
struct Workspace {
    /// The S3 server of an S3 run, and the buckets made on it so far.
    s3: Option<(Rc<S3Server>, Vec<String>)>,
    /// The server itself when this run started it (its buckets go with its directory).
    private_s3: Option<seaweed::PrivateSeaweed>,
    root: PathBuf,
    data: PathBuf,
    stores: PathBuf,
    restores: PathBuf,
    logs: PathBuf,
}

fn main() -> Result<()> {
    // Re-executed as the measuring launcher (see measure.rs for why).
    if let Some(request) = measure::launch_request() {
        return measure::launch(&request);
    }
    let args = Args::parse();
    if !args.bench {
        eprintln!("core: benchmark not run (no --bench); use `cargo bench --bench core`");
        return Ok(());
    }
    ensure!(
        args.scale > 0.0 && args.scale <= 4.0,
        "--scale must be in (0, 4]"
    );
    let requested = args.tools.clone().unwrap_or_else(|| match args.backend {
        Backend::Local => vec![ToolId::Volguard, ToolId::Restic, ToolId::Tar],
        Backend::S3 => vec![ToolId::Volguard, ToolId::Restic],
    });
    ensure!(!requested.is_empty(), "--tools is empty");
    ensure!(args.restore_runs >= 1, "--restore-runs must be at least 1");
    ensure!(
        args.backend == Backend::Local || !requested.contains(&ToolId::Tar),
        "tar|zstd has no S3 backend; leave it out of --tools with --backend s3 \
         (its local numbers come from a --backend local run)"
    );
    let mut tool_ids: Vec<ToolId> = Vec::new();
    for id in &requested {
        if !tool_ids.contains(id) {
            tool_ids.push(*id);
        }
    }

    // A server named by --s3-env is checked before minutes go into building
    // volguard and generating data, so a server that is down fails at once.
    let external_s3 = match (args.backend, &args.s3_env) {
        (Backend::S3, Some(file)) => {
            let server = S3Server::load(file)?;
            server.check()?;
            Some(Rc::new(server))
        }
        _ => None,
    };
    let mut ws = Workspace::prepare(&args, external_s3)?;
    if args.backend == Backend::S3 && ws.s3.is_none() {
        ws.start_private_s3()?;
    }
    let mut runner = Runner::new(ws.logs.clone(), !args.no_drop_caches)?;
    runner.server_pid = ws.private_s3.as_ref().map(seaweed::PrivateSeaweed::pid);
    let volguard = resolve_volguard(&args, &tool_ids)?;
    let mut tools = Vec::new();
    for &id in &tool_ids {
        let scratch = ws.stores.join(id.label());
        let storage = ws.storage_for(id, &scratch)?;
        tools.push(tools::make(
            id,
            storage,
            &scratch,
            ws.data.clone(),
            volguard.as_deref(),
        )?);
    }

    let spec = dataset::Spec::at_scale(args.scale);
    let data_desc = generate(&ws, &spec)?;
    init_tools(&mut tools, &runner)?;

    let mut results = Results::new(tool_ids);
    run_backups(Scenario::Initial, &mut tools, &runner, &mut results)?;
    run_backups(Scenario::NoChange, &mut tools, &runner, &mut results)?;
    let change = dataset::mutate(&ws.data, &spec)?;
    run_backups(Scenario::Changed, &mut tools, &runner, &mut results)?;
    eprintln!("[core] hashing the source tree for restore verification");
    let expected = Manifest::of(&ws.data)?;
    run_restores(&mut tools, &runner, &ws, &expected, &args, &mut results)?;

    let ctx = report::Context {
        scale: args.scale,
        backend: ws.s3.as_ref().map(|(server, _)| {
            format!(
                "S3 on {endpoint} ({server}{fresh}), over loopback on this machine; one \
                 fresh bucket per tool: volguard `--repo s3://<bucket>/bench`, restic \
                 `-r s3:{endpoint}/<bucket>` (restic's cache dir local, not counted)",
                endpoint = server.endpoint,
                server = s3_server_version(),
                fresh = if ws.private_s3.is_some() {
                    ", started for this run on an empty directory"
                } else {
                    ", named by --s3-env"
                },
            )
        }),
        dataset: data_desc,
        change: format!(
            "{} DB pages rewritten in place (scattered), {} small files edited \
             (logs appended, others one line rewritten), one {:.0} MiB media file added",
            change.pages_rewritten,
            change.files_edited,
            change.media_added_bytes as f64 / MIB
        ),
        drop_caches: runner.drops_caches(),
        machine: machine_summary(),
        versions: tools.iter().map(|t| (t.id(), t.version())).collect(),
        new_incompressible_bytes: change.media_added_bytes as u64,
    };
    let table = report::render(&ctx, &results);
    println!("{table}");
    let out = common::target_dir()?.join(match args.backend {
        Backend::Local => "bench-core.md",
        Backend::S3 => "bench-core-s3.md",
    });
    fs::write(&out, &table).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("[core] table written to {}", out.display());
    ws.finish(args.keep)
}

impl Workspace {
    /// Creates a fresh `<workdir>/core`, clearing a previous run's leftovers,
    /// its buckets included.
    fn prepare(args: &Args, s3: Option<Rc<S3Server>>) -> Result<Self> {
        check_location(args)?;
        let root = args.workdir.join("core");
        if root.exists() {
            ensure!(
                root.join(MARKER).exists(),
                "{} exists but was not made by this bench; refusing to delete it",
                root.display()
            );
            eprintln!("[core] removing previous run in {}", root.display());
            remove_stale_buckets(&root, s3.as_deref(), args)?;
            remove_run(&root, &args.workdir)?;
        }
        wait_for_freed_inodes(&args.workdir)?;
        let ws = Self {
            s3: s3.map(|server| (server, Vec::new())),
            private_s3: None,
            data: root.join("data"),
            stores: root.join("stores"),
            restores: root.join("restores"),
            logs: root.join("logs"),
            root,
        };
        for dir in [&ws.root, &ws.stores, &ws.restores, &ws.logs] {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        fs::write(ws.root.join(MARKER), "")?;
        Ok(ws)
    }

    /// Starts the run's own SeaweedFS in `<root>/seaweed`.
    fn start_private_s3(&mut self) -> Result<()> {
        let (server, settings) = seaweed::PrivateSeaweed::start(
            &self.root.join("seaweed"),
            &self.logs.join("seaweedfs.log"),
        )?;
        self.s3 = Some((Rc::new(settings), Vec::new()));
        self.private_s3 = Some(server);
        Ok(())
    }

    /// Where `tool` stores: `scratch` itself locally; in an S3 run a new
    /// bucket, recorded in [`BUCKETS_FILE`] once it exists on a server this
    /// run did not start.
    fn storage_for(&mut self, tool: ToolId, scratch: &Path) -> Result<Storage> {
        let Some((server, buckets)) = &mut self.s3 else {
            return Ok(Storage::Dir(scratch.to_path_buf()));
        };
        let bucket = S3Server::fresh_bucket_name(tool.label());
        server.create_bucket(&bucket)?;
        buckets.push(bucket.clone());
        if self.private_s3.is_none() {
            fs::write(self.root.join(BUCKETS_FILE), buckets.join("\n") + "\n")?;
        }
        eprintln!("[core] {}: created bucket {bucket}", tool.label());
        Ok(Storage::Bucket {
            server: Rc::clone(server),
            bucket,
        })
    }

    fn finish(mut self, keep: bool) -> Result<()> {
        // The run's own server is stopped before its directory is kept or removed; its
        // buckets go with that directory. Buckets on a server --s3-env named are deleted.
        let external_buckets = match self.private_s3.take() {
            Some(server) => {
                drop(server);
                None
            }
            None => self.s3.as_ref(),
        };
        if keep {
            eprintln!(
                "[core] kept data, repositories and logs in {}",
                self.root.display()
            );
            if let Some((server, buckets)) = external_buckets {
                eprintln!(
                    "[core] kept buckets {} at {} (the next run deletes them)",
                    buckets.join(", "),
                    server.endpoint
                );
            }
            return Ok(());
        }
        if let Some((server, buckets)) = external_buckets {
            for bucket in buckets {
                server.delete_bucket(bucket)?;
            }
        }
        let workdir = self
            .root
            .parent()
            .expect("the run directory is under the workdir");
        remove_run(&self.root, workdir)
    }
}

/// When a run's directory was last removed, in Unix seconds: the next run reads it.
const REMOVED_AT_FILE: &str = "core-removed-at";

/// How long ext4 without a journal (as on this machine) passes over freed inodes: those
/// freed less than 5 s ago, or 305 s ago if their inode-table block is dirty, which it is
/// as soon as files are created next to them (`recently_deleted` in fs/ext4/ialloc.c).
const INODE_REUSE_DELAY: Duration = Duration::from_secs(305);

/// Removes a run's directory (its 50k data files and any kept restores) and notes when.
fn remove_run(root: &Path, workdir: &Path) -> Result<()> {
    fs::remove_dir_all(root).with_context(|| format!("removing {}", root.display()))?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    fs::write(workdir.join(REMOVED_AT_FILE), now.to_string())?;
    Ok(())
}

/// Waits until the inodes of a run removed shortly before are reusable. Otherwise this
/// run's restores create their 50k files while ext4 is still skipping over the 100k or
/// more it freed: in a probe, a restore right after removing the previous restore used
/// 4.41 s of system CPU instead of 3.42 s (6.91 s against 6.38 s of wall time). That
/// search is the bench's own leftover, not either tool's work, so neither is timed with it.
fn wait_for_freed_inodes(workdir: &Path) -> Result<()> {
    let Ok(text) = fs::read_to_string(workdir.join(REMOVED_AT_FILE)) else {
        return Ok(());
    };
    let Ok(removed) = text.trim().parse::<u64>() else {
        return Ok(());
    };
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH + Duration::from_secs(removed))
        .unwrap_or_default();
    if let Some(left) = INODE_REUSE_DELAY.checked_sub(since) {
        eprintln!(
            "[core] waiting {} s: the previous run's files were removed {} s ago, and ext4 \
             without a journal skips inodes freed in the last 5 minutes when making new ones",
            left.as_secs(),
            since.as_secs()
        );
        std::thread::sleep(left);
    }
    Ok(())
}

/// Deletes the buckets a previous S3 run under `root` recorded, on `server`
/// or, in a local run, on the one the S3 env file names. If that cannot be
/// read they are only named: their list goes with the previous run's
/// directory.
fn remove_stale_buckets(root: &Path, server: Option<&S3Server>, args: &Args) -> Result<()> {
    let Ok(list) = fs::read_to_string(root.join(BUCKETS_FILE)) else {
        return Ok(());
    };
    let buckets: Vec<&str> = list.lines().filter(|l| !l.trim().is_empty()).collect();
    let loaded;
    let server = match server {
        Some(server) => server,
        None => match s3_env_file(args).and_then(|file| S3Server::load(&file)) {
            Ok(server) => {
                loaded = server;
                &loaded
            }
            Err(err) => {
                eprintln!(
                    "[core] WARNING: not deleting buckets left by a previous S3 run ({}): \
                     {err:#}",
                    buckets.join(", ")
                );
                return Ok(());
            }
        },
    };
    for bucket in buckets {
        eprintln!("[core] deleting bucket {bucket} of the previous run");
        // A bucket that was recorded but never created, or already deleted
        // by hand, is not an error.
        if let Err(err) = server.delete_bucket(bucket) {
            eprintln!("[core] WARNING: {err:#}");
        }
    }
    Ok(())
}

/// Where the buckets an earlier `--s3-env` run recorded live: `--s3-env`, else
/// `~/.cache/volguard/s3.env` as tests/env/setup.sh writes it.
fn s3_env_file(args: &Args) -> Result<PathBuf> {
    if let Some(path) = &args.s3_env {
        return Ok(path.clone());
    }
    let home = std::env::var_os("HOME").context("HOME is not set; pass --s3-env")?;
    Ok(PathBuf::from(home).join(".cache/volguard/s3.env"))
}

/// SeaweedFS's version when setup.sh's `weed` is where it installs it; the
/// S3 API itself does not tell.
fn s3_server_version() -> String {
    let version = seaweed::installed_weed().and_then(|weed| {
        let out = Command::new(weed).arg("version").output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines().next().map(|l| l.trim().to_owned())
    });
    match version {
        Some(version) => format!("SeaweedFS, `weed version`: {version}"),
        None => "server version unknown".into(),
    }
}

/// The work directory must not be inside the source tree (cargo and editors
/// would trip over GiBs of data), must not be tmpfs (reads would never be
/// cold, and the data would eat RAM), and must have room.
fn check_location(args: &Args) -> Result<()> {
    let (workdir, scale) = (&args.workdir, args.scale);
    fs::create_dir_all(workdir).with_context(|| format!("creating {}", workdir.display()))?;
    let workdir = workdir.canonicalize()?;
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).canonicalize()?;
    ensure!(
        !workdir.starts_with(&source),
        "--workdir {} is inside the source tree {}",
        workdir.display(),
        source.display()
    );
    let fs_type = nix::sys::statfs::statfs(&workdir)?.filesystem_type();
    ensure!(
        fs_type != nix::sys::statfs::TMPFS_MAGIC,
        "--workdir {} is on tmpfs; pick a disk-backed directory",
        workdir.display()
    );
    let vfs = nix::sys::statvfs::statvfs(&workdir)?;
    let free = vfs.blocks_available() as f64 * vfs.fragment_size() as f64;
    // Data ~2.2 GiB, two tar archives, two repositories and three restores (all
    // kept until the last is done) come to ~14 GiB at scale 1; keep some slack.
    // With S3 only the data, two restores and restic's cache are local, plus
    // the run's own server with both repositories (~3 GiB) unless --s3-env
    // names another. Each further round of restores adds one restore
    // (~2.2 GiB) per tool.
    let s3 = args.backend == Backend::S3;
    let tools = if s3 { 2.0 } else { 3.0 };
    let more_rounds = args.restore_runs.saturating_sub(1) as f64;
    let base = match (s3, &args.s3_env) {
        (false, _) => 16.0,
        (true, Some(_)) => 7.5,
        (true, None) => 10.5,
    };
    let gib_at_scale_1 = base + more_rounds * tools * 2.2;
    let need = (gib_at_scale_1 * scale + 0.5) * 1024.0 * MIB;
    ensure!(
        free >= need,
        "{} has {:.1} GiB free, the bench needs about {:.1} GiB",
        workdir.display(),
        free / 1024.0 / MIB,
        need / 1024.0 / MIB
    );
    Ok(())
}

/// The volguard binary: `--volguard`, else this checkout's release build,
/// (re)built now so that the bench never measures a stale binary.
fn resolve_volguard(args: &Args, tools: &[ToolId]) -> Result<Option<PathBuf>> {
    if !tools.contains(&ToolId::Volguard) {
        return Ok(None);
    }
    if let Some(path) = &args.volguard {
        ensure!(
            path.is_file(),
            "--volguard {} does not exist",
            path.display()
        );
        return Ok(Some(path.clone()));
    }
    common::build_volguard("core").map(Some)
}

/// Writes the data set and describes it (with its real total size).
fn generate(ws: &Workspace, spec: &dataset::Spec) -> Result<String> {
    eprintln!("[core] generating: {}", spec.describe());
    let started = Instant::now();
    dataset::generate(&ws.data, spec)?;
    let total = dir_bytes(&ws.data)?;
    eprintln!(
        "[core] generated {:.0} MiB in {:.1} s",
        total as f64 / MIB,
        started.elapsed().as_secs_f64()
    );
    Ok(format!(
        "{} ({:.0} MiB in total)",
        spec.describe(),
        total as f64 / MIB
    ))
}

fn init_tools(tools: &mut [Box<dyn Tool>], runner: &Runner) -> Result<()> {
    for tool in tools {
        let label = tool.id().label();
        tool.init(runner)
            .with_context(|| format!("initialising {label}"))?;
        // A CLI that is still a stub exits 0 without doing anything; say so
        // plainly instead of failing later on a missing directory.
        ensure!(
            tool.storage().is_initialised()?,
            "{label} init succeeded but created no repository in {}",
            tool.storage().describe()
        );
    }
    Ok(())
}

fn run_backups(
    scenario: Scenario,
    tools: &mut [Box<dyn Tool>],
    runner: &Runner,
    results: &mut Results,
) -> Result<()> {
    for tool in tools.iter_mut() {
        let label = tool.id().label();
        let before = tool.storage().bytes()?;
        let Some(run) = tool
            .backup(runner, scenario)
            .with_context(|| format!("{label}: {}", scenario.label()))?
        else {
            continue;
        };
        let after = tool.storage().bytes()?;
        eprintln!(
            "[core] {label} {}: {}, +{:.1} MiB stored",
            scenario.label(),
            run.usage,
            after.saturating_sub(before) as f64 / MIB
        );
        let cell = Cell {
            peak_rss: run.usage.peak_rss,
            stored: Some(after),
            added: Some(after.saturating_sub(before)),
            reported_added: run.reported_added,
            reported_changed_files: run.reported_changed_files,
            runs: vec![run.usage.wall.as_secs_f64()],
        };
        results.record(scenario, tool.id(), cell);
    }
    Ok(())
}

/// Restores each tool's latest backup into an empty directory, then checks
/// it against the source; a mismatch aborts the whole bench. `--restore-runs`
/// rounds, every other one in reverse tool order, so that neither tool always
/// runs first.
fn run_restores(
    tools: &mut [Box<dyn Tool>],
    runner: &Runner,
    ws: &Workspace,
    expected: &Manifest,
    args: &Args,
    results: &mut Results,
) -> Result<()> {
    // Removed only after the last restore: ext4 avoids reusing inodes freed in the last
    // minute or so, and creating 50k files right after deleting another tool's 50k made
    // the next restore pay for that search.
    let mut to_remove = Vec::new();
    let mut runs: Vec<Vec<(f64, u64)>> = vec![Vec::new(); tools.len()];
    for round in 0..args.restore_runs {
        let mut order: Vec<usize> = (0..tools.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let tool = &mut tools[i];
            let label = tool.id().label();
            let target = ws.restores.join(format!("{label}-{}", round + 1));
            fs::create_dir_all(&target)?;
            let run = tool
                .restore(runner, &target)
                .with_context(|| format!("{label}: restore"))?;
            eprintln!(
                "[core] {label} restore {}/{}: {}; verifying",
                round + 1,
                args.restore_runs,
                run.usage
            );
            let restored = Manifest::of(&tool.restored_root(&target))?;
            expected.check(&restored, label)?;
            eprintln!(
                "[core] {label} restore verified: {} files identical",
                expected.files()
            );
            if !args.keep {
                to_remove.push(target);
            }
            runs[i].push((run.usage.wall.as_secs_f64(), run.usage.peak_rss));
        }
    }
    for (tool, runs) in tools.iter().zip(runs) {
        let cell = Cell {
            // The largest of its runs: "lower peak RSS" must hold for every one.
            peak_rss: runs.iter().map(|r| r.1).max().unwrap_or(0),
            stored: None,
            added: None,
            reported_added: None,
            reported_changed_files: None,
            runs: runs.iter().map(|r| r.0).collect(),
        };
        results.record(Scenario::Restore, tool.id(), cell);
    }
    for target in to_remove {
        fs::remove_dir_all(&target)?;
    }
    Ok(())
}

fn machine_summary() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or("?".into(), |kib| format!("{:.1}", kib / 1024.0 / 1024.0));
    format!("{cpus} CPUs, {mem_gib} GiB RAM")
}
