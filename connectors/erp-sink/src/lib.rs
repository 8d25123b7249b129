//! `erp-sink`: ledger postings become balanced journal batches in the ERP, on the finance
//! team's schedule rather than one request per usage line.
//!
//! Postings are held per legal entity, currency, accounting period and arrival window (see
//! [`journal`]); their offsets stay uncommitted while they are held, so a crash loses nothing.
//! A window closes `grace` after its end and becomes one `JournalBatch`, posted under its
//! `batch_id` as the ERP's external id. The ERP answers a batch it already holds as a
//! duplicate; its business errors (unbalanced, closed period), which it reports inside HTTP 200
//! bodies as real ERPs do, are rejections that dead-letter the batch's postings with the
//! ERP's answer. Once a batch is confirmed the ledger remembers which postings it holds: a
//! posting redelivered later is settled as already delivered, and one that is new to a posted
//! window becomes an adjustment batch. That ledger is local to one instance, so before each
//! batch the sink also asks the ERP which of its postings it holds and whether its id is taken:
//! a lost answer, a lost disk or a partition moved to another instance posts nothing twice.
//!
//! Every batch the ERP holds is announced on `erp.journal-batches` as the `JournalBatch` it
//! was posted as, keyed `<tenant>:<legal entity>`: after the ERP answers `posted` or
//! `duplicate`, and, when the postings come again and the ERP already holds them (the sink
//! stopped between the ERP's answer and its commit), rebuilt from those postings under the
//! batch id the ERP holds them by. Readers take a batch id once.

pub mod journal;
pub mod legacy;
mod outbox;
pub mod request;
pub mod route;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use backbone_calendar::micros_of;
use backbone_core::config::{ConfigError, Validate};
use backbone_core::InputRecord;
use backbone_schemas::types::{Amount, Contract, Destination, JournalBatch, LedgerPosting};
use backbone_sink::app::SinkApp;
use backbone_sink::http::{JsonApi, Reply};
use backbone_sink::settings::require_topic;
use backbone_sink::{
    decode, Accepted, AnnounceError, Announcements, Announcer, Delivery, DeliveryError,
    DeliveryLedger, DeliveryState, DestinationSettings, Money, Outcome, Rejection, RetryReason,
    Sink, SinkContext, Source,
};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::journal::{build_batch, HeldAt, JournalError, OpenWindow, WindowKey, Windows};
use crate::legacy::{legacy_file, Answer, LegacyErp, LegacySettings};
use crate::outbox::write_csv;
use crate::request::JournalRequest;
use crate::route::{ErpTarget, Route, Routes};

/// The `[sink]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ErpSettings {
    /// Topic of `LedgerPosting`s.
    pub topic: String,
    /// Length of an arrival window.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// How long after its end a window waits for late postings before it is posted.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// Also write each batch as `<batch_id>.csv` here, for ERPs that import files.
    pub outbox_dir: Option<PathBuf>,
    /// Where each batch the ERP holds is announced as a `JournalBatch`.
    pub journal_batches_topic: String,
    /// The ERP of postings no route covers.
    pub default_erp: ErpTarget,
    /// Legal entities' ERPs by date (`[[sink.routes]]`): a cutover is a second route.
    pub routes: Vec<Route>,
    /// The legacy ERP's file exchange, required when a route or the default reaches it.
    pub legacy: Option<LegacySettings>,
}

impl Default for ErpSettings {
    fn default() -> Self {
        Self {
            topic: "erp.postings".to_owned(),
            window: Duration::from_secs(60),
            grace: Duration::from_secs(10),
            outbox_dir: None,
            journal_batches_topic: "erp.journal-batches".to_owned(),
            default_erp: ErpTarget::Cloud,
            routes: Vec::new(),
            legacy: None,
        }
    }
}

