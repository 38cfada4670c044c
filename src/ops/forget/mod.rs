//! `forget`: decide which snapshots a keep policy retains, and delete the others.
//!
//! Why this exists: snapshots pile up forever unless something removes them, and people
//! who already run restic know its `--keep-*` rules by heart. This module reproduces
//! restic's `ApplyPolicy` (internal/restic/snapshot_policy.go) rule for rule, so a
//! policy carried over from restic keeps exactly the snapshots it kept there:
//!
//! - snapshots are grouped by (host, volume) and every group is judged on its own;
//! - within a group they are walked newest first (ties: ascending snapshot id);
//! - each count rule (`last`, `hourly`, `daily`, `weekly` = ISO week, `monthly`, `yearly`)
//!   is a bucket with a counter and the last bucket value it kept: a snapshot whose value
//!   differs from that one is kept and uses up one count; a snapshot kept by several rules
//!   counts against each of them; `Unlimited` (restic's `-1`) never runs out;
//! - `within` keeps every snapshot strictly newer than the NEWEST snapshot of the group
//!   minus the duration (not "now"), with restic's calendar arithmetic (Go's `AddDate`,
//!   which normalises 31 March minus one month to 2 or 3 March); snapshots dated in the
//!   future (after the `now` passed in) do not count as the newest, as in restic;
//! - `tags` keeps a snapshot carrying ALL tags of ANY of the sets (`--keep-tag a,b
//!   --keep-tag c`); the empty tag `''` matches untagged snapshots; tags are not counted;
//! - an empty policy keeps everything (the command refuses to run with one).
//!
//! Deliberate differences from restic:
//! - Buckets use the UTC calendar. volguard stores snapshot times in UTC (RFC 3339);
//!   restic uses the local time zone of the machine running `forget`, so the two agree
//!   when restic runs with `TZ=UTC`, and a day boundary here is 00:00 UTC.
//! - restic 0.16 added "keep the oldest snapshot as well when a rule still has counts
//!   left"; that is not done here (restic 0.14, which the cross-check test runs, does not
//!   either). A group's history is therefore thinned exactly as the counts say.
//! - Durations are stricter than restic's parser: negative numbers, a unit given twice and
//!   numbers that overflow are errors (restic accepts the first two and panics on the last).
//!
//! Everything here is pure (the clock is passed in); [`run`] applies a plan to a repository.

mod run;

pub use run::{DeleteFailure, ForgetOptions, ForgetReport, execute, run};

use std::collections::BTreeMap;
use std::fmt;

use time::{Date, Duration, Month, OffsetDateTime, PrimitiveDateTime, UtcOffset};

use serde::{Deserialize, Deserializer};

use crate::ids::SnapshotId;

/// How many buckets of one kind a rule keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KeepCount {
    /// The rule is not in use (restic: 0).
    #[default]
    Off,
    /// Keep this many (at least 1).
    N(u32),
    /// Keep every bucket (restic: -1, `unlimited`).
    Unlimited,
}

impl KeepCount {
    /// Parses `N` (0 = off), `-1` or `unlimited`.
    pub fn parse(s: &str) -> std::result::Result<KeepCount, String> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("unlimited") || t == "-1" {
            return Ok(KeepCount::Unlimited);
        }
        match t.parse::<u32>() {
            Ok(0) => Ok(KeepCount::Off),
            Ok(n) => Ok(KeepCount::N(n)),
            Err(_) => Err(format!(
                "{s:?} is not a count: give a whole number of at least 0, or -1 / `unlimited` to keep all"
            )),
        }
    }

    fn is_on(self) -> bool {
        self != KeepCount::Off
    }
}

impl std::str::FromStr for KeepCount {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        KeepCount::parse(s)
    }
}

/// The config file writes a count as a number, -1 for all.
impl<'de> Deserialize<'de> for KeepCount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        KeepCount::parse(&n.to_string()).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for KeepCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeepCount::Off => f.write_str("0"),
            KeepCount::N(n) => write!(f, "{n}"),
            KeepCount::Unlimited => f.write_str("unlimited"),
        }
    }
}

/// A calendar duration in restic's format: `1y2m3d4h` (years, months, days, hours; any
/// subset, in any order).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeepDuration {
    pub years: u32,
    pub months: u32,
    pub days: u32,
    pub hours: u32,
}

/// Largest number accepted for one unit of a duration (ten thousand years in hours is
/// still below it; anything larger is a typo).
const MAX_DURATION_NUMBER: u32 = 100_000_000;

impl KeepDuration {
    pub fn parse(s: &str) -> std::result::Result<KeepDuration, String> {
        let text = s.trim();
        let hint =
            "use a number followed by y (years), m (months), d (days) or h (hours), e.g. 1y2m3d4h";
        if text.is_empty() {
            return Err(format!("empty duration: {hint}"));
        }
        let mut d = KeepDuration::default();
        let mut seen = [false; 4];
        let mut rest = text;
        while !rest.is_empty() {
            if rest.starts_with('-') {
                return Err(format!(
                    "duration {s:?} is negative: durations count back from the newest snapshot, {hint}"
                ));
            }
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if digits == 0 {
                return Err(format!(
                    "duration {s:?}: expected a number at {rest:?}; {hint}"
                ));
            }
            let number: u32 = rest[..digits]
                .parse()
                .ok()
                .filter(|n| *n <= MAX_DURATION_NUMBER)
                .ok_or_else(|| {
                    format!(
                        "duration {s:?}: {} is too large (at most {MAX_DURATION_NUMBER})",
                        &rest[..digits]
                    )
                })?;
            rest = &rest[digits..];
            let Some(unit) = rest.chars().next() else {
                return Err(format!(
                    "duration {s:?}: no unit after the number {number}; {hint}"
                ));
            };
            let (slot, field) = match unit {
                'y' => (0, &mut d.years),
                'm' => (1, &mut d.months),
                'd' => (2, &mut d.days),
                'h' => (3, &mut d.hours),
                'w' => {
                    return Err(format!(
                        "duration {s:?}: weeks are not a unit (as in restic); write 7d for one week"
                    ));
                }
                other => {
                    return Err(format!(
                        "duration {s:?}: unknown unit {other:?} after {number}; {hint}"
                    ));
                }
            };
            if seen[slot] {
                return Err(format!("duration {s:?}: the unit {unit:?} is given twice"));
            }
            seen[slot] = true;
            *field = number;
            rest = &rest[unit.len_utf8()..];
        }
        Ok(d)
    }

