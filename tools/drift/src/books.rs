//! The reconciliation itself, without I/O: what the backbone says should exist (from its
//! topics) against what the external systems hold (from their read APIs), per check, tenant,
//! period, legal entity and currency.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use backbone_calendar::Zone;
use backbone_schemas::types::{
    CustomerAccount, EnrichedUsage, GlMapping, Invoice, InvoiceStatus, LegalEntity, RatedUsage,
};

/// The six comparisons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Check {
    /// Quantity of usage the rater accepted against the quantity of usage it rated.
    UsageVsRated,
    /// Amount rated against amount held by the billing system.
    RatedVsBilled,
    /// Amount rated against receivables journalled in the ERP.
    RatedVsErp,
    /// Customers with rated usage and an account in master data against accounts in the CRM.
    AccountsVsCrm,
    /// Amount rated against amount on the issued invoices' lines, by the rating ids the lines
    /// name.
    RatedVsInvoiced,
    /// Totals of the issued invoices against the totals of the invoices the ERP received: the
    /// receivables finance books from them.
    InvoicedVsErp,
}

impl Check {
    /// Every check, in report order.
    pub const ALL: [Check; 6] = [
        Check::UsageVsRated,
        Check::RatedVsBilled,
        Check::RatedVsErp,
        Check::AccountsVsCrm,
        Check::RatedVsInvoiced,
        Check::InvoicedVsErp,
    ];

    /// The `check` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Check::UsageVsRated => "usage_vs_rated",
            Check::RatedVsBilled => "rated_vs_billed",
            Check::RatedVsErp => "rated_vs_erp",
            Check::AccountsVsCrm => "accounts_vs_crm",
            Check::RatedVsInvoiced => "rated_vs_invoiced",
            Check::InvoicedVsErp => "invoiced_vs_erp",
        }
    }

    /// Decimal places of the check's unit: quantities have 9, amounts 6, counts none.
    pub fn scale(self) -> u32 {
        match self {
            Check::UsageVsRated => 9,
            Check::RatedVsBilled
            | Check::RatedVsErp
            | Check::RatedVsInvoiced
            | Check::InvoicedVsErp => 6,
            Check::AccountsVsCrm => 0,
        }
    }
}

/// What two sides of a check must agree on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DriftKey {
    /// The comparison.
    pub check: Check,
    /// Tenant.
    pub tenant: String,
    /// `YYYY-MM`: the billing period's month, or for the ERP the accounting month; empty for
    /// accounts.
    pub period: String,
    /// Legal entity; empty where a side does not know it.
    pub legal_entity: String,
    /// ISO 4217 currency; empty for accounts.
    pub currency: String,
}

/// One check's figures for one key, in unscaled units of the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriftLine {
    /// What is compared.
    pub key: DriftKey,
    /// What the backbone says (the reference side).
    pub expected: i128,
    /// What the other side holds.
    pub observed: i128,
}

impl DriftLine {
    /// `observed - expected`, negative when something is missing downstream.
    pub fn difference(&self) -> i128 {
        self.observed - self.expected
    }

    /// The difference relative to the reference: 0 when they agree, 1 when nothing arrived.
    pub fn relative(&self) -> f64 {
        match (self.expected, self.difference()) {
            (_, 0) => 0.0,
            (0, _) => 1.0,
            (expected, difference) => (difference as f64 / expected as f64).abs(),
        }
    }

    /// A figure of the check's unit as a decimal string.
    pub fn format(&self, unscaled: i128) -> String {
        format_unscaled(unscaled, self.key.check.scale())
    }
}

/// `unscaled` with `scale` decimal places.
pub fn format_unscaled(unscaled: i128, scale: u32) -> String {
    if scale == 0 {
        return unscaled.to_string();
    }
    let factor = 10i128.pow(scale);
    let sign = if unscaled < 0 { "-" } else { "" };
    let abs = unscaled.unsigned_abs();
    let factor = factor.unsigned_abs();
    format!(
        "{sign}{}.{:0width$}",
        abs / factor,
        abs % factor,
        width = scale as usize
    )
}