impl Validate for ErpSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| {
            Err(ConfigError::Invalid {
                key: format!("sink.{key}"),
                message,
            })
        };
        require_topic(&self.topic)?;
        if self.journal_batches_topic.is_empty() {
            return invalid("journal_batches_topic", "must name a topic".to_owned());
        }
        if self.window < Duration::from_millis(100) {
            return invalid(
                "window",
                format!("must be at least 100ms, got {:?}", self.window),
            );
        }
        if let Some(dir) = &self.outbox_dir {
            if dir.as_os_str().is_empty() {
                return invalid("outbox_dir", "must be a directory path".to_owned());
            }
        }
        let routes = Routes::new(self.default_erp, &self.routes)?;
        match &self.legacy {
            Some(legacy) => legacy.validate(),
            None if routes.reaches(ErpTarget::Legacy) => invalid(
                "legacy",
                "postings are routed to the legacy ERP, whose file exchange is not configured"
                    .to_owned(),
            ),
            None => Ok(()),
        }
    }
}

/// What one ERP delivery carries.
#[derive(Debug, Clone)]
pub enum JournalDelivery {
    /// A closed window to post as batch number `sequence` of its key, or a later number when
    /// the ERP already holds that one.
    Batch(Box<PendingBatch>),
    /// A window whose postings cannot form a batch (its totals overflow): rejected without a
    /// request, so its postings reach the dead-letter topic instead of waiting for ever.
    Unbuildable(String),
}

/// A closed window and the batch number the ledger says is next for it.
#[derive(Debug, Clone)]
pub struct PendingBatch {
    /// The window's key.
    pub key: WindowKey,
    /// Its postings (the records that carried them are the delivery's sources).
    pub window: OpenWindow,
    /// The first batch number the ledger does not hold as confirmed.
    pub sequence: u32,
    /// When the window closed, microseconds since the epoch.
    pub closed_at: i64,
}

/// How many batch numbers past the ledger's a redelivered window's batches are looked for
/// among those the ERP holds: a window gets one number more per adjustment, a handful.
const SEQUENCES_SEARCHED: u32 = 64;

/// A posting the ERP holds a line of: the batch holding it, by its external id and document.
#[derive(Debug, Clone)]
struct HeldPosting {
    batch_id: String,
    document: String,
}

/// The ERP sink.
#[derive(Debug)]
pub struct ErpSink {
    settings: ErpSettings,
    api: JsonApi,
    routes: Routes,
    legacy: Option<LegacyErp>,
    /// Per delivery key, the legacy batch file it dropped and awaits the answer to.
    dropped: Mutex<HashMap<String, String>>,
    windows: Windows,
    /// Per delivery key, the batches the ERP holds of the delivery's window, from `deliver`
    /// until `announce` takes them.
    held_batches: Mutex<HashMap<String, Vec<JournalBatch>>>,
}

impl ErpSink {
    /// A sink posting through `api` to the cloud ERP and through `settings.legacy` to the
    /// legacy one; settings that do not validate are refused.
    pub fn new(settings: ErpSettings, api: JsonApi) -> Result<Self, ConfigError> {
        settings.validate()?;
        let length = i64::try_from(settings.window.as_micros()).unwrap_or(i64::MAX);
        Ok(Self {
            routes: Routes::new(settings.default_erp, &settings.routes)?,
            legacy: settings.legacy.clone().map(LegacyErp::new),
            dropped: Mutex::new(HashMap::new()),
            settings,
            api,
            windows: Windows::new(length),
            held_batches: Mutex::new(HashMap::new()),
        })
    }

