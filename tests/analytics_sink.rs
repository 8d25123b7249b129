//! The analytics sink against a real PostgreSQL server (`make test` starts one and exports
//! its URL in `BACKBONE_TEST_POSTGRES_URL`): it creates and migrates its schema, loads each
//! fact once, keeps the newest revision, and a replay changes no row; over TLS it verifies the
//! server (the test server serves TLS with the certificate in `BACKBONE_TEST_POSTGRES_CA`).

#[path = "support/sinks.rs"]
mod support;

use std::collections::HashMap;
use std::time::Duration;

use backbone_analytics_sink::{AnalyticsSettings, AnalyticsSink};
use backbone_schemas::types::{AnalyticsFact, DeliveryOutcome, FactType};
use backbone_schemas::WireCodec;
use backbone_sink::app::SinkApp;
use backbone_sink::settings::split_password;
use backbone_sink::DestinationSettings;
use support::{metadata, publish, registry_url, results, RunningSink, SinkTopics};
use tokio_postgres::NoTls;

const DEADLINE: Duration = Duration::from_secs(120);

fn postgres_url() -> String {
    std::env::var("BACKBONE_TEST_POSTGRES_URL").expect(
        "BACKBONE_TEST_POSTGRES_URL names the test PostgreSQL server; `make test` starts one",
    )
}

/// The test server's URL without its password, which goes in the credential as deployed.
fn destination() -> DestinationSettings {
    let (url, password) = split_password(&postgres_url());
    DestinationSettings {
        url,
        credential: password.unwrap_or_default(),
        ..DestinationSettings::default()
    }
}

fn fact(id: &str, revision: i64, amount: &str) -> AnalyticsFact {
    AnalyticsFact {
        metadata: metadata(
            "acme",
            &format!("{id}@{revision}"),
            "backbone.analytics.fact",
        ),
        fact_id: id.to_owned(),
        fact_type: FactType::RatedUsage,
        source_revision: revision,
        event_time: 1_790_000_000_000_000,
        fact_date: 20_716,
        customer_id: "c-1".to_owned(),
        legal_entity_id: Some("le-eu".to_owned()),
        subscription_id: Some("s-1".to_owned()),
        product_id: None,
        charge_id: Some("api-calls".to_owned()),
        meter_id: Some("calls".to_owned()),
        quantity: Some("12".parse().expect("quantity")),
        amount: Some(amount.parse().expect("amount")),
        currency: Some("EUR".to_owned()),
        attributes: HashMap::from([("region".to_owned(), "eu-west".to_owned())]),
    }
}

/// The analytics sink on `topics`' input, loading into `schema`.
fn analytics_sink(topics: &SinkTopics, schema: &str) -> AnalyticsSink {
    let settings = AnalyticsSettings {
        topic: topics.input.clone(),
        schema: schema.to_owned(),
    };
    AnalyticsSink::new(settings, &destination()).expect("sink")
}

async fn connect() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&postgres_url(), NoTls)
        .await
        .expect("connect to the test PostgreSQL");
    tokio::spawn(connection);
    client
}

