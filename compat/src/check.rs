//! Checking a candidate schema against a subject's registered versions under a mode.

use std::fmt;

use apache_avro::Schema;
use serde::Serialize;

use crate::mode::CompatibilityMode;
use crate::resolution::{can_read, Incompatibility};

/// Which way data flows in a failed check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Direction {
    /// The candidate (reader) cannot read data written with the existing schema (writer).
    Backward,
    /// The existing schema (reader) cannot read data written with the candidate (writer).
    Forward,
}

impl Direction {
    /// `BACKWARD` or `FORWARD`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Backward => "BACKWARD",
            Direction::Forward => "FORWARD",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The candidate is incompatible with one existing version in one direction.
///
/// `Display` numbers the version by its 1-based position in `existing`, which is the registry
/// version when none was deleted; use [`CompatibilityError::describe`] to print another number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{}", self.describe(self.existing_index + 1))]
pub struct CompatibilityError {
    /// Index into the `existing` slice given to [`check`] (0 = oldest).
    pub existing_index: usize,
    /// Which of the two schemas failed to read the other's data.
    pub direction: Direction,
    /// Why, as found by [`can_read`]; never empty.
    pub incompatibilities: Vec<Incompatibility>,
}

impl CompatibilityError {
    /// Renders "incompatible with version {version} (BACKWARD): ..." with the caller's version
    /// label and every incompatibility message, separated by `; `.
    pub fn describe(&self, version: impl fmt::Display) -> String {
        let reasons: Vec<String> = self
            .incompatibilities
            .iter()
            .map(|found| format!("{} (at {})", found.message, found.path))
            .collect();
        format!(
            "incompatible with version {version} ({}): {}",
            self.direction,
            reasons.join("; ")
        )
    }
}

/// Checks `candidate` against a subject's registered schemas `existing` (oldest first) under
/// `mode`; an empty result means the candidate may be registered.
///
/// `Backward` modes require the candidate to read the existing data, `Forward` modes require
/// the existing schemas to read the candidate's data, `Full` modes require both. Plain modes
/// compare with the latest existing schema only, transitive modes with every one. `None`, and
/// an empty `existing`, accept any candidate. Failures come ordered by version, backward before
/// forward.
pub fn check(
    mode: CompatibilityMode,
    candidate: &Schema,
    existing: &[Schema],
) -> Vec<CompatibilityError> {
    if mode == CompatibilityMode::None {
        return Vec::new();
    }
    let first = if mode.is_transitive() {
        0
    } else {
        existing.len().saturating_sub(1)
    };
    let mut errors = Vec::new();
    for (existing_index, schema) in existing.iter().enumerate().skip(first) {
        if mode.checks_backward() {
            let incompatibilities = can_read(candidate, schema);
            if !incompatibilities.is_empty() {
                errors.push(CompatibilityError {
                    existing_index,
                    direction: Direction::Backward,
                    incompatibilities,
                });
            }
        }
        if mode.checks_forward() {
            let incompatibilities = can_read(schema, candidate);
            if !incompatibilities.is_empty() {
                errors.push(CompatibilityError {
                    existing_index,
                    direction: Direction::Forward,
                    incompatibilities,
                });
            }
        }
    }
    errors
}
