//! Starts registry instances in-process on 127.0.0.1:0 against the shared test broker.

// Test support: panicking on a broken test setup is the right failure.
#![allow(dead_code, clippy::unwrap_used)]

use backbone_registry::{LocalRegistry, RegistryConfig};
use backbone_testkit::shared_settings;
use reqwest::{Client, Response};
use serde_json::Value;

pub const MEDIA_TYPE: &str = "application/vnd.schemaregistry.v1+json";

pub struct TestRegistry {
    pub url: String,
    pub client: Client,
    local: Option<LocalRegistry>,
}

impl TestRegistry {
    /// A registry over `topic` (give each test its own) on a free 127.0.0.1 port.
    pub async fn start(topic: &str) -> Self {
        Self::start_with(RegistryConfig::ephemeral(shared_settings(), topic)).await
    }

    /// A registry of `config`.
    pub async fn start_with(config: RegistryConfig) -> Self {
        let local = LocalRegistry::start(&config)
            .await
            .expect("registry starts");
        Self {
            url: local.url().to_owned(),
            client: Client::new(),
            local: Some(local),
        }
    }

    pub async fn stop(mut self) {
        if let Some(local) = self.local.take() {
            local.stop().await.expect("registry stops cleanly");
        }
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
    }

    pub async fn delete(&self, path: &str) -> Response {
        self.client
            .delete(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
    }

    pub async fn post(&self, path: &str, body: Value) -> Response {
        self.client
            .post(format!("{}{path}", self.url))
            .header("content-type", MEDIA_TYPE)
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    pub async fn put(&self, path: &str, body: Value) -> Response {
        self.client
            .put(format!("{}{path}", self.url))
            .header("content-type", MEDIA_TYPE)
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    /// Registers `schema` under `subject`, expecting success; returns the id.
    pub async fn register(&self, subject: &str, schema: &Value) -> u64 {
        let response = self
            .post(
                &format!("/subjects/{subject}/versions"),
                serde_json::json!({ "schema": schema.to_string() }),
            )
            .await;
        let (status, body) = read(response).await;
        assert_eq!(status, 200, "register {subject}: {body}");
        body["id"].as_u64().unwrap()
    }
}

/// Status and JSON body, checking the media type.
pub async fn read(response: Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let media = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(media.as_deref(), Some(MEDIA_TYPE), "content type");
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// Asserts an error answer: status, Confluent error code, and a message.
pub async fn expect_error(response: Response, status: u16, code: u64) -> String {
    let (got, body) = read(response).await;
    assert_eq!(got, status, "{body}");
    assert_eq!(body["error_code"].as_u64(), Some(code), "{body}");
    let message = body["message"].as_str().unwrap_or_default().to_owned();
    assert!(!message.is_empty(), "{body}");
    message
}
