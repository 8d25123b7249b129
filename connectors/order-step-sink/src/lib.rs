//! `order-step-sink`: carries out each `OrderStep` the order orchestrator commands, as one
//! request to the system the step belongs to, under the step key as `Idempotency-Key`, and
//! publishes its `DeliveryResult` keyed by the order (`runtime.results_topic`, which the
//! orchestrator reads: `sales.order-step-results`).
//!
//! The sink runtime gives the steps what it gives every delivery: a ledger, so a step carried
//! out is never sent again; retries with backoff and `Retry-After` for outages, throttling and
//! lost answers; and, since every step names its order as its subject, the steps of one order
//! go out one at a time in the order commanded, while other orders' steps go on. A system's
//! refusal (a 4xx, a business error in a 200, an inactive customer) is a rejection: the step is
//! dead-lettered with the answer and its result tells the orchestrator, which undoes what the
//! order's earlier steps did.

use std::collections::BTreeMap;

use backbone_calendar::format_date;
use backbone_core::config::{ConfigError, Validate};
use backbone_core::InputRecord;
use backbone_schemas::types::{Destination, OrderConclusion, OrderStep, OrderStepKind, SalesOrder};
use backbone_sink::app::SinkApp;
use backbone_sink::http::{JsonApi, Reply};
use backbone_sink::settings::require_topic;
use backbone_sink::{
    decode, one_request_each, require_key, Accepted, Delivery, DeliveryError, DestinationSettings,
    Outcome, Rejection, Sink, SinkContext,
};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::systems::{OrderSystem, SystemDestination};

pub mod systems;

/// The `[sink]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrderStepSettings {
    /// Topic of `OrderStep`s.
    pub topic: String,
    /// Requests in flight at once within a batch (each of another order).
    pub concurrency: usize,
    /// Systems at addresses of their own (`crm`, `platform`, `billing`, `erp`, `sales`); the
    /// others are called at the `[destination]`.
    pub systems: BTreeMap<OrderSystem, SystemDestination>,
}

impl Default for OrderStepSettings {
    fn default() -> Self {
        Self {
            topic: "sales.order-steps".to_owned(),
            concurrency: 8,
            systems: BTreeMap::new(),
        }
    }
}

impl Validate for OrderStepSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        require_topic(&self.topic)?;
        if self.concurrency == 0 {
            return Err(ConfigError::Invalid {
                key: "sink.concurrency".to_owned(),
                message: "must be at least 1".to_owned(),
            });
        }
        systems::validate(&self.systems)
    }
}

/// One step as a request: where it goes and what it says.
#[derive(Debug, Clone, PartialEq)]
pub struct StepCall {
    /// The step.
    pub step: OrderStepKind,
    /// The system it is carried out by.
    pub system: OrderSystem,
    /// The API path it is posted to there.
    pub path: &'static str,
    /// The JSON body.
    pub body: Value,
}

/// A symbol's wire name in lower case (`CREATE` → `create`).
fn symbol<T: serde::Serialize>(value: T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_lowercase))
        .unwrap_or_default()
}

fn lines(order: &SalesOrder) -> Value {
    order
        .lines
        .iter()
        .map(|line| {
            json!({
                "line_number": line.line_number,
                "product_id": line.product_id,
                "quantity": line.quantity.to_string(),
                "line_amount": line.line_amount.to_string(),
                "service_start": line.service_start.map(format_date),
                "service_end": line.service_end.map(format_date),
            })
        })
        .collect()
}

