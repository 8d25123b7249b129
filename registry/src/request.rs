//! What the API reads from a request, parsed and validated without HTTP or the store: request
//! bodies, schema text and path segments. Every function here takes untrusted bytes or text
//! and answers with the Confluent error the endpoint returns, never a panic (the `fuzz/`
//! target `registry_request` calls them with arbitrary input).

use apache_avro::Schema;
use backbone_compat::CompatibilityMode;
use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;

/// Body of register, lookup and compatibility requests.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SchemaRequest {
    /// The schema, as JSON text inside the JSON body.
    pub schema: String,
    /// `AVRO` when given; the only type this registry takes.
    #[serde(default)]
    pub schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Value>,
}

/// Parses the body of a register, lookup or compatibility request: 400 when it is not that
/// JSON, 42201 when it uses schema references.
pub fn parse_schema_request(body: &[u8]) -> Result<SchemaRequest, ApiError> {
    let request: SchemaRequest =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(&e.to_string()))?;
    if !request.references.is_empty() {
        return Err(ApiError::invalid_schema(
            "schema references are not supported by this registry; register self-contained schemas",
        ));
    }
    Ok(request)
}

/// A schema parsed from a request.
#[derive(Debug, Clone)]
pub struct ParsedSchema {
    /// Its identity: the parsed schema written back out with every name fully qualified and
    /// keys sorted, so the same schema spelled differently gets the same id.
    pub canonical: String,
    /// The parsed schema.
    pub schema: Schema,
}

/// Parses the schema text of a request of `schema_type`; 42201 when the type is not Avro or
/// the text is not a valid Avro schema.
pub fn parse_schema(text: &str, schema_type: Option<&str>) -> Result<ParsedSchema, ApiError> {
    if let Some(kind) = schema_type {
        if !kind.eq_ignore_ascii_case("AVRO") {
            return Err(ApiError::invalid_schema(&format!(
                "schema type {kind} is not supported by this registry; only AVRO is"
            )));
        }
    }
    let json: Value = serde_json::from_str(text)
        .map_err(|e| ApiError::invalid_schema(&format!("not JSON: {e}")))?;
    // apache-avro 0.22 panics on some schemas instead of refusing them: explaining an invalid
    // default, it takes the canonical form of the field's type, which panics on attributes
    // named like keywords (`"symbols": null` on a field). Found by the `registry_request`
    // fuzz target; a panic is a refusal here.
    let schema = std::panic::catch_unwind(|| Schema::parse(&json))
        .map_err(|_| {
            ApiError::invalid_schema(
                "the Avro parser failed on it; look for attributes named like Avro keywords \
                 (symbols, size, items, values) with values of another kind",
            )
        })?
        .map_err(|e| ApiError::invalid_schema(&e.to_string()))?;
    // As Confluent's registry does: whitespace, key order and a namespace left to be inherited
    // do not make a different schema.
    let canonical = serde_json::to_value(&schema)
        .map(|normalised| normalised.to_string())
        .unwrap_or_else(|_| json.to_string());
    Ok(ParsedSchema { canonical, schema })
}

/// Parses a register request body down to its schema: [`parse_schema_request`], then
/// [`parse_schema`].
pub fn parse_register_request(body: &[u8]) -> Result<ParsedSchema, ApiError> {
    let request = parse_schema_request(body)?;
    parse_schema(&request.schema, request.schema_type.as_deref())
}

#[derive(Debug, Deserialize)]
struct ConfigRequest {
    compatibility: String,
}

/// Parses the body of `PUT /config` or `PUT /config/{subject}`: 400 when it is not that
/// JSON, 42203 when the level is not one of Confluent's, in any case.
pub fn parse_compatibility_request(body: &[u8]) -> Result<CompatibilityMode, ApiError> {
    let request: ConfigRequest =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(&e.to_string()))?;
    request
        .compatibility
        .to_ascii_uppercase()
        .parse()
        .map_err(|_| ApiError::invalid_compatibility_level(&request.compatibility))
}

/// Parses the `{id}` path segment of `/schemas/ids/{id}`; an id that is not a `u32` is a
/// schema not found (40403), as with Confluent.
pub fn parse_schema_id(text: &str) -> Result<u32, ApiError> {
    text.parse()
        .map_err(|_| ApiError::schema_not_found(&format!("id {text}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORD: &str =
        r#"{"type":"record","name":"R","namespace":"n","fields":[{"name":"a","type":"long"}]}"#;

    fn body(schema: &str, extra: &str) -> Vec<u8> {
        format!(
            r#"{{"schema":{}{extra}}}"#,
            Value::String(schema.to_owned())
        )
        .into_bytes()
    }

    #[test]
    fn register_requests_parse_to_their_canonical_schema() {
        let parsed = parse_register_request(&body(RECORD, "")).expect("valid request");
        // The same schema spelled differently (spaces, namespace in the name) is the same.
        let respelled =
            r#"{ "name": "n.R", "type": "record", "fields": [ {"type": "long", "name": "a"} ] }"#;
        let again = parse_register_request(&body(respelled, r#","schemaType":"avro""#))
            .expect("valid request");
        assert_eq!(parsed.canonical, again.canonical);
        assert_eq!(parsed.schema, again.schema);
    }

    #[test]
    fn bad_bodies_get_confluent_codes() {
        let code = |result: Result<ParsedSchema, ApiError>| result.expect_err("refused").code;
        assert_eq!(code(parse_register_request(b"")), 400);
        assert_eq!(code(parse_register_request(b"{\"schema\": 1}")), 400);
        assert_eq!(code(parse_register_request(&[0xff, 0xfe])), 400);
        assert_eq!(code(parse_register_request(&body("{not json", ""))), 42201);
        assert_eq!(
            code(parse_register_request(&body(r#"{"type":"nope"}"#, ""))),
            42201
        );
        assert_eq!(
            code(parse_register_request(&body(
                RECORD,
                r#","schemaType":"PROTOBUF""#
            ))),
            42201
        );
        assert_eq!(
            code(parse_register_request(&body(
                RECORD,
                r#","references":[{"name":"x","subject":"s","version":1}]"#
            ))),
            42201
        );
    }

    #[test]
    fn a_schema_the_avro_parser_panics_on_is_refused() {
        // Reduced from fuzz/artifacts/registry_request/crash-8011c64e…: an invalid default of
        // a field whose type has a field carrying `"symbols": null`.
        let schema = r#"{"type":"record","name":"R","fields":[{"name":"a","default":1,"type":{"type":"record","name":"S","fields":[{"name":"x","type":"string","symbols":null}]}}]}"#;
        let refused = parse_register_request(&body(schema, "")).expect_err("refused");
        assert_eq!(refused.code, 42201, "{}", refused.message);
    }

    #[test]
    fn compatibility_levels_and_ids_parse_or_are_refused() {
        assert_eq!(
            parse_compatibility_request(br#"{"compatibility":"full_transitive"}"#),
            Ok(CompatibilityMode::FullTransitive)
        );
        let code = |body: &[u8]| parse_compatibility_request(body).expect_err("refused").code;
        assert_eq!(code(br#"{"compatibility":"SIDEWAYS"}"#), 42203);
        assert_eq!(code(br#"{"level":"FULL"}"#), 400);
        assert_eq!(code(b"\xff"), 400);
        assert_eq!(parse_schema_id("42"), Ok(42));
        for bad in ["", "-1", "4294967296", "1e3", " 7"] {
            assert_eq!(parse_schema_id(bad).expect_err(bad).code, 40403, "{bad}");
        }
    }
}
