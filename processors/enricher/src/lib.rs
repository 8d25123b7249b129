//! Joins usage with the master data it is billed under: customer account, subscription and the
//! plan's rate card, stamping the billing period that holds the event.
//!
//! Inputs: validated usage and the customer accounts, both keyed `<tenant>:<customer>` and
//! co-partitioned, so an account lives in the partition state of the usage it enriches.
//! Subscriptions, rate cards and legal entities are global tables (keyed by subscription, plan
//! and legal entity).
//!
//! Billing period: the one of the subscription holding the event's local day in the time zone
//! of the subscription's legal entity (`LegalEntity.time_zone`); UTC for an entity the table
//! does not hold. An entity whose time zone is not an IANA zone dead-letters its usage as
//! `invalid_legal_entity`, to be replayed once the record is fixed.
//!
//! Park and release: a usage event whose account or subscription is not known yet is parked in
//! partition state, behind any earlier parked event of the same customer (order is kept). Parked
//! events are tried again when the customer's account arrives, when the customer's next usage
//! arrives, and, every `processor.park_retry_interval`, once the global tables changed: a
//! subscription arrives through them, with no input on the partition to trigger the release.
//! One still parked `processor.park_timeout` after it was parked, both by the record times of
//! the partition's later records and by the wall clock, goes to the DLQ as `unknown_account` or
//! `unknown_subscription`, byte for byte as it came in.
//!
//! An event that names no subscription is billed under the customer's one subscription whose
//! rate card prices its meter (`src/subscription.rs`).

mod parking;
mod subscription;

pub use subscription::AMBIGUOUS_SUBSCRIPTION;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use backbone_calendar::now_ms;
use backbone_core::app::{App, RegistryAccess};
use backbone_core::config::{ConfigError, Validate};
use backbone_core::dead_letter::DeadLetter;
use backbone_core::{
    InputRecord, OutputRecord, Prefetch, ProcessError, Processor, State, StateSpec, Wake,
};
use backbone_master_data::{legal_entity_zone, undecodable};
use backbone_rating::{card_for_period, rate_card_prefix, BillingPeriod, PeriodPlan};
use backbone_schemas::types::{
    AccountStatus, Contract, CustomerAccount, EnrichedUsage, EventMetadata, RateCard, Subscription,
    UsageEvent,
};
use backbone_schemas::wire::encode_framed;
use backbone_schemas::{OutputContracts, WireCodec};
use serde::Deserialize;

use crate::parking::{Parked, PARKED, PARKED_INDEX};

const ACCOUNTS: &str = "accounts";
const SUBSCRIPTIONS: &str = "subscriptions";
const RATE_CARDS: &str = "rate_cards";
const LEGAL_ENTITIES: &str = "legal_entities";

/// The `[processor]` config section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnricherSettings {
    /// Validated usage, keyed `<tenant>:<customer>`.
    pub usage_topic: String,
    /// Customer accounts, keyed `<tenant>:<customer>`, co-partitioned with the usage.
    pub accounts_topic: String,
    /// Subscriptions, keyed `<tenant>:<subscription>`.
    pub subscriptions_topic: String,
    /// Rate cards, keyed `<tenant>:<plan>`.
    pub rate_cards_topic: String,
    /// Legal entities, keyed `<tenant>:<legal entity>`: their time zone decides an event's
    /// local day, and so its billing period.
    pub legal_entities_topic: String,
    /// Where enriched usage goes, keyed `<tenant>:<subscription>`.
    pub output_topic: String,
    /// How long an event may wait for its master data before it is dead-lettered.
    #[serde(with = "humantime_serde")]
    pub park_timeout: Duration,
    /// How often parked events are tried again after subscriptions or rate cards changed.
    #[serde(with = "humantime_serde")]
    pub park_retry_interval: Duration,
}

impl Default for EnricherSettings {
    fn default() -> Self {
        Self {
            usage_topic: "usage.validated".to_owned(),
            accounts_topic: "master.customer-accounts".to_owned(),
            subscriptions_topic: "master.subscriptions".to_owned(),
            rate_cards_topic: "master.rate-cards".to_owned(),
            legal_entities_topic: "master.legal-entities".to_owned(),
            output_topic: "usage.enriched".to_owned(),
            park_timeout: Duration::from_secs(3600),
            park_retry_interval: Duration::from_secs(1),
        }
    }
}

