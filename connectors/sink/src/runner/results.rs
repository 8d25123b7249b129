//! What a settled delivery leaves behind: its `DeliveryResult`, a dead letter for a rejection,
//! metrics, and, once the broker has those, the input offsets that became committable.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

use backbone_calendar::now_micros;
use backbone_core::dead_letter::{headers as dlq_headers, DeadLetter};
use backbone_core::kafka::{hand_over, refuses_size};
use backbone_core::metrics::event_age;
use backbone_core::processor::{event_time_ms, REPLAY_ID};
use backbone_core::{InputRecord, OutputRecord, TRACEPARENT};
use backbone_rating::content_id;
use backbone_schemas::types::{DeliveryOutcome, DeliveryResult, EventMetadata, TraceContext};
use backbone_schemas::wire::encode_framed;

use futures::future::join_all;
use futures::stream::FuturesOrdered;
use futures::StreamExt;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::FutureRecord;

use crate::{Announcer, Delivery, Outcome, Sink, Source};

use super::{HeldRecord, Settled, SinkError, SinkLoop};

impl<S: Sink> SinkLoop<'_, S> {
    pub(super) fn count(&mut self, outcome: &Outcome) {
        let label = match outcome {
            Outcome::Delivered { .. } => {
                self.summary.delivered += 1;
                "delivered"
            }
            Outcome::AlreadyDelivered { .. } => {
                self.summary.already_delivered += 1;
                "already_delivered"
            }
            Outcome::Rejected { .. } => {
                self.summary.rejected += 1;
                "rejected"
            }
            Outcome::Retry { .. } => return,
        };
        self.sink_metrics.record_delivery(self.destination, label);
    }

    /// What the sink announces of the deliveries the destination took.
    pub(super) fn announced(
        &self,
        settled: &[Settled<S::Payload>],
    ) -> Result<Vec<OutputRecord>, SinkError> {
        let Some(announcements) = &self.announcements else {
            return Ok(Vec::new());
        };
        let mut announcer = Announcer::new(&self.contracts, &announcements.topic);
        for s in settled {
            if let Outcome::Delivered { .. } | Outcome::AlreadyDelivered { .. } = s.outcome {
                self.sink
                    .announce(&s.delivery, &mut announcer)
                    .map_err(|err| SinkError::Publish {
                        topic: err.topic,
                        message: err.message,
                    })?;
            }
        }
        Ok(announcer.into_records())
    }

    pub(super) fn held(&self, partition: i32, offset: i64) -> Option<&HeldRecord> {
        self.open.get(partition, offset)
    }

    pub(super) fn result<P>(
        &self,
        delivery: &Delivery<P>,
        outcome: &Outcome,
        attempts: u32,
        source: &Source,
        held: &HeldRecord,
    ) -> Result<OutputRecord, SinkError> {
        let topic = self.settings.results_topic.clone();
        let (outcome_symbol, reference, code, message) = match outcome {
            Outcome::Delivered { reference } => {
                (DeliveryOutcome::Delivered, reference.clone(), None, None)
            }
            Outcome::AlreadyDelivered { reference } => (
                DeliveryOutcome::AlreadyDelivered,
                reference.clone(),
                None,
                None,
            ),
            Outcome::Rejected { code, message } => (
                DeliveryOutcome::Rejected,
                None,
                Some(code.clone()),
                Some(message.clone()),
            ),
            Outcome::Retry { .. } => (DeliveryOutcome::Unknown, None, None, None),
        };
        let input = self.sink.input_topic();
        // The delivery-result contract: one result per input record, also on replay, so the id
        // is the destination's and the record's, never the outcome's.
        let event_id = content_id(
            "dr-",
            &[
                self.destination,
                &delivery.key,
                input,
                &source.partition.to_string(),
                &source.offset.to_string(),
            ],
        );
        let now = now_micros();
        let traceparent = held
            .headers
            .iter()
            .find(|(name, _)| name == TRACEPARENT)
            .and_then(|(_, value)| value.as_deref())
            .map(|value| String::from_utf8_lossy(value).into_owned())
            .unwrap_or_else(|| format!("00-{}-{}-01", &event_id[3..35], &event_id[3..19]));
        let value = DeliveryResult {
            metadata: EventMetadata {
                tenant_id: delivery.tenant_id.clone(),
                event_id,
                source: self.name.clone(),
                r#type: "backbone.delivery.result".to_owned(),
                occurred_at: now,
                produced_at: now,
                trace: TraceContext {
                    traceparent,
                    tracestate: None,
                },
                schema_version: None,
            },
            delivery_key: delivery.key.clone(),
            destination: self.sink.destination(),
            outcome: outcome_symbol,
            attempts: i32::try_from(attempts.max(1)).unwrap_or(i32::MAX),
            destination_reference: reference,
            error_code: code,
            error_message: message,
            source_topic: input.to_owned(),
            source_partition: source.partition,
            source_offset: source.offset,
            amount: source.money.as_ref().map(|m| m.amount),
            currency: source.money.as_ref().map(|m| m.currency.clone()),
        };
        let id = self
            .contracts
            .id(&topic)
            .map_err(|err| SinkError::Publish {
                topic: topic.clone(),
                message: err.to_string(),
            })?;
        let bytes = encode_framed(id, &value).map_err(|err| SinkError::Publish {
            topic: topic.clone(),
            message: err.to_string(),
        })?;
        Ok(OutputRecord {
            key: Some(
                format!(
                    "{}:{}",
                    delivery.tenant_id,
                    delivery.subject.as_ref().unwrap_or(&delivery.key)
                )
                .into_bytes(),
            ),
            topic,
            value: Some(bytes),
            headers: Vec::new(),
        })
    }

    pub(super) fn dead_letter(
        &self,
        partition: i32,
        offset: i64,
        held: &HeldRecord,
        reason: &str,
        message: &str,
        attempts: u32,
    ) -> OutputRecord {
        let input = InputRecord {
            topic: self.sink.input_topic(),
            partition,
            offset,
            timestamp_ms: held.timestamp_ms,
            key: held.key.as_deref(),
            value: held.value.as_deref(),
            headers: &held.headers,
        };
        let now = SystemTime::now();
        DeadLetter {
            input: &input,
            error_class: "permanent",
            reason,
            message,
            processor: &self.name,
            processor_version: env!("CARGO_PKG_VERSION"),
            attempts: attempts.max(1),
            first_failed_at: now,
        }
        .to_record(now)
    }

    /// Hands `records` to the producer; once the broker has every one, the `settles` they were
    /// made for are settled (see [`SinkLoop::acknowledged`]). The sink goes on meanwhile, with
    /// at most [`MAX_PUBLISHING`] flushes waiting on the broker.
    pub(super) async fn publish(
        &mut self,
        records: Vec<OutputRecord>,
        settles: Vec<(i32, i64)>,
    ) -> Result<(), SinkError> {
        let timeout = self.settings.produce_timeout;
        let mut deliveries = Vec::with_capacity(records.len());
        for record in &records {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for (name, value) in &record.headers {
                headers = headers.insert(rdkafka::message::Header {
                    key: name,
                    value: value.as_deref(),
                });
            }
            let mut future = FutureRecord::<[u8], [u8]>::to(&record.topic).headers(headers);
            if let Some(key) = &record.key {
                future = future.key(key);
            }
            if let Some(value) = &record.value {
                future = future.payload(value);
            }
            let delivery = hand_over(&self.producer, future, timeout)
                .await
                .map_err(|err| SinkError::Publish {
                    topic: record.topic.clone(),
                    message: not_published(record, &err),
                })?;
            deliveries.push(delivery);
        }
        self.publishing.push_back(Box::pin(async move {
            let mut produced: BTreeMap<String, u64> = BTreeMap::new();
            for (record, delivery) in records.iter().zip(join_all(deliveries).await) {
                let failed = match delivery {
                    Ok(Ok(_)) => None,
                    Ok(Err((err, _))) => Some(not_published(record, &err)),
                    Err(_) => Some("the producer dropped the record before an answer".to_owned()),
                };
                if let Some(message) = failed {
                    return Err(SinkError::Publish {
                        topic: record.topic.clone(),
                        message,
                    });
                }
                *produced.entry(record.topic.clone()).or_default() += 1;
            }
            Ok(Acknowledged { settles, produced })
        }));
        while self.publishing.len() > MAX_PUBLISHING {
            if let Some(done) = self.publishing.next().await {
                self.acknowledged(done?);
            }
        }
        Ok(())
    }

    /// Waits until the broker has every result and dead letter handed to it, and settles
    /// what they were made for.
    pub(super) async fn published(&mut self) -> Result<(), SinkError> {
        while let Some(done) = self.publishing.next().await {
            self.acknowledged(done?);
        }
        Ok(())
    }

    /// A flush's records are on the broker: count them, settle their inputs.
    pub(super) fn acknowledged(&mut self, done: Acknowledged) {
        for (topic, n) in &done.produced {
            self.metrics.record_produced(topic, *n);
        }
        self.settle(&done.settles);
    }

    /// Settles one outstanding share of each `(partition, offset)` and stores what became
    /// committable.
    pub(super) fn settle(&mut self, settled: &[(i32, i64)]) {
        let input = self.sink.input_topic().to_owned();
        let mut partitions = BTreeSet::new();
        for &(partition, offset) in settled {
            if let Some(held) = self.open.settle(partition, offset) {
                let now = SystemTime::now();
                let age = |ms: Option<i64>| ms.and_then(|ms| event_age(ms, now));
                if let Some(age) = age(held.timestamp_ms) {
                    self.metrics.observe_end_to_end(&input, age);
                }
                if let Some(age) = age(event_time_ms(&held.headers, held.timestamp_ms)) {
                    self.metrics.observe_event_latency(&input, age);
                }
                if held.headers.iter().any(|(name, _)| name == REPLAY_ID) {
                    self.metrics.record_replayed(&input);
                }
                self.metrics.record_consumed(&input, partition);
                self.summary.consumed += 1;
            }
            partitions.insert(partition);
        }
        let partitions: Vec<i32> = partitions.into_iter().collect();
        self.store_offsets(&partitions);
    }

    /// Stores, per partition, the offset below its oldest unsettled record.
    pub(super) fn store_offsets(&mut self, partitions: &[i32]) {
        let topic = self.sink.input_topic().to_owned();
        for &partition in partitions {
            let Some(offset) = self.open.committable(partition) else {
                continue;
            };
            match self.consumer.store_offset(&topic, partition, offset) {
                Ok(()) => self.open.stored(partition, offset),
                // Revoked meanwhile: its next owner starts from the last commit.
                Err(err) => {
                    tracing::debug!(sink = %self.name, partition, error = %err, "offset not stored")
                }
            }
        }
    }
}

