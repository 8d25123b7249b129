//! Conformance of the REST API with Confluent Schema Registry's, endpoint by endpoint:
//! paths, status codes, `error_code`s, bodies and media type.

mod support;

use backbone_testkit::unique_topic;
use serde_json::{json, Value};
use support::{expect_error, read, TestRegistry};

fn record(fields: Value) -> Value {
    json!({"type": "record", "name": "Payment", "namespace": "test", "fields": fields})
}

fn v1() -> Value {
    record(json!([{"name": "id", "type": "string"}]))
}

fn v2() -> Value {
    record(json!([
        {"name": "id", "type": "string"},
        {"name": "note", "type": ["null", "string"], "default": null}
    ]))
}

fn incompatible() -> Value {
    record(json!([
        {"name": "id", "type": "string"},
        {"name": "amount", "type": "long"}
    ]))
}

#[tokio::test]
async fn register_and_read_back() {
    let registry = TestRegistry::start(&unique_topic("schemas")).await;
    let id = registry.register("payments-value", &v1()).await;
    // The same schema again, even formatted differently, is the same id and no new version.
    let reformatted = serde_json::to_string_pretty(&v1()).unwrap();
    let (status, body) = read(
        registry
            .post(
                "/subjects/payments-value/versions",
                json!({"schema": reformatted}),
            )
            .await,
    )
    .await;
    assert_eq!((status, body["id"].as_u64()), (200, Some(id)));
    let id2 = registry.register("payments-value", &v2()).await;
    assert_ne!(id, id2);
    // The same schema under another subject keeps its id.
    assert_eq!(registry.register("refunds-value", &v1()).await, id);

    let (status, body) = read(registry.get("/subjects").await).await;
    assert_eq!(
        (status, body),
        (200, json!(["payments-value", "refunds-value"]))
    );
    let (_, body) = read(registry.get("/subjects/payments-value/versions").await).await;
    assert_eq!(body, json!([1, 2]));

    for path in [
        "/subjects/payments-value/versions/2",
        "/subjects/payments-value/versions/latest",
        "/subjects/payments-value/versions/-1",
    ] {
        let (status, body) = read(registry.get(path).await).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(body["subject"], "payments-value");
        assert_eq!(body["version"], 2);
        assert_eq!(body["id"].as_u64(), Some(id2));
        let schema: Value = serde_json::from_str(body["schema"].as_str().unwrap()).unwrap();
        assert_eq!(schema, v2());
    }
    let (status, body) = read(
        registry
            .get("/subjects/payments-value/versions/1/schema")
            .await,
    )
    .await;
    assert_eq!((status, body), (200, v1()));

    let (status, body) = read(registry.get(&format!("/schemas/ids/{id}")).await).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(body["schema"].as_str().unwrap()).unwrap(),
        v1()
    );
    assert!(
        body.get("schemaType").is_none(),
        "AVRO is implied, as Confluent does"
    );
    let (_, body) = read(registry.get(&format!("/schemas/ids/{id}/schema")).await).await;
    assert_eq!(body, v1());
    let (_, body) = read(registry.get(&format!("/schemas/ids/{id}/versions")).await).await;
    assert_eq!(
        body,
        json!([{"subject": "payments-value", "version": 1}, {"subject": "refunds-value", "version": 1}])
    );
    let (_, body) = read(registry.get(&format!("/schemas/ids/{id}/subjects")).await).await;
    assert_eq!(body, json!(["payments-value", "refunds-value"]));
    let (_, body) = read(registry.get("/schemas/types").await).await;
    assert_eq!(body, json!(["AVRO"]));
    let (_, body) = read(
        registry
            .get("/subjects/payments-value/versions/1/referencedby")
            .await,
    )
    .await;
    assert_eq!(body, json!([]));
}

#[tokio::test]
async fn lookup_finds_registered_schemas_only() {
    let registry = TestRegistry::start(&unique_topic("schemas")).await;
    let id = registry.register("orders-value", &v1()).await;
    let (status, body) = read(
        registry
            .post(
                "/subjects/orders-value",
                json!({"schema": v1().to_string()}),
            )
            .await,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["id"].as_u64(), Some(id));
    assert_eq!(body["version"], 1);
    assert_eq!(body["subject"], "orders-value");

    expect_error(
        registry
            .post(
                "/subjects/orders-value",
                json!({"schema": v2().to_string()}),
            )
            .await,
        404,
        40403,
    )
    .await;
    expect_error(
        registry
            .post(
                "/subjects/nobody-value",
                json!({"schema": v1().to_string()}),
            )
            .await,
        404,
        40401,
    )
    .await;
}

