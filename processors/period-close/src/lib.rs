//! `period-close`: closes each subscription's billing period once it has ended in its legal
//! entity's time zone and a grace period for late usage has passed, and issues the period's
//! invoice (docs/period-close.md).
//!
//! - Input `master.subscriptions`, co-partitioned with the charges: a subscription's current
//!   period gets a book (empty) when first read, so that a period without usage closes too and
//!   bills the plan's recurring fees; each close opens the next period while the subscription
//!   goes on. The same topic is also a global table, read for any subscription's details.
//! - Input `billing.charges` (keyed `<tenant>:<subscription>`): each charge is booked in its
//!   period's book (partition state, store `periods`), once per rating id and revision: a mark
//!   per charge booked (store `booked`, keyed by the period and the charge) says so and names
//!   its line, so that a charge costs the same however many its period holds. A charge of a
//!   period already closed is booked in the next open one as a correction: a closed invoice is
//!   never edited.
//! - Closing, by the wall clock (checked every `processor.close_check_interval`): at the start
//!   of the period's end day in the entity's `time_zone` (`master.legal-entities`; UTC for an
//!   entity the table does not hold) plus `processor.grace`, once the partition's charges are
//!   read up to that instant (`reading.rs`), the book becomes a draft `Invoice`:
//!   the recurring fees of the rate card in effect on the period's start (`master.rate-cards`),
//!   pro rata by the days the subscription was billable, then the charges' lines. It is
//!   re-keyed by legal entity onto `processor.drafts_topic`. A period with neither closes
//!   without an invoice.
//! - Numbering: read back from the drafts topic, so that one partition holds all of a legal
//!   entity's drafts, each is numbered from the entity's sequence in arrival order
//!   (`<legal entity>-000001`, ...) and issued on `sales.invoices`. A draft numbered before
//!   (a redelivery, a close run again after a crash) keeps its number and is not issued again.

mod book;
mod due;
mod fees;
mod marks;
mod metrics;
mod reading;

pub use metrics::names;

use std::sync::Arc;
use std::time::Duration;

use backbone_calendar::{now_micros, Zone};
use backbone_core::app::{App, RegistryAccess};
use backbone_core::config::{ConfigError, Validate};
use backbone_core::{
    InputRecord, OutputRecord, Prefetch, ProcessError, Processor, State, StateSpec, Wake,
};
use backbone_master_data::legal_entity_zone;
use backbone_rating::{BillingPeriod, PeriodPlan};
use backbone_schemas::types::{BillingCharge, Contract, Invoice, InvoiceStatus, Subscription};
use backbone_schemas::wire::encode_framed;
use backbone_schemas::{OutputContracts, WireCodec};
use serde::Deserialize;

use crate::book::{invoice_number, period_key, PeriodBook};
use crate::due::Due;
use crate::marks::{mark_key, rating_ids, Mark};
use crate::metrics::PeriodMetrics;
use crate::reading::Reading;

/// The `source` of every record the processor writes.
pub(crate) const SOURCE: &str = "period-close";

const PERIODS: &str = "periods";
const BOOKED: &str = marks::STORE;
const DUE: &str = due::STORE;
const SEQUENCES: &str = "sequences";
const NUMBERED: &str = "numbered";
const SUBSCRIPTIONS: &str = "subscriptions";
const RATE_CARDS: &str = "rate_cards";
const LEGAL_ENTITIES: &str = "legal_entities";

/// The `[processor]` config section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeriodCloseSettings {
    /// Billing charges, keyed `<tenant>:<subscription>`.
    pub charges_topic: String,
    /// Subscriptions, keyed `<tenant>:<subscription>`, co-partitioned with the charges: the
    /// periods to close, with or without usage, and the periods that follow a closed one.
    pub subscriptions_topic: String,
    /// Rate cards, keyed `<tenant>:<plan>:<version>`: the plans' recurring fees.
    pub rate_cards_topic: String,
    /// Legal entities, keyed `<tenant>:<legal entity>`: the time zone periods end in.
    pub legal_entities_topic: String,
    /// Draft invoices re-keyed by legal entity, written and read back for numbering.
    pub drafts_topic: String,
    /// Where issued invoices go, keyed `<tenant>:<invoice>`.
    pub invoices_topic: String,
    /// How long after a period's end late usage is still booked in it.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// Days from issue to due date.
    pub payment_days: u16,
    /// How often each partition's periods are checked against their close.
    #[serde(with = "humantime_serde")]
    pub close_check_interval: Duration,
}

