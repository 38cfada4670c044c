//! Hostile volume contents: what a container (or whoever writes into a volume) can put
//! there to make a backup leak, hang, run forever or lose data: symlinks and hard links
//! reaching outside the volume, FIFOs, a file that grows while it is read, very many
//! files, paths longer than PATH_MAX, names with newlines and invalid UTF-8. Every backup
//! must finish; every restore must reproduce the entries byte for byte (names included)
//! or name what it skipped as a soft error (exit 3).

use std::ffi::OsStr;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

fn text(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout)
}

/// Runs a volguard command, killing it (and failing) if it takes longer than `limit`:
/// a backup that blocks on a FIFO or chases a growing file must show as a failure here,
/// not as a test that never ends.
fn run_bounded(mut c: Command, limit: Duration) -> std::process::Output {
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!("volguard did not finish within {limit:?}: {}", text(&out));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn backup_cmd(repo: &TestRepo, src: &Path, name: &str) -> Command {
    let mut c = repo.cmd();
    c.args([
        "--json",
        "backup",
        "--path",
        src.to_str().unwrap(),
        "--name",
        name,
    ]);
    c
}

fn json(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

#[test]
fn links_fifos_and_odd_names_are_stored_as_themselves_and_never_followed() {
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let outside = repo.path().join("outside");
    std::fs::create_dir_all(outside.join("dir")).unwrap();
    // 2 MiB of data only reachable through links: if the backup read it, bytes_read says so.
    let secret = pseudo_random(2 << 20, 7);
    std::fs::write(outside.join("secret"), &secret).unwrap();
    std::fs::write(outside.join("dir/more"), &secret).unwrap();
    let src = repo.path().join("vol");
    std::fs::create_dir_all(&src).unwrap();
    let s = |p: &str| src.join(p);
    std::os::unix::fs::symlink(outside.join("secret"), s("abs-link")).unwrap();
    std::os::unix::fs::symlink("../outside/secret", s("rel-link")).unwrap();
    std::os::unix::fs::symlink(outside.join("dir"), s("dir-link")).unwrap();
    std::os::unix::fs::symlink("/proc/self/root", s("root-link")).unwrap();
    std::os::unix::fs::symlink("dangling/nowhere", s("dangling")).unwrap();
    // A hard link to a file outside: it IS volume content (the same inode), so it is read.
    let shared = b"hard-linked from outside the volume".to_vec();
    std::fs::write(outside.join("shared"), &shared).unwrap();
    std::fs::hard_link(outside.join("shared"), s("hardlinked")).unwrap();
    // FIFOs: one nobody writes to (opening it for reading would block forever), one with a
    // writer holding it open (reading it would never end).
    nix::unistd::mkfifo(&s("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    nix::unistd::mkfifo(
        &s("fifo-busy"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let busy = s("fifo-busy");
    let writer = std::thread::spawn(move || {
        // Opening for writing blocks until a reader comes, so open with O_RDWR (which never
        // blocks on Linux) and keep feeding it until the test ends.
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&busy)
            .unwrap();
        nix::fcntl::fcntl(
            f.as_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        let mut f = f;
        for _ in 0..200 {
            let _ = f.write(&[b'x'; 4096]);
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    // Names: newline, carriage return, tab, invalid UTF-8, a leading dash, backslash,
    // glob characters, 255 bytes (NAME_MAX).
    let names: Vec<Vec<u8>> = vec![
        b"new\nline".to_vec(),
        b"cr\rlf\n".to_vec(),
        b"tab\there".to_vec(),
        b"latin1-caf\xe9".to_vec(),
        b"\xff\xfe\xfd".to_vec(),
        b"-rf".to_vec(),
        b"back\\slash".to_vec(),
        b"*?[glob]".to_vec(),
        vec![b'n'; 255],
    ];
    for (i, n) in names.iter().enumerate() {
        std::fs::write(src.join(OsStr::from_bytes(n)), format!("content {i}")).unwrap();
    }
    let odd_dir = src.join(OsStr::from_bytes(b"dir\nwith\xffodd"));
    std::fs::create_dir(&odd_dir).unwrap();
    std::fs::write(odd_dir.join(OsStr::from_bytes(b"inner\n")), "inner").unwrap();

    let out = run_bounded(backup_cmd(&repo, &src, "hostile"), Duration::from_secs(120));
    writer.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let snap = &json(&out)["snapshots"][0];
    let read = snap["bytes_read"].as_u64().unwrap();
    assert!(
        read < 1 << 20,
        "the backup read {read} bytes: it followed a link out of the volume"
    );
    let id = snap["snapshot_id"].as_str().unwrap().to_string();

    let dst = repo.path().join("restored");
    let out = run_bounded(
        {
            let mut c = repo.cmd();
            c.args(["restore", "hostile", "--snapshot", &id, "--target"])
                .arg(&dst)
                .arg("--verify");
            c
        },
        Duration::from_secs(120),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let mut diffs = treecmp::compare_trees(&src, &dst);
    // The busy FIFO's writer goes on writing after the backup, and every write moves the
    // FIFO's mtime: the snapshot holds the mtime it had when it was read.
    diffs.retain(|d| !d.starts_with("\"fifo-busy\": mtime "));
    assert!(diffs.is_empty(), "restore differs: {diffs:#?}");
    // Spelled out for the hostile parts.
    for (l, target) in [
        (
            "abs-link",
            outside.join("secret").into_os_string().into_vec(),
        ),
        ("rel-link", b"../outside/secret".to_vec()),
        ("root-link", b"/proc/self/root".to_vec()),
    ] {
        let got = std::fs::read_link(dst.join(l)).unwrap();
        assert_eq!(got.as_os_str().as_bytes(), target.as_slice(), "{l}");
    }
    assert_eq!(std::fs::read(dst.join("hardlinked")).unwrap(), shared);
    assert!(
        std::fs::symlink_metadata(dst.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    for (i, n) in names.iter().enumerate() {
        assert_eq!(
            std::fs::read(dst.join(OsStr::from_bytes(n))).unwrap(),
            format!("content {i}").as_bytes(),
            "{:?}",
            String::from_utf8_lossy(n)
        );
    }
    // The outside data is still there, untouched, and was never copied in.
    assert_eq!(std::fs::read(outside.join("secret")).unwrap(), secret);
    eprintln!(
        "hostile volume links/fifos/names: 5 symlinks, 1 outside hard link, 2 fifos, {} odd names: \
         reproduced, {read} bytes read",
        names.len() + 2
    );
}

use std::os::unix::ffi::OsStringExt;

#[test]
fn a_file_growing_forever_does_not_stall_the_backup() {
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let src = repo.path().join("vol");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("steady"), "steady").unwrap();
    let grow = src.join("grows.log");
    std::fs::write(&grow, pseudo_random(8 << 20, 1)).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let g = grow.clone();
    // About 25 MiB/s, capped at 1 GiB so a broken backup cannot fill the disk.
    let grower = std::thread::spawn(move || {
        let mut f = std::fs::OpenOptions::new().append(true).open(&g).unwrap();
        let block = pseudo_random(256 << 10, 2);
        let mut written = 0u64;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) && written < 1 << 30 {
            f.write_all(&block).unwrap();
            written += block.len() as u64;
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let out = run_bounded(backup_cmd(&repo, &src, "growing"), Duration::from_secs(180));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    grower.join().unwrap();
    let t = text(&out);
    assert_eq!(
        out.status.code(),
        Some(3),
        "a soft error for the growing file: {t}"
    );
    let snap = &json(&out)["snapshots"][0];
    let errors = snap["errors"].to_string();
    assert!(
        errors.contains("grows.log") && errors.contains("changed while being read"),
        "{errors}"
    );
    // The rest of the volume is in the snapshot.
    let id = snap["snapshot_id"].as_str().unwrap();
    let dst = repo.restore_to_new_dir("growing", id);
    assert_eq!(std::fs::read(dst.join("steady")).unwrap(), b"steady");
    eprintln!("growing file: backup finished with a named soft error");
}

/// Creates `depth` nested directories of `name_len`-byte names below `root` with
/// mkdirat/openat (each call relative to the last directory, so no path passed to the
/// kernel is longer than one name), and a file at the bottom. Returns the total length.
fn build_deep(root: &Path, depth: usize, name_len: usize, content: &[u8]) -> usize {
    use nix::fcntl::{OFlag, openat};
    use nix::sys::stat::{Mode, mkdirat};
    let mut fd =
        nix::fcntl::open(root, OFlag::O_DIRECTORY | OFlag::O_RDONLY, Mode::empty()).unwrap();
    let mut total = root.as_os_str().len();
    for i in 0..depth {
        let name = format!("{i:03}{}", "d".repeat(name_len - 3));
        mkdirat(&fd, name.as_str(), Mode::from_bits_truncate(0o755)).unwrap();
        fd = openat(
            &fd,
            name.as_str(),
            OFlag::O_DIRECTORY | OFlag::O_RDONLY,
            Mode::empty(),
        )
        .unwrap();
        total += 1 + name.len();
    }
    let f = openat(
        &fd,
        "bottom.txt",
        OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_EXCL,
        Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    nix::unistd::write(&f, content).unwrap();
    total + "/bottom.txt".len()
}

/// Reads `bottom.txt` at the end of the chain below `root` (openat, one level at a time).
fn read_deep(root: &Path, depth: usize, name_len: usize) -> Option<Vec<u8>> {
    use nix::fcntl::{OFlag, openat};
    use nix::sys::stat::Mode;
    let mut fd =
        nix::fcntl::open(root, OFlag::O_DIRECTORY | OFlag::O_RDONLY, Mode::empty()).ok()?;
    for i in 0..depth {
        let name = format!("{i:03}{}", "d".repeat(name_len - 3));
        fd = openat(
            &fd,
            name.as_str(),
            OFlag::O_DIRECTORY | OFlag::O_RDONLY,
            Mode::empty(),
        )
        .ok()?;
    }
    let f = openat(&fd, "bottom.txt", OFlag::O_RDONLY, Mode::empty()).ok()?;
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut std::fs::File::from(f), &mut out).ok()?;
    Some(out)
}

#[test]
fn paths_longer_than_path_max_are_reproduced_or_named() {
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let src = repo.path().join("vol");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("shallow.txt"), "shallow").unwrap();
    let (depth, name_len) = (24, 250);
    let total = build_deep(&src, depth, name_len, b"at the bottom");
    assert!(total > 4096, "the deep path is {total} bytes");
    let out = run_bounded(backup_cmd(&repo, &src, "deep"), Duration::from_secs(120));
    let t = text(&out);
    let snap = &json(&out)["snapshots"][0];
    let id = snap["snapshot_id"].as_str().unwrap().to_string();
    let dst = repo.path().join("restored");
    let rout = run_bounded(
        {
            let mut c = repo.cmd();
            c.args(["restore", "deep", "--snapshot", &id, "--target"])
                .arg(&dst);
            c
        },
        Duration::from_secs(120),
    );
    let rt = text(&rout);
    assert_eq!(
        std::fs::read(dst.join("shallow.txt")).unwrap(),
        b"shallow",
        "{rt}"
    );
    match read_deep(&dst, depth, name_len) {
        Some(got) => {
            assert_eq!(got, b"at the bottom");
            assert_eq!(out.status.code(), Some(0), "{t}");
            assert_eq!(rout.status.code(), Some(0), "{rt}");
            eprintln!("path of {total} bytes: reproduced");
        }
        None => {
            // Skipped: then both sides must have said so, naming the path, as soft errors.
            let named = |s: &str| {
                s.contains(&"d".repeat(name_len - 3)) && s.to_lowercase().contains("too long")
            };
            assert!(
                (out.status.code() == Some(3) && named(&snap["errors"].to_string()))
                    || (rout.status.code() == Some(3) && named(&rt)),
                "the deep file is missing and nobody said so:\nbackup: {t}\nrestore: {rt}"
            );
            eprintln!(
                "path of {total} bytes: skipped with a named soft error (backup exit {:?}, restore exit {:?})",
                out.status.code(),
                rout.status.code()
            );
        }
    }
}

/// Mounts a tmpfs on `dir` for the life of the guard (many small files are about inodes,
/// not disks; a tmpfs makes the test measure volguard, not the shared disk).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=2g,nr_inodes=3m"),
        )
        .expect("mount a tmpfs (the tests run as root)");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Many empty files. 200,000 by default (a CI-sized bound: about a minute of backup and
/// restore on two shared cores); set VOLGUARD_HOSTILE_FILES=1000000 for the full million.
#[test]
fn very_many_empty_files_back_up_and_restore_completely() {
    let n: usize = std::env::var("VOLGUARD_HOSTILE_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let mnt = repo.path().join("tmpfs");
    let _fs = Tmpfs::mount(&mnt);
    let src = mnt.join("vol");
    let per_dir = 10_000;
    let started = Instant::now();
    for d in 0..n.div_ceil(per_dir) {
        let dir = src.join(format!("d{d:03}"));
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..per_dir.min(n - d * per_dir) {
            std::fs::File::create(dir.join(format!("f{i:05}"))).unwrap();
        }
    }
    let made = started.elapsed();
    let t0 = Instant::now();
    let out = run_bounded(backup_cmd(&repo, &src, "many"), Duration::from_secs(900));
    let backup_s = t0.elapsed().as_secs_f64();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let snap = &json(&out)["snapshots"][0];
    let id = snap["snapshot_id"].as_str().unwrap().to_string();
    let dst = mnt.join("restored");
    let t1 = Instant::now();
    let rout = run_bounded(
        {
            let mut c = repo.cmd();
            c.args(["--json", "restore", "many", "--snapshot", &id, "--target"])
                .arg(&dst);
            c
        },
        Duration::from_secs(900),
    );
    let restore_s = t1.elapsed().as_secs_f64();
    assert_eq!(rout.status.code(), Some(0), "{}", text(&rout));
    assert_eq!(json(&rout)["files"].as_u64().unwrap(), n as u64);
    let mut count = 0;
    for e in walkdir::WalkDir::new(&dst) {
        let e = e.unwrap();
        if e.file_type().is_file() {
            assert_eq!(e.metadata().unwrap().len(), 0);
            count += 1;
        }
    }
    assert_eq!(count, n);
    let m = std::fs::metadata(dst.join("d000/f00000")).unwrap();
    assert_eq!(m.size(), 0);
    eprintln!(
        "{n} empty files: created in {:.1}s, backup {backup_s:.1}s, restore {restore_s:.1}s, all {count} restored",
        made.as_secs_f64()
    );
}
