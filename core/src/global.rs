//! Global tables: reference data (rate cards, plans, GL mappings) that every instance needs in
//! full, whatever partitions it owns, materialized from a compacted topic into local RocksDB.
//!
//! The source topic is its own changelog, so a global table needs no changelog of its own. At
//! start-up the table is rebuilt from the beginning of every partition up to the ends the broker
//! reports, before the first record is processed; from then on a background thread follows the
//! topic and applies every update as it arrives (a tombstone deletes). Lookups therefore see the
//! reference data as of processing time, as a join against a table does.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use backbone_state::PartitionState;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset};

use crate::admin;
use crate::kafka::{is_connection_lost, KafkaSettings};
use crate::state::StateFailure;

/// How long a global table's topic the broker does not know is asked for before the restore
/// fails naming it: long enough for a cluster to spread a new topic, short enough that a
/// topic that is not there stops the start soon.
const NEW_TOPIC_PATIENCE: Duration = Duration::from_secs(30);

/// A global table: its name (the store the processor reads) and its source topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalTable {
    /// Store name.
    pub name: String,
    /// Compacted topic it is built from.
    pub topic: String,
}

/// The global tables at one moment of processing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GlobalView<'a> {
    /// Their contents.
    pub(crate) tables: &'a PartitionState,
    /// Updates applied since the bootstrap.
    pub(crate) updates: u64,
}

/// The materialized global tables of one processor and the thread that keeps them current.
pub(crate) struct GlobalTables {
    state: Arc<PartitionState>,
    /// Updates applied since the bootstrap ended: a processor that holds records back until
    /// reference data arrives looks again when this moves.
    updates: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    follower: Option<JoinHandle<()>>,
}

impl GlobalTables {
    /// Rebuilds `tables` under `dir` from their topics, then follows the topics in the
    /// background. Blocking: call it from a blocking context.
    pub(crate) fn start(
        dir: &Path,
        tables: &[GlobalTable],
        kafka: &KafkaSettings,
        group: &str,
        timeout: Duration,
    ) -> Result<Self, StateFailure> {
        // Rebuilt from scratch every time: the topics hold everything, and a copy kept across
        // runs would need a checkpoint per source partition.
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|source| {
                StateFailure::Restore(format!("clearing `{}`: {source}", dir.display()))
            })?;
        }
        let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
        let (state, _) = PartitionState::open(dir, &names)?;
        let state = Arc::new(state);
        let consumer: BaseConsumer = kafka
            .restore_consumer_config(&format!("{group}.global"))
            .create()
            .map_err(StateFailure::Kafka)?;
        let topics: Vec<&str> = tables.iter().map(|t| t.topic.as_str()).collect();
        // The runtime has just made sure the topics exist (the control topic) or reads them
        // as they are (master data): a broker that has not learnt of one yet is given a while.
        let assignment = admin::whole_topics_created(
            &consumer,
            &kafka.bootstrap_servers,
            &topics,
            timeout,
            NEW_TOPIC_PATIENCE.min(timeout),
        )
        .map_err(|e| StateFailure::Restore(format!("global tables: {e}")))?;
        let mut ends: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for element in assignment.elements() {
            let (topic, partition) = (element.topic(), element.partition());
            let (_, high) = crate::kafka::watermarks(&consumer, topic, partition, timeout)
                .map_err(|e| {
                    StateFailure::Restore(format!(
                        "reading the end of `{topic}` [{partition}]: {e}"
                    ))
                })?;
            ends.insert((topic.to_owned(), partition), high);
        }
        consumer.assign(&assignment).map_err(StateFailure::Kafka)?;
        let by_topic: BTreeMap<String, String> = tables
            .iter()
            .map(|t| (t.topic.clone(), t.name.clone()))
            .collect();
        let started = Instant::now();
        let deadline = started + timeout;
        // Bootstrap: until every partition reached the end it had at start-up.
        let mut behind: BTreeMap<(String, i32), i64> =
            ends.into_iter().filter(|(_, high)| *high > 0).collect();
        while !behind.is_empty() {
            if Instant::now() > deadline {
                return Err(StateFailure::Restore(format!(
                    "global tables not loaded within {timeout:?}; still behind: {behind:?}"
                )));
            }
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(message)) => {
                    apply(&state, &by_topic, &message)?;
                    let key = (message.topic().to_owned(), message.partition());
                    if behind
                        .get(&key)
                        .is_some_and(|end| message.offset() + 1 >= *end)
                    {
                        behind.remove(&key);
                    }
                }
                Some(Err(err)) if is_connection_lost(&err) => {
                    tracing::warn!(error = %err, "broker unreachable while loading global tables; waiting for it until the restore timeout");
                }
                Some(Err(err)) => {
                    return Err(StateFailure::Restore(format!(
                        "reading global tables: {err}"
                    )))
                }
                None => {
                    // Transaction markers are skipped silently: follow the positions.
                    if let Ok(positions) = consumer.position() {
                        for element in positions.elements() {
                            if let Offset::Offset(at) = element.offset() {
                                let key = (element.topic().to_owned(), element.partition());
                                if behind.get(&key).is_some_and(|end| at >= *end) {
                                    behind.remove(&key);
                                }
                            }
                        }
                    }
                }
            }
        }
        tracing::info!(tables = ?names, elapsed = ?started.elapsed(), "global tables loaded");

        let stop = Arc::new(AtomicBool::new(false));
        let updates = Arc::new(AtomicU64::new(0));
        let follower = {
            let state = Arc::clone(&state);
            let stop = Arc::clone(&stop);
            let updates = Arc::clone(&updates);
            std::thread::Builder::new()
                .name("global-tables".to_owned())
                .spawn(move || follow(&consumer, &state, &by_topic, &updates, &stop))
                .map_err(|e| StateFailure::Restore(format!("starting the follower: {e}")))?
        };
        Ok(Self {
            state,
            updates,
            stop,
            follower: Some(follower),
        })
    }

    /// The tables as processing reads them: their contents and how many updates they took.
    pub(crate) fn view(&self) -> GlobalView<'_> {
        GlobalView {
            tables: &self.state,
            updates: self.updates.load(Ordering::SeqCst),
        }
    }
}

impl Drop for GlobalTables {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(follower) = self.follower.take() {
            let _ = follower.join();
        }
    }
}

/// Applies updates until `stop`. A local write that fails cannot be retried once polled, so the
/// follower then stops, logs why, and the tables keep their last state.
fn follow(
    consumer: &BaseConsumer,
    state: &PartitionState,
    by_topic: &BTreeMap<String, String>,
    updates: &AtomicU64,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::SeqCst) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                if let Err(err) = apply(state, by_topic, &message) {
                    tracing::error!(error = %err, "global table update failed; the table stops following its topic");
                    return;
                }
                updates.fetch_add(1, Ordering::SeqCst);
            }
            Some(Err(err)) => tracing::warn!(error = %err, "reading global tables"),
            None => {}
        }
    }
}

fn apply<M: Message>(
    state: &PartitionState,
    by_topic: &BTreeMap<String, String>,
    message: &M,
) -> Result<(), StateFailure> {
    let Some(table) = by_topic.get(message.topic()) else {
        return Ok(());
    };
    let Some(key) = message.key() else {
        // Reference data is keyed; an unkeyed record names nothing to look up.
        return Ok(());
    };
    state.restore(table, key, message.payload())?;
    Ok(())
}
