//! Proof under fire: loadgen into the whole backbone (four processors, four sinks, each its own
//! process) while a chaos driver SIGKILLs and restarts them at random and the sandbox's APIs
//! throttle, fail and go down. At the end every expected charge, CRM account, journal and
//! analytics row exists once, the totals equal loadgen's expectation, drift is zero, and the
//! dead-letter topics hold exactly the poison inputs with their reasons.
//!
//! `make test` runs a short version; `BACKBONE_CHAOS_SECONDS` and `BACKBONE_CHAOS_EVENTS`
//! lengthen it (`make chaos`).

#[path = "support/backbone.rs"]
mod backbone;
#[path = "support/sinks.rs"]
mod sinks;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use backbone::{Deployment, PROCESSORS, SINKS};
use backbone_drift::books::Check;
use backbone_loadgen::{LoadSpec, Workload};
use backbone_sandbox::{Faults, SandboxConfig, System};
use backbone_schemas::types::{Amount, CustomerAccount};
use backbone_schemas::WireCodec;
use backbone_testkit::{consume_while, end_offsets_total};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sinks::{eventually, registry_url, Sandbox};
use tokio_postgres::NoTls;

fn now_micros() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    i64::try_from(since.as_micros()).expect("micros")
}

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
    kills: BTreeMap<&'static str, u32>,
    outages: u32,
    broker_restarts: u32,
}

/// The broker of a private stack the chaos driver may SIGKILL and restart: its stack
/// directory, from `BACKBONE_CHAOS_BROKER_STACK` (set by `make chaos`; the shared broker of
/// `make test` serves other tests and is left alone).
fn broker_stack() -> Option<std::path::PathBuf> {
    std::env::var_os("BACKBONE_CHAOS_BROKER_STACK").map(Into::into)
}

/// SIGKILLs the stack's broker and starts it again on its durable storage.
fn restart_broker(stack: &std::path::Path) {
    let pid = std::fs::read_to_string(stack.join("run/broker.pid")).expect("broker pid file");
    let status = std::process::Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .expect("kill the broker");
    assert!(status.success(), "kill -9 {pid}");
    // Gone, not only signalled: `stack.sh up` would take a dying broker for a running one.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{}/stat", pid.trim())).exists()
        && std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
            .map(|stat| !stat.contains(") Z "))
            .unwrap_or(false)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the broker did not die"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root");
    let status = std::process::Command::new(repo.join("scripts/stack.sh"))
        .arg("up")
        .env("BACKBONE_STACK_DIR", stack)
        .status()
        .expect("restart the stack's broker");
    assert!(status.success(), "stack.sh up after the broker kill");
}

/// Kills and restarts processes at random and takes the sandbox's systems down, until
/// `until`.
async fn chaos(deployment: &mut Deployment, sandbox: &Sandbox, until: Instant) -> Mayhem {
    let mut mayhem = Mayhem::default();
    let victims: Vec<&'static str> = PROCESSORS.iter().chain(SINKS.iter()).copied().collect();
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
            if let Some(stack) = broker_stack() {
                restart_broker(&stack);
                mayhem.broker_restarts += 1;
            }
        }
        // A dead process stays dead for a while, as it would under a supervisor's backoff.
        tokio::time::sleep(Duration::from_millis(300 + fastrand::u64(..1_200))).await;
        deployment.start(victim);
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

