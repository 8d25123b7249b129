//! Reading a topic between fixed offsets, one partition after the other, without a consumer
//! group: every command reads what was there when it started and never commits anything.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::error::ReplayError;
use crate::Context;

/// A record's headers in their order, names and values kept in one buffer: a dead letter
/// carries some twenty headers, and one allocation per record instead of two per header is
/// what keeps reading a large DLQ cheap.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RecordHeaders {
    bytes: Vec<u8>,
    /// Name end, value end (`None` for a null value); each starts where the previous ends.
    ends: Vec<(usize, Option<usize>)>,
}

impl RecordHeaders {
    /// Removes every header, keeping the buffers for reuse.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }

    /// Appends a header; Kafka allows a null value.
    pub fn push(&mut self, name: &str, value: Option<&[u8]>) {
        self.bytes.extend_from_slice(name.as_bytes());
        let name_end = self.bytes.len();
        let value_end = value.map(|v| {
            self.bytes.extend_from_slice(v);
            self.bytes.len()
        });
        self.ends.push((name_end, value_end));
    }

    /// The headers, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&(name_end, value_end)| {
            let name = std::str::from_utf8(&self.bytes[start..name_end]).unwrap_or_default();
            start = name_end;
            let value = value_end.map(|end| {
                let value = &self.bytes[name_end..end];
                start = end;
                value
            });
            (name, value)
        })
    }

    /// The value of the first header called `name` (`Some(None)` for a null value).
    pub fn get(&self, name: &str) -> Option<Option<&[u8]>> {
        // Compared as bytes: no UTF-8 check of every name on the way.
        let mut start = 0;
        for &(name_end, value_end) in &self.ends {
            let value_start = name_end;
            let end = value_end.unwrap_or(name_end);
            if &self.bytes[start..name_end] == name.as_bytes() {
                return Some(value_end.map(|_| &self.bytes[value_start..end]));
            }
            start = end;
        }
        None
    }

    /// How many headers.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

impl std::fmt::Debug for RecordHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.iter()
                    .map(|(name, value)| (name, value.map(String::from_utf8_lossy))),
            )
            .finish()
    }
}

impl<N: AsRef<str>, V: AsRef<[u8]>> FromIterator<(N, Option<V>)> for RecordHeaders {
    fn from_iter<I: IntoIterator<Item = (N, Option<V>)>>(headers: I) -> Self {
        let mut list = Self::default();
        for (name, value) in headers {
            list.push(name.as_ref(), value.as_ref().map(AsRef::as_ref));
        }
        list
    }
}

/// A record read from a topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceRecord {
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
    /// Headers in their order.
    pub headers: RecordHeaders,
}

/// `slot` holding a copy of `bytes`, reusing its buffer.
fn refill(slot: &mut Option<Vec<u8>>, bytes: Option<&[u8]>) {
    match (slot.as_mut(), bytes) {
        (Some(buffer), Some(bytes)) => {
            buffer.clear();
            buffer.extend_from_slice(bytes);
        }
        (None, Some(bytes)) => *slot = Some(bytes.to_vec()),
        (_, None) => *slot = None,
    }
}

impl SourceRecord {
    /// Copies `message` into this record, reusing its buffers.
    fn fill<M: Message>(&mut self, message: &M) {
        self.partition = message.partition();
        self.offset = message.offset();
        self.timestamp_ms = message.timestamp().to_millis();
        refill(&mut self.key, message.key());
        refill(&mut self.value, message.payload());
        self.headers.clear();
        if let Some(headers) = message.headers() {
            for header in headers.iter() {
                self.headers.push(header.key, header.value);
            }
        }
    }

    /// The first header called `name`, when it is UTF-8 text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .flatten()
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The key as text, lossily.
    pub fn key_text(&self) -> Option<String> {
        self.key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
    }
}

/// Offsets `from..end` (end exclusive) of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Partition.
    pub partition: i32,
    /// First offset to read.
    pub from: i64,
    /// One past the last offset to read.
    pub end: i64,
}

impl Span {
    /// How many offsets the span covers (records, unless the topic is compacted or
    /// transactional).
    pub fn len(&self) -> u64 {
        u64::try_from(self.end - self.from).unwrap_or(0)
    }

    /// Whether the span covers no offset.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a scan hands over.
#[derive(Debug)]
pub enum Scanned {
    /// Records, each partition's in offset order.
    Records(Vec<SourceRecord>),
    /// A partition's span is fully read: every offset below `end` is handled.
    Done {
        /// The partition.
        partition: i32,
        /// The span's end.
        end: i64,
    },
}

/// The order records come in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanOrder {
    /// One partition after the other, each in offset order: what `--limit` needs to select
    /// the same records every time.
    PartitionByPartition,
    /// Every partition at once, each in offset order: faster.
    Interleaved,
}

/// A scan running on its own thread; dropping it stops the thread.
pub struct Scanner {
    rx: mpsc::Receiver<Result<Scanned, ReplayError>>,
    stop: Arc<AtomicBool>,
    /// Batches handed back for their buffers to be filled again.
    spare: std::sync::mpsc::Sender<Vec<SourceRecord>>,
}

