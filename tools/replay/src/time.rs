//! Instants as the tool reads them on its command line (RFC 3339, a date, or a duration ago),
//! and durations as it prints them. Milliseconds since the epoch in between (Kafka's record
//! timestamp unit); `backbone-calendar` does the calendar.

use std::time::Duration;

use backbone_calendar::{parse_date, parse_rfc3339_ms, DAY_MS};

/// What [`parse_instant`] accepts, for error messages.
pub const INSTANT_FORMS: &str =
    "an RFC 3339 time like 2026-11-27T03:00:00Z or 2026-11-27T04:00:00+01:00, a date like \
     2026-11-27 (midnight UTC), or a duration ago like 90m or 2h";

/// Parses an instant given on the command line, relative to `now_ms` for durations ago.
/// Returns milliseconds since the epoch, or `None` when `text` is none of the accepted forms.
pub fn parse_instant(text: &str, now_ms: i64) -> Option<i64> {
    let text = text.trim();
    if let Some(ms) = parse_rfc3339_ms(text) {
        return Some(ms);
    }
    if let Some(days) = parse_date(text) {
        return i64::from(days).checked_mul(DAY_MS);
    }
    let ago = humantime::parse_duration(text).ok()?;
    now_ms.checked_sub(i64::try_from(ago.as_millis()).ok()?)
}

/// A duration for humans: `1.2s`, `3m 05s`, `2h 10m`.
pub fn format_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs < 60 {
        format!("{:.1}s", duration.as_secs_f64())
    } else if secs < 3_600 {
        format!("{}m {:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h {:02}m", secs / 3_600, secs / 60 % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_may_be_dates_or_durations_ago() {
        let now = 1_709_210_096_789;
        assert_eq!(parse_instant("2024-02-29", now), Some(1_709_164_800_000));
        assert_eq!(parse_instant("2h", now), Some(now - 7_200_000));
        assert_eq!(parse_instant("90m", now), Some(now - 5_400_000));
        assert_eq!(parse_instant(" 2024-02-29T12:34:56.789Z ", now), Some(now));
        assert_eq!(parse_instant("last tuesday", now), None);
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(format_duration(Duration::from_millis(1_250)), "1.2s");
        assert_eq!(format_duration(Duration::from_secs(185)), "3m 05s");
        assert_eq!(format_duration(Duration::from_secs(7_800)), "2h 10m");
    }
}
