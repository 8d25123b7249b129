//! The `contracts` binary, run as a process: exit codes, messages and `--json` output.
//!
//! `lint` and `check --against` need nothing else; `register` runs against an in-process
//! registry and `apply` against the shared test broker (`BACKBONE_TEST_BOOTSTRAP`).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backbone_core::admin::partition_count;
use backbone_testkit::{create_topic, shared_settings, unique_topic};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_contracts");

/// The workspace root, where `schemas/contracts` and `schemas/manifest.toml` are.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .expect("tools/contracts/ is two levels below the root")
        .to_owned()
}

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let path = std::env::temp_dir().join(format!(
            "contracts-{label}-{}-{nanos}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn write(&self, relative: &str, text: &str) -> PathBuf {
        let path = self.0.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create parent dir");
        }
        std::fs::write(&path, text).expect("write file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let path = entry.expect("dir entry").path();
        let target = to.join(path.file_name().expect("file name"));
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).expect("copy file");
        }
    }
}

/// A finished run of the binary.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn of(output: Output) -> Self {
        Self {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{self}"))
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn command(dir: &Path, args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(BIN);
    command
        .args(args)
        .current_dir(dir)
        .env_remove("BACKBONE__SCHEMA_REGISTRY__URL")
        .env_remove("BACKBONE__KAFKA__BOOTSTRAP_SERVERS");
    command
}

/// Runs the binary in `dir` and waits (for tests without a runtime).
fn contracts(dir: &Path, args: &[&str]) -> Run {
    Run::of(command(dir, args).output().expect("run contracts"))
}

/// Runs the binary in `dir` without blocking the runtime (an in-process registry is serving).
async fn contracts_async(dir: &Path, args: &[&str]) -> Run {
    let output = tokio::process::Command::from(command(dir, args))
        .output()
        .await
        .expect("run contracts");
    Run::of(output)
}

/// A lint-clean contract with one record `backbone.test.Thing`; `extra` adds fields.
fn thing_schema(note_type: &str, extra: &str) -> String {
    format!(
        r#"{{
  "type": "record",
  "name": "Thing",
  "namespace": "backbone.test",
  "doc": "A record for tests.",
  "fields": [
    {{"name": "thing_id", "type": "string", "doc": "Id of the thing."}},
    {{"name": "note", "type": "{note_type}", "doc": "A note."}}{extra}
  ]
}}
"#
    )
}

const OPTIONAL_LABEL: &str = r#",
    {"name": "label", "type": ["null", "string"], "default": null, "doc": "Optional label."}"#;
const REQUIRED_LABEL: &str = r#",
    {"name": "label", "type": "string", "doc": "Required label."}"#;

/// One `[[topic]]` entry.
fn topic_entry(name: &str, schema: &str, mode: &str, partitions: i32) -> String {
    format!(
        r#"
[[topic]]
name = "{name}"
key_format = "string"
key_doc = "<tenant_id>:<thing_id>"
value_subject = "{name}-value"
subject_name_strategy = "TopicNameStrategy"
value_schema = "{schema}"
owner_team = "platform"
system_of_record = "tests"
compatibility = "{mode}"
partitions = {partitions}
cleanup_policy = "delete"
retention = "1d"
dlq = "{name}.dlq"
pii_fields = []
"#
    )
}

/// (contract files, manifest topics) in the repository, as `lint` counts them.
fn repo_counts() -> (usize, usize) {
    let files = backbone_contracts::read_contract_dir(&repo_root().join("schemas/contracts"))
        .expect("read contracts")
        .len();
    let manifest =
        std::fs::read_to_string(repo_root().join("schemas/manifest.toml")).expect("read manifest");
    let topics = backbone_schemas::Manifest::parse(&manifest)
        .expect("parse manifest")
        .topic
        .len();
    (files, topics)
}

fn git(dir: &Path, args: &[&str]) {
    let status = std::process::Command::new("git")
        .args(["-c", "user.name=test", "-c", "user.email=test@example.com"])
        .args(args)
        .current_dir(dir)
        .status()
        .expect("run git");
    assert!(status.success(), "git {args:?} failed");
}

