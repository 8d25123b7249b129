//! The ingest gateway on the real broker and registry: CloudEvents become usage records keyed
//! and enveloped as the contract says, each bad input is refused with its own status and reason
//! while the rest of its batch goes through, keys are checked and limits applied, and an event
//! the broker did not acknowledge is never answered 202.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use backbone_core::schema_registry::SchemaRegistrySettings;
use backbone_core::KafkaSettings;
use backbone_ingest::keys::{self, NewKey};
use backbone_ingest::{IngestConfig, IngestSettings};
use backbone_registry::{LocalRegistry, RegistryConfig};
use backbone_schemas::types::{Contract, UsageEvent};
use backbone_schemas::WireCodec;
use backbone_testkit::{
    consume_until, create_topic, end_offsets_total, shared_settings, unique_topic, KafkaBroker,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const USAGE: &str = "backbone.usage.recorded";
const BATCH: &str = "application/cloudevents-batch+json";
const SINGLE: &str = "application/cloudevents+json";
const DEADLINE: Duration = Duration::from_secs(60);

/// A gateway serving in this process, with its own topic, registry and keys file.
struct Running {
    url: String,
    topic: String,
    keys_file: PathBuf,
    codec: WireCodec,
    _registry: LocalRegistry,
    stop: Option<oneshot::Sender<()>>,
    http: reqwest::Client,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn start(kafka: KafkaSettings, settings: IngestSettings) -> Running {
    start_asking(kafka, settings, None).await
}

/// [`start`], the gateway asking the registry at `registry_url` instead of the one the test
/// registered the contract with.
async fn start_asking(
    kafka: KafkaSettings,
    settings: IngestSettings,
    registry_url: Option<&str>,
) -> Running {
    let registry = LocalRegistry::start(&RegistryConfig::ephemeral(
        kafka.clone(),
        &unique_topic("schemas"),
    ))
    .await
    .expect("registry");
    let codec = WireCodec::new(registry.url());
    let topic = unique_topic("usage.events");
    create_topic(&kafka, &topic, 3).await.expect("topic");
    codec
        .contract_id::<UsageEvent>(&format!("{topic}-value"))
        .await
        .expect("contract registered");
    let keys_file = std::env::temp_dir()
        .join("backbone-ingest")
        .join(format!("{topic}.keys.jsonl"));
    let config = IngestConfig {
        kafka,
        schema_registry: SchemaRegistrySettings::at(registry_url.unwrap_or(registry.url())),
        ingest: IngestSettings {
            keys_file: keys_file.clone(),
            keys_reload_interval: Duration::from_millis(100),
            topic_names: BTreeMap::from([("usage.events".to_owned(), topic.clone())]),
            ..settings
        },
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let (stop, stopped) = oneshot::channel::<()>();
    let access = config.schema_registry.access().expect("access");
    tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        backbone_ingest::serve(&config, access, listener, shutdown)
            .await
            .expect("gateway");
    });
    Running {
        url,
        topic,
        keys_file,
        codec,
        _registry: registry,
        stop: Some(stop),
        http: reqwest::Client::new(),
    }
}

impl Running {
    fn key(&self, tenant: &str, types: &[&str], rate: Option<f64>, quota: Option<u64>) -> String {
        let new = NewKey {
            tenant: tenant.to_owned(),
            event_types: types.iter().map(|t| (*t).to_owned()).collect(),
            rate_per_second: rate,
            daily_quota: quota,
        };
        keys::create(&self.keys_file, new, 0).expect("key").1
    }

    /// Sends `body` and waits for the gateway to know `token` (its keys file is read again
    /// within 100 ms of a change).
    async fn send(
        &self,
        token: &str,
        content_type: &str,
        body: &str,
    ) -> (StatusCode, Option<String>, Value) {
        let response = self
            .http
            .post(format!("{}/v1/events", self.url))
            .bearer_auth(token)
            .header("content-type", content_type)
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .body(body.to_owned())
            .send()
            .await
            .expect("an answer");
        let status = response.status();
        let retry = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response.json().await.unwrap_or(Value::Null);
        (status, retry, body)
    }

    /// Sends until the answer is not 401: a key just written is known once the file is read.
    async fn send_known(
        &self,
        token: &str,
        content_type: &str,
        body: &str,
    ) -> (StatusCode, Option<String>, Value) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let answer = self.send(token, content_type, body).await;
            if answer.0 != StatusCode::UNAUTHORIZED || Instant::now() > deadline {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every record on the topic, read to its end.
    async fn records(&self, kafka: &KafkaSettings) -> Vec<(String, UsageEvent, Option<String>)> {
        let total = end_offsets_total(kafka, &self.topic).expect("end offsets");
        let records = consume_until(kafka, &self.topic, total as usize, DEADLINE)
            .await
            .expect("records");
        let mut usage = Vec::new();
        for record in records {
            let value: UsageEvent = self
                .codec
                .decode_as(
                    record.value.as_deref().expect("value"),
                    UsageEvent::schema(),
                )
                .await
                .expect("a usage event");
            let key = String::from_utf8(record.key.clone().expect("key")).expect("text key");
            usage.push((key, value, record.header("traceparent")));
        }
        usage
    }
}

fn event(id: &str, customer: &str, quantity: &str) -> Value {
    json!({
        "specversion": "1.0",
        "id": id,
        "source": "partner-api",
        "type": USAGE,
        "time": "2026-12-05T01:30:00+01:00",
        "datacontenttype": "application/json",
        "data": {"customer_id": customer, "meter_id": "api_calls", "quantity": quantity, "unit": "call"}
    })
}

fn reasons(body: &Value) -> Vec<(String, String)> {
    body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            let status = r["status"].as_str().unwrap_or_default();
            let reason = r["reason"].as_str().unwrap_or(status);
            (
                reason.to_owned(),
                r["field"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn cloudevents_become_usage_records_and_each_bad_input_is_refused_alone() {
    let kafka = shared_settings();
    let gateway = start(
        kafka.clone(),
        IngestSettings {
            max_batch_events: 20,
            burst: 20,
            ..IngestSettings::default()
        },
    )
    .await;
    let token = gateway.key("demo", &[USAGE], None, None);

    // One event, then a batch whose first event is the same fact sent again.
    let one = event("e-1", "c-1", "2.5").to_string();
    let (status, _, body) = gateway.send_known(&token, SINGLE, &one).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let batch = json!([
        event("e-1", "c-1", "2.5"),
        event("e-2", "c-2", "1"),
        event("e-3", "c-1", "0.000000001")
    ]);
    let (status, _, body) = gateway.send(&token, BATCH, &batch.to_string()).await;
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (StatusCode::ACCEPTED, Some(3)),
        "{body}"
    );

    // One batch holding a valid event and every kind of bad one.
    let mut wrong_type = event("bad-1", "c-1", "1");
    wrong_type["data"]["meter_id"] = json!(7);
    let mut missing = event("bad-2", "c-1", "1");
    missing["data"]
        .as_object_mut()
        .expect("data")
        .remove("unit");
    let out_of_range = event("bad-3", "c-1", "1000000000000000.5");
    let mut unknown_type = event("bad-4", "c-1", "1");
    unknown_type["type"] = json!("backbone.usage.misspelt");
    let mut other_tenant = event("bad-5", "c-1", "1");
    other_tenant["tenantid"] = json!("globex");
    let mut no_time = event("bad-6", "c-1", "1");
    no_time.as_object_mut().expect("event").remove("time");
    let mixed = json!([
        wrong_type,
        missing,
        out_of_range,
        unknown_type,
        other_tenant,
        no_time,
        event("e-4", "c-3", "4")
    ]);
    let (status, _, body) = gateway.send(&token, BATCH, &mixed.to_string()).await;
    assert_eq!(status, StatusCode::MULTI_STATUS, "{body}");
    let expected = [
        ("wrong_type", "data.meter_id"),
        ("missing_field", "data.unit"),
        ("decimal_out_of_range", "data.quantity"),
        ("unknown_type", "type"),
        ("tenant_not_allowed", "tenantid"),
        ("missing_attribute", "time"),
        ("accepted", ""),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(r, f)| ((*r).to_owned(), (*f).to_owned()))
        .collect();
    assert_eq!(reasons(&body), expected);

    // A key for another type: the usage event is not its to publish.
    let other = gateway.key("demo", &["backbone.sales.order"], None, None);
    let (status, _, body) = gateway
        .send_known(&other, SINGLE, &event("bad-7", "c-1", "1").to_string())
        .await;
    assert_eq!(
        (status, reasons(&body)),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            vec![("type_not_allowed".to_owned(), "type".to_owned())]
        )
    );

    // Whole requests refused.
    let (status, _, body) = gateway.send(&token, BATCH, "[{\"specversion\": ").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("malformed_json"))
    );
    let over: Vec<Value> = (0..21)
        .map(|i| event(&format!("o-{i}"), "c-1", "1"))
        .collect();
    let (status, _, body) = gateway
        .send(&token, BATCH, &Value::from(over).to_string())
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("batch_too_large"))
    );
    let long = event("long", &"c".repeat(2 << 20), "1").to_string();
    let (status, _, body) = gateway.send(&token, SINGLE, &long).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large"))
    );
    let (status, _, _) = gateway.send(&token, "text/plain", &one).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let last = if token.ends_with('0') { '1' } else { '0' };
    let wrong = format!("{}{last}", &token[..token.len() - 1]);
    let (status, _, body) = gateway.send(&wrong, SINGLE, &one).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );

    // What the topic holds, read to its end: the five accepted events, nothing of the rest.
    let records = gateway.records(&kafka).await;
    let ids: Vec<&str> = records
        .iter()
        .map(|(_, u, _)| u.metadata.event_id.as_str())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, ["e-1", "e-1", "e-2", "e-3", "e-4"], "{ids:?}");
    let (key, first, trace) = &records
        .iter()
        .find(|(_, u, _)| u.metadata.event_id == "e-3")
        .expect("e-3")
        .clone();
    assert_eq!(key, "demo:c-1", "keyed <tenant>:<customer_id>");
    assert_eq!(first.metadata.tenant_id, "demo", "the key's tenant");
    assert_eq!(first.metadata.source, "partner-api");
    assert_eq!(first.metadata.r#type, USAGE);
    assert_eq!(
        first.metadata.occurred_at, 1_796_430_600_000_000,
        "the time, offset applied"
    );
    assert_eq!(first.quantity.to_string(), "0.000000001");
    assert_eq!(first.subscription_id, None);
    assert_eq!(
        trace.as_deref(),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        "the request's trace"
    );
    let copies: Vec<_> = records
        .iter()
        .filter(|(_, u, _)| u.metadata.event_id == "e-1")
        .collect();
    assert_eq!(
        copies[0].0, copies[1].0,
        "the same fact twice: the same key"
    );
}

