//! A legal entity moves from the legacy ERP to the cloud ERP in the middle of a month: the
//! ERP sink routes each posting by its entity and posting date, the legacy ERP by file drop
//! (its own layout and account codes) and acknowledgement file, the cloud ERP by its journal
//! API. A file the legacy ERP rejects is dead-lettered with its answer and, once the mapping
//! is fixed, replayed; a sink that stops between a drop and its answer drops nothing twice.
//! Counted per posting across both ERPs: each is in exactly one, once. Then usage of a Berlin
//! customer half an hour either side of the cutover's midnight, through the whole pipeline
//! with the legacy ERP answering on its own and erp-sink killed after a drop: drift between the
//! rated lines and both ERPs' receivables is zero.

#[path = "support/backbone.rs"]
mod backbone;
#[path = "support/berlin.rs"]
mod berlin;
#[path = "support/sinks.rs"]
mod sinks;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use backbone::Deployment;
use backbone_calendar::{days_from_civil, now_ms};
use backbone_drift::books::Check;
use backbone_erp_sink::legacy::LegacySettings;
use backbone_erp_sink::route::{ErpTarget, Route};
use backbone_erp_sink::{ErpSettings, ErpSink};
use backbone_sandbox::{LegacyErp, LegacyErpSettings, SandboxConfig};
use backbone_schemas::types::{Amount, JournalBatch, LedgerPosting, PostingLine};
use backbone_schemas::WireCodec;
use backbone_sink::http::JsonApi;
use backbone_sink::metrics::names::RETRIES;
use backbone_sink::SinkSummary;
use backbone_testkit::{consume_until, end_offsets_total, shared_settings};
use sinks::{
    eventually, metadata, publish, read_all, registry_url, RunningSink, Sandbox, SinkTopics,
};

const DEADLINE: Duration = Duration::from_secs(120);

/// Berlin's books move to the cloud ERP from this day of November 2026 on.
const CUTOVER_DAY: u32 = 16;

/// A posting of `value` euros for `entity`, dated `day` November 2026.
fn posting(i: usize, entity: &str, day: u32, value: &str) -> LedgerPosting {
    let amount: Amount = value.parse().expect("amount");
    let line = |n: i32, account: &str, debit: Amount, credit: Amount| PostingLine {
        line_number: n,
        gl_account: account.to_owned(),
        debit,
        credit,
        currency: "EUR".to_owned(),
        description: format!("usage {i}; day {day}"),
        source_rating_id: None,
        customer_id: None,
    };
    let rating_id = format!("rt-{entity}-{i:03}");
    LedgerPosting {
        metadata: metadata("acme", &rating_id, "backbone.erp.ledger_posting"),
        rating_id,
        legal_entity_id: entity.to_owned(),
        customer_id: "c-1".to_owned(),
        subscription_id: "s-1".to_owned(),
        charge_id: "api-calls".to_owned(),
        mapping_id: "default".to_owned(),
        posting_date: days_from_civil(2026, 11, day),
        period_start: days_from_civil(2026, 11, 1),
        period_end: days_from_civil(2026, 11, 30),
        currency: "EUR".to_owned(),
        amount,
        lines: vec![
            line(1, "1200-receivables", amount, Amount::ZERO),
            line(2, "4000-revenue", Amount::ZERO, amount),
        ],
    }
}

/// The legacy ERP's two directories under `root`.
fn exchange(root: &Path) -> (PathBuf, PathBuf) {
    (root.join("drop"), root.join("acks"))
}

