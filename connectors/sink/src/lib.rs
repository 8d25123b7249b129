//! The runtime every Backbone sink stands on: it consumes one topic and delivers batches to an
//! external system, the way `backbone-core` runs processors.
//!
//! A sink implements [`Sink`]: how an input record becomes a [`Delivery`] under an idempotency
//! key, and how a batch of deliveries reaches the destination. The runtime owns the rest,
//! identically for every sink:
//!
//! - a delivery ledger in RocksDB, keyed by idempotency key, that records each delivery's state
//!   (pending, in flight, confirmed, rejected): a key already confirmed is not sent again, so a
//!   replay of the input is answered `ALREADY_DELIVERED` without a request;
//! - input offsets stored for commit only once every delivery made from the record has an
//!   outcome in the ledger and its `DeliveryResult` (and dead letter, if rejected) is
//!   acknowledged by the broker; a crash redelivers, the idempotency key absorbs it;
//! - transient failures retried without end, with exponential backoff, full jitter and the
//!   destination's `Retry-After`; a [`circuit`] breaker pauses the input partitions while the
//!   destination keeps failing and probes before closing;
//! - rejections dead-lettered with the destination's answer; a refused credential stops the
//!   sink with its alert metric raised, and nothing is dead-lettered or committed;
//! - what a sink announces of a delivery the destination took ([`Sink::announce`]) on the
//!   broker before the delivery is confirmed in the ledger, so a crash announces it again
//!   rather than never.

pub mod app;
pub mod backoff;
pub mod circuit;
pub mod http;
pub mod ledger;
pub mod metrics;
mod runner;
pub mod settings;

use std::future::Future;
use std::time::{Duration, SystemTime};

use backbone_core::{InputRecord, OutputRecord};
use backbone_schemas::types::{Amount, Contract, Destination};
use backbone_schemas::wire::encode_framed;
use backbone_schemas::{OutputContracts, WireCodec};

pub use ledger::{DeliveryLedger, DeliveryState, LedgerEntry, LedgerError};
pub use runner::{run, RunContext, SinkError, SinkSummary, DESTINATION_REJECTED};
pub use settings::{DestinationSettings, SinkSettings};

/// Money a delivery or one of its source records carries, for `DeliveryResult` and drift.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Money {
    /// The amount.
    pub amount: Amount,
    /// ISO 4217 currency code.
    pub currency: String,
}

/// An input record a delivery settles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Input partition.
    pub partition: i32,
    /// Input offset.
    pub offset: i64,
    /// Money this record contributes to the delivery.
    pub money: Option<Money>,
}

/// Where a sink announces what destinations took: one topic, values of one contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcements {
    /// The topic.
    pub topic: String,
    /// Full name of the values' contract ([`Contract::FULL_NAME`]).
    pub contract: &'static str,
}

/// Collects the records a sink announces for a delivery, encoded as the announcements'
/// contract.
pub struct Announcer<'a> {
    contracts: &'a OutputContracts,
    topic: &'a str,
    records: Vec<OutputRecord>,
}

/// An announcement that could not be encoded.
#[derive(Debug, thiserror::Error)]
#[error("announcing on `{topic}`: {message}")]
pub struct AnnounceError {
    /// The announcements' topic.
    pub topic: String,
    /// What failed.
    pub message: String,
}

impl<'a> Announcer<'a> {
    pub(crate) fn new(contracts: &'a OutputContracts, topic: &'a str) -> Self {
        Self {
            contracts,
            topic,
            records: Vec::new(),
        }
    }

    /// Announces `value` under `key`.
    pub fn announce<T: Contract>(&mut self, key: &str, value: &T) -> Result<(), AnnounceError> {
        let failed = |message: String| AnnounceError {
            topic: self.topic.to_owned(),
            message,
        };
        let id = self
            .contracts
            .id(self.topic)
            .map_err(|e| failed(e.to_string()))?;
        let bytes = encode_framed(id, value).map_err(|e| failed(e.to_string()))?;
        self.records.push(OutputRecord {
            topic: self.topic.to_owned(),
            key: Some(key.as_bytes().to_vec()),
            value: Some(bytes),
            headers: Vec::new(),
        });
        Ok(())
    }

    pub(crate) fn into_records(self) -> Vec<OutputRecord> {
        self.records
    }
}

/// One request to the destination, under its idempotency key.
#[derive(Debug, Clone)]
pub struct Delivery<P> {
    /// Idempotency key: the same input always gives the same key, so a redelivery or replay is
    /// recognised by the ledger or by the destination.
    pub key: String,
    /// Tenant the delivery belongs to.
    pub tenant_id: String,
    /// What the destination receives.
    pub payload: P,
    /// Money the delivery carries; copied to its source when the runtime fills `sources`.
    pub money: Option<Money>,
    /// Input records this delivery settles. Left empty by [`Sink::accept`], which the runtime
    /// fills with the accepted record; a delivery from [`Sink::due`] lists the records it holds.
    pub sources: Vec<Source>,
    /// Ids of the items inside the delivery (the posting lines of a journal batch), recorded in
    /// the ledger against `key` once it is confirmed, so a redelivered item can be recognised.
    pub members: Vec<String>,
    /// The entity the delivery acts for, when its deliveries must go out one at a time and
    /// their results reach that entity's reader: deliveries of one subject are sent in the
    /// order they arrive, each once the one before settled, and the `DeliveryResult` is keyed
    /// `<tenant>:<subject>`, in the partition of the entity's other records, instead of
    /// `<tenant>:<key>`.
    pub subject: Option<String>,
}

