//! `volguard mount` against real FUSE (/dev/fuse, root): a container's volume backed up
//! and mounted equals its source path for path (local and S3), new snapshots appear while
//! mounted, a random read fetches only its blobs (counted at the backend), `dump` streams a
//! 1 GiB file in bounded memory, a damaged blob fails only its file, and unmounting leaves no mount and no process behind.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use volguard::backend::local::LocalBackend;
use volguard::repo::Repository;
use volguard::repo::format::crypto::Secret;
use volguard::repo::format::tree::NodeKind;

use crate::common::*;

fn mounted(mp: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let mp = mp.to_str().unwrap();
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(mp))
}

struct Mount {
    child: Option<Child>,
    mp: PathBuf,
}

impl Mount {
    fn start(repo: &TestRepo, mp: &Path, extra: &[&str]) -> Mount {
        std::fs::create_dir_all(mp).unwrap();
        let mut c = repo.cmd();
        c.args(["--json", "mount"]).arg(mp).args(extra);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().expect("spawn volguard mount");
        let t = Instant::now();
        while !mounted(mp) {
            if let Some(st) = child.try_wait().unwrap() {
                let mut err = String::new();
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                panic!("volguard mount exited with {st}: {err}");
            }
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "mount did not appear"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Mount {
            child: Some(child),
            mp: mp.to_path_buf(),
        }
    }

    /// Waits for the process; returns its JSON report and stderr.
    fn wait(mut self) -> (serde_json::Value, String) {
        let child = self.child.take().unwrap();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "mount exit: {err}");
        assert!(!mounted(&self.mp), "still mounted after the process ended");
        let report = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("report {e}: {}", String::from_utf8_lossy(&out.stdout)));
        (report, err)
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = self.child.as_ref().unwrap().id() as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("fusermount3")
                .arg("-uz")
                .arg(&self.mp)
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The snapshot directories (not `latest`) of a listing directory.
fn snapshot_dirs(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "latest")
        .collect();
    v.sort();
    v
}