impl Drop for Scanner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

const BATCH: usize = 500;

impl Scanner {
    /// Starts reading `spans` of `topic`, one partition after the other, in the order given.
    pub fn start(ctx: &Context, topic: &str, spans: Vec<Span>) -> Scanner {
        Self::start_in(ctx, topic, spans, ScanOrder::PartitionByPartition)
    }

    /// Starts reading `spans` of `topic` in `order`.
    pub fn start_in(ctx: &Context, topic: &str, spans: Vec<Span>, order: ScanOrder) -> Scanner {
        let (tx, rx) = mpsc::channel(8);
        let (spare, spares) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = ctx.clone();
        let topic = topic.to_owned();
        let stopped = Arc::clone(&stop);
        let spawned = std::thread::Builder::new()
            .name("replay-scan".into())
            .spawn({
                let tx = tx.clone();
                move || {
                    let scanned = match order {
                        ScanOrder::PartitionByPartition => {
                            scan(&ctx, &topic, &spans, &tx, &stopped, &spares)
                        }
                        ScanOrder::Interleaved => {
                            scan_interleaved(&ctx, &topic, &spans, &tx, &stopped, &spares)
                        }
                    };
                    if let Err(err) = scanned {
                        let _ = tx.blocking_send(Err(err));
                    }
                }
            });
        if let Err(err) = spawned {
            let _ = tx.try_send(Err(ReplayError::Other {
                what: "starting the reader thread".into(),
                message: err.to_string(),
            }));
        }
        Scanner { rx, stop, spare }
    }

    /// Hands a batch back once its records are handled: the reader fills the same buffers
    /// again instead of allocating new ones (and freeing the old on another thread).
    pub fn recycle(&self, batch: Vec<SourceRecord>) {
        let _ = self.spare.send(batch);
    }

    /// The next batch or partition end; `None` once every span is read (or after an error).
    pub async fn next(&mut self) -> Option<Result<Scanned, ReplayError>> {
        self.rx.recv().await
    }

    /// Reads everything into memory: for the small reads (checkpoints, audit, reconciling).
    pub async fn collect(mut self) -> Result<Vec<SourceRecord>, ReplayError> {
        let mut all = Vec::new();
        while let Some(item) = self.next().await {
            if let Scanned::Records(records) = item? {
                all.extend(records);
            }
        }
        Ok(all)
    }
}

/// Reads every span at once, partitions interleaved (each in offset order): faster than one
/// partition after the other when the order across partitions does not matter.
fn scan_interleaved(
    ctx: &Context,
    topic: &str,
    spans: &[Span],
    tx: &mpsc::Sender<Result<Scanned, ReplayError>>,
    stop: &AtomicBool,
    spares: &std::sync::mpsc::Receiver<Vec<SourceRecord>>,
) -> Result<(), ReplayError> {
    let consumer = reader(ctx, topic)?;
    let send = |item: Scanned| tx.blocking_send(Ok(item)).is_ok();
    let mut open: std::collections::HashMap<i32, (i64, i64)> = std::collections::HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for span in spans {
        if span.from >= span.end {
            if !send(Scanned::Done {
                partition: span.partition,
                end: span.end,
            }) {
                return Ok(());
            }
            continue;
        }
        open.insert(span.partition, (span.from, span.end));
        assignment
            .add_partition_offset(topic, span.partition, Offset::Offset(span.from))
            .map_err(|e| ReplayError::kafka(format!("reading `{topic}`"), e))?;
    }
    if open.is_empty() {
        return Ok(());
    }
    consumer
        .assign(&assignment)
        .map_err(|e| ReplayError::kafka(format!("reading `{topic}`"), e))?;
    let mut pool: Vec<SourceRecord> = Vec::new();
    let mut batch = Vec::with_capacity(BATCH);
    let mut finished = Vec::new();
    let mut last_progress = Instant::now();
    while !open.is_empty() {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                last_progress = Instant::now();
                let partition = message.partition();
                let offset = message.offset();
                let Some(&(_, end)) = open.get(&partition) else {
                    continue;
                };
                if offset < end {
                    if pool.is_empty() {
                        if let Ok(spare) = spares.try_recv() {
                            pool = spare;
                        }
                    }
                    let mut record = pool.pop().unwrap_or_default();
                    record.fill(&message);
                    batch.push(record);
                    if let Some(progress) = open.get_mut(&partition) {
                        progress.0 = offset + 1;
                    }
                }
                if offset + 1 >= end {
                    open.remove(&partition);
                    finished.push((partition, end));
                }
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                if let Some((_, end)) = open.remove(&partition) {
                    finished.push((partition, end));
                }
            }
            Some(Err(err)) => {
                return Err(ReplayError::kafka(format!("reading `{topic}`"), err));
            }
            None => {
                if last_progress.elapsed() > ctx.timeout {
                    let waiting: Vec<String> = open
                        .iter()
                        .map(|(p, (at, end))| {
                            format!("partition {p} at offset {at} (reading up to {end})")
                        })
                        .collect();
                    return Err(ReplayError::BrokerUnreachable {
                        servers: ctx.kafka.bootstrap_servers.clone(),
                        timeout: crate::time::format_duration(ctx.timeout),
                        message: format!("no records from `{topic}`: {}", waiting.join(", ")),
                    });
                }
            }
        }
        let idle_or_full = batch.len() >= BATCH || (!finished.is_empty()) || open.is_empty();
        if (idle_or_full || last_progress.elapsed() > Duration::from_millis(100))
            && !batch.is_empty()
            && !send(Scanned::Records(std::mem::take(&mut batch)))
        {
            return Ok(());
        }
        // A partition is done only after its last records went out.
        for (partition, end) in finished.drain(..) {
            if !send(Scanned::Done { partition, end }) {
                return Ok(());
            }
        }
    }
    Ok(())
}

