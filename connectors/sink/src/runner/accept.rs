//! Taking an input record in: its schema resolved, the sink's answer (deliveries, held, already
//! delivered, dead letter) queued, the record held open until settled.

use backbone_core::kafka::{owned_headers, UNREADABLE_HEADERS};
use backbone_core::shutdown::stopped;
use backbone_core::{Header, InputRecord, Prefetch, ProcessError};
use rdkafka::message::Message;

use crate::backoff;
use crate::{Accepted, Sink, SinkContext, Source};

use super::{tenant_of, HeldRecord, Immediate, SinkError, SinkLoop};

impl<S: Sink> SinkLoop<'_, S> {
    /// Takes one input record in. Returns false when asked to stop while waiting.
    pub(super) async fn accept(&mut self, record: OwnedInput) -> Result<bool, SinkError> {
        let mut attempts = 0u32;
        let prepared = loop {
            attempts += 1;
            match self.contracts.prefetch(record.value.as_deref()).await {
                Ok(()) => break Ok(()),
                Err(ProcessError::Permanent { reason, detail }) => break Err((reason, detail)),
                Err(err) => {
                    let wait = backoff::delay(&self.settings.retry, attempts, None);
                    tracing::warn!(sink = %self.name, error = %err, ?wait, "schema registry unavailable, retrying");
                    tokio::select! {
                        biased;
                        _ = stopped(&mut self.stop) => return Ok(false),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        };
        let input = record.as_input();
        let readable = match &record.unreadable {
            Some(err) => Err((UNREADABLE_HEADERS, err.to_string())),
            None => prepared,
        };
        let accepted = match readable {
            Ok(()) => {
                let context = SinkContext {
                    codec: self.contracts.codec(),
                    ledger: &self.ledger,
                };
                self.sink
                    .accept(&input, &context)
                    .map_err(|rejection| (rejection.reason, rejection.detail))
            }
            Err(failure) => Err(failure),
        };
        let (partition, offset) = (record.partition, record.offset);
        let outstanding = match accepted {
            Ok(Accepted::Deliver(deliveries)) if deliveries.is_empty() => 0,
            Ok(Accepted::Deliver(deliveries)) => {
                let count = deliveries.len();
                for mut delivery in deliveries {
                    if delivery.sources.is_empty() {
                        delivery.sources.push(Source {
                            partition,
                            offset,
                            money: delivery.money.clone(),
                        });
                    }
                    self.queue.push(delivery);
                }
                count
            }
            Ok(Accepted::Held) => 1,
            Ok(Accepted::AlreadyDelivered { key, money }) => {
                self.immediate.push(Immediate::AlreadyDelivered {
                    partition,
                    offset,
                    key,
                    tenant_id: tenant_of(record.key.as_deref()),
                    money,
                });
                1
            }
            Err((reason, message)) => {
                self.immediate.push(Immediate::DeadLetter {
                    partition,
                    offset,
                    reason,
                    message,
                });
                1
            }
        };
        let held = HeldRecord {
            key: record.key,
            value: record.value,
            headers: record.headers,
            timestamp_ms: record.timestamp_ms,
        };
        self.open.take(partition, offset, held, outstanding);
        if outstanding == 0 {
            // Nothing to deliver: settled now.
            self.summary.consumed += 1;
            self.metrics.record_consumed(&record.topic, partition);
            self.store_offsets(&[partition]);
        }
        Ok(true)
    }
}

/// An input record, owned.
pub(super) struct OwnedInput {
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) timestamp_ms: Option<i64>,
    pub(super) key: Option<Vec<u8>>,
    pub(super) value: Option<Vec<u8>>,
    pub(super) headers: Vec<Header>,
    /// Why the headers could not be read, if they could not: the record is dead-lettered.
    pub(super) unreadable: Option<backbone_core::kafka::UnreadableHeaders>,
}

impl OwnedInput {
    pub(super) fn from<M: Message>(message: &M) -> Self {
        let (headers, unreadable) = match owned_headers(message) {
            Ok(headers) => (headers, None),
            Err(err) => (Vec::new(), Some(err)),
        };
        Self {
            unreadable,
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            timestamp_ms: message.timestamp().to_millis(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers,
        }
    }

    pub(super) fn as_input(&self) -> InputRecord<'_> {
        InputRecord {
            topic: &self.topic,
            partition: self.partition,
            offset: self.offset,
            timestamp_ms: self.timestamp_ms,
            key: self.key.as_deref(),
            value: self.value.as_deref(),
            headers: &self.headers,
        }
    }
}
