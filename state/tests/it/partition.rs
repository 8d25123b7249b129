//! Staging, applying, restoring, checkpoints and clean/unclean stops.

use std::collections::BTreeMap;
use std::path::Path;

use backbone_state::{
    changelog_topic, partition_dir, FullRestoreCause, PartitionState, Restore, StagedValue,
    StagedWrites, StateError, StateView,
};

use crate::temp::TempDir;

const STORES: &[&str] = &["totals", "dedup"];

/// Store, key and value (`None` for a tombstone) of a changelog record.
type ChangelogEntry<'a> = (&'a str, &'a [u8], Option<&'a [u8]>);

fn open(dir: &Path) -> (PartitionState, Restore) {
    PartitionState::open(dir, STORES).expect("opening partition state")
}

fn offsets(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
    pairs.iter().map(|&(s, o)| (s.to_owned(), o)).collect()
}

#[test]
fn fresh_directory_needs_a_full_restore() {
    let tmp = TempDir::new("fresh");
    let (_state, restore) = open(tmp.path());
    assert_eq!(restore, Restore::Full(FullRestoreCause::NoLocalState));
}

#[test]
fn staged_writes_are_invisible_to_get_until_applied_and_visible_through_the_view() {
    let tmp = TempDir::new("staged");
    let (state, _) = open(tmp.path());
    let mut staged = StagedWrites::new();
    {
        let mut view = StateView::new(&state, &mut staged);
        view.put("totals", b"a", b"1").unwrap();
        view.put("totals", b"b", b"2").unwrap();
        assert_eq!(
            view.get("totals", b"a").unwrap().as_deref(),
            Some(&b"1"[..])
        );
        // The same key in another store is another key.
        assert_eq!(view.get("dedup", b"a").unwrap(), None);
    }
    assert_eq!(state.get("totals", b"a").unwrap(), None);
    assert_eq!(staged.staged("totals", b"a"), Some(StagedValue::Put(b"1")));

    staged.apply(&state).unwrap();
    assert!(staged.is_empty());
    assert_eq!(state.get("totals", b"a").unwrap(), Some(b"1".to_vec()));

    // A staged delete hides the committed value from the view, not from `get`.
    let mut view = StateView::new(&state, &mut staged);
    view.delete("totals", b"a").unwrap();
    assert_eq!(view.get("totals", b"a").unwrap(), None);
    assert_eq!(
        view.get("totals", b"b").unwrap().as_deref(),
        Some(&b"2"[..])
    );
    assert_eq!(state.get("totals", b"a").unwrap(), Some(b"1".to_vec()));
    staged.apply(&state).unwrap();
    assert_eq!(state.get("totals", b"a").unwrap(), None);
}

#[test]
fn a_prefix_read_through_the_view_lays_the_batch_over_the_committed_entries() {
    let tmp = TempDir::new("prefix");
    let (state, _) = open(tmp.path());
    let mut staged = StagedWrites::new();
    {
        let mut view = StateView::new(&state, &mut staged);
        for (key, value) in [("p/1", "a"), ("p/2", "b"), ("p/3", "c"), ("q/1", "x")] {
            view.put("totals", key.as_bytes(), value.as_bytes())
                .unwrap();
        }
    }
    staged.apply(&state).unwrap();
    let mut view = StateView::new(&state, &mut staged);
    view.delete("totals", b"p/2").unwrap();
    view.put("totals", b"p/3", b"C").unwrap();
    view.put("totals", b"p/0", b"new").unwrap();
    view.put("dedup", b"p/9", b"other store").unwrap();
    let entries = view.entries_with_prefix("totals", b"p/").unwrap();
    let text: Vec<(&str, &str)> = entries
        .iter()
        .map(|(k, v)| {
            (
                std::str::from_utf8(k).unwrap(),
                std::str::from_utf8(v).unwrap(),
            )
        })
        .collect();
    assert_eq!(text, [("p/0", "new"), ("p/1", "a"), ("p/3", "C")]);
}