fn reader(ctx: &Context, topic: &str) -> Result<BaseConsumer, ReplayError> {
    let mut config = ctx.kafka.reader_config("_backbone.replay.reader");
    config
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "50");
    config
        .create()
        .map_err(|e| ReplayError::kafka(format!("reading `{topic}`"), e))
}

fn scan(
    ctx: &Context,
    topic: &str,
    spans: &[Span],
    tx: &mpsc::Sender<Result<Scanned, ReplayError>>,
    stop: &AtomicBool,
    spares: &std::sync::mpsc::Receiver<Vec<SourceRecord>>,
) -> Result<(), ReplayError> {
    let consumer = reader(ctx, topic)?;
    let send = |item: Scanned| tx.blocking_send(Ok(item)).is_ok();
    for span in spans {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        if span.from >= span.end {
            if !send(Scanned::Done {
                partition: span.partition,
                end: span.end,
            }) {
                return Ok(());
            }
            continue;
        }
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(topic, span.partition, Offset::Offset(span.from))
            .map_err(|e| ReplayError::kafka(format!("reading `{topic}`"), e))?;
        consumer
            .assign(&assignment)
            .map_err(|e| ReplayError::kafka(format!("reading `{topic}`"), e))?;
        let mut pool: Vec<SourceRecord> = Vec::new();
        let mut batch = Vec::with_capacity(BATCH);
        let mut last_progress = Instant::now();
        let mut position = span.from;
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            match consumer.poll(Duration::from_millis(100)) {
                // Left over from the partition read before this one.
                Some(Ok(message)) if message.partition() != span.partition => {}
                Some(Err(KafkaError::PartitionEOF(p))) if p != span.partition => {}
                Some(Ok(message)) => {
                    last_progress = Instant::now();
                    let offset = message.offset();
                    if offset >= span.end {
                        break;
                    }
                    position = offset + 1;
                    if pool.is_empty() {
                        if let Ok(spare) = spares.try_recv() {
                            pool = spare;
                        }
                    }
                    let mut record = pool.pop().unwrap_or_default();
                    record.fill(&message);
                    batch.push(record);
                    if offset + 1 >= span.end {
                        break;
                    }
                    if batch.len() >= BATCH && !send(Scanned::Records(std::mem::take(&mut batch))) {
                        return Ok(());
                    }
                }
                // The end of what the partition holds: offsets up to `end` that never came are
                // gaps (transaction markers, compacted records).
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(err)) => {
                    return Err(ReplayError::kafka(
                        format!("reading partition {} of `{topic}`", span.partition),
                        err,
                    ))
                }
                None => {
                    if !batch.is_empty() && !send(Scanned::Records(std::mem::take(&mut batch))) {
                        return Ok(());
                    }
                    if last_progress.elapsed() > ctx.timeout {
                        return Err(ReplayError::BrokerUnreachable {
                            servers: ctx.kafka.bootstrap_servers.clone(),
                            timeout: crate::time::format_duration(ctx.timeout),
                            message: format!(
                                "no records from partition {} of `{topic}` at offset {position} (reading up to {})",
                                span.partition, span.end
                            ),
                        });
                    }
                }
            }
        }
        if !batch.is_empty() && !send(Scanned::Records(batch)) {
            return Ok(());
        }
        if !send(Scanned::Done {
            partition: span.partition,
            end: span.end,
        }) {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_keep_order_duplicates_and_null_values() {
        let headers: RecordHeaders = [
            ("a", Some(&b"1"[..])),
            ("empty", Some(&b""[..])),
            ("null", None),
            ("a", Some(&b"2"[..])),
        ]
        .into_iter()
        .collect();
        assert_eq!(headers.len(), 4);
        assert_eq!(
            headers.iter().collect::<Vec<_>>(),
            vec![
                ("a", Some(&b"1"[..])),
                ("empty", Some(&b""[..])),
                ("null", None),
                ("a", Some(&b"2"[..])),
            ]
        );
        assert_eq!(
            format!("{headers:?}"),
            r#"[("a", Some("1")), ("empty", Some("")), ("null", None), ("a", Some("2"))]"#
        );
        assert!(RecordHeaders::default().is_empty());
        assert_eq!(headers.get("a"), Some(Some(&b"1"[..])));
        assert_eq!(headers.get("empty"), Some(Some(&b""[..])));
        assert_eq!(headers.get("null"), Some(None));
        assert_eq!(headers.get("absent"), None);
    }
}
