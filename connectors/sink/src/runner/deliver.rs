//! Delivering a round: one attempt per delivery behind the circuit breaker, the ledger marks
//! around it, what the destination did not take set to wait for its backoff (`Retry-After` as
//! a floor), and the input paused while the destination is down.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use backbone_core::shutdown::stopped;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::backoff;
use crate::circuit::CircuitState;
use crate::ledger::{DeliveryState, LedgerEntry};
use crate::{Delivery, DeliveryError, Outcome, RetryReason, Sink, Source};

use super::retry::Sending;
use super::{Immediate, Round, Settled, SinkError, SinkLoop, DESTINATION_REJECTED};

impl<S: Sink> SinkLoop<'_, S> {
    /// Sends the queue and the retries that are due, records the outcomes, publishes results
    /// and dead letters, settles the sources; what the destination did not take waits for its
    /// retry meanwhile. Returns false when asked to stop mid-way (nothing of the round settled).
    pub(super) async fn flush(&mut self) -> Result<bool, SinkError> {
        self.batch_started = None;
        let queue = std::mem::take(&mut self.queue);
        let immediate = std::mem::take(&mut self.immediate);
        let now = Instant::now();
        let mut sending = self.retrying.take_due(now);
        // One delivery per ordering key goes out in a round; a later one waits its turn.
        let mut busy: HashSet<String> = sending
            .iter()
            .map(|s| s.delivery.ordering_key().to_owned())
            .collect();
        for delivery in queue {
            let key = delivery.ordering_key();
            if busy.contains(key) || self.retrying.holds(key) {
                self.retrying.wait(Sending::new(delivery), now);
            } else {
                busy.insert(key.to_owned());
                sending.push(Sending::new(delivery));
            }
        }
        let settled = match self.deliver(sending).await? {
            Round::Done(settled) => settled,
            Round::Stopped => return Ok(false),
        };
        self.sink_metrics.set_retrying(self.retrying.len());
        // On the broker before the ledger says confirmed: a confirmed delivery is never sent
        // or announced again.
        let announced = self.announced(&settled)?;
        if !announced.is_empty() {
            self.publish(announced, Vec::new()).await?;
            self.published().await?;
        }
        let mut entries = Vec::with_capacity(settled.len());
        let mut members = Vec::new();
        for s in &settled {
            let (state, reference, code, message) = match &s.outcome {
                Outcome::Delivered { reference } | Outcome::AlreadyDelivered { reference } => {
                    for member in &s.delivery.members {
                        members.push((member.as_str(), s.delivery.key.as_str()));
                    }
                    (DeliveryState::Confirmed, reference.clone(), None, None)
                }
                Outcome::Rejected { code, message } => (
                    DeliveryState::Rejected,
                    None,
                    Some(code.clone()),
                    Some(message.clone()),
                ),
                Outcome::Retry { .. } => continue,
            };
            let mut entry = LedgerEntry::new(state, s.attempts);
            entry.reference = reference;
            entry.error_code = code;
            entry.error_message = message;
            entries.push((s.delivery.key.as_str(), entry));
        }
        let refs: Vec<(&str, &LedgerEntry)> = entries.iter().map(|(k, e)| (*k, e)).collect();
        self.ledger.write(&refs, &members, true)?;
        drop(refs);
        drop(entries);

        let mut records = Vec::new();
        let mut touched = Vec::new();
        for s in &settled {
            self.count(&s.outcome);
            for source in &s.delivery.sources {
                let Some(held) = self.held(source.partition, source.offset) else {
                    continue;
                };
                records.push(self.result(&s.delivery, &s.outcome, s.attempts, source, held)?);
                if let Outcome::Rejected { code, message } = &s.outcome {
                    records.push(self.dead_letter(
                        source.partition,
                        source.offset,
                        held,
                        DESTINATION_REJECTED,
                        &format!("{code}: {message}"),
                        s.attempts,
                    ));
                    self.metrics
                        .record_dead_letter(self.sink.input_topic(), DESTINATION_REJECTED);
                    self.summary.dead_lettered += 1;
                }
                touched.push((source.partition, source.offset));
            }
        }
        for item in &immediate {
            match item {
                Immediate::DeadLetter {
                    partition,
                    offset,
                    reason,
                    message,
                } => {
                    let Some(held) = self.held(*partition, *offset) else {
                        continue;
                    };
                    records.push(self.dead_letter(*partition, *offset, held, reason, message, 1));
                    self.metrics
                        .record_dead_letter(self.sink.input_topic(), reason);
                    self.summary.dead_lettered += 1;
                    touched.push((*partition, *offset));
                }
                Immediate::AlreadyDelivered {
                    partition,
                    offset,
                    key,
                    tenant_id,
                    money,
                } => {
                    let Some(held) = self.held(*partition, *offset) else {
                        continue;
                    };
                    let delivery = Delivery {
                        key: key.clone(),
                        tenant_id: tenant_id.clone(),
                        payload: (),
                        money: money.clone(),
                        sources: Vec::new(),
                        members: Vec::new(),
                        subject: None,
                    };
                    let source = Source {
                        partition: *partition,
                        offset: *offset,
                        money: money.clone(),
                    };
                    let outcome = Outcome::AlreadyDelivered { reference: None };
                    records.push(self.result(&delivery, &outcome, 0, &source, held)?);
                    self.count(&outcome);
                    touched.push((*partition, *offset));
                }
            }
        }
        self.publish(records, touched).await?;
        Ok(true)
    }

    /// Sends `sending` once, behind the circuit breaker. Returns the deliveries that got a final
    /// outcome; the others wait in `retrying` for their backoff (or, under an open circuit, for
    /// the next round's wait on it).
    pub(super) async fn deliver(
        &mut self,
        sending: Vec<Sending<S::Payload>>,
    ) -> Result<Round<S::Payload>, SinkError> {
        let mut settled = Vec::with_capacity(sending.len());
        let mut waiting = Vec::with_capacity(sending.len());
        for sending in sending {
            match self.ledger.get(&sending.delivery.key)? {
                Some(entry) if entry.state == DeliveryState::Confirmed => settled.push(Settled {
                    delivery: sending.delivery,
                    outcome: Outcome::AlreadyDelivered {
                        reference: entry.reference,
                    },
                    attempts: entry.attempts,
                }),
                entry => {
                    let attempts = entry.map_or(0, |e| e.attempts);
                    waiting.push((sending, attempts));
                }
            }
        }
        if waiting.is_empty() {
            return Ok(Round::Done(settled));
        }
        loop {
            let hold = self.circuit.wait(Instant::now());
            if hold.is_zero() {
                break;
            }
            if !self.wait_paused(hold).await? {
                return Ok(Round::Stopped);
            }
        }
        self.sink_metrics.set_circuit(self.circuit.state());
        // A half-open circuit sends one delivery as its probe, not the whole round.
        if self.circuit.state() == CircuitState::HalfOpen {
            for (held_back, _) in waiting.split_off(1) {
                self.retrying.wait(held_back, Instant::now());
            }
        }
        for (_, attempts) in &mut waiting {
            *attempts += 1;
        }
        self.mark(
            waiting.iter().map(|(s, a)| (s.delivery.key.as_str(), *a)),
            DeliveryState::InFlight,
            None,
        )?;
        let batch: Vec<&Delivery<S::Payload>> = waiting.iter().map(|(s, _)| &s.delivery).collect();
        let started = Instant::now();
        let answer = self.sink.deliver(&batch).await;
        self.sink_metrics
            .observe_batch(started.elapsed(), batch.len());
        drop(batch);
        let outcomes = match answer {
            Ok(outcomes) if outcomes.len() == waiting.len() => outcomes,
            Ok(outcomes) => {
                tracing::error!(sink = %self.name, sent = waiting.len(), answered = outcomes.len(),
                    "the sink answered a batch with the wrong number of outcomes; retrying it");
                vec![retry_all("outcome count mismatch"); waiting.len()]
            }
            Err(DeliveryError::Unauthorized { status, message }) => {
                tracing::error!(sink = %self.name, status, %message,
                    "the destination refused the credentials; stopping without committing");
                return Err(SinkError::Unauthorized { status, message });
            }
            Err(DeliveryError::Transient {
                reason,
                message,
                after,
            }) => vec![
                Outcome::Retry {
                    reason,
                    message,
                    after
                };
                waiting.len()
            ],
        };
        let from_ledger = settled.len();
        let mut last_retry = None;
        let mut retries = Vec::new();
        let mut awaiting_only = true;
        for ((sending, attempts), outcome) in waiting.into_iter().zip(outcomes) {
            match outcome {
                Outcome::Retry {
                    reason,
                    message,
                    after,
                } => {
                    awaiting_only &= reason == RetryReason::Awaiting;
                    last_retry = Some((reason, message));
                    retries.push((sending, attempts, reason, after));
                }
                outcome => settled.push(Settled {
                    delivery: sending.delivery,
                    outcome,
                    attempts,
                }),
            }
        }
        if retries.is_empty() || settled.len() > from_ledger {
            if self.circuit.success() {
                tracing::info!(sink = %self.name, "destination answers again; circuit closed");
            }
            self.resume();
        } else if awaiting_only {
            // Nothing failed: the destination has the deliveries and answers later.
        } else if self.circuit.failure(Instant::now()) {
            self.summary.circuit_opened += 1;
            tracing::warn!(sink = %self.name, open_for = ?self.settings.circuit.open_for,
                "destination keeps failing; circuit open, input paused");
        }
        self.sink_metrics.set_circuit(self.circuit.state());
        let Some((reason, message)) = last_retry else {
            return Ok(Round::Done(settled));
        };
        self.summary.retries += 1;
        self.sink_metrics.record_retry(reason);
        self.metrics.record_retry(self.sink.input_topic());
        self.mark(
            retries
                .iter()
                .map(|(s, a, _, _)| (s.delivery.key.as_str(), *a)),
            DeliveryState::Pending,
            Some((reason, &message)),
        )?;
        let now = Instant::now();
        let mut soonest: Option<Duration> = None;
        let count = retries.len();
        for (sending, attempts, reason, after) in retries {
            // Under an open circuit the next round's wait on it is the backoff.
            let wait = if reason == RetryReason::Awaiting {
                after.unwrap_or(self.settings.retry.initial_backoff)
            } else if self.circuit.state() == CircuitState::Open {
                Duration::ZERO
            } else {
                backoff::delay(&self.settings.retry, attempts, after)
            };
            soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
            self.retrying.wait(sending, now + wait);
        }
        if awaiting_only {
            tracing::debug!(sink = %self.name, awaiting = count, %message,
                soonest = ?soonest.unwrap_or_default(), "deliveries awaiting the destination's answer");
        } else {
            tracing::warn!(sink = %self.name, retrying = count, reason = reason.as_str(),
                %message, soonest = ?soonest.unwrap_or_default(), "deliveries not accepted, retrying");
        }
        Ok(Round::Done(settled))
    }

    /// Writes the state of deliveries still being worked on, by key and attempts; not synced, a
    /// crash re-sends them.
    pub(super) fn mark<'k>(
        &self,
        waiting: impl IntoIterator<Item = (&'k str, u32)>,
        state: DeliveryState,
        failure: Option<(RetryReason, &str)>,
    ) -> Result<(), SinkError> {
        let entries: Vec<(&str, LedgerEntry)> = waiting
            .into_iter()
            .map(|(key, attempts)| {
                let mut entry = LedgerEntry::new(state, attempts);
                if let Some((reason, message)) = failure {
                    entry.error_code = Some(reason.as_str().to_owned());
                    entry.error_message = Some(message.to_owned());
                }
                (key, entry)
            })
            .collect();
        let refs: Vec<(&str, &LedgerEntry)> = entries.iter().map(|(k, e)| (*k, e)).collect();
        self.ledger.write(&refs, &[], false)?;
        Ok(())
    }

    /// Waits `hold` (an open circuit) with the input paused until the next delivery makes
    /// progress. The consumer is polled meanwhile: librdkafka takes a consumer
    /// that has not polled for `max.poll.interval.ms` out of its group, and what it had not
    /// committed would be read and answered again. Returns false when asked to stop.
    pub(super) async fn wait_paused(&mut self, hold: Duration) -> Result<bool, SinkError> {
        if !self.paused {
            match self.consumer.assignment() {
                Ok(assignment) => {
                    if let Err(err) = self.consumer.pause(&assignment) {
                        tracing::warn!(sink = %self.name, error = %err, "could not pause the input");
                    }
                    self.paused = true;
                }
                Err(err) => {
                    tracing::warn!(sink = %self.name, error = %err, "could not read the assignment to pause it")
                }
            }
        }
        let until = tokio::time::Instant::now() + hold;
        loop {
            let read = tokio::select! {
                biased;
                _ = stopped(&mut self.stop) => return Ok(false),
                _ = tokio::time::sleep_until(until) => return Ok(true),
                message = self.consumer.recv() => {
                    message.map(|m| (m.topic().to_owned(), m.partition(), m.offset()))
                }
            };
            self.settle_assignment();
            match read {
                Ok((topic, partition, offset)) => self.put_back(&topic, partition, offset)?,
                Err(err) => {
                    let err = SinkError::passing(err)?;
                    tracing::warn!(sink = %self.name, error = %err, "consumer error while paused, continuing")
                }
            }
        }
    }

    /// Sends a partition assigned while the input is paused back to `offset`, the record just
    /// read from it, and pauses it too. If it cannot, the sink stops: reading on past a record
    /// it did not take would lose it.
    pub(super) fn put_back(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<(), SinkError> {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(topic, partition, Offset::Offset(offset))?;
        let list = self
            .consumer
            .seek_partitions(list, Duration::from_secs(10))?;
        if let Some(Err(err)) = list.elements().first().map(|e| e.error()) {
            return Err(SinkError::Kafka(err));
        }
        self.consumer.pause(&list)?;
        tracing::info!(sink = %self.name, partition, offset, "partition assigned while paused; it waits with the rest");
        Ok(())
    }

    /// Gives a new assignment the sink's own pause state. librdkafka keeps a partition's pause
    /// across its revocation and a new assignment: a partition paused under an open circuit,
    /// lost in a rebalance (a broker restart timed the session out) and assigned again after
    /// the circuit closed was never read again, and the sink stood still with its records
    /// uncommitted (found by the chaos run with broker restarts).
    pub(super) fn settle_assignment(&mut self) {
        if !self
            .consumer
            .context()
            .assigned
            .swap(false, Ordering::SeqCst)
        {
            return;
        }
        let assignment = match self.consumer.assignment() {
            Ok(assignment) => assignment,
            Err(err) => {
                tracing::warn!(sink = %self.name, error = %err, "could not read the new assignment");
                return;
            }
        };
        let settled = if self.paused {
            self.consumer.pause(&assignment)
        } else {
            self.consumer.resume(&assignment)
        };
        if let Err(err) = settled {
            tracing::warn!(sink = %self.name, error = %err, paused = self.paused,
                "could not give the new assignment the input's pause state");
        }
    }

    pub(super) fn resume(&mut self) {
        if !self.paused {
            return;
        }
        self.paused = false;
        match self.consumer.assignment() {
            Ok(assignment) => {
                if let Err(err) = self.consumer.resume(&assignment) {
                    tracing::warn!(sink = %self.name, error = %err, "could not resume the input");
                }
            }
            Err(err) => {
                tracing::warn!(sink = %self.name, error = %err, "could not read the assignment to resume it")
            }
        }
    }
}

pub(super) fn retry_all(message: &str) -> Outcome {
    Outcome::Retry {
        reason: RetryReason::Unavailable,
        message: message.to_owned(),
        after: None,
    }
}
