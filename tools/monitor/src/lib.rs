//! The lag monitor: for every consumer group of the backbone, how far each partition's
//! committed offset is behind the partition's end, in records and in time (the age of the
//! oldest record not yet consumed).
//!
//! It reads committed offsets and high watermarks from the broker, not from the consumers'
//! own statistics, so a group whose processor is down still shows its lag, growing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use backbone_core::config::{ConfigError, Validate};
use backbone_core::KafkaSettings;
use prometheus::{GaugeVec, IntGauge, IntGaugeVec, Opts, Registry};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Deserialize;

/// Metric names, for dashboards and alert rules.
pub mod names {
    /// Records between a group's committed offset and the partition's end.
    pub const LAG_RECORDS: &str = "backbone_monitor_consumer_lag_records";
    /// Age of the oldest record a group has not consumed, in seconds; 0 when caught up.
    pub const LAG_SECONDS: &str = "backbone_monitor_consumer_lag_seconds";
    /// 1 while the monitor runs.
    pub const UP: &str = "backbone_monitor_up";
}

/// The config file: `[kafka]` and `[monitor]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorConfig {
    /// Broker connection.
    #[serde(default)]
    pub kafka: KafkaSettings,
    /// What to watch.
    #[serde(default)]
    pub monitor: MonitorSettings,
}

impl Validate for MonitorConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        self.monitor.validate()
    }
}

/// The `[monitor]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorSettings {
    /// Groups always watched, besides those the broker lists (a broker may not list a group
    /// without members).
    pub groups: Vec<String>,
    /// Whether to watch every group the broker lists too, or only `groups`.
    pub discover: bool,
    /// Groups whose name starts with one of these are not watched (tools, test readers).
    pub exclude_prefixes: Vec<String>,
    /// How often lag is measured.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Where `/metrics` is served.
    pub listen: SocketAddr,
}

impl Default for MonitorSettings {
    fn default() -> Self {
        Self {
            groups: Vec::new(),
            discover: true,
            exclude_prefixes: vec![
                "backbone-drift".to_owned(),
                "backbone-demo-reader".to_owned(),
            ],
            interval: Duration::from_secs(15),
            listen: SocketAddr::from(([127, 0, 0, 1], 9470)),
        }
    }
}

impl Validate for MonitorSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.interval < Duration::from_secs(1) {
            return Err(ConfigError::Invalid {
                key: "monitor.interval".to_owned(),
                message: "must be at least 1s".to_owned(),
            });
        }
        if self.groups.iter().any(String::is_empty) {
            return Err(ConfigError::Invalid {
                key: "monitor.groups".to_owned(),
                message: "a group name is empty".to_owned(),
            });
        }
        Ok(())
    }
}

/// Why a measurement failed.
#[derive(Debug, thiserror::Error)]
#[error("kafka at {servers}: {message}")]
pub struct MonitorError {
    servers: String,
    message: String,
}

/// One group's position on one partition.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionLag {
    /// Consumer group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The group's committed offset.
    pub committed: i64,
    /// The partition's end.
    pub end: i64,
    /// Age of the record at the committed offset, when the group is behind.
    pub age: Option<Duration>,
}

impl PartitionLag {
    /// Records behind.
    pub fn records(&self) -> i64 {
        (self.end - self.committed).max(0)
    }
}

/// Measures lag through the broker.
pub struct LagMonitor {
    kafka: KafkaSettings,
    settings: MonitorSettings,
    admin: BaseConsumer,
}

const TIMEOUT: Duration = Duration::from_secs(10);

impl LagMonitor {
    /// A monitor of the broker `kafka` names.
    pub fn new(kafka: &KafkaSettings, settings: &MonitorSettings) -> Result<Self, MonitorError> {
        let admin: BaseConsumer = kafka.admin_config().create().map_err(|e| error(kafka, e))?;
        Ok(Self {
            kafka: kafka.clone(),
            settings: settings.clone(),
            admin,
        })
    }

    /// The groups to watch: the broker's list and the configured ones, minus excluded.
    pub fn groups(&self) -> Result<BTreeSet<String>, MonitorError> {
        let mut groups: BTreeSet<String> = self.settings.groups.iter().cloned().collect();
        if self.settings.discover {
            let listed = self
                .admin
                .fetch_group_list(None, TIMEOUT)
                .map_err(|e| error(&self.kafka, e))?;
            groups.extend(listed.groups().iter().map(|g| g.name().to_owned()));
        }
        groups.retain(|g| {
            !self
                .settings
                .exclude_prefixes
                .iter()
                .any(|prefix| g.starts_with(prefix.as_str()))
        });
        Ok(groups)
    }

    /// Every partition of every topic that is not internal (`_`-prefixed).
    fn partitions(&self) -> Result<TopicPartitionList, MonitorError> {
        let metadata = self
            .admin
            .fetch_metadata(None, TIMEOUT)
            .map_err(|e| error(&self.kafka, e))?;
        let mut list = TopicPartitionList::new();
        for topic in metadata.topics() {
            if topic.name().starts_with('_') || topic.error().is_some() {
                continue;
            }
            for partition in topic.partitions() {
                list.add_partition(topic.name(), partition.id());
            }
        }
        Ok(list)
    }

