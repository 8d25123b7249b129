//! Where each step goes: the system it belongs to, the path of its API there, and the system's
//! address: its own when `[sink.systems.<system>]` gives one, else the `[destination]`'s (one
//! gateway in front of every system, as the sandbox is).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use backbone_core::config::ConfigError;
use backbone_core::secret::redact_url;
use backbone_core::Secret;
use backbone_schemas::types::OrderStepKind;
use backbone_sink::DestinationSettings;
use serde::Deserialize;

/// A system an order's steps call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderSystem {
    /// The CRM: is the customer there and active.
    Crm,
    /// The product platform: entitlements.
    Platform,
    /// Billing: subscriptions.
    Billing,
    /// The ERP: sales orders.
    Erp,
    /// The sales platform: how the order ended.
    Sales,
}

impl OrderSystem {
    /// Every system, in the order a fulfilment calls them.
    pub const ALL: [Self; 5] = [
        Self::Crm,
        Self::Platform,
        Self::Billing,
        Self::Erp,
        Self::Sales,
    ];

    /// The system `step` is carried out by, and the path it is posted to there; `None` for a
    /// step this reader does not know.
    pub fn route(step: OrderStepKind) -> Option<(Self, &'static str)> {
        Some(match step {
            OrderStepKind::CheckCustomer => (Self::Crm, "/crm/v1/customers/lookup"),
            OrderStepKind::ProvisionEntitlements => (Self::Platform, "/platform/v1/entitlements"),
            OrderStepKind::RevokeEntitlements => {
                (Self::Platform, "/platform/v1/entitlement-revocations")
            }
            OrderStepKind::ChangeSubscription | OrderStepKind::RevertSubscription => {
                (Self::Billing, "/billing/v1/subscription-changes")
            }
            OrderStepKind::RecordOrder => (Self::Erp, "/erp/v1/sales-orders"),
            OrderStepKind::ConfirmOrder => (Self::Sales, "/sales/v1/order-confirmations"),
            OrderStepKind::Unknown => return None,
        })
    }

    /// The name `[sink.systems]` knows it by.
    pub fn name(self) -> &'static str {
        match self {
            Self::Crm => "crm",
            Self::Platform => "platform",
            Self::Billing => "billing",
            Self::Erp => "erp",
            Self::Sales => "sales",
        }
    }
}

/// `[sink.systems.<system>]`: a system at an address of its own.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemDestination {
    /// Base URL, `http://` or `https://`; keep passwords out of it.
    pub url: String,
    /// File holding its bearer token; without one, the `[destination]`'s credential.
    #[serde(default)]
    pub credential_file: Option<PathBuf>,
    /// PEM file of CA certificates its certificate may chain to; without one, the
    /// `[destination]`'s.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for SystemDestination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemDestination")
            .field("url", &redact_url(&self.url))
            .field("credential_file", &self.credential_file)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

fn key(system: OrderSystem, field: &str) -> String {
    format!("sink.systems.{}.{field}", system.name())
}

/// Checks each system's address, naming the key at fault.
pub fn validate(systems: &BTreeMap<OrderSystem, SystemDestination>) -> Result<(), ConfigError> {
    for (system, destination) in systems {
        let url = destination.url.as_str();
        let host = ["http://", "https://"]
            .iter()
            .find_map(|scheme| url.strip_prefix(scheme));
        if host.is_none_or(str::is_empty) {
            return Err(ConfigError::Invalid {
                key: key(*system, "url"),
                message: format!("expected an http or https URL, got \"{}\"", redact_url(url)),
            });
        }
        Secret::resolve(
            &Secret::default(),
            destination.credential_file.as_deref(),
            &key(*system, "credential_file"),
        )?;
        if let Some(ca_file) = &destination.ca_file {
            readable(ca_file, &key(*system, "ca_file"))?;
        }
    }
    Ok(())
}

fn readable(path: &Path, key: &str) -> Result<(), ConfigError> {
    std::fs::metadata(path)
        .map(|_| ())
        .map_err(|err| ConfigError::Invalid {
            key: key.to_owned(),
            message: format!("cannot read `{}`: {err}", path.display()),
        })
}

/// The destination of `system`: `shared` with the system's own address, credential and CA
/// where `systems` gives them.
pub fn destination_of(
    system: OrderSystem,
    systems: &BTreeMap<OrderSystem, SystemDestination>,
    shared: &DestinationSettings,
) -> DestinationSettings {
    let mut destination = shared.clone();
    if let Some(own) = systems.get(&system) {
        destination.url.clone_from(&own.url);
        if own.credential_file.is_some() {
            destination.credential = Secret::default();
            destination.credential_file.clone_from(&own.credential_file);
        }
        if own.ca_file.is_some() {
            destination.ca_file.clone_from(&own.ca_file);
        }
    }
    destination
}

#[cfg(test)]
mod tests {
    use super::*;

    fn systems(toml_text: &str) -> Result<BTreeMap<OrderSystem, SystemDestination>, String> {
        #[derive(Deserialize)]
        struct Sink {
            systems: BTreeMap<OrderSystem, SystemDestination>,
        }
        toml::from_str::<Sink>(toml_text)
            .map(|s| s.systems)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_system_with_an_address_of_its_own_gets_it_and_the_others_share_the_destination() {
        let token = std::env::temp_dir().join(format!("erp-token-{}", std::process::id()));
        std::fs::write(&token, "erp-secret\n").expect("token");
        let systems = systems(&format!(
            "[systems.erp]\nurl = \"https://erp.example.test\"\ncredential_file = \"{}\"\n",
            token.display()
        ))
        .expect("systems");
        validate(&systems).expect("valid");
        let shared = DestinationSettings {
            url: "http://gateway.example.test".to_owned(),
            credential: Secret::new("shared"),
            ..DestinationSettings::default()
        };
        let erp = destination_of(OrderSystem::Erp, &systems, &shared);
        assert_eq!(erp.url, "https://erp.example.test");
        assert_eq!(
            erp.resolve_credential().expect("credential").expose(),
            "erp-secret"
        );
        assert_eq!(erp.timeout, shared.timeout);
        for system in OrderSystem::ALL
            .into_iter()
            .filter(|s| *s != OrderSystem::Erp)
        {
            let other = destination_of(system, &systems, &shared);
            assert_eq!(other.url, shared.url, "{system:?}");
            assert_eq!(
                other.resolve_credential().expect("credential").expose(),
                "shared"
            );
        }
    }

    #[test]
    fn every_step_has_its_system_and_bad_addresses_are_named() {
        assert_eq!(
            OrderSystem::route(OrderStepKind::RevertSubscription).map(|(s, _)| s),
            Some(OrderSystem::Billing)
        );
        assert_eq!(OrderSystem::route(OrderStepKind::Unknown), None);
        let said = systems("[systems.ledger]\nurl = \"http://x\"\n").expect_err("unknown");
        assert!(said.contains("ledger") && said.contains("erp"), "{said}");
        let said = systems("[systems.erp]\ntoken = \"x\"\n").expect_err("no url");
        assert!(said.contains("token"), "{said}");
        let ftp = systems("[systems.sales]\nurl = \"ftp://sales\"\n").expect("parses");
        let err = validate(&ftp).expect_err("scheme").to_string();
        assert!(err.contains("sink.systems.sales.url"), "{err}");
        let missing = systems(
            "[systems.crm]\nurl = \"http://crm\"\ncredential_file = \"/nonexistent/crm-token\"\n",
        )
        .expect("parses");
        let err = validate(&missing).expect_err("file").to_string();
        assert!(err.contains("sink.systems.crm.credential_file"), "{err}");
    }
}
