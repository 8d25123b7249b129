//! The legacy ERP: it has no API, it imports files. A batch is dropped as one file in the
//! ERP's own layout ([`crate::layout`]), and the ERP answers each file with an
//! acknowledgement file that accepts it (naming the document it became and the references it
//! holds) or rejects it (with a code and a reason). `<batch id>.ack`:
//!
//! ```text
//! A;<batch id>;<ACCEPTED|DUPLICATE|REJECTED>;<document>;<code>;<message>
//! R;<reference>
//! ```
//!
//! with an `R` row per reference the ERP holds under that batch id (none for a rejection).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use backbone_core::config::ConfigError;
use backbone_schemas::types::JournalBatch;
use backbone_sink::{Outcome, RetryReason};
use serde::Deserialize;

use crate::layout::legacy_file;
use crate::outbox::drop_file;
use crate::{ErpSink, HeldPosting, PendingBatch, SEQUENCES_SEARCHED};

/// The `[sink.legacy]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegacySettings {
    /// Where batch files are dropped for the ERP to import.
    pub drop_dir: PathBuf,
    /// Where the ERP writes its acknowledgement of each file.
    pub ack_dir: PathBuf,
    /// How often a dropped file's acknowledgement is looked for.
    #[serde(with = "humantime_serde", default = "default_poll")]
    pub poll: Duration,
    /// The ERP's account code for each GL account posted to it.
    pub accounts: BTreeMap<String, String>,
}

fn default_poll() -> Duration {
    Duration::from_secs(5)
}

impl LegacySettings {
    /// Checked at start-up: both directories named, every account code fit for the layout.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| {
            Err(ConfigError::Invalid {
                key: format!("sink.legacy.{key}"),
                message,
            })
        };
        for (key, dir) in [("drop_dir", &self.drop_dir), ("ack_dir", &self.ack_dir)] {
            if dir.as_os_str().is_empty() {
                return invalid(key, "must be a directory path".to_owned());
            }
        }
        if self.poll.is_zero() {
            return invalid("poll", "must be longer than zero".to_owned());
        }
        if self.accounts.is_empty() {
            return invalid(
                "accounts",
                "must map each GL account posted to the legacy ERP to its code there".to_owned(),
            );
        }
        for (account, code) in &self.accounts {
            if code.is_empty() || code.contains([';', '\n', '\r']) {
                return invalid(
                    &format!("accounts.{account}"),
                    format!("`{code}` is not a code the file layout can carry"),
                );
            }
        }
        Ok(())
    }
}

/// The ERP's answer to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Imported now or before (`DUPLICATE`): the document and the references it holds.
    Held {
        /// The ERP's document number.
        document: String,
        /// The references of its lines.
        references: BTreeSet<String>,
    },
    /// Refused: nothing of the file is in the ERP.
    Rejected {
        /// The ERP's code.
        code: String,
        /// Its reason.
        message: String,
    },
}

/// Reads an acknowledgement file's text, for batch `batch_id`.
pub fn parse_ack(batch_id: &str, text: &str) -> Result<Answer, String> {
    let mut rows = text.lines().filter(|row| !row.is_empty());
    let head: Vec<&str> = rows
        .next()
        .ok_or("the acknowledgement is empty")?
        .splitn(6, ';')
        .collect();
    if head.len() != 6 || head[0] != "A" {
        return Err(format!("its first row is not `A;...`: {}", head.join(";")));
    }
    if head[1] != batch_id {
        return Err(format!("it acknowledges batch `{}`", head[1]));
    }
    let mut references = BTreeSet::new();
    for row in rows {
        match row.split_once(';') {
            Some(("R", reference)) => {
                references.insert(reference.to_owned());
            }
            _ => return Err(format!("unreadable row `{row}`")),
        }
    }
    match head[2] {
        "ACCEPTED" | "DUPLICATE" => Ok(Answer::Held {
            document: head[3].to_owned(),
            references,
        }),
        "REJECTED" => Ok(Answer::Rejected {
            code: head[4].to_owned(),
            message: head[5].to_owned(),
        }),
        status => Err(format!("unknown status `{status}`")),
    }
}

/// The legacy ERP's two directories.
#[derive(Debug, Clone)]
pub struct LegacyErp {
    settings: LegacySettings,
}

impl LegacyErp {
    /// The ERP behind `settings`.
    pub fn new(settings: LegacySettings) -> Self {
        Self { settings }
    }

    /// The mapping table.
    pub fn accounts(&self) -> &BTreeMap<String, String> {
        &self.settings.accounts
    }

    /// How often an acknowledgement is looked for.
    pub fn poll(&self) -> Duration {
        self.settings.poll
    }

