//! Records of tenants paused at this sink, held in memory in the order they arrived. A held
//! record stays open (its offset and every later one of its partition uncommitted), so a crash
//! or a rebalance reads it again and holds it again; the ledger keeps a record delivered
//! before from being sent twice. Memory is bounded by `runtime.max_held`: past it the sink
//! takes no more records until a resume lets some go.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use backbone_core::tenant::{Held, TenantControls};

use super::accept::OwnedInput;
use super::{tenant_of, HeldRecord, SinkError, SinkLoop};
use crate::Sink;

/// How often the held-records gauges are refreshed.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// The pauses of this sink and the records they hold.
pub(super) struct Holds {
    controls: TenantControls,
    /// By tenant: each record and when it was held (milliseconds since the epoch).
    queues: BTreeMap<String, VecDeque<(i64, OwnedInput)>>,
    count: usize,
    published_at: Option<Instant>,
}

impl Holds {
    pub(super) fn new(controls: TenantControls) -> Self {
        Self {
            controls,
            queues: BTreeMap::new(),
            count: 0,
            published_at: None,
        }
    }

    /// Records held now.
    pub(super) fn count(&self) -> usize {
        self.count
    }

    /// Drops what was held from partitions this instance no longer owns: their next owner
    /// reads those records again.
    pub(super) fn forget(&mut self, partitions: &[i32]) {
        for queue in self.queues.values_mut() {
            queue.retain(|(_, record)| !partitions.contains(&record.partition));
        }
        self.queues.retain(|_, queue| !queue.is_empty());
        self.count = self.queues.values().map(VecDeque::len).sum();
    }

    /// Up to `budget` records of tenants no longer paused, each tenant's in order.
    fn releasable(&mut self, budget: usize) -> Result<Vec<OwnedInput>, SinkError> {
        let mut released = Vec::new();
        let tenants: Vec<String> = self.queues.keys().cloned().collect();
        for tenant in tenants {
            if released.len() >= budget || self.controls.is_paused(&tenant)? {
                continue;
            }
            let Some(queue) = self.queues.get_mut(&tenant) else {
                continue;
            };
            let take = queue.len().min(budget - released.len());
            released.extend(queue.drain(..take).map(|(_, record)| record));
            if queue.is_empty() {
                self.queues.remove(&tenant);
            }
        }
        self.count -= released.len();
        Ok(released)
    }

    fn figures(&self) -> BTreeMap<String, Held> {
        self.queues
            .iter()
            .filter_map(|(tenant, queue)| {
                let (oldest, _) = queue.front()?;
                Some((
                    tenant.clone(),
                    Held {
                        records: queue.len() as u64,
                        oldest_held_at_ms: *oldest,
                    },
                ))
            })
            .collect()
    }
}

impl<S: Sink> SinkLoop<'_, S> {
    /// Holds `record` when its tenant is paused here or has records held (so that its order
    /// is kept), otherwise takes it in. Returns false when asked to stop while waiting.
    pub(super) async fn take_in(&mut self, record: OwnedInput) -> Result<bool, SinkError> {
        let tenant = tenant_of(record.key.as_deref());
        // A record whose headers cannot be read is dead-lettered, not held: it is not whole.
        let holdable = record.unreadable.is_none() && !tenant.is_empty();
        if holdable
            && (self.holds.queues.contains_key(&tenant)
                || self.holds.controls.is_paused(&tenant)?)
        {
            // Open, so that neither it nor any later record of its partition commits.
            let placeholder = HeldRecord {
                key: None,
                value: None,
                headers: Vec::new(),
                timestamp_ms: None,
            };
            self.open
                .take(record.partition, record.offset, placeholder, 1);
            let now = backbone_calendar::now_ms();
            self.holds
                .queues
                .entry(tenant)
                .or_default()
                .push_back((now, record));
            self.holds.count += 1;
            return Ok(true);
        }
        self.accept(record).await
    }

    /// Takes in what resumed tenants have held, as much as the batch has room for, and
    /// refreshes the gauges. Returns false when asked to stop while waiting.
    pub(super) async fn release_held(&mut self) -> Result<bool, SinkError> {
        if self.holds.count > 0 {
            let room = self.settings.batch_max.saturating_sub(self.queue.len());
            for record in self.holds.releasable(room)? {
                // Its placeholder goes; `accept` opens it again for its deliveries.
                self.open.settle(record.partition, record.offset);
                if !self.accept(record).await? {
                    return Ok(false);
                }
            }
        }
        let due = self
            .holds
            .published_at
            .is_none_or(|at| at.elapsed() >= PUBLISH_EVERY);
        if due {
            self.metrics
                .held()
                .publish(self.holds.figures(), backbone_calendar::now_ms());
            self.holds.published_at = Some(Instant::now());
        }
        Ok(true)
    }
}
