//! The gateway's metrics, per producer (the key id: as many series as keys, which the operator
//! makes one by one).

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// The metric names, for dashboards and alert rules to be checked against.
pub mod names {
    /// Events the broker acknowledged.
    pub const EVENTS_ACCEPTED: &str = "backbone_ingest_events_accepted_total";
    /// Events refused.
    pub const EVENTS_REJECTED: &str = "backbone_ingest_events_rejected_total";
    /// Requests answered 429.
    pub const REQUESTS_THROTTLED: &str = "backbone_ingest_requests_throttled_total";
    /// Request latency.
    pub const REQUEST_DURATION: &str = "backbone_ingest_request_duration_seconds";
}

/// Counters and the latency histogram, registered in their own registry.
pub struct IngestMetrics {
    /// Where they are registered, for `/metrics`.
    pub registry: Registry,
    accepted: IntCounterVec,
    rejected: IntCounterVec,
    throttled: IntCounterVec,
    latency: HistogramVec,
}

impl IngestMetrics {
    /// Fresh metrics.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let accepted = IntCounterVec::new(
            Opts::new(
                names::EVENTS_ACCEPTED,
                "Events the broker acknowledged, by producer key",
            ),
            &["producer"],
        )?;
        let rejected = IntCounterVec::new(
            Opts::new(
                names::EVENTS_REJECTED,
                "Events refused, by producer key and reason",
            ),
            &["producer", "reason"],
        )?;
        let throttled = IntCounterVec::new(
            Opts::new(
                names::REQUESTS_THROTTLED,
                "Requests answered 429, by producer key and limit (rate or quota)",
            ),
            &["producer", "limit"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                names::REQUEST_DURATION,
                "Time from a request's arrival to its answer, by producer key",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ]),
            &["producer"],
        )?;
        registry.register(Box::new(accepted.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        registry.register(Box::new(throttled.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        Ok(Self {
            registry,
            accepted,
            rejected,
            throttled,
            latency,
        })
    }

    /// `n` events of `producer` acknowledged.
    pub fn accepted(&self, producer: &str, n: u64) {
        self.accepted.with_label_values(&[producer]).inc_by(n);
    }

    /// One event of `producer` refused for `reason`.
    pub fn rejected(&self, producer: &str, reason: &str) {
        self.rejected.with_label_values(&[producer, reason]).inc();
    }

    /// A request of `producer` refused by `limit`.
    pub fn throttled(&self, producer: &str, limit: &str) {
        self.throttled.with_label_values(&[producer, limit]).inc();
    }

    /// A request of `producer` answered after `seconds`.
    pub fn observe(&self, producer: &str, seconds: f64) {
        self.latency.with_label_values(&[producer]).observe(seconds);
    }
}
