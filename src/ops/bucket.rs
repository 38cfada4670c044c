//! `bucket audit` and `bucket policy`: what the bucket's own rules (versioning, Object Lock,
//! lifecycle) will do to a repository, in plain words, and the lifecycle configuration
//! that is safe for the repository's retention mode.
//!
//! Why: a deduplicating repository writes a chunk once and reuses it for as long as any
//! snapshot needs it, so a lifecycle `Expiration` rule that looks harmless ("delete after
//! 90 days, we keep 30") silently deletes data that yesterday's snapshot still points to.
//! The judgement is a pure function of the settings ([`audit`]), unit-tested below.

use serde::Serialize;

use crate::backend::{BucketSettings, LifecycleRule};
use crate::error::Result;
use crate::repo::retention::RetentionConfig;

/// Days after which an unfinished multipart upload is aborted by the rule volguard proposes.
pub const ABORT_MULTIPART_DAYS: i32 = 7;
/// Days a noncurrent version (left by a delete on a versioned bucket) is kept by the
/// proposed rule. volguard itself never overwrites objects, so these are only ever
/// leftovers of deletes.
pub const NONCURRENT_DAYS: i32 = 1;
/// Rule ids volguard installs start with this.
pub const RULE_ID_PREFIX: &str = "volguard-";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Ok,
    Warning,
    Danger,
}

/// One judgement: what the problem is and exactly what to change.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// The lifecycle rule id this is about, if any.
    pub rule: Option<String>,
    pub problem: String,
    pub change: Option<String>,
}

/// Whether a rule on `rule_prefix` reaches objects under the repository's `repo_prefix`
/// (both without a leading slash; the repository's objects are `repo_prefix/...`).
pub fn overlaps(rule_prefix: &str, repo_prefix: &str) -> bool {
    let repo = if repo_prefix.is_empty() {
        String::new()
    } else {
        format!("{}/", repo_prefix.trim_matches('/'))
    };
    repo.starts_with(rule_prefix) || rule_prefix.starts_with(&repo)
}

fn where_(repo_prefix: &str) -> String {
    if repo_prefix.is_empty() {
        "the whole bucket".into()
    } else {
        format!("prefix {repo_prefix:?}")
    }
}

