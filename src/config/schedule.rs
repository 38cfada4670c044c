//! When each volume is backed up: the schedule grammar (`hourly`, `daily`, `weekly`, an
//! interval such as `6h`, or `off`), where a volume's schedule comes from (config, then a
//! `volguard.schedule` label on the volume or on a container mounting it, then the default),
//! and the next run time. Pure, with the clock passed in, so it is tested without waiting.

use std::time::Duration;

use serde::Deserialize;

/// How often something runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    Every(Duration),
    Off,
}

impl Schedule {
    pub fn parse(s: &str) -> Result<Schedule, String> {
        let every = |secs| Ok(Schedule::Every(Duration::from_secs(secs)));
        match s.trim() {
            "hourly" => every(3600),
            "daily" => every(86_400),
            "weekly" => every(7 * 86_400),
            "off" | "never" => Ok(Schedule::Off),
            other => match crate::fmt::parse_grace(other) {
                Ok(d) if d.is_zero() => Err(format!("{s:?}: an interval must be longer than 0")),
                Ok(d) => Ok(Schedule::Every(d)),
                Err(_) => Err(format!(
                    "{s:?} is not a schedule: use hourly, daily, weekly, off, or an interval like 30m, 6h, 2d"
                )),
            },
        }
    }

    pub fn interval(&self) -> Option<Duration> {
        match self {
            Schedule::Every(d) => Some(*d),
            Schedule::Off => None,
        }
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schedule::Off => f.write_str("off"),
            Schedule::Every(d) => match d.as_secs() {
                3600 => f.write_str("hourly"),
                86_400 => f.write_str("daily"),
                604_800 => f.write_str("weekly"),
                s => write!(f, "every {s}s"),
            },
        }
    }
}

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Schedule::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// After a failed run, the next try comes after this long (or the interval, if shorter):
/// soon enough to matter, rare enough not to hammer a broken repository.
pub const RETRY_AFTER: Duration = Duration::from_secs(600);

/// When a volume is due next, in Unix seconds. `last_success` is the newest snapshot's time
/// (or None), `last_failure` the last failed attempt, `jitter` this volume's random offset,
/// `started` when the agent started.
pub fn next_run(
    schedule: Schedule,
    last_success: Option<f64>,
    last_failure: Option<f64>,
    jitter: Duration,
    started: f64,
) -> Option<f64> {
    let interval = schedule.interval()?.as_secs_f64();
    let jitter = jitter.as_secs_f64().min(interval);
    let regular = match last_success {
        Some(t) => t + interval + jitter,
        // Never backed up: soon after start, spread by the jitter.
        None => started + jitter,
    };
    Some(match last_failure {
        Some(f) if last_success.is_none_or(|s| f > s) => {
            regular.max(f + RETRY_AFTER.as_secs_f64().min(interval))
        }
        _ => regular,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammar() {
        assert_eq!(
            Schedule::parse("daily"),
            Ok(Schedule::Every(Duration::from_secs(86_400)))
        );
        assert_eq!(
            Schedule::parse("6h"),
            Ok(Schedule::Every(Duration::from_secs(21_600)))
        );
        assert_eq!(
            Schedule::parse("90"),
            Ok(Schedule::Every(Duration::from_secs(90)))
        );
        assert_eq!(Schedule::parse("off"), Ok(Schedule::Off));
        for bad in ["", "0s", "sometimes", "5w", "-1h"] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Schedule::parse("daily").unwrap().to_string(), "daily");
    }

    #[test]
    fn next_run_follows_the_last_success_and_retries_failures() {
        let daily = Schedule::parse("daily").unwrap();
        let j = Duration::from_secs(60);
        // Never backed up: at start plus jitter.
        assert_eq!(next_run(daily, None, None, j, 1000.0), Some(1060.0));
        // A day after the last success, plus jitter.
        assert_eq!(
            next_run(daily, Some(500.0), None, j, 1000.0),
            Some(500.0 + 86_400.0 + 60.0)
        );
        // A failure after it: retried ten minutes after the failure, not a day later...
        assert_eq!(
            next_run(daily, None, Some(2000.0), j, 1000.0),
            Some(2000.0 + 600.0)
        );
        // ...but never earlier than the regular time.
        assert_eq!(
            next_run(daily, Some(5000.0), Some(4000.0), j, 1000.0),
            Some(5000.0 + 86_400.0 + 60.0)
        );
        // Short intervals retry after the interval, and jitter never exceeds it.
        let fast = Schedule::parse("2s").unwrap();
        assert_eq!(next_run(fast, None, Some(10.0), j, 0.0), Some(12.0));
        assert_eq!(next_run(fast, Some(10.0), None, j, 0.0), Some(14.0));
        assert_eq!(next_run(Schedule::Off, None, None, j, 0.0), None);
    }
}
