//! Arbitrary bytes through what the schema registry reads from clients and from its topic.
//! The first byte chooses what the rest is:
//!
//! 0. a register, lookup or compatibility request body: `parse_register_request`; a schema
//!    it accepts must be stored in a form that parses again to the same schema, or the
//!    subject could never be read or checked again;
//! 1. a `PUT /config` body: `parse_compatibility_request`;
//! 2. a path segment (lossy UTF-8): `VersionRef::parse` and `parse_schema_id`;
//! 3. two schema texts separated by a zero byte: both parsed, then checked against each
//!    other under every compatibility mode, as registering a new version does; a schema is
//!    always compatible with itself;
//! 4. a `_schemas` record, key and value separated by a zero byte: the key parsed and the
//!    record applied to an empty index, as every instance does at start.

#![no_main]

use backbone_compat::CompatibilityMode;
use backbone_registry::index::{Index, LogKey};
use backbone_registry::request::{
    parse_compatibility_request, parse_register_request, parse_schema, parse_schema_id,
};
use backbone_registry::service::VersionRef;
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        // libfuzzer-sys aborts on every panic, even one that is caught. The registry catches
        // apache-avro's parser panics on purpose (see `request::parse_schema`), so a panic
        // raised in apache-avro unwinds to that catch without aborting; one that escapes it
        // still reaches libfuzzer-sys's own catch, which aborts and reports it.
        let abort = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_avro = info
                .location()
                .is_some_and(|at| at.file().contains("apache-avro"));
            if !in_avro {
                abort(info);
            }
        }));
    },
    |data: &[u8]| {
        let [what, rest @ ..] = data else {
            return;
        };
        match what % 5 {
            0 => {
                if let Ok(parsed) = parse_register_request(rest) {
                    // Parsed as the registry parses what it stored (in `service.rs`).
                    let stored = parse_schema(&parsed.canonical, None)
                        .unwrap_or_else(|e| {
                            panic!("stored form {} does not parse: {e}", parsed.canonical)
                        })
                        .schema;
                    // Compared type by type: `canonical_form` panics on custom attributes named
                    // like keywords, which the registry accepts (see the schemas test
                    // `a_writer_schema_with_odd_field_attributes_decodes_without_a_panic`).
                    assert!(stored == parsed.schema, "the stored form is another schema");
                }
            }
            1 => {
                let _ = parse_compatibility_request(rest);
            }
            2 => {
                let text = String::from_utf8_lossy(rest);
                let _ = VersionRef::parse(&text);
                let _ = parse_schema_id(&text);
            }
            3 => {
                let (first, second) = split(rest);
                let (Ok(candidate), Ok(existing)) = (
                    std::str::from_utf8(first).map(|t| parse_schema(t, None)),
                    std::str::from_utf8(second).map(|t| parse_schema(t, None)),
                ) else {
                    return;
                };
                let (Ok(candidate), Ok(existing)) = (candidate, existing) else {
                    return;
                };
                for mode in CompatibilityMode::ALL {
                    for error in
                        backbone_compat::check(mode, &candidate.schema, &[existing.schema.clone()])
                    {
                        let _ = error.describe(1);
                    }
                    let with_itself =
                        backbone_compat::check(mode, &candidate.schema, &[candidate.schema.clone()]);
                    assert!(
                        with_itself.is_empty(),
                        "{mode:?}: a schema is incompatible with itself: {with_itself:?}"
                    );
                }
            }
            _ => {
                let (key, value) = split(rest);
                let Ok(key) = serde_json::from_slice::<LogKey>(key) else {
                    return;
                };
                let mut index = Index::default();
                index.apply(&key, Some(value));
                index.apply(&key, None);
                let _ = (index.max_id(), index.subjects(true));
            }
        }
    }
);

/// The bytes before and after the first zero byte (all and nothing when there is none).
fn split(bytes: &[u8]) -> (&[u8], &[u8]) {
    match bytes.iter().position(|b| *b == 0) {
        Some(at) => (&bytes[..at], &bytes[at + 1..]),
        None => (bytes, &[]),
    }
}
