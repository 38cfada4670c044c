//! The directories above the snapshots, as restic's `mount` has them: `by-volume/<volume>/
//! <time>/` and `by-host/<host>/<volume>/<time>/`, each with a `latest` link to the newest.
//! A pure function of the snapshot list, so a refresh rebuilds it whole.

use std::collections::BTreeMap;

use crate::ids::SnapshotId;
use crate::repo::format::snapshot::Snapshot;

/// One path of the layout ("" is the mount's root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// Names of the entries below, sorted.
    Dir(Vec<String>),
    /// A snapshot's root directory.
    Snapshot(SnapshotId),
    /// `latest`: a link to the named sibling.
    Latest(String),
}

pub const LATEST: &str = "latest";

/// A volume or host name as one path component: the layout must not be steered by a
/// name holding `/` (snapshot objects are the repository's, but the names come from hosts).
fn component(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| if c == '/' || c == '\0' { '_' } else { c })
        .collect();
    match s.as_str() {
        "" | "." | ".." | LATEST => format!("_{s}"),
        _ => s,
    }
}

/// The snapshot's time to the second, as its directory is named.
fn time_name(s: &Snapshot) -> String {
    match crate::fmt::parse_time(&s.time) {
        Ok(t) => crate::fmt::fmt_time(t.into()),
        Err(_) => component(&s.time),
    }
}

/// The snapshot directories of one listing directory, named by time; two snapshots of the
/// same second both get `-<short id>`, so no name stands for two snapshots.
fn name_snapshots(snaps: &[&(SnapshotId, Snapshot)]) -> Vec<(String, SnapshotId)> {
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for (_, s) in snaps {
        *count.entry(time_name(s)).or_default() += 1;
    }
    snaps
        .iter()
        .map(|(id, s)| {
            let t = time_name(s);
            let name = if count[&t] > 1 {
                format!("{t}-{}", id.short())
            } else {
                t
            };
            (name, *id)
        })
        .collect()
}

/// The layout of `snaps` (oldest first, as `list_snapshots` gives them).
pub fn build(snaps: &[(SnapshotId, Snapshot)]) -> BTreeMap<String, Entry> {
    let mut out: BTreeMap<String, Entry> = BTreeMap::new();
    let mut groups: BTreeMap<String, Vec<&(SnapshotId, Snapshot)>> = BTreeMap::new();
    for s in snaps {
        groups
            .entry(format!("by-volume/{}", component(&s.1.volume)))
            .or_default()
            .push(s);
        groups
            .entry(format!(
                "by-host/{}/{}",
                component(&s.1.host),
                component(&s.1.volume)
            ))
            .or_default()
            .push(s);
    }
    let mut dirs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    dirs.insert(String::new(), vec!["by-host".into(), "by-volume".into()]);
    dirs.insert("by-host".into(), Vec::new());
    dirs.insert("by-volume".into(), Vec::new());
    for (dir, members) in groups {
        // Every ancestor lists the next component.
        let mut parent = String::new();
        for part in dir.split('/') {
            let path = if parent.is_empty() {
                part.to_string()
            } else {
                format!("{parent}/{part}")
            };
            let siblings = dirs.entry(parent.clone()).or_default();
            if !siblings.iter().any(|n| n == part) {
                siblings.push(part.to_string());
            }
            dirs.entry(path.clone()).or_default();
            parent = path;
        }
        let named = name_snapshots(&members);
        let list = dirs.entry(dir.clone()).or_default();
        for (name, id) in &named {
            list.push(name.clone());
            out.insert(format!("{dir}/{name}"), Entry::Snapshot(*id));
        }
        if let Some((newest, _)) = named.last() {
            list.push(LATEST.into());
            out.insert(format!("{dir}/{LATEST}"), Entry::Latest(newest.clone()));
        }
    }
    for (path, mut names) in dirs {
        names.sort();
        names.dedup();
        out.insert(path, Entry::Dir(names));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::format::tree::Node;

    fn snap(volume: &str, host: &str, time: &str) -> Snapshot {
        Snapshot {
            version: 1,
            time: time.into(),
            host: host.into(),
            volume: volume.into(),
            source: String::new(),
            tags: Vec::new(),
            parent: None,
            root: Node::default(),
            summary: Default::default(),
            program: String::new(),
            docker_volume: None,
        }
    }

    #[test]
    fn volumes_and_hosts_are_listed_with_latest_links_and_unique_names() {
        let snaps = vec![
            (
                SnapshotId([1; 32]),
                snap("db", "h1", "2026-12-01T10:00:00.100000000Z"),
            ),
            (
                SnapshotId([2; 32]),
                snap("db", "h2", "2026-12-01T10:00:00.900000000Z"),
            ),
            (
                SnapshotId([3; 32]),
                snap("web/x", "h1", "2026-12-02T10:00:00.000000000Z"),
            ),
        ];
        let l = build(&snaps);
        assert_eq!(
            l[""],
            Entry::Dir(vec!["by-host".into(), "by-volume".into()])
        );
        assert_eq!(
            l["by-volume"],
            Entry::Dir(vec!["db".into(), "web_x".into()])
        );
        let s1 = format!("2026-12-01T10:00:00Z-{}", SnapshotId([1; 32]).short());
        let s2 = format!("2026-12-01T10:00:00Z-{}", SnapshotId([2; 32]).short());
        assert_eq!(
            l["by-volume/db"],
            Entry::Dir(vec![s1.clone(), s2.clone(), LATEST.into()])
        );
        assert_eq!(
            l[&format!("by-volume/db/{s1}")],
            Entry::Snapshot(SnapshotId([1; 32]))
        );
        assert_eq!(l["by-volume/db/latest"], Entry::Latest(s2));
        // One snapshot per host: no collision there, plain times.
        assert_eq!(
            l["by-host/h1/db"],
            Entry::Dir(vec!["2026-12-01T10:00:00Z".into(), LATEST.into()])
        );
        assert_eq!(l["by-host"], Entry::Dir(vec!["h1".into(), "h2".into()]));
        assert_eq!(
            l["by-host/h1"],
            Entry::Dir(vec!["db".into(), "web_x".into()])
        );
    }

    #[test]
    fn an_empty_repository_has_the_two_top_directories() {
        let l = build(&[]);
        assert_eq!(l.len(), 3);
        assert_eq!(l["by-volume"], Entry::Dir(Vec::new()));
    }
}