/// Judges the bucket settings for a repository under `repo_prefix` in `mode`. `needed` is
/// how long kept snapshots need their data (the mode's retention, or what the operator
/// said with --retain-days), in seconds.
pub fn audit(
    s: &BucketSettings,
    repo_prefix: &str,
    mode: &RetentionConfig,
    needed: Option<u64>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let versioned = matches!(s.versioning.as_deref(), Some("Enabled" | "Suspended"));
    let at = where_(repo_prefix);
    let rules: Vec<&LifecycleRule> = s
        .lifecycle
        .iter()
        .filter(|r| r.enabled && overlaps(&r.prefix, repo_prefix))
        .collect();
    for r in &rules {
        let rid = if r.id.is_empty() {
            "(unnamed)".to_string()
        } else {
            r.id.clone()
        };
        if r.other_filter && (r.expiration_days.is_some() || r.expiration_date.is_some()) {
            out.push(Finding {
                severity: Severity::Warning,
                rule: Some(rid.clone()),
                problem: format!(
                    "lifecycle rule {rid} expires objects under {:?} selected by tags or \
                     sizes; volguard cannot tell which of its objects match, and any it \
                     matches is deleted while snapshots may still need it",
                    r.prefix
                ),
                change: Some(format!(
                    "narrow rule {rid} so that it cannot match objects under {at}"
                )),
            });
            continue;
        }
        if let Some(date) = &r.expiration_date {
            out.push(Finding {
                severity: Severity::Danger,
                rule: Some(rid.clone()),
                problem: format!(
                    "lifecycle rule {rid} deletes every object under {:?} on {date}, which \
                     covers the repository at {at}: every snapshot is lost then",
                    r.prefix
                ),
                change: Some(format!(
                    "remove the Expiration of rule {rid}, or give the rule a prefix that \
                     excludes {at}"
                )),
            });
        }
        if let Some(days) = r.expiration_days {
            let days_u = u64::try_from(days).unwrap_or(0);
            if let RetentionConfig::Epochs {
                retain_secs,
                epoch_secs,
            } = *mode
            {
                let epochs_prefix = format!(
                    "{}{}/",
                    repo_dir(repo_prefix),
                    crate::repo::epochs::EPOCHS_DIR
                );
                let need = needed.unwrap_or(retain_secs).max(retain_secs);
                let min = crate::repo::epochs::expiration_days(need, epoch_secs);
                if !r.prefix.starts_with(&epochs_prefix) {
                    out.push(Finding {
                        severity: Severity::Danger,
                        rule: Some(rid.clone()),
                        problem: format!(
                            "lifecycle rule {rid} expires objects under {:?}, which holds the \
                             repository's config and keys as well as its epochs: once they \
                             expire, every snapshot is lost",
                            r.prefix
                        ),
                        change: Some(format!(
                            "give rule {rid} the prefix {epochs_prefix:?} (and at least {min} \
                             days): `volguard bucket policy --apply` installs such a rule"
                        )),
                    });
                } else if days_u < min {
                    out.push(Finding {
                        severity: Severity::Danger,
                        rule: Some(rid.clone()),
                        problem: format!(
                            "lifecycle rule {rid} expires epochs after {days} days, too short: \
                             a snapshot taken at the end of an epoch needs the objects from the \
                             epoch's start for {} plus one epoch ({}), plus a day for backups \
                             running across an epoch's end: at least {min} days",
                            crate::fmt::human_duration(need),
                            crate::fmt::human_duration(epoch_secs)
                        ),
                        change: Some(format!(
                            "make rule {rid} expire after {min} days (`volguard bucket policy \
                             --apply` installs such a rule)"
                        )),
                    });
                } else {
                    out.push(Finding {
                        severity: Severity::Ok,
                        rule: Some(rid.clone()),
                        problem: format!(
                            "lifecycle rule {rid} expires epochs after {days} days, at least the \
                             {min} days this repository needs"
                        ),
                        change: None,
                    });
                }
                continue;
            }
            let days_s = days_u * 86_400;
            if let Some(need) = needed
                && days_s < need
            {
                out.push(Finding {
                    severity: Severity::Danger,
                    rule: Some(rid.clone()),
                    problem: format!(
                        "lifecycle rule {rid} expires objects after {days} days, shorter than \
                         the {} that snapshots must be kept: snapshots younger than that lose \
                         their data",
                        crate::fmt::human_duration(need)
                    ),
                    change: Some(format!(
                        "remove the Expiration of rule {rid} (let `volguard forget --prune` \
                         delete data), or make it at least {} days",
                        need.div_ceil(86_400)
                    )),
                });
            }
            out.push(Finding {
                severity: Severity::Danger,
                rule: Some(rid.clone()),
                problem: format!(
                    "lifecycle rule {rid} expires objects {days} days after they were written, \
                     under {:?}, and this repository ({} mode) is not cut into epochs: a \
                     deduplicated pack written {days} days ago is still referenced by \
                     yesterday's snapshot, and the rule deletes it anyway (silently: the \
                     damage shows at restore time)",
                    r.prefix,
                    mode.name()
                ),
                change: Some(format!(
                    "remove the Expiration from rule {rid} (or give it a prefix that excludes \
                     {at}) and delete old snapshots with `volguard forget --keep-... --prune`, \
                     or use a repository created with --retention-mode epochs"
                )),
            });
        }
    }
    if versioned {
        let cleans = rules.iter().any(|r| r.noncurrent_days.is_some());
        let volguard_purges = matches!(mode, RetentionConfig::ObjectLock { .. });
        if !cleans && !volguard_purges {
            out.push(Finding {
                severity: Severity::Warning,
                rule: None,
                problem: format!(
                    "versioning is {} but no lifecycle rule expires noncurrent versions under \
                     {at}: everything prune and forget delete stays stored (and billed) as a \
                     noncurrent version behind a delete marker, forever",
                    s.versioning.as_deref().unwrap_or("on")
                ),
                change: Some(format!(
                    "add NoncurrentVersionExpiration (e.g. {NONCURRENT_DAYS} day) for {at}: \
                     `volguard bucket policy --apply` installs it"
                )),
            });
        }
    }
    if let Some((dmode, days)) = &s.default_retention {
        out.push(Finding {
            severity: Severity::Warning,
            rule: None,
            problem: format!(
                "the bucket has a default Object Lock retention ({dmode}, {days} days): every \
                 object volguard writes gets it, including the small short-lived ones \
                 (pending/ announcements, prune's marks/) that volguard deletes minutes later; \
                 each of them stays as an undeletable version for {days} days, and prune \
                 cannot delete data for {days} days after it became garbage"
            ),
            change: Some(match mode {
                RetentionConfig::ObjectLock { .. } => "remove the bucket's default retention \
                     (PutObjectLockConfiguration with ObjectLockEnabled and no Rule): this \
                     repository already puts a retention on every object that needs one"
                    .into(),
                RetentionConfig::None | RetentionConfig::Epochs { .. } => {
                    "remove the bucket's default retention \
                     (PutObjectLockConfiguration with ObjectLockEnabled and no Rule) and use a \
                     repository created with --retention-mode object-lock, which locks data \
                     and extends it for as long as snapshots need it"
                        .into()
                }
            }),
        });
    }
    match (mode, s.object_lock) {
        (RetentionConfig::ObjectLock { .. }, Some(true)) => out.push(Finding {
            severity: Severity::Ok,
            rule: None,
            problem: "Object Lock is enabled on the bucket and used by this repository".into(),
            change: None,
        }),
        (RetentionConfig::ObjectLock { .. }, _) => out.push(Finding {
            severity: Severity::Danger,
            rule: None,
            problem: format!(
                "this repository is in object-lock mode, but the bucket has no Object Lock \
                 enabled ({}): nothing is protected",
                s.object_lock_error
                    .as_deref()
                    .unwrap_or("GetObjectLockConfiguration")
            ),
            change: Some("move the repository to a bucket created with Object Lock enabled".into()),
        }),
        (RetentionConfig::None, Some(true)) => out.push(Finding {
            severity: Severity::Warning,
            rule: None,
            problem: "the bucket has Object Lock enabled but this repository does not use it: \
                      its objects are not protected against deletion"
                .into(),
            change: Some(
                "to protect backups, create a repository with `volguard init \
                 --retention-mode object-lock --retain-days N`"
                    .into(),
            ),
        }),
        _ => {}
    }
    if s.lifecycle_error.is_none() && !rules.iter().any(|r| r.abort_multipart_days.is_some()) {
        out.push(Finding {
            severity: Severity::Warning,
            rule: None,
            problem: format!(
                "no lifecycle rule aborts incomplete multipart uploads under {at}: the parts \
                 of an upload cut off by a crash stay stored, invisible, and billed"
            ),
            change: Some(format!(
                "add AbortIncompleteMultipartUpload after {ABORT_MULTIPART_DAYS} days: \
                 `volguard bucket policy --apply` installs it"
            )),
        });
    }
    if let Some(e) = &s.lifecycle_error {
        out.push(Finding {
            severity: Severity::Warning,
            rule: None,
            problem: format!(
                "the lifecycle rules could not be read ({e}{}); rules that exist but cannot be \
                 read cannot be judged",
                s.server
                    .as_deref()
                    .map(|s| format!(", server {s}"))
                    .unwrap_or_default()
            ),
            change: None,
        });
    }
    if !out.iter().any(|f| f.severity == Severity::Danger) {
        out.push(Finding {
            severity: Severity::Ok,
            rule: None,
            problem: format!("no bucket rule can delete data that kept snapshots under {at} need"),
            change: None,
        });
    }
    out.sort_by_key(|f| std::cmp::Reverse(f.severity));
    out
}

