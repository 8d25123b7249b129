//! The one trait a processor implements, and the records it sees and returns.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::state::{State, StateSpec};

/// A Kafka header: name and raw value. The protocol lets a value be null, which is not an
/// empty value: `None` keeps it null through outputs and dead letters.
pub type Header = (String, Option<Vec<u8>>);

/// One input record as the processor sees it.
#[derive(Debug, Clone, Copy)]
pub struct InputRecord<'a> {
    /// Source topic.
    pub topic: &'a str,
    /// Source partition.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
    /// Record timestamp in milliseconds since the epoch, when the broker gave one.
    pub timestamp_ms: Option<i64>,
    /// Record key.
    pub key: Option<&'a [u8]>,
    /// Record value; `None` for a tombstone.
    pub value: Option<&'a [u8]>,
    /// Record headers in order.
    pub headers: &'a [Header],
}

impl InputRecord<'_> {
    /// When the event this record carries entered the backbone: its [`EVENT_TIME`] header, or
    /// this record's timestamp when it has none (it is the event's first record).
    pub fn event_time_ms(&self) -> Option<i64> {
        event_time_ms(self.headers, self.timestamp_ms)
    }

    /// The value of the first header called `name`; `None` when there is none or it is null.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }
}

/// A record for the runtime to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRecord {
    /// Destination topic.
    pub topic: String,
    /// Record key (decides the partition).
    pub key: Option<Vec<u8>>,
    /// Record value; `None` for a tombstone.
    pub value: Option<Vec<u8>>,
    /// Headers to attach.
    pub headers: Vec<Header>,
}

/// Most bytes a record's framing takes in a record batch (Kafka's record format v2): its
/// length, attributes, timestamp and offset deltas, key and value lengths and header count,
/// each at its widest encoding.
const RECORD_FRAMING_BYTES: usize = 36;

/// Most bytes a header's two length prefixes take.
const HEADER_FRAMING_BYTES: usize = 10;

impl OutputRecord {
    /// The most bytes this record takes in a record batch: key, value, header names and
    /// values, and their framing at its widest. librdkafka's size check counts no more, and the
    /// broker's limit (`max.message.bytes`) counts the batch, which adds 61 bytes.
    pub fn size_bytes(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, value)| {
                HEADER_FRAMING_BYTES + name.len() + value.as_ref().map_or(0, Vec::len)
            })
            .sum();
        RECORD_FRAMING_BYTES
            + self.key.as_ref().map_or(0, Vec::len)
            + self.value.as_ref().map_or(0, Vec::len)
            + headers
    }
}

/// Why a record could not be processed, classified by what the runtime should do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcessError {
    /// A dependency is down (schema registry, broker): the partition is paused and the record
    /// retried with backoff for as long as it takes. Never dead-lettered: the record is fine.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// This record failed in a way that may pass on a later attempt: retried with backoff up
    /// to `runtime.max_attempts`, then dead-lettered as `retries_exhausted`.
    #[error("transient: {0}")]
    Transient(String),
    /// Will never succeed for this input: sent to the dead-letter topic, then processing goes on.
    #[error("{reason}: {detail}")]
    Permanent {
        /// Machine-readable reason from a small fixed set (it becomes a metric label).
        reason: &'static str,
        /// Human-readable explanation naming what is wrong.
        detail: String,
    },
    /// The processor cannot work at all (credentials refused, misconfiguration): it stops with
    /// this message and raises its alert metric. Never dead-lettered, nothing committed.
    #[error("fatal ({kind}): {detail}")]
    Fatal {
        /// What kind of failure, from a small fixed set (`authorization`, `configuration`).
        kind: &'static str,
        /// What to fix.
        detail: String,
    },
}

impl ProcessError {
    /// A permanent failure with `reason` and `detail`.
    pub fn permanent(reason: &'static str, detail: impl Into<String>) -> Self {
        Self::Permanent {
            reason,
            detail: detail.into(),
        }
    }

    /// The error class written on dead letters and logs.
    pub fn class(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "unavailable",
            Self::Transient(_) => "transient",
            Self::Permanent { .. } => "permanent",
            Self::Fatal { .. } => "fatal",
        }
    }
}

/// The header carrying the W3C trace context (`traceparent`) from stage to stage.
pub const TRACEPARENT: &str = "traceparent";

/// The header carrying when an event entered the backbone, in milliseconds since the epoch
/// (decimal text): the timestamp of its record on the first topic a stage read it from. The
/// runtime sets it on the outputs of an input without one and carries it on from an input with
/// one, so every record made from an event, down to its deliveries, can say how long ago the
/// event arrived (`backbone_event_latency_seconds`).
pub const EVENT_TIME: &str = "backbone.event.time";

/// When the event of a record with `headers` and `timestamp_ms` entered the backbone: its
/// [`EVENT_TIME`] header, or the record's timestamp when it has none.
pub fn event_time_ms(headers: &[Header], timestamp_ms: Option<i64>) -> Option<i64> {
    headers
        .iter()
        .find(|(name, _)| name == EVENT_TIME)
        .and_then(|(_, v)| std::str::from_utf8(v.as_deref()?).ok()?.parse().ok())
        .or(timestamp_ms)
}

/// The header a replay puts on every record it republishes: the replay's id.
pub const REPLAY_ID: &str = "backbone.replay.id";

