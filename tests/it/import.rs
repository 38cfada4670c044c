//! `volguard import`: archives made by the tar recipe users run today (`docker run --rm -v
//! vol:/source busybox tar czf ...`, and the same piped through zstd) become snapshots that
//! restore exactly what GNU tar extracts from the archive; a folder of daily archives of
//! slowly changing data is stored as about one copy plus the changes; garbage and path
//! tricks are refused without writing anything outside the scratch directory.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const KIB: usize = 1024;

/// Makes `archive` (in `out_dir`) from `volume` with the tar recipe: gzip by busybox tar
/// in the container, or a plain tar stream compressed by zstd on the host.
fn tar_recipe(volume: &str, out_dir: &Path, archive: &str) -> PathBuf {
    let path = out_dir.join(archive);
    if archive.ends_with(".tar.gz") {
        docker(&[
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            &format!("{volume}:/source:ro"),
            "-v",
            &format!("{}:/backup", out_dir.display()),
            IMAGE,
            "tar",
            "czf",
            &format!("/backup/{archive}"),
            "-C",
            "/source",
            ".",
        ]);
    } else {
        let sh = format!(
            "docker run --rm --network none -v {volume}:/source:ro {IMAGE} tar cf - -C /source . \
             | zstd -q -o {}",
            path.display()
        );
        let st = Command::new("sh").args(["-c", &sh]).status().unwrap();
        assert!(st.success(), "{sh}");
    }
    assert!(path.is_file(), "{} was not made", path.display());
    path
}

/// What GNU tar extracts from `archive`: the oracle the restored snapshot must equal.
fn gnu_extract(archive: &Path, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let st = Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(dir)
        .status()
        .unwrap();
    assert!(st.success(), "tar -xf {}", archive.display());
    dir.to_path_buf()
}

fn imported(v: &serde_json::Value) -> Vec<serde_json::Value> {
    v["imported"]
        .as_array()
        .unwrap_or_else(|| panic!("no imported array: {v}"))
        .clone()
}

/// Whether an import's time is `want` (to the second, UTC).
fn at(r: &serde_json::Value, want: &str) -> bool {
    let t = r["time"].as_str().unwrap_or("");
    t.starts_with(want) && t.ends_with('Z')
}

#[test]
fn gz_and_zst_archives_from_the_tar_recipe_restore_as_gnu_tar_extracts_them() {
    require_docker();
    let mut dc = DockerCleanup::new();
    let vol = dc.volume(unique("imp"));
    docker(&["volume", "create", &vol]);
    sh_in_volume(
        &vol,
        "cd /data && mkdir -p app/logs empty && echo hello > app/a.txt && chmod 640 app/a.txt \
         && chown 999:999 app/a.txt && ln -s a.txt app/link && ln app/a.txt app/hard \
         && dd if=/dev/urandom of=app/blob bs=1k count=700 2>/dev/null \
         && chmod 4755 app/blob && echo x > 'app/logs/with space.log'",
    );
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let out = repo.path().join("archives");
    std::fs::create_dir_all(&out).unwrap();

    // gzip, with the time in offen's name format.
    let gz = tar_recipe(&vol, &out, "backup-2024-01-15T02-00-00.tar.gz");
    let v = repo.run_json(&["import", gz.to_str().unwrap(), "--volume", "appdata"]);
    let r = &imported(&v)[0];
    assert!(at(r, "2024-01-15T02:00:00"), "{v}");
    assert_eq!(r["time_from"], "name", "{v}");
    let id_gz = r["snapshot_id"].as_str().unwrap().to_string();
    let diffs = treecmp::compare_trees(
        &gnu_extract(&gz, &repo.path().join("gnu-gz")),
        &repo.restore_to_new_dir("appdata", &id_gz),
    );
    assert!(diffs.is_empty(), "{diffs:#?}");

    // zstd, no date in the name: the archive's mtime is the snapshot's time.
    sh_in_volume(&vol, "echo more >> /data/app/a.txt");
    let zst = tar_recipe(&vol, &out, "appdata.tar.zst");
    let st = Command::new("touch")
        .args(["-d", "2024-02-01T03:04:05Z"])
        .arg(&zst)
        .status()
        .unwrap();
    assert!(st.success());
    let v = repo.run_json(&["import", zst.to_str().unwrap(), "--volume", "appdata"]);
    let r = &imported(&v)[0];
    assert!(at(r, "2024-02-01T03:04:05"), "{v}");
    assert_eq!(r["time_from"], "mtime", "{v}");
    // The 700 KiB file is unchanged: only the edited file and trees are new.
    assert!(r["bytes_added"].as_u64().unwrap() < 64 * KIB as u64, "{v}");
    let id_zst = r["snapshot_id"].as_str().unwrap().to_string();
    let diffs = treecmp::compare_trees(
        &gnu_extract(&zst, &repo.path().join("gnu-zst")),
        &repo.restore_to_new_dir("appdata", &id_zst),
    );
    assert!(diffs.is_empty(), "{diffs:#?}");

    // The snapshot names the archive it came from.
    let snaps = repo.run_json(&["snapshots", "--volume", "appdata"]);
    let sources: Vec<&str> = snaps["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["source"].as_str().unwrap_or(""))
        .collect();
    assert!(sources.contains(&gz.to_str().unwrap()), "{snaps}");
    repo.run_ok(&["check", "--read-data"]);
}

#[test]
fn ten_daily_archives_are_stored_as_one_copy_plus_the_changes() {
    require_docker();
    let mut dc = DockerCleanup::new();
    let vol = dc.volume(unique("daily"));
    docker(&["volume", "create", &vol]);
    let data = volume_data_dir(&vol);
    const FILE: usize = 2 << 20;
    for i in 0..4u64 {
        std::fs::write(data.join(format!("db-{i}")), pseudo_random(FILE, i)).unwrap();
    }
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let out = repo.path().join("daily");
    std::fs::create_dir_all(&out).unwrap();
    // Each day: 64 KiB rewritten in place in one file, one new 32 KiB file.
    let changed_per_day = 96 * KIB;
    for day in 1..=10u64 {
        if day > 1 {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(data.join(format!("db-{}", day % 4)))
                .unwrap();
            f.write_all_at(&pseudo_random(64 * KIB, 100 + day), day * 128 * KIB as u64)
                .unwrap();
            std::fs::write(
                data.join(format!("new-{day}")),
                pseudo_random(32 * KIB, 200 + day),
            )
            .unwrap();
        }
        // Made out of order on purpose: --from-dir sorts by the date in the name.
        tar_recipe(
            &vol,
            &out,
            &format!("backup-2024-03-{day:02}T02-00-00.tar.gz"),
        );
    }
    let v = repo.run_json(&[
        "import",
        "--from-dir",
        out.to_str().unwrap(),
        "--volume",
        "daily",
    ]);
    let runs = imported(&v);
    assert_eq!(runs.len(), 10, "{v}");
    let times: Vec<&str> = runs.iter().map(|r| r["time"].as_str().unwrap()).collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "not imported oldest first");
    assert!(at(&runs[0], "2024-03-01T02:00:00"), "{v}");
    let added: Vec<u64> = runs
        .iter()
        .map(|r| r["bytes_added"].as_u64().unwrap())
        .collect();
    let total: u64 = added.iter().sum();
    let one_copy = 4 * FILE as u64;
    let changes = 9 * changed_per_day as u64;
    eprintln!(
        "10 daily archives of {one_copy} bytes: added {added:?}, total {total} \
         ({:.2} copies; one copy + changes = {})",
        total as f64 / one_copy as f64,
        one_copy + changes
    );
    // One copy (plus pack/tree overhead) on day one.
    assert!(added[0] >= one_copy && added[0] <= one_copy + 128 * KIB as u64);
    // Each later day adds its changes rounded out to whole chunks (8-128 KiB, boundaries
    // keyed per repository, so they vary between runs; the worst case for a 64 KiB
    // rewrite is about 320 KiB) plus its trees: at most six times the changed bytes.
    for (day, a) in added.iter().enumerate().skip(1) {
        assert!(
            *a <= 6 * changed_per_day as u64,
            "day {} added {a} bytes for {changed_per_day} changed",
            day + 1
        );
    }
    assert!(total <= one_copy + 4 * changes, "{total}");
    // The last day restores as the last archive extracts.
    let last = out.join("backup-2024-03-10T02-00-00.tar.gz");
    let id = runs[9]["snapshot_id"].as_str().unwrap();
    let diffs = treecmp::compare_trees(
        &gnu_extract(&last, &repo.path().join("gnu-last")),
        &repo.restore_to_new_dir("daily", id),
    );
    assert!(diffs.is_empty(), "{diffs:#?}");
}

