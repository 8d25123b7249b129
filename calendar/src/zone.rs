//! Calendar days in a legal entity's time zone (an IANA name such as `Europe/Berlin`): the
//! local day an instant falls on, and the instant a local day begins. The rules are built into
//! the binary, so a host without a time zone database computes the same days as any other.

use jiff::tz::TimeZone;
use jiff::Timestamp;

use crate::{civil_from_days, days_from_civil};

/// Why a zone or a day in it cannot be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZoneError {
    /// The name is not a time zone of the database.
    #[error("time_zone \"{name}\" is not an IANA time zone (like \"Europe/Berlin\"): {message}")]
    Unknown {
        /// The name given.
        name: String,
        /// What the database said.
        message: String,
    },
    /// The instant or day is outside what the calendar covers.
    #[error("{0} is outside the range of the calendar")]
    OutOfRange(String),
}

/// A time zone, by its IANA name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    name: String,
    rules: TimeZone,
}

impl Zone {
    /// UTC.
    pub fn utc() -> Self {
        Self {
            name: "UTC".to_owned(),
            rules: TimeZone::UTC,
        }
    }

    /// The zone called `name`.
    pub fn named(name: &str) -> Result<Self, ZoneError> {
        let rules = TimeZone::get(name).map_err(|e| ZoneError::Unknown {
            name: name.to_owned(),
            message: e.to_string(),
        })?;
        Ok(Self {
            name: name.to_owned(),
            rules,
        })
    }

    /// The zone's IANA name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The local day (days since 1970-01-01) the instant `micros` (µs since the epoch) falls on.
    pub fn day_of(&self, micros: i64) -> Result<i32, ZoneError> {
        let instant = Timestamp::from_microsecond(micros)
            .map_err(|_| ZoneError::OutOfRange(format!("instant {micros} µs")))?;
        let date = self.rules.to_datetime(instant).date();
        let month = u32::try_from(date.month()).unwrap_or(1);
        let day = u32::try_from(date.day()).unwrap_or(1);
        Ok(days_from_civil(i64::from(date.year()), month, day))
    }

    /// The first instant (µs since the epoch) of local day `day`: its midnight, or the end of
    /// a clock change that skipped it.
    pub fn start_of(&self, day: i32) -> Result<i64, ZoneError> {
        let (year, month, dom) = civil_from_days(day);
        let out_of_range = || ZoneError::OutOfRange(format!("day {day}"));
        let date = jiff::civil::Date::new(
            i16::try_from(year).map_err(|_| out_of_range())?,
            i8::try_from(month).map_err(|_| out_of_range())?,
            i8::try_from(dom).map_err(|_| out_of_range())?,
        )
        .map_err(|_| out_of_range())?;
        let start = date
            .to_zoned_datetime(self.rules.clone())
            .map_err(|_| out_of_range())?;
        Ok(start.timestamp().as_microsecond())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{format_date, parse_rfc3339_ms};

    fn micros(text: &str) -> i64 {
        parse_rfc3339_ms(text).expect("instant") * 1_000
    }

    #[test]
    fn an_instant_falls_on_the_local_day_of_the_zone() {
        let berlin = Zone::named("Europe/Berlin").expect("zone");
        // Winter time (UTC+1; summer time ended on 25 October): 23:30 UTC on 31 October is
        // 00:30 on 1 November in Berlin.
        for (instant, berlin_day, utc_day) in [
            ("2026-10-31T22:30:00Z", "2026-10-31", "2026-10-31"),
            ("2026-10-31T23:30:00Z", "2026-11-01", "2026-10-31"),
            // Summer (UTC+2): 22:30 UTC on 31 May is 00:30 on 1 June.
            ("2026-05-31T21:59:59Z", "2026-05-31", "2026-05-31"),
            ("2026-05-31T22:30:00Z", "2026-06-01", "2026-05-31"),
        ] {
            let at = micros(instant);
            assert_eq!(
                format_date(berlin.day_of(at).expect("day")),
                berlin_day,
                "{instant}"
            );
            assert_eq!(
                format_date(Zone::utc().day_of(at).expect("day")),
                utc_day,
                "{instant}"
            );
        }
        let new_york = Zone::named("America/New_York").expect("zone");
        assert_eq!(
            format_date(
                new_york
                    .day_of(micros("2026-12-01T03:00:00Z"))
                    .expect("day")
            ),
            "2026-11-30"
        );
    }

    #[test]
    fn a_local_day_begins_at_its_midnight_in_the_zone() {
        let berlin = Zone::named("Europe/Berlin").expect("zone");
        let day = crate::parse_date("2026-11-01").expect("date");
        assert_eq!(
            berlin.start_of(day).expect("start"),
            micros("2026-10-31T23:00:00Z")
        );
        assert_eq!(
            Zone::utc().start_of(day).expect("start"),
            micros("2026-11-01T00:00:00Z")
        );
        // Where a clock change skips midnight (Havana's spring forward at 00:00), the day
        // begins when the clock resumes.
        let havana = Zone::named("America/Havana").expect("zone");
        let skipped = crate::parse_date("2026-03-08").expect("date");
        assert_eq!(
            havana.start_of(skipped).expect("start"),
            micros("2026-03-08T05:00:00Z")
        );
    }

    #[test]
    fn an_unknown_zone_is_named() {
        let err = Zone::named("Europe/Atlantis").expect_err("unknown");
        assert!(err.to_string().contains("\"Europe/Atlantis\""), "{err}");
    }
}
