//! The shared runtime every Backbone processor stands on.
//!
//! A processor implements [`Processor`]: one decoded input record in, output records or a
//! classified error out. The runtime owns everything around it, identically for every
//! processor: typed config with environment overrides, Kafka client settings, the consume →
//! process → produce loop, dead letters, retries of transient errors and graceful shutdown.
//!
//! Delivery contract (at-least-once, made effectively-once downstream): an input's offset is
//! stored for commit only after every output it produced, or its dead letter, has been
//! acknowledged by the broker. A crash therefore redelivers inputs, never skips them; processors
//! derive output ids from content so that a redelivery reproduces identical outputs. An input
//! with an output over `runtime.max_output_bytes` is dead-lettered whole instead, with none of
//! its outputs or state changes; a record the broker refuses all the same stops the processor
//! without committing it.

pub mod admin;
pub mod app;
pub mod certificates;
mod changelog;
pub mod config;
pub mod connect;
mod contracts;
pub mod dead_letter;
mod delivery;
pub mod endpoint;
mod global;
mod hold;
pub mod https;
pub mod kafka;
pub mod metrics;
pub mod processor;
pub mod runner;
pub mod schema_registry;
pub mod secret;
pub mod service;
pub mod shutdown;
pub mod state;
pub mod table;
pub mod telemetry;
pub mod tenant;
mod transaction;

pub use config::ConfigError;
pub use global::GlobalTable;
pub use kafka::{KafkaSettings, Replication};
pub use processor::{
    Header, InputRecord, OutputRecord, Prefetch, ProcessError, Processor, Wake, TRACEPARENT,
};
pub use runner::{
    run, run_with, Delivery, RefusedRecord, RunSummary, RuntimeError, RuntimeSettings,
};
pub use secret::Secret;
pub use state::{IdempotencyKey, State, StateSpec};