    /// Posts `pending`, after asking the ERP what it already holds, and says which batches of
    /// the window the ERP holds once it answered. The ledger on this instance's disk is not
    /// the record of what was posted, the ERP is: a posting it holds (from before a lost disk,
    /// or from another instance before the partition moved) is left out, and a batch id it
    /// holds is not reused, since it would answer `duplicate` for content it never received.
    async fn post(
        &self,
        pending: &PendingBatch,
    ) -> Result<(Outcome, Vec<JournalBatch>), DeliveryError> {
        let settled = |outcome| Ok((outcome, Vec::new()));
        let held = match self.held_postings(&pending.window).await? {
            Ok(held) => held,
            Err(outcome) => return settled(outcome),
        };
        let mut held_batches = self.held_batches_of(pending, &held);
        let mut window = pending.window.clone();
        if let Some(first) = held.values().next() {
            window.postings.retain(|id, _| !held.contains_key(id));
            if window.postings.is_empty() {
                let reference = Some(first.document.clone());
                return Ok((Outcome::AlreadyDelivered { reference }, held_batches));
            }
        }
        let mut sequence = pending.sequence;
        loop {
            match self.batch_held(&pending.key.batch_id(sequence)).await? {
                Ok(false) => break,
                Ok(true) => sequence += 1,
                Err(outcome) => return settled(outcome),
            }
        }
        let batch = match self.batch_of(pending, &window, sequence) {
            Ok(batch) => batch,
            Err(err) => {
                return settled(Outcome::Rejected {
                    code: "unbuildable_batch".to_owned(),
                    message: err.to_string(),
                })
            }
        };
        if let Some(dir) = &self.settings.outbox_dir {
            if let Err(err) = write_csv(dir, &batch) {
                return settled(Outcome::Retry {
                    reason: RetryReason::Unavailable,
                    message: format!("outbox `{}`: {err}", dir.display()),
                    after: None,
                });
            }
        }
        let request = JournalRequest::from_batch(&batch);
        let answer = match self
            .api
            .send("/erp/v1/journal-batches", &[], &request)
            .await?
        {
            Reply::Answer(answer) => answer,
            Reply::Settled(outcome) => return settled(outcome),
        };
        let outcome = posting_outcome(&answer.body, &answer.error_code(), &answer.error_message());
        held_batches.push(batch);
        Ok((outcome, held_batches))
    }

