//! `bucket audit` and `bucket policy` against SeaweedFS's real lifecycle configuration:
//! an Expiration rule on a non-epoch repository and a rule shorter than the retention are
//! flagged (exit 1) with what to change; `bucket policy --apply` refuses to leave such a
//! rule in place, installs its own next to unrelated rules, and the audit is then clean.

use crate::common::s3client::{client, rt};
use crate::common::{S3Server, TestRepo};
use aws_sdk_s3::types::{
    BucketLifecycleConfiguration, BucketVersioningStatus, ExpirationStatus, LifecycleExpiration,
    LifecycleRule, LifecycleRuleFilter, VersioningConfiguration,
};

fn expire_rule(id: &str, prefix: &str, days: i32) -> LifecycleRule {
    LifecycleRule::builder()
        .id(id)
        .status(ExpirationStatus::Enabled)
        .filter(LifecycleRuleFilter::builder().prefix(prefix).build())
        .expiration(LifecycleExpiration::builder().days(days).build())
        .build()
        .unwrap()
}

fn set_rules(c: &aws_sdk_s3::Client, bucket: &str, rules: Vec<LifecycleRule>) {
    rt().block_on(
        c.put_bucket_lifecycle_configuration()
            .bucket(bucket)
            .lifecycle_configuration(
                BucketLifecycleConfiguration::builder()
                    .set_rules(Some(rules))
                    .build()
                    .unwrap(),
            )
            .send(),
    )
    .unwrap_or_else(|e| panic!("PutBucketLifecycleConfiguration: {e:?}"));
}

#[test]
fn bucket_audit_flags_expiration_on_non_epoch_repo_and_too_short_rules() {
    let (repo, s3, bucket) = TestRepo::s3(S3Server::SeaweedFs, "vg");
    let c = client(&s3);
    repo.run_ok(&["init"]);
    set_rules(&c, &bucket, vec![expire_rule("expire-7d", "", 7)]);

    let out = repo.run(&["bucket", "audit", "--retain-days", "30"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{text}");
    let dangers: Vec<&str> = text.lines().filter(|l| l.starts_with("DANGER")).collect();
    assert!(
        dangers
            .iter()
            .any(|l| l.contains("expire-7d") && l.contains("shorter than the 30 days")),
        "too-short rule not flagged:\n{text}"
    );
    assert!(
        dangers
            .iter()
            .any(|l| l.contains("expire-7d") && l.contains("not cut into epochs")),
        "Expiration on a non-epoch repository not flagged:\n{text}"
    );
    assert!(text.contains("change: remove the Expiration"), "{text}");
    let v = repo.run(&["--json", "bucket", "audit"]);
    let v: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
    assert_eq!(v["safe"], false, "{v}");
    assert_eq!(v["bucket"]["lifecycle"][0]["expiration_days"], 7, "{v}");

    // --apply never removes somebody else's rule, and will not install next to a
    // dangerous one.
    let out = repo.run(&["bucket", "policy", "--apply"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expire-7d"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // With the rule narrowed to another prefix, the policy goes in beside it and the audit
    // finds nothing dangerous (the unrelated rule is left alone).
    set_rules(&c, &bucket, vec![expire_rule("logs", "logs/", 1)]);
    repo.run_ok(&["bucket", "policy", "--apply"]);
    let rules = rt()
        .block_on(
            c.get_bucket_lifecycle_configuration()
                .bucket(&bucket)
                .send(),
        )
        .unwrap();
    let ids: Vec<&str> = rules.rules().iter().filter_map(|r| r.id()).collect();
    assert!(
        ids.contains(&"logs") && ids.contains(&"volguard-cleanup"),
        "{ids:?}"
    );
    let out = repo.run(&["bucket", "audit", "--retain-days", "30"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(!text.contains("DANGER"), "{text}");
    assert!(text.contains("no bucket rule can delete data"), "{text}");
    set_rules(&c, &bucket, vec![expire_rule("logs", "logs/", 1)]);
    s3.remove_bucket(&bucket);
}

#[test]
fn bucket_audit_warns_about_versioning_without_noncurrent_expiration() {
    let (repo, s3, bucket) = TestRepo::s3(S3Server::SeaweedFs, "vg");
    let c = client(&s3);
    rt().block_on(
        c.put_bucket_versioning()
            .bucket(&bucket)
            .versioning_configuration(
                VersioningConfiguration::builder()
                    .status(BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send(),
    )
    .unwrap();
    repo.run_ok(&["init"]);
    let out = repo.run(&["bucket", "audit"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("WARNING") && l.contains("noncurrent versions")),
        "{text}"
    );
    repo.run_ok(&["bucket", "policy", "--apply"]);
    let text = String::from_utf8_lossy(&repo.run_ok(&["bucket", "audit"]).stdout).to_string();
    assert!(!text.contains("noncurrent versions"), "{text}");
    crate::common::s3client::purge(&c, &bucket);
}
