//! A second reading of docs/rating.md's charge models, for expectations: written plainly over
//! the contract types and sharing no code with `backbone-rating`, so that an expectation priced
//! here can catch a pricing bug the rater has instead of repeating it.
//!
//! Scales as the contracts have them: quantities 9 fraction digits, unit prices 12, amounts 6,
//! percentages 6. Products are exact; one rounding, half away from zero, to the amount's 6
//! digits; tier flat fees are amounts and added as they are. The period priced is one with
//! usage, so its flat fees and minimum spend are due.

use backbone_schemas::types::{Amount, ChargeModel, Quantity, RateCharge};

const QUANTITY_ONE: i128 = 1_000_000_000;

/// What `charge` costs for `total` units used in a period, or `None` when the charge lacks what
/// its model needs or the price leaves the amount's range.
pub fn reference_price(charge: &RateCharge, total: Quantity) -> Option<Amount> {
    let free = charge.free_units.map_or(0, Quantity::unscaled);
    let billable = (total.unscaled() - free).max(0);
    let fees = |fee: Option<Amount>| fee.map_or(0, Amount::unscaled);
    // Quantity (9) times unit price (12): scale 21, rounded to 6.
    let at = |units: i128, price: i128| units.checked_mul(price);
    let amount = match charge.charge_model {
        ChargeModel::Flat => charge.flat_amount?.unscaled(),
        ChargeModel::Unit => round(at(billable, charge.unit_price?.unscaled())?, 15)?,
        ChargeModel::Package => {
            let size = charge.package_size?.unscaled();
            if size <= 0 {
                return None;
            }
            let started = (billable + size - 1) / size;
            // A package's price is per package: whole packages (scale 0) times scale 12.
            round(started.checked_mul(charge.unit_price?.unscaled())?, 6)?
        }
        ChargeModel::Graduated => {
            let (mut exact, mut flat, mut below) = (0i128, 0i128, 0i128);
            for tier in &charge.tiers {
                let top = tier.up_to.map_or(i128::MAX, Quantity::unscaled);
                let inside = billable.min(top) - below;
                if inside > 0 {
                    exact = exact.checked_add(at(inside, tier.unit_price.unscaled())?)?;
                    flat += fees(tier.flat_fee);
                }
                below = top;
                if billable <= top {
                    break;
                }
            }
            round(exact, 15)? + flat
        }
        ChargeModel::Volume => {
            let tier = charge
                .tiers
                .iter()
                .find(|t| t.up_to.is_none_or(|top| billable <= top.unscaled()))?;
            round(at(billable, tier.unit_price.unscaled())?, 15)? + fees(tier.flat_fee)
        }
        ChargeModel::Percentage => {
            // The billable quantity is an amount in the card's currency, at quantity scale (9);
            // percent at scale 6: scale 15, and over 100 two more digits to take off.
            round(billable.checked_mul(charge.percentage?.unscaled())?, 11)?
        }
        _ => return None,
    };
    let amount = amount.max(charge.minimum_spend.map_or(i128::MIN, Amount::unscaled));
    let amount = amount.min(charge.maximum_spend.map_or(i128::MAX, Amount::unscaled));
    Amount::from_unscaled(amount).ok()
}

/// `value` at `from` more fraction digits than an amount, rounded half away from zero.
fn round(value: i128, from: u32) -> Option<i128> {
    let divisor = 10i128.checked_pow(from)?;
    let half = divisor / 2;
    Some(if value >= 0 {
        (value + half) / divisor
    } else {
        -((-value + half) / divisor)
    })
}

/// `units` whole units as a quantity.
pub fn units(units: i64) -> Quantity {
    Quantity::from_unscaled(i128::from(units) * QUANTITY_ONE).unwrap_or(Quantity::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use backbone_schemas::types::{MeterAggregation, PriceTier};

    fn charge(model: ChargeModel, tiers: &[(Option<i64>, &str)]) -> RateCharge {
        RateCharge {
            charge_id: "c".into(),
            name: "c".into(),
            meter_id: "m".into(),
            aggregation: MeterAggregation::Sum,
            charge_model: model,
            flat_amount: None,
            unit_price: None,
            package_size: None,
            percentage: None,
            free_units: None,
            minimum_spend: None,
            maximum_spend: None,
            tiers: tiers
                .iter()
                .map(|(up_to, price)| PriceTier {
                    up_to: up_to.map(units),
                    unit_price: price.parse().expect("price"),
                    flat_fee: None,
                })
                .collect(),
            group_by: Vec::new(),
        }
    }

    fn priced(charge: &RateCharge, quantity: i64) -> Amount {
        reference_price(charge, units(quantity)).expect("priced")
    }

    fn amount(text: &str) -> Amount {
        text.parse().expect("an amount")
    }

    /// Stripe's published tier examples (the figures docs/rating.md cites): fonts 1-5 at 7
    /// USD, 6-10 at 6.50, 11 and more at 6 (<https://docs.stripe.com/subscriptions/pricing-models/tiered-pricing>);
    /// and 5, 4, 3, 2, 1 USD above 5, 10, 15, 20 units (<https://stripe.com/docs/billing/subscriptions/tiers>).
    #[test]
    fn the_published_examples() {
        let fonts = [(Some(5), "7"), (Some(10), "6.5"), (None, "6")];
        assert_eq!(
            priced(&charge(ChargeModel::Volume, &fonts), 6),
            amount("39")
        );
        assert_eq!(
            priced(&charge(ChargeModel::Volume, &fonts), 20),
            amount("120")
        );
        assert_eq!(
            priced(&charge(ChargeModel::Graduated, &fonts), 6),
            amount("41.5")
        );
        assert_eq!(
            priced(&charge(ChargeModel::Graduated, &fonts), 25),
            amount("157.5")
        );
        let five = [
            (Some(5), "5"),
            (Some(10), "4"),
            (Some(15), "3"),
            (Some(20), "2"),
            (None, "1"),
        ];
        assert_eq!(
            priced(&charge(ChargeModel::Graduated, &five), 6),
            amount("29")
        );
    }

    #[test]
    fn the_other_models_free_units_and_spend_bounds() {
        let mut unit = charge(ChargeModel::Unit, &[]);
        unit.unit_price = Some("0.0015".parse().expect("price"));
        unit.free_units = Some(units(100));
        assert_eq!(priced(&unit, 1_100), amount("1.5"));
        assert_eq!(priced(&unit, 50), amount("0"));
        unit.minimum_spend = Some("2".parse().expect("amount"));
        assert_eq!(priced(&unit, 1_100), amount("2"));
        unit.maximum_spend = Some("1".parse().expect("amount"));
        assert_eq!(priced(&unit, 1_100), amount("1"));

        let mut package = charge(ChargeModel::Package, &[]);
        package.package_size = Some(units(10));
        package.unit_price = Some("3".parse().expect("price"));
        assert_eq!(priced(&package, 21), amount("9"), "three packages started");

        let mut flat = charge(ChargeModel::Flat, &[]);
        flat.flat_amount = Some("49".parse().expect("amount"));
        assert_eq!(priced(&flat, 1), amount("49"));

        let mut percent = charge(ChargeModel::Percentage, &[]);
        percent.percentage = Some("2.5".parse().expect("percent"));
        assert_eq!(priced(&percent, 200), amount("5"));

        // Half away from zero at the sixth digit.
        let mut tiny = charge(ChargeModel::Unit, &[]);
        tiny.unit_price = Some("0.0000005".parse().expect("price"));
        assert_eq!(priced(&tiny, 1), amount("0.000001"));
    }
}
