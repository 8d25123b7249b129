//! Usage rating for Backbone: turning metered usage into billable amounts, exactly.
//!
//! Its one job is the arithmetic of billing, with no I/O: the usage-rater processor keeps the
//! state and moves the records.
//!
//! - [`Accumulator`]: the period-to-date state of one meter, from which every aggregation (SUM,
//!   COUNT, MIN, MAX, AVG, UNIQUE_COUNT, LATEST) is read.
//! - [`price`]: what an aggregate costs under a charge (FLAT, UNIT, PACKAGE, GRADUATED, VOLUME,
//!   PERCENTAGE, with free units and minimum and maximum spend), in exact decimals.
//! - [`rate`]: the cumulative delta of one event, `price(after) - price(before)`. Tiers are
//!   non-linear over the period, so only the period-to-date view prices an event right; the
//!   deltas of any sequence of events add up to the price of the total.
//! - [`RatingKey::rating_id`]: the content-derived id of a line, the same on every replay.
//! - [`PeriodPlan`]: billing periods anchored to the subscription.
//! - [`card_for_period`]: the rate-card version that prices a period.
//! - [`fee_for`]: a recurring fee for a period, pro rata by the days it was billable.

mod card;
mod error;
mod fee;
mod line;
mod meter;
mod period;
mod price;

pub use card::{card_for_period, rate_card_key, rate_card_prefix};
pub use error::RatingError;
pub use fee::{billable_days, fee_for};
pub use line::{
    content_id, rate, window_aggregate_id, window_start, Delta, RatingKey, WINDOW_MICROS,
};
pub use meter::{Accumulator, MeterEvent};
pub use period::{BillingPeriod, PeriodError, PeriodPlan};
pub use price::price;
