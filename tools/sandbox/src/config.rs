//! The sandbox's config: top-level `listen`, `token`, `token_file`, `admin_token` and
//! `admin_token_file`, then `[billing]`, `[crm]`, `[erp]`, `[faults.<system>]` (`billing`,
//! `crm`, `erp`, `platform`, `sales`), `[tls]` and `[legacy_erp]`.
//! Every key has a default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use backbone_core::config::{ConfigError, Validate};
use backbone_core::https::TlsFiles;
use backbone_core::Secret;
use serde::Deserialize;

use crate::faults::Faults;
use crate::legacy_erp::LegacyErpSettings;
use crate::money::is_period;
use crate::System;

/// The development admin token, which [`crate::SandboxClient`] sends unless told another.
pub const DEFAULT_ADMIN_TOKEN: &str = "sandbox-admin-token";

/// The whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// Address to serve the systems' APIs and the admin API on.
    pub listen: SocketAddr,
    /// Bearer token every call to a system's API must present.
    pub token: Secret,
    /// File holding the token (its trailing line ending ignored); wins over `token` when set.
    pub token_file: Option<PathBuf>,
    /// Bearer token the `/admin` API wants: faults, token changes, reset. Not the APIs' token,
    /// so a sink's credential cannot steer the sandbox.
    pub admin_token: Secret,
    /// File holding the admin token; wins over `admin_token` when set.
    pub admin_token_file: Option<PathBuf>,
    /// The billing API.
    pub billing: BillingSettings,
    /// The CRM API.
    pub crm: CrmSettings,
    /// The ERP API.
    pub erp: ErpSettings,
    /// Faults injected from start-up; the admin API changes them at runtime.
    pub faults: FaultSettings,
    /// Serve HTTPS with this certificate instead of plain HTTP (`[tls]`).
    pub tls: Option<TlsFiles>,
    /// Run the legacy ERP's file import (`[legacy_erp]`).
    pub legacy_erp: Option<LegacyErpSettings>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            token: Secret::from("sandbox-token"),
            token_file: None,
            admin_token: Secret::from(DEFAULT_ADMIN_TOKEN),
            admin_token_file: None,
            billing: BillingSettings::default(),
            crm: CrmSettings::default(),
            erp: ErpSettings::default(),
            faults: FaultSettings::default(),
            tls: None,
            legacy_erp: None,
        }
    }
}

impl SandboxConfig {
    /// The token in force at start: the content of `token_file` when set, else `token`.
    pub fn resolve_token(&self) -> Result<Secret, ConfigError> {
        Secret::resolve(&self.token, self.token_file.as_deref(), "token_file")
    }

    /// The admin token: the content of `admin_token_file` when set, else `admin_token`.
    pub fn resolve_admin_token(&self) -> Result<Secret, ConfigError> {
        Secret::resolve(
            &self.admin_token,
            self.admin_token_file.as_deref(),
            "admin_token_file",
        )
    }
}

impl Validate for SandboxConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.into(),
            message,
        };
        if let Some(tls) = &self.tls {
            tls.acceptor("tls")?;
        }
        let token = self.resolve_token()?;
        if token.expose().is_empty() {
            return Err(invalid("token", "must not be empty".into()));
        }
        let admin_token = self.resolve_admin_token()?;
        if admin_token.expose().is_empty() {
            return Err(invalid("admin_token", "must not be empty".into()));
        }
        if admin_token == token {
            return Err(invalid(
                "admin_token",
                "must differ from `token`: a sink's credential must not steer the sandbox".into(),
            ));
        }
        let currencies = &self.billing.currencies;
        if currencies.is_empty() {
            return Err(invalid("billing.currencies", "must not be empty".into()));
        }
        if let Some(bad) = currencies
            .iter()
            .find(|c| c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase()))
        {
            return Err(invalid(
                "billing.currencies",
                format!("expected ISO 4217 codes like \"EUR\", got {bad:?}"),
            ));
        }
        if self.crm.max_batch == 0 {
            return Err(invalid("crm.max_batch", "must be at least 1".into()));
        }
        if let Some(bad) = self.erp.closed_periods.iter().find(|p| !is_period(p)) {
            return Err(invalid(
                "erp.closed_periods",
                format!("expected periods like \"2024-01\", got {bad:?}"),
            ));
        }
        if let Some(legacy) = &self.legacy_erp {
            for (key, dir) in [("drop_dir", &legacy.drop_dir), ("ack_dir", &legacy.ack_dir)] {
                if dir.as_os_str().is_empty() {
                    return Err(invalid(
                        &format!("legacy_erp.{key}"),
                        "must be a directory path".into(),
                    ));
                }
            }
            if legacy.poll.is_zero() {
                return Err(invalid(
                    "legacy_erp.poll",
                    "must be longer than zero".into(),
                ));
            }
            if let Some(bad) = legacy
                .closed_periods
                .iter()
                .find(|p| p.len() != 6 || !p.bytes().all(|b| b.is_ascii_digit()))
            {
                return Err(invalid(
                    "legacy_erp.closed_periods",
                    format!("expected periods like \"202611\", got {bad:?}"),
                ));
            }
        }
        for system in System::ALL {
            if let Some(field) = self.faults.get(system).invalid_rate() {
                return Err(invalid(
                    &format!("faults.{system}.{field}"),
                    "must be between 0 and 1".into(),
                ));
            }
        }
        Ok(())
    }
}

/// The `[billing]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BillingSettings {
    /// Currencies charges may be in; others are refused with `unsupported_currency`.
    pub currencies: Vec<String>,
    /// How long an `Idempotency-Key` is remembered after the charge it created; a key seen
    /// again later creates a new charge, as payment APIs that expire keys do (24 hours is
    /// common).
    #[serde(with = "humantime_serde")]
    pub idempotency_ttl: Duration,
}

impl Default for BillingSettings {
    fn default() -> Self {
        Self {
            currencies: ["EUR", "USD", "GBP", "CHF", "JPY"]
                .map(String::from)
                .to_vec(),
            idempotency_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// The `[crm]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CrmSettings {
    /// Most records one batch may carry; more is refused with 413.
    pub max_batch: usize,
    /// Batch calls allowed per one-second window before 429; 0 means unlimited.
    pub rate_limit_per_second: u32,
}

impl Default for CrmSettings {
    fn default() -> Self {
        Self {
            max_batch: 200,
            rate_limit_per_second: 50,
        }
    }
}

/// The `[erp]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ErpSettings {
    /// Periods (`YYYY-MM`) closed from start-up: postings into them are refused.
    pub closed_periods: Vec<String>,
}

/// The `[faults]` section: one [`Faults`] per system.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultSettings {
    /// Faults of the billing API.
    pub billing: Faults,
    /// Faults of the CRM API.
    pub crm: Faults,
    /// Faults of the ERP API.
    pub erp: Faults,
    /// Faults of the product platform's API.
    pub platform: Faults,
    /// Faults of the sales platform's callback API.
    pub sales: Faults,
}

impl FaultSettings {
    /// The faults of one system.
    pub fn get(&self, system: System) -> Faults {
        match system {
            System::Billing => self.billing,
            System::Crm => self.crm,
            System::Erp => self.erp,
            System::Platform => self.platform,
            System::Sales => self.sales,
        }
    }
}
