//! Topics, producing and consuming for tests.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use backbone_core::admin::{ensure_topics, partition_count, TopicSpec};
use backbone_core::dead_letter::headers;
use backbone_core::KafkaSettings;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::TestkitError;

/// Environment variable naming the shared test broker.
pub const BOOTSTRAP_ENV: &str = "BACKBONE_TEST_BOOTSTRAP";

/// Client settings for the shared test broker: `BACKBONE_TEST_BOOTSTRAP`, else
/// `127.0.0.1:9092`, with a short session timeout so consumer groups join fast.
pub fn shared_settings() -> KafkaSettings {
    let servers = std::env::var(BOOTSTRAP_ENV).unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
    let mut settings = KafkaSettings::for_servers(servers);
    settings.session_timeout = Duration::from_secs(6);
    settings.commit_interval = Duration::from_millis(200);
    settings
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub(crate) fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!(
        "{}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A topic name no other test (in this run or an earlier one) uses.
pub fn unique_topic(prefix: &str) -> String {
    format!("test.{prefix}.{}", unique_suffix())
}

/// A consumer group name no other test uses.
pub fn unique_group(prefix: &str) -> String {
    format!("test-{prefix}-{}", unique_suffix())
}

/// Creates `topic` with `partitions` partitions and waits until metadata shows it.
pub async fn create_topic(
    settings: &KafkaSettings,
    topic: &str,
    partitions: i32,
) -> Result<(), TestkitError> {
    ensure_topics(
        settings,
        &[TopicSpec::new(topic, partitions)],
        Duration::from_secs(30),
    )
    .await?;
    Ok(())
}

/// A record to produce.
#[derive(Debug, Clone, Default)]
pub struct TestRecord {
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub value: Vec<u8>,
    /// Headers; a `None` value is sent as null.
    pub headers: Vec<backbone_core::Header>,
    /// Partition; chosen by key hash when `None`.
    pub partition: Option<i32>,
    /// Record timestamp in milliseconds since the epoch; the producer's clock when `None`.
    pub timestamp_ms: Option<i64>,
}

impl TestRecord {
    /// A keyed record without headers.
    pub fn new(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Self {
            key: Some(key.into()),
            value: value.into(),
            ..Self::default()
        }
    }
}

/// Produces `records` to `topic` in order and waits for every acknowledgement.
pub async fn produce(
    settings: &KafkaSettings,
    topic: &str,
    records: &[TestRecord],
) -> Result<(), TestkitError> {
    let producer: FutureProducer = settings.producer_config().create()?;
    // Every record is handed to the producer before any acknowledgement is awaited; the
    // idempotent producer keeps them in order per partition.
    let mut deliveries = Vec::with_capacity(records.len());
    for record in records {
        let mut headers = OwnedHeaders::new();
        for (name, value) in &record.headers {
            headers = headers.insert(Header {
                key: name,
                value: value.as_deref(),
            });
        }
        let mut future = FutureRecord::to(topic)
            .payload(&record.value)
            .headers(headers);
        if let Some(key) = &record.key {
            future = future.key(key);
        }
        if let Some(partition) = record.partition {
            future = future.partition(partition);
        }
        if let Some(timestamp) = record.timestamp_ms {
            future = future.timestamp(timestamp);
        }
        deliveries.push(producer.send_result(future).map_err(|(err, _)| err)?);
    }
    for delivery in deliveries {
        delivery
            .await
            .map_err(|_| rdkafka::error::KafkaError::Canceled)?
            .map_err(|(err, _)| err)?;
    }
    Ok(())
}

/// Produces a tombstone, a record with `key` (or none) and no value, to `topic` (on
/// `partition`, or by key hash) and waits for its acknowledgement.
pub async fn produce_tombstone(
    settings: &KafkaSettings,
    topic: &str,
    key: Option<&[u8]>,
    partition: Option<i32>,
) -> Result<(), TestkitError> {
    let producer: FutureProducer = settings.producer_config().create()?;
    let mut record = FutureRecord::<[u8], [u8]>::to(topic);
    if let Some(key) = key {
        record = record.key(key);
    }
    if let Some(partition) = partition {
        record = record.partition(partition);
    }
    producer
        .send_result(record)
        .map_err(|(err, _)| err)?
        .await
        .map_err(|_| rdkafka::error::KafkaError::Canceled)?
        .map_err(|(err, _)| err)?;
    Ok(())
}

/// Produces one record with `key`, `value` and one header whose name is `name`, bytes as they
/// are (a name that is not UTF-8 included), with kcat, librdkafka's command-line client: the
/// Rust client takes header names as `&str`, so it cannot write such a record.
pub fn produce_with_raw_header_name(
    settings: &KafkaSettings,
    topic: &str,
    key: &str,
    name: &[u8],
    value: &[u8],
) -> Result<(), TestkitError> {
    use std::io::Write as _;
    use std::os::unix::ffi::OsStringExt as _;
    let failed = |message: String| TestkitError::Process {
        program: "kcat".to_owned(),
        message,
    };
    let header = std::ffi::OsString::from_vec([name, b"=set"].concat());
    let mut kcat = std::process::Command::new("kcat")
        .args([
            "-P",
            "-b",
            &settings.bootstrap_servers,
            "-t",
            topic,
            "-k",
            key,
            "-H",
        ])
        .arg(header)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("{e} (make setup installs kcat)")))?;
    kcat.stdin
        .take()
        .ok_or_else(|| failed("no stdin".to_owned()))?
        .write_all(value)
        .map_err(|e| failed(e.to_string()))?;
    let status = kcat.wait().map_err(|e| failed(e.to_string()))?;
    if status.success() {
        Ok(())
    } else {
        Err(failed(format!("exited with {status}")))
    }
}

