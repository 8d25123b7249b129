//! `replay orders serve`: the approval queue over HTTP, for the tools approvers already use.
//! The same reads and decisions as the CLI (one implementation, one audit), behind a bearer
//! token per approver; the approver a token belongs to is who decided.
//!
//! - `GET /v1/orders/pending[?tenant=T]`: the waiting revisions, oldest first.
//! - `POST /v1/orders/{tenant}/{order}/approve` and `.../reject`, body
//!   `{"revision": 2, "reason": "..."}` (a reason is required to reject).
//! - `GET /health`.
//!
//! Errors answer `{"error": <code>, "message": <what and why>}`: 401 without a known token,
//! 422 for a body that does not say what to decide, 409 for a revision not waiting, 503 when
//! the broker or the registry does not answer.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use backbone_core::Secret;
use backbone_schemas::types::ApprovalDecision;
use clap::Args;
use rdkafka::producer::FutureProducer;
use serde::Deserialize;
use serde_json::json;

use super::{decide, pending, Decision, OrderTopics};
use crate::error::ReplayError;
use crate::Context;

pub(super) const EXAMPLES: &str = "\
Examples:
  # One approver per line: a name, then the token that approver sends (file mode 0600)
  printf 'j.doe %s\\n' \"$(openssl rand -hex 24)\" > approvers; chmod 600 approvers
  replay orders serve --listen 127.0.0.1:8095 --approvers-file approvers

  curl -H \"Authorization: Bearer $TOKEN\" http://127.0.0.1:8095/v1/orders/pending
  curl -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' \\
    -d '{\"revision\": 2, \"reason\": \"discount above policy\"}' \\
    http://127.0.0.1:8095/v1/orders/acme/ord-7/reject";

/// Shortest token taken: a guessable token would let anyone approve an order.
const MIN_TOKEN_CHARS: usize = 16;

/// `replay orders serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free one; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8095")]
    pub listen: SocketAddr,
    /// The approvers, one per line: a name and a token (at least 16 characters), separated by
    /// blanks; `#` starts a comment. Read at start; only its owner may read it.
    #[arg(long, env = "BACKBONE_APPROVERS_FILE", value_name = "FILE")]
    pub approvers_file: PathBuf,
    /// The topics.
    #[command(flatten)]
    pub topics: OrderTopics,
}

/// The approvers' tokens, by approver.
struct Approvers(Vec<(String, Secret)>);

impl Approvers {
    /// Reads `path`, refusing a file others may read, a malformed line, a short or shared
    /// token, and a file naming nobody.
    fn load(path: &Path) -> Result<Self, ReplayError> {
        let shown = path.display().to_string();
        let invalid = |expected: String| ReplayError::invalid("--approvers-file", &shown, expected);
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid(format!("a readable file of approvers ({e})")))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(|e| invalid(format!("a readable file of approvers ({e})")))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(invalid(format!(
                    "a file only its owner can read: it is mode {:o}, and it holds tokens (chmod 600)",
                    mode & 0o777
                )));
            }
        }
        let mut approvers: Vec<(String, Secret)> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(name), Some(token), None) = (words.next(), words.next(), words.next()) else {
                return Err(invalid(format!(
                    "line {}: an approver's name and token, separated by blanks",
                    n + 1
                )));
            };
            if token.chars().count() < MIN_TOKEN_CHARS {
                return Err(invalid(format!(
                    "line {}: a token of at least {MIN_TOKEN_CHARS} characters for `{name}`",
                    n + 1
                )));
            }
            if let Some((other, _)) = approvers.iter().find(|(_, t)| t.expose() == token) {
                return Err(invalid(format!(
                    "line {}: a token of `{name}`'s own; `{other}` has the same one",
                    n + 1
                )));
            }
            approvers.push((name.to_owned(), Secret::new(token)));
        }
        if approvers.is_empty() {
            return Err(invalid("at least one approver".to_owned()));
        }
        Ok(Self(approvers))
    }

    /// The approver whose token `headers` carry.
    fn authenticate(&self, headers: &HeaderMap) -> Option<&str> {
        let presented = headers
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")?;
        self.0
            .iter()
            .find(|(_, token)| same(token.expose().as_bytes(), presented.as_bytes()))
            .map(|(name, _)| name.as_str())
    }
}

/// Equal, in a time that does not tell how much of a token was guessed right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

struct Api {
    ctx: Context,
    topics: OrderTopics,
    approvers: Approvers,
    producer: FutureProducer,
}

/// Serves until Ctrl-C or SIGTERM.
pub(super) async fn serve(
    ctx: &Context,
    args: ServeArgs,
    out: &mut dyn Write,
) -> Result<(), ReplayError> {
    let approvers = Approvers::load(&args.approvers_file)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| ReplayError::invalid("--listen", &args.listen.to_string(), e.to_string()))?;
    let address = listener.local_addr()?;
    let api = Arc::new(Api {
        ctx: ctx.clone(),
        topics: args.topics,
        approvers,
        producer: ctx.producer()?,
    });
    writeln!(
        out,
        "serving the approval queue on http://{address} for {} approver(s)",
        api.approvers.0.len()
    )?;
    out.flush()?;
    let router = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/v1/orders/pending", get(list))
        .route("/v1/orders/{tenant}/{order}/{decision}", post(decide_order))
        .with_state(api);
    axum::serve(listener, router)
        .with_graceful_shutdown(stopped())
        .await?;
    Ok(())
}

