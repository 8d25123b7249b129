//! `erp-sink`: ledger postings become balanced journal batches in the ERP, on the finance
//! team's schedule rather than one request per usage line.
//!
//! Each posting goes to the ERP that keeps its legal entity's books on its posting date
//! ([`route`]): the cloud ERP's journal API (`cloud.rs`) or a legacy ERP that imports files and
//! answers with acknowledgement files ([`legacy`], [`layout`]).
//!
//! Postings are held per legal entity, currency, accounting period, ERP and arrival window, in
//! parts of at most `max_batch_postings` (see [`journal`]); their offsets stay uncommitted
//! while they are held, so a crash loses nothing.
//! A window closes `grace` after its end and becomes one `JournalBatch` per part, posted under its
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

mod cloud;
pub mod journal;
pub mod layout;
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
use backbone_sink::http::JsonApi;
use backbone_sink::settings::require_topic;
use backbone_sink::{
    decode, Accepted, AnnounceError, Announcements, Announcer, Delivery, DeliveryError,
    DeliveryLedger, DeliveryState, DestinationSettings, Money, Outcome, Rejection, Sink,
    SinkContext, Source,
};
use serde::Deserialize;

use crate::journal::{build_batch, HeldAt, JournalError, OpenWindow, WindowKey, Windows};
use crate::legacy::{LegacyErp, LegacySettings};
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
    /// Most postings in one batch; a window with more posts in parts.
    pub max_batch_postings: usize,
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
            max_batch_postings: 1_000,
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
        if self.max_batch_postings == 0 {
            return invalid("max_batch_postings", "must be at least 1".to_owned());
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
            windows: Windows::new(length, settings.max_batch_postings),
            settings,
            api,
            held_batches: Mutex::new(HashMap::new()),
        })
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