impl Default for PeriodCloseSettings {
    fn default() -> Self {
        Self {
            charges_topic: "billing.charges".to_owned(),
            subscriptions_topic: "master.subscriptions".to_owned(),
            rate_cards_topic: "master.rate-cards".to_owned(),
            legal_entities_topic: "master.legal-entities".to_owned(),
            drafts_topic: "sales.invoice-drafts".to_owned(),
            invoices_topic: "sales.invoices".to_owned(),
            grace: Duration::from_secs(2 * 86_400),
            payment_days: 30,
            close_check_interval: Duration::from_secs(10),
        }
    }
}

impl Validate for PeriodCloseSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        let topics = [
            ("charges_topic", &self.charges_topic),
            ("subscriptions_topic", &self.subscriptions_topic),
            ("rate_cards_topic", &self.rate_cards_topic),
            ("legal_entities_topic", &self.legal_entities_topic),
            ("drafts_topic", &self.drafts_topic),
            ("invoices_topic", &self.invoices_topic),
        ];
        for (at, (key, topic)) in topics.iter().enumerate() {
            if topic.trim().is_empty() {
                return Err(invalid(key, "must not be empty"));
            }
            if let Some((other, _)) = topics[..at].iter().find(|(_, t)| t == topic) {
                return Err(invalid(
                    key,
                    &format!("must differ from processor.{other} (both are `{topic}`)"),
                ));
            }
        }
        if self.close_check_interval.is_zero() {
            return Err(invalid("close_check_interval", "must be above zero"));
        }
        Ok(())
    }
}

fn invalid(key: &str, message: &str) -> ConfigError {
    ConfigError::Invalid {
        key: format!("processor.{key}"),
        message: message.to_owned(),
    }
}

/// The billing period of `subscription` that holds `day` (the end of a closed one).
fn next_period(subscription: &Subscription, day: i32) -> Result<BillingPeriod, ProcessError> {
    let plan = PeriodPlan::new(
        subscription.current_period_start,
        subscription.billing_anchor_day,
        subscription.billing_interval,
    )
    .map_err(|e| {
        ProcessError::permanent(
            "contract_violation",
            format!(
                "subscription `{}:{}`: {e}",
                subscription.metadata.tenant_id, subscription.subscription_id
            ),
        )
    })?;
    Ok(plan.period_of(day))
}

/// The processor.
#[derive(Debug, Clone)]
pub struct PeriodClose {
    settings: PeriodCloseSettings,
    outputs: Arc<OutputContracts>,
    metrics: Option<Arc<PeriodMetrics>>,
    reading: Reading,
}

impl PeriodClose {
    /// A period close decoding and encoding through `codec`.
    pub fn new(settings: PeriodCloseSettings, codec: WireCodec) -> Self {
        let outputs = Arc::new(OutputContracts::new(
            codec,
            vec![(settings.invoices_topic.clone(), Invoice::FULL_NAME)],
        ));
        Self {
            settings,
            outputs,
            metrics: None,
            reading: Reading::default(),
        }
    }

    fn codec(&self) -> &WireCodec {
        self.outputs.codec()
    }

    fn decode<T: Contract + serde::de::DeserializeOwned>(
        &self,
        record: &InputRecord<'_>,
    ) -> Result<T, ProcessError> {
        let value = record
            .value
            .ok_or_else(|| ProcessError::permanent("tombstone", "a record without a value"))?;
        Ok(self.codec().decode_cached_as(value, T::schema())?)
    }

    /// An invoice on `topic` under `key`, framed with the invoice contract's id (drafts are
    /// invoices too).
    fn invoice_output(
        &self,
        topic: &str,
        key: &str,
        invoice: &Invoice,
    ) -> Result<OutputRecord, ProcessError> {
        let id = self.outputs.id(&self.settings.invoices_topic)?;
        let value = encode_framed(id, invoice)
            .map_err(|e| ProcessError::permanent("contract_violation", e.to_string()))?;
        Ok(OutputRecord {
            topic: topic.to_owned(),
            key: Some(key.as_bytes().to_vec()),
            value: Some(value),
            headers: Vec::new(),
        })
    }

