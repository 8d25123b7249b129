//! Schema evolution cases, each verdict reasoned from the Avro 1.11 "Schema Resolution" rules:
//! BACKWARD = the new schema reads old data, FORWARD = the old schema reads new data.

use apache_avro::Schema;
use backbone_compat::{
    can_read, check, CompatibilityError, CompatibilityMode, Direction, IncompatibilityKind,
};

const OK: bool = true;
const FAIL: bool = false;

fn parse(json: &str) -> Schema {
    Schema::parse_str(json).unwrap_or_else(|e| panic!("test schema does not parse: {e}\n{json}"))
}

/// A record `backbone.usage.RatedUsage` with an `id` field followed by `fields` (JSON).
fn usage(fields: &str) -> String {
    named_usage("RatedUsage", "", fields)
}

fn named_usage(name: &str, extra: &str, fields: &str) -> String {
    let comma = if fields.is_empty() { "" } else { "," };
    format!(
        r#"{{"type": "record", "name": "{name}", "namespace": "backbone.usage"{extra},
            "fields": [{{"name": "id", "type": "string"}}{comma}{fields}]}}"#
    )
}

/// A `status` field holding enum `Status` with `symbols` and an optional default symbol.
fn status(symbols: &str, default: Option<&str>) -> String {
    let default = default
        .map(|symbol| format!(r#", "default": "{symbol}""#))
        .unwrap_or_default();
    format!(
        r#"{{"name": "status", "type": {{"type": "enum", "name": "Status",
            "symbols": [{symbols}]{default}}}}}"#
    )
}

/// A `customer` field holding record `Customer` with a `name` field followed by `fields`.
fn customer(fields: &str) -> String {
    let comma = if fields.is_empty() { "" } else { "," };
    format!(
        r#"{{"name": "customer", "type": {{"type": "record", "name": "Customer",
            "fields": [{{"name": "name", "type": "string"}}{comma}{fields}]}}}}"#
    )
}

struct Case {
    name: &'static str,
    old: String,
    new: String,
    backward: bool,
    forward: bool,
    full: bool,
}

fn case(
    name: &'static str,
    old: String,
    new: String,
    backward: bool,
    forward: bool,
    full: bool,
) -> Case {
    Case {
        name,
        old,
        new,
        backward,
        forward,
        full,
    }
}

