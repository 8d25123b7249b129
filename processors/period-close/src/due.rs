//! When each open period of a partition ends, so that the close check finds the periods due.

use std::collections::BTreeMap;

use backbone_core::{ProcessError, State};

/// The store.
pub(crate) const STORE: &str = "due";
/// The key under which the store held all of a partition's due times in one map, as it did
/// before each period had a key of its own: read once more and spread out.
const MAP_KEY: &[u8] = b"due";

/// When each open period of a partition ends (µs, the start of its end day in the legal
/// entity's time zone), by period key; it closes `grace` later, by the grace configured then.
/// One entry per period (store `due`), so that opening a period writes its own key only.
#[derive(Debug, Default)]
pub(crate) struct Due(pub(crate) BTreeMap<String, i64>);

impl Due {
    pub(crate) fn read(state: &mut State<'_>) -> Result<Self, ProcessError> {
        let unreadable = |key: &[u8], e: serde_json::Error| ProcessError::Fatal {
            kind: "state",
            detail: format!(
                "store `{STORE}` holds an unreadable entry `{}`: {e}",
                String::from_utf8_lossy(key)
            ),
        };
        let mut due = BTreeMap::new();
        let mut spread = None;
        for (key, value) in state.entries_with_prefix(STORE, b"")? {
            if key == MAP_KEY {
                let map: BTreeMap<String, i64> =
                    serde_json::from_slice(&value).map_err(|e| unreadable(&key, e))?;
                spread = Some(map);
            } else {
                let end: i64 = serde_json::from_slice(&value).map_err(|e| unreadable(&key, e))?;
                due.insert(String::from_utf8_lossy(&key).into_owned(), end);
            }
        }
        if let Some(map) = spread {
            for (key, end) in map {
                state.put_json(STORE, key.as_bytes(), &end)?;
                due.insert(key, end);
            }
            state.delete(STORE, MAP_KEY)?;
        }
        Ok(Self(due))
    }

    pub(crate) fn insert(
        state: &mut State<'_>,
        period: &str,
        end: i64,
    ) -> Result<(), ProcessError> {
        state.put_json(STORE, period.as_bytes(), &end)
    }

    pub(crate) fn remove(state: &mut State<'_>, period: &str) -> Result<(), ProcessError> {
        state.delete(STORE, period.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backbone_state::{PartitionState, StagedWrites, StateView};

    #[test]
    fn due_times_kept_in_one_map_are_spread_out_one_key_per_period() {
        let dir = std::env::temp_dir().join(format!("period-close-due-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (partition, _) = PartitionState::open(&dir, &[STORE]).expect("state");
        let legacy: BTreeMap<String, i64> = [("acme:s-1:2026-10-01".to_owned(), 7)].into();
        let mut staged = StagedWrites::new();
        {
            let mut state = State::new(StateView::new(&partition, &mut staged), None);
            state.put_json(STORE, MAP_KEY, &legacy).expect("legacy map");
            Due::insert(&mut state, "acme:s-2:2026-11-01", 9).expect("own key");
        }
        staged.apply(&partition).expect("apply");
        let mut staged = StagedWrites::new();
        {
            let mut state = State::new(StateView::new(&partition, &mut staged), None);
            let due = Due::read(&mut state).expect("read");
            assert_eq!(
                due.0,
                BTreeMap::from([
                    ("acme:s-1:2026-10-01".to_owned(), 7),
                    ("acme:s-2:2026-11-01".to_owned(), 9)
                ])
            );
        }
        staged.apply(&partition).expect("apply");
        let mut staged = StagedWrites::new();
        let state = State::new(StateView::new(&partition, &mut staged), None);
        let keys: Vec<String> = state
            .entries_with_prefix(STORE, b"")
            .expect("entries")
            .into_iter()
            .map(|(key, _)| String::from_utf8(key).expect("text"))
            .collect();
        assert_eq!(keys, ["acme:s-1:2026-10-01", "acme:s-2:2026-11-01"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
