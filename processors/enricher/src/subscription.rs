//! The subscription a usage event is billed under when it names none. The usage contract
//! promises that a null `subscription_id` "lets the enricher pick the customer's subscription
//! that has a charge for this meter": among the customer's subscriptions usage is rated under,
//! the one whose plan's rate card prices the event's meter.
//!
//! Only subscriptions usage is rated under count (TRIALING, ACTIVE, PAST_DUE). One such
//! subscription is the answer. None yet (no subscription, or its rate card not
//! known) waits like a missing subscription does, parked until the master data arrives or the
//! park timeout dead-letters it as `unknown_subscription`. Two or more is the producer's
//! ambiguity to resolve: the event is dead-lettered as `ambiguous_subscription`, naming them.
//! The customer's subscriptions are found by a scan of the tenant's part of the subscriptions
//! table, paid only by events that name none.

use backbone_core::{ProcessError, State};
use backbone_rating::card_for_period;
use backbone_schemas::types::{Contract, Subscription, SubscriptionStatus, UsageEvent};
use backbone_schemas::WireCodec;

use crate::SUBSCRIPTIONS;

/// Reason of an event whose customer has several subscriptions pricing its meter.
pub const AMBIGUOUS_SUBSCRIPTION: &str = "ambiguous_subscription";

/// What the tables say about an event that names no subscription.
pub(crate) enum Pick {
    /// The one subscription to bill it under.
    Found(String),
    /// Nothing to pick yet; why.
    Waiting(String),
}

/// The subscription of `usage`'s customer that has a charge for its meter.
pub(crate) fn pick(
    state: &State<'_>,
    codec: &WireCodec,
    usage: &UsageEvent,
) -> Result<Pick, ProcessError> {
    let tenant = &usage.metadata.tenant_id;
    let mut pricing = Vec::new();
    for (_, value) in state.global_prefix(SUBSCRIPTIONS, format!("{tenant}:").as_bytes())? {
        let subscription = match codec.decode_shared::<Subscription>(&value, Subscription::schema())
        {
            Ok(subscription) => subscription,
            // A schema id not resolved yet (the first subscription read since start): the
            // runtime resolves it and runs the event again, rather than parking it until some
            // other record comes.
            Err(err) if err.is_transient() => return Err(err.into()),
            // Another customer's undecodable subscription is not this event's fault.
            Err(_) => continue,
        };
        if subscription.customer_id != usage.customer_id || !rated(&subscription) {
            continue;
        }
        let plan = &subscription.plan_id;
        let cards = crate::rate_cards(state, codec, tenant, plan)?;
        // A subscription whose period the event cannot fall in prices nothing for it.
        let period = match crate::period_of(state, codec, &subscription, usage.metadata.occurred_at)
        {
            Ok(period) => period,
            Err(ProcessError::Permanent { .. }) => continue,
            Err(outage) => return Err(outage),
        };
        let Some(card) = card_for_period(&cards, plan, period.start) else {
            return Ok(Pick::Waiting(format!(
                "the event names no subscription, and no rate card of plan `{tenant}:{plan}`                  of subscription `{}` is known for the period from day {}",
                subscription.subscription_id, period.start
            )));
        };
        if card.charges.iter().any(|c| c.meter_id == usage.meter_id) {
            pricing.push(subscription.subscription_id.clone());
        }
    }
    match pricing.as_slice() {
        [one] => Ok(Pick::Found(one.clone())),
        [] => Ok(Pick::Waiting(format!(
            "the event names no subscription, and no subscription of `{tenant}:{}` has a charge \
             for meter `{}`",
            usage.customer_id, usage.meter_id
        ))),
        several => Err(ProcessError::permanent(
            AMBIGUOUS_SUBSCRIPTION,
            format!(
                "the event names no subscription, and subscriptions {} of `{tenant}:{}` all \
                 have a charge for meter `{}`: the event must name one",
                several.join(", "),
                usage.customer_id,
                usage.meter_id
            ),
        )),
    }
}

/// Whether usage is rated under it, as the subscription contract says: TRIALING, ACTIVE and
/// PAST_DUE.
pub(crate) fn rated(subscription: &Subscription) -> bool {
    matches!(
        subscription.status,
        SubscriptionStatus::Trialing | SubscriptionStatus::Active | SubscriptionStatus::PastDue
    )
}
