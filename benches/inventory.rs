//! Benchmark: `volguard inventory` of 500 volumes and 200 containers (issue 3's goal: under
//! 200 ms warm, sizes excluded), side by side with what the Docker CLI needs for the same
//! facts (`docker volume ls` + `docker volume inspect` of all, `docker ps -a` + `docker
//! inspect` of all).
//!
//! The state is made by a real dockerd: a private one (tests/it/common/private_dockerd.rs, so
//! the shared test daemon is left alone) with its own data root, where the bench creates 460
//! named volumes (a third labelled, some with driver options) and 200 containers with
//! `docker create` (every one mounts a named volume; every fifth also an anonymous one,
//! which brings the volumes to 500; some have tmpfs and bind mounts). The containers are
//! never started: inventory reads the same files either way.
//!
//! Run: `cargo bench --bench inventory [-- --runs N]` (root, dockerd and the test image of
//! tests/env/setup.sh needed). Prints a Markdown table and writes it to
//! `$CARGO_TARGET_TMPDIR/bench-inventory.md`.

#[path = "../tests/it/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::private_dockerd::PrivateDockerd;
use common::{IMAGE, docker_status, volguard_bin};
use volguard::docker::inventory;

const NAMED_VOLUMES: usize = 460;
const CONTAINERS: usize = 200;
/// Every this-many-th container also gets an anonymous volume (`-v /anon`).
const ANON_EVERY: usize = 5;
const WANT_VOLUMES: usize = NAMED_VOLUMES + CONTAINERS / ANON_EVERY;
/// docker CLI calls run in parallel while setting up.
const SETUP_WORKERS: usize = 4;
const GOAL: Duration = Duration::from_millis(200);

fn run_docker(sock: &str, args: &[&str]) -> String {
    let mut all = vec!["-H", sock];
    all.extend_from_slice(args);
    let (code, out, err) = docker_status(&all);
    assert_eq!(code, 0, "docker {args:?}: {err}");
    out
}

