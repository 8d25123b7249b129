//! The one error type of this crate.

/// Why a charge could not price a quantity, or an aggregate could not be formed. Each names
/// the charge (or meter) and what is wrong, so the rater can dead-letter with that reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RatingError {
    /// The charge lacks a field its model needs.
    #[error("charge `{charge}`: {model} charges need `{field}`")]
    MissingField {
        /// The charge id.
        charge: String,
        /// The charge model.
        model: &'static str,
        /// The missing field.
        field: &'static str,
    },
    /// The charge's tiers are unusable.
    #[error("charge `{charge}`: tiers {reason}")]
    BadTiers {
        /// The charge id.
        charge: String,
        /// What is wrong with them.
        reason: &'static str,
    },
    /// A field holds a value the model cannot use (a zero package size, a negative price).
    #[error("charge `{charge}`: `{field}` {reason}")]
    BadValue {
        /// The charge id.
        charge: String,
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The charge model or aggregation is one this rater does not implement.
    #[error("charge `{charge}`: {what} is not supported")]
    Unsupported {
        /// The charge id.
        charge: String,
        /// The model or aggregation.
        what: String,
    },
    /// An amount or quantity left the range of its decimal type.
    #[error("charge `{charge}`: {what} is out of range")]
    Overflow {
        /// The charge id.
        charge: String,
        /// What overflowed.
        what: &'static str,
    },
}
