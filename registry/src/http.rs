//! The REST API, shaped like Confluent Schema Registry's as its clients use it.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use crate::error::{ApiError, CONTENT_TYPE};
use crate::request::{parse_compatibility_request, parse_register_request, parse_schema_id};
use crate::service::{Registered, Registry, VersionRef};

type Shared = State<Arc<Registry>>;
type Params = Query<HashMap<String, String>>;
type ApiResult = Result<Response, ApiError>;

/// All routes over one registry.
pub fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/", get(|| async { reply(json!({})) }))
        .route("/health", get(|| async { reply(json!({"status": "UP"})) }))
        .route("/schemas/types", get(|| async { reply(json!(["AVRO"])) }))
        .route(
            "/mode",
            get(|| async { reply(json!({"mode": "READWRITE"})) }),
        )
        .route("/subjects", get(list_subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route(
            "/subjects/{subject}/versions",
            get(list_versions).post(register),
        )
        .route(
            "/subjects/{subject}/versions/{version}",
            get(get_version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(get_version_schema),
        )
        .route(
            "/subjects/{subject}/versions/{version}/referencedby",
            get(referenced_by),
        )
        .route("/schemas/ids/{id}", get(get_schema))
        .route("/schemas/ids/{id}/schema", get(get_schema_text))
        .route("/schemas/ids/{id}/versions", get(get_id_versions))
        .route("/schemas/ids/{id}/subjects", get(get_id_subjects))
        .route("/config", get(get_global_config).put(put_global_config))
        .route(
            "/config/{subject}",
            get(get_subject_config)
                .put(put_subject_config)
                .delete(delete_subject_config),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(test_compatibility),
        )
        .fallback(|| async { ApiError::no_route() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .with_state(registry)
}

fn reply(body: Value) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], body.to_string()).into_response()
}

fn flag(params: &HashMap<String, String>, name: &str) -> bool {
    params
        .get(name)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

fn version_body(r: &Registered) -> Value {
    json!({"subject": r.subject, "version": r.version, "id": r.id, "schema": r.schema})
}

async fn list_subjects(State(registry): Shared, Query(params): Params) -> ApiResult {
    Ok(reply(json!(
        registry.subjects(flag(&params, "deleted")).await?
    )))
}

async fn list_versions(
    State(registry): Shared,
    Path(subject): Path<String>,
    Query(params): Params,
) -> ApiResult {
    let versions = registry
        .versions(&subject, flag(&params, "deleted"))
        .await?;
    Ok(reply(json!(versions)))
}

async fn get_version(
    State(registry): Shared,
    Path((subject, version)): Path<(String, String)>,
    Query(params): Params,
) -> ApiResult {
    let version = VersionRef::parse(&version)?;
    let found = registry
        .version(&subject, version, flag(&params, "deleted"))
        .await?;
    Ok(reply(version_body(&found)))
}

async fn get_version_schema(
    State(registry): Shared,
    Path((subject, version)): Path<(String, String)>,
    Query(params): Params,
) -> ApiResult {
    let version = VersionRef::parse(&version)?;
    let found = registry
        .version(&subject, version, flag(&params, "deleted"))
        .await?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], found.schema).into_response())
}

async fn referenced_by(
    State(registry): Shared,
    Path((subject, version)): Path<(String, String)>,
) -> ApiResult {
    let version = VersionRef::parse(&version)?;
    registry.version(&subject, version, false).await?;
    // Schema references are not supported, so nothing refers to anything.
    Ok(reply(json!([])))
}

async fn register(State(registry): Shared, Path(subject): Path<String>, body: Bytes) -> ApiResult {
    let schema = parse_register_request(&body)?;
    let id = registry.register(&subject, &schema).await?;
    Ok(reply(json!({ "id": id })))
}

async fn lookup(
    State(registry): Shared,
    Path(subject): Path<String>,
    Query(params): Params,
    body: Bytes,
) -> ApiResult {
    let schema = parse_register_request(&body)?;
    let found = registry
        .lookup(&subject, &schema, flag(&params, "deleted"))
        .await?;
    Ok(reply(version_body(&found)))
}

