//! Dead letters: an input that cannot be processed is republished, key, value and headers
//! byte for byte, to `<topic>.dlq` with headers saying what failed, where, when and by whom.
//! An absent key or value stays absent: a tombstone's dead letter is a tombstone.
//!
//! A dead letter is its input plus headers, so it may be larger than any output the stage
//! writes: dead-letter topics are created to take records of up to
//! [`DEFAULT_MAX_DEAD_LETTER_BYTES`] (or the stage's setting), and the producer sends them.
//!
//! Two header sets are written: ours (`backbone.dlq.*`, `backbone.origin.*`; see
//! `docs/dead-letters.md`) and Kafka Connect's `__connect.errors.*` context headers, so tools
//! built for Connect dead-letter queues can read ours.

use std::time::SystemTime;

use crate::admin::TopicSpec;
use crate::processor::{Header, InputRecord, OutputRecord};

/// Suffix of a topic's dead-letter topic.
pub const DLQ_SUFFIX: &str = ".dlq";

/// Largest dead letter a stage sends unless configured otherwise: room for an input at the
/// broker's usual limit (1 MiB) many times over, plus the headers.
pub const DEFAULT_MAX_DEAD_LETTER_BYTES: usize = 8 * 1024 * 1024;

/// What a record batch adds around a record (61 bytes in Kafka's format v2), with room to
/// spare: a dead-letter topic's `max.message.bytes` is its largest dead letter plus this.
const BATCH_FRAMING_BYTES: usize = 1024;

/// Header names written on every dead letter.
pub mod headers {
    /// Machine-readable reason, e.g. `contract_violation`.
    pub const REASON: &str = "backbone.dlq.reason";
    /// `permanent`, or `transient` when retries ran out.
    pub const ERROR_CLASS: &str = "backbone.dlq.error_class";
    /// Human-readable message.
    pub const MESSAGE: &str = "backbone.dlq.message";
    /// When processing first failed (RFC 3339, UTC).
    pub const FIRST_FAILED_AT: &str = "backbone.dlq.first_failed_at";
    /// Processor that gave up on the record.
    pub const PROCESSOR: &str = "backbone.dlq.processor";
    /// Version of that processor.
    pub const PROCESSOR_VERSION: &str = "backbone.dlq.processor_version";
    /// How many times processing was attempted.
    pub const ATTEMPTS: &str = "backbone.dlq.attempts";
    /// When the record was dead-lettered (RFC 3339, UTC).
    pub const FAILED_AT: &str = "backbone.dlq.failed_at";
    /// Topic the record was consumed from.
    pub const ORIGIN_TOPIC: &str = "backbone.origin.topic";
    /// Partition it was consumed from.
    pub const ORIGIN_PARTITION: &str = "backbone.origin.partition";
    /// Its offset there.
    pub const ORIGIN_OFFSET: &str = "backbone.origin.offset";
    /// Its timestamp there, milliseconds since the epoch.
    pub const ORIGIN_TIMESTAMP: &str = "backbone.origin.timestamp";
    /// Tenant of the record: its key's part before the first `:` (every topic's key is
    /// `<tenant_id>:<id>`); absent when the key is absent, not UTF-8 or has no such part.
    pub const TENANT: &str = "backbone.dlq.tenant";

    /// Kafka Connect's dead-letter context headers, written alongside ours.
    pub mod connect {
        /// Original topic.
        pub const TOPIC: &str = "__connect.errors.topic";
        /// Original partition.
        pub const PARTITION: &str = "__connect.errors.partition";
        /// Original offset.
        pub const OFFSET: &str = "__connect.errors.offset";
        /// Connect's connector name: our processor name.
        pub const CONNECTOR_NAME: &str = "__connect.errors.connector.name";
        /// Connect's task id: our input partition.
        pub const TASK_ID: &str = "__connect.errors.task.id";
        /// Connect's failing stage: ours is always the processor.
        pub const STAGE: &str = "__connect.errors.stage";
        /// Connect's failing class: our processor and version.
        pub const CLASS_NAME: &str = "__connect.errors.class.name";
        /// Connect's exception class: our error class and reason.
        pub const EXCEPTION_CLASS_NAME: &str = "__connect.errors.exception.class.name";
        /// Connect's exception message: our message.
        pub const EXCEPTION_MESSAGE: &str = "__connect.errors.exception.message";
    }
}

