//! End-to-end latency of the usage pipeline at a fixed, moderate rate, beside the runtime's
//! pass-through on the same broker in the same run.
//!
//! Needs a broker: `make bench` starts the embedded stack and runs this; by hand,
//! `BACKBONE_BENCH_BOOTSTRAP=127.0.0.1:9092 cargo bench -p backbone-e2e --bench latency`.
//! Loadgen publishes usage at `RATE` events per second. The baseline is one forwarding
//! processor; the pipeline is the validator, the enricher, the usage-rater and the fanout running
//! together, every route on. An event's latency is the time its billing charge (and its ERP
//! posting) was appended to the broker's log minus that of its usage record: the measured topics
//! stamp records with `LogAppendTime`, so the last stage's batching and produce request count.
//! The publisher batches like a processor, as the load run's does. Each side is warmed up first
//! (one record through it) so that group joins stay out of the figures.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backbone_calendar::now_ms;
use backbone_core::admin::{ensure_topics, TopicSpec};
use backbone_core::{KafkaSettings, Processor, RuntimeSettings};
use backbone_enricher::{Enricher, EnricherSettings};
use backbone_fanout::{Fanout, FanoutSettings, Routes};
use backbone_loadgen::{Destinations, LoadSpec, Workload};
use backbone_registry::{LocalRegistry, RegistryConfig};
use backbone_schemas::types::{
    BillingCharge, Contract, EnrichedUsage, LedgerPosting, RatedUsage, UsageEvent,
};
use backbone_schemas::WireCodec;
use backbone_testkit::{consume_until, create_topic, ConsumedRecord, Forward, RunningProcessor};
use backbone_usage_rater::{RaterSettings, UsageRater};
use backbone_usage_validator::{UsageValidator, ValidatorSettings};
use rdkafka::producer::FutureProducer;
use serde::de::DeserializeOwned;

const RATE: u32 = 2_000;
const EVENTS: usize = 30_000;
const PARTITIONS: i32 = 3;
/// Warm-up events of the pipeline, over 200 customers: every partition of every stage sees some.
const WARM_UP_EVENTS: usize = 30;
const DEADLINE: Duration = Duration::from_secs(300);

struct Bench {
    kafka: KafkaSettings,
    codec: WireCodec,
    producer: FutureProducer,
    run: String,
}

impl Bench {
    fn topic(&self, name: &str) -> String {
        format!("bench.{name}.{}", self.run)
    }

    fn settings(&self, stage: &str) -> RuntimeSettings {
        let mut settings = RuntimeSettings {
            group_id: Some(format!("{stage}-{}", self.run)),
            topic_partitions: PARTITIONS,
            ..RuntimeSettings::default()
        };
        settings.state.dir = std::env::temp_dir().join(format!("backbone-latency-{}", self.run));
        settings
    }

    fn start<P: Processor + Sync + 'static>(&self, stage: &str, processor: P) -> RunningProcessor {
        RunningProcessor::start(processor, &self.kafka, self.settings(stage))
    }

    /// Publishes `workload` (master data, then usage at `rate`) to `usage` and master topics
    /// named `<prefix>.*`.
    async fn publish(&self, workload: &Workload, prefix: &str, usage: &str, rate: u32) {
        let (accounts, subscriptions, rate_cards, gl_mappings) = self.master(prefix);
        workload
            .publish(
                &self.producer,
                &self.codec,
                Destinations {
                    usage,
                    accounts: &accounts,
                    subscriptions: &subscriptions,
                    rate_cards: &rate_cards,
                    gl_mappings: &gl_mappings,
                },
                rate,
            )
            .await
            .expect("workload");
    }

    fn master(&self, prefix: &str) -> (String, String, String, String) {
        (
            self.topic(&format!("{prefix}.accounts")),
            self.topic(&format!("{prefix}.subscriptions")),
            self.topic(&format!("{prefix}.rate-cards")),
            self.topic(&format!("{prefix}.gl-mappings")),
        )
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
}

fn spec(seed: u64, events: usize, run: &str) -> LoadSpec {
    LoadSpec {
        seed,
        tenant: format!("lat-{run}"),
        customers: 200,
        plans: 3,
        events,
        duplicate_share: 0.0,
        late_share: 0.0,
        out_of_window_share: 0.0,
        poison_share: 0.0,
        now_micros: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .expect("clock"),
    }
}

/// p50, p99 and max of `latencies` (milliseconds), as a line.
fn summary(latencies: &mut [i64]) -> String {
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    format!(
        "p50 {:>5} ms   p99 {:>5} ms   max {:>5} ms   ({} events)",
        at(0.50),
        at(0.99),
        at(1.0),
        latencies.len()
    )
}

fn timestamp(record: &ConsumedRecord) -> i64 {
    record.timestamp_ms.expect("the broker timestamps records")
}

