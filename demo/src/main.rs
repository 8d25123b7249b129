//! `demo`: registers the contracts, publishes a batch of sample usage events in the Confluent
//! wire format (some deliberately broken) to the embedded stack, runs the pipeline's
//! processors as separate processes, reads and decodes what comes out, checks that every input
//! is accounted for, and prints a summary.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use backbone_core::admin::{ensure_topics, partition_count, TopicSpec};
use backbone_core::KafkaSettings;
use backbone_schemas::types::{Contract, EventMetadata, Quantity, TraceContext, UsageEvent};
use backbone_schemas::wire::{frame, split_frame};
use backbone_schemas::WireCodec;
use clap::Parser;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

const INPUT: &str = "usage.events";
const SUBJECT: &str = "usage.events-value";
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
    /// Schema registry to use.
    #[arg(
        long,
        env = "BACKBONE__SCHEMA_REGISTRY__URL",
        default_value = "http://127.0.0.1:8081"
    )]
    registry_url: String,
    /// How many events to publish.
    #[arg(long, default_value_t = 1000)]
    events: usize,
    /// Directory for the processors' logs.
    #[arg(long, default_value = ".backbone/logs")]
    log_dir: PathBuf,
    /// Directory for the processors' partition state.
    #[arg(long, default_value = ".backbone/state")]
    state_dir: PathBuf,
    /// How long to wait for the pipeline to finish, in seconds.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
}

/// What the demo publishes, and what should come out for it.
#[derive(Debug, Default)]
struct Expectation {
    valid_keys: BTreeSet<String>,
    valid_quantity: i128,
    broken: BTreeMap<&'static str, usize>,
    /// Valid events published a second time, as a producer retry would.
    duplicates: usize,
}

/// One record read back.
struct Seen {
    headers: BTreeMap<String, String>,
    value: Vec<u8>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let settings = KafkaSettings::for_servers(&args.bootstrap_servers);
    let started = Instant::now();
    println!(
        "backbone demo: broker {}, schema registry {}",
        args.bootstrap_servers, args.registry_url
    );

    register_contracts(&args.registry_url)?;
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
    let mut processor = spawn_processor(&args, &log)?;

    let codec = WireCodec::new(&args.registry_url);
    let run_id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
        .to_string();
    let expectation = publish(&settings, &codec, args.events, &run_id).await?;
    let broken_total: usize = expectation.broken.values().sum();
    let published = args.events + expectation.duplicates;
    println!(
        "published {published} usage events to {INPUT} in the Confluent wire format ({} valid, {} of them twice, {broken_total} deliberately broken)",
        expectation.valid_keys.len(),
        expectation.duplicates,
    );

    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let forwarded = read_new(
        &settings,
        OUTPUT,
        &output_start,
        expectation.valid_keys.len(),
        deadline,
    )?;
    let dead = read_new(&settings, DLQ, &dlq_start, broken_total, deadline)?;
    stop_processor(&mut processor)?;
    // Once the processor stopped, everything it will ever forward is on the topic.
    let forwarded_total = grown(&output_start, &end_offsets(&settings, OUTPUT)?);
    let dropped = published.saturating_sub(forwarded_total + dead.len());

    // Decode what came out, through the registry, exactly as a downstream consumer would.
    let mut forwarded_keys = BTreeSet::new();
    let mut forwarded_quantity: i128 = 0;
    for record in &forwarded {
        let event: UsageEvent = codec
            .decode_as(&record.value, UsageEvent::schema())
            .await
            .context("decoding a forwarded event")?;
        forwarded_quantity += event.quantity.unscaled();
        forwarded_keys.insert(backbone_usage_key(&event));
    }
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for record in &dead {
        let reason = record
            .headers
            .get("backbone.dlq.reason")
            .cloned()
            .unwrap_or_else(|| "(none)".to_owned());
        *reasons.entry(reason).or_default() += 1;
    }

