//! `volguard inventory`: Docker volumes and containers and what mounts what, from the data root.

use clap::Args;
use serde::Serialize;

use super::render::{Render, emit};
use crate::context::Ctx;
use crate::docker::{containers, inventory};
use crate::error::{Error, Result, exit};

#[derive(Debug, Args)]
pub struct InventoryArgs {
    /// Also compute each volume's size and file count (walks every volume).
    #[arg(long)]
    pub sizes: bool,
}

pub(super) fn run(ctx: &Ctx, a: &InventoryArgs) -> Result<i32> {
    let root = &ctx.docker_root;
    if !root.join("volumes").is_dir() && !root.join("containers").is_dir() {
        return Err(Error::Other(format!(
            "{} has neither volumes/ nor containers/: not a Docker data root (set --docker-root)",
            root.display()
        )));
    }
    let inventory = inventory::collect(root, &inventory::Options { sizes: a.sizes });
    for w in &inventory.warnings {
        tracing::warn!("{w}");
    }
    let clean = inventory.warnings.is_empty();
    emit(
        ctx.json,
        &Listing {
            sizes: a.sizes,
            inventory,
        },
    );
    Ok(if clean { exit::OK } else { exit::PARTIAL })
}

#[derive(Serialize)]
struct Listing {
    #[serde(skip)]
    sizes: bool,
    #[serde(flatten)]
    inventory: inventory::Inventory,
}

impl Render for Listing {
    fn text(&self) -> String {
        inventory_table(&self.inventory, self.sizes)
    }
}

fn inventory_table(inv: &inventory::Inventory, sizes: bool) -> String {
    fn table(rows: &[Vec<String>]) -> String {
        let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                rows.iter()
                    .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for r in rows {
            let line: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(i, s)| format!("{s:<w$}", w = widths[i]))
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
    let yes = |b: bool| if b { "yes" } else { "-" }.to_string();
    let mut rows = vec![
        vec![
            "VOLUME",
            "DRIVER",
            "ANON",
            "DANGLING",
            "MOUNTPOINT",
            "SIZE",
            "FILES",
            "USED BY",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>(),
    ];
    for v in &inv.volumes {
        let used: Vec<String> = v
            .containers
            .iter()
            .map(|c| {
                format!(
                    "{}:{}{}{}",
                    c.name,
                    c.destination,
                    if c.rw { "" } else { ":ro" },
                    if c.running { " (running)" } else { "" }
                )
            })
            .collect();
        let mountpoint = match (&v.data_mount.mount_type, v.data_mount.mounted_now) {
            (Some(t), true) => format!("{t}, mounted"),
            (Some(t), false) => t.clone(),
            (None, true) => "mounted".to_string(),
            (None, false) => "-".to_string(),
        };
        rows.push(vec![
            v.name.clone(),
            v.driver.clone(),
            yes(v.anonymous),
            yes(v.dangling),
            mountpoint,
            v.size_bytes.map_or("-".into(), crate::fmt::human_bytes),
            v.file_count.map_or("-".into(), |n| n.to_string()),
            if used.is_empty() {
                "-".into()
            } else {
                used.join(", ")
            },
        ]);
    }
    if !sizes {
        for r in &mut rows {
            r.drain(5..7);
        }
    }
    let mut out = table(&rows);
    out.push('\n');
    let mut rows = vec![
        ["CONTAINER", "NAME", "IMAGE", "RUNNING", "MOUNTS"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>(),
    ];
    for c in &inv.containers {
        let mounts: Vec<String> = c
            .mounts
            .iter()
            .map(|m| {
                let what = match m.kind {
                    containers::MountKind::Volume => m.name.clone().unwrap_or_default(),
                    containers::MountKind::Bind => format!("bind {}", m.source),
                    containers::MountKind::Tmpfs => "tmpfs".to_string(),
                    containers::MountKind::Other => "other".to_string(),
                };
                format!(
                    "{}={what}{}{}",
                    m.destination,
                    if m.rw { "" } else { " (ro)" },
                    if m.backed_up { "" } else { " [not backed up]" }
                )
            })
            .collect();
        rows.push(vec![
            c.id.chars().take(12).collect(),
            c.name.clone(),
            c.image.clone(),
            yes(c.running),
            if mounts.is_empty() {
                "-".into()
            } else {
                mounts.join(", ")
            },
        ]);
    }
    out.push_str(&table(&rows));
    out
}
