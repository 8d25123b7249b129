//! `demo`: publishes a batch of sample usage events (some deliberately broken) to the
//! embedded stack, runs the pipeline's processors as separate processes, reads what comes out,
//! checks that every input is accounted for, and prints a summary.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use backbone_core::admin::{ensure_topics, TopicSpec};
use backbone_core::KafkaSettings;
use clap::Parser;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

const INPUT: &str = "usage.events";
const OUTPUT: &str = "usage.validated";
const DLQ: &str = "usage.events.dlq";
const PARTITIONS: i32 = 3;

#[derive(Debug, Parser)]
#[command(
    name = "demo",
    about = "Runs sample usage events through the backbone and summarises"
)]
struct Args {
    /// Broker to use.
    #[arg(
        long,
        env = "BACKBONE__KAFKA__BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092"
    )]
    bootstrap_servers: String,
    /// How many events to publish.
    #[arg(long, default_value_t = 1000)]
    events: usize,
    /// Directory for the processors' logs.
    #[arg(long, default_value = ".backbone/logs")]
    log_dir: PathBuf,
    /// How long to wait for the pipeline to finish.
    #[arg(long, default_value = "120s", value_parser = humantime_duration)]
    timeout: Duration,
}

fn humantime_duration(text: &str) -> Result<Duration, String> {
    let digits = text.trim_end_matches('s');
    digits
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("expected whole seconds like \"120s\", got \"{text}\""))
}

/// What the demo publishes, and what should come out for it.
#[derive(Debug, Default)]
struct Expectation {
    valid: usize,
    broken: BTreeMap<&'static str, usize>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let settings = KafkaSettings::for_servers(&args.bootstrap_servers);
    let started = Instant::now();

    println!("backbone demo: broker {}", args.bootstrap_servers);
    ensure_topics(
        &settings,
        &[
            TopicSpec::new(INPUT, PARTITIONS),
            TopicSpec::new(OUTPUT, PARTITIONS),
            TopicSpec::new(DLQ, PARTITIONS),
        ],
        Duration::from_secs(30),
    )
    .await
    .context("preparing topics")?;
    // Earlier demo runs left records behind on the durable broker: count only what is new.
    let output_start = end_offsets(&settings, OUTPUT)?;
    let dlq_start = end_offsets(&settings, DLQ)?;

    std::fs::create_dir_all(&args.log_dir)
        .with_context(|| format!("creating log directory {}", args.log_dir.display()))?;
    let log = args.log_dir.join("usage-validator.log");
    let mut processor = spawn_processor(&args.bootstrap_servers, &log)?;

    let run_id = format!(
        "{}",
        started.elapsed().as_nanos() ^ u128::from(std::process::id())
    );
    let expectation = publish(&settings, args.events, &run_id).await?;
    println!(
        "published {} events to {INPUT} ({} valid, {} deliberately broken)",
        args.events,
        expectation.valid,
        args.events - expectation.valid
    );

    let deadline = Instant::now() + args.timeout;
    let forwarded = read_new(
        &settings,
        OUTPUT,
        &output_start,
        expectation.valid,
        deadline,
    )?;
    let broken_total: usize = expectation.broken.values().sum();
    let dead = read_new(&settings, DLQ, &dlq_start, broken_total, deadline)?;
    stop_processor(&mut processor)?;

    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for headers in &dead {
        let reason = headers
            .get("backbone.dlq.reason")
            .cloned()
            .unwrap_or_else(|| "(none)".to_owned());
        *reasons.entry(reason).or_default() += 1;
    }
    let elapsed = started.elapsed();
    println!();
    println!("summary");
    let line = |label: &str, value: String| println!("  {label:<36}{value:>10}");
    line("events published", args.events.to_string());
    line(
        &format!("forwarded to {OUTPUT}"),
        forwarded.len().to_string(),
    );
    line(&format!("dead-lettered to {DLQ}"), dead.len().to_string());
    for (reason, count) in &reasons {
        line(&format!("  {reason}"), count.to_string());
    }
    let unaccounted = args.events.saturating_sub(forwarded.len() + dead.len());
    line("unaccounted", unaccounted.to_string());
    line("wall time", format!("{:.1}s", elapsed.as_secs_f64()));
    println!("  processor log: {}", log.display());

    let expected_reasons: BTreeMap<String, usize> = expectation
        .broken
        .iter()
        .map(|(k, v)| ((*k).to_owned(), *v))
        .collect();
    if forwarded.len() != expectation.valid || reasons != expected_reasons {
        bail!(
            "pipeline output does not match: expected {} forwarded and {expected_reasons:?} dead-lettered",
            expectation.valid
        );
    }
    println!("\nevery event accounted for: OK");
    Ok(())
}

