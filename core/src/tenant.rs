//! Tenant controls: an operator pauses one tenant at one stage (a processor or a sink, named by
//! its consumer group) and resumes it later, through the compacted control topic.
//!
//! The topic holds one record per paused `(tenant, stage)`, keyed `<tenant>:<stage>` like every
//! other topic's `<tenant>:<id>`, its value a [`TenantPause`] in JSON; resuming writes the
//! key's tombstone, so compaction keeps exactly the pauses in force. Every stage follows the
//! topic; what it does with a paused tenant's records (hold them in partition state, or in
//! memory with its offsets held back) is the stage's, the runtime's or the sink loop's.
//!
//! Per-tenant metric series are bounded by [`TopTenants`]: the tenants with the most of
//! something get a series each, the rest add up under `tenant="other"`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use prometheus::{IntGaugeVec, Opts, Registry};
use serde::{Deserialize, Serialize};

use crate::admin::TopicSpec;
use crate::global::{GlobalTable, GlobalTables};
use crate::kafka::KafkaSettings;
use crate::state::StateFailure;

/// The control topic unless a stage's `runtime.tenant_controls` says otherwise.
pub const DEFAULT_CONTROLS_TOPIC: &str = "backbone.tenant-controls";

/// Most tenants with a series of their own in one per-tenant metric.
pub const MAX_TENANT_SERIES: usize = 20;

/// The `tenant` label of the series adding up every tenant past [`MAX_TENANT_SERIES`].
pub const OTHER_TENANTS: &str = "other";

/// A pause in force: the value of the control record keyed [`control_key`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantPause {
    /// The tenant held.
    pub tenant: String,
    /// The consumer group of the stage that holds it.
    pub stage: String,
    /// Why, for the next operator.
    pub reason: String,
    /// When it was paused, milliseconds since the epoch.
    pub paused_at_ms: i64,
}

/// The control record's key for `tenant` at `stage`.
pub fn control_key(tenant: &str, stage: &str) -> String {
    format!("{tenant}:{stage}")
}

/// The control topic: compacted (a resume deletes its pause), one partition (every stage
/// reads it whole).
pub fn controls_topic_spec(name: &str) -> TopicSpec {
    TopicSpec::new(name, 1).with_config("cleanup.policy", "compact")
}

/// The pauses of one stage, followed from the control topic: for a loop other than the
/// processors' (which read the topic as a global table of their state), such as a sink's.
pub struct TenantControls {
    tables: GlobalTables,
    stage: String,
}

impl std::fmt::Debug for TenantControls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantControls")
            .field("stage", &self.stage)
            .finish_non_exhaustive()
    }
}

/// The table the control topic is read into.
pub(crate) const CONTROLS_TABLE: &str = "tenant_controls";

impl TenantControls {
    /// Reads `topic` whole into `dir` (rebuilt on every start), then follows it, for the
    /// stage whose consumer group is `stage`. Blocking: the pauses in force are known when it
    /// returns, before the stage takes its first record.
    pub fn follow(
        dir: &Path,
        topic: &str,
        kafka: &KafkaSettings,
        stage: &str,
        timeout: Duration,
    ) -> Result<Self, StateFailure> {
        let table = GlobalTable {
            name: CONTROLS_TABLE.to_owned(),
            topic: topic.to_owned(),
        };
        let tables = GlobalTables::start(dir, &[table], kafka, stage, timeout)?;
        Ok(Self {
            tables,
            stage: stage.to_owned(),
        })
    }

    /// Whether `tenant` is paused at this stage now.
    pub fn is_paused(&self, tenant: &str) -> Result<bool, StateFailure> {
        let key = control_key(tenant, &self.stage);
        Ok(self
            .tables
            .view()
            .tables
            .get(CONTROLS_TABLE, key.as_bytes())?
            .is_some())
    }
}

/// Checks a tenant or stage name for a control record: not empty, no `:` (the key's
/// separator) and no control characters.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if let Some(bad) = name.chars().find(|c| *c == ':' || c.is_control()) {
        return Err(format!(
            "{what} `{name}` holds {bad:?}, which a control key cannot carry"
        ));
    }
    Ok(())
}

/// Keeps the `limit` tenants with the largest figures and adds up the rest under
/// [`OTHER_TENANTS`]; ties go to the tenant first in name order, so the series are stable.
#[derive(Debug, Clone, Copy)]
pub struct TopTenants {
    /// How many tenants keep a series of their own.
    pub limit: usize,
}

impl Default for TopTenants {
    fn default() -> Self {
        Self {
            limit: MAX_TENANT_SERIES,
        }
    }
}

impl TopTenants {
    /// `figures` by tenant, at most `limit` tenants and `other`; `combine` merges two figures
    /// (a sum for counts, a maximum for ages). What is ranked is each figure's `rank`.
    pub fn bound<T: Copy>(
        &self,
        figures: BTreeMap<String, T>,
        rank: impl Fn(&T) -> i64,
        combine: impl Fn(T, T) -> T,
    ) -> BTreeMap<String, T> {
        if figures.len() <= self.limit {
            return figures;
        }
        let mut ranked: Vec<(String, T)> = figures.into_iter().collect();
        // Stable: equal figures keep name order.
        ranked.sort_by_key(|(_, figure)| std::cmp::Reverse(rank(figure)));
        let rest = ranked.split_off(self.limit);
        let mut bounded: BTreeMap<String, T> = ranked.into_iter().collect();
        if let Some(other) = rest.into_iter().map(|(_, f)| f).reduce(&combine) {
            let merged = match bounded.remove(OTHER_TENANTS) {
                Some(named) => combine(named, other),
                None => other,
            };
            bounded.insert(OTHER_TENANTS.to_owned(), merged);
        }
        bounded
    }
}

