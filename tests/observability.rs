//! The backbone scraped by a real Prometheus server: every processor, sink, the lag monitor
//! and the drift reconciler run as their own processes; Prometheus (the Debian package) loads
//! the repository's alert rules and scrapes them all. Every PromQL expression of every
//! dashboard panel answers with series, every alert rule evaluates, and journals the ERP
//! acknowledges but drops show up as drift and fire the drift alert. Then every command of
//! every runbook (docs/runbooks) runs against that backbone and succeeds.

#[path = "support/backbone.rs"]
mod backbone;
#[path = "support/orders.rs"]
mod orders;
#[path = "support/sinks.rs"]
mod sinks;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use backbone::{free_port, Deployment};
use backbone_calendar::{day_of_micros, format_date, now_micros};
use backbone_ingest::keys::{self, NewKey};
use backbone_loadgen::{LoadSpec, Payload, Workload, LEGAL_ENTITY, METER};
use backbone_sandbox::SandboxConfig;
use backbone_schemas::types::OrderStatus;
use backbone_schemas::WireCodec;
use backbone_testkit::ChildProcess;
use serde_json::Value;
use sinks::{eventually, registry_url, Sandbox};

const DEADLINE: Duration = Duration::from_secs(180);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the repository root")
        .to_owned()
}

/// The repository's alert rules with every `for:` cut to one second, so that a rule whose
/// condition holds fires within the test, and the contract rules' windows scaled down with
/// it: their last 10 minutes become 15 seconds, the null rule's day before them the minute
/// before those (the new-schema rule's past, a day ending an hour ago, stays: empty in a test,
/// every id is new). Otherwise the expressions are untouched; `rules.test.yml` tests them at
/// full scale.
fn rules_for_test(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("deploy/prometheus/rules.yml"))
        .expect("deploy/prometheus/rules.yml");
    let shortened: Vec<String> = text
        .lines()
        .map(|line| match line.split_once("for:") {
            Some((indent, _)) if indent.trim().is_empty() => format!("{indent}for: 1s"),
            _ if line.contains("backbone_contract_") => line
                .replace("[1d] offset 10m", "[1m] offset 15s")
                .replace("[10m]", "[15s]"),
            _ => line.to_owned(),
        })
        .collect();
    let path = dir.join("rules.yml");
    std::fs::write(&path, shortened.join("\n")).expect("write rules");
    path
}

struct Prometheus {
    url: String,
    _process: ChildProcess,
    client: reqwest::Client,
}

