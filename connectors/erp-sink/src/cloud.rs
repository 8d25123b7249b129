//! The cloud ERP: a JSON journal API, asked before each batch which of its postings it holds
//! and whether its id is taken (see the crate's documentation), then posted to.

use std::collections::BTreeMap;

use backbone_schemas::types::JournalBatch;
use backbone_sink::http::Reply;
use backbone_sink::{DeliveryError, Outcome, RetryReason};
use serde_json::{json, Value};

use crate::journal::OpenWindow;
use crate::outbox::write_csv;
use crate::request::JournalRequest;
use crate::{ErpSink, HeldPosting, PendingBatch};

impl ErpSink {
    /// Posts `pending`, after asking the ERP what it already holds, and says which batches of
    /// the window the ERP holds once it answered. The ledger on this instance's disk is not
    /// the record of what was posted, the ERP is: a posting it holds (from before a lost disk,
    /// or from another instance before the partition moved) is left out, and a batch id it
    /// holds is not reused, since it would answer `duplicate` for content it never received.
    pub(crate) async fn post(
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
