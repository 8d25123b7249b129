//! Dates and instants as Backbone's contracts carry them: a `date` is a day number (days since
//! 1970-01-01), a `timestamp-micros` microseconds since the epoch, both in the proleptic
//! Gregorian calendar in UTC; [`Zone`] gives the local day of an instant in a legal entity's
//! time zone. The one copy of the calendar arithmetic in the workspace, and the one reading of
//! the wall clock as a number.
//!
//! Day numbers convert to dates with Howard Hinnant's `days_from_civil` / `civil_from_days`
//! algorithms (public domain, <https://howardhinnant.github.io/date_algorithms.html>): years
//! counted from March, so that the leap day ends them, in eras of 400 years.

use std::time::{SystemTime, UNIX_EPOCH};

pub mod zone;

pub use zone::{Zone, ZoneError};

/// Microseconds in a day.
pub const DAY_MICROS: i64 = 86_400_000_000;
/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;

/// Whether `year` has a 29 February.
pub fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

/// Days in `month` (1 to 12) of `year`.
pub fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Day number of a date; saturates at the ends of `i32` (some 5.8 million years away).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i32 {
    let days = day_number(year, i64::from(month), i64::from(day));
    i32::try_from(days).unwrap_or(if days < 0 { i32::MIN } else { i32::MAX })
}

/// Date (year, month 1 to 12, day 1 to 31) of a day number.
pub fn civil_from_days(days: i32) -> (i64, u32, u32) {
    let (year, month, day) = civil(i64::from(days));
    // Both are in range by construction.
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

/// The day number holding `micros` since the epoch.
pub fn day_of_micros(micros: i64) -> i32 {
    let day = micros.div_euclid(DAY_MICROS);
    i32::try_from(day).unwrap_or(if day < 0 { i32::MIN } else { i32::MAX })
}

/// The month holding day `days`: its first day and the first day of the next month.
pub fn month_bounds(days: i32) -> (i32, i32) {
    let (year, month, _) = civil_from_days(days);
    let start = days_from_civil(year, month, 1);
    let end = if month == 12 {
        days_from_civil(year + 1, 1, 1)
    } else {
        days_from_civil(year, month + 1, 1)
    };
    (start, end)
}

/// A day number as `2026-11-27`.
pub fn format_date(days: i32) -> String {
    let (year, month, day) = civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02}")
}

/// The month holding a day number, as `2026-11`.
pub fn format_month(days: i32) -> String {
    let (year, month, _) = civil_from_days(days);
    format!("{year:04}-{month:02}")
}

/// `2026-11-27` as its day number; `None` for anything else, an impossible date included.
pub fn parse_date(text: &str) -> Option<i32> {
    i32::try_from(parse_day_number(text)?).ok()
}

/// `ms` since the epoch as RFC 3339 UTC with milliseconds: `2026-11-27T03:00:00.000Z`.
pub fn format_rfc3339_ms(ms: i64) -> String {
    let in_day = ms.rem_euclid(DAY_MS);
    let (year, month, day) = civil(ms.div_euclid(DAY_MS));
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1_000 % 60,
        in_day % 1_000
    )
}

/// An RFC 3339 date-time (`T`, `t` or a space between date and time; `Z`, `z` or `±HH:MM`;
/// any number of fraction digits, kept to the millisecond) as milliseconds since the epoch.
/// A leap second reads as the last millisecond of its minute.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    if text.len() < 20 || !text.is_char_boundary(10) || !text.is_char_boundary(11) {
        return None;
    }
    let days = parse_day_number(&text[..10])?;
    if !matches!(text.as_bytes()[10], b'T' | b't' | b' ') {
        return None;
    }
    let rest = &text[11..];
    if rest.len() < 9 || !rest.is_char_boundary(8) {
        return None;
    }
    let clock = &rest.as_bytes()[..8];
    if clock[2] != b':' || clock[5] != b':' {
        return None;
    }
    let hour = digits(&rest[0..2])?;
    let minute = digits(&rest[3..5])?;
    let second = digits(&rest[6..8])?;
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &rest[8..];
    let mut millis = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let len = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if len == 0 {
            return None;
        }
        let kept = &fraction[..len.min(3)];
        millis = digits(kept)? * 10_i64.pow(3 - u32::try_from(kept.len()).ok()?);
        rest = &fraction[len..];
    }
    let offset_minutes = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            if rest.len() != 6 || rest.as_bytes()[3] != b':' {
                return None;
            }
            let hours = digits(&rest[1..3])?;
            let minutes = digits(&rest[4..6])?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            sign * (hours * 60 + minutes)
        }
    };
    let (second, extra) = if second == 60 { (59, 999) } else { (second, 0) };
    let local = days * DAY_MS
        + hour * 3_600_000
        + minute * 60_000
        + second * 1_000
        + millis
        + extra.min(999 - millis);
    Some(local - offset_minutes * 60_000)
}

