//! How volguard writes sizes, times and durations for people and parses durations from
//! them: a leaf, so every layer shares these spellings without importing a front end.

use std::time::SystemTime;

/// "512 B", "1.5 KiB": binary units, one decimal.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// RFC 3339 in UTC with a fixed nine-digit fraction, so snapshot times sort as strings.
pub fn format_time(t: time::OffsetDateTime) -> String {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z"
    );
    t.to_offset(time::UtcOffset::UTC)
        .format(&fmt)
        .unwrap_or_default()
}

/// RFC 3339 UTC, to the second, for messages.
pub fn fmt_time(t: SystemTime) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::from(t)
        .format(&fmt)
        .unwrap_or_else(|_| format!("{t:?}"))
}

/// Unix seconds as [`fmt_time`] writes them.
pub fn unix_time(secs: u64) -> String {
    fmt_time(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

/// UTC to the second with a space, as tables show times: `2024-05-01 12:00:00`.
pub fn table_time(t: time::OffsetDateTime) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    t.to_offset(time::UtcOffset::UTC)
        .format(&fmt)
        .unwrap_or_default()
}

/// Parses an RFC 3339 time (a stored snapshot time, or one a person typed).
pub fn parse_time(s: &str) -> Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}"))
}

/// "30 days", "90 seconds", "2 days 3600 seconds".
pub fn human_duration(secs: u64) -> String {
    match (secs / 86_400, secs % 86_400) {
        (0, s) => format!("{s} seconds"),
        (d, 0) => format!("{d} days"),
        (d, s) => format!("{d} days {s} seconds"),
    }
}

/// `90s`, `30m`, `24h`, `7d`, or a bare number of seconds.
pub fn parse_grace(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 30m, 24h or 7d"))?;
    let secs = match unit {
        "" | "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use s, m, h or d")),
    }
    .ok_or_else(|| format!("{s:?} is too long"))?;
    Ok(std::time::Duration::from_secs(secs))
}
