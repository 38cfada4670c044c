//! `forget`: the keep rules agree with the real restic binary on the same snapshot history,
//! forgetting really deletes exactly the forgotten snapshots while the rest still restore,
//! and bad policies are refused before anything is deleted.
//!
//! The cross-check needs Debian's `restic` package (installed by tests/env/setup.sh); the
//! test FAILS without it. restic buckets by local time, so it runs with `TZ=UTC`, which is
//! what volguard always uses.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::common::*;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

const HOST: &str = "forget-host";

fn parse_time(s: &str) -> OffsetDateTime {
    OffsetDateTime::parse(s, &Rfc3339).unwrap_or_else(|e| panic!("bad time {s:?}: {e}"))
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A TestRepo whose snapshots all record the same host.
fn repo_with_host() -> TestRepo {
    let mut repo = TestRepo::new();
    repo.env.push(("VOLGUARD_HOST".into(), HOST.into()));
    repo.run_ok(&["init"]);
    repo
}

// ---------------------------------------------------------------------------------------
// restic

/// A restic repository in a temp dir, always driven with `TZ=UTC` and no cache.
struct Restic {
    repo: std::path::PathBuf,
    cache: std::path::PathBuf,
}

impl Restic {
    fn init(dir: &Path) -> Restic {
        let r = Restic {
            repo: dir.join("restic-repo"),
            cache: dir.join("restic-cache"),
        };
        r.run(&["init"]);
        r
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut c = Command::new("restic");
        for var in [
            "RESTIC_PASSWORD_FILE",
            "RESTIC_PASSWORD_COMMAND",
            "RESTIC_REPOSITORY_FILE",
            "RESTIC_KEY_HINT",
        ] {
            c.env_remove(var);
        }
        c.env("RESTIC_REPOSITORY", &self.repo)
            .env("RESTIC_PASSWORD", "volguard-forget-test")
            .env("RESTIC_CACHE_DIR", &self.cache)
            .env("TZ", "UTC")
            .arg("--no-cache")
            .arg("--quiet")
            .args(args)
            .stdin(Stdio::null());
        let out = c.output().unwrap_or_else(|e| {
            panic!(
                "cannot run restic ({e}): the cross-check needs Debian's restic package. \
                 Run `bash tests/env/setup.sh` (or the whole suite with `bash tests/run.sh`)."
            )
        });
        if !out.status.success() {
            panic!("restic failed: {}", describe(&c, &out));
        }
        out
    }
}

/// Kept snapshots (time -> reasons) and removed times of the one group in a
/// `forget --dry-run --json` answer of restic.
fn restic_verdict(
    v: &Value,
) -> (
    BTreeMap<OffsetDateTime, Vec<String>>,
    BTreeSet<OffsetDateTime>,
) {
    let groups = v
        .as_array()
        .expect("restic forget --json prints an array of groups");
    assert_eq!(groups.len(), 1, "one host and path, one group: {v}");
    let g = &groups[0];
    let kept: BTreeMap<_, _> = g["reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .map(|r| {
            let matches = r["matches"]
                .as_array()
                .expect("matches")
                .iter()
                .map(|m| m.as_str().expect("match is a string").to_string())
                .collect();
            (
                parse_time(r["snapshot"]["time"].as_str().expect("time")),
                matches,
            )
        })
        .collect();
    let keep_times: BTreeSet<_> = g["keep"]
        .as_array()
        .expect("keep")
        .iter()
        .map(|s| parse_time(s["time"].as_str().expect("time")))
        .collect();
    assert_eq!(
        keep_times,
        kept.keys().copied().collect(),
        "restic: keep vs reasons"
    );
    let removed = match &g["remove"] {
        Value::Null => BTreeSet::new(),
        r => r
            .as_array()
            .expect("remove")
            .iter()
            .map(|s| parse_time(s["time"].as_str().expect("time")))
            .collect(),
    };
    (kept, removed)
}

