//! What a period-to-date quantity costs under one charge: the charge models, free units and
//! minimum and maximum spend, in exact decimal arithmetic.
//!
//! Scales follow the contracts: quantities carry 9 fraction digits, unit prices 12, amounts 6
//! and percentages 6. Products are formed exactly in `i128` and rounded once, half away from
//! zero, to the amount's 6 digits; a tier's flat fee is already an amount and is added exactly.

use backbone_schemas::types::{Amount, ChargeModel, PriceTier, Quantity, RateCharge};

use crate::RatingError;

const QUANTITY_SCALE: u32 = 9;
const UNIT_PRICE_SCALE: u32 = 12;
const AMOUNT_SCALE: u32 = 6;
const PERCENT_SCALE: u32 = 6;
/// Scale of quantity times unit price, before rounding to an amount.
const RAW_SCALE: u32 = QUANTITY_SCALE + UNIT_PRICE_SCALE;

/// The amount `quantity` (period to date, before free units) costs under `charge`.
///
/// No usage costs nothing: flat fees and minimum spend apply from the first usage of the
/// period, so a period's first rated line carries them and a period without usage has none.
/// Free units are deducted first; minimum and maximum spend bound the result last.
pub fn price(charge: &RateCharge, quantity: Quantity) -> Result<Amount, RatingError> {
    let used = quantity.unscaled().max(0);
    if used == 0 {
        return Ok(Amount::ZERO);
    }
    let free = non_negative(
        charge,
        "free_units",
        charge.free_units.map(Quantity::unscaled),
    )?
    .unwrap_or(0);
    let billable = (used - free).max(0);
    let overflow = |what| RatingError::Overflow {
        charge: charge.charge_id.clone(),
        what,
    };
    let amount = match charge.charge_model {
        ChargeModel::Flat => {
            required(charge, "FLAT", "flat_amount", charge.flat_amount)?.unscaled()
        }
        ChargeModel::Unit => {
            let price = unit_price(charge, "UNIT")?;
            round_down_scale(billable.checked_mul(price), RAW_SCALE - AMOUNT_SCALE)
                .ok_or_else(|| overflow("quantity times unit price"))?
        }
        ChargeModel::Package => {
            let price = unit_price(charge, "PACKAGE")?;
            let size = required(charge, "PACKAGE", "package_size", charge.package_size)?.unscaled();
            if size <= 0 {
                return Err(RatingError::BadValue {
                    charge: charge.charge_id.clone(),
                    field: "package_size",
                    reason: "must be more than 0",
                });
            }
            // A started package is billed in full.
            let packages = (billable + size - 1) / size;
            round_down_scale(packages.checked_mul(price), UNIT_PRICE_SCALE - AMOUNT_SCALE)
                .ok_or_else(|| overflow("packages times unit price"))?
        }
        ChargeModel::Graduated => graduated(charge, billable)?,
        ChargeModel::Volume => volume(charge, billable)?,
        ChargeModel::Percentage => {
            let percent =
                required(charge, "PERCENTAGE", "percentage", charge.percentage)?.unscaled();
            if percent < 0 {
                return Err(RatingError::BadValue {
                    charge: charge.charge_id.clone(),
                    field: "percentage",
                    reason: "must not be negative",
                });
            }
            // The aggregate is an amount in the card's currency; percent / 100.
            round_down_scale(
                billable.checked_mul(percent),
                QUANTITY_SCALE + PERCENT_SCALE + 2 - AMOUNT_SCALE,
            )
            .ok_or_else(|| overflow("aggregate times percentage"))?
        }
        ChargeModel::Unknown => {
            return Err(RatingError::Unsupported {
                charge: charge.charge_id.clone(),
                what: "an unknown charge model".to_owned(),
            })
        }
    };
    let minimum = non_negative(
        charge,
        "minimum_spend",
        charge.minimum_spend.map(Amount::unscaled),
    )?;
    let maximum = non_negative(
        charge,
        "maximum_spend",
        charge.maximum_spend.map(Amount::unscaled),
    )?;
    if let (Some(minimum), Some(maximum)) = (minimum, maximum) {
        if minimum > maximum {
            return Err(RatingError::BadValue {
                charge: charge.charge_id.clone(),
                field: "minimum_spend",
                reason: "must not exceed maximum_spend",
            });
        }
    }
    let amount = amount.max(minimum.unwrap_or(i128::MIN));
    let amount = amount.min(maximum.unwrap_or(i128::MAX));
    Amount::from_unscaled(amount).map_err(|_| overflow("the amount"))
}

