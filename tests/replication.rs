//! Replication on a three-node Apache Kafka cluster (three local KRaft processes): topics the
//! runtime creates get three replicas, two in sync, and a stateful processor keeps exact counts
//! while the leader of one of its changelog partitions, then the leader of one of its output
//! partitions, is SIGKILLed mid-stream; its state is then rebuilt from the replicated changelog
//! by an instance with an empty store.

#[path = "support/counts.rs"]
mod counts;

use std::time::Duration;

use backbone_core::{KafkaSettings, RuntimeSettings};
use backbone_testkit::{
    await_committed, consume_while, create_topic, produce, produce_paced, unique_group,
    unique_topic, KafkaCluster, RunningProcessor, Tally,
};
use counts::{check_counts, distinct, events_with_repeats};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};

const DEADLINE: Duration = Duration::from_secs(120);
const PARTITIONS: i32 = 3;
const ACCOUNTS: usize = 12;

/// The leader of `partition` of `topic`, and how many replicas it has.
fn leader(kafka: &KafkaSettings, topic: &str, partition: i32) -> (i32, usize) {
    let client: BaseConsumer = kafka.admin_config().create().expect("metadata client");
    let metadata = client
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let found = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .and_then(|t| t.partitions().iter().find(|p| p.id() == partition))
        .map(|p| (p.leader(), p.replicas().len()))
        .expect("the partition");
    found
}

/// The value of `key` in `topic`'s config on the broker.
async fn topic_config(kafka: &KafkaSettings, topic: &str, key: &str) -> Option<String> {
    let admin: AdminClient<DefaultClientContext> =
        kafka.admin_config().create().expect("admin client");
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .expect("describe configs");
    described
        .into_iter()
        .flatten()
        .flat_map(|resource| resource.entries)
        .find(|entry| entry.name == key)
        .and_then(|entry| entry.value)
}

/// Waits until Tally has an output for `events` distinct events.
async fn await_outputs(kafka: &KafkaSettings, topic: &str, events: usize, what: &str) {
    consume_while(
        kafka,
        topic,
        DEADLINE,
        format!("{events} outputs {what}"),
        move |read| distinct(read).len() >= events,
    )
    .await
    .expect("progress");
}

/// SIGKILLs the leader of `partition` of `topic`, waits for `events` outputs with it gone, and
/// starts it again on its data.
async fn kill_leader(
    cluster: &mut KafkaCluster,
    kafka: &KafkaSettings,
    running: &mut RunningProcessor,
    (topic, partition): (&str, i32),
    (output, events): (&str, usize),
) -> i32 {
    let (node, replicas) = leader(kafka, topic, partition);
    assert_eq!(replicas, 3, "{topic} has three replicas");
    let broker = cluster.node(node).expect("the leader is one of ours");
    broker.crash().expect("kill -9 the leader");
    running
        .during(await_outputs(
            kafka,
            output,
            events,
            &format!("with node {node} down"),
        ))
        .await;
    let broker = cluster.node(node).expect("the node");
    tokio::task::block_in_place(|| broker.restart()).expect("the node restarts on its data");
    node
}

fn settings(group: &str) -> RuntimeSettings {
    let mut settings = RuntimeSettings {
        group_id: Some(group.to_owned()),
        topic_partitions: PARTITIONS,
        ..RuntimeSettings::default()
    };
    settings.state.dir = std::env::temp_dir()
        .join("backbone-state")
        .join(group)
        .join(unique_group("instance"));
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_of_a_changelog_and_an_output_partition_die_and_nothing_is_lost_or_doubled() {
    let mut cluster =
        tokio::task::block_in_place(|| KafkaCluster::start(3)).expect("three-node cluster");
    let kafka = cluster.settings();
    let tally = Tally {
        input: unique_topic("tally.in"),
        output: unique_topic("tally.out"),
        dedup: true,
    };
    let group = unique_group("tally-replicated");
    create_topic(&kafka, &tally.input, PARTITIONS)
        .await
        .expect("input topic");

    // Published over about eight seconds, so that the kills land mid-stream.
    let events = 3_000;
    let publishing = produce_paced(
        &kafka,
        &tally.input,
        events_with_repeats(0, events, ACCOUNTS),
        90,
        Duration::from_millis(200),
    );
    let mut running = RunningProcessor::start(tally.clone(), &kafka, settings(&group));
    running
        .during(await_outputs(
            &kafka,
            &tally.output,
            300,
            "before the first kill",
        ))
        .await;

    let changelog = format!("{group}.changelog");
    for topic in [&changelog, &tally.output] {
        assert_eq!(
            topic_config(&kafka, topic, "min.insync.replicas")
                .await
                .as_deref(),
            Some("2"),
            "{topic}: two replicas in sync before a write is acknowledged"
        );
    }
    let first = kill_leader(
        &mut cluster,
        &kafka,
        &mut running,
        (&changelog, 0),
        (&tally.output, 1_000),
    )
    .await;
    let second = kill_leader(
        &mut cluster,
        &kafka,
        &mut running,
        (&tally.output, 0),
        (&tally.output, 1_800),
    )
    .await;
    publishing
        .await
        .expect("publisher task")
        .expect("publish through the kills");
    let total = events + events / 5;
    await_committed(&kafka, &group, &tally.input, total as i64, DEADLINE).await;
    running.stop(DEADLINE).await;
    check_counts(&kafka, &tally.output, events).await;

    // A new instance with an empty store rebuilds the counts from the changelog, which lived
    // through both kills, and carries on from them.
    let more = events_with_repeats(events, 60, ACCOUNTS);
    produce(&kafka, &tally.input, &more).await.expect("produce");
    let running = RunningProcessor::start(tally.clone(), &kafka, settings(&group));
    let all = (total + more.len()) as i64;
    await_committed(&kafka, &group, &tally.input, all, DEADLINE).await;
    running.stop(DEADLINE).await;
    check_counts(&kafka, &tally.output, events + 60).await;
    println!("replication: killed node {first} (a changelog leader), then node {second} (an output leader)");
}
