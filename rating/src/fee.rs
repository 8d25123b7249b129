//! Recurring fees: what a plan's fixed fee bills for one billing period, pro rata by days when
//! the subscription was billable for part of it.

use backbone_schemas::types::{Amount, RecurringFee};

use crate::{BillingPeriod, RatingError};

/// The days of `period` a subscription owes its recurring fees for: those from `from` (its
/// first billable day) to `until` (the day after its last; none while open-ended) that fall
/// inside the period.
pub fn billable_days(period: BillingPeriod, from: i32, until: Option<i32>) -> i32 {
    let start = period.start.max(from);
    let end = until.map_or(period.end, |until| until.min(period.end));
    (end - start).max(0)
}

/// What `fee` bills for `days` of `period`: its whole amount for the whole period, else its
/// amount times `days` over the period's length, rounded once, half away from zero, to the
/// amount's 6 digits (the rounding of every price).
pub fn fee_for(
    fee: &RecurringFee,
    period: BillingPeriod,
    days: i32,
) -> Result<Amount, RatingError> {
    let length = period.end - period.start;
    if length <= 0 {
        return Err(RatingError::BadValue {
            charge: fee.fee_id.clone(),
            field: "period",
            reason: "must end after it starts",
        });
    }
    let days = days.clamp(0, length);
    let overflow = || RatingError::Overflow {
        charge: fee.fee_id.clone(),
        what: "fee times days",
    };
    let scaled = fee
        .amount
        .unscaled()
        .checked_mul(i128::from(days))
        .ok_or_else(overflow)?;
    let length = i128::from(length);
    let (quotient, remainder) = (scaled / length, scaled % length);
    let rounded = if remainder.abs() * 2 >= length {
        quotient + scaled.signum()
    } else {
        quotient
    };
    Amount::from_unscaled(rounded).map_err(|_| overflow())
}

#[cfg(test)]
mod tests {
    use super::*;
    use backbone_calendar::days_from_civil;

    fn fee(amount: &str) -> RecurringFee {
        RecurringFee {
            fee_id: "platform".into(),
            name: "Platform fee".into(),
            product_id: None,
            amount: amount.parse().expect("amount"),
        }
    }

    fn october() -> BillingPeriod {
        BillingPeriod {
            start: days_from_civil(2026, 10, 1),
            end: days_from_civil(2026, 11, 1),
        }
    }

    #[test]
    fn the_days_billed_are_those_of_the_period_the_subscription_was_billable() {
        let (oct_1, nov_1) = (october().start, october().end);
        assert_eq!(billable_days(october(), oct_1 - 40, None), 31);
        assert_eq!(
            billable_days(october(), oct_1 + 10, None),
            21,
            "from the 11th"
        );
        assert_eq!(
            billable_days(october(), oct_1, Some(oct_1 + 19)),
            19,
            "to the 19th"
        );
        assert_eq!(billable_days(october(), oct_1 + 5, Some(oct_1 + 7)), 2);
        assert_eq!(billable_days(october(), nov_1, None), 0, "starts after it");
        assert_eq!(
            billable_days(october(), oct_1 - 9, Some(oct_1)),
            0,
            "ended before it"
        );
        assert_eq!(billable_days(october(), oct_1 + 9, Some(oct_1 + 3)), 0);
    }

    #[test]
    fn a_part_of_a_period_bills_its_share_of_the_fee_rounded_half_away_from_zero() {
        let amount = |fee_amount: &str, days| {
            fee_for(&fee(fee_amount), october(), days)
                .expect("fee")
                .to_string()
        };
        assert_eq!(
            amount("30", 31),
            "30.000000",
            "a whole period, the whole fee"
        );
        // 30 × 21 / 31 = 20.3225806…
        assert_eq!(amount("30", 21), "20.322581");
        assert_eq!(amount("0.000001", 16), "0.000001", "0.516… rounds up");
        assert_eq!(amount("0.000001", 15), "0.000000", "0.483… rounds down");
        assert_eq!(
            amount("-0.000001", 16),
            "-0.000001",
            "a discount rounds alike"
        );
        let november = BillingPeriod {
            start: october().end,
            end: days_from_civil(2026, 12, 1),
        };
        let half = |fee_amount: &str| {
            fee_for(&fee(fee_amount), november, 15)
                .expect("fee")
                .to_string()
        };
        assert_eq!(half("0.000001"), "0.000001", "exactly half: away from zero");
        assert_eq!(half("-0.000001"), "-0.000001");
        assert_eq!(amount("30", 0), "0.000000");
        assert_eq!(amount("30", 40), "30.000000", "never more than the period");
        let empty = BillingPeriod {
            start: october().start,
            end: october().start,
        };
        assert!(fee_for(&fee("30"), empty, 1).is_err());
    }
}
