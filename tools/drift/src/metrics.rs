//! The drift gauges.

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::{Gauge, GaugeVec, Opts, Registry};

use crate::books::DriftLine;

/// Metric names, for dashboards and alert rules.
pub mod names {
    /// `observed - expected` in the check's unit (quantity, currency amount, or accounts).
    pub const DIFFERENCE: &str = "backbone_drift_difference";
    /// `|observed - expected| / expected`; 0 when they agree, 1 when nothing arrived.
    pub const RELATIVE: &str = "backbone_drift_relative";
    /// When the last reconciliation finished, seconds since the epoch.
    pub const LAST_RUN: &str = "backbone_drift_last_run_timestamp_seconds";
}

const LABELS: &[&str] = &["check", "tenant", "period", "legal_entity", "currency"];

/// The gauges of one reconciler.
#[derive(Debug, Clone)]
pub struct DriftGauges {
    difference: GaugeVec,
    relative: GaugeVec,
    last_run: Gauge,
}

impl DriftGauges {
    /// Registers the gauges on `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let difference = GaugeVec::new(
            Opts::new(
                names::DIFFERENCE,
                "Observed minus expected, per check, tenant, period, legal entity and currency.",
            ),
            LABELS,
        )?;
        let relative = GaugeVec::new(
            Opts::new(
                names::RELATIVE,
                "Absolute difference relative to the expected figure; 0 when the sides agree.",
            ),
            LABELS,
        )?;
        let last_run = Gauge::with_opts(Opts::new(
            names::LAST_RUN,
            "When the last reconciliation finished, seconds since the epoch.",
        ))?;
        registry.register(Box::new(difference.clone()))?;
        registry.register(Box::new(relative.clone()))?;
        registry.register(Box::new(last_run.clone()))?;
        Ok(Self {
            difference,
            relative,
            last_run,
        })
    }

    /// Replaces every series with `lines`.
    pub fn publish(&self, lines: &[DriftLine]) {
        self.difference.reset();
        self.relative.reset();
        for line in lines {
            let key = &line.key;
            let labels = [
                key.check.as_str(),
                key.tenant.as_str(),
                key.period.as_str(),
                key.legal_entity.as_str(),
                key.currency.as_str(),
            ];
            let scale = 10f64.powi(i32::try_from(key.check.scale()).unwrap_or(0));
            self.difference
                .with_label_values(&labels)
                .set(line.difference() as f64 / scale);
            self.relative
                .with_label_values(&labels)
                .set(line.relative());
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.last_run.set(now);
    }
}
