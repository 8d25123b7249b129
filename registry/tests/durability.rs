//! Ids live in the schemas topic: they survive a restart, and two instances on one broker
//! agree on them, even when both register at the same time.

mod support;

use std::collections::BTreeSet;

use backbone_testkit::unique_topic;
use serde_json::{json, Value};
use support::{read, TestRegistry};

fn schema(name: &str) -> Value {
    json!({"type": "record", "name": name, "namespace": "test", "fields": [{"name": "id", "type": "string"}]})
}

#[tokio::test]
async fn ids_survive_a_restart() {
    let topic = unique_topic("schemas");
    let first = TestRegistry::start(&topic).await;
    let a = first.register("a-value", &schema("A")).await;
    let b = first.register("b-value", &schema("B")).await;
    first
        .put("/config/b-value", json!({"compatibility": "FULL"}))
        .await;
    first.stop().await;

    let second = TestRegistry::start(&topic).await;
    let (_, body) = read(second.get(&format!("/schemas/ids/{b}")).await).await;
    assert_eq!(
        serde_json::from_str::<Value>(body["schema"].as_str().unwrap()).unwrap(),
        schema("B")
    );
    assert_eq!(second.register("a-value", &schema("A")).await, a);
    let (_, body) = read(second.get("/config/b-value").await).await;
    assert_eq!(body, json!({"compatibilityLevel": "FULL"}));
    // New ids continue after the old ones.
    let c = second.register("c-value", &schema("C")).await;
    assert!(c > a.max(b));
}

#[tokio::test]
async fn two_instances_serve_the_same_ids() {
    let topic = unique_topic("schemas");
    let left = TestRegistry::start(&topic).await;
    let right = TestRegistry::start(&topic).await;

    let id = left.register("x-value", &schema("X")).await;
    assert_eq!(right.register("x-value", &schema("X")).await, id);
    let (status, _) = read(right.get(&format!("/schemas/ids/{id}")).await).await;
    assert_eq!(status, 200);

    // Both register different schemas at once: every schema gets its own id, and both
    // instances agree on all of them.
    let names: Vec<String> = (0..6).map(|i| format!("Concurrent{i}")).collect();
    let requests: Vec<(String, Value)> = names
        .iter()
        .map(|name| (format!("{}-value", name.to_lowercase()), schema(name)))
        .collect();
    let mut tasks = Vec::new();
    for (i, (subject, body)) in requests.iter().enumerate() {
        let registry = if i % 2 == 0 { &left } else { &right };
        tasks.push(registry.register(subject, body));
    }
    let ids: Vec<u64> = futures::future::join_all(tasks).await;
    let distinct: BTreeSet<u64> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), names.len(), "ids: {ids:?}");
    for (name, id) in names.iter().zip(&ids) {
        for registry in [&left, &right] {
            let (_, body) = read(registry.get(&format!("/schemas/ids/{id}")).await).await;
            let got: Value = serde_json::from_str(body["schema"].as_str().unwrap()).unwrap();
            assert_eq!(got, schema(name));
        }
    }
}