#[test]
fn changelog_records_coalesce_per_key_in_first_staged_order() {
    let mut staged = StagedWrites::new();
    staged.put("totals", b"x", b"1");
    staged.put("dedup", b"x", b"9");
    staged.put("totals", b"y", b"2");
    staged.put("totals", b"x", b"3");
    staged.delete("totals", b"y");
    let records: Vec<_> = staged
        .changelog_records()
        .map(|r| (r.store, r.key, r.value))
        .collect();
    assert_eq!(
        records,
        vec![
            ("totals", &b"x"[..], Some(&b"3"[..])),
            ("dedup", &b"x"[..], Some(&b"9"[..])),
            ("totals", &b"y"[..], None),
        ]
    );
    staged.clear();
    assert_eq!(staged.changelog_records().len(), 0);
}

#[test]
fn restore_applies_puts_overwrites_and_tombstones_in_order() {
    let tmp = TempDir::new("restore");
    let (state, _) = open(tmp.path());
    let changelog: &[ChangelogEntry] = &[
        ("totals", b"a", Some(b"1")),
        ("totals", b"b", Some(b"2")),
        ("totals", b"a", Some(b"3")),
        ("totals", b"b", None),
        ("dedup", b"e1", Some(b"t")),
        ("totals", b"c", None),
        ("totals", b"c", Some(b"4")),
        ("dedup", b"e1", None),
        ("dedup", b"e2", Some(b"u")),
    ];
    for &(store, key, value) in changelog {
        state.restore(store, key, value).unwrap();
    }
    assert_eq!(state.get("totals", b"a").unwrap(), Some(b"3".to_vec()));
    assert_eq!(state.get("totals", b"b").unwrap(), None);
    assert_eq!(state.get("totals", b"c").unwrap(), Some(b"4".to_vec()));
    assert_eq!(state.get("dedup", b"e1").unwrap(), None);
    assert_eq!(state.get("dedup", b"e2").unwrap(), Some(b"u".to_vec()));
}

#[test]
fn drop_without_close_discards_the_state_on_reopen() {
    let tmp = TempDir::new("unclean");
    let (mut state, _) = open(tmp.path());
    let mut staged = StagedWrites::new();
    staged.put("totals", b"a", b"1");
    staged.apply(&state).unwrap();
    state.write_checkpoint(&offsets(&[("totals", 1)])).unwrap();
    drop(state);

    let (state, restore) = open(tmp.path());
    assert_eq!(restore, Restore::Full(FullRestoreCause::UncleanStop));
    assert_eq!(state.get("totals", b"a").unwrap(), None);
    assert!(state.checkpoint().offsets().is_empty());
}

#[test]
fn clean_close_keeps_the_state_and_reports_the_checkpoint() {
    let tmp = TempDir::new("clean");
    let (mut state, _) = open(tmp.path());
    let mut staged = StagedWrites::new();
    staged.put("totals", b"a", b"1");
    staged.put("dedup", b"k", b"v");
    staged.apply(&state).unwrap();
    state
        .write_checkpoint(&offsets(&[("totals", 7), ("dedup", 3)]))
        .unwrap();
    state.close().unwrap();

    let (state, restore) = open(tmp.path());
    let Restore::From(checkpoint) = restore else {
        panic!("expected a restore from the checkpoint, got {restore:?}");
    };
    assert_eq!(checkpoint.next_offset("totals"), Some(7));
    assert_eq!(checkpoint.next_offset("dedup"), Some(3));
    assert_eq!(state.get("totals", b"a").unwrap(), Some(b"1".to_vec()));
    assert_eq!(state.get("dedup", b"k").unwrap(), Some(b"v".to_vec()));

    // Open removed the marker: a crash now is detected.
    drop(state);
    let (state, restore) = open(tmp.path());
    assert_eq!(restore, Restore::Full(FullRestoreCause::UncleanStop));
    assert_eq!(state.get("totals", b"a").unwrap(), None);
}

#[test]
fn close_without_a_checkpoint_restores_every_store_from_the_beginning() {
    let tmp = TempDir::new("no-checkpoint");
    let (state, _) = open(tmp.path());
    state.restore("totals", b"a", Some(b"1")).unwrap();
    state.close().unwrap();
    let (state, restore) = open(tmp.path());
    let Restore::From(checkpoint) = restore else {
        panic!("expected a restore from the checkpoint, got {restore:?}");
    };
    assert_eq!(checkpoint.next_offset("totals"), None);
    assert_eq!(state.get("totals", b"a").unwrap(), Some(b"1".to_vec()));
}

