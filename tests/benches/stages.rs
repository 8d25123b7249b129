//! Throughput of each usage-pipeline stage on a pre-filled input, beside the runtime's
//! pass-through on the same broker in the same run.
//!
//! Needs a broker: `make bench` starts the embedded stack and runs this; by hand,
//! `BACKBONE_BENCH_BOOTSTRAP=127.0.0.1:9092 cargo bench -p backbone-e2e --bench stages`.
//! A loadgen workload without duplicates or poison is published once; then, one after the other,
//! a forwarding processor (the baseline), the validator, the enricher, the usage-rater and the
//! fanout each consume their whole input. Each stage's rate is read from its output topic, polled
//! every 5 ms, between the 10% and the 90% mark (start-up, group join, restore and the last
//! batch excluded); the fanout's output is its CRM snapshots, the last thing it writes for a line.

use std::time::{Duration, Instant};

use backbone_core::admin::{ensure_topics, TopicSpec};
use backbone_core::{KafkaSettings, Processor, RuntimeSettings};
use backbone_enricher::{Enricher, EnricherSettings};
use backbone_fanout::{Fanout, FanoutSettings, Routes};
use backbone_loadgen::{Destinations, LoadSpec, Workload};
use backbone_registry::{LocalRegistry, RegistryConfig};
use backbone_schemas::WireCodec;
use backbone_testkit::{end_offsets_total, Forward, RunningProcessor};
use backbone_usage_rater::{RaterSettings, UsageRater};
use backbone_usage_validator::{UsageValidator, ValidatorSettings};
use rdkafka::producer::FutureProducer;

const EVENTS: usize = 60_000;
const PARTITIONS: i32 = 3;
const DEADLINE: Duration = Duration::from_secs(300);

fn settings(group: &str, run: &str) -> RuntimeSettings {
    let mut settings = RuntimeSettings {
        group_id: Some(group.to_owned()),
        topic_partitions: PARTITIONS,
        ..RuntimeSettings::default()
    };
    settings.state.dir = std::env::temp_dir().join(format!("backbone-bench-{run}"));
    settings
}

