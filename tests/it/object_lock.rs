//! object-lock retention mode against a real S3 server that enforces Object Lock
//! (SeaweedFS, set up by tests/env/setup.sh), and its refusal on servers that do not.
//!
//! What is shown, looking at the bucket directly with an S3 client of the test's own:
//! - every repository object version carries a COMPLIANCE retention (GetObjectRetention);
//! - a backup that references an older pack extends that pack's retention, and the server
//!   refuses to delete the pack after its first retain-until date has passed;
//! - prune does not delete packs still under retention, says how many and until when, and
//!   once the retention has passed deletes them with every version (no delete markers);
//! - Garage, a bucket without Object Lock, and a local directory are refused with one line.
//!
//! Retention here is seconds long (`init --retain-seconds`, a hidden test-only flag), so
//! the tests wait for real expiry instead of faking the server's clock.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use crate::common::s3client::{
    Version, client, purge, retention, rt, try_delete_version, versions,
};
use crate::common::{S3Env, S3Server, TestRepo, describe, pseudo_random, unique_bucket};
use aws_sdk_s3::Client;

/// Retention of the test repositories. Long enough for a backup or two to finish inside
/// it on a loaded machine, short enough to wait out.
const RETAIN_SECS: u64 = 20;

/// A new bucket with Object Lock enabled (and so versioning).
fn lock_bucket(s3: &S3Env) -> (Client, String) {
    let c = client(s3);
    let bucket = unique_bucket("vgol");
    rt().block_on(
        c.create_bucket()
            .bucket(&bucket)
            .object_lock_enabled_for_bucket(true)
            .send(),
    )
    .unwrap_or_else(|e| panic!("create lock bucket {bucket}: {e:?}"));
    (c, bucket)
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
}

