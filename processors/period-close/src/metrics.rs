//! Period close's own series, beside the runtime's: invoices issued, corrections booked, and
//! the periods still open.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use backbone_core::metrics::PROCESSOR_LABEL;
use prometheus::{IntCounter, IntGauge, Opts, Registry};

/// Metric names, as dashboards and alerts use them.
pub mod names {
    /// Invoices issued.
    pub const INVOICES_ISSUED: &str = "backbone_invoices_issued_total";
    /// Charges booked in a later period than their own, because theirs had closed.
    pub const CORRECTIONS: &str = "backbone_period_corrections_total";
    /// Billing periods closed, with an invoice or with nothing to bill.
    pub const PERIODS_CLOSED: &str = "backbone_periods_closed_total";
    /// Billing periods not closed yet, over the partitions this instance holds.
    pub const PERIODS_OPEN: &str = "backbone_periods_open";
    /// Close checks at which a period due to close could not (its rate card does not decode,
    /// say); it is tried again at the next.
    pub const CLOSE_FAILURES: &str = "backbone_period_close_failures_total";
}

/// The series, registered once.
#[derive(Debug)]
pub struct PeriodMetrics {
    invoices_issued: IntCounter,
    corrections: IntCounter,
    periods_open: IntGauge,
    periods_closed: IntCounter,
    close_failures: IntCounter,
    /// Each partition's open periods at its last close check, and when.
    partitions: Mutex<HashMap<i32, (usize, Instant)>>,
}

impl PeriodMetrics {
    /// Registers the series on `registry`, labelled with `processor` as the runtime's are.
    pub fn new(registry: &Registry, processor: &str) -> Result<Self, prometheus::Error> {
        let opts =
            |name: &str, help: &str| Opts::new(name, help).const_label(PROCESSOR_LABEL, processor);
        // Unlabelled, so that the series is there (at 0) before the first invoice: a legal
        // entity's invoices are counted on `sales.invoices` itself.
        let invoices_issued =
            IntCounter::with_opts(opts(names::INVOICES_ISSUED, "Invoices issued."))?;
        let corrections = IntCounter::with_opts(opts(
            names::CORRECTIONS,
            "Charges booked in a later billing period than their own, which had closed.",
        ))?;
        let periods_open = IntGauge::with_opts(opts(
            names::PERIODS_OPEN,
            "Billing periods not closed yet, in the partitions held.",
        ))?;
        let periods_closed = IntCounter::with_opts(opts(
            names::PERIODS_CLOSED,
            "Billing periods closed, with an invoice or with nothing to bill.",
        ))?;
        let close_failures = IntCounter::with_opts(opts(
            names::CLOSE_FAILURES,
            "Close checks at which a billing period due to close could not; tried again at the next.",
        ))?;
        registry.register(Box::new(invoices_issued.clone()))?;
        registry.register(Box::new(corrections.clone()))?;
        registry.register(Box::new(periods_open.clone()))?;
        registry.register(Box::new(periods_closed.clone()))?;
        registry.register(Box::new(close_failures.clone()))?;
        Ok(Self {
            invoices_issued,
            corrections,
            periods_open,
            periods_closed,
            close_failures,
            partitions: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn issued(&self) {
        self.invoices_issued.inc();
    }

    pub(crate) fn correction(&self) {
        self.corrections.inc();
    }

    pub(crate) fn closed(&self) {
        self.periods_closed.inc();
    }

    pub(crate) fn close_failed(&self) {
        self.close_failures.inc();
    }

    /// `open` periods in `partition` now; a partition not checked for `stale_after` is no
    /// longer held and drops out of the sum.
    pub(crate) fn set_open(&self, partition: i32, open: usize, stale_after: Duration) {
        let mut partitions = self
            .partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        partitions.insert(partition, (open, now));
        partitions.retain(|_, (_, at)| now.duration_since(*at) <= stale_after);
        let total: usize = partitions.values().map(|(open, _)| open).sum();
        self.periods_open
            .set(i64::try_from(total).unwrap_or(i64::MAX));
    }
}
