//! Contract drift: what each producer (`metadata.source`) sends on the usage topic, counted as
//! the validator reads it. Records per schema id show a producer moving to a new schema; nulls
//! per optional field show one starting to leave a field out; rejections per reason show one
//! starting to send what the contract refuses. The alert rule compares each null share with
//! its own past (`deploy/prometheus/rules.yml`, `BackboneContractNullsRising`).
//!
//! The usage contract has no enum, so there are no values read as the reader's default symbol
//! to count here.

use std::collections::BTreeSet;
use std::sync::Mutex;

use backbone_schemas::types::UsageEvent;
use prometheus::{IntCounterVec, Opts, Registry};

/// Metric names.
pub mod names {
    /// Records that decoded into the contract, by topic, source and schema id.
    pub const RECORDS: &str = "backbone_contract_records_total";
    /// Decoded records whose optional field was null, by topic, source and field.
    pub const NULL_FIELDS: &str = "backbone_contract_null_fields_total";
    /// Records dead-lettered, by topic, source and reason.
    pub const REJECTIONS: &str = "backbone_contract_rejections_total";
}

/// The optional fields of the usage contract, by their path.
pub const OPTIONAL_FIELDS: [&str; 5] = [
    "subscription_id",
    "dimensions",
    "unique_value",
    "metadata.schema_version",
    "metadata.trace.tracestate",
];

/// Most producers with series of their own; later ones count as `other`.
pub const MAX_SOURCES: usize = 20;

/// The `source` of records that did not decode.
pub const UNKNOWN_SOURCE: &str = "unknown";
/// The `source` of producers past [`MAX_SOURCES`].
pub const OTHER_SOURCE: &str = "other";

/// The counters, and the producers that have series.
#[derive(Debug)]
pub struct ContractMetrics {
    records: IntCounterVec,
    nulls: IntCounterVec,
    rejections: IntCounterVec,
    sources: Mutex<BTreeSet<String>>,
}

impl ContractMetrics {
    /// Registers the counters on `registry`, with `processor` as the runtime's series have it.
    pub fn new(registry: &Registry, processor: &str) -> Result<Self, prometheus::Error> {
        let opts = |name: &str, help: &str| {
            Opts::new(name, help).const_label(backbone_core::metrics::PROCESSOR_LABEL, processor)
        };
        let records = IntCounterVec::new(
            opts(
                names::RECORDS,
                "Records that decoded into the contract, by producer and schema id.",
            ),
            &["topic", "source", "schema_id"],
        )?;
        let nulls = IntCounterVec::new(
            opts(
                names::NULL_FIELDS,
                "Decoded records whose optional field was null, by producer and field.",
            ),
            &["topic", "source", "field"],
        )?;
        let rejections = IntCounterVec::new(
            opts(
                names::REJECTIONS,
                "Records dead-lettered, by producer and reason.",
            ),
            &["topic", "source", "reason"],
        )?;
        registry.register(Box::new(records.clone()))?;
        registry.register(Box::new(nulls.clone()))?;
        registry.register(Box::new(rejections.clone()))?;
        Ok(Self {
            records,
            nulls,
            rejections,
            sources: Mutex::new(BTreeSet::new()),
        })
    }

    /// The label for producer `source`: its own while fewer than [`MAX_SOURCES`] have one. A
    /// producer's first record creates a zero series for each optional field, so that a field
    /// it starts leaving out has a past to be compared with.
    fn source_label(&self, topic: &str, source: &str) -> String {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        if sources.contains(source) {
            return source.to_owned();
        }
        if sources.len() >= MAX_SOURCES {
            return OTHER_SOURCE.to_owned();
        }
        sources.insert(source.to_owned());
        for field in OPTIONAL_FIELDS {
            self.nulls.with_label_values(&[topic, source, field]);
        }
        source.to_owned()
    }

    /// Counts a record of `topic` that decoded into `event` under `schema_id`.
    pub fn decoded(&self, topic: &str, schema_id: Option<u32>, event: &UsageEvent) {
        let source = self.source_label(topic, &event.metadata.source);
        let schema = schema_id.map_or_else(|| "none".to_owned(), |id| id.to_string());
        self.records
            .with_label_values(&[topic, &source, &schema])
            .inc();
        for field in null_fields(event) {
            self.nulls.with_label_values(&[topic, &source, field]).inc();
        }
    }

