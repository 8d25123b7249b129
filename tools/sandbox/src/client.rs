//! A typed client of the sandbox's read and admin APIs, for tests and the demo.

use std::sync::{PoisonError, RwLock};

use reqwest::{Method, RequestBuilder};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{
    AppliedApi, AppliedRequest, Customer, Faults, PostedBatch, StoredAccount, StoredCharge, System,
};

/// Client of one running sandbox. Non-2xx answers are returned as errors.
#[derive(Debug)]
pub struct SandboxClient {
    base_url: String,
    http: reqwest::Client,
    /// The token the sandbox started with, in force again after [`SandboxClient::reset`].
    configured_token: String,
    /// The token reads present; follows [`SandboxClient::set_token`] so reads keep working.
    token: RwLock<String>,
}

#[derive(Deserialize)]
struct Charges {
    charges: Vec<StoredCharge>,
}

#[derive(Deserialize)]
struct Accounts {
    accounts: Vec<StoredAccount>,
}

#[derive(Deserialize)]
struct Batches {
    batches: Vec<PostedBatch>,
}

#[derive(Deserialize)]
struct Applied {
    applied: Vec<AppliedRequest>,
}

impl SandboxClient {
    /// A client of the sandbox at `base_url` (`http://127.0.0.1:8090`) using the default token.
    pub fn new(base_url: impl Into<String>) -> Self {
        Self::with_token(base_url, "sandbox-token")
    }

    /// A client of a sandbox configured with another token.
    pub fn with_token(base_url: impl Into<String>, token: &str) -> Self {
        Self {
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
            configured_token: token.to_owned(),
            token: RwLock::new(token.to_owned()),
        }
    }

    /// The same client trusting the CA certificates in `ca_pem` besides the system's roots: for
    /// a sandbox serving HTTPS with a private CA's certificate.
    pub fn trusting(mut self, ca_pem: &[u8]) -> Result<Self, reqwest::Error> {
        self.http = reqwest::Client::builder()
            .tls_certs_merge(reqwest::Certificate::from_pem_bundle(ca_pem)?)
            .build()?;
        Ok(self)
    }

    /// Every charge created, in creation order.
    pub async fn charges(&self) -> Result<Vec<StoredCharge>, reqwest::Error> {
        Ok(self.read::<Charges>("/billing/v1/charges").await?.charges)
    }

    /// How many charges the billing system holds per business identity
    /// ([`StoredCharge::identity`]), whatever keys created them; charges sent without one
    /// count under `""`.
    pub async fn charges_per_identity(
        &self,
    ) -> Result<std::collections::BTreeMap<String, usize>, reqwest::Error> {
        let mut counts = std::collections::BTreeMap::new();
        for charge in self.charges().await? {
            *counts
                .entry(charge.identity().unwrap_or_default())
                .or_default() += 1;
        }
        Ok(counts)
    }

    /// Every CRM account, by external id.
    pub async fn accounts(&self) -> Result<Vec<StoredAccount>, reqwest::Error> {
        Ok(self.read::<Accounts>("/crm/v1/accounts").await?.accounts)
    }

    /// Every journal batch posted (withheld ones excepted), in posting order.
    pub async fn batches(&self) -> Result<Vec<PostedBatch>, reqwest::Error> {
        Ok(self
            .read::<Batches>("/erp/v1/journal-batches")
            .await?
            .batches)
    }

    /// Every request applied through `api` in arrival order, or only those of `tenant_id`.
    /// The sandbox does not deduplicate by business identity, so a step applied twice under
    /// two keys shows twice here.
    pub async fn applied(
        &self,
        api: AppliedApi,
        tenant_id: Option<&str>,
    ) -> Result<Vec<AppliedRequest>, reqwest::Error> {
        let mut request = self.reader(api.path()).build()?;
        if let Some(tenant_id) = tenant_id {
            request
                .url_mut()
                .query_pairs_mut()
                .append_pair("tenant_id", tenant_id);
        }
        let response = self.http.execute(request).await?.error_for_status()?;
        Ok(response.json::<Applied>().await?.applied)
    }

    /// Adds customers to the CRM, or replaces the status of those it knows, for
    /// `/crm/v1/customers/lookup` to find.
    pub async fn seed_customers(&self, customers: &[Customer]) -> Result<(), reqwest::Error> {
        let request = self.admin(Method::PUT, "/admin/crm/customers");
        self.send(request.json(customers)).await
    }

