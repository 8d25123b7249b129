//! Kafka over SASL_SSL, as managed clusters want it: every SASL mechanism they offer carries
//! records over TLS, and each way of getting security wrong stops start-up with one line that
//! names the listener, the protocol and mechanism, and what was refused. Never a silent retry.

#[path = "support/backbone.rs"]
mod backbone;

use std::process::Stdio;
use std::time::Duration;

use backbone::{stages, workspace_binary};
use backbone_components::{Destination, Kind};
use backbone_core::config::Validate;
use backbone_core::connect::{check_connection, ConnectError};
use backbone_core::KafkaSettings;
use backbone_testkit::{
    consume_until, create_topic, produce, unique_topic, SaslMechanism, SecuredBroker, TestCa,
    TestRecord, SASL_PASSWORD,
};

const DEADLINE: Duration = Duration::from_secs(60);
/// Long enough for any answer from a broker on this machine; a refusal comes in milliseconds.
const CONNECT: Duration = Duration::from_secs(20);

fn start_broker() -> SecuredBroker {
    tokio::task::block_in_place(SecuredBroker::start).expect("a SASL_SSL broker")
}

#[tokio::test(flavor = "multi_thread")]
async fn every_mechanism_carries_records_over_tls() {
    let broker = start_broker();
    for mechanism in SaslMechanism::ALL {
        let kafka = broker.settings(mechanism);
        let name = mechanism.name();
        tokio::task::block_in_place(|| check_connection(&kafka, CONNECT))
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        let topic = unique_topic(&format!("sasl.{}", name.to_ascii_lowercase()));
        create_topic(&kafka, &topic, 1)
            .await
            .unwrap_or_else(|err| panic!("{name}: create {topic}: {err}"));
        produce(&kafka, &topic, &[TestRecord::new(name, "over TLS")])
            .await
            .unwrap_or_else(|err| panic!("{name}: produce: {err}"));
        let read = consume_until(&kafka, &topic, 1, DEADLINE)
            .await
            .unwrap_or_else(|err| panic!("{name}: consume: {err}"));
        assert_eq!(read[0].value.as_deref(), Some(&b"over TLS"[..]), "{name}");
    }
}

/// Why `kafka` cannot be used: its start-up validation's error, else its connection's, which
/// must come at once.
fn refusal(kafka: &KafkaSettings) -> String {
    if let Err(invalid) = kafka.validate() {
        return invalid.to_string();
    }
    let started = std::time::Instant::now();
    let err = tokio::task::block_in_place(|| check_connection(kafka, CONNECT))
        .expect_err("a connection that must fail");
    assert!(
        !matches!(err, ConnectError::Unreachable { .. }),
        "refused at once, not retried until the deadline ({:?}): {err}",
        started.elapsed()
    );
    err.to_string()
}