impl<P> Delivery<P> {
    /// A delivery of `payload` under `key`, with no money and sources to be filled in.
    pub fn new(key: impl Into<String>, tenant_id: impl Into<String>, payload: P) -> Self {
        Self {
            key: key.into(),
            tenant_id: tenant_id.into(),
            payload,
            money: None,
            sources: Vec::new(),
            members: Vec::new(),
            subject: None,
        }
    }

    /// The same delivery with its results keyed by `subject` (see [`Delivery::subject`]).
    pub fn about(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// What orders this delivery among the others: its subject, or else its key. Deliveries
    /// of one ordering key go out one at a time, in the order they arrived.
    pub fn ordering_key(&self) -> &str {
        self.subject.as_deref().unwrap_or(&self.key)
    }

    /// The same delivery carrying `money`.
    pub fn with_money(mut self, money: Option<Money>) -> Self {
        self.money = money;
        self
    }
}

/// What a sink makes of one input record.
#[derive(Debug)]
pub enum Accepted<P> {
    /// Deliver these; the record is settled when all of them have an outcome. None settles it
    /// at once (a record the destination does not need).
    Deliver(Vec<Delivery<P>>),
    /// The sink keeps the record for a later delivery from [`Sink::due`] that lists it among
    /// its sources; until then its offset is not committed.
    Held,
    /// The record is already inside the confirmed delivery `key` (the ledger said so): it is
    /// settled as `ALREADY_DELIVERED` without a request.
    AlreadyDelivered {
        /// Key of the confirmed delivery that holds it.
        key: String,
        /// Money the record carries.
        money: Option<Money>,
    },
}

impl<P> Accepted<P> {
    /// One delivery of `payload` under `key`, carrying `money`.
    pub fn one(
        key: impl Into<String>,
        tenant_id: impl Into<String>,
        payload: P,
        money: Option<Money>,
    ) -> Self {
        Self::Deliver(vec![
            Delivery::new(key, tenant_id, payload).with_money(money)
        ])
    }
}

/// Outcomes of one request per delivery of `batch`, `concurrency` in flight at all times,
/// in the batch's order: the `deliver` of a sink whose destination takes one record a request.
pub async fn one_request_each<'a, P, F, Fut>(
    batch: &[&'a Delivery<P>],
    concurrency: usize,
    post: F,
) -> Result<Vec<Outcome>, DeliveryError>
where
    F: Fn(&'a Delivery<P>) -> Fut,
    Fut: std::future::Future<Output = Result<Outcome, DeliveryError>>,
{
    use futures::{stream, StreamExt, TryStreamExt};
    let posts: Vec<Fut> = batch.iter().map(|delivery| post(delivery)).collect();
    stream::iter(posts)
        .buffered(concurrency)
        .try_collect()
        .await
}

/// Rejects `record` when the field `field` it is delivered under, `value`, is empty: without
/// a key the destination cannot recognise a resend.
pub fn require_key(record: &InputRecord<'_>, field: &str, value: &str) -> Result<(), Rejection> {
    if value.is_empty() {
        return Err(Rejection::new(
            "missing_idempotency_key",
            format!(
                "{}[{}]@{}: {field} is empty",
                record.topic, record.partition, record.offset
            ),
        ));
    }
    Ok(())
}

/// An input record the sink cannot turn into a delivery: it is dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Rejection {
    /// Machine-readable reason from a small fixed set (a metric label and DLQ header).
    pub reason: &'static str,
    /// What is wrong, naming the field.
    pub detail: String,
}

impl Rejection {
    /// A rejection for `reason`, explained by `detail`.
    pub fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// The destination's answer for one delivery of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted now; `reference` is the destination's id for it.
    Delivered {
        /// The destination's id, if it gave one.
        reference: Option<String>,
    },
    /// The destination already held this key (a retry after a lost answer, or a replay).
    AlreadyDelivered {
        /// The destination's id, if it gave one.
        reference: Option<String>,
    },
    /// Refused for good: the delivery's records go to the dead-letter topic with this answer.
    Rejected {
        /// The destination's error code, e.g. `unsupported_currency` or `http_422`.
        code: String,
        /// The destination's message.
        message: String,
    },
    /// Not accepted this time (throttled, busy): tried again after a backoff.
    Retry {
        /// Why, for logs and the retry metric's `reason` label.
        reason: RetryReason,
        /// What the destination said.
        message: String,
        /// The destination's `Retry-After`, if it sent one.
        after: Option<Duration>,
    },
}

/// Why a delivery is retried: the `reason` label of the retry metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// 429 or a rate limit.
    Throttled,
    /// 5xx, or the destination could not be reached.
    Unavailable,
    /// No answer in time: the request may or may not have been applied.
    Timeout,
    /// The destination took the delivery and answers later (a file dropped for an importer
    /// that writes an acknowledgement): asked again after the outcome's `after`, at that
    /// pace, and not counted against the destination by the circuit breaker.
    Awaiting,
}