impl Prometheus {
    async fn start(dir: &Path, targets: &[String]) -> Prometheus {
        let rules = rules_for_test(dir);
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: backbone\n    static_configs:\n      - targets: [{}]\n",
            rules.display(),
            targets
                .iter()
                .map(|t| format!("\"{t}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let port = free_port();
        let process = ChildProcess::spawn(
            Path::new("/usr/bin/prometheus"),
            &[
                &format!("--config.file={}", config_path.display()),
                &format!("--storage.tsdb.path={}", dir.join("tsdb").display()),
                &format!("--web.listen-address=127.0.0.1:{port}"),
            ],
            &[],
            Some(&dir.join("prometheus.log")),
        )
        .expect("start prometheus (the Debian package; `make setup` installs it)");
        let prometheus = Prometheus {
            url: format!("http://127.0.0.1:{port}"),
            _process: process,
            client: reqwest::Client::new(),
        };
        let ready = format!("{}/-/ready", prometheus.url);
        eventually(
            Duration::from_secs(60),
            "Prometheus to be ready",
            || async {
                let answer = prometheus.client.get(&ready).send().await.ok()?;
                answer.status().is_success().then_some(())
            },
        )
        .await;
        prometheus
    }

    /// An instant query: `Err` with Prometheus's error, else the result vector.
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let answer: Value = self
            .client
            .get(format!(
                "{}/api/v1/query?query={}",
                self.url,
                percent_encode(expr)
            ))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        if answer["status"] != "success" {
            return Err(format!("{}: {}", answer["errorType"], answer["error"]));
        }
        Ok(answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    async fn firing(&self) -> Vec<Value> {
        let answer: Value = self
            .client
            .get(format!("{}/api/v1/alerts", self.url))
            .send()
            .await
            .expect("alerts")
            .json()
            .await
            .expect("alerts JSON");
        answer["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a["state"] == "firing")
            .collect()
    }
}

/// `text` as a URL query value: every byte but the unreserved ones percent-encoded.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every `expr` of every panel (rows included) of every dashboard in `deploy/`.
fn dashboard_expressions() -> Vec<(String, String)> {
    let dir = repo().join("deploy/grafana/dashboards");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("deploy/grafana/dashboards") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let dashboard: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("JSON");
        let mut panels: Vec<Value> = dashboard["panels"].as_array().cloned().unwrap_or_default();
        while let Some(panel) = panels.pop() {
            panels.extend(panel["panels"].as_array().cloned().unwrap_or_default());
            for target in panel["targets"].as_array().cloned().unwrap_or_default() {
                if let Some(expr) = target["expr"].as_str() {
                    let title = panel["title"].as_str().unwrap_or("").to_owned();
                    found.push((format!("{} / {title}", path.display()), expr.to_owned()));
                }
            }
        }
    }
    found
}

/// Every alert rule's name and expression.
fn alert_expressions() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("deploy/prometheus/rules.yml")).expect("rules");
    let rules: serde_yaml::Value = serde_yaml::from_str(&text).expect("rules YAML");
    let mut found = Vec::new();
    for group in rules["groups"].as_sequence().cloned().unwrap_or_default() {
        for rule in group["rules"].as_sequence().cloned().unwrap_or_default() {
            if let (Some(name), Some(expr)) = (rule["alert"].as_str(), rule["expr"].as_str()) {
                found.push((name.to_owned(), expr.to_owned()));
            }
        }
    }
    found
}

/// The `backbone_*` metric names an expression reads.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(start) = rest.find("backbone_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[tokio::test]
async fn prometheus_answers_every_dashboard_and_alert_query_and_dropped_journals_fire_the_drift_alert(
) {
    let sandbox = Sandbox::start(SandboxConfig::default()).await;
    // The ERP acknowledges this entity's journals and keeps none: drift the reconciler must see.
    sandbox
        .client
        .withhold(Some(LEGAL_ENTITY))
        .await
        .expect("withhold journals");
    let postgres = std::env::var("BACKBONE_TEST_POSTGRES_URL")
        .expect("BACKBONE_TEST_POSTGRES_URL; `make test` starts PostgreSQL");
    let mut deployment =
        Deployment::create("observed", &sandbox.url, &postgres, &registry_url()).await;
    // An order over 1,000 waits for approval, is escalated after a second and rejected after
    // two: the order panels' series, without a person deciding.
    for (key, value) in [
        ("processor.approval.min_total", "1000"),
        ("processor.approval.timeout", "1s"),
    ] {
        deployment
            .settings
            .push(("order-orchestrator", key.to_owned(), value.to_owned()));
    }
    deployment.start_pipeline();
    deployment.start("monitor");
    deployment.start("drift");

    let tenant = format!("obs-{}", now_micros());
    let workload = Workload::generate(&LoadSpec {
        seed: 7,
        tenant: tenant.clone(),
        customers: 12,
        plans: 2,
        events: 400,
        duplicate_share: 0.03,
        late_share: 0.05,
        out_of_window_share: 0.01,
        poison_share: 0.03,
        now_micros: now_micros(),
    });
    deployment.publish(&workload).await;
    let mut big = orders::order(
        &tenant,
        "o-observed",
        1,
        OrderStatus::Confirmed,
        "c-observed",
        Some("plan-observed"),
    );
    big.total_amount = "5000".parse().expect("total");
    orders::publish_orders(
        &deployment,
        &WireCodec::new(registry_url().as_str()),
        &[big],
    )
    .await;

    // The ingest gateway beside the pipeline: a batch of two events for one of the workload's
    // customers and one the contract refuses, so its accepted and rejected series exist.
    let keys_file = deployment.ingest_keys_file();
    let usage_type = "backbone.usage.recorded".to_owned();
    let new_key = NewKey {
        tenant: tenant.clone(),
        event_types: vec![usage_type.clone()],
        rate_per_second: None,
        daily_quota: None,
    };
    let (_, token) = keys::create(&keys_file, new_key, 0).expect("an ingest key");
    deployment.start("ingest");
    let customer = workload.accounts[0].customer_id.clone();
    let now = now_micros();
    let time = format!(
        "{}T{:02}:{:02}:{:02}Z",
        format_date(day_of_micros(now)),
        now.rem_euclid(86_400_000_000) / 3_600_000_000,
        now.rem_euclid(3_600_000_000) / 60_000_000,
        now.rem_euclid(60_000_000) / 1_000_000
    );
    let event = |id: &str, quantity: Value| {
        serde_json::json!({
            "specversion": "1.0", "id": id, "source": "observability", "type": usage_type,
            "time": time,
            "data": {"customer_id": customer, "meter_id": METER, "quantity": quantity, "unit": "call"}
        })
    };
    let batch = Value::from(vec![
        event("gw-1", Value::from("2")),
        event("gw-2", Value::from("3")),
        event("gw-3", Value::from(3.5)),
    ]);
    let url = format!("http://{}/v1/events", deployment.metrics_address("ingest"));
    let http = reqwest::Client::new();
    let status = eventually(DEADLINE, "the gateway to take a batch", || async {
        let answer = http
            .post(&url)
            .bearer_auth(&token)
            .header("content-type", "application/cloudevents-batch+json")
            .body(batch.to_string())
            .send()
            .await
            .ok()?;
        Some(answer.status().as_u16())
    })
    .await;
    assert_eq!(status, 207, "two accepted, one refused");

    let targets: Vec<String> = deployment
        .ports
        .keys()
        .map(|binary| deployment.metrics_address(binary))
        .collect();
    let prometheus = Prometheus::start(&deployment.dir, &targets).await;

    let expected = workload.expected.billed_events;
    eventually(DEADLINE, "every charge in the billing system", || async {
        let charges = sandbox.client.charges().await.ok()?;
        (charges.iter().filter(|c| c.tenant_id == tenant).count() >= expected).then_some(())
    })
    .await;

    // Usage to delivery is longer than charge to delivery: the event's time came with it
    // from the usage topic through every stage.
    let longer = "sum(backbone_event_latency_seconds_sum{processor=\"billing-sink\"}) / sum(backbone_event_latency_seconds_count{processor=\"billing-sink\"}) > sum(backbone_end_to_end_latency_seconds_sum{processor=\"billing-sink\"}) / sum(backbone_end_to_end_latency_seconds_count{processor=\"billing-sink\"})";
    eventually(
        DEADLINE,
        "usage to delivery longer than charge to delivery",
        || async { (!prometheus.query(longer).await.ok()?.is_empty()).then_some(()) },
    )
    .await;

    let drift =
        format!("backbone_drift_difference{{check=\"rated_vs_erp\",tenant=\"{tenant}\"}} < 0");
    eventually(
        DEADLINE,
        "the withheld journals as drift in Prometheus",
        || async { (!prometheus.query(&drift).await.ok()?.is_empty()).then_some(()) },
    )
    .await;
    let drift_alerts: BTreeSet<String> = alert_expressions()
        .into_iter()
        .filter(|(_, expr)| expr.contains("backbone_drift"))
        .map(|(name, _)| name)
        .collect();
    assert!(!drift_alerts.is_empty(), "a drift alert rule exists");
    let fired = eventually(DEADLINE, "the drift alert to fire", || async {
        prometheus.firing().await.into_iter().find(|a| {
            let labels = &a["labels"];
            labels["alertname"]
                .as_str()
                .is_some_and(|n| drift_alerts.contains(n))
                && labels["check"] == "rated_vs_erp"
                && labels["tenant"] == tenant.as_str()
        })
    })
    .await;
    assert_eq!(
        fired["labels"]["severity"].as_str().map(str::is_empty),
        Some(false),
        "{fired}"
    );
    // Billing and the CRM were not withheld: their drift settles at zero.
    let settled = format!(
        "backbone_drift_difference{{check=~\"rated_vs_billed|accounts_vs_crm\",tenant=\"{tenant}\"}} == 0"
    );
    eventually(DEADLINE, "billing and CRM without drift", || async {
        (prometheus.query(&settled).await.ok()?.len() == 2).then_some(())
    })
    .await;

    let panels = dashboard_expressions();
    assert!(
        panels.len() >= 8,
        "the dashboards have panels: {}",
        panels.len()
    );
    for (panel, expr) in &panels {
        // Grafana's interval variables, as Grafana would fill them for a short range.
        let expr = &expr
            .replace("$__rate_interval", "1m")
            .replace("$__interval", "1m")
            .replace("$__range", "5m")
            .replace("\"$tenant\"", "\".*\"");
        let series = eventually(
            Duration::from_secs(60),
            &format!("{panel}: {expr}"),
            || async {
                match prometheus.query(expr).await {
                    Ok(series) if !series.is_empty() => Some(Ok(series)),
                    Ok(_) => None,
                    Err(err) => Some(Err(err)),
                }
            },
        )
        .await;
        assert!(series.is_ok(), "{panel}: `{expr}` fails: {series:?}");
    }
    let alerts = alert_expressions();
    assert!(alerts.len() >= 5, "alert rules: {alerts:?}");
    for (name, expr) in &alerts {
        prometheus
            .query(expr)
            .await
            .unwrap_or_else(|err| panic!("alert {name}: `{expr}` fails: {err}"));
        for metric in metric_names(expr) {
            let series = prometheus.query(&metric).await.expect("query");
            assert!(
                !series.is_empty(),
                "alert {name} reads `{metric}`, which has no series"
            );
        }
    }

    // Every command of every runbook, against this backbone.
    let charges = sandbox.client.charges().await.expect("charges");
    let rating_id = charges
        .iter()
        .find(|c| c.tenant_id == tenant)
        .and_then(|c| c.metadata.get("rating_id").cloned())
        .expect("a charge of the tenant");
    let event_id = workload
        .usage
        .iter()
        .find_map(|r| match &r.payload {
            Payload::Event(e) if e.quantity.unscaled() > 0 => Some(e.metadata.event_id.clone()),
            _ => None,
        })
        .expect("an event");
    let reason = ["invalid_quantity", "wrong_magic_byte", "unknown_schema_id"]
        .into_iter()
        .find(|r| workload.expected.dead_letters.contains_key(*r))
        .expect("poison the validator dead-letters");
    let filled = Placeholders {
        tenant: &tenant,
        event_id: &event_id,
        rating_id: &rating_id,
        reason,
    };
    run_runbooks(&deployment, &filled).await;
    // The runbooks' replay sent dead letters back to the validator, which counted them.
    let replayed = "sum(backbone_replayed_records_total{processor=\"usage-validator\"}) > 0";
    eventually(DEADLINE, "the replayed records counted", || async {
        (!prometheus.query(replayed).await.ok()?.is_empty()).then_some(())
    })
    .await;

    contract_nulls_fire_their_alert(&deployment, &prometheus, &workload).await;
}

/// A producer that fills `unique_value`, then stops: the contract alert fires for that
/// producer and field, and for no other field of it.
async fn contract_nulls_fire_their_alert(
    deployment: &Deployment,
    prometheus: &Prometheus,
    workload: &Workload,
) {
    let (key, template) = workload
        .usage
        .iter()
        .find_map(|r| match &r.payload {
            Payload::Event(e) if e.quantity.unscaled() > 0 => Some((r.key.clone(), (**e).clone())),
            _ => None,
        })
        .expect("an event");
    let source = format!("contract-drift-{}", now_micros());
    let codec = WireCodec::new(registry_url());
    let sent = std::sync::atomic::AtomicU64::new(0);
    let send = |unique: bool| {
        let n = sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut event = template.clone();
        event.metadata.source.clone_from(&source);
        event.metadata.event_id = format!("{source}-{n}");
        event.unique_value = unique.then(|| format!("u-{n}"));
        let (codec, topic, key) = (&codec, &deployment.topics.usage, key.clone());
        async move { sinks::publish(codec, topic, &[(key, event, None)]).await }
    };
    // Its past: the minute before the last 15 seconds holds records that all had the field.
    let past = format!(
        "sum(rate(backbone_contract_records_total{{source=\"{source}\"}}[1m] offset 15s)) > 0"
    );
    eventually(DEADLINE, "a past of records with the field", || async {
        send(true).await;
        (!prometheus.query(&past).await.ok()?.is_empty()).then_some(())
    })
    .await;
    let fired = eventually(DEADLINE, "the contract alert to fire", || async {
        send(false).await;
        let alerts: Vec<Value> = prometheus
            .firing()
            .await
            .into_iter()
            .filter(|a| {
                a["labels"]["alertname"] == "BackboneContractNullsRising"
                    && a["labels"]["source"] == source.as_str()
            })
            .collect();
        (!alerts.is_empty()).then_some(alerts)
    })
    .await;
    let fields: Vec<&str> = fired
        .iter()
        .filter_map(|a| a["labels"]["field"].as_str())
        .collect();
    assert_eq!(fields, ["unique_value"], "{fired:#?}");
    assert_eq!(
        fired[0]["labels"]["topic"],
        deployment.topics.usage.as_str()
    );
}

/// What a runbook's placeholders stand for in this run.
struct Placeholders<'a> {
    tenant: &'a str,
    event_id: &'a str,
    rating_id: &'a str,
    reason: &'a str,
}

