//! The end-to-end load run: the four processors as processes, the way they are deployed,
//! against the runtime's pass-through (also a process) on the same broker in the same run.
//!
//! Needs a broker and a registry: `make bench` starts a private stack and runs this; by hand,
//! `BACKBONE_BENCH_BOOTSTRAP=127.0.0.1:9092 BACKBONE_BENCH_REGISTRY_URL=http://127.0.0.1:8081
//! cargo bench -p backbone-e2e --bench load` after `cargo build --release --workspace --bins`.
//! The pipeline's figure is usage in, `billing.charges` out: the sinks are not run here (their
//! delivery tempo is the simulated systems', not ours; `make soak` runs them).
//!
//! 1. Throughput: a workload of `EVENTS` usage events is published once, unthrottled; then the
//!    pass-through copies it, and after it the validator, enricher, usage-rater and fanout
//!    process it together. Each rate is read from the output topic's end offsets between the 10%
//!    and the 90% mark, so that start-up, group joins and restore stay out of it. Beside it,
//!    records per second written to and read from the broker by the whole pipeline.
//! 2. Latency: `RATE` events per second for `LATENCY_SECONDS`, first through the pass-through,
//!    then through the pipeline on fresh topics. An event's latency is the time its output was
//!    appended to the broker's log minus that of its usage record (the topics stamp records
//!    with `LogAppendTime`, so the last stage's batching and produce request count); the usage
//!    record is joined to its billing charge through the rated line's `source_event_ids` and
//!    `rating_id`. Each side is warmed up with `WARM_UP_EVENTS` events first, so that group
//!    joins and the first restore of each partition's state stay out of the figures.
//!    `BACKBONE_LOAD_DELIVERY=exactly-once` runs the processors of this part in transactions
//!    (each its own `transactional_id`, no dedup marks after the validator, as the chaos run's
//!    exactly-once deployment); the records per event then include the transactions' commit
//!    markers, which take offsets as records do.
//! 3. Peak RSS (`VmHWM`) of every process in both runs.
//! 4. The usage-validator alone over `KEYS` distinct events, its dedup store holding every
//!    idempotency key: its peak RSS.

#[path = "../support/backbone.rs"]
mod backbone;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use backbone::{processors, Deployment, Stamps, PASS_THROUGH};
use backbone_calendar::now_micros;
use backbone_core::admin::ensure_topics;
use backbone_core::KafkaSettings;
use backbone_loadgen::{Destinations, LoadSpec, Payload, Workload};
use backbone_schemas::types::{
    BillingCharge, Contract, EnrichedUsage, EventMetadata, RatedUsage, UsageEvent,
};
use backbone_schemas::wire::encode_framed;
use backbone_schemas::WireCodec;
use backbone_testkit::{consume_until, ConsumedRecord};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::de::DeserializeOwned;

const EVENTS: usize = 60_000;
const RATE: u32 = 2_000;
const LATENCY_SECONDS: usize = 30;
const KEYS: usize = 1_000_000;
/// Enough warm-up events, over 200 customers, that every partition of every stage sees some:
/// a partition's first record opens its state, which is start-up, not steady-state latency.
const WARM_UP_EVENTS: usize = 30;
/// The million keys' publisher batches like Kafka's Java producer by default (`batch.size`
/// 16 KiB). At librdkafka's 1 MB, the near-identical events compress into batches of about
/// 88,000 records each, and the validator's consumer holds whole decompressed batches ahead of
/// its loop: the peak then measures the publisher's batching, not the keys
/// (docs/BENCHMARKS.md).
const KEYS_BATCH_BYTES: &str = "16384";
const PARTITIONS: i32 = 3;
const DEADLINE: Duration = Duration::from_secs(300);
const STOP: Duration = Duration::from_secs(60);

fn spec(seed: u64, events: usize, tenant: &str) -> LoadSpec {
    LoadSpec {
        seed,
        tenant: tenant.to_owned(),
        customers: 200,
        plans: 3,
        events,
        duplicate_share: 0.0,
        late_share: 0.0,
        out_of_window_share: 0.0,
        poison_share: 0.0,
        now_micros: now_micros(),
    }
}