#[test]
fn garbage_and_escaping_paths_are_refused_and_nothing_lands_outside_the_scratch_dir() {
    let repo = TestRepo::new();
    repo.run_ok(&["init"]);
    let dir = repo.path().join("bad");
    std::fs::create_dir_all(&dir).unwrap();

    // Not an archive at all.
    let junk = dir.join("junk.tar.gz");
    let mut bytes = vec![0x1f, 0x8b];
    bytes.extend(pseudo_random(4096, 7));
    std::fs::write(&junk, bytes).unwrap();
    let out = repo.run(&["import", junk.to_str().unwrap(), "--volume", "x"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("junk.tar.gz") && err.contains("not a readable tar archive"),
        "{err}"
    );

    // An archive whose entries climb out with `..` and an absolute path (made with
    // Python's tarfile, which writes such names verbatim).
    let evil = dir.join("evil.tar");
    let victim = dir.join("outside");
    let py = format!(
        "import tarfile, io\n\
         t = tarfile.open({evil:?}, 'w')\n\
         for name in ['ok.txt', '../outside', '{abs}/abs-victim']:\n\
         \x20   data = b'pwned'\n\
         \x20   ti = tarfile.TarInfo(name); ti.size = len(data)\n\
         \x20   t.addfile(ti, io.BytesIO(data))\n\
         t.close()\n",
        evil = evil.display().to_string(),
        abs = dir.display()
    );
    let st = Command::new("python3").args(["-c", &py]).status().unwrap();
    assert!(st.success());
    let scratch = repo.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let out = repo.run(&[
        "import",
        evil.to_str().unwrap(),
        "--volume",
        "x",
        "--scratch-dir",
        scratch.to_str().unwrap(),
    ]);
    assert!(!victim.exists(), "`..` entry written outside: {out:?}");
    assert!(
        !dir.join("abs-victim").exists(),
        "absolute entry written: {out:?}"
    );
    // Whatever the outcome, the scratch directory is cleaned up.
    assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0, "{out:?}");
    let snaps = repo.run_json(&["snapshots"]);
    if out.status.success() {
        // Accepted: then only the harmless entry is in the snapshot.
        let id = snaps["snapshots"][0]["id"].as_str().unwrap();
        let dst = repo.restore_to_new_dir("x", id);
        let names: Vec<_> = std::fs::read_dir(&dst)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        // Like GNU tar, a leading `/` is dropped, so the absolute entry stays inside.
        assert!(names.contains(&"ok.txt".to_string()), "{names:?}");
        assert!(!names.iter().any(|n| n.contains("outside")), "{names:?}");
    } else {
        assert_eq!(snaps["snapshots"].as_array().unwrap().len(), 0, "{snaps}");
    }
}
