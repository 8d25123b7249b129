//! The deployment files, checked without a Docker engine: `docker-compose.yml`, the
//! `Dockerfile`, the binaries' configs in `deploy/config/`, Prometheus's config and rules, and
//! Grafana's provisioning and dashboards.
//!
//! - every image is pinned, and the backbone binaries share one image built here;
//! - every address a service is given (bootstrap servers, registry and destination URLs,
//!   scrape targets, the Grafana datasource) names a compose service on a port it exposes,
//!   and the service waits for the one it names to be healthy;
//! - secrets travel as files, config files and mounts exist;
//! - each binary's config file loads through that binary's own config loader, with the
//!   environment compose gives it (unknown keys are refused there, so a wrong key fails here);
//! - every alert has `for`, a severity, a summary and a runbook (`docs/runbooks/<alert>.md`); the
//!   drift dashboard filters by a tenant variable; every dashboard panel
//!   queries the provisioned Prometheus with plain PromQL that `promtool` accepts, over metric
//!   names the binaries export.
//!
//! `scripts/test.sh` also runs `docker-compose config -q`, `promtool check config`,
//! `promtool check rules` and `promtool test rules`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use backbone_core::config::{load_from, ConfigError, Validate};
use serde::de::DeserializeOwned;
use serde_yaml::Value;

/// Where the binaries' metrics endpoints are configured: `[observability] listen` for
/// processors and sinks, `[monitor] listen` and `[drift] listen` for those two.
const METRICS_LISTEN_KEYS: [&str; 4] = [
    "BACKBONE__OBSERVABILITY__LISTEN",
    "BACKBONE__MONITOR__LISTEN",
    "BACKBONE__DRIFT__LISTEN",
    "BACKBONE__INGEST__LISTEN",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn read(relative: &str) -> String {
    let path = repo().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

fn yaml(relative: &str) -> Value {
    let mut value: Value = serde_yaml::from_str(&read(relative))
        .unwrap_or_else(|err| panic!("{relative} is not YAML: {err}"));
    value
        .apply_merge()
        .unwrap_or_else(|err| panic!("{relative}: merge keys: {err}"));
    value
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|items| items.iter().filter_map(text).collect())
        .unwrap_or_default()
}

/// Resolves compose interpolation the way an unconfigured shell would: `${NAME:-default}` and
/// `${NAME-default}` become the default, `$$` a dollar. A variable without a default would
/// make the stack depend on the user's environment, so it fails the test.
fn interpolate(raw: &str) -> String {
    let mut out = String::new();
    let mut rest = raw;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .unwrap_or_else(|| panic!("unclosed ${{ in {raw:?}"));
            let expression = &body[..end];
            let default = expression
                .split_once(":-")
                .or_else(|| expression.split_once('-'))
                .map(|(_, default)| default)
                .unwrap_or_else(|| panic!("{raw:?}: ${{{expression}}} has no default"));
            out.push_str(default);
            rest = &body[end + 1..];
        } else {
            panic!("{raw:?}: write variables as ${{NAME:-default}}");
        }
    }
    out.push_str(rest);
    out
}

#[derive(Debug, Clone)]
struct Mount {
    source: String,
    target: String,
}

impl Mount {
    fn is_bind(&self) -> bool {
        self.source.starts_with("./") || self.source.starts_with('/')
    }
}

#[derive(Debug, Clone)]
struct Service {
    name: String,
    image: Option<String>,
    built: bool,
    command: Vec<String>,
    environment: BTreeMap<String, String>,
    expose: BTreeSet<u16>,
    volumes: Vec<Mount>,
    secrets: BTreeSet<String>,
    depends_on: BTreeMap<String, String>,
    healthcheck: bool,
    restart: Option<String>,
    profiles: Vec<String>,
}

impl Service {
    fn parse(name: &str, value: &Value) -> Self {
        let environment = match &value["environment"] {
            Value::Mapping(map) => map
                .iter()
                .map(|(k, v)| {
                    let key = text(k).expect("environment keys are strings");
                    let raw = text(v).unwrap_or_else(|| panic!("{name}: {key} has no value"));
                    (key, interpolate(&raw))
                })
                .collect(),
            Value::Sequence(items) => items
                .iter()
                .filter_map(text)
                .map(|item| {
                    let (k, v) = item
                        .split_once('=')
                        .unwrap_or_else(|| panic!("{name}: {item} is not KEY=VALUE"));
                    (k.to_owned(), interpolate(v))
                })
                .collect(),
            Value::Null => BTreeMap::new(),
            other => panic!("{name}: environment is {other:?}"),
        };
        let expose = strings(&value["expose"])
            .iter()
            .map(|port| {
                port.parse()
                    .unwrap_or_else(|_| panic!("{name}: expose {port:?} is not a port"))
            })
            .collect();
        let volumes = strings(&value["volumes"])
            .iter()
            .map(|spec| {
                let mut parts = spec.split(':');
                let source = parts.next().unwrap_or_default().to_owned();
                let target = parts
                    .next()
                    .unwrap_or_else(|| panic!("{name}: volume {spec:?} has no target"))
                    .to_owned();
                Mount {
                    source: interpolate(&source),
                    target,
                }
            })
            .collect();
        let depends_on = match &value["depends_on"] {
            Value::Mapping(map) => map
                .iter()
                .map(|(k, v)| {
                    let condition =
                        text(&v["condition"]).unwrap_or_else(|| "service_started".into());
                    (text(k).expect("service names are strings"), condition)
                })
                .collect(),
            Value::Sequence(items) => items
                .iter()
                .filter_map(text)
                .map(|s| (s, "service_started".to_owned()))
                .collect(),
            _ => BTreeMap::new(),
        };
        Self {
            name: name.to_owned(),
            image: text(&value["image"]).map(|image| interpolate(&image)),
            built: !value["build"].is_null(),
            command: strings(&value["command"]),
            environment,
            expose,
            volumes,
            secrets: strings(&value["secrets"]).into_iter().collect(),
            depends_on,
            healthcheck: !value["healthcheck"]["test"].is_null(),
            restart: text(&value["restart"]),
            profiles: strings(&value["profiles"]),
        }
    }

