//! The runtime's metrics: one typed struct holding every series the runtime emits, created
//! once per process on the [`Registry`] the binary passes down, and the consumer context that
//! keeps the consumer-lag gauges current from librdkafka's statistics.
//!
//! Names follow `backbone_<subsystem>_<what>_<unit>`; every series carries the constant label
//! `processor` (the binary's deploy name), so dashboards and alerts work for every processor.
//! Variable labels come only from bounded sets: topic names the processor declared, partition
//! numbers, and reasons or kinds that are `&'static str` constants in code. Error strings,
//! tenant ids and other data-derived values never become labels.
//!
//! These methods only count. The runtime's log line for a notable event (a dead letter, a
//! retry, a fatal error) sits next to the metric call at the one place that handles the event.

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::endpoint::Readiness;
use crate::tenant::HeldMetrics;

mod statistics;

pub use statistics::{MeteredContext, PartitionLag};

/// Metric family names, shared by the code that creates the series and the checks that look
/// for them.
pub mod names {
    /// Input records consumed and resolved, by topic and partition.
    pub const CONSUMER_RECORDS: &str = "backbone_consumer_records_total";
    /// Output records produced and acknowledged, by topic.
    pub const PRODUCER_RECORDS: &str = "backbone_producer_records_total";
    /// Inputs sent to a dead-letter topic, by input topic and reason.
    pub const DLQ_RECORDS: &str = "backbone_dlq_records_total";
    /// Inputs dropped as duplicates, by input topic.
    pub const DEDUP_DUPLICATES: &str = "backbone_dedup_duplicates_total";
    /// Transient failures retried, by input topic.
    pub const PROCESSOR_RETRIES: &str = "backbone_processor_retries_total";
    /// Time to process one input (histogram).
    pub const PROCESSOR_DURATION: &str = "backbone_processor_duration_seconds";
    /// Time from an input's event time to its output's acknowledgement, by output topic
    /// (histogram).
    pub const END_TO_END_LATENCY: &str = "backbone_end_to_end_latency_seconds";
    /// Time from when an event entered the backbone (its [`EVENT_TIME`] header) to an output
    /// made from it being acknowledged, or, at a sink, to its delivery settling; by topic
    /// (histogram).
    ///
    /// [`EVENT_TIME`]: crate::processor::EVENT_TIME
    pub const EVENT_LATENCY: &str = "backbone_event_latency_seconds";
    /// Inputs a replay republished (they carry `backbone.replay.id`), by input topic.
    pub const REPLAYED_RECORDS: &str = "backbone_replayed_records_total";
    /// Records between the committed offset and the end of each assigned partition (gauge).
    pub const CONSUMER_LAG: &str = "backbone_consumer_lag_records";
    /// Assigned partitions whose fetch has not started: their starting offset is not known
    /// yet (gauge). Above 0 for long, the group's committed offsets are unreadable, which an
    /// open transaction holding offsets of the group causes.
    pub const CONSUMER_PARTITIONS_WAITING: &str = "backbone_consumer_partitions_waiting";
    /// Kafka transactions committed.
    pub const TRANSACTION_COMMITS: &str = "backbone_transaction_commits_total";
    /// Kafka transactions aborted.
    pub const TRANSACTION_ABORTS: &str = "backbone_transaction_aborts_total";
    /// Time to restore a state store from its changelog, by store (histogram).
    pub const STATE_RESTORE_DURATION: &str = "backbone_state_restore_duration_seconds";
    /// Errors the processor cannot recover from, by kind: the alert metric for auth and
    /// config failures.
    pub const PROCESSOR_FATAL_ERRORS: &str = "backbone_processor_fatal_errors_total";
    /// 1 while the process runs.
    pub const PROCESSOR_UP: &str = "backbone_processor_up";
    /// 1 while every assigned partition is restored and being processed, else 0.
    pub const PROCESSOR_READY: &str = "backbone_processor_ready";
}

/// The constant label naming the binary on every series.
pub const PROCESSOR_LABEL: &str = "processor";

