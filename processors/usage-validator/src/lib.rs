//! Checks usage events against the usage contract before anything downstream sees them.
//!
//! Input records are `backbone.usage.UsageEvent` in the Confluent wire format. The runtime
//! resolves each record's schema id through the registry before [`Processor::process`] runs
//! (see [`WireCodec`]'s `Prefetch`), so checking is synchronous: the record must decode with a
//! registered schema into the contract, carry its identity fields and a non-negative quantity.
//! A valid record is forwarded byte for byte (same schema id, so a redelivered input yields an
//! identical output) with its idempotency key in a header; anything else is dead-lettered with
//! the reason (`wrong_magic_byte`, `unknown_schema_id`, `undecodable_body`,
//! `contract_violation`, `invalid_quantity`, ...).

use std::sync::Arc;

pub mod contract;

use backbone_core::app::{App, RegistryAccess};
use backbone_core::config::{ConfigError, Validate};
use backbone_core::{
    Header, IdempotencyKey, InputRecord, OutputRecord, Prefetch, ProcessError, Processor, State,
    StateSpec,
};
use backbone_schemas::types::{Contract, UsageEvent};
use backbone_schemas::WireCodec;
use contract::ContractMetrics;
use serde::Deserialize;

/// Header carrying the idempotency key `(tenant_id, source, event_id)` as `tenant/source/id`.
pub const IDEMPOTENCY_KEY_HEADER: &str = "backbone.idempotency.key";

/// The `[processor]` config section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidatorSettings {
    /// Topic of raw usage events.
    pub input_topic: String,
    /// Topic of validated usage events.
    pub output_topic: String,
    /// Drop events whose idempotency key was seen before (within `runtime.state.dedup_ttl`),
    /// counting them in `backbone_dedup_duplicates_total`.
    pub dedup: bool,
}

impl Default for ValidatorSettings {
    fn default() -> Self {
        Self {
            input_topic: "usage.events".to_owned(),
            output_topic: "usage.validated".to_owned(),
            dedup: true,
        }
    }
}

impl Validate for ValidatorSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("input_topic", &self.input_topic),
            ("output_topic", &self.output_topic),
        ] {
            if value.trim().is_empty() {
                return Err(ConfigError::Invalid {
                    key: format!("processor.{key}"),
                    message: "must not be empty".to_owned(),
                });
            }
        }
        if self.input_topic == self.output_topic {
            return Err(ConfigError::Invalid {
                key: "processor.output_topic".to_owned(),
                message: "must differ from processor.input_topic".to_owned(),
            });
        }
        Ok(())
    }
}

/// Reason of a record without a value.
const MISSING_VALUE: &str = "missing_value";

/// `tenant/source/event_id`, the idempotency key downstream stages dedup on.
pub fn idempotency_key(event: &UsageEvent) -> String {
    let m = &event.metadata;
    format!("{}/{}/{}", m.tenant_id, m.source, m.event_id)
}

/// The processor.
#[derive(Debug, Clone)]
pub struct UsageValidator {
    settings: ValidatorSettings,
    codec: Arc<WireCodec>,
    /// What each producer sends, once registered on a metrics registry.
    contract: Option<Arc<ContractMetrics>>,
}

impl UsageValidator {
    /// A validator decoding through `codec`.
    pub fn new(settings: ValidatorSettings, codec: WireCodec) -> Self {
        Self {
            settings,
            codec: Arc::new(codec),
            contract: None,
        }
    }

    /// Decodes and checks `value`, counting what the producer sent.
    fn read(&self, topic: &str, value: &[u8]) -> Result<UsageEvent, ProcessError> {
        let decoded = self
            .codec
            .decode_cached_as(value, UsageEvent::schema())
            .map_err(ProcessError::from);
        let Some(contract) = &self.contract else {
            return decoded.and_then(|event| check(&event).map(|()| event));
        };
        let event = decoded.inspect_err(|err| {
            if let ProcessError::Permanent { reason, .. } = err {
                contract.rejected(topic, None, reason);
            }
        })?;
        contract.decoded(topic, contract::schema_id(value), &event);
        if let Err(err @ ProcessError::Permanent { reason, .. }) = check(&event) {
            contract.rejected(topic, Some(&event), reason);
            return Err(err);
        }
        Ok(event)
    }
}

impl App for UsageValidator {
    const NAME: &'static str = "usage-validator";
    const ABOUT: &'static str =
        "Checks usage events against the usage contract; forwards valid ones, dead-letters the rest";
    type Settings = ValidatorSettings;

    fn build(settings: ValidatorSettings, registry: &RegistryAccess) -> Self {
        Self::new(settings, WireCodec::new(registry.clone()))
    }

    fn register_metrics(
        &mut self,
        registry: &prometheus::Registry,
    ) -> Result<(), prometheus::Error> {
        self.contract = Some(Arc::new(ContractMetrics::new(registry, Self::NAME)?));
        Ok(())
    }
}

impl Processor for UsageValidator {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn input_topics(&self) -> Vec<String> {
        vec![self.settings.input_topic.clone()]
    }

    fn output_topics(&self) -> Vec<String> {
        vec![self.settings.output_topic.clone()]
    }

    fn state(&self) -> StateSpec {
        if self.settings.dedup {
            StateSpec::stateless().with_dedup()
        } else {
            StateSpec::stateless()
        }
    }

    fn prefetch(&self) -> Option<Arc<dyn Prefetch>> {
        Some(self.codec.clone())
    }

