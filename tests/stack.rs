//! The shared test broker keeps records, partitions and order as Kafka does.

use std::collections::BTreeMap;
use std::time::Duration;

use backbone_testkit::{
    consume_until, create_topic, produce, shared_settings, unique_topic, TestRecord,
};

#[tokio::test]
async fn isolated_topic_round_trip_keeps_per_key_order() {
    let settings = shared_settings();
    let topic = unique_topic("roundtrip");
    create_topic(&settings, &topic, 3)
        .await
        .expect("create topic");

    let records: Vec<TestRecord> = (0..60)
        .map(|i| TestRecord::new(format!("key-{}", i % 6), format!("{i}")))
        .collect();
    produce(&settings, &topic, &records).await.expect("produce");

    let consumed = consume_until(&settings, &topic, 60, Duration::from_secs(30))
        .await
        .expect("consume");
    assert_eq!(consumed.len(), 60, "no record lost or added");

    let mut per_key: BTreeMap<Vec<u8>, Vec<u32>> = BTreeMap::new();
    let mut partitions_of_key: BTreeMap<Vec<u8>, i32> = BTreeMap::new();
    let mut ordered = consumed.clone();
    ordered.sort_by_key(|r| (r.partition, r.offset));
    for record in &ordered {
        let key = record.key.clone().expect("key kept");
        let value: u32 = String::from_utf8(record.value.clone().expect("value kept"))
            .expect("utf8")
            .parse()
            .expect("number");
        per_key.entry(key.clone()).or_default().push(value);
        let partition = *partitions_of_key.entry(key).or_insert(record.partition);
        assert_eq!(partition, record.partition, "one key, one partition");
    }
    assert_eq!(per_key.len(), 6);
    for values in per_key.values() {
        assert!(
            values.windows(2).all(|w| w[0] < w[1]),
            "order kept per key: {values:?}"
        );
    }
    let used: std::collections::BTreeSet<i32> = consumed.iter().map(|r| r.partition).collect();
    assert!(used.len() > 1, "keys spread over partitions: {used:?}");
}

#[tokio::test]
async fn topics_of_different_tests_do_not_mix() {
    let settings = shared_settings();
    let first = unique_topic("isolated");
    let second = unique_topic("isolated");
    assert_ne!(first, second);
    create_topic(&settings, &first, 1)
        .await
        .expect("create first");
    create_topic(&settings, &second, 1)
        .await
        .expect("create second");
    produce(&settings, &first, &[TestRecord::new("k", "first")])
        .await
        .expect("produce");
    produce(&settings, &second, &[TestRecord::new("k", "second")])
        .await
        .expect("produce");
    let read = consume_until(&settings, &second, 1, Duration::from_secs(30))
        .await
        .expect("consume");
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].value.as_deref(), Some(&b"second"[..]));
}

/// The launcher every broker of the project starts through.
fn launcher() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kafka/broker")
}

#[test]
fn a_data_directory_formatted_for_another_cluster_is_reported_and_kept() {
    let dir = std::env::temp_dir().join(backbone_testkit::unique_group("kafka-foreign"));
    let data = dir.join("data");
    let log = dir.join("broker.log");
    let meta = data.join("logs/meta.properties");
    let launch = |cluster: &str| {
        std::process::Command::new(launcher())
            .args(["--data", &data.to_string_lossy(), "--log"])
            .arg(&log)
            .args(["--port", "29592", "--controller-port", "29593"])
            .args(["--cluster-id", cluster])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the launcher")
    };
    // Formatted for one cluster: the launcher formats, then starts the broker, stopped here.
    let mut first = launch("MkU3OEVBNTcwNTJENDM2Qg");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !meta.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the directory was never formatted"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    first.kill().expect("stop the first broker");
    first.wait().expect("reap it");
    let formatted = std::fs::read_to_string(&meta).expect("meta.properties");

    let second = launch("AAAAAAAAAAAAAAAAAAAAAA")
        .wait_with_output()
        .expect("the second launcher");
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "started on a foreign directory");
    assert!(
        said.contains("MkU3OEVBNTcwNTJENDM2Qg") && said.contains("AAAAAAAAAAAAAAAAAAAAAA"),
        "names both clusters: {said}"
    );
    assert_eq!(
        std::fs::read_to_string(&meta).expect("meta.properties kept"),
        formatted,
        "the directory is kept as it was"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The embedded stack's registry (what `make up` runs) answers only with the development
/// credentials, and `stack.sh status` says where they are.
#[tokio::test]
async fn the_stacks_registry_wants_the_credentials_status_names() {
    let with_credentials = std::env::var("BACKBONE_TEST_REGISTRY_URL")
        .expect("scripts/test.sh sets BACKBONE_TEST_REGISTRY_URL");
    let parsed = reqwest::Url::parse(&with_credentials).expect("a URL");
    assert!(
        !parsed.username().is_empty(),
        "the test stack's URL carries its credentials"
    );
    let mut anonymous = parsed.clone();
    anonymous.set_username("").expect("a base URL");
    anonymous.set_password(None).expect("a base URL");
    let client = reqwest::Client::new();
    let answer = |url: String| {
        let request = client.get(format!("{}subjects", url));
        async move { request.send().await.expect("the registry answers").status() }
    };
    assert_eq!(answer(anonymous.to_string()).await, 401);
    assert_eq!(answer(parsed.to_string()).await, 200);

    let status = std::process::Command::new(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/stack.sh"),
    )
    .arg("status")
    .output()
    .expect("stack.sh status runs");
    let said = String::from_utf8_lossy(&status.stdout);
    let stack_dir = std::env::var("BACKBONE_STACK_DIR").expect("scripts/test.sh sets it");
    assert!(
        said.contains(&format!("{stack_dir}/secrets/registry-password")),
        "{said}"
    );
}
