//! What the orchestrator keeps in partition state, by order key (`<tenant>:<order_id>`).

use std::collections::BTreeMap;

use backbone_core::{ProcessError, State};
use backbone_schemas::types::{Contract, SalesOrder};
use backbone_schemas::wire::{decode_body, encode_body};
use serde::{Deserialize, Serialize};

use crate::workflow::{Timeouts, Workflow};

/// Order key → its workflow.
pub(crate) const WORKFLOWS: &str = "workflows";
/// Order key → the order revision its workflow acts for (Avro, the contract's schema, so it
/// reads back without the registry).
pub(crate) const ORDERS: &str = "orders";
/// Order key → the revision waiting for the running step to finish.
pub(crate) const PENDING: &str = "pending";
/// One key, [`DUE_KEY`]: every order waiting for a step's result or a decision, and until
/// when, so that a wake finds what is past its timeout without reading every workflow.
pub(crate) const DUE: &str = "due";
const DUE_KEY: &[u8] = b"due";

/// When an order's wait ends, and since when it waits for approval, if it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Deadline {
    at_ms: i64,
    approval_since_ms: Option<i64>,
}

/// The index of orders waiting, as kept in [`DUE`].
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Due(BTreeMap<String, Deadline>);

impl Due {
    pub(crate) fn read(state: &State<'_>) -> Result<Due, ProcessError> {
        Ok(state.get_json(DUE, DUE_KEY)?.unwrap_or_default())
    }

    /// Keeps `key`'s entry in step with its `workflow`.
    pub(crate) fn set(
        state: &mut State<'_>,
        key: &str,
        workflow: &Workflow,
        timeouts: Timeouts,
    ) -> Result<(), ProcessError> {
        let mut due = Due::read(state)?;
        let deadline = workflow.due_ms(timeouts).map(|at_ms| Deadline {
            at_ms,
            approval_since_ms: workflow.awaiting_approval_since(),
        });
        if due.0.get(key) == deadline.as_ref() {
            return Ok(());
        }
        match deadline {
            Some(deadline) => due.0.insert(key.to_owned(), deadline),
            None => due.0.remove(key),
        };
        state.put_json(DUE, DUE_KEY, &due)
    }

    /// Orders waiting.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Since when each order waiting for approval waits.
    pub(crate) fn approvals_waiting(&self) -> Vec<i64> {
        self.0
            .values()
            .filter_map(|d| d.approval_since_ms)
            .collect()
    }

    /// The orders whose wait ended by `now_ms`.
    pub(crate) fn passed(&self, now_ms: i64) -> Vec<String> {
        self.0
            .iter()
            .filter(|(_, d)| d.at_ms <= now_ms)
            .map(|(key, _)| key.clone())
            .collect()
    }
}

pub(crate) fn store_order(
    state: &mut State<'_>,
    store: &str,
    key: &str,
    order: &SalesOrder,
) -> Result<(), ProcessError> {
    let body = order
        .to_avro()
        .and_then(|value| encode_body(SalesOrder::schema(), value))
        .map_err(|e| ProcessError::Fatal {
            kind: "state",
            detail: format!("encoding order `{key}` for store `{store}`: {e}"),
        })?;
    state.put(store, key.as_bytes(), &body)
}

pub(crate) fn stored_order(
    state: &State<'_>,
    store: &str,
    key: &str,
) -> Result<Option<SalesOrder>, ProcessError> {
    let Some(body) = state.get(store, key.as_bytes())? else {
        return Ok(None);
    };
    decode_body(0, SalesOrder::schema(), &body)
        .and_then(|value| SalesOrder::from_avro(&value))
        .map(Some)
        .map_err(|e| ProcessError::Fatal {
            kind: "state",
            detail: format!("store `{store}` holds an unreadable order `{key}`: {e}"),
        })
}
