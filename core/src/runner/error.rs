//! What a run did, and why it stopped before being asked to.

use rdkafka::error::KafkaError;

use crate::admin::AdminError;
use crate::metrics::fatal_kind;
use crate::state::StateFailure;

/// What a run did, for the caller's summary and for tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Inputs consumed and resolved (processed or dead-lettered).
    pub consumed: u64,
    /// Output records produced and acknowledged.
    pub produced: u64,
    /// Inputs sent to a dead-letter topic.
    pub dead_lettered: u64,
    /// Transient failures that were retried.
    pub retries: u64,
    /// Inputs dropped as duplicates (counted in `consumed` too).
    pub duplicates: u64,
}

/// A record the producer or the broker refused for good, and the input it was made from.
#[derive(Debug)]
pub struct RefusedRecord {
    /// The input, as `topic[partition]@offset`.
    pub input: String,
    /// The record's topic.
    pub topic: String,
    /// The record's size, as [`OutputRecord::size_bytes`] counts it.
    pub bytes: usize,
    /// The client's error.
    pub source: KafkaError,
}

/// Why the loop stopped before being asked to.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A Kafka client could not be created or subscribed.
    #[error("kafka client: {0}")]
    Client(#[source] KafkaError),
    /// Topics could not be made ready at start-up.
    #[error(transparent)]
    Topics(#[from] AdminError),
    /// The broker did not acknowledge an output; the input was not committed and will be
    /// redelivered after a restart.
    #[error("producing to `{topic}` failed: {source}")]
    Produce {
        /// The output's topic.
        topic: String,
        /// The client's error.
        source: KafkaError,
    },
    /// The broker (or the producer) refused an output for good: larger than its topic takes,
    /// or invalid for it. Neither that input nor any after it was committed.
    #[error("`{}` refused a {}-byte output of {} ({}); nothing from that input on was committed: {fix}, then restart",
        .record.topic, .record.bytes, .record.input, .record.source)]
    OutputRefused {
        /// The output and its input.
        record: Box<RefusedRecord>,
        /// What to change.
        fix: &'static str,
    },
    /// A dead letter was refused for good, so its input could be neither processed nor put
    /// aside. Neither that input nor any after it was committed: nothing is lost.
    #[error("`{}` refused the {}-byte dead letter of {} ({}); nothing from that input on was committed: raise runtime.max_dead_letter_bytes and the topic's max.message.bytes, then restart",
        .0.topic, .0.bytes, .0.input, .0.source)]
    DeadLetterRefused(Box<RefusedRecord>),
    /// The consumer hit an error librdkafka cannot recover from.
    #[error("consumer failed fatally: {0}")]
    Fatal(#[source] KafkaError),
    /// The broker refused our credentials or permissions; nothing was dead-lettered or
    /// committed past the last processed record.
    #[error("the broker refused access, fix credentials or ACLs and restart: {0}")]
    Refused(#[source] KafkaError),
    /// The processor reported it cannot work at all.
    #[error("processor stopped ({kind}): {detail}")]
    Stopped {
        /// Failure kind from a fixed set.
        kind: &'static str,
        /// What to fix.
        detail: String,
    },
    /// The metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(String),
    /// A partition's state could not be opened or restored from its changelog.
    #[error("partition state: {0}")]
    State(#[from] StateFailure),
    /// The input topics do not fit the processor (missing, or not co-partitioned).
    #[error("{0}")]
    Inputs(String),
    /// The broker refuses transactions (our durable broker does, by design).
    #[error(
        "the broker refuses transactions; use runtime.delivery = \"effectively-once\" with it: {0}"
    )]
    TransactionsRefused(#[source] KafkaError),
    /// A newer instance with the same transactional id took over; this one must stop.
    #[error("fenced by a newer instance with the same runtime.transaction.transactional_id: {0}")]
    Fenced(#[source] KafkaError),
    /// A transaction failed; it was aborted and nothing of it is committed. The restart
    /// rebuilds state from the changelog and processes its inputs again.
    #[error("transaction failed and was aborted: {0}")]
    Transaction(#[source] KafkaError),
}

impl RuntimeError {
    /// The `kind` label of the alert metric for this stop.
    pub fn fatal_kind(&self) -> &'static str {
        match self {
            Self::Refused(_) => fatal_kind::AUTH,
            Self::Stopped { kind, .. } if *kind == "authorization" => fatal_kind::AUTH,
            Self::TransactionsRefused(_) => fatal_kind::AUTH,
            Self::Stopped { .. }
            | Self::Metrics(_)
            | Self::Inputs(_)
            | Self::State(_)
            | Self::OutputRefused { .. }
            | Self::DeadLetterRefused(_) => fatal_kind::CONFIG,
            Self::Client(_)
            | Self::Topics(_)
            | Self::Produce { .. }
            | Self::Fatal(_)
            | Self::Fenced(_)
            | Self::Transaction(_) => fatal_kind::KAFKA,
        }
    }
}
