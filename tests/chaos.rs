//! Proof under fire: loadgen into the whole backbone (four processors, four sinks, each its own
//! process) while a chaos driver SIGKILLs and restarts them at random and the sandbox's APIs
//! throttle, fail and go down. At the end every expected charge, CRM account, journal and
//! analytics row exists once, the totals equal loadgen's expectation, drift is zero, and the
//! dead-letter topics hold exactly the poison inputs with their reasons.
//!
//! The scenario runs twice, with the processors effectively-once and exactly-once, each on an
//! Apache Kafka broker of its own that the driver also SIGKILLs and restarts on its data every
//! 5th round (`BACKBONE_CHAOS_BROKER_RESTARTS=0` leaves it alone). `make test` runs both short;
//! `BACKBONE_CHAOS_SECONDS`, `BACKBONE_CHAOS_EVENTS`, `BACKBONE_CHAOS_EXACTLY_ONCE_SECONDS`,
//! `BACKBONE_CHAOS_EXACTLY_ONCE_EVENTS` lengthen them and `BACKBONE_CHAOS_SEED` varies them
//! (`make chaos`).

#[path = "support/backbone.rs"]
mod backbone;
#[path = "support/sinks.rs"]
mod sinks;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backbone::{stages, Deployment, Stamps};
use backbone_calendar::now_micros;
use backbone_core::{Delivery, KafkaSettings};
use backbone_drift::books::Check;
use backbone_loadgen::{LoadSpec, Workload};
use backbone_sandbox::{Faults, SandboxConfig, System};
use backbone_schemas::types::{
    Amount, AnalyticsFact, BillingCharge, Contract, CustomerAccount, JournalBatch,
};
use backbone_schemas::WireCodec;
use backbone_testkit::{
    committed_offsets, consume_while, end_offsets_total, reference_price, ConsumedRecord,
    KafkaBroker, TestkitError,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sinks::{registry_url, Sandbox};
use tokio_postgres::NoTls;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn unscaled(text: &str) -> i128 {
    text.parse::<Amount>().expect("amount").unscaled()
}

/// What happened to the backbone while it worked.
#[derive(Debug, Default)]
struct Mayhem {
    /// SIGKILLs, each followed by a restart.
    kills: BTreeMap<&'static str, u32>,
    /// Restarts of processes that had exited on their own.
    revived: BTreeMap<&'static str, u32>,
    outages: u32,
    broker_restarts: u32,
}

impl Mayhem {
    fn revived(&mut self, binaries: Vec<&'static str>) {
        for binary in binaries {
            *self.revived.entry(binary).or_default() += 1;
        }
    }
}

/// Whether the chaos driver SIGKILLs and restarts the broker too (`BACKBONE_CHAOS_BROKER_RESTARTS`,
/// 1 unless set to 0).
fn broker_restarts() -> bool {
    setting("BACKBONE_CHAOS_BROKER_RESTARTS", 1) != 0
}

/// SIGKILLs the broker and starts it again on its data, off the test's runtime: the sandbox
/// the sinks call serves from that runtime meanwhile.
async fn restart_broker(broker: &Arc<Mutex<KafkaBroker>>) {
    let broker = Arc::clone(broker);
    tokio::task::spawn_blocking(move || {
        broker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .restart()
    })
    .await
    .expect("the restart task")
    .expect("the broker restarts on its data");
}

/// Kills and restarts processes at random and takes the sandbox's systems down, until
/// `until`; with `broker`, also SIGKILLs and restarts the broker every 5th round.
async fn chaos(
    deployment: &mut Deployment,
    sandbox: &Sandbox,
    broker: Option<&Arc<Mutex<KafkaBroker>>>,
    until: Instant,
) -> Mayhem {
    let mut mayhem = Mayhem::default();
    let victims: Vec<&'static str> = stages();
    let mut round = 0u32;
    while Instant::now() < until {
        round += 1;
        let victim = victims[fastrand::usize(..victims.len())];
        deployment.kill(victim);
        *mayhem.kills.entry(victim).or_default() += 1;
        if round % 4 == 0 {
            let system = SYSTEMS[fastrand::usize(..SYSTEMS.len())];
            let outage = Faults {
                outage_seconds: 3,
                ..background_faults()
            };
            sandbox
                .client
                .set_faults(system, &outage)
                .await
                .expect("outage");
            mayhem.outages += 1;
        }
        if round % 5 == 0 {
            if let Some(broker) = broker {
                restart_broker(broker).await;
                mayhem.broker_restarts += 1;
            }
        }
        // A dead process stays dead for a while, as it would under a supervisor's backoff.
        tokio::time::sleep(Duration::from_millis(300 + fastrand::u64(..1_200))).await;
        deployment.start(victim);
        mayhem.revived(deployment.revive());
        tokio::time::sleep(Duration::from_millis(500 + fastrand::u64(..1_500))).await;
    }
    mayhem
}

const SYSTEMS: [System; 3] = [System::Billing, System::Crm, System::Erp];

/// What the external systems do throughout the run: some throttling, some errors, some
/// answers lost after the request was applied.
fn background_faults() -> Faults {
    Faults {
        throttle_rate: 0.05,
        error_rate: 0.05,
        lost_response_rate: 0.05,
        retry_after_seconds: 1,
        ..Faults::default()
    }
}

/// Dead letters on `topic`, counted once per poison record, by reason; and the raw count.
///
/// A stage killed after producing and before committing produces its outputs again, at new
/// offsets but byte for byte the same (outputs are content-derived), and the next stage
/// dead-letters such a copy of a poison record again. So a letter whose origin is a stage's
/// output counts once per origin key and value; one whose origin is `input` (loadgen's own
/// records, where distinct poison records may share their bytes) once per origin offset.
async fn dead_letters(
    kafka: &KafkaSettings,
    topic: &str,
    input: &str,
) -> (BTreeMap<String, usize>, usize) {
    let records = read_all(kafka, topic).await;
    let mut origins: BTreeMap<(String, Vec<u8>, Vec<u8>), String> = BTreeMap::new();
    for record in &records {
        let topic = record.header("backbone.origin.topic").unwrap_or_default();
        let origin = if topic == input {
            let partition = record
                .header("backbone.origin.partition")
                .unwrap_or_default();
            let offset = record.header("backbone.origin.offset").unwrap_or_default();
            (topic, partition.into_bytes(), offset.into_bytes())
        } else {
            (
                topic,
                record.key.clone().unwrap_or_default(),
                record.value.clone().unwrap_or_default(),
            )
        };
        origins.insert(
            origin,
            record.header("backbone.dlq.reason").unwrap_or_default(),
        );
    }
    let mut by_reason = BTreeMap::new();
    for reason in origins.values() {
        *by_reason.entry(reason.clone()).or_default() += 1;
    }
    (by_reason, records.len())
}

/// Header of the end markers [`read_all`] writes.
const END_MARKER: &str = "backbone.test.end";

/// Every record of `topic` so far, none if it does not exist. The test writes an end marker to
/// each partition and reads up to those, leaving them out: a topic written in transactions ends
/// in commit markers, which take offsets but are never read.
async fn read_all(kafka: &KafkaSettings, topic: &str) -> Vec<ConsumedRecord> {
    let admin: BaseConsumer = kafka.admin_config().create().expect("admin client");
    let partitions = admin
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .ok()
        .and_then(|m| m.topics().first().map(|t| t.partitions().len()))
        .unwrap_or(0);
    if partitions == 0 {
        return Vec::new();
    }
    let producer: FutureProducer = kafka.producer_config().create().expect("producer");
    let mut ends = Vec::new();
    for partition in 0..i32::try_from(partitions).expect("partitions") {
        let marker = OwnedHeaders::new().insert(Header {
            key: END_MARKER,
            value: Some("1"),
        });
        let end = producer
            .send(
                FutureRecord::<str, [u8]>::to(topic)
                    .partition(partition)
                    .payload(&[])
                    .headers(marker),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(err, _)| err)
            .expect("an end marker");
        ends.push((end.partition, end.offset));
    }
    let records = consume_while(
        kafka,
        topic,
        Duration::from_secs(60),
        format!("{topic} up to its end markers"),
        move |read| {
            ends.iter().all(|(partition, offset)| {
                read.iter()
                    .any(|r| r.partition == *partition && r.offset >= *offset)
            })
        },
    )
    .await
    .expect("records up to the end markers");
    records
        .into_iter()
        .filter(|r| r.header(END_MARKER).is_none())
        .collect()
}

/// Per subscription, the price of each period's usage under its plan's charge, summed, as an
/// unscaled amount: [`reference_price`], not the rating crate.
fn reference_totals(workload: &Workload) -> BTreeMap<String, i128> {
    let mut owed = BTreeMap::new();
    for (subscription, periods) in &workload.expected.periods {
        let plan = workload
            .subscriptions
            .iter()
            .find(|s| &s.subscription_id == subscription)
            .map(|s| s.plan_id.as_str())
            .expect("the subscription's plan");
        let card = workload
            .rate_cards
            .iter()
            .find(|c| c.plan_id == plan)
            .expect("the plan's rate card");
        let total: i128 = periods
            .values()
            .map(|quantity| {
                card.charges
                    .iter()
                    .map(|charge| {
                        reference_price(charge, *quantity)
                            .expect("priced")
                            .unscaled()
                    })
                    .sum::<i128>()
            })
            .sum();
        owed.insert(subscription.clone(), total);
    }
    owed
}

/// How long the backbone must stay quiet before the billing system is read.
const QUIET_FOR: Duration = Duration::from_secs(5);

/// Every stage's consumer group and the deployed names of its inputs.
fn stage_inputs(deployment: &Deployment) -> Vec<(String, Vec<String>)> {
    backbone_components::stages()
        .map(|stage| {
            let topics = stage.inputs.values().chain(stage.internal.values());
            (
                deployment.group(&stage.name),
                topics
                    .map(|t| deployment.topics.name(t).to_owned())
                    .collect(),
            )
        })
        .collect()
}

/// Every stage's committed offsets and its inputs' end offsets, summed per topic (-1 where
/// the broker did not answer): equal twice, nothing moved in between.
fn positions(kafka: &KafkaSettings, stages: &[(String, Vec<String>)]) -> Vec<i64> {
    let mut seen = Vec::new();
    for (group, topics) in stages {
        for topic in topics {
            seen.push(
                committed_offsets(kafka, group, topic)
                    .map(|offsets| offsets.iter().filter_map(|(_, o)| *o).sum())
                    .unwrap_or(-1),
            );
            seen.push(end_offsets_total(kafka, topic).unwrap_or(-1));
        }
    }
    seen
}

/// Where every stage stands: per binary, the input records its group has committed of those
/// in its input topics; where the broker does not say, why (a group whose committed offsets
/// stay unreadable is one its consumer cannot start from either).
fn progress(deployment: &Deployment) -> String {
    let mut report = Vec::new();
    for stage in backbone_components::stages() {
        let binary = stage.name.as_str();
        let (mut committed, mut end) = (Ok(0), Ok(0));
        for topic in stage.inputs.values().map(|t| deployment.topics.name(t)) {
            let group = deployment.group(binary);
            let offsets = committed_offsets(&deployment.kafka, &group, topic)
                .map(|offsets| offsets.iter().filter_map(|(_, o)| *o).sum::<i64>());
            committed = add_or_say(committed, offsets, topic);
            end = add_or_say(end, end_offsets_total(&deployment.kafka, topic), topic);
        }
        let shown = |total: Result<i64, String>| {
            total.map_or_else(|why| format!("? ({why})"), |n| n.to_string())
        };
        report.push(format!("{binary} {}/{}", shown(committed), shown(end)));
    }
    report.join(", ")
}

/// A running total, or the first reason it could not be taken.
fn add_or_say(
    total: Result<i64, String>,
    part: Result<i64, TestkitError>,
    topic: &str,
) -> Result<i64, String> {
    let total = total?;
    part.map(|part| total + part)
        .map_err(|err| format!("{topic}: {err}"))
}

/// The thread stacks of every stage still running, each in `<deployment dir>/<binary>.stacks`
/// (gdb, attached for a moment): a stage that runs and makes no progress shows where it waits.
/// Says where they are, or why there are none.
fn dump_stacks(deployment: &mut Deployment) -> String {
    let mut written = Vec::new();
    for binary in stages() {
        let Some(pid) = deployment
            .pid(binary)
            .filter(|_| deployment.is_running(binary))
        else {
            continue;
        };
        let output = std::process::Command::new("gdb")
            .args([
                "-p",
                &pid.to_string(),
                "-batch",
                "-ex",
                "thread apply all bt",
            ])
            .output();
        match output {
            Ok(output) => {
                let path = deployment.dir.join(format!("{binary}.stacks"));
                if std::fs::write(&path, &output.stdout).is_ok() {
                    written.push(path.display().to_string());
                }
            }
            Err(err) => return format!("no thread stacks: gdb does not run ({err})"),
        }
    }
    format!(
        "thread stacks of the running stages: {}",
        written.join(", ")
    )
}

/// How often a settle still waiting says what it sees.
const SHOW_EVERY: Duration = Duration::from_secs(5);

/// Polls `check` until it gives a value, meanwhile restarting any process that exited on its
/// own, as a supervisor would. After `deadline` the test fails with `what`, the last thing
/// `check` saw, and where each stage stands.
async fn settle<T, F, Fut>(
    deployment: &mut Deployment,
    mayhem: &mut Mayhem,
    deadline: Duration,
    what: &str,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    let mut shown = Duration::ZERO;
    loop {
        mayhem.revived(deployment.revive());
        let seen = match check().await {
            Ok(value) => {
                // Shown with --nocapture (make chaos): where a run's time goes.
                println!(
                    "chaos: {what} after {:.1}s",
                    started.elapsed().as_secs_f64()
                );
                return value;
            }
            Err(seen) => seen,
        };
        if started.elapsed() >= shown + SHOW_EVERY {
            shown = started.elapsed();
            println!(
                "chaos: waiting {:.0}s for {what}: {seen}; stages (committed of records): {}",
                shown.as_secs_f64(),
                progress(deployment)
            );
        }
        if started.elapsed() >= deadline {
            let stacks = dump_stacks(deployment);
            panic!(
                "timed out after {deadline:?} waiting for {what}: {seen}; stages (committed of records): {}; restarted after exiting on their own: {:?}; {stacks}",
                progress(deployment),
                mayhem.revived,
            );
        }
        // Some checks read whole topics: twice a second is often enough.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One chaos run: how long, how much, how the processors deliver.
struct Run {
    /// Length of the chaos, seconds.
    seconds: u64,
    /// Usage records loadgen publishes.
    events: usize,
    /// Seed of the workload and of the chaos driver's choices.
    seed: u64,
    /// The processors' delivery mode.
    delivery: Delivery,
}

impl Run {
    fn mode(&self) -> &'static str {
        match self.delivery {
            Delivery::EffectivelyOnce => "effectively-once",
            Delivery::ExactlyOnce => "exactly-once",
        }
    }
}

/// The two runs share the registry, PostgreSQL and two cores: one at a time. Each has a broker
/// of its own, which the chaos driver restarts.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn seed() -> u64 {
    setting("BACKBONE_CHAOS_SEED", 42)
}

#[tokio::test]
async fn killed_restarted_and_throttled_the_backbone_loses_nothing_and_bills_nothing_twice() {
    let _turn = ONE_AT_A_TIME.lock().await;
    proof_under_fire(Run {
        seconds: setting("BACKBONE_CHAOS_SECONDS", 25),
        events: usize::try_from(setting("BACKBONE_CHAOS_EVENTS", 1_500)).expect("events"),
        seed: seed(),
        delivery: Delivery::EffectivelyOnce,
    })
    .await;
}

/// The processors in exactly-once mode (transactions), killed and restarted the same way.
#[tokio::test]
async fn in_exactly_once_mode_killed_processors_lose_nothing_and_bill_nothing_twice() {
    let _turn = ONE_AT_A_TIME.lock().await;
    proof_under_fire(Run {
        seconds: setting("BACKBONE_CHAOS_EXACTLY_ONCE_SECONDS", 20),
        events: usize::try_from(setting("BACKBONE_CHAOS_EXACTLY_ONCE_EVENTS", 1_000))
            .expect("events"),
        seed: seed(),
        delivery: Delivery::ExactlyOnce,
    })
    .await;
}

async fn proof_under_fire(run: Run) {
    let Run {
        seconds, events, ..
    } = run;
    let broker = KafkaBroker::start().expect("the run's broker");
    let kafka = broker.settings();
    let broker = Arc::new(Mutex::new(broker));
    fastrand::seed(run.seed);
    let sandbox = Sandbox::start(SandboxConfig::default()).await;
    let postgres = std::env::var("BACKBONE_TEST_POSTGRES_URL")
        .expect("BACKBONE_TEST_POSTGRES_URL; `make test` starts PostgreSQL");
    for system in SYSTEMS {
        sandbox
            .client
            .set_faults(system, &background_faults())
            .await
            .expect("faults");
    }
    let mut deployment = Deployment::create_on(
        kafka,
        "chaos",
        &sandbox.url,
        &postgres,
        &registry_url(),
        Stamps::Producer,
    )
    .await;
    deployment.delivery = run.delivery;
    // In exactly-once mode the stages after the validator keep no dedup marks: transactions,
    // not dedup, must keep a killed stage's redone work from reaching billing twice.
    deployment.downstream_dedup = run.delivery == Delivery::EffectivelyOnce;
    deployment.start_pipeline();

    let tenant = format!("chaos-{}", now_micros());
    let workload = Workload::generate(&LoadSpec {
        seed: run.seed,
        tenant: tenant.clone(),
        customers: 25,
        plans: 3,
        events,
        duplicate_share: 0.03,
        late_share: 0.05,
        out_of_window_share: 0.01,
        poison_share: 0.02,
        now_micros: now_micros(),
    });
    let expected = workload.expected.clone();
    let codec = WireCodec::new(registry_url());
    let producer: FutureProducer = deployment
        .kafka
        .producer_config()
        .create()
        .expect("producer");
    let t = deployment.topics.clone();
    // Published at a steady rate while the chaos runs.
    let rate = u32::try_from((events as u64 / seconds.max(1)).max(50)).unwrap_or(u32::MAX);
    let publishing = {
        let (producer, codec, workload, t) =
            (producer.clone(), codec.clone(), workload.clone(), t.clone());
        tokio::spawn(async move {
            workload
                .publish(&producer, &codec, t.destinations(), rate)
                .await
        })
    };
    let started = Instant::now();
    let mut mayhem = chaos(
        &mut deployment,
        &sandbox,
        broker_restarts().then_some(&broker),
        started + Duration::from_secs(seconds),
    )
    .await;
    publishing
        .await
        .expect("publisher task")
        .expect("publish the workload");
    let kafka = deployment.kafka.clone();

    // Events of the customer without an account wait out the enricher's park timeout, which
    // runs on stream time: account updates on every partition move it.
    let ghosts = expected
        .dead_letters
        .get("unknown_account")
        .copied()
        .unwrap_or(0);
    let tick_account: &CustomerAccount = &workload.accounts[0];
    let tick = codec
        .encode_contract(&format!("{}-value", t.accounts), tick_account)
        .await
        .expect("encode");
    let tick_key = format!(
        "{}:{}",
        tick_account.metadata.tenant_id, tick_account.customer_id
    );
    let validated_dlq = format!("{}.dlq", t.validated);
    settle(
        &mut deployment,
        &mut mayhem,
        Duration::from_secs(240),
        "events without an account dead-lettered",
        || async {
            let parked_out = dead_letters(&kafka, &validated_dlq, &t.usage).await.0;
            let lettered = parked_out.get("unknown_account").copied().unwrap_or(0);
            if lettered >= ghosts {
                return Ok(());
            }
            for partition in 0..3 {
                producer
                    .send(
                        FutureRecord::to(&t.accounts)
                            .key(&tick_key)
                            .payload(&tick)
                            .partition(partition),
                        Duration::from_secs(10),
                    )
                    .await
                    .expect("account update");
            }
            Err(format!("{lettered} of {ghosts} dead-lettered"))
        },
    )
    .await;

    // Every system ends up holding what loadgen expects. The billing system is read once the
    // backbone is quiet (no stage's committed offsets and no input's end offsets have moved for
    // QUIET_FOR), not when the expected count is reached: a charge sent twice after that point
    // would still be counted. (Ends, not "committed to the end": under exactly-once the
    // transaction markers sit past the last record a group can commit.)
    let stages = stage_inputs(&deployment);
    let last_seen = std::cell::RefCell::new(None::<(Vec<i64>, Instant)>);
    let billed = settle(
        &mut deployment,
        &mut mayhem,
        Duration::from_secs(300),
        "every stage quiet for a while, then every charge in the billing system",
        || async {
            let now = positions(&kafka, &stages);
            let since = match &*last_seen.borrow() {
                Some((before, since)) if *before == now => *since,
                _ => Instant::now(),
            };
            *last_seen.borrow_mut() = Some((now, since));
            if since.elapsed() < QUIET_FOR {
                return Err(format!("quiet for {:?} of {QUIET_FOR:?}", since.elapsed()));
            }
            let charges = sandbox.client.charges().await.map_err(|e| e.to_string())?;
            let ours: Vec<_> = charges
                .into_iter()
                .filter(|c| c.tenant_id == tenant)
                .collect();
            if ours.len() >= expected.billed_events {
                Ok(ours)
            } else {
                Err(format!(
                    "{} of {} charges",
                    ours.len(),
                    expected.billed_events
                ))
            }
        },
    )
    .await;
    let mut faults_felt = 0;
    for system in ["billing", "crm", "erp"] {
        for status in [429, 503, 504] {
            faults_felt += sandbox.answered(system, status).await;
        }
    }
    for system in SYSTEMS {
        sandbox
            .client
            .clear_faults(system)
            .await
            .expect("clear faults");
    }
    // Counted by business identity (rating id and revision, which the billing sink sends as
    // metadata), not by idempotency key: the billing system keeps one charge per key, so a
    // count by key could not see a charge created twice.
    let identities: BTreeSet<String> = billed
        .iter()
        .map(|c| {
            c.identity()
                .unwrap_or_else(|| panic!("charge {} carries no identity", c.id))
        })
        .collect();
    let duplicated = billed.len() - identities.len();
    let lost = expected.billed_events.saturating_sub(identities.len());
    assert_eq!(duplicated, 0, "a charge held twice");
    assert_eq!(lost, 0, "a charge missing");
    assert_eq!(
        billed.len(),
        expected.billed_events,
        "every charge, none extra"
    );
    if run.delivery == Delivery::ExactlyOnce {
        // Counted on the billing topic itself, read committed, where no sink's ledger or
        // billing system's idempotency key can hide a second copy.
        let mut written: BTreeMap<(String, i64), usize> = BTreeMap::new();
        for record in read_all(&kafka, &t.billing).await {
            let charge: BillingCharge = codec
                .decode_as(
                    record.value.as_deref().unwrap_or_default(),
                    BillingCharge::schema(),
                )
                .await
                .expect("a billing charge");
            *written
                .entry((charge.rating_id, charge.revision))
                .or_default() += 1;
        }
        let twice: Vec<_> = written.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "charges written twice to {}: {twice:?}",
            t.billing
        );
        assert_eq!(
            written.len(),
            expected.billed_events,
            "every charge on the billing topic"
        );
    }
    let mut per_subscription: BTreeMap<&str, i128> = BTreeMap::new();
    for charge in &billed {
        *per_subscription
            .entry(charge.subscription_id.as_str())
            .or_default() += unscaled(&charge.amount);
    }
    // What each subscription owes, priced here with the test kit's own reading of the charge
    // models (no code shared with the rater), from the quantities loadgen used per period.
    let owed = reference_totals(&workload);
    assert_eq!(
        owed.len(),
        expected.subscriptions.len(),
        "every subscription priced"
    );
    for (subscription, want) in &owed {
        assert_eq!(
            per_subscription
                .get(subscription.as_str())
                .copied()
                .unwrap_or(0),
            *want,
            "billed to {subscription}"
        );
    }

    let receivable = workload.gl_mappings[0].receivable_account.clone();
    // One legal entity and currency: receivables are everything owed.
    let expected_ledger: BTreeMap<String, i128> = expected
        .ledger
        .keys()
        .map(|k| (k.clone(), owed.values().sum()))
        .collect();
    let erp_dlq = format!("{}.dlq", t.erp);
    settle(
        &mut deployment,
        &mut mayhem,
        Duration::from_secs(120),
        "the ERP to hold the expected receivables",
        || async {
            let batches = sandbox.client.batches().await.map_err(|e| e.to_string())?;
            let mut receivables: BTreeMap<String, i128> = BTreeMap::new();
            for batch in batches.iter().filter(|b| b.tenant_id == tenant) {
                for line in batch.lines.iter().filter(|l| l.gl_account == receivable) {
                    *receivables
                        .entry(format!("{}/{}", batch.legal_entity_id, line.currency))
                        .or_default() += unscaled(&line.debit) - unscaled(&line.credit);
                }
            }
            if receivables == expected_ledger {
                return Ok(());
            }
            let rejected = dead_letters(&kafka, &erp_dlq, &t.usage).await.0;
            Err(format!(
                "held {receivables:?}, expected {expected_ledger:?}, erp-sink dead letters {rejected:?}"
            ))
        },
    )
    .await;
    // Every batch the ERP holds is announced on the journal-batch topic, the kills and the
    // lost answers notwithstanding, and nothing else is: awaited, as a batch posted just
    // before a kill is announced when its postings come again.
    let journal_batches = t.name("erp.journal-batches").to_owned();
    settle(
        &mut deployment,
        &mut mayhem,
        Duration::from_secs(120),
        "the ERP's batches to be announced",
        || async {
            let held: BTreeSet<String> = sandbox
                .client
                .batches()
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .filter(|b| b.tenant_id == tenant)
                .map(|b| b.external_id)
                .collect();
            let mut announced = BTreeSet::new();
            for record in read_all(&kafka, &journal_batches).await {
                let value = record.value.as_deref().unwrap_or_default();
                let batch: JournalBatch = codec
                    .decode_as(value, JournalBatch::schema())
                    .await
                    .map_err(|e| e.to_string())?;
                if batch.metadata.tenant_id == tenant {
                    announced.insert(batch.batch_id);
                }
            }
            if announced == held {
                Ok(())
            } else {
                Err(format!("announced {announced:?}, the ERP holds {held:?}"))
            }
        },
    )
    .await;

    // Drift is zero on every check.
    let config = deployment.drift_config();
    let drift = {
        let lines = settle(
            &mut deployment,
            &mut mayhem,
            Duration::from_secs(120),
            "drift to be zero",
            || async {
                let lines = backbone_drift::reconcile_once(&config)
                    .await
                    .map_err(|e| e.to_string())?;
                let ours: Vec<_> = lines
                    .into_iter()
                    .filter(|l| l.key.tenant == tenant)
                    .collect();
                let checks: BTreeSet<Check> = ours.iter().map(|l| l.key.check).collect();
                // No billing period closes during the run: no invoice, so no line of
                // `rated_vs_invoiced` or `invoiced_vs_erp`.
                let expected: BTreeSet<Check> = Check::ALL
                    .into_iter()
                    .filter(|c| ![Check::RatedVsInvoiced, Check::InvoicedVsErp].contains(c))
                    .collect();
                if checks == expected && ours.iter().all(|l| l.difference() == 0) {
                    Ok(ours)
                } else {
                    let off: Vec<String> = ours
                        .iter()
                        .filter(|l| l.difference() != 0)
                        .map(|l| format!("{:?} {}", l.key.check, l.difference()))
                        .collect();
                    Err(format!("checks {checks:?} of {expected:?}, off: {off:?}"))
                }
            },
        )
        .await;
        format!("drift zero on {} keys", lines.len())
    };

    // The analytics table holds exactly one row per fact on the analytics topic, at the fact's
    // newest revision: the expectation is read from the topic (read_committed), not from the
    // sink.
    let (db, connection) = tokio_postgres::connect(&postgres, NoTls)
        .await
        .expect("postgres");
    tokio::spawn(connection);
    let schema = deployment.group_prefix.replace(['-', '.'], "_");
    let mut newest: BTreeMap<String, i64> = BTreeMap::new();
    let written = read_all(&kafka, &t.analytics).await;
    let facts = written.len();
    for record in &written {
        let fact: AnalyticsFact = codec
            .decode_as(
                record.value.as_deref().unwrap_or_default(),
                AnalyticsFact::schema(),
            )
            .await
            .expect("an analytics fact");
        let revision = newest.entry(fact.fact_id).or_insert(fact.source_revision);
        *revision = (*revision).max(fact.source_revision);
    }
    let rows = settle(
        &mut deployment,
        &mut mayhem,
        Duration::from_secs(120),
        "one analytics row per fact, at its newest revision",
        || async {
            let held: BTreeMap<String, i64> = db
                .query(
                    &format!("SELECT fact_id, source_revision FROM {schema}.facts"),
                    &[],
                )
                .await
                .map_err(|e| e.to_string())?
                .iter()
                .map(|row| (row.get(0), row.get(1)))
                .collect();
            if held == newest {
                Ok(held.len())
            } else {
                let missing = newest.keys().filter(|k| !held.contains_key(*k)).count();
                let extra = held.keys().filter(|k| !newest.contains_key(*k)).count();
                let stale = newest
                    .iter()
                    .filter(|(k, r)| held.get(*k).is_some_and(|h| h != *r))
                    .count();
                Err(format!(
                    "{} rows for {} facts: {missing} missing, {extra} not on the topic, {stale} \
                     at another revision",
                    held.len(),
                    newest.len()
                ))
            }
        },
    )
    .await;

    // The dead-letter topics hold exactly the poison, once per origin record.
    let mut lettered: BTreeMap<String, usize> = BTreeMap::new();
    let mut raw_letters = 0;
    for topic in [
        format!("{}.dlq", t.usage),
        validated_dlq.clone(),
        format!("{}.dlq", t.enriched),
    ] {
        let (by_reason, raw) = dead_letters(&kafka, &topic, &t.usage).await;
        raw_letters += raw;
        for (reason, n) in by_reason {
            *lettered.entry(reason).or_default() += n;
        }
    }
    assert_eq!(lettered, expected.dead_letters, "dead letters by reason");
    for sink in backbone_components::sinks() {
        for input in sink.inputs.values() {
            let dlq = format!("{}.dlq", t.name(input));
            assert_eq!(
                read_all(&kafka, &dlq).await.len(),
                0,
                "{} rejected nothing",
                sink.name
            );
        }
    }

    let kills: u32 = mayhem.kills.values().sum();
    let revived: u32 = mayhem.revived.values().sum();
    println!(
        "chaos ({mode}, seed {seed}): {events} events in {elapsed:.0}s; {kills} kills {killed:?}; \
         {restarts} process restarts ({kills} after a kill, {revived} after exiting on their own {revivals:?}); \
         {broker} broker restarts; {outages} outages, {faults_felt} faulted answers; \
         {charges} charges: {lost} lost, {duplicated} duplicated; ERP receivables as expected; {drift}; \
         {rows} analytics rows of {facts} facts; {poison} poison inputs dead-lettered \
         ({raw_letters} dead-letter records, redeliveries and upstream copies included)",
        mode = run.mode(),
        seed = run.seed,
        events = expected.records,
        elapsed = started.elapsed().as_secs_f64(),
        killed = mayhem.kills,
        restarts = kills + revived,
        revivals = mayhem.revived,
        broker = mayhem.broker_restarts,
        outages = mayhem.outages,
        charges = billed.len(),
        poison = lettered.values().sum::<usize>(),
    );
    assert!(kills >= 3, "the chaos driver killed processes: {kills}");
    assert!(
        faults_felt > 0,
        "the sinks met throttling, errors and lost answers"
    );
}