/// The dead-letter topic of `topic`.
pub fn dlq_topic(topic: &str) -> String {
    format!("{topic}{DLQ_SUFFIX}")
}

/// The dead-letter topic `name` as a stage creates it: `partitions` partitions, taking dead
/// letters of up to `max_dead_letter_bytes` (topic config `max.message.bytes`). A topic that
/// exists already keeps its own configs.
pub fn dlq_topic_spec(name: String, partitions: i32, max_dead_letter_bytes: usize) -> TopicSpec {
    let limit = max_dead_letter_bytes.saturating_add(BATCH_FRAMING_BYTES);
    TopicSpec::new(name, partitions).with_config("max.message.bytes", &limit.to_string())
}

/// Everything needed to dead-letter one input.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    /// The input that failed.
    pub input: &'a InputRecord<'a>,
    /// `permanent`, or `transient` when retries ran out.
    pub error_class: &'a str,
    /// Reason from a fixed set.
    pub reason: &'a str,
    /// Human-readable message.
    pub message: &'a str,
    /// Processor name.
    pub processor: &'a str,
    /// Processor version.
    pub processor_version: &'a str,
    /// Attempts made.
    pub attempts: u32,
    /// When the first attempt failed.
    pub first_failed_at: SystemTime,
}

impl DeadLetter<'_> {
    /// The record to publish to the input topic's DLQ: the input's key and value as they were
    /// (either may be absent), its headers, then ours.
    pub fn to_record(&self, now: SystemTime) -> OutputRecord {
        let input = self.input;
        let mut headers: Vec<Header> = input.headers.to_vec();
        let mut add =
            |name: &str, value: String| headers.push((name.to_owned(), Some(value.into_bytes())));
        add(headers::REASON, self.reason.to_owned());
        add(headers::ERROR_CLASS, self.error_class.to_owned());
        add(headers::MESSAGE, self.message.to_owned());
        add(headers::PROCESSOR, self.processor.to_owned());
        add(
            headers::PROCESSOR_VERSION,
            self.processor_version.to_owned(),
        );
        add(headers::ATTEMPTS, self.attempts.to_string());
        add(headers::FIRST_FAILED_AT, rfc3339(self.first_failed_at));
        add(headers::FAILED_AT, rfc3339(now));
        add(headers::ORIGIN_TOPIC, input.topic.to_owned());
        add(headers::ORIGIN_PARTITION, input.partition.to_string());
        add(headers::ORIGIN_OFFSET, input.offset.to_string());
        if let Some(ts) = input.timestamp_ms {
            add(headers::ORIGIN_TIMESTAMP, ts.to_string());
        }
        if let Some(tenant) = tenant_of_key(input.key) {
            add(headers::TENANT, tenant.to_owned());
        }
        add(headers::connect::TOPIC, input.topic.to_owned());
        add(headers::connect::PARTITION, input.partition.to_string());
        add(headers::connect::OFFSET, input.offset.to_string());
        add(headers::connect::CONNECTOR_NAME, self.processor.to_owned());
        add(headers::connect::TASK_ID, input.partition.to_string());
        add(headers::connect::STAGE, "PROCESSOR".to_owned());
        add(
            headers::connect::CLASS_NAME,
            format!("{}/{}", self.processor, self.processor_version),
        );
        add(
            headers::connect::EXCEPTION_CLASS_NAME,
            format!("backbone.{}.{}", self.error_class, self.reason),
        );
        add(headers::connect::EXCEPTION_MESSAGE, self.message.to_owned());
        OutputRecord {
            topic: dlq_topic(input.topic),
            key: input.key.map(<[u8]>::to_vec),
            value: input.value.map(<[u8]>::to_vec),
            headers,
        }
    }
}

/// The tenant a record key names: the part before its first `:`, if the key is UTF-8 and that
/// part is not empty.
pub fn tenant_of_key(key: Option<&[u8]>) -> Option<&str> {
    let key = std::str::from_utf8(key?).ok()?;
    key.split_once(':')
        .map(|(tenant, _)| tenant)
        .filter(|tenant| !tenant.is_empty())
}