/// What the external systems hold, read from their APIs.
#[derive(Debug, Clone, Default)]
pub struct Holdings {
    /// Billing charges: (tenant, idempotency key = rating id, amount unscaled at 6, currency,
    /// billing period start `YYYY-MM-DD`).
    pub charges: Vec<HeldCharge>,
    /// ERP journal lines: (tenant, legal entity, period `YYYY-MM`, GL account, currency,
    /// debit minus credit unscaled at 6).
    pub journal_lines: Vec<HeldJournalLine>,
    /// CRM accounts by external id `<tenant>:<customer>`.
    pub crm_accounts: BTreeSet<String>,
    /// Invoices of billing periods the ERP received, each as often as it holds it.
    pub erp_invoices: Vec<HeldInvoice>,
}

/// A charge the billing system holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldCharge {
    /// Tenant.
    pub tenant: String,
    /// The rating id it was charged under.
    pub rating_id: String,
    /// Amount, unscaled at 6 places.
    pub amount: i128,
    /// Currency.
    pub currency: String,
    /// Billing period start, `YYYY-MM-DD`.
    pub period_start: String,
}

/// A journal line the ERP holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldJournalLine {
    /// Tenant.
    pub tenant: String,
    /// Legal entity.
    pub legal_entity: String,
    /// Accounting period, `YYYY-MM`.
    pub period: String,
    /// GL account.
    pub gl_account: String,
    /// Currency.
    pub currency: String,
    /// Debit minus credit, unscaled at 6 places.
    pub net: i128,
}

/// An invoice of a billing period a system received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldInvoice {
    /// Tenant.
    pub tenant: String,
    /// Legal entity that issued it.
    pub legal_entity: String,
    /// Month of the first day of the period it bills, `YYYY-MM`.
    pub period: String,
    /// Currency.
    pub currency: String,
    /// Its total, unscaled at 6 places: what the customer owes.
    pub total: i128,
}

/// Where a rated line's money belongs.
#[derive(Debug, Clone)]
struct RatedMoney {
    tenant: String,
    subscription: String,
    /// First day of the billing period the line was rated into.
    period_start: i32,
    billing_period: String,
    /// The usage's instant (µs): its day in the legal entity's time zone dates the posting.
    occurred_at: i64,
    legal_entity: String,
    currency: String,
    amount: i128,
}

impl RatedMoney {
    /// The key of `check` for this money: its tenant, billing period's month, entity and
    /// currency.
    fn key(&self, check: Check) -> DriftKey {
        DriftKey {
            check,
            tenant: self.tenant.clone(),
            period: self.billing_period.clone(),
            legal_entity: self.legal_entity.clone(),
            currency: self.currency.clone(),
        }
    }
}

/// What the backbone's topics say, accumulated record by record.
#[derive(Debug, Default)]
pub struct Books {
    /// Accepted usage by its rater input key `<tenant>/<source>/<event id>`.
    accepted: HashMap<String, (DriftKey, i128)>,
    /// Usage the rater dead-lettered: accounted for elsewhere.
    rejected: BTreeSet<String>,
    /// Usage that appears in rated lines.
    rated_events: BTreeSet<String>,
    /// Rated lines by rating id (a redelivered line replaces itself).
    rated: HashMap<String, RatedMoney>,
    /// Customers `<tenant>:<customer>` with rated usage.
    rated_customers: BTreeSet<String>,
    /// Accounts in master data, `<tenant>:<customer>`.
    accounts: BTreeSet<String>,
    /// Receivable GL accounts per `<tenant>:<legal entity>`.
    receivables: BTreeMap<String, BTreeSet<String>>,
    /// Time zone names per `<tenant>:<legal entity>`, as master data says now.
    time_zones: HashMap<String, String>,
    /// Issued invoices of billing periods by invoice id (a redelivered one replaces itself).
    invoices: BTreeMap<String, InvoicedPeriod>,
}

/// What an issued invoice of a billing period says.
#[derive(Debug, Clone)]
struct InvoicedPeriod {
    tenant: String,
    subscription: String,
    legal_entity: String,
    currency: String,
    /// First day of the period invoiced.
    period_start: i32,
    /// Its total, unscaled at 6 places.
    total: i128,
    lines: Vec<InvoicedLine>,
}

/// An invoice line: the month of the period it bills or corrects, its amount, the rating ids
/// it sums.
#[derive(Debug, Clone)]
struct InvoicedLine {
    period: String,
    amount: i128,
    rating_ids: Vec<String>,
}

