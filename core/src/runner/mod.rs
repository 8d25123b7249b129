//! The consume → process → produce loop shared by every processor.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::stream::{FuturesOrdered, StreamExt};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureProducer;
use rdkafka::{Message, TopicPartitionList};
use tokio::sync::{oneshot, watch};

use crate::changelog::ChangelogWrite;
use crate::dead_letter::{dlq_topic, DeadLetter};
use crate::delivery::{Handled, InFlight, Ledger, RuntimeContext, Trigger, MAX_IN_FLIGHT};
use crate::endpoint::ObservabilitySettings;
use crate::global::GlobalTables;
use crate::hold::{self, CONTROLS_TABLE, HOLD_STORE};
use crate::kafka::{owned_headers, ConsumerFailure, KafkaSettings, UNREADABLE_HEADERS};
use crate::metrics::{event_age, MeteredContext, RuntimeMetrics};
use crate::processor::{
    InputRecord, OutputRecord, Prefetch, ProcessError, Processor, Wake, EVENT_TIME, REPLAY_ID,
    TRACEPARENT,
};
use crate::shutdown::{sleep_until, stopped};
use crate::state::{Assignment, Ownership, State, Tasks};
use crate::transaction::{lock, Transaction};

mod error;
mod release;
mod settings;
mod stage;
mod topics;

pub use error::{RefusedRecord, RunSummary, RuntimeError};
use release::{Release, Sending};
pub use settings::{Delivery, RuntimeSettings, TransactionSettings, DEFAULT_MAX_OUTPUT_BYTES};
use stage::{create_producer, Stage};
use topics::{ensure_topics, load_globals};

/// Runs `processor` until `shutdown` completes, then commits what was processed and returns.
/// Metrics go to a registry of its own; binaries use [`run_with`] to export them.
pub async fn run<P, S>(
    processor: P,
    kafka: &KafkaSettings,
    settings: &RuntimeSettings,
    shutdown: S,
) -> Result<RunSummary, RuntimeError>
where
    P: Processor,
    S: Future<Output = ()> + Send + 'static,
{
    let metrics = RuntimeMetrics::new(&prometheus::Registry::new(), processor.name())
        .map_err(|e| RuntimeError::Metrics(e.to_string()))?;
    let observability = ObservabilitySettings::default();
    run_with(
        processor,
        kafka,
        settings,
        &observability,
        Arc::new(metrics),
        shutdown,
    )
    .await
}

/// Like [`run`], recording into `metrics` (which an endpoint may be serving).
pub async fn run_with<P, S>(
    mut processor: P,
    kafka: &KafkaSettings,
    settings: &RuntimeSettings,
    observability: &ObservabilitySettings,
    metrics: Arc<RuntimeMetrics>,
    shutdown: S,
) -> Result<RunSummary, RuntimeError>
where
    P: Processor,
    S: Future<Output = ()> + Send + 'static,
{
    let (stop_tx, stop) = watch::channel(false);
    let stopper = tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    let result = run_loop(
        &mut processor,
        kafka,
        settings,
        observability,
        &metrics,
        stop,
    )
    .await;
    stopper.abort();
    if let Err(err) = &result {
        metrics.record_fatal(err.fatal_kind());
    }
    result
}

