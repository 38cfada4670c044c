//! The results table and the verdict on each performance target.
//!
//! The targets come from the volguard issue; stating "met / not met" with the
//! numbers next to them keeps the bench honest and makes regressions obvious.
//! An S3 run is judged on the same targets, minus the one against tar|zstd,
//! which has no S3 backend.

use crate::common::MIB;
use crate::tools::{Scenario, ToolId};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One tool in one scenario.
pub struct Cell {
    pub peak_rss: u64,
    /// Storage size after the step and its growth during the step (backups).
    pub stored: Option<u64>,
    pub added: Option<u64>,
    /// The tool's own account of bytes added and files new/changed.
    pub reported_added: Option<u64>,
    pub reported_changed_files: Option<u64>,
    /// Wall seconds of every run, in round order.
    pub runs: Vec<f64>,
}

impl Cell {
    /// The wall time the table shows: the median of the runs.
    pub fn wall_s(&self) -> f64 {
        let mut v = self.runs.clone();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => v[n / 2],
            _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }
}

pub struct Results {
    tools: Vec<ToolId>,
    cells: BTreeMap<(Scenario, ToolId), Cell>,
}

/// Facts about the run printed above the table.
pub struct Context {
    pub scale: f64,
    /// Where the repositories were, for an S3 run; `None` for local disk.
    pub backend: Option<String>,
    pub dataset: String,
    pub change: String,
    pub drop_caches: bool,
    pub machine: String,
    pub versions: Vec<(ToolId, String)>,
    /// Size of the random file added before (c): every tool must store it
    /// whole, so it puts a floor under any tool's bytes added.
    pub new_incompressible_bytes: u64,
}

impl Results {
    pub fn new(tools: Vec<ToolId>) -> Self {
        Self {
            tools,
            cells: BTreeMap::new(),
        }
    }

    pub fn record(&mut self, scenario: Scenario, tool: ToolId, cell: Cell) {
        self.cells.insert((scenario, tool), cell);
    }

    fn get(&self, scenario: Scenario, tool: ToolId) -> Option<&Cell> {
        self.cells.get(&(scenario, tool))
    }

    /// `other`'s wall time over volguard's, in one scenario.
    fn time_ratio(&self, scenario: Scenario, other: ToolId) -> Option<f64> {
        let vg = self.get(scenario, ToolId::Volguard)?;
        let them = self.get(scenario, other)?;
        Some(them.wall_s() / vg.wall_s())
    }
}

pub fn render(ctx: &Context, results: &Results) -> String {
    let mut out = String::new();
    let title = if ctx.backend.is_some() {
        "volguard core benchmark, S3 backend"
    } else {
        "volguard core benchmark"
    };
    let _ = writeln!(out, "## {title} (scale {})\n", ctx.scale);
    write_context(&mut out, ctx);
    write_table(&mut out, results);
    write_runs(&mut out, results);
    write_targets(&mut out, ctx, results);
    write_notes(&mut out, results);
    out
}

fn write_context(out: &mut String, ctx: &Context) {
    if let Some(backend) = &ctx.backend {
        let _ = writeln!(out, "- repositories: {backend}");
    }
    let _ = writeln!(out, "- data: {}", ctx.dataset);
    let _ = writeln!(out, "- change before (c): {}", ctx.change);
    let _ = writeln!(out, "- machine: {}", ctx.machine);
    let cache = if ctx.drop_caches {
        "page cache dropped (`sync; echo 3 > /proc/sys/vm/drop_caches`) before every \
         timed command: every tool reads cold"
    } else {
        "page cache NOT dropped (--no-drop-caches): warm-cache numbers, not comparable"
    };
    let _ = writeln!(out, "- {cache}");
    let _ = writeln!(
        out,
        "- every timed command starts once the cores have been below 5% busy for 0.5 s \
         (at most 60 s of waiting): work left over from the command before, such as the \
         S3 server's after a backup, is not in the next one's time"
    );
    for (tool, version) in &ctx.versions {
        let _ = writeln!(out, "- {}: {version}", tool.label());
    }
    let storage = if ctx.backend.is_some() {
        // The server runs on the same two cores: its work is in the wall
        // times of both tools alike, its memory in neither's RSS.
        "sum of the object sizes ListObjectsV2 reports for the tool's bucket; \
         restic's local cache not counted). The S3 server shares this machine: \
         its CPU and disk time is inside both tools' wall times, its memory in \
         neither's RSS"
    } else {
        "sum of file sizes; restic's cache not counted)"
    };
    let _ = writeln!(
        out,
        "- s = wall seconds; RSS = peak resident set (max of both processes for \
         tar|zstd); stored/added = storage size after the step / growth during \
         it (MiB, {storage}\n"
    );
}