/// The repository's key prefix as a directory ("vg/"), or "" for the bucket root.
fn repo_dir(repo_prefix: &str) -> String {
    let p = repo_prefix.trim_matches('/');
    if p.is_empty() {
        String::new()
    } else {
        format!("{p}/")
    }
}

/// The lifecycle rules volguard proposes for a repository: abort incomplete multipart
/// uploads, expire noncurrent versions when versioning is on, and in epochs mode expire
/// each epoch's objects after retention + epoch length + 1 day. No other Expiration: in
/// the `none` and `object-lock` modes data is deleted by `forget --prune` only.
pub fn policy(repo_prefix: &str, versioned: bool, mode: &RetentionConfig) -> Vec<LifecycleRule> {
    let mut rules = vec![LifecycleRule {
        id: format!("{RULE_ID_PREFIX}cleanup"),
        enabled: true,
        prefix: repo_dir(repo_prefix),
        expiration_days: None,
        expiration_date: None,
        noncurrent_days: versioned.then_some(NONCURRENT_DAYS),
        abort_multipart_days: Some(ABORT_MULTIPART_DAYS),
        other_filter: false,
    }];
    if let RetentionConfig::Epochs {
        retain_secs,
        epoch_secs,
    } = *mode
    {
        let days = crate::repo::epochs::expiration_days(retain_secs, epoch_secs);
        rules.push(LifecycleRule {
            id: format!("{RULE_ID_PREFIX}epochs"),
            enabled: true,
            prefix: format!(
                "{}{}/",
                repo_dir(repo_prefix),
                crate::repo::epochs::EPOCHS_DIR
            ),
            expiration_days: Some(i32::try_from(days).unwrap_or(i32::MAX)),
            ..Default::default()
        });
    }
    rules
}

