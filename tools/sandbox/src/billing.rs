//! The billing API: charges created under an `Idempotency-Key`, as payment APIs do. A key
//! seen again with the same body replays the first answer; with another body it is refused.
//! Keys are remembered for `billing.idempotency_ttl` only: a key sent again after that creates
//! a second charge, as a real payment API would. Each charge keeps the `metadata` it was sent
//! with; the business identity in it (`rating_id` and `revision`) is how a test counts
//! charges independently of the keys.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::http::{error, json_value, typed, Refusal};
use crate::money::{is_date, Amount};
use crate::{lock, Sandbox};

/// A charge as created: its id, the key it was created under, and the fields it was sent with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCharge {
    /// Assigned id, `ch_000001` onwards.
    pub id: String,
    /// The `Idempotency-Key` it was created under.
    pub idempotency_key: String,
    /// Always `succeeded`.
    pub status: String,
    /// Customer charged.
    pub customer_id: String,
    /// Subscription charged for.
    pub subscription_id: String,
    /// The caller's id of the charge.
    pub charge_id: String,
    /// Kind of charge, such as `usage`.
    pub charge_type: String,
    /// Line text on the invoice.
    pub description: String,
    /// Decimal quantity, as sent.
    pub quantity: String,
    /// Decimal amount, as sent.
    pub amount: String,
    /// Currency of `amount`.
    pub currency: String,
    /// First day charged for, `YYYY-MM-DD`.
    pub period_start: String,
    /// Last day charged for, `YYYY-MM-DD`.
    pub period_end: String,
    /// Tenant the charge belongs to.
    pub tenant_id: String,
    /// The caller's key-value pairs, kept as sent.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

impl StoredCharge {
    /// The business identity the caller put in `metadata`: `<rating_id>#<revision>`, or
    /// `None` when it sent none.
    pub fn identity(&self) -> Option<String> {
        let rating_id = self.metadata.get("rating_id")?;
        let revision = self.metadata.get("revision").map_or("", String::as_str);
        Some(format!("{rating_id}#{revision}"))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChargeRequest {
    customer_id: String,
    subscription_id: String,
    charge_id: String,
    charge_type: String,
    description: String,
    quantity: String,
    amount: String,
    currency: String,
    period_start: String,
    period_end: String,
    tenant_id: String,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

/// Charges in creation order, which one each key created, and the charges holding each
/// metadata pair (a billing API answers a lookup by metadata from an index, not a scan).
#[derive(Default)]
pub(crate) struct Ledger {
    charges: Vec<StoredCharge>,
    by_key: HashMap<String, Created>,
    by_metadata: HashMap<(String, String), Vec<usize>>,
}

struct Created {
    request: Value,
    index: usize,
    at: Instant,
}

impl Ledger {
    pub(crate) fn applied(&self) -> usize {
        self.charges.len()
    }
}

pub(crate) async fn create(
    State(app): State<Arc<Sandbox>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(key) = headers
        .get("idempotency-key")
        .and_then(|value| value.to_str().ok())
        .filter(|key| !key.is_empty())
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "missing_idempotency_key",
            "header `Idempotency-Key` is required",
        );
    };
    let request = match json_value(&body) {
        Ok(request) => request,
        Err(message) => return error(StatusCode::BAD_REQUEST, "invalid_request", message),
    };
    let mut ledger = lock(&app.billing);
    let ttl = app.config.billing.idempotency_ttl;
    if ledger
        .by_key
        .get(key)
        .is_some_and(|created| created.at.elapsed() >= ttl)
    {
        // Expired: forgotten, as if never seen.
        ledger.by_key.remove(key);
    }
    if let Some(created) = ledger.by_key.get(key) {
        if created.request != request {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reuse",
                format!("key `{key}` was used with another request body"),
            );
        }
        let mut replay = created_reply(&ledger.charges[created.index]);
        replay
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
        return replay;
    }
    let charge = match validate(request.clone(), &app.config.billing.currencies) {
        Ok(charge) => charge,
        Err(refusal) => return refusal.into_response(),
    };
    let stored = StoredCharge {
        id: format!("ch_{:06}", ledger.charges.len() + 1),
        idempotency_key: key.to_owned(),
        status: "succeeded".to_owned(),
        customer_id: charge.customer_id,
        subscription_id: charge.subscription_id,
        charge_id: charge.charge_id,
        charge_type: charge.charge_type,
        description: charge.description,
        quantity: charge.quantity,
        amount: charge.amount,
        currency: charge.currency,
        period_start: charge.period_start,
        period_end: charge.period_end,
        tenant_id: charge.tenant_id,
        metadata: charge.metadata,
    };
    let reply = created_reply(&stored);
    let index = ledger.charges.len();
    for pair in &stored.metadata {
        let pair = (pair.0.clone(), pair.1.clone());
        ledger.by_metadata.entry(pair).or_default().push(index);
    }
    ledger.charges.push(stored);
    ledger.by_key.insert(
        key.to_owned(),
        Created {
            request,
            index,
            at: Instant::now(),
        },
    );
    reply
}