fn cases() -> Vec<Case> {
    let decimal = |precision: u32, scale: u32| {
        usage(&format!(
            r#"{{"name": "price", "type": {{"type": "bytes", "logicalType": "decimal",
                "precision": {precision}, "scale": {scale}}}}}"#
        ))
    };
    vec![
        // New reader fills the missing field from its default; old reader skips it.
        case(
            "add field with default",
            usage(""),
            usage(r#"{"name": "amount", "type": "long", "default": 0}"#),
            OK,
            OK,
            OK,
        ),
        case(
            "add field without default",
            usage(""),
            usage(r#"{"name": "amount", "type": "long"}"#),
            FAIL,
            OK,
            FAIL,
        ),
        case(
            "remove field with default",
            usage(r#"{"name": "amount", "type": "long", "default": 0}"#),
            usage(""),
            OK,
            OK,
            OK,
        ),
        case(
            "remove field without default",
            usage(r#"{"name": "amount", "type": "long"}"#),
            usage(""),
            OK,
            FAIL,
            FAIL,
        ),
        // Aliases belong to the reader: only the new schema knows `total` was `amount`.
        case(
            "rename field with alias",
            usage(r#"{"name": "amount", "type": "long"}"#),
            usage(r#"{"name": "total", "type": "long", "aliases": ["amount"]}"#),
            OK,
            FAIL,
            FAIL,
        ),
        case(
            "rename field without alias",
            usage(r#"{"name": "amount", "type": "long"}"#),
            usage(r#"{"name": "total", "type": "long"}"#),
            FAIL,
            FAIL,
            FAIL,
        ),
        case(
            "enum symbol added, no enum default",
            usage(&status(r#""OPEN", "CLOSED""#, None)),
            usage(&status(r#""OPEN", "CLOSED", "VOID""#, None)),
            OK,
            FAIL,
            FAIL,
        ),
        // The old reader maps the unknown `VOID` to its default `OPEN`.
        case(
            "enum symbol added, with enum default",
            usage(&status(r#""OPEN", "CLOSED""#, Some("OPEN"))),
            usage(&status(r#""OPEN", "CLOSED", "VOID""#, Some("OPEN"))),
            OK,
            OK,
            OK,
        ),
        case(
            "enum symbol removed, no enum default",
            usage(&status(r#""OPEN", "CLOSED", "VOID""#, None)),
            usage(&status(r#""OPEN", "CLOSED""#, None)),
            FAIL,
            OK,
            FAIL,
        ),
        case(
            "enum symbol removed, with enum default",
            usage(&status(r#""OPEN", "CLOSED", "VOID""#, Some("OPEN"))),
            usage(&status(r#""OPEN", "CLOSED""#, Some("OPEN"))),
            OK,
            OK,
            OK,
        ),
        case(
            "int promoted to long",
            usage(r#"{"name": "amount", "type": "int"}"#),
            usage(r#"{"name": "amount", "type": "long"}"#),
            OK,
            FAIL,
            FAIL,
        ),
        case(
            "long narrowed to int",
            usage(r#"{"name": "amount", "type": "long"}"#),
            usage(r#"{"name": "amount", "type": "int"}"#),
            FAIL,
            OK,
            FAIL,
        ),
        case(
            "string to bytes",
            usage(r#"{"name": "note", "type": "string"}"#),
            usage(r#"{"name": "note", "type": "bytes"}"#),
            OK,
            OK,
            OK,
        ),
        case(
            "union widened",
            usage(r#"{"name": "note", "type": ["null", "string"]}"#),
            usage(r#"{"name": "note", "type": ["null", "string", "long"]}"#),
            OK,
            FAIL,
            FAIL,
        ),
        case(
            "union narrowed",
            usage(r#"{"name": "note", "type": ["null", "string", "long"]}"#),
            usage(r#"{"name": "note", "type": ["null", "string"]}"#),
            FAIL,
            OK,
            FAIL,
        ),
        case(
            "union reordered",
            usage(r#"{"name": "note", "type": ["null", "string"]}"#),
            usage(r#"{"name": "note", "type": ["string", "null"], "default": ""}"#),
            OK,
            OK,
            OK,
        ),
        // The old reader's `string` cannot take the new writer's `null` branch.
        case(
            "field made nullable",
            usage(r#"{"name": "note", "type": "string"}"#),
            usage(r#"{"name": "note", "type": ["null", "string"], "default": null}"#),
            OK,
            FAIL,
            FAIL,
        ),
        case(
            "field type string to long",
            usage(r#"{"name": "amount", "type": "string"}"#),
            usage(r#"{"name": "amount", "type": "long"}"#),
            FAIL,
            FAIL,
            FAIL,
        ),
        case(
            "record renamed with alias",
            usage(""),
            named_usage("PricedUsage", r#", "aliases": ["RatedUsage"]"#, ""),
            OK,
            FAIL,
            FAIL,
        ),
        case(
            "record renamed without alias",
            usage(""),
            named_usage("PricedUsage", "", ""),
            FAIL,
            FAIL,
            FAIL,
        ),
        // Our choice: both names are qualified, so a namespace move needs a reader alias.
        case(
            "record moved to another namespace without alias",
            usage(""),
            usage("").replace("backbone.usage", "backbone.billing"),
            FAIL,
            FAIL,
            FAIL,
        ),
        case(
            "nested record field added with default",
            usage(&customer("")),
            usage(&customer(
                r#"{"name": "tier", "type": "string", "default": "basic"}"#,
            )),
            OK,
            OK,
            OK,
        ),
        case(
            "nested record field added without default",
            usage(&customer("")),
            usage(&customer(r#"{"name": "tier", "type": "string"}"#)),
            FAIL,
            OK,
            FAIL,
        ),
        case(
            "array item promoted int to long",
            usage(r#"{"name": "counts", "type": {"type": "array", "items": "int"}}"#),
            usage(r#"{"name": "counts", "type": {"type": "array", "items": "long"}}"#),
            OK,
            FAIL,
            FAIL,
        ),
        case(
            "map value changed string to long",
            usage(r#"{"name": "labels", "type": {"type": "map", "values": "string"}}"#),
            usage(r#"{"name": "labels", "type": {"type": "map", "values": "long"}}"#),
            FAIL,
            FAIL,
            FAIL,
        ),
        case(
            "map value promoted float to double",
            usage(r#"{"name": "rates", "type": {"type": "map", "values": "float"}}"#),
            usage(r#"{"name": "rates", "type": {"type": "map", "values": "double"}}"#),
            OK,
            FAIL,
            FAIL,
        ),
        case(
            "fixed size changed",
            usage(r#"{"name": "hash", "type": {"type": "fixed", "name": "Hash", "size": 16}}"#),
            usage(r#"{"name": "hash", "type": {"type": "fixed", "name": "Hash", "size": 32}}"#),
            FAIL,
            FAIL,
            FAIL,
        ),
        // Our choice: the scale fixes the meaning of the stored integer, so it must match.
        case(
            "decimal scale changed",
            decimal(10, 2),
            decimal(10, 3),
            FAIL,
            FAIL,
            FAIL,
        ),
        // Our choice: a reader precision at least the writer's holds every written value.
        case(
            "decimal precision widened",
            decimal(10, 2),
            decimal(12, 2),
            OK,
            FAIL,
            FAIL,
        ),
        // Logical types resolve as their underlying type (`long`).
        case(
            "timestamp logical type dropped",
            usage(r#"{"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}}"#),
            usage(r#"{"name": "at", "type": "long"}"#),
            OK,
            OK,
            OK,
        ),
    ]
}

#[test]
fn evolution_verdicts_follow_the_resolution_rules() {
    let mut wrong = Vec::new();
    for case in cases() {
        let old = parse(&case.old);
        let new = parse(&case.new);
        for (mode, expected) in [
            (CompatibilityMode::Backward, case.backward),
            (CompatibilityMode::Forward, case.forward),
            (CompatibilityMode::Full, case.full),
        ] {
            let errors = check(mode, &new, std::slice::from_ref(&old));
            if errors.is_empty() != expected {
                let got: Vec<String> = errors.iter().map(ToString::to_string).collect();
                wrong.push(format!(
                    "{}: {mode} expected {}, got {got:?}",
                    case.name,
                    if expected {
                        "compatible"
                    } else {
                        "incompatible"
                    },
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "wrong verdicts:\n{}", wrong.join("\n"));
}

#[test]
fn every_case_schema_is_compatible_with_itself() {
    for case in cases() {
        for json in [&case.old, &case.new] {
            let schema = parse(json);
            assert_eq!(can_read(&schema, &schema), vec![], "{}", case.name);
        }
    }
}

/// The single incompatibility found when `reader` reads `writer`.
fn only(reader: &str, writer: &str) -> backbone_compat::Incompatibility {
    let mut found = can_read(&parse(reader), &parse(writer));
    assert_eq!(
        found.len(),
        1,
        "expected one incompatibility, got {found:?}"
    );
    found.remove(0)
}

#[test]
fn missing_field_names_the_field_and_the_record() {
    let found = only(&usage(r#"{"name": "amount", "type": "long"}"#), &usage(""));
    assert_eq!(found.kind, IncompatibilityKind::ReaderFieldMissingDefault);
    assert_eq!(found.kind.as_str(), "READER_FIELD_MISSING_DEFAULT_VALUE");
    assert_eq!(found.path, "/fields/1");
    assert_eq!(
        found.message,
        "field `amount` (in record backbone.usage.RatedUsage) is missing from the writer schema \
         and has no default"
    );
}

#[test]
fn nested_missing_field_is_located_inside_the_nested_record() {
    let found = only(
        &usage(&customer(r#"{"name": "tier", "type": "string"}"#)),
        &usage(&customer("")),
    );
    assert_eq!(found.kind, IncompatibilityKind::ReaderFieldMissingDefault);
    assert_eq!(found.path, "/fields/1/type/fields/1");
    assert!(found.message.contains("`tier`"), "{}", found.message);
    assert!(
        found.message.contains("backbone.usage.Customer"),
        "{}",
        found.message
    );
}

#[test]
fn type_mismatch_is_located_at_the_field_type() {
    let found = only(
        &usage(r#"{"name": "amount", "type": "long"}"#),
        &usage(r#"{"name": "amount", "type": "string"}"#),
    );
    assert_eq!(found.kind, IncompatibilityKind::TypeMismatch);
    assert_eq!(found.kind.as_str(), "TYPE_MISMATCH");
    assert_eq!(found.path, "/fields/1/type");
    assert_eq!(
        found.message,
        "field `amount` (in record backbone.usage.RatedUsage): reader type `long` cannot read \
         writer type `string`"
    );
}

#[test]
fn top_level_mismatch_is_located_at_the_root() {
    let found = only(r#""long""#, r#""string""#);
    assert_eq!(found.kind, IncompatibilityKind::TypeMismatch);
    assert_eq!(found.path, "/");
}

#[test]
fn array_item_mismatch_is_located_at_the_items() {
    let found = only(
        &usage(r#"{"name": "counts", "type": {"type": "array", "items": "int"}}"#),
        &usage(r#"{"name": "counts", "type": {"type": "array", "items": "long"}}"#),
    );
    assert_eq!(found.kind, IncompatibilityKind::TypeMismatch);
    assert_eq!(found.path, "/fields/1/type/items");
    assert!(found.message.starts_with("items of field `counts`"));
}

#[test]
fn missing_enum_symbols_are_listed() {
    let found = only(
        &usage(&status(r#""OPEN""#, None)),
        &usage(&status(r#""OPEN", "CLOSED", "VOID""#, None)),
    );
    assert_eq!(found.kind, IncompatibilityKind::MissingEnumSymbols);
    assert_eq!(found.kind.as_str(), "MISSING_ENUM_SYMBOLS");
    assert_eq!(found.path, "/fields/1/type/symbols");
    assert!(
        found.message.contains("`CLOSED`, `VOID`"),
        "{}",
        found.message
    );
}

#[test]
fn writer_union_branch_without_reader_branch_is_reported() {
    let found = only(
        &usage(r#"{"name": "note", "type": ["null", "string"]}"#),
        &usage(r#"{"name": "note", "type": ["null", "string", "long"]}"#),
    );
    assert_eq!(found.kind, IncompatibilityKind::MissingUnionBranch);
    assert_eq!(found.kind.as_str(), "MISSING_UNION_BRANCH");
    assert_eq!(found.path, "/fields/1/type");
    assert!(found.message.contains("`long`"), "{}", found.message);
}

#[test]
fn reader_union_branch_is_resolved_in_depth() {
    // The writer record matches the union's `Customer` branch by name, but lacks its field.
    let reader = usage(
        r#"{"name": "owner", "type": ["null", {"type": "record", "name": "Customer",
            "fields": [{"name": "tier", "type": "string"}]}]}"#,
    );
    let writer =
        usage(r#"{"name": "owner", "type": {"type": "record", "name": "Customer", "fields": []}}"#);
    let found = only(&reader, &writer);
    assert_eq!(found.kind, IncompatibilityKind::ReaderFieldMissingDefault);
    assert_eq!(found.path, "/fields/1/type/1/fields/0");
}

#[test]
fn record_rename_is_a_name_mismatch() {
    let found = only(&named_usage("PricedUsage", "", ""), &usage(""));
    assert_eq!(found.kind, IncompatibilityKind::NameMismatch);
    assert_eq!(found.kind.as_str(), "NAME_MISMATCH");
    assert_eq!(found.path, "/name");
}

#[test]
fn unqualified_names_compare_by_name_part() {
    let qualified = usage("");
    let unqualified = qualified.replace(r#", "namespace": "backbone.usage""#, "");
    assert_eq!(can_read(&parse(&qualified), &parse(&unqualified)), vec![]);
    assert_eq!(can_read(&parse(&unqualified), &parse(&qualified)), vec![]);
}

#[test]
fn fixed_size_change_is_located_at_the_size() {
    let found = only(
        &usage(r#"{"name": "hash", "type": {"type": "fixed", "name": "Hash", "size": 32}}"#),
        &usage(r#"{"name": "hash", "type": {"type": "fixed", "name": "Hash", "size": 16}}"#),
    );
    assert_eq!(found.kind, IncompatibilityKind::FixedSizeMismatch);
    assert_eq!(found.kind.as_str(), "FIXED_SIZE_MISMATCH");
    assert_eq!(found.path, "/fields/1/type/size");
}

#[test]
fn decimal_scale_change_is_located_at_the_scale() {
    let decimal = |scale: u32| {
        format!(
            r#"{{"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": {scale}}}"#
        )
    };
    let found = only(&decimal(3), &decimal(2));
    assert_eq!(found.kind, IncompatibilityKind::DecimalMismatch);
    assert_eq!(found.path, "/scale");
}

#[test]
fn none_mode_and_first_version_accept_anything() {
    let old = parse(&usage(r#"{"name": "amount", "type": "string"}"#));
    let new = parse(&usage(r#"{"name": "amount", "type": "long"}"#));
    assert!(check(CompatibilityMode::None, &new, &[old]).is_empty());
    for mode in CompatibilityMode::ALL {
        assert!(check(mode, &new, &[]).is_empty(), "{mode}");
    }
}

#[test]
fn error_names_the_version_and_the_direction() {
    let v1 = parse(&usage(""));
    let v2 = parse(&usage(
        r#"{"name": "amount", "type": "long", "default": 0}"#,
    ));
    let candidate = parse(&usage(
        r#"{"name": "amount", "type": "string", "default": ""}"#,
    ));
    let errors = check(CompatibilityMode::Full, &candidate, &[v1, v2]);
    let directions: Vec<(usize, Direction)> = errors
        .iter()
        .map(|e| (e.existing_index, e.direction))
        .collect();
    assert_eq!(
        directions,
        vec![(1, Direction::Backward), (1, Direction::Forward)]
    );
    assert_eq!(
        errors[0].to_string(),
        "incompatible with version 2 (BACKWARD): field `amount` (in record \
         backbone.usage.RatedUsage): reader type `string` cannot read writer type `long` \
         (at /fields/1/type)"
    );
    assert!(errors[1]
        .describe(7)
        .starts_with("incompatible with version 7 (FORWARD): "));
}

/// Versions oldest first, the candidate last.
fn chain(versions: &[String]) -> (Vec<Schema>, Schema) {
    let mut schemas: Vec<Schema> = versions.iter().map(|json| parse(json)).collect();
    let candidate = schemas.pop().expect("a chain has a candidate");
    (schemas, candidate)
}

fn failures(errors: &[CompatibilityError]) -> Vec<(usize, Direction)> {
    errors
        .iter()
        .map(|e| (e.existing_index, e.direction))
        .collect()
}

#[test]
fn backward_transitive_catches_what_backward_misses() {
    // v2 drops `x`; v3 re-adds it as a string with a default: v3 reads v2 by the default, but
    // v1 data carries `x` as an int, which a string cannot read.
    let (existing, v3) = chain(&[
        usage(r#"{"name": "x", "type": "int"}"#),
        usage(""),
        usage(r#"{"name": "x", "type": "string", "default": ""}"#),
    ]);
    assert!(check(CompatibilityMode::Backward, &existing[1], &existing[..1]).is_empty());
    assert!(check(CompatibilityMode::Backward, &v3, &existing).is_empty());
    let errors = check(CompatibilityMode::BackwardTransitive, &v3, &existing);
    assert_eq!(failures(&errors), vec![(0, Direction::Backward)]);
    assert_eq!(
        errors[0].incompatibilities[0].kind,
        IncompatibilityKind::TypeMismatch
    );
}

#[test]
fn forward_transitive_catches_what_forward_misses() {
    // v1 reads v2 data by its default for `x`; v2 ignores v3's new string `x`; but v1 cannot
    // read v3's string `x` as an int.
    let (existing, v3) = chain(&[
        usage(r#"{"name": "x", "type": "int", "default": 0}"#),
        usage(""),
        usage(r#"{"name": "x", "type": "string"}"#),
    ]);
    assert!(check(CompatibilityMode::Forward, &existing[1], &existing[..1]).is_empty());
    assert!(check(CompatibilityMode::Forward, &v3, &existing).is_empty());
    let errors = check(CompatibilityMode::ForwardTransitive, &v3, &existing);
    assert_eq!(failures(&errors), vec![(0, Direction::Forward)]);
}

#[test]
fn full_transitive_catches_what_full_misses() {
    // Each step only adds or drops `x` with a default, so each step is fully compatible; v1
    // and v3 disagree on the type of `x` in both directions.
    let (existing, v3) = chain(&[
        usage(r#"{"name": "x", "type": "int", "default": 0}"#),
        usage(""),
        usage(r#"{"name": "x", "type": "string", "default": ""}"#),
    ]);
    assert!(check(CompatibilityMode::Full, &existing[1], &existing[..1]).is_empty());
    assert!(check(CompatibilityMode::Full, &v3, &existing).is_empty());
    let errors = check(CompatibilityMode::FullTransitive, &v3, &existing);
    assert_eq!(
        failures(&errors),
        vec![(0, Direction::Backward), (0, Direction::Forward)]
    );
}

const LINKED_LIST: &str = r#"{
    "type": "record", "name": "LongList", "namespace": "backbone.test",
    "fields": [
        {"name": "value", "type": "long"},
        {"name": "next", "type": ["null", "LongList"]}
    ]
}"#;

#[test]
fn recursive_schema_terminates() {
    let list = parse(LINKED_LIST);
    for mode in CompatibilityMode::ALL {
        assert!(
            check(mode, &list, std::slice::from_ref(&list)).is_empty(),
            "{mode}"
        );
    }

    let labelled = parse(&LINKED_LIST.replace(
        r#"{"name": "value", "type": "long"},"#,
        r#"{"name": "value", "type": "long"}, {"name": "label", "type": "string", "default": ""},"#,
    ));
    assert!(check(
        CompatibilityMode::Full,
        &labelled,
        std::slice::from_ref(&list)
    )
    .is_empty());

    let narrowed = parse(&LINKED_LIST.replace(r#""type": "long""#, r#""type": "int""#));
    let errors = check(
        CompatibilityMode::Full,
        &narrowed,
        std::slice::from_ref(&list),
    );
    assert_eq!(failures(&errors), vec![(0, Direction::Backward)]);
    assert_eq!(errors[0].incompatibilities[0].path, "/fields/0/type");
}

#[test]
fn mutually_recursive_schema_terminates() {
    let tree = |leaf_type: &str| {
        parse(&format!(
            r#"{{"type": "record", "name": "Node", "fields": [
                {{"name": "label", "type": "{leaf_type}"}},
                {{"name": "edges", "type": {{"type": "array", "items": {{
                    "type": "record", "name": "Edge", "fields": [
                        {{"name": "weight", "type": "int"}},
                        {{"name": "to", "type": "Node"}}
                    ]}}}}}}
            ]}}"#
        ))
    };
    assert_eq!(can_read(&tree("string"), &tree("string")), vec![]);
    assert_eq!(can_read(&tree("bytes"), &tree("string")), vec![]);
    let found = can_read(&tree("long"), &tree("string"));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].path, "/fields/0/type");
}