#[test]
fn lint_passes_on_the_repository() {
    let run = contracts(&repo_root(), &["lint"]);
    assert_eq!(run.code, 0, "{run}");
    let (files, topics) = repo_counts();
    assert!(
        run.stdout.contains(&format!(
            "lint: {files} contract files, {topics} topics: ok"
        )),
        "{run}"
    );
    assert!(run.stdout.trim_end().ends_with(": ok"), "{run}");
    // It read the files on disk, not the copy built into the binary.
    assert!(!run.stderr.contains("built into"), "{run}");
}

#[test]
fn lint_names_the_file_and_field_of_a_missing_doc() {
    let temp = TempDir::new("lint");
    let dir = temp.path().join("contracts");
    copy_dir(&repo_root().join("schemas/contracts"), &dir);
    let file = dir.join("usage/usage_event.avsc");
    let mut json: Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("json");
    let fields = json["fields"].as_array_mut().expect("fields");
    let quantity = fields
        .iter_mut()
        .find(|f| f["name"] == "quantity")
        .expect("quantity field");
    quantity.as_object_mut().expect("object").remove("doc");
    std::fs::write(&file, serde_json::to_string_pretty(&json).expect("json")).expect("write");

    let manifest = repo_root().join("schemas/manifest.toml");
    let args = [
        "lint",
        "--contracts-dir",
        dir.to_str().expect("utf-8 path"),
        "--manifest",
        manifest.to_str().expect("utf-8 path"),
    ];
    let run = contracts(temp.path(), &args);
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stdout.contains(
            "usage/usage_event.avsc: field quantity (backbone.usage.UsageEvent): rule doc-required: field has no doc"
        ),
        "{run}"
    );
    let (files, topics) = repo_counts();
    assert!(
        run.stdout.contains(&format!(
            "lint: {files} contract files, {topics} topics: 1 violation"
        )),
        "{run}"
    );

    let mut with_json = vec!["--json"];
    with_json.extend(args);
    let run = contracts(temp.path(), &with_json);
    assert_eq!(run.code, 1, "{run}");
    let report = run.json();
    assert_eq!(report["ok"], false);
    assert_eq!(
        report["violations"],
        json!([{
            "schema": "usage/usage_event.avsc",
            "field": "quantity",
            "record": "backbone.usage.UsageEvent",
            "rule": "doc-required",
            "message": "field has no doc",
        }])
    );
}

#[test]
fn json_output_is_one_document() {
    let run = contracts(&repo_root(), &["--json", "lint"]);
    assert_eq!(run.code, 0, "{run}");
    let report = run.json();
    assert_eq!(report["ok"], true);
    assert_eq!(report["command"], "lint");
    assert_eq!(report["violations"], json!([]));
    assert_eq!(report["files"], repo_counts().0);

    let run = contracts(&repo_root(), &["check", "--json", "--against", "HEAD"]);
    assert_eq!(run.code, 0, "{run}");
    let report = run.json();
    assert_eq!(report["against"], "git ref HEAD");
    let usage = report["subjects"]
        .as_array()
        .expect("subjects")
        .iter()
        .find(|s| s["topic"] == "usage.events")
        .expect("usage.events checked");
    assert_eq!(usage["mode"], "BACKWARD");
}

#[test]
fn usage_errors_exit_2_and_name_the_input() {
    let run = contracts(&repo_root(), &["lint", "--contracts-dir", "no/such/dir"]);
    assert_eq!(run.code, 2, "{run}");
    assert!(
        run.stderr
            .contains("no/such/dir: no such file or directory"),
        "{run}"
    );

    let run = contracts(
        &repo_root(),
        &["check", "--against", "no-such-ref-anywhere"],
    );
    assert_eq!(run.code, 2, "{run}");
    assert!(
        run.stderr
            .contains("`no-such-ref-anywhere`: no such git ref"),
        "{run}"
    );

    let run = contracts(
        &repo_root(),
        &["--json", "check", "--registry-url", "http://127.0.0.1:1"],
    );
    assert_eq!(run.code, 2, "{run}");
    assert_eq!(run.json()["ok"], false, "{run}");
    assert!(
        run.stderr.contains("registry at http://127.0.0.1:1"),
        "{run}"
    );

    let run = contracts(&repo_root(), &["frobnicate"]);
    assert_eq!(run.code, 2, "{run}");
    let run = contracts(&repo_root(), &["--help"]);
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stdout.contains("Exit codes"), "{run}");
}