/// Kinds of fatal error for [`RuntimeMetrics::record_fatal`]. Their series start at zero so
/// that an alert on any increase fires on the first occurrence.
pub mod fatal_kind {
    /// Authentication or authorization refused (SASL, TLS, ACLs).
    pub const AUTH: &str = "auth";
    /// Invalid client or processor configuration.
    pub const CONFIG: &str = "config";
    /// A fatal librdkafka error, such as a fenced transactional producer.
    pub const KAFKA: &str = "kafka";
    /// Every kind above.
    pub const ALL: &[&str] = &[AUTH, CONFIG, KAFKA];
}

/// Families every processor emits once it has consumed and produced a record and received one
/// statistics callback. Dead letters and restore times are left out: a healthy run may have no
/// dead letter, and a stateless processor has no store.
pub const REQUIRED_METRICS: &[&str] = &[
    names::CONSUMER_RECORDS,
    names::PRODUCER_RECORDS,
    names::DEDUP_DUPLICATES,
    names::PROCESSOR_RETRIES,
    names::PROCESSOR_DURATION,
    names::END_TO_END_LATENCY,
    names::CONSUMER_LAG,
    names::TRANSACTION_COMMITS,
    names::TRANSACTION_ABORTS,
    names::PROCESSOR_FATAL_ERRORS,
    names::PROCESSOR_UP,
    names::PROCESSOR_READY,
];

/// Processing time buckets: 10µs to 10s.
const PROCESSING_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// End-to-end latency buckets: 1ms to 30min (a backlog being worked off reaches minutes).
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0, 1_800.0,
];

/// Restore time buckets: 10ms to 1h.
const RESTORE_BUCKETS: &[f64] = &[
    0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1_800.0, 3_600.0,
];

/// Every metric the runtime emits, one typed field each. Create it once per process with
/// [`RuntimeMetrics::new`] and share it as `Arc<RuntimeMetrics>`; all methods take `&self`.
#[derive(Debug)]
pub struct RuntimeMetrics {
    registry: Registry,
    consumed: IntCounterVec,
    produced: IntCounterVec,
    dead_letters: IntCounterVec,
    duplicates: IntCounterVec,
    retries: IntCounterVec,
    processing: Histogram,
    end_to_end: HistogramVec,
    event_latency: HistogramVec,
    replayed: IntCounterVec,
    consumer_lag: IntGaugeVec,
    partitions_waiting: IntGauge,
    transaction_commits: IntCounter,
    transaction_aborts: IntCounter,
    restore: HistogramVec,
    fatal_errors: IntCounterVec,
    readiness: Readiness,
    held: HeldMetrics,
    /// Partitions that have a lag series, so that series of revoked partitions can be removed.
    lag_series: Mutex<BTreeSet<(String, i32)>>,
}

impl RuntimeMetrics {
    /// Creates every series on `registry` with the constant label `processor`. Fails if they
    /// are already registered there: there is one `RuntimeMetrics` per process.
    pub fn new(registry: &Registry, processor: &str) -> Result<Self, prometheus::Error> {
        let opts =
            |name: &str, help: &str| Opts::new(name, help).const_label(PROCESSOR_LABEL, processor);
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            HistogramOpts::new(name, help)
                .const_label(PROCESSOR_LABEL, processor)
                .buckets(buckets.to_vec())
        };

