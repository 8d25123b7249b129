//! Every way a replay command can fail, each message naming the input at fault.

use rdkafka::error::KafkaError;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A flag's value does not parse, or contradicts another flag.
    #[error("malformed filter {flag} \"{value}\": expected {expected}")]
    MalformedFilter {
        /// The flag, like `--since`.
        flag: &'static str,
        /// The value given.
        value: String,
        /// What would have been accepted.
        expected: String,
    },
    /// Another flag's value is unusable.
    #[error("invalid {flag} \"{value}\": expected {expected}")]
    InvalidFlag {
        /// The flag, like `--bootstrap-servers`.
        flag: &'static str,
        /// The value given.
        value: String,
        /// What would have been accepted.
        expected: String,
    },
    /// A topic the command needs does not exist.
    #[error("{role} topic `{topic}` does not exist on {servers}")]
    UnknownTopic {
        /// What the topic is to the command: `source`, `destination`, ...
        role: &'static str,
        /// The topic.
        topic: String,
        /// The bootstrap servers asked.
        servers: String,
    },
    /// The broker did not answer.
    #[error("broker at {servers} did not answer within {timeout}: {message}")]
    BrokerUnreachable {
        /// The bootstrap servers tried.
        servers: String,
        /// How long we waited, for humans.
        timeout: String,
        /// The client's last error.
        message: String,
    },
    /// The schema registry did not answer.
    #[error("schema registry at {url} did not answer within {timeout}: {message}")]
    RegistryUnreachable {
        /// The registry URL.
        url: String,
        /// How long we waited, for humans.
        timeout: String,
        /// The client's error.
        message: String,
    },
    /// The schema registry answered with an error.
    #[error("schema registry at {url}: {message}")]
    Registry {
        /// The registry URL.
        url: String,
        /// What it said.
        message: String,
    },
    /// A time range selects no record at all.
    #[error("no records of `{topic}` between {since} and {until} ({basis})")]
    EmptyTimeRange {
        /// The topic read.
        topic: String,
        /// Start of the range, or `the beginning`.
        since: String,
        /// End of the range, or `now`.
        until: String,
        /// Which time was compared.
        basis: &'static str,
    },
    /// The filters select no record.
    #[error("no records of `{topic}` match {filters}")]
    NothingMatched {
        /// The topic read.
        topic: String,
        /// The filters, as given.
        filters: String,
    },
    /// A replay without `--to` found no record saying where it came from.
    #[error(
        "none of the {count} selected records of `{topic}` has a backbone.origin.topic header, so none can go back where it came from; is it a dead-letter topic? To send them elsewhere, name a destination with --to"
    )]
    NotDeadLetters {
        /// The topic read.
        topic: String,
        /// How many records were selected.
        count: u64,
    },
    /// `dlq show` was pointed at an offset that holds no record.
    #[error("no record of `{topic}` at partition {partition} offsets {offsets} (the partition holds {low}..{high})")]
    NoSuchRecord {
        /// The topic read.
        topic: String,
        /// The partition asked for.
        partition: i32,
        /// The offsets asked for.
        offsets: String,
        /// The partition's first offset.
        low: i64,
        /// The partition's end offset (exclusive).
        high: i64,
    },
    /// The consumer group has members, so moving its offsets would race them.
    #[error(
        "consumer group `{group}` has {count} active member(s) ({members}); stop them first, or pass --force"
    )]
    GroupActive {
        /// The group.
        group: String,
        /// How many members.
        count: usize,
        /// Client ids and hosts.
        members: String,
    },
    /// A replay id was reused with different arguments.
    #[error(
        "replay `{id}` was started as {stored}; resume it with the same source, destination and filters, or start a new replay without --replay-id"
    )]
    ReplayMismatch {
        /// The replay id.
        id: String,
        /// The arguments it was started with.
        stored: String,
    },
    /// A record could not be republished.
    #[error("republishing {record}: {source}")]
    Delivery {
        /// Which record, from where to where.
        record: String,
        /// The client's error.
        source: KafkaError,
    },
    /// Any other Kafka failure, with what was being done.
    #[error("{context}: {source}")]
    Kafka {
        /// What the tool was doing.
        context: String,
        /// The client's error.
        source: KafkaError,
    },
    /// A stored checkpoint or audit record does not parse.
    #[error("{what}: {message}")]
    Corrupt {
        /// Which record.
        what: String,
        /// Why.
        message: String,
    },
    /// The operator stopped a replay; what was sent is checkpointed.
    #[error(
        "replay `{replay_id}` was interrupted; resume it with `replay run --replay-id {replay_id}`"
    )]
    Interrupted {
        /// The replay id.
        replay_id: String,
    },
    /// `replay trace` found no record of what it was given.
    #[error("never seen: no record of {what} of tenant `{tenant}` from {since} to {until}; an older one needs an earlier --since")]
    NeverSeen {
        /// What was traced, like ``event `e-1` ``.
        what: String,
        /// The tenant.
        tenant: String,
        /// Where the search began, RFC 3339.
        since: String,
        /// Where it ended.
        until: String,
    },
    /// A decision names an order revision that does not wait for one.
    #[error("order `{order}` revision {revision} is not waiting for approval; {}", match waiting {
        Some(w) => format!("the revision waiting for approval is {w}"),
        None => "no revision of it is (see `replay orders pending`)".to_owned(),
    })]
    NotWaiting {
        /// `<tenant>:<order id>`.
        order: String,
        /// The revision named.
        revision: i32,
        /// The revision of the order that waits, if one does.
        waiting: Option<i32>,
    },
    /// Anything else, with what was being done.
    #[error("{what}: {message}")]
    Other {
        /// What the tool was doing.
        what: String,
        /// What went wrong.
        message: String,
    },
    /// Writing output failed (a closed pipe, a full disk).
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
}

impl ReplayError {
    /// The process exit code: 2 for bad input on the command line, 130 for a replay stopped
    /// by Ctrl-C (as a shell reports a SIGINT), 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::MalformedFilter { .. } | Self::InvalidFlag { .. } | Self::NotWaiting { .. } => 2,
            Self::Interrupted { .. } => 130,
            Self::NeverSeen { .. } => 3,
            _ => 1,
        }
    }

    /// A malformed-filter error.
    pub fn malformed(flag: &'static str, value: &str, expected: impl Into<String>) -> Self {
        Self::MalformedFilter {
            flag,
            value: value.to_owned(),
            expected: expected.into(),
        }
    }

    /// An invalid-flag error.
    pub fn invalid(flag: &'static str, value: &str, expected: impl Into<String>) -> Self {
        Self::InvalidFlag {
            flag,
            value: value.to_owned(),
            expected: expected.into(),
        }
    }

    /// A Kafka failure while doing `context`.
    pub fn kafka(context: impl Into<String>, source: KafkaError) -> Self {
        Self::Kafka {
            context: context.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_input_without_a_trailing_period() {
        let err = ReplayError::malformed("--since", "yesterday", "an RFC 3339 time");
        assert_eq!(
            err.to_string(),
            "malformed filter --since \"yesterday\": expected an RFC 3339 time"
        );
        assert_eq!(err.exit_code(), 2);
        let err = ReplayError::UnknownTopic {
            role: "source",
            topic: "nope.dlq".into(),
            servers: "127.0.0.1:9092".into(),
        };
        assert_eq!(
            err.to_string(),
            "source topic `nope.dlq` does not exist on 127.0.0.1:9092"
        );
        assert_eq!(err.exit_code(), 1);
    }
}
