//! A sandbox served in-process on a free port, and the parts of its answers the tests read.

// Each test file is its own crate and reads only part of this.
#![allow(dead_code)]

use backbone_sandbox::{serve, SandboxClient, SandboxConfig};
use reqwest::RequestBuilder;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The token the sandbox starts with.
pub const TOKEN: &str = "sandbox-token";

/// A sandbox serving until dropped.
pub struct Running {
    pub base: String,
    pub http: reqwest::Client,
    pub client: SandboxClient,
    _stop: oneshot::Sender<()>,
}

/// The parts of an answer the tests look at.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub replayed: bool,
    pub body: Value,
}

impl Answer {
    pub fn code(&self) -> &str {
        let error = &self.body["error"];
        error["code"]
            .as_str()
            .or_else(|| self.body["errors"][0]["code"].as_str())
            .unwrap_or_default()
    }

    pub fn message(&self) -> String {
        self.body.to_string()
    }
}

pub async fn start(config: SandboxConfig) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("local address"));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(serve(listener, config, async move {
        let _ = stopped.await;
    }));
    Running {
        client: SandboxClient::new(&base),
        http: reqwest::Client::new(),
        base,
        _stop: stop,
    }
}

impl Running {
    pub fn post(&self, path: &str, body: &Value) -> RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .json(body)
    }

    pub async fn send(&self, request: RequestBuilder) -> Answer {
        let response = request.send().await.expect("the sandbox answers");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let retry_after = header("retry-after");
        let replayed = header("idempotent-replayed").as_deref() == Some("true");
        let status = response.status().as_u16();
        let text = response.text().await.expect("a body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer {
            status,
            retry_after,
            replayed,
            body,
        }
    }
}