        let consumed = IntCounterVec::new(
            opts(
                names::CONSUMER_RECORDS,
                "Input records consumed and resolved.",
            ),
            &["topic", "partition"],
        )?;
        let produced = IntCounterVec::new(
            opts(
                names::PRODUCER_RECORDS,
                "Output records produced and acknowledged.",
            ),
            &["topic"],
        )?;
        let dead_letters = IntCounterVec::new(
            opts(
                names::DLQ_RECORDS,
                "Input records sent to a dead-letter topic.",
            ),
            &["topic", "reason"],
        )?;
        let duplicates = IntCounterVec::new(
            opts(
                names::DEDUP_DUPLICATES,
                "Input records dropped as duplicates.",
            ),
            &["topic"],
        )?;
        let retries = IntCounterVec::new(
            opts(names::PROCESSOR_RETRIES, "Transient failures retried."),
            &["topic"],
        )?;
        let processing = Histogram::with_opts(histogram(
            names::PROCESSOR_DURATION,
            "Time to process one input record.",
            PROCESSING_BUCKETS,
        ))?;
        let end_to_end = HistogramVec::new(
            histogram(
                names::END_TO_END_LATENCY,
                "Time from an input's event time to the acknowledgement of its output.",
                LATENCY_BUCKETS,
            ),
            &["topic"],
        )?;
        let event_latency = HistogramVec::new(
            histogram(
                names::EVENT_LATENCY,
                "Time from when an event entered the backbone to an output made from it acknowledged (at a sink: delivered).",
                LATENCY_BUCKETS,
            ),
            &["topic"],
        )?;
        let replayed = IntCounterVec::new(
            opts(
                names::REPLAYED_RECORDS,
                "Inputs a replay republished, by input topic.",
            ),
            &["topic"],
        )?;
        let consumer_lag = IntGaugeVec::new(
            opts(
                names::CONSUMER_LAG,
                "Records between the committed offset and the end of an assigned partition.",
            ),
            &["topic", "partition"],
        )?;
        let partitions_waiting = IntGauge::with_opts(opts(
            names::CONSUMER_PARTITIONS_WAITING,
            "Assigned partitions whose fetch has not started: their starting offset is not known yet.",
        ))?;
        let transaction_commits = IntCounter::with_opts(opts(
            names::TRANSACTION_COMMITS,
            "Kafka transactions committed.",
        ))?;
        let transaction_aborts = IntCounter::with_opts(opts(
            names::TRANSACTION_ABORTS,
            "Kafka transactions aborted.",
        ))?;
        let restore = HistogramVec::new(
            histogram(
                names::STATE_RESTORE_DURATION,
                "Time to restore a state store from its changelog.",
                RESTORE_BUCKETS,
            ),
            &["store"],
        )?;
        let fatal_errors = IntCounterVec::new(
            opts(
                names::PROCESSOR_FATAL_ERRORS,
                "Errors the processor cannot recover from.",
            ),
            &["kind"],
        )?;
        let up = IntGauge::with_opts(opts(names::PROCESSOR_UP, "1 while the process runs."))?;
        let ready = IntGauge::with_opts(opts(
            names::PROCESSOR_READY,
            "1 while every assigned partition is restored, else 0.",
        ))?;

        registry.register(Box::new(consumed.clone()))?;
        registry.register(Box::new(produced.clone()))?;
        registry.register(Box::new(dead_letters.clone()))?;
        registry.register(Box::new(duplicates.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(processing.clone()))?;
        registry.register(Box::new(end_to_end.clone()))?;
        registry.register(Box::new(event_latency.clone()))?;
        registry.register(Box::new(replayed.clone()))?;
        registry.register(Box::new(consumer_lag.clone()))?;
        registry.register(Box::new(partitions_waiting.clone()))?;
        registry.register(Box::new(transaction_commits.clone()))?;
        registry.register(Box::new(transaction_aborts.clone()))?;
        registry.register(Box::new(restore.clone()))?;
        registry.register(Box::new(fatal_errors.clone()))?;
        registry.register(Box::new(up.clone()))?;
        registry.register(Box::new(ready.clone()))?;

        for kind in fatal_kind::ALL {
            fatal_errors.with_label_values(&[kind]);
        }
        up.set(1);
        Ok(Self {
            held: HeldMetrics::new(registry, processor)?,
            registry: registry.clone(),
            consumed,
            produced,
            dead_letters,
            duplicates,
            retries,
            processing,
            end_to_end,
            event_latency,
            replayed,
            consumer_lag,
            partitions_waiting,
            transaction_commits,
            transaction_aborts,
            restore,
            fatal_errors,
            readiness: Readiness::tracked_by(processor, ready),
            lag_series: Mutex::new(BTreeSet::new()),
        })
    }

