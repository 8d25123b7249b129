//! Checks raw JSON usage events against the usage contract before anything downstream sees
//! them: required fields present, quantity a non-negative decimal, timestamp well formed.
//! Valid events are forwarded unchanged in meaning (re-serialised canonically, so a
//! redelivered input yields byte-identical output); invalid ones go to the dead-letter topic
//! with the reason.

use backbone_core::app::App;
use backbone_core::config::{ConfigError, Validate};
use backbone_core::{Header, InputRecord, OutputRecord, ProcessError, Processor};
use serde::{Deserialize, Serialize};

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
}

impl Default for ValidatorSettings {
    fn default() -> Self {
        Self {
            input_topic: "usage.events".to_owned(),
            output_topic: "usage.validated".to_owned(),
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

/// A usage event as producers publish it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEvent {
    /// Tenant the usage belongs to.
    pub tenant_id: String,
    /// Producer-assigned id, unique per tenant and source.
    pub event_id: String,
    /// Producing system.
    pub source: String,
    /// Customer account that used something.
    pub customer_id: String,
    /// What was measured, e.g. `api_calls`.
    pub meter: String,
    /// How much, as a decimal string.
    pub quantity: String,
    /// When it happened, RFC 3339.
    pub occurred_at: String,
}

impl UsageEvent {
    /// `tenant/source/event_id`, the idempotency key downstream stages dedup on.
    pub fn idempotency_key(&self) -> String {
        format!("{}/{}/{}", self.tenant_id, self.source, self.event_id)
    }
}

/// The processor.
#[derive(Debug, Clone)]
pub struct UsageValidator {
    settings: ValidatorSettings,
}

impl App for UsageValidator {
    const NAME: &'static str = "usage-validator";
    const ABOUT: &'static str =
        "Checks raw usage events against the usage contract; forwards valid ones, dead-letters the rest";
    type Settings = ValidatorSettings;

    fn build(settings: ValidatorSettings) -> Self {
        Self { settings }
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

    fn process(&mut self, record: &InputRecord<'_>) -> Result<Vec<OutputRecord>, ProcessError> {
        let event = validate(record.value)?;
        let mut headers: Vec<Header> = record.headers.to_vec();
        headers.retain(|(name, _)| name != IDEMPOTENCY_KEY_HEADER);
        headers.push((
            IDEMPOTENCY_KEY_HEADER.to_owned(),
            event.idempotency_key().into_bytes(),
        ));
        let value = serde_json::to_vec(&event)
            .map_err(|err| ProcessError::permanent("contract_violation", err.to_string()))?;
        Ok(vec![OutputRecord {
            topic: self.settings.output_topic.clone(),
            key: Some(format!("{}:{}", event.tenant_id, event.customer_id).into_bytes()),
            value,
            headers,
        }])
    }
}

/// Parses and checks one record value.
pub fn validate(value: Option<&[u8]>) -> Result<UsageEvent, ProcessError> {
    let bytes =
        value.ok_or_else(|| ProcessError::permanent("missing_value", "record has no value"))?;
    let json: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|err| ProcessError::permanent("malformed_json", err.to_string()))?;
    let event: UsageEvent = serde_json::from_value(json)
        .map_err(|err| ProcessError::permanent("contract_violation", err.to_string()))?;
    for (field, value) in [
        ("tenant_id", &event.tenant_id),
        ("event_id", &event.event_id),
        ("source", &event.source),
        ("customer_id", &event.customer_id),
        ("meter", &event.meter),
    ] {
        if value.trim().is_empty() {
            return Err(ProcessError::permanent(
                "contract_violation",
                format!("field `{field}` is empty"),
            ));
        }
    }
    if !is_non_negative_decimal(&event.quantity) {
        return Err(ProcessError::permanent(
            "invalid_quantity",
            format!(
                "field `quantity`: expected a non-negative decimal like \"12.5\", got {:?}",
                event.quantity
            ),
        ));
    }
    if !looks_like_rfc3339(&event.occurred_at) {
        return Err(ProcessError::permanent(
            "contract_violation",
            format!(
                "field `occurred_at`: expected an RFC 3339 time like \"2026-11-27T03:00:00Z\", got {:?}",
                event.occurred_at
            ),
        ));
    }
    Ok(event)
}

/// Digits, optionally a point and more digits; at most 38 significant digits (Avro decimal
/// precision used by the contracts).
fn is_non_negative_decimal(text: &str) -> bool {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, "0"));
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    all_digits(whole) && all_digits(fraction) && whole.len() + fraction.len() <= 38
}

