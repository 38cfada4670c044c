//! The one place a command's report becomes stdout: pretty JSON with `--json`, else the
//! report's text for people. Reports are `Serialize`; each command's file gives the text.

use std::io::IsTerminal;

use serde::Serialize;

use crate::context::Ctx;

/// A command's report: its JSON is its serde form, its text is [`Render::text`].
pub(super) trait Render: Serialize {
    /// What a person reads on stdout, every line ending in a newline.
    fn text(&self) -> String;
}

/// Prints `report` as `--json` asked: one JSON document, or its text.
pub(super) fn emit(json: bool, report: &impl Render) {
    if json {
        emit_json(report);
    } else {
        crate::out!("{}", report.text());
    }
}

/// Prints the JSON form only: for a command whose text is streamed as it is made.
pub(super) fn emit_json(report: &impl Serialize) {
    let doc = serde_json::to_string_pretty(report)
        .unwrap_or_else(|e| format!("{{\"error\": \"cannot encode the report: {e}\"}}"));
    crate::outln!("{doc}");
}

/// Prints a part of a text report as soon as it is known (one archive imported, one
/// volume drilled); `--json` prints the whole report once at the end instead.
pub(super) fn emit_text_now(json: bool, part: &impl Render) {
    if !json {
        crate::out!("{}", part.text());
    }
}

/// A progress bar on a terminal, never in --json, --quiet or a log.
pub(super) fn progress(ctx: &Ctx, len: Option<u64>, what: &str) -> Option<indicatif::ProgressBar> {
    if ctx.quiet || ctx.json || !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = match len {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    let style = indicatif::ProgressStyle::with_template(
        "{spinner} {msg} {bytes} ({bytes_per_sec}) {elapsed}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
    pb.set_style(style);
    pb.set_message(what.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(200));
    Some(pb)
}

/// Appends one line to a text report (a `String`; writing to it cannot fail).
macro_rules! ln {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}
pub(super) use ln;

/// Prints one item of a stream as it is known: one compact JSON line with `--json` (as
/// `watch --json` and restic's `ls --json` do), else its text.
pub(super) fn emit_line(json: bool, item: &impl Render) {
    if json {
        let line = serde_json::to_string(item)
            .unwrap_or_else(|e| format!("{{\"error\": \"cannot encode the entry: {e}\"}}"));
        crate::outln!("{line}");
    } else {
        crate::out!("{}", item.text());
    }
}