    let elapsed = started.elapsed();
    println!();
    println!("summary");
    let line = |label: &str, value: String| println!("  {label:<36}{value:>14}");
    line("events published", published.to_string());
    line(
        &format!("forwarded to {OUTPUT}"),
        forwarded_total.to_string(),
    );
    line(
        "  total quantity forwarded",
        Quantity::from_unscaled(forwarded_quantity)
            .map(|q| q.to_string())
            .unwrap_or_else(|_| "overflow".to_owned()),
    );
    line(&format!("dead-lettered to {DLQ}"), dead.len().to_string());
    for (reason, count) in &reasons {
        line(&format!("  {reason}"), count.to_string());
    }
    line("dropped as duplicates", dropped.to_string());
    line("wall time", format!("{:.1}s", elapsed.as_secs_f64()));
    println!("  processor log: {}", log.display());

    let expected_reasons: BTreeMap<String, usize> = expectation
        .broken
        .iter()
        .map(|(k, v)| ((*k).to_owned(), *v))
        .collect();
    if forwarded_keys != expectation.valid_keys
        || forwarded_total != expectation.valid_keys.len()
        || forwarded_quantity != expectation.valid_quantity
        || reasons != expected_reasons
        || dropped != expectation.duplicates
    {
        bail!(
            "pipeline output does not match: expected {} distinct events forwarded once each (quantity {}), {expected_reasons:?} dead-lettered and {} duplicates dropped",
            expectation.valid_keys.len(),
            expectation.valid_quantity,
            expectation.duplicates
        );
    }
    println!("\nevery event accounted for, duplicates dropped, quantities intact: OK");
    Ok(())
}

fn backbone_usage_key(event: &UsageEvent) -> String {
    let m = &event.metadata;
    format!("{}/{}/{}", m.tenant_id, m.source, m.event_id)
}

/// A binary built next to this one.
fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the demo binary")?;
    let binary = exe.with_file_name(name);
    if !binary.exists() {
        bail!(
            "binary {} not found; build it with `cargo build --bins`",
            binary.display()
        );
    }
    Ok(binary)
}

fn register_contracts(registry_url: &str) -> Result<()> {
    println!("registering the contracts from schemas/manifest.toml:");
    let status = Command::new(sibling("contracts")?)
        .args(["register", "--registry-url", registry_url])
        .status()
        .context("running `contracts register`")?;
    if !status.success() {
        bail!("`contracts register` failed with {status}");
    }
    Ok(())
}