fn month(days: i32) -> String {
    backbone_calendar::format_month(days)
}

impl Books {
    /// An enriched usage event: accepted for rating.
    pub fn enriched(&mut self, event: &EnrichedUsage) {
        let m = &event.usage.metadata;
        let id = format!("{}/{}/{}", m.tenant_id, m.source, m.event_id);
        let key = DriftKey {
            check: Check::UsageVsRated,
            tenant: m.tenant_id.clone(),
            period: month(event.billing_period_start),
            legal_entity: event.legal_entity_id.clone(),
            currency: event.currency.clone(),
        };
        self.accepted
            .insert(id, (key, event.usage.quantity.unscaled()));
    }

    /// An enriched event the rater dead-lettered (too late, unknown meter, ...).
    pub fn rejected_by_rater(&mut self, event: &EnrichedUsage) {
        let m = &event.usage.metadata;
        self.rejected
            .insert(format!("{}/{}/{}", m.tenant_id, m.source, m.event_id));
    }

    /// A rated line.
    pub fn rated(&mut self, line: &RatedUsage) {
        let tenant = line.metadata.tenant_id.clone();
        self.rated_events
            .extend(line.source_event_ids.iter().cloned());
        self.rated_customers
            .insert(format!("{tenant}:{}", line.customer_id));
        self.rated.insert(
            line.rating_id.clone(),
            RatedMoney {
                tenant,
                subscription: line.subscription_id.clone(),
                period_start: line.period_start,
                billing_period: month(line.period_start),
                occurred_at: line.metadata.occurred_at,
                legal_entity: line.legal_entity_id.clone(),
                currency: line.currency.clone(),
                amount: line.delta_amount.unscaled(),
            },
        );
    }

    /// A customer account from master data; `None` is a tombstone for `key`.
    pub fn account(&mut self, key: &str, account: Option<&CustomerAccount>) {
        match account {
            Some(a) => {
                self.accounts
                    .insert(format!("{}:{}", a.metadata.tenant_id, a.customer_id));
            }
            None => {
                self.accounts.remove(key);
            }
        }
    }

    /// A legal entity from master data; `None` is a tombstone for `key`.
    pub fn legal_entity(&mut self, key: &str, entity: Option<&LegalEntity>) {
        match entity {
            Some(e) => {
                let key = format!("{}:{}", e.metadata.tenant_id, e.legal_entity_id);
                self.time_zones.insert(key, e.time_zone.clone());
            }
            None => {
                self.time_zones.remove(key);
            }
        }
    }

    /// The accounting month of `money`, as the fanout dates its posting: the month of the
    /// usage's local day in its legal entity's time zone; UTC for an entity master data does
    /// not hold, and for one whose zone is no IANA zone (the fanout posts nothing for it, so
    /// its money shows as missing from the ERP in the UTC month).
    fn accounting_period(&self, money: &RatedMoney, zones: &mut HashMap<String, Zone>) -> String {
        let key = format!("{}:{}", money.tenant, money.legal_entity);
        let zone = zones.entry(key).or_insert_with_key(|key| {
            self.time_zones
                .get(key)
                .and_then(|name| Zone::named(name).ok())
                .unwrap_or_else(Zone::utc)
        });
        let day = zone
            .day_of(money.occurred_at)
            .unwrap_or_else(|_| backbone_calendar::day_of_micros(money.occurred_at));
        month(day)
    }

    /// An invoice on `sales.invoices`: an issued invoice of a subscription's billing period
    /// counts; drafts and invoices of orders do not.
    pub fn invoice(&mut self, invoice: &Invoice) {
        let (Some(subscription), Some(period_start)) =
            (&invoice.subscription_id, invoice.period_start)
        else {
            return;
        };
        if invoice.status != InvoiceStatus::Issued {
            return;
        }
        // A recurring fee's line names no charge and answers for no rated line: the invoice's
        // total (`invoiced_vs_erp`) holds it, the rated lines do not.
        let lines = invoice
            .lines
            .iter()
            .filter(|line| line.charge_id.is_some())
            .map(|line| InvoicedLine {
                period: month(line.period_start.unwrap_or(period_start)),
                amount: line.amount.unscaled(),
                rating_ids: line.rating_ids.clone(),
            })
            .collect();
        self.invoices.insert(
            format!("{}:{}", invoice.metadata.tenant_id, invoice.invoice_id),
            InvoicedPeriod {
                tenant: invoice.metadata.tenant_id.clone(),
                subscription: subscription.clone(),
                legal_entity: invoice.legal_entity_id.clone(),
                currency: invoice.currency.clone(),
                period_start,
                total: invoice.total_amount.unscaled(),
                lines,
            },
        );
    }