/// A record read back from a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Record timestamp, milliseconds since the epoch, when the broker gave one.
    pub timestamp_ms: Option<i64>,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub value: Option<Vec<u8>>,
    /// Headers; a null value is `None`.
    pub headers: Vec<backbone_core::Header>,
}

impl ConsumedRecord {
    /// The first header called `name`, as text; `None` when there is none or it is null.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// Dead letters by the offset they came from: origin offset to reason. Panics on a letter
/// without either header, which the runtime always writes.
pub fn dead_letter_reasons(letters: &[ConsumedRecord]) -> BTreeMap<i64, String> {
    letters
        .iter()
        .map(|letter| {
            let offset = letter
                .header(headers::ORIGIN_OFFSET)
                .and_then(|o| o.parse().ok())
                .expect("a dead letter names its origin offset");
            let reason = letter
                .header(headers::REASON)
                .expect("a dead letter names its reason");
            (offset, reason)
        })
        .collect()
}

/// Reads `topic` from the beginning of every partition (no consumer group) until at least
/// `count` records arrived, or fails at `timeout`. Committed records only.
pub async fn consume_until(
    settings: &KafkaSettings,
    topic: &str,
    count: usize,
    timeout: Duration,
) -> Result<Vec<ConsumedRecord>, TestkitError> {
    let what = format!("{count} records on `{topic}`");
    consume_while(settings, topic, timeout, what, move |records| {
        records.len() >= count
    })
    .await
}

/// Reads `topic` from the beginning of every partition until `done` holds for the records
/// read so far, or fails at `timeout` saying `what` was awaited. Reads `read_committed` unless
/// the settings' `consumer_properties` set another `isolation.level`.
pub async fn consume_while<F>(
    settings: &KafkaSettings,
    topic: &str,
    timeout: Duration,
    what: String,
    done: F,
) -> Result<Vec<ConsumedRecord>, TestkitError>
where
    F: Fn(&[ConsumedRecord]) -> bool + Send + 'static,
{
    let settings = settings.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || consume_blocking(&settings, &topic, timeout, &what, done))
        .await
        .map_err(|join| TestkitError::Process {
            program: "consumer thread".into(),
            message: join.to_string(),
        })?
}

