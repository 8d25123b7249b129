//! Where drift reads what the back-office systems hold. [`BackOffice`] is the four reads a
//! reconciliation needs; [`SandboxApis`] implements them over the sandbox's read API, and a
//! deployment against real systems implements the same trait over theirs.
//!
//! What each read must give, whatever the system:
//!
//! - **charges** (billing): every charge the billing system created from a `BillingCharge`,
//!   with its tenant, the idempotency key it was created under (the `rating_id`), its amount
//!   and currency, and the first day of its billing period (`YYYY-MM-DD`). A billing API that
//!   keeps the idempotency key on the charge (as metadata, or as the key it lists charges by)
//!   can be read this way; one that forgets the key after it expires cannot be reconciled per
//!   charge.
//! - **journal lines** (ERP): every line of every journal batch posted, in whichever ERP
//!   keeps the entity's books (the cloud ERP's API, and the legacy ERP's journal export when
//!   configured, [`crate::legacy_erp`]), with the batch's tenant, legal entity and period
//!   (`YYYY-MM`), the line's GL account and currency, and its debit minus its credit.
//! - **CRM accounts**: the external ids (`<tenant>:<customer>`) of the accounts the CRM holds.
//! - **invoices** (ERP): every invoice of a billing period the ERP received, as often as it
//!   holds it, with its tenant, legal entity, currency, total and the first day of the period
//!   it bills (`YYYY-MM-DD`). Invoices of orders (no period) are not read.

use std::collections::BTreeSet;
use std::future::Future;

use backbone_core::Secret;
use backbone_schemas::types::Amount;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::books::{HeldCharge, HeldInvoice, HeldJournalLine, Holdings};
use crate::legacy_erp::LegacyJournal;
use crate::DriftError;

/// The reads of the three back-office systems a reconciliation needs.
pub trait BackOffice {
    /// Every charge the billing system holds.
    fn charges(&self) -> impl Future<Output = Result<Vec<HeldCharge>, DriftError>> + Send;
    /// Every journal line the ERP holds.
    fn journal_lines(
        &self,
    ) -> impl Future<Output = Result<Vec<HeldJournalLine>, DriftError>> + Send;
    /// The external ids of the CRM's accounts.
    fn crm_accounts(&self) -> impl Future<Output = Result<BTreeSet<String>, DriftError>> + Send;
    /// Every invoice of a billing period the ERP received.
    fn erp_invoices(&self) -> impl Future<Output = Result<Vec<HeldInvoice>, DriftError>> + Send;
}

/// What the three systems hold, read through `systems`.
pub async fn holdings(systems: &impl BackOffice) -> Result<Holdings, DriftError> {
    Ok(Holdings {
        charges: systems.charges().await?,
        journal_lines: systems.journal_lines().await?,
        crm_accounts: systems.crm_accounts().await?,
        erp_invoices: systems.erp_invoices().await?,
    })
}

/// The sandbox's read API (`GET /billing/v1/charges`, `/erp/v1/journal-batches`,
/// `/erp/v1/invoices`, `/crm/v1/accounts`, bearer token), one base URL per system.
#[derive(Debug, Clone)]
pub struct SandboxApis {
    /// The billing system.
    pub billing_url: String,
    /// The ERP.
    pub erp_url: String,
    /// The CRM.
    pub crm_url: String,
    /// The bearer token.
    pub token: Secret,
    /// The legacy ERP's journal export, read beside the ERP's API.
    legacy_erp: Option<LegacyJournal>,
    http: reqwest::Client,
}

impl SandboxApis {
    /// The read API at those base URLs.
    pub fn new(billing_url: &str, erp_url: &str, crm_url: &str, token: Secret) -> Self {
        Self {
            billing_url: billing_url.trim_end_matches('/').to_owned(),
            erp_url: erp_url.trim_end_matches('/').to_owned(),
            crm_url: crm_url.trim_end_matches('/').to_owned(),
            token,
            legacy_erp: None,
            http: reqwest::Client::new(),
        }
    }

    /// Also reads the journal lines of the legacy ERP from its export, when given.
    pub fn with_legacy_erp(mut self, legacy_erp: Option<LegacyJournal>) -> Self {
        self.legacy_erp = legacy_erp;
        self
    }