impl StepCall {
    /// The request for `step`; a rejection naming what is missing when the step cannot be
    /// carried out as commanded.
    pub fn of(step: &OrderStep, record: &InputRecord<'_>) -> Result<Self, Rejection> {
        let order = &step.order;
        let missing = |what: &str| {
            Rejection::new(
                "contract_violation",
                format!(
                    "{}[{}]@{}: step `{}` has no {what}",
                    record.topic, record.partition, record.offset, step.step_key
                ),
            )
        };
        let (system, path) =
            OrderSystem::route(step.step).ok_or_else(|| missing("step this reader knows"))?;
        let identity = json!({
            "tenant_id": order.metadata.tenant_id,
            "order_id": order.order_id,
            "revision": step.revision,
            "customer_id": order.customer_id,
        });
        let mut body = match step.step {
            OrderStepKind::CheckCustomer => json!({
                "tenant_id": order.metadata.tenant_id,
                "customer_id": order.customer_id,
            }),
            OrderStepKind::ProvisionEntitlements => json!({ "lines": lines(order) }),
            OrderStepKind::RevokeEntitlements => json!({}),
            OrderStepKind::ChangeSubscription | OrderStepKind::RevertSubscription => {
                let change = step
                    .subscription_change
                    .ok_or_else(|| missing("subscription_change"))?;
                let plan = step.plan_id.as_deref().ok_or_else(|| missing("plan_id"))?;
                let subscription = order.subscription_or_own();
                let (kind, reverts) = match step.step {
                    OrderStepKind::RevertSubscription => {
                        ("revert".to_owned(), Some(symbol(change)))
                    }
                    _ => (symbol(change), None),
                };
                json!({
                    "subscription_id": subscription,
                    "change": kind,
                    "reverts": reverts,
                    "plan_id": plan,
                    "currency": order.currency,
                })
            }
            OrderStepKind::RecordOrder => json!({
                "order_number": order.order_number,
                "status": symbol(order.status),
                "legal_entity_id": order.legal_entity_id,
                "currency": order.currency,
                "net_amount": order.net_amount.to_string(),
                "tax_amount": order.tax_amount.to_string(),
                "total_amount": order.total_amount.to_string(),
                "lines": lines(order),
            }),
            OrderStepKind::ConfirmOrder => {
                let conclusion: OrderConclusion =
                    step.conclusion.ok_or_else(|| missing("conclusion"))?;
                json!({ "conclusion": symbol(conclusion) })
            }
            OrderStepKind::Unknown => return Err(missing("step this reader knows")),
        };
        if step.step != OrderStepKind::CheckCustomer {
            if let (Some(body), Some(identity)) = (body.as_object_mut(), identity.as_object()) {
                for (name, value) in identity {
                    body.insert(name.clone(), value.clone());
                }
            }
        }
        Ok(Self {
            step: step.step,
            system,
            path,
            body,
        })
    }
}

/// The order step sink.
#[derive(Debug)]
pub struct OrderStepSink {
    settings: OrderStepSettings,
    apis: BTreeMap<OrderSystem, JsonApi>,
}

impl OrderStepSink {
    /// A sink posting each system's steps to its API in `apis`, which holds every system.
    pub fn new(settings: OrderStepSettings, apis: BTreeMap<OrderSystem, JsonApi>) -> Self {
        Self { settings, apis }
    }

    async fn post(&self, delivery: &Delivery<StepCall>) -> Result<Outcome, DeliveryError> {
        let call = &delivery.payload;
        let api = &self.apis[&call.system];
        let answer = match api
            .send(call.path, &[("Idempotency-Key", &delivery.key)], &call.body)
            .await?
        {
            Reply::Answer(answer) => answer,
            Reply::Settled(outcome) => return Ok(outcome),
        };
        let body = &answer.body;
        if call.step == OrderStepKind::CheckCustomer && body["status"] != "failed" {
            let status = body["status"].as_str().unwrap_or("");
            return Ok(if status == "active" {
                Outcome::Delivered {
                    reference: body["customer_id"].as_str().map(str::to_owned),
                }
            } else {
                Outcome::Rejected {
                    code: "customer_not_active".to_owned(),
                    message: format!(
                        "customer `{}` is `{status}`",
                        call.body["customer_id"].as_str().unwrap_or("")
                    ),
                }
            });
        }
        Ok(answer.applied_outcome())
    }
}

impl Sink for OrderStepSink {
    type Payload = StepCall;

    fn name(&self) -> &str {
        Self::NAME
    }

    fn destination(&self) -> Destination {
        Destination::OrderSystems
    }

    fn input_topic(&self) -> &str {
        &self.settings.topic
    }

    fn accept(
        &mut self,
        record: &InputRecord<'_>,
        context: &SinkContext<'_>,
    ) -> Result<Accepted<StepCall>, Rejection> {
        let step: OrderStep = decode(record, context.codec)?;
        require_key(record, "step_key", &step.step_key)?;
        let call = StepCall::of(&step, record)?;
        let tenant = step.order.metadata.tenant_id.clone();
        let delivery = Delivery::new(format!("{tenant}:{}", step.step_key), tenant, call)
            .about(step.order_id.clone());
        Ok(Accepted::Deliver(vec![delivery]))
    }

    async fn deliver(&self, batch: &[&Delivery<StepCall>]) -> Result<Vec<Outcome>, DeliveryError> {
        one_request_each(batch, self.settings.concurrency, |d| self.post(d)).await
    }
}

impl SinkApp for OrderStepSink {
    const NAME: &'static str = "order-step-sink";
    const ABOUT: &'static str =
        "Carries out the order orchestrator's steps, one request per step, the step key as idempotency key";
    const SCHEMES: &'static [&'static str] = &["http", "https"];
    type Settings = OrderStepSettings;

    async fn build(
        settings: OrderStepSettings,
        destination: &DestinationSettings,
    ) -> anyhow::Result<Self> {
        let mut apis = BTreeMap::new();
        for system in OrderSystem::ALL {
            let own = systems::destination_of(system, &settings.systems, destination);
            apis.insert(system, JsonApi::connect(&own).await?);
        }
        Ok(Self::new(settings, apis))
    }
}
