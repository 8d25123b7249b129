//! The series a sink adds to the runtime's (`backbone_consumer_*`, `backbone_dlq_*`, lag,
//! fatal errors), labelled like them with `processor`.

use std::time::Duration;

use backbone_core::metrics::PROCESSOR_LABEL;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};

use crate::circuit::CircuitState;
use crate::RetryReason;

/// Metric names, for dashboards and alert rules.
pub mod names {
    /// Deliveries settled, by `destination` and `outcome` (`delivered`, `already_delivered`,
    /// `rejected`).
    pub const DELIVERIES: &str = "backbone_sink_deliveries_total";
    /// Time from sending a batch to its answer.
    pub const DELIVERY_DURATION: &str = "backbone_sink_delivery_duration_seconds";
    /// Attempts retried, by `reason` (`throttled`, `unavailable`, `timeout`, `awaiting`: a
    /// destination that answers later was asked again).
    pub const RETRIES: &str = "backbone_sink_retries_total";
    /// Circuit breaker: 0 closed, 1 open, 2 half-open.
    pub const CIRCUIT_STATE: &str = "backbone_sink_circuit_state";
    /// Deliveries per batch sent.
    pub const BATCH_SIZE: &str = "backbone_sink_batch_size_deliveries";
    /// Deliveries waiting for their next attempt.
    pub const RETRYING: &str = "backbone_sink_retrying_deliveries";
}

const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1_000.0,
];

/// Every series a sink adds.
#[derive(Debug)]
pub struct SinkMetrics {
    deliveries: IntCounterVec,
    duration: Histogram,
    retries: IntCounterVec,
    circuit: IntGauge,
    batch: Histogram,
    retrying: IntGauge,
}

impl SinkMetrics {
    /// Registers the series on `registry` for sink `name`, delivering to `destination`.
    pub fn new(
        registry: &Registry,
        name: &str,
        destination: &str,
    ) -> Result<Self, prometheus::Error> {
        let opts =
            |metric: &str, help: &str| Opts::new(metric, help).const_label(PROCESSOR_LABEL, name);
        let histogram = |metric: &str, help: &str, buckets: &[f64]| {
            HistogramOpts::new(metric, help)
                .const_label(PROCESSOR_LABEL, name)
                .buckets(buckets.to_vec())
        };
        let deliveries = IntCounterVec::new(
            opts(names::DELIVERIES, "Deliveries settled, by outcome."),
            &["destination", "outcome"],
        )?;
        let duration = Histogram::with_opts(histogram(
            names::DELIVERY_DURATION,
            "Time from sending a batch to the destination's answer.",
            DURATION_BUCKETS,
        ))?;
        let retries = IntCounterVec::new(
            opts(names::RETRIES, "Delivery attempts retried, by reason."),
            &["reason"],
        )?;
        let circuit = IntGauge::with_opts(opts(
            names::CIRCUIT_STATE,
            "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
        ))?;
        let batch = Histogram::with_opts(histogram(
            names::BATCH_SIZE,
            "Deliveries in each batch sent.",
            BATCH_BUCKETS,
        ))?;
        let retrying = IntGauge::with_opts(opts(
            names::RETRYING,
            "Deliveries waiting for their next attempt.",
        ))?;
        registry.register(Box::new(deliveries.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(circuit.clone()))?;
        registry.register(Box::new(batch.clone()))?;
        registry.register(Box::new(retrying.clone()))?;
        // Every series starts at zero, so that rates and alerts see the first increase.
        for outcome in ["delivered", "already_delivered", "rejected"] {
            deliveries.with_label_values(&[destination, outcome]);
        }
        for reason in [
            RetryReason::Throttled,
            RetryReason::Unavailable,
            RetryReason::Timeout,
            RetryReason::Awaiting,
        ] {
            retries.with_label_values(&[reason.as_str()]);
        }
        Ok(Self {
            deliveries,
            duration,
            retries,
            circuit,
            batch,
            retrying,
        })
    }

    /// Counts one settled delivery.
    pub fn record_delivery(&self, destination: &str, outcome: &str) {
        self.deliveries
            .with_label_values(&[destination, outcome])
            .inc();
    }

    /// Records a batch's round trip and size.
    pub fn observe_batch(&self, elapsed: Duration, size: usize) {
        self.duration.observe(elapsed.as_secs_f64());
        self.batch.observe(size as f64);
    }

    /// Counts a retried attempt.
    pub fn record_retry(&self, reason: RetryReason) {
        self.retries.with_label_values(&[reason.as_str()]).inc();
    }

    /// Sets how many deliveries wait for a retry.
    pub fn set_retrying(&self, count: usize) {
        self.retrying.set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Sets the circuit gauge.
    pub fn set_circuit(&self, state: CircuitState) {
        self.circuit.set(state.gauge());
    }
}
