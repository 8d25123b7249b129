//! Layered, typed configuration: built-in defaults, then an optional TOML file, then
//! `BACKBONE__<SECTION>__<KEY>` environment overrides. Errors name the key path.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Prefix of environment overrides: `BACKBONE__KAFKA__BOOTSTRAP_SERVERS=...`.
pub const ENV_PREFIX: &str = "BACKBONE__";

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("config file `{path}`: {source}")]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// The config file is not valid TOML.
    #[error("config file `{path}`: {message}")]
    Syntax {
        /// The file that was read.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// An environment override is malformed.
    #[error("environment variable `{var}`: {message}")]
    Env {
        /// The variable's name.
        var: String,
        /// What is wrong with it.
        message: String,
    },
    /// A key has a value of the wrong type or an invalid value.
    #[error("config key `{key}`: {message}")]
    Invalid {
        /// Dotted key path, like `kafka.session_timeout`.
        key: String,
        /// What is wrong with the value.
        message: String,
    },
}

/// Checks that hold across keys, run once after loading so that bad config fails at start-up.
pub trait Validate {
    /// Returns the first problem found, naming its key.
    fn validate(&self) -> Result<(), ConfigError>;
}

/// Loads `T` from an optional TOML file and the process environment, then validates it.
pub fn load<T: DeserializeOwned + Validate>(path: Option<&Path>) -> Result<T, ConfigError> {
    load_from(path, std::env::vars())
}

/// Like [`load`], with the environment given explicitly (tests use this).
pub fn load_from<T, I>(path: Option<&Path>, env: I) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Validate,
    I: IntoIterator<Item = (String, String)>,
{
    let mut root = match path {
        Some(path) => read_file(path)?,
        None => toml::Table::new(),
    };
    let mut overrides: Vec<(String, String)> = env
        .into_iter()
        .filter(|(var, _)| var.starts_with(ENV_PREFIX))
        .collect();
    overrides.sort();
    for (var, value) in overrides {
        apply_override(&mut root, &var, &value)?;
    }
    let config: T = serde_path_to_error::deserialize(toml::Value::Table(root)).map_err(|err| {
        let message = err.inner().to_string();
        ConfigError::Invalid {
            key: failing_key(&err.path().to_string(), &message),
            message,
        }
    })?;
    config.validate()?;
    Ok(config)
}

/// The key an error is about: the path where deserialising stopped. A section read by hand
/// (the services' top level) leaves an unknown key out of the path, `.` at the top; the key is
/// then taken from the message.
fn failing_key(path: &str, message: &str) -> String {
    let unknown = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(field, _)| field);
    match unknown {
        Some(field) if path == "." => field.to_owned(),
        Some(field) if path.rsplit('.').next().is_none_or(|last| last != field) => {
            format!("{path}.{field}")
        }
        _ => path.to_owned(),
    }
}

fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    text.parse::<toml::Table>()
        .map_err(|err| ConfigError::Syntax {
            path: path.to_owned(),
            message: err.message().to_owned(),
        })
}

/// Sets `a.b.c` from `BACKBONE__A__B__C`. The value is read as a TOML value when it is one
/// (`3`, `true`, `["a", "b"]`), otherwise as a plain string (`6s`, `127.0.0.1:9092`).
fn apply_override(root: &mut toml::Table, var: &str, value: &str) -> Result<(), ConfigError> {
    let env_error = |message: &str| ConfigError::Env {
        var: var.to_owned(),
        message: message.to_owned(),
    };
    let path: Vec<String> = var[ENV_PREFIX.len()..]
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect();
    if path.iter().any(String::is_empty) {
        return Err(env_error(
            "empty key segment; expected BACKBONE__SECTION__KEY",
        ));
    }
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()));

    let (leaf, sections) = path.split_last().ok_or_else(|| env_error("no key"))?;
    let mut table = root;
    for section in sections {
        let entry = table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| env_error(&format!("`{section}` is a value, not a section")))?;
    }
    table.insert(leaf.clone(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::time::Duration;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[serde(default)]
        kafka: KafkaPart,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct KafkaPart {
        #[serde(default = "default_servers")]
        bootstrap_servers: String,
        #[serde(default = "default_timeout", with = "humantime_serde")]
        session_timeout: Duration,
        #[serde(default)]
        partitions: u32,
    }

    impl Default for KafkaPart {
        fn default() -> Self {
            Self {
                bootstrap_servers: default_servers(),
                session_timeout: default_timeout(),
                partitions: 0,
            }
        }
    }

    fn default_servers() -> String {
        "127.0.0.1:9092".into()
    }

    fn default_timeout() -> Duration {
        Duration::from_secs(6)
    }

    impl Validate for Sample {
        fn validate(&self) -> Result<(), ConfigError> {
            if self.kafka.bootstrap_servers.is_empty() {
                return Err(ConfigError::Invalid {
                    key: "kafka.bootstrap_servers".into(),
                    message: "must not be empty".into(),
                });
            }
            Ok(())
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn env_overrides_typed_values_by_key_path() {
        let cfg: Sample = load_from(
            None,
            env(&[
                ("BACKBONE__KAFKA__SESSION_TIMEOUT", "9s"),
                ("BACKBONE__KAFKA__PARTITIONS", "12"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.kafka.session_timeout, Duration::from_secs(9));
        assert_eq!(cfg.kafka.partitions, 12);
        assert_eq!(cfg.kafka.bootstrap_servers, "127.0.0.1:9092");
    }

    #[test]
    fn bad_duration_names_the_key() {
        let err = load_from::<Sample, _>(None, env(&[("BACKBONE__KAFKA__SESSION_TIMEOUT", "six")]))
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("config key `kafka.session_timeout`"),
            "{text}"
        );
    }

    #[test]
    fn unknown_key_is_refused() {
        let err =
            load_from::<Sample, _>(None, env(&[("BACKBONE__KAFKA__BOOTSTRAP", "x")])).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("config key `kafka.bootstrap`: unknown field `bootstrap`"),
            "{err}"
        );
    }

    #[test]
    fn validation_runs_after_loading() {
        let err =
            load_from::<Sample, _>(None, env(&[("BACKBONE__KAFKA__BOOTSTRAP_SERVERS", "\"\"")]))
                .unwrap_err();
        assert_eq!(
            err.to_string(),
            "config key `kafka.bootstrap_servers`: must not be empty"
        );
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("backbone-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.toml");
        std::fs::write(&file, "[kafka\n").unwrap();
        let err = load_from::<Sample, _>(Some(&file), Vec::new()).unwrap_err();
        assert!(err.to_string().contains("bad.toml"), "{err}");
        let missing =
            load_from::<Sample, _>(Some(&dir.join("absent.toml")), Vec::new()).unwrap_err();
        assert!(matches!(missing, ConfigError::Read { .. }));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