/// A repository in a fresh Object Lock bucket on SeaweedFS, created with `init`.
fn lock_repo(prefix: &str) -> (TestRepo, Client, String) {
    let s3 = S3Env::load(S3Server::SeaweedFs);
    let (c, bucket) = lock_bucket(&s3);
    let mut repo = TestRepo::new();
    repo.repo = format!("s3://{bucket}/{prefix}").into();
    repo.env = s3.vars();
    let state = repo.path().join("state");
    repo.env
        .push(("VOLGUARD_STATE_DIR".into(), state.display().to_string()));
    let out = repo.run_ok(&[
        "init",
        "--retention-mode",
        "object-lock",
        "--retain-seconds",
        &RETAIN_SECS.to_string(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("object-lock, COMPLIANCE retention of 20 seconds"),
        "{stdout}"
    );
    (repo, c, bucket)
}

fn write_source(dir: &Path, files: &[(&str, usize, u64)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, len, seed) in files {
        std::fs::write(dir.join(name), pseudo_random(*len, *seed)).unwrap();
    }
}

fn backup(repo: &TestRepo, src: &Path) -> (String, SystemTime) {
    let before = SystemTime::now();
    let v = repo.run_json(&["backup", "--path", src.to_str().unwrap(), "--name", "vol"]);
    (
        v["snapshots"][0]["snapshot_id"]
            .as_str()
            .unwrap()
            .to_string(),
        before,
    )
}

/// Keys of the current (non-marker) versions under `dir/`, by key.
fn current(c: &Client, bucket: &str, dir: &str) -> BTreeMap<String, Version> {
    versions(c, bucket)
        .into_iter()
        .filter(|v| !v.marker && v.key.contains(&format!("/{dir}/")))
        .map(|v| (v.key.clone(), v))
        .collect()
}

#[test]
fn object_lock_every_object_retained_and_extended_by_newer_snapshots() {
    let (repo, c, bucket) = lock_repo("r");
    let src = repo.path().join("src");
    write_source(&src, &[("a", 3 << 20, 1), ("b", 1 << 20, 2)]);
    let (snap_a, t_a) = backup(&repo, &src);

    // Every repository object version carries COMPLIANCE retention of about RETAIN_SECS
    // (plus volguard's extension margin of a quarter); coordination objects carry none.
    let all = versions(&c, &bucket);
    let mut kinds = BTreeMap::new();
    for v in all.iter().filter(|v| !v.marker) {
        let kind = v.key.split('/').nth(1).unwrap_or("").to_string();
        let r = retention(&c, &bucket, &v.key, &v.id);
        match kind.as_str() {
            "config" | "keys" | "packs" | "index" | "snapshots" => {
                let (mode, until) =
                    r.unwrap_or_else(|| panic!("{} has no retention: {all:?}", v.key));
                assert_eq!(mode, "COMPLIANCE", "{}", v.key);
                assert!(
                    secs(until) >= secs(t_a) + RETAIN_SECS,
                    "{} retained only until {until:?}",
                    v.key
                );
                *kinds.entry(kind).or_insert(0) += 1;
            }
            // volguard's own proof that the bucket enforces the lock (short-lived).
            "lock-probes" => {}
            _ => assert!(r.is_none(), "{} should carry no retention", v.key),
        }
    }
    for k in ["config", "keys", "packs", "index", "snapshots"] {
        assert!(kinds.contains_key(k), "no {k} object seen: {kinds:?}");
    }
    let packs_a = current(&c, &bucket, "packs");
    let first_until: BTreeMap<String, SystemTime> = packs_a
        .values()
        .map(|v| {
            (
                v.key.clone(),
                retention(&c, &bucket, &v.key, &v.id).unwrap().1,
            )
        })
        .collect();

    // A newer snapshot of the same data references all of A's packs (data and trees) and
    // extends them to its own protect-until (its time + the retention).
    std::thread::sleep(Duration::from_secs(8));
    let (snap_b, t_b) = backup(&repo, &src);
    assert_eq!(
        current(&c, &bucket, "packs").len(),
        packs_a.len(),
        "B stored new packs: the test expects it to reuse A's"
    );
    let not_extended: Vec<String> = packs_a
        .values()
        .filter_map(|v| {
            let (_, until) = retention(&c, &bucket, &v.key, &v.id).unwrap();
            (until <= first_until[&v.key] || secs(until) < secs(t_b) + RETAIN_SECS).then(|| {
                format!(
                    "{} until {} (first {})",
                    v.key,
                    secs(until),
                    secs(first_until[&v.key])
                )
            })
        })
        .collect();
    assert!(
        not_extended.is_empty(),
        "packs referenced by snapshot {snap_b} (taken at {}) were not extended: {not_extended:?}",
        secs(t_b)
    );
    // forget cannot remove snapshot A yet: it says until when, and that is no failure.
    let out = repo.run(&["forget", "--keep-last", "1"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("kept for now") && text.contains("under Object Lock retention until"),
        "{text}"
    );
    assert_eq!(
        current(&c, &bucket, "snapshots").len(),
        2,
        "a snapshot vanished"
    );
    // Past the first retain-until date of A's packs, the server still refuses to delete
    // them: the extension is real, not only in volguard's cache.
    let latest_first = first_until.values().max().copied().unwrap();
    while SystemTime::now() <= latest_first + Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(500));
    }
    for v in packs_a.values() {
        assert_eq!(
            try_delete_version(&c, &bucket, &v.key, &v.id),
            Err("AccessDenied".to_string()),
            "pack {} could be deleted after its first retain-until date",
            v.key
        );
    }
    // And snapshot B (which needs them) restores; so does A.
    for id in [&snap_a, &snap_b] {
        let dst = repo.restore_to_new_dir("vol", id);
        assert_eq!(
            std::fs::read(dst.join("a")).unwrap(),
            pseudo_random(3 << 20, 1)
        );
    }
    let _ = t_a;

    // A stolen credential's plain DELETE (no version id) only hides a locked snapshot
    // behind a delete marker; `check` names it and says how to bring it back.
    let snap_key = current(&c, &bucket, "snapshots")
        .into_keys()
        .find(|k| k.ends_with(&snap_b))
        .unwrap();
    rt().block_on(c.delete_object().bucket(&bucket).key(&snap_key).send())
        .unwrap();
    let out = repo.run(&["check"]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let hidden = snap_key.trim_start_matches("r/");
    assert!(
        err.contains(&format!("{hidden} is hidden behind a delete marker")),
        "check did not report the hidden snapshot:\n{err}"
    );
    let marker = versions(&c, &bucket)
        .into_iter()
        .find(|v| v.marker && v.key == snap_key)
        .unwrap();
    try_delete_version(&c, &bucket, &marker.key, &marker.id).unwrap();
    let v = repo.run_json(&["snapshots"]);
    assert_eq!(v["snapshots"].as_array().unwrap().len(), 2, "{v}");
    purge(&c, &bucket);
}

#[test]
fn object_lock_backups_within_the_margin_send_no_retention_request() {
    // Retention 60 s: objects are written (and extended) to 75 s, a quarter beyond what
    // is needed, so a backup taken within 15 s of the last one finds every date in its
    // cache long enough and asks the bucket nothing.
    let s3 = S3Env::load(S3Server::SeaweedFs);
    let (c, bucket) = lock_bucket(&s3);
    let mut repo = TestRepo::new();
    repo.repo = format!("s3://{bucket}/m").into();
    repo.env = s3.vars();
    let state = repo.path().join("state");
    repo.env
        .push(("VOLGUARD_STATE_DIR".into(), state.display().to_string()));
    repo.run_ok(&[
        "init",
        "--retention-mode",
        "object-lock",
        "--retain-seconds",
        "60",
    ]);
    let src = repo.path().join("src");
    write_source(&src, &[("a", 2 << 20, 11)]);
    let args = ["backup", "--path", src.to_str().unwrap(), "--name", "vol"];
    repo.run_json(&args);
    let second = repo.run_json(&args);
    let r = &second["snapshots"][0]["retention"];
    assert!(r["objects"].as_u64().unwrap() >= 4, "{second}");
    assert_eq!(r["looked_up"], 0, "{second}");
    assert_eq!(r["extended"], 0, "{second}");
    // Without the cache (another host, a lost state directory) it asks, and still needs
    // no extension.
    std::fs::remove_dir_all(&state).unwrap();
    let third = repo.run_json(&args);
    let r = &third["snapshots"][0]["retention"];
    assert!(r["looked_up"].as_u64().unwrap() >= 4, "{third}");
    assert_eq!(r["extended"], 0, "{third}");
    purge(&c, &bucket);
}

#[test]
fn object_lock_prune_skips_locked_packs_then_deletes_every_version_after_expiry() {
    let (repo, c, bucket) = lock_repo("p");
    let src = repo.path().join("src");
    // Random data: 96 MiB become 6 packs of 16 MiB; the backup is killed once the first
    // pack is in the bucket, leaving packs that no snapshot references (an orphan, as a
    // crashed backup leaves them), all under retention.
    write_source(&src, &[("big", 96 << 20, 7)]);
    let mut cmd = repo.cmd();
    cmd.args(["backup", "--path", src.to_str().unwrap(), "--name", "vol"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let deadline = SystemTime::now() + Duration::from_secs(60);
    while current(&c, &bucket, "packs").is_empty() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "backup ended before a pack was seen"
        );
        assert!(SystemTime::now() < deadline, "no pack appeared within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        current(&c, &bucket, "snapshots").is_empty(),
        "the backup finished before it was killed; the test needs an orphan"
    );
    // Uploads whose body was already sent when the client died may still complete on the
    // server, and a listing may lag a moment: take the orphans once the listing is still.
    let mut orphans = current(&c, &bucket, "packs");
    for _ in 0..30 {
        std::thread::sleep(Duration::from_secs(1));
        let again = current(&c, &bucket, "packs");
        if again.keys().eq(orphans.keys()) {
            break;
        }
        orphans = again;
    }

    // First prune marks them; the second (grace over) must not delete them yet.
    repo.run_ok(&["prune", "--grace", "0s"]);
    let out = repo.run_ok(&["prune", "--grace", "0s"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("not deleted: under Object Lock retention until"),
        "prune did not say it skipped locked packs:\n{text}"
    );
    let v = repo.run_json(&["prune", "--grace", "0s"]);
    assert_eq!(
        v["packs_locked"].as_u64(),
        Some(orphans.len() as u64),
        "{v}"
    );
    assert_eq!(v["packs_deleted"].as_u64(), Some(0), "{v}");
    let (_, last) = (
        v["locked_until"][0].as_u64().unwrap(),
        v["locked_until"][1].as_u64().unwrap(),
    );
    // Nothing was deleted and no delete marker hides anything.
    let now_versions = versions(&c, &bucket);
    for k in orphans.keys() {
        assert!(
            now_versions.iter().any(|v| &v.key == k && !v.marker),
            "{k} vanished"
        );
    }
    assert!(
        now_versions.iter().all(|v| !v.marker),
        "a delete marker appeared: {now_versions:?}"
    );
    // Once the retention has passed, prune deletes them, every version of them.
    while secs(SystemTime::now()) <= last + 1 {
        std::thread::sleep(Duration::from_millis(500));
    }
    let v = repo.run_json(&["prune", "--grace", "0s"]);
    assert_eq!(
        v["packs_deleted"].as_u64(),
        Some(orphans.len() as u64),
        "{v}"
    );
    assert_eq!(v["packs_locked"].as_u64(), Some(0), "{v}");
    let after = versions(&c, &bucket);
    for k in orphans.keys() {
        assert!(
            !after.iter().any(|v| &v.key == k),
            "{k} left a version or delete marker behind: {after:?}"
        );
    }
    // The repository is whole and usable.
    let out = repo.run(&["check"]);
    assert!(out.status.success(), "{}", describe(&repo.cmd(), &out));
    let src2 = repo.path().join("src2");
    write_source(&src2, &[("x", 1 << 20, 9)]);
    let (id, _) = backup(&repo, &src2);
    repo.restore_to_new_dir("vol", &id);
    purge(&c, &bucket);
}

/// Runs `init --retention-mode object-lock` and returns (exit code, stderr).
fn init_lock(repo: &TestRepo) -> (i32, String) {
    let out = repo.run(&[
        "init",
        "--retention-mode",
        "object-lock",
        "--retain-days",
        "30",
    ]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn object_lock_refused_on_garage_which_does_not_enforce_it() {
    let (repo, s3, bucket) = TestRepo::s3(S3Server::Garage, "r");
    let (code, err) = init_lock(&repo);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("object-lock mode refused")
            && (err.contains("does not implement Object Lock") || err.contains("ignores")),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
    // Nothing was written: no repository exists there.
    assert!(s3.list_keys(&bucket).iter().all(|k| !k.ends_with("config")));
    s3.remove_bucket(&bucket);
}

#[test]
fn object_lock_refused_on_a_bucket_without_object_lock_and_on_a_directory() {
    let (repo, s3, bucket) = TestRepo::s3(S3Server::SeaweedFs, "r");
    let (code, err) = init_lock(&repo);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("does not have Object Lock enabled")
            || err.contains("has no Object Lock configuration"),
        "{err}"
    );
    assert!(s3.list_keys(&bucket).iter().all(|k| !k.ends_with("config")));
    s3.remove_bucket(&bucket);

    let local = TestRepo::new();
    let (code, err) = init_lock(&local);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("needs an S3 bucket"), "{err}");
}