/// Dead letters on `topic`, counted once per origin record, by reason; and the raw count.
async fn dead_letters(deployment: &Deployment, topic: &str) -> (BTreeMap<String, usize>, usize) {
    let total =
        usize::try_from(end_offsets_total(&deployment.kafka, topic).unwrap_or(0)).expect("count");
    if total == 0 {
        return (BTreeMap::new(), 0);
    }
    let records = consume_while(
        &deployment.kafka,
        topic,
        Duration::from_secs(60),
        format!("{total} dead letters on {topic}"),
        move |r| r.len() >= total,
    )
    .await
    .expect("dead letters");
    let mut origins: BTreeMap<(String, String, String), String> = BTreeMap::new();
    for record in &records {
        let origin = (
            record.header("backbone.origin.topic").unwrap_or_default(),
            record
                .header("backbone.origin.partition")
                .unwrap_or_default(),
            record.header("backbone.origin.offset").unwrap_or_default(),
        );
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

#[tokio::test]
async fn killed_restarted_and_throttled_the_backbone_loses_nothing_and_bills_nothing_twice() {
    let seconds = setting("BACKBONE_CHAOS_SECONDS", 25);
    let events = usize::try_from(setting("BACKBONE_CHAOS_EVENTS", 1_500)).expect("events");
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
    let mut deployment =
        Deployment::create("chaos", &sandbox.url, &postgres, &registry_url()).await;
    deployment.start_pipeline();

    let tenant = format!("chaos-{}", now_micros());
    let workload = Workload::generate(&LoadSpec {
        seed: 42,
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
    let codec = WireCodec::new(&registry_url());
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
    let mayhem = chaos(
        &mut deployment,
        &sandbox,
        started + Duration::from_secs(seconds),
    )
    .await;
    publishing
        .await
        .expect("publisher task")
        .expect("publish the workload");
    for binary in PROCESSORS.iter().chain(SINKS.iter()) {
        if !deployment.is_running(binary) {
            deployment.start(binary);
        }
    }

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
    eventually(
        Duration::from_secs(240),
        "events without an account dead-lettered",
        || async {
            let parked_out = dead_letters(&deployment, &validated_dlq).await.0;
            if parked_out.get("unknown_account").copied().unwrap_or(0) >= ghosts {
                return Some(());
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
            None
        },
    )
    .await;

    // Every system ends up holding what loadgen expects.
    let billed = eventually(
        Duration::from_secs(300),
        "every charge in the billing system",
        || async {
            let charges = sandbox.client.charges().await.ok()?;
            let ours: Vec<_> = charges
                .into_iter()
                .filter(|c| c.tenant_id == tenant)
                .collect();
            (ours.len() >= expected.billed_events).then_some(ours)
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
    let keys: BTreeSet<&str> = billed.iter().map(|c| c.idempotency_key.as_str()).collect();
    let duplicated = billed.len() - keys.len();
    assert_eq!(duplicated, 0, "a charge held twice");
    assert_eq!(
        billed.len(),
        expected.billed_events,
        "every charge, none extra"
    );
    let mut per_subscription: BTreeMap<&str, i128> = BTreeMap::new();
    for charge in &billed {
        *per_subscription
            .entry(charge.subscription_id.as_str())
            .or_default() += unscaled(&charge.amount);
    }
    for (subscription, want) in &expected.subscriptions {
        assert_eq!(
            per_subscription
                .get(subscription.as_str())
                .copied()
                .unwrap_or(0),
            unscaled(&want.amount),
            "billed to {subscription}"
        );
    }

    let receivable = workload.gl_mappings[0].receivable_account.clone();
    let expected_ledger: BTreeMap<String, i128> = expected
        .ledger
        .iter()
        .map(|(k, v)| (k.clone(), unscaled(v)))
        .collect();
    eventually(
        Duration::from_secs(120),
        "the ERP to hold the expected receivables",
        || async {
            let batches = sandbox.client.batches().await.ok()?;
            let mut receivables: BTreeMap<String, i128> = BTreeMap::new();
            for batch in batches.iter().filter(|b| b.tenant_id == tenant) {
                for line in batch.lines.iter().filter(|l| l.gl_account == receivable) {
                    *receivables
                        .entry(format!("{}/{}", batch.legal_entity_id, line.currency))
                        .or_default() += unscaled(&line.debit) - unscaled(&line.credit);
                }
            }
            (receivables == expected_ledger).then_some(())
        },
    )
    .await;

    // Drift is zero on every check.
    let config = backbone_drift::DriftConfig {
        kafka: deployment.kafka.clone(),
        schema_registry: backbone_core::app::SchemaRegistrySettings {
            url: registry_url(),
        },
        drift: backbone_drift::DriftSettings {
            enriched_topic: t.enriched.clone(),
            enriched_dlq_topic: format!("{}.dlq", t.enriched),
            rated_topic: t.rated.clone(),
            accounts_topic: t.accounts.clone(),
            gl_mappings_topic: t.gl_mappings.clone(),
            billing_url: sandbox.url.clone(),
            crm_url: sandbox.url.clone(),
            erp_url: sandbox.url.clone(),
            ..backbone_drift::DriftSettings::default()
        },
    };
    let drift = eventually(Duration::from_secs(120), "drift to be zero", || async {
        let lines = backbone_drift::reconcile_once(&config).await.ok()?;
        let ours: Vec<_> = lines
            .into_iter()
            .filter(|l| l.key.tenant == tenant)
            .collect();
        let checks: BTreeSet<Check> = ours.iter().map(|l| l.key.check).collect();
        (checks.len() == Check::ALL.len() && ours.iter().all(|l| l.difference() == 0))
            .then_some(ours)
    })
    .await;

    // The analytics table holds one row per fact.
    let (db, connection) = tokio_postgres::connect(&postgres, NoTls)
        .await
        .expect("postgres");
    tokio::spawn(connection);
    let schema = deployment.group_prefix.replace(['-', '.'], "_");
    let facts = end_offsets_total(&deployment.kafka, &t.analytics).expect("facts");
    let rows = eventually(Duration::from_secs(120), "analytics rows", || async {
        let row = db
            .query_one(
                &format!("SELECT count(DISTINCT fact_id) FROM {schema}.facts"),
                &[],
            )
            .await
            .ok()?;
        let rows: i64 = row.get(0);
        let windows = end_offsets_total(&deployment.kafka, &t.windows).ok()?;
        let rated = end_offsets_total(&deployment.kafka, &t.rated).ok()?;
        // One row per distinct rated line and per distinct window: at most the records.
        (rows > 0 && rows <= rated + windows).then_some(rows)
    })
    .await;

    // The dead-letter topics hold exactly the poison, once per origin record.
    let mut lettered: BTreeMap<String, usize> = BTreeMap::new();
    let mut raw_letters = 0;
    for topic in [
        format!("{}.dlq", t.usage),
        validated_dlq.clone(),
        format!("{}.dlq", t.enriched),
    ] {
        let (by_reason, raw) = dead_letters(&deployment, &topic).await;
        raw_letters += raw;
        for (reason, n) in by_reason {
            *lettered.entry(reason).or_default() += n;
        }
    }
    assert_eq!(lettered, expected.dead_letters, "dead letters by reason");
    for sink in SINKS {
        let dlq = format!(
            "{}.dlq",
            match sink {
                "billing-sink" => &t.billing,
                "crm-sink" => &t.crm,
                "erp-sink" => &t.erp,
                _ => &t.analytics,
            }
        );
        assert_eq!(
            end_offsets_total(&deployment.kafka, &dlq).unwrap_or(0),
            0,
            "{sink} rejected nothing"
        );
    }

    let kills: u32 = mayhem.kills.values().sum();
    println!(
        "chaos: {} events in {:.0}s, {kills} kills and restarts {:?}, {} broker restarts, {} outages, {faults_felt} faulted answers; \
         {} charges (0 lost, {duplicated} duplicated), drift zero on {} keys, {rows} analytics rows of {facts} facts, \
         {} poison inputs dead-lettered ({raw_letters} dead-letter records, redeliveries included)",
        expected.records,
        started.elapsed().as_secs_f64(),
        mayhem.kills,
        mayhem.broker_restarts,
        mayhem.outages,
        billed.len(),
        drift.len(),
        lettered.values().sum::<usize>(),
    );
    assert!(kills >= 3, "the chaos driver killed processes: {kills}");
    assert!(
        faults_felt > 0,
        "the sinks met throttling, errors and lost answers"
    );
}
