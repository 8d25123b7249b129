//! Maps canonical usage records to the contracts of the systems downstream, one topic per
//! destination, as configured routes say.
//!
//! - `RatedUsage` → `BillingCharge` (billing route): the line's delta as an amount to add to the
//!   subscription's period, `rating_id` as the billing system's idempotency key; adjustments of
//!   closed periods become `ADJUSTMENT` charges.
//! - `RatedUsage` and `UsageWindowAggregate` → `AnalyticsFact` (analytics route): one flattened
//!   row per rated line (`fact-<rating_id>`) and per window (`aggregate_id`, its revision as the
//!   source revision, so the newest figures win on upsert).
//!
//! The mapping is a pure function of the input record: a redelivery reproduces identical
//! outputs, which the sinks' idempotency keys absorb. A route set to an empty string is off.

use std::collections::HashMap;
use std::sync::Arc;

use backbone_core::app::{App, SchemaRegistrySettings};
use backbone_core::config::{ConfigError, Validate};
use backbone_core::{InputRecord, OutputRecord, Prefetch, ProcessError, Processor, State};
use backbone_schemas::types::{
    AnalyticsFact, BillingCharge, BillingChargeType, Contract, EventMetadata, FactType, RatedUsage,
    RatingKind, UsageWindowAggregate,
};
use backbone_schemas::wire::encode_framed;
use backbone_schemas::{OutputContracts, WireCodec};
use serde::Deserialize;

const DAY_MICROS: i64 = 86_400_000_000;

/// Destination topics; an empty name turns the route off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Routes {
    /// `BillingCharge`s for the billing system.
    pub billing: String,
    /// `AnalyticsFact`s for the warehouse.
    pub analytics: String,
}

impl Default for Routes {
    fn default() -> Self {
        Self {
            billing: "billing.charges".to_owned(),
            analytics: "analytics.facts".to_owned(),
        }
    }
}

/// The `[processor]` config section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FanoutSettings {
    /// Rated usage lines.
    pub rated_topic: String,
    /// Hourly usage windows.
    pub aggregates_topic: String,
    /// Where each destination's records go (`[processor.routes]`).
    pub routes: Routes,
}

impl Default for FanoutSettings {
    fn default() -> Self {
        Self {
            rated_topic: "usage.rated".to_owned(),
            aggregates_topic: "usage.window-aggregates".to_owned(),
            routes: Routes::default(),
        }
    }
}

impl Validate for FanoutSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("rated_topic", &self.rated_topic),
            ("aggregates_topic", &self.aggregates_topic),
        ] {
            if value.trim().is_empty() {
                return Err(ConfigError::Invalid {
                    key: format!("processor.{key}"),
                    message: "must not be empty".to_owned(),
                });
            }
        }
        if self.routes.billing.is_empty() && self.routes.analytics.is_empty() {
            return Err(ConfigError::Invalid {
                key: "processor.routes".to_owned(),
                message: "every route is off; set billing or analytics".to_owned(),
            });
        }
        Ok(())
    }
}

/// The processor.
#[derive(Debug, Clone)]
pub struct Fanout {
    settings: FanoutSettings,
    outputs: Arc<OutputContracts>,
}

impl Fanout {
    /// A fanout decoding and encoding through `codec`.
    pub fn new(settings: FanoutSettings, codec: WireCodec) -> Self {
        let mut contracts = Vec::new();
        if !settings.routes.billing.is_empty() {
            contracts.push((settings.routes.billing.clone(), BillingCharge::FULL_NAME));
        }
        if !settings.routes.analytics.is_empty() {
            contracts.push((settings.routes.analytics.clone(), AnalyticsFact::FULL_NAME));
        }
        Self {
            settings,
            outputs: Arc::new(OutputContracts::new(codec, contracts)),
        }
    }

    fn output<T: Contract>(
        &self,
        topic: &str,
        key: String,
        value: &T,
    ) -> Result<OutputRecord, ProcessError> {
        let id = self.outputs.id(topic)?;
        Ok(OutputRecord {
            topic: topic.to_owned(),
            key: Some(key.into_bytes()),
            value: encode_framed(id, value)
                .map_err(|e| ProcessError::permanent("contract_violation", e.to_string()))?,
            headers: Vec::new(),
        })
    }

    fn rated(&self, line: &RatedUsage) -> Result<Vec<OutputRecord>, ProcessError> {
        let routes = &self.settings.routes;
        let tenant = &line.metadata.tenant_id;
        let mut outputs = Vec::with_capacity(2);
        if !routes.billing.is_empty() {
            let charge = billing_charge(line);
            let key = format!("{tenant}:{}", line.subscription_id);
            outputs.push(self.output(&routes.billing, key, &charge)?);
        }
        if !routes.analytics.is_empty() {
            let fact = rated_fact(line)?;
            let key = format!("{tenant}:{}", fact.fact_id);
            outputs.push(self.output(&routes.analytics, key, &fact)?);
        }
        Ok(outputs)
    }

    fn window(&self, window: &UsageWindowAggregate) -> Result<Vec<OutputRecord>, ProcessError> {
        let routes = &self.settings.routes;
        if routes.analytics.is_empty() {
            return Ok(Vec::new());
        }
        let fact = window_fact(window);
        let key = format!("{}:{}", window.metadata.tenant_id, fact.fact_id);
        Ok(vec![self.output(&routes.analytics, key, &fact)?])
    }
}

impl App for Fanout {
    const NAME: &'static str = "fanout";
    const ABOUT: &'static str =
        "Maps rated usage and usage windows to billing charges and analytics facts";
    type Settings = FanoutSettings;

    fn build(settings: FanoutSettings, registry: &SchemaRegistrySettings) -> Self {
        Self::new(settings, WireCodec::new(&registry.url))
    }
}