    /// `invoiced_vs_erp`: each issued invoice's total once against each invoice the ERP holds,
    /// so one it lost and one it holds twice both show. Keyed by the month the invoice's
    /// period starts in.
    fn invoiced_vs_erp(&self, held: &[HeldInvoice], add: &mut impl FnMut(DriftKey, i128, i128)) {
        let key = |tenant: &str, period: String, legal_entity: &str, currency: &str| DriftKey {
            check: Check::InvoicedVsErp,
            tenant: tenant.to_owned(),
            period,
            legal_entity: legal_entity.to_owned(),
            currency: currency.to_owned(),
        };
        for invoice in self.invoices.values() {
            let period = month(invoice.period_start);
            add(
                key(
                    &invoice.tenant,
                    period,
                    &invoice.legal_entity,
                    &invoice.currency,
                ),
                invoice.total,
                0,
            );
        }
        for invoice in held {
            add(
                key(
                    &invoice.tenant,
                    invoice.period.clone(),
                    &invoice.legal_entity,
                    &invoice.currency,
                ),
                0,
                invoice.total,
            );
        }
    }

    /// `rated_vs_invoiced`: each invoice line's amount against the rated lines it names (a
    /// rating id on a second line counts for nothing there, so invoicing it twice shows), and
    /// each rated line on no invoice once a later period of its subscription was invoiced: by
    /// then it should be on its own period's invoice or, late, on that later one. Keyed by the
    /// month of the period a line bills (or, for a correction, corrects) and by the rated
    /// line's period, which are the same month for a line invoiced right.
    fn rated_vs_invoiced(&self, add: &mut impl FnMut(DriftKey, i128, i128)) {
        let mut invoiced: HashSet<&str> = HashSet::new();
        let mut latest: HashMap<(&str, &str), i32> = HashMap::new();
        for invoice in self.invoices.values() {
            let at = latest
                .entry((&invoice.tenant, &invoice.subscription))
                .or_insert(invoice.period_start);
            *at = (*at).max(invoice.period_start);
            for line in &invoice.lines {
                let key = DriftKey {
                    check: Check::RatedVsInvoiced,
                    tenant: invoice.tenant.clone(),
                    period: line.period.clone(),
                    legal_entity: invoice.legal_entity.clone(),
                    currency: invoice.currency.clone(),
                };
                add(key, 0, line.amount);
                for id in &line.rating_ids {
                    if !invoiced.insert(id) {
                        continue;
                    }
                    if let Some(money) = self.rated.get(id) {
                        add(money.key(Check::RatedVsInvoiced), money.amount, 0);
                    }
                }
            }
        }
        for (id, money) in &self.rated {
            let due = latest
                .get(&(money.tenant.as_str(), money.subscription.as_str()))
                .is_some_and(|&start| start > money.period_start);
            if due && !invoiced.contains(id.as_str()) {
                add(money.key(Check::RatedVsInvoiced), money.amount, 0);
            }
        }
    }

    /// A GL mapping: its receivable account counts as receivables for its entity.
    pub fn gl_mapping(&mut self, mapping: &GlMapping) {
        self.receivables
            .entry(format!(
                "{}:{}",
                mapping.metadata.tenant_id, mapping.legal_entity_id
            ))
            .or_default()
            .insert(mapping.receivable_account.clone());
    }

