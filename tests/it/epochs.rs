//! epochs retention mode against SeaweedFS and Garage, with a simulated clock: backups are taken with
//! `backup --time` every two days across several week-long epochs; the objects each backup
//! created are noted with that (simulated) time; then every object the lifecycle rule that
//! `bucket policy` prints would have expired by a given "now" is deleted, exactly as the
//! rule would (prefix and days from the printed rule). Every snapshot younger than the
//! retention must still restore byte for byte; some older data must really be gone (so the
//! test can fail). Also: a new epoch starts with a full upload, and `bucket audit` flags a
//! rule shorter than what the repository needs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::common::s3client::{client, rt};
use crate::common::{S3Server, TestRepo, pseudo_random};

const DAY: u64 = 86_400;
/// 2024-01-04T00:00Z, a Thursday: week-long epochs (counted from 1970-01-01, a Thursday)
/// start on Thursdays, so every seventh day starts a new epoch.
const T0: u64 = 1_704_326_400;
const RETAIN_DAYS: u64 = 14;
const EPOCH_DAYS: u64 = 7;

fn rfc3339(unix: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix as i64)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn keys(c: &aws_sdk_s3::Client, bucket: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut token = None;
    loop {
        let page = rt()
            .block_on(
                c.list_objects_v2()
                    .bucket(bucket)
                    .set_continuation_token(token.clone())
                    .send(),
            )
            .unwrap();
        out.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(String::from)),
        );
        if page.is_truncated() != Some(true) {
            break;
        }
        token = page.next_continuation_token().map(String::from);
    }
    out
}

fn write_day(src: &Path, day: u64) -> BTreeMap<String, Vec<u8>> {
    let files: BTreeMap<String, Vec<u8>> = [
        ("base".to_string(), pseudo_random(2 << 20, 1)),
        ("daily".to_string(), pseudo_random(256 << 10, 100 + day)),
        (
            "log".to_string(),
            (0..=day)
                .flat_map(|d| pseudo_random(4096, 1000 + d))
                .collect(),
        ),
    ]
    .into_iter()
    .collect();
    std::fs::create_dir_all(src).unwrap();
    for (n, b) in &files {
        std::fs::write(src.join(n), b).unwrap();
    }
    files
}

#[test]
fn epochs_lifecycle_rule_never_removes_data_a_snapshot_within_retention_needs() {
    lifecycle_by_age(S3Server::SeaweedFs);
}

/// Garage has no Object Lock and no versioning, but lifecycle rules: epochs mode is the
/// retention mode for it.
#[test]
fn epochs_lifecycle_rule_never_removes_needed_data_on_garage() {
    lifecycle_by_age(S3Server::Garage);
}

fn lifecycle_by_age(server: S3Server) {
    let (repo, s3, bucket) = TestRepo::s3(server, "vg");
    let c = client(&s3);
    repo.run_ok(&[
        "init",
        "--retention-mode",
        "epochs",
        "--retain-days",
        &RETAIN_DAYS.to_string(),
        "--epoch-days",
        &EPOCH_DAYS.to_string(),
    ]);
    let policy = repo.run_json(&["bucket", "policy"]);
    let rule = policy["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["expiration_days"].is_number())
        .unwrap_or_else(|| panic!("no Expiration rule printed: {policy}"))
        .clone();
    let prefix = rule["prefix"].as_str().unwrap().to_string();
    let days = rule["expiration_days"].as_u64().unwrap();
    assert_eq!(prefix, "vg/epochs/");
    assert_eq!(days, RETAIN_DAYS + EPOCH_DAYS + 1);

    // 20 backups, one every two days (simulated), across six epochs.
    let src = repo.path().join("src");
    let mut created: BTreeMap<String, u64> = BTreeMap::new();
    let mut snapshots: Vec<(String, u64, BTreeMap<String, Vec<u8>>)> = Vec::new();
    let mut first_of_epoch_added = Vec::new();
    let mut later_in_epoch_added = Vec::new();
    let mut last_epoch = None;
    for i in 0..20u64 {
        let t = T0 + i * 2 * DAY + 3600;
        let files = write_day(&src, i);
        let before = keys(&c, &bucket);
        let v = repo.run_json(&[
            "backup",
            "--path",
            src.to_str().unwrap(),
            "--name",
            "vol",
            "--time",
            &rfc3339(t),
        ]);
        for k in keys(&c, &bucket).difference(&before) {
            created.insert(k.clone(), t);
        }
        let added = v["snapshots"][0]["bytes_added"].as_u64().unwrap();
        let epoch = t / (EPOCH_DAYS * DAY);
        if last_epoch != Some(epoch) {
            first_of_epoch_added.push(added);
        } else {
            later_in_epoch_added.push(added);
        }
        last_epoch = Some(epoch);
        let id = v["snapshots"][0]["snapshot_id"]
            .as_str()
            .unwrap()
            .to_string();
        snapshots.push((id, t, files));
    }
    // A new epoch uploads everything again (the 2 MiB base file included); later backups
    // in the same epoch deduplicate against it.
    assert!(first_of_epoch_added.len() >= 5, "{first_of_epoch_added:?}");
    assert!(
        first_of_epoch_added.iter().all(|b| *b > 2 << 20),
        "a new epoch did not start with a full upload: {first_of_epoch_added:?}"
    );
    assert!(
        later_in_epoch_added.iter().all(|b| *b < 1 << 20),
        "a backup within an epoch did not deduplicate: {later_in_epoch_added:?}"
    );
    // Every data object lives under the epochs prefix; only config and keys are outside.
    for k in created.keys() {
        assert!(
            k.starts_with(&prefix) || k.starts_with("vg/keys/") || k == "vg/config",
            "{k} is outside the epochs"
        );
    }

    // "Now" is one day after the last backup: delete what the printed rule would have.
    let now = snapshots.last().unwrap().1 + DAY;
    let mut deleted = 0;
    for (k, t) in &created {
        if k.starts_with(&prefix) && t + days * DAY <= now {
            rt().block_on(c.delete_object().bucket(&bucket).key(k).send())
                .unwrap();
            deleted += 1;
        }
    }
    assert!(
        deleted > 0,
        "the rule expired nothing: the test proves nothing"
    );

    // Every snapshot younger than the retention is listed and restores byte for byte.
    let listed = repo.run_json(&["snapshots"]);
    let listed: BTreeSet<String> = listed["snapshots"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let mut kept = 0;
    for (id, t, files) in &snapshots {
        if t + RETAIN_DAYS * DAY <= now {
            continue;
        }
        kept += 1;
        assert!(
            listed
                .iter()
                .any(|l| id.starts_with(l.as_str()) || l.starts_with(id.as_str())),
            "snapshot {id} of {} is not listed any more: {listed:?}",
            rfc3339(*t)
        );
        let dst = repo.restore_to_new_dir("vol", id);
        for (name, bytes) in files {
            assert_eq!(
                &std::fs::read(dst.join(name)).unwrap(),
                bytes,
                "snapshot {id} of {}: {name} differs",
                rfc3339(*t)
            );
        }
    }
    assert!(kept >= 7, "only {kept} snapshots within the retention");
    // The oldest snapshots are gone with their epochs.
    assert!(
        listed.len() < snapshots.len(),
        "nothing was expired: {listed:?}"
    );

    // bucket audit: the printed policy is safe; a shorter rule is flagged.
    repo.run_ok(&["bucket", "policy", "--apply"]);
    let out = repo.run(&["bucket", "audit"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(0), "{text}");
    s3.remove_bucket(&bucket);
}
