//! Pausing a tenant with `replay tenant`, against the whole backbone, every processor and sink
//! its own process: a tenant paused at the rater and at the billing sink is held there while
//! another tenant's usage is billed; resumed at the rater, its charges wait at the billing
//! sink; resumed there, every event is billed once, and the rater saw each customer's events
//! in the order they were published. The expectations come from the workload and from the
//! topics and the billing system as the test reads them, not from the holding code.

#[path = "support/backbone.rs"]
mod backbone;
#[path = "support/sinks.rs"]
mod sinks;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use backbone::Deployment;
use backbone_calendar::now_micros;
use backbone_loadgen::{LoadSpec, Workload};
use backbone_schemas::types::{Contract, RatedUsage, UsageEvent};
use backbone_schemas::WireCodec;
use backbone_testkit::{await_committed, consume_until, end_offsets_total};
use serde_json::Value as Json;
use sinks::{eventually, registry_url, Sandbox};

const DEADLINE: Duration = Duration::from_secs(180);

fn replay_binary() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_tally")).with_file_name("replay")
}

/// Runs `replay` with `args` against the deployment; its standard output.
async fn replay(deployment: &Deployment, args: &[&str]) -> String {
    let output = tokio::process::Command::new(replay_binary())
        .args(["--bootstrap-servers", &deployment.kafka.bootstrap_servers])
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("replay starts");
    assert!(
        output.status.success(),
        "replay {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `replay tenant` with `args`, through the `controls` topic; its standard output.
async fn control(deployment: &Deployment, controls: &str, args: &[&str]) -> String {
    let mut all = vec!["tenant"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--controls-topic", controls, "--operator", "test"]);
    replay(deployment, &all).await
}

/// The value of the held-records gauge of `binary` for `tenant`; 0 without a series.
async fn held(deployment: &Deployment, binary: &str, tenant: &str) -> Option<u64> {
    let url = format!("http://{}/metrics", deployment.metrics_address(binary));
    let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
    let series = format!("tenant=\"{tenant}\"}} ");
    Some(
        text.lines()
            .filter(|l| l.starts_with("backbone_tenant_held_records{") && l.contains(&series))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum(),
    )
}

/// Charges the billing system holds for `tenant`, by business identity.
async fn charges(sandbox: &Sandbox, tenant: &str) -> Option<BTreeMap<String, usize>> {
    let mut counts = BTreeMap::new();
    for charge in sandbox.client.charges().await.ok()? {
        if charge.tenant_id == tenant {
            *counts
                .entry(charge.identity().unwrap_or_default())
                .or_default() += 1;
        }
    }
    Some(counts)
}

fn workload(tenant: &str, seed: u64) -> Workload {
    Workload::generate(&LoadSpec {
        seed,
        tenant: tenant.to_owned(),
        customers: 4,
        plans: 1,
        events: 150,
        duplicate_share: 0.0,
        late_share: 0.0,
        out_of_window_share: 0.0,
        poison_share: 0.0,
        now_micros: now_micros(),
    })
}

/// Each customer's event ids of `tenant`, in the order `records` hold them (one partition per
/// customer, so offset order is publication order).
fn per_customer<'a>(
    records: impl Iterator<Item = (String, String)> + 'a,
) -> BTreeMap<String, Vec<String>> {
    let mut order: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (customer, event_id) in records {
        order.entry(customer).or_default().push(event_id);
    }
    order
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_tenant_is_held_in_order_while_others_are_billed_and_is_billed_once_on_resume() {
    let sandbox = Sandbox::start(backbone_sandbox::SandboxConfig::default()).await;
    let postgres = std::env::var("BACKBONE_TEST_POSTGRES_URL")
        .expect("BACKBONE_TEST_POSTGRES_URL; `make test` starts PostgreSQL");
    let mut deployment =
        Deployment::create("paused", &sandbox.url, &postgres, &registry_url()).await;
    let stamp = now_micros();
    let controls = format!("tenant-controls-{stamp}");
    for binary in backbone::stages() {
        deployment
            .settings
            .push((binary, "runtime.tenant_controls".into(), controls.clone()));
    }
    let (paused, flowing) = (format!("paused-{stamp}"), format!("flowing-{stamp}"));
    let rater = deployment.group("usage-rater");
    let billing = deployment.group("billing-sink");

    // Paused before the stages start: each reads the pauses in force before its first record.
    control(
        &deployment,
        &controls,
        &[
            "pause",
            "--tenant",
            &paused,
            "--stage",
            &rater,
            "--stage",
            &billing,
            "--reason",
            "test: held",
        ],
    )
    .await;
    let listed: Json = serde_json::from_str(
        &replay(
            &deployment,
            &["tenant", "list", "--json", "--controls-topic", &controls],
        )
        .await,
    )
    .expect("JSON");
    let stages: Vec<&str> = listed
        .as_array()
        .expect("a list")
        .iter()
        .filter(|p| p["tenant"] == paused.as_str())
        .filter_map(|p| p["stage"].as_str())
        .collect();
    assert_eq!(stages, [billing.as_str(), rater.as_str()], "{listed:#}");

    deployment.start_pipeline();
    let (held_load, flowing_load) = (workload(&paused, 11), workload(&flowing, 12));
    deployment.publish(&held_load).await;
    deployment.publish(&flowing_load).await;

    // The other tenant flows through both stages the paused one waits at.
    let flowing_billed = flowing_load.expected.billed_events;
    eventually(DEADLINE, "the flowing tenant billed", || async {
        let counts = charges(&sandbox, &flowing).await?;
        (counts.values().sum::<usize>() >= flowing_billed).then_some(())
    })
    .await;
    let events = held_load.usage.len() as u64;
    eventually(
        DEADLINE,
        "every event of the paused tenant held at the rater",
        || async { (held(&deployment, "usage-rater", &paused).await? == events).then_some(()) },
    )
    .await;
    assert_eq!(charges(&sandbox, &paused).await.expect("charges").len(), 0);

    // Resumed at the rater only: its charges reach the billing sink and wait there.
    control(
        &deployment,
        &controls,
        &["resume", "--tenant", &paused, "--stage", &rater],
    )
    .await;
    let expected = held_load.expected.billed_events;
    eventually(
        DEADLINE,
        "the paused tenant's charges held at the billing sink",
        || async {
            let at_sink = held(&deployment, "billing-sink", &paused).await?;
            let at_rater = held(&deployment, "usage-rater", &paused).await?;
            (at_sink == expected as u64 && at_rater == 0).then_some(())
        },
    )
    .await;
    assert_eq!(charges(&sandbox, &paused).await.expect("charges").len(), 0);

    // Resumed at the billing sink: every event billed, once.
    control(
        &deployment,
        &controls,
        &["resume", "--tenant", &paused, "--stage", &billing],
    )
    .await;
    eventually(DEADLINE, "the paused tenant billed", || async {
        let counts = charges(&sandbox, &paused).await?;
        (counts.values().sum::<usize>() >= expected).then_some(())
    })
    .await;
    // Everything on the charges topic consumed, so that nothing is still on its way.
    let t = deployment.topics.clone();
    let end = end_offsets_total(&deployment.kafka, &t.billing).expect("end offsets");
    await_committed(&deployment.kafka, &billing, &t.billing, end, DEADLINE).await;
    let billed = charges(&sandbox, &paused).await.expect("charges");
    assert_eq!(billed.len(), expected, "one charge per billed event");
    assert!(
        billed.values().all(|n| *n == 1),
        "no charge twice: {billed:?}"
    );
    // The gauge is refreshed every second, so it may still show the records just let go.
    eventually(DEADLINE, "nothing held at the billing sink", || async {
        (held(&deployment, "billing-sink", &paused).await? == 0).then_some(())
    })
    .await;

    // In order: the rater rated each customer's events in the order they were published.
    let codec = WireCodec::new(registry_url());
    let read_all = |topic: String| {
        let kafka = deployment.kafka.clone();
        async move {
            let count = end_offsets_total(&kafka, &topic).expect("end offsets");
            consume_until(&kafka, &topic, count as usize, DEADLINE)
                .await
                .expect("records")
        }
    };
    let mut sent = Vec::new();
    for record in read_all(t.usage.clone()).await {
        let value = record.value.as_deref().unwrap_or_default();
        let event: UsageEvent = codec
            .decode_as(value, UsageEvent::schema())
            .await
            .expect("event");
        if event.metadata.tenant_id == paused {
            sent.push((i64::from(record.partition), record.offset, event));
        }
    }
    sent.sort_by_key(|(p, o, _)| (*p, *o));
    // The rater names its source as `<tenant>/<source>/<event id>`.
    let published = sent.into_iter().map(|(_, _, e)| {
        let m = e.metadata;
        (
            e.customer_id,
            format!("{}/{}/{}", m.tenant_id, m.source, m.event_id),
        )
    });
    let mut rated = Vec::new();
    for record in read_all(t.rated.clone()).await {
        let value = record.value.as_deref().unwrap_or_default();
        let line: RatedUsage = codec
            .decode_as(value, RatedUsage::schema())
            .await
            .expect("line");
        if line.metadata.tenant_id == paused {
            rated.push((i64::from(record.partition), record.offset, line));
        }
    }
    rated.sort_by_key(|(p, o, _)| (*p, *o));
    let rated = per_customer(
        rated
            .into_iter()
            .map(|(_, _, l)| (l.customer_id, l.source_event_ids.join(","))),
    );
    let lines: std::collections::BTreeSet<&String> = rated.values().flatten().collect();
    assert_eq!(
        lines.len(),
        rated.values().map(Vec::len).sum::<usize>(),
        "each event rated once"
    );
    // Events that rate to nothing (no quantity) have no line.
    let published = per_customer(published.filter(|(_, id)| lines.contains(id)));
    assert_eq!(
        rated, published,
        "each customer's events rated in publication order"
    );
}
