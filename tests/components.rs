//! `components.toml` is the one list of the backbone's components, and everything that names
//! a component agrees with it: the workspace builds each binary where the list says, the
//! Dockerfile builds exactly the listed binaries, compose runs every stage as a service of its
//! name, Prometheus scrapes exactly the listed endpoints, deploy/config holds a file per
//! configured component with the listed topics, and every key the list sets is one its binary
//! takes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[path = "support/workspace.rs"]
mod workspace;
use std::process::Command;

use backbone_components::{all, env_var, stages, Component, Destination, Kind};
use serde_yaml::Value as Yaml;
use workspace::{folder, packages, read, repo};

/// A binary built next to this test's own (`make test` builds every binary first).
fn workspace_binary(name: &str) -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_tally")).with_file_name(name)
}

fn names(components: impl Iterator<Item = &'static Component>) -> BTreeSet<String> {
    components.map(|c| c.name.clone()).collect()
}

#[test]
fn each_listed_binary_is_built_from_the_listed_folder() {
    let mut binaries: BTreeMap<String, PathBuf> = BTreeMap::new();
    for package in packages() {
        let folder = folder(&package);
        for target in package["targets"].as_array().expect("targets") {
            if target["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"))
            {
                let name = target["name"].as_str().expect("name").to_owned();
                binaries.insert(name, folder.clone());
            }
        }
    }
    for component in all() {
        assert_eq!(
            binaries.get(&component.name),
            Some(&repo().join(&component.path)),
            "{}: no binary of that name in {}",
            component.name,
            component.path
        );
    }
}

#[test]
fn the_image_builds_exactly_the_listed_binaries() {
    // The Dockerfile takes the names from components.toml with this sed; the same reading in
    // Rust must give exactly the list's names.
    let dockerfile = read("Dockerfile");
    assert!(
        dockerfile.contains(r#"BINARIES=$(sed -n 's/^name = "\(.*\)"$/\1/p' components.toml)"#),
        "the Dockerfile builds the binaries components.toml names"
    );
    let named: BTreeSet<String> = read("components.toml")
        .lines()
        .filter_map(|line| line.strip_prefix("name = \"")?.strip_suffix('"'))
        .map(str::to_owned)
        .collect();
    assert_eq!(named, names(all().iter()), "the names the Dockerfile reads");
}

#[test]
fn compose_runs_every_stage_as_a_service_of_its_name() {
    let compose: Yaml = serde_yaml::from_str(&read("docker-compose.yml")).expect("compose YAML");
    let services = compose["services"].as_mapping().expect("services");
    for stage in stages() {
        let service = services
            .get(stage.name.as_str())
            .unwrap_or_else(|| panic!("docker-compose.yml has no service `{}`", stage.name));
        let command: Vec<&str> = service["command"]
            .as_sequence()
            .expect("a command")
            .iter()
            .filter_map(Yaml::as_str)
            .collect();
        assert_eq!(command, [stage.name.as_str()], "{}: command", stage.name);
        let config = format!("/etc/backbone/{}.toml", stage.name);
        assert_eq!(
            service["environment"]["BACKBONE_CONFIG"].as_str(),
            Some(config.as_str()),
            "{}: BACKBONE_CONFIG",
            stage.name
        );
    }
}

#[test]
fn prometheus_scrapes_exactly_the_listed_endpoints_by_kind() {
    let prometheus: Yaml =
        serde_yaml::from_str(&read("deploy/prometheus/prometheus.yml")).expect("YAML");
    let mut jobs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for job in prometheus["scrape_configs"].as_sequence().expect("jobs") {
        let name = job["job_name"].as_str().expect("job_name");
        if name == "prometheus" {
            continue;
        }
        let targets = jobs.entry(name.to_owned()).or_default();
        for group in job["static_configs"].as_sequence().expect("static_configs") {
            for target in group["targets"].as_sequence().expect("targets") {
                targets.insert(target.as_str().expect("a target").to_owned());
            }
        }
    }
    let mut expected: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for component in all() {
        let Some(port) = component.metrics else {
            continue;
        };
        let job = match component.kind {
            Kind::Processor => "backbone-processors".to_owned(),
            Kind::Sink => "backbone-sinks".to_owned(),
            Kind::Service | Kind::Tool => format!("backbone-{}", component.name),
        };
        expected
            .entry(job)
            .or_default()
            .insert(format!("{}:{port}", component.name));
    }
    assert_eq!(jobs, expected, "deploy/prometheus/prometheus.yml");
}

/// The value at dotted `key` of a TOML table.
fn at<'t>(table: &'t toml::Table, key: &str) -> Option<&'t toml::Value> {
    let (section, rest) = key.split_once('.')?;
    let value = table.get(section)?;
    match rest.contains('.') {
        true => at(value.as_table()?, rest),
        false => value.as_table()?.get(rest),
    }
}

#[test]
fn deploy_config_has_a_file_per_configured_component_naming_the_listed_topics() {
    let files: BTreeSet<String> = std::fs::read_dir(repo().join("deploy/config"))
        .expect("deploy/config")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let configured: BTreeSet<String> = all()
        .iter()
        .filter(|c| !c.env_only)
        .map(|c| format!("{}.toml", c.name))
        .collect();
    assert_eq!(files, configured, "deploy/config");
    for stage in stages() {
        let file = format!("deploy/config/{}.toml", stage.name);
        let table: toml::Table = read(&file).parse().expect("TOML");
        for (key, topic) in stage.topic_settings() {
            assert_eq!(
                at(&table, key).and_then(toml::Value::as_str),
                Some(topic),
                "{file}: `{key}` is not the listed topic"
            );
        }
    }
}

/// Runs `binary --check-config` with `env`; its error output when it refuses.
fn check_config(binary: &str, env: &[(String, String)]) -> Result<(), String> {
    let output = Command::new(workspace_binary(binary))
        .arg("--check-config")
        .env_clear()
        .envs(env.iter().cloned())
        .output()
        .unwrap_or_else(|e| panic!("{binary}: {e} (make test builds every binary first)"));
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

#[test]
fn every_key_the_list_sets_is_one_its_binary_takes() {
    for stage in stages() {
        let mut env: Vec<(String, String)> = stage
            .topic_settings()
            .map(|(key, topic)| (env_var(key), topic.to_owned()))
            .chain(stage.local.iter().map(|(k, v)| (env_var(k), v.clone())))
            .chain(stage.dedup.iter().map(|k| (env_var(k), "false".to_owned())))
            .collect();
        if stage.destination == Some(Destination::Postgres) {
            env.push((
                env_var("destination.url"),
                "postgres://127.0.0.1/backbone".to_owned(),
            ));
        }
        if let Err(err) = check_config(&stage.name, &env) {
            panic!("{}: refuses what components.toml sets: {err}", stage.name);
        }
        // And it would refuse a key it does not take: the check above can fail.
        env.push((env_var("kafka.not_a_key"), "1".to_owned()));
        assert!(check_config(&stage.name, &env).is_err(), "{}", stage.name);
    }
}