    /// Lag of every watched group on every partition it has committed offsets for.
    pub fn measure(&self) -> Result<Vec<PartitionLag>, MonitorError> {
        let partitions = self.partitions()?;
        let mut ends: BTreeMap<(String, i32), i64> = BTreeMap::new();
        let mut lags = Vec::new();
        for group in self.groups()? {
            let mut config = self.kafka.admin_config();
            // Under read_committed (librdkafka's default) the fetch asks for stable offsets
            // only, and the broker withholds a group's offsets while a transaction holding
            // some is open: the measure would wait, then fail for every group. Without that
            // flag it gets the offsets committed so far, so a group stuck behind such a
            // transaction shows its lag growing.
            config
                .set("group.id", &group)
                .set("enable.auto.commit", "false")
                .set("isolation.level", "read_uncommitted");
            let consumer: BaseConsumer = config.create().map_err(|e| error(&self.kafka, e))?;
            let committed = consumer
                .committed_offsets(partitions.clone(), TIMEOUT)
                .map_err(|e| error(&self.kafka, e))?;
            for element in committed.elements() {
                let Offset::Offset(offset) = element.offset() else {
                    continue;
                };
                let key = (element.topic().to_owned(), element.partition());
                let end = match ends.get(&key) {
                    Some(end) => *end,
                    None => {
                        let (_, high) = self
                            .admin
                            .fetch_watermarks(element.topic(), element.partition(), TIMEOUT)
                            .map_err(|e| error(&self.kafka, e))?;
                        ends.insert(key, high);
                        high
                    }
                };
                lags.push(PartitionLag {
                    group: group.clone(),
                    topic: element.topic().to_owned(),
                    partition: element.partition(),
                    committed: offset,
                    end,
                    age: None,
                });
            }
            self.ages(&mut lags[..], &group)?;
        }
        Ok(lags)
    }

    /// Fills the age of the first unconsumed record of `group`'s lagging partitions.
    fn ages(&self, lags: &mut [PartitionLag], group: &str) -> Result<(), MonitorError> {
        let behind: Vec<&mut PartitionLag> = lags
            .iter_mut()
            .filter(|l| l.group == group && l.records() > 0)
            .collect();
        if behind.is_empty() {
            return Ok(());
        }
        let mut config = self.kafka.admin_config();
        config
            .set("group.id", "backbone-monitor-reader")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false");
        let reader: BaseConsumer = config.create().map_err(|e| error(&self.kafka, e))?;
        let mut assignment = TopicPartitionList::new();
        for lag in &behind {
            assignment
                .add_partition_offset(&lag.topic, lag.partition, Offset::Offset(lag.committed))
                .map_err(|e| error(&self.kafka, e))?;
        }
        reader
            .assign(&assignment)
            .map_err(|e| error(&self.kafka, e))?;
        let mut first: BTreeMap<(String, i32), i64> = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while first.len() < behind.len() && Instant::now() < deadline {
            let Some(Ok(message)) = reader.poll(Duration::from_millis(200)) else {
                continue;
            };
            if let Some(ms) = message.timestamp().to_millis() {
                first
                    .entry((message.topic().to_owned(), message.partition()))
                    .or_insert(ms);
            }
        }
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        for lag in behind {
            if let Some(ms) = first.get(&(lag.topic.clone(), lag.partition)) {
                let age = u64::try_from(now_ms - ms).unwrap_or(0);
                lag.age = Some(Duration::from_millis(age));
            }
        }
        Ok(())
    }
}

fn error(kafka: &KafkaSettings, err: rdkafka::error::KafkaError) -> MonitorError {
    MonitorError {
        servers: kafka.bootstrap_servers.clone(),
        message: err.to_string(),
    }
}

/// The monitor's gauges.
#[derive(Debug, Clone)]
pub struct LagGauges {
    records: IntGaugeVec,
    seconds: GaugeVec,
}

impl LagGauges {
    /// Registers the gauges, and `backbone_monitor_up` set to 1, on `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let labels = &["group", "topic", "partition"];
        let records = IntGaugeVec::new(
            Opts::new(
                names::LAG_RECORDS,
                "Records between a group's committed offset and the end of the partition.",
            ),
            labels,
        )?;
        let seconds = GaugeVec::new(
            Opts::new(
                names::LAG_SECONDS,
                "Age of the oldest record the group has not consumed; 0 when caught up.",
            ),
            labels,
        )?;
        let up = IntGauge::with_opts(Opts::new(names::UP, "1 while the monitor runs."))?;
        registry.register(Box::new(records.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        registry.register(Box::new(up.clone()))?;
        up.set(1);
        Ok(Self { records, seconds })
    }

    /// Replaces every series with `lags`.
    pub fn publish(&self, lags: &[PartitionLag]) {
        self.records.reset();
        self.seconds.reset();
        for lag in lags {
            let partition = lag.partition.to_string();
            let labels = [lag.group.as_str(), lag.topic.as_str(), partition.as_str()];
            self.records.with_label_values(&labels).set(lag.records());
            self.seconds
                .with_label_values(&labels)
                .set(lag.age.map_or(0.0, |a| a.as_secs_f64()));
        }
    }
}
