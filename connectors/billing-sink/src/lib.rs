//! `billing-sink`: each `BillingCharge` becomes one charge in the billing system, posted the way
//! payment APIs take them: one request per charge under an `Idempotency-Key`, here the
//! charge's `rating_id`. A retried request after a lost answer, or a replay of the topic, is
//! answered with the first response and counted as already delivered; a key reused with a
//! different body is a rejection an operator must look at.
//!
//! Billing APIs forget idempotency keys after a while (a day is common), so a charge that may
//! have been posted longer ago than that is first looked up by its business identity: the
//! check-then-create pattern. A charge is never posted before its usage occurred, so one whose
//! usage is younger than `sink.lookup_after` can only have been posted within that time, and
//! its key alone is enough: it costs one call instead of two.

use std::collections::BTreeMap;
use std::time::Duration;

use backbone_calendar::{format_date, now_micros};
use backbone_core::config::{ConfigError, Validate};
use backbone_core::InputRecord;
use backbone_schemas::types::{BillingCharge, Destination};
use backbone_sink::app::SinkApp;
use backbone_sink::http::{JsonApi, Reply};
use backbone_sink::settings::require_topic;
use backbone_sink::{
    decode, one_request_each, require_key, Accepted, Delivery, DeliveryError, DestinationSettings,
    Money, Outcome, Rejection, Sink, SinkContext,
};
use serde::{Deserialize, Serialize};

/// The `[sink]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BillingSettings {
    /// Topic of `BillingCharge`s.
    pub topic: String,
    /// Requests in flight at once within a batch. A charge is one call, or two when it is
    /// looked up first, so the rate is about `concurrency / (calls × round trip)`: 8 held the
    /// sink to about 1,000 charges/s at two calls of 4 ms (docs/BENCHMARKS.md, "Soak
    /// (2026-12-06)").
    pub concurrency: usize,
    /// A charge whose usage occurred longer ago than this is looked up by its business identity
    /// before it is posted, since the billing API may have forgotten the idempotency key of an
    /// earlier post. Keep it below the API's key retention, with room for clock skew between
    /// the usage's producers and the API: half of it is a safe choice. `0s` looks up every
    /// charge.
    #[serde(with = "humantime_serde")]
    pub lookup_after: Duration,
}

impl Default for BillingSettings {
    fn default() -> Self {
        Self {
            topic: "billing.charges".to_owned(),
            concurrency: 32,
            // Half of the 24 hours many billing and payment APIs keep a key for.
            lookup_after: Duration::from_secs(12 * 3600),
        }
    }
}

impl Validate for BillingSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        require_topic(&self.topic)?;
        if self.concurrency == 0 {
            return Err(ConfigError::Invalid {
                key: "sink.concurrency".to_owned(),
                message: "must be at least 1".to_owned(),
            });
        }
        Ok(())
    }
}

/// The body of `POST /billing/v1/charges`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChargeRequest {
    /// Tenant of the charge.
    pub tenant_id: String,
    /// Customer billed.
    pub customer_id: String,
    /// Subscription the charge belongs to.
    pub subscription_id: String,
    /// Charge of the rate card.
    pub charge_id: String,
    /// `USAGE`, `ADJUSTMENT`, ...
    pub charge_type: String,
    /// Line text on the invoice.
    pub description: String,
    /// Quantity, as an exact decimal string.
    pub quantity: String,
    /// Amount to add, as an exact decimal string (negative for a credit).
    pub amount: String,
    /// ISO 4217 code.
    pub currency: String,
    /// First day of the billing period, `YYYY-MM-DD`.
    pub period_start: String,
    /// Last day of the billing period, `YYYY-MM-DD`.
    pub period_end: String,
    /// The charge's business identity, `rating_id` and `revision`, as key-value metadata the
    /// billing system keeps on the charge: how a charge is found, and counted, whatever
    /// idempotency key created it.
    pub metadata: BTreeMap<String, String>,
}

/// A charge on its way: the request, and when its usage occurred (µs), which decides whether it
/// is looked up first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// The body to post.
    pub request: ChargeRequest,
    /// The charge's `occurred_at`: its usage's.
    pub occurred_at: i64,
}

impl ChargeRequest {
    /// The request for `charge`.
    pub fn from_charge(charge: &BillingCharge) -> Self {
        Self {
            tenant_id: charge.metadata.tenant_id.clone(),
            customer_id: charge.customer_id.clone(),
            subscription_id: charge.subscription_id.clone(),
            charge_id: charge.charge_id.clone(),
            charge_type: serde_json::to_value(charge.charge_type)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            description: charge.description.clone(),
            quantity: charge.quantity.to_string(),
            amount: charge.amount.to_string(),
            currency: charge.currency.clone(),
            period_start: format_date(charge.period_start),
            // The contract's period_end is the day after the period; the API takes its last day.
            period_end: format_date(charge.period_end - 1),
            metadata: BTreeMap::from([
                ("rating_id".to_owned(), charge.rating_id.clone()),
                ("revision".to_owned(), charge.revision.to_string()),
            ]),
        }
    }
}

