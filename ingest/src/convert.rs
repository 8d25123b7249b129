//! A CloudEvent's JSON `data` to the Avro value of its contract, by the contract's schema.
//!
//! The JSON is the one a producer would write by hand: decimals as strings (`"12.5"`, never a
//! float that has already lost digits), timestamps as RFC 3339 strings, dates as
//! `YYYY-MM-DD`, enums by symbol, a union by its one non-null branch or `null`. A field the
//! schema does not have is refused rather than dropped, so a misspelt optional field is an
//! error, not a silent null. Every refusal names the field by its path.

use std::collections::HashMap;

use apache_avro::schema::{Name, ResolvedSchema, Schema};
use apache_avro::types::Value;
use apache_avro::Decimal;
use serde_json::Value as Json;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Why a field cannot become the contract's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the field, from `data`.
    pub path: String,
    /// Machine-readable reason.
    pub reason: &'static str,
    /// What is wrong, for people.
    pub message: String,
}

fn refuse(path: &str, reason: &'static str, message: impl Into<String>) -> FieldError {
    FieldError {
        path: path.to_owned(),
        reason,
        message: message.into(),
    }
}

/// The schema of one contract, with its named types for references; made once per contract.
pub struct Converter {
    schema: Schema,
    names: HashMap<Name, Schema>,
}

impl Converter {
    /// A converter for `schema`; an error when the schema's references do not resolve.
    pub fn new(schema: &Schema) -> Result<Self, apache_avro::Error> {
        let resolved = ResolvedSchema::try_from(schema)?;
        let names = resolved
            .get_names()
            .iter()
            .map(|(name, named)| (name.clone(), (*named).clone()))
            .collect();
        Ok(Self {
            schema: schema.clone(),
            names,
        })
    }

    /// The contract's schema.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The record of the contract: the fields in `given` from their JSON (the envelope the
    /// gateway fills in), every other field from the object `data`; `data` may not set a field
    /// of `given`.
    pub fn record(&self, data: &Json, given: Vec<(&str, Json)>) -> Result<Value, FieldError> {
        let Schema::Record(record) = &self.schema else {
            return Err(refuse(
                "",
                "unsupported_contract",
                "the contract is not a record",
            ));
        };
        let Json::Object(object) = data else {
            return Err(refuse(
                "data",
                "wrong_type",
                format!("expected an object, got {}", kind(data)),
            ));
        };
        let mut given: HashMap<&str, Json> = given.into_iter().collect();
        for name in object.keys() {
            let ours = given.contains_key(name.as_str());
            if ours || !record.fields.iter().any(|f| f.name == *name) {
                let why = if ours {
                    "is set by the gateway"
                } else {
                    "is not in the contract"
                };
                return Err(refuse(
                    &format!("data.{name}"),
                    "unknown_field",
                    format!("field `{name}` {why}"),
                ));
            }
        }
        let mut fields = Vec::with_capacity(record.fields.len());
        for field in &record.fields {
            let value = match given.remove(field.name.as_str()) {
                Some(json) => self.value(&field.schema, &json, &field.name)?,
                None => self.field(
                    &field.schema,
                    object.get(&field.name),
                    field.default.as_ref(),
                    &format!("data.{}", field.name),
                )?,
            };
            fields.push((field.name.clone(), value));
        }
        Ok(Value::Record(fields))
    }

    fn field(
        &self,
        schema: &Schema,
        json: Option<&Json>,
        default: Option<&Json>,
        path: &str,
    ) -> Result<Value, FieldError> {
        match (json, default) {
            (Some(json), _) => self.value(schema, json, path),
            (None, Some(default)) => self.value(schema, default, path),
            (None, None) => Err(refuse(path, "missing_field", "required by the contract")),
        }
    }