    /// Drops `pending` as a file for the legacy ERP and reads the ERP's answer; asked again
    /// until it answers. Its acknowledgements are the record of what it holds, as the cloud
    /// ERP's search is: each call reads the answers to the window's batch numbers, leaves out
    /// the postings they hold, and drops a file for the rest under the first number no file
    /// went under. A file not answered yet is awaited whichever delivery dropped it, so a sink
    /// that stopped between the drop and the answer drops nothing twice when it comes back.
    fn drop_legacy(
        &self,
        key: &str,
        pending: &PendingBatch,
        legacy: &LegacyErp,
    ) -> (Outcome, Vec<JournalBatch>) {
        let settled = |outcome| (outcome, Vec::new());
        let awaiting = |id: &str| {
            self.dropped_file(key, Some(id.to_owned()));
            settled(Outcome::Retry {
                reason: RetryReason::Awaiting,
                message: format!("the legacy ERP has not answered batch file {id}.csv yet"),
                after: Some(legacy.poll()),
            })
        };
        let last = pending.sequence.saturating_add(SEQUENCES_SEARCHED);
        let mut held = BTreeMap::new();
        let mut taken = BTreeSet::new();
        let mut rejections = HashMap::new();
        for sequence in 0..last {
            let id = pending.key.batch_id(sequence);
            match legacy.answer(&id) {
                Ok(Some(Answer::Held {
                    document,
                    references,
                })) => {
                    for reference in references {
                        if pending.window.postings.contains_key(&reference) {
                            let batch_id = id.clone();
                            let document = document.clone();
                            held.insert(reference, HeldPosting { batch_id, document });
                        }
                    }
                }
                Ok(Some(Answer::Rejected { code, message })) => {
                    rejections.insert(id, (code, message));
                }
                Ok(None) if legacy.waiting(&id) => return awaiting(&id),
                Ok(None) => continue,
                Err(err) => {
                    return settled(Outcome::Retry {
                        reason: RetryReason::Unavailable,
                        message: err.to_string(),
                        after: None,
                    })
                }
            }
            taken.insert(sequence);
        }
        let dropped = self.dropped_file(key, None);
        let held_batches = self.held_batches_of(pending, &held);
        let mut window = pending.window.clone();
        window.postings.retain(|id, _| !held.contains_key(id));
        if window.postings.is_empty() {
            let document_of = |id: &String| {
                held.values()
                    .find(|h| &h.batch_id == id)
                    .map(|h| h.document.clone())
            };
            let outcome = match dropped.as_ref().and_then(document_of) {
                Some(document) => Outcome::Delivered {
                    reference: Some(document),
                },
                None => Outcome::AlreadyDelivered {
                    reference: held.values().next().map(|h| h.document.clone()),
                },
            };
            return (outcome, held_batches);
        }
        if let Some((code, message)) = dropped.and_then(|id| rejections.remove(&id)) {
            return settled(Outcome::Rejected { code, message });
        }
        let Some(sequence) = (pending.sequence..last).find(|s| !taken.contains(s)) else {
            return settled(Outcome::Rejected {
                code: "unbuildable_batch".to_owned(),
                message: format!(
                    "window {:?}: the legacy ERP answered batch numbers up to {last}",
                    pending.key
                ),
            });
        };
        let file = self
            .batch_of(pending, &window, sequence)
            .map_err(|err| ("unbuildable_batch", err.to_string()))
            .and_then(|batch| {
                let text = legacy_file(&batch, legacy.accounts())
                    .map_err(|err| ("unmapped_account", err.to_string()))?;
                Ok((batch.batch_id, text))
            });
        match file {
            Ok((id, text)) => match legacy.drop_batch(&id, &text) {
                Ok(()) => awaiting(&id),
                Err(err) => settled(Outcome::Retry {
                    reason: RetryReason::Unavailable,
                    message: format!("dropping batch file {id}.csv for the legacy ERP: {err}"),
                    after: None,
                }),
            },
            Err((code, message)) => settled(Outcome::Rejected {
                code: code.to_owned(),
                message,
            }),
        }
    }

    /// Sets (`Some`) or takes (`None`) the legacy batch file the delivery under `key` awaits.
    fn dropped_file(&self, key: &str, id: Option<String>) -> Option<String> {
        let mut dropped = self
            .dropped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match id {
            Some(id) => dropped.insert(key.to_owned(), id),
            None => dropped.remove(key),
        }
    }

    /// The window's batches the ERP holds postings of, each rebuilt from those postings under
    /// its number: as they were posted when every posting of the batch came again. A posting
    /// held under another window's batch (its record was produced again, so it arrived in a
    /// new window) is announced with that window's.
    fn held_batches_of(
        &self,
        pending: &PendingBatch,
        held: &BTreeMap<String, HeldPosting>,
    ) -> Vec<JournalBatch> {
        let ids: BTreeSet<&str> = held.values().map(|h| h.batch_id.as_str()).collect();
        let mut batches = Vec::new();
        for sequence in 0..pending.sequence.saturating_add(SEQUENCES_SEARCHED) {
            if batches.len() == ids.len() {
                break;
            }
            let id = pending.key.batch_id(sequence);
            if !ids.contains(id.as_str()) {
                continue;
            }
            let mut window = pending.window.clone();
            window
                .postings
                .retain(|rating_id, _| held.get(rating_id).is_some_and(|h| h.batch_id == id));
            if let Ok(batch) = self.batch_of(pending, &window, sequence) {
                batches.push(batch);
            }
        }
        batches
    }

    /// The batch numbered `sequence` of `pending`'s window holding `window`'s postings.
    fn batch_of(
        &self,
        pending: &PendingBatch,
        window: &OpenWindow,
        sequence: u32,
    ) -> Result<JournalBatch, JournalError> {
        let length = self.windows.length();
        build_batch(
            &pending.key,
            window,
            sequence,
            length,
            Self::NAME,
            pending.closed_at,
        )
    }