/// What a stage holds for one tenant: how many records, and when the oldest was held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// Records held.
    pub records: u64,
    /// When the oldest of them was held, milliseconds since the epoch.
    pub oldest_held_at_ms: i64,
}

/// The held-records gauges of one stage, by tenant, bounded by [`TopTenants`].
#[derive(Debug)]
pub struct HeldMetrics {
    records: IntGaugeVec,
    oldest_age: IntGaugeVec,
    series: Mutex<BTreeSet<String>>,
}

/// Metric names.
pub mod names {
    /// Records a stage holds for a paused tenant, by tenant.
    pub const HELD_RECORDS: &str = "backbone_tenant_held_records";
    /// Age of the oldest record a stage holds for a paused tenant, by tenant.
    pub const HELD_OLDEST_AGE: &str = "backbone_tenant_held_oldest_age_seconds";
}

impl HeldMetrics {
    /// Registers the gauges on `registry` with the constant label `processor` = `stage`, as
    /// the stage's other series carry it.
    pub fn new(registry: &Registry, stage: &str) -> Result<Self, prometheus::Error> {
        let opts = |name: &str, help: &str| {
            Opts::new(name, help).const_label(crate::metrics::PROCESSOR_LABEL, stage)
        };
        let records = IntGaugeVec::new(
            opts(
                names::HELD_RECORDS,
                "Records held for a tenant paused at this stage (top tenants, the rest as other).",
            ),
            &["tenant"],
        )?;
        let oldest_age = IntGaugeVec::new(
            opts(
                names::HELD_OLDEST_AGE,
                "Age of the oldest record held for a tenant paused at this stage.",
            ),
            &["tenant"],
        )?;
        registry.register(Box::new(records.clone()))?;
        registry.register(Box::new(oldest_age.clone()))?;
        Ok(Self {
            records,
            oldest_age,
            series: Mutex::new(BTreeSet::new()),
        })
    }

    /// Replaces the series with `held`, as of `now_ms`.
    pub fn publish(&self, held: BTreeMap<String, Held>, now_ms: i64) {
        let bounded = TopTenants::default().bound(
            held,
            |h| i64::try_from(h.records).unwrap_or(i64::MAX),
            |a, b| Held {
                records: a.records + b.records,
                oldest_held_at_ms: a.oldest_held_at_ms.min(b.oldest_held_at_ms),
            },
        );
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        for gone in series.iter().filter(|t| !bounded.contains_key(*t)) {
            let _ = self.records.remove_label_values(&[gone]);
            let _ = self.oldest_age.remove_label_values(&[gone]);
        }
        for (tenant, figures) in &bounded {
            self.records
                .with_label_values(&[tenant])
                .set(i64::try_from(figures.records).unwrap_or(i64::MAX));
            let age_ms = now_ms.saturating_sub(figures.oldest_held_at_ms).max(0);
            self.oldest_age
                .with_label_values(&[tenant])
                .set(age_ms / 1000);
        }
        *series = bounded.into_keys().collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_limit_the_smallest_tenants_add_up_as_other() {
        let figures: BTreeMap<String, u64> = [("a", 5), ("b", 1), ("c", 9), ("d", 1), ("e", 3)]
            .into_iter()
            .map(|(t, n)| (t.to_owned(), n))
            .collect();
        let top = TopTenants { limit: 2 };
        let bounded = top.bound(figures.clone(), |n| *n as i64, |a, b| a + b);
        let expected: BTreeMap<String, u64> = [("c", 9), ("a", 5), ("other", 5)]
            .into_iter()
            .map(|(t, n)| (t.to_owned(), n))
            .collect();
        assert_eq!(bounded, expected);
        // Within the limit nothing changes.
        assert_eq!(
            TopTenants { limit: 5 }.bound(figures.clone(), |n| *n as i64, |a, b| a + b),
            figures
        );
    }

    #[test]
    fn the_held_gauges_drop_a_tenant_no_longer_held() {
        let registry = Registry::new();
        let metrics = HeldMetrics::new(&registry, "rater").expect("metrics");
        let held = |n| Held {
            records: n,
            oldest_held_at_ms: 1_000,
        };
        metrics.publish([("acme".to_owned(), held(3))].into(), 61_000);
        let text = crate::metrics::encode(&registry).expect("encode");
        assert!(
            text.contains(r#"backbone_tenant_held_records{processor="rater",tenant="acme"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"backbone_tenant_held_oldest_age_seconds{processor="rater",tenant="acme"} 60"#
            ),
            "{text}"
        );
        metrics.publish(BTreeMap::new(), 62_000);
        let text = crate::metrics::encode(&registry).expect("encode");
        assert!(!text.contains("acme"), "{text}");
    }

    #[test]
    fn names_that_would_break_the_key_are_refused() {
        assert!(check_name("tenant", "acme").is_ok());
        assert!(check_name("tenant", "").unwrap_err().contains("empty"));
        assert!(check_name("stage", "a:b").unwrap_err().contains("':'"));
    }
}