#[tokio::test]
async fn facts_load_once_newest_revision_wins_and_a_replay_changes_nothing() {
    let topics = SinkTopics::create("analytics", 2).await;
    let schema = format!("t_{}", topics.group.replace(['-', '.'], "_")).to_lowercase();
    let codec = WireCodec::new(registry_url());
    let mut values = Vec::new();
    for i in 0..40 {
        values.push((
            "acme:c-1".to_owned(),
            fact(&format!("fact-{i}"), 1, &format!("{i}.5")),
            None,
        ));
    }
    // A window aggregate revised twice, its revisions arriving out of order.
    for (revision, amount) in [(1, "10"), (3, "30"), (2, "20")] {
        values.push((
            "acme:c-1".to_owned(),
            fact("window-1", revision, amount),
            None,
        ));
    }
    publish(&codec, &topics.input, &values).await;
    let settings = AnalyticsSettings {
        topic: topics.input.clone(),
        schema: schema.clone(),
    };
    let sink = RunningSink::start(
        AnalyticsSink::new(settings.clone(), &destination()).expect("sink"),
        topics.settings(),
    );
    results(&codec, &topics.results, values.len()).await;
    let summary = sink.stop().await;
    assert_eq!(summary.rejected, 0, "{summary:?}");

    let db = connect().await;
    let migrated: i32 = db
        .query_one(
            &format!("SELECT max(version) FROM {schema}.schema_migrations"),
            &[],
        )
        .await
        .expect("migrations table")
        .get(0);
    assert_eq!(migrated, backbone_analytics_sink::schema::latest_version());
    let rows: i64 = db
        .query_one(&format!("SELECT count(*) FROM {schema}.facts"), &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 41, "one row per fact");
    let window = db
        .query_one(
            &format!("SELECT source_revision, amount::text FROM {schema}.facts WHERE fact_id = 'window-1'"),
            &[],
        )
        .await
        .expect("the window row");
    assert_eq!(window.get::<_, i64>(0), 3, "the newest revision wins");
    assert_eq!(window.get::<_, String>(1), "30.000000");
    let total: String = db
        .query_one(
            &format!("SELECT sum(amount)::text FROM {schema}.facts WHERE fact_id LIKE 'fact-%'"),
            &[],
        )
        .await
        .expect("sum")
        .get(0);
    // 0.5 + 1.5 + ... + 39.5
    assert_eq!(total, "800.000000");
    let loaded_before: String = db
        .query_one(
            &format!("SELECT max(loaded_at)::text FROM {schema}.facts"),
            &[],
        )
        .await
        .expect("loaded_at")
        .get(0);

    // A new deployment (its own ledger) reads everything again: the table already holds each
    // fact, so no row changes.
    let mut fresh = topics.settings();
    fresh.group_id = Some(format!("{}-fresh", topics.group));
    let replay = RunningSink::start(
        AnalyticsSink::new(settings, &destination()).expect("sink"),
        fresh,
    );
    results(&codec, &topics.results, 2 * values.len()).await;
    let replay_summary = replay.stop().await;
    assert_eq!(replay_summary.delivered, 0, "{replay_summary:?}");
    assert_eq!(replay_summary.already_delivered, 43, "{replay_summary:?}");
    let loaded_after: String = db
        .query_one(
            &format!("SELECT max(loaded_at)::text FROM {schema}.facts"),
            &[],
        )
        .await
        .expect("loaded_at")
        .get(0);
    assert_eq!(loaded_before, loaded_after, "no row was rewritten");
}

/// A row PostgreSQL refuses for its data (a NUL character in a text column) is rejected on its
/// own: the rest of its batch, sent pipelined in one transaction that the refusal aborts, is
/// loaded row by row after it.
#[tokio::test]
async fn a_row_the_database_refuses_is_rejected_alone_and_its_batch_still_loads() {
    let topics = SinkTopics::create("analytics-refused", 1).await;
    let schema = format!("t_{}", topics.group.replace(['-', '.'], "_")).to_lowercase();
    let codec = WireCodec::new(registry_url());
    let mut values = Vec::new();
    for i in 0..30 {
        let mut fact = fact(&format!("fact-{i}"), 1, "1");
        if i == 17 {
            fact.meter_id = Some("calls\0".to_owned());
        }
        values.push(("acme:c-1".to_owned(), fact, None));
    }
    publish(&codec, &topics.input, &values).await;
    let sink = RunningSink::start(analytics_sink(&topics, &schema), topics.settings());
    let answers = results(&codec, &topics.results, values.len()).await;
    let summary = sink.stop().await;
    assert_eq!(summary.rejected, 1, "{summary:?}");
    assert_eq!(summary.delivered, 29, "{summary:?}");
    let refused: Vec<_> = answers
        .iter()
        .filter(|r| r.outcome == DeliveryOutcome::Rejected)
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].delivery_key, "fact-17@1");
    assert!(
        refused[0]
            .error_code
            .as_deref()
            .is_some_and(|code| code.starts_with("sqlstate_22")),
        "{:?}",
        refused[0]
    );
    let db = connect().await;
    let rows: i64 = db
        .query_one(&format!("SELECT count(*) FROM {schema}.facts"), &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 29, "every row but the refused one");
}

