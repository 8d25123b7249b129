//! `replay trace` against the whole backbone, every processor and sink its own process: an
//! event that was billed, a duplicate, one dead-lettered by the validator, one parked until
//! its account arrived and then billed, and one never published. What the trace says is
//! checked against what the test itself finds where the events went (the usage topic read
//! by the test, the billing system's charges and the ERP's journal lines by rating id), not
//! against the tracing code.

#[path = "support/backbone.rs"]
mod backbone;
#[path = "support/sinks.rs"]
mod sinks;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use backbone::Deployment;
use backbone_calendar::{format_rfc3339_ms, now_micros};
use backbone_loadgen::{LoadSpec, Payload, Workload};
use backbone_replay::trace::TRACED_TOPICS;
use backbone_sandbox::SandboxConfig;
use backbone_schemas::types::{Contract, UsageEvent};
use backbone_schemas::WireCodec;
use backbone_testkit::consume_until;
use serde_json::Value as Json;
use sinks::{eventually, registry_url, Sandbox};

const DEADLINE: Duration = Duration::from_secs(180);

fn replay_binary() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_tally")).with_file_name("replay")
}

/// What one `replay trace` run said.
struct Traced {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Traced {
    /// The JSON answer of a run that found the event.
    fn json(&self) -> Json {
        assert_eq!(self.code, Some(0), "trace failed: {}", self.stderr);
        serde_json::from_str(&self.stdout).expect("one JSON document")
    }
}

/// The steps of a JSON trace.
fn steps(trace: &Json) -> Vec<Json> {
    trace["steps"].as_array().cloned().unwrap_or_default()
}

/// Steps that are `what`.
fn with_what<'a>(steps: &'a [Json], what: &str) -> Vec<&'a Json> {
    steps.iter().filter(|s| s["what"] == what).collect()
}

struct Tracer {
    args: Vec<String>,
}

impl Tracer {
    fn new(deployment: &Deployment, tenant: &str) -> Self {
        let mut args: Vec<String> = [
            "--bootstrap-servers",
            &deployment.kafka.bootstrap_servers,
            "--registry-url",
            &deployment.registry_url,
            "trace",
            "--tenant",
            tenant,
            "--enricher-group",
            &deployment.group("enricher"),
        ]
        .map(str::to_owned)
        .to_vec();
        for topic in TRACED_TOPICS {
            args.push("--topic".into());
            args.push(format!("{topic}={}", deployment.topics.name(topic)));
        }
        Self { args }
    }

