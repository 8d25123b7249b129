//! Partition state as processors see it and as the runtime keeps it: the stores a processor
//! declares, the view it reads and writes through, and the runtime's per-partition tasks that
//! restore each store from its changelog before the partition's first record.
//!
//! Local RocksDB is a cache of the changelog. The runtime applies a record's writes locally as
//! soon as `process` returns (so the next record of the partition sees them) and produces them
//! to the changelog only after the record's outputs are acknowledged. A partition whose local
//! writes may not all have reached the changelog (a crash, an error, a revocation with work in
//! flight) is never closed cleanly, so its next owner rebuilds it from the changelog.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use backbone_calendar::now_micros;
use backbone_state::{
    changelog_topic, partition_dir, IdempotencyStore, PartitionState, Restore, Seen, StagedWrites,
    StateError, StateView,
};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::Offset;
use serde::Deserialize;

pub use backbone_state::{IdempotencyKey, DEFAULT_TTL};

pub use crate::changelog::INPUT_END;

use crate::changelog::{changelog_key, replay_changelog, Batch, ChangelogWrite, Flush, Turn};
use crate::config::{ConfigError, Validate};
use crate::global::{GlobalTable, GlobalView};
use crate::kafka::KafkaSettings;
use crate::metrics::RuntimeMetrics;
use crate::processor::{OutputRecord, ProcessError};

/// The store holding input dedup marks when a processor asks for dedup.
pub const DEDUP_STORE: &str = "dedup";

/// How many records of a partition pass between two dedup sweeps, and how many marks one
/// sweep looks at: expiry costs a little on every record instead of a pause now and then.
const SWEEP_EVERY: u32 = 1024;
const SWEEP_LIMIT: usize = 256;

/// The `[runtime.state]` config section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateSettings {
    /// Where partition state lives: `<dir>/<group>/partition-<n>`, for the consumer group (the processor name unless `runtime.group_id` says otherwise).
    pub dir: PathBuf,
    /// How long an input's idempotency key is remembered; longer than any accepted lateness.
    #[serde(with = "humantime_serde")]
    pub dedup_ttl: Duration,
    /// Longest a partition's restore may wait for the broker before the processor stops.
    #[serde(with = "humantime_serde")]
    pub restore_timeout: Duration,
}

impl Default for StateSettings {
    fn default() -> Self {
        Self {
            dir: PathBuf::from(".backbone/state"),
            dedup_ttl: DEFAULT_TTL,
            restore_timeout: Duration::from_secs(300),
        }
    }
}

impl Validate for StateSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            key: format!("runtime.state.{key}"),
            message: message.to_owned(),
        };
        if self.dir.as_os_str().is_empty() {
            return Err(invalid("dir", "must not be empty"));
        }
        if self.dedup_ttl.is_zero() {
            return Err(invalid("dedup_ttl", "must be more than 0s"));
        }
        if self.restore_timeout.is_zero() {
            return Err(invalid("restore_timeout", "must be more than 0s"));
        }
        Ok(())
    }
}

/// The state a processor keeps per partition: named stores, each backed by a compacted
/// changelog topic `<group>.<store>.changelog`, and optionally input dedup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateSpec {
    stores: Vec<String>,
    dedup: bool,
    globals: Vec<GlobalTable>,
}

impl StateSpec {
    /// No state: the processor is stateless.
    pub fn stateless() -> Self {
        Self::default()
    }

    /// Adds a store.
    pub fn store(mut self, name: &str) -> Self {
        self.stores.push(name.to_owned());
        self
    }

    /// Remembers idempotency keys (in the store [`DEDUP_STORE`]) so that
    /// [`State::first_seen`] can tell duplicates.
    pub fn with_dedup(mut self) -> Self {
        self.dedup = true;
        self
    }

    /// Adds a global table `name`, built from the whole compacted `topic` on every instance
    /// and read with [`State::global`]: reference data that is not partitioned like the input.
    pub fn global(mut self, name: &str, topic: &str) -> Self {
        self.globals.push(GlobalTable {
            name: name.to_owned(),
            topic: topic.to_owned(),
        });
        self
    }

    /// The global tables.
    pub fn globals(&self) -> &[GlobalTable] {
        &self.globals
    }

    /// Every partition store, the dedup store included.
    pub fn all_stores(&self) -> Vec<String> {
        let mut all = self.stores.clone();
        if self.dedup {
            all.push(DEDUP_STORE.to_owned());
        }
        all
    }