#[tokio::test]
async fn a_fact_without_an_id_is_dead_lettered_on_arrival() {
    let topics = SinkTopics::create("analytics-keyless", 1).await;
    let schema = format!("t_{}", topics.group.replace(['-', '.'], "_")).to_lowercase();
    let codec = WireCodec::new(registry_url());
    let values = vec![
        ("acme:c-1".to_owned(), fact("", 1, "1"), None),
        ("acme:c-1".to_owned(), fact("fact-1", 1, "2"), None),
    ];
    publish(&codec, &topics.input, &values).await;
    let sink = RunningSink::start(analytics_sink(&topics, &schema), topics.settings());
    results(&codec, &topics.results, 1).await;
    // Both facts settled (committed), then the dead-letter topic read to its end.
    let kafka = backbone_testkit::shared_settings();
    backbone_testkit::await_committed(&kafka, &topics.group, &topics.input, 2, DEADLINE).await;
    let summary = sink.stop().await;
    let dlq = format!("{}.dlq", topics.input);
    let end = backbone_testkit::end_offsets_total(&kafka, &dlq).expect("end");
    let letters =
        backbone_testkit::consume_until(&kafka, &dlq, usize::try_from(end).expect("end"), DEADLINE)
            .await
            .expect("dead letters");
    assert_eq!(
        backbone_testkit::dead_letter_reasons(&letters),
        std::collections::BTreeMap::from([(0, "missing_idempotency_key".to_owned())]),
        "{summary:?}"
    );
    let rows: i64 = connect()
        .await
        .query_one(&format!("SELECT count(*) FROM {schema}.facts"), &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 1, "only the fact with an id is loaded");
}

#[tokio::test]
async fn over_tls_facts_load_with_the_server_verified_and_an_unverifiable_one_stops_the_start() {
    let ca = std::env::var("BACKBONE_TEST_POSTGRES_CA").expect(
        "BACKBONE_TEST_POSTGRES_CA names the test server's certificate; `make test` sets it",
    );
    let topics = SinkTopics::create("analytics-tls", 1).await;
    let schema = format!("t_{}", topics.group.replace(['-', '.'], "_")).to_lowercase();
    let settings = AnalyticsSettings {
        topic: topics.input.clone(),
        schema: schema.clone(),
    };
    let plain = destination();
    let verified = DestinationSettings {
        url: format!("{}?sslmode=verify-full", plain.url),
        ca_file: Some(ca.clone().into()),
        ..destination()
    };

    let unverifiable = DestinationSettings {
        ca_file: None,
        ..verified.clone()
    };
    let err = <AnalyticsSink as SinkApp>::build(settings.clone(), &unverifiable)
        .await
        .expect_err("a server certificate no root vouches for")
        .to_string();
    for part in ["destination.url", "destination.ca_file", "UnknownIssuer"] {
        assert!(err.contains(part), "`{part}` missing from: {err}");
    }
    let ca_without_tls = DestinationSettings {
        ca_file: Some(ca.into()),
        ..destination()
    };
    let err = AnalyticsSink::new(settings.clone(), &ca_without_tls)
        .expect_err("a CA file with a plain-text URL")
        .to_string();
    assert!(
        err.contains("destination.ca_file") && err.contains("sslmode"),
        "{err}"
    );

    let codec = WireCodec::new(registry_url());
    let values: Vec<_> = (0..5)
        .map(|i| {
            (
                "acme:c-1".to_owned(),
                fact(&format!("tls-{i}"), 1, "1"),
                None,
            )
        })
        .collect();
    publish(&codec, &topics.input, &values).await;
    let sink = <AnalyticsSink as SinkApp>::build(settings, &verified)
        .await
        .expect("a verified connection");
    let running = RunningSink::start(sink, topics.settings());
    results(&codec, &topics.results, values.len()).await;
    // Only this test's sink connects over TLS: an encrypted sink session is its.
    let db = connect().await;
    let encrypted: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE s.ssl AND a.application_name = 'backbone-analytics-sink'",
            &[],
        )
        .await
        .expect("sessions")
        .get(0);
    let summary = running.stop().await;
    assert_eq!(summary.delivered, 5, "{summary:?}");
    assert!(encrypted >= 1, "the sink's session is encrypted");
    let rows: i64 = db
        .query_one(&format!("SELECT count(*) FROM {schema}.facts"), &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 5);
}