impl RetryReason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Throttled => "throttled",
            Self::Unavailable => "unavailable",
            Self::Timeout => "timeout",
            Self::Awaiting => "awaiting",
        }
    }
}

/// A batch that failed as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Every delivery of the batch is retried.
    #[error("{reason:?}: {message}")]
    Transient {
        /// Why.
        reason: RetryReason,
        /// What the destination or the transport said.
        message: String,
        /// The destination's `Retry-After`, if it sent one.
        after: Option<Duration>,
    },
    /// The destination refused the sink's credentials (401, or 403 that is not a throttle):
    /// the sink stops and raises its alert metric; nothing is dead-lettered.
    #[error("the destination refused the credentials (HTTP {status}): {message}")]
    Unauthorized {
        /// HTTP status.
        status: u16,
        /// The destination's message.
        message: String,
    },
}

/// What the runtime hands a sink with each input record.
pub struct SinkContext<'a> {
    /// Decodes the record against the registry; its writer schema is already cached.
    pub codec: &'a WireCodec,
    /// The delivery ledger, read-only: what was confirmed before.
    pub ledger: &'a DeliveryLedger,
}

/// Domain logic of one sink. The runtime calls `accept` for each input record, then delivers
/// what it returns, and what `due` returns, in batches.
pub trait Sink: Send + 'static {
    /// What one request to the destination carries.
    type Payload: Send + Sync + 'static;

    /// Deploy name, used as consumer group, in dead letters, logs and metrics.
    fn name(&self) -> &str;

    /// The system delivered to.
    fn destination(&self) -> Destination;

    /// The topic consumed.
    fn input_topic(&self) -> &str;

    /// Turns one input record into deliveries, or says why it cannot (the record is then
    /// dead-lettered). Must be deterministic: a redelivered record gives the same keys.
    fn accept(
        &mut self,
        record: &InputRecord<'_>,
        context: &SinkContext<'_>,
    ) -> Result<Accepted<Self::Payload>, Rejection>;

    /// Deliveries that have become due by `now` from records the sink holds (a journal
    /// window that closed); none by default.
    fn due(&mut self, now: SystemTime, ledger: &DeliveryLedger) -> Vec<Delivery<Self::Payload>> {
        let _ = (now, ledger);
        Vec::new()
    }

    /// The partitions were taken away: forget what is held from them, their next owner reads
    /// them again from the last committed offset.
    fn revoked(&mut self, partitions: &[i32]) {
        let _ = partitions;
    }

    /// Sends `batch`: one outcome per delivery, in order, or an error for the whole batch.
    fn deliver(
        &self,
        batch: &[&Delivery<Self::Payload>],
    ) -> impl Future<Output = Result<Vec<Outcome>, DeliveryError>> + Send;

    /// Where the sink announces what the destination took ([`Sink::announce`]); none by
    /// default.
    fn announcements(&self) -> Option<Announcements> {
        None
    }

    /// Announces what the destination holds of `delivery`, which it has just answered as
    /// delivered or already delivered; nothing by default. The runtime waits for the broker
    /// to have the records before it confirms the delivery in the ledger, so a crash in
    /// between redelivers the input and announces again: readers take an announcement's
    /// identity once.
    fn announce(
        &self,
        delivery: &Delivery<Self::Payload>,
        announcer: &mut Announcer<'_>,
    ) -> Result<(), AnnounceError> {
        let _ = (delivery, announcer);
        Ok(())
    }
}

/// Decodes a record's value as contract `T`; an undecodable value or a tombstone is a
/// rejection naming the topic and offset.
pub fn decode<T>(record: &InputRecord<'_>, codec: &WireCodec) -> Result<T, Rejection>
where
    T: backbone_schemas::types::Contract + serde::de::DeserializeOwned,
{
    let value = record.value.ok_or_else(|| {
        Rejection::new(
            "missing_value",
            format!(
                "{}[{}]@{} is a tombstone; a {} was expected",
                record.topic,
                record.partition,
                record.offset,
                T::FULL_NAME
            ),
        )
    })?;
    codec.decode_cached_as(value, T::schema()).map_err(|err| {
        Rejection::new(
            err.reason(),
            format!(
                "{}[{}]@{}: {err}",
                record.topic, record.partition, record.offset
            ),
        )
    })
}
