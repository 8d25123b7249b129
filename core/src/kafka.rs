//! Kafka client settings shared by every binary, and the one place that turns them into
//! librdkafka configurations.

mod properties;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use serde::Deserialize;

use crate::certificates::{self, CertificateUse};
use crate::config::{ConfigError, Validate};

/// The `[kafka]` config section.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// Comma-separated `host:port` list.
    #[serde(default = "default_bootstrap_servers")]
    pub bootstrap_servers: String,
    /// Consumer group session timeout. Short by default, so a crashed member's partitions
    /// move on soon.
    #[serde(default = "default_session_timeout", with = "humantime_serde")]
    pub session_timeout: Duration,
    /// How often stored offsets are committed.
    #[serde(default = "default_commit_interval", with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Extra librdkafka properties for every client (security settings, tuning), passed
    /// through unchanged. Values whose key mentions a password or secret are never printed.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties for producers only (`linger.ms`, `batch.size`), over
    /// `properties`: a consumer handed a producer's property logs a warning that it ignores it.
    #[serde(default)]
    pub producer_properties: BTreeMap<String, String>,
    /// librdkafka properties for consumers only (`queued.min.messages`, `fetch.max.bytes`),
    /// over `properties`.
    #[serde(default)]
    pub consumer_properties: BTreeMap<String, String>,
    /// librdkafka properties read from files, for every client and over the maps above: a
    /// mounted secret, `"sasl.password" = "/run/secrets/kafka-password"`. The file's trailing
    /// line ending is not part of the value; the values are never printed.
    #[serde(default)]
    pub property_files: BTreeMap<String, PathBuf>,
    /// How the topics this component creates are replicated (`[kafka.topics]`).
    #[serde(default)]
    pub topics: Replication,
}

/// The `[kafka.topics]` config section: the replication of every topic a component creates
/// (outputs, changelogs, dead-letter and repartition topics, the registry's `_schemas`, the
/// sinks' results) unless the topic's own declaration says otherwise (the contracts manifest).
/// Producers wait for every in-sync replica (`acks=all`), so a write acknowledged with
/// `min_insync_replicas` of 2 survives the loss of any one broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Replication {
    /// Copies of each partition. 1 on a single broker; 3 on a production cluster.
    pub replication_factor: i32,
    /// Replicas that must hold a write before it is acknowledged (`min.insync.replicas`).
    /// 1 on a single broker; 2 with three copies.
    pub min_insync_replicas: i32,
}

impl Default for Replication {
    fn default() -> Self {
        Self {
            replication_factor: 1,
            min_insync_replicas: 1,
        }
    }
}

impl Replication {
    /// The field that is wrong, and why: a factor under 1, or a `min_insync_replicas` outside
    /// 1 to the factor.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if self.replication_factor < 1 {
            return Some((
                "replication_factor",
                format!("must be at least 1, got {}", self.replication_factor),
            ));
        }
        if !(1..=self.replication_factor).contains(&self.min_insync_replicas) {
            return Some((
                "min_insync_replicas",
                format!(
                    "must be between 1 and the replication factor {}, got {}",
                    self.replication_factor, self.min_insync_replicas
                ),
            ));
        }
        None
    }
}

fn default_bootstrap_servers() -> String {
    "127.0.0.1:9092".to_owned()
}

fn default_session_timeout() -> Duration {
    Duration::from_secs(6)
}

fn default_commit_interval() -> Duration {
    Duration::from_secs(1)
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            bootstrap_servers: default_bootstrap_servers(),
            session_timeout: default_session_timeout(),
            commit_interval: default_commit_interval(),
            properties: BTreeMap::new(),
            producer_properties: BTreeMap::new(),
            consumer_properties: BTreeMap::new(),
            property_files: BTreeMap::new(),
            topics: Replication::default(),
        }
    }
}

