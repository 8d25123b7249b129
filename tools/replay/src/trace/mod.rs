//! `replay trace`: where did one usage event go? Follows it from topic data alone, through
//! every stage and sink: published (every copy), accepted, a duplicate or dead-lettered at the
//! validator, parked and released at the enricher, enriched, the rated lines and the hourly
//! window it went into, the charge, posting, fact and account-health snapshot each line
//! became, and what each sink did with them (or their dead letters).
//!
//! Each hop reads only a time window (the broker's time index gives the offsets) and keeps
//! records by a byte test before decoding: the usage, enriched and rated topics by their
//! `<tenant>:` key prefix; the validator's output and the enricher's letters by the
//! idempotency-key header the validator adds; rated lines of a subscription, charges, postings,
//! facts and snapshots by the key the previous hop names; delivery results and sink dead
//! letters by the source record they name. How the windows are chosen is in docs/replay.md.

mod downstream;
mod follow;
mod read;
mod render;

use std::collections::BTreeMap;

use backbone_schemas::{Registration, RegistryClient};
use serde::Serialize;

use crate::Context;

pub use follow::trace;
pub use read::Window;
pub use render::print_table;

/// The topics a trace reads, as the component list names them (dead-letter topics are these
/// with `.dlq` appended).
pub const TRACED_TOPICS: &[&str] = &[
    "usage.events",
    "usage.validated",
    "usage.enriched",
    "usage.rated",
    "usage.window-aggregates",
    "billing.charges",
    "erp.postings",
    "analytics.facts",
    "crm.account-health",
    "delivery.results",
];

/// The topics a trace reads, by the name the component list gives them, and the deployed
/// name where it differs.
#[derive(Debug, Clone, Default)]
pub struct TopicNames {
    renamed: BTreeMap<String, String>,
    /// The enricher's changelog, where parked events are kept.
    pub enricher_changelog: String,
}

impl TopicNames {
    /// The default names, with `renamed` (`usage.events` to what it is deployed as) applied
    /// and the enricher's consumer group `enricher_group`.
    pub fn new(renamed: BTreeMap<String, String>, enricher_group: &str) -> Self {
        Self {
            renamed,
            enricher_changelog: backbone_state::changelog_topic(enricher_group),
        }
    }

    /// The deployed name of `topic`.
    pub fn of(&self, topic: &str) -> String {
        self.renamed
            .get(topic)
            .cloned()
            .unwrap_or_else(|| topic.to_owned())
    }

    /// The dead-letter topic of the stage reading `topic`.
    pub fn dlq(&self, topic: &str) -> String {
        format!("{}.dlq", self.of(topic))
    }
}

/// What to trace.
#[derive(Debug, Clone)]
pub struct TraceRequest {
    /// The tenant.
    pub tenant: String,
    /// What identifies it.
    pub subject: Traced,
    /// Where the first record is looked for.
    pub window: Window,
    /// How long after that record its consequences are looked for.
    pub within_ms: i64,
    /// Topic names.
    pub topics: TopicNames,
}

/// The record a trace starts from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Traced {
    /// A usage event by its event id, and its producer (`source`) when several use the id.
    Event {
        /// `metadata.event_id`.
        event_id: String,
        /// `metadata.source`.
        source: Option<String>,
    },
    /// A rated line, or the charge, posting and fact made of it (they share its id).
    Rating {
        /// `rating_id`.
        rating_id: String,
    },
}

/// Schema of a record's value, as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SchemaRef {
    /// Id in the wire format's header.
    pub id: u32,
    /// The subject and version it is registered as, when the registry has it.
    #[serde(flatten)]
    pub registration: Option<Registration>,
}

/// One thing that happened to the traced event, read from one record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// Who did it: `producer`, a stage or a sink.
    pub by: String,
    /// What happened: `published`, `accepted`, `duplicate`, `dead-lettered`, `parked`,
    /// `released`, `enriched`, `rated`, `windowed`, `charge`, `posting`, `fact`,
    /// `snapshot`, or a delivery outcome (`delivered`, `already-delivered`, `rejected`).
    pub what: String,
    /// The record's timestamp, RFC 3339.
    pub at: Option<String>,
    /// Where the record is.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its value's schema, for wire-format values.
    pub schema: Option<SchemaRef>,
    /// The id it carries on (rating id, batch id, ...), when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// For people: the figures and reasons.
    pub detail: String,
}

/// A trace's answer.
#[derive(Debug, Clone, Serialize)]
pub struct Trace {
    /// The tenant.
    pub tenant: String,
    /// What was traced.
    pub traced: Traced,
    /// Whether anything was found.
    pub found: bool,
    /// Where the first record was looked for: RFC 3339, inclusive.
    pub searched_since: String,
    /// RFC 3339, exclusive.
    pub searched_until: String,
    /// Records read, over every topic.
    pub records_read: u64,
    /// Topics that do not exist (nothing was ever written to them).
    pub missing_topics: Vec<String>,
    /// What happened, stage by stage, each stage's steps in time order.
    pub steps: Vec<Step>,
}

/// Registrations of schema ids, asked once each.
struct Schemas {
    client: RegistryClient,
    known: BTreeMap<u32, Option<Vec<Registration>>>,
}

impl Schemas {
    fn new(ctx: &Context) -> Self {
        Self {
            client: RegistryClient::new(ctx.registry.clone(), ctx.timeout),
            known: BTreeMap::new(),
        }
    }

    /// The schema of a wire-format `value`: its registration under the subject of the first
    /// of `topics` that has one, else any.
    async fn of(&mut self, topics: &[&str], value: Option<&[u8]>) -> Option<SchemaRef> {
        let (id, _) = backbone_schemas::wire::split_frame(value?).ok()?;
        if !self.known.contains_key(&id) {
            // A registry that cannot say leaves the version out, not the trace.
            let found = self.client.registrations(id).await.ok().flatten();
            self.known.insert(id, found);
        }
        let registrations = self.known.get(&id).cloned().flatten().unwrap_or_default();
        let registration = topics
            .iter()
            .find_map(|topic| {
                let subject = format!("{topic}-value");
                registrations.iter().find(|r| r.subject == subject)
            })
            .or_else(|| registrations.first())
            .cloned();
        Some(SchemaRef { id, registration })
    }
}
