//! The labels volguard reads on volumes and on the containers that mount them, in one list,
//! so that a misspelt `volguard.*` key is named instead of silently doing nothing.

use std::collections::BTreeMap;

use super::containers::{self, Container};

/// `volguard.backup=false`: leave the volume out of `backup --all` and the agent.
pub const BACKUP: &str = "volguard.backup";
/// `volguard.exclude=GLOB[,GLOB...]`: paths every backup of the volume leaves out.
pub const EXCLUDE: &str = "volguard.exclude";
/// The agent's schedule for the volume.
pub const SCHEDULE: &str = "volguard.schedule";
/// The consistency mode while the agent reads the volume: freeze, stop or none.
pub const CONSISTENCY: &str = "volguard.consistency";
/// `volguard.stop=true` on a container: stop it while its volumes are read.
pub const STOP: &str = "volguard.stop";

/// `volguard.keep-last=N`, `volguard.keep-daily=N`, ... `volguard.keep-within=1y2m`: the
/// volume's own retention in the agent, in place of `[agent.retention]`'s keep rules (the
/// `forget` flag of the same name, without the `--`).
pub const KEEP: [&str; 7] = [
    "volguard.keep-last",
    "volguard.keep-hourly",
    "volguard.keep-daily",
    "volguard.keep-weekly",
    "volguard.keep-monthly",
    "volguard.keep-yearly",
    "volguard.keep-within",
];

const KNOWN: [&str; 12] = [
    BACKUP,
    EXCLUDE,
    SCHEDULE,
    CONSISTENCY,
    STOP,
    KEEP[0],
    KEEP[1],
    KEEP[2],
    KEEP[3],
    KEEP[4],
    KEEP[5],
    KEEP[6],
];
const PREFIX: &str = "volguard.";

/// A line for every `volguard.*` label in `labels` that volguard does not know, naming
/// `owner` (e.g. "container web") and the labels it does know.
pub fn unknown(owner: &str, labels: &BTreeMap<String, String>) -> Vec<String> {
    labels
        .keys()
        .filter(|k| k.starts_with(PREFIX) && !KNOWN.contains(&k.as_str()))
        .map(|k| {
            format!(
                "{owner}: label {k} is not a volguard label and does nothing; the known ones \
                 are {}",
                KNOWN.join(", ")
            )
        })
        .collect()
}

/// Label sets with who set them (`volume NAME`, `container NAME`), for messages.
pub type Owners<'a> = Vec<(String, &'a BTreeMap<String, String>)>;

/// Whose labels speak for volume `name`: the volume's own (`own`) first, then those of every
/// container among `all` that mounts it.
pub fn owners<'a>(
    name: &'a str,
    own: &'a BTreeMap<String, String>,
    all: &'a [Container],
) -> Owners<'a> {
    std::iter::once((format!("volume {name}"), own))
        .chain(
            containers::mounting(all, name).map(|c| (format!("container {}", c.name), &c.labels)),
        )
        .collect()
}

/// Who opted the volume out of `--all` and the agent (`volguard.backup=false` on the volume
/// or on a container that mounts it), if anyone, and the problems: a value other than
/// true/false keeps the volume in (backing up too much loses nothing).
pub fn opt_out(owners: &Owners<'_>) -> (Option<String>, Vec<String>) {
    let (mut by, mut problems) = (None, Vec::new());
    for (owner, l) in owners {
        match opted_out(owner, l) {
            Ok(true) => by = by.or(Some(owner.clone())),
            Ok(false) => {}
            Err(p) => problems.push(p),
        }
    }
    (by, problems)
}

fn opted_out(owner: &str, labels: &BTreeMap<String, String>) -> Result<bool, String> {
    match labels.get(BACKUP).map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(false),
        Some(v) if v == "false" => Ok(true),
        Some(v) if v == "true" => Ok(false),
        Some(v) => Err(format!(
            "{owner}: label {BACKUP}={v:?} is neither true nor false; the volume is backed up"
        )),
    }
}

/// A label set from pairs, for tests.
#[cfg(test)]
pub(crate) fn from_pairs(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::from_pairs as labels;
    use super::*;

    #[test]
    fn unknown_volguard_keys_are_named_and_others_ignored() {
        let l = labels(&[
            ("volguard.exclud", "*.tmp"),
            ("volguard.exclude", "*.tmp"),
            ("volguard.keep-daily", "7"),
            ("com.docker.compose.project", "x"),
        ]);
        let u = unknown("container web", &l);
        assert_eq!(u.len(), 1, "{u:?}");
        assert!(
            u[0].starts_with("container web: label volguard.exclud "),
            "{u:?}"
        );
    }

    #[test]
    fn only_true_or_false_decide_the_opt_out() {
        assert_eq!(opted_out("v", &labels(&[(BACKUP, "False")])), Ok(true));
        assert_eq!(opted_out("v", &labels(&[(BACKUP, "true")])), Ok(false));
        assert_eq!(opted_out("v", &labels(&[])), Ok(false));
        let e = opted_out("volume v", &labels(&[(BACKUP, "no")])).unwrap_err();
        assert!(e.contains("volume v: label volguard.backup=\"no\""), "{e}");
    }
}
