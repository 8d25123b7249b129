//! Random staged puts and deletes against a `BTreeMap` model, and changelog replay against both.

use std::collections::BTreeMap;

use backbone_state::{PartitionState, StagedWrites, StateView};
use proptest::prelude::*;

use crate::temp::TempDir;

const STORES: [&str; 2] = ["s0", "s1"];
/// Keys are up to 2 bytes from {0, 1, 2}, the empty key included: few enough to check them all, and
/// to hit the same key often.
const KEY_BYTES: u8 = 3;
const MAX_KEY_LEN: usize = 2;

#[derive(Debug, Clone)]
enum Op {
    Put(usize, Vec<u8>, Vec<u8>),
    Delete(usize, Vec<u8>),
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(0..KEY_BYTES, 0..=MAX_KEY_LEN)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        // Empty values too: a put of nothing is not a delete.
        3 => (0..STORES.len(), key(), prop::collection::vec(any::<u8>(), 0..4))
            .prop_map(|(s, k, v)| Op::Put(s, k, v)),
        1 => (0..STORES.len(), key()).prop_map(|(s, k)| Op::Delete(s, k)),
    ]
}

fn all_keys() -> Vec<Vec<u8>> {
    let mut keys = vec![Vec::new()];
    let mut frontier = vec![Vec::new()];
    for _ in 0..MAX_KEY_LEN {
        frontier = frontier
            .iter()
            .flat_map(|prefix: &Vec<u8>| {
                (0..KEY_BYTES).map(move |b| {
                    let mut k = prefix.clone();
                    k.push(b);
                    k
                })
            })
            .collect();
        keys.extend(frontier.iter().cloned());
    }
    keys
}

type Model = BTreeMap<(usize, Vec<u8>), Vec<u8>>;

fn assert_state_equals(state: &PartitionState, model: &Model) -> Result<(), TestCaseError> {
    for (s, store) in STORES.iter().enumerate() {
        for key in all_keys() {
            let got = state.get(store, &key).expect("reading committed state");
            prop_assert_eq!(
                got.as_ref(),
                model.get(&(s, key.clone())),
                "{} {:?}",
                store,
                key
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn applied_state_and_replayed_changelog_equal_the_model(
        batches in prop::collection::vec(prop::collection::vec(op(), 0..24), 1..5)
    ) {
        let tmp = TempDir::new("model");
        let (state, _) = PartitionState::open(tmp.path().join("applied"), &STORES)
            .expect("opening partition state");
        let mut model = Model::new();
        let mut changelog: Vec<(String, Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        let mut staged = StagedWrites::new();

        for batch in batches {
            let mut next = model.clone();
            let mut view = StateView::new(&state, &mut staged);
            for op in batch {
                let (s, key) = match op {
                    Op::Put(s, key, value) => {
                        view.put(STORES[s], &key, &value).expect("staging a put");
                        next.insert((s, key.clone()), value);
                        (s, key)
                    }
                    Op::Delete(s, key) => {
                        view.delete(STORES[s], &key).expect("staging a delete");
                        next.remove(&(s, key.clone()));
                        (s, key)
                    }
                };
                let seen = view.get(STORES[s], &key).expect("reading through the view");
                prop_assert_eq!(seen.as_deref(), next.get(&(s, key)).map(Vec::as_slice));
            }
            // Uncommitted writes are not visible to committed reads.
            assert_state_equals(&state, &model)?;
            changelog.extend(staged.changelog_records().map(|r| {
                (r.store.to_owned(), r.key.to_vec(), r.value.map(<[u8]>::to_vec))
            }));
            staged.apply(&state).expect("applying staged writes");
            model = next;
            assert_state_equals(&state, &model)?;
        }

        let (replayed, _) = PartitionState::open(tmp.path().join("replayed"), &STORES)
            .expect("opening partition state");
        for (store, key, value) in &changelog {
            replayed.restore(store, key, value.as_deref()).expect("restoring a record");
        }
        assert_state_equals(&replayed, &model)?;
    }
}
