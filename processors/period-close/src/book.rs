//! One subscription's billing period as the processor keeps it until it is closed: what was
//! charged in it, line by line, and the invoice it becomes. Pure: no state, no clock.
//!
//! Which charges a line sums is not kept here but beside the book, one mark per charge (see the
//! crate root): a book that grew with every charge would cost more to read and write the longer
//! its period ran.

use std::collections::BTreeSet;

use backbone_calendar::format_date;
use backbone_schemas::types::{
    Amount, BillingCharge, BillingChargeType, EventMetadata, Invoice, InvoiceLine, InvoiceStatus,
    Quantity, Subscription, TraceContext,
};
use serde::{Deserialize, Serialize};

/// A line of the period: one charge's usage, or one closed period's correction of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// The charge (rate card charge id).
    pub charge_id: String,
    /// What the customer reads.
    pub description: String,
    /// Whether the line corrects an earlier period.
    pub adjustment: bool,
    /// The period it corrects, start and end day, when known (a charge that came after its
    /// period closed); the rater's adjustments say it in their own description only.
    pub corrects: Option<(i32, i32)>,
    /// Quantity for the period to date, the largest a charge of the line said (unscaled, 9
    /// digits).
    pub quantity: i128,
    /// The sum of the charges' amounts (unscaled, 6 digits).
    pub amount: i128,
}

/// A recurring fee of the plan as the period's invoice bills it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeeLine {
    /// The fee's name, as the rate card gives it.
    pub name: String,
    /// The product it sells, for its GL mapping.
    pub product_id: Option<String>,
    /// What it bills for the period.
    pub amount: Amount,
    /// The days of the period billed, when not all of them.
    pub part: Option<(i32, i32)>,
}

/// A subscription's billing period, open until closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodBook {
    /// The tenant.
    pub tenant: String,
    /// The subscription billed.
    pub subscription_id: String,
    /// Its customer.
    pub customer_id: String,
    /// The legal entity invoicing.
    pub legal_entity_id: String,
    /// The currency of its charges.
    pub currency: String,
    /// First day of the period.
    pub start: i32,
    /// First day after it.
    pub end: i32,
    /// The lines, in the order first charged, usage and adjustments.
    pub lines: Vec<Line>,
    /// Once the invoice is out, nothing is booked here again.
    pub closed: bool,
}

impl PeriodBook {
    /// An empty book for `subscription`'s period `start..end`.
    pub fn open(tenant: &str, subscription: &Subscription, start: i32, end: i32) -> Self {
        Self {
            tenant: tenant.to_owned(),
            subscription_id: subscription.subscription_id.clone(),
            customer_id: subscription.customer_id.clone(),
            legal_entity_id: subscription.legal_entity_id.clone(),
            currency: subscription.currency.clone(),
            start,
            end,
            lines: Vec::new(),
            closed: false,
        }
    }

    /// Books `charge`, once (the caller knows whether it was booked before), and answers the
    /// index of the line it went to; `corrects` names the closed period it corrects when it came
    /// after that period closed. A charge the rater made an adjustment is one too.
    pub fn book(&mut self, charge: &BillingCharge, corrects: Option<(i32, i32)>) -> usize {
        let adjustment = corrects.is_some() || charge.charge_type == BillingChargeType::Adjustment;
        let at = self.lines.iter().position(|l| {
            l.charge_id == charge.charge_id && l.adjustment == adjustment && l.corrects == corrects
        });
        let at = match at {
            Some(at) => at,
            None => {
                let description = match (adjustment, corrects) {
                    (_, Some((start, end))) => format!(
                        "{}: correction of {} to {}",
                        charge.charge_id,
                        format_date(start),
                        format_date(end - 1)
                    ),
                    (true, None) => {
                        format!("{}: correction of an earlier period", charge.charge_id)
                    }
                    (false, None) => charge.charge_id.clone(),
                };
                self.lines.push(Line {
                    charge_id: charge.charge_id.clone(),
                    description,
                    adjustment,
                    corrects,
                    quantity: 0,
                    amount: 0,
                });
                self.lines.len() - 1
            }
        };
        let line = &mut self.lines[at];
        line.amount += charge.amount.unscaled();
        // A charge says its quantity for the period to date (an adjustment, the corrected
        // period's): the line shows the largest.
        line.quantity = charge.quantity.unscaled().max(line.quantity);
        at
    }

    /// The invoice id: one per subscription and period, the same however often it is made.
    pub fn invoice_id(&self) -> String {
        format!("inv-{}-{}", self.subscription_id, format_date(self.start))
    }