/// The billing sink.
#[derive(Debug)]
pub struct BillingSink {
    settings: BillingSettings,
    api: JsonApi,
}

impl BillingSink {
    /// A sink posting to `api`.
    pub fn new(settings: BillingSettings, api: JsonApi) -> Self {
        Self { settings, api }
    }

    /// The charge the billing system already holds for this delivery's business identity, as
    /// an outcome; `None` when it holds none.
    async fn find(&self, delivery: &Delivery<Charge>) -> Result<Option<Outcome>, DeliveryError> {
        let query: Vec<(String, &str)> = delivery
            .payload
            .request
            .metadata
            .iter()
            .map(|(key, value)| (format!("metadata[{key}]"), value.as_str()))
            .collect();
        let query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        let answer = match self.api.fetch("/billing/v1/charges", &query).await? {
            Reply::Answer(answer) => answer,
            Reply::Settled(outcome) => return Ok(Some(outcome)),
        };
        let existing = answer.body["charges"].as_array().and_then(|c| c.first());
        Ok(existing.map(|charge| Outcome::AlreadyDelivered {
            reference: charge["id"].as_str().map(str::to_owned),
        }))
    }

    /// Whether the billing API may have forgotten the key of an earlier post of `charge`.
    fn may_be_forgotten(&self, charge: &Charge) -> bool {
        // A usage dated ahead of this clock is as young as one that occurred now.
        let age = now_micros().saturating_sub(charge.occurred_at);
        u128::try_from(age).is_ok_and(|age| age >= self.settings.lookup_after.as_micros())
    }

    async fn post(&self, delivery: &Delivery<Charge>) -> Result<Outcome, DeliveryError> {
        // Asked first, by business identity: a charge created before this sink's ledger was
        // lost, or by another instance before the partition moved, is found even after the
        // billing system forgot the idempotency key that created it.
        if self.may_be_forgotten(&delivery.payload) {
            if let Some(found) = self.find(delivery).await? {
                return Ok(found);
            }
        }
        let answer = match self
            .api
            .send(
                "/billing/v1/charges",
                &[("Idempotency-Key", &delivery.key)],
                &delivery.payload.request,
            )
            .await?
        {
            Reply::Answer(answer) => answer,
            Reply::Settled(outcome) => return Ok(outcome),
        };
        let reference = answer
            .body
            .get("id")
            .and_then(|id| id.as_str())
            .map(str::to_owned);
        if answer.header_is("Idempotent-Replayed", "true") {
            Ok(Outcome::AlreadyDelivered { reference })
        } else {
            Ok(Outcome::Delivered { reference })
        }
    }
}

impl Sink for BillingSink {
    type Payload = Charge;

    fn name(&self) -> &str {
        Self::NAME
    }

    fn destination(&self) -> Destination {
        Destination::Billing
    }

    fn input_topic(&self) -> &str {
        &self.settings.topic
    }

    fn accept(
        &mut self,
        record: &InputRecord<'_>,
        context: &SinkContext<'_>,
    ) -> Result<Accepted<Charge>, Rejection> {
        let charge: BillingCharge = decode(record, context.codec)?;
        require_key(record, "rating_id", &charge.rating_id)?;
        let money = Money {
            amount: charge.amount,
            currency: charge.currency.clone(),
        };
        Ok(Accepted::one(
            charge.rating_id.clone(),
            charge.metadata.tenant_id.clone(),
            Charge {
                request: ChargeRequest::from_charge(&charge),
                occurred_at: charge.metadata.occurred_at,
            },
            Some(money),
        ))
    }

    async fn deliver(&self, batch: &[&Delivery<Charge>]) -> Result<Vec<Outcome>, DeliveryError> {
        one_request_each(batch, self.settings.concurrency, |d| self.post(d)).await
    }
}

impl SinkApp for BillingSink {
    const NAME: &'static str = "billing-sink";
    const ABOUT: &'static str =
        "Delivers BillingCharges to the billing API, one request per charge, rating_id as idempotency key";
    const SCHEMES: &'static [&'static str] = &["http", "https"];
    type Settings = BillingSettings;

    async fn build(
        settings: BillingSettings,
        destination: &DestinationSettings,
    ) -> anyhow::Result<Self> {
        Ok(Self::new(settings, JsonApi::connect(destination).await?))
    }
}
