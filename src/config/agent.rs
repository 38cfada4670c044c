//! The `[agent]` table of the config file: what the agent backs up and when, how it keeps
//! volumes consistent while reading them, and its periodic maintenance. Every field has a
//! default, so an empty table (or none) is a working agent: daily backups of every volume.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::schedule::Schedule;
use crate::ops::forget::{KeepOptions, KeepPolicy};

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    crate::fmt::parse_grace(&s).map_err(serde::de::Error::custom)
}

/// How a volume that running containers mount is kept consistent while it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// Read it as it is (files changing while read are re-read, then skipped).
    #[default]
    None,
    /// Freeze the containers' cgroups while the volume is read, thawed after at most
    /// `freeze_timeout`.
    Freeze,
    /// Stop the containers through dockerd, start them again after the read.
    Stop,
}

/// Per-volume settings, matched by name (`[[agent.volume]]`).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct VolumeSettings {
    pub name: String,
    pub schedule: Option<Schedule>,
    pub consistency: Option<Consistency>,
    /// Run before the volume is read (argv, no shell); a failure skips this backup.
    #[serde(default)]
    pub pre: Vec<String>,
    /// Run after the volume was read, also when the backup failed.
    #[serde(default)]
    pub post: Vec<String>,
}

/// `[agent.retention]`: forget by these rules (restic's meaning, see `volguard forget`),
/// per host and volume, every `every`, then prune. The keep rules are the same type as
/// `volguard forget`'s flags, written `keep_last = 7`, ..., `keep_tags = ["a,b"]`.
#[derive(Debug, Clone)]
pub struct RetentionSettings {
    pub every: Schedule,
    pub keep: KeepOptions,
    /// Prune after forgetting.
    pub prune: bool,
    pub prune_grace: Duration,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        RetentionSettings {
            every: Schedule::Every(Duration::from_secs(86_400)),
            keep: KeepOptions::default(),
            prune: true,
            prune_grace: Duration::from_secs(86_400),
        }
    }
}

/// The table's own keys are taken out first; the rest must be keep rules (serde cannot
/// flatten into a struct that refuses unknown keys).
impl<'de> Deserialize<'de> for RetentionSettings {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let bad = |key: &str, e: &dyn std::fmt::Display| {
            D::Error::custom(format!("agent.retention.{key}: {e}"))
        };
        let mut table = toml::Table::deserialize(d)?;
        let mut s = RetentionSettings::default();
        if let Some(v) = table.remove("every") {
            s.every = v.try_into().map_err(|e| bad("every", &e))?;
        }
        if let Some(v) = table.remove("prune") {
            s.prune = v.try_into().map_err(|e| bad("prune", &e))?;
        }
        if let Some(v) = table.remove("prune_grace") {
            let text: String = v.try_into().map_err(|e| bad("prune_grace", &e))?;
            s.prune_grace = crate::fmt::parse_grace(&text).map_err(|e| bad("prune_grace", &e))?;
        }
        s.keep = KeepOptions::deserialize(toml::Value::Table(table))
            .map_err(|e| D::Error::custom(format!("agent.retention: {e}")))?;
        Ok(s)
    }
}

