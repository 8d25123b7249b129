//! The soak run: usage at a steady rate through the whole backbone (four processors and four
//! sinks, each its own process, delivering to an in-process sandbox and to PostgreSQL) for
//! `SOAK_SECONDS` (default 600); every `SOAK_INTERVAL` seconds (default 30) each consumer
//! group's lag and each process's resident set are sampled. At the end both curves are printed
//! as Markdown tables, and the run fails when either grows:
//!
//! - memory: a process's mean RSS over the last third of the samples is more than 20% and more
//!   than 16 MB above its mean over the middle third (the first third is warm-up: caches and
//!   memtables filling);
//! - lag: a group's lag at the last sample is above 10 seconds of traffic, or its mean over the
//!   last third is more than 2 seconds of traffic above its mean over the middle third.
//!
//! `make soak` starts a private stack and runs this; by hand, with a stack up:
//! `BACKBONE_BENCH_BOOTSTRAP=127.0.0.1:9092 BACKBONE_BENCH_REGISTRY_URL=http://127.0.0.1:8081
//! BACKBONE_BENCH_POSTGRES_URL=postgres://backbone:backbone@127.0.0.1:5432/backbone
//! cargo bench -p backbone-e2e --bench soak` after `cargo build --release --workspace --bins`.
//! `SOAK_RATE` sets the events per second (default 1,000).

#[path = "../support/backbone.rs"]
mod backbone;
#[path = "../support/sinks.rs"]
mod sinks;

use std::time::{Duration, Instant};

use backbone::{stages, Deployment, Stamps};
use backbone_calendar::now_micros;
use backbone_core::KafkaSettings;
use backbone_loadgen::{Destinations, LoadSpec, Workload};
use backbone_sandbox::SandboxConfig;
use backbone_schemas::WireCodec;
use backbone_testkit::{committed_offsets, end_offsets_total};
use rdkafka::producer::FutureProducer;
use sinks::Sandbox;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Current resident set (`VmRSS`) of `pid`, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The topics each process consumes (master data left out: it does not move).
fn inputs(deployment: &Deployment, binary: &str) -> Vec<String> {
    let stage = backbone_components::named(binary)
        .unwrap_or_else(|| panic!("`{binary}` is not in components.toml"));
    stage
        .inputs
        .values()
        .chain(stage.internal.values())
        .map(|topic| deployment.topics.name(topic).to_owned())
        .collect()
}

/// Records on `binary`'s inputs beyond its group's committed offsets.
fn lag(kafka: &KafkaSettings, deployment: &Deployment, binary: &str) -> i64 {
    let group = deployment.group(binary);
    inputs(deployment, binary)
        .iter()
        .map(|topic| {
            let end = end_offsets_total(kafka, topic).unwrap_or(0);
            let committed: i64 = committed_offsets(kafka, &group, topic)
                .unwrap_or_default()
                .iter()
                .map(|(_, offset)| offset.unwrap_or(0))
                .sum();
            (end - committed).max(0)
        })
        .sum()
}