/// Which client a configuration is for: it takes `properties` and its own kind's properties.
#[derive(Clone, Copy)]
enum Client {
    Producer,
    Consumer,
    Admin,
}

/// The linger of clients that send a record and wait for it (the registry, loadgen, the replay
/// tool, the sinks' results): librdkafka's own 5 ms. Every producer compresses with lz4.
const CLIENT_LINGER_MS: &str = "5";

/// A processor's producer lingers longer: it sends a steady stream of outputs and changelog
/// writes, and a broker's work follows its produce requests more than its records (on the
/// stand-in broker measured before Kafka, 2,000 records/s cost 37% of a core at 5 ms and 10% at
/// 30 ms). At 2,000 events/s through the
/// four processors on two cores, p99 to `billing.charges` fell from 809 ms to 379 to 425 ms
/// (docs/BENCHMARKS.md). Kafka Streams lingers 100 ms for the same reason.
const STAGE_LINGER_MS: &str = "30";

/// Consumer defaults.
///
/// On the stand-in broker measured before Kafka, a hop's latency followed `fetch.wait.max.ms`
/// even when records were waiting (at 2,000 records/s: 152 ms median through a pass-through at
/// librdkafka's 500 ms default, 24 ms at 10 ms), and every stage of a pipeline adds it.
///
/// The rest bounds what a consumer holds ahead of its loop. librdkafka fetches again while
/// fewer than `queued.min.messages` records wait (100,000 by default), each held as an op of
/// about 400 bytes beside its decompressed batch, so a stage reading a backlog held 150,000 or
/// more (140 MB in the usage-validator over a million keys). Once at the bound it looks again
/// after `fetch.queue.backoff.ms`, whose 1 s default left the validator idle half the time at
/// 10,000 records (52 s for the million instead of 25 s).
const CONSUMER_TUNING: [(&str, &str); 5] = [
    ("fetch.wait.max.ms", "20"),
    ("queued.min.messages", "10000"),
    ("fetch.queue.backoff.ms", "10"),
    ("fetch.max.bytes", CONSUMER_FETCH_BYTES),
    ("message.max.bytes", CONSUMER_FETCH_BYTES),
];

/// The compressed bytes one fetch response may bring. The bound above is checked before a
/// fetch, so a response overshoots it by everything it holds, and highly compressible records
/// decompress twenty-fold (a 1 MiB response held 80,000 records of 260 bytes, 21 MB). Some
/// brokers ignore `max.partition.fetch.bytes`; brokers return a larger first batch whole, so a
/// record over this size is still read. librdkafka refuses a `fetch.max.bytes` under
/// `message.max.bytes`, which on a consumer only caps the size of its own (small) requests.
const CONSUMER_FETCH_BYTES: &str = "262144";

