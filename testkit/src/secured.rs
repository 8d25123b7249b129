//! A broker that wants what managed Kafka wants: SASL over TLS.
//!
//! The node keeps its plaintext listener (for the test's own set-up and the broker's
//! inter-broker traffic) and adds a `SASL_SSL` one with a certificate from a [`TestCa`], the
//! SCRAM users stored when its data directory is formatted, a PLAIN user, and OAUTHBEARER with
//! the broker's unsecured (unsigned) tokens.

use backbone_core::KafkaSettings;

use crate::broker::{free_port, KafkaBroker};
use crate::tls::TestCa;
use crate::TestkitError;

/// The user every mechanism of a [`SecuredBroker`] knows.
pub const SASL_USER: &str = "backbone-app";
/// That user's password.
pub const SASL_PASSWORD: &str = "test-only-8f2c1e-password";

/// A SASL mechanism the secured listener offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    /// SCRAM with SHA-256.
    ScramSha256,
    /// SCRAM with SHA-512.
    ScramSha512,
    /// A user and password sent as they are (inside TLS).
    Plain,
    /// A bearer token; here the broker's unsecured tokens, enough to prove the client speaks it.
    OAuthBearer,
}

impl SaslMechanism {
    /// Every mechanism.
    pub const ALL: [Self; 4] = [
        Self::ScramSha256,
        Self::ScramSha512,
        Self::Plain,
        Self::OAuthBearer,
    ];

    /// The mechanism's name, as `sasl.mechanism` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
            Self::Plain => "PLAIN",
            Self::OAuthBearer => "OAUTHBEARER",
        }
    }
}

/// A single node with a SASL_SSL listener beside its plaintext one.
#[derive(Debug)]
pub struct SecuredBroker {
    // Dropped first: the node must stop before its certificate's directory goes.
    broker: KafkaBroker,
    ca: TestCa,
    port: u16,
}

impl SecuredBroker {
    /// Starts the node and waits until its plaintext listener answers.
    pub fn start() -> Result<Self, TestkitError> {
        let ca = TestCa::new("kafka")?;
        let cert = ca.issue("broker")?;
        let port = free_port()?;
        let (plain, controller) = (free_port()?, free_port()?);
        let jaas = |module: &str, options: &str| {
            format!("org.apache.kafka.common.security.{module} required{options};")
        };
        let settings = vec![
            format!(
                "listeners=PLAINTEXT://127.0.0.1:{plain},CONTROLLER://127.0.0.1:{controller},\
                 SASL_SSL://127.0.0.1:{port}"
            ),
            format!(
                "advertised.listeners=PLAINTEXT://127.0.0.1:{plain},SASL_SSL://127.0.0.1:{port}"
            ),
            "sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512,PLAIN,OAUTHBEARER".to_owned(),
            "ssl.keystore.type=PEM".to_owned(),
            format!("ssl.keystore.location={}", cert.key_and_cert.display()),
            format!(
                "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config={}",
                jaas("scram.ScramLoginModule", "")
            ),
            format!(
                "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={}",
                jaas("scram.ScramLoginModule", "")
            ),
            format!(
                "listener.name.sasl_ssl.plain.sasl.jaas.config={}",
                jaas(
                    "plain.PlainLoginModule",
                    &format!(" user_{SASL_USER}=\"{SASL_PASSWORD}\"")
                )
            ),
            format!(
                "listener.name.sasl_ssl.oauthbearer.sasl.jaas.config={}",
                jaas("oauthbearer.OAuthBearerLoginModule", "")
            ),
        ];
        let scram = ["SCRAM-SHA-256", "SCRAM-SHA-512"]
            .map(|m| format!("{m}=[name={SASL_USER},password={SASL_PASSWORD}]"))
            .to_vec();
        let broker = KafkaBroker::start_node(plain, controller, settings, scram)?;
        Ok(Self { broker, ca, port })
    }

    /// `host:port` of the SASL_SSL listener.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Client settings for the SASL_SSL listener as the test user, trusting the test CA.
    pub fn settings(&self, mechanism: SaslMechanism) -> KafkaSettings {
        self.settings_with_password(mechanism, SASL_PASSWORD)
    }

    /// [`SecuredBroker::settings`] with another password (OAUTHBEARER has none to get wrong).
    pub fn settings_with_password(
        &self,
        mechanism: SaslMechanism,
        password: &str,
    ) -> KafkaSettings {
        let mut settings = self.broker.settings();
        settings.bootstrap_servers = self.bootstrap();
        let mut set = |key: &str, value: String| settings.properties.insert(key.to_owned(), value);
        set("security.protocol", "SASL_SSL".to_owned());
        set("ssl.ca.location", self.ca.cert().display().to_string());
        set("sasl.mechanism", mechanism.name().to_owned());
        if mechanism == SaslMechanism::OAuthBearer {
            set("enable.sasl.oauthbearer.unsecure.jwt", "true".to_owned());
            set("sasl.oauthbearer.config", format!("principal={SASL_USER}"));
        } else {
            set("sasl.username", SASL_USER.to_owned());
            set("sasl.password", password.to_owned());
        }
        settings
    }
}