/// The sink, Berlin on the legacy ERP until the cutover, `revenue_code` the legacy code its
/// revenue account is mapped to.
async fn erp_sink(
    topics: &SinkTopics,
    sandbox: &Sandbox,
    root: &Path,
    revenue_code: &str,
) -> ErpSink {
    let (drop_dir, ack_dir) = exchange(root);
    let route = |erp, day| Route {
        legal_entity_id: "le-berlin".to_owned(),
        erp,
        effective_from: days_from_civil(2026, 11, day),
    };
    let settings = ErpSettings {
        topic: topics.input.clone(),
        window: Duration::from_secs(2),
        grace: Duration::from_secs(1),
        journal_batches_topic: format!("{}-journal-batches", topics.input),
        routes: vec![
            route(ErpTarget::Legacy, 1),
            route(ErpTarget::Cloud, CUTOVER_DAY),
        ],
        legacy: Some(LegacySettings {
            drop_dir,
            ack_dir,
            poll: Duration::from_millis(100),
            accounts: BTreeMap::from([
                ("1200-receivables".to_owned(), "140000".to_owned()),
                ("4000-revenue".to_owned(), revenue_code.to_owned()),
            ]),
        }),
        ..ErpSettings::default()
    };
    let api = JsonApi::connect(&sandbox.destination())
        .await
        .expect("ERP client");
    ErpSink::new(settings, api).expect("settings")
}

/// Batch files waiting in the drop directory.
fn waiting_files(root: &Path) -> Vec<String> {
    let (drop_dir, _) = exchange(root);
    let Ok(entries) = std::fs::read_dir(drop_dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".csv") && !name.starts_with('.'))
        .collect();
    names.sort();
    names
}

/// Per rating id, the lines the cloud ERP holds of it and the rows the legacy ERP holds.
async fn held_per_posting(
    sandbox: &Sandbox,
    legacy: &LegacyErp,
) -> BTreeMap<String, (usize, usize)> {
    let mut held: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for batch in sandbox.client.batches().await.expect("cloud batches") {
        for line in batch.lines {
            held.entry(line.reference.expect("a reference"))
                .or_default()
                .0 += 1;
        }
    }
    for batch in legacy.batches() {
        for row in batch.rows {
            held.entry(row.reference).or_default().1 += 1;
        }
    }
    held
}

