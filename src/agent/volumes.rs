//! Which volumes the agent backs up, and how: the selected volumes of the Docker root,
//! each with its schedule and consistency mode from its `[[agent.volume]]` entry, a label
//! on the volume or on a container that mounts it, or the agent's defaults.

use std::collections::BTreeMap;

use super::Loaded;
use super::scheduler::{Agent, VolState, draw_jitter};
use crate::config::agent::{AgentSettings, Consistency};
use crate::config::schedule::Schedule;
use crate::docker::labels::{
    self, CONSISTENCY as CONSISTENCY_LABEL, SCHEDULE as SCHEDULE_LABEL, STOP as STOP_LABEL,
};
use crate::docker::{self, containers};

impl Agent {
    pub(super) fn volume_entry(&mut self, name: &str, settings: &AgentSettings) -> &mut VolState {
        self.volumes
            .entry(name.to_string())
            .or_insert_with(|| VolState {
                schedule: settings.schedule,
                consistency: settings.consistency,
                last_success: None,
                last_failure: None,
                last_error: None,
                jitter: draw_jitter(settings.jitter),
            })
    }

    /// each one's schedule and consistency from config and labels.
    pub(super) fn refresh_volumes(&mut self, loaded: &Loaded) {
        let root = &loaded.ctx.docker_root;
        let names = match docker::list_volumes(root) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("{e}");
                return;
            }
        };
        let (defs, _) = docker::volumes::read_volumes(root);
        let (ctrs, _) = containers::read_containers(root);
        let mut selected: Vec<String> = Vec::new();
        for name in names.into_iter().filter(|n| loaded.settings.selects(n)) {
            let labels = defs
                .iter()
                .find(|d| d.name == name)
                .map(|d| d.labels.clone())
                .unwrap_or_default();
            let mounters: Vec<&containers::Container> =
                containers::mounting(&ctrs, &name).collect();
            // volguard.backup=false, as for `backup --all`; a bad value is warned about when
            // the volume is backed up.
            if labels::opt_out(&labels::owners(&name, &labels, &ctrs))
                .0
                .is_some()
            {
                if self.volumes.contains_key(&name) {
                    tracing::info!(
                        "volume {name}: {}=false now; no longer backed up",
                        labels::BACKUP
                    );
                }
                self.volumes.remove(&name);
                continue;
            }
            let (schedule, consistency) = resolve(&loaded.settings, &name, &labels, &mounters);
            let v = self.volume_entry(&name, &loaded.settings);
            v.schedule = schedule;
            v.consistency = consistency;
            selected.push(name);
        }
        self.volumes.retain(|n, _| selected.contains(n));
    }
}

/// A volume's schedule and consistency: its `[[agent.volume]]` entry, else a label on the
/// volume, else a label on a container that mounts it, else the agent's defaults. A label
/// that does not parse is a warning, and the next source decides.
fn resolve(
    settings: &AgentSettings,
    name: &str,
    volume_labels: &BTreeMap<String, String>,
    mounters: &[&containers::Container],
) -> (Schedule, Consistency) {
    let over = settings.volume(name);
    let label_schedule = std::iter::once(volume_labels)
        .chain(mounters.iter().map(|c| &c.labels))
        .filter_map(|l| l.get(SCHEDULE_LABEL))
        .find_map(|s| {
            Schedule::parse(s)
                .map_err(|e| tracing::warn!("volume {name}: label {SCHEDULE_LABEL}: {e}"))
                .ok()
        });
    let schedule = over
        .and_then(|o| o.schedule)
        .or(label_schedule)
        .unwrap_or(settings.schedule);
    let parse_mode = |s: &String| match s.as_str() {
        "freeze" => Some(Consistency::Freeze),
        "stop" => Some(Consistency::Stop),
        "none" => Some(Consistency::None),
        other => {
            tracing::warn!(
                "volume {name}: label {CONSISTENCY_LABEL}={other:?} is not freeze, stop or none"
            );
            None
        }
    };
    let label_mode = volume_labels
        .get(CONSISTENCY_LABEL)
        .and_then(parse_mode)
        .or_else(|| {
            mounters
                .iter()
                .any(|c| c.labels.get(STOP_LABEL).is_some_and(|v| v == "true"))
                .then_some(Consistency::Stop)
        })
        .or_else(|| {
            mounters
                .iter()
                .find_map(|c| c.labels.get(CONSISTENCY_LABEL).and_then(parse_mode))
        });
    let consistency = over
        .and_then(|o| o.consistency)
        .or(label_mode)
        .unwrap_or(settings.consistency);
    (schedule, consistency)
}