    /// Every check against `held`, one line per key either side knows.
    pub fn reconcile(&self, held: &Holdings) -> Vec<DriftLine> {
        let mut lines: BTreeMap<DriftKey, (i128, i128)> = BTreeMap::new();
        let mut add = |key: DriftKey, expected: i128, observed: i128| {
            let entry = lines.entry(key).or_default();
            entry.0 += expected;
            entry.1 += observed;
        };

        for (id, (key, quantity)) in &self.accepted {
            if self.rejected.contains(id) {
                continue;
            }
            let rated = if self.rated_events.contains(id) {
                *quantity
            } else {
                0
            };
            add(key.clone(), *quantity, rated);
        }

        let mut zones = HashMap::new();
        for money in self.rated.values() {
            add(money.key(Check::RatedVsBilled), money.amount, 0);
            add(
                DriftKey {
                    check: Check::RatedVsErp,
                    tenant: money.tenant.clone(),
                    period: self.accounting_period(money, &mut zones),
                    legal_entity: money.legal_entity.clone(),
                    currency: money.currency.clone(),
                },
                money.amount,
                0,
            );
        }
        for charge in &held.charges {
            // The billing system does not know legal entities; the rated line it came from does.
            let known = self.rated.get(&charge.rating_id);
            add(
                DriftKey {
                    check: Check::RatedVsBilled,
                    tenant: charge.tenant.clone(),
                    period: known.map_or_else(
                        || charge.period_start.get(..7).unwrap_or("").to_owned(),
                        |m| m.billing_period.clone(),
                    ),
                    legal_entity: known.map_or_else(String::new, |m| m.legal_entity.clone()),
                    currency: charge.currency.clone(),
                },
                0,
                charge.amount,
            );
        }
        for line in &held.journal_lines {
            let receivable = self
                .receivables
                .get(&format!("{}:{}", line.tenant, line.legal_entity))
                .is_some_and(|accounts| accounts.contains(&line.gl_account));
            if !receivable {
                continue;
            }
            add(
                DriftKey {
                    check: Check::RatedVsErp,
                    tenant: line.tenant.clone(),
                    period: line.period.clone(),
                    legal_entity: line.legal_entity.clone(),
                    currency: line.currency.clone(),
                },
                0,
                line.net,
            );
        }

        self.rated_vs_invoiced(&mut add);
        self.invoiced_vs_erp(&held.erp_invoices, &mut add);

        // Only customers with rated usage reach the CRM; among them, those master data knows.
        let mut per_tenant: BTreeMap<&str, (i128, i128)> = BTreeMap::new();
        for customer in self.rated_customers.intersection(&self.accounts) {
            let tenant = customer.split_once(':').map_or("", |(t, _)| t);
            let entry = per_tenant.entry(tenant).or_default();
            entry.0 += 1;
            if held.crm_accounts.contains(customer) {
                entry.1 += 1;
            }
        }
        for (tenant, (expected, observed)) in per_tenant {
            add(
                DriftKey {
                    check: Check::AccountsVsCrm,
                    tenant: tenant.to_owned(),
                    period: String::new(),
                    legal_entity: String::new(),
                    currency: String::new(),
                },
                expected,
                observed,
            );
        }

        lines
            .into_iter()
            .map(|(key, (expected, observed))| DriftLine {
                key,
                expected,
                observed,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backbone_schemas::types::{
        Amount, EventMetadata, InvoiceLine, Quantity, RatingKind, TraceContext,
    };

    const NOV_15: i64 = 20_407 * backbone_calendar::DAY_MICROS;

    fn line(rating_id: &str, delta: &str) -> RatedUsage {
        RatedUsage {
            metadata: EventMetadata {
                tenant_id: "acme".into(),
                event_id: rating_id.into(),
                source: "usage-rater".into(),
                r#type: "backbone.usage.rated".into(),
                occurred_at: NOV_15,
                produced_at: NOV_15,
                trace: TraceContext {
                    traceparent: String::new(),
                    tracestate: None,
                },
                schema_version: None,
            },
            rating_id: rating_id.into(),
            revision: 1,
            kind: RatingKind::Normal,
            customer_id: "c-1".into(),
            subscription_id: "s-1".into(),
            plan_id: "p".into(),
            rate_card_version: 1,
            charge_id: "api".into(),
            meter_id: "calls".into(),
            group_key: String::new(),
            legal_entity_id: "le-eu".into(),
            period_start: 20_393,
            period_end: 20_422,
            quantity_before: Quantity::ZERO,
            quantity_after: "1".parse().expect("quantity"),
            amount_before: Amount::ZERO,
            amount_after: delta.parse().expect("amount"),
            delta_amount: delta.parse().expect("amount"),
            currency: "EUR".into(),
            source_event_count: 1,
            source_event_ids: vec![format!("acme/src/{rating_id}")],
            adjusted_period_start: None,
            adjusted_period_end: None,
        }
    }

    fn charge(rating_id: &str, amount: i128) -> HeldCharge {
        HeldCharge {
            tenant: "acme".into(),
            rating_id: rating_id.into(),
            amount,
            currency: "EUR".into(),
            period_start: "2025-11-01".into(),
        }
    }

    fn only(lines: &[DriftLine], check: Check) -> Vec<&DriftLine> {
        lines.iter().filter(|l| l.key.check == check).collect()
    }

    #[test]
    fn billed_and_rated_agree_or_the_missing_charge_shows() {
        let mut books = Books::default();
        books.rated(&line("r-1", "1.5"));
        books.rated(&line("r-2", "2.25"));
        // A redelivered line counts once.
        books.rated(&line("r-2", "2.25"));
        let mut held = Holdings {
            charges: vec![charge("r-1", 1_500_000), charge("r-2", 2_250_000)],
            ..Holdings::default()
        };
        let lines = books.reconcile(&held);
        let billed = only(&lines, Check::RatedVsBilled);
        assert_eq!(billed.len(), 1);
        assert_eq!(billed[0].key.period, "2025-11");
        assert_eq!(billed[0].key.legal_entity, "le-eu");
        assert_eq!(billed[0].difference(), 0);
        assert_eq!(billed[0].relative(), 0.0);

        held.charges.pop();
        let lines = books.reconcile(&held);
        let billed = only(&lines, Check::RatedVsBilled);
        assert_eq!(billed[0].difference(), -2_250_000);
        assert_eq!(billed[0].format(billed[0].difference()), "-2.250000");
        assert!((billed[0].relative() - 0.6).abs() < 1e-9);
    }

    #[test]
    fn only_receivable_lines_of_the_erp_count() {
        let mut books = Books::default();
        books.rated(&line("r-1", "4"));
        let journal = |account: &str, net: i128| HeldJournalLine {
            tenant: "acme".into(),
            legal_entity: "le-eu".into(),
            period: "2025-11".into(),
            gl_account: account.into(),
            currency: "EUR".into(),
            net,
        };
        let held = Holdings {
            journal_lines: vec![journal("1210", 4_000_000), journal("4000", -4_000_000)],
            ..Holdings::default()
        };
        // Without the GL mapping nothing is known to be a receivable: all of it is missing.
        let erp = books.reconcile(&held);
        assert_eq!(only(&erp, Check::RatedVsErp)[0].observed, 0);
        let mut mapping_books = books;
        mapping_books
            .receivables
            .insert("acme:le-eu".into(), BTreeSet::from(["1210".to_owned()]));
        let erp = mapping_books.reconcile(&held);
        let erp = only(&erp, Check::RatedVsErp);
        assert_eq!(erp.len(), 1);
        assert_eq!(erp[0].difference(), 0);
    }

    #[test]
    fn the_erp_side_is_expected_in_the_month_of_the_local_day_of_the_legal_entity() {
        // 2025-11-30 23:30 UTC: 2025-12-01 00:30 in Berlin.
        let mut late = line("r-1", "4");
        late.metadata.occurred_at = 20_422 * backbone_calendar::DAY_MICROS + 84_600_000_000;
        let mut books = Books::default();
        books.rated(&late);
        books
            .receivables
            .insert("acme:le-eu".into(), BTreeSet::from(["1210".to_owned()]));
        let held = Holdings {
            journal_lines: vec![HeldJournalLine {
                tenant: "acme".into(),
                legal_entity: "le-eu".into(),
                period: "2025-12".into(),
                gl_account: "1210".into(),
                currency: "EUR".into(),
                net: 4_000_000,
            }],
            ..Holdings::default()
        };
        let by_period = |books: &Books| -> Vec<(String, i128)> {
            only(&books.reconcile(&held), Check::RatedVsErp)
                .iter()
                .map(|l| (l.key.period.clone(), l.difference()))
                .collect()
        };
        // No record of the entity: its days are UTC days, and the posting is a month off.
        assert_eq!(
            by_period(&books),
            [
                ("2025-11".to_owned(), -4_000_000),
                ("2025-12".to_owned(), 4_000_000)
            ]
        );
        let entity = LegalEntity {
            metadata: late.metadata.clone(),
            legal_entity_id: "le-eu".into(),
            name: "Acme GmbH".into(),
            country_code: "DE".into(),
            functional_currency: "EUR".into(),
            time_zone: "Europe/Berlin".into(),
            fiscal_year_start_month: 1,
            tax_id: None,
            registered_address: None,
        };
        books.legal_entity("acme:le-eu", Some(&entity));
        assert_eq!(by_period(&books), [("2025-12".to_owned(), 0)]);
        books.legal_entity("acme:le-eu", None);
        assert_eq!(
            by_period(&books).len(),
            2,
            "the tombstone makes it UTC again"
        );
    }

    /// An issued invoice of s-1 for the period starting `start`, one line per
    /// (amount, rating ids).
    fn invoice(start: i32, lines: &[(&str, &[&str])]) -> Invoice {
        let amount = |text: &str| text.parse::<Amount>().expect("amount");
        let total = lines
            .iter()
            .map(|(text, _)| amount(text))
            .try_fold(Amount::ZERO, |sum, a| sum.checked_add(a))
            .expect("total");
        Invoice {
            metadata: line("inv", "0").metadata,
            invoice_id: format!("inv-s-1-{start}"),
            invoice_number: format!("le-eu-{start}"),
            customer_id: "c-1".into(),
            legal_entity_id: "le-eu".into(),
            status: InvoiceStatus::Issued,
            currency: "EUR".into(),
            issue_date: start + 30,
            due_date: start + 60,
            lines: lines
                .iter()
                .enumerate()
                .map(|(n, (total, ids))| InvoiceLine {
                    line_number: i32::try_from(n + 1).expect("few"),
                    description: "api".into(),
                    product_id: None,
                    charge_id: Some("api".into()),
                    quantity: Quantity::ZERO,
                    unit_price: None,
                    amount: amount(total),
                    tax_amount: Amount::ZERO,
                    period_start: Some(start),
                    period_end: Some(start + 30),
                    rating_ids: ids.iter().map(|i| (*i).to_owned()).collect(),
                })
                .collect(),
            subtotal_amount: total,
            tax_amount: Amount::ZERO,
            total_amount: total,
            subscription_id: Some("s-1".into()),
            order_id: None,
            period_start: Some(start),
            period_end: Some(start + 30),
            billing_email: None,
            billing_address: None,
        }
    }

    /// `invoice` with its lines correcting the period starting `corrected`.
    fn correcting(corrected: i32, mut invoice: Invoice) -> Invoice {
        for line in &mut invoice.lines {
            line.period_start = Some(corrected);
        }
        invoice
    }

    #[test]
    fn invoice_lines_answer_for_the_rated_lines_they_name_and_a_later_invoice_for_the_rest() {
        let invoiced = |books: &Books| -> Vec<(String, i128, i128)> {
            only(
                &books.reconcile(&Holdings::default()),
                Check::RatedVsInvoiced,
            )
            .iter()
            .map(|l| (l.key.period.clone(), l.expected, l.observed))
            .collect()
        };
        let mut books = Books::default();
        for (id, delta) in [("r-1", "1.5"), ("r-2", "2.25"), ("r-3", "4")] {
            books.rated(&line(id, delta));
        }
        assert!(invoiced(&books).is_empty(), "nothing invoiced yet");
        // November's invoice names r-1 and r-2; r-3 may still come as a correction.
        books.invoice(&invoice(20_393, &[("3.75", &["r-1", "r-2"])]));
        assert_eq!(
            invoiced(&books),
            [("2025-11".to_owned(), 3_750_000, 3_750_000)]
        );
        // December's is out without it: r-3 is missing from the invoices.
        books.invoice(&invoice(20_423, &[]));
        assert_eq!(
            invoiced(&books),
            [("2025-11".to_owned(), 7_750_000, 3_750_000)]
        );
        // A correction line on December's invoice, in November's month, names r-3; and an
        // invoice line whose amount is not its rated lines' shows.
        books.invoice(&correcting(20_393, invoice(20_423, &[("4", &["r-3"])])));
        assert_eq!(
            invoiced(&books),
            [("2025-11".to_owned(), 7_750_000, 7_750_000)]
        );
        books.invoice(&invoice(20_393, &[("3.70", &["r-1", "r-2"])]));
        assert_eq!(
            invoiced(&books),
            [("2025-11".to_owned(), 7_750_000, 7_700_000)],
            "the newest record of an invoice replaces it"
        );
        // r-1 invoiced a second time, on another invoice: its amount is on no rated line.
        books.invoice(&invoice(20_393, &[("3.75", &["r-1", "r-2"])]));
        books.invoice(&correcting(20_393, invoice(20_454, &[("1.5", &["r-1"])])));
        assert_eq!(
            invoiced(&books),
            [("2025-11".to_owned(), 7_750_000, 9_250_000)]
        );
        // A recurring fee on an invoice is no rated line's.
        let mut books = Books::default();
        books.rated(&line("r-1", "1.5"));
        let mut with_fee = invoice(20_393, &[("30", &[]), ("1.5", &["r-1"])]);
        with_fee.lines[0].charge_id = None;
        with_fee.lines[0].product_id = Some("platform".into());
        books.invoice(&with_fee);
        assert_eq!(
            invoiced(&books),
            [("2025-11".to_owned(), 1_500_000, 1_500_000)]
        );
        // A draft or an order's invoice is not a period's invoice.
        let mut books = Books::default();
        books.rated(&line("r-1", "1.5"));
        let mut draft = invoice(20_393, &[("9", &["r-1"])]);
        draft.status = InvoiceStatus::Draft;
        books.invoice(&draft);
        let mut order = invoice(20_393, &[("9", &["r-1"])]);
        order.subscription_id = None;
        books.invoice(&order);
        assert!(invoiced(&books).is_empty());
    }

    #[test]
    fn the_erp_holds_each_issued_invoice_once() {
        let mut books = Books::default();
        books.invoice(&invoice(20_393, &[("3.75", &["r-1", "r-2"])]));
        books.invoice(&invoice(20_423, &[("4", &["r-3"])]));
        let mut draft = invoice(20_423, &[("9", &[])]);
        draft.invoice_id = "inv-draft".into();
        draft.status = InvoiceStatus::Draft;
        books.invoice(&draft);
        let held = |period: &str, legal_entity: &str, total: i128| HeldInvoice {
            tenant: "acme".into(),
            legal_entity: legal_entity.into(),
            period: period.into(),
            currency: "EUR".into(),
            total,
        };
        let erp = |invoices: Vec<HeldInvoice>| -> Vec<(String, String, i128, i128)> {
            let held = Holdings {
                erp_invoices: invoices,
                ..Holdings::default()
            };
            only(&books.reconcile(&held), Check::InvoicedVsErp)
                .iter()
                .map(|l| {
                    let k = &l.key;
                    (
                        k.period.clone(),
                        k.legal_entity.clone(),
                        l.expected,
                        l.observed,
                    )
                })
                .collect()
        };
        let line = |period: &str, legal_entity: &str, expected: i128, observed: i128| {
            (
                period.to_owned(),
                legal_entity.to_owned(),
                expected,
                observed,
            )
        };
        assert_eq!(
            erp(vec![
                held("2025-11", "le-eu", 3_750_000),
                held("2025-12", "le-eu", 4_000_000)
            ]),
            [
                line("2025-11", "le-eu", 3_750_000, 3_750_000),
                line("2025-12", "le-eu", 4_000_000, 4_000_000)
            ]
        );
        // December's lost, November's received twice, and one under another entity.
        assert_eq!(
            erp(vec![
                held("2025-11", "le-eu", 3_750_000),
                held("2025-11", "le-eu", 3_750_000),
                held("2025-12", "le-us", 4_000_000),
            ]),
            [
                line("2025-11", "le-eu", 3_750_000, 7_500_000),
                line("2025-12", "le-eu", 4_000_000, 0),
                line("2025-12", "le-us", 0, 4_000_000),
            ]
        );
    }

    #[test]
    fn figures_format_in_their_unit() {
        assert_eq!(format_unscaled(-1_500_000, 6), "-1.500000");
        assert_eq!(format_unscaled(5, 0), "5");
        assert_eq!(format_unscaled(7, 9), "0.000000007");
    }
}