#[tokio::test]
async fn a_mid_month_cutover_posts_each_posting_to_one_erp_once() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await;
    let topics = SinkTopics::create("erp-cutover", 2).await;
    let root = std::env::temp_dir()
        .join("backbone-legacy-erp")
        .join(&topics.group);
    let root = root.as_path();
    let (drop_dir, ack_dir) = exchange(root);
    let legacy = LegacyErp::new(LegacyErpSettings {
        drop_dir: drop_dir.clone(),
        ack_dir,
        poll: Duration::from_millis(100),
        accounts: ["140000", "800000"].map(String::from).into(),
        closed_periods: BTreeSet::new(),
        export_file: None,
    });
    let codec = WireCodec::new(registry_url());

    // Berlin from the 10th to the 21st, the cutover on the 16th; the US entity has no route
    // and stays on the cloud ERP. Two postings come twice, as a producer's retry sends them.
    let mut values = Vec::new();
    let mut expected: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for i in 0..12 {
        let day = 10 + u32::try_from(i).expect("day");
        let p = posting(i, "le-berlin", day, &format!("{i}.25"));
        let place = if day < CUTOVER_DAY { (0, 2) } else { (2, 0) };
        expected.insert(p.rating_id.clone(), place);
        values.push(("acme:le-berlin".to_owned(), p, Some(now_ms())));
    }
    for i in 0..3 {
        let p = posting(100 + i, "le-us", 12, "1.50");
        expected.insert(p.rating_id.clone(), (2, 0));
        values.push(("acme:le-us".to_owned(), p, Some(now_ms())));
    }
    values.push(values[2].clone());
    values.push(values[8].clone());
    publish(&codec, &topics.input, &values).await;

    // The mapping sends revenue to 800001, which the legacy ERP's chart lacks.
    let sink = RunningSink::start(
        erp_sink(&topics, &sandbox, root, "800001").await,
        topics.settings(),
    );
    // The sink asks for the answer a few times before the ERP imports the file.
    eventually(DEADLINE, "the sink awaiting the legacy ERP", || async {
        let polls = sink.metric(RETRIES, Some(("reason", "awaiting")));
        (polls >= 5.0 && !waiting_files(root).is_empty()).then_some(())
    })
    .await;
    assert_eq!(
        legacy.import_waiting().expect("import"),
        1,
        "one file for the legacy ERP"
    );
    let dlq = format!("{}.dlq", topics.input);
    let dead = consume_until(&shared_settings(), &dlq, 7, DEADLINE)
        .await
        .expect("the rejected file's postings dead-lettered");
    assert!(
        dead.iter().all(|letter| letter
            .header("backbone.dlq.message")
            .is_some_and(|m| m.contains("unknown_account") && m.contains("800001"))),
        "the legacy ERP's answer travels with each dead letter"
    );
    assert!(
        legacy.batches().is_empty(),
        "the rejected file left nothing in the legacy books"
    );
    assert_eq!(
        end_offsets_total(&shared_settings(), &dlq).expect("dead letters"),
        7,
        "six postings and one copy dead-lettered, nothing else"
    );
    assert_eq!(
        std::fs::read_dir(drop_dir.join("rejected"))
            .expect("rejected files")
            .count(),
        1
    );
    awaited_without_tripping(sink.stop().await);

    // Fixed mapping; the dead letters replayed. The sink stops after dropping the file and
    // before the answer; the next instance takes the answer.
    let sink = RunningSink::start(
        erp_sink(&topics, &sandbox, root, "800000").await,
        topics.settings(),
    );
    replay(&dlq).await;
    eventually(DEADLINE, "the replayed postings' batch file", || async {
        (!waiting_files(root).is_empty()).then_some(())
    })
    .await;
    awaited_without_tripping(sink.stop().await);
    let sink = RunningSink::start(
        erp_sink(&topics, &sandbox, root, "800000").await,
        topics.settings(),
    );
    assert_eq!(legacy.import_waiting().expect("import"), 1);
    let held = eventually(DEADLINE, "every posting in one ERP", || async {
        let held = held_per_posting(&sandbox, &legacy).await;
        (held.len() >= expected.len() && waiting_files(root).is_empty()).then_some(held)
    })
    .await;
    assert_eq!(held, expected, "each posting in the ERP of its date, once");
    let books = legacy.batches();
    assert_eq!(books.len(), 1, "one accepted file: {books:?}");
    // The sink has read the acknowledgement once it announces the batch.
    let journal = format!("{}-journal-batches", topics.input);
    eventually(DEADLINE, "the legacy batch announced", || async {
        let announced = read_all::<JournalBatch>(&codec, &journal).await;
        announced
            .iter()
            .any(|b| b.batch_id == books[0].batch_id)
            .then_some(())
    })
    .await;
    awaited_without_tripping(sink.stop().await);
    let accounts: BTreeSet<&str> = books[0].rows.iter().map(|r| r.account.as_str()).collect();
    assert_eq!(
        accounts,
        BTreeSet::from(["140000", "800000"]),
        "legacy account codes"
    );

    // Both ERPs' batches are announced as posted, the legacy one with the canonical accounts.
    let mut announced: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for batch in read_all::<JournalBatch>(&codec, &journal).await {
        let refs = batch
            .lines
            .iter()
            .filter_map(|l| l.source_rating_id.clone())
            .collect();
        announced.insert(batch.batch_id, refs);
    }
    let mut posted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for batch in sandbox.client.batches().await.expect("cloud batches") {
        let refs = batch
            .lines
            .into_iter()
            .filter_map(|l| l.reference)
            .collect();
        posted.insert(batch.external_id, refs);
    }
    posted.insert(
        books[0].batch_id.clone(),
        books[0].rows.iter().map(|r| r.reference.clone()).collect(),
    );
    assert_eq!(
        announced, posted,
        "what both ERPs hold is announced, batch by batch"
    );
}

