//! `demo`: registers the contracts, starts the usage pipeline's processors (validator, enricher,
//! usage-rater, fanout) as separate processes on the embedded stack, publishes a loadgen
//! workload (master data, then usage with duplicates, late events and poison) through the real
//! serializer, waits for every expected billing charge and dead letter, and prints per stage what
//! went in, what came out, what was dropped as a duplicate and what was dead-lettered, and the
//! billed totals, the ERP postings and the CRM's latest snapshots against loadgen's expectation.
//! It ends in the back office: the sinks deliver to the sandbox's billing, CRM and ERP APIs and
//! to PostgreSQL, and the demo prints what each system holds (see [`back_office`]). When the
//! backbone already runs (`demo up`, which `make up` calls, starts it and leaves it running; see
//! [`launch`]), the job runs against it and leaves it running.

mod back_office;
mod launch;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use backbone_core::admin::{ensure_topics, partition_count, TopicSpec};
use backbone_core::schema_registry::RegistryArgs;
use backbone_core::KafkaSettings;
use backbone_loadgen::{Destinations, LoadSpec, Workload};
use backbone_schemas::types::{
    AccountHealthSnapshot, Amount, AnalyticsFact, BillingCharge, Contract, LedgerPosting,
};
use backbone_schemas::{Manifest, WireCodec};
use clap::{Parser, Subcommand};
use launch::{Stack, Stage};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

const USAGE: &str = "usage.events";
const VALIDATED: &str = "usage.validated";
const ACCOUNTS: &str = "master.customer-accounts";
const SUBSCRIPTIONS: &str = "master.subscriptions";
const RATE_CARDS: &str = "master.rate-cards";
const GL_MAPPINGS: &str = "master.gl-mappings";
const ENRICHED: &str = "usage.enriched";
const RATED: &str = "usage.rated";
const WINDOWS: &str = "usage.window-aggregates";
const BILLING: &str = "billing.charges";
const ANALYTICS: &str = "analytics.facts";
const CRM: &str = "crm.account-health";
const ERP: &str = "erp.postings";
const BY_CUSTOMER: &str = "usage.rated-by-customer";

#[derive(Debug, Parser)]
#[command(
    name = "demo",
    about = "Runs a loadgen workload through the usage pipeline and summarises every stage"
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
    #[command(flatten)]
    registry: RegistryArgs,
    /// Usage records to publish, duplicates and poison included.
    #[arg(long, default_value_t = 2000)]
    events: usize,
    /// Customers in the workload.
    #[arg(long, default_value_t = 40)]
    customers: usize,
    /// Directory for the processors' logs.
    #[arg(long, default_value = ".backbone/logs")]
    log_dir: PathBuf,
    /// Directory for the processors' partition state.
    #[arg(long, default_value = ".backbone/state")]
    state_dir: PathBuf,
    /// Where the sandbox of the billing, CRM and ERP APIs listens.
    #[arg(
        long,
        env = "BACKBONE_DEMO_SANDBOX_LISTEN",
        default_value = "127.0.0.1:8090"
    )]
    sandbox_listen: String,
    /// PostgreSQL for the analytics sink (the stack's; `make demo` passes its port).
    #[arg(
        long,
        env = "BACKBONE_DEMO_POSTGRES_URL",
        default_value = "postgres://backbone:backbone@127.0.0.1:5432/backbone"
    )]
    postgres_url: String,
    /// Where the ERP sink also writes each journal batch as a CSV file.
    #[arg(long, default_value = ".backbone/erp-outbox")]
    outbox_dir: PathBuf,
    /// How long to wait for the pipeline to finish, in seconds.
    #[arg(long, default_value_t = 180)]
    timeout_secs: u64,
    /// Where `demo up` leaves each process's pid and metrics port; a run attaches to the
    /// processes found there.
    #[arg(long, default_value = ".backbone/stack/run")]
    run_dir: PathBuf,
    /// `demo up`: the first of the ports the processes' metrics endpoints take, one each.
    #[arg(long, default_value_t = 19460)]
    first_port: u16,
    /// Leave out to run the demo job.
    #[command(subcommand)]
    command: Option<DemoCommand>,
}