#[tokio::test]
async fn errors_carry_confluent_codes() {
    let registry = TestRegistry::start(&unique_topic("schemas")).await;
    registry.register("s-value", &v1()).await;

    expect_error(registry.get("/subjects/missing/versions").await, 404, 40401).await;
    expect_error(
        registry.get("/subjects/missing/versions/1").await,
        404,
        40401,
    )
    .await;
    expect_error(
        registry.get("/subjects/s-value/versions/9").await,
        404,
        40402,
    )
    .await;
    expect_error(
        registry.get("/subjects/s-value/versions/0").await,
        422,
        42202,
    )
    .await;
    expect_error(
        registry.get("/subjects/s-value/versions/first").await,
        422,
        42202,
    )
    .await;
    expect_error(registry.get("/schemas/ids/99999").await, 404, 40403).await;
    expect_error(
        registry.get("/schemas/ids/99999/versions").await,
        404,
        40403,
    )
    .await;

    let message = expect_error(
        registry
            .post(
                "/subjects/s-value/versions",
                json!({"schema": "{\"type\": \"record\", \"name\": \"X\"}"}),
            )
            .await,
        422,
        42201,
    )
    .await;
    assert!(message.starts_with("Invalid schema"), "{message}");
    expect_error(
        registry
            .post("/subjects/s-value/versions", json!({"schema": "not json"}))
            .await,
        422,
        42201,
    )
    .await;
    expect_error(
        registry
            .post(
                "/subjects/s-value/versions",
                json!({"schema": "\"string\"", "schemaType": "PROTOBUF"}),
            )
            .await,
        422,
        42201,
    )
    .await;
    expect_error(
        registry
            .post("/subjects/s-value/versions", json!({"nothing": 1}))
            .await,
        400,
        400,
    )
    .await;
    expect_error(
        registry
            .put("/config", json!({"compatibility": "SIDEWAYS"}))
            .await,
        422,
        42203,
    )
    .await;
    expect_error(registry.get("/no/such/path").await, 404, 404).await;

    let message = expect_error(
        registry
            .post(
                "/subjects/s-value/versions",
                json!({"schema": incompatible().to_string()}),
            )
            .await,
        409,
        409,
    )
    .await;
    assert!(message.contains("amount"), "the field is named: {message}");
}

#[tokio::test]
async fn compatibility_config_global_and_per_subject() {
    let registry = TestRegistry::start(&unique_topic("schemas")).await;
    let (status, body) = read(registry.get("/config").await).await;
    assert_eq!(
        (status, body),
        (200, json!({"compatibilityLevel": "BACKWARD"}))
    );

    expect_error(registry.get("/config/s-value").await, 404, 40408).await;
    let (_, body) = read(registry.get("/config/s-value?defaultToGlobal=true").await).await;
    assert_eq!(body, json!({"compatibilityLevel": "BACKWARD"}));

    for mode in [
        "NONE",
        "BACKWARD",
        "BACKWARD_TRANSITIVE",
        "FORWARD",
        "FORWARD_TRANSITIVE",
        "FULL",
        "FULL_TRANSITIVE",
    ] {
        let (status, body) = read(
            registry
                .put("/config/s-value", json!({"compatibility": mode}))
                .await,
        )
        .await;
        assert_eq!((status, body), (200, json!({"compatibility": mode})));
        let (_, body) = read(registry.get("/config/s-value").await).await;
        assert_eq!(body, json!({"compatibilityLevel": mode}));
    }

    // NONE on the subject lets an incompatible schema in; the global mode is untouched.
    registry
        .put("/config/s-value", json!({"compatibility": "NONE"}))
        .await;
    registry.register("s-value", &v1()).await;
    registry.register("s-value", &incompatible()).await;
    let (_, body) = read(registry.get("/config").await).await;
    assert_eq!(body, json!({"compatibilityLevel": "BACKWARD"}));

    let (status, body) = read(registry.delete("/config/s-value").await).await;
    assert_eq!((status, body), (200, json!({"compatibilityLevel": "NONE"})));
    expect_error(registry.get("/config/s-value").await, 404, 40408).await;

    let (_, body) = read(
        registry
            .put("/config", json!({"compatibility": "full"}))
            .await,
    )
    .await;
    assert_eq!(body, json!({"compatibility": "FULL"}));
}