    fn value(&self, schema: &Schema, json: &Json, path: &str) -> Result<Value, FieldError> {
        let wrong = |expected: &str| {
            refuse(
                path,
                "wrong_type",
                format!("expected {expected}, got {}", kind(json)),
            )
        };
        match schema {
            Schema::Ref { name } => {
                let named = self.names.get(name).ok_or_else(|| {
                    refuse(path, "unsupported_contract", format!("no type {name}"))
                })?;
                self.value(named, json, path)
            }
            Schema::Null => json
                .is_null()
                .then_some(Value::Null)
                .ok_or_else(|| wrong("null")),
            Schema::Boolean => json
                .as_bool()
                .map(Value::Boolean)
                .ok_or_else(|| wrong("a boolean")),
            Schema::Int => json
                .as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .map(Value::Int)
                .ok_or_else(|| wrong("a 32-bit integer")),
            Schema::Long => json
                .as_i64()
                .map(Value::Long)
                .ok_or_else(|| wrong("an integer")),
            Schema::Float => json
                .as_f64()
                .map(|n| Value::Float(n as f32))
                .ok_or_else(|| wrong("a number")),
            Schema::Double => json
                .as_f64()
                .map(Value::Double)
                .ok_or_else(|| wrong("a number")),
            Schema::String => json
                .as_str()
                .map(|s| Value::String(s.to_owned()))
                .ok_or_else(|| wrong("a string")),
            Schema::Uuid(_) => json
                .as_str()
                .map(|s| Value::String(s.to_owned()))
                .ok_or_else(|| wrong("a UUID string")),
            Schema::Enum(enumeration) => {
                let symbol = json.as_str().ok_or_else(|| wrong("a symbol string"))?;
                let index = enumeration
                    .symbols
                    .iter()
                    .position(|s| s == symbol)
                    .ok_or_else(|| {
                        refuse(
                            path,
                            "unknown_symbol",
                            format!(
                                "{symbol:?} is not one of {}",
                                enumeration.symbols.join(", ")
                            ),
                        )
                    })?;
                Ok(Value::Enum(
                    u32::try_from(index).unwrap_or(u32::MAX),
                    symbol.to_owned(),
                ))
            }
            Schema::Union(union) => {
                let variants = union.variants();
                if json.is_null() {
                    let index = variants
                        .iter()
                        .position(|v| *v == Schema::Null)
                        .ok_or_else(|| wrong("a value (the field is not optional)"))?;
                    return Ok(Value::Union(
                        u32::try_from(index).unwrap_or(0),
                        Box::new(Value::Null),
                    ));
                }
                let mut first_error = None;
                for (index, variant) in variants.iter().enumerate() {
                    if *variant == Schema::Null {
                        continue;
                    }
                    match self.value(variant, json, path) {
                        Ok(value) => {
                            return Ok(Value::Union(
                                u32::try_from(index).unwrap_or(0),
                                Box::new(value),
                            ))
                        }
                        Err(err) => {
                            first_error.get_or_insert(err);
                        }
                    }
                }
                Err(first_error.unwrap_or_else(|| wrong("null")))
            }
            Schema::Array(array) => {
                let items = json.as_array().ok_or_else(|| wrong("an array"))?;
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.value(&array.items, item, &format!("{path}[{i}]")))
                    .collect::<Result<_, _>>()
                    .map(Value::Array)
            }
            Schema::Map(map) => {
                let entries = json.as_object().ok_or_else(|| wrong("an object"))?;
                entries
                    .iter()
                    .map(|(k, v)| {
                        Ok((
                            k.clone(),
                            self.value(&map.types, v, &format!("{path}.{k}"))?,
                        ))
                    })
                    .collect::<Result<_, _>>()
                    .map(Value::Map)
            }
            Schema::Record(record) => {
                let object = json.as_object().ok_or_else(|| wrong("an object"))?;
                if let Some(name) = object
                    .keys()
                    .find(|k| !record.fields.iter().any(|f| f.name == **k))
                {
                    return Err(refuse(
                        &format!("{path}.{name}"),
                        "unknown_field",
                        format!("field `{name}` is not in the contract"),
                    ));
                }
                record
                    .fields
                    .iter()
                    .map(|f| {
                        let inner = format!("{path}.{}", f.name);
                        Ok((
                            f.name.clone(),
                            self.field(&f.schema, object.get(&f.name), f.default.as_ref(), &inner)?,
                        ))
                    })
                    .collect::<Result<_, _>>()
                    .map(Value::Record)
            }
            Schema::Decimal(decimal) => {
                let text = json
                    .as_str()
                    .ok_or_else(|| wrong("a decimal string such as \"12.5\""))?;
                let bytes = decimal_bytes(text, decimal.precision, decimal.scale)
                    .map_err(|message| refuse(path, "decimal_out_of_range", message))?;
                Ok(Value::Decimal(Decimal::from(bytes)))
            }
            Schema::TimestampMicros | Schema::TimestampMillis => {
                let text = json
                    .as_str()
                    .ok_or_else(|| wrong("an RFC 3339 timestamp string"))?;
                let micros = rfc3339_micros(text)
                    .map_err(|message| refuse(path, "invalid_timestamp", message))?;
                Ok(match schema {
                    Schema::TimestampMillis => Value::TimestampMillis(micros.div_euclid(1_000)),
                    _ => Value::TimestampMicros(micros),
                })
            }
            Schema::Date => {
                let text = json
                    .as_str()
                    .ok_or_else(|| wrong("a YYYY-MM-DD date string"))?;
                let format = time::macros::format_description!("[year]-[month]-[day]");
                let date = time::Date::parse(text, &format)
                    .map_err(|e| refuse(path, "invalid_date", format!("{text:?}: {e}")))?;
                // 2,440,588 is the Julian day of 1970-01-01.
                Ok(Value::Date(date.to_julian_day() - 2_440_588))
            }
            other => Err(refuse(
                path,
                "unsupported_type",
                format!("fields of Avro type {other:?} are not taken over JSON"),
            )),
        }
    }
}