    /// Subscription `id` of `tenant` from the global table, when it holds it.
    fn known_subscription(
        &self,
        state: &State<'_>,
        tenant: &str,
        id: &str,
    ) -> Result<Option<Arc<Subscription>>, ProcessError> {
        let key = format!("{tenant}:{id}");
        state
            .global(SUBSCRIPTIONS, key.as_bytes())?
            .map(|value| Ok(self.codec().decode_shared(&value, Subscription::schema())?))
            .transpose()
    }

    fn subscription(
        &self,
        state: &State<'_>,
        tenant: &str,
        id: &str,
    ) -> Result<Arc<Subscription>, ProcessError> {
        self.known_subscription(state, tenant, id)?.ok_or_else(|| {
            ProcessError::permanent(
                "unknown_subscription",
                format!("no subscription `{tenant}:{id}`"),
            )
        })
    }

    fn zone(&self, state: &State<'_>, tenant: &str, entity: &str) -> Result<Zone, ProcessError> {
        legal_entity_zone(state, LEGAL_ENTITIES, self.codec(), tenant, entity)
    }

    /// An empty book of `subscription`'s `period`, and when the period ends: the start of its
    /// end day in the legal entity's time zone.
    fn new_book(
        &self,
        state: &State<'_>,
        tenant: &str,
        subscription: &Subscription,
        period: BillingPeriod,
    ) -> Result<(PeriodBook, i64), ProcessError> {
        let zone = self.zone(state, tenant, &subscription.legal_entity_id)?;
        let end = zone
            .start_of(period.end)
            .map_err(|e| ProcessError::permanent("contract_violation", e.to_string()))?;
        let book = PeriodBook::open(tenant, subscription, period.start, period.end);
        Ok((book, end))
    }

    /// Opens `subscription`'s `period` unless it has a book, open or closed.
    fn open_period(
        &self,
        state: &mut State<'_>,
        tenant: &str,
        subscription: &Subscription,
        period: BillingPeriod,
    ) -> Result<(), ProcessError> {
        let key = period_key(tenant, &subscription.subscription_id, period.start);
        if state.get(PERIODS, key.as_bytes())?.is_some() {
            return Ok(());
        }
        let (book, end) = self.new_book(state, tenant, subscription, period)?;
        state.put_json(PERIODS, key.as_bytes(), &book)?;
        Due::insert(state, &key, end)
    }

    /// Opens the current period of a subscription as it arrives, so that the period closes
    /// (with the plan's fees) whether or not it has usage.
    fn subscribed(
        &self,
        record: &InputRecord<'_>,
        state: &mut State<'_>,
    ) -> Result<Vec<OutputRecord>, ProcessError> {
        if record.value.is_none() {
            // A subscription removed: its open periods close as they are.
            return Ok(Vec::new());
        }
        let subscription: Subscription = self.decode(record)?;
        let tenant = subscription.metadata.tenant_id.clone();
        let period = BillingPeriod {
            start: subscription.current_period_start,
            end: subscription.current_period_end,
        };
        if period.end <= period.start {
            return Err(ProcessError::permanent(
                "contract_violation",
                format!(
                    "subscription `{tenant}:{}`: its current period ends before it starts",
                    subscription.subscription_id
                ),
            ));
        }
        let zone = self.zone(state, &tenant, &subscription.legal_entity_id)?;
        if fees::continues_on(&subscription, &zone, period.start)? {
            self.open_period(state, &tenant, &subscription, period)?;
        }
        Ok(Vec::new())
    }

