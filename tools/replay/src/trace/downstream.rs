//! The last hops of a trace: what the fanout made of the traced rated lines (charge, ledger
//! posting, analytics fact, the customer's next account-health snapshot) and what each sink did
//! with those records, read from the delivery results and the sinks' dead letters that name
//! them as their source.

use std::collections::BTreeSet;

use backbone_calendar::format_date;
use backbone_schemas::types::{
    AccountHealthSnapshot, AnalyticsFact, BillingCharge, DeliveryResult, LedgerPosting, RatedUsage,
};

use super::follow::{has_key_prefix, micros, origin_of, symbol, time_of, Origin, Tracer};
use super::read::read;
use crate::error::ReplayError;
use crate::scan::SourceRecord;

impl Tracer<'_> {
    /// What the fanout made of `lines` and what the sinks did with it.
    pub(super) async fn fanned_out(
        &mut self,
        lines: &[(i64, RatedUsage)],
    ) -> Result<(), ReplayError> {
        let Some(start) = lines.iter().map(|(at, _)| *at).min() else {
            return Ok(());
        };
        let t = self.topics;
        let tenant = self.tenant;
        let ids: BTreeSet<&str> = lines.iter().map(|(_, l)| l.rating_id.as_str()).collect();
        let subscriptions: BTreeSet<String> = lines
            .iter()
            .map(|(_, l)| format!("{tenant}:{}", l.subscription_id))
            .collect();
        let entities: BTreeSet<String> = lines
            .iter()
            .map(|(_, l)| format!("{tenant}:{}", l.legal_entity_id))
            .collect();
        let facts: BTreeSet<String> = ids.iter().map(|id| format!("{tenant}:fact-{id}")).collect();
        let customers: BTreeSet<String> = lines
            .iter()
            .map(|(_, l)| format!("{tenant}:{}", l.customer_id))
            .collect();
        let key_in = |set: &BTreeSet<String>, r: &SourceRecord| {
            r.key
                .as_deref()
                .and_then(|k| std::str::from_utf8(k).ok())
                .is_some_and(|k| set.contains(k))
        };
        let down = self.after(start);
        let billing = t.of("billing.charges");
        let erp = t.of("erp.postings");
        let analytics = t.of("analytics.facts");
        let crm = t.of("crm.account-health");
        let fanout_dlq = t.dlq("usage.rated");
        let (charges, postings, facts_read, snapshots, fanout_letters) = tokio::try_join!(
            read(self.ctx, &billing, down, |r| key_in(&subscriptions, r)),
            read(self.ctx, &erp, down, |r| key_in(&entities, r)),
            read(self.ctx, &analytics, down, |r| key_in(&facts, r)),
            read(self.ctx, &crm, down, |r| key_in(&customers, r)),
            read(self.ctx, &fanout_dlq, down, |r| key_in(&subscriptions, r)),
        )?;
        let charges = self.absorb(&billing, charges);
        let postings = self.absorb(&erp, postings);
        let facts_read = self.absorb(&analytics, facts_read);
        let snapshots = self.absorb(&crm, snapshots);
        let fanout_letters = self.absorb(&fanout_dlq, fanout_letters);

        let mut made: BTreeSet<Origin> = BTreeSet::new();
        for (letter, _) in self
            .decoded(fanout_letters, |l: &RatedUsage| {
                ids.contains(l.rating_id.as_str())
            })
            .await
        {
            self.letter(&fanout_dlq, &letter, "fanout").await;
        }
        for (record, charge) in self
            .decoded(charges, |c: &BillingCharge| {
                ids.contains(c.rating_id.as_str())
            })
            .await
        {
            let detail = format!(
                "{} {} {} to subscription {}, period {} to {}",
                symbol(&charge.charge_type),
                charge.amount,
                charge.currency,
                charge.subscription_id,
                format_date(charge.period_start),
                format_date(charge.period_end)
            );
            let id = Some(charge.rating_id.clone());
            self.step("fanout", "charge", &billing, &record, id, detail)
                .await;
            made.insert((billing.clone(), record.partition, record.offset));
        }
        for (record, posting) in self
            .decoded(postings, |p: &LedgerPosting| {
                ids.contains(p.rating_id.as_str())
            })
            .await
        {
            let detail = format!(
                "{} {} to legal entity {}, posting date {}, {} lines (mapping {})",
                posting.amount,
                posting.currency,
                posting.legal_entity_id,
                format_date(posting.posting_date),
                posting.lines.len(),
                posting.mapping_id
            );
            let id = Some(posting.rating_id.clone());
            self.step("fanout", "posting", &erp, &record, id, detail)
                .await;
            made.insert((erp.clone(), record.partition, record.offset));
        }
        for (record, fact) in self.decoded(facts_read, |_: &AnalyticsFact| true).await {
            let amount = fact.amount.map(|a| a.to_string()).unwrap_or_default();
            let detail = format!(
                "{} fact, revision {}, {amount} {}",
                symbol(&fact.fact_type),
                fact.source_revision,
                fact.currency.unwrap_or_default()
            );
            let id = Some(fact.fact_id.clone());
            self.step("fanout", "fact", &analytics, &record, id, detail)
                .await;
            made.insert((analytics.clone(), record.partition, record.offset));
        }
        // The customer's first snapshot stamped after the line that includes its usage.
        let occurred: i64 = lines
            .iter()
            .map(|(_, l)| l.metadata.occurred_at)
            .max()
            .unwrap_or(i64::MAX);
        let snapshot = self
            .decoded(snapshots, |s: &AccountHealthSnapshot| s.as_of >= occurred)
            .await
            .into_iter()
            .filter(|(r, _)| time_of(r) >= start)
            .min_by_key(|(r, _)| time_of(r));
        if let Some((record, snapshot)) = snapshot {
            let detail = format!(
                "{} as of {}: {} {} this period",
                symbol(&snapshot.health),
                micros(snapshot.as_of),
                snapshot.period_to_date_amount,
                snapshot.currency
            );
            let id = Some(snapshot.snapshot_id.clone());
            self.step("fanout", "snapshot", &crm, &record, id, detail)
                .await;
            made.insert((crm.clone(), record.partition, record.offset));
        }
        self.delivered(&made, start).await
    }

    /// The sinks' results and dead letters for the records in `made`.
    async fn delivered(&mut self, made: &BTreeSet<Origin>, start: i64) -> Result<(), ReplayError> {
        if made.is_empty() {
            return Ok(());
        }
        let t = self.topics;
        let prefix = format!("{}:", self.tenant);
        let results_topic = t.of("delivery.results");
        let names = [
            "billing.charges",
            "erp.postings",
            "analytics.facts",
            "crm.account-health",
        ];
        let [billing, erp, analytics, crm] = names.map(|n| t.dlq(n));
        let down = self.after(start);
        let from_made = |r: &SourceRecord| origin_of(r).is_some_and(|o| made.contains(&o));
        let (results, a, b, c, d) = tokio::try_join!(
            read(self.ctx, &results_topic, down, |r| has_key_prefix(
                r, &prefix
            )),
            read(self.ctx, &billing, down, from_made),
            read(self.ctx, &erp, down, from_made),
            read(self.ctx, &analytics, down, from_made),
            read(self.ctx, &crm, down, from_made),
        )?;
        let results = self.absorb(&results_topic, results);
        for (topic, letters) in [(billing, a), (erp, b), (analytics, c), (crm, d)] {
            for letter in self.absorb(&topic, letters) {
                self.letter(&topic, &letter, "sink").await;
            }
        }
        let mut results = self
            .decoded(results, |r: &DeliveryResult| {
                made.contains(&(r.source_topic.clone(), r.source_partition, r.source_offset))
            })
            .await;
        results.sort_by_key(|(record, _)| time_of(record));
        for (record, result) in results {
            let mut detail = format!(
                "{} {}@{} to {}, attempts {}",
                result.source_topic,
                result.source_partition,
                result.source_offset,
                symbol(&result.destination),
                result.attempts
            );
            if let Some(reference) = &result.destination_reference {
                detail.push_str(&format!(", reference {reference}"));
            }
            if let Some(code) = &result.error_code {
                let message = result.error_message.as_deref().unwrap_or_default();
                detail.push_str(&format!(", {code}: {message}"));
            }
            let what = symbol(&result.outcome).to_lowercase().replace('_', "-");
            let id = Some(result.delivery_key.clone());
            self.step(
                &result.metadata.source,
                &what,
                &results_topic,
                &record,
                id,
                detail,
            )
            .await;
        }
        Ok(())
    }
}