    /// Whether there is no partition state to keep (global tables aside).
    pub fn is_stateless(&self) -> bool {
        self.stores.is_empty() && !self.dedup
    }
}

fn no_globals(table: &str) -> ProcessError {
    ProcessError::Fatal {
        kind: "configuration",
        detail: format!("global table `{table}` used by a processor whose StateSpec declares none"),
    }
}

/// A processor's window on its partition's state while it processes one record. Reads see the
/// record's own writes; writes take effect only if the record is processed successfully.
#[derive(Debug)]
pub struct State<'a> {
    view: Option<StateView<'a>>,
    dedup: Option<&'a IdempotencyStore>,
    globals: Option<GlobalView<'a>>,
    duplicate: bool,
}

impl<'a> State<'a> {
    /// The state of a processor that declared none: every access is refused.
    pub fn stateless() -> State<'static> {
        State {
            view: None,
            dedup: None,
            globals: None,
            duplicate: false,
        }
    }

    /// A view over `view`, with dedup through `dedup` when the processor asked for it.
    pub fn new(view: StateView<'a>, dedup: Option<&'a IdempotencyStore>) -> Self {
        Self {
            view: Some(view),
            dedup,
            globals: None,
            duplicate: false,
        }
    }

    /// The same state with lookups in `globals`.
    pub(crate) fn with_globals(mut self, globals: Option<GlobalView<'a>>) -> Self {
        self.globals = globals;
        self
    }

    /// The value of `key` in the global table `table`, as of now.
    pub fn global(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, ProcessError> {
        let globals = self.globals.ok_or_else(|| no_globals(table))?;
        globals.tables.get(table, key).map_err(state_failure)
    }

    /// How many updates the global tables took since this process loaded them: when it moved,
    /// some reference data changed, and records held back for it may go now.
    pub fn global_updates(&self) -> u64 {
        self.globals.map_or(0, |g| g.updates)
    }

    /// Every entry of the global table `table` whose key starts with `prefix`, in key order:
    /// for reference data looked up by something other than its key.
    pub fn global_prefix(
        &self,
        table: &str,
        prefix: &[u8],
    ) -> Result<Vec<backbone_state::Entry>, ProcessError> {
        self.globals
            .ok_or_else(|| no_globals(table))?
            .tables
            .entries_with_prefix(table, prefix)
            .map_err(state_failure)
    }

    /// The value of `key` in `store`.
    pub fn get(&self, store: &str, key: &[u8]) -> Result<Option<Cow<'_, [u8]>>, ProcessError> {
        self.view(store)?.get(store, key).map_err(state_failure)
    }

    /// Every entry of `store` whose key starts with `prefix`, in key order, this record's and
    /// its batch's writes included.
    pub fn entries_with_prefix(
        &self,
        store: &str,
        prefix: &[u8],
    ) -> Result<Vec<backbone_state::Entry>, ProcessError> {
        self.view(store)?
            .entries_with_prefix(store, prefix)
            .map_err(state_failure)
    }

    /// Sets `key` to `value` in `store`.
    pub fn put(&mut self, store: &str, key: &[u8], value: &[u8]) -> Result<(), ProcessError> {
        self.view_mut(store)?
            .put(store, key, value)
            .map_err(state_failure)
    }

    /// The value of `key` in `store`, read as JSON (what [`put_json`](Self::put_json) wrote).
    pub fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        store: &str,
        key: &[u8],
    ) -> Result<Option<T>, ProcessError> {
        self.get(store, key)?
            .map(|bytes| {
                serde_json::from_slice(&bytes).map_err(|e| ProcessError::Fatal {
                    kind: "state",
                    detail: format!("store `{store}` holds an unreadable value: {e}"),
                })
            })
            .transpose()
    }

    /// Sets `key` in `store` to `value` as JSON: readable in a dump, and new optional fields
    /// read old values.
    pub fn put_json<T: serde::Serialize>(
        &mut self,
        store: &str,
        key: &[u8],
        value: &T,
    ) -> Result<(), ProcessError> {
        let bytes = serde_json::to_vec(value).map_err(|e| ProcessError::Fatal {
            kind: "state",
            detail: format!("encoding a value for store `{store}`: {e}"),
        })?;
        self.put(store, key, &bytes)
    }

    /// Deletes `key` from `store`.
    pub fn delete(&mut self, store: &str, key: &[u8]) -> Result<(), ProcessError> {
        self.view_mut(store)?
            .delete(store, key)
            .map_err(state_failure)
    }

    /// Whether this is the first sighting of `key` within the dedup TTL. A repeat sighting marks
    /// the record as a duplicate, which the runtime counts; the processor then returns no output.
    pub fn first_seen(&mut self, key: &IdempotencyKey<'_>) -> Result<bool, ProcessError> {
        let dedup = self.dedup.ok_or_else(|| ProcessError::Fatal {
            kind: "configuration",
            detail: "first_seen called by a processor whose StateSpec has no dedup".to_owned(),
        })?;
        let view = self.view_mut(DEDUP_STORE)?;
        match dedup
            .check_and_stage(view, key, now_micros())
            .map_err(state_failure)?
        {
            Seen::New => Ok(true),
            Seen::Duplicate { .. } => {
                self.duplicate = true;
                Ok(false)
            }
        }
    }

    /// Whether [`first_seen`](Self::first_seen) answered `false` for this record.
    pub fn is_duplicate(&self) -> bool {
        self.duplicate
    }

    fn view(&self, store: &str) -> Result<&StateView<'a>, ProcessError> {
        self.view.as_ref().ok_or_else(|| undeclared(store))
    }

    fn view_mut(&mut self, store: &str) -> Result<&mut StateView<'a>, ProcessError> {
        self.view.as_mut().ok_or_else(|| undeclared(store))
    }
}

