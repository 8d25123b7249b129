//! The marks of the charges booked in each period (store `booked`): one per charge, keyed by
//! its period and its rating id and revision, naming the line it went to. A charge delivered
//! again finds its mark; a period's marks give its invoice lines their rating ids.

use std::collections::BTreeSet;

use backbone_core::{ProcessError, State};
use backbone_schemas::types::BillingCharge;
use serde::{Deserialize, Serialize};

use crate::book::PeriodBook;

/// The store.
pub(crate) const STORE: &str = "booked";

/// A charge booked in a period: the line it went to, and its rating id for the invoice line.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Mark {
    pub(crate) line: usize,
    pub(crate) rating_id: String,
}

/// The keys of a period's marks start with this: its period key and a separator no key holds.
fn marks_of(period: &str) -> Vec<u8> {
    [period.as_bytes(), b"\0"].concat()
}

/// The key of `charge`'s mark in `period`: by rating id and revision, as each revision of a
/// rating is a charge of its own.
pub(crate) fn mark_key(period: &str, charge: &BillingCharge) -> Vec<u8> {
    let mut key = marks_of(period);
    key.extend_from_slice(format!("{}:{}", charge.rating_id, charge.revision).as_bytes());
    key
}

/// The rating ids booked into each of `book`'s lines, read from its marks.
pub(crate) fn rating_ids(
    state: &State<'_>,
    period: &str,
    book: &PeriodBook,
) -> Result<Vec<BTreeSet<String>>, ProcessError> {
    let mut lines = vec![BTreeSet::new(); book.lines.len()];
    for (_, value) in state.entries_with_prefix(STORE, &marks_of(period))? {
        let mark: Mark = serde_json::from_slice(&value).map_err(|e| ProcessError::Fatal {
            kind: "state",
            detail: format!("store `{STORE}` holds an unreadable mark of `{period}`: {e}"),
        })?;
        if let Some(ids) = lines.get_mut(mark.line) {
            ids.insert(mark.rating_id);
        }
    }
    Ok(lines)
}