    pub fn is_zero(&self) -> bool {
        *self == KeepDuration::default()
    }

    /// `reference` minus this duration, computed like restic (Go's
    /// `t.AddDate(-y, -m, -d).Add(-h hours)` in UTC): years and months first, the day of
    /// the month then overflowing into the next month, then days, then hours. `None` when
    /// the result is before any representable date, i.e. the duration reaches back
    /// further than every snapshot.
    pub fn before(&self, reference: OffsetDateTime) -> Option<OffsetDateTime> {
        let t = reference.to_offset(UtcOffset::UTC);
        let month0 = i64::from(t.month() as u8) - 1 - i64::from(self.months);
        let year = i64::from(t.year()) - i64::from(self.years) + month0.div_euclid(12);
        let month = Month::try_from(month0.rem_euclid(12) as u8 + 1).ok()?;
        let first = Date::from_calendar_date(i32::try_from(year).ok()?, month, 1).ok()?;
        let julian =
            i64::from(first.to_julian_day()) + i64::from(t.day()) - 1 - i64::from(self.days);
        let date = Date::from_julian_day(i32::try_from(julian).ok()?).ok()?;
        PrimitiveDateTime::new(date, t.time())
            .assume_utc()
            .checked_sub(Duration::hours(i64::from(self.hours)))
    }
}

impl std::str::FromStr for KeepDuration {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        KeepDuration::parse(s)
    }
}

impl<'de> Deserialize<'de> for KeepDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        KeepDuration::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for KeepDuration {
    /// restic's spelling: the non-zero parts, in the order y, m, d, h.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, unit) in [
            (self.years, 'y'),
            (self.months, 'm'),
            (self.days, 'd'),
            (self.hours, 'h'),
        ] {
            if n != 0 {
                write!(f, "{n}{unit}")?;
            }
        }
        Ok(())
    }
}

/// The snapshots of `volume` and `host` (None = all) as forget candidates. A snapshot whose
/// time does not parse is left out with a warning; the flag says some were.
pub fn candidates(
    all: Vec<crate::repo::SnapshotEntry>,
    volume: Option<&str>,
    host: Option<&str>,
) -> (Vec<Candidate>, bool) {
    let mut out = Vec::new();
    let mut partial = false;
    for (id, s) in all {
        if volume.is_some_and(|v| s.volume != v) || host.is_some_and(|h| s.host != h) {
            continue;
        }
        match crate::fmt::parse_time(&s.time) {
            Ok(time) => out.push(Candidate {
                id,
                time,
                host: s.host,
                volume: s.volume,
                tags: s.tags,
            }),
            Err(e) => {
                tracing::warn!(
                    "snapshot {} of {}: its time {e}; that snapshot is left alone",
                    id.short(),
                    s.volume
                );
                partial = true;
            }
        }
    }
    (out, partial)
}

/// Splits one `--keep-tag` value into its tag set, like restic: comma separated, blanks
/// around each tag trimmed (`''` is the empty tag, which matches untagged snapshots).
fn parse_tag_set(s: &str) -> Vec<String> {
    s.split(',').map(|t| t.trim().to_string()).collect()
}

/// The keep rules as people write them, once for both front ends: `volguard forget
/// --keep-*` flattens these flags, and the agent's `[agent.retention]` table has the same
/// keys (`keep_tags` is `--keep-tag`). restic's meaning; a snapshot matching any rule is
/// kept. Counts take a number, or -1 / `unlimited` for all.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeepOptions {
    /// Keep the N newest snapshots.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub keep_last: Option<KeepCount>,
    /// Keep the newest snapshot of each of the N newest hours that have one (UTC).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub keep_hourly: Option<KeepCount>,
    /// Keep the newest snapshot of each of the N newest days that have one (UTC).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub keep_daily: Option<KeepCount>,
    /// Keep the newest snapshot of each of the N newest ISO weeks (Monday to Sunday, UTC).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub keep_weekly: Option<KeepCount>,
    /// Keep the newest snapshot of each of the N newest months that have one (UTC).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub keep_monthly: Option<KeepCount>,
    /// Keep the newest snapshot of each of the N newest years that have one (UTC).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub keep_yearly: Option<KeepCount>,
    /// Keep every snapshot newer than the group's newest snapshot minus this duration
    /// (years, months, days, hours: e.g. 1y2m3d4h).
    #[arg(long, value_name = "DURATION")]
    pub keep_within: Option<KeepDuration>,
    /// Keep snapshots carrying all of these comma-separated tags (repeatable: any set).
    #[arg(long = "keep-tag", value_name = "TAG[,TAG...]")]
    #[serde(default)]
    pub keep_tags: Vec<String>,
}

impl KeepOptions {
    /// The policy these rules make; empty when no rule is set.
    pub fn policy(&self) -> KeepPolicy {
        KeepPolicy {
            last: self.keep_last.unwrap_or_default(),
            hourly: self.keep_hourly.unwrap_or_default(),
            daily: self.keep_daily.unwrap_or_default(),
            weekly: self.keep_weekly.unwrap_or_default(),
            monthly: self.keep_monthly.unwrap_or_default(),
            yearly: self.keep_yearly.unwrap_or_default(),
            within: self.keep_within.unwrap_or_default(),
            tags: self.keep_tags.iter().map(|t| parse_tag_set(t)).collect(),
        }
    }
}

/// Which snapshots to keep. `Default` is the empty policy, which keeps everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    pub last: KeepCount,
    pub hourly: KeepCount,
    pub daily: KeepCount,
    pub weekly: KeepCount,
    pub monthly: KeepCount,
    pub yearly: KeepCount,
    /// Keep everything newer than the group's newest snapshot minus this; zero = off.
    pub within: KeepDuration,
    /// Keep snapshots that carry every tag of at least one of these sets.
    pub tags: Vec<Vec<String>>,
}

impl KeepPolicy {
    /// True when no rule is set: such a policy keeps every snapshot.
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
            && self.within.is_zero()
            && self.counts().iter().all(|(c, _)| !c.is_on())
    }

    fn counts(&self) -> [(KeepCount, Bucket); 6] {
        [
            (self.last, Bucket::Last),
            (self.hourly, Bucket::Hourly),
            (self.daily, Bucket::Daily),
            (self.weekly, Bucket::Weekly),
            (self.monthly, Bucket::Monthly),
            (self.yearly, Bucket::Yearly),
        ]
    }
}