/// Runs `processor` until `total` records are on its `output` topic; returns the rate between
/// the 10% and the 90% mark, so that start-up, group join and the tail of the last batch stay
/// out of the figure.
async fn measure<P: Processor + Sync + 'static>(
    kafka: &KafkaSettings,
    processor: P,
    group: &str,
    run: &str,
    output: &str,
    total: usize,
) -> f64 {
    let running = RunningProcessor::start(processor, kafka, settings(group, run));
    if let Ok(mark) = std::env::var("BACKBONE_BENCH_MARK") {
        // For profilers: the stage's name and start time, to slice a whole-run profile.
        eprintln!("{mark} {group} {:?}", std::time::SystemTime::now());
    }
    let deadline = Instant::now() + DEADLINE;
    let (low, high) = (total as i64 / 10, total as i64 * 9 / 10);
    let mut from: Option<(Instant, i64)> = None;
    let rate = loop {
        let done = end_offsets_total(kafka, output).unwrap_or(0);
        let now = Instant::now();
        if from.is_none() && done >= low {
            from = Some((now, done));
        }
        if done >= high {
            let (start, at) = from.unwrap_or((now, done));
            break (done - at) as f64 / now.duration_since(start).as_secs_f64().max(1e-3);
        }
        assert!(now < deadline, "{group}: {done} of {total} on {output}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    running.stop(DEADLINE).await;
    rate
}

#[tokio::main]
async fn main() {
    let bootstrap =
        std::env::var("BACKBONE_BENCH_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
    let mut kafka = KafkaSettings::for_servers(bootstrap);
    kafka.commit_interval = Duration::from_millis(100);
    kafka.session_timeout = Duration::from_secs(6);
    let run = std::process::id().to_string();
    let topic = |name: &str| format!("bench.{name}.{run}");
    let names = [
        "usage.events",
        "usage.copied",
        "usage.validated",
        "master.customer-accounts",
        "master.subscriptions",
        "master.rate-cards",
        "master.gl-mappings",
        "master.legal-entities",
        "usage.enriched",
        "usage.rated",
        "usage.window-aggregates",
        "billing.charges",
        "analytics.facts",
    ];
    let specs: Vec<TopicSpec> = names
        .iter()
        .map(|n| TopicSpec::new(topic(n), PARTITIONS))
        .collect();
    ensure_topics(&kafka, &specs, Duration::from_secs(30))
        .await
        .expect("topics");
    let registry =
        LocalRegistry::start(&RegistryConfig::ephemeral(kafka.clone(), &topic("schemas")))
            .await
            .expect("registry");
    let codec = WireCodec::new(registry.url());
    let workload = Workload::generate(&LoadSpec {
        seed: 1,
        tenant: format!("bench-{run}"),
        customers: 200,
        plans: 3,
        events: EVENTS,
        duplicate_share: 0.0,
        late_share: 0.0,
        out_of_window_share: 0.0,
        poison_share: 0.0,
        now_micros: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .expect("clock"),
    });
    let producer: FutureProducer = kafka.producer_config().create().expect("producer");
    let (usage, accounts, subscriptions, rate_cards, gl_mappings) = (
        topic("usage.events"),
        topic("master.customer-accounts"),
        topic("master.subscriptions"),
        topic("master.rate-cards"),
        topic("master.gl-mappings"),
    );
    workload
        .publish(
            &producer,
            &codec,
            Destinations {
                usage: &usage,
                accounts: &accounts,
                subscriptions: &subscriptions,
                rate_cards: &rate_cards,
                gl_mappings: &gl_mappings,
            },
            0,
        )
        .await
        .expect("workload");

    let mut results = Vec::new();
    let baseline = Forward {
        input: usage.clone(),
        output: topic("usage.copied"),
    };
    results.push((
        "pass-through (baseline)",
        measure(
            &kafka,
            baseline,
            &format!("fwd-{run}"),
            &run,
            &topic("usage.copied"),
            EVENTS,
        )
        .await,
    ));
    let validator = UsageValidator::new(
        ValidatorSettings {
            input_topic: usage.clone(),
            output_topic: topic("usage.validated"),
            dedup: true,
        },
        codec.clone(),
    );
    results.push((
        "usage-validator",
        measure(
            &kafka,
            validator,
            &format!("val-{run}"),
            &run,
            &topic("usage.validated"),
            EVENTS,
        )
        .await,
    ));
    let enricher = Enricher::new(
        EnricherSettings {
            usage_topic: topic("usage.validated"),
            accounts_topic: accounts.clone(),
            subscriptions_topic: subscriptions.clone(),
            rate_cards_topic: rate_cards.clone(),
            legal_entities_topic: topic("master.legal-entities"),
            output_topic: topic("usage.enriched"),
            ..EnricherSettings::default()
        },
        codec.clone(),
    );
    results.push((
        "enricher",
        measure(
            &kafka,
            enricher,
            &format!("enr-{run}"),
            &run,
            &topic("usage.enriched"),
            EVENTS,
        )
        .await,
    ));
    let rater = UsageRater::new(
        RaterSettings {
            input_topic: topic("usage.enriched"),
            rate_cards_topic: rate_cards.clone(),
            output_topic: topic("usage.rated"),
            aggregates_topic: topic("usage.window-aggregates"),
            ..RaterSettings::default()
        },
        codec.clone(),
    );
    results.push((
        "usage-rater",
        measure(
            &kafka,
            rater,
            &format!("rat-{run}"),
            &run,
            &topic("usage.rated"),
            EVENTS,
        )
        .await,
    ));
    let fanout = Fanout::new(
        FanoutSettings {
            rated_topic: topic("usage.rated"),
            aggregates_topic: topic("usage.window-aggregates"),
            gl_mappings_topic: gl_mappings.clone(),
            legal_entities_topic: topic("master.legal-entities"),
            by_customer_topic: topic("usage.rated-by-customer"),
            routes: Routes {
                billing: topic("billing.charges"),
                analytics: topic("analytics.facts"),
                crm: topic("crm.account-health"),
                erp: topic("erp.postings"),
            },
            dedup: true,
        },
        codec.clone(),
    );
    // Each rated line comes back on the repartition topic; its CRM snapshot is the last output.
    results.push((
        "fanout (four routes)",
        measure(
            &kafka,
            fanout,
            &format!("fan-{run}"),
            &run,
            &topic("crm.account-health"),
            EVENTS,
        )
        .await,
    ));

    let base = results[0].1;
    println!("\nstages: {EVENTS} usage events, {PARTITIONS} partitions, one stage at a time");
    for (stage, rate) in &results {
        println!(
            "  {stage:<26}{rate:>10.0} records/s  ({:.2}x pass-through)",
            rate / base
        );
    }
}