fn write_table(out: &mut String, results: &Results) {
    let others: Vec<ToolId> = if results.tools.contains(&ToolId::Volguard) {
        results
            .tools
            .iter()
            .copied()
            .filter(|t| *t != ToolId::Volguard)
            .collect()
    } else {
        Vec::new()
    };
    let mut header = String::from("| scenario |");
    for tool in &results.tools {
        let t = tool.label();
        let _ = write!(header, " {t} s | {t} RSS MiB | {t} stored/added MiB |");
    }
    for other in &others {
        let _ = write!(header, " {}/volguard time |", other.label());
    }
    let columns = 1 + 3 * results.tools.len() + others.len();
    let _ = writeln!(out, "{header}");
    let _ = writeln!(out, "|---|{}", "---:|".repeat(columns - 1));
    for scenario in Scenario::ALL {
        let mut row = format!("| {} |", scenario.label());
        for tool in &results.tools {
            row.push_str(&cell_columns(results.get(scenario, *tool)));
        }
        for other in &others {
            let ratio = results.time_ratio(scenario, *other);
            let _ = write!(
                row,
                " {} |",
                ratio.map_or("—".into(), |r| format!("{r:.2}x"))
            );
        }
        let _ = writeln!(out, "{row}");
    }
    out.push('\n');
}

/// Every run of a scenario that ran more than once, round by round, with the ratio of
/// each round (the rounds alternate the order in which the tools ran).
fn write_runs(out: &mut String, results: &Results) {
    for scenario in Scenario::ALL {
        let cells: Vec<(ToolId, &Cell)> = results
            .tools
            .iter()
            .filter_map(|t| results.get(scenario, *t).map(|c| (*t, c)))
            .filter(|(_, c)| c.runs.len() > 1)
            .collect();
        let Some(rounds) = cells.iter().map(|(_, c)| c.runs.len()).max() else {
            continue;
        };
        let _ = writeln!(
            out,
            "{} runs (the table shows each tool's median):\n",
            scenario.label()
        );
        let vg = results.get(scenario, ToolId::Volguard);
        for round in 0..rounds {
            let mut line = format!("- round {}:", round + 1);
            for (tool, cell) in &cells {
                if let Some(s) = cell.runs.get(round) {
                    let _ = write!(line, " {} {s:.2} s;", tool.label());
                }
            }
            for (tool, cell) in cells.iter().filter(|(t, _)| *t != ToolId::Volguard) {
                if let Some(ratio) = vg.and_then(|vg| round_ratios(cell, vg).nth(round)) {
                    let _ = write!(line, " {}/volguard {ratio:.2}x;", tool.label());
                }
            }
            let _ = writeln!(out, "{}", line.trim_end_matches(';'));
        }
        out.push('\n');
    }
}

/// `them`'s wall time over volguard's, round by round.
fn round_ratios<'a>(them: &'a Cell, vg: &'a Cell) -> impl Iterator<Item = f64> + 'a {
    them.runs.iter().zip(&vg.runs).map(|(t, v)| t / v)
}

fn cell_columns(cell: Option<&Cell>) -> String {
    let Some(cell) = cell else {
        return " n/a | n/a | n/a |".into();
    };
    let storage = match (cell.stored, cell.added) {
        (Some(stored), Some(added)) => format!("{} / {}", mib(stored), mib(added)),
        _ => "—".into(),
    };
    format!(
        " {:.2} | {:.0} | {storage} |",
        cell.wall_s(),
        cell.peak_rss as f64 / MIB
    )
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / MIB)
}

/// A target's verdict: `None` when a tool it needs was not run.
type Verdict = Option<(bool, String)>;

fn write_targets(out: &mut String, ctx: &Context, results: &Results) {
    let _ = writeln!(out, "### Targets\n");
    let mut targets: Vec<(&str, Verdict)> = vec![
        (
            "initial backup >= 2x faster than restic",
            speedup_at_least(results, Scenario::Initial, ToolId::Restic, 2.0),
        ),
        (
            "no-change backup >= 3x faster than restic",
            speedup_at_least(results, Scenario::NoChange, ToolId::Restic, 3.0),
        ),
        (
            "bytes added after the 1% change <= 1/3 of restic's",
            added_vs_restic(results, 0),
        ),
        (
            "same, not counting the new random media file both must store whole",
            added_vs_restic(results, ctx.new_incompressible_bytes),
        ),
        (
            "restore >= 2x faster than restic",
            speedup_at_least(results, Scenario::Restore, ToolId::Restic, 2.0),
        ),
        (
            "volguard peak RSS below restic's in every row",
            rss_below_restic(results),
        ),
    ];
    // tar|zstd writes to local disk only: an S3 run has no such target
    // rather than one listed as never evaluated.
    if ctx.backend.is_none() {
        targets.insert(
            1,
            (
                "initial backup within 1.5x of tar|zstd -3 -T0",
                within_of_tar(results),
            ),
        );
    }
    for (name, verdict) in targets {
        let line = match verdict {
            Some((true, detail)) => format!("- MET: {name} ({detail})"),
            Some((false, detail)) => format!("- NOT MET: {name} ({detail})"),
            None => format!("- not evaluated: {name} (needs volguard and the compared tool)"),
        };
        let _ = writeln!(out, "{line}");
    }
    out.push('\n');
}

