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

/// A point in time as a person names one for `VOLUME:@WHEN` and `find --newer/--older`,
/// returned as the span it covers (`from`, `to`; equal but for a bare date):
/// - RFC 3339 (`2026-12-01T10:00:00Z`, `2026-12-01T12:00:00+02:00`);
/// - `2026-12-01T10:00` or `2026-12-01T10:00:30` (also with a space), UTC;
/// - `2026-12-01`, UTC: the whole day, so "at or before" a date includes that day;
/// - `90s`, `30m`, `12h`, `3d`, `2w`: that long before `now`.
pub fn parse_when(
    s: &str,
    now: time::OffsetDateTime,
) -> Result<(time::OffsetDateTime, time::OffsetDateTime), String> {
    use time::macros::format_description as fd;
    use time::{PrimitiveDateTime, UtcOffset};
    let s = s.trim();
    let bad = || {
        format!(
            "{s:?} is not a time: write 2026-12-01, 2026-12-01T10:00, an RFC 3339 time, or an age \
             like 12h, 3d or 2w"
        )
    };
    if s.chars().next().is_some_and(|c| c.is_ascii_digit())
        && s.ends_with(|c: char| c.is_ascii_alphabetic())
        && !s.contains('-')
    {
        let (num, unit) = s.split_at(s.len() - 1);
        let n: i64 = num.parse().map_err(|_| bad())?;
        let secs = match unit {
            "s" => Some(n),
            "m" => n.checked_mul(60),
            "h" => n.checked_mul(3600),
            "d" => n.checked_mul(86_400),
            "w" => n.checked_mul(7 * 86_400),
            _ => None,
        }
        .ok_or_else(bad)?;
        let t = now
            .checked_sub(time::Duration::seconds(secs))
            .ok_or_else(bad)?;
        return Ok((t, t));
    }
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Ok((t, t));
    }
    let s2 = s.replacen(' ', "T", 1);
    for f in [
        fd!("[year]-[month]-[day]T[hour]:[minute]:[second]"),
        fd!("[year]-[month]-[day]T[hour]:[minute]"),
    ] {
        if let Ok(t) = PrimitiveDateTime::parse(&s2, &f) {
            let t = t.assume_offset(UtcOffset::UTC);
            return Ok((t, t));
        }
    }
    let day = time::Date::parse(s, &fd!("[year]-[month]-[day]")).map_err(|_| bad())?;
    let start = day.midnight().assume_offset(UtcOffset::UTC);
    let end = start + time::Duration::days(1) - time::Duration::nanoseconds(1);
    Ok((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn when_takes_dates_times_and_ages() {
        let now = parse_time("2026-12-07T12:00:00Z").unwrap();
        let one = |s: &str| parse_when(s, now).map(|(a, b)| (format_time(a), format_time(b)));
        let at = |t: &str| Ok((t.to_string(), t.to_string()));
        assert_eq!(one("3d"), at("2026-12-04T12:00:00.000000000Z"));
        assert_eq!(one("12h"), at("2026-12-07T00:00:00.000000000Z"));
        assert_eq!(one("2w"), at("2026-11-23T12:00:00.000000000Z"));
        assert_eq!(
            one("2026-12-01T10:00"),
            at("2026-12-01T10:00:00.000000000Z")
        );
        assert_eq!(
            one("2026-12-01 10:00:30"),
            at("2026-12-01T10:00:30.000000000Z")
        );
        assert_eq!(
            one("2026-12-01T12:00:00+02:00"),
            at("2026-12-01T10:00:00.000000000Z")
        );
        assert_eq!(
            one("2026-12-01"),
            Ok((
                "2026-12-01T00:00:00.000000000Z".into(),
                "2026-12-01T23:59:59.999999999Z".into()
            ))
        );
        for bad in [
            "",
            "3x",
            "yesterday",
            "2026-13-01",
            "d",
            "99999999999999999w",
            "1-2d",
        ] {
            assert!(one(bad).is_err(), "{bad:?} accepted");
        }
    }
}