/// Why `record` was not published: for a dead letter, the input it carries (from its origin
/// headers), its size and, when the topic refused the size, what to raise. Its input and those
/// after it are not committed, so nothing is lost.
pub(super) fn not_published(record: &OutputRecord, err: &KafkaError) -> String {
    let origin = |name: &str| {
        record
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let (Some(topic), Some(partition), Some(offset)) = (
        origin(dlq_headers::ORIGIN_TOPIC),
        origin(dlq_headers::ORIGIN_PARTITION),
        origin(dlq_headers::ORIGIN_OFFSET),
    ) else {
        return err.to_string();
    };
    let fix = if refuses_size(err) {
        ": raise runtime.max_dead_letter_bytes and the topic's max.message.bytes, then restart"
    } else {
        ""
    };
    format!(
        "the {}-byte dead letter of {topic}[{partition}]@{offset} was not taken ({err}); nothing from that input on was committed{fix}",
        record.size_bytes()
    )
}

/// Flushes whose results and dead letters may wait on the broker at once; past it a flush waits
/// for the oldest.
pub(super) const MAX_PUBLISHING: usize = 4;

/// The results and dead letters of one flush on the broker.
pub(super) struct Acknowledged {
    /// The input records they settle.
    settles: Vec<(i32, i64)>,
    /// Records per topic.
    produced: BTreeMap<String, u64>,
}

/// Flushes waiting on the broker, oldest first.
pub(super) type Publishing =
    FuturesOrdered<Pin<Box<dyn Future<Output = Result<Acknowledged, SinkError>> + Send>>>;
