//! The orchestrator's own series, beside the runtime's: what orders go through, step by step.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use backbone_core::metrics::PROCESSOR_LABEL;
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Metric names, as dashboards and alerts use them.
pub mod names {
    /// Workflow state changes by state entered.
    pub const STATE_CHANGES: &str = "backbone_order_state_changes_total";
    /// Step results by step and outcome (`done`, `refused`, `timed_out`).
    pub const STEP_RESULTS: &str = "backbone_order_step_results_total";
    /// Seconds from a step's command to its result, by step.
    pub const STEP_SECONDS: &str = "backbone_order_step_seconds";
    /// Workflows that started undoing their steps.
    pub const COMPENSATIONS: &str = "backbone_order_compensations_total";
    /// Workflows with a step running, over the partitions this instance holds.
    pub const IN_PROGRESS: &str = "backbone_orders_in_progress";
}

/// The series, registered once.
#[derive(Debug)]
pub struct OrderMetrics {
    state_changes: IntCounterVec,
    step_results: IntCounterVec,
    step_seconds: HistogramVec,
    compensations: IntCounter,
    in_progress: IntGauge,
    /// Workflows running per partition, as each partition's last wake counted them, and when.
    running: Mutex<HashMap<i32, (usize, Instant)>>,
}

impl OrderMetrics {
    /// Registers the series on `registry`, labelled with `processor` as the runtime's are.
    pub fn new(registry: &Registry, processor: &str) -> Result<Self, prometheus::Error> {
        let opts =
            |name: &str, help: &str| Opts::new(name, help).const_label(PROCESSOR_LABEL, processor);
        let state_changes = IntCounterVec::new(
            opts(
                names::STATE_CHANGES,
                "Order workflow state changes, by state entered.",
            ),
            &["state"],
        )?;
        let step_results = IntCounterVec::new(
            opts(
                names::STEP_RESULTS,
                "Order step results, by step and outcome (done, refused, timed_out).",
            ),
            &["step", "outcome"],
        )?;
        let step_seconds = HistogramVec::new(
            HistogramOpts::new(
                names::STEP_SECONDS,
                "Seconds from an order step's command to its result, by step.",
            )
            .const_label(PROCESSOR_LABEL, processor)
            .buckets(vec![
                0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            ]),
            &["step"],
        )?;
        let compensations = IntCounter::with_opts(opts(
            names::COMPENSATIONS,
            "Order workflows that started undoing their steps after a step failed for good.",
        ))?;
        let in_progress = IntGauge::with_opts(opts(
            names::IN_PROGRESS,
            "Order workflows with a step running, over the partitions this instance holds.",
        ))?;
        registry.register(Box::new(state_changes.clone()))?;
        registry.register(Box::new(step_results.clone()))?;
        registry.register(Box::new(step_seconds.clone()))?;
        registry.register(Box::new(compensations.clone()))?;
        registry.register(Box::new(in_progress.clone()))?;
        Ok(Self {
            state_changes,
            step_results,
            step_seconds,
            compensations,
            in_progress,
            running: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn state_entered(&self, state: &str) {
        self.state_changes.with_label_values(&[state]).inc();
    }

    pub(crate) fn step_result(&self, step: &str, outcome: &str, took: Option<Duration>) {
        self.step_results.with_label_values(&[step, outcome]).inc();
        if let Some(took) = took {
            self.step_seconds
                .with_label_values(&[step])
                .observe(took.as_secs_f64());
        }
    }

    pub(crate) fn compensation_started(&self) {
        self.compensations.inc();
    }

    /// `partition` has `running` workflows with a step running. A partition not counted for
    /// `stale_after` has moved to another instance (wakes count every assigned partition) and
    /// no longer adds to the gauge.
    pub(crate) fn set_running(&self, partition: i32, running: usize, stale_after: Duration) {
        let mut counts = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        counts.insert(partition, (running, now));
        counts.retain(|_, (_, at)| now.duration_since(*at) <= stale_after);
        let total: usize = counts.values().map(|(n, _)| n).sum();
        self.in_progress
            .set(i64::try_from(total).unwrap_or(i64::MAX));
    }
}
