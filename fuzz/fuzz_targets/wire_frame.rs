//! Arbitrary bytes as a record in the Confluent wire format: `split_frame`, then, for a frame,
//! `decode_body` with the contract its schema id stands for (id modulo the number of
//! contracts, so every id reaches a schema). Errors are expected; panics, hangs and huge
//! allocations are bugs. A body that decodes must encode again and decode to the same value.

#![no_main]

use apache_avro::types::Value;
use backbone_fuzz::CONTRACTS;
use backbone_schemas::wire::{decode_body, encode_body, split_frame, WireError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (id, body) = match split_frame(data) {
        Ok(frame) => frame,
        Err(WireError::TooShort { len }) => {
            assert!(len < 5 && len == data.len());
            return;
        }
        Err(WireError::WrongMagicByte { found }) => {
            assert_eq!(Some(&found), data.first());
            return;
        }
        Err(other) => panic!("split_frame answered {other:?}"),
    };
    let case = &CONTRACTS[id as usize % CONTRACTS.len()];
    let schema = (case.schema)();
    let Ok(value) = decode_body(id, schema, body) else {
        return;
    };
    // apache-avro decodes a decimal of zero bytes, which no writer produces and its own encoder
    // refuses. The contract types refuse it too (`contract_violation`, see `contract_decode`
    // and the `schemas` test `an_empty_decimal_is_a_contract_violation`), so only the generic
    // value skips the round trip.
    if has_empty_decimal(&value) {
        return;
    }
    let encoded = encode_body(schema, value.clone())
        .unwrap_or_else(|e| panic!("{}: a decoded body does not encode: {e}", case.name));
    let again = decode_body(id, schema, &encoded)
        .unwrap_or_else(|e| panic!("{}: a re-encoded body does not decode: {e}", case.name));
    assert_eq!(again, value, "{}: round trip changed the value", case.name);
});

fn has_empty_decimal(value: &Value) -> bool {
    match value {
        Value::Decimal(decimal) => Vec::<u8>::try_from(decimal).map_or(true, |b| b.is_empty()),
        Value::Union(_, inner) => has_empty_decimal(inner),
        Value::Record(fields) => fields.iter().any(|(_, v)| has_empty_decimal(v)),
        Value::Array(items) => items.iter().any(has_empty_decimal),
        Value::Map(entries) => entries.values().any(has_empty_decimal),
        _ => false,
    }
}