fn assert_names(line: &str, parts: &[&str]) {
    println!("{line}");
    for part in parts {
        assert!(line.contains(part), "`{part}` missing from: {line}");
    }
    assert!(!line.contains('\n'), "one line: {line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn security_mistakes_stop_start_up_naming_what_is_wrong() {
    let broker = start_broker();
    let listener = broker.bootstrap();
    let scram = SaslMechanism::ScramSha256;

    let wrong_password = broker.settings_with_password(scram, "not-the-password");
    assert_names(
        &refusal(&wrong_password),
        &[
            &listener,
            "security.protocol=SASL_SSL",
            "sasl.mechanism=SCRAM-SHA-256",
            "invalid credentials",
        ],
    );
    assert!(
        !refusal(&wrong_password).contains("not-the-password"),
        "the password is never printed"
    );

    let stranger = TestCa::new("stranger").expect("another CA");
    let mut untrusted = broker.settings(scram);
    set(
        &mut untrusted,
        "ssl.ca.location",
        &stranger.cert().display().to_string(),
    );
    assert_names(
        &refusal(&untrusted),
        &[
            &listener,
            "security.protocol=SASL_SSL",
            "certificate verify failed",
        ],
    );

    let missing = "/nonexistent/backbone-ca.pem";
    let mut no_ca_file = broker.settings(scram);
    set(&mut no_ca_file, "ssl.ca.location", missing);
    assert_names(&refusal(&no_ca_file), &["ssl.ca.location", missing]);

    let garbage = std::env::temp_dir().join(format!("{}.pem", unique_topic("not-a-certificate")));
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    let mut malformed = broker.settings(scram);
    set(
        &mut malformed,
        "ssl.ca.location",
        &garbage.display().to_string(),
    );
    assert_names(
        &refusal(&malformed),
        &["ssl.ca.location", &garbage.display().to_string()],
    );
    let _ = std::fs::remove_file(&garbage);

    // Expired: a CA we would trust, and a client certificate we would present.
    let issuer = TestCa::new("expired").expect("a CA");
    let expired = issuer
        .issue_expired("client")
        .expect("an expired certificate");
    for key in ["ssl.ca.location", "ssl.certificate.location"] {
        let mut stale = broker.settings(scram);
        set(&mut stale, key, &expired.cert.display().to_string());
        set(
            &mut stale,
            "ssl.key.location",
            &expired.key.display().to_string(),
        );
        assert_names(
            &refusal(&stale),
            &[
                key,
                &expired.cert.display().to_string(),
                "expired on Jan  2 00:00:00 2024",
            ],
        );
    }

    let mut unknown_mechanism = broker.settings(scram);
    set(&mut unknown_mechanism, "sasl.mechanism", "SCRAM-SHA-1");
    assert_names(
        &refusal(&unknown_mechanism),
        &["sasl.mechanism", "SCRAM-SHA-1"],
    );
}

fn set(kafka: &mut KafkaSettings, key: &str, value: &str) {
    kafka.properties.insert(key.to_owned(), value.to_owned());
}

/// `properties` as one environment override: a TOML inline table.
fn properties_env(kafka: &KafkaSettings) -> String {
    let pairs: Vec<String> = kafka
        .properties
        .iter()
        .map(|(k, v)| format!("{k:?} = {v:?}"))
        .collect();
    format!("{{ {} }}", pairs.join(", "))
}

/// Runs `binary` with `args` against `kafka`, which must be refused, and answers the line of
/// its error output that says so; it must exit unsuccessfully, at once, and never print
/// `secret`.
async fn refused_at_start(
    binary: &str,
    args: &[&str],
    kafka: &KafkaSettings,
    secret: &str,
) -> String {
    let mut command = tokio::process::Command::new(workspace_binary(binary));
    command
        .args(args)
        .env(
            "BACKBONE__KAFKA__BOOTSTRAP_SERVERS",
            &kafka.bootstrap_servers,
        )
        .env("BACKBONE__KAFKA__PROPERTIES", properties_env(kafka))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    match backbone_components::named(binary) {
        Some(c) if c.is_stage() => command.env("BACKBONE__OBSERVABILITY__LISTEN", "127.0.0.1:0"),
        _ if binary == "schema-registry" => command
            .env("BACKBONE__REGISTRY__LISTEN", "127.0.0.1:0")
            .env("BACKBONE__REGISTRY__ANONYMOUS", "true"),
        _ => &mut command,
    };
    // A destination a sink accepts at start-up; nothing is ever delivered to it.
    match backbone_components::named(binary).and_then(|c| c.destination) {
        Some(Destination::Postgres) => command.env(
            "BACKBONE__DESTINATION__URL",
            "postgres://app@127.0.0.1:1/backbone",
        ),
        Some(Destination::Http) => command.env("BACKBONE__DESTINATION__URL", "http://127.0.0.1:1"),
        None => &mut command,
    };
    let output = tokio::time::timeout(DEADLINE, command.output())
        .await
        .unwrap_or_else(|_| panic!("{binary} still running after {DEADLINE:?}"))
        .unwrap_or_else(|err| panic!("{binary}: {err}"));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(!output.status.success(), "{binary}: {stderr}");
    assert!(
        !stderr.contains(secret) && !stdout.contains(secret),
        "{binary} printed the password"
    );
    stderr
        .lines()
        .find(|l| l.contains("refused the connection"))
        .unwrap_or_else(|| panic!("{binary}: no refusal in: {stderr}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_stage_and_tool_given_a_wrong_password_exits_at_start_up_saying_so() {
    let broker = start_broker();
    let secret = "not-the-password";
    let wrong = broker.settings_with_password(SaslMechanism::ScramSha512, secret);
    let tools: [(&str, &[&str]); 7] = [
        ("schema-registry", &[]),
        ("monitor", &["--once"]),
        ("drift", &["report"]),
        ("replay", &["dlq", "list", "dead.letters"]),
        ("loadgen", &["--events", "1"]),
        ("contracts", &["apply"]),
        ("demo", &[]),
    ];
    let stages = stages().into_iter().map(|stage| (stage, &[][..]));
    // All at once: each is refused within a second, but starts a process of its own.
    let runs: Vec<_> = stages.chain(tools).collect();
    let lines = futures::future::join_all(
        runs.iter()
            .map(|(binary, args)| refused_at_start(binary, args, &wrong, secret)),
    )
    .await;
    for ((binary, _), line) in runs.iter().zip(lines) {
        assert_names(
            &line,
            &[
                binary,
                &broker.bootstrap(),
                "sasl.mechanism=SCRAM-SHA-512",
                "invalid credentials",
            ],
        );
    }
}

/// Secrets given to every binary that prints its config, each where an operator would put it;
/// none may appear in what it prints.
const PRINTED_SECRETS: [&str; 6] = [
    "secret-in-properties-1",
    "secret-in-oauth-config-2",
    "secret-in-a-file-3",
    "secret-in-a-registry-url-4",
    "secret-credential-5",
    "secret-in-a-database-url-6",
];

#[tokio::test]
async fn no_binary_prints_a_secret_of_its_config() {
    let dir = std::env::temp_dir().join(unique_topic("printed-secrets"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("kafka-password");
    std::fs::write(&file, format!("{}\n", PRINTED_SECRETS[2])).expect("write");
    let [properties, oauth, _, registry, credential, database] = PRINTED_SECRETS;
    let kafka = [
        (
            "BACKBONE__KAFKA__PROPERTIES".to_owned(),
            format!(
                "{{ \"sasl.password\" = \"{properties}\", \
                 \"sasl.oauthbearer.config\" = \"principal=app extension_a={oauth}\" }}"
            ),
        ),
        (
            "BACKBONE__KAFKA__PROPERTY_FILES".to_owned(),
            format!("{{ \"sasl.password\" = \"{}\" }}", file.display()),
        ),
    ];
    let mut printed = 0;
    for component in backbone_components::all() {
        let binary = component.name.as_str();
        let mut env: Vec<(String, String)> = Vec::new();
        match component.kind {
            Kind::Service if binary == "schema-registry" => {
                env.extend(kafka.clone());
                env.push((
                    "BACKBONE__REGISTRY__ANONYMOUS".to_owned(),
                    "true".to_owned(),
                ));
            }
            // The stages and the ingest gateway: registry clients.
            Kind::Processor | Kind::Sink | Kind::Service => {
                env.extend(kafka.clone());
                env.push((
                    "BACKBONE__SCHEMA_REGISTRY__URL".to_owned(),
                    format!("http://app:{registry}@127.0.0.1:8081"),
                ));
            }
            Kind::Tool if binary == "monitor" => env.extend(kafka.clone()),
            Kind::Tool if binary == "sandbox" => {
                env.push(("BACKBONE__TOKEN".to_owned(), credential.to_owned()));
            }
            // The other tools take flags, not a config to print.
            Kind::Tool => continue,
        }
        match component.destination {
            Some(Destination::Postgres) => env.push((
                "BACKBONE__DESTINATION__URL".to_owned(),
                format!("postgres://app:{database}@127.0.0.1:1/backbone"),
            )),
            Some(Destination::Http) => env.push((
                "BACKBONE__DESTINATION__CREDENTIAL".to_owned(),
                credential.to_owned(),
            )),
            None => {}
        }
        let output = tokio::process::Command::new(workspace_binary(binary))
            .arg("--print-config")
            .envs(env)
            .output()
            .await
            .unwrap_or_else(|err| panic!("{binary}: {err}"));
        let (stdout, stderr) = (
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
        assert!(output.status.success(), "{binary}: {stderr}");
        for secret in PRINTED_SECRETS {
            assert!(
                !stdout.contains(secret) && !stderr.contains(secret),
                "{binary} printed {secret}:\n{stdout}"
            );
        }
        printed += 1;
    }
    // Every stage, the registry, the gateway, the monitor and the sandbox.
    assert!(
        printed >= 12,
        "only {printed} binaries printed their config"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_password_from_a_mounted_file_reaches_the_cluster() {
    let broker = start_broker();
    let mut kafka = broker.settings(SaslMechanism::ScramSha256);
    kafka.properties.remove("sasl.password");
    let file = std::env::temp_dir().join(unique_topic("kafka-password"));
    std::fs::write(&file, format!("{SASL_PASSWORD}\n")).expect("write");
    let output = tokio::process::Command::new(workspace_binary("monitor"))
        .arg("--once")
        .env(
            "BACKBONE__KAFKA__BOOTSTRAP_SERVERS",
            &kafka.bootstrap_servers,
        )
        .env("BACKBONE__KAFKA__PROPERTIES", properties_env(&kafka))
        .env(
            "BACKBONE__KAFKA__PROPERTY_FILES",
            format!("{{ \"sasl.password\" = \"{}\" }}", file.display()),
        )
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(DEADLINE, output)
        .await
        .expect("monitor --once ends")
        .expect("monitor runs");
    let _ = std::fs::remove_file(&file);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `--print-config | head` is how an operator looks at a config: the reader closing the pipe
/// early is no error of the binary's, and no panic.
#[test]
fn printing_the_config_into_a_pipe_closed_early_is_no_failure() {
    let binary = workspace_binary("usage-validator");
    // `true` exits without reading, before the binary has loaded its config.
    let status = std::process::Command::new("bash")
        .args(["-c", "set -o pipefail; \"$0\" --print-config | true"])
        .arg(&binary)
        .stderr(Stdio::null())
        .status()
        .expect("bash runs");
    assert!(
        status.success(),
        "{} --print-config | true: {status}",
        binary.display()
    );
}