impl Validate for EnricherSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("usage_topic", &self.usage_topic),
            ("accounts_topic", &self.accounts_topic),
            ("subscriptions_topic", &self.subscriptions_topic),
            ("rate_cards_topic", &self.rate_cards_topic),
            ("legal_entities_topic", &self.legal_entities_topic),
            ("output_topic", &self.output_topic),
        ] {
            if value.trim().is_empty() {
                return Err(ConfigError::Invalid {
                    key: format!("processor.{key}"),
                    message: "must not be empty".to_owned(),
                });
            }
        }
        if self.park_retry_interval.is_zero() {
            return Err(ConfigError::Invalid {
                key: "processor.park_retry_interval".to_owned(),
                message: "must be above zero".to_owned(),
            });
        }
        if self.usage_topic == self.accounts_topic {
            return Err(ConfigError::Invalid {
                key: "processor.accounts_topic".to_owned(),
                message: "must differ from processor.usage_topic".to_owned(),
            });
        }
        Ok(())
    }
}

/// The processor.
#[derive(Debug, Clone)]
pub struct Enricher {
    settings: EnricherSettings,
    outputs: Arc<OutputContracts>,
    /// Per partition, the wall-clock time before which no parked event can expire: the last
    /// expiry pass found events past the timeout in stream time only. Saves reading the index
    /// of queue heads on every record of a catch-up.
    wall_due_ms: HashMap<i32, i64>,
}

impl Enricher {
    /// An enricher decoding and encoding through `codec`.
    pub fn new(settings: EnricherSettings, codec: WireCodec) -> Self {
        let outputs = Arc::new(OutputContracts::new(
            codec,
            vec![(settings.output_topic.clone(), EnrichedUsage::FULL_NAME)],
        ));
        Self {
            settings,
            outputs,
            wall_due_ms: HashMap::new(),
        }
    }

    fn codec(&self) -> &WireCodec {
        self.outputs.codec()
    }
}

impl App for Enricher {
    const NAME: &'static str = "enricher";
    const ABOUT: &'static str =
        "Joins usage with accounts, subscriptions and rate cards; parks events whose master data is on its way";
    type Settings = EnricherSettings;

    fn build(settings: EnricherSettings, registry: &RegistryAccess) -> Self {
        Self::new(settings, WireCodec::new(registry.clone()))
    }
}

/// What enriching one event gave.
enum Joined {
    Enriched(OutputRecord),
    Waiting {
        reason: &'static str,
        detail: String,
    },
}

impl Processor for Enricher {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn input_topics(&self) -> Vec<String> {
        vec![
            self.settings.usage_topic.clone(),
            self.settings.accounts_topic.clone(),
        ]
    }

    fn output_topics(&self) -> Vec<String> {
        vec![self.settings.output_topic.clone()]
    }

    fn state(&self) -> StateSpec {
        StateSpec::stateless()
            .store(ACCOUNTS)
            .store(PARKED)
            .store(PARKED_INDEX)
            .global(SUBSCRIPTIONS, &self.settings.subscriptions_topic)
            .global(RATE_CARDS, &self.settings.rate_cards_topic)
            .global(LEGAL_ENTITIES, &self.settings.legal_entities_topic)
    }

    fn prefetch(&self) -> Option<Arc<dyn Prefetch>> {
        Some(self.outputs.clone())
    }

    fn process(
        &mut self,
        record: &InputRecord<'_>,
        state: &mut State<'_>,
    ) -> Result<Vec<OutputRecord>, ProcessError> {
        let clock = Clock::of(record);
        let mut outputs = if record.topic == self.settings.accounts_topic {
            self.account(record, state, clock.stream_ms)?
        } else {
            self.usage(record, state, clock)?
        };
        outputs.extend(self.expire(state, record.partition, clock)?);
        Ok(outputs)
    }

    fn wake_interval(&self) -> Option<Duration> {
        Some(self.settings.park_retry_interval)
    }

    /// Tries every parked customer again, unless the global tables are as they were at the
    /// partition's last wake: accounts are this partition's own input and release their
    /// customer as they arrive, so only a global change can free an event between inputs.
    fn wake(
        &mut self,
        wake: &Wake,
        state: &mut State<'_>,
    ) -> Result<Vec<OutputRecord>, ProcessError> {
        if wake.global_updates_then == Some(state.global_updates()) {
            return Ok(Vec::new());
        }
        let now_ms = now_ms();
        let mut outputs = Vec::new();
        for customer in parking::customers(state)? {
            outputs.extend(self.release(state, customer.as_bytes(), now_ms)?);
        }
        if !outputs.is_empty() {
            tracing::info!(
                partition = wake.partition,
                released = outputs.len(),
                "parked events released after the global tables changed"
            );
        }
        Ok(outputs)
    }
}

