//! Cost per input record of the dedup check: `check_and_stage` of a new key plus `apply`.

use std::hint::black_box;
use std::path::PathBuf;

use backbone_state::{
    IdempotencyKey, IdempotencyStore, PartitionState, Seen, StagedWrites, StateView, DEFAULT_TTL,
};
use criterion::{BatchSize, Criterion, Throughput};

const STORE: &str = "dedup";
const BATCH: u64 = 500;

struct TempState {
    dir: PathBuf,
    state: Option<PartitionState>,
}

impl TempState {
    fn new(label: &str) -> TempState {
        let dir = std::env::temp_dir().join(format!(
            "backbone-state-bench-{label}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let (state, _) = PartitionState::open(&dir, &[STORE]).expect("opening bench state");
        TempState {
            dir,
            state: Some(state),
        }
    }

    fn state(&self) -> &PartitionState {
        self.state.as_ref().expect("state is open until drop")
    }
}

impl Drop for TempState {
    fn drop(&mut self) {
        drop(self.state.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn event_id(n: u64) -> String {
    format!("evt-{n:016x}")
}

fn dedup(c: &mut Criterion) {
    let dedup = IdempotencyStore::new(STORE, DEFAULT_TTL);
    let mut group = c.benchmark_group("dedup");
    group.throughput(Throughput::Elements(1));

    // The worst case: one commit (one RocksDB write batch) per record.
    let temp = TempState::new("single");
    let mut staged = StagedWrites::new();
    let mut n = 0u64;
    group.bench_function("new_key_check_and_apply_each", |b| {
        b.iter(|| {
            n += 1;
            let id = event_id(n);
            let key = IdempotencyKey {
                tenant_id: "tenant-1",
                source: "meter",
                event_id: &id,
            };
            let mut view = StateView::new(temp.state(), &mut staged);
            let seen = dedup.check_and_stage(&mut view, &key, 1_700_000_000_000_000);
            assert_eq!(seen.expect("check"), Seen::New);
            staged.apply(temp.state()).expect("apply");
        })
    });
    drop(temp);

    // The usual case: a batch of records, one commit.
    let temp = TempState::new("batch");
    let mut n = 0u64;
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function("new_key_check_batch_500_then_apply", |b| {
        b.iter_batched_ref(
            || {
                let ids: Vec<String> = (0..BATCH).map(|i| event_id(n + i)).collect();
                n += BATCH;
                (ids, StagedWrites::new())
            },
            |(ids, staged)| {
                let mut view = StateView::new(temp.state(), staged);
                for id in ids.iter() {
                    let key = IdempotencyKey {
                        tenant_id: "tenant-1",
                        source: "meter",
                        event_id: id,
                    };
                    black_box(dedup.check_and_stage(&mut view, &key, 1).expect("check"));
                }
                staged.apply(temp.state()).expect("apply");
            },
            BatchSize::SmallInput,
        )
    });

    // A redelivery: the key is committed, nothing is staged.
    group.throughput(Throughput::Elements(1));
    let mut staged = StagedWrites::new();
    group.bench_function("duplicate_key_check", |b| {
        let id = event_id(1);
        let key = IdempotencyKey {
            tenant_id: "tenant-1",
            source: "meter",
            event_id: &id,
        };
        b.iter(|| {
            let mut view = StateView::new(temp.state(), &mut staged);
            let seen = dedup.check_and_stage(&mut view, &key, 2).expect("check");
            assert!(matches!(seen, Seen::Duplicate { .. }));
        })
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    dedup(&mut c);
    c.final_summary();
}