#[tokio::test]
async fn keys_are_revoked_rated_and_held_to_their_quota() {
    let kafka = shared_settings();
    let gateway = start(
        kafka.clone(),
        IngestSettings {
            max_batch_events: 5,
            burst: 5,
            ..IngestSettings::default()
        },
    )
    .await;
    let slow = gateway.key("demo", &[USAGE], Some(0.5), None);
    let five = Value::from(
        (0..5)
            .map(|i| event(&format!("r-{i}"), "c-1", "1"))
            .collect::<Vec<_>>(),
    )
    .to_string();
    let (status, _, body) = gateway.send_known(&slow, BATCH, &five).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, retry, body) = gateway
        .send(&slow, SINGLE, &event("r-5", "c-1", "1").to_string())
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited"))
    );
    assert_eq!(retry.as_deref(), Some("2"), "one event at 0.5 a second");

    let capped = gateway.key("demo", &[USAGE], None, Some(3));
    let three = Value::from(
        (0..3)
            .map(|i| event(&format!("q-{i}"), "c-1", "1"))
            .collect::<Vec<_>>(),
    )
    .to_string();
    let (status, _, _) = gateway.send_known(&capped, BATCH, &three).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, retry, body) = gateway
        .send(&capped, SINGLE, &event("q-3", "c-1", "1").to_string())
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("quota_limited"))
    );
    assert!(retry.is_some_and(|r| r.parse::<u64>().is_ok_and(|s| s <= 86_400)));

    let revoked = gateway.key("demo", &[USAGE], None, None);
    let one = event("v-1", "c-1", "1").to_string();
    let (status, _, _) = gateway.send_known(&revoked, SINGLE, &one).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let id = revoked
        .trim_start_matches("bbk_")
        .split('_')
        .next()
        .expect("id")
        .to_owned();
    keys::revoke(&gateway.keys_file, &id).expect("revoke");
    let deadline = Instant::now() + DEADLINE;
    // Probed with an empty batch, refused after the key check: nothing is produced meanwhile.
    let answer = loop {
        let (status, _, body) = gateway.send(&revoked, BATCH, "[]").await;
        if status != StatusCode::BAD_REQUEST || Instant::now() > deadline {
            break (status, body["error"]["code"].clone());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(answer, (StatusCode::UNAUTHORIZED, json!("key_revoked")));
    assert_eq!(
        gateway.records(&kafka).await.len(),
        5 + 3 + 1,
        "refused requests produce nothing"
    );
}

#[tokio::test]
async fn an_event_the_broker_did_not_acknowledge_is_answered_503_never_202() {
    let mut broker = KafkaBroker::start().expect("a broker of its own");
    let kafka = broker.settings();
    let gateway = start(
        kafka.clone(),
        IngestSettings {
            produce_timeout: Duration::from_secs(2),
            ..IngestSettings::default()
        },
    )
    .await;
    let token = gateway.key("demo", &[USAGE], None, None);
    let (status, _, body) = gateway
        .send_known(&token, SINGLE, &event("b-1", "c-1", "1").to_string())
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    broker.crash().expect("the broker dies");
    let (status, retry, body) = gateway
        .send(&token, SINGLE, &event("b-2", "c-1", "1").to_string())
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert_eq!(body["results"][0]["reason"], "broker_unavailable");
}

#[tokio::test]
async fn a_registry_that_does_not_answer_is_a_503_and_nothing_is_produced() {
    let kafka = shared_settings();
    // Nothing listens on port 9 of this host: every lookup fails to connect.
    let gateway = start_asking(
        kafka.clone(),
        IngestSettings::default(),
        Some("http://127.0.0.1:9"),
    )
    .await;
    let token = gateway.key("demo", &[USAGE], None, None);
    let (status, retry, body) = gateway
        .send_known(&token, SINGLE, &event("g-1", "c-1", "1").to_string())
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert_eq!(body["results"][0]["reason"], "registry_unavailable");
    assert!(gateway.records(&kafka).await.is_empty());
}
