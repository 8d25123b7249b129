//! Test support for Backbone's integration tests, used as a dev-dependency only.
//!
//! Tests run against real processes: the shared Apache Kafka broker that `make test` starts (its
//! address in `BACKBONE_TEST_BOOTSTRAP`), or throwaway Kafka nodes ([`KafkaBroker::start`],
//! [`KafkaCluster::start`]) for tests that kill and restart a broker, or a node that wants SASL
//! over TLS ([`SecuredBroker::start`]). Each test gets its own topics ([`unique_topic`]), so tests never see
//! each other's records. Every wait has a deadline; nothing sleeps to synchronise.

mod broker;
mod forward;
mod kafka;
mod process;
mod reference;
mod running;
mod secured;
mod tally;
mod tls;

pub use broker::{run_python_client, KafkaBroker, KafkaCluster};
pub use forward::Forward;
pub use kafka::{
    await_committed, committed_offsets, committed_total, consume_all, consume_until, consume_while,
    create_topic, dead_letter_reasons, end_offsets_total, hold_offset_open, produce, produce_paced,
    produce_tombstone, produce_with_raw_header_name, shared_settings, unique_group, unique_topic,
    ConsumedRecord, SteadyStream, TestRecord,
};
pub use process::ChildProcess;
pub use reference::{reference_price, units};
pub use running::RunningProcessor;
pub use secured::{SaslMechanism, SecuredBroker, SASL_PASSWORD, SASL_USER};
pub use tally::{tally_counts, Tally, TOTALS};
pub use tls::{IssuedCert, TestCa};

/// Why a test helper failed.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// A Kafka request failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Topics could not be created.
    #[error(transparent)]
    Admin(#[from] backbone_core::admin::AdminError),
    /// A condition was not met before its deadline.
    #[error("timed out after {waited:?}: {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        waited: std::time::Duration,
    },
    /// A process could not be started or stopped.
    #[error("process `{program}`: {message}")]
    Process {
        /// The program.
        program: String,
        /// What went wrong.
        message: String,
    },
}
