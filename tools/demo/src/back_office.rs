//! The demo's back office: the sandbox of the billing, CRM and ERP APIs, PostgreSQL for
//! analytics, and the four sinks delivering to them, each its own process; then what every
//! system holds for the demo's tenant, against what the pipeline produced.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use backbone_components::{env_var, Component, Destination};
use backbone_sandbox::SandboxClient;
use backbone_schemas::types::Amount;
use backbone_sink::settings::split_password;
use tokio_postgres::NoTls;

/// Token the demo's sandbox expects and its sinks send.
pub const TOKEN: &str = "demo-sandbox-token";

/// How to start one process of the back office.
pub struct Launch {
    /// Binary name.
    pub name: String,
    /// Its own environment.
    pub env: Vec<(String, String)>,
    /// Whether it is a Kafka client (a sink) that needs the broker and registry settings; the
    /// sandbox is not, and it is started first and awaited.
    pub kafka_client: bool,
}

/// The settings components.toml gives `component` for a short local run.
pub fn local_settings(component: &Component) -> impl Iterator<Item = (String, String)> + '_ {
    component
        .local
        .iter()
        .map(|(key, value)| (env_var(key), value.clone()))
}

/// The sandbox, then the sinks of components.toml, in order.
pub fn launches(
    sandbox_listen: &str,
    postgres_url: &str,
    ledger_dir: &Path,
    outbox_dir: &Path,
) -> Vec<Launch> {
    let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    let (pg_url, pg_password) = split_password(postgres_url);
    let pg_password = pg_password
        .map(|p| p.expose().to_owned())
        .unwrap_or_default();
    let mut launches = vec![Launch {
        name: "sandbox".to_owned(),
        env: vec![
            pair("BACKBONE__LISTEN", sandbox_listen),
            pair("BACKBONE__TOKEN", TOKEN),
        ],
        kafka_client: false,
    }];
    for sink in backbone_components::sinks() {
        let mut env = match sink.destination {
            Some(Destination::Postgres) => vec![
                pair("BACKBONE__DESTINATION__URL", &pg_url),
                pair("BACKBONE__DESTINATION__CREDENTIAL", &pg_password),
            ],
            _ => vec![
                pair(
                    "BACKBONE__DESTINATION__URL",
                    &format!("http://{sandbox_listen}"),
                ),
                pair("BACKBONE__DESTINATION__CREDENTIAL", TOKEN),
            ],
        };
        env.push(pair(
            "BACKBONE__RUNTIME__LEDGER_DIR",
            &ledger_dir.to_string_lossy(),
        ));
        env.push(pair("BACKBONE__RUNTIME__LINGER", "100ms"));
        env.extend(local_settings(sink));
        // The demo shows the ERP's CSV outbox too.
        if sink.name == "erp-sink" {
            env.push(pair(
                "BACKBONE__SINK__OUTBOX_DIR",
                &outbox_dir.to_string_lossy(),
            ));
        }
        launches.push(Launch {
            name: sink.name.clone(),
            env,
            kafka_client: true,
        });
    }
    launches
}

/// The drift report for `tenant`, printed; fails when any check differs.
pub async fn drift_report(
    bootstrap_servers: &str,
    registry: backbone_core::schema_registry::SchemaRegistrySettings,
    sandbox_listen: &str,
    tenant: &str,
) -> Result<()> {
    let url = format!("http://{sandbox_listen}");
    let config = backbone_drift::DriftConfig {
        kafka: backbone_core::KafkaSettings::for_servers(bootstrap_servers),
        schema_registry: registry,
        drift: backbone_drift::DriftSettings {
            billing_url: url.clone(),
            crm_url: url.clone(),
            erp_url: url,
            credential: backbone_core::Secret::new(TOKEN),
            ..backbone_drift::DriftSettings::default()
        },
    };
    let mut lines = backbone_drift::reconcile_once(&config)
        .await
        .context("reconciling")?;
    lines.retain(|l| l.key.tenant == tenant);
    println!();
    println!("drift report for tenant {tenant} (`drift report` prints it for every tenant)");
    print!("{}", backbone_drift::render_table(&lines));
    if lines.iter().any(|l| l.difference() != 0) {
        bail!("the drift report shows differences");
    }
    Ok(())
}

