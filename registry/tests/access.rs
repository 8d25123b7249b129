//! Who may do what, and the limits every request passes, on a registry with a users file.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::PathBuf;
use std::time::Duration;

use backbone_core::https::TlsFiles;
use backbone_registry::users::hash_password;
use backbone_registry::RegistryConfig;
use backbone_schemas::RegistryClient;
use backbone_testkit::{shared_settings, unique_topic};
use serde_json::json;
use support::{expect_error, read, TestRegistry, MEDIA_TYPE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const USERS: [(&str, &str, &str); 3] = [
    ("reader", "read", "reader-pw"),
    ("writer", "write", "writer-pw"),
    ("boss", "admin", "boss:pw"),
];

fn users_file() -> PathBuf {
    let dir = std::env::temp_dir().join(unique_topic("registry-users"));
    std::fs::create_dir_all(&dir).unwrap();
    let lines: Vec<String> = USERS
        .iter()
        .map(|(name, role, password)| format!("{name}:{role}:{}", hash_password(password).unwrap()))
        .collect();
    let path = dir.join("users");
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

fn guarded(topic: &str) -> RegistryConfig {
    let mut config = RegistryConfig::ephemeral(shared_settings(), topic);
    config.registry.anonymous = false;
    config.registry.users_file = Some(users_file());
    config
}

fn schema() -> String {
    json!({"type": "record", "name": "Seen", "fields": [{"name": "id", "type": "string"}]})
        .to_string()
}

/// A request as `user` (password from [`USERS`]), or anonymous.
fn request(
    registry: &TestRegistry,
    user: Option<&str>,
    method: reqwest::Method,
    path: &str,
) -> reqwest::RequestBuilder {
    let request = registry
        .client
        .request(method, format!("{}{path}", registry.url))
        .header("content-type", MEDIA_TYPE);
    match user {
        Some(user) => {
            let (_, _, password) = USERS.iter().find(|(name, ..)| *name == user).unwrap();
            request.basic_auth(user, Some(password))
        }
        None => request,
    }
}

#[tokio::test]
async fn each_role_does_what_it_may_and_no_more() {
    let registry = TestRegistry::start_with(guarded(&unique_topic("schemas"))).await;
    let register = |user| {
        request(
            &registry,
            user,
            reqwest::Method::POST,
            "/subjects/a-value/versions",
        )
        .body(json!({ "schema": schema() }).to_string())
    };

    // Nobody anonymous, except the liveness probe.
    let anonymous = request(&registry, None, reqwest::Method::GET, "/subjects")
        .send()
        .await
        .unwrap();
    assert_eq!(
        anonymous.headers()["www-authenticate"],
        "Basic realm=\"schema-registry\""
    );
    expect_error(anonymous, 401, 40101).await;
    let health = request(&registry, None, reqwest::Method::GET, "/health");
    assert_eq!(health.send().await.unwrap().status(), 200);
    let wrong = registry
        .client
        .get(format!("{}/subjects", registry.url))
        .basic_auth("writer", Some("reader-pw"))
        .send()
        .await
        .unwrap();
    let message = expect_error(wrong, 401, 40101).await;
    assert!(!message.contains("reader-pw"), "{message}");

    // read: reads, but registers nothing.
    let message = expect_error(register(Some("reader")).send().await.unwrap(), 403, 40301).await;
    assert!(message.contains("needs write"), "{message}");
    // write: registers and tests compatibility, but neither deletes nor changes modes.
    let (status, body) = read(register(Some("writer")).send().await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = read(
        request(&registry, Some("reader"), reqwest::Method::GET, "/subjects")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body), (200, json!(["a-value"])));
    let compatibility = request(
        &registry,
        Some("writer"),
        reqwest::Method::POST,
        "/compatibility/subjects/a-value/versions/latest",
    )
    .body(json!({ "schema": schema() }).to_string());
    assert_eq!(compatibility.send().await.unwrap().status(), 200);
    for (method, path) in [
        (reqwest::Method::PUT, "/config"),
        (reqwest::Method::DELETE, "/subjects/a-value"),
    ] {
        let response = request(&registry, Some("writer"), method.clone(), path)
            .body(json!({"compatibility": "NONE"}).to_string())
            .send()
            .await
            .unwrap();
        expect_error(response, 403, 40301).await;
    }
    let (status, body) = read(
        request(&registry, Some("reader"), reqwest::Method::GET, "/config")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body["compatibilityLevel"], "BACKWARD",
        "writer changed nothing"
    );

    // admin: everything, with a password that holds a colon.
    let config = request(&registry, Some("boss"), reqwest::Method::PUT, "/config")
        .body(json!({"compatibility": "FULL"}).to_string());
    assert_eq!(config.send().await.unwrap().status(), 200);
    let delete = request(
        &registry,
        Some("boss"),
        reqwest::Method::DELETE,
        "/subjects/a-value",
    );
    assert_eq!(delete.send().await.unwrap().status(), 200);
    registry.stop().await;
}

#[tokio::test]
async fn the_registry_client_sends_credentials_from_the_url_or_settings() {
    let registry = TestRegistry::start_with(guarded(&unique_topic("schemas"))).await;
    let anonymous = RegistryClient::new(registry.url.as_str(), Duration::from_secs(10));
    let refused = anonymous.register("c-value", &schema()).await.unwrap_err();
    assert_eq!(refused.status(), Some(401), "{refused}");

    let in_url = registry.url.replace("http://", "http://writer:writer-pw@");
    let client = RegistryClient::new(in_url.as_str(), Duration::from_secs(10));
    assert_eq!(client.url(), registry.url, "the URL kept holds no password");
    let id = client.register("c-value", &schema()).await.unwrap();

    let dir = std::env::temp_dir().join(unique_topic("registry-password"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("password"), "reader-pw\n").unwrap();
    let settings = backbone_core::schema_registry::SchemaRegistrySettings {
        username: Some("reader".to_owned()),
        password_file: Some(dir.join("password")),
        ..backbone_core::schema_registry::SchemaRegistrySettings::at(&registry.url)
    };
    let client = RegistryClient::new(settings.access().unwrap(), Duration::from_secs(10));
    let latest = client.latest("c-value").await.unwrap().unwrap();
    assert_eq!(latest.id, id);
    registry.stop().await;
}

#[tokio::test]
async fn a_permanent_delete_wants_force() {
    let registry = TestRegistry::start(&unique_topic("schemas")).await;
    let id = registry
        .register("p-value", &serde_json::from_str(&schema()).unwrap())
        .await;
    assert_eq!(registry.delete("/subjects/p-value").await.status(), 200);
    let message = expect_error(
        registry.delete("/subjects/p-value?permanent=true").await,
        409,
        40910,
    )
    .await;
    assert!(message.contains("force=true"), "{message}");
    // The id still resolves: records written with it still decode.
    let (status, _) = read(registry.get(&format!("/schemas/ids/{id}")).await).await;
    assert_eq!(status, 200);
    expect_error(
        registry
            .delete("/subjects/p-value/versions/1?permanent=true")
            .await,
        409,
        40910,
    )
    .await;
    let forced = registry
        .delete("/subjects/p-value?permanent=true&force=true")
        .await;
    assert_eq!(forced.status(), 200);
    expect_error(
        registry.get(&format!("/schemas/ids/{id}")).await,
        404,
        40403,
    )
    .await;
    registry.stop().await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_unread() {
    let mut config = RegistryConfig::ephemeral(shared_settings(), &unique_topic("schemas"));
    config.registry.max_request_bytes = 4096;
    let registry = TestRegistry::start_with(config).await;
    let big = json!({ "schema": format!("\"{}\"", "x".repeat(5000)) });
    let message = expect_error(
        registry.post("/subjects/b-value/versions", big).await,
        413,
        41301,
    )
    .await;
    assert!(message.contains("4096"), "{message}");
    assert_eq!(registry.get("/subjects").await.status(), 200);
    registry.stop().await;
}

/// A client that sends its headers and then stalls holds a slot until the request timeout;
/// meanwhile a request over the concurrency limit is refused at once, not queued.
#[tokio::test]
async fn a_stalled_request_times_out_and_the_limit_refuses_the_next_meanwhile() {
    let mut config = RegistryConfig::ephemeral(shared_settings(), &unique_topic("schemas"));
    config.registry.max_concurrent_requests = 1;
    config.registry.request_timeout = Duration::from_secs(3);
    let registry = TestRegistry::start_with(config).await;
    let address = registry.url.trim_start_matches("http://").to_owned();
    let mut stalled = tokio::net::TcpStream::connect(&address).await.unwrap();
    stalled
        .write_all(
            b"POST /subjects/s-value/versions HTTP/1.1\r\nhost: registry\r\n\
              content-type: application/json\r\ncontent-length: 100\r\n\r\n{\"sch",
        )
        .await
        .unwrap();

    // The stalled request holds the one slot once the server has read its headers.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let busy = loop {
        let response = registry.get("/subjects").await;
        if response.status() == 429 {
            break response;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no request was refused while one stalled"
        );
        tokio::task::yield_now().await;
    };
    expect_error(busy, 429, 42901).await;

    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(20), stalled.read_to_string(&mut answer))
        .await
        .expect("the stalled request is answered")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("40801"), "{answer}");
    assert_eq!(
        registry.get("/subjects").await.status(),
        200,
        "the slot is free again"
    );
    registry.stop().await;
}

#[tokio::test]
async fn over_https_only_a_client_trusting_the_ca_gets_in() {
    let ca = backbone_testkit::TestCa::new("registry").unwrap();
    let issued = ca.issue("registry").unwrap();
    let mut config = guarded(&unique_topic("schemas"));
    config.registry.tls = Some(TlsFiles {
        cert_file: issued.cert.clone(),
        key_file: issued.key.clone(),
        client_ca_file: None,
    });
    let mut stale = RegistryConfig::ephemeral(shared_settings(), "unused");
    let expired = ca.issue_expired("old-registry").unwrap();
    stale.registry.tls = Some(TlsFiles {
        cert_file: expired.cert.clone(),
        key_file: expired.key.clone(),
        client_ca_file: None,
    });
    let refused = backbone_core::config::Validate::validate(&stale)
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("registry.tls.cert_file") && refused.contains("expired on"),
        "{refused}"
    );

    let registry = TestRegistry::start_with(config).await;
    assert!(registry.url.starts_with("https://"), "{}", registry.url);

    let settings =
        |ca_file: Option<PathBuf>| backbone_core::schema_registry::SchemaRegistrySettings {
            url: registry
                .url
                .replace("https://", "https://writer:writer-pw@"),
            ca_file,
            ..Default::default()
        };
    let trusting = RegistryClient::new(
        settings(Some(ca.cert())).access().unwrap(),
        Duration::from_secs(10),
    );
    trusting.register("t-value", &schema()).await.unwrap();

    let untrusting = RegistryClient::new(settings(None).access().unwrap(), Duration::from_secs(10));
    let refused = untrusting.subjects().await.unwrap_err();
    assert!(
        refused.to_string().to_lowercase().contains("certificate"),
        "{refused}"
    );

    // A client that connects and never starts its handshake is let go (after 10 s).
    let address = registry.url.trim_start_matches("https://").to_owned();
    let mut silent = tokio::net::TcpStream::connect(&address).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(30), silent.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "a silent client still held: {closed:?}"
    );
    registry.stop().await;
}