    /// The window's postings the ERP holds lines of, each with the batch holding it.
    async fn held_postings(
        &self,
        window: &OpenWindow,
    ) -> Result<Result<BTreeMap<String, HeldPosting>, Outcome>, DeliveryError> {
        let search = json!({ "references": window.postings.keys().collect::<Vec<_>>() });
        let answer = match self
            .api
            .send("/erp/v1/journal-lines/search", &[], &search)
            .await?
        {
            Reply::Answer(answer) => answer,
            Reply::Settled(outcome) => return Ok(Err(outcome)),
        };
        Ok(held_lines(&answer.body).ok_or_else(|| unreadable(&answer.body)))
    }

    /// Whether the ERP holds a batch under `external_id`.
    async fn batch_held(&self, external_id: &str) -> Result<Result<bool, Outcome>, DeliveryError> {
        let query = [("external_id", external_id)];
        let answer = match self.api.fetch("/erp/v1/journal-batches", &query).await? {
            Reply::Answer(answer) => answer,
            Reply::Settled(outcome) => return Ok(Err(outcome)),
        };
        match answer.body["batches"].as_array() {
            Some(batches) => Ok(Ok(!batches.is_empty())),
            None => Ok(Err(unreadable(&answer.body))),
        }
    }
}

/// The postings a journal-lines search answer says the ERP holds, each with its batch; `None`
/// when a line lacks the batch's external id, without which a held batch cannot be announced.
fn held_lines(body: &Value) -> Option<BTreeMap<String, HeldPosting>> {
    let mut held = BTreeMap::new();
    for line in body["lines"].as_array()? {
        let Some(reference) = line["reference"].as_str() else {
            continue;
        };
        let posting = HeldPosting {
            batch_id: line["external_id"].as_str()?.to_owned(),
            document: line["document_number"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        };
        held.insert(reference.to_owned(), posting);
    }
    Some(held)
}

/// An answer without the fields the ERP's API promises: retried, as an ERP in trouble.
fn unreadable(body: &Value) -> Outcome {
    Outcome::Retry {
        reason: RetryReason::Unavailable,
        message: format!("unreadable ERP answer: {body}"),
        after: None,
    }
}

/// What a 2xx answer of the ERP means: its `status` field decides, since business errors come
/// back with HTTP 200.
fn posting_outcome(body: &Value, code: &str, message: &str) -> Outcome {
    let reference = body
        .get("document_number")
        .and_then(Value::as_str)
        .map(str::to_owned);
    match body.get("status").and_then(Value::as_str) {
        Some("posted") => Outcome::Delivered { reference },
        Some("duplicate") => Outcome::AlreadyDelivered { reference },
        Some("error") => Outcome::Rejected {
            code: code.to_owned(),
            message: message.to_owned(),
        },
        _ => unreadable(body),
    }
}

/// A posting must balance and stay in its own currency before it can join a journal.
fn check_posting(posting: &LedgerPosting) -> Result<(), String> {
    if posting.legal_entity_id.is_empty() {
        return Err("legal_entity_id is empty".to_owned());
    }
    if posting.lines.is_empty() {
        return Err("the posting has no lines".to_owned());
    }
    let mut debits = Amount::ZERO;
    let mut credits = Amount::ZERO;
    for line in &posting.lines {
        if line.currency != posting.currency {
            return Err(format!(
                "line {} is in {}, the posting in {}",
                line.line_number, line.currency, posting.currency
            ));
        }
        debits = debits.checked_add(line.debit).ok_or("debits overflow")?;
        credits = credits.checked_add(line.credit).ok_or("credits overflow")?;
    }
    if debits != credits {
        return Err(format!("debits {debits} and credits {credits} differ"));
    }
    Ok(())
}

impl Sink for ErpSink {
    type Payload = JournalDelivery;

    fn name(&self) -> &str {
        Self::NAME
    }

    fn destination(&self) -> Destination {
        Destination::Erp
    }

    fn input_topic(&self) -> &str {
        &self.settings.topic
    }

    fn accept(
        &mut self,
        record: &InputRecord<'_>,
        context: &SinkContext<'_>,
    ) -> Result<Accepted<JournalDelivery>, Rejection> {
        let posting: LedgerPosting = decode(record, context.codec)?;
        let place = || format!("{}[{}]@{}", record.topic, record.partition, record.offset);
        check_posting(&posting).map_err(|detail| {
            Rejection::new("unbalanced_posting", format!("{}: {detail}", place()))
        })?;
        let money = Some(Money {
            amount: posting.amount,
            currency: posting.currency.clone(),
        });
        let posted = context
            .ledger
            .member(&posting.rating_id)
            .map_err(|err| Rejection::new("ledger_unavailable", format!("{}: {err}", place())))?;
        if let Some(key) = posted {
            return Ok(Accepted::AlreadyDelivered { key, money });
        }
        let arrived = record
            .timestamp_ms
            .map(|ms| ms.saturating_mul(1_000))
            .unwrap_or_else(|| micros_of(SystemTime::now()));
        let erp = self
            .routes
            .target(&posting.legal_entity_id, posting.posting_date);
        let key = self.windows.key_for(&posting, erp, arrived);
        let at = HeldAt {
            partition: record.partition,
            offset: record.offset,
        };
        self.windows
            .hold(key, at, posting, arrived, micros_of(SystemTime::now()));
        Ok(Accepted::Held)
    }

    fn due(&mut self, now: SystemTime, ledger: &DeliveryLedger) -> Vec<Delivery<JournalDelivery>> {
        let now = micros_of(now);
        let grace = i64::try_from(self.settings.grace.as_micros()).unwrap_or(i64::MAX);
        let length = self.windows.length();
        let mut due = Vec::new();
        for (key, mut window) in self.windows.close(now, grace) {
            // The first sequence this ledger has not seen confirmed (`post` moves on past any
            // the ERP holds): a posted batch is never sent again with other content, so
            // postings new to its window make the next one, an adjustment. A refused batch was
            // never posted; its number is free again.
            let mut sequence = 0u32;
            while ledger
                .get(&key.batch_id(sequence))
                .ok()
                .flatten()
                .is_some_and(|e| e.state == DeliveryState::Confirmed)
            {
                sequence += 1;
            }
            let money_of = |id: &str| {
                window.postings.get(id).map(|p| Money {
                    amount: p.amount,
                    currency: p.currency.clone(),
                })
            };
            let sources: Vec<Source> = std::mem::take(&mut window.sources)
                .iter()
                .map(|(at, id, first)| Source {
                    partition: at.partition,
                    offset: at.offset,
                    money: if *first { money_of(id) } else { None },
                })
                .collect();
            let net = window
                .postings
                .values()
                .try_fold(Amount::ZERO, |sum, p| sum.checked_add(p.amount));
            let members = window.postings.keys().cloned().collect();
            // Built once here to learn whether it can be; `post` builds what it sends.
            let payload = match build_batch(&key, &window, sequence, length, Self::NAME, now) {
                Ok(_) => JournalDelivery::Batch(Box::new(PendingBatch {
                    key: key.clone(),
                    window,
                    sequence,
                    closed_at: now,
                })),
                Err(err) => JournalDelivery::Unbuildable(err.to_string()),
            };
            let mut delivery =
                Delivery::new(key.batch_id(sequence), key.tenant_id.clone(), payload).with_money(
                    net.map(|amount| Money {
                        amount,
                        currency: key.currency.clone(),
                    }),
                );
            delivery.sources = sources;
            delivery.members = members;
            due.push(delivery);
        }
        due
    }

    fn revoked(&mut self, partitions: &[i32]) {
        self.windows.forget(partitions);
    }

    async fn deliver(
        &self,
        batch: &[&Delivery<JournalDelivery>],
    ) -> Result<Vec<Outcome>, DeliveryError> {
        let mut outcomes = Vec::with_capacity(batch.len());
        for delivery in batch {
            outcomes.push(match &delivery.payload {
                JournalDelivery::Batch(journal) => {
                    let (outcome, held) = match (&self.legacy, journal.key.erp) {
                        (Some(legacy), ErpTarget::Legacy) => {
                            self.drop_legacy(&delivery.key, journal, legacy)
                        }
                        _ => self.post(journal).await?,
                    };
                    if let Outcome::Delivered { .. } | Outcome::AlreadyDelivered { .. } = outcome {
                        self.held_batches
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .insert(delivery.key.clone(), held);
                    }
                    outcome
                }
                JournalDelivery::Unbuildable(reason) => Outcome::Rejected {
                    code: "unbuildable_batch".to_owned(),
                    message: reason.clone(),
                },
            });
        }
        Ok(outcomes)
    }

    fn announcements(&self) -> Option<Announcements> {
        Some(Announcements {
            topic: self.settings.journal_batches_topic.clone(),
            contract: JournalBatch::FULL_NAME,
        })
    }

    fn announce(
        &self,
        delivery: &Delivery<JournalDelivery>,
        announcer: &mut Announcer<'_>,
    ) -> Result<(), AnnounceError> {
        let held = self
            .held_batches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&delivery.key)
            .unwrap_or_default();
        for batch in &held {
            let key = format!("{}:{}", batch.metadata.tenant_id, batch.legal_entity_id);
            announcer.announce(&key, batch)?;
        }
        Ok(())
    }
}