fn created_reply(charge: &StoredCharge) -> Response {
    (StatusCode::CREATED, Json(charge)).into_response()
}

/// The charge, or the 400 naming the first field at fault.
fn validate(request: Value, currencies: &[String]) -> Result<ChargeRequest, Refusal> {
    let invalid =
        |message: String| Refusal::new(StatusCode::BAD_REQUEST, "invalid_request", message);
    let charge: ChargeRequest = typed(request).map_err(invalid)?;
    let required = [
        ("customer_id", &charge.customer_id),
        ("subscription_id", &charge.subscription_id),
        ("charge_id", &charge.charge_id),
        ("charge_type", &charge.charge_type),
        ("tenant_id", &charge.tenant_id),
    ];
    if let Some((field, _)) = required.iter().find(|(_, value)| value.is_empty()) {
        return Err(invalid(format!("`{field}` must not be empty")));
    }
    for (field, value) in [("quantity", &charge.quantity), ("amount", &charge.amount)] {
        value
            .parse::<Amount>()
            .map_err(|message| invalid(format!("`{field}`: {message}")))?;
    }
    for (field, value) in [
        ("period_start", &charge.period_start),
        ("period_end", &charge.period_end),
    ] {
        if !is_date(value) {
            return Err(invalid(format!(
                "`{field}`: expected YYYY-MM-DD, got {value:?}"
            )));
        }
    }
    // ISO dates order as strings.
    if charge.period_end < charge.period_start {
        return Err(invalid("`period_end` is before `period_start`".into()));
    }
    if !currencies.contains(&charge.currency) {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "unsupported_currency",
            format!("`currency`: {:?} is not accepted", charge.currency),
        ));
    }
    Ok(charge)
}

/// Every charge in creation order; with `metadata[<key>]=<value>` parameters, only those whose
/// metadata holds every pair given (how a caller finds a charge by its own identity).
pub(crate) async fn list(
    State(app): State<Arc<Sandbox>>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let mut wanted = Vec::new();
    for (parameter, value) in &query {
        let Some(key) = parameter
            .strip_prefix("metadata[")
            .and_then(|rest| rest.strip_suffix(']'))
        else {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("unknown query parameter `{parameter}`; filter with metadata[<key>]"),
            );
        };
        wanted.push((key, value));
    }
    let ledger = lock(&app.billing);
    let holds_all = |charge: &&StoredCharge| {
        wanted
            .iter()
            .all(|(key, value)| charge.metadata.get(*key) == Some(*value))
    };
    let charges: Vec<&StoredCharge> = match wanted.first() {
        None => ledger.charges.iter().collect(),
        Some((key, value)) => ledger
            .by_metadata
            .get(&((*key).to_owned(), (*value).clone()))
            .into_iter()
            .flatten()
            .map(|&index| &ledger.charges[index])
            .filter(holds_all)
            .collect(),
    };
    Json(json!({ "charges": charges })).into_response()
}
