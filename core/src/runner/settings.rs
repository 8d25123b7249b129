//! The `[runtime]` section: how the loop runs, the same for every processor.

use std::time::Duration;

use serde::Deserialize;

use crate::config::{ConfigError, Validate};
use crate::dead_letter::DEFAULT_MAX_DEAD_LETTER_BYTES;
use crate::state::StateSettings;
use crate::tenant::DEFAULT_CONTROLS_TOPIC;

/// How a processor's outputs, state and input offsets become durable together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// At-least-once with content-derived output ids: outputs are acknowledged before state and
    /// offsets commit, and the next stage drops what a redelivery reproduces. Works on every
    /// broker.
    #[default]
    EffectivelyOnce,
    /// Outputs, changelog writes and input offsets commit in one Kafka transaction. Needs a
    /// broker with transactions.
    ExactlyOnce,
}

/// The `[runtime.transaction]` config section, used under exactly-once delivery.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransactionSettings {
    /// Stable id of this instance (one per instance, kept across restarts): a restart with the
    /// same id aborts what the previous run left open and fences it if it still runs.
    pub transactional_id: Option<String>,
    /// Longest a transaction stays open before it commits.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Most inputs in one transaction.
    pub max_records: usize,
    /// How long the broker keeps a transaction open without news before aborting it, and how
    /// long commit and abort calls may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for TransactionSettings {
    fn default() -> Self {
        Self {
            transactional_id: None,
            commit_interval: Duration::from_millis(100),
            max_records: 1000,
            timeout: Duration::from_secs(60),
        }
    }
}

/// The `[runtime]` config section: how the loop runs, the same for every processor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSettings {
    /// Consumer group; the processor's name when absent.
    pub group_id: Option<String>,
    /// Partitions of output and dead-letter topics this processor has to create.
    pub topic_partitions: i32,
    /// First wait before retrying a transient failure; doubled per attempt, with jitter.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest wait between retries of a transient failure.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// How long a produced record may wait for the broker's acknowledgement.
    #[serde(with = "humantime_serde")]
    pub produce_timeout: Duration,
    /// Attempts at a record failing transiently before it is dead-lettered as
    /// `retries_exhausted`. Outages (registry, broker) are retried without limit.
    pub max_attempts: u32,
    /// Largest output record, as [`OutputRecord::size_bytes`] counts it. An input with a
    /// larger output is dead-lettered as `output_too_large` instead, with none of its outputs
    /// or state changes; keep it within the output topics' `max.message.bytes` less 61 bytes.
    pub max_output_bytes: usize,
    /// Largest dead letter (an input plus headers): the producer sends records this large and
    /// the dead-letter topics this processor creates take them. A larger dead letter stops the
    /// processor without committing its input.
    pub max_dead_letter_bytes: usize,
    /// Effectively-once (default) or exactly-once.
    pub delivery: Delivery,
    /// Transactions under exactly-once delivery.
    pub transaction: TransactionSettings,
    /// Where and how partition state is kept.
    pub state: StateSettings,
    /// The control topic through which an operator pauses a tenant at this stage
    /// (`backbone_core::tenant`); a stateful processor holds a paused tenant's records in its
    /// partition state until the tenant is resumed.
    pub tenant_controls: String,
}

/// librdkafka's default `message.max.bytes`, below the broker's default topic limit (1 MiB and
/// 12 bytes) by more than a batch's framing.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 1_000_000;

/// The range librdkafka accepts for `message.max.bytes`.
const PRODUCER_RECORD_BYTES: std::ops::RangeInclusive<usize> = 1_000..=1_000_000_000;

fn default_partitions() -> i32 {
    3
}

fn default_initial_backoff() -> Duration {
    Duration::from_millis(100)
}

fn default_max_backoff() -> Duration {
    Duration::from_secs(30)
}

fn default_produce_timeout() -> Duration {
    Duration::from_secs(30)
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        Self {
            group_id: None,
            topic_partitions: default_partitions(),
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
            produce_timeout: default_produce_timeout(),
            max_attempts: 5,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            max_dead_letter_bytes: DEFAULT_MAX_DEAD_LETTER_BYTES,
            delivery: Delivery::default(),
            transaction: TransactionSettings::default(),
            state: StateSettings::default(),
            tenant_controls: DEFAULT_CONTROLS_TOPIC.to_owned(),
        }
    }
}

impl Validate for RuntimeSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            key: format!("runtime.{key}"),
            message: message.to_owned(),
        };
        if self.max_attempts < 1 {
            return Err(invalid("max_attempts", "must be at least 1"));
        }
        if self.topic_partitions < 1 {
            return Err(invalid("topic_partitions", "must be at least 1"));
        }
        if !PRODUCER_RECORD_BYTES.contains(&self.max_output_bytes) {
            return Err(invalid(
                "max_output_bytes",
                "must be between 1000 and 1000000000 (librdkafka's range)",
            ));
        }
        if !PRODUCER_RECORD_BYTES.contains(&self.max_dead_letter_bytes) {
            return Err(invalid(
                "max_dead_letter_bytes",
                "must be between 1000 and 1000000000 (librdkafka's range)",
            ));
        }
        if self.initial_backoff.is_zero() || self.max_backoff < self.initial_backoff {
            return Err(invalid(
                "max_backoff",
                "must be at least initial_backoff, and initial_backoff more than 0s",
            ));
        }
        let transaction = &self.transaction;
        if self.delivery == Delivery::ExactlyOnce
            && transaction
                .transactional_id
                .as_deref()
                .is_none_or(|id| id.trim().is_empty())
        {
            return Err(invalid(
                "transaction.transactional_id",
                "required when runtime.delivery = \"exactly-once\": give each instance its own id and keep it across restarts",
            ));
        }
        if transaction.max_records < 1 {
            return Err(invalid("transaction.max_records", "must be at least 1"));
        }
        if transaction.commit_interval.is_zero()
            || transaction.timeout <= transaction.commit_interval
        {
            return Err(invalid(
                "transaction.timeout",
                "must be longer than transaction.commit_interval, which must be more than 0s",
            ));
        }
        if self.tenant_controls.trim().is_empty() {
            return Err(invalid("tenant_controls", "must name the control topic"));
        }
        self.state.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_limits_outside_librdkafkas_range_are_refused() {
        let refused = |settings: RuntimeSettings| settings.validate().unwrap_err().to_string();
        assert!(refused(RuntimeSettings {
            max_output_bytes: 999,
            ..RuntimeSettings::default()
        })
        .starts_with("config key `runtime.max_output_bytes`"));
        assert!(refused(RuntimeSettings {
            max_dead_letter_bytes: 1_000_000_001,
            ..RuntimeSettings::default()
        })
        .starts_with("config key `runtime.max_dead_letter_bytes`"));
        assert!(RuntimeSettings::default().validate().is_ok());
    }

    #[test]
    fn backoff_below_initial_is_refused() {
        let settings = RuntimeSettings {
            max_backoff: Duration::from_millis(1),
            ..RuntimeSettings::default()
        };
        assert!(settings
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("config key `runtime.max_backoff`"));
    }
}