    /// Makes `system` answer any request holding one of `values` (as a string anywhere in its
    /// body) with a business error in a 200, storing nothing; `&[]` lifts the refusal. Replaces
    /// the values refused before.
    pub async fn refuse(&self, system: System, values: &[&str]) -> Result<(), reqwest::Error> {
        let request = self.admin(Method::PUT, &format!("/admin/refused/{system}"));
        self.send(request.json(values)).await
    }

    /// Replaces the faults of `system`; a nonzero `outage_seconds` starts an outage now.
    pub async fn set_faults(&self, system: System, faults: &Faults) -> Result<(), reqwest::Error> {
        let path = format!("/admin/faults/{system}");
        self.send(self.admin(Method::PUT, &path).json(faults)).await
    }

    /// Removes every fault of `system`.
    pub async fn clear_faults(&self, system: System) -> Result<(), reqwest::Error> {
        let path = format!("/admin/faults/{system}");
        self.send(self.admin(Method::DELETE, &path)).await
    }

    /// Delivery calls per system by HTTP status, and records applied per system (order steps
    /// included):
    /// `{"billing":{"201":10,"429":3},"crm":{},"erp":{},"platform":{},"sales":{},
    /// "applied":{"billing":10,...}}`.
    pub async fn stats(&self) -> Result<Value, reqwest::Error> {
        self.admin(Method::GET, "/admin/stats")
            .send()
            .await?
            .error_for_status()?
            .json()
            .await
    }

    /// Clears all data (order steps and CRM customers included), faults and refused values,
    /// and restores the configured token.
    pub async fn reset(&self) -> Result<(), reqwest::Error> {
        self.send(self.admin(Method::POST, "/admin/reset")).await?;
        self.set_own_token(&self.configured_token);
        Ok(())
    }

    /// Replaces the token the APIs accept, revoking the one in force.
    pub async fn set_token(&self, token: &str) -> Result<(), reqwest::Error> {
        let request = self.admin(Method::PUT, "/admin/token");
        self.send(request.json(&json!({"token": token}))).await?;
        self.set_own_token(token);
        Ok(())
    }

    /// Makes `system` answer 403 to the valid token, or stop doing so.
    pub async fn set_forbidden(
        &self,
        system: System,
        forbidden: bool,
    ) -> Result<(), reqwest::Error> {
        let request = self.admin(Method::PUT, &format!("/admin/forbidden/{system}"));
        self.send(request.json(&json!({"forbidden": forbidden})))
            .await
    }

    /// Closes an ERP period (`YYYY-MM`): postings into it are refused from now on.
    pub async fn close_period(&self, period: &str) -> Result<(), reqwest::Error> {
        let path = format!("/admin/erp/periods/{period}/close");
        self.send(self.admin(Method::POST, &path)).await
    }

    /// Makes the ERP acknowledge but drop the batches of a legal entity, or (`None`) stop.
    pub async fn withhold(&self, legal_entity_id: Option<&str>) -> Result<(), reqwest::Error> {
        let request = match legal_entity_id {
            Some(entity) => self
                .admin(Method::PUT, "/admin/erp/withhold")
                .json(&json!({"legal_entity_id": entity})),
            None => self.admin(Method::DELETE, "/admin/erp/withhold"),
        };
        self.send(request).await
    }

    fn admin(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base_url))
            // The development admin token: the sandbox is a test and demo tool.
            .bearer_auth(crate::config::DEFAULT_ADMIN_TOKEN)
    }

    fn set_own_token(&self, token: &str) {
        *self.token.write().unwrap_or_else(PoisonError::into_inner) = token.to_owned();
    }

    /// A `GET` of `path` with the APIs' token in force.
    fn reader(&self, path: &str) -> RequestBuilder {
        let token = self
            .token
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        self.http
            .get(format!("{}{path}", self.base_url))
            .bearer_auth(token)
    }

    async fn read<T: DeserializeOwned>(&self, path: &str) -> Result<T, reqwest::Error> {
        let request = self.reader(path);
        request.send().await?.error_for_status()?.json().await
    }

    async fn send(&self, request: RequestBuilder) -> Result<(), reqwest::Error> {
        request.send().await?.error_for_status()?;
        Ok(())
    }
}