/// Formats `time` as RFC 3339 UTC with millisecond precision.
pub fn rfc3339(time: SystemTime) -> String {
    backbone_calendar::format_rfc3339_ms(backbone_calendar::ms_of(time))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.789Z");
    }

    #[test]
    fn the_tenant_is_the_keys_part_before_its_first_colon() {
        assert_eq!(tenant_of_key(Some(b"acme:c-1:x")), Some("acme"));
        assert_eq!(tenant_of_key(Some(b"acme")), None, "no colon, no tenant");
        assert_eq!(tenant_of_key(Some(b":c-1")), None);
        assert_eq!(tenant_of_key(Some(b"\xff:c-1")), None);
        assert_eq!(tenant_of_key(None), None);
    }

    #[test]
    fn dead_letter_keeps_payload_and_says_where_it_came_from() {
        let original = vec![
            ("traceparent".to_owned(), Some(b"00-abc".to_vec())),
            ("x-null".to_owned(), None),
        ];
        let input = InputRecord {
            topic: "usage.events",
            partition: 2,
            offset: 41,
            timestamp_ms: Some(1_000),
            key: Some(b"acme:c-1"),
            value: Some(b"{bad"),
            headers: &original,
        };
        let letter = DeadLetter {
            input: &input,
            error_class: "permanent",
            reason: "malformed_json",
            message: "expected value at line 1",
            processor: "usage-validator",
            processor_version: "0.1.0",
            attempts: 1,
            first_failed_at: UNIX_EPOCH,
        };
        let record = letter.to_record(UNIX_EPOCH);
        assert_eq!(record.topic, "usage.events.dlq");
        assert_eq!(record.key.as_deref(), Some(&b"acme:c-1"[..]));
        assert_eq!(record.value.as_deref(), Some(&b"{bad"[..]));
        let get = |name: &str| {
            record
                .headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| String::from_utf8(v.clone().unwrap_or_default()).unwrap())
        };
        assert_eq!(get("traceparent").as_deref(), Some("00-abc"));
        assert_eq!(
            record.headers[1],
            ("x-null".to_owned(), None),
            "null stays null"
        );
        assert_eq!(get(headers::REASON).as_deref(), Some("malformed_json"));
        assert_eq!(get(headers::TENANT).as_deref(), Some("acme"));
        assert_eq!(get(headers::ORIGIN_PARTITION).as_deref(), Some("2"));
        assert_eq!(get(headers::ORIGIN_OFFSET).as_deref(), Some("41"));
        assert_eq!(get(headers::ORIGIN_TIMESTAMP).as_deref(), Some("1000"));
        assert_eq!(get(headers::PROCESSOR).as_deref(), Some("usage-validator"));
        assert_eq!(
            get(headers::MESSAGE).as_deref(),
            Some("expected value at line 1")
        );
        assert_eq!(
            get(headers::FIRST_FAILED_AT).as_deref(),
            Some("1970-01-01T00:00:00.000Z")
        );
        assert_eq!(
            get(headers::connect::TOPIC).as_deref(),
            Some("usage.events")
        );
        assert_eq!(get(headers::connect::OFFSET).as_deref(), Some("41"));
        assert_eq!(
            get(headers::connect::EXCEPTION_CLASS_NAME).as_deref(),
            Some("backbone.permanent.malformed_json")
        );
    }

    #[test]
    fn a_tombstone_without_a_key_is_dead_lettered_as_one() {
        let input = InputRecord {
            topic: "usage.events",
            partition: 0,
            offset: 7,
            timestamp_ms: None,
            key: None,
            value: None,
            headers: &[],
        };
        let letter = DeadLetter {
            input: &input,
            error_class: "permanent",
            reason: "missing_value",
            message: "record has no value",
            processor: "usage-validator",
            processor_version: "0.1.0",
            attempts: 1,
            first_failed_at: UNIX_EPOCH,
        };
        let record = letter.to_record(UNIX_EPOCH);
        assert_eq!(record.key, None);
        assert_eq!(record.value, None);
        assert!(record
            .headers
            .iter()
            .any(|(name, value)| name == headers::REASON
                && value.as_deref() == Some(&b"missing_value"[..])));
    }

    #[test]
    fn dead_letter_topics_take_their_largest_letter_and_a_batch_around_it() {
        let spec = dlq_topic_spec("usage.events.dlq".into(), 3, 2_000_000);
        assert_eq!(spec.partitions, 3);
        assert_eq!(
            spec.config,
            vec![("max.message.bytes".to_owned(), "2001024".to_owned())]
        );
    }
}