#[test]
fn an_unreadable_checkpoint_discards_the_state() {
    let tmp = TempDir::new("bad-checkpoint");
    let (mut state, _) = open(tmp.path());
    state.restore("totals", b"a", Some(b"1")).unwrap();
    state.write_checkpoint(&offsets(&[("totals", 1)])).unwrap();
    state.close().unwrap();
    std::fs::write(tmp.path().join("CHECKPOINT"), "totals one\n").unwrap();

    let (state, restore) = open(tmp.path());
    assert_eq!(restore, Restore::Full(FullRestoreCause::BadCheckpoint));
    assert_eq!(state.get("totals", b"a").unwrap(), None);
}

#[test]
fn stores_added_start_empty_and_stores_removed_are_dropped() {
    let tmp = TempDir::new("stores-change");
    let (mut state, _) = open(tmp.path());
    state.restore("totals", b"a", Some(b"1")).unwrap();
    state.restore("dedup", b"k", Some(b"v")).unwrap();
    state
        .write_checkpoint(&offsets(&[("totals", 1), ("dedup", 1)]))
        .unwrap();
    state.close().unwrap();

    let (state, restore) =
        PartitionState::open(tmp.path(), &["totals", "ledger"]).expect("reopening");
    let Restore::From(checkpoint) = restore else {
        panic!("expected a restore from the checkpoint, got {restore:?}");
    };
    assert_eq!(checkpoint.next_offset("ledger"), None);
    assert_eq!(state.get("totals", b"a").unwrap(), Some(b"1".to_vec()));
    assert_eq!(state.get("ledger", b"a").unwrap(), None);
    assert!(matches!(
        state.get("dedup", b"k"),
        Err(StateError::UnknownStore { .. })
    ));
    state.close().unwrap();

    // The dropped store's data is gone for good, not just hidden.
    let (state, _) = open(tmp.path());
    assert_eq!(state.get("dedup", b"k").unwrap(), None);
}

#[test]
fn a_second_open_of_the_same_state_is_refused_and_wipes_nothing() {
    let tmp = TempDir::new("locked");
    let (state, _) = open(tmp.path());
    state.restore("totals", b"a", Some(b"1")).unwrap();
    let second = PartitionState::open(tmp.path(), STORES);
    assert!(
        matches!(second, Err(StateError::Locked { .. })),
        "got {second:?}"
    );
    assert_eq!(state.get("totals", b"a").unwrap(), Some(b"1".to_vec()));
}

#[test]
fn unknown_stores_and_bad_names_are_errors() {
    let tmp = TempDir::new("names");
    let (mut state, _) = open(tmp.path());
    assert!(matches!(
        state.get("nope", b"a"),
        Err(StateError::UnknownStore { .. })
    ));
    let mut staged = StagedWrites::new();
    staged.put("nope", b"a", b"1");
    staged.put("totals", b"a", b"1");
    assert!(matches!(
        staged.apply(&state),
        Err(StateError::UnknownStore { .. })
    ));
    // Nothing of a refused batch is applied.
    assert_eq!(state.get("totals", b"a").unwrap(), None);
    assert!(matches!(
        StateView::new(&state, &mut StagedWrites::new()).put("nope", b"a", b"1"),
        Err(StateError::UnknownStore { .. })
    ));
    assert!(matches!(
        state.write_checkpoint(&offsets(&[("nope", 1)])),
        Err(StateError::UnknownStore { .. })
    ));
    assert!(matches!(
        state.write_checkpoint(&offsets(&[("totals", -1)])),
        Err(StateError::NegativeOffset { .. })
    ));

    let other = TempDir::new("bad-names");
    for stores in [&["a.b"][..], &["default"], &[""], &["x", "x"], &["a b"]] {
        assert!(
            matches!(
                PartitionState::open(other.path(), stores),
                Err(StateError::InvalidStoreName { .. })
            ),
            "{stores:?}"
        );
    }
}

#[test]
fn partition_dirs_and_changelog_topics_follow_the_naming_rules() {
    let root = Path::new("/var/lib/backbone");
    assert_eq!(
        partition_dir(root, "usage-rater", 3).unwrap(),
        root.join("usage-rater").join("partition-3")
    );
    for processor in ["..", "a/b", "", "."] {
        assert!(
            matches!(
                partition_dir(root, processor, 0),
                Err(StateError::InvalidPathComponent { .. })
            ),
            "{processor:?}"
        );
    }
    assert!(partition_dir(root, "p", -1).is_err());
    assert_eq!(changelog_topic("usage-rater"), "usage-rater.changelog");
}