    /// Books a charge in its period, or in the next open one when its period is closed.
    fn charge(
        &self,
        record: &InputRecord<'_>,
        state: &mut State<'_>,
    ) -> Result<Vec<OutputRecord>, ProcessError> {
        let charge: BillingCharge = self.decode(record)?;
        let tenant = charge.metadata.tenant_id.clone();
        let mut period = BillingPeriod {
            start: charge.period_start,
            end: charge.period_end,
        };
        let mut corrects = None;
        loop {
            let key = period_key(&tenant, &charge.subscription_id, period.start);
            // Master data is read only for a period seen the first time, or to find the next
            // one: most charges land in a book that is open already.
            let (mut book, opened_ending) =
                match state.get_json::<PeriodBook>(PERIODS, key.as_bytes())? {
                    Some(book) => (book, None),
                    None => {
                        let subscription =
                            self.subscription(state, &tenant, &charge.subscription_id)?;
                        let (book, end) = self.new_book(state, &tenant, &subscription, period)?;
                        (book, Some(end))
                    }
                };
            let mark = mark_key(&key, &charge);
            if state.get(BOOKED, &mark)?.is_some() {
                return Ok(Vec::new());
            }
            if book.closed {
                let subscription = self.subscription(state, &tenant, &charge.subscription_id)?;
                corrects = corrects.or(Some((book.start, book.end)));
                period = next_period(&subscription, book.end)?;
                continue;
            }
            let line = book.book(&charge, corrects);
            if let (Some(metrics), Some(_)) = (&self.metrics, corrects) {
                metrics.correction();
            }
            let rating_id = charge.rating_id.clone();
            state.put_json(BOOKED, &mark, &Mark { line, rating_id })?;
            state.put_json(PERIODS, key.as_bytes(), &book)?;
            if let Some(end) = opened_ending {
                Due::insert(state, &key, end)?;
            }
            return Ok(Vec::new());
        }
    }

    /// Closes the period `key`: its draft invoice, if it bills anything, and the next period
    /// opened while the subscription goes on. Everything that can fail is done before the
    /// first write, so that a period that cannot close leaves the partition's state as it was.
    fn close(
        &self,
        state: &mut State<'_>,
        key: &str,
        now: i64,
    ) -> Result<Option<OutputRecord>, ProcessError> {
        let Some(mut book) = state.get_json::<PeriodBook>(PERIODS, key.as_bytes())? else {
            Due::remove(state, key)?;
            return Ok(None);
        };
        if book.closed {
            Due::remove(state, key)?;
            return Ok(None);
        }
        let subscription = self.known_subscription(state, &book.tenant, &book.subscription_id)?;
        let zone = self.zone(state, &book.tenant, &book.legal_entity_id)?;
        let (fees, next) = match &subscription {
            Some(subscription) => {
                let fees =
                    fees::fee_lines(state, self.codec(), RATE_CARDS, &zone, subscription, &book)?;
                let next = if fees::continues_on(subscription, &zone, book.end)? {
                    let period = next_period(subscription, book.end)?;
                    Some(self.new_book(state, &book.tenant, subscription, period)?)
                } else {
                    None
                };
                (fees, next)
            }
            None => (Vec::new(), None),
        };
        let draft = if fees.is_empty() && book.lines.is_empty() {
            tracing::debug!(period = %key, "period closed with nothing to bill");
            None
        } else {
            let rating_ids = rating_ids(state, key, &book)?;
            let draft = book
                .draft(
                    &fees,
                    &rating_ids,
                    book.end,
                    i32::from(self.settings.payment_days),
                    now,
                )
                .map_err(|e| ProcessError::permanent("contract_violation", e))?;
            let entity_key = format!("{}:{}", book.tenant, book.legal_entity_id);
            tracing::info!(period = %key, invoice = %draft.invoice_id, "period closed");
            Some(self.invoice_output(&self.settings.drafts_topic, &entity_key, &draft)?)
        };
        Due::remove(state, key)?;
        // The lines are on the invoice now; the marks stay, so that a redelivered charge is
        // not booked again in the next period.
        book.closed = true;
        book.lines.clear();
        state.put_json(PERIODS, key.as_bytes(), &book)?;
        if let Some((next, end)) = next {
            let next_key = period_key(&book.tenant, &book.subscription_id, next.start);
            if state.get(PERIODS, next_key.as_bytes())?.is_none() {
                state.put_json(PERIODS, next_key.as_bytes(), &next)?;
                Due::insert(state, &next_key, end)?;
            }
        }
        if let Some(metrics) = &self.metrics {
            metrics.closed();
        }
        Ok(draft)
    }