/// The same for volguard's `forget --dry-run --json`.
fn volguard_verdict(
    v: &Value,
) -> (
    BTreeMap<OffsetDateTime, Vec<String>>,
    BTreeSet<OffsetDateTime>,
) {
    let groups = v["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 1, "one host and volume, one group: {v}");
    let g = &groups[0];
    assert_eq!(g["host"], HOST);
    let kept = g["keep"]
        .as_array()
        .expect("keep")
        .iter()
        .map(|s| {
            let reasons = s["reasons"]
                .as_array()
                .expect("reasons")
                .iter()
                .map(|m| m.as_str().expect("reason is a string").to_string())
                .collect();
            (parse_time(s["time"].as_str().expect("time")), reasons)
        })
        .collect();
    let removed = g["remove"]
        .as_array()
        .expect("remove")
        .iter()
        .map(|s| parse_time(s["time"].as_str().expect("time")))
        .collect();
    (kept, removed)
}

/// Deterministic xorshift, so the "irregular" history is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// About 170 snapshot times from 2021-11 to 2024-03 (more than two years), distinct to the
/// second: random instants, bursts minutes apart (several per hour and per day), months
/// without any snapshot, and the edges the rules care about: year and ISO-week-year
/// boundaries, a leap day, month ends, and the exact `--keep-within` cutoffs of the
/// policies below (relative to the newest, 2024-03-31 00:00:00).
fn history() -> Vec<(OffsetDateTime, Vec<&'static str>)> {
    let start = datetime!(2021-11-15 00:00 UTC);
    let newest = datetime!(2024-03-31 00:00 UTC);
    let mut times: BTreeSet<OffsetDateTime> = [
        datetime!(2021-12-31 23:59:59 UTC),
        datetime!(2022-01-01 00:00:00 UTC), // Saturday: ISO week 52 of 2021
        datetime!(2022-01-02 12:00:00 UTC),
        datetime!(2022-01-03 00:00:01 UTC), // Monday: ISO week 1 of 2022
        datetime!(2022-06-15 10:05:00 UTC),
        datetime!(2022-06-15 10:20:00 UTC),
        datetime!(2022-06-15 10:55:00 UTC),
        datetime!(2022-06-15 11:00:00 UTC),
        datetime!(2022-12-31 10:00:00 UTC),
        datetime!(2023-01-01 09:00:00 UTC), // Sunday: ISO week 52 of 2022
        datetime!(2023-01-02 08:00:00 UTC),
        datetime!(2023-01-27 20:00:00 UTC), // newest - 1y2m3d4h: not within
        datetime!(2023-01-27 20:00:01 UTC), // within
        datetime!(2024-02-29 12:00:00 UTC),
        datetime!(2024-03-01 00:00:00 UTC),
        datetime!(2024-03-02 00:00:00 UTC), // newest - 1m (31 Feb = 2 Mar): not within
        datetime!(2024-03-02 00:00:01 UTC), // within
        datetime!(2024-03-30 23:10:00 UTC),
        datetime!(2024-03-30 23:50:00 UTC),
        newest,
    ]
    .into();
    let span = (datetime!(2024-03-30 00:00 UTC) - start).whole_seconds() as u64;
    let mut rng = Rng(0x5eed_f0e7_1234_5678);
    while times.len() < 170 {
        let t = start + Duration::seconds(rng.below(span) as i64);
        // Months of 2023 from April to June stay empty.
        if t >= datetime!(2023-04-01 00:00 UTC) && t < datetime!(2023-07-01 00:00 UTC) {
            continue;
        }
        times.insert(t);
        // A burst: one to three more within the next hour or so.
        if rng.below(4) == 0 {
            let mut u = t;
            for _ in 0..=rng.below(3) {
                u += Duration::seconds(60 + rng.below(1500) as i64);
                times.insert(u);
            }
        }
    }
    times
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let tags = match (i % 11, i % 13, i % 17) {
                (0, _, _) => vec!["a", "b"],
                (5, _, _) => vec!["a"],
                (_, 3, _) => vec!["c"],
                (_, _, 8) => vec!["b", "c"],
                _ => vec![],
            };
            (t, tags)
        })
        .collect()
}