impl fmt::Display for KeepPolicy {
    /// One line for people, e.g. `keep 7 daily, 4 weekly, all within 1y of the newest`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (count, bucket) in self.counts() {
            match count {
                KeepCount::Off => {}
                KeepCount::N(n) => parts.push(format!("{n} {}", bucket.noun())),
                KeepCount::Unlimited => parts.push(format!("all {}", bucket.noun())),
            }
        }
        if !self.within.is_zero() {
            parts.push(format!("all within {} of the newest", self.within));
        }
        for set in &self.tags {
            parts.push(format!("all tagged {}", set.join(",")));
        }
        if parts.is_empty() {
            f.write_str("keep everything (no rule)")
        } else {
            write!(f, "keep {}", parts.join(", "))
        }
    }
}

/// The calendar buckets of the count rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bucket {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Bucket {
    /// restic's bucket value: YYYYMMDDHH, YYYYMMDD, ISO YYYYWW, YYYYMM, YYYY, or the
    /// position in the newest-first list for `last` (so every snapshot differs).
    fn value(self, t: OffsetDateTime, position: usize) -> i64 {
        let t = t.to_offset(UtcOffset::UTC);
        let (y, m, d, h) = (
            i64::from(t.year()),
            i64::from(t.month() as u8),
            i64::from(t.day()),
            i64::from(t.hour()),
        );
        match self {
            Bucket::Last => position as i64,
            Bucket::Hourly => ((y * 100 + m) * 100 + d) * 100 + h,
            Bucket::Daily => (y * 100 + m) * 100 + d,
            Bucket::Weekly => {
                let (iso_year, week, _) = t.date().to_iso_week_date();
                i64::from(iso_year) * 100 + i64::from(week)
            }
            Bucket::Monthly => y * 100 + m,
            Bucket::Yearly => y,
        }
    }

    fn reason(self) -> Reason {
        match self {
            Bucket::Last => Reason::Last,
            Bucket::Hourly => Reason::Hourly,
            Bucket::Daily => Reason::Daily,
            Bucket::Weekly => Reason::Weekly,
            Bucket::Monthly => Reason::Monthly,
            Bucket::Yearly => Reason::Yearly,
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Bucket::Last => "last",
            Bucket::Hourly => "hourly",
            Bucket::Daily => "daily",
            Bucket::Weekly => "weekly",
            Bucket::Monthly => "monthly",
            Bucket::Yearly => "yearly",
        }
    }
}

/// Why a snapshot is kept. `Display` spells it as restic does, so output and tests can be
/// compared with `restic forget` directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
    Within(KeepDuration),
    Tags(Vec<String>),
    EmptyPolicy,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Last => f.write_str("last snapshot"),
            Reason::Hourly => f.write_str("hourly snapshot"),
            Reason::Daily => f.write_str("daily snapshot"),
            Reason::Weekly => f.write_str("weekly snapshot"),
            Reason::Monthly => f.write_str("monthly snapshot"),
            Reason::Yearly => f.write_str("yearly snapshot"),
            Reason::Within(d) => write!(f, "within {d}"),
            Reason::Tags(t) => write!(f, "has tags [{}]", t.join(", ")),
            Reason::EmptyPolicy => f.write_str("policy is empty"),
        }
    }
}

/// What the policy needs to know about one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: SnapshotId,
    pub time: OffsetDateTime,
    pub host: String,
    pub volume: String,
    pub tags: Vec<String>,
}

impl Candidate {
    /// restic's `HasTags`: every tag of `set` is present; the empty tag matches a
    /// snapshot without tags.
    fn has_tags(&self, set: &[String]) -> bool {
        for tag in set {
            if tag.is_empty() && self.tags.is_empty() {
                return true;
            }
            if !self.tags.contains(tag) {
                return false;
            }
        }
        true
    }
}

/// The verdict on one snapshot: kept when `reasons` is not empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub id: SnapshotId,
    pub time: OffsetDateTime,
    pub reasons: Vec<Reason>,
}

impl Decision {
    pub fn keep(&self) -> bool {
        !self.reasons.is_empty()
    }
}

/// The verdicts for one (host, volume) group, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPlan {
    pub host: String,
    pub volume: String,
    pub decisions: Vec<Decision>,
}

impl GroupPlan {
    pub fn kept(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.iter().filter(|d| d.keep())
    }

    pub fn removed(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.iter().filter(|d| !d.keep())
    }
}

/// What `forget` will do: every group's verdicts, groups ordered by host, then volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForgetPlan {
    pub groups: Vec<GroupPlan>,
}

impl ForgetPlan {
    pub fn to_remove(&self) -> impl Iterator<Item = &Decision> {
        self.groups.iter().flat_map(GroupPlan::removed)
    }

    /// Groups the plan would empty completely (only possible with tag-only policies).
    /// Like restic 0.17, the command refuses to run such a plan: a typo in a tag must not
    /// wipe a volume's whole history.
    pub fn emptied_groups(&self) -> Vec<&GroupPlan> {
        self.groups
            .iter()
            .filter(|g| !g.decisions.is_empty() && g.kept().next().is_none())
            .collect()
    }
}

/// Applies `policy` to every (host, volume) group of `snapshots`. `now` only decides which
/// snapshots are dated in the future (those never define a group's newest time).
pub fn plan(snapshots: &[Candidate], policy: &KeepPolicy, now: OffsetDateTime) -> ForgetPlan {
    let mut groups: BTreeMap<(&str, &str), Vec<&Candidate>> = BTreeMap::new();
    for s in snapshots {
        groups
            .entry((s.host.as_str(), s.volume.as_str()))
            .or_default()
            .push(s);
    }
    ForgetPlan {
        groups: groups
            .into_iter()
            .map(|((host, volume), list)| GroupPlan {
                host: host.to_string(),
                volume: volume.to_string(),
                decisions: apply_group(list, policy, now),
            })
            .collect(),
    }
}