    /// Numbers a draft from its legal entity's sequence and issues it.
    fn draft(
        &self,
        record: &InputRecord<'_>,
        state: &mut State<'_>,
    ) -> Result<Vec<OutputRecord>, ProcessError> {
        let draft: Invoice = self.decode(record)?;
        let tenant = draft.metadata.tenant_id.clone();
        if state.get(NUMBERED, draft.invoice_id.as_bytes())?.is_some() {
            return Ok(Vec::new());
        }
        let entity_key = format!("{tenant}:{}", draft.legal_entity_id);
        let sequence = state
            .get_json::<u64>(SEQUENCES, entity_key.as_bytes())?
            .unwrap_or(0)
            + 1;
        state.put_json(SEQUENCES, entity_key.as_bytes(), &sequence)?;
        let number = invoice_number(&draft.legal_entity_id, sequence);
        state.put_json(NUMBERED, draft.invoice_id.as_bytes(), &number)?;
        let mut issued = draft;
        issued.invoice_number = number;
        issued.status = InvoiceStatus::Issued;
        issued.metadata.event_id = format!("{}:issued", issued.invoice_id);
        let at = record.timestamp_ms.map_or_else(now_micros, |ms| ms * 1_000);
        issued.metadata.produced_at = at;
        tracing::info!(invoice = %issued.invoice_id, number = %issued.invoice_number, total = %issued.total_amount, "invoice issued");
        if let Some(metrics) = &self.metrics {
            metrics.issued();
        }
        let key = format!("{tenant}:{}", issued.invoice_id);
        Ok(vec![self.invoice_output(
            &self.settings.invoices_topic,
            &key,
            &issued,
        )?])
    }
}

impl App for PeriodClose {
    const NAME: &'static str = "period-close";
    const ABOUT: &'static str =
        "Closes each subscription's billing period in its legal entity's time zone and issues its invoice";
    type Settings = PeriodCloseSettings;

    fn build(settings: PeriodCloseSettings, registry: &RegistryAccess) -> Self {
        Self::new(settings, WireCodec::new(registry.clone()))
    }

    fn register_metrics(
        &mut self,
        registry: &prometheus::Registry,
    ) -> Result<(), prometheus::Error> {
        self.metrics = Some(Arc::new(PeriodMetrics::new(registry, Self::NAME)?));
        Ok(())
    }
}

impl Processor for PeriodClose {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn input_topics(&self) -> Vec<String> {
        vec![
            self.settings.charges_topic.clone(),
            self.settings.drafts_topic.clone(),
            self.settings.subscriptions_topic.clone(),
        ]
    }

    fn output_topics(&self) -> Vec<String> {
        vec![
            self.settings.drafts_topic.clone(),
            self.settings.invoices_topic.clone(),
        ]
    }

    fn state(&self) -> StateSpec {
        StateSpec::stateless()
            .store(PERIODS)
            .store(BOOKED)
            .store(DUE)
            .store(SEQUENCES)
            .store(NUMBERED)
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
        if record.topic == self.settings.drafts_topic {
            self.draft(record, state)
        } else if record.topic == self.settings.subscriptions_topic {
            self.subscribed(record, state)
        } else {
            let at = record.timestamp_ms.map_or_else(now_micros, |ms| ms * 1_000);
            self.reading.read(record.partition, at);
            self.charge(record, state)
        }
    }

    fn wake_interval(&self) -> Option<Duration> {
        Some(self.settings.close_check_interval)
    }

    /// Closes the partition's periods whose close has come by the wall clock, once the
    /// partition's charges are read up to it (`reading.rs`): a period with no late record has
    /// nothing else to close it.
    fn wake(
        &mut self,
        wake: &Wake,
        state: &mut State<'_>,
    ) -> Result<Vec<OutputRecord>, ProcessError> {
        let now = now_micros();
        let first = wake.global_updates_then.is_none();
        let read_to = self.reading.check(wake.partition, first, now);
        let grace = i64::try_from(self.settings.grace.as_micros()).unwrap_or(i64::MAX);
        let due = Due::read(state)?;
        let mut outputs = Vec::new();
        for (key, end) in &due.0 {
            if end.saturating_add(grace) > read_to {
                continue;
            }
            match self.close(state, key, now) {
                Ok(draft) => outputs.extend(draft),
                Err(err @ ProcessError::Fatal { .. }) => return Err(err),
                // One period that cannot close (its rate card does not decode, say) holds up
                // no other: it is tried again at the next check.
                Err(err) => {
                    tracing::warn!(period = %key, error = %err, "period not closed; tried again at the next check");
                    if let Some(metrics) = &self.metrics {
                        metrics.close_failed();
                    }
                }
            }
        }
        if let Some(metrics) = &self.metrics {
            let stale_after = self.settings.close_check_interval * 3;
            let open = state.entries_with_prefix(DUE, b"")?.len();
            metrics.set_open(wake.partition, open, stale_after);
        }
        Ok(outputs)
    }
}