impl RetentionSettings {
    /// The keep policy; an error when no rule is set.
    pub fn policy(&self) -> Result<KeepPolicy, String> {
        let policy = self.keep.policy();
        if policy.is_empty() {
            return Err("agent.retention: no keep rule is set (keep_last, keep_daily, ..., keep_within, keep_tags), so it would keep everything; set one or remove the table".into());
        }
        Ok(policy)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSettings {
    /// Default schedule of every volume.
    pub schedule: Schedule,
    /// Each run starts up to this much later, at random, so many hosts do not hit the
    /// repository at the same second.
    #[serde(deserialize_with = "duration")]
    pub jitter: Duration,
    /// How often the agent looks for new volumes and due work.
    #[serde(deserialize_with = "duration")]
    pub tick: Duration,
    /// Volume name globs to back up (default: all).
    pub include: Vec<String>,
    /// Volume name globs never backed up.
    pub exclude: Vec<String>,
    pub consistency: Consistency,
    #[serde(deserialize_with = "duration")]
    pub freeze_timeout: Duration,
    /// Seconds dockerd gives a container to stop (`consistency = "stop"`).
    #[serde(deserialize_with = "duration")]
    pub stop_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub hook_timeout: Duration,
    /// On SIGTERM, how long a running backup may go on before it is abandoned (safe: the
    /// snapshot is written last, so nothing half-done remains).
    #[serde(deserialize_with = "duration")]
    pub shutdown_timeout: Duration,
    /// Prometheus metrics on this loopback address; "" turns them off.
    pub metrics_listen: String,
    /// JSON POSTed here when a job fails (http:// only).
    pub webhook: Option<String>,
    /// `check` this often, reading `check_read_percent` of the packs.
    pub check_every: Schedule,
    pub check_read_percent: f64,
    /// A restore drill of a sample of every volume this often.
    pub drill_every: Schedule,
    pub drill_sample_percent: f64,
    pub retention: Option<RetentionSettings>,
    /// CPU niceness (0..19) and idle I/O class, so containers are not starved.
    pub nice: i32,
    pub io_idle: bool,
    /// Run the watcher (`volguard watch`, with the `[watch]` table) inside the agent.
    pub watch: bool,
    pub volume: Vec<VolumeSettings>,
}

impl Default for AgentSettings {
    fn default() -> Self {
        AgentSettings {
            schedule: Schedule::Every(Duration::from_secs(86_400)),
            jitter: Duration::from_secs(15 * 60),
            tick: Duration::from_secs(30),
            include: vec!["*".into()],
            exclude: Vec::new(),
            consistency: Consistency::None,
            freeze_timeout: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(30),
            hook_timeout: Duration::from_secs(600),
            shutdown_timeout: Duration::from_secs(20),
            metrics_listen: "127.0.0.1:9469".into(),
            webhook: None,
            check_every: Schedule::Every(Duration::from_secs(7 * 86_400)),
            check_read_percent: 5.0,
            drill_every: Schedule::Every(Duration::from_secs(7 * 86_400)),
            drill_sample_percent: 10.0,
            retention: None,
            nice: 10,
            io_idle: true,
            watch: true,
            volume: Vec::new(),
        }
    }
}

impl AgentSettings {
    /// Checks what serde cannot: ranges, globs, addresses, the retention policy. Each
    /// message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.tick.is_zero() {
            return Err("agent.tick: must be longer than 0".into());
        }
        if !(0.0..=100.0).contains(&self.check_read_percent) {
            return Err("agent.check_read_percent: must be 0 to 100".into());
        }
        if !(self.drill_sample_percent > 0.0 && self.drill_sample_percent <= 100.0) {
            return Err("agent.drill_sample_percent: must be above 0 and at most 100".into());
        }
        if !(0..=19).contains(&self.nice) {
            return Err(format!("agent.nice: {} is not 0 to 19", self.nice));
        }
        for g in self.include.iter().chain(&self.exclude) {
            globset::Glob::new(g).map_err(|e| format!("agent.include/exclude: {g:?}: {e}"))?;
        }
        if !self.metrics_listen.is_empty() {
            let addr: std::net::SocketAddr = self.metrics_listen.parse().map_err(|_| {
                format!(
                    "agent.metrics_listen: {:?} is not an address like 127.0.0.1:9469",
                    self.metrics_listen
                )
            })?;
            if !addr.ip().is_loopback() {
                return Err(format!(
                    "agent.metrics_listen: {addr} is not a loopback address; metrics are served on 127.0.0.1 or ::1 only (put a proxy in front to publish them)"
                ));
            }
        }
        if let Some(w) = &self.webhook
            && !w.starts_with("http://")
        {
            return Err(format!(
                "agent.webhook: {w:?}: only http:// URLs are supported (a local relay can forward to https)"
            ));
        }
        let mut seen = BTreeMap::new();
        for (i, v) in self.volume.iter().enumerate() {
            if !crate::docker::valid_volume_name(&v.name) {
                return Err(format!(
                    "agent.volume[{i}].name: {:?} is not a Docker volume name",
                    v.name
                ));
            }
            if seen.insert(v.name.as_str(), i).is_some() {
                return Err(format!(
                    "agent.volume[{i}]: volume {:?} is configured twice",
                    v.name
                ));
            }
        }
        if let Some(r) = &self.retention {
            r.policy()?;
        }
        Ok(())
    }

    pub fn volume(&self, name: &str) -> Option<&VolumeSettings> {
        self.volume.iter().find(|v| v.name == name)
    }

    /// Whether `name` is backed up at all (include minus exclude).
    pub fn selects(&self, name: &str) -> bool {
        let matches = |globs: &[String]| {
            globs.iter().any(|g| {
                globset::Glob::new(g)
                    .map(|g| g.compile_matcher().is_match(name))
                    .unwrap_or(false)
            })
        };
        matches(&self.include) && !matches(&self.exclude)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AgentSettings, String> {
        #[derive(Deserialize)]
        struct W {
            agent: AgentSettings,
        }
        let w: W = toml::from_str(text).map_err(|e| e.to_string())?;
        w.agent.validate()?;
        Ok(w.agent)
    }

    #[test]
    fn defaults_and_overrides() {
        let a = parse("[agent]\n").unwrap();
        assert_eq!(a.schedule.to_string(), "daily");
        assert!(a.selects("anything"));
        let a = parse(
            "[agent]\nschedule = \"6h\"\njitter = \"0s\"\ninclude = [\"db-*\"]\nexclude = [\"db-tmp*\"]\n\
             [[agent.volume]]\nname = \"db-main\"\nconsistency = \"freeze\"\npre = [\"/bin/true\"]\n\
             [agent.retention]\nkeep_daily = 7\nkeep_last = -1\n",
        )
        .unwrap();
        assert!(a.selects("db-main") && !a.selects("db-tmp1") && !a.selects("web"));
        assert_eq!(
            a.volume("db-main").unwrap().consistency,
            Some(Consistency::Freeze)
        );
        assert!(a.retention.unwrap().policy().is_ok());
    }

    #[test]
    fn mistakes_name_the_key() {
        for (text, want) in [
            ("[agent]\nschedule = \"sometimes\"\n", "not a schedule"),
            ("[agent]\ntick = \"0s\"\n", "agent.tick"),
            (
                "[agent]\nmetrics_listen = \"0.0.0.0:9469\"\n",
                "not a loopback",
            ),
            ("[agent]\nconsistency = \"pause\"\n", "unknown variant"),
            ("[agent]\nwebhook = \"https://x\"\n", "agent.webhook"),
            ("[agent]\nschedul = \"daily\"\n", "unknown field"),
            ("[agent.retention]\nprune = true\n", "no keep rule"),
            (
                "[[agent.volume]]\nname = \"../x\"\n",
                "agent.volume[0].name",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