#[test]
fn check_against_head_passes_in_the_repository() {
    let run = contracts(&repo_root(), &["check", "--against", "HEAD"]);
    assert_eq!(run.code, 0, "{run}");
    assert!(
        run.stdout
            .contains("usage.events-value (usage/usage_event.avsc): "),
        "{run}"
    );
    let topics = repo_counts().1;
    assert!(
        run.stdout.contains(&format!(
            "check: {topics} subjects against git ref HEAD: ok"
        )),
        "{run}"
    );
}

#[test]
fn check_against_a_git_ref_applies_the_manifest_mode() {
    let repo = TempDir::new("git");
    repo.write(
        "schemas/contracts/test/thing.avsc",
        &thing_schema("string", ""),
    );
    repo.write(
        "schemas/manifest.toml",
        &topic_entry("test.things", "test/thing.avsc", "BACKWARD", 1),
    );
    git(repo.path(), &["init", "-q"]);
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "contracts"]);

    let run = contracts(repo.path(), &["check", "--against", "HEAD"]);
    assert_eq!(run.code, 0, "{run}");
    assert!(
        run.stdout
            .contains("test.things-value (test/thing.avsc): unchanged"),
        "{run}"
    );

    // Changing a field's type breaks BACKWARD: the new schema cannot read old data.
    repo.write(
        "schemas/contracts/test/thing.avsc",
        &thing_schema("int", ""),
    );
    let run = contracts(repo.path(), &["check", "--against", "HEAD"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stdout.contains(
            "test/thing.avsc: topic test.things: field note (backbone.test.Thing): rule compatibility: BACKWARD:"
        ),
        "{run}"
    );
    let report = contracts(repo.path(), &["--json", "check", "--against", "HEAD"]).json();
    assert_eq!(report["ok"], false);
    assert_eq!(report["violations"][0]["field"], "note");
    assert_eq!(report["violations"][0]["rule"], "compatibility");
    assert_eq!(report["subjects"][0]["status"], "incompatible");

    // A new field without a default cannot be filled in from old data either.
    repo.write(
        "schemas/contracts/test/thing.avsc",
        &thing_schema("string", REQUIRED_LABEL),
    );
    let run = contracts(repo.path(), &["check", "--against", "HEAD"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stdout.contains("field label (backbone.test.Thing)"),
        "{run}"
    );

    // An optional field with a null default is a compatible change; a topic the ref did not
    // have is new, not a violation.
    repo.write(
        "schemas/contracts/test/thing.avsc",
        &thing_schema("string", OPTIONAL_LABEL),
    );
    repo.write(
        "schemas/contracts/test/other.avsc",
        &thing_schema("string", "").replace("Thing", "Other"),
    );
    repo.write(
        "schemas/manifest.toml",
        &(topic_entry("test.things", "test/thing.avsc", "BACKWARD", 1)
            + &topic_entry("test.others", "test/other.avsc", "BACKWARD", 1)),
    );
    let run = contracts(repo.path(), &["check", "--against", "HEAD"]);
    assert_eq!(run.code, 0, "{run}");
    assert!(
        run.stdout
            .contains("test.things-value (test/thing.avsc): compatible (BACKWARD)"),
        "{run}"
    );
    assert!(
        run.stdout
            .contains("test.others-value (test/other.avsc): new subject"),
        "{run}"
    );

    // Under FORWARD, removing a field that old readers need (no default there) is a violation.
    repo.write(
        "schemas/manifest.toml",
        &topic_entry("test.things", "test/thing.avsc", "FORWARD", 1),
    );
    let without_note = r#"{
  "type": "record", "name": "Thing", "namespace": "backbone.test", "doc": "A record for tests.",
  "fields": [{"name": "thing_id", "type": "string", "doc": "Id of the thing."}]
}"#;
    repo.write("schemas/contracts/test/thing.avsc", without_note);
    let run = contracts(repo.path(), &["check", "--against", "HEAD"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stdout
            .contains("field note (backbone.test.Thing): rule compatibility: FORWARD:"),
        "{run}"
    );
}

/// An in-process registry over its own topic on the shared test broker.
mod registry {
    use backbone_registry::{LocalRegistry, RegistryConfig};
    use backbone_testkit::{shared_settings, unique_topic};

    pub struct TestRegistry {
        pub url: String,
        local: LocalRegistry,
    }

    impl TestRegistry {
        pub async fn start() -> Self {
            let config =
                RegistryConfig::ephemeral(shared_settings(), &unique_topic("contracts-schemas"));
            let local = LocalRegistry::start(&config)
                .await
                .expect("registry starts");
            Self {
                url: local.url().to_owned(),
                local,
            }
        }

        pub async fn stop(self) {
            self.local.stop().await.expect("registry stops");
        }
    }
}

/// A contracts dir holding a copy of the repository's contracts plus `test/thing.avsc`, and a
/// manifest with `usage.events` and `test.things`.
fn registry_inputs() -> TempDir {
    let temp = TempDir::new("register");
    copy_dir(
        &repo_root().join("schemas/contracts"),
        &temp.path().join("schemas/contracts"),
    );
    temp.write(
        "schemas/contracts/test/thing.avsc",
        &thing_schema("string", ""),
    );
    let usage = std::fs::read_to_string(repo_root().join("schemas/manifest.toml"))
        .expect("read manifest")
        .split("[[topic]]")
        .find(|entry| entry.contains("name = \"usage.events\""))
        .map(|entry| format!("[[topic]]{entry}"))
        .expect("usage.events in the manifest");
    temp.write(
        "schemas/manifest.toml",
        &(usage + &topic_entry("test.things", "test/thing.avsc", "BACKWARD", 1)),
    );
    temp
}

fn ids(report: &Value) -> Vec<(String, u64)> {
    report["subjects"]
        .as_array()
        .expect("subjects")
        .iter()
        .map(|s| {
            (
                s["subject"].as_str().expect("subject").to_owned(),
                s["id"].as_u64().expect("id"),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_is_idempotent_and_refuses_incompatible_schemas() {
    let registry = registry::TestRegistry::start().await;
    let inputs = registry_inputs();
    let dir = inputs.path();
    let url = registry.url.as_str();

    let run = contracts_async(dir, &["check", "--registry-url", url]).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(
        run.stdout
            .contains("test.things-value (test/thing.avsc): new subject"),
        "{run}"
    );

    let first = contracts_async(dir, &["--json", "register", "--registry-url", url]).await;
    assert_eq!(first.code, 0, "{first}");
    let first = first.json();
    assert_eq!(first["subjects"][0]["status"], "registered", "{first}");
    assert_eq!(first["subjects"][0]["mode_changed"], true, "{first}");
    let second = contracts_async(dir, &["register", "--registry-url", url]).await;
    assert_eq!(second.code, 0, "{second}");
    for (subject, id) in ids(&first) {
        assert!(
            second.stdout.contains(&format!(
                "{subject}: id {id} (already registered as version 1)"
            )),
            "{subject} id {id}: {second}"
        );
    }
    let mode = reqwest::get(format!("{url}/config/test.things-value"))
        .await
        .expect("get config")
        .text()
        .await
        .expect("config body");
    assert!(mode.contains("BACKWARD"), "{mode}");

    // Checked against the registry, an incompatible change names the field ...
    std::fs::write(
        dir.join("schemas/contracts/test/thing.avsc"),
        thing_schema("int", ""),
    )
    .expect("write");
    let run = contracts_async(dir, &["check", "--registry-url", url]).await;
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stdout.contains(
            "test/thing.avsc: topic test.things: field note (backbone.test.Thing): rule compatibility: BACKWARD: the new schema cannot read data written with version 1"
        ),
        "{run}"
    );
    // ... and the registry refuses to register it, naming the subject.
    let run = contracts_async(dir, &["register", "--registry-url", url]).await;
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stdout.contains("rule compatibility: subject `test.things-value`: the registry refused the schema: Schema being registered is incompatible"),
        "{run}"
    );
    let report = contracts_async(dir, &["--json", "register", "--registry-url", url])
        .await
        .json();
    assert_eq!(report["ok"], false);
    assert_eq!(report["violations"][0]["schema"], "test/thing.avsc");

    // A compatible change registers as version 2 with a new id.
    std::fs::write(
        dir.join("schemas/contracts/test/thing.avsc"),
        thing_schema("string", OPTIONAL_LABEL),
    )
    .expect("write");
    let run = contracts_async(dir, &["--json", "register", "--registry-url", url]).await;
    assert_eq!(run.code, 0, "{run}");
    let report = run.json();
    let things = &report["subjects"][1];
    assert_eq!(things["version"], 2, "{report}");
    assert_ne!(things["id"], first["subjects"][1]["id"], "{report}");
    registry.stop().await;
}

/// A manifest with `topics` (name, partitions), all using `test/thing.avsc`.
fn apply_inputs(topics: &[(&str, i32)]) -> TempDir {
    let temp = TempDir::new("apply");
    temp.write(
        "schemas/contracts/test/thing.avsc",
        &thing_schema("string", ""),
    );
    let manifest: String = topics
        .iter()
        .map(|(name, partitions)| topic_entry(name, "test/thing.avsc", "BACKWARD", *partitions))
        .collect();
    temp.write("schemas/manifest.toml", &manifest);
    temp
}

fn partitions(topic: &str) -> Option<usize> {
    partition_count(&shared_settings(), topic, Duration::from_secs(10)).expect("metadata")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_creates_missing_topics_once() {
    let servers = shared_settings().bootstrap_servers;
    let (a, b) = (
        unique_topic("contracts-apply"),
        unique_topic("contracts-apply"),
    );
    let inputs = apply_inputs(&[(&a, 2), (&b, 1)]);
    let dir = inputs.path();

    let run = contracts_async(
        dir,
        &["apply", "--dry-run", "--bootstrap-servers", &servers],
    )
    .await;
    assert_eq!(run.code, 0, "{run}");
    assert!(
        run.stdout.contains(&format!(
            "create topic {a} with 2 partitions (cleanup.policy=delete, retention.ms=86400000)"
        )),
        "{run}"
    );
    assert!(
        run.stdout.contains(&format!(
            "create topic {a}.dlq with 2 partitions (cleanup.policy=delete)"
        )),
        "{run}"
    );
    assert!(
        run.stdout
            .contains("dry run, 4 topics to create, nothing changed"),
        "{run}"
    );
    for topic in [&a, &b] {
        assert_eq!(partitions(topic), None, "--dry-run created {topic}");
    }

    let run = contracts_async(dir, &["--json", "apply", "--bootstrap-servers", &servers]).await;
    assert_eq!(run.code, 0, "{run}");
    let report = run.json();
    assert_eq!(report["applied"], true);
    assert_eq!(
        report["changes"].as_array().map(Vec::len),
        Some(4),
        "{report}"
    );
    assert_eq!(partitions(&a), Some(2));
    assert_eq!(partitions(&format!("{a}.dlq")), Some(2));
    assert_eq!(partitions(&b), Some(1));
    assert_eq!(partitions(&format!("{b}.dlq")), Some(1));

    let run = contracts_async(dir, &["apply", "--bootstrap-servers", &servers]).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(!run.stdout.contains("create topic"), "{run}");
    assert!(
        run.stdout.contains("nothing to do, 4 topics up to date"),
        "{run}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_reports_partition_differences_and_leaves_them() {
    let settings = shared_settings();
    let topic = unique_topic("contracts-apply");
    create_topic(&settings, &topic, 1)
        .await
        .expect("create topic");
    let inputs = apply_inputs(&[(&topic, 3)]);

    let run = contracts_async(
        inputs.path(),
        &["apply", "--bootstrap-servers", &settings.bootstrap_servers],
    )
    .await;
    assert_eq!(run.code, 0, "{run}");
    assert!(
        run.stdout.contains(&format!(
            "warning: topic {topic}: partitions differ (broker 1, manifest 3)"
        )),
        "{run}"
    );
    assert!(
        run.stdout
            .contains(&format!("create topic {topic}.dlq with 3 partitions")),
        "{run}"
    );
    assert_eq!(partitions(&topic), Some(1));
    assert_eq!(partitions(&format!("{topic}.dlq")), Some(3));
}