    fn process(
        &mut self,
        record: &InputRecord<'_>,
        state: &mut State<'_>,
    ) -> Result<Vec<OutputRecord>, ProcessError> {
        let Some(value) = record.value else {
            if let Some(contract) = &self.contract {
                contract.rejected(record.topic, None, MISSING_VALUE);
            }
            return Err(ProcessError::permanent(
                MISSING_VALUE,
                "record has no value",
            ));
        };
        let event = self.read(record.topic, value)?;
        let m = &event.metadata;
        let key = IdempotencyKey {
            tenant_id: &m.tenant_id,
            source: &m.source,
            event_id: &m.event_id,
        };
        if self.settings.dedup && !state.first_seen(&key)? {
            return Ok(Vec::new());
        }
        let mut headers: Vec<Header> = record.headers.to_vec();
        headers.retain(|(name, _)| name != IDEMPOTENCY_KEY_HEADER);
        headers.push((
            IDEMPOTENCY_KEY_HEADER.to_owned(),
            Some(idempotency_key(&event).into_bytes()),
        ));
        Ok(vec![OutputRecord {
            topic: self.settings.output_topic.clone(),
            key: Some(format!("{}:{}", event.metadata.tenant_id, event.customer_id).into_bytes()),
            value: Some(value.to_vec()),
            headers,
        }])
    }
}

/// The business rules a decoded usage event must meet.
pub fn check(event: &UsageEvent) -> Result<(), ProcessError> {
    let m = &event.metadata;
    for (field, value) in [
        ("metadata.tenant_id", &m.tenant_id),
        ("metadata.event_id", &m.event_id),
        ("metadata.source", &m.source),
        ("customer_id", &event.customer_id),
        ("meter_id", &event.meter_id),
    ] {
        if value.trim().is_empty() {
            return Err(ProcessError::permanent(
                "contract_violation",
                format!("field `{field}` is empty"),
            ));
        }
    }
    if event.quantity.unscaled() < 0 {
        return Err(ProcessError::permanent(
            "invalid_quantity",
            format!(
                "field `quantity`: must not be negative, got {}",
                event.quantity
            ),
        ));
    }
    if m.occurred_at <= 0 {
        return Err(ProcessError::permanent(
            "contract_violation",
            format!(
                "field `metadata.occurred_at`: expected microseconds since the epoch, got {}",
                m.occurred_at
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use backbone_schemas::types::{EventMetadata, TraceContext};

    fn event() -> UsageEvent {
        UsageEvent {
            metadata: EventMetadata {
                tenant_id: "acme".into(),
                event_id: "e-1".into(),
                source: "api-gateway".into(),
                r#type: "usage.recorded".into(),
                occurred_at: 1_790_000_000_000_000,
                produced_at: 1_790_000_000_100_000,
                trace: TraceContext {
                    traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
                    tracestate: None,
                },
                schema_version: None,
            },
            customer_id: "c-9".into(),
            subscription_id: None,
            meter_id: "api_calls".into(),
            quantity: "12.5".parse().unwrap(),
            unit: "call".into(),
            dimensions: None,
            unique_value: None,
        }
    }

    fn reason(event: &UsageEvent) -> &'static str {
        match check(event) {
            Err(ProcessError::Permanent { reason, .. }) => reason,
            other => panic!("expected a permanent error, got {other:?}"),
        }
    }

    #[test]
    fn valid_event_passes_and_has_its_key() {
        assert_eq!(check(&event()), Ok(()));
        assert_eq!(idempotency_key(&event()), "acme/api-gateway/e-1");
    }

    #[test]
    fn each_broken_rule_gets_its_reason() {
        let mut negative = event();
        negative.quantity = "-0.000000001".parse().unwrap();
        assert_eq!(reason(&negative), "invalid_quantity");
        let mut empty = event();
        empty.metadata.tenant_id = " ".into();
        assert_eq!(reason(&empty), "contract_violation");
        let mut no_meter = event();
        no_meter.meter_id.clear();
        assert_eq!(reason(&no_meter), "contract_violation");
        let mut epoch = event();
        epoch.metadata.occurred_at = 0;
        assert_eq!(reason(&epoch), "contract_violation");
    }

    #[test]
    fn undecodable_records_are_dead_lettered_with_the_wire_reason() {
        let settings = ValidatorSettings::default();
        let mut processor = UsageValidator::new(settings, WireCodec::new("http://127.0.0.1:9"));
        let input = |value: &'static [u8]| InputRecord {
            topic: "usage.events",
            partition: 0,
            offset: 1,
            timestamp_ms: None,
            key: None,
            value: Some(value),
            headers: &[],
        };
        let wrong = processor.process(&input(b"{\"json\": true}"), &mut State::stateless());
        assert!(matches!(
            wrong,
            Err(ProcessError::Permanent {
                reason: "wrong_magic_byte",
                ..
            })
        ));
        let short = processor.process(&input(&[0, 0]), &mut State::stateless());
        assert!(matches!(
            short,
            Err(ProcessError::Permanent {
                reason: "truncated_record",
                ..
            })
        ));
        // An id the runtime has not resolved yet is retried, never dead-lettered.
        let unresolved = processor.process(&input(&[0, 0, 0, 0, 7, 2]), &mut State::stateless());
        assert!(matches!(unresolved, Err(ProcessError::Unavailable(_))));
    }

    #[test]
    fn same_input_and_output_topic_is_refused() {
        let settings = ValidatorSettings {
            output_topic: "usage.events".into(),
            ..ValidatorSettings::default()
        };
        assert_eq!(
            settings.validate().unwrap_err().to_string(),
            "config key `processor.output_topic`: must differ from processor.input_topic"
        );
    }
}
