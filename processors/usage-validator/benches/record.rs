//! The per-record path of a stateful processor, without the broker: decode a usage event from
//! the wire format, check its idempotency key, update a running total in partition state, encode
//! an output, and apply the state writes to RocksDB, each step alone and the validator's whole
//! `process` call. Baseline in the same run: copying the record's bytes, which is all a plain
//! pass-through does with a record in memory.
//!
//! `cargo bench -p backbone-usage-validator --bench record`

use std::time::Duration;

use backbone_core::state::{State, DEDUP_STORE};
use backbone_core::{IdempotencyKey, InputRecord, Processor};
use backbone_schemas::types::{Contract, EventMetadata, TraceContext, UsageEvent};
use backbone_schemas::wire::encode_framed;
use backbone_schemas::WireCodec;
use backbone_state::{IdempotencyStore, PartitionState, StagedWrites, StateView, DEFAULT_TTL};
use backbone_usage_validator::{UsageValidator, ValidatorSettings};
use criterion::{BatchSize, Criterion};

const SCHEMA_ID: u32 = 1;
const TOTALS: &str = "totals";

fn event(i: u64) -> UsageEvent {
    UsageEvent {
        metadata: EventMetadata {
            tenant_id: "acme".into(),
            event_id: format!("e-{i}"),
            source: "api-gateway".into(),
            r#type: "usage.recorded".into(),
            occurred_at: 1_790_000_000_000_000,
            produced_at: 1_790_000_000_100_000,
            trace: TraceContext {
                traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
                tracestate: None,
            },
            schema_version: None,
        },
        customer_id: format!("c-{}", i % 1000),
        subscription_id: Some("sub-1".into()),
        meter_id: "api_calls".into(),
        quantity: "12.5".parse().expect("quantity"),
        unit: "call".into(),
        dimensions: None,
        unique_value: None,
    }
}

fn open_state(name: &str) -> PartitionState {
    let dir = std::env::temp_dir()
        .join(format!("backbone-bench-{}", std::process::id()))
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    PartitionState::open(&dir, &[DEDUP_STORE, TOTALS])
        .expect("open state")
        .0
}

fn record(c: &mut Criterion) {
    let codec = WireCodec::new("http://127.0.0.1:9");
    codec.preload(SCHEMA_ID, UsageEvent::schema().clone());
    let bytes = encode_framed(SCHEMA_ID, &event(0)).expect("encode");
    let dedup = IdempotencyStore::new(DEDUP_STORE, DEFAULT_TTL);
    let mut group = c.benchmark_group("record");
    group.measurement_time(Duration::from_secs(4));

    group.bench_function("baseline: copy the bytes", |b| b.iter(|| bytes.to_vec()));
    group.bench_function("decode", |b| {
        b.iter(|| {
            codec
                .decode_cached_as::<UsageEvent>(&bytes, UsageEvent::schema())
                .expect("decode")
        })
    });

    let state = open_state("dedup");
    let mut i = 0u64;
    group.bench_function("dedup: new key, applied", |b| {
        b.iter_batched(
            || {
                i += 1;
                format!("e-{i}")
            },
            |event_id| {
                let mut staged = StagedWrites::new();
                let mut view = StateView::new(&state, &mut staged);
                let key = IdempotencyKey {
                    tenant_id: "acme",
                    source: "api-gateway",
                    event_id: &event_id,
                };
                dedup.check_and_stage(&mut view, &key, 1).expect("dedup");
                staged.apply(&state).expect("apply");
            },
            BatchSize::SmallInput,
        )
    });

    let state = open_state("totals");
    let mut i = 0u64;
    group.bench_function("state update: read, add, write, applied", |b| {
        b.iter(|| {
            i += 1;
            let account = format!("c-{}", i % 1000);
            let mut staged = StagedWrites::new();
            let mut view = StateView::new(&state, &mut staged);
            let total = view
                .get(TOTALS, account.as_bytes())
                .expect("get")
                .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
                .map_or(0, u64::from_be_bytes);
            view.put(TOTALS, account.as_bytes(), &(total + 1).to_be_bytes())
                .expect("put");
            staged.apply(&state).expect("apply");
        })
    });

    let output = event(1);
    group.bench_function("encode", |b| {
        b.iter(|| encode_framed(SCHEMA_ID, &output).expect("encode"))
    });

    let state = open_state("validator");
    let mut validator = UsageValidator::new(ValidatorSettings::default(), codec.clone());
    let inputs: Vec<Vec<u8>> = (0..100_000)
        .map(|i| encode_framed(SCHEMA_ID, &event(i)).expect("encode"))
        .collect();
    let mut next = 0usize;
    group.bench_function(
        "usage-validator process: decode, dedup, forward, applied",
        |b| {
            b.iter(|| {
                let value = &inputs[next % inputs.len()];
                next += 1;
                let input = InputRecord {
                    topic: "usage.events",
                    partition: 0,
                    offset: next as i64,
                    timestamp_ms: None,
                    key: None,
                    value: Some(value),
                    headers: &[],
                };
                let mut staged = StagedWrites::new();
                let outputs = {
                    let mut state_view =
                        State::new(StateView::new(&state, &mut staged), Some(&dedup));
                    validator.process(&input, &mut state_view).expect("valid")
                };
                staged.apply(&state).expect("apply");
                outputs
            })
        },
    );
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    record(&mut c);
    c.final_summary();
}