/// Microseconds since the epoch, now.
pub fn now_micros() -> i64 {
    micros_of(SystemTime::now())
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    ms_of(SystemTime::now())
}

/// Microseconds since the epoch of `time`: negative before it, saturating far from it.
pub fn micros_of(time: SystemTime) -> i64 {
    signed(time, |d| d.as_micros())
}

/// Milliseconds since the epoch of `time`: negative before it, saturating far from it.
pub fn ms_of(time: SystemTime) -> i64 {
    signed(time, |d| d.as_millis())
}

fn signed(time: SystemTime, unit: impl Fn(std::time::Duration) -> u128) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(unit(after)).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(unit(before.duration()))
            .map(|v| -v)
            .unwrap_or(i64::MIN),
    }
}

fn day_number(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let shifted_month = (month + 9) % 12;
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    (year_of_era + era * 400 + i64::from(month <= 2), month, day)
}

/// `YYYY-MM-DD` as a day number, checked against the month's length.
fn parse_day_number(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return None;
    }
    let year = digits(&text[0..4])?;
    let month = u32::try_from(digits(&text[5..7])?).ok()?;
    let day = u32::try_from(digits(&text[8..10])?).ok()?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    Some(day_number(year, i64::from(month), i64::from(day)))
}

fn digits(text: &str) -> Option<i64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(format_date(19_782), "2024-02-29");
        assert_eq!(format_date(-1), "1969-12-31");
        assert_eq!(format_month(19_782), "2024-02");
        assert_eq!(day_of_micros(-1), -1);
        assert_eq!(day_of_micros(19_782 * DAY_MICROS + 5), 19_782);
    }

    #[test]
    fn dates_round_trip_over_centuries_and_only_real_dates_parse() {
        for days in -150_000..150_000 {
            let (year, month, day) = civil_from_days(days);
            assert_eq!(days_from_civil(year, month, day), days);
            if (0..10_000).contains(&year) {
                assert_eq!(parse_date(&format_date(days)), Some(days));
            }
        }
        for bad in [
            "2023-02-29",
            "2024-02-30",
            "2024-13-01",
            "2024-00-10",
            "2024-4-01",
            "",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
        assert_eq!(parse_date("2000-02-29"), Some(days_from_civil(2000, 2, 29)));
        assert_eq!(parse_date("1900-02-29"), None);
    }

    #[test]
    fn months_end_where_the_calendar_says() {
        let nov = days_from_civil(2026, 11, 27);
        assert_eq!(month_bounds(nov), (nov - 26, nov + 4));
        let dec = days_from_civil(2026, 12, 31);
        assert_eq!(month_bounds(dec), (dec - 30, dec + 1));
        let feb = days_from_civil(2028, 2, 10);
        let (start, end) = month_bounds(feb);
        assert_eq!(end - start, 29);
    }

    #[test]
    fn instants_format_and_parse_with_offsets_and_fractions() {
        assert_eq!(format_rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc3339_ms(1_709_210_096_789),
            "2024-02-29T12:34:56.789Z"
        );
        assert_eq!(format_rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
        for (text, ms) in [
            ("2024-02-29T12:34:56.789Z", 1_709_210_096_789),
            ("2024-02-29T13:34:56.789+01:00", 1_709_210_096_789),
            ("2024-02-29 07:04:56.789123-05:30", 1_709_210_096_789),
            ("2024-02-29t12:34:56z", 1_709_210_096_000),
            ("2024-02-29T12:34:56.7Z", 1_709_210_096_700),
            ("2024-02-29T12:34:60Z", 1_709_210_099_999),
        ] {
            assert_eq!(parse_rfc3339_ms(text), Some(ms), "{text}");
        }
        for bad in [
            "2024-02-30T00:00:00Z",
            "2024-02-29T24:00:00Z",
            "2024-02-29T12:34:56",
            "2024-02-29T12:34:56.Z",
            "2024-02-29T12:34:56+0100",
            "2024-02-29T12:34Z",
            "yesterday",
            "",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
        for days in (-150_000..150_000).step_by(7) {
            let ms = days * DAY_MS + 45_296_007;
            assert_eq!(parse_rfc3339_ms(&format_rfc3339_ms(ms)), Some(ms));
        }
    }

    #[test]
    fn the_clock_reads_signed_around_the_epoch() {
        let before = UNIX_EPOCH - std::time::Duration::from_millis(1_500);
        assert_eq!(ms_of(before), -1_500);
        assert_eq!(micros_of(before), -1_500_000);
        assert!(now_micros() / 1_000 >= now_ms() - 1_000);
    }
}