impl Enricher {
    /// Stores (or, for a tombstone, deletes) an account, then releases its customer's events.
    fn account(
        &self,
        record: &InputRecord<'_>,
        state: &mut State<'_>,
        now_ms: i64,
    ) -> Result<Vec<OutputRecord>, ProcessError> {
        let key = record
            .key
            .ok_or_else(|| ProcessError::permanent("missing_key", "an account needs its key"))?;
        match record.value {
            Some(value) => {
                self.codec()
                    .decode_cached_as::<CustomerAccount>(value, CustomerAccount::schema())
                    .map_err(ProcessError::from)?;
                state.put(ACCOUNTS, key, value)?;
            }
            None => state.delete(ACCOUNTS, key)?,
        }
        self.release(state, key, now_ms)
    }

    /// Enriches a usage event, or parks it behind its customer's parked events.
    fn usage(
        &self,
        record: &InputRecord<'_>,
        state: &mut State<'_>,
        clock: Clock,
    ) -> Result<Vec<OutputRecord>, ProcessError> {
        let now_ms = clock.stream_ms;
        let value = record
            .value
            .ok_or_else(|| ProcessError::permanent("missing_value", "record has no value"))?;
        let usage: UsageEvent = self
            .codec()
            .decode_cached_as(value, UsageEvent::schema())
            .map_err(ProcessError::from)?;
        let customer = customer_key(&usage);
        let event = Parked {
            topic: record.topic.to_owned(),
            partition: record.partition,
            offset: record.offset,
            timestamp_ms: record.timestamp_ms,
            key: record.key.map(<[u8]>::to_vec),
            value: value.to_vec(),
            headers: record.headers.to_vec(),
            reason: String::new(),
            detail: String::new(),
            parked_at_ms: now_ms,
            parked_at_wall_ms: clock.wall_ms,
        };
        if parking::has_parked(state, &customer)? {
            // Earlier events of the customer wait: this one queues behind them, then the queue
            // is tried from its head.
            parking::park(state, &customer, &event)?;
            return self.release(state, customer.as_bytes(), now_ms);
        }
        match self.join(state, &usage)? {
            Joined::Enriched(output) => Ok(vec![output]),
            Joined::Waiting { reason, detail } => {
                let event = Parked {
                    reason: reason.to_owned(),
                    detail,
                    ..event
                };
                parking::park(state, &customer, &event)?;
                Ok(Vec::new())
            }
        }
    }

    /// Tries the customer's parked events in order; stops at the first that still waits.
    fn release(
        &self,
        state: &mut State<'_>,
        customer: &[u8],
        now_ms: i64,
    ) -> Result<Vec<OutputRecord>, ProcessError> {
        let customer = String::from_utf8_lossy(customer).into_owned();
        let mut outputs = Vec::new();
        while let Some(mut event) = parking::head(state, &customer)? {
            let usage: UsageEvent = self
                .codec()
                .decode_cached_as(&event.value, UsageEvent::schema())
                .map_err(ProcessError::from)?;
            match self.join(state, &usage) {
                Ok(Joined::Enriched(output)) => outputs.push(output),
                Ok(Joined::Waiting { reason, detail }) => {
                    if event.reason != reason || event.detail != detail {
                        event.reason = reason.to_owned();
                        event.detail = detail;
                        parking::replace_head(state, &customer, &event)?;
                    }
                    break;
                }
                Err(ProcessError::Permanent { reason, detail }) => {
                    outputs.push(dead_letter(&event, reason, &detail, now_ms));
                }
                Err(other) => return Err(other),
            }
            parking::pop_head(state, &customer)?;
        }
        if !outputs.is_empty() {
            parking::refresh_head(state, &customer)?;
        }
        Ok(outputs)
    }

