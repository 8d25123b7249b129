//! What the runtime reads from librdkafka's statistics: the lag of every assigned partition,
//! and the assigned partitions that have not started fetching.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::consumer::ConsumerContext;
use rdkafka::ClientContext;
use serde::Deserialize;

use super::RuntimeMetrics;

/// How long an assigned partition may wait for its starting offset before the wait is logged.
/// A fresh assignment starts within milliseconds; a transaction another instance left open
/// holds it up to that transaction's timeout.
const WAIT_LOGGED_AFTER: Duration = Duration::from_secs(30);

/// The lag of one assigned partition in a statistics report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Records between the committed offset and the partition's end; `None` while librdkafka
    /// does not know (no committed offset or watermark yet).
    pub lag: Option<i64>,
}

/// The parts of librdkafka's statistics JSON (its STATISTICS.md) that lag needs. Parsing only
/// these keeps the callback cheap and independent of fields other librdkafka versions change.
#[derive(Deserialize)]
struct Statistics {
    #[serde(default)]
    topics: BTreeMap<String, TopicStatistics>,
}

#[derive(Deserialize)]
struct TopicStatistics {
    #[serde(default)]
    partitions: BTreeMap<String, PartitionStatistics>,
}

#[derive(Deserialize)]
struct PartitionStatistics {
    partition: i32,
    /// In this consumer's assignment.
    #[serde(default)]
    desired: bool,
    #[serde(default)]
    fetch_state: String,
    #[serde(default = "unknown_lag")]
    consumer_lag: i64,
}

fn unknown_lag() -> i64 {
    -1
}

/// One statistics report, as the runtime reads it.
#[derive(Debug, Default, PartialEq, Eq)]
struct ConsumerReport {
    lags: Vec<PartitionLag>,
    /// Assigned partitions whose fetch has not started.
    waiting: Vec<(String, i32)>,
}

/// Reads one librdkafka statistics JSON report. A partition counts as assigned while it is
/// being fetched: its `fetch_state` is neither `none` nor `stopping`/`stopped` (revoked). A
/// paused partition keeps fetch state `active`, so its lag keeps being reported while it grows.
/// A partition in the assignment (`desired`) whose fetch state is still `none` waits for its
/// starting offset: librdkafka starts the fetch once the group's committed offset is read,
/// and asks again, silently, for as long as the broker answers that it is unstable. The
/// internal unassigned partition (-1) is skipped.
///
/// `consumer_lag` counts from the committed offset (not `consumer_lag_stored`, from the stored
/// one): it is the work a new owner would redo after a crash, the figure other lag tools show,
/// and at most one commit interval staler.
fn read(statistics_json: &[u8]) -> Result<ConsumerReport, serde_json::Error> {
    let statistics: Statistics = serde_json::from_slice(statistics_json)?;
    let mut report = ConsumerReport::default();
    for (topic, topic_statistics) in statistics.topics {
        for partition in topic_statistics.partitions.into_values() {
            if partition.partition < 0 {
                continue;
            }
            match partition.fetch_state.as_str() {
                "" | "none" if partition.desired => {
                    report.waiting.push((topic.clone(), partition.partition));
                }
                "" | "none" | "stopping" | "stopped" => {}
                _ => report.lags.push(PartitionLag {
                    topic: topic.clone(),
                    partition: partition.partition,
                    lag: (partition.consumer_lag >= 0).then_some(partition.consumer_lag),
                }),
            }
        }
    }
    Ok(report)
}

/// Since when an assigned partition has waited for its starting offset, and whether that was
/// logged.
#[derive(Debug)]
struct Wait {
    since: Instant,
    logged: bool,
}

/// A consumer context that keeps `backbone_consumer_lag_records` and
/// `backbone_consumer_partitions_waiting` current from librdkafka's statistics callback, for
/// `StreamConsumer<MeteredContext>`, and logs a partition that waits long for its starting
/// offset: librdkafka itself says nothing, and the consumer sits idle. Statistics are emitted
/// every `statistics.interval.ms` (see `ObservabilitySettings::enable_statistics`); they cost
/// no extra broker requests, unlike comparing committed offsets with fetched watermarks.
/// Everything else keeps rdkafka's default behaviour.
#[derive(Debug, Clone)]
pub struct MeteredContext {
    metrics: Arc<RuntimeMetrics>,
    waiting: Arc<Mutex<BTreeMap<(String, i32), Wait>>>,
}