/// A sink awaiting the legacy ERP's answers did not count them as the destination failing.
fn awaited_without_tripping(summary: SinkSummary) {
    assert_eq!(summary.circuit_opened, 0, "{summary:?}");
}

/// Replays every dead letter on `dlq` with the `replay` tool.
async fn replay(dlq: &str) {
    let binary = Path::new(env!("CARGO_BIN_EXE_tally")).with_file_name("replay");
    let output = tokio::process::Command::new(binary)
        .args(["--bootstrap-servers", &shared_settings().bootstrap_servers])
        .args(["--registry-url", &registry_url()])
        .args(["run", dlq, "--operator", "test-operator", "--json"])
        .env_remove("BACKBONE__KAFKA__BOOTSTRAP_SERVERS")
        .env_remove("BACKBONE__SCHEMA_REGISTRY__URL")
        .kill_on_drop(true)
        .output()
        .await
        .expect("replay runs");
    assert!(output.status.success(), "replay failed: {output:?}");
}

/// The sandbox's legacy ERP answering on its own every `poll`, exporting its journal; its
/// chart holds the codes the mapping below sends.
fn legacy_erp_config(root: &Path) -> backbone_sandbox::LegacyErpSettings {
    let (drop_dir, ack_dir) = exchange(root);
    LegacyErpSettings {
        drop_dir,
        ack_dir,
        poll: Duration::from_millis(500),
        accounts: ["140000", "800000"].map(String::from).into(),
        closed_periods: BTreeSet::new(),
        export_file: Some(root.join("journal.csv")),
    }
}

/// The mapping table of the GL accounts of `berlin::master_data` to the legacy codes.
fn legacy_accounts() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("1200".to_owned(), "140000".to_owned()),
        ("4000".to_owned(), "800000".to_owned()),
    ])
}