/// One sample: seconds since the start, lag per process, RSS (KiB) per process.
struct Sample {
    at: u64,
    lag: Vec<i64>,
    rss: Vec<u64>,
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let seconds = setting("SOAK_SECONDS", 600);
    let rate = setting("SOAK_RATE", 1_000);
    let interval = setting("SOAK_INTERVAL", 30).max(1);
    let bootstrap =
        std::env::var("BACKBONE_BENCH_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
    let registry_url = std::env::var("BACKBONE_BENCH_REGISTRY_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:8081".to_owned());
    let postgres_url = std::env::var("BACKBONE_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://backbone:backbone@127.0.0.1:5432/backbone".to_owned());
    let mut kafka = KafkaSettings::for_servers(bootstrap.clone());
    kafka.commit_interval = Duration::from_millis(200);
    kafka.session_timeout = Duration::from_secs(6);

    let sandbox = Sandbox::start(SandboxConfig::default()).await;
    let mut deployment = Deployment::create_on(
        kafka.clone(),
        "soak",
        &sandbox.url,
        &postgres_url,
        &registry_url,
        Stamps::Producer,
    )
    .await;
    deployment.start_pipeline();
    let binaries: Vec<&'static str> = stages();

    // Usage in chunks of one interval's worth, each its own seed (so event ids never repeat);
    // master data with the first chunk only.
    let tenant = format!("soak-{}", std::process::id());
    // The publisher batches like a processor (30 ms): at librdkafka's 5 ms it sent about six
    // times the produce requests, each dearer as the in-memory broker's partitions grow, to a
    // broker sharing two cores with the pipeline (docs/BENCHMARKS.md, soak).
    let producer: FutureProducer = kafka.stage_producer_config().create().expect("producer");
    let codec = WireCodec::new(&registry_url);
    let topics = deployment.topics.clone();
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let publisher = tokio::spawn(async move {
        let mut published = 0usize;
        let mut chunk = 0u64;
        while Instant::now() < until {
            let left = until
                .saturating_duration_since(Instant::now())
                .as_secs_f64();
            let events = ((rate * interval) as f64).min(left * rate as f64).ceil() as usize;
            let mut workload = Workload::generate(&LoadSpec {
                seed: 1_000 + chunk,
                tenant: tenant.clone(),
                customers: 200,
                plans: 3,
                events: events.max(1),
                duplicate_share: 0.0,
                late_share: 0.0,
                out_of_window_share: 0.0,
                poison_share: 0.0,
                now_micros: now_micros(),
            });
            if chunk > 0 {
                workload.accounts.clear();
                workload.subscriptions.clear();
                workload.rate_cards.clear();
                workload.gl_mappings.clear();
            }
            workload
                .publish(
                    &producer,
                    &codec,
                    Destinations {
                        usage: &topics.usage,
                        accounts: &topics.accounts,
                        subscriptions: &topics.subscriptions,
                        rate_cards: &topics.rate_cards,
                        gl_mappings: &topics.gl_mappings,
                    },
                    u32::try_from(rate).unwrap_or(u32::MAX),
                )
                .await
                .expect("usage published");
            published += workload.usage.len();
            chunk += 1;
        }
        published
    });

    // Sampling cadence, not synchronisation: the curves are read at fixed times.
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval_at(
        (started + Duration::from_secs(interval)).into(),
        Duration::from_secs(interval),
    );
    let mut at = interval;
    while at <= seconds {
        tick.tick().await;
        let lag: Vec<i64> = tokio::task::block_in_place(|| {
            binaries
                .iter()
                .map(|b| lag(&kafka, &deployment, b))
                .collect()
        });
        let rss: Vec<u64> = binaries
            .iter()
            .map(|b| deployment.pid(b).and_then(rss_kib).unwrap_or(0))
            .collect();
        let down: Vec<&str> = binaries
            .iter()
            .copied()
            .filter(|b| !deployment.is_running(b))
            .collect();
        assert!(
            down.is_empty(),
            "{down:?} exited during the soak; log of the first:\n{}",
            deployment.log(down[0])
        );
        eprintln!("soak {at:>4} s  lag {lag:?}  rss KiB {rss:?}");
        samples.push(Sample { at, lag, rss });
        at += interval;
    }
    let published = publisher.await.expect("publisher");
    let charges = tokio::task::block_in_place(|| {
        end_offsets_total(&kafka, &deployment.topics.billing).unwrap_or(0)
    });
    for binary in binaries.iter().rev() {
        deployment.stop(binary, Duration::from_secs(60));
    }

    let header = |what: &str| {
        let mut line = format!("| {what} |");
        let mut rule = "|---|".to_owned();
        for b in &binaries {
            line.push_str(&format!(" {b} |"));
            rule.push_str("---|");
        }
        println!("{line}\n{rule}");
    };
    println!(
        "\nsoak: {seconds} s at {rate} usage events/s, broker {bootstrap}; {published} events \
         published, {charges} billing charges on the topic at the end"
    );
    println!("\nconsumer lag (records on the group's inputs beyond its committed offsets)\n");
    header("s");
    for s in &samples {
        let cells: String = s.lag.iter().map(|l| format!(" {l} |")).collect();
        println!("| {} |{cells}", s.at);
    }
    println!("\nresident set (VmRSS, MB)\n");
    header("s");
    for s in &samples {
        let cells: String = s
            .rss
            .iter()
            .map(|k| format!(" {:.0} |", *k as f64 / 1024.0))
            .collect();
        println!("| {} |{cells}", s.at);
    }

    // Verdict: the middle third of the samples against the last third.
    let n = samples.len();
    let (middle, last) = (&samples[n / 3..2 * n / 3], &samples[2 * n / 3..]);
    let mut failures = Vec::new();
    if middle.is_empty() || last.is_empty() {
        failures.push(format!("too few samples ({n}) to judge"));
    }
    let traffic = rate as f64;
    for (i, b) in binaries.iter().enumerate() {
        let (m, l) = (
            mean(middle.iter().map(|s| s.rss[i] as f64 / 1024.0)),
            mean(last.iter().map(|s| s.rss[i] as f64 / 1024.0)),
        );
        if l > m * 1.2 && l - m > 16.0 {
            failures.push(format!(
                "{b}: RSS grew from {m:.0} MB (middle third) to {l:.0} MB (last third)"
            ));
        }
        let (m, l) = (
            mean(middle.iter().map(|s| s.lag[i] as f64)),
            mean(last.iter().map(|s| s.lag[i] as f64)),
        );
        let end = samples.last().map_or(0, |s| s.lag[i]) as f64;
        if end > 10.0 * traffic {
            failures.push(format!(
                "{b}: lag {end:.0} at the end, above 10 s of traffic"
            ));
        }
        if l > m + 2.0 * traffic {
            failures.push(format!(
                "{b}: lag grew from {m:.0} (middle third) to {l:.0} (last third)"
            ));
        }
    }
    println!(
        "\ncriteria: per process, last third's mean RSS at most 20% (or 16 MB) above the middle \
         third's; lag at the end at most 10 s of traffic ({:.0} records) and the last third's \
         mean at most 2 s of traffic above the middle third's",
        10.0 * traffic
    );
    if failures.is_empty() {
        println!("verdict: flat (lag and memory)");
        std::process::ExitCode::SUCCESS
    } else {
        for f in &failures {
            println!("verdict: GREW: {f}");
        }
        deployment.keep();
        println!("logs and state kept in {}", deployment.dir.display());
        std::process::ExitCode::FAILURE
    }
}
