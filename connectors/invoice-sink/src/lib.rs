//! `invoice-sink`: delivers each issued `Invoice` on `sales.invoices` to billing
//! (`POST /billing/v1/invoices`) and to the ERP (`POST /erp/v1/invoices`), one request per
//! system under `Idempotency-Key` `<tenant>:<invoice id>:<system>`. An invoice in another
//! status (a draft) is not delivered. The sink runtime gives each delivery its ledger, retries
//! with backoff and `Retry-After`, circuit breaker and dead letters; a system's refusal (a 4xx,
//! a business error in a 200) is a rejection of that system's delivery only.

use backbone_calendar::format_date;
use backbone_core::config::{ConfigError, Validate};
use backbone_core::InputRecord;
use backbone_schemas::types::{Destination, Invoice, InvoiceStatus};
use backbone_sink::app::SinkApp;
use backbone_sink::http::{JsonApi, Reply};
use backbone_sink::settings::require_topic;
use backbone_sink::{
    decode, one_request_each, require_key, Accepted, Delivery, DeliveryError, DestinationSettings,
    Outcome, Rejection, Sink, SinkContext,
};
use serde::Deserialize;
use serde_json::{json, Value};

/// The `[sink]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InvoiceSinkSettings {
    /// Topic of issued `Invoice`s.
    pub topic: String,
    /// Requests in flight at once within a batch.
    pub concurrency: usize,
}

impl Default for InvoiceSinkSettings {
    fn default() -> Self {
        Self {
            topic: "sales.invoices".to_owned(),
            concurrency: 8,
        }
    }
}

impl Validate for InvoiceSinkSettings {
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

/// The systems an invoice goes to, and the path it is posted to there.
const SYSTEMS: [(&str, &str); 2] = [
    ("billing", "/billing/v1/invoices"),
    ("erp", "/erp/v1/invoices"),
];

/// One invoice as one system's request.
#[derive(Debug, Clone, PartialEq)]
pub struct InvoiceCall {
    /// The API path.
    pub path: &'static str,
    /// The JSON body.
    pub body: Value,
}

/// The body every system gets: the invoice as finance reads it, amounts as decimal text.
pub fn body(invoice: &Invoice) -> Value {
    let lines: Vec<Value> = invoice
        .lines
        .iter()
        .map(|line| {
            json!({
                "line_number": line.line_number,
                "description": line.description,
                "charge_id": line.charge_id,
                "quantity": line.quantity.to_string(),
                "amount": line.amount.to_string(),
                "tax_amount": line.tax_amount.to_string(),
                "period_start": line.period_start.map(format_date),
                "period_end": line.period_end.map(format_date),
                "rating_ids": line.rating_ids,
            })
        })
        .collect();
    json!({
        "tenant_id": invoice.metadata.tenant_id,
        "invoice_id": invoice.invoice_id,
        "invoice_number": invoice.invoice_number,
        "customer_id": invoice.customer_id,
        "legal_entity_id": invoice.legal_entity_id,
        "subscription_id": invoice.subscription_id,
        "currency": invoice.currency,
        "issue_date": format_date(invoice.issue_date),
        "due_date": format_date(invoice.due_date),
        "period_start": invoice.period_start.map(format_date),
        "period_end": invoice.period_end.map(format_date),
        "subtotal_amount": invoice.subtotal_amount.to_string(),
        "tax_amount": invoice.tax_amount.to_string(),
        "total_amount": invoice.total_amount.to_string(),
        "lines": lines,
    })
}

/// The invoice sink.
#[derive(Debug)]
pub struct InvoiceSink {
    settings: InvoiceSinkSettings,
    api: JsonApi,
}

impl InvoiceSink {
    /// A sink posting to `api`.
    pub fn new(settings: InvoiceSinkSettings, api: JsonApi) -> Self {
        Self { settings, api }
    }

    async fn post(&self, delivery: &Delivery<InvoiceCall>) -> Result<Outcome, DeliveryError> {
        let call = &delivery.payload;
        match self
            .api
            .send(call.path, &[("Idempotency-Key", &delivery.key)], &call.body)
            .await?
        {
            Reply::Answer(answer) => Ok(answer.applied_outcome()),
            Reply::Settled(outcome) => Ok(outcome),
        }
    }
}

impl Sink for InvoiceSink {
    type Payload = InvoiceCall;

    fn name(&self) -> &str {
        Self::NAME
    }

    fn destination(&self) -> Destination {
        Destination::InvoiceSystems
    }

    fn input_topic(&self) -> &str {
        &self.settings.topic
    }

    fn accept(
        &mut self,
        record: &InputRecord<'_>,
        context: &SinkContext<'_>,
    ) -> Result<Accepted<InvoiceCall>, Rejection> {
        let invoice: Invoice = decode(record, context.codec)?;
        require_key(record, "invoice_id", &invoice.invoice_id)?;
        if invoice.status != InvoiceStatus::Issued {
            return Ok(Accepted::Deliver(Vec::new()));
        }
        let tenant = invoice.metadata.tenant_id.clone();
        let body = body(&invoice);
        let deliveries = SYSTEMS
            .iter()
            .map(|(system, path)| {
                Delivery::new(
                    format!("{tenant}:{}:{system}", invoice.invoice_id),
                    tenant.clone(),
                    InvoiceCall {
                        path,
                        body: body.clone(),
                    },
                )
            })
            .collect();
        Ok(Accepted::Deliver(deliveries))
    }

    async fn deliver(
        &self,
        batch: &[&Delivery<InvoiceCall>],
    ) -> Result<Vec<Outcome>, DeliveryError> {
        one_request_each(batch, self.settings.concurrency, |d| self.post(d)).await
    }
}

impl SinkApp for InvoiceSink {
    const NAME: &'static str = "invoice-sink";
    const ABOUT: &'static str =
        "Delivers each issued invoice to billing and to the ERP, once per system";
    const SCHEMES: &'static [&'static str] = &["http", "https"];
    type Settings = InvoiceSinkSettings;

    async fn build(
        settings: InvoiceSinkSettings,
        destination: &DestinationSettings,
    ) -> anyhow::Result<Self> {
        Ok(Self::new(settings, JsonApi::connect(destination).await?))
    }
}