fn consume_blocking<F>(
    settings: &KafkaSettings,
    topic: &str,
    timeout: Duration,
    what: &str,
    done: F,
) -> Result<Vec<ConsumedRecord>, TestkitError>
where
    F: Fn(&[ConsumedRecord]) -> bool,
{
    let deadline = Instant::now() + timeout;
    let mut config = settings.admin_config();
    config
        .set("group.id", unique_group("reader"))
        .set("enable.auto.commit", "false")
        .set(
            "isolation.level",
            settings
                .consumer_properties
                .get("isolation.level")
                .map_or("read_committed", String::as_str),
        );
    let consumer: BaseConsumer = config.create()?;
    // The topic may not exist yet (a processor under test creates its outputs at start-up).
    let partitions = loop {
        match partition_count(settings, topic, Duration::from_secs(5))? {
            Some(count) => break count,
            None if Instant::now() >= deadline => {
                return Err(TestkitError::Timeout {
                    what: format!("{what}: topic `{topic}` never appeared"),
                    waited: timeout,
                })
            }
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        let partition = i32::try_from(partition).unwrap_or(i32::MAX);
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut records = Vec::new();
    while !done(&records) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(TestkitError::Timeout {
                what: format!("{what} (read {})", records.len()),
                waited: timeout,
            });
        }
        match consumer.poll(left.min(Duration::from_millis(200))) {
            Some(Ok(message)) => records.push(ConsumedRecord {
                partition: message.partition(),
                offset: message.offset(),
                timestamp_ms: message.timestamp().to_millis(),
                key: message.key().map(<[u8]>::to_vec),
                value: message.payload().map(<[u8]>::to_vec),
                headers: backbone_core::kafka::owned_headers(&message).unwrap_or_default(),
            }),
            // A broker going away is news, not the end: the consumer reconnects by itself
            // (tests kill brokers on purpose). While a partition's leadership moves, or a new
            // topic's metadata reaches every broker, a broker answers for a moment that it does
            // not lead or know the partition; the consumer asks again by itself.
            Some(Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::NotLeaderForPartition,
            )))
            | None => {}
            Some(Err(err)) => return Err(err.into()),
        }
    }
    Ok(records)
}

/// How many offsets `topic` holds: the sum of its partitions' high watermarks. On a broker
/// without transactions in play, the number of records ever written.
pub fn end_offsets_total(settings: &KafkaSettings, topic: &str) -> Result<i64, TestkitError> {
    let consumer: BaseConsumer = settings.admin_config().create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut total = 0;
    for partition in metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions())
    {
        let (_, high) =
            consumer.fetch_watermarks(topic, partition.id(), Duration::from_secs(10))?;
        total += high;
    }
    Ok(total)
}

/// Every record `topic` holds now, read up to its end offsets: for a topic written without
/// transactions, where every offset is a record. Nothing written after the call is read.
pub async fn consume_all(
    settings: &KafkaSettings,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<ConsumedRecord>, TestkitError> {
    let end = usize::try_from(end_offsets_total(settings, topic)?).unwrap_or(0);
    consume_until(settings, topic, end, timeout).await
}

/// A transactional producer of its own that has put `offset` of `group` on `topic`'s
/// `partition` into a transaction it keeps open: until the caller commits or aborts it, the
/// broker answers that the group's committed offsets there are unstable, as it does for an
/// exactly-once instance killed between sending its offsets and committing.
pub fn hold_offset_open(
    settings: &KafkaSettings,
    group: &str,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<FutureProducer, TestkitError> {
    let holder: FutureProducer = settings
        .transactional_producer_config(&unique_group("holder"), Duration::from_secs(300))
        .create()?;
    holder.init_transactions(Duration::from_secs(30))?;
    holder.begin_transaction()?;
    let mut config = settings.admin_config();
    config.set("group.id", group);
    let member: BaseConsumer = config.create()?;
    // Set just above: a consumer with a `group.id` always has group metadata.
    let group_metadata = member.group_metadata().expect("group metadata");
    let mut offsets = TopicPartitionList::new();
    offsets.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    holder.send_offsets_to_transaction(&offsets, &group_metadata, Duration::from_secs(30))?;
    Ok(holder)
}

/// Committed offsets of `group` on every partition of `topic` (`None` where nothing is
/// committed).
pub fn committed_offsets(
    settings: &KafkaSettings,
    group: &str,
    topic: &str,
) -> Result<Vec<(i32, Option<i64>)>, TestkitError> {
    let mut config = settings.admin_config();
    config.set("group.id", group);
    let consumer: BaseConsumer = config.create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut list = TopicPartitionList::new();
    for partition in metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions())
    {
        list.add_partition(topic, partition.id());
    }
    let committed = consumer.committed_offsets(list, Duration::from_secs(10))?;
    Ok(committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => (e.partition(), Some(o)),
            _ => (e.partition(), None),
        })
        .collect())
}