async fn stopped() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = ctrl_c => {}
            () = async {
                match term.as_mut() {
                    Some(term) => { term.recv().await; }
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn refuse(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let mut response = (
        status,
        Json(json!({ "error": code, "message": message.into() })),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

fn unauthorized() -> Response {
    refuse(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "missing or unknown bearer token",
    )
}

/// A failure of the backbone behind the API, as an answer.
fn failed(err: &ReplayError) -> Response {
    match err {
        ReplayError::NotWaiting { .. } => {
            refuse(StatusCode::CONFLICT, "not_waiting", err.to_string())
        }
        ReplayError::BrokerUnreachable { .. }
        | ReplayError::RegistryUnreachable { .. }
        | ReplayError::Kafka { .. } => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            err.to_string(),
        ),
        _ => refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            err.to_string(),
        ),
    }
}

async fn list(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    if api.approvers.authenticate(&headers).is_none() {
        return unauthorized();
    }
    if let Some(unknown) = query.keys().find(|k| k.as_str() != "tenant") {
        return refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_query",
            format!("unknown query parameter `{unknown}`: only `tenant` filters the queue"),
        );
    }
    match pending(
        &api.ctx,
        &api.topics.status_topic,
        query.get("tenant").map(String::as_str),
    )
    .await
    {
        Ok(waiting) => Json(waiting).into_response(),
        Err(err) => failed(&err),
    }
}

/// What a decision's body says.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    revision: i32,
    #[serde(default)]
    reason: Option<String>,
}

async fn decide_order(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    UrlPath((tenant, order_id, decision)): UrlPath<(String, String, String)>,
    body: Bytes,
) -> Response {
    let Some(by) = api.approvers.authenticate(&headers) else {
        return unauthorized();
    };
    let decision = match decision.as_str() {
        "approve" => ApprovalDecision::Approve,
        "reject" => ApprovalDecision::Reject,
        other => {
            return refuse(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no decision `{other}`: `approve` or `reject`"),
            )
        }
    };
    let body: DecisionBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => {
            return refuse(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                format!("request body: {e}; expected {{\"revision\": <int>, \"reason\": <text>}}"),
            )
        }
    };
    let reason = body.reason.filter(|r| !r.trim().is_empty());
    if decision == ApprovalDecision::Reject && reason.is_none() {
        return refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            "request body: `reason` is required to reject: the sales platform and the audit show it",
        );
    }
    let decision = Decision {
        tenant,
        order_id,
        revision: body.revision,
        decision,
        by: by.to_owned(),
        reason,
    };
    match decide(&api.ctx, &api.producer, &api.topics, &decision).await {
        Ok(decided) => {
            // Told as the CLI tells it; the audit topic keeps it.
            let _ = writeln!(
                std::io::stdout().lock(),
                "{}d order `{}` revision {} by {}",
                decided.decision,
                decided.order,
                decided.revision,
                decided.by
            );
            Json(decided).into_response()
        }
        Err(err) => failed(&err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str, mode: u32) -> PathBuf {
        let path = std::env::temp_dir().join(format!("approvers-{}-{name}", std::process::id()));
        std::fs::write(&path, text).expect("write");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("mode");
        }
        path
    }

    fn refusal(name: &str, text: &str, mode: u32) -> String {
        match Approvers::load(&file(name, text, mode)) {
            Ok(_) => panic!("{name} was taken"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn a_token_names_its_approver_and_nothing_else_passes() {
        let approvers = Approvers::load(&file(
            "good",
            "# approvers\nj.doe  0123456789abcdef0123\n\nm.roe fedcba9876543210fedc # sales ops\n",
            0o600,
        ))
        .expect("approvers");
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().expect("header"));
            headers
        };
        assert_eq!(
            approvers.authenticate(&with("Bearer fedcba9876543210fedc")),
            Some("m.roe")
        );
        for refused in [
            "Bearer fedcba9876543210fed",
            "Bearer fedcba9876543210fedcX",
            "fedcba9876543210fedc",
            "Basic fedcba9876543210fedc",
        ] {
            assert_eq!(approvers.authenticate(&with(refused)), None, "{refused}");
        }
        assert_eq!(approvers.authenticate(&HeaderMap::new()), None);
    }

    #[test]
    fn a_file_others_can_read_or_a_bad_line_is_refused_naming_it() {
        let said = refusal("open", "j.doe 0123456789abcdef0123\n", 0o644);
        assert!(
            said.contains("--approvers-file") && said.contains("mode 644"),
            "{said}"
        );
        let said = refusal("short", "j.doe short\n", 0o600);
        assert!(
            said.contains("line 1") && said.contains("at least 16"),
            "{said}"
        );
        let said = refusal("alone", "\nj.doe\n", 0o600);
        assert!(
            said.contains("line 2") && said.contains("name and token"),
            "{said}"
        );
        let said = refusal(
            "shared",
            "a 0123456789abcdef0123\nb 0123456789abcdef0123\n",
            0o600,
        );
        assert!(
            said.contains("line 2") && said.contains("`a` has the same"),
            "{said}"
        );
        let said = refusal("empty", "# nobody yet\n", 0o600);
        assert!(said.contains("at least one approver"), "{said}");
    }
}
