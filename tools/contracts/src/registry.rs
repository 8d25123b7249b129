//! `register`, and the registry as `check` and `register` ask it: `backbone-schemas`' one
//! registry client, its answers in the CLI's terms.

use std::time::Duration;

use backbone_compat::CompatibilityMode;
use backbone_core::schema_registry::RegistryArgs;
use backbone_schemas::RegistryClient as Client;
use reqwest::Url;
use serde::Serialize;

use super::{CliError, Detail, Inputs, Report};
use backbone_schemas::lint::{Rule, Violation};

/// Longest wait for any one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// The registry a command works against.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    client: Client,
}

impl RegistryClient {
    /// A client of the registry the flags name, with their credentials and CA.
    pub fn new(flags: &RegistryArgs) -> Result<Self, CliError> {
        let access = flags
            .access()
            .map_err(|err| CliError::Usage(err.to_string()))?;
        let url = access.url().to_owned();
        if Url::parse(&url).map_or(true, |base| base.cannot_be_a_base()) {
            return Err(CliError::Usage(format!(
                "--registry-url `{url}`: expected an http:// or https:// URL"
            )));
        }
        Ok(Self {
            client: Client::new(access, REQUEST_TIMEOUT),
        })
    }

    /// The registry URL.
    pub fn url(&self) -> &str {
        self.client.url()
    }

    /// Version numbers of `subject`, oldest first; `None` when the subject does not exist.
    pub async fn versions(&self, subject: &str) -> Result<Option<Vec<u32>>, CliError> {
        Ok(self.client.versions(subject).await?)
    }

    /// The schema text of one version.
    pub async fn version_schema(&self, subject: &str, version: u32) -> Result<String, CliError> {
        Ok(self.client.version_schema(subject, version).await?)
    }

    /// The subject's compatibility mode; with `default_to_global`, the global mode when the
    /// subject has none. `None` when the registry has no mode for it.
    pub async fn subject_mode(
        &self,
        subject: &str,
        default_to_global: bool,
    ) -> Result<Option<CompatibilityMode>, CliError> {
        let Some(level) = self
            .client
            .compatibility(subject, default_to_global)
            .await?
        else {
            return Ok(None);
        };
        level.parse().map(Some).map_err(|e| CliError::Registry {
            url: self.url().to_owned(),
            message: format!("compatibility of subject `{subject}`: {e}"),
        })
    }

    /// Sets the subject's compatibility mode.
    pub async fn set_subject_mode(
        &self,
        subject: &str,
        mode: CompatibilityMode,
    ) -> Result<(), CliError> {
        Ok(self
            .client
            .set_compatibility(subject, mode.as_str())
            .await?)
    }

    /// The (id, version) under which `subject` holds `schema`, if it does.
    pub async fn lookup(
        &self,
        subject: &str,
        schema: &str,
    ) -> Result<Option<(u32, u32)>, CliError> {
        Ok(self.client.lookup(subject, schema).await?)
    }

    /// Registers `schema` under `subject`: its id, or the registry's refusal as a violation
    /// rule (compatibility for 409, registry-rejected for 422) and message.
    async fn register(
        &self,
        subject: &str,
        schema: &str,
    ) -> Result<Result<u32, (Rule, String)>, CliError> {
        match self.client.register(subject, schema).await {
            Ok(id) => Ok(Ok(id)),
            Err(err) => {
                let rule = match err.status() {
                    Some(409) => Rule::Compatibility,
                    Some(422) => Rule::RegistryRejected,
                    _ => return Err(err.into()),
                };
                let message = err.refusal_message().unwrap_or_default().to_owned();
                Ok(Err((rule, message)))
            }
        }
    }
}

/// What `register` did.
#[derive(Debug, Clone, Serialize)]
pub struct RegisterSummary {
    /// The registry URL.
    pub registry: String,
    /// One entry per manifest topic.
    pub subjects: Vec<Registration>,
}