impl KafkaSettings {
    /// Settings pointing at `bootstrap_servers`, everything else default.
    pub fn for_servers(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            ..Self::default()
        }
    }

    /// The operator's properties for `client`: `properties`, then its own kind's over them.
    fn operator_properties(&self, client: Client) -> BTreeMap<&str, &str> {
        let own = match client {
            Client::Producer => Some(&self.producer_properties),
            Client::Consumer => Some(&self.consumer_properties),
            Client::Admin => None,
        };
        self.properties
            .iter()
            .chain(own.into_iter().flatten())
            .map(|(key, value)| (key.as_str(), value.as_str()))
            .collect()
    }

    /// A client of kind `client`: `defaults` first, then the operator's properties over them.
    fn base(&self, client: Client, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap_servers);
        // Our brokers are IPv4-only; never let a resolver hand librdkafka an IPv6 address.
        config.set("broker.address.family", "v4");
        for (key, value) in defaults {
            config.set(*key, *value);
        }
        let operator = self.operator_properties(client);
        for (key, value) in &operator {
            config.set(*key, *value);
        }
        // Read at each client's making, so a rotated secret is picked up by the next client.
        // Start-up validation read them all; one gone since is left out, and the cluster's
        // refusal says what is missing.
        match self.property_file_values() {
            Ok(values) => {
                for (key, value) in values {
                    config.set(key, value.expose());
                }
            }
            Err(err) => tracing::error!(error = %err, "Kafka property file"),
        }
        // librdkafka's `debug` contexts only reach the log when its log level lets them through.
        if operator.contains_key("debug") {
            config.set_log_level(rdkafka::config::RDKafkaLogLevel::Debug);
        }
        config
    }

    /// The common part of every consumer: `CONSUMER_TUNING`, under the operator's properties.
    fn tuned_consumer(&self) -> ClientConfig {
        let mut config = self.base(Client::Consumer, &CONSUMER_TUNING);
        // The fetch bound follows a raised `message.max.bytes` unless the operator set it too.
        if !self
            .operator_properties(Client::Consumer)
            .contains_key("fetch.max.bytes")
        {
            if let Some(message_max) = config.get("message.max.bytes").map(str::to_owned) {
                config.set("fetch.max.bytes", message_max);
            }
        }
        config
    }

    /// An idempotent producer lingering `linger_ms`, under the operator's properties.
    fn producer_lingering(&self, linger_ms: &str) -> ClientConfig {
        let mut config = self.base(
            Client::Producer,
            &[("linger.ms", linger_ms), ("compression.type", "lz4")],
        );
        config.set("enable.idempotence", "true").set("acks", "all");
        config
    }

    /// A consumer in `group_id` that never stores offsets on its own: the runtime stores an
    /// offset only once the input's outputs are acknowledged, and librdkafka commits what is
    /// stored on its interval, on partition revocation and on close.
    pub fn consumer_config(&self, group_id: &str) -> ClientConfig {
        let mut config = self.tuned_consumer();
        config
            .set("group.id", group_id)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.commit.interval.ms",
                self.commit_interval.as_millis().to_string(),
            )
            .set("auto.offset.reset", "earliest")
            .set(
                "session.timeout.ms",
                self.session_timeout.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                (self.session_timeout.as_millis() / 3).max(100).to_string(),
            )
            .set("isolation.level", "read_committed");
        config
    }

    /// A consumer that reads by explicit assignment and commits nothing (a changelog restore,
    /// the replay tool's scans), in `group_id`: it sees only committed transactions.
    pub fn reader_config(&self, group_id: &str) -> ClientConfig {
        let mut config = self.tuned_consumer();
        config
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // It joins no group, but librdkafka refuses a `max.poll.interval.ms` (which the
            // operator's properties may lower) under the session timeout whatever the use.
            .set(
                "session.timeout.ms",
                self.session_timeout.as_millis().to_string(),
            )
            .set("isolation.level", "read_committed");
        config
    }

    /// A [`reader_config`](Self::reader_config) that rebuilds `processor`'s partition state
    /// from its changelogs.
    pub fn restore_consumer_config(&self, processor: &str) -> ClientConfig {
        self.reader_config(&format!("{processor}.restore"))
    }

    /// A transactional producer with `transactional_id`: outputs, changelog writes and input
    /// offsets commit together, and a newer instance with the same id fences this one.
    pub fn transactional_producer_config(
        &self,
        transactional_id: &str,
        transaction_timeout: std::time::Duration,
    ) -> ClientConfig {
        let mut config = self.stage_producer_config();
        config.set("transactional.id", transactional_id).set(
            "transaction.timeout.ms",
            transaction_timeout.as_millis().to_string(),
        );
        config
    }

    /// An idempotent producer: no duplicates or reordering from its own retries. Batching
    /// (`linger.ms`, `compression.type`) may be tuned through `kafka.producer_properties`; the
    /// delivery guarantees may not.
    pub fn producer_config(&self) -> ClientConfig {
        self.producer_lingering(CLIENT_LINGER_MS)
    }

    /// [`producer_config`](Self::producer_config) for a processor's outputs and changelog
    /// writes: it lingers `STAGE_LINGER_MS` unless the operator's properties set `linger.ms`.
    pub fn stage_producer_config(&self) -> ClientConfig {
        self.producer_lingering(STAGE_LINGER_MS)
    }

    /// A client for admin and metadata requests.
    pub fn admin_config(&self) -> ClientConfig {
        self.base(Client::Admin, &[])
    }
}

