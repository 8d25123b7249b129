//! The schema registry as the tool needs it: is it there, and what is a subject's current
//! contract. Writer schemas by id come from [`backbone_schemas::WireCodec`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use apache_avro::Schema;
use backbone_schemas::{RegistryAccess, RegistryClient, RegistryError};

use crate::error::ReplayError;
use crate::time::format_duration;

/// A subject's latest registered version.
#[derive(Debug, Clone)]
pub struct CurrentContract {
    /// The subject.
    pub subject: String,
    /// Its schema id.
    pub id: u32,
    /// Its version number.
    pub version: i64,
    /// The schema.
    pub schema: Arc<Schema>,
}

/// A registry client with a short timeout and a cache of current contracts.
#[derive(Debug, Clone)]
pub struct Registry {
    client: RegistryClient,
    timeout: Duration,
    current: HashMap<String, Option<CurrentContract>>,
}

impl Registry {
    /// A client of the registry `access` names, giving up on a request after `timeout`.
    pub fn new(access: RegistryAccess, timeout: Duration) -> Result<Self, ReplayError> {
        Ok(Self {
            client: RegistryClient::new(access, timeout),
            timeout,
            current: HashMap::new(),
        })
    }

    /// The registry's URL.
    pub fn url(&self) -> &str {
        self.client.url()
    }

    fn error(&self, err: RegistryError) -> ReplayError {
        match err {
            RegistryError::Unreachable { message, .. } => ReplayError::RegistryUnreachable {
                url: self.url().to_owned(),
                timeout: format_duration(self.timeout),
                message,
            },
            other => ReplayError::Registry {
                url: self.url().to_owned(),
                message: other.to_string(),
            },
        }
    }

    /// Fails unless the registry answers a subject listing.
    pub async fn check(&self) -> Result<(), ReplayError> {
        self.client
            .subjects()
            .await
            .map(drop)
            .map_err(|e| self.error(e))
    }

    /// The latest version of `subject`, or `None` when the registry has no such subject.
    pub async fn current(&mut self, subject: &str) -> Result<Option<CurrentContract>, ReplayError> {
        if let Some(known) = self.current.get(subject) {
            return Ok(known.clone());
        }
        let found = self.fetch_current(subject).await?;
        self.current.insert(subject.to_owned(), found.clone());
        Ok(found)
    }

    async fn fetch_current(&self, subject: &str) -> Result<Option<CurrentContract>, ReplayError> {
        let Some(latest) = self
            .client
            .latest(subject)
            .await
            .map_err(|e| self.error(e))?
        else {
            return Ok(None);
        };
        let schema = Schema::parse_str(&latest.schema).map_err(|e| ReplayError::Registry {
            url: self.url().to_owned(),
            message: format!(
                "subject `{subject}` version {}: not valid Avro: {e}",
                latest.version
            ),
        })?;
        Ok(Some(CurrentContract {
            subject: subject.to_owned(),
            id: latest.id,
            version: i64::from(latest.version),
            schema: Arc::new(schema),
        }))
    }
}
