//! The drift gauges.

use std::time::{SystemTime, UNIX_EPOCH};

use std::collections::BTreeMap;

use backbone_core::tenant::{TopTenants, OTHER_TENANTS};
use prometheus::{Gauge, GaugeVec, Opts, Registry};

use crate::books::{DriftKey, DriftLine};

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

    /// Replaces every series with `lines`, bounded as [`bounded`] says.
    pub fn publish(&self, lines: &[DriftLine]) {
        self.difference.reset();
        self.relative.reset();
        for line in &bounded(lines) {
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

/// `lines` with a bounded number of tenant and period labels: the tenant and period pairs
/// with the largest drift keep theirs, up to [`TopTenants`]' limit; the others are added up
/// under tenant and period `other`, per check, legal entity and currency. Without it every
/// tenant and every month reconciled would be a series of its own, forever.
pub fn bounded(lines: &[DriftLine]) -> Vec<DriftLine> {
    let pair = |key: &DriftKey| format!("{}\u{0}{}", key.tenant, key.period);
    // A pair ranks by its largest relative drift, in millionths.
    let mut worst: BTreeMap<String, i64> = BTreeMap::new();
    for line in lines {
        let drift = (line.relative() * 1e6) as i64;
        let entry = worst.entry(pair(&line.key)).or_insert(0);
        *entry = (*entry).max(drift);
    }
    let kept = TopTenants::default().bound(worst, |d| *d, i64::max);
    let mut out: BTreeMap<DriftKey, DriftLine> = BTreeMap::new();
    for line in lines {
        let key = if kept.contains_key(&pair(&line.key)) {
            line.key.clone()
        } else {
            DriftKey {
                tenant: OTHER_TENANTS.to_owned(),
                period: OTHER_TENANTS.to_owned(),
                ..line.key.clone()
            }
        };
        let merged = out.entry(key.clone()).or_insert(DriftLine {
            key,
            expected: 0,
            observed: 0,
        });
        merged.expected += line.expected;
        merged.observed += line.observed;
    }
    out.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::books::Check;

    #[test]
    fn past_the_limit_the_least_drifted_tenants_and_periods_add_up_as_other() {
        let line = |tenant: &str, period: &str, expected, observed| DriftLine {
            key: DriftKey {
                check: Check::RatedVsBilled,
                tenant: tenant.to_owned(),
                period: period.to_owned(),
                legal_entity: "le-1".to_owned(),
                currency: "EUR".to_owned(),
            },
            expected,
            observed,
        };
        // One drifted pair and many that agree, more than the limit.
        let mut lines = vec![line("acme", "2026-11", 100, 60)];
        for n in 0..30 {
            lines.push(line(&format!("t-{n:02}"), "2026-10", 10, 10));
        }
        let bounded = bounded(&lines);
        assert_eq!(bounded.len(), backbone_core::tenant::MAX_TENANT_SERIES + 1);
        assert!(
            bounded.contains(&lines[0]),
            "the drifted pair keeps its labels"
        );
        let other = bounded
            .iter()
            .find(|l| l.key.tenant == OTHER_TENANTS)
            .expect("the rest as other");
        assert_eq!(other.key.period, OTHER_TENANTS);
        // 30 agreeing pairs less the 19 kept beside acme.
        assert_eq!((other.expected, other.observed), (110, 110));
        // Within the limit nothing changes.
        assert_eq!(super::bounded(&lines[..5]), lines[..5].to_vec());
    }
}