impl Validate for KafkaSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: format!("kafka.{key}"),
            message,
        };
        self.property_file_values()?;
        // librdkafka reads these when a client is made, and says only which property failed.
        for (map, key, path) in self.file_properties() {
            let name = format!("{map}.\"{key}\"");
            if let Err(err) = std::fs::File::open(path) {
                return Err(invalid(&name, format!("cannot read `{path}`: {err}")));
            }
            let usage = match key {
                "ssl.ca.location" => CertificateUse::Trust,
                "ssl.certificate.location" => CertificateUse::Present,
                _ => continue,
            };
            certificates::check_dates(Path::new(path), usage, &format!("kafka.{name}"))?;
        }
        if self.bootstrap_servers.trim().is_empty() {
            return Err(invalid("bootstrap_servers", "must not be empty".into()));
        }
        for server in self.bootstrap_servers.split(',') {
            let (host, port) = server.trim().rsplit_once(':').ok_or_else(|| {
                invalid(
                    "bootstrap_servers",
                    format!("expected host:port, got \"{server}\""),
                )
            })?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(invalid(
                    "bootstrap_servers",
                    format!("expected host:port, got \"{server}\""),
                ));
            }
        }
        if self.session_timeout < Duration::from_secs(1) {
            return Err(invalid(
                "session_timeout",
                format!("must be at least 1s, got {:?}", self.session_timeout),
            ));
        }
        if self.commit_interval.is_zero() {
            return Err(invalid("commit_interval", "must be more than 0s".into()));
        }
        match self.topics.problem() {
            Some((field, message)) => Err(invalid(&format!("topics.{field}"), message)),
            None => Ok(()),
        }
    }
}

/// Dead-letter reason of a record whose headers cannot be read (a header name that is not
/// UTF-8).
pub const UNREADABLE_HEADERS: &str = "unreadable_headers";

/// A record's headers could not be read: a header name is not UTF-8. The Kafka protocol
/// makes names strings, but a client that writes raw bytes can send any.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a header name is not UTF-8; the record's headers cannot be read")]
pub struct UnreadableHeaders;

/// A record's headers, copied out of the client's buffer; a null value stays null.
///
/// rust-rdkafka converts each header name to `&str` with an `unwrap`, so a name that is not
/// UTF-8 panics inside the client library; reading the names any other way needs `unsafe`,
/// which this workspace forbids. The panic is caught here and becomes an error, so the record
/// is dead-lettered instead of stopping (and, on restart, stopping again) every stage that
/// reads it.
pub fn owned_headers<M: Message>(message: &M) -> Result<Vec<crate::Header>, UnreadableHeaders> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default()
    }))
    .map_err(|_| UnreadableHeaders)
}

/// What an error read from a consumer means for the loop that read it. Processors and sinks
/// both act on it the same way: stop on `Fatal` and `Refused` (the alert metric raised, nothing
/// committed past what was settled), go on after `Passing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerFailure {
    /// librdkafka cannot recover the client.
    Fatal,
    /// The broker refused our credentials or permissions. Retrying cannot help, and going on
    /// as if the topic were empty would hide it, so the loop stops for someone to fix access.
    Refused,
    /// The client recovers on its own: a broker restarting, a leader moving, a partition end
    /// reached.
    Passing,
}

impl ConsumerFailure {
    /// The class of `err`.
    pub fn of(err: &KafkaError) -> Self {
        match err.rdkafka_error_code() {
            Some(RDKafkaErrorCode::Fatal) => Self::Fatal,
            Some(
                RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::Authentication,
            ) => Self::Refused,
            _ => Self::Passing,
        }
    }
}

