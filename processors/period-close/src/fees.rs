//! The plan's recurring fees on a period's invoice, and whether a subscription goes on into
//! its next period: both read from the subscription's dates in its legal entity's time zone.
//!
//! A fee is billed for the days of the period the subscription was billable: from the later of
//! its start and its trial's end, to its end. A paused subscription, or one the reader cannot
//! read the status of, is billed no fee for a period closed in that state.

use std::sync::Arc;

use backbone_calendar::Zone;
use backbone_core::{ProcessError, State};
use backbone_rating::{billable_days, card_for_period, fee_for, rate_card_prefix, BillingPeriod};
use backbone_schemas::types::{Contract, RateCard, Subscription, SubscriptionStatus};
use backbone_schemas::WireCodec;

use crate::book::{FeeLine, PeriodBook};

/// The first day the subscription is billable (its start, or its trial's end) and the day
/// after its last (none while open-ended), as local days of `zone`.
fn billable_span(
    subscription: &Subscription,
    zone: &Zone,
) -> Result<(i32, Option<i32>), ProcessError> {
    let day = |micros: i64| {
        zone.day_of(micros).map_err(|e| {
            ProcessError::permanent(
                "contract_violation",
                format!("subscription `{}`: {e}", subscription.subscription_id),
            )
        })
    };
    let from = subscription
        .trial_ends_at
        .map_or(subscription.started_at, |trial| {
            trial.max(subscription.started_at)
        });
    // The day of an end at midnight is not a day of the subscription; any later instant is.
    let until = subscription
        .ends_at
        .map(|end| day(end.saturating_sub(1)).map(|last| last + 1))
        .transpose()?;
    Ok((day(from)?, until))
}

/// Whether `subscription` is billed on after the day `day` begins: not ended before it, nor
/// cancelled or expired without an end.
pub(crate) fn continues_on(
    subscription: &Subscription,
    zone: &Zone,
    day: i32,
) -> Result<bool, ProcessError> {
    let (_, until) = billable_span(subscription, zone)?;
    let ended = matches!(
        subscription.status,
        SubscriptionStatus::Cancelled | SubscriptionStatus::Expired
    ) && subscription.ends_at.is_none();
    Ok(!ended && until.is_none_or(|until| until > day))
}

/// The fee lines of `book`'s period: each recurring fee of the rate card in effect on the
/// period's start (`cards`, the global table of rate cards), for the days the subscription was
/// billable. No card for the plan is no fees; a card that does not decode, or one in another
/// currency, is an error that keeps the period open until the card is fixed.
pub(crate) fn fee_lines(
    state: &State<'_>,
    codec: &WireCodec,
    cards: &str,
    zone: &Zone,
    subscription: &Subscription,
    book: &PeriodBook,
) -> Result<Vec<FeeLine>, ProcessError> {
    if matches!(
        subscription.status,
        SubscriptionStatus::Paused | SubscriptionStatus::Unknown
    ) || !continues_on(subscription, zone, book.start)?
    {
        return Ok(Vec::new());
    }
    let prefix = rate_card_prefix(&book.tenant, &subscription.plan_id);
    let mut versions: Vec<Arc<RateCard>> = Vec::new();
    for (key, bytes) in state.global_prefix(cards, prefix.as_bytes())? {
        let card = codec
            .decode_shared(&bytes, RateCard::schema())
            .map_err(|e| {
                ProcessError::permanent(
                    "invalid_rate_card",
                    format!("`{}` does not decode: {e}", String::from_utf8_lossy(&key)),
                )
            })?;
        versions.push(card);
    }
    let Some(card) = card_for_period(&versions, &subscription.plan_id, book.start) else {
        return Ok(Vec::new());
    };
    if card.recurring_fees.is_empty() {
        return Ok(Vec::new());
    }
    if card.currency != book.currency {
        return Err(ProcessError::permanent(
            "currency_mismatch",
            format!(
                "rate card `{}` v{} is in {}, subscription `{}` in {}",
                card.plan_id, card.version, card.currency, book.subscription_id, book.currency
            ),
        ));
    }
    let period = BillingPeriod {
        start: book.start,
        end: book.end,
    };
    let (from, until) = billable_span(subscription, zone)?;
    let days = billable_days(period, from, until);
    if days == 0 {
        return Ok(Vec::new());
    }
    let length = period.end - period.start;
    card.recurring_fees
        .iter()
        .map(|fee| {
            let amount = fee_for(fee, period, days)
                .map_err(|e| ProcessError::permanent("invalid_rate_card", e.to_string()))?;
            Ok(FeeLine {
                name: fee.name.clone(),
                product_id: fee.product_id.clone(),
                amount,
                part: (days < length).then_some((days, length)),
            })
        })
        .collect()
}
