//! A small stateful processor for runtime tests: it counts events per account.

use backbone_core::app::{App, RegistryAccess};
use backbone_core::config::{ConfigError, Validate};
use backbone_core::{
    IdempotencyKey, InputRecord, OutputRecord, ProcessError, Processor, State, StateSpec,
};
use serde::Deserialize;

/// The store holding each account's running count.
pub const TOTALS: &str = "totals";

/// Counts events per account. Input: key = account, value = event id. Each new event id (by
/// dedup) raises the account's count in the `totals` store and emits `<event id> <count>`
/// keyed by account; a repeated event id emits nothing. A correct runtime therefore gives every
/// account the outputs 1, 2, ..., n exactly once each, and lost or repeated state shows up as
/// a gap or a repeat.
///
/// Without dedup every input counts: a redelivered input then counts again unless the runtime
/// discarded everything its first delivery did, which is what exactly-once tests need to show.
#[derive(Debug, Clone)]
pub struct Tally {
    /// Input topic.
    pub input: String,
    /// Output topic.
    pub output: String,
    /// Whether a repeated event id is dropped.
    pub dedup: bool,
}

/// The `[processor]` section of the `tally` test binary.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TallySettings {
    /// Input topic.
    pub input_topic: String,
    /// Output topic.
    pub output_topic: String,
    /// Whether a repeated event id is dropped (default true).
    #[serde(default = "dedup_by_default")]
    pub dedup: bool,
}

fn dedup_by_default() -> bool {
    true
}

impl Default for TallySettings {
    fn default() -> Self {
        Self {
            input_topic: String::new(),
            output_topic: String::new(),
            dedup: dedup_by_default(),
        }
    }
}

impl Validate for TallySettings {
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("input_topic", &self.input_topic),
            ("output_topic", &self.output_topic),
        ] {
            if value.is_empty() {
                return Err(ConfigError::Invalid {
                    key: format!("processor.{key}"),
                    message: "must be set".to_owned(),
                });
            }
        }
        Ok(())
    }
}

impl App for Tally {
    const NAME: &'static str = "tally-test";
    const ABOUT: &'static str =
        "Counts events per account (a stateful processor for runtime tests)";
    type Settings = TallySettings;

    fn build(settings: TallySettings, _registry: &RegistryAccess) -> Self {
        Self {
            input: settings.input_topic,
            output: settings.output_topic,
            dedup: settings.dedup,
        }
    }
}

impl Processor for Tally {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn input_topics(&self) -> Vec<String> {
        vec![self.input.clone()]
    }

    fn output_topics(&self) -> Vec<String> {
        vec![self.output.clone()]
    }

    fn state(&self) -> StateSpec {
        let spec = StateSpec::stateless().store(TOTALS);
        if self.dedup {
            spec.with_dedup()
        } else {
            spec
        }
    }

    fn process(
        &mut self,
        record: &InputRecord<'_>,
        state: &mut State<'_>,
    ) -> Result<Vec<OutputRecord>, ProcessError> {
        let account = record
            .key
            .ok_or_else(|| ProcessError::permanent("missing_key", "no account key"))?;
        let event_id = std::str::from_utf8(record.value.unwrap_or_default())
            .map_err(|e| ProcessError::permanent("contract_violation", e.to_string()))?;
        let key = IdempotencyKey {
            tenant_id: "test",
            source: "tally",
            event_id,
        };
        if self.dedup && !state.first_seen(&key)? {
            return Ok(Vec::new());
        }
        let count = state
            .get(TOTALS, account)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes)
            + 1;
        state.put(TOTALS, account, &count.to_be_bytes())?;
        Ok(vec![OutputRecord {
            topic: self.output.clone(),
            key: Some(account.to_vec()),
            value: Some(format!("{event_id} {count}").into_bytes()),
            headers: Vec::new(),
        }])
    }
}

/// Checks Tally outputs (key, value) for gaps and repeats: per account the counts must be
/// exactly 1..=n. Returns the number of outputs per account, or what is wrong.
pub fn tally_counts<'a>(
    outputs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<std::collections::BTreeMap<String, u64>, String> {
    let mut seen: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for (key, value) in outputs {
        let account = String::from_utf8_lossy(key).into_owned();
        let value = String::from_utf8_lossy(value);
        let count = value
            .rsplit(' ')
            .next()
            .and_then(|c| c.parse::<u64>().ok())
            .ok_or_else(|| format!("unreadable output `{value}`"))?;
        seen.entry(account).or_default().push(count);
    }
    let mut totals = std::collections::BTreeMap::new();
    for (account, mut counts) in seen {
        counts.sort_unstable();
        if let Some(at) = counts
            .iter()
            .zip(1..)
            .position(|(count, want)| *count != want)
        {
            let around = &counts[at.saturating_sub(2)..(at + 3).min(counts.len())];
            return Err(format!(
                "account {account}: {} counts, count {} is wrong (around it: {around:?})",
                counts.len(),
                at + 1
            ));
        }
        totals.insert(account, counts.len() as u64);
    }
    Ok(totals)
}
