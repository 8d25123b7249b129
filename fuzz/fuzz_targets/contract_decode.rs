//! Arbitrary bytes as the Avro body of a contract, decoded into its Rust type the way
//! processors and sinks decode (`WireCodec::decode_cached_as`: the body reader, decimal
//! widening, schema resolution when the writer schema differs, serde into the type).
//!
//! The first byte chooses the contract (its low seven bits, modulo the number of contracts)
//! and the writer schema: the contract's own (high bit clear) or an evolved version with one
//! more optional field (high bit set), which goes through schema resolution. Errors are
//! expected; a value that decodes must encode and decode back to itself.

#![no_main]

use backbone_fuzz::{codec, contract_id, evolved_id, CONTRACTS};
use backbone_schemas::wire::frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [selector, body @ ..] = data else {
        return;
    };
    let index = usize::from(selector & 0x7f) % CONTRACTS.len();
    let id = if selector & 0x80 == 0 {
        contract_id(index)
    } else {
        evolved_id(index)
    };
    if let Err(err) = (CONTRACTS[index].decode)(codec(), contract_id(index), &frame(id, body)) {
        // Every schema id is cached: nothing may look like a registry outage, which the
        // runtime would retry for ever instead of dead-lettering.
        assert!(!err.is_transient(), "{}: {err}", CONTRACTS[index].name);
    }
});
