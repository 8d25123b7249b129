//! Decoded Avro values as JSON a person can read: decimals as decimal strings at their
//! schema's scale, timestamps as RFC 3339, enums as their symbol, unions as their branch's value.

use std::collections::HashMap;

use apache_avro::types::Value;
use apache_avro::Schema;
use serde_json::{json, Map, Value as Json};

use backbone_calendar::{format_date, format_rfc3339_ms};

/// `value`, written with `schema`, as readable JSON.
pub fn to_json(value: &Value, schema: &Schema) -> Json {
    let schema = serde_json::to_value(schema).unwrap_or(Json::Null);
    let mut names = HashMap::new();
    render(value, &schema, &mut names)
}

/// Named types seen so far, by full and by short name.
type Names = HashMap<String, Json>;

fn remember(schema: &Json, names: &mut Names) {
    let Some(name) = schema.get("name").and_then(Json::as_str) else {
        return;
    };
    let full = match schema.get("namespace").and_then(Json::as_str) {
        Some(ns) if !name.contains('.') && !ns.is_empty() => format!("{ns}.{name}"),
        _ => name.to_owned(),
    };
    let short = full.rsplit('.').next().unwrap_or(&full).to_owned();
    names.insert(full, schema.clone());
    names.entry(short).or_insert_with(|| schema.clone());
}

/// The schema a type position stands for: an inline schema, or a reference to a named one.
fn resolve(schema: &Json, names: &Names) -> Json {
    match schema {
        Json::String(name) => names
            .get(name)
            .or_else(|| names.get(name.rsplit('.').next().unwrap_or(name)))
            .cloned()
            .unwrap_or_else(|| schema.clone()),
        Json::Object(object) => match object.get("type") {
            // `{"type": "Name"}` or `{"type": {...}}` wrapping another schema.
            Some(inner @ (Json::Object(_) | Json::Array(_))) => resolve(inner, names),
            Some(Json::String(name))
                if !is_builtin(name) && !object.contains_key("logicalType") =>
            {
                resolve(&Json::String(name.clone()), names)
            }
            _ => schema.clone(),
        },
        _ => schema.clone(),
    }
}

fn is_builtin(name: &str) -> bool {
    matches!(
        name,
        "null"
            | "boolean"
            | "int"
            | "long"
            | "float"
            | "double"
            | "bytes"
            | "string"
            | "record"
            | "enum"
            | "array"
            | "map"
            | "fixed"
            | "error"
    )
}

fn render(value: &Value, schema: &Json, names: &mut Names) -> Json {
    let schema = resolve(schema, names);
    remember(&schema, names);
    match value {
        Value::Null => Json::Null,
        Value::Boolean(b) => Json::Bool(*b),
        Value::Int(n) => json!(n),
        Value::Long(n) => json!(n),
        Value::Float(f) => number(f64::from(*f)),
        Value::Double(f) => number(*f),
        Value::Bytes(bytes) => Json::String(hex(bytes)),
        Value::Fixed(_, bytes) => Json::String(hex(bytes)),
        Value::String(s) => Json::String(s.clone()),
        Value::Enum(_, symbol) => Json::String(symbol.clone()),
        Value::Union(index, inner) => {
            let branch = schema
                .as_array()
                .and_then(|branches| branches.get(usize::try_from(*index).unwrap_or(usize::MAX)))
                .cloned()
                .unwrap_or(Json::Null);
            render(inner, &branch, names)
        }
        Value::Array(items) => {
            let item_schema = schema.get("items").cloned().unwrap_or(Json::Null);
            Json::Array(
                items
                    .iter()
                    .map(|item| render(item, &item_schema, names))
                    .collect(),
            )
        }
        Value::Map(entries) => {
            let value_schema = schema.get("values").cloned().unwrap_or(Json::Null);
            let mut sorted: Vec<_> = entries.iter().collect();
            sorted.sort_by(|a, b| a.0.cmp(b.0));
            Json::Object(
                sorted
                    .into_iter()
                    .map(|(k, v)| (k.clone(), render(v, &value_schema, names)))
                    .collect(),
            )
        }
        Value::Record(fields) => {
            let field_schemas: HashMap<&str, Json> = schema
                .get("fields")
                .and_then(Json::as_array)
                .map(|fields| {
                    fields
                        .iter()
                        .filter_map(|f| Some((f.get("name")?.as_str()?, f.get("type")?.clone())))
                        .collect()
                })
                .unwrap_or_default();
            let mut object = Map::new();
            for (name, field) in fields {
                let field_schema = field_schemas
                    .get(name.as_str())
                    .cloned()
                    .unwrap_or(Json::Null);
                object.insert(name.clone(), render(field, &field_schema, names));
            }
            Json::Object(object)
        }
        Value::Date(days) => Json::String(format_date(*days)),
        Value::Decimal(decimal) => {
            let scale = schema.get("scale").and_then(Json::as_u64).unwrap_or(0);
            match Vec::<u8>::try_from(decimal) {
                Ok(bytes) => decimal_text(&bytes, scale)
                    .map(Json::String)
                    .unwrap_or_else(|| Json::String(hex(&bytes))),
                Err(_) => Json::Null,
            }
        }
        Value::BigDecimal(big) => Json::String(big.to_string()),
        Value::TimeMillis(ms) => json!(ms),
        Value::TimeMicros(us) => json!(us),
        Value::TimestampMillis(ms) | Value::LocalTimestampMillis(ms) => {
            Json::String(format_rfc3339_ms(*ms))
        }
        Value::TimestampMicros(us) | Value::LocalTimestampMicros(us) => {
            Json::String(format_micros(*us))
        }
        Value::TimestampNanos(ns) | Value::LocalTimestampNanos(ns) => {
            Json::String(format_micros(ns.div_euclid(1_000)))
        }
        Value::Duration(d) => json!({
            "months": u32::from(d.months()),
            "days": u32::from(d.days()),
            "millis": u32::from(d.millis()),
        }),
        Value::Uuid(uuid) => Json::String(uuid.to_string()),
    }
}

