//! The ERP API: journal batches posted once per external id. Like real ERPs it answers
//! business errors (unbalanced, control totals off, empty) with HTTP 200 and a status of
//! `error`, so a sink must read the body, not only the status code.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::http::{json_value, typed};
use crate::money::{is_date, is_period, Amount};
use crate::{lock, Sandbox};

/// Whether a batch stands alone or corrects an earlier one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BatchType {
    /// An ordinary batch.
    Regular,
    /// A correction of the batch named in `adjusts`.
    Adjustment,
}

/// One line of a journal batch; amounts are decimal strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalLine {
    /// Position of the line in its batch.
    pub line_number: u32,
    /// General-ledger account posted to.
    pub gl_account: String,
    /// Debit amount.
    pub debit: String,
    /// Credit amount.
    pub credit: String,
    /// Currency of both amounts.
    pub currency: String,
    /// Line text.
    pub description: String,
    /// The sender's reference for the line (the source document it posts); the ERP finds
    /// lines by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// What the sender says the lines of one currency add up to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlTotal {
    /// The currency totalled.
    pub currency: String,
    /// Lines in that currency.
    pub line_count: u64,
    /// Sum of their debits.
    pub total_debits: String,
    /// Sum of their credits.
    pub total_credits: String,
}

/// A batch as posted, with the document number the ERP gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostedBatch {
    /// The sender's id of the batch; posting it again is a duplicate.
    pub external_id: String,
    /// Tenant the batch belongs to.
    pub tenant_id: String,
    /// Legal entity whose books it is posted in.
    pub legal_entity_id: String,
    /// Accounting period, `YYYY-MM`.
    pub period: String,
    /// Posting date, `YYYY-MM-DD`.
    pub posting_date: String,
    /// Regular or adjustment.
    pub batch_type: BatchType,
    /// External id of the batch an adjustment corrects.
    pub adjusts: Option<String>,
    /// The lines.
    pub lines: Vec<JournalLine>,
    /// Totals per currency.
    pub control_totals: Vec<ControlTotal>,
    /// Number assigned on posting, `JE-000001` onwards.
    pub document_number: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    external_id: String,
    tenant_id: String,
    legal_entity_id: String,
    period: String,
    posting_date: String,
    batch_type: BatchType,
    adjusts: Option<String>,
    lines: Vec<JournalLine>,
    control_totals: Vec<ControlTotal>,
}

/// Posted batches, which external ids they came from, and the ERP's own settings.
pub(crate) struct Journal {
    batches: Vec<PostedBatch>,
    by_external_id: HashMap<String, Posted>,
    documents_issued: u64,
    pub(crate) closed_periods: BTreeSet<String>,
    /// Legal entity whose batches are acknowledged but dropped.
    pub(crate) withheld: Option<String>,
}

struct Posted {
    request: Value,
    document_number: String,
}

impl Journal {
    pub(crate) fn new(closed_periods: &[String]) -> Self {
        Self {
            batches: Vec::new(),
            by_external_id: HashMap::new(),
            documents_issued: 0,
            closed_periods: closed_periods.iter().cloned().collect(),
            withheld: None,
        }
    }

    pub(crate) fn applied(&self) -> usize {
        self.batches.len()
    }
}

/// Line count and sums of one currency.
#[derive(Default)]
struct Totals {
    lines: u64,
    debits: Amount,
    credits: Amount,
}