async fn run_loop<P: Processor>(
    processor: &mut P,
    kafka: &KafkaSettings,
    settings: &RuntimeSettings,
    observability: &ObservabilitySettings,
    metrics: &Arc<RuntimeMetrics>,
    mut stop: watch::Receiver<bool>,
) -> Result<RunSummary, RuntimeError> {
    let name = processor.name().to_owned();
    let version = env!("CARGO_PKG_VERSION");
    // A stateful processor holds a paused tenant's records in its partition state, reading
    // the pauses from the control topic as a global table.
    let declared = processor.state();
    let holding = !declared.is_stateless();
    let spec = if holding {
        declared
            .store(HOLD_STORE)
            .global(CONTROLS_TABLE, &settings.tenant_controls)
    } else {
        declared
    };
    // The group is the deployment's identity: state directories and changelogs are named for
    // it, so two deployments of one processor never share state.
    let group = settings.group_id.clone().unwrap_or_else(|| name.clone());
    ensure_topics(processor, &group, &spec, kafka, settings).await?;
    let exactly_once = settings.delivery == Delivery::ExactlyOnce;
    let globals = load_globals(&spec, &group, kafka, settings, metrics).await?;

    let producer = create_producer(kafka, settings)?;
    let transaction = exactly_once.then(|| Arc::new(Mutex::new(Transaction::default())));
    let assignment = Arc::new(Assignment::new(&group, &spec));
    let context = RuntimeContext {
        metered: MeteredContext::new(Arc::clone(metrics)),
        assignment: Arc::clone(&assignment),
        producer: producer.clone(),
        transaction: transaction.clone(),
        timeout: settings.produce_timeout,
    };
    let mut consumer_config = kafka.consumer_config(&group);
    observability.enable_statistics(&mut consumer_config);
    if exactly_once {
        // Input offsets commit inside the transaction, never on their own.
        consumer_config.set("enable.auto.commit", "false");
    }
    if !spec.is_stateless() {
        // Partition n of every input topic must land on the instance holding partition n's state.
        consumer_config.set("partition.assignment.strategy", "range");
    }
    let consumer: StreamConsumer<RuntimeContext> = consumer_config
        .create_with_context(context)
        .map_err(RuntimeError::Client)?;
    let inputs = processor.input_topics();
    let topics: Vec<&str> = inputs.iter().map(String::as_str).collect();
    consumer.subscribe(&topics).map_err(RuntimeError::Client)?;
    metrics.register_topics(&inputs, &processor.output_topics());
    metrics.register_event_topics(&processor.output_topics());
    // Ready once subscribed; a partition's restore flips it off until it is done.
    metrics.readiness().set_ready(true);
    tracing::info!(processor = %name, group = %group, topics = ?topics, delivery = ?settings.delivery,
        stores = ?spec.all_stores(), "processor started");

    let mut tasks = Tasks::new(
        &group,
        spec,
        &settings.state,
        kafka,
        Arc::clone(&assignment),
        Arc::clone(metrics),
    );
    let prefetch = processor.prefetch();
    let limits = OutputLimits {
        max_output_bytes: settings.max_output_bytes,
        dead_letter_topics: inputs.iter().map(|t| dlq_topic(t)).collect(),
    };
    let mut summary = RunSummary::default();
    let ledger = Ledger {
        consumer: &consumer,
        metrics,
        store_offsets: !exactly_once,
    };
    let table_topics: BTreeSet<String> = processor.table_topics().into_iter().collect();
    let mut stage = Stage {
        consumer: &consumer,
        producer: &producer,
        transaction: transaction.as_deref(),
        settings,
        ledger: &ledger,
        table_topics: &table_topics,
    };
    // Dropped before the consumer, whose close revokes (and would commit) the partitions.
    let mut on_error = DivergeOnError {
        transaction: transaction.as_deref(),
        producer: &producer,
        assignment: &assignment,
        timeout: settings.transaction.timeout,
        armed: true,
    };
    // Outputs of resolved inputs on their way to the broker, oldest first. Offsets are
    // stored strictly in this order, so a crash never skips an input whose outputs were lost.
    let mut in_flight: InFlight = FuturesOrdered::new();
    // The turn of the latest input to enqueue its changelog writes; see `Pending::settle`.
    let mut last_turn: Option<oneshot::Receiver<()>> = None;
    let wake_interval = processor.wake_interval();
    let mut wake_at = wake_interval.map(|every| Instant::now() + every);
    let mut release_at = holding.then(|| Instant::now() + RELEASE_IDLE);
    loop {
        let commit_at = stage
            .transaction
            .and_then(|t| lock(t).due(settings.transaction.commit_interval));
        let message = tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            Some(settled) = in_flight.next(), if !in_flight.is_empty() => {
                ledger.record(settled?, &mut summary)?;
                continue;
            }
            _ = sleep_until(commit_at), if commit_at.is_some() => {
                stage.commit(&mut summary)?;
                continue;
            }
            _ = sleep_until(wake_at), if wake_at.is_some() => {
                let woken = Woken {
                    processor: &mut *processor,
                    group: &group,
                    tasks: &mut tasks,
                    globals: globals.as_ref(),
                    prefetch: prefetch.as_deref(),
                };
                if let Err(err) = woken.wake(&mut stage, &mut in_flight, &mut last_turn, &mut summary).await {
                    stage.finish(&mut in_flight, &mut summary).await?;
                    return Err(err);
                }
                wake_at = wake_interval.map(|every| Instant::now() + every);
                continue;
            }
            _ = sleep_until(release_at), if release_at.is_some() => {
                let release = Release {
                    processor: &mut *processor,
                    group: &group,
                    tasks: &mut tasks,
                    globals: globals.as_ref(),
                    prefetch: prefetch.as_deref(),
                    limits: &limits,
                    metrics: metrics.held(),
                    budget: MAX_IN_FLIGHT.saturating_sub(in_flight.len()).min(RELEASE_BUDGET),
                };
                let sending = Sending {
                    stage: &mut stage,
                    in_flight: &mut in_flight,
                    last_turn: &mut last_turn,
                    summary: &mut summary,
                };
                let released = match release.round(sending).await {
                    Ok(released) => released,
                    Err(err) => {
                        stage.finish(&mut in_flight, &mut summary).await?;
                        return Err(err);
                    }
                };
                // A tenant draining comes back at once; otherwise the gauges refresh each second.
                let pause = if released > 0 { Duration::ZERO } else { RELEASE_IDLE };
                release_at = Some(Instant::now() + pause);
                continue;
            }
            message = consumer.recv(), if in_flight.len() < MAX_IN_FLIGHT => message,
        };
        // The consumer may have run a rebalance callback inside `recv`.
        stage.after_rebalance(&mut summary)?;
        let message = match message {
            Ok(message) => message,
            Err(err) => match ConsumerFailure::of(&err) {
                ConsumerFailure::Fatal => return Err(RuntimeError::Fatal(err)),
                ConsumerFailure::Refused => return Err(RuntimeError::Refused(err)),
                ConsumerFailure::Passing => {
                    tracing::warn!(processor = %name, error = %err, "consumer error, continuing");
                    continue;
                }
            },
        };
        let (headers, unreadable) = match owned_headers(&message) {
            Ok(headers) => (headers, None),
            Err(err) => (Vec::new(), Some(err)),
        };
        let input = InputRecord {
            topic: message.topic(),
            partition: message.partition(),
            offset: message.offset(),
            timestamp_ms: message.timestamp().to_millis(),
            key: message.key(),
            value: message.payload(),
            headers: &headers,
        };

        let span = tracing::debug_span!(
            "record",
            topic = input.topic,
            partition = input.partition,
            offset = input.offset,
            traceparent = input
                .header(TRACEPARENT)
                .map(String::from_utf8_lossy)
                .as_deref()
                .unwrap_or("")
        );
        let mut attempts = 0u32;
        let mut first_failed_at = None;
        let mut paused = false;
        let mut held = false;
        let processed = loop {
            attempts += 1;
            let prepared = match &prefetch {
                Some(prefetch) => prefetch.prefetch(input.value).await,
                None => Ok(()),
            };
            let ownership = tasks.task(input.partition).await?;
            let started = Instant::now();
            let tables = globals.as_ref().map(GlobalTables::view);
            let processed = ownership.process(&group, input.partition, tables, |state| {
                let readable = match &unreadable {
                    Some(err) => Err(ProcessError::permanent(UNREADABLE_HEADERS, err.to_string())),
                    None => Ok(()),
                };
                // A record whose headers cannot be read is not held: it could not be kept whole.
                if holding && readable.is_ok() {
                    held = hold::hold_if_paused(state, &group, &input, now_millis())?;
                    if held {
                        return Ok(Vec::new());
                    }
                }
                readable
                    .and(prepared)
                    .and_then(|()| span.in_scope(|| outputs_of(processor, &input, state, &limits)))
            });
            metrics.observe_processing(started.elapsed());
            if processed.result.is_err() && first_failed_at.is_none() {
                first_failed_at = Some(SystemTime::now());
            }
            let detail = match &processed.result {
                Err(ProcessError::Unavailable(detail)) => detail.clone(),
                Err(ProcessError::Transient(detail)) if attempts < settings.max_attempts => {
                    detail.clone()
                }
                _ => break processed,
            };
            summary.retries += 1;
            metrics.record_retry(input.topic);
            if !paused {
                // Stop fetching this partition while its record waits; the loop sleeps
                // instead of spinning.
                pause(&consumer, input.topic, input.partition, true);
                paused = true;
            }
            let wait = backoff(settings, attempts);
            tracing::warn!(processor = %name, topic = input.topic, partition = input.partition,
                offset = input.offset, attempts, ?wait, %detail, "retrying");
            tokio::select! {
                biased;
                _ = stopped(&mut stop) => {
                    // Not resolved: leave its offset unstored so it is redelivered.
                    stage.finish(&mut in_flight, &mut summary).await?;
                    return Ok(summary);
                }
                _ = tokio::time::sleep(wait) => {}
            }
        };
        if paused {
            pause(&consumer, input.topic, input.partition, false);
        }

        let failed_at = first_failed_at.unwrap_or_else(SystemTime::now);
        let letter = |error_class, reason, message: &str| {
            DeadLetter {
                input: &input,
                error_class,
                reason,
                message,
                processor: &name,
                processor_version: version,
                attempts,
                first_failed_at: failed_at,
            }
            .to_record(SystemTime::now())
        };
        let mut outcome = Handled {
            trigger: Trigger::Input {
                topic: input.topic.to_owned(),
                offset: input.offset,
            },
            partition: input.partition,
            produced: BTreeMap::new(),
            dead_letter: None,
            duplicate: processed.duplicate,
            age: input
                .timestamp_ms
                .and_then(|ms| event_age(ms, SystemTime::now())),
            event_age: input
                .event_time_ms()
                .and_then(|ms| event_age(ms, SystemTime::now())),
            replayed: input.header(REPLAY_ID).is_some(),
        };
        let records = match processed.result {
            Ok(outputs) => outputs,
            Err(ProcessError::Permanent { reason, detail }) => {
                tracing::debug!(processor = %name, topic = input.topic, partition = input.partition,
                    offset = input.offset, reason, "dead-lettering record");
                outcome.dead_letter = Some(reason);
                vec![letter("permanent", reason, &detail)]
            }
            Err(ProcessError::Transient(detail)) => {
                tracing::warn!(processor = %name, topic = input.topic, partition = input.partition,
                    offset = input.offset, attempts, "retries exhausted, dead-lettering record");
                outcome.dead_letter = Some("retries_exhausted");
                vec![letter("transient", "retries_exhausted", &detail)]
            }
            Err(ProcessError::Fatal { kind, detail }) => {
                // Nothing past the last resolved record is committed: after the fix and a
                // restart this record is processed again.
                stage.finish(&mut in_flight, &mut summary).await?;
                return Err(RuntimeError::Stopped { kind, detail });
            }
            Err(ProcessError::Unavailable(_)) => {
                unreachable!("outages are retried above until they pass or shutdown")
            }
        };
        let ownership = tasks.task(input.partition).await?;
        stage
            .deliver(
                Delivered {
                    records,
                    outcome,
                    changelog: processed.changelog,
                    ownership,
                },
                &mut in_flight,
                &mut last_turn,
                &mut summary,
            )
            .await?;
    }
    stage.finish(&mut in_flight, &mut summary).await?;
    on_error.armed = false;
    tracing::info!(processor = %name, ?summary, "processor stopped");
    Ok(summary)
}

