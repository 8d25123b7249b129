//! Which version of a plan's rate card prices a billing period.
//!
//! Every version is its own record on the compacted rate-card topic, keyed
//! `<tenant_id>:<plan_id>:<version>`, so a price change published ahead of its
//! `effective_from` does not reprice the periods before it, and late usage of an earlier
//! period is priced by the version that applied to it.

use backbone_schemas::types::RateCard;

/// The key version `version` of `plan_id`'s card is published under.
pub fn rate_card_key(tenant_id: &str, plan_id: &str, version: i32) -> String {
    format!("{tenant_id}:{plan_id}:{version}")
}

/// The key prefix of every version of `plan_id`'s card. Plan ids may hold `:`, so a caller
/// keeps only the cards whose `plan_id` is the one asked for ([`card_for_period`] does).
pub fn rate_card_prefix(tenant_id: &str, plan_id: &str) -> String {
    format!("{tenant_id}:{plan_id}:")
}

/// The version of `plan_id`'s card that prices the billing period starting on `period_start`
/// (days since the epoch): the highest version in effect that day, `effective_from` inclusive,
/// `effective_to` exclusive. A later version supersedes an earlier one from its own
/// `effective_from` on, whether or not the earlier one was republished with an end.
pub fn card_for_period<'c, C: AsRef<RateCard>>(
    cards: &'c [C],
    plan_id: &str,
    period_start: i32,
) -> Option<&'c C> {
    cards
        .iter()
        .filter(|card| {
            let card = card.as_ref();
            card.plan_id == plan_id
                && card.effective_from <= period_start
                && card.effective_to.is_none_or(|to| period_start < to)
        })
        .max_by_key(|card| card.as_ref().version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use backbone_schemas::types::{EventMetadata, TraceContext};
    use std::sync::Arc;

    fn card(plan_id: &str, version: i32, from: i32, to: Option<i32>) -> Arc<RateCard> {
        Arc::new(RateCard {
            metadata: EventMetadata {
                tenant_id: "acme".to_owned(),
                event_id: format!("{plan_id}-{version}"),
                source: "test".to_owned(),
                r#type: "backbone.master.rate_card".to_owned(),
                occurred_at: 0,
                produced_at: 0,
                trace: TraceContext {
                    traceparent: String::new(),
                    tracestate: None,
                },
                schema_version: None,
            },
            plan_id: plan_id.to_owned(),
            version,
            name: "Plan".to_owned(),
            currency: "EUR".to_owned(),
            effective_from: from,
            effective_to: to,
            charges: Vec::new(),
            recurring_fees: Vec::new(),
        })
    }

    fn version(cards: &[Arc<RateCard>], plan: &str, day: i32) -> Option<i32> {
        card_for_period(cards, plan, day).map(|c| c.version)
    }

    #[test]
    fn a_price_change_applies_from_its_own_start_not_before() {
        // Version 2 announced ahead: from day 60 on, version 1 still open-ended.
        let cards = [card("p", 2, 60, None), card("p", 1, 0, None)];
        assert_eq!(version(&cards, "p", 30), Some(1));
        assert_eq!(version(&cards, "p", 59), Some(1));
        assert_eq!(version(&cards, "p", 60), Some(2));
        assert_eq!(version(&cards, "p", 400), Some(2));
    }

    #[test]
    fn an_ended_version_and_a_gap_leave_no_card() {
        let cards = [card("p", 1, 10, Some(20)), card("p", 2, 30, None)];
        assert_eq!(version(&cards, "p", 9), None);
        assert_eq!(version(&cards, "p", 19), Some(1));
        assert_eq!(version(&cards, "p", 20), None, "effective_to is exclusive");
        assert_eq!(version(&cards, "p", 30), Some(2));
    }

    #[test]
    fn another_plan_under_the_same_prefix_is_not_taken() {
        // `p:x` shares the prefix `acme:p:` with plan `p`'s versions.
        let cards = [card("p:x", 9, 0, None), card("p", 1, 0, None)];
        assert_eq!(version(&cards, "p", 5), Some(1));
        assert_eq!(rate_card_prefix("acme", "p"), "acme:p:");
        assert_eq!(rate_card_key("acme", "p", 3), "acme:p:3");
    }
}