#[test]
fn keep_rules_agree_with_restic_on_the_same_history() {
    let repo = repo_with_host();
    let data = repo.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("file"), b"the same tiny data every time\n").unwrap();
    let data_s = data.to_str().unwrap();
    let restic = Restic::init(repo.path());
    let history = history();
    assert!(history.len() >= 150, "{} snapshots", history.len());
    let (first, last) = (history[0].0, history[history.len() - 1].0);
    assert!(last - first > Duration::days(2 * 365), "{first} .. {last}");

    for (t, tags) in &history {
        let restic_time = format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            t.year(),
            t.month() as u8,
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        );
        let mut args = vec!["backup", "--host", HOST, "--time", &restic_time];
        let mut vg_args = vec!["backup", "--path", data_s, "--name", "vol"];
        let when = rfc3339(*t);
        vg_args.extend(["--time", when.as_str()]);
        for tag in tags {
            args.extend(["--tag", tag]);
            vg_args.extend(["--tag", tag]);
        }
        args.push(data_s);
        restic.run(&args);
        repo.run_ok(&vg_args);
    }
    // Both hold exactly the intended history.
    let listed = repo.run_json(&["snapshots"]);
    let vg_times: BTreeSet<_> = listed["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| parse_time(s["time"].as_str().unwrap()))
        .collect();
    let want: BTreeSet<_> = history.iter().map(|(t, _)| *t).collect();
    assert_eq!(vg_times, want);
    let restic_list: Value =
        serde_json::from_slice(&restic.run(&["snapshots", "--json"]).stdout).unwrap();
    let restic_times: BTreeSet<_> = restic_list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| parse_time(s["time"].as_str().unwrap()))
        .collect();
    assert_eq!(restic_times, want, "restic --time recorded other times");

    let policies: &[&[&str]] = &[
        &["--keep-last", "7"],
        &["--keep-hourly", "20"],
        &["--keep-daily", "15", "--keep-weekly", "6"],
        &[
            "--keep-daily",
            "7",
            "--keep-weekly",
            "5",
            "--keep-monthly",
            "12",
            "--keep-yearly",
            "75",
        ],
        &["--keep-weekly", "300"],
        &["--keep-within", "1y2m3d4h"],
        &[
            "--keep-within",
            "1m",
            "--keep-monthly",
            "6",
            "--keep-yearly",
            "2",
        ],
        &["--keep-tag", "a,b", "--keep-tag", "c", "--keep-last", "2"],
        &[
            "--keep-last",
            "3",
            "--keep-hourly",
            "3",
            "--keep-daily",
            "3",
            "--keep-weekly",
            "3",
            "--keep-monthly",
            "3",
            "--keep-yearly",
            "3",
        ],
    ];
    let mut distinct_outcomes = BTreeSet::new();
    for rules in policies {
        let mut args = vec!["forget", "--dry-run", "--json"];
        args.extend_from_slice(rules);
        let restic_out: Value = serde_json::from_slice(&restic.run(&args).stdout)
            .unwrap_or_else(|e| panic!("restic {rules:?}: not JSON: {e}"));
        let (r_keep, r_remove) = restic_verdict(&restic_out);

        let mut vg_args = vec!["forget", "--dry-run"];
        vg_args.extend_from_slice(rules);
        let vg_out = repo.run_json(&vg_args);
        let (v_keep, v_remove) = volguard_verdict(&vg_out);

        assert!(
            !r_keep.is_empty() && !r_remove.is_empty(),
            "{rules:?} is a weak probe"
        );
        let kept_r: BTreeSet<_> = r_keep.keys().copied().collect();
        let kept_v: BTreeSet<_> = v_keep.keys().copied().collect();
        assert_eq!(
            kept_v,
            kept_r,
            "{rules:?}: kept by volguard only {:?}, by restic only {:?}",
            kept_v.difference(&kept_r).collect::<Vec<_>>(),
            kept_r.difference(&kept_v).collect::<Vec<_>>()
        );
        assert_eq!(v_remove, r_remove, "{rules:?}: removed sets differ");
        assert_eq!(
            v_keep, r_keep,
            "{rules:?}: same snapshots, different reasons"
        );
        assert_eq!(kept_v.len() + v_remove.len(), history.len());
        eprintln!(
            "agree with restic: {rules:?}: keep {}, remove {}",
            kept_v.len(),
            v_remove.len()
        );
        distinct_outcomes.insert(kept_v.into_iter().collect::<Vec<_>>());
    }
    assert_eq!(
        distinct_outcomes.len(),
        policies.len(),
        "every policy should keep a different set, or some probe is redundant"
    );
    // A dry run deleted nothing.
    assert_eq!(
        repo.run_json(&["snapshots"])["snapshots"]
            .as_array()
            .unwrap()
            .len(),
        history.len()
    );
}

// ---------------------------------------------------------------------------------------
// forgetting for real