/// Runs `jobs` docker argument lists on a few threads.
fn parallel(sock: &str, jobs: Vec<Vec<String>>) {
    let chunks: Vec<Vec<Vec<String>>> = (0..SETUP_WORKERS)
        .map(|w| {
            jobs.iter()
                .skip(w)
                .step_by(SETUP_WORKERS)
                .cloned()
                .collect()
        })
        .collect();
    std::thread::scope(|s| {
        for chunk in chunks {
            s.spawn(move || {
                for job in chunk {
                    let args: Vec<&str> = job.iter().map(String::as_str).collect();
                    run_docker(sock, &args);
                }
            });
        }
    });
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn populate(d: &PrivateDockerd, bind_src: &Path) {
    let sock = d.socket();
    let mut jobs = Vec::new();
    for i in 0..NAMED_VOLUMES {
        let name = format!("bv-{i:03}");
        let mut job = strs(&["volume", "create"]);
        if i % 3 == 0 {
            job.extend(strs(&["--label", "app=bench", "--label"]));
            job.push(format!("idx={i}"));
        }
        if i % 50 == 0 {
            job.extend(strs(&[
                "--opt",
                "type=tmpfs",
                "--opt",
                "device=tmpfs",
                "--opt",
                "o=size=1m",
            ]));
        }
        job.push(name);
        jobs.push(job);
    }
    parallel(&sock, jobs);
    let mut jobs = Vec::new();
    for i in 0..CONTAINERS {
        let mut job = strs(&["create", "--network", "none", "--name"]);
        job.push(format!("bc-{i:03}"));
        job.push("-v".into());
        job.push(format!("bv-{i:03}:/data"));
        if i % ANON_EVERY == 0 {
            job.extend(strs(&["-v", "/anon"]));
        }
        if i % 7 == 0 {
            job.extend(strs(&["--tmpfs", "/run:size=1m"]));
        }
        if i % 11 == 0 {
            job.push("-v".into());
            job.push(format!("{}:/srv:ro", bind_src.display()));
        }
        job.extend(strs(&[IMAGE, "sleep", "1"]));
        jobs.push(job);
    }
    parallel(&sock, jobs);
}

fn time_it<F: FnMut()>(runs: usize, mut f: F) -> Vec<Duration> {
    let mut out: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    out.sort();
    out
}

fn median(v: &[Duration]) -> Duration {
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let mut runs = 20;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--runs" {
            runs = args.next().and_then(|n| n.parse().ok()).expect("--runs N");
        }
    }
    let d = PrivateDockerd::start();
    d.load_test_image();
    let bind_src = tempfile::tempdir().unwrap();
    let t = Instant::now();
    populate(&d, bind_src.path());
    eprintln!(
        "[inventory] created the state in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let root = d.root();
    let sock = d.socket();

    // Correct first: the inventory sees everything dockerd made.
    let inv = inventory::collect(&root, &inventory::Options { sizes: false });
    assert!(inv.warnings.is_empty(), "{:?}", inv.warnings);
    assert_eq!(inv.volumes.len(), WANT_VOLUMES);
    assert_eq!(inv.containers.len(), CONTAINERS);
    let anon = inv.volumes.iter().filter(|v| v.anonymous).count();
    assert_eq!(anon, CONTAINERS / ANON_EVERY);

    // Warm: the first runs above and here bring the files into the page cache.
    let lib = time_it(runs, || {
        let inv = inventory::collect(&root, &inventory::Options { sizes: false });
        assert_eq!(inv.volumes.len(), WANT_VOLUMES);
    });
    let lib_sizes = time_it(runs.min(5), || {
        let inv = inventory::collect(&root, &inventory::Options { sizes: true });
        assert_eq!(inv.containers.len(), CONTAINERS);
    });
    let cli = time_it(runs, || {
        let out = Command::new(volguard_bin())
            .args([
                "--config",
                "/nonexistent/volguard.toml",
                "--json",
                "--docker-root",
            ])
            .arg(&root)
            .arg("inventory")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    });
    let docker_all = time_it(runs.min(5), || {
        let vols = run_docker(&sock, &["volume", "ls", "-q"]);
        let vols: Vec<&str> = vols.split_whitespace().collect();
        assert_eq!(vols.len(), WANT_VOLUMES);
        let mut args = vec!["volume", "inspect"];
        args.extend(&vols);
        run_docker(&sock, &args);
        let ids = run_docker(&sock, &["ps", "-aq"]);
        let ids: Vec<&str> = ids.split_whitespace().collect();
        assert_eq!(ids.len(), CONTAINERS);
        let mut args = vec!["inspect"];
        args.extend(&ids);
        run_docker(&sock, &args);
    });

    let base = median(&cli);
    let rows = [
        ("volguard inventory, in process (sizes excluded)", &lib),
        ("volguard --json inventory, whole command", &cli),
        ("volguard inventory --sizes, in process", &lib_sizes),
        (
            "docker volume ls + volume inspect (all) + ps -a + inspect (all)",
            &docker_all,
        ),
    ];
    let mut table = format!(
        "Inventory of {WANT_VOLUMES} volumes and {CONTAINERS} containers (dockerd {}), warm, median of {runs} runs (5 for --sizes and docker):\n\n\
         | what | median | min | max | time / `volguard --json inventory` |\n|---|---|---|---|---|\n",
        run_docker(&sock, &["version", "--format", "{{.Server.Version}}"]).trim()
    );
    for (what, t) in rows {
        table.push_str(&format!(
            "| {what} | {} | {} | {} | {:.2}x |\n",
            ms(median(t)),
            ms(t[0]),
            ms(t[t.len() - 1]),
            median(t).as_secs_f64() / base.as_secs_f64()
        ));
    }
    table.push_str(&format!(
        "\nGoal: under {} ms warm, sizes excluded: {} (whole command {}).\n",
        GOAL.as_millis(),
        if median(&lib) < GOAL {
            "met"
        } else {
            "NOT met"
        },
        if median(&cli) < GOAL {
            "met"
        } else {
            "NOT met"
        },
    ));
    println!("{table}");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-inventory.md");
    if let Err(e) = std::fs::write(&out, &table) {
        eprintln!("[inventory] cannot write {}: {e}", out.display());
    } else {
        eprintln!("[inventory] table written to {}", out.display());
    }
}