fn undeclared(store: &str) -> ProcessError {
    ProcessError::Fatal {
        kind: "configuration",
        detail: format!("store `{store}` used by a processor whose StateSpec declares no state"),
    }
}

/// Local disk trouble is not the record's fault and not worth retrying in place: the processor
/// stops, and its restart rebuilds the partition from the changelog.
fn state_failure(err: StateError) -> ProcessError {
    ProcessError::Fatal {
        kind: "state",
        detail: err.to_string(),
    }
}

/// One owned partition number, shared by the loop, its in-flight records and the consumer's
/// rebalance callback: whether it was revoked, whether its local state diverged from the
/// changelog, and (for a stateful processor) the state itself.
pub(crate) struct Ownership {
    revoked: AtomicBool,
    /// Set when local writes were applied whose changelog records were not produced.
    diverged: AtomicBool,
    in_flight: AtomicUsize,
    /// Inputs tracked whose changelog turn has not come yet.
    before_turn: AtomicUsize,
    /// Global-table updates at the last successful wake; `u64::MAX` before the first.
    woken_at: AtomicU64,
    state: Mutex<Option<OpenState>>,
    /// Changelog writes of settled inputs not yet produced.
    changelog: Mutex<Batch>,
}

/// A restored partition state and its dedup sweep position.
struct OpenState {
    state: PartitionState,
    dedup: Option<IdempotencyStore>,
    since_sweep: u32,
}

impl Default for Ownership {
    fn default() -> Self {
        Self {
            revoked: AtomicBool::default(),
            diverged: AtomicBool::default(),
            in_flight: AtomicUsize::default(),
            before_turn: AtomicUsize::default(),
            woken_at: AtomicU64::new(u64::MAX),
            state: Mutex::default(),
            changelog: Mutex::default(),
        }
    }
}

impl Ownership {
    /// Global-table updates at this partition's last successful wake, if it had one.
    pub(crate) fn woken_at(&self) -> Option<u64> {
        Some(self.woken_at.load(Ordering::SeqCst)).filter(|at| *at != u64::MAX)
    }

    /// Records a successful wake at `updates` global-table updates.
    pub(crate) fn set_woken_at(&self, updates: u64) {
        self.woken_at.store(updates, Ordering::SeqCst);
    }

