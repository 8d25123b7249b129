//! Maps canonical usage records to the contracts of the systems downstream, one topic per
//! destination, as configured routes say.
//!
//! - `RatedUsage` → `BillingCharge` (billing route): the line's delta as an amount to add to the
//!   subscription's period, `rating_id` as the billing system's idempotency key; adjustments of
//!   closed periods become `ADJUSTMENT` charges.
//! - `RatedUsage` and `UsageWindowAggregate` → `AnalyticsFact` (analytics route): one flattened
//!   row per rated line (`fact-<rating_id>`) and per window (`aggregate_id`, its revision as the
//!   source revision, so the newest figures win on upsert).
//! - `RatedUsage` → `LedgerPosting` (ERP route): receivable against revenue for the line's legal
//!   entity, accounts from the GL mapping master data, dated by the event's day in the entity's
//!   time zone (both global tables); see [`ledger`].
//! - `RatedUsage` → `AccountHealthSnapshot` (CRM route): rated lines arrive keyed by
//!   subscription, a customer's health needs all of its subscriptions, so each line is first
//!   re-keyed by customer onto a repartition topic the fanout reads back; per customer, partition
//!   state keeps the running figures; see [`health`].
//!
//! Every mapping is a function of the input record and, for the CRM route, of the state that
//! earlier inputs built: a redelivery reproduces identical outputs, which the sinks' idempotency
//! keys absorb, and a redelivered line on the repartition topic is dropped by dedup on its
//! `rating_id`. A route set to an empty string is off.

pub mod health;
pub mod ledger;

use std::collections::HashMap;
use std::sync::Arc;

use backbone_core::app::{App, RegistryAccess};
use backbone_core::config::{ConfigError, Validate};
use backbone_core::{
    IdempotencyKey, InputRecord, OutputRecord, Prefetch, ProcessError, Processor, State, StateSpec,
};
use backbone_master_data::{legal_entity_zone, undecodable};
use backbone_schemas::types::{
    AccountHealthSnapshot, AnalyticsFact, BillingCharge, BillingChargeType, Contract,
    EventMetadata, FactType, GlMapping, LedgerPosting, RatedUsage, RatingKind,
    UsageWindowAggregate,
};
use backbone_schemas::wire::encode_framed;
use backbone_schemas::{OutputContracts, WireCodec};
use serde::Deserialize;

use crate::health::AccountActivity;

use backbone_calendar::day_of_micros;
/// Partition store of the CRM route: [`AccountActivity`] per `<tenant>:<customer>`.
const ACCOUNTS: &str = "accounts";
/// Global table of the ERP route: GL mappings keyed `<tenant>:<mapping_id>`.
const GL_MAPPINGS: &str = "gl_mappings";
/// Global table of the ERP route: legal entities keyed `<tenant>:<legal entity>`.
const LEGAL_ENTITIES: &str = "legal_entities";

/// Destination topics; an empty name turns the route off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Routes {
    /// `BillingCharge`s for the billing system.
    pub billing: String,
    /// `AnalyticsFact`s for the warehouse.
    pub analytics: String,
    /// `AccountHealthSnapshot`s for the CRM.
    pub crm: String,
    /// `LedgerPosting`s for the ERP sink.
    pub erp: String,
}

impl Default for Routes {
    fn default() -> Self {
        Self {
            billing: "billing.charges".to_owned(),
            analytics: "analytics.facts".to_owned(),
            crm: "crm.account-health".to_owned(),
            erp: "erp.postings".to_owned(),
        }
    }
}