fn reply(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

fn refuse(status: StatusCode, errors: &[(&str, String)]) -> Response {
    let errors: Vec<Value> = errors
        .iter()
        .map(|(code, message)| json!({"code": code, "message": message}))
        .collect();
    reply(status, json!({"status": "error", "errors": errors}))
}

pub(crate) async fn post_batch(State(app): State<Arc<Sandbox>>, body: Bytes) -> Response {
    let parsed = json_value(&body).and_then(|request| {
        let batch: BatchRequest = typed(request.clone())?;
        check_fields(&batch)?;
        let totals = line_totals(&batch.lines)?;
        let controls = control_totals(&batch.control_totals)?;
        Ok((request, batch, totals, controls))
    });
    let (request, batch, totals, controls) = match parsed {
        Ok(parsed) => parsed,
        Err(message) => {
            return refuse(StatusCode::BAD_REQUEST, &[("invalid_request", message)]);
        }
    };

    let mut journal = lock(&app.erp);
    if let Some(posted) = journal.by_external_id.get(&batch.external_id) {
        if posted.request == request {
            let document_number = &posted.document_number;
            return reply(
                StatusCode::OK,
                json!({"status": "duplicate", "document_number": document_number}),
            );
        }
        let message = format!(
            "external id `{}` was posted as {} with another body",
            batch.external_id, posted.document_number
        );
        return refuse(StatusCode::CONFLICT, &[("external_id_conflict", message)]);
    }
    if journal.closed_periods.contains(&batch.period) {
        let message = format!("period {} is closed", batch.period);
        return refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            &[("period_closed", message)],
        );
    }
    let errors = business_errors(&totals, &controls);
    if !errors.is_empty() {
        return refuse(StatusCode::OK, &errors);
    }

    journal.documents_issued += 1;
    let document_number = format!("JE-{:06}", journal.documents_issued);
    let created = reply(
        StatusCode::CREATED,
        json!({"status": "posted", "document_number": document_number}),
    );
    if journal.withheld.as_ref() == Some(&batch.legal_entity_id) {
        tracing::debug!(external_id = %batch.external_id, "batch acknowledged and withheld");
        return created;
    }
    journal.by_external_id.insert(
        batch.external_id.clone(),
        Posted {
            request,
            document_number: document_number.clone(),
        },
    );
    journal.batches.push(PostedBatch {
        external_id: batch.external_id,
        tenant_id: batch.tenant_id,
        legal_entity_id: batch.legal_entity_id,
        period: batch.period,
        posting_date: batch.posting_date,
        batch_type: batch.batch_type,
        adjusts: batch.adjusts,
        lines: batch.lines,
        control_totals: batch.control_totals,
        document_number,
    });
    created
}

fn check_fields(batch: &BatchRequest) -> Result<(), String> {
    let required = [
        ("external_id", &batch.external_id),
        ("tenant_id", &batch.tenant_id),
        ("legal_entity_id", &batch.legal_entity_id),
    ];
    if let Some((field, _)) = required.iter().find(|(_, value)| value.is_empty()) {
        return Err(format!("`{field}` must not be empty"));
    }
    if !is_period(&batch.period) {
        return Err(format!(
            "`period`: expected YYYY-MM, got {:?}",
            batch.period
        ));
    }
    if !is_date(&batch.posting_date) {
        let date = &batch.posting_date;
        return Err(format!("`posting_date`: expected YYYY-MM-DD, got {date:?}"));
    }
    Ok(())
}

fn amount(text: &str, field: impl FnOnce() -> String) -> Result<Amount, String> {
    text.parse()
        .map_err(|message| format!("`{}`: {message}", field()))
}

fn line_totals(lines: &[JournalLine]) -> Result<BTreeMap<String, Totals>, String> {
    let mut totals: BTreeMap<String, Totals> = BTreeMap::new();
    for (i, line) in lines.iter().enumerate() {
        let debit = amount(&line.debit, || format!("lines[{i}].debit"))?;
        let credit = amount(&line.credit, || format!("lines[{i}].credit"))?;
        let sum = totals.entry(line.currency.clone()).or_default();
        sum.lines += 1;
        sum.debits = sum
            .debits
            .checked_add(debit)
            .ok_or("debits too large to sum")?;
        sum.credits = sum
            .credits
            .checked_add(credit)
            .ok_or("credits too large to sum")?;
    }
    Ok(totals)
}