    /// Whether the partition was taken away.
    pub(crate) fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::SeqCst)
    }

    /// Local state now holds writes the changelog will never get: it must not be kept.
    pub(crate) fn diverge(&self) {
        self.diverged.store(true, Ordering::SeqCst);
    }

    /// An input's changelog `writes` and table outputs at its turn (consumption order):
    /// gathered with those of the partition's inputs before and after it into one flush. A
    /// revoked partition gets no changelog write: its new owner may already be writing.
    pub(crate) fn changelog_turn(
        &self,
        writes: Vec<ChangelogWrite>,
        table: Vec<OutputRecord>,
    ) -> Turn {
        let mut batch = self.changelog.lock().unwrap_or_else(|e| e.into_inner());
        let behind = self.before_turn.fetch_sub(1, Ordering::SeqCst) - 1;
        if self.abandoned_if_revoked(&mut batch, !writes.is_empty()) {
            return Turn::Free;
        }
        batch.join(writes, table, behind)
    }

    /// Whether the partition was revoked; if so its batch is dropped, and its local state
    /// marked diverged when changelog writes (gathered, or `more_writes`) are lost with it.
    fn abandoned_if_revoked(&self, batch: &mut Batch, more_writes: bool) -> bool {
        if !self.is_revoked() {
            return false;
        }
        if batch.abandon() || more_writes {
            self.diverge();
        }
        true
    }

    /// The batch gathered while the partition's last flush was on its way, for the input told
    /// to produce it; `None` for a revoked partition, whose new owner may already be writing.
    pub(crate) fn take_flush(&self) -> Option<Flush> {
        let mut batch = self.changelog.lock().unwrap_or_else(|e| e.into_inner());
        if self.abandoned_if_revoked(&mut batch, false) {
            return None;
        }
        Some(batch.take())
    }

    /// The partition's flush was acknowledged: the next one may go.
    pub(crate) fn flushed(&self) {
        self.changelog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .flushed();
    }

    /// Counts one record in flight until the guard drops, and as waiting for its changelog
    /// turn until [`changelog_turn`](Self::changelog_turn).
    pub(crate) fn track(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.before_turn.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(Arc::clone(self))
    }

    fn lock_state(&self) -> MutexGuard<'_, Option<OpenState>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `process` against this partition's state and, when it succeeds, applies its writes
    /// locally and returns them as changelog writes for `processor`'s stores.
    pub(crate) fn process<T>(
        &self,
        processor: &str,
        partition: i32,
        globals: Option<GlobalView<'_>>,
        process: impl FnOnce(&mut State<'_>) -> Result<T, ProcessError>,
    ) -> Processed<T> {
        let mut guard = self.lock_state();
        let Some(open) = guard.as_mut() else {
            return Processed {
                result: process(&mut State::stateless().with_globals(globals)),
                changelog: Vec::new(),
                duplicate: false,
            };
        };
        let mut staged = StagedWrites::new();
        let mut view = StateView::new(&open.state, &mut staged);
        let mut swept = Ok(0);
        if let Some(dedup) = &mut open.dedup {
            open.since_sweep += 1;
            if open.since_sweep >= SWEEP_EVERY {
                open.since_sweep = 0;
                swept = dedup.sweep_expired(&mut view, now_micros(), SWEEP_LIMIT);
            }
        }
        let mut state_view = State::new(view, open.dedup.as_ref()).with_globals(globals);
        let result = match swept {
            Ok(_) => process(&mut state_view),
            Err(err) => Err(state_failure(err)),
        };
        let duplicate = state_view.is_duplicate();
        let outcome = result.and_then(|value| {
            let topic = changelog_topic(processor);
            let mut changelog = staged
                .changelog_records()
                .map(|record| ChangelogWrite {
                    topic: topic.clone(),
                    partition,
                    key: changelog_key(record.store, record.key),
                    value: record.value.map(<[u8]>::to_vec),
                    ends_input: false,
                })
                .collect::<Vec<_>>();
            // The input's writes count only once its last one, so marked, is on the log.
            if let Some(last) = changelog.last_mut() {
                last.ends_input = true;
            }
            staged
                .apply(&open.state)
                .map_err(state_failure)
                .map(|()| (value, changelog))
        });
        match outcome {
            Ok((value, changelog)) => Processed {
                result: Ok(value),
                changelog,
                duplicate,
            },
            Err(err) => Processed {
                result: Err(err),
                changelog: Vec::new(),
                duplicate: false,
            },
        }
    }
}