    /// The period's invoice as a draft (no number yet), issued on `issue_date`, due
    /// `payment_days` later; `at_micros` stamps it. Its lines are `fees` first, then the
    /// book's; `rating_ids` holds, per book line, the rating ids of the charges booked into it.
    pub fn draft(
        &self,
        fees: &[FeeLine],
        rating_ids: &[BTreeSet<String>],
        issue_date: i32,
        payment_days: i32,
        at_micros: i64,
    ) -> Result<Invoice, String> {
        let amount = |unscaled: i128| {
            Amount::from_unscaled(unscaled)
                .map_err(|e| format!("invoice {}: {e}", self.invoice_id()))
        };
        let mut lines = Vec::with_capacity(fees.len() + self.lines.len());
        let mut subtotal = 0i128;
        let number = |lines: &Vec<InvoiceLine>| i32::try_from(lines.len() + 1).unwrap_or(i32::MAX);
        for fee in fees {
            subtotal += fee.amount.unscaled();
            let description = match fee.part {
                Some((days, of)) => format!("{}, {days} of {of} days", fee.name),
                None => fee.name.clone(),
            };
            lines.push(InvoiceLine {
                line_number: number(&lines),
                description,
                product_id: fee.product_id.clone(),
                charge_id: None,
                // One fee, as a fixed fee's line counts it.
                quantity: Quantity::from_unscaled(1_000_000_000)
                    .map_err(|e| format!("invoice {}: {e}", self.invoice_id()))?,
                unit_price: None,
                amount: fee.amount,
                tax_amount: amount(0)?,
                period_start: Some(self.start),
                period_end: Some(self.end),
                rating_ids: Vec::new(),
            });
        }
        for (n, line) in self.lines.iter().enumerate() {
            subtotal += line.amount;
            let (period_start, period_end) = line.corrects.unwrap_or((self.start, self.end));
            lines.push(InvoiceLine {
                line_number: number(&lines),
                description: line.description.clone(),
                product_id: None,
                charge_id: Some(line.charge_id.clone()),
                quantity: Quantity::from_unscaled(line.quantity)
                    .map_err(|e| format!("invoice {}: {e}", self.invoice_id()))?,
                unit_price: None,
                amount: amount(line.amount)?,
                tax_amount: amount(0)?,
                period_start: Some(period_start),
                period_end: Some(period_end),
                rating_ids: rating_ids
                    .get(n)
                    .map(|ids| ids.iter().cloned().collect())
                    .unwrap_or_default(),
            });
        }
        Ok(Invoice {
            metadata: EventMetadata {
                tenant_id: self.tenant.clone(),
                event_id: format!("{}:draft", self.invoice_id()),
                source: crate::SOURCE.to_owned(),
                r#type: "backbone.sales.invoice".to_owned(),
                occurred_at: at_micros,
                produced_at: at_micros,
                trace: TraceContext {
                    traceparent: traceparent(&self.invoice_id()),
                    tracestate: None,
                },
                schema_version: None,
            },
            invoice_id: self.invoice_id(),
            invoice_number: String::new(),
            customer_id: self.customer_id.clone(),
            legal_entity_id: self.legal_entity_id.clone(),
            status: InvoiceStatus::Draft,
            currency: self.currency.clone(),
            issue_date,
            due_date: issue_date + payment_days,
            lines,
            subtotal_amount: amount(subtotal)?,
            tax_amount: amount(0)?,
            total_amount: amount(subtotal)?,
            subscription_id: Some(self.subscription_id.clone()),
            order_id: None,
            period_start: Some(self.start),
            period_end: Some(self.end),
            billing_email: None,
            billing_address: None,
        })
    }
}

/// A W3C trace id derived from `id`: the invoice's records share one trace, the same on
/// every replay.
fn traceparent(id: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut hasher);
    let high = hasher.finish();
    "invoice".hash(&mut hasher);
    let low = hasher.finish();
    format!("00-{high:016x}{low:016x}-{:016x}-01", low | 1)
}

/// Invoice number `sequence` of a legal entity: its id and the number, zero-padded.
pub fn invoice_number(legal_entity_id: &str, sequence: u64) -> String {
    format!("{legal_entity_id}-{sequence:06}")
}

/// The period key: tenant, subscription and start day, ordered by start.
pub fn period_key(tenant: &str, subscription_id: &str, start: i32) -> String {
    format!("{tenant}:{subscription_id}:{}", format_date(start))
}

#[cfg(test)]
mod tests {
    use super::*;
    use backbone_calendar::parse_date;

    fn metadata(event_id: &str) -> EventMetadata {
        EventMetadata {
            tenant_id: "acme".into(),
            event_id: event_id.into(),
            source: "test".into(),
            r#type: "backbone.test".into(),
            occurred_at: 0,
            produced_at: 0,
            trace: TraceContext {
                traceparent: String::new(),
                tracestate: None,
            },
            schema_version: None,
        }
    }