impl SinkApp for ErpSink {
    const NAME: &'static str = "erp-sink";
    const ABOUT: &'static str =
        "Posts ledger postings to the ERP as balanced journal batches per legal entity, currency, period and window";
    const SCHEMES: &'static [&'static str] = &["http", "https"];
    type Settings = ErpSettings;

    async fn build(
        settings: ErpSettings,
        destination: &DestinationSettings,
    ) -> anyhow::Result<Self> {
        Ok(Self::new(settings, JsonApi::connect(destination).await?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_search_answer_must_name_the_batch_of_each_line() {
        let line = |external_id: Option<&str>| json!({"reference": "rt-1", "external_id": external_id, "document_number": "JE-000001"});
        let held = held_lines(&json!({"lines": [line(Some("jb-1"))]})).expect("readable");
        assert_eq!(held["rt-1"].batch_id, "jb-1");
        assert_eq!(held["rt-1"].document, "JE-000001");
        assert!(held_lines(&json!({"lines": [line(None)]})).is_none());
        assert!(held_lines(&json!({})).is_none());
    }

    #[test]
    fn business_errors_inside_200_are_rejections() {
        assert_eq!(
            posting_outcome(
                &json!({"status": "error", "errors": [{"code": "unbalanced", "message": "EUR off by 1"}]}),
                "unbalanced",
                "EUR off by 1"
            ),
            Outcome::Rejected {
                code: "unbalanced".into(),
                message: "EUR off by 1".into()
            }
        );
        assert_eq!(
            posting_outcome(
                &json!({"status": "posted", "document_number": "JE-000001"}),
                "",
                ""
            ),
            Outcome::Delivered {
                reference: Some("JE-000001".into())
            }
        );
        assert!(matches!(
            posting_outcome(
                &json!({"status": "duplicate", "document_number": "JE-000001"}),
                "",
                ""
            ),
            Outcome::AlreadyDelivered { .. }
        ));
        assert!(matches!(
            posting_outcome(&json!({}), "", ""),
            Outcome::Retry { .. }
        ));
    }
}