    /// Dead-letters parked events that waited longer than the park timeout, oldest first; a
    /// customer's events leave in the order they came. The wait must be over by both clocks:
    /// by stream time, so that a quiet partition keeps its events, and by the wall clock, so
    /// that catching up on a backlog does not expire an event in the seconds before its
    /// account, published earlier on the other input topic, is read.
    fn expire(
        &mut self,
        state: &mut State<'_>,
        partition: i32,
        clock: Clock,
    ) -> Result<Vec<OutputRecord>, ProcessError> {
        if self
            .wall_due_ms
            .get(&partition)
            .is_some_and(|due| clock.wall_ms < *due)
        {
            return Ok(Vec::new());
        }
        let timeout = i64::try_from(self.settings.park_timeout.as_millis()).unwrap_or(i64::MAX);
        let cutoff = clock.stream_ms.saturating_sub(timeout);
        let wall_cutoff = clock.wall_ms.saturating_sub(timeout);
        let mut wall_due: Option<i64> = None;
        let mut outputs = Vec::new();
        for customer in parking::due(state, cutoff)? {
            let mut popped = false;
            while let Some(event) = parking::head(state, &customer)? {
                if event.parked_at_ms > cutoff {
                    break;
                }
                if event.parked_at_wall_ms > wall_cutoff {
                    let due = event.parked_at_wall_ms.saturating_add(timeout);
                    wall_due = Some(wall_due.map_or(due, |d| d.min(due)));
                    break;
                }
                let detail = format!(
                    "{}; waited {} ms, longer than processor.park_timeout",
                    event.detail,
                    clock.stream_ms - event.parked_at_ms
                );
                outputs.push(dead_letter(
                    &event,
                    reason_of(&event.reason),
                    &detail,
                    clock.stream_ms,
                ));
                parking::pop_head(state, &customer)?;
                popped = true;
            }
            if popped {
                parking::refresh_head(state, &customer)?;
            }
        }
        match wall_due {
            Some(due) => self.wall_due_ms.insert(partition, due),
            None => self.wall_due_ms.remove(&partition),
        };
        Ok(outputs)
    }

    /// The event joined with its master data, or what it waits for.
    fn join(&self, state: &State<'_>, usage: &UsageEvent) -> Result<Joined, ProcessError> {
        let m = &usage.metadata;
        let customer = customer_key(usage);
        let Some(account) = state.get(ACCOUNTS, customer.as_bytes())? else {
            return Ok(Joined::Waiting {
                reason: "unknown_account",
                detail: format!("no account `{customer}`"),
            });
        };
        let account: Arc<CustomerAccount> = self
            .codec()
            .decode_shared(&account, CustomerAccount::schema())
            .map_err(ProcessError::from)?;
        if account.status == AccountStatus::Closed {
            return Err(ProcessError::permanent(
                "account_closed",
                format!("account `{customer}` is closed"),
            ));
        }
        let subscription_id = match usage.subscription_id.as_deref() {
            Some(named) => named.to_owned(),
            None => match subscription::pick(state, self.codec(), usage)? {
                subscription::Pick::Found(picked) => picked,
                subscription::Pick::Waiting(detail) => {
                    return Ok(Joined::Waiting {
                        reason: "unknown_subscription",
                        detail,
                    })
                }
            },
        };
        let key = format!("{}:{subscription_id}", m.tenant_id);
        let Some(subscription) = state.global(SUBSCRIPTIONS, key.as_bytes())? else {
            return Ok(Joined::Waiting {
                reason: "unknown_subscription",
                detail: format!("no subscription `{key}`"),
            });
        };
        let subscription: Arc<Subscription> = self
            .codec()
            .decode_shared(&subscription, Subscription::schema())
            .map_err(|e| undecodable("invalid_subscription", &key, e))?;
        if subscription.customer_id != usage.customer_id {
            return Err(ProcessError::permanent(
                "subscription_mismatch",
                format!(
                    "subscription `{key}` belongs to `{}`, not `{}`",
                    subscription.customer_id, usage.customer_id
                ),
            ));
        }
        // The subscription contract: usage is rated for TRIALING, ACTIVE and PAST_DUE
        // subscriptions, and usage before a subscription began is rejected.
        if !subscription::rated(&subscription) {
            return Err(ProcessError::permanent(
                "subscription_inactive",
                format!(
                    "subscription `{key}` is {:?}; usage is rated for TRIALING, ACTIVE and \
                     PAST_DUE subscriptions",
                    subscription.status
                ),
            ));
        }
        if m.occurred_at < subscription.started_at {
            return Err(ProcessError::permanent(
                "before_subscription_start",
                format!(
                    "the event happened at {} µs, before subscription `{key}` began at {} µs",
                    m.occurred_at, subscription.started_at
                ),
            ));
        }
        let period = period_of(state, self.codec(), &subscription, m.occurred_at)?;
        let cards = rate_cards(state, self.codec(), &m.tenant_id, &subscription.plan_id)?;
        // The rater waits for a card not known yet; the version is what it finds then.
        let rate_card_version = card_for_period(&cards, &subscription.plan_id, period.start)
            .map_or(0, |card| card.version);
        let enriched = EnrichedUsage {
            metadata: EventMetadata {
                tenant_id: m.tenant_id.clone(),
                event_id: format!("{}/{}/{}", m.tenant_id, m.source, m.event_id),
                source: Self::NAME.to_owned(),
                r#type: "backbone.usage.enriched".to_owned(),
                occurred_at: m.occurred_at,
                // From the input, so a redelivery reproduces the same bytes.
                produced_at: m.produced_at,
                trace: m.trace.clone(),
                schema_version: None,
            },
            subscription_id,
            plan_id: subscription.plan_id.clone(),
            rate_card_version,
            legal_entity_id: subscription.legal_entity_id.clone(),
            currency: subscription.currency.clone(),
            billing_period_start: period.start,
            billing_period_end: period.end,
            usage: usage.clone(),
        };
        let id = self.outputs.id(&self.settings.output_topic)?;
        let value = encode_framed(id, &enriched)
            .map_err(|e| ProcessError::permanent("contract_violation", e.to_string()))?;
        Ok(Joined::Enriched(OutputRecord {
            topic: self.settings.output_topic.clone(),
            key: Some(key.into_bytes()),
            value: Some(value),
            headers: Vec::new(),
        }))
    }
}