/// Control totals by currency; a currency listed twice keeps `None`, which never matches.
fn control_totals(controls: &[ControlTotal]) -> Result<BTreeMap<String, Option<Totals>>, String> {
    let mut by_currency = BTreeMap::new();
    for (i, control) in controls.iter().enumerate() {
        let totals = Totals {
            lines: control.line_count,
            debits: amount(&control.total_debits, || {
                format!("control_totals[{i}].total_debits")
            })?,
            credits: amount(&control.total_credits, || {
                format!("control_totals[{i}].total_credits")
            })?,
        };
        let first = !by_currency.contains_key(&control.currency);
        by_currency.insert(control.currency.clone(), first.then_some(totals));
    }
    Ok(by_currency)
}

fn business_errors(
    totals: &BTreeMap<String, Totals>,
    controls: &BTreeMap<String, Option<Totals>>,
) -> Vec<(&'static str, String)> {
    if totals.is_empty() {
        return vec![("empty_batch", "the batch has no lines".to_owned())];
    }
    let mut errors = Vec::new();
    for (currency, sum) in totals {
        if sum.debits != sum.credits {
            let message = format!(
                "{currency}: debits {} != credits {}",
                sum.debits, sum.credits
            );
            errors.push(("unbalanced", message));
        }
    }
    let currencies: BTreeSet<&String> = totals.keys().chain(controls.keys()).collect();
    for currency in currencies {
        let none = Totals::default();
        let lines = totals.get(currency).unwrap_or(&none);
        let message = match controls.get(currency) {
            None => format!("{currency}: no control total"),
            Some(None) => format!("{currency}: control total listed more than once"),
            Some(Some(control))
                if (control.lines, control.debits, control.credits)
                    != (lines.lines, lines.debits, lines.credits) =>
            {
                format!(
                    "{currency}: control total says {} lines, debits {}, credits {}; the lines have {}, {}, {}",
                    control.lines, control.debits, control.credits, lines.lines, lines.debits, lines.credits
                )
            }
            Some(Some(_)) => continue,
        };
        errors.push(("control_total_mismatch", message));
    }
    errors
}

/// Every posted batch; with `external_id=<id>`, only that one (how a sender asks whether an id
/// is taken before it posts under it).
pub(crate) async fn list(
    State(app): State<Arc<Sandbox>>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    if let Some(parameter) = query.keys().find(|key| *key != "external_id") {
        let message = format!("unknown query parameter `{parameter}`; filter with external_id");
        return refuse(StatusCode::BAD_REQUEST, &[("invalid_request", message)]);
    }
    let journal = lock(&app.erp);
    let batches: Vec<&PostedBatch> = journal
        .batches
        .iter()
        .filter(|batch| {
            query
                .get("external_id")
                .is_none_or(|id| *id == batch.external_id)
        })
        .collect();
    reply(StatusCode::OK, json!({ "batches": batches }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LineSearch {
    references: Vec<String>,
}

/// `POST /erp/v1/journal-lines/search` with `{"references": [...]}`: every posted line carrying
/// one of them, with its batch's external id and document number. A search, not a create: it
/// changes nothing, and a sender asks it before posting lines it may have posted already.
pub(crate) async fn search_lines(State(app): State<Arc<Sandbox>>, body: Bytes) -> Response {
    let search: LineSearch = match json_value(&body).and_then(typed) {
        Ok(search) => search,
        Err(message) => return refuse(StatusCode::BAD_REQUEST, &[("invalid_request", message)]),
    };
    let wanted: BTreeSet<&str> = search.references.iter().map(String::as_str).collect();
    let journal = lock(&app.erp);
    let lines: Vec<Value> = journal
        .batches
        .iter()
        .flat_map(|batch| batch.lines.iter().map(move |line| (batch, line)))
        .filter(|(_, line)| {
            line.reference
                .as_deref()
                .is_some_and(|reference| wanted.contains(reference))
        })
        .map(|(batch, line)| {
            json!({
                "reference": line.reference,
                "line_number": line.line_number,
                "external_id": batch.external_id,
                "document_number": batch.document_number,
            })
        })
        .collect();
    reply(StatusCode::OK, json!({ "lines": lines }))
}