    async fn run(&self, extra: &[&str]) -> Traced {
        let output = tokio::time::timeout(
            DEADLINE,
            tokio::process::Command::new(replay_binary())
                .args(&self.args)
                .args(extra)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("trace finishes within the deadline")
        .expect("trace starts");
        Traced {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// The JSON trace of event `id`, once `done` holds for its steps.
    async fn event_until(&self, id: &str, what: &str, done: impl Fn(&[Json]) -> bool) -> Json {
        eventually(DEADLINE, what, || async {
            let traced = self.run(&["--event-id", id, "--json"]).await;
            let json = (traced.code == Some(0)).then(|| traced.json())?;
            done(&steps(&json)).then_some(json)
        })
        .await
    }
}

/// Whether `step` was taken by `who` (a stage's or sink's name, which a deployment may
/// prefix).
fn by(step: &Json, who: &str) -> bool {
    step["by"].as_str().is_some_and(|b| b.ends_with(who))
}

/// Whether a sink's result for the event's charge is in.
fn billed(steps: &[Json]) -> bool {
    steps
        .iter()
        .any(|s| by(s, "billing-sink") && s["what"] == "delivered")
}

/// Whether every sink's result is in: the billing system, the ERP, analytics and the CRM.
fn delivered_everywhere(steps: &[Json]) -> bool {
    let results: Vec<&Json> = steps
        .iter()
        .filter(|s| {
            s["topic"]
                .as_str()
                .is_some_and(|t| t.contains("delivery.results"))
        })
        .collect();
    ["billing-sink", "erp-sink", "analytics-sink", "crm-sink"]
        .iter()
        .all(|sink| results.iter().any(|s| by(s, sink)))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trace_follows_billed_duplicate_dead_lettered_parked_and_unknown_events() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await;
    let postgres = std::env::var("BACKBONE_TEST_POSTGRES_URL")
        .expect("BACKBONE_TEST_POSTGRES_URL; `make test` starts PostgreSQL");
    let mut deployment =
        Deployment::create("traced", &sandbox.url, &postgres, &registry_url()).await;
    // Parked events wait for their account however long the test takes to send it.
    deployment
        .settings
        .push(("enricher", "processor.park_timeout".into(), "10m".into()));
    deployment.start_pipeline();

    let tenant = format!("trace-{}", now_micros());
    let mut workload = Workload::generate(&LoadSpec {
        seed: 5,
        tenant: tenant.clone(),
        customers: 3,
        plans: 1,
        events: 60,
        duplicate_share: 0.1,
        late_share: 0.0,
        out_of_window_share: 0.0,
        poison_share: 0.2,
        now_micros: now_micros(),
    });
    let events: Vec<&UsageEvent> = workload
        .usage
        .iter()
        .filter_map(|r| match &r.payload {
            Payload::Event(event) => Some(event.as_ref()),
            Payload::Raw(_) => None,
        })
        .collect();
    let mut copies: BTreeMap<&str, usize> = BTreeMap::new();
    for event in &events {
        *copies.entry(event.metadata.event_id.as_str()).or_default() += 1;
    }
    let late_customer = workload.accounts[0].customer_id.clone();
    let billable = |e: &&&UsageEvent| {
        e.quantity.unscaled() > 0
            && copies[e.metadata.event_id.as_str()] == 1
            && !e.customer_id.starts_with("ghost-")
    };
    let id_of = |e: &UsageEvent| e.metadata.event_id.clone();
    let billed_id = events
        .iter()
        .filter(billable)
        .find(|e| e.customer_id != late_customer)
        .map(|e| id_of(e))
        .expect("a billable event of a customer with an account");
    let parked_id = events
        .iter()
        .filter(billable)
        .find(|e| e.customer_id == late_customer)
        .map(|e| id_of(e))
        .expect("a billable event of the customer whose account comes late");
    let duplicate_id = copies
        .iter()
        .find(|(_, n)| **n == 2)
        .map(|(id, _)| (*id).to_owned())
        .expect("an event sent twice");
    let refused_id = events
        .iter()
        .find(|e| e.quantity.unscaled() < 0)
        .map(|e| id_of(e))
        .expect("an event with a negative quantity");
    let late_account = workload.accounts.remove(0);

    deployment.publish(&workload).await;
    let codec = WireCodec::new(registry_url());
    let t = deployment.topics.clone();

    // Where each event is on the usage topic, as the test reads it.
    let published = consume_until(&deployment.kafka, &t.usage, workload.usage.len(), DEADLINE)
        .await
        .expect("the usage records");
    let mut positions: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    for record in &published {
        if let Ok(event) = codec
            .decode_as::<UsageEvent>(
                record.value.as_deref().unwrap_or_default(),
                UsageEvent::schema(),
            )
            .await
        {
            positions
                .entry(event.metadata.event_id)
                .or_default()
                .push((i64::from(record.partition), record.offset));
        }
    }
    let tracer = Tracer::new(&deployment, &tenant);

    // Billed: every stage once, and the rated line the trace names is the one the billing
    // system charged and the ERP posted.
    let trace = tracer
        .event_until(
            &billed_id,
            "the billed event delivered by every sink",
            delivered_everywhere,
        )
        .await;
    let all = steps(&trace);
    let at = |s: &Json| {
        (
            s["partition"].as_i64().unwrap_or(-1),
            s["offset"].as_i64().unwrap_or(-1),
        )
    };
    let first = with_what(&all, "published");
    assert_eq!(
        first.iter().map(|s| at(s)).collect::<Vec<_>>(),
        positions[&billed_id],
        "{trace:#}"
    );
    for what in ["accepted", "enriched", "windowed"] {
        assert_eq!(with_what(&all, what).len(), 1, "{what}: {trace:#}");
    }
    // Its account may have been read after it (another topic): then it was parked and left.
    assert_eq!(
        with_what(&all, "parked").len(),
        with_what(&all, "released").len(),
        "{trace:#}"
    );
    let rated = with_what(&all, "rated");
    assert_eq!(rated.len(), 1, "{trace:#}");
    let rating_id = rated[0]["id"].as_str().expect("a rating id").to_owned();
    let charges = sandbox.client.charges().await.expect("charges");
    let charged: Vec<_> = charges
        .iter()
        .filter(|c| c.metadata.get("rating_id") == Some(&rating_id))
        .collect();
    assert_eq!(
        charged.len(),
        1,
        "one charge in the billing system for {rating_id}"
    );
    let charge_step = with_what(&all, "charge");
    assert_eq!(charge_step.len(), 1, "{trace:#}");
    assert_eq!(charge_step[0]["id"], rating_id.as_str());
    let batches = sandbox.client.batches().await.expect("batches");
    let posted: Vec<&str> = batches
        .iter()
        .filter(|b| {
            b.lines
                .iter()
                .any(|l| l.reference.as_deref() == Some(rating_id.as_str()))
        })
        .map(|b| b.external_id.as_str())
        .collect();
    assert_eq!(posted.len(), 1, "one ERP batch holds {rating_id}");
    let erp_result: Vec<&Json> = all.iter().filter(|s| by(s, "erp-sink")).collect();
    assert_eq!(erp_result.len(), 1, "{trace:#}");
    assert_eq!(erp_result[0]["id"], posted[0], "the ERP batch: {trace:#}");
    for step in &all {
        // The enricher's changelog holds JSON, not the wire format.
        if step["topic"]
            .as_str()
            .is_some_and(|t| t.ends_with(".changelog"))
        {
            assert!(step["schema"].is_null(), "{step:#}");
            continue;
        }
        // The validator forwards the event byte for byte, under the usage topic's schema.
        let topic = match step["what"].as_str() {
            Some("accepted") => t.usage.as_str(),
            _ => step["topic"].as_str().unwrap_or_default(),
        };
        assert_eq!(
            step["schema"]["subject"],
            format!("{topic}-value").as_str(),
            "every record of the pipeline names its schema: {step:#}"
        );
        assert!(step["schema"]["version"].as_u64().is_some(), "{step:#}");
    }

    // The same line traced by its id leads back to the event and on to the same charge.
    let by_rating = tracer
        .run(&["--rating-id", &rating_id, "--json"])
        .await
        .json();
    let from = with_what(&steps(&by_rating), "from")
        .first()
        .map(|s| s["detail"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    assert!(
        from.contains(&format!("{tenant}/loadgen/{billed_id}")),
        "{by_rating:#}"
    );
    assert_eq!(with_what(&steps(&by_rating), "charge").len(), 1);

    // Sent twice: both copies, one accepted, the other dropped; one charge.
    let trace = tracer
        .event_until(&duplicate_id, "the duplicate billed", billed)
        .await;
    let all = steps(&trace);
    assert_eq!(
        with_what(&all, "published")
            .iter()
            .map(|s| at(s))
            .collect::<Vec<_>>(),
        positions[&duplicate_id],
        "{trace:#}"
    );
    assert_eq!(with_what(&all, "accepted").len(), 1, "{trace:#}");
    let dropped = with_what(&all, "duplicate");
    assert_eq!(dropped.len(), 1, "{trace:#}");
    assert_eq!(
        at(dropped[0]),
        positions[&duplicate_id][1],
        "the later copy"
    );
    assert_eq!(with_what(&all, "charge").len(), 1, "{trace:#}");

    // Refused by the validator: the reason, and nothing after it.
    let trace = tracer
        .event_until(&refused_id, "the refused event's dead letter", |s| {
            !with_what(s, "dead-lettered").is_empty()
        })
        .await;
    let all = steps(&trace);
    let letter = with_what(&all, "dead-lettered");
    assert!(by(letter[0], "usage-validator"), "{trace:#}");
    assert!(
        letter[0]["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("invalid_quantity")),
        "{trace:#}"
    );
    assert_eq!(
        all.iter()
            .map(|s| s["what"].as_str().unwrap_or_default())
            .collect::<Vec<_>>(),
        ["published", "dead-lettered"],
        "{trace:#}"
    );

    // Parked until its account arrives, then released and billed.
    let trace = tracer
        .event_until(&parked_id, "the event parked", |s| {
            !with_what(s, "parked").is_empty()
        })
        .await;
    let parked = with_what(&steps(&trace), "parked")[0].clone();
    assert!(
        parked["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("unknown_account")),
        "{trace:#}"
    );
    assert!(
        with_what(&steps(&trace), "enriched").is_empty(),
        "{trace:#}"
    );
    let accounts = t.destinations().accounts;
    let key = format!("{tenant}:{}", late_account.customer_id);
    let value = codec
        .encode_contract(&format!("{accounts}-value"), &late_account)
        .await
        .expect("encode the account");
    let account_sent_ms = backbone_calendar::now_ms();
    backbone_testkit::produce(
        &deployment.kafka,
        accounts,
        &[backbone_testkit::TestRecord::new(key.as_str(), value)],
    )
    .await
    .expect("publish the late account");
    let trace = tracer
        .event_until(&parked_id, "the parked event released and billed", billed)
        .await;
    let all = steps(&trace);
    let order: Vec<&str> = all
        .iter()
        .filter(|s| {
            ["parked", "released", "enriched"].contains(&s["what"].as_str().unwrap_or_default())
        })
        .map(|s| s["what"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(order, ["parked", "released", "enriched"], "{trace:#}");
    let time = |what: &str| {
        with_what(&all, what)[0]["at"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    // Parked before the account was sent; released and enriched after it.
    let sent = format_rfc3339_ms(account_sent_ms);
    assert!(time("parked") < sent, "{sent}: {trace:#}");
    assert!(
        sent <= time("released") && sent <= time("enriched"),
        "{sent}: {trace:#}"
    );

    // Never published: said so, with where it looked, and exit status 3.
    let never = tracer.run(&["--event-id", "e-never-sent"]).await;
    assert_eq!(never.code, Some(3), "{}", never.stderr);
    assert!(never.stderr.contains("never seen"), "{}", never.stderr);
    assert!(never.stdout.contains("records read"), "{}", never.stdout);

    // The table for people names each step's record.
    let table = tracer.run(&["--event-id", &billed_id]).await;
    assert_eq!(table.code, Some(0), "{}", table.stderr);
    let (partition, offset) = positions[&billed_id][0];
    assert!(
        table
            .stdout
            .contains(&format!("{} {partition}@{offset}", t.usage)),
        "{}",
        table.stdout
    );
}