/// What to do instead of the demo job.
#[derive(Debug, Subcommand)]
enum DemoCommand {
    /// Start the whole backbone (processors, sandbox, sinks, monitor, drift) and leave it
    /// running.
    Up,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("demo: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let settings = backbone_core::connect::tool_cluster(&args.bootstrap_servers).await?;
    let started = Instant::now();
    println!(
        "backbone demo: broker {}, schema registry {}",
        args.bootstrap_servers, args.registry.registry_url
    );
    register_contracts(&args.registry)?;
    let dlq = |topic: &str| format!("{topic}.dlq");
    let manifest = Manifest::embedded().context("the contracts manifest")?;
    // Every topic of the component list, and its dead letters.
    let topics: Vec<String> = backbone_components::all()
        .iter()
        .flat_map(|c| c.topic_settings().map(|(_, topic)| topic))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .flat_map(|t| [t.to_owned(), dlq(t)])
        .collect();
    let specs: Vec<TopicSpec> = topics
        .iter()
        .map(|t| TopicSpec::new(t.clone(), partitions_of(&manifest, t)))
        .collect();
    ensure_topics(&settings, &specs, Duration::from_secs(30))
        .await
        .context("preparing topics")?;
    // Earlier demo runs left records behind on the durable broker: count only what is new.
    let mut start = BTreeMap::new();
    for topic in &topics {
        start.insert(topic.clone(), end_offsets(&settings, topic)?);
    }

    std::fs::create_dir_all(&args.log_dir)
        .with_context(|| format!("creating log directory {}", args.log_dir.display()))?;
    let stack = Stack {
        bootstrap_servers: &args.bootstrap_servers,
        registry: &args.registry,
        sandbox_listen: &args.sandbox_listen,
        postgres_url: &args.postgres_url,
        state_dir: &args.state_dir,
        outbox_dir: &args.outbox_dir,
    };
    if matches!(args.command, Some(DemoCommand::Up)) {
        let processes = launch::processes(&stack, args.first_port);
        launch::start_detached(&processes, &args.run_dir, &args.log_dir)?;
        launch::await_ready(&processes, Duration::from_secs(120)).await?;
        println!("the backbone runs: `make status` lists it, `make down` stops it");
        return Ok(());
    }
    let processes = launch::processes(&stack, 0);
    let mut stages = Vec::new();
    if processes
        .iter()
        .all(|p| launch::running(&args.run_dir, &p.name).is_some())
    {
        println!(
            "using the running backbone (`make up`; pid files in {})",
            args.run_dir.display()
        );
    } else {
        for process in &processes {
            stages.push(Stage::start(process, &args.log_dir)?);
            if process.job.is_none() {
                back_office::await_sandbox(
                    &args.sandbox_listen,
                    Instant::now() + Duration::from_secs(30),
                )
                .await?;
            }
        }
    }

    // A tenant of its own per run: earlier runs' period-to-date totals stay out of this one.
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("system clock before 1970")?;
    let tenant = format!("demo-{}", run.as_millis());
    let workload = Workload::generate(&LoadSpec {
        seed: u64::try_from(run.as_millis()).unwrap_or(0),
        tenant: tenant.clone(),
        customers: args.customers,
        plans: 3,
        events: args.events,
        duplicate_share: 0.02,
        late_share: 0.05,
        out_of_window_share: 0.005,
        poison_share: 0.01,
        now_micros: i64::try_from(run.as_micros()).unwrap_or(i64::MAX),
    });
    let expected = &workload.expected;
    let codec = WireCodec::new(args.registry.access()?);
    let producer: FutureProducer = settings
        .producer_config()
        .create()
        .context("creating producer")?;
    workload
        .publish(
            &producer,
            &codec,
            Destinations {
                usage: USAGE,
                accounts: ACCOUNTS,
                subscriptions: SUBSCRIPTIONS,
                rate_cards: RATE_CARDS,
                gl_mappings: GL_MAPPINGS,
            },
            0,
        )
        .await?;
    println!(
        "loadgen published {} usage records for {} customers on {} plans ({} duplicates, {} poison or out of window)",
        expected.records,
        workload.accounts.len(),
        workload.rate_cards.len(),
        expected.duplicates,
        expected.dead_letters.values().sum::<usize>()
    );

    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let charges = read_new(
        &settings,
        BILLING,
        &start[BILLING],
        expected.billed_events,
        deadline,
    )?;
    // Events of customers without an account wait out the park timeout; account updates on
    // every partition move the enricher's time past it.
    let ghosts = expected
        .dead_letters
        .get("unknown_account")
        .copied()
        .unwrap_or(0);
    let tick = codec
        .encode_contract(&format!("{ACCOUNTS}-value"), &workload.accounts[0])
        .await?;
    let tick_key = format!(
        "{}:{}",
        workload.accounts[0].metadata.tenant_id, workload.accounts[0].customer_id
    );
    while grown(
        &start[&dlq(VALIDATED)],
        &end_offsets(&settings, &dlq(VALIDATED))?,
    ) < ghosts
    {
        if Instant::now() >= deadline {
            bail!("events without an account never left the enricher's parking");
        }
        for partition in 0..partitions_of(&manifest, ACCOUNTS) {
            producer
                .send(
                    FutureRecord::to(ACCOUNTS)
                        .key(&tick_key)
                        .payload(&tick)
                        .partition(partition),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(err, _)| err)
                .context("publishing an account update")?;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut reasons: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for (topic, expect) in [
        (
            dlq(USAGE),
            ["wrong_magic_byte", "unknown_schema_id", "invalid_quantity"].as_slice(),
        ),
        (dlq(VALIDATED), ["unknown_account"].as_slice()),
        (dlq(ENRICHED), ["too_late"].as_slice()),
    ] {
        let count = expect
            .iter()
            .filter_map(|r| expected.dead_letters.get(*r))
            .sum();
        for letter in read_new(&settings, &topic, &start[&topic], count, deadline)? {
            let reason = letter
                .headers
                .get("backbone.dlq.reason")
                .cloned()
                .unwrap_or_default();
            *reasons
                .entry(topic.clone())
                .or_default()
                .entry(reason)
                .or_default() += 1;
        }
    }
    let charges: Vec<BillingCharge> = decode_all(&codec, &charges).await?;
    let non_zero = charges.iter().filter(|c| c.amount.unscaled() != 0).count();
    let postings = read_new(&settings, ERP, &start[ERP], non_zero, deadline)?;
    let postings: Vec<LedgerPosting> = decode_all(&codec, &postings).await?;
    // The fanout writes a customer's snapshots and a window's facts once per batch of its
    // inputs, so their count is not known ahead: both topics are complete once the fanout has
    // committed every input, each batch's outputs having been acknowledged first.
    fanout_caught_up(&settings, deadline).await?;
    let snapshots = read_new(
        &settings,
        CRM,
        &start[CRM],
        grown(&start[CRM], &end_offsets(&settings, CRM)?),
        deadline,
    )?;
    let snapshots: Vec<AccountHealthSnapshot> = decode_all(&codec, &snapshots).await?;
    let facts = read_new(
        &settings,
        ANALYTICS,
        &start[ANALYTICS],
        grown(&start[ANALYTICS], &end_offsets(&settings, ANALYTICS)?),
        deadline,
    )?;
    let facts: Vec<AnalyticsFact> = decode_all(&codec, &facts).await?;
    let mut latest_snapshots: BTreeMap<String, i64> = BTreeMap::new();
    for snapshot in &snapshots {
        let as_of = latest_snapshots
            .entry(snapshot.customer_id.clone())
            .or_insert(snapshot.as_of);
        *as_of = (*as_of).max(snapshot.as_of);
    }
    let mut posted: BTreeMap<String, i128> = BTreeMap::new();
    for posting in &postings {
        *posted
            .entry(format!("{}/{}", posting.legal_entity_id, posting.currency))
            .or_default() += posting.amount.unscaled();
    }
    let produced = back_office::Produced {
        tenant: tenant.clone(),
        charges: charges
            .iter()
            .map(|c| (c.rating_id.clone(), c.amount.unscaled()))
            .collect(),
        latest_snapshots,
        ledger: posted,
        receivable_accounts: postings
            .iter()
            .flat_map(|p| p.lines.iter())
            .filter(|l| l.customer_id.is_some())
            .map(|l| l.gl_account.clone())
            .collect(),
        facts: facts
            .iter()
            .filter(|f| f.metadata.tenant_id == tenant)
            .map(|f| f.fact_id.clone())
            .collect(),
    };
    let back_office = match back_office::check(
        &args.sandbox_listen,
        &args.postgres_url,
        &produced,
        deadline,
    )
    .await
    {
        Ok(()) => {
            back_office::drift_report(
                &args.bootstrap_servers,
                args.registry.settings(),
                &args.sandbox_listen,
                &tenant,
            )
            .await
        }
        Err(err) => Err(err),
    };
    for stage in stages.iter_mut().rev() {
        stage.stop()?;
    }

    let mut billed: BTreeMap<String, i128> = BTreeMap::new();
    for charge in &charges {
        *billed.entry(charge.subscription_id.clone()).or_default() += charge.amount.unscaled();
    }
    let mut ledger: BTreeMap<String, i128> = BTreeMap::new();
    let mut unbalanced = 0;
    for posting in &postings {
        let debits: i128 = posting.lines.iter().map(|l| l.debit.unscaled()).sum();
        let credits: i128 = posting.lines.iter().map(|l| l.credit.unscaled()).sum();
        if debits != credits {
            unbalanced += 1;
        }
        let key = format!("{}/{}", posting.legal_entity_id, posting.currency);
        *ledger.entry(key).or_default() += posting.amount.unscaled();
    }
    let mut expected_ledger = BTreeMap::new();
    for (key, total) in &expected.ledger {
        let total: Amount = total.parse().context("expected ledger total")?;
        expected_ledger.insert(key.clone(), total.unscaled());
    }
    // The CRM's view: each customer's latest snapshot, current and previous period together.
    let mut latest: BTreeMap<&str, &AccountHealthSnapshot> = BTreeMap::new();
    for snapshot in &snapshots {
        let entry = latest.entry(&snapshot.customer_id).or_insert(snapshot);
        if snapshot.as_of > entry.as_of {
            *entry = snapshot;
        }
    }
    let crm_agrees = latest
        .iter()
        .filter(|(customer, s)| {
            let spend = s.period_to_date_amount.unscaled()
                + s.previous_period_amount.map_or(0, |a| a.unscaled());
            billed.get(&format!("sub-{customer}")) == Some(&spend)
        })
        .count();
    let mut expected_total = 0i128;
    let mut mismatched = Vec::new();
    for (subscription, want) in &expected.subscriptions {
        let want: Amount = want.amount.parse().context("expected amount")?;
        expected_total += want.unscaled();
        if billed.get(subscription).copied().unwrap_or(0) != want.unscaled() {
            mismatched.push(subscription.clone());
        }
    }
    let billed_total: i128 = billed.values().sum();

    let count = |topic: &str| -> Result<usize> {
        Ok(grown(&start[topic], &end_offsets(&settings, topic)?))
    };
    let validated = count(VALIDATED)?;
    let enriched = count(ENRICHED)?;
    let rated = count(RATED)?;
    let windows = count(WINDOWS)?;
    let dead = |topic: &str| {
        reasons
            .get(&dlq(topic))
            .map_or(0, |r| r.values().sum::<usize>())
    };
    let duplicates = expected.records.saturating_sub(validated + dead(USAGE));
    println!();
    println!("summary");
    let line = figure;
    line("usage-validator: records in", expected.records.to_string());
    line(&format!("  out to {VALIDATED}"), validated.to_string());
    line("  dropped as duplicates", duplicates.to_string());
    line("enricher: records in", validated.to_string());
    line(&format!("  out to {ENRICHED}"), enriched.to_string());
    line("usage-rater: records in", enriched.to_string());
    line(&format!("  rated lines to {RATED}"), rated.to_string());
    line(
        &format!("  window revisions to {WINDOWS}"),
        windows.to_string(),
    );
    let by_customer = count(BY_CUSTOMER)?;
    line(
        "fanout: records in",
        (rated + windows + by_customer).to_string(),
    );
    line(
        &format!("  rated lines re-keyed to {BY_CUSTOMER}"),
        by_customer.to_string(),
    );
    line(
        &format!("  charges to {BILLING}"),
        count(BILLING)?.to_string(),
    );
    line(
        &format!("  facts to {ANALYTICS}"),
        count(ANALYTICS)?.to_string(),
    );
    line(&format!("  postings to {ERP}"), postings.len().to_string());
    line(
        &format!("  snapshots to {CRM}"),
        snapshots.len().to_string(),
    );
    for (topic, by_reason) in &reasons {
        for (reason, n) in by_reason {
            line(
                &format!("dead-lettered to {topic}: {reason}"),
                n.to_string(),
            );
        }
    }
    let money = |unscaled: i128| {
        Amount::from_unscaled(unscaled).map_or_else(|_| "overflow".to_owned(), |a| a.to_string())
    };
    line("billed total (EUR)", money(billed_total));
    line("loadgen's expected total (EUR)", money(expected_total));
    for (key, net) in &ledger {
        line(&format!("ERP receivables posted ({key})"), money(*net));
    }
    line(
        "CRM customers whose latest snapshot equals their bill",
        format!("{crm_agrees} of {}", expected.subscriptions.len()),
    );
    line(
        "wall time",
        format!("{:.1}s", started.elapsed().as_secs_f64()),
    );
    println!("  processor logs: {}", args.log_dir.display());

    let expected_reasons: BTreeMap<String, usize> = reasons
        .values()
        .flat_map(|r| r.iter().map(|(k, v)| (k.clone(), *v)))
        .collect();
    if duplicates != expected.duplicates
        || charges.len() != expected.billed_events
        || billed_total != expected_total
        || !mismatched.is_empty()
        || expected_reasons != expected.dead_letters
        || ledger != expected_ledger
        || unbalanced > 0
        || crm_agrees != expected.subscriptions.len()
    {
        bail!(
            "the pipeline's output does not match loadgen's expectation: {} charges for {} events, {} duplicates for {}, dead letters {expected_reasons:?} for {:?}, subscriptions billed differently: {mismatched:?}, ledger {ledger:?} for {expected_ledger:?} ({unbalanced} unbalanced), CRM agrees for {crm_agrees} customers",
            charges.len(),
            expected.billed_events,
            duplicates,
            expected.duplicates,
            expected.dead_letters
        );
    }
    back_office?;
    println!(
        "  ERP journal files (CSV outbox): {}",
        args.outbox_dir.display()
    );
    println!(
        "  metrics: every process serves /metrics (its log names the address); lag: `monitor`, drift gauges: `drift serve`"
    );
    println!(
        "  left running: `make up` runs the whole backbone with Prometheus on http://127.0.0.1:9090; `make status` lists it"
    );
    println!(
        "  dashboards: `docker compose up` adds Grafana on http://127.0.0.1:3000 (deploy/, docs/observability.md)"
    );
    println!("\nevery record accounted for, every charge once, totals as expected in billing, ERP, CRM and analytics: OK");
    Ok(())
}

async fn decode_all<T: Contract + serde::de::DeserializeOwned>(
    codec: &WireCodec,
    records: &[Seen],
) -> Result<Vec<T>> {
    let mut decoded = Vec::with_capacity(records.len());
    for record in records {
        let value = codec
            .decode_as(&record.value, T::schema())
            .await
            .with_context(|| format!("decoding a {}", T::FULL_NAME))?;
        decoded.push(value);
    }
    Ok(decoded)
}

/// The partitions the manifest gives `topic` (or the topic a DLQ is of); a topic it does not
/// list is internal to a stage (`usage.validated`, the fanout's repartition topic), partitioned
/// like the usage it carries, so that a stage's inputs stay co-partitioned however the topics
/// came to exist (`contracts apply`, or this).
fn partitions_of(manifest: &Manifest, topic: &str) -> i32 {
    let base = topic.strip_suffix(".dlq").unwrap_or(topic);
    manifest
        .topic(base)
        .or_else(|| manifest.topic(USAGE))
        .map_or(12, |t| t.partitions)
}

/// One line of a summary: a label, and its figure right-aligned.
fn figure(label: &str, value: String) {
    println!("  {label:<56}{value:>14}");
}

fn register_contracts(registry: &RegistryArgs) -> Result<()> {
    println!("registering the contracts from schemas/manifest.toml:");
    let status = Command::new(launch::sibling("contracts")?)
        .arg("register")
        .envs(registry.env())
        .stdout(Stdio::null())
        .status()
        .context("running `contracts register`")?;
    if !status.success() {
        bail!("`contracts register` failed with {status}");
    }
    Ok(())
}

/// One record read back.
struct Seen {
    headers: BTreeMap<String, String>,
    value: Vec<u8>,
}

/// Waits until the fanout's group has committed its inputs up to their ends.
async fn fanout_caught_up(settings: &KafkaSettings, deadline: Instant) -> Result<()> {
    let consumer: BaseConsumer = settings.consumer_config("fanout").create()?;
    loop {
        let mut behind = 0;
        for topic in [RATED, WINDOWS, BY_CUSTOMER] {
            let ends = end_offsets(settings, topic)?;
            let mut asked = TopicPartitionList::new();
            for partition in ends.keys() {
                asked.add_partition(topic, *partition);
            }
            let committed = consumer
                .committed_offsets(asked, Duration::from_secs(10))
                .with_context(|| format!("reading the fanout's committed offsets on {topic}"))?;
            for element in committed.elements() {
                let at = match element.offset() {
                    Offset::Offset(at) => at,
                    _ => 0,
                };
                behind += ends[&element.partition()] - at;
            }
        }
        if behind == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out waiting for the fanout: {behind} inputs not committed");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
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