/// Ends a run that stops on an error: the partitions' local state may hold writes whose
/// changelog records were never produced (an input whose output the broker refused) or were
/// aborted, so it is marked diverged and the consumer's close drops it instead of checkpointing
/// it; the next start restores it from the changelog. An open transaction is aborted first, so
/// that the close does not commit it half done.
struct DivergeOnError<'a> {
    transaction: Option<&'a Mutex<Transaction>>,
    producer: &'a FutureProducer,
    assignment: &'a Assignment,
    timeout: Duration,
    /// Cleared once the run finished cleanly.
    armed: bool,
}

impl Drop for DivergeOnError<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(transaction) = self.transaction {
            lock(transaction).abandon(self.producer, self.timeout);
        }
        self.assignment.diverge_all();
    }
}

/// What an input or a wake hands over for delivery: its records, what it resolves, its
/// changelog writes and the partition they belong to.
struct Delivered {
    records: Vec<OutputRecord>,
    outcome: Handled,
    changelog: Vec<ChangelogWrite>,
    ownership: Arc<Ownership>,
}

/// One round of [`Processor::wake`] calls over the assigned partitions.
struct Woken<'a, P: Processor> {
    processor: &'a mut P,
    group: &'a str,
    tasks: &'a mut Tasks,
    globals: Option<&'a GlobalTables>,
    prefetch: Option<&'a dyn Prefetch>,
}