    /// The ERP's answer to batch `batch_id`, if it has answered; an acknowledgement it cannot
    /// read is an error naming the file.
    pub fn answer(&self, batch_id: &str) -> io::Result<Option<Answer>> {
        let path = self.settings.ack_dir.join(format!("{batch_id}.ack"));
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        parse_ack(batch_id, &text).map(Some).map_err(|reason| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("acknowledgement `{}`: {reason}", path.display()),
            )
        })
    }

    /// Whether batch `batch_id`'s file waits in the drop directory, not imported yet.
    pub fn waiting(&self, batch_id: &str) -> bool {
        self.file_path(batch_id).exists()
    }

    /// Drops `text` as batch `batch_id`'s file, whole or not at all.
    pub fn drop_batch(&self, batch_id: &str, text: &str) -> io::Result<()> {
        drop_file(&self.settings.drop_dir, &format!("{batch_id}.csv"), text)
    }

    fn file_path(&self, batch_id: &str) -> PathBuf {
        self.settings.drop_dir.join(format!("{batch_id}.csv"))
    }
}

impl ErpSink {
    /// Drops `pending` as a file for the legacy ERP and reads the ERP's answer; asked again
    /// until it answers. Its acknowledgements are the record of what it holds, as the cloud
    /// ERP's search is: each call reads the answers to the window's batch numbers, leaves out
    /// the postings they hold, and drops a file for the rest under the first number no file
    /// went under. A file not answered yet is awaited whichever delivery dropped it, so a sink
    /// that stopped between the drop and the answer drops nothing twice when it comes back.
    pub(crate) fn drop_legacy(
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::tests::posting;
    use crate::journal::{OpenWindow, WindowKey};
    use crate::route::ErpTarget;
    use crate::ErpSettings;
    use backbone_sink::http::JsonApi;
    use backbone_sink::DestinationSettings;
    use std::path::Path;

    /// The sink's view of a legacy ERP whose directories are under `root`.
    async fn erp_sink(root: &Path) -> (ErpSink, LegacyErp) {
        let legacy = LegacySettings {
            drop_dir: root.join("drop"),
            ack_dir: root.join("acks"),
            poll: Duration::from_secs(1),
            accounts: BTreeMap::from([
                ("1200".to_owned(), "140000".to_owned()),
                ("4000".to_owned(), "800000".to_owned()),
            ]),
        };
        let settings = ErpSettings {
            default_erp: ErpTarget::Legacy,
            legacy: Some(legacy.clone()),
            ..ErpSettings::default()
        };
        // The cloud ERP is never called here.
        let api = JsonApi::connect(&DestinationSettings::default())
            .await
            .expect("client");
        let sink = ErpSink::new(settings, api).expect("settings");
        (sink, LegacyErp::new(legacy))
    }

    fn root(name: &str) -> PathBuf {
        let root = std::env::temp_dir()
            .join("backbone-erp-sink-legacy")
            .join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        root
    }

    /// Window `n` of `le-eu` holding the postings `(rating id, value)`.
    fn pending(n: i64, postings: &[(&str, &str)]) -> PendingBatch {
        let mut window = OpenWindow::default();
        for (id, value) in postings {
            window.postings.insert((*id).to_owned(), posting(id, value));
        }
        PendingBatch {
            key: WindowKey {
                tenant_id: "acme".into(),
                legal_entity_id: "le-eu".into(),
                currency: "EUR".into(),
                period_start: 20_484,
                window_start: n * 60_000_000,
                erp: ErpTarget::Legacy,
                part: 0,
            },
            window,
            sequence: 0,
            closed_at: 0,
        }
    }

    /// The ERP's answer to batch `id`, its file taken out of the drop directory as it does.
    fn answer(root: &Path, id: &str, text: &str) {
        std::fs::create_dir_all(root.join("acks")).expect("acks");
        std::fs::write(root.join("acks").join(format!("{id}.ack")), text).expect("ack");
        let _ = std::fs::remove_file(root.join("drop").join(format!("{id}.csv")));
    }

    fn dropped(root: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(root.join("drop"))
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    fn awaiting(outcome: &Outcome) -> bool {
        matches!(
            outcome,
            Outcome::Retry {
                reason: RetryReason::Awaiting,
                ..
            }
        )
    }

    #[tokio::test]
    async fn a_file_is_dropped_once_and_its_answer_settles_the_delivery() {
        let root = root("answered");
        let (sink, legacy) = erp_sink(&root).await;
        let batch = pending(1, &[("rt-1", "2.5"), ("rt-2", "1")]);
        let id = batch.key.batch_id(0);
        let (first, _) = sink.drop_legacy("d-1", &batch, &legacy);
        let (second, _) = sink.drop_legacy("d-1", &batch, &legacy);
        assert!(
            awaiting(&first) && awaiting(&second),
            "{first:?} {second:?}"
        );
        assert_eq!(
            dropped(&root),
            [format!("{id}.csv")],
            "one file, dropped once"
        );

        answer(
            &root,
            &id,
            &format!("A;{id};ACCEPTED;LJ-000007;;\nR;rt-1\nR;rt-2\n"),
        );
        let (outcome, held) = sink.drop_legacy("d-1", &batch, &legacy);
        assert_eq!(
            outcome,
            Outcome::Delivered {
                reference: Some("LJ-000007".into())
            }
        );
        assert_eq!(
            held.iter().map(|b| b.batch_id.as_str()).collect::<Vec<_>>(),
            [id.as_str()]
        );
        // An instance that never dropped it (a restart) finds it held.
        let (restarted, _) = erp_sink(&root).await;
        let (outcome, held) = restarted.drop_legacy("d-1", &batch, &legacy);
        assert_eq!(
            outcome,
            Outcome::AlreadyDelivered {
                reference: Some("LJ-000007".into())
            }
        );
        assert_eq!(held.len(), 1, "announced again");
    }

    #[tokio::test]
    async fn a_file_waiting_from_another_instance_is_awaited_not_dropped_again() {
        let root = root("adopted");
        let (sink, legacy) = erp_sink(&root).await;
        let batch = pending(1, &[("rt-1", "2.5")]);
        assert!(awaiting(&sink.drop_legacy("d-1", &batch, &legacy).0));
        let first = batch.key.batch_id(0);
        let waiting = root.join("drop").join(format!("{first}.csv"));
        let before = std::fs::read_to_string(&waiting).expect("the waiting file");
        // The window came back with one posting more after a restart: the waiting file is
        // answered first, then the newcomer goes out under the next number.
        let (restarted, _) = erp_sink(&root).await;
        let grown = pending(1, &[("rt-1", "2.5"), ("rt-3", "4")]);
        assert!(awaiting(&restarted.drop_legacy("d-1", &grown, &legacy).0));
        assert_eq!(dropped(&root).len(), 1);
        assert_eq!(
            std::fs::read_to_string(&waiting).expect("still waiting"),
            before,
            "the waiting file is left as it is"
        );
        answer(
            &root,
            &first,
            &format!("A;{first};ACCEPTED;LJ-000001;;\nR;rt-1\n"),
        );
        assert!(awaiting(&restarted.drop_legacy("d-1", &grown, &legacy).0));
        let next = batch.key.batch_id(1);
        assert_eq!(dropped(&root), [format!("{next}.csv")]);
        let file =
            std::fs::read_to_string(root.join("drop").join(format!("{next}.csv"))).expect("file");
        assert!(
            file.contains(";rt-3;") && !file.contains(";rt-1;"),
            "{file}"
        );
        assert!(file.contains(";ADJ;"), "an adjustment of the first: {file}");
    }

    #[tokio::test]
    async fn a_rejection_is_the_deliverys_when_it_awaited_it_and_else_gets_one_more_file() {
        let root = root("rejected");
        let (sink, legacy) = erp_sink(&root).await;
        let batch = pending(2, &[("rt-1", "2.5")]);
        let id = batch.key.batch_id(0);
        assert!(awaiting(&sink.drop_legacy("d-2", &batch, &legacy).0));
        answer(
            &root,
            &id,
            &format!("A;{id};REJECTED;;closed_period;period 202611 is closed\n"),
        );
        let (outcome, _) = sink.drop_legacy("d-2", &batch, &legacy);
        assert_eq!(
            outcome,
            Outcome::Rejected {
                code: "closed_period".into(),
                message: "period 202611 is closed".into()
            }
        );
        // The same window at an instance that did not await the answer: number 0 is taken,
        // the postings go out once more under number 1.
        let (restarted, _) = erp_sink(&root).await;
        assert!(awaiting(&restarted.drop_legacy("d-2", &batch, &legacy).0));
        assert_eq!(dropped(&root), [format!("{}.csv", batch.key.batch_id(1))]);
    }

    #[tokio::test]
    async fn an_account_the_table_does_not_map_rejects_the_batch_without_a_file() {
        let root = root("unmapped");
        let (sink, legacy) = erp_sink(&root).await;
        let mut batch = pending(3, &[("rt-1", "2.5")]);
        for window in batch.window.postings.values_mut() {
            window.lines[1].gl_account = "4711".into();
        }
        let (outcome, _) = sink.drop_legacy("d-3", &batch, &legacy);
        assert!(
            matches!(&outcome, Outcome::Rejected { code, message } if code == "unmapped_account" && message.contains("4711")),
            "{outcome:?}"
        );
        assert!(dropped(&root).is_empty());
    }

    #[test]
    fn an_acknowledgement_holds_references_or_a_reason() {
        let held =
            parse_ack("jb-1", "A;jb-1;ACCEPTED;LJ-000001;;\nR;rt-1\nR;rt-2\n").expect("read");
        assert_eq!(
            held,
            Answer::Held {
                document: "LJ-000001".into(),
                references: ["rt-1".to_owned(), "rt-2".to_owned()].into()
            }
        );
        let rejected = parse_ack(
            "jb-1",
            "A;jb-1;REJECTED;;unknown_account;account 800001; not in the chart\n",
        )
        .expect("read");
        assert_eq!(
            rejected,
            Answer::Rejected {
                code: "unknown_account".into(),
                message: "account 800001; not in the chart".into()
            }
        );
        assert!(
            parse_ack("jb-2", "A;jb-1;ACCEPTED;LJ-1;;\n").is_err(),
            "another batch's"
        );
        assert!(parse_ack("jb-1", "A;jb-1;MAYBE;;;\n").is_err());
        assert!(parse_ack("jb-1", "A;jb-1;ACCEPTED;LJ-1;;\nX;1\n").is_err());
        assert!(parse_ack("jb-1", "").is_err());
    }
}