/// restic's `ApplyPolicy` for one group; returns one decision per snapshot, newest first.
pub fn apply_group(
    mut list: Vec<&Candidate>,
    policy: &KeepPolicy,
    now: OffsetDateTime,
) -> Vec<Decision> {
    list.sort_by(|a, b| b.time.cmp(&a.time).then(a.id.cmp(&b.id)));
    if policy.is_empty() {
        return list
            .iter()
            .map(|s| Decision {
                id: s.id,
                time: s.time,
                reasons: vec![Reason::EmptyPolicy],
            })
            .collect();
    }
    // The newest snapshot not dated in the future; with none, restic's zero time
    // (year 1), before which nothing can lie.
    let newest = list.iter().map(|s| s.time).filter(|t| *t < now).max();
    let within_cutoff = if policy.within.is_zero() {
        None
    } else {
        // `None` inside: the duration reaches back past every representable date, so
        // every snapshot is within it.
        Some(newest.and_then(|n| policy.within.before(n)))
    };
    let mut buckets: Vec<(KeepCount, Bucket, Option<i64>)> = policy
        .counts()
        .into_iter()
        .map(|(count, bucket)| (count, bucket, None))
        .collect();
    let mut out = Vec::with_capacity(list.len());
    for (position, cur) in list.iter().enumerate() {
        let mut reasons = Vec::new();
        for set in &policy.tags {
            if cur.has_tags(set) {
                reasons.push(Reason::Tags(set.clone()));
            }
        }
        if let Some(cutoff) = within_cutoff {
            let inside = match (newest, cutoff) {
                (Some(_), Some(c)) => cur.time > c,
                // No snapshot in the past: restic's reference is year 1, so everything is
                // after it; or the cutoff is before any representable date.
                _ => true,
            };
            if inside {
                reasons.push(Reason::Within(policy.within));
            }
        }
        for (count, bucket, last) in buckets.iter_mut() {
            if !count.is_on() {
                continue;
            }
            let value = bucket.value(cur.time, position);
            if *last != Some(value) {
                *last = Some(value);
                if let KeepCount::N(n) = count {
                    *count = if *n > 1 {
                        KeepCount::N(*n - 1)
                    } else {
                        KeepCount::Off
                    };
                }
                reasons.push(bucket.reason());
            }
        }
        out.push(Decision {
            id: cur.id,
            time: cur.time,
            reasons,
        });
    }
    out
}
#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeSet, HashMap};
    use time::macros::datetime;

    // ---------------------------------------------------------------- helpers

    fn id(n: u64) -> SnapshotId {
        let mut b = [0u8; 32];
        b[..8].copy_from_slice(&n.to_be_bytes());
        SnapshotId(b)
    }

    fn snap(n: u64, time: OffsetDateTime, tags: &[&str]) -> Candidate {
        Candidate {
            id: id(n),
            time,
            host: "h".into(),
            volume: "v".into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
        }
    }

    /// The fixed clock: three years of hourly snapshots, 2021-01-01 00:00 to
    /// 2023-12-31 23:00 UTC, and "now" one hour after the last one.
    const START: OffsetDateTime = datetime!(2021-01-01 00:00 UTC);
    const END: OffsetDateTime = datetime!(2023-12-31 23:00 UTC);
    const NOW: OffsetDateTime = datetime!(2024-01-01 00:00 UTC);

    fn hourly_series() -> Vec<Candidate> {
        let mut out = Vec::new();
        let mut t = START;
        let mut n = 0;
        while t <= END {
            out.push(snap(n, t, &[]));
            n += 1;
            t += Duration::hours(1);
        }
        out
    }

    fn run(list: &[Candidate], p: &KeepPolicy) -> Vec<Decision> {
        let plan = plan(list, p, NOW);
        assert_eq!(plan.groups.len(), 1, "one host and volume, one group");
        plan.groups.into_iter().next().map(|g| g.decisions).unwrap()
    }

    fn kept_times(d: &[Decision]) -> BTreeSet<OffsetDateTime> {
        d.iter().filter(|d| d.keep()).map(|d| d.time).collect()
    }

    fn count(n: u32) -> KeepCount {
        KeepCount::N(n)
    }

    fn dur(s: &str) -> KeepDuration {
        KeepDuration::parse(s).unwrap()
    }

    // ------------------------------------------------------ the independent oracle
    //
    // Not restic's streaming walk: group the snapshots by calendar period first, then
    // take the newest snapshot of each of the N newest periods. For a newest-first walk
    // over monotone bucket values the two must agree. Periods are computed differently
    // from the engine too: tuples of calendar fields, and the week as the date of its
    // Monday (the ISO week runs Monday 00:00 to Sunday 23:59).

    #[derive(Clone, Copy)]
    enum Period {
        Hour,
        Day,
        Week,
        Month,
        Year,
    }

    fn period_key(p: Period, t: OffsetDateTime) -> (i32, u8, u8, u8) {
        let t = t.to_offset(UtcOffset::UTC);
        match p {
            Period::Hour => (t.year(), t.month() as u8, t.day(), t.hour()),
            Period::Day => (t.year(), t.month() as u8, t.day(), 0),
            Period::Week => {
                let monday =
                    t.date() - Duration::days(i64::from(t.weekday().number_days_from_monday()));
                (monday.year(), monday.month() as u8, monday.day(), 0)
            }
            Period::Month => (t.year(), t.month() as u8, 1, 0),
            Period::Year => (t.year(), 1, 1, 0),
        }
    }

    /// Newest snapshot of each of the `n` newest periods (`None` = all periods).
    fn oracle_periods(list: &[Candidate], p: Period, n: Option<usize>) -> BTreeSet<OffsetDateTime> {
        let mut newest: BTreeMap<(i32, u8, u8, u8), OffsetDateTime> = BTreeMap::new();
        for s in list {
            let e = newest.entry(period_key(p, s.time)).or_insert(s.time);
            if s.time > *e {
                *e = s.time;
            }
        }
        newest
            .values()
            .rev()
            .take(n.unwrap_or(usize::MAX))
            .copied()
            .collect()
    }

    fn oracle_last(list: &[Candidate], n: usize) -> BTreeSet<OffsetDateTime> {
        let mut t: Vec<_> = list.iter().map(|s| s.time).collect();
        t.sort();
        t.into_iter().rev().take(n).collect()
    }

    // ----------------------------------------------------- each rule alone, 3 years

    #[test]
    fn hourly_series_has_three_years_of_hours() {
        assert_eq!(hourly_series().len(), 1095 * 24);
    }

    #[test]
    fn keep_last_keeps_the_n_newest() {
        let list = hourly_series();
        let d = run(
            &list,
            &KeepPolicy {
                last: count(5),
                ..Default::default()
            },
        );
        let kept = kept_times(&d);
        assert_eq!(kept, oracle_last(&list, 5));
        assert_eq!(kept.first(), Some(&datetime!(2023-12-31 19:00 UTC)));
        assert!(
            d.iter()
                .filter(|d| d.keep())
                .all(|d| d.reasons == vec![Reason::Last])
        );
        assert_eq!(d.iter().filter(|d| !d.keep()).count(), list.len() - 5);
    }

    #[test]
    fn keep_hourly_keeps_one_per_hour_for_the_newest_hours() {
        let list = hourly_series();
        let d = run(
            &list,
            &KeepPolicy {
                hourly: count(30),
                ..Default::default()
            },
        );
        let kept = kept_times(&d);
        assert_eq!(kept.len(), 30);
        assert_eq!(kept, oracle_periods(&list, Period::Hour, Some(30)));
        // One snapshot per hour: the 30 newest hours are the 30 newest snapshots.
        assert_eq!(kept, oracle_last(&list, 30));
    }

    #[test]
    fn keep_daily_keeps_the_newest_snapshot_of_each_of_the_newest_days() {
        let list = hourly_series();
        let d = run(
            &list,
            &KeepPolicy {
                daily: count(10),
                ..Default::default()
            },
        );
        let kept = kept_times(&d);
        assert_eq!(kept, oracle_periods(&list, Period::Day, Some(10)));
        assert_eq!(kept.len(), 10, "ten distinct days");
        for t in &kept {
            assert_eq!(
                t.hour(),
                23,
                "the kept snapshot of a day is its newest, {t}"
            );
        }
        assert_eq!(kept.first(), Some(&datetime!(2023-12-22 23:00 UTC)));
        assert!(
            d.iter()
                .filter(|d| d.keep())
                .all(|d| d.reasons == vec![Reason::Daily])
        );
    }

    #[test]
    fn keep_weekly_uses_iso_weeks_starting_monday() {
        let list = hourly_series();
        let d = run(
            &list,
            &KeepPolicy {
                weekly: count(4),
                ..Default::default()
            },
        );
        let kept = kept_times(&d);
        assert_eq!(kept, oracle_periods(&list, Period::Week, Some(4)));
        // 2023-12-31 is a Sunday: the newest week is complete, each kept snapshot is
        // Sunday 23:00.
        let expected: BTreeSet<_> = [
            datetime!(2023-12-10 23:00 UTC),
            datetime!(2023-12-17 23:00 UTC),
            datetime!(2023-12-24 23:00 UTC),
            datetime!(2023-12-31 23:00 UTC),
        ]
        .into();
        assert_eq!(kept, expected);
    }

    #[test]
    fn keep_weekly_across_a_year_boundary_follows_iso_week_years() {
        // 2021-01-01..03 (Fri-Sun) belong to ISO week 53 of 2020, together with
        // 2020-12-28..31: one week, one kept snapshot.
        let times = [
            datetime!(2020-12-28 10:00 UTC),
            datetime!(2020-12-31 10:00 UTC),
            datetime!(2021-01-03 10:00 UTC),
            datetime!(2021-01-04 10:00 UTC),
        ];
        let list: Vec<_> = times
            .iter()
            .enumerate()
            .map(|(i, t)| snap(i as u64, *t, &[]))
            .collect();
        let d = run(
            &list,
            &KeepPolicy {
                weekly: KeepCount::Unlimited,
                ..Default::default()
            },
        );
        let expected: BTreeSet<_> = [times[2], times[3]].into();
        assert_eq!(kept_times(&d), expected);
        assert_eq!(kept_times(&d), oracle_periods(&list, Period::Week, None));
    }

    #[test]
    fn keep_monthly_and_yearly_keep_the_last_snapshot_of_each_period() {
        let list = hourly_series();
        let d = run(
            &list,
            &KeepPolicy {
                monthly: count(14),
                ..Default::default()
            },
        );
        let kept = kept_times(&d);
        assert_eq!(kept, oracle_periods(&list, Period::Month, Some(14)));
        assert_eq!(kept.first(), Some(&datetime!(2022-11-30 23:00 UTC)));
        assert!(kept.contains(&datetime!(2023-02-28 23:00 UTC)));

        let d = run(
            &list,
            &KeepPolicy {
                yearly: count(2),
                ..Default::default()
            },
        );
        let expected: BTreeSet<_> = [
            datetime!(2022-12-31 23:00 UTC),
            datetime!(2023-12-31 23:00 UTC),
        ]
        .into();
        assert_eq!(kept_times(&d), expected);
    }

    #[test]
    fn a_count_larger_than_the_history_keeps_one_per_period_and_no_more() {
        let list = hourly_series();
        let d = run(
            &list,
            &KeepPolicy {
                yearly: count(10),
                ..Default::default()
            },
        );
        // Three years, three snapshots; the oldest snapshot of the group is NOT kept in
        // addition (restic >= 0.16 would; see the module header).
        assert_eq!(kept_times(&d), oracle_periods(&list, Period::Year, None));
        assert_eq!(kept_times(&d).len(), 3);
        assert!(!kept_times(&d).contains(&START));
    }

    #[test]
    fn unlimited_counts_never_run_out() {
        let list = hourly_series();
        let d = run(
            &list,
            &KeepPolicy {
                daily: KeepCount::Unlimited,
                ..Default::default()
            },
        );
        let kept = kept_times(&d);
        assert_eq!(kept.len(), 1095, "one per day for three years");
        assert_eq!(kept, oracle_periods(&list, Period::Day, None));
        let d = run(
            &list,
            &KeepPolicy {
                last: KeepCount::Unlimited,
                ..Default::default()
            },
        );
        assert!(d.iter().all(Decision::keep));
        let d = run(
            &list,
            &KeepPolicy {
                monthly: KeepCount::Unlimited,
                weekly: count(2),
                ..Default::default()
            },
        );
        let mut expected = oracle_periods(&list, Period::Month, None);
        expected.extend(oracle_periods(&list, Period::Week, Some(2)));
        assert_eq!(kept_times(&d), expected);
        assert_eq!(
            expected.len(),
            36 + 1,
            "Dec 31 is both a month end and a week end"
        );
    }

    // ------------------------------------------------------------- combinations

    #[test]
    fn rules_are_ored_and_a_snapshot_counts_against_every_rule_that_keeps_it() {
        let list = hourly_series();
        let p = KeepPolicy {
            last: count(3),
            hourly: count(5),
            daily: count(7),
            weekly: count(5),
            monthly: count(12),
            yearly: count(75),
            ..Default::default()
        };
        let d = run(&list, &p);
        let mut expected = oracle_last(&list, 3);
        expected.extend(oracle_periods(&list, Period::Hour, Some(5)));
        expected.extend(oracle_periods(&list, Period::Day, Some(7)));
        expected.extend(oracle_periods(&list, Period::Week, Some(5)));
        expected.extend(oracle_periods(&list, Period::Month, Some(12)));
        expected.extend(oracle_periods(&list, Period::Year, Some(75)));
        assert_eq!(kept_times(&d), expected);
        // The newest snapshot is the newest of its hour, day, week, month and year: it
        // carries every reason and used up one count of each rule.
        assert_eq!(
            d[0].reasons,
            vec![
                Reason::Last,
                Reason::Hourly,
                Reason::Daily,
                Reason::Weekly,
                Reason::Monthly,
                Reason::Yearly
            ]
        );
        let with = |r: Reason| d.iter().filter(|d| d.reasons.contains(&r)).count();
        assert_eq!(with(Reason::Last), 3);
        assert_eq!(with(Reason::Hourly), 5);
        assert_eq!(with(Reason::Daily), 7);
        assert_eq!(with(Reason::Weekly), 5);
        assert_eq!(with(Reason::Monthly), 12);
        assert_eq!(with(Reason::Yearly), 3, "only three years exist");
        // Counted by hand: 5 hourly (the 3 last among them) + 6 more days (25-30 Dec) +
        // 4 more Sundays (3-24 Dec; 31 Dec is kept already) + 11 more month ends (Jan-Nov
        // 2023) + 2 more year ends (2021, 2022).
        assert_eq!(expected.len(), 5 + 6 + 4 + 11 + 2);
    }

    #[test]
    fn within_keeps_everything_newer_than_the_newest_minus_the_duration() {
        let list = hourly_series();
        let d = run(
            &list,
            &KeepPolicy {
                within: dur("1y2m3d4h"),
                ..Default::default()
            },
        );
        // 2023-12-31 23:00 minus 1y2m3d = 2022-10-28 23:00, minus 4h = 19:00; strictly
        // newer snapshots are kept.
        let cutoff = datetime!(2022-10-28 19:00 UTC);
        let expected: BTreeSet<_> = list
            .iter()
            .map(|s| s.time)
            .filter(|t| *t > cutoff)
            .collect();
        assert_eq!(kept_times(&d), expected);
        assert_eq!(
            kept_times(&d).first(),
            Some(&datetime!(2022-10-28 20:00 UTC))
        );
        assert!(
            d.iter()
                .filter(|d| d.keep())
                .all(|d| d.reasons == vec![Reason::Within(dur("1y2m3d4h"))])
        );
    }

    #[test]
    fn within_is_relative_to_the_newest_snapshot_not_to_now() {
        let list = hourly_series();
        // Ten years later, the newest snapshot is still the reference.
        let far_future = datetime!(2034-01-01 00:00 UTC);
        let plan = plan(
            &list,
            &KeepPolicy {
                within: dur("2d"),
                ..Default::default()
            },
            far_future,
        );
        let kept = plan.groups[0].kept().count();
        assert_eq!(
            kept, 48,
            "2023-12-29 23:00 excluded, the 48 hours after it kept"
        );
    }

    #[test]
    fn snapshots_dated_in_the_future_do_not_move_the_within_reference() {
        let mut list = hourly_series();
        list.push(snap(999_999, datetime!(2030-06-01 00:00 UTC), &[]));
        let d = run(
            &list,
            &KeepPolicy {
                within: dur("1d"),
                ..Default::default()
            },
        );
        // Reference 2023-12-31 23:00 (the future one is ignored), and the future snapshot
        // itself is newer than the cutoff, so it is kept as well: 24 + 1.
        assert_eq!(kept_times(&d).len(), 25);
        assert!(kept_times(&d).contains(&datetime!(2030-06-01 00:00 UTC)));
        assert!(!kept_times(&d).contains(&datetime!(2023-12-30 23:00 UTC)));
    }

    #[test]
    fn within_with_only_future_snapshots_keeps_them_all() {
        let list: Vec<_> = (0..5)
            .map(|i| snap(i, NOW + Duration::days(i as i64 + 1), &[]))
            .collect();
        let d = run(
            &list,
            &KeepPolicy {
                within: dur("1h"),
                ..Default::default()
            },
        );
        assert!(d.iter().all(Decision::keep));
    }

    #[test]
    fn within_uses_go_calendar_normalisation() {
        // 31 March minus one month is "31 February" = 2 March in a leap year (Go's
        // AddDate, which restic uses), so 2 March 00:00 itself is not within.
        let times = [
            datetime!(2024-02-29 12:00 UTC),
            datetime!(2024-03-02 00:00 UTC),
            datetime!(2024-03-02 00:00:01 UTC),
            datetime!(2024-03-31 00:00 UTC),
        ];
        let list: Vec<_> = times
            .iter()
            .enumerate()
            .map(|(i, t)| snap(i as u64, *t, &[]))
            .collect();
        let p = KeepPolicy {
            within: dur("1m"),
            ..Default::default()
        };
        let plan = plan(&list, &p, datetime!(2025-01-01 00:00 UTC));
        let kept: BTreeSet<_> = plan.groups[0].kept().map(|d| d.time).collect();
        assert_eq!(kept, [times[2], times[3]].into());
        assert_eq!(
            dur("1m").before(times[3]),
            Some(datetime!(2024-03-02 00:00 UTC))
        );
        assert_eq!(
            dur("1y").before(datetime!(2024-02-29 10:00 UTC)),
            Some(datetime!(2023-03-01 10:00 UTC))
        );
        assert_eq!(
            dur("2d5h").before(datetime!(2024-03-01 03:00 UTC)),
            Some(datetime!(2024-02-27 22:00 UTC))
        );
        assert_eq!(
            dur("14m").before(datetime!(2024-01-15 00:00 UTC)),
            Some(datetime!(2022-11-15 00:00 UTC))
        );
        assert_eq!(
            dur("99999999y").before(NOW),
            None,
            "before any date: keeps all"
        );
    }

    #[test]
    fn within_combined_with_counts_reports_both_reasons() {
        let list = hourly_series();
        let p = KeepPolicy {
            within: dur("2d"),
            daily: count(5),
            monthly: count(3),
            ..Default::default()
        };
        let d = run(&list, &p);
        let mut expected: BTreeSet<_> = list
            .iter()
            .map(|s| s.time)
            .filter(|t| *t > datetime!(2023-12-29 23:00 UTC))
            .collect();
        expected.extend(oracle_periods(&list, Period::Day, Some(5)));
        expected.extend(oracle_periods(&list, Period::Month, Some(3)));
        assert_eq!(kept_times(&d), expected);
        assert_eq!(
            d[0].reasons,
            vec![Reason::Within(dur("2d")), Reason::Daily, Reason::Monthly]
        );
    }

    #[test]
    fn keep_tag_keeps_snapshots_with_all_tags_of_any_set() {
        let mut list = hourly_series();
        for (i, s) in list.iter_mut().enumerate() {
            if i % 100 == 0 {
                s.tags = vec!["a".into(), "b".into()];
            } else if i % 100 == 50 {
                s.tags = vec!["a".into()];
            } else if i % 1000 == 7 {
                s.tags = vec!["c".into(), "x".into()];
            }
        }
        let p = KeepPolicy {
            tags: vec![parse_tag_set("a, b"), parse_tag_set("c")],
            ..Default::default()
        };
        let d = run(&list, &p);
        let expected: BTreeSet<_> = list
            .iter()
            .filter(|s| {
                let has = |t: &str| s.tags.iter().any(|x| x == t);
                (has("a") && has("b")) || has("c")
            })
            .map(|s| s.time)
            .collect();
        assert_eq!(kept_times(&d), expected);
        let per_set = |r: &Reason| d.iter().filter(|d| d.reasons.contains(r)).count();
        assert_eq!(per_set(&Reason::Tags(vec!["a".into(), "b".into()])), 263);
        assert_eq!(per_set(&Reason::Tags(vec!["c".into()])), 27);
        assert_eq!(expected.len(), 263 + 27);
        assert_eq!(
            Reason::Tags(vec!["a".into(), "b".into()]).to_string(),
            "has tags [a, b]"
        );
        // Tags are not counted: adding tags does not change what a count rule keeps.
        let with_last = run(
            &list,
            &KeepPolicy {
                last: count(2),
                ..p.clone()
            },
        );
        let mut e = expected.clone();
        e.extend(oracle_last(&list, 2));
        assert_eq!(kept_times(&with_last), e);
    }

    #[test]
    fn the_empty_tag_matches_untagged_snapshots_only() {
        let list = vec![
            snap(1, datetime!(2023-01-01 00:00 UTC), &[]),
            snap(2, datetime!(2023-01-02 00:00 UTC), &["a"]),
            snap(3, datetime!(2023-01-03 00:00 UTC), &[]),
        ];
        let d = run(
            &list,
            &KeepPolicy {
                tags: vec![parse_tag_set("")],
                ..Default::default()
            },
        );
        let expected: BTreeSet<_> = [list[0].time, list[2].time].into();
        assert_eq!(kept_times(&d), expected);
    }

    #[test]
    fn the_empty_policy_keeps_everything() {
        let list = hourly_series();
        let p = KeepPolicy::default();
        assert!(p.is_empty());
        let d = run(&list, &p);
        assert_eq!(d.len(), list.len());
        assert!(d.iter().all(|d| d.reasons == vec![Reason::EmptyPolicy]));
        // Zero counts and a zero duration are no rules either.
        let zero = KeepPolicy {
            last: KeepCount::parse("0").unwrap(),
            within: dur("0d"),
            ..p
        };
        assert!(zero.is_empty());
    }

    #[test]
    fn groups_are_per_host_and_volume_and_judged_separately() {
        let mut list = Vec::new();
        let mut n = 0;
        for host in ["h1", "h2"] {
            for volume in ["db", "www"] {
                for day in 0..10 {
                    list.push(Candidate {
                        id: id(n),
                        time: datetime!(2023-05-01 12:00 UTC) + Duration::days(day),
                        host: host.into(),
                        volume: volume.into(),
                        tags: vec![],
                    });
                    n += 1;
                }
            }
        }
        // Make h2/www newer than the rest: within is relative to each group's newest.
        for s in list
            .iter_mut()
            .filter(|s| s.host == "h2" && s.volume == "www")
        {
            s.time += Duration::days(100);
        }
        let p = KeepPolicy {
            last: count(2),
            within: dur("3d"),
            ..Default::default()
        };
        let plan = plan(&list, &p, NOW);
        let names: Vec<_> = plan
            .groups
            .iter()
            .map(|g| (g.host.as_str(), g.volume.as_str()))
            .collect();
        assert_eq!(
            names,
            [("h1", "db"), ("h1", "www"), ("h2", "db"), ("h2", "www")]
        );
        for g in &plan.groups {
            assert_eq!(g.decisions.len(), 10);
            assert_eq!(
                g.kept().count(),
                3,
                "{}/{}: the newest 3 days",
                g.host,
                g.volume
            );
        }
        assert_eq!(plan.to_remove().count(), 28);
    }

    #[test]
    fn equal_times_are_ordered_by_id_and_count_once_per_bucket() {
        let t = datetime!(2023-06-01 10:00 UTC);
        let list = vec![
            snap(2, t, &[]),
            snap(1, t, &[]),
            snap(3, t - Duration::days(1), &[]),
        ];
        let d = run(
            &list,
            &KeepPolicy {
                daily: count(5),
                ..Default::default()
            },
        );
        let kept: Vec<_> = d.iter().filter(|d| d.keep()).map(|d| d.id).collect();
        assert_eq!(
            kept,
            vec![id(1), id(3)],
            "the lower id of the tie is the newer"
        );
        let d = run(
            &list,
            &KeepPolicy {
                last: count(2),
                ..Default::default()
            },
        );
        let kept: Vec<_> = d.iter().filter(|d| d.keep()).map(|d| d.id).collect();
        assert_eq!(kept, vec![id(1), id(2)]);
    }

    #[test]
    fn a_tag_only_policy_that_matches_nothing_empties_the_group_and_is_flagged() {
        let list = hourly_series();
        let p = KeepPolicy {
            tags: vec![parse_tag_set("typo")],
            ..Default::default()
        };
        let plan = plan(&list, &p, NOW);
        assert_eq!(plan.emptied_groups().len(), 1);
        let p = KeepPolicy {
            last: count(1),
            ..p
        };
        assert!(super::plan(&list, &p, NOW).emptied_groups().is_empty());
    }

    // ------------------------------------ restic's documentation, worked examples
    // ("Removing snapshots according to a policy", doc/060_forget.rst)

    #[test]
    fn restic_docs_twelve_sundays_keep_daily_4() {
        // One backup every Sunday at 11:00 for 12 weeks, 2019-09-01 to 2019-11-17:
        // `forget --keep-daily 4` keeps the last four Sundays, removes the other eight.
        let list: Vec<_> = (0..12)
            .map(|w| {
                snap(
                    w,
                    datetime!(2019-09-01 11:00 UTC) + Duration::weeks(w as i64),
                    &[],
                )
            })
            .collect();
        let d = run(
            &list,
            &KeepPolicy {
                daily: count(4),
                ..Default::default()
            },
        );
        let expected: BTreeSet<_> = [
            datetime!(2019-10-27 11:00 UTC),
            datetime!(2019-11-03 11:00 UTC),
            datetime!(2019-11-10 11:00 UTC),
            datetime!(2019-11-17 11:00 UTC),
        ]
        .into();
        assert_eq!(kept_times(&d), expected);
        assert_eq!(d.iter().filter(|d| !d.keep()).count(), 8);
        assert!(
            d.iter()
                .filter(|d| d.keep())
                .all(|d| d.reasons.len() == 1 && d.reasons[0].to_string() == "daily snapshot")
        );
    }

    #[test]
    fn restic_docs_hundred_years_of_daily_backups() {
        // "suppose you make one backup every day for 100 years. Then forget --keep-daily 7
        // --keep-weekly 5 --keep-monthly 12 --keep-yearly 75 would keep the most recent 7
        // daily snapshots and 4 last-day-of-the-week ones (since the 7 dailies already
        // include 1 weekly). Additionally, 12 or 11 last-day-of-the-month snapshots will
        // be kept (depending on whether one of them ends up being the same as a daily or
        // weekly). And finally 75 or 74 last-day-of-the-year snapshots are kept".
        let first = datetime!(1924-01-01 06:00 UTC);
        let last = datetime!(2023-12-31 06:00 UTC);
        let days = (last - first).whole_days();
        let list: Vec<_> = (0..=days)
            .map(|i| snap(i as u64, first + Duration::days(i), &[]))
            .collect();
        let p = KeepPolicy {
            daily: count(7),
            weekly: count(5),
            monthly: count(12),
            yearly: count(75),
            ..Default::default()
        };
        let d = run(&list, &p);
        let reasons: HashMap<OffsetDateTime, &Vec<Reason>> = d
            .iter()
            .filter(|d| d.keep())
            .map(|d| (d.time, &d.reasons))
            .collect();
        let only = |r: &Reason, not: &[Reason]| {
            reasons
                .values()
                .filter(|rs| rs.contains(r) && !not.iter().any(|n| rs.contains(n)))
                .count()
        };
        assert_eq!(only(&Reason::Daily, &[]), 7);
        assert_eq!(only(&Reason::Weekly, &[Reason::Daily]), 4);
        let monthly_extra = only(&Reason::Monthly, &[Reason::Daily, Reason::Weekly]);
        assert!(
            monthly_extra == 12 || monthly_extra == 11,
            "{monthly_extra}"
        );
        let yearly_extra = only(
            &Reason::Yearly,
            &[Reason::Daily, Reason::Weekly, Reason::Monthly],
        );
        assert!(yearly_extra == 75 || yearly_extra == 74, "{yearly_extra}");
        // And exactly the union of the independent per-period picks.
        let mut expected = oracle_periods(&list, Period::Day, Some(7));
        expected.extend(oracle_periods(&list, Period::Week, Some(5)));
        expected.extend(oracle_periods(&list, Period::Month, Some(12)));
        expected.extend(oracle_periods(&list, Period::Year, Some(75)));
        assert_eq!(kept_times(&d), expected);
        // 31 Dec 2023 is a Sunday and a month and year end: 7 + 4 + 11 + 74.
        assert_eq!(expected.len(), 7 + 4 + 11 + 74);
    }

    // ------------------------------------------------------ parsing and display

    #[test]
    fn durations_parse_like_restic() {
        assert_eq!(
            dur("1y2m3d4h"),
            KeepDuration {
                years: 1,
                months: 2,
                days: 3,
                hours: 4
            }
        );
        assert_eq!(
            dur("4h3d"),
            KeepDuration {
                days: 3,
                hours: 4,
                ..Default::default()
            }
        );
        assert_eq!(
            dur(" 2y "),
            KeepDuration {
                years: 2,
                ..Default::default()
            }
        );
        assert_eq!(dur("7d").to_string(), "7d");
        assert_eq!(dur("3d1y").to_string(), "1y3d");
        assert_eq!(dur("0y5h").to_string(), "5h");
        assert!(dur("0d").is_zero());
    }

    #[test]
    fn bad_durations_are_clear_errors() {
        for (input, says) in [
            ("", "empty duration"),
            ("   ", "empty duration"),
            ("5", "no unit after the number 5"),
            ("d", "expected a number"),
            ("1w", "write 7d"),
            ("1D", "unknown unit 'D'"),
            ("1x", "unknown unit 'x'"),
            ("-1d", "negative"),
            ("1d-2h", "negative"),
            ("1d2d", "given twice"),
            ("99999999999y", "too large"),
            ("1.5d", "unknown unit '.'"),
            ("1 d", "unknown unit ' '"),
            ("١d", "expected a number"),
        ] {
            let e = KeepDuration::parse(input).expect_err(input);
            assert!(e.contains(says), "{input:?}: {e}");
            assert!(
                e.contains(&format!("{input:?}")) || input.trim().is_empty(),
                "{e}"
            );
        }
        assert_eq!(dur("1d "), dur("1d"), "blanks around are trimmed");
    }

    #[test]
    fn counts_parse_numbers_minus_one_and_unlimited() {
        assert_eq!(KeepCount::parse("0"), Ok(KeepCount::Off));
        assert_eq!(KeepCount::parse("7"), Ok(KeepCount::N(7)));
        assert_eq!(KeepCount::parse("-1"), Ok(KeepCount::Unlimited));
        assert_eq!(KeepCount::parse("unlimited"), Ok(KeepCount::Unlimited));
        for bad in ["-2", "x", "", "1.5", "99999999999"] {
            let e = KeepCount::parse(bad).unwrap_err();
            assert!(e.contains("unlimited"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn policies_and_reasons_read_like_restic() {
        let p = KeepPolicy {
            daily: count(7),
            yearly: KeepCount::Unlimited,
            within: dur("1y"),
            tags: vec![parse_tag_set("a,b")],
            ..Default::default()
        };
        assert_eq!(
            p.to_string(),
            "keep 7 daily, all yearly, all within 1y of the newest, all tagged a,b"
        );
        assert_eq!(Reason::Within(dur("2m4h")).to_string(), "within 2m4h");
        assert_eq!(Reason::Last.to_string(), "last snapshot");
        assert_eq!(parse_tag_set(" a , b,"), vec!["a", "b", ""]);
    }
}