/// `YYYY-MM-DDTHH:MM:SS` followed by optional fraction and a zone (`Z` or `±HH:MM`).
fn looks_like_rfc3339(text: &str) -> bool {
    let bytes = text.as_bytes();
    let Some((head, rest)) = bytes.split_at_checked(19) else {
        return false;
    };
    let shape_ok = head.iter().enumerate().all(|(i, b)| match i {
        4 | 7 => *b == b'-',
        10 => *b == b'T' || *b == b't',
        13 | 16 => *b == b':',
        _ => b.is_ascii_digit(),
    });
    let rest = match rest {
        [b'.', tail @ ..] => {
            let digits = tail.iter().take_while(|b| b.is_ascii_digit()).count();
            if digits == 0 {
                return false;
            }
            &tail[digits..]
        }
        other => other,
    };
    let zone_ok = matches!(rest, [b'Z'] | [b'z'])
        || matches!(rest, [b'+' | b'-', h1, h2, b':', m1, m2]
            if [h1, h2, m1, m2].iter().all(|b| b.is_ascii_digit()));
    shape_ok && zone_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> serde_json::Value {
        serde_json::json!({
            "tenant_id": "acme", "event_id": "e-1", "source": "api-gateway",
            "customer_id": "c-9", "meter": "api_calls", "quantity": "12.5",
            "occurred_at": "2026-11-27T03:00:00.123Z"
        })
    }

    fn reason_of(value: &serde_json::Value) -> &'static str {
        let bytes = serde_json::to_vec(value).unwrap();
        match validate(Some(&bytes)) {
            Err(ProcessError::Permanent { reason, .. }) => reason,
            other => panic!("expected a permanent error, got {other:?}"),
        }
    }

    fn input<'a>(value: &'a [u8], headers: &'a [Header]) -> InputRecord<'a> {
        InputRecord {
            topic: "usage.events",
            partition: 0,
            offset: 7,
            timestamp_ms: None,
            key: None,
            value: Some(value),
            headers,
        }
    }

    #[test]
    fn valid_event_is_forwarded_with_its_idempotency_key() {
        let mut processor = UsageValidator::build(ValidatorSettings::default());
        let bytes = serde_json::to_vec(&good()).unwrap();
        let headers = vec![("traceparent".to_owned(), b"00-1".to_vec())];
        let out = processor.process(&input(&bytes, &headers)).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].topic, "usage.validated");
        assert_eq!(out[0].key.as_deref(), Some(&b"acme:c-9"[..]));
        assert!(out[0]
            .headers
            .contains(&("traceparent".to_owned(), b"00-1".to_vec())));
        assert!(out[0].headers.contains(&(
            IDEMPOTENCY_KEY_HEADER.to_owned(),
            b"acme/api-gateway/e-1".to_vec()
        )));
        // Deterministic: the same input gives byte-identical output.
        assert_eq!(out, processor.process(&input(&bytes, &headers)).unwrap());
    }

    #[test]
    fn each_kind_of_bad_input_gets_its_reason() {
        assert!(matches!(
            validate(None),
            Err(ProcessError::Permanent {
                reason: "missing_value",
                ..
            })
        ));
        assert!(matches!(
            validate(Some(b"{not json")),
            Err(ProcessError::Permanent {
                reason: "malformed_json",
                ..
            })
        ));
        let mut missing = good();
        missing.as_object_mut().unwrap().remove("meter");
        assert_eq!(reason_of(&missing), "contract_violation");
        for quantity in ["-1", "abc", "", "1.", ".5", "1e3"] {
            let mut bad = good();
            bad["quantity"] = quantity.into();
            assert_eq!(reason_of(&bad), "invalid_quantity", "{quantity}");
        }
        let mut empty = good();
        empty["tenant_id"] = " ".into();
        assert_eq!(reason_of(&empty), "contract_violation");
        for time in [
            "yesterday",
            "2026-11-27 03:00:00Z",
            "2026-11-27T03:00:00",
            "2026-11-27T03:00:00+0100",
        ] {
            let mut bad = good();
            bad["occurred_at"] = time.into();
            assert_eq!(reason_of(&bad), "contract_violation", "{time}");
        }
    }

    #[test]
    fn accepted_shapes() {
        assert!(is_non_negative_decimal("0"));
        assert!(is_non_negative_decimal("12.50"));
        assert!(looks_like_rfc3339("2026-11-27T03:00:00+01:00"));
        assert!(looks_like_rfc3339("2026-11-27T03:00:00.5Z"));
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