fn spawn_processor(bootstrap: &str, log: &std::path::Path) -> Result<Child> {
    let exe = std::env::current_exe().context("locating the demo binary")?;
    let binary = exe.with_file_name("usage-validator");
    if !binary.exists() {
        bail!(
            "processor binary {} not found; build it with `cargo build --bins`",
            binary.display()
        );
    }
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let child = Command::new(&binary)
        .env("BACKBONE__KAFKA__BOOTSTRAP_SERVERS", bootstrap)
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    println!(
        "started usage-validator (pid {}), log {}",
        child.id(),
        log.display()
    );
    Ok(child)
}

fn stop_processor(child: &mut Child) -> Result<()> {
    let pid = Pid::from_raw(i32::try_from(child.id()).context("pid out of range")?);
    kill(pid, Signal::SIGTERM).context("stopping usage-validator")?;
    let status = child.wait().context("waiting for usage-validator")?;
    if !status.success() {
        bail!("usage-validator exited with {status}");
    }
    Ok(())
}

async fn publish(settings: &KafkaSettings, count: usize, run_id: &str) -> Result<Expectation> {
    let producer: FutureProducer = settings
        .producer_config()
        .create()
        .context("creating producer")?;
    let mut expectation = Expectation::default();
    let mut pending = Vec::with_capacity(count);
    for i in 0..count {
        let customer = format!("cust-{:03}", i % 25);
        let (value, broken) = sample_event(i, run_id, &customer);
        match broken {
            Some(reason) => *expectation.broken.entry(reason).or_default() += 1,
            None => expectation.valid += 1,
        }
        let producer = producer.clone();
        pending.push(async move {
            producer
                .send(
                    FutureRecord::to(INPUT).key(&customer).payload(&value),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(err, _)| err)
        });
    }
    for result in futures::future::join_all(pending).await {
        result.context("publishing an event")?;
    }
    Ok(expectation)
}

/// The `i`-th sample event, and the reason it should be dead-lettered if it is broken.
fn sample_event(i: usize, run_id: &str, customer: &str) -> (Vec<u8>, Option<&'static str>) {
    let event = serde_json::json!({
        "tenant_id": "acme",
        "event_id": format!("demo-{run_id}-{i}"),
        "source": "api-gateway",
        "customer_id": customer,
        "meter": if i % 3 == 0 { "storage_gb_hours" } else { "api_calls" },
        "quantity": format!("{}.{}", i % 97, i % 10),
        "occurred_at": "2026-11-27T03:00:00Z",
    });
    match i {
        i if i % 101 == 100 => (
            b"{\"tenant_id\": \"acme\", trunc".to_vec(),
            Some("malformed_json"),
        ),
        i if i % 67 == 66 => {
            let mut bad = event;
            bad["quantity"] = "-5".into();
            (bad.to_string().into_bytes(), Some("invalid_quantity"))
        }
        i if i % 53 == 52 => {
            let mut bad = event;
            bad.as_object_mut().map(|o| o.remove("customer_id"));
            (bad.to_string().into_bytes(), Some("contract_violation"))
        }
        _ => (event.to_string().into_bytes(), None),
    }
}

fn end_offsets(settings: &KafkaSettings, topic: &str) -> Result<BTreeMap<i32, i64>> {
    let consumer: BaseConsumer = settings.admin_config().create()?;
    let mut offsets = BTreeMap::new();
    for partition in 0..PARTITIONS {
        let (_, high) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .with_context(|| format!("reading the end of {topic} partition {partition}"))?;
        offsets.insert(partition, high);
    }
    Ok(offsets)
}

/// Reads records written to `topic` after `start` until `expected` arrived or `deadline`
/// passed; returns each record's headers.
fn read_new(
    settings: &KafkaSettings,
    topic: &str,
    start: &BTreeMap<i32, i64>,
    expected: usize,
    deadline: Instant,
) -> Result<Vec<BTreeMap<String, String>>> {
    let mut config = settings.admin_config();
    config
        .set("group.id", "backbone-demo-reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed");
    let consumer: BaseConsumer = config.create()?;
    let mut assignment = TopicPartitionList::new();
    for (partition, offset) in start {
        assignment.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    consumer.assign(&assignment)?;
    let mut seen = Vec::new();
    while seen.len() < expected {
        if Instant::now() >= deadline {
            bail!(
                "timed out waiting for {topic}: {} of {expected} records arrived",
                seen.len()
            );
        }
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.with_context(|| format!("reading {topic}"))?;
            let headers = message
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            let value = String::from_utf8_lossy(h.value.unwrap_or_default());
                            (h.key.to_owned(), value.into_owned())
                        })
                        .collect()
                })
                .unwrap_or_default();
            seen.push(headers);
        }
    }
    Ok(seen)
}