impl<P: Processor> Woken<'_, P> {
    /// Wakes every partition the consumer is assigned, restoring the state of any not held
    /// yet: a partition whose inputs all came before a restart has work too. A failed wake is
    /// logged and left to the next round; a fatal one stops the processor.
    async fn wake(
        self,
        stage: &mut Stage<'_>,
        in_flight: &mut InFlight,
        last_turn: &mut Option<oneshot::Receiver<()>>,
        summary: &mut RunSummary,
    ) -> Result<(), RuntimeError> {
        let assigned = stage.assigned()?;
        if let Some(prefetch) = self.prefetch {
            // Schema ids a decode from state asked for in the last round.
            if let Err(err) = prefetch.prefetch(None).await {
                tracing::warn!(error = %err, "wake postponed: schemas not resolved");
                return Ok(());
            }
        }
        let tables = self.globals.map(GlobalTables::view);
        for partition in assigned {
            let ownership = self.tasks.task(partition).await?;
            let wake = Wake {
                partition,
                global_updates_then: ownership.woken_at(),
            };
            let processed = ownership.process(self.group, partition, tables, |state| {
                self.processor.wake(&wake, state)
            });
            let records = match processed.result {
                Ok(records) => {
                    ownership.set_woken_at(tables.map_or(0, |t| t.updates));
                    records
                }
                Err(ProcessError::Fatal { kind, detail }) => {
                    return Err(RuntimeError::Stopped { kind, detail })
                }
                Err(err) => {
                    tracing::warn!(partition, error = %err, "wake failed; the next one tries again");
                    continue;
                }
            };
            if records.is_empty() && processed.changelog.is_empty() {
                continue;
            }
            let outcome = Handled {
                trigger: Trigger::Wake,
                partition,
                produced: BTreeMap::new(),
                dead_letter: None,
                duplicate: false,
                age: None,
                event_age: None,
                replayed: false,
            };
            stage
                .deliver(
                    Delivered {
                        records,
                        outcome,
                        changelog: processed.changelog,
                        ownership,
                    },
                    in_flight,
                    last_turn,
                    summary,
                )
                .await?;
        }
        Ok(())
    }
}