/// Whether `err` says a record is larger than the producer (`message.max.bytes`) or its topic
/// (`max.message.bytes`) takes: sending it again cannot succeed.
pub fn refuses_size(err: &KafkaError) -> bool {
    matches!(
        err.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::MessageBatchTooLarge)
    )
}

/// Hands `record` to the producer, waiting while librdkafka's queue is full, up to `timeout`;
/// the delivery is awaited later, through the future returned.
pub async fn hand_over(
    producer: &FutureProducer,
    mut record: FutureRecord<'_, [u8], [u8]>,
    timeout: Duration,
) -> Result<DeliveryFuture, KafkaError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned))
                if std::time::Instant::now() < deadline =>
            {
                // librdkafka's queue is full: give its sender thread a moment to drain it.
                record = returned;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((err, _)) => return Err(err),
        }
    }
}

/// Whether `err` says the broker cannot be reached right now (it is restarting, say): librdkafka
/// reconnects on its own, so a read that meets it can wait and poll again.
pub(crate) fn is_connection_lost(err: &rdkafka::error::KafkaError) -> bool {
    matches!(
        err.rdkafka_error_code(),
        Some(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown)
    )
}

/// `partition`'s low and high watermarks, asked again for up to `timeout` while the broker
/// does not know the partition or its leader yet: a topic created a moment ago is in one
/// broker's metadata before its leader has taken it on, and librdkafka gives those answers
/// back at once rather than retrying them.
pub fn watermarks<C: rdkafka::consumer::Consumer>(
    consumer: &C,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<(i64, i64), KafkaError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match consumer.fetch_watermarks(topic, partition, left) {
            Err(err) if is_not_ready(&err) && !left.is_zero() => {
                std::thread::sleep(Duration::from_millis(100).min(left));
            }
            answer => return answer,
        }
    }
}

