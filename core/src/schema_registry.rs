//! The `[schema_registry]` section every service and tool shares, and the flags of the tools
//! that take the registry on their command line: where it is, who we are to it, which CA to
//! trust. Both become one [`RegistryAccess`] for the registry client.

use std::path::PathBuf;

use backbone_schemas::{BasicAuth, RegistryAccess};
use clap::Args;
use serde::Deserialize;

use crate::certificates;
use crate::config::{ConfigError, Validate};
use crate::secret::Secret;

/// The `[schema_registry]` config section.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchemaRegistrySettings {
    /// Base URL of a Confluent-compatible schema registry. Credentials written into it
    /// (`https://user:password@host`) are sent as basic auth.
    pub url: String,
    /// User for the registry's basic authentication.
    pub username: Option<String>,
    /// That user's password (better: `password_file`, or BACKBONE__SCHEMA_REGISTRY__PASSWORD).
    pub password: Secret,
    /// A file holding the password (a mounted secret); wins over `password`.
    pub password_file: Option<PathBuf>,
    /// PEM CA certificates trusted besides the system's, for an `https://` registry.
    pub ca_file: Option<PathBuf>,
}

impl SchemaRegistrySettings {
    /// The registry at `url`, anonymously.
    pub fn at(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// How clients reach the registry: the URL, credentials and CA, the files read now.
    pub fn access(&self) -> Result<RegistryAccess, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: format!("schema_registry.{key}"),
            message,
        };
        let mut access = RegistryAccess::new(&self.url);
        let password = Secret::resolve(
            &self.password,
            self.password_file.as_deref(),
            "schema_registry.password_file",
        )?;
        match (&self.username, password.is_empty()) {
            (Some(_), _) if access.auth().is_some() => {
                return Err(invalid(
                    "username",
                    "the URL holds credentials already; set them in one place".into(),
                ))
            }
            (Some(username), false) => {
                access = access.with_auth(BasicAuth {
                    username: username.clone(),
                    password: password.expose().to_owned(),
                });
            }
            (Some(username), true) => {
                return Err(invalid(
                    "password",
                    format!("user `{username}` has no password (set password_file or password)"),
                ))
            }
            (None, false) => {
                return Err(invalid(
                    "username",
                    "a password is set but no user to send it for".into(),
                ))
            }
            (None, true) => {}
        }
        if let Some(path) = &self.ca_file {
            access = access.with_ca(certificates::http_roots(path, "schema_registry.ca_file")?);
        }
        Ok(access)
    }
}

impl std::fmt::Debug for SchemaRegistrySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaRegistrySettings")
            .field("url", &crate::secret::redact_url(&self.url))
            .field("username", &self.username)
            .field("password", &self.password)
            .field("password_file", &self.password_file)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl Default for SchemaRegistrySettings {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8081".to_owned(),
            username: None,
            password: Secret::default(),
            password_file: None,
            ca_file: None,
        }
    }
}

impl Validate for SchemaRegistrySettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(ConfigError::Invalid {
                key: "schema_registry.url".to_owned(),
                message: format!(
                    "expected an http:// or https:// URL, got \"{}\"",
                    crate::secret::redact_url(&self.url)
                ),
            });
        }
        self.access().map(|_| ())
    }
}

/// The registry flags of a command-line tool, each with the environment variable a service's
/// `[schema_registry]` key reads, so that a tool and a service configured alike reach the
/// registry alike.
#[derive(Debug, Clone, Args)]
pub struct RegistryArgs {
    /// Schema registry base URL.
    #[arg(
        long,
        env = "BACKBONE__SCHEMA_REGISTRY__URL",
        default_value = "http://127.0.0.1:8081",
        value_name = "URL"
    )]
    pub registry_url: String,
    /// User for the registry's basic authentication; the password comes from
    /// --registry-password-file or BACKBONE__SCHEMA_REGISTRY__PASSWORD.
    #[arg(long, env = "BACKBONE__SCHEMA_REGISTRY__USERNAME", value_name = "USER")]
    pub registry_username: Option<String>,
    /// File holding the registry password.
    #[arg(
        long,
        env = "BACKBONE__SCHEMA_REGISTRY__PASSWORD_FILE",
        value_name = "FILE"
    )]
    pub registry_password_file: Option<PathBuf>,
    /// PEM CA certificates to trust for an https:// registry.
    #[arg(long, env = "BACKBONE__SCHEMA_REGISTRY__CA_FILE", value_name = "FILE")]
    pub registry_ca_file: Option<PathBuf>,
}

impl RegistryArgs {
    /// The settings these flags make; the password itself only ever from the environment or
    /// a file, never from a flag that `ps` would show.
    pub fn settings(&self) -> SchemaRegistrySettings {
        SchemaRegistrySettings {
            url: self.registry_url.clone(),
            username: self.registry_username.clone(),
            password: Secret::new(
                std::env::var("BACKBONE__SCHEMA_REGISTRY__PASSWORD").unwrap_or_default(),
            ),
            password_file: self.registry_password_file.clone(),
            ca_file: self.registry_ca_file.clone(),
        }
    }

    /// The environment that gives a child process (a service, another tool) the same registry
    /// settings; the password itself is inherited through BACKBONE__SCHEMA_REGISTRY__PASSWORD
    /// or read from the same file.
    pub fn env(&self) -> Vec<(String, String)> {
        let var = |key: &str| format!("BACKBONE__SCHEMA_REGISTRY__{key}");
        let mut env = vec![(var("URL"), self.registry_url.clone())];
        if let Some(user) = &self.registry_username {
            env.push((var("USERNAME"), user.clone()));
        }
        for (key, file) in [
            ("PASSWORD_FILE", &self.registry_password_file),
            ("CA_FILE", &self.registry_ca_file),
        ] {
            if let Some(file) = file {
                env.push((var(key), file.display().to_string()));
            }
        }
        env
    }

    /// How to reach the registry; a setting that cannot work names its flag.
    pub fn access(&self) -> Result<RegistryAccess, RegistryFlagError> {
        let settings = self.settings();
        settings
            .validate()
            .and_then(|()| settings.access())
            .map_err(|err| match err {
                ConfigError::Invalid { key, message } => RegistryFlagError {
                    flag: match key.trim_start_matches("schema_registry.") {
                        "password" => "BACKBONE__SCHEMA_REGISTRY__PASSWORD".to_owned(),
                        setting => format!("--registry-{}", setting.replace('_', "-")),
                    },
                    message,
                },
                other => RegistryFlagError {
                    flag: "--registry-url".to_owned(),
                    message: other.to_string(),
                },
            })
    }
}

/// A registry flag that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("{flag}: {message}")]
pub struct RegistryFlagError {
    /// The flag (or environment variable) at fault.
    pub flag: String,
    /// What is wrong with it.
    pub message: String,
}
