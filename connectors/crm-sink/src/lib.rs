//! `crm-sink`: each `AccountHealthSnapshot` becomes an upsert of the customer's account in the
//! CRM, keyed by external id `<tenant>:<customer>`, sent in batches of at most the CRM's limit.
//!
//! The CRM keeps the snapshot with the newest `as_of` and ignores older or equal ones, which
//! makes the upsert idempotent: a redelivered or replayed snapshot is answered `stale` and
//! counted as already delivered, and snapshots arriving out of order cannot roll an account
//! back. A throttled batch (429) is retried after the CRM's `Retry-After`.

use std::collections::BTreeMap;

use backbone_calendar::format_date;
use backbone_core::config::{ConfigError, Validate};
use backbone_core::InputRecord;
use backbone_schemas::types::{AccountHealthSnapshot, Destination};
use backbone_sink::app::SinkApp;
use backbone_sink::http::{JsonApi, Reply};
use backbone_sink::settings::require_topic;
use backbone_sink::{
    decode, require_key, Accepted, Delivery, DeliveryError, DestinationSettings, Money, Outcome,
    Rejection, RetryReason, Sink, SinkContext,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The CRM's documented limit of records per batch request.
pub const CRM_MAX_BATCH: usize = 200;

/// The `[sink]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CrmSettings {
    /// Topic of `AccountHealthSnapshot`s.
    pub topic: String,
    /// Records per request, at most the CRM's limit of 200.
    pub request_records: usize,
}

impl Default for CrmSettings {
    fn default() -> Self {
        Self {
            topic: "crm.account-health".to_owned(),
            request_records: CRM_MAX_BATCH,
        }
    }
}

impl Validate for CrmSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        require_topic(&self.topic)?;
        if self.request_records == 0 || self.request_records > CRM_MAX_BATCH {
            return Err(ConfigError::Invalid {
                key: "sink.request_records".to_owned(),
                message: format!(
                    "must be between 1 and the CRM's limit of {CRM_MAX_BATCH}, got {}",
                    self.request_records
                ),
            });
        }
        Ok(())
    }
}

/// One record of `POST /crm/v1/accounts/batch`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccountUpsert {
    /// `<tenant>:<customer>`: the CRM's external id of the account.
    pub external_id: String,
    /// When the figures were true, microseconds since the epoch; the newest wins.
    pub as_of: i64,
    /// The account's health fields.
    pub fields: BTreeMap<&'static str, Value>,
}

impl AccountUpsert {
    /// The upsert for `snapshot`.
    pub fn from_snapshot(snapshot: &AccountHealthSnapshot) -> Self {
        let text = |s: String| Value::String(s);
        let mut fields = BTreeMap::new();
        fields.insert("customer_id", text(snapshot.customer_id.clone()));
        fields.insert(
            "health",
            serde_json::to_value(snapshot.health).unwrap_or(Value::Null),
        );
        fields.insert(
            "active_subscriptions",
            Value::from(snapshot.active_subscriptions),
        );
        fields.insert("period_start", text(format_date(snapshot.period_start)));
        fields.insert("period_end", text(format_date(snapshot.period_end)));
        fields.insert(
            "period_to_date_amount",
            text(snapshot.period_to_date_amount.to_string()),
        );
        fields.insert(
            "previous_period_amount",
            snapshot
                .previous_period_amount
                .map_or(Value::Null, |a| text(a.to_string())),
        );
        fields.insert("currency", text(snapshot.currency.clone()));
        fields.insert(
            "usage_change_percent",
            snapshot
                .usage_change_percent
                .map_or(Value::Null, |p| text(p.to_string())),
        );
        fields.insert(
            "last_usage_at",
            snapshot.last_usage_at.map_or(Value::Null, Value::from),
        );
        fields.insert("snapshot_id", text(snapshot.snapshot_id.clone()));
        Self {
            external_id: format!("{}:{}", snapshot.metadata.tenant_id, snapshot.customer_id),
            as_of: snapshot.as_of,
            fields,
        }
    }
}

#[derive(Serialize)]
struct BatchRequest<'a> {
    records: Vec<&'a AccountUpsert>,
}

/// The CRM sink.
#[derive(Debug)]
pub struct CrmSink {
    settings: CrmSettings,
    api: JsonApi,
}

impl CrmSink {
    /// A sink upserting through `api`.
    pub fn new(settings: CrmSettings, api: JsonApi) -> Self {
        Self { settings, api }
    }