/// Backs up a container's volume holding every metadata kind, mounts the repository and
/// compares the mounted snapshot with the volume's data; then a second snapshot appears
/// without remounting, and SIGTERM unmounts.
fn volume_round_trip(repo: &TestRepo) {
    require_docker();
    let mut clean = DockerCleanup::new();
    let vol = clean.volume(unique("vg-mount"));
    docker(&["volume", "create", &vol]);
    let data = volume_data_dir(&vol);
    treecmp::build_fixture(&data);
    // A real container writes into it too.
    sh_in_volume(&vol, "echo from-a-container > /data/container.txt");
    repo.run_ok(&["init"]);
    let root = docker_root();
    let root = root.to_str().unwrap();
    repo.run_ok(&["--docker-root", root, "backup", &vol]);

    let mp = repo.path().join("mnt");
    let m = Mount::start(repo, &mp, &[]);
    let latest = mp.join("by-volume").join(&vol).join("latest");
    let diffs = treecmp::compare_trees(&data, &latest);
    assert!(
        diffs.is_empty(),
        "mount differs from the volume: {diffs:#?}"
    );
    // Only the path is kept: a DirEntry holds its directory open, and an open directory
    // inside the mount would keep the unmount at the end busy.
    let host_dir = std::fs::read_dir(mp.join("by-host"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let first = snapshot_dirs(&host_dir.join(&vol));
    assert_eq!(first.len(), 1);

    // A new snapshot shows up while mounted.
    std::fs::write(data.join("new-file"), b"second snapshot").unwrap();
    let second = repo.run_json(&["--docker-root", root, "backup", &vol]);
    let second_id = second["snapshots"][0]["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string();
    let vdir = mp.join("by-volume").join(&vol);
    let t = Instant::now();
    while snapshot_dirs(&vdir).len() < 2 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "new snapshot never appeared"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Two snapshots of the same second are both named `<time>-<short id>`, so neither sort
    // order nor the first listing tells which is newer: the new snapshot's id does.
    let dirs = snapshot_dirs(&vdir);
    let newest = dirs
        .iter()
        .find(|n| n.ends_with(&format!("-{}", &second_id[..8])))
        .or_else(|| dirs.iter().find(|n| !first.contains(n)))
        .unwrap()
        .clone();
    assert_eq!(
        std::fs::read_link(vdir.join("latest")).unwrap(),
        PathBuf::from(&newest)
    );
    assert_eq!(
        std::fs::read(vdir.join(&newest).join("new-file")).unwrap(),
        b"second snapshot"
    );
    let diffs = treecmp::compare_trees(&data, &vdir.join(&newest));
    assert!(diffs.is_empty(), "second snapshot differs: {diffs:#?}");

    m.signal(nix::sys::signal::Signal::SIGTERM);
    let (report, _) = m.wait();
    assert_eq!(report["io_errors"], 0, "{report}");
    assert!(report["refreshes"].as_u64().unwrap() >= 1, "{report}");
}

#[test]
fn a_mounted_volume_snapshot_equals_its_source_on_a_local_repository() {
    volume_round_trip(&TestRepo::new());
}

#[test]
fn a_mounted_volume_snapshot_equals_its_source_on_s3() {
    let (repo, s3, bucket) = TestRepo::s3(S3Server::SeaweedFs, "mount");
    volume_round_trip(&repo);
    s3.remove_bucket(&bucket);
}

fn open_lib(t: &TestRepo) -> Repository {
    let secret =
        Secret::KeyFile(volguard::secrets::read_secret_file(&t.key_file, "key file").unwrap());
    Repository::open(Arc::new(LocalBackend::new(&t.repo)), &secret).unwrap()
}

/// Writes `len` bytes of pseudo-random data to `path` in pieces (no 1 GiB buffer).
fn write_random(path: &Path, len: u64, seed: u64) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x = seed | 1;
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
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
}

#[test]
fn a_read_at_the_end_of_a_large_file_fetches_only_its_blobs_and_damage_fails_one_file() {
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let src = repo.path().join("src");
    std::fs::create_dir(&src).unwrap();
    const GIB: u64 = 1 << 30;
    write_random(&src.join("big"), GIB, 7);
    std::fs::write(src.join("victim"), pseudo_random(300_000, 3)).unwrap();
    std::fs::write(src.join("fine"), pseudo_random(200_000, 4)).unwrap();
    // A sparse file: holes stay holes and read as zeros.
    {
        let f = std::fs::File::create(src.join("sparse")).unwrap();
        f.set_len(64 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"data in the middle", 32 << 20).unwrap();
    }
    repo.run_ok(&["backup", "--path", src.to_str().unwrap(), "--name", "big"]);

    // `dump` streams the 1 GiB file with bounded memory and the same bytes.
    let report = repo.path().join("dump-rss");
    let mut dump = repo.cmd();
    dump.args(["dump", "big:latest", "/big"]);
    let mut child = with_peak_rss(&dump, &report)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut dumped = blake3::Hasher::new();
    let n = std::io::copy(child.stdout.as_mut().unwrap(), &mut dumped).unwrap();
    assert!(child.wait().unwrap().success(), "dump failed");
    assert_eq!(n, GIB);
    let mut source = blake3::Hasher::new();
    std::io::copy(
        &mut std::fs::File::open(src.join("big")).unwrap(),
        &mut source,
    )
    .unwrap();
    assert_eq!(dumped.finalize(), source.finalize(), "dump's bytes differ");
    let rss = peak_rss_mib(&report);
    assert!(
        rss < 64.0,
        "dump of a 1 GiB file peaked at {rss:.1} MiB RSS"
    );

    // A byte of victim's first blob flipped in its pack.
    let lib = open_lib(&repo);
    let index = volguard::ops::prune::load_index_for_read(&lib).unwrap();
    let (_, snap) = lib.find_snapshot("big", "latest").unwrap();
    let tree = lib.load_tree(&index, &snap.root.subtree.unwrap()).unwrap();
    let victim = tree.nodes.iter().find(|n| n.name == b"victim").unwrap();
    assert_eq!(victim.kind, NodeKind::File);
    let (pack, loc) = index.get(&victim.content[0]).unwrap();
    let h = pack.to_hex();
    let pack_path = repo.repo.join("packs").join(&h[..2]).join(&h);
    let mut bytes = std::fs::read(&pack_path).unwrap();
    bytes[loc.offset as usize + loc.length as usize / 2] ^= 0x40;
    std::fs::write(&pack_path, bytes).unwrap();

    // Mount 1: a stat and a 4 KiB read at the end of the 1 GiB file, then fusermount3 -u.
    let mp = repo.path().join("mnt");
    let m = Mount::start(&repo, &mp, &["--volume", "big"]);
    let dir = mp.join("by-volume/big/latest");
    let mut f = std::fs::File::open(dir.join("big")).unwrap();
    assert_eq!(f.metadata().unwrap().len(), GIB);
    f.seek(SeekFrom::Start(GIB - 4096)).unwrap();
    let mut tail = vec![0u8; 4096];
    f.read_exact(&mut tail).unwrap();
    drop(f);
    let mut expect = vec![0u8; 4096];
    let mut s = std::fs::File::open(src.join("big")).unwrap();
    s.seek(SeekFrom::Start(GIB - 4096)).unwrap();
    s.read_exact(&mut expect).unwrap();
    assert_eq!(tail, expect);
    let st = Command::new("fusermount3")
        .arg("-u")
        .arg(&mp)
        .status()
        .unwrap();
    assert!(st.success());
    let (report, _) = m.wait();
    // Read from packs: the root tree and the blobs under the last 4 KiB, nothing more.
    let packs = report["backend"]["pack_bytes"].as_u64().unwrap();
    assert!(packs > 4096, "{report}");
    assert!(
        packs < 1 << 20,
        "read {packs} bytes of packs for 4 KiB: {report}"
    );

    // Mount 2: the damaged file fails alone; a sparse file keeps its holes; SIGINT ends it.
    let m = Mount::start(&repo, &mp, &[]);
    let err = std::fs::read(dir.join("victim")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert_eq!(
        std::fs::read(dir.join("fine")).unwrap(),
        std::fs::read(src.join("fine")).unwrap()
    );
    let sparse = dir.join("sparse");
    let meta = std::fs::metadata(&sparse).unwrap();
    assert_eq!(meta.len(), 64 << 20);
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&meta) < 64,
        "a sparse file shows its holes as data"
    );
    assert_eq!(
        std::fs::read(&sparse).unwrap(),
        std::fs::read(src.join("sparse")).unwrap()
    );
    m.signal(nix::sys::signal::Signal::SIGINT);
    let (report, stderr) = m.wait();
    assert!(
        stderr.contains("/by-volume/big/") && stderr.contains("/victim: "),
        "the damaged file is not named: {stderr}"
    );
    assert!(report["io_errors"].as_u64().unwrap() >= 1, "{report}");
    assert_eq!(report["signal"], "SIGINT", "{report}");
}

#[test]
fn bad_mountpoints_and_missing_fuse_exit_2() {
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let missing = repo.path().join("nope");
    let out = repo.run(&["mount", missing.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        describe(&repo.cmd(), &out)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    let full = repo.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("x"), "x").unwrap();
    let out = repo.run(&["mount", full.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    let file = full.join("x");
    let out = repo.run(&["mount", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));

    // No /dev/fuse: a private mount namespace with an empty /dev.
    let empty = repo.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let c = repo.cmd();
    let mut argv: Vec<String> = vec![c.get_program().to_string_lossy().into_owned()];
    argv.extend(c.get_args().map(|a| a.to_string_lossy().into_owned()));
    argv.extend(["mount".into(), empty.to_str().unwrap().into()]);
    let script = "mount -t tmpfs none /dev && exec \"$@\"";
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .args(&argv)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("/dev/fuse") && err.contains("fuse3"), "{err}");
}