/// The billing period of `subscription` holding the instant `occurred_at` (µs): the one of its
/// local day in the time zone of the subscription's legal entity.
pub(crate) fn period_of(
    state: &State<'_>,
    codec: &WireCodec,
    subscription: &Subscription,
    occurred_at: i64,
) -> Result<BillingPeriod, ProcessError> {
    let key = format!(
        "{}:{}",
        subscription.metadata.tenant_id, subscription.subscription_id
    );
    let plan = PeriodPlan::new(
        subscription.current_period_start,
        subscription.billing_anchor_day,
        subscription.billing_interval,
    )
    .map_err(|e| {
        ProcessError::permanent("contract_violation", format!("subscription `{key}`: {e}"))
    })?;
    let zone = legal_entity_zone(
        state,
        LEGAL_ENTITIES,
        codec,
        &subscription.metadata.tenant_id,
        &subscription.legal_entity_id,
    )?;
    let day = zone
        .day_of(occurred_at)
        .map_err(|e| ProcessError::permanent("contract_violation", format!("occurred_at: {e}")))?;
    Ok(plan.period_of(day))
}

/// Every version of `plan_id`'s rate card the table holds; one that does not decode stops the
/// event under `invalid_rate_card`, naming it.
pub(crate) fn rate_cards(
    state: &State<'_>,
    codec: &WireCodec,
    tenant_id: &str,
    plan_id: &str,
) -> Result<Vec<Arc<RateCard>>, ProcessError> {
    let prefix = rate_card_prefix(tenant_id, plan_id);
    state
        .global_prefix(RATE_CARDS, prefix.as_bytes())?
        .into_iter()
        .map(|(key, value)| {
            codec
                .decode_shared(&value, RateCard::schema())
                .map_err(|e| undecodable("invalid_rate_card", &String::from_utf8_lossy(&key), e))
        })
        .collect()
}

fn customer_key(usage: &UsageEvent) -> String {
    format!("{}:{}", usage.metadata.tenant_id, usage.customer_id)
}

fn reason_of(reason: &str) -> &'static str {
    match reason {
        "unknown_subscription" => "unknown_subscription",
        _ => "unknown_account",
    }
}

/// The dead letter of a parked event, as the runtime would have written it for the input.
fn dead_letter(event: &Parked, reason: &str, detail: &str, now_ms: i64) -> OutputRecord {
    let input = InputRecord {
        topic: &event.topic,
        partition: event.partition,
        offset: event.offset,
        timestamp_ms: event.timestamp_ms,
        key: event.key.as_deref(),
        value: Some(&event.value),
        headers: &event.headers,
    };
    let at = |ms: i64| UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    DeadLetter {
        input: &input,
        error_class: "permanent",
        reason,
        message: detail,
        processor: Enricher::NAME,
        processor_version: env!("CARGO_PKG_VERSION"),
        attempts: 1,
        first_failed_at: at(event.parked_at_ms),
    }
    .to_record(at(now_ms))
}

/// The two times an input is processed at: its record time (stream time) and the wall clock.
#[derive(Debug, Clone, Copy)]
struct Clock {
    stream_ms: i64,
    wall_ms: i64,
}

impl Clock {
    fn of(record: &InputRecord<'_>) -> Self {
        let wall_ms = now_ms();
        Self {
            stream_ms: record.timestamp_ms.unwrap_or(wall_ms),
            wall_ms,
        }
    }
}