    /// Counts a record of `topic` dead-lettered for `reason`; `event` when it decoded.
    pub fn rejected(&self, topic: &str, event: Option<&UsageEvent>, reason: &str) {
        let source = match event {
            Some(event) => self.source_label(topic, &event.metadata.source),
            None => UNKNOWN_SOURCE.to_owned(),
        };
        self.rejections
            .with_label_values(&[topic, &source, reason])
            .inc();
    }
}

/// The optional fields `event` leaves null.
pub fn null_fields(event: &UsageEvent) -> Vec<&'static str> {
    let m = &event.metadata;
    let nulls = [
        event.subscription_id.is_none(),
        event.dimensions.is_none(),
        event.unique_value.is_none(),
        m.schema_version.is_none(),
        m.trace.tracestate.is_none(),
    ];
    OPTIONAL_FIELDS
        .iter()
        .zip(nulls)
        .filter_map(|(field, null)| null.then_some(*field))
        .collect()
}

/// The schema id of a record in the Confluent wire format.
pub fn schema_id(value: &[u8]) -> Option<u32> {
    match value {
        [0, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backbone_schemas::types::{EventMetadata, TraceContext};

    fn event(source: &str) -> UsageEvent {
        UsageEvent {
            metadata: EventMetadata {
                tenant_id: "acme".into(),
                event_id: "e-1".into(),
                source: source.into(),
                r#type: "usage.recorded".into(),
                occurred_at: 1,
                produced_at: 1,
                trace: TraceContext {
                    traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
                    tracestate: Some("k=v".into()),
                },
                schema_version: Some(3),
            },
            customer_id: "c-9".into(),
            subscription_id: Some("s-1".into()),
            meter_id: "api_calls".into(),
            quantity: "1".parse().expect("quantity"),
            unit: "call".into(),
            dimensions: Some(Default::default()),
            unique_value: Some("u".into()),
        }
    }

    fn sample(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        let text = backbone_core::metrics::encode(registry).expect("encode");
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .find(|l| {
                labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    #[test]
    fn nulls_are_counted_per_producer_and_field_from_a_zero_past() {
        let registry = Registry::new();
        let metrics = ContractMetrics::new(&registry, "usage-validator").expect("metrics");
        let full = event("gateway");
        let mut sparse = event("gateway");
        sparse.unique_value = None;
        metrics.decoded("usage.events", Some(7), &full);
        metrics.decoded("usage.events", Some(8), &sparse);
        let nulls = |field| {
            sample(
                &registry,
                names::NULL_FIELDS,
                &[("source", "gateway"), ("field", field)],
            )
        };
        assert_eq!(nulls("unique_value"), Some(1));
        // Never null, and still a series: the past a rise is measured against.
        assert_eq!(nulls("subscription_id"), Some(0));
        for id in ["7", "8"] {
            let labels = [("source", "gateway"), ("schema_id", id)];
            assert_eq!(sample(&registry, names::RECORDS, &labels), Some(1));
        }
        metrics.rejected("usage.events", Some(&full), "invalid_quantity");
        metrics.rejected("usage.events", None, "wrong_magic_byte");
        let rejected = |source, reason| {
            sample(
                &registry,
                names::REJECTIONS,
                &[("source", source), ("reason", reason)],
            )
        };
        assert_eq!(rejected("gateway", "invalid_quantity"), Some(1));
        assert_eq!(rejected(UNKNOWN_SOURCE, "wrong_magic_byte"), Some(1));
    }

    #[test]
    fn producers_past_the_limit_count_as_other() {
        let registry = Registry::new();
        let metrics = ContractMetrics::new(&registry, "usage-validator").expect("metrics");
        for n in 0..=MAX_SOURCES {
            metrics.decoded("usage.events", Some(1), &event(&format!("p-{n}")));
        }
        let last = format!("p-{MAX_SOURCES}");
        assert_eq!(
            sample(&registry, names::RECORDS, &[("source", &last)]),
            None
        );
        assert_eq!(
            sample(&registry, names::RECORDS, &[("source", OTHER_SOURCE)]),
            Some(1)
        );
    }

    #[test]
    fn the_schema_id_is_read_from_the_wire_format() {
        assert_eq!(schema_id(&[0, 0, 0, 1, 2, 9]), Some(258));
        assert_eq!(schema_id(&[1, 0, 0, 1, 2, 9]), None);
        assert_eq!(schema_id(&[0, 0]), None);
    }
}
