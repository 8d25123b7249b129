//! One HTTP server standing in for the external systems our sinks and workflows call: a billing
//! API (payment-API-style idempotency keys), a CRM (batched upserts by external id, newest
//! wins, and customer lookups), an ERP (journal batches by external id, balanced and
//! control-totalled per currency), the product platform (entitlements) and the sales
//! platform's callback API (order confirmations).
//!
//! The steps of a quote-to-cash order (entitlements and their revocation, subscription
//! changes, ERP sales orders, order confirmations) share one shape: an applied request under
//! an `Idempotency-Key`, stored as sent, so a test counts what was applied per business
//! identity (see [`AppliedApi`]).
//!
//! Faults are injected per system (errors, throttling, latency, outages, responses lost
//! after the request was applied, and refused values answered as business errors),
//! configured at start or through the `/admin` API (its own token), and every stored record
//! can be read back, so tests and the demo can prove that retries happened and nothing was
//! applied twice. [`SandboxClient`] drives both APIs.
//!
//! Beside the APIs, a legacy ERP that only imports files ([`LegacyErp`]) runs when
//! `[legacy_erp]` is configured.

mod admin;
mod billing;
pub mod client;
pub mod config;
mod crm;
mod erp;
pub mod faults;
mod http;
pub mod legacy_erp;
mod money;
mod orders;

use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use axum::Router;
use backbone_core::https;
use backbone_core::Secret;
use tokio::net::TcpListener;

pub use billing::StoredCharge;
pub use client::SandboxClient;
pub use config::SandboxConfig;
pub use crm::{Customer, StoredAccount};
pub use erp::{ControlTotal, JournalLine, PostedBatch};
pub use faults::Faults;
pub use legacy_erp::{ImportedBatch, ImportedRow, LegacyErp, LegacyErpSettings};
pub use orders::{AppliedApi, AppliedRequest};

/// One of the simulated external systems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum System {
    /// The billing API under `/billing`.
    Billing,
    /// The CRM API under `/crm`.
    Crm,
    /// The ERP API under `/erp`.
    Erp,
    /// The product platform's API under `/platform`.
    Platform,
    /// The sales platform's callback API under `/sales`.
    Sales,
}

impl System {
    /// Every system, in the order the admin API lists them.
    pub const ALL: [System; 5] = [
        System::Billing,
        System::Crm,
        System::Erp,
        System::Platform,
        System::Sales,
    ];

    /// The name used in paths and config keys: `billing`, `crm`, `erp`, `platform` or `sales`.
    pub fn name(self) -> &'static str {
        match self {
            System::Billing => "billing",
            System::Crm => "crm",
            System::Erp => "erp",
            System::Platform => "platform",
            System::Sales => "sales",
        }
    }
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for System {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        System::ALL
            .into_iter()
            .find(|system| system.name() == name)
            .ok_or_else(|| {
                format!("unknown system `{name}`; expected billing, crm, erp, platform or sales")
            })
    }
}

/// Everything the handlers share: the config and the state of each system.
struct Sandbox {
    config: SandboxConfig,
    /// The token in force at start, restored by `/admin/reset`.
    token: Secret,
    /// The token the `/admin` API wants.
    admin_token: Secret,
    control: Mutex<faults::Control>,
    billing: Mutex<billing::Ledger>,
    crm: Mutex<crm::Accounts>,
    customers: Mutex<crm::Customers>,
    erp: Mutex<erp::Journal>,
    orders: Mutex<orders::OrderSteps>,
}

/// Locks `mutex`, going on after a panic elsewhere: each critical section leaves the state
/// consistent, so a poisoned lock holds nothing half-written.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Sandbox {
    fn new(config: SandboxConfig, token: Secret, admin_token: Secret) -> Self {
        Self {
            control: Mutex::new(faults::Control::new(&token, &config.faults)),
            billing: Mutex::default(),
            crm: Mutex::default(),
            customers: Mutex::default(),
            erp: Mutex::new(erp::Journal::new(&config.erp.closed_periods)),
            orders: Mutex::default(),
            config,
            token,
            admin_token,
        }
    }

    fn control(&self) -> MutexGuard<'_, faults::Control> {
        lock(&self.control)
    }
}

/// Serves the sandbox on `listener` until `shutdown` completes. Bind the listener first and
/// read its `local_addr()` to learn the port when it is 0.
pub async fn serve(
    listener: TcpListener,
    config: SandboxConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let invalid = |err: backbone_core::ConfigError| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, err.to_string())
    };
    let token = config.resolve_token().map_err(invalid)?;
    let admin_token = config.resolve_admin_token().map_err(invalid)?;
    let acceptor = match &config.tls {
        Some(files) => Some(files.acceptor("tls").map_err(|err| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, err.to_string())
        })?),
        None => None,
    };
    let importer = config.legacy_erp.clone().map(|settings| {
        let erp = LegacyErp::new(settings);
        tokio::spawn(async move { erp.run().await })
    });
    let app = Arc::new(Sandbox::new(config, token, admin_token));
    tracing::info!(address = %listener.local_addr()?, https = acceptor.is_some(),
        legacy_erp = importer.is_some(), "sandbox serving");
    let served = match acceptor {
        Some(acceptor) => https::serve(listener, acceptor, router(app), shutdown).await,
        None => {
            axum::serve(listener, router(app))
                .with_graceful_shutdown(shutdown)
                .await
        }
    };
    if let Some(importer) = importer {
        importer.abort();
    }
    served
}

fn router(app: Arc<Sandbox>) -> Router {
    let gated = |system: System, routes: Router<Arc<Sandbox>>| {
        let gate = faults::Gate {
            app: Arc::clone(&app),
            system,
        };
        routes.route_layer(from_fn_with_state(gate, faults::gate))
    };
    let billing = orders::routes(System::Billing).route(
        "/billing/v1/charges",
        post(billing::create).get(billing::list),
    );
    let crm = Router::new()
        .route("/crm/v1/accounts/batch", post(crm::upsert_batch))
        .route("/crm/v1/accounts", get(crm::list))
        .route("/crm/v1/customers/lookup", post(crm::look_up_customer));
    let erp = orders::routes(System::Erp)
        .route(
            "/erp/v1/journal-batches",
            post(erp::post_batch).get(erp::list),
        )
        .route("/erp/v1/journal-lines/search", post(erp::search_lines));
    Router::new()
        .merge(gated(System::Billing, billing))
        .merge(gated(System::Crm, crm))
        .merge(gated(System::Erp, erp))
        .merge(gated(System::Platform, orders::routes(System::Platform)))
        .merge(gated(System::Sales, orders::routes(System::Sales)))
        .route("/health", get(|| async { "ok" }))
        .merge(admin::routes().route_layer(from_fn_with_state(Arc::clone(&app), admin::gate)))
        .with_state(app)
}
