//! What the operator's librdkafka properties say beyond their values: which name files, which
//! are secrets and are never printed, which come from mounted secret files, and how a client
//! connects, for messages.

use std::collections::BTreeMap;
use std::fmt;

use super::KafkaSettings;
use crate::config::ConfigError;
use crate::secret::Secret;

/// librdkafka properties whose value is a file to read (certificates, keys, keytabs).
const FILE_PROPERTIES: [&str; 6] = [
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.keystore.location",
    "ssl.crl.location",
    "sasl.kerberos.keytab",
];

impl KafkaSettings {
    /// Every file-valued property set, in any of the three maps: `(map, property, path)`.
    pub fn file_properties(&self) -> impl Iterator<Item = (&'static str, &str, &str)> {
        [
            ("properties", &self.properties),
            ("producer_properties", &self.producer_properties),
            ("consumer_properties", &self.consumer_properties),
        ]
        .into_iter()
        .flat_map(|(map, properties)| {
            properties
                .iter()
                .filter(|(key, _)| FILE_PROPERTIES.contains(&key.as_str()))
                // `probe`: librdkafka looks in the system's usual places itself.
                .filter(|(key, value)| {
                    !(key.as_str() == "ssl.ca.location" && value.as_str() == "probe")
                })
                .map(move |(key, value)| (map, key.as_str(), value.as_str()))
        })
    }

    /// The value of each `property_files` entry: the file's content without its trailing line
    /// ending. A file that cannot be read or holds nothing is an error naming its key.
    pub(crate) fn property_file_values(&self) -> Result<Vec<(&str, Secret)>, ConfigError> {
        self.property_files
            .iter()
            .map(|(key, path)| {
                let name = format!("kafka.property_files.\"{key}\"");
                Secret::resolve(&Secret::default(), Some(path), &name)
                    .map(|value| (key.as_str(), value))
            })
            .collect()
    }

    /// How clients connect, for messages: the protocol and, with SASL, the mechanism and user
    /// (never a password).
    pub fn security_summary(&self) -> String {
        let get = |key: &str| self.properties.get(key).map(String::as_str);
        let protocol = get("security.protocol").unwrap_or("plaintext");
        let mut summary = format!("security.protocol={protocol}");
        if protocol.to_ascii_lowercase().starts_with("sasl") {
            let mechanism = get("sasl.mechanism")
                .or_else(|| get("sasl.mechanisms"))
                .unwrap_or("GSSAPI");
            summary.push_str(&format!(", sasl.mechanism={mechanism}"));
            if let Some(user) = get("sasl.username") {
                summary.push_str(&format!(", sasl.username={user}"));
            }
        }
        summary
    }
}

fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "token", "key", "oauthbearer.config"]
        .iter()
        .any(|word| key.contains(word))
}

/// `properties` with the values of secret-looking keys replaced, for printing.
fn redacted(properties: &BTreeMap<String, String>) -> BTreeMap<&str, &str> {
    properties
        .iter()
        .map(|(k, v)| {
            (
                k.as_str(),
                if is_secret(k) {
                    "<redacted>"
                } else {
                    v.as_str()
                },
            )
        })
        .collect()
}

impl fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSettings")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("session_timeout", &self.session_timeout)
            .field("commit_interval", &self.commit_interval)
            .field("properties", &redacted(&self.properties))
            .field("producer_properties", &redacted(&self.producer_properties))
            .field("consumer_properties", &redacted(&self.consumer_properties))
            .field("property_files", &self.property_files)
            .field("topics", &self.topics)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_secrets() {
        let mut settings = KafkaSettings::default();
        settings
            .properties
            .insert("sasl.password".into(), "hunter2".into());
        settings
            .properties
            .insert("ssl.key.password".into(), "swordfish".into());
        settings
            .properties
            .insert("security.protocol".into(), "SASL_SSL".into());
        settings
            .consumer_properties
            .insert("sasl.oauthbearer.client.secret".into(), "tiger".into());
        // Unsecured tokens' settings may carry claims an operator would rather not print.
        settings.properties.insert(
            "sasl.oauthbearer.config".into(),
            "principal=app extension_traceId=lion".into(),
        );
        let shown = format!("{settings:?}");
        assert!(
            !shown.contains("hunter2")
                && !shown.contains("swordfish")
                && !shown.contains("tiger")
                && !shown.contains("lion"),
            "{shown}"
        );
        assert!(shown.contains("SASL_SSL"), "{shown}");
    }

    #[test]
    fn a_property_file_sets_the_property_and_is_never_printed() {
        let dir = std::env::temp_dir().join(format!("backbone-kafka-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let password = dir.join("kafka-password");
        std::fs::write(&password, "from-a-mounted-file\n").expect("write");
        let mut settings = KafkaSettings::default();
        settings
            .properties
            .insert("sasl.password".into(), "inline".into());
        settings
            .property_files
            .insert("sasl.password".into(), password.clone());
        let config = settings.admin_config();
        assert_eq!(config.get("sasl.password"), Some("from-a-mounted-file"));
        assert!(!format!("{settings:?}").contains("from-a-mounted-file"));

        settings
            .property_files
            .insert("sasl.password".into(), dir.join("absent"));
        let err = crate::config::Validate::validate(&settings)
            .expect_err("an unreadable file")
            .to_string();
        assert!(
            err.contains("kafka.property_files.\"sasl.password\"") && err.contains("absent"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