/// Waits until the sandbox answers its health check.
pub async fn await_sandbox(listen: &str, deadline: Instant) -> Result<()> {
    let url = format!("http://{listen}/health");
    loop {
        if reqwest::get(&url)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the sandbox did not answer on {url}; see its log");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the pipeline produced for the demo's tenant, that the back office must hold.
pub struct Produced {
    /// The demo's tenant.
    pub tenant: String,
    /// Charges by `rating_id`: amount.
    pub charges: BTreeMap<String, i128>,
    /// Latest snapshot `as_of` per customer.
    pub latest_snapshots: BTreeMap<String, i64>,
    /// Net postings per `<legal entity>/<currency>`.
    pub ledger: BTreeMap<String, i128>,
    /// GL accounts the postings debit as receivables.
    pub receivable_accounts: BTreeSet<String>,
    /// Distinct analytics fact ids.
    pub facts: BTreeSet<String>,
}

/// What the back office holds, read from the systems themselves.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Held {
    charges: BTreeMap<String, i128>,
    accounts: BTreeMap<String, i64>,
    receivables: BTreeMap<String, i128>,
    batches: usize,
    unbalanced: usize,
    facts: BTreeSet<String>,
}

fn unscaled(text: &str) -> Result<i128> {
    let amount: Amount = text
        .parse()
        .with_context(|| format!("reading the amount {text}"))?;
    Ok(amount.unscaled())
}

async fn read(
    sandbox: &SandboxClient,
    db: &tokio_postgres::Client,
    produced: &Produced,
) -> Result<Held> {
    let tenant = produced.tenant.as_str();
    let mut held = Held::default();
    for charge in sandbox
        .charges()
        .await
        .context("reading the billing system")?
    {
        if charge.tenant_id == tenant {
            held.charges
                .insert(charge.idempotency_key.clone(), unscaled(&charge.amount)?);
        }
    }
    let prefix = format!("{tenant}:");
    for account in sandbox.accounts().await.context("reading the CRM")? {
        if let Some(customer) = account.external_id.strip_prefix(&prefix) {
            held.accounts.insert(customer.to_owned(), account.as_of);
        }
    }
    for batch in sandbox.batches().await.context("reading the ERP")? {
        if batch.tenant_id != tenant {
            continue;
        }
        held.batches += 1;
        let (mut debits, mut credits) = (0i128, 0i128);
        for line in &batch.lines {
            let (debit, credit) = (unscaled(&line.debit)?, unscaled(&line.credit)?);
            debits += debit;
            credits += credit;
            if produced.receivable_accounts.contains(&line.gl_account) {
                *held
                    .receivables
                    .entry(format!("{}/{}", batch.legal_entity_id, line.currency))
                    .or_default() += debit - credit;
            }
        }
        if debits != credits {
            held.unbalanced += 1;
        }
    }
    // The table appears with the analytics sink's first batch.
    let rows = db
        .query(
            "SELECT fact_id FROM analytics.facts WHERE tenant_id = $1",
            &[&tenant],
        )
        .await
        .unwrap_or_default();
    held.facts = rows.iter().map(|row| row.get::<_, String>(0)).collect();
    Ok(held)
}

fn agrees(held: &Held, produced: &Produced) -> bool {
    held.charges == produced.charges
        && held.accounts == produced.latest_snapshots
        && held.receivables == produced.ledger
        && held.unbalanced == 0
        && held.facts == produced.facts
}

/// Waits until every system holds what the pipeline produced, then prints it; fails with the
/// difference at `deadline`.
pub async fn check(
    sandbox_listen: &str,
    postgres_url: &str,
    produced: &Produced,
    deadline: Instant,
) -> Result<()> {
    let sandbox = SandboxClient::with_token(format!("http://{sandbox_listen}"), TOKEN);
    let (db, connection) = tokio_postgres::connect(postgres_url, NoTls)
        .await
        .context("connecting to PostgreSQL")?;
    tokio::spawn(connection);
    let mut held = read(&sandbox, &db, produced).await?;
    while !agrees(&held, produced) {
        if Instant::now() >= deadline {
            bail!(
                "the back office does not hold what the pipeline produced: billing {} of {} charges, CRM {} of {} accounts, ERP receivables {:?} for {:?} ({} unbalanced batches), analytics {} of {} facts",
                held.charges.len(),
                produced.charges.len(),
                held.accounts.len(),
                produced.latest_snapshots.len(),
                held.receivables,
                produced.ledger,
                held.unbalanced,
                held.facts.len(),
                produced.facts.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        held = read(&sandbox, &db, produced).await?;
    }
    let money = |unscaled: i128| {
        Amount::from_unscaled(unscaled).map_or_else(|_| "overflow".to_owned(), |a| a.to_string())
    };
    let line = crate::figure;
    println!();
    println!("back office (sandbox APIs and PostgreSQL)");
    line(
        "billing system: charges, each once",
        held.charges.len().to_string(),
    );
    line("billing system: total", money(held.charges.values().sum()));
    line(
        "CRM: accounts holding their latest snapshot",
        format!(
            "{} of {}",
            held.accounts.len(),
            produced.latest_snapshots.len()
        ),
    );
    line(
        "ERP: journal batches, every one balanced",
        held.batches.to_string(),
    );
    for (key, net) in &held.receivables {
        line(&format!("ERP: receivables journalled ({key})"), money(*net));
    }
    line(
        "analytics (PostgreSQL analytics.facts): rows",
        held.facts.len().to_string(),
    );
    Ok(())
}
