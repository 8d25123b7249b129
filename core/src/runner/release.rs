//! Rounds over the records held for paused tenants: the held-records gauges are refreshed, and
//! a resumed tenant's records go through the processor in the order they were held.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::oneshot;

use crate::dead_letter::DeadLetter;
use crate::delivery::{Handled, InFlight, Trigger};
use crate::global::GlobalTables;
use crate::hold::{self, HeldRecord};
use crate::metrics::event_age;
use crate::processor::{Prefetch, ProcessError, Processor};
use crate::state::{Ownership, Tasks};
use crate::tenant::{Held, HeldMetrics};

use super::stage::Stage;
use super::{now_millis, outputs_of, Delivered, OutputLimits, RunSummary, RuntimeError};

/// One round of releases over the assigned partitions.
pub(super) struct Release<'a, P: Processor> {
    pub(super) processor: &'a mut P,
    pub(super) group: &'a str,
    pub(super) tasks: &'a mut Tasks,
    pub(super) globals: Option<&'a GlobalTables>,
    pub(super) prefetch: Option<&'a dyn Prefetch>,
    pub(super) limits: &'a OutputLimits,
    pub(super) metrics: &'a HeldMetrics,
    /// Most records released in this round.
    pub(super) budget: usize,
}

/// Where a round delivers.
pub(super) struct Sending<'s, 'a> {
    pub(super) stage: &'s mut Stage<'a>,
    pub(super) in_flight: &'s mut InFlight,
    pub(super) last_turn: &'s mut Option<oneshot::Receiver<()>>,
    pub(super) summary: &'s mut RunSummary,
}

impl<P: Processor> Release<'_, P> {
    /// Publishes what is held and releases up to the budget; returns how many records went
    /// through. A record that fails for now stays at the head of its queue for the next round;
    /// one that can never pass is dead-lettered, as an input would be.
    pub(super) async fn round(mut self, mut out: Sending<'_, '_>) -> Result<usize, RuntimeError> {
        let assigned = out.stage.assigned()?;
        let mut held: BTreeMap<String, Held> = BTreeMap::new();
        let mut released = 0;
        for partition in assigned {
            let ownership = self.tasks.task(partition).await?;
            let tables = self.globals.map(GlobalTables::view);
            let surveyed = ownership.process(self.group, partition, tables, |state| {
                let mut queues = Vec::new();
                for tenant in hold::held_tenants(state)? {
                    if let Some(figures) = hold::held(state, &tenant)? {
                        queues.push((tenant, figures));
                    }
                }
                Ok(queues)
            });
            let queues = match surveyed.result {
                Ok(queues) => queues,
                Err(err) => {
                    stop_or_postpone(err, partition)?;
                    continue;
                }
            };
            for (tenant, figures) in queues {
                let entry = held.entry(tenant.clone()).or_insert(Held {
                    records: 0,
                    oldest_held_at_ms: figures.oldest_held_at_ms,
                });
                entry.oldest_held_at_ms = entry.oldest_held_at_ms.min(figures.oldest_held_at_ms);
                let went = self
                    .release_tenant(&ownership, partition, &tenant, &mut out)
                    .await?;
                released += went;
                entry.records += figures.records.saturating_sub(went as u64);
                if entry.records == 0 {
                    held.remove(&tenant);
                }
            }
        }
        self.metrics.publish(held, now_millis());
        Ok(released)
    }

    /// Releases `tenant`'s records of `partition` in order until its queue is empty, it is
    /// paused again, a record fails for now, or the budget is spent.
    async fn release_tenant(
        &mut self,
        ownership: &Arc<Ownership>,
        partition: i32,
        tenant: &str,
        out: &mut Sending<'_, '_>,
    ) -> Result<usize, RuntimeError> {
        let mut went = 0;
        while self.budget > 0 {
            let tables = self.globals.map(GlobalTables::view);
            let head = ownership.process(self.group, partition, tables, |state| {
                hold::releasable_head(state, self.group, tenant)
            });
            let held: HeldRecord = match head.result {
                Ok(Some(held)) => held,
                Ok(None) => break,
                Err(err) => return stop_or_postpone(err, partition).map(|()| went),
            };
            let prepared = match self.prefetch {
                Some(prefetch) => prefetch.prefetch(held.value.as_deref()).await,
                None => Ok(()),
            };
            let input = held.input();
            let processor = &mut *self.processor;
            let limits = self.limits;
            let processed = ownership.process(self.group, partition, tables, |state| {
                hold::pop_head(state, tenant)?;
                prepared.and_then(|()| outputs_of(processor, &input, state, limits))
            });
            let mut outcome = Handled {
                trigger: Trigger::Released {
                    topic: held.topic.clone(),
                    offset: held.offset,
                },
                partition,
                produced: BTreeMap::new(),
                dead_letter: None,
                duplicate: processed.duplicate,
                age: None,
                event_age: input
                    .event_time_ms()
                    .and_then(|ms| event_age(ms, SystemTime::now())),
                replayed: false,
            };
            let (records, changelog) = match processed.result {
                Ok(records) => (records, processed.changelog),
                Err(ProcessError::Permanent { reason, detail }) => {
                    let popped = ownership.process(self.group, partition, tables, |state| {
                        hold::pop_head(state, tenant)
                    });
                    if let Err(err) = popped.result {
                        return stop_or_postpone(err, partition).map(|()| went);
                    }
                    tracing::debug!(tenant, topic = %held.topic, offset = held.offset, reason,
                        "dead-lettering a released record");
                    outcome.dead_letter = Some(reason);
                    let now = SystemTime::now();
                    let name = self.processor.name().to_owned();
                    let letter = DeadLetter {
                        input: &input,
                        error_class: "permanent",
                        reason,
                        message: &detail,
                        processor: &name,
                        processor_version: env!("CARGO_PKG_VERSION"),
                        attempts: 1,
                        first_failed_at: now,
                    }
                    .to_record(now);
                    (vec![letter], popped.changelog)
                }
                Err(err) => return stop_or_postpone(err, partition).map(|()| went),
            };
            out.stage
                .deliver(
                    Delivered {
                        records,
                        outcome,
                        changelog,
                        ownership: Arc::clone(ownership),
                    },
                    out.in_flight,
                    out.last_turn,
                    out.summary,
                )
                .await?;
            self.budget -= 1;
            went += 1;
        }
        Ok(went)
    }
}

/// A fatal error stops the processor; any other leaves the record held for the next round.
fn stop_or_postpone(err: ProcessError, partition: i32) -> Result<(), RuntimeError> {
    match err {
        ProcessError::Fatal { kind, detail } => Err(RuntimeError::Stopped { kind, detail }),
        err => {
            tracing::warn!(partition, error = %err, "a held record did not go through; the next round tries again");
            Ok(())
        }
    }
}