/// Asynchronous preparation the runtime awaits before each [`Processor::process`] call, such
/// as resolving a record's schema id into a local cache. It keeps `process` synchronous and
/// free of network I/O.
pub trait Prefetch: Send + Sync {
    /// Prepares for `value`. Errors are classified like processing errors: transient ones are
    /// retried with backoff, permanent ones dead-letter the record.
    fn prefetch<'a>(
        &'a self,
        value: Option<&'a [u8]>,
    ) -> Pin<Box<dyn Future<Output = Result<(), ProcessError>> + Send + 'a>>;
}

/// Domain logic of one processor. `process` must be deterministic: the same input gives the
/// same outputs, so that a redelivered input reproduces identical records.
pub trait Processor: Send {
    /// Deploy name of the processor, used as consumer group, in dead letters and in logs.
    fn name(&self) -> &str;

    /// Topics this processor consumes.
    fn input_topics(&self) -> Vec<String>;

    /// Topics this processor may write to; the runtime makes sure they exist at start-up. One
    /// that is also an input is a repartition topic, created co-partitioned with the other
    /// inputs so that a stateful processor can re-key records to the key its state needs.
    fn output_topics(&self) -> Vec<String>;

    /// Output topics written as a table's changes: each record is its key's newest value, and
    /// readers need only the last one (an aggregate's running figures, an account's health).
    /// Under effectively-once delivery the runtime writes each key of these topics once per
    /// batch of a partition's consecutive inputs, at the batch's newest value, with the batch's
    /// changelog writes, as Kafka Streams' record cache does for a table's updates; the batch's
    /// inputs commit once it is acknowledged. Exactly-once holds them for the transaction and
    /// writes each key once before it commits. None by default.
    fn table_topics(&self) -> Vec<String> {
        Vec::new()
    }

    /// The state kept per partition (stores, dedup); none by default. The runtime restores it
    /// from its changelogs before a partition's first record.
    fn state(&self) -> StateSpec {
        StateSpec::stateless()
    }

    /// What the runtime awaits before each `process` call; nothing by default.
    fn prefetch(&self) -> Option<Arc<dyn Prefetch>> {
        None
    }

    /// Turns one input record and its partition's state into output records, or says why it
    /// cannot. State writes take effect only when it returns `Ok`.
    fn process(
        &mut self,
        record: &InputRecord<'_>,
        state: &mut State<'_>,
    ) -> Result<Vec<OutputRecord>, ProcessError>;

    /// How often the runtime calls [`wake`](Processor::wake) on each assigned partition; never
    /// by default.
    fn wake_interval(&self) -> Option<Duration> {
        None
    }

    /// Work on a partition's state that no input triggers, such as releasing records held back
    /// for reference data that has since arrived. Outputs and state writes are delivered and
    /// committed as an input's are, without an input offset; on an error nothing of the call is
    /// kept and the next wake tries again, so a failure only delays the work.
    fn wake(
        &mut self,
        _wake: &Wake,
        _state: &mut State<'_>,
    ) -> Result<Vec<OutputRecord>, ProcessError> {
        Ok(Vec::new())
    }
}

/// What a [`Processor::wake`] call knows of its partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wake {
    /// The partition number woken.
    pub partition: i32,
    /// [`State::global_updates`] when this partition's last wake succeeded; `None` on its
    /// first wake since this instance took it (a start or a rebalance). Equal to the current
    /// count: no reference data changed since.
    pub global_updates_then: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{BaseProducer, BaseRecord};

    /// librdkafka refuses a record whose size, as it counts it, is over `message.max.bytes`,
    /// before sending anything: a producer whose limit is exactly `size_bytes` must take it.
    #[test]
    fn size_bytes_is_never_below_librdkafkas_count() {
        let shapes = [
            (None, Some(0), 0),
            (Some(1), Some(1_000), 1),
            (Some(300), Some(70_000), 3),
            (Some(20_000), None, 40),
            (Some(0), Some(0), 200),
        ];
        for (key_len, value_len, header_count) in shapes {
            let record = OutputRecord {
                topic: "sizes".into(),
                key: key_len.map(|n| vec![b'k'; n]),
                value: value_len.map(|n| vec![b'v'; n]),
                headers: (0..header_count)
                    .map(|i| (format!("h-{i}"), Some(vec![b'x'; 200 * (i % 3)])))
                    .collect(),
            };
            let limit = record.size_bytes().max(1_000);
            // Nothing listens there: the check happens before any connection.
            let producer: BaseProducer = ClientConfig::new()
                .set("bootstrap.servers", "127.0.0.1:9")
                .set("message.max.bytes", limit.to_string())
                .create()
                .expect("producer");
            let send = |record: &OutputRecord| {
                let mut headers =
                    rdkafka::message::OwnedHeaders::new_with_capacity(record.headers.len());
                for (name, value) in &record.headers {
                    headers = headers.insert(rdkafka::message::Header {
                        key: name,
                        value: value.as_deref(),
                    });
                }
                let mut future = BaseRecord::<[u8], [u8]>::to(&record.topic).headers(headers);
                if let Some(key) = record.key.as_deref() {
                    future = future.key(key);
                }
                if let Some(value) = record.value.as_deref() {
                    future = future.payload(value);
                }
                producer.send(future).map_err(|(err, _)| err)
            };
            assert!(
                send(&record).is_ok(),
                "{key_len:?} {value_len:?} {header_count}"
            );
            // The check is real: a value far over the limit is refused.
            let over = OutputRecord {
                value: Some(vec![b'v'; limit + 1]),
                ..record
            };
            assert!(send(&over).is_err());
        }
    }
}
