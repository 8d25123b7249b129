//! First-seen marks, TTL expiry and sweeping.

use std::collections::HashSet;
use std::time::Duration;

use backbone_state::{
    IdempotencyKey, IdempotencyStore, PartitionState, Seen, StagedWrites, StateView, DEFAULT_TTL,
};

use crate::temp::TempDir;

const STORE: &str = "dedup";
const HOUR_MICROS: i64 = 3_600_000_000;

fn key(event_id: &str) -> IdempotencyKey<'_> {
    IdempotencyKey {
        tenant_id: "t1",
        source: "meter",
        event_id,
    }
}

fn open(tmp: &TempDir) -> PartitionState {
    PartitionState::open(tmp.path(), &[STORE])
        .expect("opening partition state")
        .0
}

#[test]
fn default_ttl_is_35_days() {
    assert_eq!(DEFAULT_TTL, Duration::from_secs(35 * 86_400));
}

#[test]
fn new_then_duplicate_within_a_batch_and_after_commit() {
    let tmp = TempDir::new("dedup");
    let state = open(&tmp);
    let dedup = IdempotencyStore::new(STORE, DEFAULT_TTL);
    let mut staged = StagedWrites::new();
    let mut view = StateView::new(&state, &mut staged);
    assert_eq!(
        dedup.check_and_stage(&mut view, &key("e1"), 100).unwrap(),
        Seen::New
    );
    // Twice in one uncommitted batch.
    assert_eq!(
        dedup.check_and_stage(&mut view, &key("e1"), 200).unwrap(),
        Seen::Duplicate {
            first_seen_micros: 100
        }
    );
    staged.apply(&state).unwrap();

    let mut view = StateView::new(&state, &mut staged);
    assert_eq!(
        dedup.check_and_stage(&mut view, &key("e1"), 300).unwrap(),
        Seen::Duplicate {
            first_seen_micros: 100
        }
    );
    assert!(staged.is_empty(), "a duplicate stages nothing");
}

#[test]
fn a_mark_older_than_the_ttl_is_new_again() {
    let tmp = TempDir::new("dedup-ttl");
    let state = open(&tmp);
    let dedup = IdempotencyStore::new(STORE, Duration::from_secs(3600));
    let mut staged = StagedWrites::new();
    let first = 1_000 * HOUR_MICROS;
    let mut view = StateView::new(&state, &mut staged);
    assert_eq!(
        dedup.check_and_stage(&mut view, &key("e1"), first).unwrap(),
        Seen::New
    );
    staged.apply(&state).unwrap();

    let mut view = StateView::new(&state, &mut staged);
    // Exactly the TTL old is still a duplicate; one microsecond more is not.
    assert!(matches!(
        dedup
            .check_and_stage(&mut view, &key("e1"), first + HOUR_MICROS)
            .unwrap(),
        Seen::Duplicate { .. }
    ));
    // A clock behind the first sighting is no reason to forget it.
    assert!(matches!(
        dedup
            .check_and_stage(&mut view, &key("e1"), first - HOUR_MICROS)
            .unwrap(),
        Seen::Duplicate { .. }
    ));
    let later = first + HOUR_MICROS + 1;
    assert_eq!(
        dedup.check_and_stage(&mut view, &key("e1"), later).unwrap(),
        Seen::New
    );
    staged.apply(&state).unwrap();
    assert_eq!(
        state.get(STORE, &key("e1").encode()).unwrap(),
        Some(later.to_be_bytes().to_vec()),
        "the renewed mark starts a new TTL"
    );
}

#[test]
fn sweep_stages_deletes_of_expired_marks_that_reach_the_changelog() {
    let tmp = TempDir::new("dedup-sweep");
    let state = open(&tmp);
    let mut dedup = IdempotencyStore::new(STORE, Duration::from_secs(3600));
    let mut staged = StagedWrites::new();
    let mut view = StateView::new(&state, &mut staged);
    for (i, event) in ["old1", "old2", "fresh"].into_iter().enumerate() {
        let seen_at = if event == "fresh" {
            10 * HOUR_MICROS
        } else {
            i as i64
        };
        assert_eq!(
            dedup
                .check_and_stage(&mut view, &key(event), seen_at)
                .unwrap(),
            Seen::New
        );
    }
    staged.apply(&state).unwrap();

    let now = 10 * HOUR_MICROS + 1;
    let mut view = StateView::new(&state, &mut staged);
    assert_eq!(dedup.sweep_expired(&mut view, now, 100).unwrap(), 2);
    let tombstones: HashSet<Vec<u8>> = staged
        .changelog_records()
        .map(|r| {
            assert_eq!((r.store, r.value), (STORE, None));
            r.key.to_vec()
        })
        .collect();
    assert_eq!(
        tombstones,
        HashSet::from([key("old1").encode(), key("old2").encode()])
    );
    staged.apply(&state).unwrap();
    assert_eq!(state.get(STORE, &key("old1").encode()).unwrap(), None);
    assert!(state.get(STORE, &key("fresh").encode()).unwrap().is_some());
}

