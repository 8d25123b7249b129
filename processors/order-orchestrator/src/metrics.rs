//! The orchestrator's own series, beside the runtime's: what orders go through, step by step.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use backbone_core::metrics::PROCESSOR_LABEL;
use prometheus::{
    Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
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
    /// Approval outcomes: `approved`, `rejected`, `escalated`, `timed_out`.
    pub const APPROVALS: &str = "backbone_order_approvals_total";
    /// Orders waiting for approval, over the partitions this instance holds.
    pub const APPROVALS_WAITING: &str = "backbone_order_approvals_waiting";
    /// How long the oldest order waiting for approval has waited.
    pub const APPROVAL_OLDEST_AGE: &str = "backbone_order_approval_oldest_age_seconds";
}

/// What one partition's wake counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PartitionCounts {
    pub running: usize,
    pub awaiting_approval: usize,
    /// Since when (record time, ms) the oldest order waiting for approval waits.
    pub oldest_approval_ms: Option<i64>,
}

/// The series, registered once.
#[derive(Debug)]
pub struct OrderMetrics {
    state_changes: IntCounterVec,
    step_results: IntCounterVec,
    step_seconds: HistogramVec,
    compensations: IntCounter,
    in_progress: IntGauge,
    approvals: IntCounterVec,
    approvals_waiting: IntGauge,
    approval_oldest_age: Gauge,
    /// What each partition's last wake counted, and when.
    partitions: Mutex<HashMap<i32, (PartitionCounts, Instant)>>,
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
        let approvals = IntCounterVec::new(
            opts(
                names::APPROVALS,
                "Order approval outcomes: approved, rejected, escalated, timed_out.",
            ),
            &["outcome"],
        )?;
        let approvals_waiting = IntGauge::with_opts(opts(
            names::APPROVALS_WAITING,
            "Orders waiting for a person's approval, over the partitions this instance holds.",
        ))?;
        let approval_oldest_age = Gauge::with_opts(opts(
            names::APPROVAL_OLDEST_AGE,
            "How long the oldest order waiting for approval has waited; 0 when none waits.",
        ))?;
        registry.register(Box::new(approvals.clone()))?;
        registry.register(Box::new(approvals_waiting.clone()))?;
        registry.register(Box::new(approval_oldest_age.clone()))?;
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
            approvals,
            approvals_waiting,
            approval_oldest_age,
            partitions: Mutex::new(HashMap::new()),
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

    pub(crate) fn approval(&self, outcome: &str) {
        self.approvals.with_label_values(&[outcome]).inc();
    }

    /// What `partition`'s wake counted. A partition not counted for `stale_after` has moved
    /// to another instance (wakes count every assigned partition) and no longer adds up.
    pub(crate) fn set_partition(
        &self,
        partition: i32,
        counts: PartitionCounts,
        stale_after: Duration,
    ) {
        let mut partitions = self
            .partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        partitions.insert(partition, (counts, now));
        partitions.retain(|_, (_, at)| now.duration_since(*at) <= stale_after);
        let sum = |count: fn(&PartitionCounts) -> usize| {
            let total: usize = partitions.values().map(|(c, _)| count(c)).sum();
            i64::try_from(total).unwrap_or(i64::MAX)
        };
        self.in_progress.set(sum(|c| c.running));
        self.approvals_waiting.set(sum(|c| c.awaiting_approval));
        let oldest = partitions
            .values()
            .filter_map(|(c, _)| c.oldest_approval_ms)
            .min();
        let age_ms = oldest.map_or(0, |since| backbone_calendar::now_ms() - since);
        self.approval_oldest_age
            .set(Duration::from_millis(u64::try_from(age_ms).unwrap_or(0)).as_secs_f64());
    }
}
