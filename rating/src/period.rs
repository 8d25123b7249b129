//! Billing periods anchored to a subscription: calendar months, quarters or years that start on
//! the subscription's anchor day (the month's last day when the month is shorter).
//!
//! Days are counted from 1970-01-01, as the contracts' `date` fields are; `backbone-calendar`
//! converts them to and from calendar dates.

use backbone_calendar::{civil_from_days, days_from_civil, days_in_month};
use backbone_schemas::types::BillingInterval;

/// One billing period: `[start, end)` in days since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BillingPeriod {
    /// First day, inclusive.
    pub start: i32,
    /// Day after the last, exclusive.
    pub end: i32,
}

impl BillingPeriod {
    /// Whether `day` falls inside.
    pub fn contains(&self, day: i32) -> bool {
        self.start <= day && day < self.end
    }
}

/// How a subscription's periods are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeriodPlan {
    /// A period start of the subscription (its current one, say): the phase of the series.
    pub reference_start: i32,
    /// Day of the month periods start on, 1 to 31.
    pub anchor_day: u32,
    /// Months per period.
    pub months: u32,
}

/// Why a period plan cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeriodError {
    /// The anchor day is not 1 to 31.
    #[error("billing_anchor_day {0} is not a day of the month (1 to 31)")]
    AnchorDay(i32),
    /// The interval is one this rater does not know.
    #[error("billing_interval is not one of MONTHLY, QUARTERLY, ANNUAL")]
    Interval,
}

impl PeriodPlan {
    /// The plan of a subscription with these fields.
    pub fn new(
        reference_start: i32,
        anchor_day: i32,
        interval: BillingInterval,
    ) -> Result<Self, PeriodError> {
        let anchor_day = u32::try_from(anchor_day)
            .ok()
            .filter(|d| (1..=31).contains(d))
            .ok_or(PeriodError::AnchorDay(anchor_day))?;
        let months = match interval {
            BillingInterval::Monthly => 1,
            BillingInterval::Quarterly => 3,
            BillingInterval::Annual => 12,
            BillingInterval::Unknown => return Err(PeriodError::Interval),
        };
        Ok(Self {
            reference_start,
            anchor_day,
            months,
        })
    }

    /// The period that contains `day`.
    pub fn period_of(&self, day: i32) -> BillingPeriod {
        let reference = month_index(self.reference_start);
        let months = i64::from(self.months);
        // Periods before or after the reference keep its phase.
        let mut k = (month_index(day) - reference).div_euclid(months);
        loop {
            let period = self.nth(reference, k);
            if day < period.start {
                k -= 1;
            } else if day >= period.end {
                k += 1;
            } else {
                return period;
            }
        }
    }

    /// The period after `period`.
    pub fn next(&self, period: BillingPeriod) -> BillingPeriod {
        self.period_of(period.end)
    }

    fn nth(&self, reference: i64, k: i64) -> BillingPeriod {
        let first = reference + k * i64::from(self.months);
        BillingPeriod {
            start: self.anchor_in(first),
            end: self.anchor_in(first + i64::from(self.months)),
        }
    }

    /// The anchor day of month `index` (years times 12 plus month from 0).
    fn anchor_in(&self, index: i64) -> i32 {
        let year = index.div_euclid(12);
        let month = u32::try_from(index.rem_euclid(12) + 1).unwrap_or(1);
        let day = self.anchor_day.min(days_in_month(year, month));
        days_from_civil(year, month, day)
    }
}

/// Years times 12 plus the month from 0, of `day`.
fn month_index(day: i32) -> i64 {
    let (year, month, _) = civil_from_days(day);
    year * 12 + i64::from(month) - 1
}