    /// One request for `chunk`: per record an outcome, or the request's failure for all.
    async fn upsert(
        &self,
        chunk: &[&Delivery<AccountUpsert>],
    ) -> Result<Vec<Outcome>, DeliveryError> {
        let request = BatchRequest {
            records: chunk.iter().map(|d| &d.payload).collect(),
        };
        let answer = match self
            .api
            .send("/crm/v1/accounts/batch", &[], &request)
            .await?
        {
            Reply::Answer(answer) => answer,
            Reply::Settled(outcome) => return Ok(vec![outcome; chunk.len()]),
        };
        let results = answer
            .body
            .get("results")
            .and_then(Value::as_array)
            .filter(|results| results.len() == chunk.len());
        let Some(results) = results else {
            // An answer we cannot read says nothing about what was applied: send it again;
            // the upsert is idempotent.
            return Ok(vec![
                Outcome::Retry {
                    reason: RetryReason::Unavailable,
                    message: format!("unreadable CRM answer: {}", answer.body),
                    after: None,
                };
                chunk.len()
            ]);
        };
        Ok(results.iter().map(record_outcome).collect())
    }
}

/// What the CRM said about one record of a batch.
fn record_outcome(result: &Value) -> Outcome {
    let status = result.get("status").and_then(Value::as_str).unwrap_or("");
    let reference = result
        .get("external_id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    match status {
        "created" | "updated" => Outcome::Delivered { reference },
        // The CRM holds this snapshot or a newer one.
        "stale" => Outcome::AlreadyDelivered { reference },
        "rejected" => Outcome::Rejected {
            code: "crm_rejected".to_owned(),
            message: result
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("rejected without a reason")
                .to_owned(),
        },
        other => Outcome::Retry {
            reason: RetryReason::Unavailable,
            message: format!("unknown CRM record status `{other}`"),
            after: None,
        },
    }
}

impl Sink for CrmSink {
    type Payload = AccountUpsert;

    fn name(&self) -> &str {
        Self::NAME
    }

    fn destination(&self) -> Destination {
        Destination::Crm
    }

    fn input_topic(&self) -> &str {
        &self.settings.topic
    }

    fn accept(
        &mut self,
        record: &InputRecord<'_>,
        context: &SinkContext<'_>,
    ) -> Result<Accepted<AccountUpsert>, Rejection> {
        let snapshot: AccountHealthSnapshot = decode(record, context.codec)?;
        // The customer makes the CRM's external id, which the upsert is idempotent on.
        require_key(record, "customer_id", &snapshot.customer_id)?;
        let money = Money {
            amount: snapshot.period_to_date_amount,
            currency: snapshot.currency.clone(),
        };
        Ok(Accepted::one(
            snapshot.snapshot_id.clone(),
            snapshot.metadata.tenant_id.clone(),
            AccountUpsert::from_snapshot(&snapshot),
            Some(money),
        ))
    }

    async fn deliver(
        &self,
        batch: &[&Delivery<AccountUpsert>],
    ) -> Result<Vec<Outcome>, DeliveryError> {
        let mut outcomes = Vec::with_capacity(batch.len());
        for chunk in batch.chunks(self.settings.request_records) {
            outcomes.extend(self.upsert(chunk).await?);
        }
        Ok(outcomes)
    }
}

impl SinkApp for CrmSink {
    const NAME: &'static str = "crm-sink";
    const ABOUT: &'static str =
        "Upserts AccountHealthSnapshots into the CRM in batches, newest as_of wins";
    const SCHEMES: &'static [&'static str] = &["http", "https"];
    type Settings = CrmSettings;

    async fn build(
        settings: CrmSettings,
        destination: &DestinationSettings,
    ) -> anyhow::Result<Self> {
        Ok(Self::new(settings, JsonApi::connect(destination).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn record_statuses_map_to_outcomes() {
        assert!(matches!(
            record_outcome(&json!({"external_id": "t:c", "status": "created"})),
            Outcome::Delivered { reference: Some(r) } if r == "t:c"
        ));
        assert!(matches!(
            record_outcome(&json!({"external_id": "t:c", "status": "stale"})),
            Outcome::AlreadyDelivered { .. }
        ));
        assert_eq!(
            record_outcome(&json!({"status": "rejected", "error": "external_id is empty"})),
            Outcome::Rejected {
                code: "crm_rejected".into(),
                message: "external_id is empty".into()
            }
        );
        assert!(matches!(
            record_outcome(&json!({"status": "queued"})),
            Outcome::Retry { .. }
        ));
    }

    #[test]
    fn a_request_size_above_the_crm_limit_is_refused() {
        let settings = CrmSettings {
            request_records: 201,
            ..CrmSettings::default()
        };
        let err = settings.validate().expect_err("over the limit");
        assert!(err.to_string().contains("sink.request_records"), "{err}");
    }
}