#[test]
fn sweep_resumes_where_it_stopped_and_wraps_around() {
    let tmp = TempDir::new("dedup-sweep-limit");
    let state = open(&tmp);
    let mut dedup = IdempotencyStore::new(STORE, Duration::from_secs(1));
    let mut staged = StagedWrites::new();
    let ids: Vec<String> = (0..10).map(|i| format!("e{i}")).collect();
    let mut view = StateView::new(&state, &mut staged);
    for id in &ids {
        dedup.check_and_stage(&mut view, &key(id), 0).unwrap();
    }
    staged.apply(&state).unwrap();

    let now = HOUR_MICROS;
    let mut swept = 0;
    for _ in 0..3 {
        let mut view = StateView::new(&state, &mut staged);
        swept += dedup.sweep_expired(&mut view, now, 4).unwrap();
        staged.apply(&state).unwrap();
    }
    assert_eq!(swept, 10, "4 + 4 + 2 marks examined, all expired");
    // The cursor wrapped: a new mark is found from the start again.
    let mut view = StateView::new(&state, &mut staged);
    dedup.check_and_stage(&mut view, &key("late"), 0).unwrap();
    staged.apply(&state).unwrap();
    let mut view = StateView::new(&state, &mut staged);
    assert_eq!(dedup.sweep_expired(&mut view, now, 4).unwrap(), 1);
    assert_eq!(dedup.sweep_expired(&mut view, now, 0).unwrap(), 0);
}

#[test]
fn sweep_leaves_marks_renewed_in_the_current_batch() {
    let tmp = TempDir::new("dedup-sweep-staged");
    let state = open(&tmp);
    let mut dedup = IdempotencyStore::new(STORE, Duration::from_secs(1));
    let mut staged = StagedWrites::new();
    let mut view = StateView::new(&state, &mut staged);
    dedup.check_and_stage(&mut view, &key("e1"), 0).unwrap();
    staged.apply(&state).unwrap();

    let now = HOUR_MICROS;
    let mut view = StateView::new(&state, &mut staged);
    // Expired, so new again: its renewed mark is staged.
    assert_eq!(
        dedup.check_and_stage(&mut view, &key("e1"), now).unwrap(),
        Seen::New
    );
    assert_eq!(dedup.sweep_expired(&mut view, now, 10).unwrap(), 0);
    staged.apply(&state).unwrap();
    assert_eq!(
        state.get(STORE, &key("e1").encode()).unwrap(),
        Some(now.to_be_bytes().to_vec())
    );
}

#[test]
fn keys_with_separators_in_fields_do_not_collide() {
    let keys = [
        ("a/b", "c", "e"),
        ("a", "b/c", "e"),
        ("a", "b", "c/e"),
        ("a:b", "c", "e"),
        ("a", "b:c", "e"),
        ("ab", "", "ce"),
        ("a", "b", "ce"),
        ("", "ab", "ce"),
        ("a\u{1}", "b", "e"),
        ("a", "\u{1}b", "e"),
    ];
    let encoded: HashSet<Vec<u8>> = keys
        .iter()
        .map(|&(tenant_id, source, event_id)| {
            IdempotencyKey {
                tenant_id,
                source,
                event_id,
            }
            .encode()
        })
        .collect();
    assert_eq!(encoded.len(), keys.len());

    let tmp = TempDir::new("dedup-separators");
    let state = open(&tmp);
    let dedup = IdempotencyStore::new(STORE, DEFAULT_TTL);
    let mut staged = StagedWrites::new();
    let mut view = StateView::new(&state, &mut staged);
    let a = IdempotencyKey {
        tenant_id: "a/b",
        source: "c",
        event_id: "e",
    };
    let b = IdempotencyKey {
        tenant_id: "a",
        source: "b/c",
        event_id: "e",
    };
    assert_eq!(dedup.check_and_stage(&mut view, &a, 1).unwrap(), Seen::New);
    assert_eq!(dedup.check_and_stage(&mut view, &b, 1).unwrap(), Seen::New);
}

#[test]
fn long_fields_encode_unambiguously() {
    let long = "x".repeat(300);
    let a = IdempotencyKey {
        tenant_id: &long,
        source: "s",
        event_id: "e",
    };
    let encoded = a.encode();
    // 300 = 0b10_0101100: two length bytes, low group first.
    assert_eq!(&encoded[..2], &[0xac, 0x02]);
    assert_eq!(encoded.len(), 2 + 300 + 2 + 2);
}

#[test]
fn a_corrupt_mark_is_an_error_not_a_panic() {
    let tmp = TempDir::new("dedup-corrupt");
    let state = open(&tmp);
    state
        .restore(STORE, &key("e1").encode(), Some(b"short"))
        .unwrap();
    let dedup = IdempotencyStore::new(STORE, DEFAULT_TTL);
    let mut staged = StagedWrites::new();
    let mut view = StateView::new(&state, &mut staged);
    assert!(matches!(
        dedup.check_and_stage(&mut view, &key("e1"), 1),
        Err(backbone_state::StateError::CorruptValue { .. })
    ));
}