impl Routes {
    fn all(&self) -> [&String; 4] {
        [&self.billing, &self.analytics, &self.crm, &self.erp]
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
    /// GL mappings (compacted master data), read by the ERP route.
    pub gl_mappings_topic: String,
    /// Legal entities (compacted master data), read by the ERP route: a posting is dated by the
    /// event's day in its entity's time zone.
    pub legal_entities_topic: String,
    /// Repartition topic of the CRM route: rated lines re-keyed by customer.
    pub by_customer_topic: String,
    /// Where each destination's records go (`[processor.routes]`).
    pub routes: Routes,
    /// Drop a rated line the CRM route has already counted (by `rating_id`). Off only under
    /// exactly-once delivery, where no stage upstream writes a line twice.
    pub dedup: bool,
}

impl Default for FanoutSettings {
    fn default() -> Self {
        Self {
            rated_topic: "usage.rated".to_owned(),
            aggregates_topic: "usage.window-aggregates".to_owned(),
            gl_mappings_topic: "master.gl-mappings".to_owned(),
            legal_entities_topic: "master.legal-entities".to_owned(),
            by_customer_topic: "usage.rated-by-customer".to_owned(),
            routes: Routes::default(),
            dedup: true,
        }
    }
}

impl Validate for FanoutSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        let mut required = vec![
            ("rated_topic", &self.rated_topic),
            ("aggregates_topic", &self.aggregates_topic),
        ];
        if !self.routes.erp.is_empty() {
            required.push(("gl_mappings_topic", &self.gl_mappings_topic));
            required.push(("legal_entities_topic", &self.legal_entities_topic));
        }
        if !self.routes.crm.is_empty() {
            required.push(("by_customer_topic", &self.by_customer_topic));
        }
        for (key, value) in required {
            if value.trim().is_empty() {
                return Err(ConfigError::Invalid {
                    key: format!("processor.{key}"),
                    message: "must not be empty while the route that reads it is on".to_owned(),
                });
            }
        }
        if self.routes.all().iter().all(|r| r.is_empty()) {
            return Err(ConfigError::Invalid {
                key: "processor.routes".to_owned(),
                message: "every route is off; set billing, analytics, crm or erp".to_owned(),
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
        let routes = &settings.routes;
        let contracts = [
            (&routes.billing, BillingCharge::FULL_NAME),
            (&routes.analytics, AnalyticsFact::FULL_NAME),
            (&routes.crm, AccountHealthSnapshot::FULL_NAME),
            (&routes.erp, LedgerPosting::FULL_NAME),
        ]
        .into_iter()
        .filter(|(topic, _)| !topic.is_empty())
        .map(|(topic, name)| (topic.clone(), name))
        .collect();
        Self {
            outputs: Arc::new(OutputContracts::new(codec, contracts)),
            settings,
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
            value: Some(
                encode_framed(id, value)
                    .map_err(|e| ProcessError::permanent("contract_violation", e.to_string()))?,
            ),
            headers: Vec::new(),
        })
    }

    fn rated(
        &self,
        line: &RatedUsage,
        value: &[u8],
        state: &State<'_>,
    ) -> Result<Vec<OutputRecord>, ProcessError> {
        let routes = &self.settings.routes;
        let tenant = &line.metadata.tenant_id;
        let mut outputs = Vec::with_capacity(4);
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
        if !routes.erp.is_empty() {
            let mappings = self.gl_mappings(tenant, state)?;
            let zone = legal_entity_zone(
                state,
                LEGAL_ENTITIES,
                self.outputs.codec(),
                tenant,
                &line.legal_entity_id,
            )?;
            let day = zone.day_of(line.metadata.occurred_at).map_err(|e| {
                ProcessError::permanent("contract_violation", format!("occurred_at: {e}"))
            })?;
            let mapping =
                GlMapping::select(&mappings, &line.legal_entity_id, &line.charge_id, day)
                    .ok_or_else(|| {
                        ProcessError::permanent(
                            "unknown_gl_mapping",
                            format!(
                                "no GL mapping of tenant `{tenant}` covers legal entity `{}`, charge `{}` on day {day}",
                                line.legal_entity_id, line.charge_id
                            ),
                        )
                    })?;
            if let Some(posting) = ledger::posting(line, mapping, day)? {
                let key = format!("{tenant}:{}", line.legal_entity_id);
                outputs.push(self.output(&routes.erp, key, &posting)?);
            }
        }
        if !routes.crm.is_empty() {
            // The same bytes, keyed by customer: the CRM route reads them back whole per customer.
            outputs.push(OutputRecord {
                topic: self.settings.by_customer_topic.clone(),
                key: Some(format!("{tenant}:{}", line.customer_id).into_bytes()),
                value: Some(value.to_vec()),
                headers: Vec::new(),
            });
        }
        Ok(outputs)
    }

    /// The tenant's GL mappings, decoded.
    fn gl_mappings(
        &self,
        tenant: &str,
        state: &State<'_>,
    ) -> Result<Vec<Arc<GlMapping>>, ProcessError> {
        let codec = self.outputs.codec();
        state
            .global_prefix(GL_MAPPINGS, format!("{tenant}:").as_bytes())?
            .iter()
            .map(|(key, value)| {
                codec
                    .decode_shared(value, GlMapping::schema())
                    .map_err(|e| {
                        undecodable("invalid_gl_mapping", &String::from_utf8_lossy(key), e)
                    })
            })
            .collect()
    }

    fn account_health(
        &self,
        line: &RatedUsage,
        state: &mut State<'_>,
    ) -> Result<Vec<OutputRecord>, ProcessError> {
        let m = &line.metadata;
        if self.settings.dedup
            && !state.first_seen(&IdempotencyKey {
                tenant_id: &m.tenant_id,
                source: &m.source,
                event_id: &line.rating_id,
            })?
        {
            return Ok(Vec::new());
        }
        let key = format!("{}:{}", m.tenant_id, line.customer_id);
        let mut activity: AccountActivity = state
            .get_json(ACCOUNTS, key.as_bytes())?
            .unwrap_or_default();
        let snapshot = activity.apply(line);
        state.put_json(ACCOUNTS, key.as_bytes(), &activity)?;
        Ok(vec![self.output(
            &self.settings.routes.crm,
            key,
            &snapshot,
        )?])
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
        "Maps rated usage and usage windows to billing charges, CRM snapshots, analytics facts and ERP postings";
    type Settings = FanoutSettings;

    fn build(settings: FanoutSettings, registry: &RegistryAccess) -> Self {
        Self::new(settings, WireCodec::new(registry.clone()))
    }
}

impl Processor for Fanout {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn input_topics(&self) -> Vec<String> {
        let mut topics = vec![
            self.settings.rated_topic.clone(),
            self.settings.aggregates_topic.clone(),
        ];
        if !self.settings.routes.crm.is_empty() {
            topics.push(self.settings.by_customer_topic.clone());
        }
        topics
    }

    fn output_topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self
            .settings
            .routes
            .all()
            .into_iter()
            .filter(|t| !t.is_empty())
            .cloned()
            .collect();
        if !self.settings.routes.crm.is_empty() {
            topics.push(self.settings.by_customer_topic.clone());
        }
        topics
    }

    /// An account's health and a window's fact are each superseded by the next of their key;
    /// a rated line's fact has a key of its own, so it goes out whatever the batch.
    fn table_topics(&self) -> Vec<String> {
        let routes = &self.settings.routes;
        [&routes.crm, &routes.analytics]
            .into_iter()
            .filter(|t| !t.is_empty())
            .cloned()
            .collect()
    }

    fn state(&self) -> StateSpec {
        let mut spec = StateSpec::stateless();
        if !self.settings.routes.crm.is_empty() {
            spec = spec.store(ACCOUNTS);
            if self.settings.dedup {
                spec = spec.with_dedup();
            }
        }
        if !self.settings.routes.erp.is_empty() {
            spec = spec
                .global(GL_MAPPINGS, &self.settings.gl_mappings_topic)
                .global(LEGAL_ENTITIES, &self.settings.legal_entities_topic);
        }
        spec
    }

    fn prefetch(&self) -> Option<Arc<dyn Prefetch>> {
        Some(self.outputs.clone())
    }

    fn process(
        &mut self,
        record: &InputRecord<'_>,
        state: &mut State<'_>,
    ) -> Result<Vec<OutputRecord>, ProcessError> {
        let value = record
            .value
            .ok_or_else(|| ProcessError::permanent("missing_value", "record has no value"))?;
        let codec = self.outputs.codec();
        if record.topic == self.settings.aggregates_topic {
            let window: UsageWindowAggregate = codec
                .decode_cached_as(value, UsageWindowAggregate::schema())
                .map_err(ProcessError::from)?;
            return self.window(&window);
        }
        let line: RatedUsage = codec
            .decode_cached_as(value, RatedUsage::schema())
            .map_err(ProcessError::from)?;
        if record.topic == self.settings.by_customer_topic {
            self.account_health(&line, state)
        } else {
            self.rated(&line, value, state)
        }
    }
}

pub(crate) fn envelope(
    source: &EventMetadata,
    event_id: &str,
    kind: &str,
    occurred_at: i64,
) -> EventMetadata {
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
        fact_date: day_of_micros(line.metadata.occurred_at),
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
        fact_date: day_of_micros(window.window_start),
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

#[cfg(test)]
pub(crate) mod tests {
    use backbone_schemas::types::{Amount, Quantity, TraceContext};

    use super::*;

    /// 2026-11-27 00:00 UTC, in days and microseconds.
    pub(crate) const DAY: i32 = 20_784;
    pub(crate) const MIDNIGHT: i64 = DAY as i64 * backbone_calendar::DAY_MICROS;

    /// A rated line of `subscription` (customer `cust-1`) adding `delta` at `occurred_at`, in the
    /// period starting `period_start`.
    pub(crate) fn line(
        subscription: &str,
        delta: &str,
        occurred_at: i64,
        period_start: i32,
    ) -> RatedUsage {
        let rating_id = format!("rtg-{subscription}-{occurred_at}-{delta}");
        RatedUsage {
            metadata: EventMetadata {
                tenant_id: "acme".into(),
                event_id: rating_id.clone(),
                source: "usage-rater".into(),
                r#type: "backbone.usage.rated".into(),
                occurred_at,
                produced_at: occurred_at,
                trace: TraceContext {
                    traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
                    tracestate: None,
                },
                schema_version: None,
            },
            rating_id,
            revision: 1,
            kind: RatingKind::Normal,
            customer_id: "cust-1".into(),
            subscription_id: subscription.into(),
            plan_id: "plan-0".into(),
            rate_card_version: 1,
            charge_id: "api-calls".into(),
            meter_id: "api_calls".into(),
            group_key: String::new(),
            legal_entity_id: "le-eu".into(),
            period_start,
            period_end: period_start + 30,
            quantity_before: Quantity::ZERO,
            quantity_after: "10".parse().expect("quantity"),
            amount_before: Amount::ZERO,
            amount_after: delta.parse().expect("amount"),
            delta_amount: delta.parse().expect("amount"),
            currency: "EUR".into(),
            source_event_count: 1,
            source_event_ids: Vec::new(),
            adjusted_period_start: None,
            adjusted_period_end: None,
        }
    }

    #[test]
    fn default_routes_need_the_gl_topic_and_the_repartition_topic() {
        let mut settings = FanoutSettings::default();
        assert!(settings.validate().is_ok());
        settings.gl_mappings_topic = String::new();
        let err = settings
            .validate()
            .expect_err("empty GL topic with the ERP route on");
        assert!(
            err.to_string().contains("processor.gl_mappings_topic"),
            "{err}"
        );
        settings.routes.erp = String::new();
        assert!(settings.validate().is_ok());
        settings.by_customer_topic = " ".into();
        let err = settings
            .validate()
            .expect_err("blank repartition topic with CRM on");
        assert!(
            err.to_string().contains("processor.by_customer_topic"),
            "{err}"
        );
    }

    #[test]
    fn the_crm_route_reads_back_its_repartition_topic_and_keeps_state() {
        let fanout = Fanout::new(
            FanoutSettings::default(),
            WireCodec::new("http://127.0.0.1:9"),
        );
        assert!(fanout
            .input_topics()
            .contains(&"usage.rated-by-customer".to_owned()));
        assert!(fanout
            .output_topics()
            .contains(&"usage.rated-by-customer".to_owned()));
        assert!(!fanout.state().is_stateless());
        let mut settings = FanoutSettings::default();
        settings.routes.crm = String::new();
        let fanout = Fanout::new(settings, WireCodec::new("http://127.0.0.1:9"));
        assert_eq!(fanout.input_topics().len(), 2);
        assert!(
            fanout.state().is_stateless(),
            "billing, analytics and ERP need no partition state"
        );
        assert_eq!(
            fanout.state().globals().len(),
            2,
            "GL mappings and legal entities"
        );
    }
}