/// Keeps a record counted as in flight on its partition.
pub(crate) struct InFlightGuard(Arc<Ownership>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The partition numbers this instance owns, shared with the rebalance callback, which closes
/// a revoked partition's state before the group hands it to another instance.
pub(crate) struct Assignment {
    processor: String,
    stores: Vec<String>,
    owned: Mutex<HashMap<i32, Arc<Ownership>>>,
}

impl Assignment {
    /// Ownership for `processor`, whose state has `stores`.
    pub(crate) fn new(processor: &str, spec: &StateSpec) -> Self {
        Self {
            processor: processor.to_owned(),
            stores: spec.all_stores(),
            owned: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<i32, Arc<Ownership>>> {
        self.owned.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The ownership of `partition`, if it is held and not revoked.
    fn held(&self, partition: i32) -> Option<Arc<Ownership>> {
        self.lock().get(&partition).cloned()
    }

    /// Takes `partition` with `state` restored.
    fn take(&self, partition: i32, state: Option<OpenState>) -> Arc<Ownership> {
        let ownership = Arc::new(Ownership {
            state: Mutex::new(state),
            ..Ownership::default()
        });
        self.lock().insert(partition, Arc::clone(&ownership));
        ownership
    }

    /// Marks `partitions` revoked and closes their state.
    pub(crate) fn revoke<C: Consumer<X>, X: ConsumerContext>(
        &self,
        partitions: impl IntoIterator<Item = i32>,
        consumer: &C,
    ) {
        let revoked: Vec<(i32, Arc<Ownership>)> = {
            let mut owned = self.lock();
            partitions
                .into_iter()
                .filter_map(|p| owned.remove(&p).map(|o| (p, o)))
                .collect()
        };
        for (partition, ownership) in revoked {
            ownership.revoked.store(true, Ordering::SeqCst);
            self.close(partition, &ownership, consumer);
        }
    }

    /// Closes every partition's state (shutdown, after everything in flight settled).
    pub(crate) fn close_all<C: Consumer<X>, X: ConsumerContext>(&self, consumer: &C) {
        let partitions: Vec<i32> = self.lock().keys().copied().collect();
        self.revoke(partitions, consumer);
    }

    /// Marks every owned partition's local state as diverged (a failed transaction).
    pub(crate) fn diverge_all(&self) {
        self.lock().values().for_each(|o| o.diverge());
    }

    /// Closes a partition's state cleanly (checkpoint at the changelogs' ends) when every local
    /// write reached its changelog; otherwise drops it so that the next open restores it.
    fn close<C: Consumer<X>, X: ConsumerContext>(
        &self,
        partition: i32,
        ownership: &Ownership,
        consumer: &C,
    ) {
        let Some(open) = ownership.lock_state().take() else {
            return;
        };
        let clean = ownership.in_flight.load(Ordering::SeqCst) == 0
            && !ownership.diverged.load(Ordering::SeqCst);
        if !clean {
            tracing::info!(processor = %self.processor, partition,
                "partition state dropped: some local writes did not reach the changelog; its next owner restores it");
            return;
        }
        let topic = changelog_topic(&self.processor);
        let high = match consumer.fetch_watermarks(&topic, partition, Duration::from_secs(10)) {
            Ok((_, high)) => high,
            Err(err) => {
                tracing::warn!(processor = %self.processor, partition, %topic, error = %err,
                    "changelog end unknown, partition state dropped");
                return;
            }
        };
        // Every store reflects the one changelog up to its end.
        let ends: BTreeMap<String, i64> = self.stores.iter().map(|s| (s.clone(), high)).collect();
        let mut state = open.state;
        if let Err(err) = state.write_checkpoint(&ends).and_then(|()| state.close()) {
            tracing::warn!(processor = %self.processor, partition, error = %err,
                "closing partition state failed; it will be restored from the changelog");
        }
    }
}

/// What processing one record gave.
pub(crate) struct Processed<T> {
    pub(crate) result: Result<T, ProcessError>,
    pub(crate) changelog: Vec<ChangelogWrite>,
    pub(crate) duplicate: bool,
}

/// Opens and restores partitions: each partition number's state is restored from its
/// changelogs before the partition's first record is processed.
pub(crate) struct Tasks {
    processor: String,
    spec: StateSpec,
    stores: Vec<String>,
    settings: StateSettings,
    kafka: KafkaSettings,
    assignment: Arc<Assignment>,
    metrics: Arc<RuntimeMetrics>,
}

impl Tasks {
    pub(crate) fn new(
        processor: &str,
        spec: StateSpec,
        settings: &StateSettings,
        kafka: &KafkaSettings,
        assignment: Arc<Assignment>,
        metrics: Arc<RuntimeMetrics>,
    ) -> Self {
        Self {
            processor: processor.to_owned(),
            stores: spec.all_stores(),
            spec,
            settings: settings.clone(),
            kafka: kafka.clone(),
            assignment,
            metrics,
        }
    }

    /// The ownership of `partition`, its state restored first if it is not held.
    pub(crate) async fn task(&mut self, partition: i32) -> Result<Arc<Ownership>, StateFailure> {
        if let Some(ownership) = self.assignment.held(partition) {
            return Ok(ownership);
        }
        let state = if self.spec.is_stateless() {
            None
        } else {
            self.metrics.readiness().set_ready(false);
            let state = self.restore(partition).await?;
            self.metrics.readiness().set_ready(true);
            Some(OpenState {
                state,
                dedup: self
                    .spec
                    .dedup
                    .then(|| IdempotencyStore::new(DEDUP_STORE, self.settings.dedup_ttl)),
                since_sweep: 0,
            })
        };
        Ok(self.assignment.take(partition, state))
    }

    async fn restore(&self, partition: i32) -> Result<PartitionState, StateFailure> {
        let dir = partition_dir(&self.settings.dir, &self.processor, partition)?;
        let stores = self.stores.clone();
        let topic = changelog_topic(&self.processor);
        let processor = self.processor.clone();
        let config = self.kafka.restore_consumer_config(&self.processor);
        let timeout = self.settings.restore_timeout;
        let metrics = Arc::clone(&self.metrics);
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = config.create().map_err(StateFailure::Kafka)?;
            let names: Vec<&str> = stores.iter().map(String::as_str).collect();
            let (mut state, mut restore) = PartitionState::open(&dir, &names)?;
            let (_, high) = crate::kafka::watermarks(&consumer, &topic, partition, timeout)
                .map_err(|e| {
                    StateFailure::Restore(format!("reading the end of `{topic}` [{partition}]: {e}"))
                })?;
            if let Restore::From(checkpoint) = &restore {
                if resume_offset(checkpoint, &stores).is_some_and(|next| next > high) {
                    // The changelog is shorter than the state says it has read: the topic was
                    // deleted and recreated (a reset stack, another cluster). Start over from it.
                    tracing::warn!(%processor, partition, %topic, "checkpoint beyond the changelog's end, discarding local state");
                    drop(state);
                    std::fs::remove_dir_all(&dir).map_err(|source| {
                        StateFailure::Restore(format!("removing stale state `{}`: {source}", dir.display()))
                    })?;
                    (state, restore) = PartitionState::open(&dir, &names)?;
                }
            }
            let from = match &restore {
                Restore::Full(cause) => {
                    tracing::info!(%processor, partition, ?cause, "restoring partition state from the beginning of its changelog");
                    None
                }
                Restore::From(checkpoint) => {
                    tracing::info!(%processor, partition, offsets = ?checkpoint.offsets(), "restoring partition state from its checkpoint");
                    resume_offset(checkpoint, &stores)
                }
            };
            let started = Instant::now();
            let end = replay_changelog(
                &consumer,
                &state,
                &topic,
                partition,
                from.map_or(Offset::Beginning, Offset::Offset),
                timeout,
            )?;
            metrics.observe_restore("changelog", started.elapsed());
            let ends: BTreeMap<String, i64> = stores.iter().map(|s| (s.clone(), end)).collect();
            state.write_checkpoint(&ends)?;
            Ok(state)
        })
        .await
        .map_err(|e| StateFailure::Restore(format!("restore task failed: {e}")))?
    }
}

/// Where to resume the changelog for a checkpoint: the smallest offset any store names, or
/// from the beginning when a store is not named (it was added since).
fn resume_offset(checkpoint: &backbone_state::Checkpoint, stores: &[String]) -> Option<i64> {
    stores
        .iter()
        .map(|store| checkpoint.next_offset(store))
        .collect::<Option<Vec<i64>>>()?
        .into_iter()
        .min()
}

/// A partition's state could not be opened or restored.
#[derive(Debug, thiserror::Error)]
pub enum StateFailure {
    /// The local store failed.
    #[error(transparent)]
    Local(#[from] StateError),
    /// The restore consumer could not be created or read.
    #[error("restore consumer: {0}")]
    Kafka(#[source] rdkafka::error::KafkaError),
    /// The changelog could not be read to its end in time.
    #[error("{0}")]
    Restore(String),
}

#[cfg(test)]
mod tests;