/// Peak resident set (`VmHWM`) of `pid` so far, in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// End offsets read through one client, for polling without a client per poll.
struct Offsets {
    consumer: BaseConsumer,
}

impl Offsets {
    fn new(kafka: &KafkaSettings) -> Self {
        Self {
            consumer: kafka.admin_config().create().expect("offsets client"),
        }
    }

    /// The sum of `topic`'s high watermarks (0 while it does not exist).
    fn total(&self, topic: &str) -> i64 {
        let Ok(metadata) = self
            .consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
        else {
            return 0;
        };
        metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic)
            .flat_map(|t| t.partitions())
            .filter_map(|p| {
                self.consumer
                    .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                    .ok()
            })
            .map(|(_, high)| high)
            .sum()
    }

    /// Every topic whose name starts with `prefix` (a deployment's changelogs).
    fn topics_starting(&self, prefix: &str) -> Vec<String> {
        self.consumer
            .fetch_metadata(None, Duration::from_secs(10))
            .map(|m| {
                m.topics()
                    .iter()
                    .map(|t| t.name().to_owned())
                    .filter(|n| n.starts_with(prefix))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until `topic` holds at least `count` records.
    fn await_count(&self, topic: &str, count: usize) {
        let deadline = Instant::now() + DEADLINE;
        let count = i64::try_from(count).expect("count");
        loop {
            let done = self.total(topic);
            if done >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{done} of {count} records on {topic}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What one throughput measurement saw between the 10% and the 90% mark.
struct Window {
    /// Records per second on the output topic.
    rate: f64,
    /// Seconds between the marks.
    seconds: f64,
    /// Records added to each of `also` between the marks.
    also: Vec<i64>,
}

/// Polls `output` every 20 ms until `total` records are there; the rate between the 10% and
/// the 90% mark, and how much each topic group in `also` grew between them.
fn measure(offsets: &Offsets, output: &str, total: usize, also: &[Vec<String>]) -> Window {
    let sums = |offsets: &Offsets| -> Vec<i64> {
        also.iter()
            .map(|group| group.iter().map(|t| offsets.total(t)).sum())
            .collect()
    };
    let deadline = Instant::now() + DEADLINE;
    let total = i64::try_from(total).expect("total");
    let (low, high) = (total / 10, total * 9 / 10);
    let mut from: Option<(Instant, i64, Vec<i64>)> = None;
    loop {
        let done = offsets.total(output);
        let now = Instant::now();
        if from.is_none() && done >= low {
            from = Some((now, done, sums(offsets)));
        }
        if done >= high {
            let (start, at, before) = from.unwrap_or_else(|| (now, done, sums(offsets)));
            let after = sums(offsets);
            let seconds = now.duration_since(start).as_secs_f64().max(1e-3);
            return Window {
                rate: (done - at) as f64 / seconds,
                seconds,
                also: after.iter().zip(&before).map(|(a, b)| a - b).collect(),
            };
        }
        assert!(now < deadline, "{done} of {total} on {output}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Peak RSS per process and run, in KiB.
#[derive(Default)]
struct Memory {
    peaks: BTreeMap<(&'static str, &'static str), u64>,
}

impl Memory {
    fn note(&mut self, run: &'static str, deployment: &Deployment, binary: &'static str) {
        if let Some(kib) = deployment.pid(binary).and_then(peak_rss_kib) {
            let peak = self.peaks.entry((binary, run)).or_default();
            *peak = (*peak).max(kib);
        }
    }

    fn get(&self, binary: &'static str, run: &'static str) -> String {
        self.peaks
            .get(&(binary, run))
            .map_or_else(|| "-".to_owned(), |kib| format!("{:.0} MB", mib(*kib)))
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

struct Bench {
    kafka: KafkaSettings,
    registry_url: String,
    codec: WireCodec,
    producer: FutureProducer,
    offsets: Offsets,
    tenant: String,
}

impl Bench {
    async fn deployment(&self, name: &str) -> Deployment {
        // No sinks run here: the sandbox and PostgreSQL URLs are never used.
        let deployment = Deployment::create_on(
            self.kafka.clone(),
            name,
            "http://127.0.0.1:9",
            "postgres://unused@127.0.0.1:9/unused",
            &self.registry_url,
            // Latency is read from append times, so that it includes each stage's batching.
            Stamps::Append,
        )
        .await;
        let copy = Stamps::Append.spec(&deployment.topics.copy(), PARTITIONS);
        ensure_topics(&self.kafka, &[copy], Duration::from_secs(30))
            .await
            .expect("topic");
        deployment
    }

    async fn publish(&self, workload: &Workload, deployment: &Deployment, rate: u32) {
        let t = &deployment.topics;
        workload
            .publish(
                &self.producer,
                &self.codec,
                Destinations {
                    usage: &t.usage,
                    accounts: &t.accounts,
                    subscriptions: &t.subscriptions,
                    rate_cards: &t.rate_cards,
                    gl_mappings: &t.gl_mappings,
                },
                rate,
            )
            .await
            .expect("workload");
    }

    async fn read(&self, topic: &str, count: usize) -> Vec<ConsumedRecord> {
        consume_until(&self.kafka, topic, count, DEADLINE)
            .await
            .expect("records")
    }

    async fn decode<T: Contract + DeserializeOwned>(&self, record: &ConsumedRecord) -> T {
        let value = record.value.as_deref().expect("value");
        self.codec
            .decode_as(value, T::schema())
            .await
            .expect("decode")
    }

    /// Publishes `WARM_UP_EVENTS` events and waits for their outputs on `output`, so that
    /// group joins and the first state restore of every partition stay out of the figures;
    /// returns the time (ms since the epoch) from which usage records count.
    async fn warm_up(&self, deployment: &Deployment, output: &str) -> i64 {
        let warm = Workload::generate(&spec(2, WARM_UP_EVENTS, &self.tenant));
        self.publish(&warm, deployment, 0).await;
        self.blocking(|o| o.await_count(output, WARM_UP_EVENTS));
        now_micros() / 1_000
    }

    fn blocking<R>(&self, f: impl FnOnce(&Offsets) -> R) -> R {
        tokio::task::block_in_place(|| f(&self.offsets))
    }
}

/// The throughput run's figures.
struct Throughput {
    baseline: f64,
    pipeline: f64,
    /// Records per second written to the broker by the pipeline (every topic but raw usage,
    /// changelogs included), and read from it by the four processors.
    written: f64,
    read: f64,
    /// Records each topic the pipeline writes holds per usage event once every charge is out.
    per_event: Vec<(String, f64)>,
}

async fn throughput(bench: &Bench, memory: &mut Memory) -> Throughput {
    let mut d = bench.deployment("load-throughput").await;
    let workload = Workload::generate(&spec(1, EVENTS, &bench.tenant));
    bench.publish(&workload, &d, 0).await;

    d.start(PASS_THROUGH);
    let copy = d.topics.copy();
    let baseline = bench.blocking(|o| measure(o, &copy, EVENTS, &[]));
    bench.blocking(|o| o.await_count(&copy, EVENTS));
    memory.note("throughput", &d, PASS_THROUGH);
    d.stop(PASS_THROUGH, STOP);

    if let Some(delivery) = delivery() {
        // As deployed under exactly-once: transactions, not dedup marks, keep a stage's redone
        // work from reaching the next twice, so the stages after the validator keep none.
        d.downstream_dedup = delivery != "exactly-once";
        for binary in processors() {
            d.settings
                .push((binary, "runtime.delivery".into(), delivery.clone()));
            d.settings.push((
                binary,
                "runtime.transaction.transactional_id".into(),
                format!("{binary}-load-throughput"),
            ));
        }
    }
    for binary in processors() {
        d.start(binary);
    }
    let t = d.topics.clone();
    // What the four processors write: every topic of the deployment but raw usage, their
    // changelogs (`<group>.*`) included; and what they read.
    let mut written = vec![
        t.validated.clone(),
        t.enriched.clone(),
        t.rated.clone(),
        t.windows.clone(),
        t.billing.clone(),
        t.analytics.clone(),
        t.crm.clone(),
        t.erp.clone(),
        t.by_customer.clone(),
    ];
    let read = vec![
        t.usage.clone(),
        t.validated.clone(),
        t.enriched.clone(),
        t.rated.clone(),
        t.windows.clone(),
        t.by_customer.clone(),
    ];
    // Changelogs exist once the processors have started; wait for the first charge.
    bench.blocking(|o| o.await_count(&t.billing, 1));
    written.extend(bench.blocking(|o| o.topics_starting(&d.group_prefix)));
    let window = bench.blocking(|o| measure(o, &t.billing, EVENTS, &[written.clone(), read]));
    bench.blocking(|o| o.await_count(&t.billing, EVENTS));
    for binary in processors() {
        memory.note("throughput", &d, binary);
    }
    for binary in processors() {
        d.stop(binary, STOP);
    }
    // Counted after the stop, so the last stages' outputs and changelog writes are in.
    let per_event = bench.blocking(|o| {
        written
            .iter()
            .map(|topic| (topic.clone(), o.total(topic) as f64 / EVENTS as f64))
            .collect()
    });
    Throughput {
        baseline: baseline.rate,
        pipeline: window.rate,
        written: window.also[0] as f64 / window.seconds,
        read: window.also[1] as f64 / window.seconds,
        per_event,
    }
}

fn timestamp(record: &ConsumedRecord) -> i64 {
    record.timestamp_ms.expect("the broker timestamps records")
}

/// p50, p99 and max of `latencies` in milliseconds.
fn quantiles(latencies: &mut [i64]) -> (i64, i64, i64) {
    assert!(!latencies.is_empty(), "no latencies measured");
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    (at(0.50), at(0.99), at(1.0))
}

/// Milliseconds from each measured usage record to its copy, matched by value.
async fn latency_baseline(bench: &Bench, workload: &Workload, memory: &mut Memory) -> Vec<i64> {
    let mut d = bench.deployment("load-latency-base").await;
    let copy = d.topics.copy();
    d.start(PASS_THROUGH);
    let measured_from = bench.warm_up(&d, &copy).await;
    bench.publish(workload, &d, RATE).await;
    let total = workload.usage.len() + WARM_UP_EVENTS;
    let copies = bench.read(&copy, total).await;
    memory.note("latency", &d, PASS_THROUGH);
    d.stop(PASS_THROUGH, STOP);
    let sent: HashMap<Vec<u8>, i64> = bench
        .read(&d.topics.usage, total)
        .await
        .iter()
        .filter(|r| timestamp(r) >= measured_from)
        .map(|r| (r.value.clone().unwrap_or_default(), timestamp(r)))
        .collect();
    copies
        .iter()
        .filter_map(|c| {
            let value = c.value.clone().unwrap_or_default();
            sent.get(&value).map(|at| timestamp(c) - at)
        })
        .collect()
}

/// Milliseconds from each usage record to each stage's output for it.
struct Hops {
    to_validated: Vec<i64>,
    to_enriched: Vec<i64>,
    to_rated: Vec<i64>,
    to_billing: Vec<i64>,
}

/// Milliseconds from each usage record to its validated and enriched copies, its rated line
/// and its billing charge.
async fn latency_pipeline(bench: &Bench, workload: &Workload, memory: &mut Memory) -> Hops {
    let mut d = bench.deployment("load-latency").await;
    let t = d.topics.clone();
    // Master data first: the enricher and the fanout read theirs in full at start-up.
    let mut master = workload.clone();
    master.usage.clear();
    bench.publish(&master, &d, 0).await;
    for binary in processors() {
        d.start(binary);
    }
    let measured_from = bench.warm_up(&d, &t.billing).await;
    bench.publish(workload, &d, RATE).await;
    let total = workload.usage.len() + WARM_UP_EVENTS;
    let charges = bench.read(&t.billing, total).await;
    for binary in processors() {
        memory.note("latency", &d, binary);
    }
    for binary in processors() {
        d.stop(binary, STOP);
    }

    let key = |m: &EventMetadata| format!("{}/{}/{}", m.tenant_id, m.source, m.event_id);
    let mut produced: HashMap<String, i64> = HashMap::with_capacity(total);
    for record in bench.read(&t.usage, total).await {
        if timestamp(&record) < measured_from {
            continue;
        }
        let event: UsageEvent = bench.decode(&record).await;
        let m = &event.metadata;
        produced.insert(key(m), timestamp(&record));
    }
    let mut to_validated = Vec::with_capacity(total);
    for record in bench.read(&t.validated, total).await {
        let event: UsageEvent = bench.decode(&record).await;
        if let Some(at) = produced.get(&key(&event.metadata)) {
            to_validated.push(timestamp(&record) - at);
        }
    }
    let mut to_enriched = Vec::with_capacity(total);
    for record in bench.read(&t.enriched, total).await {
        let enriched: EnrichedUsage = bench.decode(&record).await;
        if let Some(at) = produced.get(&key(&enriched.usage.metadata)) {
            to_enriched.push(timestamp(&record) - at);
        }
    }
    let mut to_rated = Vec::with_capacity(total);
    let mut source: HashMap<String, i64> = HashMap::with_capacity(total);
    let lines = usize::try_from(bench.blocking(|o| o.total(&t.rated))).expect("count");
    for record in bench.read(&t.rated, lines).await {
        let line: RatedUsage = bench.decode(&record).await;
        if let Some(at) = line.source_event_ids.first().and_then(|k| produced.get(k)) {
            to_rated.push(timestamp(&record) - at);
            source.insert(line.rating_id, *at);
        }
    }
    let mut to_billing = Vec::with_capacity(total);
    for record in &charges {
        let charge: BillingCharge = bench.decode(record).await;
        if let Some(at) = source.get(&charge.rating_id) {
            to_billing.push(timestamp(record) - at);
        }
    }
    Hops {
        to_validated,
        to_enriched,
        to_rated,
        to_billing,
    }
}

/// The usage-validator alone over `KEYS` distinct events: its peak RSS (KiB) once it has
/// validated them all, and the seconds it took.
async fn million_keys(bench: &Bench) -> (u64, f64) {
    let mut d = bench.deployment("load-keys").await;
    let t = d.topics.clone();
    d.start("usage-validator");
    // One valid event, encoded a million times with a different event id.
    let template = Workload::generate(&spec(3, 1, &bench.tenant));
    let record = template.usage.first().expect("one usage record");
    let Payload::Event(event) = &record.payload else {
        panic!("the template is an event");
    };
    let mut event = event.as_ref().clone();
    let id = bench
        .codec
        .contract_id::<UsageEvent>(&format!("{}-value", t.usage))
        .await
        .expect("contract id");
    let producer: FutureProducer = bench
        .kafka
        .producer_config()
        .set("batch.size", KEYS_BATCH_BYTES)
        .create()
        .expect("producer");
    let started = Instant::now();
    let mut pending = Vec::with_capacity(10_000);
    for n in 0..KEYS {
        event.metadata.event_id = format!("k-{n}");
        let value = encode_framed(id, &event).expect("encode");
        let delivery = producer
            .send_result(FutureRecord::to(&t.usage).key(&record.key).payload(&value))
            .map_err(|(err, _)| err)
            .expect("enqueue");
        pending.push(delivery);
        if pending.len() >= 10_000 {
            for delivery in pending.drain(..) {
                delivery.await.expect("delivery").expect("delivered");
            }
        }
    }
    for delivery in pending.drain(..) {
        delivery.await.expect("delivery").expect("delivered");
    }
    bench.blocking(|o| o.await_count(&t.validated, KEYS));
    let seconds = started.elapsed().as_secs_f64();
    let peak = d
        .pid("usage-validator")
        .and_then(peak_rss_kib)
        .expect("the validator's VmHWM");
    d.stop("usage-validator", STOP);
    (peak, seconds)
}

/// The publisher's producer, and its `linger.ms`. It stands for producer teams sending a steady
/// stream, and batches like a processor (the stage linger), as the soak's does: on the stand-in
/// broker measured before Kafka, a publisher at librdkafka's 5 ms made most of the broker's work
/// in the latency part (docs/BENCHMARKS.md). `BACKBONE_LOAD_PUBLISHER_LINGER_MS` sets another linger, 5 for that
/// chattier publisher.
fn publisher_config(kafka: &KafkaSettings) -> (rdkafka::ClientConfig, String) {
    let mut settings = kafka.clone();
    if let Ok(linger) = std::env::var("BACKBONE_LOAD_PUBLISHER_LINGER_MS") {
        assert!(
            linger.parse::<u32>().is_ok(),
            "BACKBONE_LOAD_PUBLISHER_LINGER_MS: `{linger}` is not a whole number of milliseconds"
        );
        settings
            .producer_properties
            .insert("linger.ms".to_owned(), linger);
    }
    let config = settings.stage_producer_config();
    let linger = config.get("linger.ms").unwrap_or("?").to_owned();
    (config, linger)
}

/// Which parts of the run to do: `BACKBONE_LOAD_PARTS`, a comma-separated subset of
/// `throughput`, `latency` and `keys` (all three when unset), so that one figure can be
/// measured again on its own.
struct Parts {
    throughput: bool,
    latency: bool,
    keys: bool,
}

/// The processors' delivery in the throughput part, from `BACKBONE_LOAD_DELIVERY`; their
/// default (effectively-once) when unset.
fn delivery() -> Option<String> {
    let delivery = std::env::var("BACKBONE_LOAD_DELIVERY").ok()?;
    assert!(
        matches!(delivery.as_str(), "effectively-once" | "exactly-once"),
        "BACKBONE_LOAD_DELIVERY: `{delivery}` is not a delivery; expected effectively-once or exactly-once"
    );
    Some(delivery)
}

impl Parts {
    fn from_env() -> Self {
        let Ok(list) = std::env::var("BACKBONE_LOAD_PARTS") else {
            return Self {
                throughput: true,
                latency: true,
                keys: true,
            };
        };
        let names: Vec<&str> = list.split(',').map(str::trim).collect();
        for name in &names {
            assert!(
                matches!(*name, "throughput" | "latency" | "keys"),
                "BACKBONE_LOAD_PARTS: `{name}` is not a part; expected throughput, latency or keys"
            );
        }
        Self {
            throughput: names.contains(&"throughput"),
            latency: names.contains(&"latency"),
            keys: names.contains(&"keys"),
        }
    }
}

#[tokio::main]
async fn main() {
    let bootstrap =
        std::env::var("BACKBONE_BENCH_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
    let registry_url = std::env::var("BACKBONE_BENCH_REGISTRY_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:8081".to_owned());
    let mut kafka = KafkaSettings::for_servers(bootstrap.clone());
    kafka.commit_interval = Duration::from_millis(200);
    kafka.session_timeout = Duration::from_secs(6);
    let (publisher, publisher_linger) = publisher_config(&kafka);
    let bench = Bench {
        producer: publisher.create().expect("producer"),
        codec: WireCodec::new(&registry_url),
        offsets: Offsets::new(&kafka),
        registry_url,
        tenant: format!("load-{}", std::process::id()),
        kafka,
    };
    let parts = Parts::from_env();
    let mut memory = Memory::default();
    let started = Instant::now();

    let throughput = if parts.throughput {
        Some(throughput(&bench, &mut memory).await)
    } else {
        None
    };
    let workload = Workload::generate(&spec(1, RATE as usize * LATENCY_SECONDS, &bench.tenant));
    let latency = if parts.latency {
        let base = latency_baseline(&bench, &workload, &mut memory).await;
        let hops = latency_pipeline(&bench, &workload, &mut memory).await;
        Some((base, hops))
    } else {
        None
    };
    let keys = if parts.keys {
        Some(million_keys(&bench).await)
    } else {
        None
    };

    let ok = |met: bool| if met { "met" } else { "NOT met" };
    println!(
        "\nend-to-end load run: broker {bootstrap} (apache kafka), processors as processes, \
         {:.0} s",
        started.elapsed().as_secs_f64()
    );
    if let Some(throughput) = throughput {
        println!(
            "\nthroughput: {EVENTS} usage events pre-published, processors {}; rate on the output between the 10% and 90% marks",
            delivery().unwrap_or_else(|| "effectively-once".to_owned())
        );
        println!("| path | records/s | vs. pass-through |");
        println!("|---|---|---|");
        println!(
            "| pass-through process (baseline), usage to copy | {:.0} | 1.00 |",
            throughput.baseline
        );
        println!(
            "| validator, enricher, usage-rater, fanout: usage to `billing.charges` | {:.0} | {:.2} |",
            throughput.pipeline,
            throughput.pipeline / throughput.baseline
        );
        println!(
            "through the broker while the pipeline ran: {:.0} records/s written, {:.0} records/s read",
            throughput.written, throughput.read
        );
        println!(
            "target >= 10,000 usage events/s: {}",
            ok(throughput.pipeline >= 10_000.0)
        );
        println!("\nrecords written to the broker per usage event, by topic");
        println!("| topic | records per event |");
        println!("|---|---|");
        for (topic, per_event) in &throughput.per_event {
            println!("| {topic} | {per_event:.2} |");
        }
        let all: f64 = throughput.per_event.iter().map(|(_, n)| n).sum();
        println!("| all | {all:.2} |");
        println!("target <= 5 records per usage event: {}", ok(all <= 5.0));
    }

    if let Some((mut base, mut hops)) = latency {
        let events = workload.usage.len();
        println!("\nlatency: {events} usage events at {RATE}/s, publisher linger {publisher_linger} ms; append time of the output minus the usage record's");
        println!("| path | p50 | p99 | max | events |");
        println!("|---|---|---|---|---|");
        let mut p99_billing = i64::MAX;
        for (path, latencies) in [
            ("pass-through process (baseline)", &mut base),
            ("usage to `usage.validated`", &mut hops.to_validated),
            ("usage to `usage.enriched`", &mut hops.to_enriched),
            ("usage to `usage.rated`", &mut hops.to_rated),
            ("usage to `billing.charges`", &mut hops.to_billing),
        ] {
            let n = latencies.len();
            let (p50, p99, max) = quantiles(latencies);
            if path.contains("billing") {
                p99_billing = p99;
            }
            println!("| {path} | {p50} ms | {p99} ms | {max} ms | {n} |");
        }
        println!(
            "target p99 < 500 ms to billing.charges: {}",
            ok(p99_billing < 500)
        );
    }

    if parts.throughput || parts.latency {
        println!("\npeak RSS (VmHWM) per process");
        println!("| process | throughput run | latency run |");
        println!("|---|---|---|");
        for binary in [PASS_THROUGH].into_iter().chain(processors()) {
            println!(
                "| {binary} | {} | {} |",
                memory.get(binary, "throughput"),
                memory.get(binary, "latency")
            );
        }
    }
    if let Some((keys_peak, keys_seconds)) = keys {
        println!(
            "\nusage-validator over {KEYS} distinct events (every idempotency key held): peak RSS {:.0} MB, \
             {keys_seconds:.0} s from the first publish to the last validated; target < 300 MB: {}",
            mib(keys_peak),
            ok(mib(keys_peak) < 300.0)
        );
    }
}