#[tokio::test]
async fn drift_is_zero_across_a_cutover_at_midnight_in_berlin() {
    let codec = WireCodec::new(registry_url());
    let root = std::env::temp_dir()
        .join("backbone-legacy-erp")
        .join(backbone_testkit::unique_group("cutover-drift"));
    let sandbox = Sandbox::start(SandboxConfig {
        legacy_erp: Some(legacy_erp_config(&root)),
        ..SandboxConfig::default()
    })
    .await;
    let mut deployment = Deployment::create(
        "erp-cutover",
        &sandbox.url,
        "postgres://unused",
        &registry_url(),
    )
    .await;
    // November's usage is weeks old: the rater takes it.
    deployment.settings.push((
        "usage-rater",
        "processor.late_window".into(),
        "3650d".into(),
    ));
    for route in ["analytics", "crm"] {
        deployment
            .settings
            .push(("fanout", format!("processor.routes.{route}"), String::new()));
    }
    let (drop_dir, ack_dir) = exchange(&root);
    let accounts: Vec<String> = legacy_accounts()
        .iter()
        .map(|(account, code)| format!("\"{account}\" = \"{code}\""))
        .collect();
    for (key, value) in [
        ("sink.window", "2s".to_owned()),
        ("sink.grace", "1s".to_owned()),
        (
            "sink.routes",
            format!(
                "[{{ legal_entity_id = \"le-berlin\", erp = \"legacy\", effective_from = \"2020-01-01\" }}, \
                 {{ legal_entity_id = \"le-berlin\", erp = \"cloud\", effective_from = \"2026-11-{CUTOVER_DAY}\" }}]"
            ),
        ),
        (
            "sink.legacy",
            format!(
                "{{ drop_dir = {:?}, ack_dir = {:?}, poll = \"200ms\", accounts = {{ {} }} }}",
                drop_dir.display().to_string(),
                ack_dir.display().to_string(),
                accounts.join(", ")
            ),
        ),
    ] {
        deployment.settings.push(("erp-sink", key.into(), value));
    }
    let grace = berlin::grace_closing_in(
        berlin::micros("2026-11-30T23:00:00Z"),
        Duration::from_secs(30),
    );
    deployment
        .settings
        .push(("period-close", "processor.grace".into(), grace));
    berlin::master_data(&deployment, &codec).await;
    // Berlin is UTC+1 in November: 23:30 on the 15th is the legacy ERP's, 00:30 on the 16th
    // the cloud ERP's.
    berlin::publish_usage(
        &deployment,
        &codec,
        &[
            ("e-before", "2026-11-15T22:30:00Z", "10"),
            ("e-after", "2026-11-15T23:30:00Z", "4"),
        ],
    )
    .await;
    // November ends at midnight in Berlin, 23:00 UTC on the 30th; it closes half a minute
    // from now, with both calls booked, and its invoice goes to the cloud ERP.
    for stage in [
        "usage-validator",
        "enricher",
        "usage-rater",
        "fanout",
        "erp-sink",
        "period-close",
        "invoice-sink",
    ] {
        deployment.start(stage);
    }
    // Killed once its file is dropped: waiting for the legacy ERP, or answered already (the
    // ERP reads its directory every half second); either way the posting is in its books
    // once.
    eventually(DEADLINE, "the pre-cutover batch file", || async {
        let answered =
            std::fs::read_dir(exchange(&root).1).is_ok_and(|mut acks| acks.next().is_some());
        (answered || !waiting_files(&root).is_empty()).then_some(())
    })
    .await;
    deployment.kill("erp-sink");
    deployment.start("erp-sink");

    let mut config = deployment.drift_config();
    config.drift.legacy_erp = Some(backbone_drift::legacy_erp::LegacyErpSettings {
        journal_file: root.join("journal.csv"),
        accounts: legacy_accounts(),
    });
    let euros = |text: &str| text.parse::<Amount>().expect("amount").unscaled();
    // 10 calls at 0.50 and 4 calls at 0.50, written out here: the rated lines against both
    // ERPs' receivables, against November's invoice, and the invoice against the ERP's.
    let checks = [
        Check::RatedVsErp,
        Check::RatedVsInvoiced,
        Check::InvoicedVsErp,
    ];
    let berlin_november = eventually(
        DEADLINE,
        "the receivables of both ERPs and the invoice",
        || async {
            let lines = backbone_drift::reconcile_once(&config).await.ok()?;
            let ours: BTreeMap<Check, (i128, i128)> = lines
                .into_iter()
                .filter(|l| l.key.legal_entity == "le-berlin" && l.key.period == "2026-11")
                .filter(|l| checks.contains(&l.key.check))
                .map(|l| (l.key.check, (l.expected, l.observed)))
                .collect();
            (ours.len() == checks.len()
                && ours.values().all(|(_, observed)| *observed >= euros("7")))
            .then_some(ours)
        },
    )
    .await;
    assert_eq!(
        berlin_november,
        checks
            .into_iter()
            .map(|c| (c, (euros("7"), euros("7"))))
            .collect(),
        "drift zero across the cutover"
    );
    let cloud: Vec<(String, String)> = sandbox
        .client
        .batches()
        .await
        .expect("cloud batches")
        .iter()
        .flat_map(|b| b.lines.iter())
        .filter(|l| l.gl_account == "1200")
        .map(|l| (l.debit.clone(), l.credit.clone()))
        .collect();
    assert_eq!(
        cloud.len(),
        1,
        "one receivable line in the cloud ERP: {cloud:?}"
    );
    assert_eq!(euros(&cloud[0].0), euros("2"), "the call after midnight");
    let legacy = std::fs::read_to_string(root.join("journal.csv")).expect("legacy journal");
    let receivables: Vec<&str> = legacy
        .lines()
        .filter(|row| row.contains(";140000;"))
        .collect();
    assert_eq!(
        receivables.len(),
        1,
        "one receivable row in the legacy ERP: {legacy}"
    );
    assert!(
        receivables[0].contains(";202611;140000;D;5.000000;EUR;"),
        "the call before midnight: {legacy}"
    );
}