/// The bucket's rules with volguard's replaced by `ours`. Refuses (naming it) when a
/// rule not made by volguard reaches the repository: --apply never removes someone
/// else's rule, and keeping a dangerous one would make the policy a lie.
pub fn merge(
    existing: &[LifecycleRule],
    ours: Vec<LifecycleRule>,
    repo_prefix: &str,
) -> Result<Vec<LifecycleRule>, String> {
    let mut out = Vec::new();
    for r in existing {
        if r.id.starts_with(RULE_ID_PREFIX) && ours.iter().any(|o| o.id == r.id) {
            continue;
        }
        if r.enabled
            && overlaps(&r.prefix, repo_prefix)
            && (r.expiration_days.is_some() || r.expiration_date.is_some())
        {
            return Err(format!(
                "the bucket's lifecycle rule {:?} (prefix {:?}) expires objects of this \
                 repository; --apply does not remove other people's rules: remove or narrow \
                 it first (see `volguard bucket audit`), then run --apply again",
                r.id, r.prefix
            ));
        }
        out.push(r.clone());
    }
    out.extend(ours);
    Ok(out)
}

/// The human form of one rule.
pub fn describe_rule(r: &LifecycleRule) -> String {
    let mut parts = Vec::new();
    if let Some(d) = r.expiration_days {
        parts.push(format!("Expiration after {d} days"));
    }
    if let Some(d) = r.noncurrent_days {
        parts.push(format!("NoncurrentVersionExpiration after {d} days"));
    }
    if let Some(d) = r.abort_multipart_days {
        parts.push(format!("AbortIncompleteMultipartUpload after {d} days"));
    }
    format!(
        "rule {} on prefix {:?}{}: {}",
        r.id,
        r.prefix,
        if r.enabled { "" } else { " (disabled)" },
        parts.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::LockMode;

    fn rule(prefix: &str, exp: Option<i32>, noncurrent: Option<i32>) -> LifecycleRule {
        LifecycleRule {
            id: "r1".into(),
            enabled: true,
            prefix: prefix.into(),
            expiration_days: exp,
            noncurrent_days: noncurrent,
            abort_multipart_days: Some(7),
            ..Default::default()
        }
    }

    fn dangers(f: &[Finding]) -> Vec<&str> {
        f.iter()
            .filter(|f| f.severity == Severity::Danger)
            .map(|f| f.problem.as_str())
            .collect()
    }

    #[test]
    fn prefixes_overlap_both_ways() {
        assert!(overlaps("", "repo"));
        assert!(overlaps("repo/", "repo"));
        assert!(overlaps("re", "repo"));
        assert!(overlaps("repo/packs/", "repo"));
        assert!(!overlaps("other/", "repo"));
        assert!(!overlaps("repo2/", "repo"));
        assert!(overlaps("anything", ""));
    }

    #[test]
    fn expiration_on_a_non_epoch_repository_is_dangerous_and_short_rules_say_so() {
        let s = BucketSettings {
            lifecycle: vec![rule("", Some(90), None)],
            ..Default::default()
        };
        let f = audit(&s, "vg", &RetentionConfig::None, None);
        let d = dangers(&f);
        assert_eq!(d.len(), 1, "{f:?}");
        assert!(d[0].contains("not cut into epochs"));
        let f = audit(&s, "vg", &RetentionConfig::None, Some(120 * 86_400));
        let d = dangers(&f);
        assert_eq!(d.len(), 2, "{f:?}");
        assert!(d.iter().any(|p| p.contains("shorter than")));
        // A rule on another prefix is none of our business.
        let s = BucketSettings {
            lifecycle: vec![rule("logs/", Some(1), None)],
            ..Default::default()
        };
        assert!(dangers(&audit(&s, "vg", &RetentionConfig::None, None)).is_empty());
    }

    #[test]
    fn versioning_without_noncurrent_expiration_and_default_retention_warn() {
        let s = BucketSettings {
            versioning: Some("Enabled".into()),
            default_retention: Some(("COMPLIANCE".into(), 30)),
            object_lock: Some(true),
            lifecycle: vec![rule("", None, None)],
            ..Default::default()
        };
        let f = audit(&s, "", &RetentionConfig::None, None);
        assert!(f.iter().any(|f| f.problem.contains("noncurrent versions")));
        assert!(f.iter().any(|f| f.problem.contains("default Object Lock")));
        assert!(dangers(&f).is_empty());
        let s = BucketSettings {
            lifecycle: vec![rule("", None, Some(1))],
            ..s
        };
        let f = audit(&s, "", &RetentionConfig::None, None);
        assert!(!f.iter().any(|f| f.problem.contains("noncurrent versions")));
    }

    #[test]
    fn object_lock_mode_on_a_bucket_without_lock_is_dangerous() {
        let s = BucketSettings {
            object_lock_error: Some("NotImplemented (HTTP 501)".into()),
            ..Default::default()
        };
        let m = RetentionConfig::ObjectLock {
            retain_secs: 86_400,
            lock_mode: LockMode::Compliance,
        };
        assert_eq!(dangers(&audit(&s, "", &m, None)).len(), 1);
    }

    #[test]
    fn epochs_rules_must_cover_only_epochs_and_be_long_enough() {
        let m = RetentionConfig::Epochs {
            retain_secs: 30 * 86_400,
            epoch_secs: 7 * 86_400,
        };
        let ours = policy("vg", false, &m);
        assert_eq!(ours[1].prefix, "vg/epochs/");
        assert_eq!(ours[1].expiration_days, Some(38));
        let ok = BucketSettings {
            lifecycle: ours.clone(),
            ..Default::default()
        };
        assert!(dangers(&audit(&ok, "vg", &m, None)).is_empty());
        let short = BucketSettings {
            lifecycle: vec![rule("vg/epochs/", Some(30), None)],
            ..Default::default()
        };
        let d = audit(&short, "vg", &m, None);
        assert!(dangers(&d)[0].contains("too short"), "{d:?}");
        let whole = BucketSettings {
            lifecycle: vec![rule("vg/", Some(400), None)],
            ..Default::default()
        };
        let d = audit(&whole, "vg", &m, None);
        assert!(dangers(&d)[0].contains("config and keys"), "{d:?}");
    }

    #[test]
    fn merge_keeps_foreign_rules_and_refuses_dangerous_ones() {
        let ours = policy("vg", true, &RetentionConfig::None);
        assert_eq!(ours[0].prefix, "vg/");
        let mut logs = rule("logs/", Some(1), None);
        logs.id = "logs".into();
        let merged = merge(&[logs.clone()], ours.clone(), "vg").unwrap();
        assert_eq!(merged.len(), 2);
        let again = merge(&merged, ours.clone(), "vg").unwrap();
        assert_eq!(
            again.len(),
            2,
            "volguard's own rule is replaced, not doubled"
        );
        assert!(merge(&[rule("", Some(30), None)], ours, "vg").is_err());
    }
}