    fn subscription() -> Subscription {
        Subscription {
            metadata: metadata("s-1@1"),
            subscription_id: "s-1".into(),
            customer_id: "c-1".into(),
            plan_id: "pro".into(),
            status: backbone_schemas::types::SubscriptionStatus::Active,
            currency: "EUR".into(),
            legal_entity_id: "acme-de".into(),
            billing_interval: backbone_schemas::types::BillingInterval::Monthly,
            billing_anchor_day: 1,
            current_period_start: 0,
            current_period_end: 0,
            started_at: 0,
            ends_at: None,
            trial_ends_at: None,
        }
    }

    fn charge(
        rating_id: &str,
        revision: i64,
        charge_id: &str,
        quantity: &str,
        amount: &str,
    ) -> BillingCharge {
        BillingCharge {
            metadata: metadata(rating_id),
            rating_id: rating_id.into(),
            revision,
            charge_type: BillingChargeType::Usage,
            customer_id: "c-1".into(),
            subscription_id: "s-1".into(),
            charge_id: charge_id.into(),
            group_key: String::new(),
            description: String::new(),
            period_start: 0,
            period_end: 0,
            quantity: quantity.parse().expect("quantity"),
            amount: amount.parse().expect("amount"),
            currency: "EUR".into(),
            billing_account_ref: None,
        }
    }

    #[test]
    fn fees_come_first_then_charges_summed_per_line_and_corrections_on_lines_of_their_own() {
        let (nov, dec) = (
            parse_date("2026-11-01").expect("date"),
            parse_date("2026-12-01").expect("date"),
        );
        let oct = parse_date("2026-10-01").expect("date");
        let first = charge("r-1", 1, "fonts", "10", "5");
        let mut book = PeriodBook::open("acme", &subscription(), nov, dec);
        let lines = [
            book.book(&first, None),
            book.book(&charge("r-1", 2, "fonts", "12", "1"), None),
            book.book(&charge("r-2", 1, "storage", "3", "0.75"), None),
            book.book(&charge("r-3", 1, "fonts", "2", "1"), Some((oct, nov))),
        ];
        assert_eq!(lines, [0, 0, 1, 2]);
        let ids = |ids: &[&str]| ids.iter().map(|i| (*i).to_owned()).collect::<BTreeSet<_>>();
        let fees = [
            FeeLine {
                name: "Platform fee".into(),
                product_id: Some("platform".into()),
                amount: "20.322581".parse().expect("fee"),
                part: Some((21, 30)),
            },
            FeeLine {
                name: "Support".into(),
                product_id: None,
                amount: "5".parse().expect("fee"),
                part: None,
            },
        ];
        let invoice = book
            .draft(
                &fees,
                &[ids(&["r-1"]), ids(&["r-2"]), ids(&["r-3"])],
                dec,
                30,
                0,
            )
            .expect("invoice");
        let lines: Vec<(String, String, String, Vec<String>)> = invoice
            .lines
            .iter()
            .map(|l| {
                (
                    l.description.clone(),
                    l.quantity.to_string(),
                    l.amount.to_string(),
                    l.rating_ids.clone(),
                )
            })
            .collect();
        let line = |d: &str, q: &str, a: &str, ids: &[&str]| {
            (
                d.to_owned(),
                q.parse::<Quantity>().expect("q").to_string(),
                a.parse::<Amount>().expect("a").to_string(),
                ids.iter().map(|i| (*i).to_owned()).collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            lines,
            [
                line("Platform fee, 21 of 30 days", "1", "20.322581", &[]),
                line("Support", "1", "5", &[]),
                line("fonts", "12", "6", &["r-1"]),
                line("storage", "3", "0.75", &["r-2"]),
                line(
                    "fonts: correction of 2026-10-01 to 2026-10-31",
                    "2",
                    "1",
                    &["r-3"]
                ),
            ]
        );
        assert_eq!(invoice.total_amount, "33.072581".parse().expect("total"));
        assert_eq!(
            invoice
                .lines
                .iter()
                .map(|l| l.line_number)
                .collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        let fee = &invoice.lines[0];
        assert_eq!(
            (fee.product_id.as_deref(), fee.charge_id.as_deref()),
            (Some("platform"), None)
        );
        assert_eq!(invoice.lines[2].charge_id.as_deref(), Some("fonts"));
        assert_eq!(invoice.invoice_id, "inv-s-1-2026-11-01");
        assert_eq!(invoice.due_date, dec + 30);
        assert_eq!(invoice.lines[4].period_start, Some(oct));
        assert_eq!(invoice.lines[0].period_start, Some(nov));
    }
}