    /// Starts the per-topic series at zero, so that rates read 0 rather than "no data" and an
    /// alert sees the first increase. Call once with the processor's declared topics.
    pub fn register_topics(&self, inputs: &[String], outputs: &[String]) {
        for topic in inputs {
            self.duplicates.with_label_values(&[topic]);
            self.retries.with_label_values(&[topic]);
            self.replayed.with_label_values(&[topic]);
        }
        for topic in outputs {
            self.produced.with_label_values(&[topic]);
            self.end_to_end.with_label_values(&[topic]);
        }
    }

    /// One input from `topic`/`partition` resolved (processed or dead-lettered).
    pub fn record_consumed(&self, topic: &str, partition: i32) {
        self.consumed
            .with_label_values(&[topic, &partition.to_string()])
            .inc();
    }

    /// `n` outputs to `topic` acknowledged by the broker.
    pub fn record_produced(&self, topic: &str, n: u64) {
        self.produced.with_label_values(&[topic]).inc_by(n);
    }

    /// One input from `topic` dead-lettered for `reason`. The reason becomes a label as given,
    /// which is why it must be a constant from a small set, like `ProcessError::Permanent`'s.
    pub fn record_dead_letter(&self, topic: &str, reason: &'static str) {
        self.dead_letters.with_label_values(&[topic, reason]).inc();
    }

    /// One input from `topic` dropped because it was already processed.
    pub fn record_duplicate(&self, topic: &str) {
        self.duplicates.with_label_values(&[topic]).inc();
    }

    /// One transient failure of an input from `topic`, about to be retried.
    pub fn record_retry(&self, topic: &str) {
        self.retries.with_label_values(&[topic]).inc();
    }

    /// Time one input took to process, retry waits excluded.
    pub fn observe_processing(&self, elapsed: Duration) {
        self.processing.observe(elapsed.as_secs_f64());
    }

    /// Age of an input's event time when its output to `topic` was acknowledged; see
    /// [`event_age`].
    pub fn observe_end_to_end(&self, topic: &str, latency: Duration) {
        self.end_to_end
            .with_label_values(&[topic])
            .observe(latency.as_secs_f64());
    }

    /// How long ago an event, made into a record of `topic`, entered the backbone.
    pub fn observe_event_latency(&self, topic: &str, latency: Duration) {
        self.event_latency
            .with_label_values(&[topic])
            .observe(latency.as_secs_f64());
    }

    /// Creates the event-latency series of `topics`: a processor's outputs, a sink's input.
    pub fn register_event_topics(&self, topics: &[String]) {
        for topic in topics {
            self.event_latency.with_label_values(&[topic]);
        }
    }

    /// One input of `topic` a replay republished.
    pub fn record_replayed(&self, topic: &str) {
        self.replayed.with_label_values(&[topic]).inc();
    }

    /// Sets the lag of one partition. [`MeteredContext`] keeps these current on its own.
    pub fn set_lag(&self, topic: &str, partition: i32, lag: i64) {
        self.consumer_lag
            .with_label_values(&[topic, &partition.to_string()])
            .set(lag);
        self.tracked_lags().insert((topic.to_owned(), partition));
    }

    /// Replaces the lag gauges with one statistics report: `lags` lists every assigned
    /// partition. A partition with a known lag is set; one whose lag librdkafka does not know
    /// yet keeps its last value; series of partitions no longer assigned are removed, so a
    /// revoked partition does not report stale lag from this instance.
    pub fn update_lags(&self, lags: &[PartitionLag]) {
        let mut tracked = self.tracked_lags();
        let assigned: BTreeSet<(&str, i32)> = lags
            .iter()
            .map(|lag| (lag.topic.as_str(), lag.partition))
            .collect();
        for lag in lags {
            if let Some(records) = lag.lag {
                self.consumer_lag
                    .with_label_values(&[lag.topic.as_str(), &lag.partition.to_string()])
                    .set(records);
                tracked.insert((lag.topic.clone(), lag.partition));
            }
        }
        tracked.retain(|(topic, partition)| {
            let keep = assigned.contains(&(topic.as_str(), *partition));
            if !keep {
                // Absent only if it never had a value; nothing to remove then.
                let _ = self
                    .consumer_lag
                    .remove_label_values(&[topic.as_str(), &partition.to_string()]);
            }
            keep
        });
    }