/// Microseconds since the epoch of an RFC 3339 timestamp (any offset).
pub fn rfc3339_micros(text: &str) -> Result<i64, String> {
    let at = OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|e| format!("{text:?} is not RFC 3339: {e}"))?;
    i64::try_from(at.unix_timestamp_nanos().div_euclid(1_000))
        .map_err(|_| format!("{text:?} is out of range"))
}

/// The big-endian two's-complement bytes of decimal `text` at `scale`, if it has at most
/// `scale` fraction digits and `precision` digits in all.
fn decimal_bytes(text: &str, precision: usize, scale: usize) -> Result<Vec<u8>, String> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let is_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !is_digits(whole) || !is_digits(fraction) {
        return Err(format!("{text:?} is not a decimal number"));
    }
    if fraction.len() > scale {
        return Err(format!("{text:?} has more than {scale} decimal places"));
    }
    let unscaled = format!("{whole}{fraction:0<scale$}");
    let significant = unscaled.trim_start_matches('0');
    if significant.len() > precision || significant.len() > 38 {
        let whole_digits = precision - scale;
        return Err(format!(
            "{text:?} does not fit {precision} digits ({whole_digits} before the point, {scale} after)"
        ));
    }
    let magnitude: i128 = if significant.is_empty() {
        0
    } else {
        significant.parse().map_err(|e| format!("{text:?}: {e}"))?
    };
    let value = if negative { -magnitude } else { magnitude };
    let bytes = value.to_be_bytes();
    // The shortest two's complement: drop a leading byte that only repeats the sign.
    let mut start = 0;
    while start < bytes.len() - 1 {
        let (byte, next) = (bytes[start], bytes[start + 1]);
        let redundant = (byte == 0x00 && next & 0x80 == 0) || (byte == 0xff && next & 0x80 != 0);
        if !redundant {
            break;
        }
        start += 1;
    }
    Ok(bytes[start..].to_vec())
}

