//! The S3 backend against every real S3 server tests/env/setup.sh runs (SeaweedFS,
//! Garage as one node, Garage as a 3-node cluster): the core round trip (init, backup,
//! unchanged and incremental backups, restore, check --read-data) and the two mistakes
//! users make first (wrong credentials, missing bucket), the SAME bodies for each server,
//! because S3 servers differ in what they accept and answer. Each test makes its own
//! bucket and removes it when it passes. Tests FAIL, never skip, when a server is not
//! reachable.

use crate::common::*;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Mixed data: two multi-MiB incompressible files, one compressible one, many small ones.
fn dataset(dir: &Path) {
    std::fs::create_dir_all(dir.join("db")).unwrap();
    std::fs::create_dir_all(dir.join("small/deeper")).unwrap();
    std::fs::write(dir.join("db/pages.db"), pseudo_random(6 << 20, 11)).unwrap();
    std::fs::write(dir.join("media.bin"), pseudo_random(3 << 20, 12)).unwrap();
    std::fs::write(dir.join("log.txt"), "a line of a log file\n".repeat(50_000)).unwrap();
    for i in 0..200u64 {
        let sub = if i % 3 == 0 { "small/deeper" } else { "small" };
        std::fs::write(
            dir.join(format!("{sub}/{i}.bin")),
            pseudo_random((i as usize * 37) % 5000, 100 + i),
        )
        .unwrap();
    }
    std::fs::write(dir.join("small/empty"), b"").unwrap();
}

/// stderr as text, for assertions on error messages.
fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// One test per server and body, so a failure names both.
macro_rules! s3_server_tests {
    ($module:ident, $server:expr) => {
        mod $module {
            use super::*;

            /// The whole backup/restore cycle must work on this server, not only on AWS.
            #[test]
            fn round_trip_backup_incremental_restore_and_check() {
                let _nodes = crate::common::garage3_nodes_up($server);
                round_trip($server);
            }

            /// A credentials mistake must be one clear line, whatever this server answers.
            #[test]
            fn wrong_credentials_fail_with_one_clear_line() {
                let _nodes = crate::common::garage3_nodes_up($server);
                wrong_credentials($server);
            }

            /// A missing bucket must be named, not reported as a missing repository.
            #[test]
            fn missing_bucket_is_named() {
                let _nodes = crate::common::garage3_nodes_up($server);
                missing_bucket($server);
            }
        }
    };
}

s3_server_tests!(seaweedfs, S3Server::SeaweedFs);
s3_server_tests!(garage, S3Server::Garage);
s3_server_tests!(garage_3node, S3Server::Garage3);