/// How long the loop waits between rounds over held records when nothing was released.
const RELEASE_IDLE: Duration = Duration::from_secs(1);

/// Most held records one round releases, so that inputs keep flowing while a tenant drains.
const RELEASE_BUDGET: usize = 1_000;

/// What any output must keep to: its size, unless it is a dead letter of the processor's own.
pub(super) struct OutputLimits {
    max_output_bytes: usize,
    /// A processor's own dead letters (records it puts aside later, like a parked event) are
    /// held to the dead-letter limit, which the producer enforces, not to the output limit.
    dead_letter_topics: BTreeSet<String>,
}

/// The processor's outputs for `input`, each carrying the input's trace. Checked before the
/// input's state writes apply and before any output is sent: an output the broker would
/// refuse dead-letters its input whole.
pub(super) fn outputs_of<P: Processor>(
    processor: &mut P,
    input: &InputRecord<'_>,
    state: &mut State<'_>,
    limits: &OutputLimits,
) -> Result<Vec<OutputRecord>, ProcessError> {
    let mut outputs = processor.process(input, state)?;
    if let Some(trace) = input.header(TRACEPARENT) {
        carry_header(&mut outputs, TRACEPARENT, trace);
    }
    if let Some(at) = input.event_time_ms() {
        carry_header(&mut outputs, EVENT_TIME, at.to_string().as_bytes());
    }
    let limit = limits.max_output_bytes;
    match outputs
        .iter()
        .find(|o| o.size_bytes() > limit && !limits.dead_letter_topics.contains(&o.topic))
    {
        Some(over) => Err(output_too_large(over, limit)),
        None => Ok(outputs),
    }
}