fn spawn_processor(args: &Args, log: &Path) -> Result<Child> {
    let binary = sibling("usage-validator")?;
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let child = Command::new(&binary)
        .env(
            "BACKBONE__KAFKA__BOOTSTRAP_SERVERS",
            &args.bootstrap_servers,
        )
        .env("BACKBONE__SCHEMA_REGISTRY__URL", &args.registry_url)
        .env("BACKBONE__RUNTIME__STATE__DIR", &args.state_dir)
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

async fn publish(
    settings: &KafkaSettings,
    codec: &WireCodec,
    count: usize,
    run_id: &str,
) -> Result<Expectation> {
    let producer: FutureProducer = settings
        .producer_config()
        .create()
        .context("creating producer")?;
    let mut expectation = Expectation::default();
    let mut records = Vec::with_capacity(count);
    for i in 0..count {
        let event = sample_event(i, run_id);
        let bytes = codec
            .encode_contract(SUBJECT, &event)
            .await
            .context("encoding a usage event")?;
        let (bytes, broken) = break_some(i, bytes);
        match broken {
            Some(reason) => *expectation.broken.entry(reason).or_default() += 1,
            None => {
                expectation.valid_quantity += event.quantity.unscaled();
                expectation.valid_keys.insert(backbone_usage_key(&event));
            }
        }
        // Every 40th valid event goes out twice, as after a producer's retry.
        if broken.is_none() && i % 40 == 0 {
            records.push((event.customer_id.clone(), bytes.clone()));
            expectation.duplicates += 1;
        }
        records.push((event.customer_id.clone(), bytes));
    }
    let sends = records.iter().map(|(key, value)| {
        producer.send(
            FutureRecord::to(INPUT).key(key).payload(value),
            Duration::from_secs(30),
        )
    });
    for result in futures::future::join_all(sends).await {
        result
            .map_err(|(err, _)| err)
            .context("publishing an event")?;
    }
    Ok(expectation)
}

/// The `i`-th sample event; every 59th has a negative quantity and every 71st no customer,
/// which the validator must catch after decoding.
fn sample_event(i: usize, run_id: &str) -> UsageEvent {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros();
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    let unscaled = i128::try_from(i % 97 * 1_000_000_000 + i % 10 * 100_000_000).unwrap_or(0);
    let mut quantity = Quantity::from_unscaled(unscaled).unwrap_or(Quantity::ZERO);
    if i % 59 == 58 {
        quantity = Quantity::from_unscaled(-unscaled - 1).unwrap_or(Quantity::ZERO);
    }
    UsageEvent {
        metadata: EventMetadata {
            tenant_id: "acme".to_owned(),
            event_id: format!("demo-{run_id}-{i}"),
            source: "api-gateway".to_owned(),
            r#type: "usage.recorded".to_owned(),
            occurred_at: now - 60_000_000,
            produced_at: now,
            trace: TraceContext {
                traceparent: format!("00-{:032x}-{:016x}-01", i + 1, i + 1),
                tracestate: None,
            },
            schema_version: Some(1),
        },
        customer_id: if i % 71 == 70 {
            String::new()
        } else {
            format!("cust-{:03}", i % 25)
        },
        subscription_id: Some(format!("sub-{:03}", i % 25)),
        meter_id: if i % 3 == 0 {
            "storage_gb_hours"
        } else {
            "api_calls"
        }
        .to_owned(),
        quantity,
        unit: "unit".to_owned(),
        dimensions: None,
        unique_value: None,
    }
}

/// Breaks some encoded records the way real producers do, and says how the validator must
/// classify each.
fn break_some(i: usize, bytes: Vec<u8>) -> (Vec<u8>, Option<&'static str>) {
    let Ok((id, body)) = split_frame(&bytes) else {
        return (bytes, Some("wrong_magic_byte"));
    };
    match i {
        i if i % 101 == 100 => (
            br#"{"tenant_id": "acme", "note": "json instead of avro"}"#.to_vec(),
            Some("wrong_magic_byte"),
        ),
        i if i % 131 == 130 => (frame(id + 100_000, body), Some("unknown_schema_id")),
        i if i % 83 == 82 => (frame(id, &body[..body.len() / 2]), Some("undecodable_body")),
        // Checked in the validator's order: identity fields before quantity.
        i if i % 71 == 70 => (bytes, Some("contract_violation")),
        i if i % 59 == 58 => (bytes, Some("invalid_quantity")),
        _ => (bytes, None),
    }
}

/// Records written between two sets of end offsets.
fn grown(start: &BTreeMap<i32, i64>, end: &BTreeMap<i32, i64>) -> usize {
    end.iter()
        .map(|(p, e)| e - start.get(p).copied().unwrap_or(0))
        .sum::<i64>()
        .try_into()
        .unwrap_or(0)
}

fn end_offsets(settings: &KafkaSettings, topic: &str) -> Result<BTreeMap<i32, i64>> {
    let partitions = partition_count(settings, topic, Duration::from_secs(10))?
        .with_context(|| format!("topic {topic} does not exist"))?;
    let consumer: BaseConsumer = settings.admin_config().create()?;
    let mut offsets = BTreeMap::new();
    for partition in 0..i32::try_from(partitions).unwrap_or(i32::MAX) {
        let (_, high) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .with_context(|| format!("reading the end of {topic} partition {partition}"))?;
        offsets.insert(partition, high);
    }
    Ok(offsets)
}

/// Reads records written to `topic` after `start` until `expected` arrived or `deadline`
/// passed.
fn read_new(
    settings: &KafkaSettings,
    topic: &str,
    start: &BTreeMap<i32, i64>,
    expected: usize,
    deadline: Instant,
) -> Result<Vec<Seen>> {
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
            seen.push(Seen {
                headers,
                value: message.payload().unwrap_or_default().to_vec(),
            });
        }
    }
    Ok(seen)
}