/// The commands of the runbooks' `sh` blocks, with their file.
fn runbook_commands() -> Vec<(String, String)> {
    let mut commands = Vec::new();
    let dir = repo().join("docs/runbooks");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("docs/runbooks")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("runbook");
        let name = file
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let mut in_sh = false;
        for line in text.lines() {
            match line.trim() {
                "```sh" => in_sh = true,
                "```" => in_sh = false,
                command if in_sh && !command.is_empty() && !command.starts_with('#') => {
                    commands.push((name.clone(), command.to_owned()));
                }
                _ => {}
            }
        }
    }
    commands
}

/// Runs every runbook command against `deployment`: placeholders filled in, the component list's
/// topic and group names turned into the deployment's, each tool given the deployment's broker,
/// registry and settings. Each must exit 0.
async fn run_runbooks(deployment: &Deployment, filled: &Placeholders<'_>) {
    let commands = runbook_commands();
    assert!(commands.len() >= 20, "runbook commands: {commands:?}");
    let hour_ago = backbone_calendar::format_rfc3339_ms(backbone_calendar::now_ms() - 3_600_000);
    let mut ran = BTreeSet::new();
    for (file, command) in &commands {
        let line = command
            .replace("<tenant>", filled.tenant)
            .replace("<event-id>", filled.event_id)
            .replace("<rating-id>", filled.rating_id)
            .replace("<reason>", filled.reason)
            .replace("<group>", &deployment.group("crm-sink"))
            .replace("<topic>", "usage.events")
            .replace("<processor>", "usage-validator")
            .replace("<time>", &hour_ago)
            .replace("<you>", "runbook-test");
        assert!(
            !line.contains('<'),
            "{file}: a placeholder nobody fills in: {command}"
        );
        let mut words: Vec<String> = line
            .split_whitespace()
            .map(|word| {
                let (base, dlq) = word
                    .strip_suffix(".dlq")
                    .map_or((word, ""), |base| (base, ".dlq"));
                match deployment.topics.by_name.get(base) {
                    Some(deployed) => format!("{deployed}{dlq}"),
                    None => word.to_owned(),
                }
            })
            .collect();
        let program = words.remove(0);
        let mut env: Vec<(String, String)> = match program.as_str() {
            "replay" => vec![
                (
                    "BACKBONE__KAFKA__BOOTSTRAP_SERVERS".into(),
                    deployment.kafka.bootstrap_servers.clone(),
                ),
                ("BACKBONE__SCHEMA_REGISTRY__URL".into(), registry_url()),
            ],
            "make" => Vec::new(),
            binary => deployment.env(binary),
        };
        if words.first().is_some_and(|w| w == "trace") {
            for topic in backbone_replay::trace::TRACED_TOPICS {
                words.push("--topic".into());
                words.push(format!("{topic}={}", deployment.topics.name(topic)));
            }
            words.push("--enricher-group".into());
            words.push(deployment.group("enricher"));
        }
        let path = if program == "make" {
            PathBuf::from("make")
        } else {
            backbone::workspace_binary(&program)
        };
        env.push(("USER".into(), "runbook-test".into()));
        let output = tokio::time::timeout(
            DEADLINE,
            tokio::process::Command::new(&path)
                .args(&words)
                .envs(env)
                .current_dir(repo())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("{file}: `{line}` did not finish"))
        .unwrap_or_else(|e| panic!("{file}: `{line}` does not start: {e}"));
        assert!(
            output.status.success(),
            "{file}: `{program} {}` failed with {}:\n{}\n{}",
            words.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        ran.insert(program);
    }
    for tool in ["replay", "monitor", "drift", "make"] {
        assert!(ran.contains(tool), "no runbook runs {tool}: {ran:?}");
    }
}