/// Each tier prices the units that fall into it; a tier's flat fee is due once usage enters it.
fn graduated(charge: &RateCharge, billable: i128) -> Result<i128, RatingError> {
    let tiers = checked_tiers(charge)?;
    let mut raw = 0i128;
    let mut fees = 0i128;
    let mut below = 0i128;
    for tier in tiers {
        if billable <= below {
            break;
        }
        let upper = tier.up_to.map_or(i128::MAX, Quantity::unscaled);
        let units = billable.min(upper) - below;
        raw = units
            .checked_mul(tier_price(charge, tier)?)
            .and_then(|part| raw.checked_add(part))
            .ok_or_else(|| overflow(charge, "a tier's units times its price"))?;
        fees += tier_fee(charge, tier)?;
        below = upper;
    }
    round_down_scale(Some(raw), RAW_SCALE - AMOUNT_SCALE)
        .and_then(|amount| amount.checked_add(fees))
        .ok_or_else(|| overflow(charge, "the graduated amount"))
}

/// The tier the whole quantity reaches prices every unit, plus that tier's flat fee.
fn volume(charge: &RateCharge, billable: i128) -> Result<i128, RatingError> {
    let tiers = checked_tiers(charge)?;
    if billable == 0 {
        return Ok(0);
    }
    let tier = tiers
        .iter()
        .find(|tier| tier.up_to.is_none_or(|up_to| billable <= up_to.unscaled()))
        .ok_or_else(|| RatingError::BadTiers {
            charge: charge.charge_id.clone(),
            reason: "do not cover the quantity",
        })?;
    let fee = tier_fee(charge, tier)?;
    round_down_scale(
        billable.checked_mul(tier_price(charge, tier)?),
        RAW_SCALE - AMOUNT_SCALE,
    )
    .and_then(|amount| amount.checked_add(fee))
    .ok_or_else(|| overflow(charge, "the volume amount"))
}

/// Tiers must ascend strictly, and only the last, which must exist, is unbounded.
fn checked_tiers(charge: &RateCharge) -> Result<&[PriceTier], RatingError> {
    let bad = |reason| RatingError::BadTiers {
        charge: charge.charge_id.clone(),
        reason,
    };
    let Some((last, bounded)) = charge.tiers.split_last() else {
        return Err(bad("are missing"));
    };
    if last.up_to.is_some() {
        return Err(bad("must end with an unbounded tier"));
    }
    let mut previous = 0i128;
    for tier in bounded {
        let Some(up_to) = tier.up_to else {
            return Err(bad("may leave only the last one unbounded"));
        };
        if up_to.unscaled() <= previous {
            return Err(bad("must have strictly increasing, positive bounds"));
        }
        previous = up_to.unscaled();
    }
    Ok(&charge.tiers)
}

fn tier_price(charge: &RateCharge, tier: &PriceTier) -> Result<i128, RatingError> {
    Ok(non_negative(charge, "tiers.unit_price", Some(tier.unit_price.unscaled()))?.unwrap_or(0))
}

fn tier_fee(charge: &RateCharge, tier: &PriceTier) -> Result<i128, RatingError> {
    Ok(non_negative(
        charge,
        "tiers.flat_fee",
        tier.flat_fee.map(Amount::unscaled),
    )?
    .unwrap_or(0))
}

fn unit_price(charge: &RateCharge, model: &'static str) -> Result<i128, RatingError> {
    let price = required(charge, model, "unit_price", charge.unit_price)?.unscaled();
    non_negative(charge, "unit_price", Some(price)).map(|p| p.unwrap_or(0))
}

fn required<T>(
    charge: &RateCharge,
    model: &'static str,
    field: &'static str,
    value: Option<T>,
) -> Result<T, RatingError> {
    value.ok_or_else(|| RatingError::MissingField {
        charge: charge.charge_id.clone(),
        model,
        field,
    })
}

fn non_negative(
    charge: &RateCharge,
    field: &'static str,
    value: Option<i128>,
) -> Result<Option<i128>, RatingError> {
    match value {
        Some(v) if v < 0 => Err(RatingError::BadValue {
            charge: charge.charge_id.clone(),
            field,
            reason: "must not be negative",
        }),
        other => Ok(other),
    }
}

fn overflow(charge: &RateCharge, what: &'static str) -> RatingError {
    RatingError::Overflow {
        charge: charge.charge_id.clone(),
        what,
    }
}

/// `value / 10^digits`, rounded half away from zero; `None` passes through.
pub(crate) fn round_down_scale(value: Option<i128>, digits: u32) -> Option<i128> {
    let value = value?;
    let divisor = 10i128.checked_pow(digits)?;
    let quotient = value / divisor;
    let remainder = value % divisor;
    if remainder.unsigned_abs() * 2 >= divisor.unsigned_abs() {
        Some(quotient + value.signum())
    } else {
        Some(quotient)
    }
}