#[tokio::test]
async fn compatibility_endpoint_explains_when_verbose() {
    let registry = TestRegistry::start(&unique_topic("schemas")).await;
    registry.register("c-value", &v1()).await;
    let path = "/compatibility/subjects/c-value/versions/latest";

    let (status, body) = read(
        registry
            .post(path, json!({"schema": v2().to_string()}))
            .await,
    )
    .await;
    assert_eq!((status, body), (200, json!({"is_compatible": true})));
    let (_, body) = read(
        registry
            .post(path, json!({"schema": incompatible().to_string()}))
            .await,
    )
    .await;
    assert_eq!(body, json!({"is_compatible": false}));
    let (_, body) = read(
        registry
            .post(
                &format!("{path}?verbose=true"),
                json!({"schema": incompatible().to_string()}),
            )
            .await,
    )
    .await;
    assert_eq!(body["is_compatible"], false);
    let messages = body["messages"].as_array().unwrap();
    assert!(
        messages
            .iter()
            .any(|m| m.as_str().unwrap().contains("amount")),
        "{body}"
    );

    let (status, _) = read(
        registry
            .post(
                "/compatibility/subjects/c-value/versions/1",
                json!({"schema": v2().to_string()}),
            )
            .await,
    )
    .await;
    assert_eq!(status, 200);
    expect_error(
        registry
            .post(
                "/compatibility/subjects/c-value/versions/7",
                json!({"schema": v2().to_string()}),
            )
            .await,
        404,
        40402,
    )
    .await;
    expect_error(
        registry
            .post(
                "/compatibility/subjects/none-value/versions/latest",
                json!({"schema": v2().to_string()}),
            )
            .await,
        404,
        40401,
    )
    .await;
}

#[tokio::test]
async fn soft_and_permanent_deletes() {
    let registry = TestRegistry::start(&unique_topic("schemas")).await;
    let id1 = registry.register("d-value", &v1()).await;
    registry.register("d-value", &v2()).await;

    // A version must be soft-deleted before it can be removed.
    expect_error(
        registry
            .delete("/subjects/d-value/versions/1?permanent=true&force=true")
            .await,
        404,
        40407,
    )
    .await;
    let (status, body) = read(registry.delete("/subjects/d-value/versions/1").await).await;
    assert_eq!((status, body), (200, json!(1)));
    expect_error(
        registry.delete("/subjects/d-value/versions/1").await,
        404,
        40406,
    )
    .await;
    let (_, body) = read(registry.get("/subjects/d-value/versions").await).await;
    assert_eq!(body, json!([2]));
    let (_, body) = read(
        registry
            .get("/subjects/d-value/versions?deleted=true")
            .await,
    )
    .await;
    assert_eq!(body, json!([1, 2]));
    expect_error(
        registry.get("/subjects/d-value/versions/1").await,
        404,
        40402,
    )
    .await;
    let (status, _) = read(
        registry
            .get("/subjects/d-value/versions/1?deleted=true")
            .await,
    )
    .await;
    assert_eq!(status, 200);
    // Ids stay readable after a soft delete.
    let (status, _) = read(registry.get(&format!("/schemas/ids/{id1}")).await).await;
    assert_eq!(status, 200);
    let (status, body) = read(
        registry
            .delete("/subjects/d-value/versions/1?permanent=true&force=true")
            .await,
    )
    .await;
    assert_eq!((status, body), (200, json!(1)));
    let (_, body) = read(
        registry
            .get("/subjects/d-value/versions?deleted=true")
            .await,
    )
    .await;
    assert_eq!(body, json!([2]));

    // Whole subject: soft first, then permanent.
    expect_error(
        registry
            .delete("/subjects/d-value?permanent=true&force=true")
            .await,
        404,
        40405,
    )
    .await;
    let (status, body) = read(registry.delete("/subjects/d-value").await).await;
    assert_eq!((status, body), (200, json!([2])));
    expect_error(registry.delete("/subjects/d-value").await, 404, 40404).await;
    let (_, body) = read(registry.get("/subjects").await).await;
    assert_eq!(body, json!([]));
    let (_, body) = read(registry.get("/subjects?deleted=true").await).await;
    assert_eq!(body, json!(["d-value"]));
    let (status, body) = read(
        registry
            .delete("/subjects/d-value?permanent=true&force=true")
            .await,
    )
    .await;
    assert_eq!((status, body), (200, json!([2])));
    expect_error(registry.get("/subjects/d-value/versions").await, 404, 40401).await;
    expect_error(registry.delete("/subjects/d-value").await, 404, 40401).await;

    // Registering again starts after the highest version ever used.
    registry.register("d-value", &v1()).await;
    let (_, body) = read(registry.get("/subjects/d-value/versions").await).await;
    assert_eq!(body, json!([3]));
}
