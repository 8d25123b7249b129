//! The Confluent compatibility modes and their spellings.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A Confluent Schema Registry compatibility mode.
///
/// "Backward" means the candidate schema (reader) can read data written with an existing schema
/// (writer); "forward" means an existing schema (reader) can read data written with the
/// candidate (writer). The plain modes compare against the latest existing version only; the
/// `*Transitive` modes compare against every existing version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CompatibilityMode {
    /// No check: every candidate is accepted.
    None,
    /// The candidate can read data written with the latest existing version.
    #[default]
    Backward,
    /// The candidate can read data written with every existing version.
    BackwardTransitive,
    /// The latest existing version can read data written with the candidate.
    Forward,
    /// Every existing version can read data written with the candidate.
    ForwardTransitive,
    /// Both `Backward` and `Forward` against the latest existing version.
    Full,
    /// Both `Backward` and `Forward` against every existing version.
    FullTransitive,
}

impl CompatibilityMode {
    /// Every mode, in the order the registry documents them.
    pub const ALL: [CompatibilityMode; 7] = [
        CompatibilityMode::None,
        CompatibilityMode::Backward,
        CompatibilityMode::BackwardTransitive,
        CompatibilityMode::Forward,
        CompatibilityMode::ForwardTransitive,
        CompatibilityMode::Full,
        CompatibilityMode::FullTransitive,
    ];

    /// The Confluent spelling, e.g. `BACKWARD_TRANSITIVE`.
    pub fn as_str(self) -> &'static str {
        match self {
            CompatibilityMode::None => "NONE",
            CompatibilityMode::Backward => "BACKWARD",
            CompatibilityMode::BackwardTransitive => "BACKWARD_TRANSITIVE",
            CompatibilityMode::Forward => "FORWARD",
            CompatibilityMode::ForwardTransitive => "FORWARD_TRANSITIVE",
            CompatibilityMode::Full => "FULL",
            CompatibilityMode::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    /// Whether the candidate must be able to read existing data.
    pub fn checks_backward(self) -> bool {
        matches!(
            self,
            CompatibilityMode::Backward
                | CompatibilityMode::BackwardTransitive
                | CompatibilityMode::Full
                | CompatibilityMode::FullTransitive
        )
    }

    /// Whether existing readers must be able to read the candidate's data.
    pub fn checks_forward(self) -> bool {
        matches!(
            self,
            CompatibilityMode::Forward
                | CompatibilityMode::ForwardTransitive
                | CompatibilityMode::Full
                | CompatibilityMode::FullTransitive
        )
    }

    /// Whether the check covers every existing version rather than only the latest.
    pub fn is_transitive(self) -> bool {
        matches!(
            self,
            CompatibilityMode::BackwardTransitive
                | CompatibilityMode::ForwardTransitive
                | CompatibilityMode::FullTransitive
        )
    }
}

impl fmt::Display for CompatibilityMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not one of the Confluent compatibility mode spellings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown compatibility mode `{value}`: expected one of NONE, BACKWARD, BACKWARD_TRANSITIVE, \
     FORWARD, FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE"
)]
pub struct ParseModeError {
    /// The rejected input.
    pub value: String,
}

impl FromStr for CompatibilityMode {
    type Err = ParseModeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CompatibilityMode::ALL
            .into_iter()
            .find(|mode| mode.as_str() == s)
            .ok_or_else(|| ParseModeError {
                value: s.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays_every_confluent_spelling() {
        for mode in CompatibilityMode::ALL {
            assert_eq!(mode.as_str().parse::<CompatibilityMode>(), Ok(mode));
            assert_eq!(mode.to_string(), mode.as_str());
            let json = serde_json::to_string(&mode).expect("serialize");
            assert_eq!(json, format!("\"{}\"", mode.as_str()));
            assert_eq!(
                serde_json::from_str::<CompatibilityMode>(&json).expect("deserialize"),
                mode
            );
        }
        assert_eq!(CompatibilityMode::default(), CompatibilityMode::Backward);
    }

    #[test]
    fn rejects_other_spellings_naming_the_value() {
        for bad in [
            "backward",
            "Full",
            "FULLY",
            "BACKWARD-TRANSITIVE",
            " NONE",
            "",
        ] {
            let error = bad
                .parse::<CompatibilityMode>()
                .expect_err("not a Confluent spelling");
            assert_eq!(error.value, bad);
            let message = error.to_string();
            assert!(message.contains(&format!("`{bad}`")), "{message}");
            assert!(message.contains("BACKWARD_TRANSITIVE"), "{message}");
            assert!(message.contains("FULL_TRANSITIVE"), "{message}");
        }
        assert!(serde_json::from_str::<CompatibilityMode>("\"backward\"").is_err());
    }
}