async fn delete_subject(
    State(registry): Shared,
    Path(subject): Path<String>,
    Query(params): Params,
) -> ApiResult {
    let permanent = flag(&params, "permanent");
    if permanent && !flag(&params, "force") {
        return Err(ApiError::permanent_delete_unforced(&format!(
            "subject '{subject}'"
        )));
    }
    let versions = registry.delete_subject(&subject, permanent).await?;
    Ok(reply(json!(versions)))
}

async fn delete_version(
    State(registry): Shared,
    Path((subject, version)): Path<(String, String)>,
    Query(params): Params,
) -> ApiResult {
    let permanent = flag(&params, "permanent");
    if permanent && !flag(&params, "force") {
        return Err(ApiError::permanent_delete_unforced(&format!(
            "subject '{subject}' version {version}"
        )));
    }
    let version = VersionRef::parse(&version)?;
    let deleted = registry
        .delete_version(&subject, version, permanent)
        .await?;
    Ok(reply(json!(deleted)))
}

async fn get_schema(State(registry): Shared, Path(id): Path<String>) -> ApiResult {
    let schema = registry.schema_by_id(parse_schema_id(&id)?).await?;
    Ok(reply(json!({ "schema": schema })))
}

async fn get_schema_text(State(registry): Shared, Path(id): Path<String>) -> ApiResult {
    let schema = registry.schema_by_id(parse_schema_id(&id)?).await?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], schema).into_response())
}

async fn get_id_versions(State(registry): Shared, Path(id): Path<String>) -> ApiResult {
    let usages = registry.usages_of(parse_schema_id(&id)?).await?;
    let body: Vec<Value> = usages
        .iter()
        .map(|(subject, version)| json!({"subject": subject, "version": version}))
        .collect();
    Ok(reply(json!(body)))
}

async fn get_id_subjects(State(registry): Shared, Path(id): Path<String>) -> ApiResult {
    let mut subjects: Vec<String> = registry
        .usages_of(parse_schema_id(&id)?)
        .await?
        .into_iter()
        .map(|(subject, _)| subject)
        .collect();
    subjects.dedup();
    Ok(reply(json!(subjects)))
}

async fn get_global_config(State(registry): Shared) -> ApiResult {
    let mode = registry.global_mode().await?;
    Ok(reply(json!({ "compatibilityLevel": mode.to_string() })))
}

async fn put_global_config(State(registry): Shared, body: Bytes) -> ApiResult {
    let mode = parse_compatibility_request(&body)?;
    registry.set_mode(None, Some(mode)).await?;
    Ok(reply(json!({ "compatibility": mode.to_string() })))
}

async fn get_subject_config(
    State(registry): Shared,
    Path(subject): Path<String>,
    Query(params): Params,
) -> ApiResult {
    let mode = registry
        .subject_mode(&subject, flag(&params, "defaultToGlobal"))
        .await?;
    Ok(reply(json!({ "compatibilityLevel": mode.to_string() })))
}

async fn put_subject_config(
    State(registry): Shared,
    Path(subject): Path<String>,
    body: Bytes,
) -> ApiResult {
    let mode = parse_compatibility_request(&body)?;
    registry.set_mode(Some(&subject), Some(mode)).await?;
    Ok(reply(json!({ "compatibility": mode.to_string() })))
}

async fn delete_subject_config(State(registry): Shared, Path(subject): Path<String>) -> ApiResult {
    let previous = registry.subject_mode(&subject, false).await?;
    registry.set_mode(Some(&subject), None).await?;
    Ok(reply(json!({ "compatibilityLevel": previous.to_string() })))
}

async fn test_compatibility(
    State(registry): Shared,
    Path((subject, version)): Path<(String, String)>,
    Query(params): Params,
    body: Bytes,
) -> ApiResult {
    let version = VersionRef::parse(&version)?;
    let schema = parse_register_request(&body)?;
    let result = registry
        .test_compatibility(&subject, version, &schema)
        .await?;
    let body = if flag(&params, "verbose") {
        json!({"is_compatible": result.is_compatible, "messages": result.messages})
    } else {
        json!({"is_compatible": result.is_compatible})
    };
    Ok(reply(body))
}