impl RegisterSummary {
    /// One line per subject.
    pub fn lines(&self) -> Vec<String> {
        self.subjects
            .iter()
            .map(|r| {
                let outcome = match (r.status, r.id, r.version) {
                    (RegistrationStatus::Registered, Some(id), Some(version)) => {
                        format!("id {id} (registered as version {version})")
                    }
                    (RegistrationStatus::Registered, Some(id), None) => {
                        format!("id {id} (registered)")
                    }
                    (RegistrationStatus::AlreadyRegistered, Some(id), Some(version)) => {
                        format!("id {id} (already registered as version {version})")
                    }
                    _ => "refused".to_owned(),
                };
                let mode = if r.mode_changed {
                    format!("{}, set now", r.mode)
                } else {
                    r.mode.to_string()
                };
                format!("{}: {outcome}, compatibility {mode}", r.subject)
            })
            .collect()
    }
}

/// The result for one subject.
#[derive(Debug, Clone, Serialize)]
pub struct Registration {
    /// Manifest topic.
    pub topic: String,
    /// Registry subject.
    pub subject: String,
    /// Contract file, relative to the contracts directory.
    pub schema: String,
    /// Schema id, unless refused.
    pub id: Option<u32>,
    /// Version within the subject, when known.
    pub version: Option<u32>,
    /// The subject's compatibility mode, from the manifest.
    pub mode: CompatibilityMode,
    /// Whether this run changed the subject's mode.
    pub mode_changed: bool,
    /// Outcome.
    pub status: RegistrationStatus,
}

/// Outcome for one subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RegistrationStatus {
    /// A new version was registered.
    Registered,
    /// The subject held the schema already.
    AlreadyRegistered,
    /// The registry refused it; see the violations.
    Refused,
}

/// Registers every manifest topic's bundled contract under its value subject, setting the
/// subject's compatibility to the manifest's mode first. Idempotent: a schema the subject
/// holds already keeps its id.
pub async fn register(inputs: &Inputs, client: &RegistryClient) -> Result<Report, CliError> {
    let mut summary = RegisterSummary {
        registry: client.url().to_owned(),
        subjects: Vec::new(),
    };
    let (set, manifest) = match inputs.contracts_and_manifest() {
        Ok(loaded) => loaded,
        Err(violations) => return Ok(Report::new(violations, Detail::Register(summary))),
    };
    let mut violations = Vec::new();
    for topic in &manifest.topic {
        let subject = &topic.value_subject;
        let Some(file) = set.by_path(&topic.value_schema) else {
            continue;
        };
        // Bundle and parse first: only valid Avro goes to the registry.
        let schema = match set.schema(&file.name).and_then(|_| set.bundled(&file.name)) {
            Ok(json) => json.to_string(),
            Err(e) => {
                violations.push(
                    Violation::new(&file.path, Rule::Bundle, e.to_string())
                        .in_topic(&topic.name)
                        .in_record(&file.name),
                );
                continue;
            }
        };
        let mode = topic.compatibility;
        let mode_changed = client.subject_mode(subject, false).await? != Some(mode);
        if mode_changed {
            client.set_subject_mode(subject, mode).await?;
        }
        let mut registration = Registration {
            topic: topic.name.clone(),
            subject: subject.clone(),
            schema: file.path.clone(),
            id: None,
            version: None,
            mode,
            mode_changed,
            status: RegistrationStatus::Refused,
        };
        if let Some((id, version)) = client.lookup(subject, &schema).await? {
            registration.id = Some(id);
            registration.version = Some(version);
            registration.status = RegistrationStatus::AlreadyRegistered;
        } else {
            match client.register(subject, &schema).await? {
                Ok(id) => {
                    registration.id = Some(id);
                    registration.status = RegistrationStatus::Registered;
                    registration.version = client.lookup(subject, &schema).await?.map(|(_, v)| v);
                }
                Err((rule, message)) => violations.push(
                    Violation::new(
                        &file.path,
                        rule,
                        format!("subject `{subject}`: the registry refused the schema: {message}"),
                    )
                    .in_topic(&topic.name)
                    .in_record(&file.name),
                ),
            }
        }
        summary.subjects.push(registration);
    }
    Ok(Report::new(violations, Detail::Register(summary)))
}
