//! The analytics table, its migrations, and one fact as a row of it.

use backbone_schemas::types::AnalyticsFact;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

/// Schema changes in order; each runs once per database, recorded in
/// `<schema>.schema_migrations`. `{schema}` is replaced by the configured schema name, which
/// config validation restricts to a plain identifier.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE {schema}.facts (
            fact_id text PRIMARY KEY,
            tenant_id text NOT NULL,
            fact_type text NOT NULL,
            source_revision bigint NOT NULL,
            event_time timestamptz NOT NULL,
            fact_date date NOT NULL,
            customer_id text NOT NULL,
            legal_entity_id text,
            subscription_id text,
            product_id text,
            charge_id text,
            meter_id text,
            quantity numeric(24, 9),
            amount numeric(18, 6),
            currency text,
            attributes jsonb NOT NULL DEFAULT '{}'::jsonb,
            loaded_at timestamptz NOT NULL DEFAULT now()
        )",
    ),
    (
        2,
        "CREATE INDEX facts_by_tenant_and_date ON {schema}.facts (tenant_id, fact_date)",
    ),
];

/// Creates the schema and applies the migrations not yet applied, under an advisory lock so
/// that two instances starting together do not race.
pub async fn migrate(client: &Client, schema: &str) -> Result<(), tokio_postgres::Error> {
    let lock_name = format!("backbone.analytics-sink.{schema}");
    client
        .execute("SELECT pg_advisory_lock(hashtext($1))", &[&lock_name])
        .await?;
    let result = apply(client, schema).await;
    client
        .execute("SELECT pg_advisory_unlock(hashtext($1))", &[&lock_name])
        .await?;
    result
}

async fn apply(client: &Client, schema: &str) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
                 version integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )"
        ))
        .await?;
    let applied: i32 = client
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {schema}.schema_migrations"),
            &[],
        )
        .await?
        .get(0);
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > applied) {
        client
            .batch_execute(&format!(
                "BEGIN;
                 {};
                 INSERT INTO {schema}.schema_migrations (version) VALUES ({version});
                 COMMIT;",
                sql.replace("{schema}", schema)
            ))
            .await?;
        tracing::info!(schema, version, "analytics schema migrated");
    }
    Ok(())
}

/// The latest migration, for tests and reports.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |(v, _)| *v)
}

/// The columns an upsert writes, in the order of its values.
const COLUMNS: &str = "fact_id, tenant_id, fact_type, source_revision, event_time, fact_date,
    customer_id, legal_entity_id, subscription_id, product_id, charge_id, meter_id, quantity,
    amount, currency, attributes";

/// What an upsert does with a fact the table holds: a newer revision replaces it, any other
/// leaves it; the rows changed are returned.
const NEWER_REVISION_WINS: &str = "ON CONFLICT (fact_id) DO UPDATE SET
    tenant_id = EXCLUDED.tenant_id, fact_type = EXCLUDED.fact_type,
    source_revision = EXCLUDED.source_revision, event_time = EXCLUDED.event_time,
    fact_date = EXCLUDED.fact_date, customer_id = EXCLUDED.customer_id,
    legal_entity_id = EXCLUDED.legal_entity_id, subscription_id = EXCLUDED.subscription_id,
    product_id = EXCLUDED.product_id, charge_id = EXCLUDED.charge_id,
    meter_id = EXCLUDED.meter_id, quantity = EXCLUDED.quantity, amount = EXCLUDED.amount,
    currency = EXCLUDED.currency, attributes = EXCLUDED.attributes, loaded_at = now()
    WHERE f.source_revision < EXCLUDED.source_revision
    RETURNING fact_id";

/// The upsert of one fact: inserted when new, replaced only by a newer revision. It returns a
/// row when it changed the table, none when the table already held this revision or a newer
/// one.
pub fn upsert_sql(schema: &str) -> String {
    format!(
        "INSERT INTO {schema}.facts AS f ({COLUMNS})
         VALUES ($1, $2, $3, $4,
             to_timestamp(0) + $5::bigint * interval '1 microsecond',
             date '1970-01-01' + $6::integer, $7, $8, $9, $10, $11, $12,
             $13::text::numeric, $14::text::numeric, $15, $16::text::jsonb)
         {NEWER_REVISION_WINS}"
    )
}

/// The upsert of a whole batch in one statement: the rows arrive as one array per column
/// (`unnest`), so the database parses, plans and answers once per batch, not once per row.
/// The same rules as [`upsert_sql`]; a fact may appear once per statement (PostgreSQL refuses an
/// `ON CONFLICT DO UPDATE` touching a row twice), so callers keep each fact's newest revision.
/// It returns the `fact_id` of every row it changed.
pub fn upsert_many_sql(schema: &str) -> String {
    format!(
        "INSERT INTO {schema}.facts AS f ({COLUMNS})
         SELECT fact_id, tenant_id, fact_type, source_revision,
             to_timestamp(0) + event_micros * interval '1 microsecond',
             date '1970-01-01' + fact_day, customer_id, legal_entity_id, subscription_id,
             product_id, charge_id, meter_id, quantity::numeric, amount::numeric, currency,
             attributes::jsonb
         FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[],
             $6::integer[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],
             $12::text[], $13::text[], $14::text[], $15::text[], $16::text[])
             AS r(fact_id, tenant_id, fact_type, source_revision, event_micros, fact_day,
                  customer_id, legal_entity_id, subscription_id, product_id, charge_id,
                  meter_id, quantity, amount, currency, attributes)
         {NEWER_REVISION_WINS}"
    )
}

