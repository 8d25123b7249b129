//! `backbone.common`: the event envelope, its trace context, and postal addresses.

use apache_avro::AvroSchema;
use serde::{Deserialize, Serialize};

use super::{logical, Contract};

/// The envelope every event starts with; `(tenant_id, source, event_id)` is the idempotency
/// key the deduplicating stages (validator, rater, fanout) drop repeats by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.common")]
pub struct EventMetadata {
    /// Tenant the event belongs to; never empty.
    pub tenant_id: String,
    /// Producer-assigned id, unique per tenant and source, and the same whenever the same
    /// business fact is sent again.
    pub event_id: String,
    /// Producing system or processor, e.g. `usage-rater`.
    pub source: String,
    /// Event type in reverse-DNS style, e.g. `backbone.usage.recorded`, for routing without
    /// decoding the payload.
    pub r#type: String,
    /// Event time: when the business fact happened, in microseconds since the epoch (UTC).
    #[avro(with = logical::timestamp_micros)]
    pub occurred_at: i64,
    /// When the producer wrote the record, in microseconds since the epoch (UTC); for
    /// latency only, never for business logic.
    #[avro(with = logical::timestamp_micros)]
    pub produced_at: i64,
    /// W3C trace context of the producing operation.
    pub trace: TraceContext,
    /// Contract version the producer was built against, for diagnostics; the registry
    /// schema id is authoritative.
    pub schema_version: Option<i32>,
}

impl Contract for EventMetadata {
    const FULL_NAME: &'static str = "backbone.common.EventMetadata";
}

/// W3C Trace Context of the operation that produced an event, so traces continue across
/// Kafka hops.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.common")]
pub struct TraceContext {
    /// The `traceparent` header value (`version-traceid-parentid-flags`).
    pub traceparent: String,
    /// The `tracestate` header value, when present.
    pub tracestate: Option<String>,
}

impl Contract for TraceContext {
    const FULL_NAME: &'static str = "backbone.common.TraceContext";
}

/// A postal address; personal data when it belongs to a natural person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "backbone.common")]
pub struct PostalAddress {
    /// Street lines in delivery order; at least one.
    pub lines: Vec<String>,
    /// City, town or locality.
    pub city: String,
    /// State, province or region, where the country uses one.
    pub region: Option<String>,
    /// Postal or ZIP code as written locally, where the country has one.
    pub postal_code: Option<String>,
    /// ISO 3166-1 alpha-2 country code, e.g. `DE`.
    pub country_code: String,
}

impl Contract for PostalAddress {
    const FULL_NAME: &'static str = "backbone.common.PostalAddress";
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::types::tests::check;

    /// 2026-11-14T09:30:00Z in microseconds.
    pub(crate) const OCCURRED_AT: i64 = 1_794_648_600_000_000;

    /// 2026-10-01, 2026-11-01 and 2026-12-01 in days since the epoch: two billing periods.
    pub(crate) const OCT_1: i32 = 20_727;
    pub(crate) const NOV_1: i32 = 20_758;
    pub(crate) const DEC_1: i32 = 20_788;

    /// An envelope as a producer would write it.
    pub(crate) fn metadata(source: &str, event_type: &str, event_id: &str) -> EventMetadata {
        EventMetadata {
            tenant_id: "acme".into(),
            event_id: event_id.into(),
            source: source.into(),
            r#type: event_type.into(),
            occurred_at: OCCURRED_AT,
            produced_at: OCCURRED_AT + 1_250_000,
            trace: trace(),
            schema_version: Some(1),
        }
    }

    pub(crate) fn trace() -> TraceContext {
        TraceContext {
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            tracestate: None,
        }
    }

    pub(crate) fn address() -> PostalAddress {
        PostalAddress {
            lines: vec!["Friedrichstraße 68".into(), "3. OG".into()],
            city: "Berlin".into(),
            region: None,
            postal_code: Some("10117".into()),
            country_code: "DE".into(),
        }
    }

    #[test]
    pub(crate) fn event_metadata_matches_its_contract() {
        check(&metadata(
            "api-gateway",
            "backbone.usage.recorded",
            "evt-0001",
        ));
        check(&EventMetadata {
            schema_version: None,
            ..metadata("api-gateway", "backbone.usage.recorded", "evt-0002")
        });
    }

    #[test]
    pub(crate) fn trace_context_matches_its_contract() {
        check(&TraceContext {
            tracestate: Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7".into()),
            ..trace()
        });
    }

    #[test]
    pub(crate) fn postal_address_matches_its_contract() {
        check(&address());
    }
}