impl MeteredContext {
    /// A context updating `metrics`.
    pub fn new(metrics: Arc<RuntimeMetrics>) -> Self {
        Self {
            metrics,
            waiting: Arc::default(),
        }
    }

    fn track_waiting(&self, now_waiting: Vec<(String, i32)>) {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        waiting.retain(|partition, wait| {
            let still = now_waiting.contains(partition);
            if !still && wait.logged {
                tracing::info!(topic = %partition.0, partition = partition.1,
                    waited = ?now.duration_since(wait.since), "assigned partition fetching at last");
            }
            still
        });
        for partition in now_waiting {
            let wait = waiting.entry(partition.clone()).or_insert(Wait {
                since: now,
                logged: false,
            });
            let waited = now.duration_since(wait.since);
            if waited >= WAIT_LOGGED_AFTER && !wait.logged {
                wait.logged = true;
                tracing::warn!(topic = %partition.0, partition = partition.1, ?waited,
                    "assigned partition not fetching: the group's committed offset for it is unreadable; \
                     the broker answers so while a transaction holding offsets of this group is open, \
                     and ends a forgotten one at its transaction timeout");
            }
        }
        self.metrics.set_partitions_waiting(waiting.len());
    }
}

impl ClientContext for MeteredContext {
    fn stats_raw(&self, statistics: &[u8]) {
        match read(statistics) {
            Ok(report) => {
                self.metrics.update_lags(&report.lags);
                self.track_waiting(report.waiting);
            }
            Err(err) => {
                tracing::warn!(error = %err, "unreadable librdkafka statistics, consumer lag not updated")
            }
        }
    }
}

impl ConsumerContext for MeteredContext {}

#[cfg(test)]
mod tests {
    use super::super::names;
    use super::super::tests::{metrics, value};
    use super::*;