    async fn read<T: DeserializeOwned>(
        &self,
        system: &'static str,
        url: String,
    ) -> Result<T, DriftError> {
        let failed = |e: reqwest::Error| DriftError::System {
            system,
            url: url.clone(),
            message: e.to_string(),
        };
        self.http
            .get(&url)
            .bearer_auth(self.token.expose())
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(failed)?
            .json()
            .await
            .map_err(failed)
    }
}

#[derive(Deserialize)]
struct Charges {
    charges: Vec<Charge>,
}

#[derive(Deserialize)]
struct Charge {
    tenant_id: String,
    idempotency_key: String,
    amount: String,
    currency: String,
    period_start: String,
}

#[derive(Deserialize)]
struct Batches {
    batches: Vec<Batch>,
}

#[derive(Deserialize)]
struct Batch {
    tenant_id: String,
    legal_entity_id: String,
    period: String,
    lines: Vec<Line>,
}

#[derive(Deserialize)]
struct Line {
    gl_account: String,
    debit: String,
    credit: String,
    currency: String,
}

#[derive(Deserialize)]
struct Accounts {
    accounts: Vec<Account>,
}

#[derive(Deserialize)]
struct Account {
    external_id: String,
}

#[derive(Deserialize)]
struct AppliedInvoices {
    applied: Vec<AppliedInvoice>,
}

#[derive(Deserialize)]
struct AppliedInvoice {
    body: InvoiceBody,
}

/// The fields of an invoice as `invoice-sink` sends it that drift reads.
#[derive(Deserialize)]
struct InvoiceBody {
    tenant_id: String,
    legal_entity_id: String,
    currency: String,
    period_start: Option<String>,
    total_amount: String,
}

/// An exact decimal as an integer at six decimals; text that is none reads as zero, as the
/// systems never write one.
fn unscaled(text: &str) -> i128 {
    text.parse::<Amount>().map(Amount::unscaled).unwrap_or(0)
}

impl BackOffice for SandboxApis {
    async fn charges(&self) -> Result<Vec<HeldCharge>, DriftError> {
        let url = format!("{}/billing/v1/charges", self.billing_url);
        let read: Charges = self.read("the billing system", url).await?;
        Ok(read
            .charges
            .into_iter()
            .map(|charge| HeldCharge {
                tenant: charge.tenant_id,
                rating_id: charge.idempotency_key,
                amount: unscaled(&charge.amount),
                currency: charge.currency,
                period_start: charge.period_start,
            })
            .collect())
    }

    async fn journal_lines(&self) -> Result<Vec<HeldJournalLine>, DriftError> {
        let url = format!("{}/erp/v1/journal-batches", self.erp_url);
        let read: Batches = self.read("the ERP", url).await?;
        let legacy = match &self.legacy_erp {
            Some(journal) => journal.lines()?,
            None => Vec::new(),
        };
        Ok(read
            .batches
            .into_iter()
            .flat_map(|batch| {
                batch.lines.into_iter().map(move |line| HeldJournalLine {
                    tenant: batch.tenant_id.clone(),
                    legal_entity: batch.legal_entity_id.clone(),
                    period: batch.period.clone(),
                    gl_account: line.gl_account,
                    currency: line.currency,
                    net: unscaled(&line.debit) - unscaled(&line.credit),
                })
            })
            .chain(legacy)
            .collect())
    }

    async fn erp_invoices(&self) -> Result<Vec<HeldInvoice>, DriftError> {
        let url = format!("{}/erp/v1/invoices", self.erp_url);
        let read: AppliedInvoices = self.read("the ERP", url).await?;
        Ok(read
            .applied
            .into_iter()
            .filter_map(|applied| {
                let invoice = applied.body;
                let period = invoice.period_start?.get(..7)?.to_owned();
                Some(HeldInvoice {
                    tenant: invoice.tenant_id,
                    legal_entity: invoice.legal_entity_id,
                    period,
                    currency: invoice.currency,
                    total: unscaled(&invoice.total_amount),
                })
            })
            .collect())
    }

    async fn crm_accounts(&self) -> Result<BTreeSet<String>, DriftError> {
        let url = format!("{}/crm/v1/accounts", self.crm_url);
        let read: Accounts = self.read("the CRM", url).await?;
        Ok(read.accounts.into_iter().map(|a| a.external_id).collect())
    }
}
