//! Cumulative-delta lines: what one event changes in a period's amount, and the id that names
//! the change the same way on every replay.

use backbone_schemas::types::{Amount, Quantity, RateCharge};
use sha2::{Digest, Sha256};

use crate::meter::Accumulator;
use crate::price::price;
use crate::RatingError;

/// The effect of one event on one accumulator: period-to-date quantity and price before and
/// after, and the difference to bill. Over any sequence of events the deltas add up to the
/// price of the final aggregate, whatever the tiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delta {
    /// Aggregate before the event.
    pub quantity_before: Quantity,
    /// Aggregate after it.
    pub quantity_after: Quantity,
    /// Price of `quantity_before`.
    pub amount_before: Amount,
    /// Price of `quantity_after`.
    pub amount_after: Amount,
    /// `amount_after - amount_before`: what this event adds to (or, for MAX, LATEST and the
    /// like, takes from) the period's bill.
    pub delta: Amount,
}

/// Rates the change from `before` to `after` under `charge`.
pub fn rate(
    charge: &RateCharge,
    before: &Accumulator,
    after: &Accumulator,
) -> Result<Delta, RatingError> {
    let quantity_before = before.aggregate(charge.aggregation, &charge.charge_id)?;
    let quantity_after = after.aggregate(charge.aggregation, &charge.charge_id)?;
    let amount_before = price(charge, quantity_before)?;
    let amount_after = price(charge, quantity_after)?;
    let delta = amount_after
        .checked_sub(amount_before)
        .ok_or_else(|| RatingError::Overflow {
            charge: charge.charge_id.clone(),
            what: "the delta",
        })?;
    Ok(Delta {
        quantity_before,
        quantity_after,
        amount_before,
        amount_after,
        delta,
    })
}

/// What names a rated line: the accumulator it changes and the input that changed it. The same
/// input rated again (a redelivery, a replay) gets the same id, which destinations use as
/// their idempotency key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RatingKey<'a> {
    /// Tenant.
    pub tenant_id: &'a str,
    /// Subscription rated.
    pub subscription_id: &'a str,
    /// Charge that priced the line.
    pub charge_id: &'a str,
    /// The charge's group values, `key=value` joined by `&`.
    pub group_key: &'a str,
    /// First day of the period the line is booked in.
    pub period_start: i32,
    /// The input's idempotency key, `tenant/source/event_id`.
    pub input: &'a str,
}

impl RatingKey<'_> {
    /// `rtg-` and the [`content_id`] of the fields.
    pub fn rating_id(&self) -> String {
        let period = self.period_start.to_string();
        content_id(
            "rtg-",
            &[
                self.tenant_id,
                self.subscription_id,
                self.charge_id,
                self.group_key,
                period.as_str(),
                self.input,
            ],
        )
    }
}

/// Length of a usage window (µs): an hour.
pub const WINDOW_MICROS: i64 = 3_600_000_000;

/// The start of the usage window holding the instant `at` (µs since the epoch).
pub fn window_start(at: i64) -> i64 {
    at.div_euclid(WINDOW_MICROS) * WINDOW_MICROS
}

/// The id of the hourly usage window of `meter_id` of a subscription that starts at
/// `window_start` (µs since the epoch): every revision of the window has it.
pub fn window_aggregate_id(
    tenant_id: &str,
    subscription_id: &str,
    meter_id: &str,
    window_start: i64,
) -> String {
    RatingKey {
        tenant_id,
        subscription_id,
        charge_id: "",
        group_key: meter_id,
        period_start: 0,
        input: &window_start.to_string(),
    }
    .rating_id()
    .replacen("rtg-", "agg-", 1)
}

/// `prefix` and the first 32 hex digits of SHA-256 over the length-prefixed `fields`: an id that
/// the same content always reproduces, so a replay yields the ids downstream already knows.
pub fn content_id(prefix: &str, fields: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for field in fields {
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field.as_bytes());
    }
    let digest = hasher.finalize();
    let mut id = String::with_capacity(prefix.len() + 32);
    id.push_str(prefix);
    for byte in &digest[..16] {
        id.push_str(&format!("{byte:02x}"));
    }
    id
}