/// Rows as the columns [`upsert_many_sql`] takes.
#[derive(Debug, Default)]
pub struct FactColumns {
    fact_id: Vec<String>,
    tenant_id: Vec<String>,
    fact_type: Vec<String>,
    source_revision: Vec<i64>,
    event_time_micros: Vec<i64>,
    fact_date: Vec<i32>,
    customer_id: Vec<String>,
    legal_entity_id: Vec<Option<String>>,
    subscription_id: Vec<Option<String>>,
    product_id: Vec<Option<String>>,
    charge_id: Vec<Option<String>>,
    meter_id: Vec<Option<String>>,
    quantity: Vec<Option<String>>,
    amount: Vec<Option<String>>,
    currency: Vec<Option<String>>,
    attributes: Vec<String>,
}

impl FactColumns {
    /// The columns of `rows`.
    pub fn of<'r>(rows: impl IntoIterator<Item = &'r FactRow>) -> Self {
        let mut columns = Self::default();
        for row in rows {
            columns.fact_id.push(row.fact_id.clone());
            columns.tenant_id.push(row.tenant_id.clone());
            columns.fact_type.push(row.fact_type.clone());
            columns.source_revision.push(row.source_revision);
            columns.event_time_micros.push(row.event_time_micros);
            columns.fact_date.push(row.fact_date);
            columns.customer_id.push(row.customer_id.clone());
            columns.legal_entity_id.push(row.legal_entity_id.clone());
            columns.subscription_id.push(row.subscription_id.clone());
            columns.product_id.push(row.product_id.clone());
            columns.charge_id.push(row.charge_id.clone());
            columns.meter_id.push(row.meter_id.clone());
            columns.quantity.push(row.quantity.clone());
            columns.amount.push(row.amount.clone());
            columns.currency.push(row.currency.clone());
            columns.attributes.push(row.attributes.clone());
        }
        columns
    }

    /// The statement's parameters, in the order of [`upsert_many_sql`].
    pub fn params(&self) -> [&(dyn ToSql + Sync); 16] {
        [
            &self.fact_id,
            &self.tenant_id,
            &self.fact_type,
            &self.source_revision,
            &self.event_time_micros,
            &self.fact_date,
            &self.customer_id,
            &self.legal_entity_id,
            &self.subscription_id,
            &self.product_id,
            &self.charge_id,
            &self.meter_id,
            &self.quantity,
            &self.amount,
            &self.currency,
            &self.attributes,
        ]
    }
}

/// One fact as the upsert's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FactRow {
    /// Primary key.
    pub fact_id: String,
    /// Tenant.
    pub tenant_id: String,
    /// `RATED_USAGE`, `USAGE_WINDOW`, ...
    pub fact_type: String,
    /// Revision of the source; the newest wins.
    pub source_revision: i64,
    /// Event time, microseconds since the epoch.
    pub event_time_micros: i64,
    /// Day of the fact, days since the epoch.
    pub fact_date: i32,
    /// Customer.
    pub customer_id: String,
    /// Legal entity, when known.
    pub legal_entity_id: Option<String>,
    /// Subscription, when known.
    pub subscription_id: Option<String>,
    /// Product, when known.
    pub product_id: Option<String>,
    /// Charge, when known.
    pub charge_id: Option<String>,
    /// Meter, when known.
    pub meter_id: Option<String>,
    /// Quantity as an exact decimal string.
    pub quantity: Option<String>,
    /// Amount as an exact decimal string.
    pub amount: Option<String>,
    /// Currency of `amount`.
    pub currency: Option<String>,
    /// Attributes as a JSON object.
    pub attributes: String,
}

impl FactRow {
    /// The row for `fact`.
    pub fn from_fact(fact: &AnalyticsFact) -> Self {
        let attributes: std::collections::BTreeMap<&String, &String> =
            fact.attributes.iter().collect();
        Self {
            fact_id: fact.fact_id.clone(),
            tenant_id: fact.metadata.tenant_id.clone(),
            fact_type: serde_json::to_value(fact.fact_type)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            source_revision: fact.source_revision,
            event_time_micros: fact.event_time,
            fact_date: fact.fact_date,
            customer_id: fact.customer_id.clone(),
            legal_entity_id: fact.legal_entity_id.clone(),
            subscription_id: fact.subscription_id.clone(),
            product_id: fact.product_id.clone(),
            charge_id: fact.charge_id.clone(),
            meter_id: fact.meter_id.clone(),
            quantity: fact.quantity.map(|q| q.to_string()),
            amount: fact.amount.map(|a| a.to_string()),
            currency: fact.currency.clone(),
            attributes: serde_json::to_string(&attributes).unwrap_or_else(|_| "{}".to_owned()),
        }
    }

    /// The upsert's parameters, in the order of [`upsert_sql`].
    pub fn params(&self) -> [&(dyn ToSql + Sync); 16] {
        [
            &self.fact_id,
            &self.tenant_id,
            &self.fact_type,
            &self.source_revision,
            &self.event_time_micros,
            &self.fact_date,
            &self.customer_id,
            &self.legal_entity_id,
            &self.subscription_id,
            &self.product_id,
            &self.charge_id,
            &self.meter_id,
            &self.quantity,
            &self.amount,
            &self.currency,
            &self.attributes,
        ]
    }
}