/// A partition not yet led, or a broker not yet (or no longer) reachable: worth asking again.
fn is_not_ready(err: &KafkaError) -> bool {
    is_connection_lost(err)
        || matches!(
            err.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::UnknownTopicOrPartition
                    | RDKafkaErrorCode::UnknownPartition
                    | RDKafkaErrorCode::NotLeaderForPartition
                    | RDKafkaErrorCode::LeaderNotAvailable
            )
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_replication_outside_its_bounds_names_the_key() {
        let mut settings = KafkaSettings::default();
        assert!(settings.validate().is_ok());
        for (factor, in_sync, key) in [
            (0, 1, "kafka.topics.replication_factor"),
            (3, 4, "kafka.topics.min_insync_replicas"),
            (3, 0, "kafka.topics.min_insync_replicas"),
        ] {
            settings.topics = Replication {
                replication_factor: factor,
                min_insync_replicas: in_sync,
            };
            let err = settings.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{factor}/{in_sync}: {err}");
        }
        settings.topics = Replication {
            replication_factor: 3,
            min_insync_replicas: 2,
        };
        assert!(settings.validate().is_ok());
    }

    #[test]
    fn malformed_bootstrap_servers_are_refused() {
        let settings = KafkaSettings::for_servers("127.0.0.1");
        let err = settings.validate().unwrap_err();
        assert_eq!(
            err.to_string(),
            "config key `kafka.bootstrap_servers`: expected host:port, got \"127.0.0.1\""
        );
        assert!(KafkaSettings::for_servers("127.0.0.1:9092,127.0.0.1:9093")
            .validate()
            .is_ok());
    }

    #[test]
    fn consumer_never_stores_offsets_by_itself() {
        let config = KafkaSettings::default().consumer_config("g");
        assert_eq!(config.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(config.get("group.id"), Some("g"));
        assert_eq!(config.get("session.timeout.ms"), Some("6000"));
    }

    #[test]
    fn each_kind_of_client_gets_only_its_own_properties() {
        let mut settings = KafkaSettings::default();
        settings
            .properties
            .insert("client.id".into(), "billing".into());
        settings
            .producer_properties
            .insert("batch.size".into(), "65536".into());
        settings
            .producer_properties
            .insert("client.id".into(), "billing-out".into());
        settings
            .consumer_properties
            .insert("queued.min.messages".into(), "2000".into());

        let producer = settings.stage_producer_config();
        assert_eq!(producer.get("batch.size"), Some("65536"));
        assert_eq!(producer.get("client.id"), Some("billing-out"));
        assert_eq!(producer.get("queued.min.messages"), None);

        for consumer in [
            settings.consumer_config("g"),
            settings.restore_consumer_config("p"),
        ] {
            assert_eq!(consumer.get("queued.min.messages"), Some("2000"));
            assert_eq!(consumer.get("client.id"), Some("billing"));
            assert_eq!(consumer.get("batch.size"), None);
        }

        let admin = settings.admin_config();
        assert_eq!(admin.get("client.id"), Some("billing"));
        assert_eq!(admin.get("batch.size"), None);
        assert_eq!(admin.get("queued.min.messages"), None);

        let mut lingering = KafkaSettings::default();
        lingering
            .producer_properties
            .insert("linger.ms".into(), "100".into());
        assert_eq!(
            lingering.stage_producer_config().get("linger.ms"),
            Some("100")
        );
    }

    #[test]
    fn a_consumer_bounds_what_it_reads_ahead_unless_the_properties_say_otherwise() {
        use rdkafka::consumer::BaseConsumer;

        let settings = KafkaSettings::default();
        for config in [
            settings.consumer_config("g"),
            settings.restore_consumer_config("p"),
            settings.reader_config("r"),
        ] {
            assert_eq!(config.get("queued.min.messages"), Some("10000"));
            assert_eq!(config.get("fetch.queue.backoff.ms"), Some("10"));
            assert_eq!(config.get("fetch.max.bytes"), Some("262144"));
            config
                .create::<BaseConsumer>()
                .expect("librdkafka takes the bound");
        }

        let mut large = KafkaSettings::default();
        large
            .properties
            .insert("message.max.bytes".into(), "4000000".into());
        let config = large.consumer_config("g");
        assert_eq!(config.get("fetch.max.bytes"), Some("4000000"));
        config
            .create::<BaseConsumer>()
            .expect("a fetch as large as the largest record");

        let mut tuned = KafkaSettings::default();
        tuned
            .properties
            .insert("queued.min.messages".into(), "500".into());
        tuned
            .properties
            .insert("fetch.max.bytes".into(), "52428800".into());
        let config = tuned.consumer_config("g");
        assert_eq!(config.get("queued.min.messages"), Some("500"));
        assert_eq!(config.get("fetch.max.bytes"), Some("52428800"));
        config.create::<BaseConsumer>().expect("the operator's own");
    }

    #[test]
    fn a_stage_lingers_longer_than_a_client_unless_the_properties_say_otherwise() {
        let settings = KafkaSettings::default();
        assert_eq!(settings.producer_config().get("linger.ms"), Some("5"));
        assert_eq!(
            settings.stage_producer_config().get("linger.ms"),
            Some("30")
        );
        let transactional = settings.transactional_producer_config("t", Duration::from_secs(10));
        assert_eq!(transactional.get("linger.ms"), Some("30"));

        let mut tuned = KafkaSettings::default();
        tuned.properties.insert("linger.ms".into(), "2".into());
        assert_eq!(tuned.stage_producer_config().get("linger.ms"), Some("2"));
        assert_eq!(tuned.producer_config().get("linger.ms"), Some("2"));
        assert_eq!(
            tuned.stage_producer_config().get("enable.idempotence"),
            Some("true")
        );
    }
}