    /// How many assigned partitions wait for their starting offset.
    pub fn set_partitions_waiting(&self, count: usize) {
        self.partitions_waiting
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    fn tracked_lags(&self) -> std::sync::MutexGuard<'_, BTreeSet<(String, i32)>> {
        // The set stays consistent even if a holder panicked: every update is one insert or
        // one removal.
        self.lag_series
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// One Kafka transaction ended: committed, or aborted.
    pub fn record_transaction(&self, committed: bool) {
        if committed {
            self.transaction_commits.inc();
        } else {
            self.transaction_aborts.inc();
        }
    }

    /// Time `store` took to restore from its changelog.
    pub fn observe_restore(&self, store: &str, elapsed: Duration) {
        self.restore
            .with_label_values(&[store])
            .observe(elapsed.as_secs_f64());
    }

    /// One unrecoverable error of `kind`, preferably one of [`fatal_kind`].
    pub fn record_fatal(&self, kind: &'static str) {
        self.fatal_errors.with_label_values(&[kind]).inc();
    }

    /// The gauges of records held for paused tenants.
    pub fn held(&self) -> &HeldMetrics {
        &self.held
    }

    /// The readiness flag served on `/ready`, tied to the `backbone_processor_ready` gauge.
    /// Every call returns the same flag.
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// The registry these metrics live on, for the endpoint and for other components'
    /// metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The whole registry in the Prometheus text format.
    pub fn encode(&self) -> Result<String, prometheus::Error> {
        encode(&self.registry)
    }
}

/// `registry` in the Prometheus text format, version 0.0.4.
pub fn encode(registry: &Registry) -> Result<String, prometheus::Error> {
    let encoder = TextEncoder::new();
    let mut buffer = Vec::new();
    encoder.encode(&registry.gather(), &mut buffer)?;
    String::from_utf8(buffer).map_err(|err| prometheus::Error::Msg(err.to_string()))
}

/// Time from `event_time_ms` (milliseconds since the epoch) to `now`: zero for an event time
/// in the future (a producer's clock ahead of ours), `None` for a negative one (no event time).
pub fn event_age(event_time_ms: i64, now: SystemTime) -> Option<Duration> {
    let event_time = UNIX_EPOCH + Duration::from_millis(u64::try_from(event_time_ms).ok()?);
    Some(now.duration_since(event_time).unwrap_or_default())
}

/// The families of [`REQUIRED_METRICS`] without a single sample in `exposition` (Prometheus
/// text format). Integration tests run a component, scrape it, and fail on a non-empty
/// answer, the way Vector's compliance checks fail a component that does not emit its spec.
pub fn missing_required_metrics(exposition: &str) -> Vec<&'static str> {
    let present: BTreeSet<&str> = exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .filter(|name| !name.is_empty())
        .map(|name| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|family| REQUIRED_METRICS.contains(family))
                .unwrap_or(name)
        })
        .collect();
    REQUIRED_METRICS
        .iter()
        .copied()
        .filter(|name| !present.contains(name))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    type Labels = BTreeMap<String, String>;

    /// Every sample of `text`: name, labels, value. Handles escaped quotes in label values.
    fn samples(text: &str) -> Vec<(String, Labels, f64)> {
        let mut out = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let name_end = line.find(['{', ' ']).unwrap();
            let name = line[..name_end].to_owned();
            let mut labels = Labels::new();
            let mut rest = &line[name_end..];
            if let Some(inner) = rest.strip_prefix('{') {
                let mut chars = inner.char_indices();
                let mut key = String::new();
                let mut end = 0;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '}' => {
                            end = i + 1;
                            break;
                        }
                        ',' => {}
                        '=' => {
                            assert_eq!(chars.next().map(|(_, c)| c), Some('"'));
                            let mut value = String::new();
                            while let Some((_, c)) = chars.next() {
                                match c {
                                    '\\' => value.push(chars.next().unwrap().1),
                                    '"' => break,
                                    c => value.push(c),
                                }
                            }
                            labels.insert(std::mem::take(&mut key), value);
                        }
                        c => key.push(c),
                    }
                }
                rest = &inner[end..];
            }
            let value = rest.split_whitespace().next().unwrap().parse().unwrap();
            out.push((name, labels, value));
        }
        out
    }

    /// The value of the one sample of `name` whose labels include `labels`.
    pub(super) fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = samples(text)
            .into_iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .collect();
        assert!(matching.len() <= 1, "{name} {labels:?} is ambiguous");
        matching.first().copied()
    }

    pub(super) fn metrics() -> RuntimeMetrics {
        RuntimeMetrics::new(&Registry::new(), "usage-rater").unwrap()
    }

    #[test]
    fn each_method_moves_its_series() {
        let m = metrics();
        m.record_consumed("usage.events", 2);
        m.record_consumed("usage.events", 2);
        m.record_produced("usage.rated", 3);
        m.record_dead_letter("usage.events", "contract_violation");
        m.record_duplicate("usage.events");
        m.record_retry("usage.events");
        m.observe_processing(Duration::from_micros(300));
        m.observe_end_to_end("usage.rated", Duration::from_secs(2));
        m.set_lag("usage.events", 2, 17);
        m.record_transaction(true);
        m.record_transaction(true);
        m.record_transaction(false);
        m.observe_restore("balances", Duration::from_secs(40));
        m.record_fatal(fatal_kind::AUTH);
        let text = m.encode().unwrap();

        let p = ("processor", "usage-rater");
        let events = ("topic", "usage.events");
        let rated = ("topic", "usage.rated");
        let v = |name, labels: &[(&str, &str)]| value(&text, name, labels);
        assert_eq!(
            v(names::CONSUMER_RECORDS, &[p, events, ("partition", "2")]),
            Some(2.0)
        );
        assert_eq!(v(names::PRODUCER_RECORDS, &[p, rated]), Some(3.0));
        assert_eq!(
            v(
                names::DLQ_RECORDS,
                &[p, events, ("reason", "contract_violation")]
            ),
            Some(1.0)
        );
        assert_eq!(v(names::DEDUP_DUPLICATES, &[p, events]), Some(1.0));
        assert_eq!(v(names::PROCESSOR_RETRIES, &[p, events]), Some(1.0));
        let duration = format!("{}_bucket", names::PROCESSOR_DURATION);
        assert_eq!(v(&duration, &[p, ("le", "0.00025")]), Some(0.0));
        assert_eq!(v(&duration, &[p, ("le", "0.0005")]), Some(1.0));
        let latency = format!("{}_bucket", names::END_TO_END_LATENCY);
        assert_eq!(v(&latency, &[p, rated, ("le", "1")]), Some(0.0));
        assert_eq!(v(&latency, &[p, rated, ("le", "2.5")]), Some(1.0));
        let latency_sum = format!("{}_sum", names::END_TO_END_LATENCY);
        assert_eq!(v(&latency_sum, &[p, rated]), Some(2.0));
        assert_eq!(
            v(names::CONSUMER_LAG, &[p, events, ("partition", "2")]),
            Some(17.0)
        );
        assert_eq!(v(names::TRANSACTION_COMMITS, &[p]), Some(2.0));
        assert_eq!(v(names::TRANSACTION_ABORTS, &[p]), Some(1.0));
        let restore = format!("{}_count", names::STATE_RESTORE_DURATION);
        assert_eq!(v(&restore, &[p, ("store", "balances")]), Some(1.0));
        assert_eq!(
            v(names::PROCESSOR_FATAL_ERRORS, &[p, ("kind", "auth")]),
            Some(1.0)
        );
        assert_eq!(
            v(names::PROCESSOR_FATAL_ERRORS, &[p, ("kind", "config")]),
            Some(0.0)
        );
        assert_eq!(v(names::PROCESSOR_UP, &[p]), Some(1.0));
        assert_eq!(v(names::PROCESSOR_READY, &[p]), Some(0.0));
        m.readiness().set_ready(true);
        let text = m.encode().unwrap();
        assert_eq!(value(&text, names::PROCESSOR_READY, &[p]), Some(1.0));
    }

    #[test]
    fn labels_come_from_bounded_sets() {
        let m = metrics();
        m.register_topics(&["usage.events".into()], &["usage.rated".into()]);
        for offset in 0..1_000 {
            m.record_consumed("usage.events", offset % 3);
            m.record_dead_letter(
                "usage.events",
                if offset % 2 == 0 {
                    "malformed_json"
                } else {
                    "contract_violation"
                },
            );
            m.record_produced("usage.rated", 1);
            m.observe_end_to_end("usage.rated", Duration::from_millis(offset as u64));
        }
        let all = samples(&m.encode().unwrap());
        let allowed = [
            "processor",
            "topic",
            "partition",
            "reason",
            "store",
            "kind",
            "le",
        ];
        for (name, labels, _) in &all {
            assert!(name.starts_with("backbone_"), "{name}");
            for key in labels.keys() {
                assert!(allowed.contains(&key.as_str()), "{name} has label {key}");
            }
        }
        let series = |name: &str| all.iter().filter(|(n, _, _)| n == name).count();
        // Reasons pass through as given: two reasons, two series, however many records.
        assert_eq!(series(names::DLQ_RECORDS), 2);
        assert_eq!(series(names::CONSUMER_RECORDS), 3);
        assert_eq!(series(names::PRODUCER_RECORDS), 1);
        assert_eq!(
            series(&format!("{}_bucket", names::END_TO_END_LATENCY)),
            LATENCY_BUCKETS.len() + 1
        );
    }

    #[test]
    fn one_runtime_metrics_per_registry() {
        let registry = Registry::new();
        let _first = RuntimeMetrics::new(&registry, "a").unwrap();
        assert!(RuntimeMetrics::new(&registry, "a").is_err());
    }

    #[test]
    fn registered_topics_start_at_zero() {
        let m = metrics();
        m.register_topics(&["usage.events".into()], &["usage.rated".into()]);
        let text = m.encode().unwrap();
        let events = [("topic", "usage.events")];
        assert_eq!(value(&text, names::PROCESSOR_RETRIES, &events), Some(0.0));
        assert_eq!(value(&text, names::DEDUP_DUPLICATES, &events), Some(0.0));
        let rated = [("topic", "usage.rated")];
        assert_eq!(value(&text, names::PRODUCER_RECORDS, &rated), Some(0.0));
    }

    #[test]
    fn missing_required_metrics_names_what_a_run_did_not_emit() {
        let m = metrics();
        let fresh = m.encode().unwrap();
        assert_eq!(
            missing_required_metrics(&fresh),
            [
                names::CONSUMER_RECORDS,
                names::PRODUCER_RECORDS,
                names::DEDUP_DUPLICATES,
                names::PROCESSOR_RETRIES,
                names::END_TO_END_LATENCY,
                names::CONSUMER_LAG,
            ]
        );
        m.register_topics(&["usage.events".into()], &["usage.rated".into()]);
        m.record_consumed("usage.events", 0);
        m.update_lags(&[PartitionLag {
            topic: "usage.events".into(),
            partition: 0,
            lag: Some(0),
        }]);
        assert!(missing_required_metrics(&m.encode().unwrap()).is_empty());
        assert_eq!(
            missing_required_metrics("# TYPE other counter\nother_total 1\n"),
            REQUIRED_METRICS
        );
    }

    #[test]
    fn event_age_handles_skew_and_missing_times() {
        let now = UNIX_EPOCH + Duration::from_millis(10_000);
        assert_eq!(event_age(7_500, now), Some(Duration::from_millis(2_500)));
        assert_eq!(event_age(11_000, now), Some(Duration::ZERO));
        assert_eq!(event_age(-1, now), None);
    }
}