fn speedup_at_least(results: &Results, scenario: Scenario, other: ToolId, want: f64) -> Verdict {
    let vg = results.get(scenario, ToolId::Volguard)?;
    let them = results.get(scenario, other)?;
    let ratio = them.wall_s() / vg.wall_s();
    let mut detail = format!(
        "{} {:.2} s / volguard {:.2} s = {ratio:.2}x, want >= {want}x",
        other.label(),
        them.wall_s(),
        vg.wall_s()
    );
    if vg.runs.len() > 1 {
        let lowest = round_ratios(them, vg).fold(f64::INFINITY, f64::min);
        let _ = write!(
            detail,
            " (medians of {} runs; the lowest round {lowest:.2}x)",
            vg.runs.len()
        );
    }
    Some((ratio >= want, detail))
}

fn within_of_tar(results: &Results) -> Verdict {
    let vg = results.get(Scenario::Initial, ToolId::Volguard)?;
    let tar = results.get(Scenario::Initial, ToolId::Tar)?;
    let ratio = vg.wall_s() / tar.wall_s();
    Some((
        ratio <= 1.5,
        format!(
            "volguard {:.2} s / tar-zstd {:.2} s = {ratio:.2}x, want <= 1.5x",
            vg.wall_s(),
            tar.wall_s()
        ),
    ))
}

/// Compares repository growth on disk, the number that costs money; the
/// tools' self-reported figures are listed in the notes.
///
/// `floor` bytes are taken off both sides first. The change adds a random
/// file that no tool can shrink; when it is large next to restic's total
/// (100 MiB vs ~290 MiB at scale 1) it alone makes the raw 1/3 target
/// unreachable, so the verdict without it is what says something about
/// chunking and compression.
fn added_vs_restic(results: &Results, floor: u64) -> Verdict {
    let vg = results.get(Scenario::Changed, ToolId::Volguard)?.added?;
    let restic = results.get(Scenario::Changed, ToolId::Restic)?.added?;
    let (vg, restic) = (vg.saturating_sub(floor), restic.saturating_sub(floor));
    let ratio = vg as f64 / restic.max(1) as f64;
    let mut detail = format!(
        "volguard {} MiB / restic {} MiB = {ratio:.3}, want <= 0.333",
        mib(vg),
        mib(restic)
    );
    if floor > 0 {
        let _ = write!(detail, "; {} MiB subtracted from both", mib(floor));
    }
    Some((3.0 * vg as f64 <= restic as f64, detail))
}

fn rss_below_restic(results: &Results) -> Verdict {
    let mut all_below = true;
    let mut parts = Vec::new();
    for scenario in Scenario::ALL {
        let (Some(vg), Some(restic)) = (
            results.get(scenario, ToolId::Volguard),
            results.get(scenario, ToolId::Restic),
        ) else {
            continue;
        };
        all_below &= vg.peak_rss < restic.peak_rss;
        parts.push(format!(
            "{}: {:.0} vs {:.0} MiB",
            &scenario.label()[..3],
            vg.peak_rss as f64 / MIB,
            restic.peak_rss as f64 / MIB
        ));
    }
    if parts.is_empty() {
        return None;
    }
    Some((all_below, parts.join("; ")))
}

fn write_notes(out: &mut String, results: &Results) {
    let _ = writeln!(out, "### Tools' own accounts\n");
    let _ = writeln!(
        out,
        "(restic's `data_added` counts bytes before compression; the table's \
         added column is the repository's growth on disk.)\n"
    );
    for ((scenario, tool), cell) in &results.cells {
        if let Some(added) = cell.reported_added {
            let _ = writeln!(
                out,
                "- {} {}: reports {} MiB added, {} files new or changed",
                tool.label(),
                scenario.label(),
                mib(added),
                cell.reported_changed_files
                    .map_or("?".into(), |n| n.to_string())
            );
        }
        if *scenario == Scenario::NoChange && cell.reported_changed_files.is_some_and(|n| n > 0) {
            let _ = writeln!(
                out,
                "- WARNING: {} saw changed files in the no-change backup",
                tool.label()
            );
        }
    }
}