    /// A consumer's statistics report shaped after librdkafka's STATISTICS.md, trimmed to a
    /// realistic subset: partition 0 fetching with a known lag, 1 fetching before its first
    /// commit, 2 revoked with a stale lag, 3 never assigned, 4 assigned and waiting for its
    /// starting offset, and the internal UA partition.
    fn statistics_sample(lag_0: i64, state_0: &str, lag_1: i64) -> String {
        let partition = |id: i32, fetch_state: &str, committed: i64, lag: i64| {
            // librdkafka's own report marks the partitions of the assignment.
            let desired = matches!(id, 0 | 1 | 4);
            format!(
                r#""{id}": {{
                  "partition": {id}, "broker": 1, "leader": 1, "desired": {desired},
                  "unknown": false, "msgq_cnt": 0, "msgq_bytes": 0, "xmit_msgq_cnt": 0,
                  "xmit_msgq_bytes": 0, "fetchq_cnt": 0, "fetchq_size": 0,
                  "fetch_state": "{fetch_state}", "query_offset": -2, "next_offset": 120,
                  "app_offset": 120, "stored_offset": 120, "stored_leader_epoch": -1,
                  "committed_offset": {committed}, "committed_leader_epoch": -1,
                  "eof_offset": -1001, "lo_offset": 0, "hi_offset": 162, "ls_offset": 162,
                  "consumer_lag": {lag}, "consumer_lag_stored": 42, "leader_epoch": 0,
                  "txmsgs": 0, "txbytes": 0, "rxmsgs": 120, "rxbytes": 9600, "msgs": 120,
                  "rx_ver_drops": 0, "msgs_inflight": 0, "next_ack_seq": 0,
                  "next_err_seq": 0, "acked_msgid": 0
                }}"#
            )
        };
        format!(
            r#"{{
              "name": "rdkafka#consumer-1", "client_id": "rdkafka", "type": "consumer",
              "ts": 5016483227792, "time": 1527060869, "age": 12000000, "replyq": 0,
              "msg_cnt": 0, "msg_size": 0, "msg_max": 100000, "msg_size_max": 1073741824,
              "simple_cnt": 0, "metadata_cache_cnt": 1,
              "brokers": {{
                "127.0.0.1:9092/1": {{
                  "name": "127.0.0.1:9092/1", "nodeid": 1, "nodename": "127.0.0.1:9092",
                  "source": "configured", "state": "UP", "stateage": 8005652,
                  "toppars": {{ "usage.events-0": {{ "topic": "usage.events", "partition": 0 }} }}
                }}
              }},
              "topics": {{
                "usage.events": {{
                  "topic": "usage.events", "age": 11000, "metadata_age": 1000,
                  "batchsize": {{ "min": 0, "max": 0, "avg": 0, "sum": 0, "cnt": 0 }},
                  "partitions": {{
                    {p0},
                    {p1},
                    {p2},
                    {p3},
                    {p4},
                    {ua}
                  }}
                }}
              }},
              "cgrp": {{
                "state": "up", "stateage": 11000, "join_state": "steady",
                "rebalance_age": 9000, "rebalance_cnt": 1, "rebalance_reason": "",
                "assignment_size": 2
              }}
            }}"#,
            p0 = partition(0, state_0, 120, lag_0),
            p1 = partition(1, "active", -1001, lag_1),
            p2 = partition(2, "stopped", 100, 62),
            p3 = partition(3, "none", -1001, -1),
            p4 = partition(4, "none", -1001, -1),
            ua = partition(-1, "none", -1001, -1),
        )
    }

    #[test]
    fn statistics_give_the_lag_of_assigned_partitions_and_those_not_started() {
        let report = read(statistics_sample(42, "active", -1).as_bytes()).unwrap();
        let lag = |partition, lag| PartitionLag {
            topic: "usage.events".into(),
            partition,
            lag,
        };
        assert_eq!(report.lags, [lag(0, Some(42)), lag(1, None)]);
        assert_eq!(report.waiting, [("usage.events".to_owned(), 4)]);
    }

    #[test]
    fn metered_context_fits_a_stream_consumer() {
        fn create(
            config: &rdkafka::ClientConfig,
            metrics: Arc<RuntimeMetrics>,
        ) -> rdkafka::error::KafkaResult<rdkafka::consumer::StreamConsumer<MeteredContext>>
        {
            config.create_with_context(MeteredContext::new(metrics))
        }
        let _ = create;
    }

    #[test]
    fn statistics_callback_keeps_lag_gauges_current() {
        let metrics = Arc::new(metrics());
        let context = MeteredContext::new(Arc::clone(&metrics));
        let lag_of = |partition: &str| {
            value(
                &metrics.encode().unwrap(),
                names::CONSUMER_LAG,
                &[("topic", "usage.events"), ("partition", partition)],
            )
        };

        let waiting = || {
            value(
                &metrics.encode().unwrap(),
                names::CONSUMER_PARTITIONS_WAITING,
                &[],
            )
        };

        context.stats_raw(statistics_sample(42, "active", -1).as_bytes());
        assert_eq!(waiting(), Some(1.0), "partition 4 waits for its offset");
        assert_eq!(lag_of("4"), None, "a partition not fetching has no lag yet");
        assert_eq!(lag_of("0"), Some(42.0));
        assert_eq!(lag_of("1"), None, "lag not known yet");
        assert_eq!(lag_of("2"), None, "revoked partitions report nothing");

        context.stats_raw(statistics_sample(40, "active", 5).as_bytes());
        assert_eq!(lag_of("0"), Some(40.0));
        assert_eq!(lag_of("1"), Some(5.0));

        // An unknown lag keeps the last value; a revoked partition's series goes.
        context.stats_raw(statistics_sample(40, "stopped", -1).as_bytes());
        assert_eq!(lag_of("0"), None);
        assert_eq!(waiting(), Some(1.0));
        assert_eq!(lag_of("1"), Some(5.0));

        context.stats_raw(b"{not json");
        assert_eq!(lag_of("1"), Some(5.0));
    }
}