/// A measured topic: the broker stamps each record with the time it appended it.
fn append_stamped(topic: &str) -> TopicSpec {
    TopicSpec::new(topic, PARTITIONS).with_config("message.timestamp.type", "LogAppendTime")
}

/// Milliseconds from each baseline input to its copy, matched by value.
async fn baseline(bench: &Bench, workload: &Workload) -> Vec<i64> {
    let (input, output) = (bench.topic("baseline.in"), bench.topic("baseline.out"));
    ensure_topics(
        &bench.kafka,
        &[append_stamped(&input), append_stamped(&output)],
        Duration::from_secs(30),
    )
    .await
    .expect("topics");
    let forward = bench.start(
        "forward",
        Forward {
            input: input.clone(),
            output: output.clone(),
        },
    );
    let warm = Workload::generate(&spec(2, 1, &bench.run));
    bench.publish(&warm, "baseline", &input, 0).await;
    let warm_value = bench.read(&output, 1).await.remove(0).value;
    bench.publish(workload, "baseline", &input, RATE).await;
    let copies = bench.read(&output, EVENTS + 1).await;
    forward.stop(DEADLINE).await;
    // Matched by value; the warm-up record is left out.
    let sent: HashMap<Vec<u8>, i64> = bench
        .read(&input, EVENTS + 1)
        .await
        .iter()
        .filter(|r| r.value != warm_value)
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

/// Milliseconds from each usage record to each stage's output, the billing charge and the ERP
/// posting last.
async fn pipeline(bench: &Bench, workload: &Workload) -> Vec<(&'static str, Vec<i64>)> {
    let (accounts, subscriptions, rate_cards, gl_mappings) = bench.master("pipeline");
    let t = |name: &str| bench.topic(&format!("pipeline.{name}"));
    let legal_entities = t("legal-entities");
    create_topic(&bench.kafka, &legal_entities, 1)
        .await
        .expect("topic");
    let (raw, validated, enriched, rated, windows) = (
        t("usage.events"),
        t("usage.validated"),
        t("usage.enriched"),
        t("usage.rated"),
        t("usage.window-aggregates"),
    );
    let (billing, erp) = (t("billing.charges"), t("erp.postings"));
    // Co-partitioned inputs must exist with the same count before their processors start, and
    // the measured topics before the stages that write them would create them.
    let mut specs: Vec<TopicSpec> = [&raw, &validated, &enriched, &rated, &billing, &erp]
        .into_iter()
        .map(|name| append_stamped(name))
        .collect();
    specs.extend([&accounts, &windows].map(|name| TopicSpec::new(name.clone(), PARTITIONS)));
    ensure_topics(&bench.kafka, &specs, Duration::from_secs(30))
        .await
        .expect("topics");
    // Master data first: the enricher and the fanout read theirs in full at start-up.
    let mut master = workload.clone();
    master.usage.clear();
    bench.publish(&master, "pipeline", &raw, 0).await;
    let stages = [
        bench.start(
            "validator",
            UsageValidator::new(
                ValidatorSettings {
                    input_topic: raw.clone(),
                    output_topic: validated.clone(),
                    dedup: true,
                },
                bench.codec.clone(),
            ),
        ),
        bench.start(
            "enricher",
            Enricher::new(
                EnricherSettings {
                    usage_topic: validated.clone(),
                    accounts_topic: accounts.clone(),
                    subscriptions_topic: subscriptions.clone(),
                    rate_cards_topic: rate_cards.clone(),
                    legal_entities_topic: legal_entities.clone(),
                    output_topic: enriched.clone(),
                    ..EnricherSettings::default()
                },
                bench.codec.clone(),
            ),
        ),
        bench.start(
            "rater",
            UsageRater::new(
                RaterSettings {
                    input_topic: enriched.clone(),
                    rate_cards_topic: rate_cards.clone(),
                    output_topic: rated.clone(),
                    aggregates_topic: windows.clone(),
                    ..RaterSettings::default()
                },
                bench.codec.clone(),
            ),
        ),
        bench.start(
            "fanout",
            Fanout::new(
                FanoutSettings {
                    rated_topic: rated.clone(),
                    aggregates_topic: windows.clone(),
                    gl_mappings_topic: gl_mappings.clone(),
                    legal_entities_topic: legal_entities.clone(),
                    by_customer_topic: t("usage.rated-by-customer"),
                    routes: Routes {
                        billing: billing.clone(),
                        analytics: t("analytics.facts"),
                        crm: t("crm.account-health"),
                        erp: erp.clone(),
                    },
                    dedup: true,
                },
                bench.codec.clone(),
            ),
        ),
    ];
    // Enough warm-up events that every partition of every stage opens its state before the
    // measured ones: only usage appended after them counts.
    let warm = Workload::generate(&spec(2, WARM_UP_EVENTS, &bench.run));
    bench.publish(&warm, "pipeline", &raw, 0).await;
    bench.read(&billing, WARM_UP_EVENTS).await;
    let measured_from = now_ms();
    bench.publish(workload, "pipeline", &raw, RATE).await;
    let charges = bench.read(&billing, EVENTS + WARM_UP_EVENTS).await;
    for stage in stages {
        stage.stop(DEADLINE).await;
    }

    let mut produced: HashMap<String, i64> = HashMap::new();
    for record in bench.read(&raw, EVENTS + WARM_UP_EVENTS).await {
        if timestamp(&record) < measured_from {
            continue;
        }
        let event: UsageEvent = bench.decode(&record).await;
        let m = &event.metadata;
        let key = format!("{}/{}/{}", m.tenant_id, m.source, m.event_id);
        produced.insert(key, timestamp(&record));
    }
    // Per hop, for the reading: when each event reached the validated and enriched topics.
    let mut hops: Vec<(&str, Vec<i64>)> = Vec::new();
    let mut reached = Vec::with_capacity(EVENTS);
    for record in bench.read(&validated, EVENTS + WARM_UP_EVENTS).await {
        let event: UsageEvent = bench.decode(&record).await;
        let m = &event.metadata;
        let key = format!("{}/{}/{}", m.tenant_id, m.source, m.event_id);
        if let Some(at) = produced.get(&key) {
            reached.push(timestamp(&record) - at);
        }
    }
    hops.push(("usage to validated", reached));
    let mut reached = Vec::with_capacity(EVENTS);
    for record in bench.read(&enriched, EVENTS + WARM_UP_EVENTS).await {
        let event: EnrichedUsage = bench.decode(&record).await;
        let m = &event.usage.metadata;
        let key = format!("{}/{}/{}", m.tenant_id, m.source, m.event_id);
        if let Some(at) = produced.get(&key) {
            reached.push(timestamp(&record) - at);
        }
    }
    hops.push(("usage to enriched", reached));
    let mut reached = Vec::with_capacity(EVENTS);
    let mut source: HashMap<String, i64> = HashMap::new();
    for record in bench.read(&rated, EVENTS + WARM_UP_EVENTS).await {
        let line: RatedUsage = bench.decode(&record).await;
        if let Some(at) = line.source_event_ids.first().and_then(|k| produced.get(k)) {
            source.insert(line.rating_id, *at);
            reached.push(timestamp(&record) - at);
        }
    }
    hops.push(("usage to rated", reached));
    let mut to_billing = Vec::with_capacity(EVENTS);
    for record in &charges {
        let charge: BillingCharge = bench.decode(record).await;
        if let Some(at) = source.get(&charge.rating_id) {
            to_billing.push(timestamp(record) - at);
        }
    }
    let postings = count_postings(bench, &erp).await;
    let mut to_erp = Vec::with_capacity(postings.len());
    for record in &postings {
        let posting: LedgerPosting = bench.decode(record).await;
        if let Some(at) = source.get(&posting.rating_id) {
            to_erp.push(timestamp(record) - at);
        }
    }
    hops.push(("usage to billing.charges", to_billing));
    hops.push(("usage to erp.postings", to_erp));
    hops
}

/// Every ERP posting written so far (a line whose amount is zero has none, so their number is
/// not known beforehand; the fanout has stopped, so the topic is complete).
async fn count_postings(bench: &Bench, topic: &str) -> Vec<ConsumedRecord> {
    let total = backbone_testkit::end_offsets_total(&bench.kafka, topic).expect("offsets");
    bench.read(topic, usize::try_from(total).unwrap_or(0)).await
}

#[tokio::main]
async fn main() {
    let bootstrap =
        std::env::var("BACKBONE_BENCH_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
    let mut kafka = KafkaSettings::for_servers(bootstrap);
    kafka.commit_interval = Duration::from_millis(100);
    kafka.session_timeout = Duration::from_secs(6);
    if let Ok(extra) = std::env::var("BACKBONE_BENCH_KAFKA") {
        // Client tuning to compare, `key=value,key=value`.
        for pair in extra.split(',').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').expect("key=value");
            kafka.properties.insert(key.to_owned(), value.to_owned());
        }
    }
    let run = std::process::id().to_string();
    let registry = LocalRegistry::start(&RegistryConfig::ephemeral(
        kafka.clone(),
        &format!("bench.schemas.{run}"),
    ))
    .await
    .expect("registry");
    let bench = Bench {
        producer: kafka.stage_producer_config().create().expect("producer"),
        codec: WireCodec::new(registry.url()),
        kafka,
        run,
    };
    let workload = Workload::generate(&spec(1, EVENTS, &bench.run));

    let mut forward = baseline(&bench, &workload).await;
    let hops = pipeline(&bench, &workload).await;
    println!("\nlatency: {EVENTS} usage events at {RATE}/s, {PARTITIONS} partitions");
    println!(
        "  {:<26}{}",
        "pass-through (baseline)",
        summary(&mut forward)
    );
    for (hop, mut latencies) in hops {
        println!("  {hop:<26}{}", summary(&mut latencies));
    }
}