fn kind(json: &Json) -> &'static str {
    match json {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Schema {
        Schema::parse_str(
            r#"{"type": "record", "name": "R", "fields": [
                {"name": "env", "type": "string"},
                {"name": "id", "type": "string"},
                {"name": "note", "type": ["null", "string"], "default": null},
                {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 6, "scale": 2}},
                {"name": "at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
                {"name": "level", "type": {"type": "enum", "name": "Level", "symbols": ["LOW", "HIGH"]}},
                {"name": "tags", "type": ["null", {"type": "map", "values": "string"}], "default": null}
            ]}"#,
        )
        .expect("schema")
    }

    fn convert(data: Json) -> Result<Value, FieldError> {
        let schema = schema();
        let converter = Converter::new(&schema).expect("converter");
        converter.record(&data, vec![("env", json!("set"))])
    }

    fn valid() -> Json {
        json!({"id": "a", "amount": "-12.5", "at": "2026-12-05T01:00:00+01:00", "level": "HIGH"})
    }

    #[test]
    fn hand_written_json_becomes_the_contract_value() {
        let value = convert(valid()).expect("converted");
        let schema = schema();
        let bytes = backbone_schemas::wire::encode_body(&schema, value.clone()).expect("encodes");
        assert!(!bytes.is_empty());
        let Value::Record(fields) = value else {
            panic!("a record")
        };
        assert_eq!(fields[0], ("env".into(), Value::String("set".into())));
        assert_eq!(
            fields[2].1,
            Value::Union(0, Box::new(Value::Null)),
            "the default"
        );
        assert_eq!(
            fields[3].1,
            Value::Decimal(Decimal::from(vec![0xfb, 0x1e])),
            "-1250"
        );
        assert_eq!(
            fields[4].1,
            Value::TimestampMicros(1_796_428_800_000_000),
            "the offset applied"
        );
        assert_eq!(fields[5].1, Value::Enum(1, "HIGH".into()));
    }

    #[test]
    fn each_bad_field_is_named_with_its_reason() {
        let cases = [
            (json!({"id": "a"}), "data.amount", "missing_field"),
            (json!({"id": 1}), "data.id", "wrong_type"),
            (json!({"amount": 12.5}), "data.amount", "wrong_type"),
            (
                json!({"amount": "10000"}),
                "data.amount",
                "decimal_out_of_range",
            ),
            (
                json!({"amount": "1.001"}),
                "data.amount",
                "decimal_out_of_range",
            ),
            (
                json!({"amount": "1e3"}),
                "data.amount",
                "decimal_out_of_range",
            ),
            (json!({"at": "yesterday"}), "data.at", "invalid_timestamp"),
            (json!({"level": "MEDIUM"}), "data.level", "unknown_symbol"),
            (json!({"tags": {"a": 1}}), "data.tags.a", "wrong_type"),
            (json!({"notes": "x"}), "data.notes", "unknown_field"),
            (json!({"env": "mine"}), "data.env", "unknown_field"),
        ];
        for (patch, path, reason) in cases {
            let mut data = valid();
            for (k, v) in patch.as_object().expect("object") {
                data[k] = v.clone();
            }
            if patch == json!({"id": "a"}) {
                data.as_object_mut().expect("object").remove("amount");
            }
            let err = convert(data).expect_err(path);
            assert_eq!((err.path.as_str(), err.reason), (path, reason), "{err:?}");
        }
        assert_eq!(convert(json!([1])).expect_err("array").reason, "wrong_type");
    }

    #[test]
    fn decimals_take_the_shortest_twos_complement() {
        assert_eq!(decimal_bytes("0", 6, 2), Ok(vec![0]));
        assert_eq!(decimal_bytes("1.28", 6, 2), Ok(vec![0x00, 0x80]));
        assert_eq!(decimal_bytes("-1.28", 6, 2), Ok(vec![0x80]));
        assert_eq!(decimal_bytes("-1.29", 6, 2), Ok(vec![0xff, 0x7f]));
        assert_eq!(decimal_bytes("9999.99", 6, 2), Ok(vec![0x0f, 0x42, 0x3f]));
        assert!(decimal_bytes("-", 6, 2).is_err());
        assert!(decimal_bytes(".", 6, 2).is_err());
    }
}