/// Milliseconds since the epoch, by the wall clock.
pub(super) fn now_millis() -> i64 {
    backbone_calendar::now_micros() / 1000
}

/// Why an input whose output `over` is larger than `limit` is dead-lettered.
fn output_too_large(over: &OutputRecord, limit: usize) -> ProcessError {
    ProcessError::permanent(
        OUTPUT_TOO_LARGE,
        format!(
            "its output to `{}` is {} bytes, over runtime.max_output_bytes ({limit})",
            over.topic,
            over.size_bytes()
        ),
    )
}

/// Reason of an input dead-lettered because an output of it is over `runtime.max_output_bytes`.
pub const OUTPUT_TOO_LARGE: &str = "output_too_large";

/// Gives outputs without header `name` the input's `value`, so that the trace and the event's
/// time follow the event through every stage.
fn carry_header(outputs: &mut [OutputRecord], name: &str, value: &[u8]) {
    for output in outputs {
        if !output.headers.iter().any(|(n, _)| n == name) {
            output.headers.push((name.to_owned(), Some(value.to_vec())));
        }
    }
}

/// Pauses (or resumes) fetching one partition.
fn pause(consumer: &StreamConsumer<RuntimeContext>, topic: &str, partition: i32, paused: bool) {
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    let result = if paused {
        consumer.pause(&list)
    } else {
        consumer.resume(&list)
    };
    if let Err(err) = result {
        tracing::warn!(topic, partition, paused, error = %err, "could not change the partition's fetch state");
    }
}

/// Exponential backoff with full jitter, capped at `max_backoff`.
fn backoff(settings: &RuntimeSettings, attempts: u32) -> Duration {
    let exp = settings
        .initial_backoff
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(16));
    let cap = exp.min(settings.max_backoff);
    cap.mul_f64(0.5 + fastrand::f64() / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Header;

    #[test]
    fn outputs_inherit_the_trace_unless_they_carry_their_own() {
        let record = |headers: Vec<Header>| OutputRecord {
            topic: "t".into(),
            key: None,
            value: None,
            headers,
        };
        let own = (TRACEPARENT.to_owned(), Some(b"00-own".to_vec()));
        let mut outputs = vec![record(Vec::new()), record(vec![own.clone()])];
        carry_header(&mut outputs, TRACEPARENT, b"00-input");
        assert_eq!(
            outputs[0].headers,
            vec![(TRACEPARENT.to_owned(), Some(b"00-input".to_vec()))]
        );
        assert_eq!(outputs[1].headers, vec![own]);
    }

    #[test]
    fn an_event_keeps_the_time_it_entered_the_backbone_through_every_stage() {
        let input = |timestamp_ms, headers| InputRecord {
            topic: "t",
            partition: 0,
            offset: 0,
            timestamp_ms,
            key: None,
            value: None,
            headers,
        };
        // Its first record: the record's own timestamp.
        assert_eq!(input(Some(1_000), &[]).event_time_ms(), Some(1_000));
        // Later: the time its first record carried, whatever this record's timestamp.
        let carried = [(EVENT_TIME.to_owned(), Some(b"400".to_vec()))];
        assert_eq!(input(Some(1_000), &carried).event_time_ms(), Some(400));
        assert_eq!(input(None, &[]).event_time_ms(), None);
    }

    #[test]
    fn backoff_grows_and_stays_capped() {
        let settings = RuntimeSettings::default();
        for attempts in 1..40 {
            let wait = backoff(&settings, attempts);
            assert!(wait <= settings.max_backoff, "{wait:?}");
            assert!(wait >= settings.initial_backoff / 2, "{wait:?}");
        }
        assert!(backoff(&settings, 30) >= settings.max_backoff / 2);
    }
}