/// init, backup, unchanged and incremental backups, restore --verify, check --read-data,
/// and the object layout under the prefix.
fn round_trip(server: S3Server) {
    let (repo, s3, bucket) = TestRepo::s3(server, "hosts/test");
    let init = repo.run_ok(&["init"]);
    let said = String::from_utf8_lossy(&init.stdout);
    assert!(
        said.contains(&format!("s3://{bucket}/hosts/test")),
        "{said}"
    );

    let src = repo.path().join("src");
    dataset(&src);
    let p = src.to_str().unwrap();
    let first = repo.run_json(&["backup", "--path", p, "--name", "s3data"])["snapshots"][0].clone();
    assert!(first["bytes_read"].as_u64().unwrap() > 9 << 20, "{first}");
    assert!(first["bytes_added"].as_u64().unwrap() > 9 << 20, "{first}");

    let second =
        repo.run_json(&["backup", "--path", p, "--name", "s3data"])["snapshots"][0].clone();
    assert_eq!(second["bytes_read"], 0, "{second}");
    assert_eq!(second["files_new"], 0, "{second}");
    assert_eq!(second["files_changed"], 0, "{second}");
    assert_eq!(second["parent"], first["snapshot_id"]);

    // Change one page in the middle of the big file, in place, and one small file.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(src.join("db/pages.db"))
        .unwrap();
    f.write_all_at(&[0x5A; 8192], 3 << 20).unwrap();
    drop(f);
    std::fs::write(src.join("small/7.bin"), b"changed").unwrap();
    let third = repo.run_json(&["backup", "--path", p, "--name", "s3data"])["snapshots"][0].clone();
    assert_eq!(third["files_changed"], 2, "{third}");
    assert_eq!(third["parent"], second["snapshot_id"]);
    assert!(third["bytes_added"].as_u64().unwrap() < 1 << 20, "{third}");

    let dst = repo.path().join("dst");
    repo.run_ok(&[
        "restore",
        "s3data",
        "--snapshot",
        "latest",
        "--target",
        dst.to_str().unwrap(),
        "--verify",
    ]);
    let diffs = treecmp::compare_trees(&src, &dst);
    assert!(diffs.is_empty(), "{diffs:#?}");

    let check = repo.run_json(&["check", "--read-data"]);
    let text = check.to_string();
    let errors = check["errors"]
        .as_array()
        .map(|a| a.len() as u64)
        .or_else(|| check["errors"].as_u64())
        .unwrap_or_else(|| panic!("check --json has no errors field: {text}"));
    assert_eq!(errors, 0, "{text}");

    assert!(check["packs_read"].as_u64().unwrap() > 0, "{text}");

    // The layout matches the local store, under the prefix: packs fanned out by 2 hex digits.
    let keys = s3.list_keys(&bucket);
    assert!(keys.iter().any(|k| k == "hosts/test/config"), "{keys:?}");
    assert!(
        keys.iter().all(|k| k.starts_with("hosts/test/")),
        "{keys:?}"
    );
    for kind in ["keys", "index", "snapshots"] {
        assert!(
            keys.iter()
                .any(|k| k.starts_with(&format!("hosts/test/{kind}/"))),
            "no {kind}: {keys:?}"
        );
    }
    let packs: Vec<&String> = keys.iter().filter(|k| k.contains("/packs/")).collect();
    assert!(!packs.is_empty(), "{keys:?}");
    for k in packs {
        let parts: Vec<&str> = k.split('/').collect();
        assert_eq!(parts.len(), 5, "{k}");
        assert!(parts[4].starts_with(parts[3]) && parts[3].len() == 2, "{k}");
    }
    s3.remove_bucket(&bucket);
}

/// A wrong secret and an unknown key id each fail with exit 1 and one line naming the
/// S3 error code and the endpoint.
fn wrong_credentials(server: S3Server) {
    let (mut repo, s3, bucket) = TestRepo::s3(server, "creds");
    repo.run_ok(&["init"]);
    for (var, value) in [
        ("AWS_SECRET_ACCESS_KEY", "not-the-secret"),
        ("AWS_ACCESS_KEY_ID", "NOSUCHKEY"),
    ] {
        let good = repo.env.clone();
        repo.env.retain(|(k, _)| k != var);
        repo.env.push((var.into(), value.into()));
        let out = repo.run(&["snapshots"]);
        repo.env = good;
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "{var}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{var}: expected one line, got {err}");
        assert!(
            [
                "AccessDenied",
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch"
            ]
            .iter()
            .any(|c| err.contains(c)),
            "{var}: no S3 error code in {err}"
        );
        assert!(err.contains(s3.host_port()), "names no endpoint: {err}");
    }
    s3.remove_bucket(&bucket);
}

/// init and snapshots on a bucket that does not exist fail with one line naming it.
fn missing_bucket(server: S3Server) {
    let s3 = S3Env::load(server);
    let missing = unique_bucket("vg-missing");
    let mut repo = TestRepo::new();
    repo.repo = std::path::PathBuf::from(format!("s3://{missing}/x"));
    repo.env = s3.vars();
    for args in [&["init"][..], &["snapshots"][..]] {
        let out = repo.run(args);
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(&missing), "{args:?} names no bucket: {err}");
        assert!(err.contains("NoSuchBucket"), "{args:?}: {err}");
    }
}