/// RFC 3339 with the microseconds kept.
fn format_micros(us: i64) -> String {
    let ms = format_rfc3339_ms(us.div_euclid(1_000));
    let micros = us.rem_euclid(1_000);
    // `...SS.mmmZ` becomes `...SS.mmmuuuZ`.
    format!("{}{micros:03}Z", ms.trim_end_matches('Z'))
}

fn number(f: f64) -> Json {
    serde_json::Number::from_f64(f)
        .map(Json::Number)
        .unwrap_or_else(|| Json::String(f.to_string()))
}

/// Bytes as `0x`-prefixed lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(2 + bytes.len() * 2);
    out.push_str("0x");
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// A big-endian two's complement unscaled value at `scale`, as decimal text; `None` beyond
/// 16 bytes.
fn decimal_text(bytes: &[u8], scale: u64) -> Option<String> {
    if bytes.is_empty() {
        return Some("0".to_owned());
    }
    if bytes.len() > 16 {
        return None;
    }
    let fill = if bytes[0] & 0x80 == 0 { 0x00 } else { 0xff };
    let mut wide = [fill; 16];
    wide[16 - bytes.len()..].copy_from_slice(bytes);
    let unscaled = i128::from_be_bytes(wide);
    let digits = unscaled.unsigned_abs().to_string();
    let scale = usize::try_from(scale).ok()?;
    let sign = if unscaled < 0 { "-" } else { "" };
    if scale == 0 {
        return Some(format!("{sign}{digits}"));
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (whole, fraction) = padded.split_at(padded.len() - scale);
    Some(format!("{sign}{whole}.{fraction}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_read_at_their_scale() {
        assert_eq!(decimal_text(&[0x04, 0xd2], 2).as_deref(), Some("12.34"));
        assert_eq!(decimal_text(&[0xfb, 0x2e], 2).as_deref(), Some("-12.34"));
        assert_eq!(decimal_text(&[0x05], 3).as_deref(), Some("0.005"));
        assert_eq!(decimal_text(&[0x05], 0).as_deref(), Some("5"));
        assert_eq!(decimal_text(&[0u8; 17], 0), None);
    }

    #[test]
    fn records_render_with_named_types_logical_types_and_unions() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"Charge","namespace":"backbone","fields":[
                {"name":"amount","type":{"type":"bytes","logicalType":"decimal","precision":18,"scale":6}},
                {"name":"at","type":{"type":"long","logicalType":"timestamp-micros"}},
                {"name":"kind","type":{"type":"enum","name":"Kind","symbols":["USAGE","FEE"]}},
                {"name":"other","type":["null","Kind"]},
                {"name":"note","type":["null","string"]},
                {"name":"tags","type":{"type":"map","values":"string"}}
            ]}"#,
        )
        .expect("schema");
        let value = Value::Record(vec![
            (
                "amount".into(),
                Value::Decimal(vec![0x00, 0xbc, 0x61, 0x4e].into()),
            ),
            ("at".into(), Value::TimestampMicros(1_709_210_096_789_123)),
            ("kind".into(), Value::Enum(1, "FEE".into())),
            (
                "other".into(),
                Value::Union(1, Box::new(Value::Enum(0, "USAGE".into()))),
            ),
            ("note".into(), Value::Union(0, Box::new(Value::Null))),
            (
                "tags".into(),
                Value::Map([("b".to_owned(), Value::String("2".into()))].into()),
            ),
        ]);
        let json = to_json(&value, &schema);
        assert_eq!(
            json,
            json!({
                "amount": "12.345678",
                "at": "2024-02-29T12:34:56.789123Z",
                "kind": "FEE",
                "other": "USAGE",
                "note": null,
                "tags": {"b": "2"},
            })
        );
    }
}