/// Backs up `dir` as volume `name` at `t`, with content that tells the snapshots apart.
fn backup_at(repo: &TestRepo, dir: &Path, name: &str, t: OffsetDateTime, n: u64) -> String {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("version"), format!("{name} {n}\n")).unwrap();
    std::fs::write(dir.join("blob.bin"), pseudo_random(40_000, n)).unwrap();
    let when = rfc3339(t);
    let out = repo.run_json(&[
        "backup",
        "--path",
        dir.to_str().unwrap(),
        "--name",
        name,
        "--time",
        &when,
    ]);
    out["snapshots"][0]["snapshot_id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn snapshot_ids(repo: &TestRepo) -> BTreeSet<String> {
    repo.run_json(&["snapshots"])["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

fn ids_of(list: &Value) -> BTreeSet<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn forget_deletes_exactly_the_forgotten_snapshots_and_the_rest_still_restore() {
    let repo = repo_with_host();
    let app = repo.path().join("app");
    let other = repo.path().join("other");
    // 12 snapshots of `app` over three months, 3 of `other` on the same days.
    let mut app_snaps = BTreeMap::new(); // id -> (time, n)
    let base = datetime!(2024-01-10 08:00 UTC);
    for n in 0..12u64 {
        let t = base + Duration::days((n * 7 + n % 3) as i64) + Duration::hours(n as i64);
        let id = backup_at(&repo, &app, "app", t, n);
        app_snaps.insert(id, (t, n));
    }
    let mut other_ids = BTreeSet::new();
    for n in 0..3u64 {
        other_ids.insert(backup_at(
            &repo,
            &other,
            "other",
            base + Duration::days(n as i64),
            100 + n,
        ));
    }
    let all_before = snapshot_ids(&repo);
    assert_eq!(all_before.len(), 15);

    let rules = [
        "--keep-daily",
        "2",
        "--keep-monthly",
        "2",
        "--volume",
        "app",
    ];
    // Dry run first: a plan for app only, and nothing deleted.
    let mut args = vec!["forget", "--dry-run"];
    args.extend(rules);
    let dry = repo.run_json(&args);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["forgotten"], 0);
    let groups = dry["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "--volume app: {dry}");
    assert_eq!(
        (groups[0]["host"].as_str(), groups[0]["volume"].as_str()),
        (Some(HOST), Some("app"))
    );
    let keep = ids_of(&groups[0]["keep"]);
    let remove = ids_of(&groups[0]["remove"]);
    // Expected by hand: daily 2 = the two newest snapshots (each on its own day); monthly
    // 2 = the newest of March (the newest overall) and the newest of February.
    let newest_in = |month: u8| {
        app_snaps
            .iter()
            .filter(|(_, (t, _))| t.month() as u8 == month)
            .max_by_key(|(_, (t, _))| *t)
            .map(|(id, _)| id.clone())
            .unwrap()
    };
    let mut by_time: Vec<_> = app_snaps.iter().collect();
    by_time.sort_by_key(|(_, (t, _))| *t);
    let mut expected_keep: BTreeSet<String> = by_time
        .iter()
        .rev()
        .take(2)
        .map(|(id, _)| (*id).clone())
        .collect();
    expected_keep.insert(newest_in(3));
    expected_keep.insert(newest_in(2));
    assert_eq!(keep, expected_keep);
    assert_eq!(keep.len(), 3, "the newest of March is also a daily one");
    assert_eq!(remove.len(), 9);
    assert_eq!(&keep | &remove, app_snaps.keys().cloned().collect());
    assert_eq!(snapshot_ids(&repo), all_before, "a dry run deletes nothing");

    // The text form lists every snapshot of the group as kept or forgotten, with reasons.
    let mut text_args = vec!["forget", "--dry-run"];
    text_args.extend(rules);
    let text = stdout(&repo.run_ok(&text_args));
    for id in &keep {
        let line = text
            .lines()
            .find(|l| l.starts_with(&id[..8]))
            .unwrap_or_else(|| panic!("{id} missing:\n{text}"));
        assert!(
            line.contains(" keep ") && line.contains("snapshot"),
            "{line}"
        );
    }
    for id in &remove {
        let line = text
            .lines()
            .find(|l| l.starts_with(&id[..8]))
            .unwrap_or_else(|| panic!("{id} missing:\n{text}"));
        assert!(line.trim_end().ends_with("forget"), "{line}");
    }
    assert!(text.contains("would forget 9 snapshot(s)"), "{text}");

    // For real: the same plan, carried out.
    let mut args = vec!["forget"];
    args.extend(rules);
    let done = repo.run_json(&args);
    assert_eq!(done["dry_run"], false);
    assert_eq!(done["forgotten"], 9);
    assert_eq!(done["failed"].as_array().unwrap().len(), 0);
    assert_eq!(ids_of(&done["groups"][0]["keep"]), keep);
    assert_eq!(ids_of(&done["groups"][0]["remove"]), remove);
    let expected_after: BTreeSet<String> = &keep | &other_ids;
    assert_eq!(snapshot_ids(&repo), expected_after);
    let files: BTreeSet<String> = std::fs::read_dir(repo.repo.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, expected_after, "snapshot objects in the repository");

    // Every remaining snapshot restores, with the content it was taken with.
    for id in &keep {
        let (_, n) = app_snaps[id];
        let target = repo.path().join(format!("restore-{n}"));
        repo.run_ok(&[
            "restore",
            "app",
            "--snapshot",
            id,
            "--target",
            target.to_str().unwrap(),
        ]);
        assert_eq!(
            std::fs::read_to_string(target.join("version")).unwrap(),
            format!("app {n}\n")
        );
        assert_eq!(
            std::fs::read(target.join("blob.bin")).unwrap(),
            pseudo_random(40_000, n)
        );
    }
    for id in &other_ids {
        let target = repo.path().join(format!("restore-other-{}", &id[..8]));
        repo.run_ok(&[
            "restore",
            "other",
            "--snapshot",
            id,
            "--target",
            target.to_str().unwrap(),
        ]);
    }
    // A forgotten snapshot is gone for restore too.
    let gone = remove.iter().next().unwrap();
    let out = repo.run(&[
        "restore",
        "app",
        "--snapshot",
        gone,
        "--target",
        repo.path().join("gone").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no snapshot of \"app\" has an id starting with"),
        "{}",
        stderr(&out)
    );
    repo.run_ok(&["check", "--read-data"]);

    // The policy is stable: applying it again forgets nothing more.
    let again = repo.run_json(&args);
    assert_eq!(again["forgotten"], 0);
    assert_eq!(snapshot_ids(&repo), expected_after);
}

#[test]
fn policies_that_would_lose_everything_or_make_no_sense_are_refused_and_change_nothing() {
    let repo = repo_with_host();
    let dir = repo.path().join("src");
    for n in 0..4u64 {
        backup_at(
            &repo,
            &dir,
            "vol",
            datetime!(2024-05-01 10:00 UTC) + Duration::days(n as i64),
            n,
        );
    }
    let before = snapshot_ids(&repo);
    let refused = |args: &[&str], code: i32, says: &str| {
        let out = repo.run(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: {}{}",
            stdout(&out),
            stderr(&out)
        );
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
        assert_eq!(snapshot_ids(&repo), before, "{args:?} deleted something");
    };
    refused(&["forget"], 2, "at least one keep rule");
    refused(
        &["forget", "--keep-last", "0", "--keep-within", "0d"],
        2,
        "at least one keep rule",
    );
    refused(&["forget", "--keep-within", "1w"], 2, "write 7d");
    refused(&["forget", "--keep-within", "2x"], 2, "unknown unit 'x'");
    refused(&["forget", "--keep-daily", "-2"], 2, "unlimited");
    refused(&["forget", "--keep-daily", "many"], 2, "is not a count");
    // A tag nobody has would forget the whole volume: refused, like restic >= 0.17.
    refused(&["forget", "--keep-tag", "tpyo"], 1, "refusing to forget");
    refused(
        &["forget", "--keep-tag", "tpyo", "--dry-run"],
        1,
        "refusing to forget",
    );
    refused(
        &[
            "backup",
            "--path",
            dir.to_str().unwrap(),
            "--name",
            "vol",
            "--time",
            "yesterday",
        ],
        2,
        "not an RFC 3339 time",
    );
    // -1 / unlimited keeps all (restic's -1).
    let out = repo.run_json(&["forget", "--keep-daily", "-1"]);
    assert_eq!(out["forgotten"], 0);
    assert_eq!(out["groups"][0]["keep"].as_array().unwrap().len(), 4);
    let out = repo.run_json(&["forget", "--keep-daily", "unlimited", "--keep-last", "1"]);
    assert_eq!(out["policy"], "keep 1 last, all daily");
    // --host picks no group here, so nothing is judged.
    let out = repo.run_json(&["forget", "--keep-last", "1", "--host", "elsewhere"]);
    assert_eq!(out["groups"].as_array().unwrap().len(), 0);
    assert_eq!(snapshot_ids(&repo), before);
    // And a plain rule does forget.
    let out = repo.run_json(&["forget", "--keep-last", "1", "--host", HOST]);
    assert_eq!(out["forgotten"], 3);
    assert_eq!(snapshot_ids(&repo).len(), 1);
}