impl Processor for Fanout {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn input_topics(&self) -> Vec<String> {
        vec![
            self.settings.rated_topic.clone(),
            self.settings.aggregates_topic.clone(),
        ]
    }

    fn output_topics(&self) -> Vec<String> {
        let routes = &self.settings.routes;
        [&routes.billing, &routes.analytics]
            .into_iter()
            .filter(|t| !t.is_empty())
            .cloned()
            .collect()
    }

    fn prefetch(&self) -> Option<Arc<dyn Prefetch>> {
        Some(self.outputs.clone())
    }

    fn process(
        &mut self,
        record: &InputRecord<'_>,
        _state: &mut State<'_>,
    ) -> Result<Vec<OutputRecord>, ProcessError> {
        let value = record
            .value
            .ok_or_else(|| ProcessError::permanent("missing_value", "record has no value"))?;
        let codec = self.outputs.codec();
        if record.topic == self.settings.rated_topic {
            let line: RatedUsage = codec
                .decode_cached_as(value, RatedUsage::schema())
                .map_err(|e| e.into_process_error())?;
            self.rated(&line)
        } else {
            let window: UsageWindowAggregate = codec
                .decode_cached_as(value, UsageWindowAggregate::schema())
                .map_err(|e| e.into_process_error())?;
            self.window(&window)
        }
    }
}

fn envelope(source: &EventMetadata, event_id: &str, kind: &str, occurred_at: i64) -> EventMetadata {
    EventMetadata {
        tenant_id: source.tenant_id.clone(),
        event_id: event_id.to_owned(),
        source: Fanout::NAME.to_owned(),
        r#type: kind.to_owned(),
        occurred_at,
        // From the input, so a redelivery reproduces the same bytes.
        produced_at: source.produced_at,
        trace: source.trace.clone(),
        schema_version: None,
    }
}

/// The billing system's view of a rated line.
pub fn billing_charge(line: &RatedUsage) -> BillingCharge {
    let charge_type = if line.kind == RatingKind::Adjustment {
        BillingChargeType::Adjustment
    } else {
        BillingChargeType::Usage
    };
    let mut description = format!(
        "{} ({}): {} period to date",
        line.charge_id, line.meter_id, line.quantity_after
    );
    if let (Some(start), Some(end)) = (line.adjusted_period_start, line.adjusted_period_end) {
        description.push_str(&format!(", correcting days {start} to {end}"));
    }
    BillingCharge {
        metadata: envelope(
            &line.metadata,
            &line.rating_id,
            "backbone.billing.charge",
            line.metadata.occurred_at,
        ),
        rating_id: line.rating_id.clone(),
        revision: line.revision,
        charge_type,
        customer_id: line.customer_id.clone(),
        subscription_id: line.subscription_id.clone(),
        charge_id: line.charge_id.clone(),
        group_key: line.group_key.clone(),
        description,
        period_start: line.period_start,
        period_end: line.period_end,
        quantity: line.quantity_after,
        amount: line.delta_amount,
        currency: line.currency.clone(),
        billing_account_ref: None,
    }
}

/// The analytics row of a rated line: the usage it added and the amount it billed.
pub fn rated_fact(line: &RatedUsage) -> Result<AnalyticsFact, ProcessError> {
    let added = line
        .quantity_after
        .checked_sub(line.quantity_before)
        .ok_or_else(|| ProcessError::permanent("contract_violation", "quantity out of range"))?;
    let fact_id = format!("fact-{}", line.rating_id);
    let attributes = HashMap::from([
        ("kind".to_owned(), format!("{:?}", line.kind).to_uppercase()),
        ("plan_id".to_owned(), line.plan_id.clone()),
        ("group_key".to_owned(), line.group_key.clone()),
    ]);
    Ok(AnalyticsFact {
        metadata: envelope(
            &line.metadata,
            &fact_id,
            "backbone.analytics.fact",
            line.metadata.occurred_at,
        ),
        fact_id,
        fact_type: FactType::RatedUsage,
        source_revision: line.revision,
        event_time: line.metadata.occurred_at,
        fact_date: day_of(line.metadata.occurred_at),
        customer_id: line.customer_id.clone(),
        legal_entity_id: Some(line.legal_entity_id.clone()),
        subscription_id: Some(line.subscription_id.clone()),
        product_id: None,
        charge_id: Some(line.charge_id.clone()),
        meter_id: Some(line.meter_id.clone()),
        quantity: Some(added),
        amount: Some(line.delta_amount),
        currency: Some(line.currency.clone()),
        attributes,
    })
}

/// The analytics row of an hourly window; its revision makes the newest figures win.
pub fn window_fact(window: &UsageWindowAggregate) -> AnalyticsFact {
    let attributes = HashMap::from([
        ("event_count".to_owned(), window.event_count.to_string()),
        ("unit".to_owned(), window.unit.clone()),
    ]);
    AnalyticsFact {
        metadata: envelope(
            &window.metadata,
            &window.aggregate_id,
            "backbone.analytics.fact",
            window.window_start,
        ),
        fact_id: window.aggregate_id.clone(),
        fact_type: FactType::UsageWindow,
        source_revision: window.revision,
        event_time: window.window_start,
        fact_date: day_of(window.window_start),
        customer_id: window.customer_id.clone(),
        legal_entity_id: None,
        subscription_id: Some(window.subscription_id.clone()),
        product_id: None,
        charge_id: None,
        meter_id: Some(window.meter_id.clone()),
        quantity: Some(window.quantity_sum),
        amount: None,
        currency: None,
        attributes,
    }
}

/// Day number (UTC) of a time in microseconds.
fn day_of(micros: i64) -> i32 {
    i32::try_from(micros.div_euclid(DAY_MICROS)).unwrap_or(i32::MAX)
}