/// The offsets `group` has committed on `topic`, summed over its partitions: how many of its
/// inputs it has committed, where each input is one offset. 0 while the broker does not answer
/// (tests restart brokers) or nothing is committed.
pub fn committed_total(settings: &KafkaSettings, group: &str, topic: &str) -> i64 {
    committed_offsets(settings, group, topic)
        .map(|offsets| offsets.iter().filter_map(|(_, o)| *o).sum())
        .unwrap_or(0)
}

/// Waits until `group` has committed at least `at_least` offsets on `topic` and returns how many
/// it has; fails the test after `deadline`, saying how far it got.
pub async fn await_committed(
    settings: &KafkaSettings,
    group: &str,
    topic: &str,
    at_least: i64,
    deadline: Duration,
) -> i64 {
    let started = Instant::now();
    loop {
        let committed = committed_total(settings, group, topic);
        if committed >= at_least {
            return committed;
        }
        assert!(
            started.elapsed() < deadline,
            "group {group} committed {committed} of {at_least} on {topic} in {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An input that keeps arriving until the test says stop: `chunk` records made by `record(i)`
/// every `every`, however long the kills or restarts under it take. A fixed list published over
/// a fixed time can run out before a slow machine reaches the last kill.
pub struct SteadyStream {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<usize, TestkitError>>,
}

impl SteadyStream {
    /// Starts producing in the background; the first chunk goes at once.
    pub fn start(
        settings: &KafkaSettings,
        topic: &str,
        chunk: usize,
        every: Duration,
        record: impl Fn(usize) -> TestRecord + Send + 'static,
    ) -> Self {
        let (settings, topic) = (settings.clone(), topic.to_owned());
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut pace = tokio::time::interval(every);
            let mut produced = 0;
            while !*stopped.borrow_and_update() {
                tokio::select! {
                    _ = pace.tick() => {}
                    _ = stopped.changed() => break,
                }
                let part: Vec<TestRecord> = (produced..produced + chunk).map(&record).collect();
                produce(&settings, &topic, &part).await?;
                produced += part.len();
            }
            Ok(produced)
        });
        Self { stop, task }
    }

    /// Stops after the chunk in flight and answers how many records were produced in all.
    pub async fn stop(self) -> Result<usize, TestkitError> {
        // The task may have ended on an error already; its result says so.
        let _ = self.stop.send(true);
        self.task.await.expect("steady stream task")
    }
}

/// Produces `records` to `topic` in the background, `chunk` at a time, one chunk every
/// `every`: a steady stream that a test can kill things under.
pub fn produce_paced(
    settings: &KafkaSettings,
    topic: &str,
    records: Vec<TestRecord>,
    chunk: usize,
    every: Duration,
) -> tokio::task::JoinHandle<Result<(), TestkitError>> {
    let (settings, topic) = (settings.clone(), topic.to_owned());
    tokio::spawn(async move {
        let mut pace = tokio::time::interval(every);
        for (sent, part) in records.chunks(chunk.max(1)).enumerate() {
            pace.tick().await;
            // Said at once: the test learns of the error only when it awaits the task, and a
            // wait for outputs that never come would otherwise time out without the cause.
            if let Err(err) = produce(&settings, &topic, part).await {
                eprintln!("publishing to {topic} stopped after {sent} chunks: {err}");
                return Err(err);
            }
        }
        Ok(())
    })
}