    /// The host file behind a path inside the container, through the service's bind mounts.
    fn host_path(&self, inside: &str) -> Option<PathBuf> {
        self.volumes.iter().filter(|m| m.is_bind()).find_map(|m| {
            let rest = inside.strip_prefix(&m.target)?;
            if !(rest.is_empty() || rest.starts_with('/')) {
                return None;
            }
            let source = repo().join(m.source.trim_start_matches("./"));
            let rest = rest.trim_start_matches('/');
            Some(if rest.is_empty() {
                source
            } else {
                source.join(rest)
            })
        })
    }

    fn long_running(&self) -> bool {
        self.restart.as_deref() != Some("no")
    }

    fn is_backbone(&self) -> bool {
        self.built
    }

    fn is_kafka_node(&self) -> bool {
        self.image
            .as_deref()
            .is_some_and(|image| image.starts_with("apache/kafka:"))
    }
}

struct Compose {
    services: BTreeMap<String, Service>,
    secrets: BTreeMap<String, PathBuf>,
    volumes: BTreeSet<String>,
}

impl Compose {
    fn load() -> Self {
        let root = yaml("docker-compose.yml");
        let services: BTreeMap<String, Service> = root["services"]
            .as_mapping()
            .expect("docker-compose.yml has services")
            .iter()
            .map(|(name, value)| {
                let name = text(name).expect("service names are strings");
                let service = Service::parse(&name, value);
                (name, service)
            })
            .collect();
        let secrets = root["secrets"]
            .as_mapping()
            .map(|map| {
                map.iter()
                    .map(|(name, value)| {
                        let name = text(name).expect("secret names are strings");
                        let file = text(&value["file"])
                            .unwrap_or_else(|| panic!("secret {name} is not from a file"));
                        (name, repo().join(interpolate(&file)))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let volumes = root["volumes"]
            .as_mapping()
            .map(|map| map.keys().filter_map(text).collect())
            .unwrap_or_default();
        Self {
            services,
            secrets,
            volumes,
        }
    }

    fn service(&self, name: &str) -> &Service {
        self.services
            .get(name)
            .unwrap_or_else(|| panic!("docker-compose.yml has no service {name}"))
    }

    /// Every service `name` waits for, directly or through others.
    fn waits_for(&self, name: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut queue = vec![name.to_owned()];
        while let Some(next) = queue.pop() {
            for dependency in self.service(&next).depends_on.keys() {
                if seen.insert(dependency.clone()) {
                    queue.push(dependency.clone());
                }
            }
        }
        seen
    }

    /// The environment a binary sees, with each `/run/secrets/<name>` turned into the host
    /// file compose mounts there.
    fn environment_on_host(&self, service: &Service) -> Vec<(String, String)> {
        service
            .environment
            .iter()
            .map(|(key, value)| {
                let value = match value.strip_prefix("/run/secrets/") {
                    Some(secret) => self.secrets[secret].to_string_lossy().into_owned(),
                    None => value.clone(),
                };
                (key.clone(), value)
            })
            .collect()
    }
}

/// A `host:port` a setting points at.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Address {
    host: String,
    port: Option<u16>,
}

/// The addresses in a setting's value: `host:port` lists, URLs with or without user info
/// (`postgres://user@host:port/db`), listener lists (`NAME://host:port,...`) and quorum voters
/// (`1@host:port`). Tokens that are not addresses (paths, plain words) give nothing.
fn addresses(value: &str) -> Vec<Address> {
    let mut found = Vec::new();
    for token in value.split([',', ' ']) {
        let (has_scheme, rest) = match token.split_once("://") {
            Some((_, rest)) => (true, rest),
            None => (false, token),
        };
        let authority = rest.split('/').next().unwrap_or_default();
        let authority = authority.rsplit('@').next().unwrap_or_default();
        match authority.rsplit_once(':') {
            Some((host, port)) => {
                if let Ok(port) = port.parse::<u16>() {
                    found.push(Address {
                        host: host.to_owned(),
                        port: Some(port),
                    });
                }
            }
            None if has_scheme && !authority.is_empty() => found.push(Address {
                host: authority.to_owned(),
                port: None,
            }),
            None => {}
        }
    }
    found
}

/// Whether a host is this container or any interface rather than another service.
fn is_local(host: &str) -> bool {
    host.is_empty() || host == "localhost" || host.parse::<IpAddr>().is_ok()
}

/// Checks that `address`, given to `user` as `what`, names a service on a port it exposes.
fn assert_names_a_service(compose: &Compose, user: &str, what: &str, address: &Address) {
    let target = compose.services.get(&address.host).unwrap_or_else(|| {
        panic!(
            "{user}: {what} points at {}, which is not a service of docker-compose.yml",
            address.host
        )
    });
    let port = address
        .port
        .unwrap_or_else(|| panic!("{user}: {what} names {} without a port", address.host));
    assert!(
        target.expose.contains(&port),
        "{user}: {what} points at {}:{port}, but {} exposes {:?}",
        address.host,
        address.host,
        target.expose
    );
}

/// `name:tag` (not `latest`, with a version number in it) or `name@sha256:<64 hex>`.
fn is_pinned(image: &str) -> bool {
    if let Some((_, digest)) = image.split_once("@sha256:") {
        return digest.len() == 64 && digest.chars().all(|c| c.is_ascii_hexdigit());
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, tag)) => tag != "latest" && tag.chars().any(|c| c.is_ascii_digit()),
        None => false,
    }
}

#[test]
fn the_pin_check_refuses_floating_images() {
    for floating in [
        "postgres",
        "postgres:latest",
        "grafana/grafana:main",
        "localhost:5000/backbone",
        "x@sha256:abc",
    ] {
        assert!(!is_pinned(floating), "{floating} counts as pinned");
    }
    for pinned in [
        "postgres:16.9",
        "localhost:5000/backbone:0.1.0",
        "prom/prometheus:v2.55.1",
        &format!("postgres@sha256:{}", "a".repeat(64)),
    ] {
        assert!(is_pinned(pinned), "{pinned} counts as floating");
    }
}

#[test]
fn the_compose_broker_is_the_version_setup_fetches() {
    let pom = read("scripts/kafka/pom.xml");
    let version = pom
        .split("<kafka.version>")
        .nth(1)
        .and_then(|rest| rest.split("</kafka.version>").next())
        .expect("scripts/kafka/pom.xml names kafka.version");
    let compose = Compose::load();
    let nodes: Vec<&Service> = compose
        .services
        .values()
        .filter(|s| s.is_kafka_node())
        .collect();
    assert_eq!(nodes.len(), 3, "three Kafka nodes");
    for node in nodes {
        assert_eq!(
            node.image.as_deref(),
            Some(format!("apache/kafka:{version}").as_str()),
            "{}: the version make setup fetches",
            node.name
        );
    }
}

#[test]
fn every_image_is_pinned_and_the_binaries_share_one_local_image() {
    let compose = Compose::load();
    for service in compose.services.values() {
        let image = service
            .image
            .as_deref()
            .unwrap_or_else(|| panic!("{}: no image: name it, with a version tag", service.name));
        assert!(
            is_pinned(image),
            "{}: image {image} is not pinned",
            service.name
        );
    }
    let upstream: BTreeSet<&str> = compose
        .services
        .values()
        .filter(|s| !s.built)
        .filter_map(|s| s.image.as_deref())
        .map(|image| image.split([':', '@']).next().unwrap_or(image))
        .collect();
    for expected in [
        "apache/kafka",
        "confluentinc/cp-schema-registry",
        "postgres",
        "prom/prometheus",
        "grafana/grafana",
    ] {
        assert!(upstream.contains(expected), "no service runs {expected}");
    }
    let built: BTreeSet<&str> = compose
        .services
        .values()
        .filter(|s| s.built)
        .filter_map(|s| s.image.as_deref())
        .collect();
    assert_eq!(
        built.len(),
        1,
        "the backbone binaries share one image: {built:?}"
    );

    // The Dockerfile's stages start from pinned images too.
    let dockerfile = read("Dockerfile");
    let bases: Vec<&str> = dockerfile
        .lines()
        .filter_map(|line| line.trim().strip_prefix("FROM "))
        .map(|rest| rest.split_whitespace().next().unwrap_or_default())
        .collect();
    assert!(bases.len() >= 2, "the Dockerfile is multi-stage: {bases:?}");
    for base in bases {
        assert!(is_pinned(base), "Dockerfile: FROM {base} is not pinned");
    }
    let runtime = dockerfile.rsplit("\nFROM ").next().unwrap_or_default();
    assert!(
        runtime
            .lines()
            .any(|l| l.trim_start().starts_with("USER ") && !l.contains("root")),
        "the runtime stage runs as a non-root user"
    );
}

#[test]
fn every_service_it_runs_is_built_into_the_image() {
    let compose = Compose::load();
    // The image builds every binary of components.toml (tests/components.rs).
    let binaries: BTreeSet<&str> = backbone_components::all()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    for service in compose.services.values().filter(|s| s.is_backbone()) {
        let program = service
            .command
            .first()
            .unwrap_or_else(|| panic!("{}: no command", service.name));
        let programs: Vec<&str> = if program == "sh" {
            let script = service
                .command
                .last()
                .map(String::as_str)
                .unwrap_or_default();
            script
                .split("&&")
                .filter_map(|step| step.split_whitespace().next())
                .collect()
        } else {
            vec![program.as_str()]
        };
        for program in programs {
            assert!(
                binaries.contains(program),
                "{}: runs {program}, which the Dockerfile does not build",
                service.name
            );
        }
    }
}

#[test]
fn services_reach_each_other_by_service_name_and_exposed_port() {
    let compose = Compose::load();
    let mut checked = 0;
    for service in compose.services.values() {
        for (key, value) in &service.environment {
            for address in addresses(value) {
                if is_local(&address.host) {
                    continue;
                }
                assert_names_a_service(&compose, &service.name, key, &address);
                // Whoever names a service waits for it, unless it is optional (a profile). The
                // Kafka nodes name each other as controller voters and start together.
                let target = compose.service(&address.host);
                let peers = service.is_kafka_node() && target.is_kafka_node();
                if target.profiles.is_empty() && address.host != service.name && !peers {
                    assert!(
                        compose.waits_for(&service.name).contains(&address.host),
                        "{}: {key} names {}, but the service does not wait for it (depends_on)",
                        service.name,
                        address.host
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 30,
        "only {checked} addresses found in docker-compose.yml"
    );

    // Inside compose, clients use the listeners the Kafka nodes advertise for them.
    let clients: Vec<&Service> = compose
        .services
        .values()
        .filter(|s| {
            s.environment
                .contains_key("BACKBONE__KAFKA__BOOTSTRAP_SERVERS")
        })
        .collect();
    assert!(clients.len() >= 12, "{} Kafka clients", clients.len());
    for client in &clients {
        let servers = &client.environment["BACKBONE__KAFKA__BOOTSTRAP_SERVERS"];
        assert_eq!(servers, KAFKA_CLUSTER, "{}: every node", client.name);
        for server in servers.split(',') {
            let node = compose.service(server.split(':').next().unwrap_or_default());
            let advertised = &node.environment["KAFKA_ADVERTISED_LISTENERS"];
            assert!(
                advertised.contains(&format!("://{server}")),
                "{}: bootstrap {server} is not a listener {} advertises ({advertised})",
                client.name,
                node.name
            );
        }
    }

    // Processors and sinks: the registry, and a metrics endpoint on every interface.
    let mut endpoints = BTreeSet::new();
    for service in compose.services.values() {
        for key in METRICS_LISTEN_KEYS {
            let Some(listen) = service.environment.get(key) else {
                continue;
            };
            let address = addresses(listen).pop().expect("a host:port");
            assert_eq!(
                address.host, "0.0.0.0",
                "{}: {key} must listen on 0.0.0.0 in a container",
                service.name
            );
            let port = address.port.expect("a port");
            assert!(
                service.expose.contains(&port),
                "{}: {key} is {listen}, but the service exposes {:?}",
                service.name,
                service.expose
            );
            endpoints.insert(format!("{}:{port}", service.name));
        }
        if service
            .environment
            .contains_key("BACKBONE__OBSERVABILITY__LISTEN")
        {
            assert!(
                service
                    .environment
                    .contains_key("BACKBONE__SCHEMA_REGISTRY__URL"),
                "{}: no BACKBONE__SCHEMA_REGISTRY__URL",
                service.name
            );
        }
    }
    // Every component with an endpoint in the list serves it in compose.
    for expected in backbone_components::all()
        .iter()
        .filter_map(|c| c.metrics.map(|port| format!("{}:{port}", c.name)))
    {
        assert!(
            endpoints.contains(&expected),
            "no metrics endpoint {expected}: {endpoints:?}"
        );
    }

    // Prometheus scrapes exactly those endpoints, by service name.
    let prometheus = yaml("deploy/prometheus/prometheus.yml");
    let mut scraped = BTreeSet::new();
    for job in prometheus["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
    {
        let name = text(&job["job_name"]).expect("job_name");
        for group in job["static_configs"].as_sequence().expect("static_configs") {
            for target in strings(&group["targets"]) {
                let address = addresses(&target).pop().expect("targets are host:port");
                if is_local(&address.host) {
                    continue;
                }
                assert_names_a_service(&compose, "prometheus", &format!("job {name}"), &address);
                // BackboneTargetDown and the dashboards select these jobs by `backbone.*`.
                assert!(
                    name.starts_with("backbone"),
                    "job {name}: name it backbone-<what>"
                );
                scraped.insert(target);
            }
        }
    }
    assert_eq!(
        scraped, endpoints,
        "Prometheus must scrape every metrics endpoint, and only those"
    );

    // Grafana's datasource is the prometheus service.
    let datasources = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    let urls: Vec<String> = datasources["datasources"]
        .as_sequence()
        .expect("datasources")
        .iter()
        .filter_map(|d| text(&d["url"]))
        .collect();
    assert!(!urls.is_empty(), "no datasource URL");
    for url in urls {
        let address = addresses(&url)
            .pop()
            .expect("the datasource URL has a host");
        assert_names_a_service(&compose, "grafana", "the datasource URL", &address);
        assert_eq!(address.host, "prometheus");
        assert!(compose.waits_for("grafana").contains("prometheus"));
    }
}

#[test]
fn start_order_waits_for_health_and_every_service_has_a_health_check() {
    let compose = Compose::load();
    for service in compose.services.values() {
        if service.long_running() {
            assert!(service.healthcheck, "{}: no healthcheck", service.name);
        }
        for (dependency, condition) in &service.depends_on {
            let target = compose.service(dependency);
            assert!(
                target.profiles.is_empty() || target.profiles == service.profiles,
                "{}: depends on {dependency}, which only a profile starts",
                service.name
            );
            match condition.as_str() {
                "service_healthy" => assert!(
                    target.healthcheck,
                    "{}: waits for {dependency} to be healthy, which has no healthcheck",
                    service.name
                ),
                "service_completed_successfully" => assert!(
                    !target.long_running(),
                    "{}: waits for {dependency} to complete, which restarts",
                    service.name
                ),
                other => panic!(
                    "{}: depends on {dependency} with {other}: wait for health or completion",
                    service.name
                ),
            }
        }
        if service
            .environment
            .contains_key("BACKBONE__KAFKA__BOOTSTRAP_SERVERS")
        {
            assert!(
                compose.waits_for(&service.name).contains("kafka"),
                "{}: a Kafka client that does not wait for kafka",
                service.name
            );
        }
    }
    // The enricher's input is created by the validator: it starts after it.
    assert_eq!(
        compose
            .service("enricher")
            .depends_on
            .get("usage-validator")
            .map(String::as_str),
        Some("service_healthy")
    );
    for processor in backbone_components::processors().map(|c| c.name.as_str()) {
        assert_eq!(
            compose
                .service(processor)
                .depends_on
                .get("contracts")
                .map(String::as_str),
            Some("service_completed_successfully"),
            "{processor} starts once the topics exist"
        );
    }
    assert_eq!(compose.service("own-registry").profiles, ["own-registry"]);
}

#[test]
fn credentials_are_secret_files_and_every_mount_exists() {
    let compose = Compose::load();
    assert!(compose.secrets.len() >= 3, "secrets: {:?}", compose.secrets);
    for (name, file) in &compose.secrets {
        let content = std::fs::read_to_string(file)
            .unwrap_or_else(|err| panic!("secret {name}: {}: {err}", file.display()));
        assert!(!content.trim().is_empty(), "secret {name} is empty");
    }
    let mut secret_settings = 0;
    for service in compose.services.values() {
        for secret in &service.secrets {
            assert!(
                compose.secrets.contains_key(secret),
                "{}: undeclared secret {secret}",
                service.name
            );
        }
        for (key, value) in &service.environment {
            let upper = key.to_ascii_uppercase();
            let sensitive = ["PASSWORD", "TOKEN", "CREDENTIAL", "SECRET"]
                .iter()
                .any(|word| upper.contains(word));
            if sensitive {
                assert!(
                    upper.ends_with("_FILE") && value.starts_with("/run/secrets/"),
                    "{}: {key} must name a secret file (/run/secrets/...), not hold a value",
                    service.name
                );
            }
            if let Some(secret) = value.strip_prefix("/run/secrets/") {
                assert!(
                    service.secrets.contains(secret),
                    "{}: {key} reads secret {secret}, which the service does not mount",
                    service.name
                );
                secret_settings += 1;
            } else if value.starts_with('/') && !value.contains(':') {
                // A path inside the container that comes from a bind mount must exist.
                if let Some(host) = service.host_path(value) {
                    assert!(
                        host.exists(),
                        "{}: {key} is {value}, but {} does not exist",
                        service.name,
                        host.display()
                    );
                }
            }
        }
        for mount in &service.volumes {
            if mount.is_bind() {
                let host = repo().join(&mount.source);
                assert!(
                    host.exists(),
                    "{}: mount {} does not exist",
                    service.name,
                    mount.source
                );
            } else {
                assert!(
                    compose.volumes.contains(&mount.source),
                    "{}: volume {} is not declared",
                    service.name,
                    mount.source
                );
            }
        }
    }
    assert!(
        secret_settings >= 8,
        "{secret_settings} settings read secrets"
    );
    for sink in backbone_components::sinks().map(|c| c.name.as_str()) {
        let service = compose.service(sink);
        assert!(
            service
                .environment
                .contains_key("BACKBONE__DESTINATION__CREDENTIAL_FILE"),
            "{sink}: its credential comes from a secret file"
        );
        assert!(
            service
                .volumes
                .iter()
                .any(|m| !m.is_bind() && m.target == "/var/lib/backbone/ledger"),
            "{sink}: its ledger lives on a volume"
        );
    }
    for processor in backbone_components::processors().map(|c| c.name.as_str()) {
        assert!(
            compose
                .service(processor)
                .volumes
                .iter()
                .any(|m| !m.is_bind() && m.target == "/var/lib/backbone/state"),
            "{processor}: its state lives on a volume"
        );
    }
}

fn load<T: DeserializeOwned + Validate>(
    path: Option<&Path>,
    env: &[(String, String)],
) -> Result<T, ConfigError> {
    load_from(path, env.iter().cloned())
}

/// The three Kafka nodes, as every client of compose bootstraps from them.
const KAFKA_CLUSTER: &str = "kafka:9092,kafka-2:9092,kafka-3:9092";

/// Loads a service's config the way it does at start: its own binary with `--check-config`,
/// which refuses bad values and unknown keys and names them, and prints what it loaded; the
/// printed config must hold every one of `expected`.
fn check_config(
    binary: &str,
    path: Option<&Path>,
    env: &[(String, String)],
    expected: &[String],
) -> Result<(), ConfigError> {
    let mut command = Command::new(workspace_binary(binary));
    command
        .arg("--check-config")
        .env_clear()
        .envs(env.iter().cloned());
    if let Some(path) = path {
        command.env("BACKBONE_CONFIG", path);
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{binary}: {e} (make test builds every binary first)"));
    if output.status.success() {
        let printed = String::from_utf8_lossy(&output.stdout);
        for expected in expected {
            assert!(
                printed.contains(expected),
                "{binary}: no {expected} in\n{printed}"
            );
        }
        return Ok(());
    }
    Err(ConfigError::Invalid {
        key: binary.to_owned(),
        message: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    })
}

/// A binary built next to this test's own (`make test` builds every binary first).
fn workspace_binary(name: &str) -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_tally")).with_file_name(name)
}

/// Loads a service's config the way its binary does: the mounted file, then the environment.
fn load_binary(
    binary: &str,
    path: Option<&Path>,
    env: &[(String, String)],
) -> Result<(), ConfigError> {
    // The three-node cluster, and topics created with three replicas, two in sync.
    let in_the_cluster = || {
        vec![
            format!("bootstrap_servers: \"{KAFKA_CLUSTER}\""),
            "replication_factor: 3".to_owned(),
            "min_insync_replicas: 2".to_owned(),
        ]
    };
    if backbone_components::named(binary).is_some_and(|c| c.is_stage()) {
        return check_config(binary, path, env, &in_the_cluster());
    }
    match binary {
        // Its token comes from the secret file; the binary refuses an empty or missing one.
        "sandbox" => check_config(binary, path, env, &["listen: 0.0.0.0:8090".to_owned()]),
        "schema-registry" => check_config(binary, path, env, &in_the_cluster()),
        "monitor" => {
            let mut expected = in_the_cluster();
            expected.push("listen: 0.0.0.0:9470".to_owned());
            check_config(binary, path, env, &expected)
        }
        "ingest" => {
            let mut expected = in_the_cluster();
            expected.push("listen: 0.0.0.0:8088".to_owned());
            check_config(binary, path, env, &expected)
        }
        "drift" => {
            let config: backbone_drift::DriftConfig = load(path, env)?;
            assert_eq!(config.drift.listen.port(), 9471);
            assert_eq!(config.drift.billing_url, "http://sandbox:8090");
            Ok(())
        }
        other => panic!("no config loader known for {other}"),
    }
}

#[test]
fn every_config_file_loads_through_its_binarys_loader_with_the_compose_environment() {
    let compose = Compose::load();
    let mut used = BTreeSet::new();
    let mut loaded = 0;
    for service in compose.services.values().filter(|s| s.is_backbone()) {
        let binary = service.command.first().expect("a command").clone();
        let env = compose.environment_on_host(service);
        let file = match service.environment.get("BACKBONE_CONFIG") {
            Some(inside) => {
                let host = service.host_path(inside).unwrap_or_else(|| {
                    panic!("{}: BACKBONE_CONFIG {inside} is not mounted", service.name)
                });
                used.insert(host.clone());
                Some(host)
            }
            None => {
                assert!(
                    backbone_components::named(&service.name).is_some_and(|c| c.env_only),
                    "{}: no BACKBONE_CONFIG; put its config in deploy/config/{binary}.toml",
                    service.name
                );
                None
            }
        };
        if file.is_none() && !["monitor", "drift"].contains(&binary.as_str()) {
            continue; // loadgen and contracts take flags, not a config
        }
        if let Err(err) = load_binary(&binary, file.as_deref(), &env) {
            panic!("{}: {binary} refuses its config: {err}", service.name);
        }
        // The loader refuses unknown keys, so a passing load means every key is right.
        let mut wrong = env.clone();
        wrong.push(("BACKBONE__KAFKA__NOT_A_KEY".to_owned(), "1".to_owned()));
        assert!(
            load_binary(&binary, file.as_deref(), &wrong).is_err(),
            "{}: {binary} accepted an unknown key",
            service.name
        );
        loaded += 1;
    }
    assert!(loaded >= 12, "{loaded} configs loaded");
    let files: BTreeSet<PathBuf> = std::fs::read_dir(repo().join("deploy/config"))
        .expect("deploy/config")
        .map(|entry| entry.expect("entry").path())
        .collect();
    assert_eq!(
        files, used,
        "every file in deploy/config is some service's config"
    );
}

#[test]
fn prometheus_loads_its_rules_from_the_mounted_directory() {
    let compose = Compose::load();
    let service = compose.service("prometheus");
    let flag = service
        .command
        .iter()
        .find_map(|arg| arg.strip_prefix("--config.file="))
        .expect("prometheus is given --config.file");
    let host = service.host_path(flag).expect("the config file is mounted");
    assert_eq!(host, repo().join("deploy/prometheus/prometheus.yml"));
    let config = yaml("deploy/prometheus/prometheus.yml");
    let rule_files = strings(&config["rule_files"]);
    assert!(!rule_files.is_empty(), "no rule_files");
    for rule_file in rule_files {
        assert!(
            !rule_file.starts_with('/'),
            "{rule_file}: relative to the config, so promtool and the container agree"
        );
        assert!(
            repo().join("deploy/prometheus").join(&rule_file).exists(),
            "{rule_file} missing"
        );
    }
    let grafana = compose.service("grafana");
    let provider = yaml("deploy/grafana/provisioning/dashboards/backbone.yml");
    let path = text(&provider["providers"][0]["options"]["path"]).expect("a provider path");
    assert_eq!(
        grafana.host_path(&path),
        Some(repo().join("deploy/grafana/dashboards"))
    );
    assert_eq!(
        grafana.host_path("/etc/grafana/provisioning/datasources"),
        Some(repo().join("deploy/grafana/provisioning/datasources"))
    );
}

struct Rule {
    alert: Option<String>,
    record: Option<String>,
    expr: String,
    raw: Value,
}

fn rules() -> Vec<Rule> {
    let file = yaml("deploy/prometheus/rules.yml");
    let mut rules = Vec::new();
    for group in file["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            rules.push(Rule {
                alert: text(&rule["alert"]),
                record: text(&rule["record"]),
                expr: text(&rule["expr"]).expect("every rule has an expr"),
                raw: rule.clone(),
            });
        }
    }
    rules
}

#[test]
fn every_alert_has_a_duration_a_severity_a_summary_and_a_runbook() {
    let rules = rules();
    let alerts: Vec<&Rule> = rules.iter().filter(|r| r.alert.is_some()).collect();
    assert!(alerts.len() >= 6, "{} alerts", alerts.len());
    for rule in &alerts {
        let name = rule.alert.as_deref().unwrap_or_default();
        assert!(!rule.raw["for"].is_null(), "{name}: no `for`");
        let severity = text(&rule.raw["labels"]["severity"]).unwrap_or_default();
        assert!(
            ["critical", "warning"].contains(&severity.as_str()),
            "{name}: severity {severity:?}"
        );
        for annotation in ["summary", "description"] {
            let value = text(&rule.raw["annotations"][annotation]).unwrap_or_default();
            assert!(!value.trim().is_empty(), "{name}: no {annotation}");
            assert!(
                value.contains("{{ $"),
                "{name}: the {annotation} shows no label or value"
            );
        }
        // The runbook: docs/runbooks/<alert>.md, saying what it means, how to diagnose and
        // how to recover (tests/observability.rs runs its commands).
        let url = text(&rule.raw["annotations"]["runbook_url"]).unwrap_or_default();
        assert_eq!(
            url,
            format!("docs/runbooks/{name}.md"),
            "{name}: runbook_url names its runbook"
        );
        let runbook = read(&url);
        for section in ["## What it means", "## Diagnose", "## Recover"] {
            assert!(runbook.contains(section), "{url}: no `{section}`");
        }
        assert!(
            runbook.starts_with(&format!("# {name}\n")),
            "{url} is titled by its alert"
        );
        let runbooks = read("docs/runbooks/README.md");
        assert!(
            runbooks.contains(&format!("[{name}]({name}.md)")),
            "docs/runbooks/README.md lists {name}"
        );
    }
    for (metric, why) in [
        ("backbone_monitor_consumer_lag_records", "lag growing"),
        ("backbone_dlq_records_total", "dead letters"),
        ("backbone_drift_relative", "drift"),
        ("backbone_sink_circuit_state", "an open circuit"),
        ("backbone_processor_ready", "a processor not ready"),
        ("backbone_processor_fatal_errors_total", "fatal errors"),
    ] {
        assert!(
            alerts.iter().any(|r| r.expr.contains(metric)),
            "no alert on {why} ({metric})"
        );
    }
    for rule in rules.iter().filter(|r| r.record.is_some()) {
        let name = rule.record.as_deref().unwrap_or_default();
        assert_eq!(
            name.split(':').count(),
            3,
            "{name}: recording rules are named level:metric:operations"
        );
    }
}

struct Panel {
    dashboard: String,
    title: String,
    exprs: Vec<String>,
}

fn dashboards() -> Vec<(String, serde_json::Value)> {
    let dir = repo().join("deploy/grafana/dashboards");
    let mut found: Vec<(String, serde_json::Value)> = std::fs::read_dir(&dir)
        .expect("deploy/grafana/dashboards")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .map(|path| {
            let name = path
                .file_name()
                .expect("a name")
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&path).expect("readable");
            let json = serde_json::from_str(&text).unwrap_or_else(|err| panic!("{name}: {err}"));
            (name, json)
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// Every panel of every dashboard, rows (which query nothing) left out, after checking that
/// each queries the dashboard's datasource variable, which defaults to the provisioned
/// Prometheus (so the dashboard also imports into any Grafana), with plain expressions.
fn panels() -> Vec<Panel> {
    let datasources = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    let uid = text(&datasources["datasources"][0]["uid"]).expect("the datasource has a uid");
    let mut panels = Vec::new();
    let mut uids = BTreeSet::new();
    for (name, board) in dashboards() {
        let board_uid = board["uid"].as_str().unwrap_or_default().to_owned();
        assert!(
            !board_uid.is_empty() && uids.insert(board_uid.clone()),
            "{name}: uid {board_uid:?} missing or repeated"
        );
        assert!(
            board["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{name}: no title"
        );
        assert!(
            board["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
            "{name}: schemaVersion"
        );
        let variables = board["templating"]["list"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let datasource = variables
            .iter()
            .find(|v| v["type"] == "datasource" && v["name"] == "datasource")
            .unwrap_or_else(|| panic!("{name}: no datasource variable"));
        assert_eq!(
            datasource["query"], "prometheus",
            "{name}: the variable's type"
        );
        assert_eq!(
            datasource["current"]["value"].as_str(),
            Some(uid.as_str()),
            "{name}: the variable defaults to the provisioned Prometheus"
        );
        let tenant = variables.iter().find(|v| v["name"] == "tenant");
        let has_tenant = tenant.is_some();
        if let Some(tenant) = tenant {
            assert_eq!(
                tenant["type"], "query",
                "{name}: the tenant variable's type"
            );
            assert_eq!(
                tenant["datasource"]["uid"], "${datasource}",
                "{name}: the tenant variable asks the datasource variable"
            );
            assert_eq!(tenant["includeAll"], true, "{name}: all tenants by default");
            assert_eq!(
                tenant["allValue"], ".*",
                "{name}: `All` matches every tenant"
            );
        }
        let list = board["panels"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: no panels"));
        let mut ids = BTreeSet::new();
        for panel in list {
            let title = panel["title"].as_str().unwrap_or_default().to_owned();
            assert!(
                panel["id"].as_u64().is_some_and(|id| ids.insert(id)),
                "{name} / {title}: id missing or repeated"
            );
            assert!(
                panel["gridPos"]["w"].as_u64().is_some(),
                "{name} / {title}: no gridPos"
            );
            if panel["type"] == "row" {
                continue;
            }
            assert!(!title.is_empty(), "{name}: a panel without a title");
            assert_eq!(
                panel["datasource"]["uid"].as_str(),
                Some("${datasource}"),
                "{name} / {title}: datasource"
            );
            let targets = panel["targets"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            assert!(!targets.is_empty(), "{name} / {title}: no query");
            let mut exprs = Vec::new();
            for target in targets {
                let expr = target["expr"]
                    .as_str()
                    .unwrap_or_default()
                    .trim()
                    .to_owned();
                assert!(
                    !expr.is_empty(),
                    "{name} / {title}: a query without an expression"
                );
                // The one template variable a query may use is the board's tenant filter,
                // checked below as PromQL with every tenant selected.
                let expr = if has_tenant {
                    expr.replace("\"$tenant\"", "\".*\"")
                } else {
                    expr
                };
                assert!(
                    !expr.contains('$'),
                    "{name} / {title}: {expr} uses a template variable"
                );
                if let Some(target_uid) = target["datasource"]["uid"].as_str() {
                    assert_eq!(
                        target_uid, "${datasource}",
                        "{name} / {title}: a query's datasource"
                    );
                }
                exprs.push(expr);
            }
            panels.push(Panel {
                dashboard: board_uid.clone(),
                title,
                exprs,
            });
        }
    }
    panels
}

#[test]
fn every_dashboard_panel_queries_the_provisioned_prometheus() {
    let panels = panels();
    assert!(panels.len() >= 25, "{} panels", panels.len());
    let queries = |dashboard: &str| -> String {
        panels
            .iter()
            .filter(|p| p.dashboard == dashboard)
            .flat_map(|p| p.exprs.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join("\n")
    };
    for (dashboard, needs) in [
        (
            "backbone-pipeline",
            &[
                "rate(backbone_consumer_records_total",
                "histogram_quantile(0.5, sum by (processor, le) (rate(backbone_end_to_end_latency_seconds_bucket",
                "histogram_quantile(0.99, sum by (processor, le) (rate(backbone_end_to_end_latency_seconds_bucket",
                "sum by (processor, topic, reason) (rate(backbone_dlq_records_total",
                "sum by (producer) (rate(backbone_ingest_events_accepted_total",
                "histogram_quantile(0.99, sum by (producer, le) (rate(backbone_ingest_request_duration_seconds_bucket",
                "sum by (state) (rate(backbone_order_state_changes_total",
                "histogram_quantile(0.99, sum by (step, le) (rate(backbone_order_step_seconds_bucket",
                "sum(backbone_order_approvals_waiting)",
                "max(backbone_order_approval_oldest_age_seconds)",
                "sum(increase(backbone_invoices_issued_total",
                "sum(backbone_periods_open)",
                "sum(increase(backbone_period_corrections_total",
            ][..],
        ),
        (
            "backbone-lag",
            &[
                "sum by (group, topic) (backbone_monitor_consumer_lag_records)",
                "{{group}} {{topic}}[{{partition}}]",
                "backbone_monitor_consumer_lag_seconds",
            ][..],
        ),
        (
            "backbone-sinks",
            &[
                "histogram_quantile(0.99, sum by (processor, le) (rate(backbone_sink_delivery_duration_seconds_bucket",
                "sum by (processor, destination, outcome) (rate(backbone_sink_deliveries_total",
                "sum by (processor, reason) (rate(backbone_sink_retries_total",
                "backbone_sink_circuit_state",
            ][..],
        ),
        (
            "backbone-business",
            &[
                "backbone_event_latency_seconds_bucket{processor=\"fanout\",topic=~\".*billing.charges.*\"}",
                "backbone_end_to_end_latency_seconds_bucket{processor=~\"billing-sink|erp-sink\"}",
                "backbone_sink_deliveries_total{processor=\"billing-sink\",outcome=~\"delivered|already_delivered\"}",
                "backbone_sink_deliveries_total{processor=\"erp-sink\",outcome=~\"delivered|already_delivered\"}",
                "increase(backbone_replayed_records_total",
                "backbone_drift_difference{check=\"accounts_vs_crm\",tenant=~\".*\"}",
            ][..],
        ),
        (
            "backbone-drift",
            &[
                "backbone_drift_difference",
                "backbone_drift_relative",
                "by (check)",
                "sum by (topic, source, field) (rate(backbone_contract_null_fields_total",
                "sum by (topic, source, schema_id) (rate(backbone_contract_records_total",
                "sum by (topic, source, reason) (rate(backbone_contract_rejections_total",
            ][..],
        ),
    ] {
        let board = dashboards()
            .into_iter()
            .find(|(_, b)| b["uid"] == dashboard)
            .unwrap_or_else(|| panic!("no dashboard {dashboard}"))
            .1;
        let text = format!("{}\n{board}", queries(dashboard));
        for need in needs {
            assert!(text.contains(need), "{dashboard}: nothing shows {need}");
        }
    }
    // The drift board filters every per-tenant figure by its tenant variable.
    for panel in panels.iter().filter(|p| p.dashboard == "backbone-drift") {
        for expr in &panel.exprs {
            for metric in ["backbone_drift_relative", "backbone_drift_difference"] {
                let filtered = format!("{metric}{{tenant=~\".*\"}}");
                assert_eq!(
                    expr.matches(metric).count(),
                    expr.matches(&filtered).count(),
                    "{}: `{expr}` shows {metric} of every tenant, whatever is selected",
                    panel.title
                );
            }
        }
    }
}

/// The metric names of an expression: `backbone_...` words, histogram suffixes removed.
fn metric_names(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| word.starts_with("backbone_"))
        .map(|word| {
            ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| word.strip_suffix(suffix))
                .unwrap_or(word)
                .to_owned()
        })
        .collect()
}

#[test]
fn dashboards_and_rules_use_only_metrics_the_binaries_export() {
    use backbone_core::metrics::names as core;
    use backbone_order_orchestrator::names as orders;
    use backbone_sink::metrics::names as sink;
    let exported: BTreeSet<&str> = [
        core::CONSUMER_RECORDS,
        core::PRODUCER_RECORDS,
        core::DLQ_RECORDS,
        core::DEDUP_DUPLICATES,
        core::PROCESSOR_RETRIES,
        core::PROCESSOR_DURATION,
        core::END_TO_END_LATENCY,
        core::EVENT_LATENCY,
        core::REPLAYED_RECORDS,
        core::CONSUMER_LAG,
        core::CONSUMER_PARTITIONS_WAITING,
        core::TRANSACTION_COMMITS,
        core::TRANSACTION_ABORTS,
        core::STATE_RESTORE_DURATION,
        core::PROCESSOR_FATAL_ERRORS,
        core::PROCESSOR_UP,
        core::PROCESSOR_READY,
        sink::DELIVERIES,
        sink::DELIVERY_DURATION,
        sink::RETRIES,
        sink::CIRCUIT_STATE,
        sink::BATCH_SIZE,
        sink::RETRYING,
        orders::STATE_CHANGES,
        orders::STEP_RESULTS,
        orders::STEP_SECONDS,
        orders::COMPENSATIONS,
        orders::IN_PROGRESS,
        orders::APPROVALS,
        orders::APPROVALS_WAITING,
        orders::APPROVAL_OLDEST_AGE,
        backbone_period_close::names::INVOICES_ISSUED,
        backbone_period_close::names::CORRECTIONS,
        backbone_period_close::names::PERIODS_OPEN,
        backbone_drift::metrics::names::DIFFERENCE,
        backbone_drift::metrics::names::RELATIVE,
        backbone_drift::metrics::names::LAST_RUN,
        backbone_monitor::names::LAG_RECORDS,
        backbone_monitor::names::LAG_SECONDS,
        backbone_monitor::names::UP,
        backbone_ingest::metrics::names::EVENTS_ACCEPTED,
        backbone_ingest::metrics::names::EVENTS_REJECTED,
        backbone_ingest::metrics::names::REQUESTS_THROTTLED,
        backbone_ingest::metrics::names::REQUEST_DURATION,
        backbone_core::tenant::names::HELD_RECORDS,
        backbone_core::tenant::names::HELD_OLDEST_AGE,
        backbone_usage_validator::contract::names::RECORDS,
        backbone_usage_validator::contract::names::NULL_FIELDS,
        backbone_usage_validator::contract::names::REJECTIONS,
    ]
    .into_iter()
    .collect();
    let mut expressions: Vec<(String, String)> = panels()
        .into_iter()
        .flat_map(|p| {
            let at = format!("{} / {}", p.dashboard, p.title);
            p.exprs.into_iter().map(move |e| (at.clone(), e))
        })
        .collect();
    expressions.extend(
        rules()
            .into_iter()
            .map(|r| (r.alert.or(r.record).unwrap_or_default(), r.expr)),
    );
    let mut used = BTreeSet::new();
    for (at, expr) in &expressions {
        for name in metric_names(expr) {
            assert!(
                exported.contains(name.as_str()),
                "{at}: {name} is not a metric any binary exports"
            );
            used.insert(name);
        }
    }
    for name in [
        backbone_monitor::names::LAG_RECORDS,
        backbone_monitor::names::LAG_SECONDS,
        backbone_drift::metrics::names::DIFFERENCE,
        backbone_drift::metrics::names::RELATIVE,
        core::EVENT_LATENCY,
        core::REPLAYED_RECORDS,
        backbone_usage_validator::contract::names::NULL_FIELDS,
    ] {
        assert!(used.contains(name), "{name} is shown nowhere");
    }
}

#[test]
fn every_dashboard_query_is_promql_that_promtool_accepts() {
    // promtool checks rule files only, so each panel's expression becomes a recording rule.
    let mut file = String::from("groups:\n  - name: dashboard-queries\n    rules:\n");
    let mut count = 0;
    for panel in panels() {
        for expr in panel.exprs {
            file.push_str(&format!(
                "      - record: dashboard:query:{count}\n        expr: {}\n",
                serde_json::to_string(&expr).expect("a string")
            ));
            count += 1;
        }
    }
    assert!(count >= 30, "{count} queries");
    let path = std::env::temp_dir().join(format!(
        "backbone-dashboard-queries-{}.yml",
        std::process::id()
    ));
    std::fs::write(&path, file).expect("write the query rules");
    let output = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&path)
        .output()
        .unwrap_or_else(|err| {
            panic!("promtool (Debian package prometheus; make setup installs it): {err}")
        });
    let _ = std::fs::remove_file(&path);
    assert!(
        output.status.success(),
        "promtool refuses a dashboard query:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn addresses_are_read_from_every_form_of_setting() {
    let found = |value: &str| -> Vec<(String, Option<u16>)> {
        addresses(value)
            .into_iter()
            .map(|a| (a.host, a.port))
            .collect()
    };
    assert_eq!(found("kafka:9092"), [("kafka".to_owned(), Some(9092))]);
    assert_eq!(
        found("postgres://backbone@postgres:5432/backbone"),
        [("postgres".to_owned(), Some(5432))]
    );
    assert_eq!(found("1@kafka:9093"), [("kafka".to_owned(), Some(9093))]);
    assert_eq!(
        found("PLAINTEXT://kafka:9092,HOST://127.0.0.1:29092"),
        [
            ("kafka".to_owned(), Some(9092)),
            ("127.0.0.1".to_owned(), Some(29092))
        ]
    );
    assert_eq!(
        found("http://sandbox/health"),
        [("sandbox".to_owned(), None)]
    );
    assert!(found("/etc/backbone/fanout.toml").is_empty());
    assert!(found("PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT").is_empty());
    assert_eq!(
        interpolate("${X:-http://schema-registry:8081}"),
        "http://schema-registry:8081"
    );
    assert_eq!(interpolate("a$$b"), "a$b");
}
