//! A deterministic workload for the usage pipeline, and what the pipeline must make of it.
//!
//! [`Workload::generate`] builds, from a [`LoadSpec`] and its seed alone, the master data (an
//! account and a subscription per customer, a rate card per plan) and a stream of usage records
//! with the configured shares of duplicates, late events (hours old, still rated), events outside
//! the lateness window, and poison (bytes that are not the wire format, an unknown schema id, a
//! negative quantity, a customer without an account). The same spec gives the same records, byte
//! for byte once encoded, and the same [`Expected`] results: per subscription the quantity and
//! amount to bill (priced with the same `backbone-rating` the rater uses, per billing period), and
//! per dead-letter reason the count.

use std::collections::BTreeMap;

use backbone_rating::{price, rate_card_key, PeriodPlan};
use backbone_schemas::types::Contract;
use backbone_schemas::types::{
    AccountStatus, Amount, BillingInterval, ChargeModel, CustomerAccount, EventMetadata, GlMapping,
    MeterAggregation, PriceTier, Quantity, RateCard, RateCharge, Subscription, SubscriptionStatus,
    TraceContext, UnitPrice, UsageEvent,
};
use backbone_schemas::wire::encode_framed;
use backbone_schemas::WireCodec;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use serde::Serialize;

use backbone_calendar::DAY_MICROS;
const HOUR_MICROS: i64 = 3_600_000_000;
/// Units of a quantity (9 fraction digits).
const UNIT: i128 = 1_000_000_000;
/// The meter every generated event reports.
pub const METER: &str = "api_calls";
/// The charge of every generated plan.
pub const CHARGE: &str = "api-calls";
/// The legal entity billing every customer.
pub const LEGAL_ENTITY: &str = "le-eu";

/// What to generate.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Seed of every random choice.
    pub seed: u64,
    /// Tenant of every record.
    pub tenant: String,
    /// Customers, each with one account and one subscription.
    pub customers: usize,
    /// Plans, each with one rate card; customers are spread over them.
    pub plans: usize,
    /// Usage records, poison and duplicates included.
    pub events: usize,
    /// Share of records that repeat an earlier event.
    pub duplicate_share: f64,
    /// Share of events a few hours old (still inside the lateness window).
    pub late_share: f64,
    /// Share of events 40 days old (outside the default 35-day window).
    pub out_of_window_share: f64,
    /// Share of poison records, spread evenly over the four kinds.
    pub poison_share: f64,
    /// The time events are generated around, microseconds since the epoch.
    pub now_micros: i64,
}

/// One usage record to publish to the raw usage topic.
#[derive(Debug, Clone)]
pub struct UsageRecord {
    /// Record key, `<tenant>:<customer>`.
    pub key: String,
    /// What to publish.
    pub payload: Payload,
}

/// The value of a usage record.
#[derive(Debug, Clone)]
pub enum Payload {
    /// A usage event, to encode with the registered contract.
    Event(Box<UsageEvent>),
    /// Bytes published as they are (poison that is not the wire format).
    Raw(Vec<u8>),
}

/// What the pipeline must produce from a workload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Expected {
    /// Usage records generated, duplicates and poison included.
    pub records: usize,
    /// Records that repeat an earlier event.
    pub duplicates: usize,
    /// Distinct events that must be billed.
    pub billed_events: usize,
    /// Per subscription: the quantity and amount to bill, all periods together.
    pub subscriptions: BTreeMap<String, Billed>,
    /// Per subscription, per billing period (its first day): the quantity used in it. What a
    /// test prices with an implementation of its own, rather than trusting `subscriptions`'
    /// amounts, which loadgen prices with the rating crate the rater uses.
    pub periods: BTreeMap<String, BTreeMap<i32, Quantity>>,
    /// Per dead-letter reason: how many records must end up there.
    pub dead_letters: BTreeMap<String, usize>,
    /// Per `<legal entity>/<currency>`: the net amount posted to receivables, which is every
    /// billed amount of the entity's subscriptions in that currency.
    pub ledger: BTreeMap<String, String>,
}

/// The billing expectation of one subscription.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Billed {
    /// Quantity rated, all periods.
    pub quantity: String,
    /// Amount billed: per period the price of that period's quantity, summed.
    pub amount: String,
}

/// A generated workload.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Accounts, one per customer (the customer without one is poison).
    pub accounts: Vec<CustomerAccount>,
    /// Subscriptions, one per customer.
    pub subscriptions: Vec<Subscription>,
    /// Rate cards, one per plan.
    pub rate_cards: Vec<RateCard>,
    /// GL mappings, the default of the one legal entity.
    pub gl_mappings: Vec<GlMapping>,
    /// Usage records in publishing order.
    pub usage: Vec<UsageRecord>,
    /// What the pipeline must make of them.
    pub expected: Expected,
}

/// The charge of plan `index`: graduated calls with free units, prices varying by plan.
pub fn plan_charge(index: usize) -> RateCharge {
    let step = i128::try_from(index).unwrap_or(0);
    // Prices in millionths of the currency unit (unit prices carry 12 fraction digits).
    let price = |millionths: i128| {
        UnitPrice::from_unscaled((millionths + step * 100) * 1_000_000).unwrap_or(UnitPrice::ZERO)
    };
    let tier = |up_to: Option<i128>, unit_price: UnitPrice| PriceTier {
        up_to: up_to.and_then(|u| Quantity::from_unscaled(u * UNIT).ok()),
        unit_price,
        flat_fee: None,
    };
    RateCharge {
        charge_id: CHARGE.to_owned(),
        name: "API calls".to_owned(),
        meter_id: METER.to_owned(),
        aggregation: MeterAggregation::Sum,
        charge_model: ChargeModel::Graduated,
        flat_amount: None,
        unit_price: None,
        package_size: None,
        percentage: None,
        free_units: Quantity::from_unscaled((10 + step * 10) * UNIT).ok(),
        minimum_spend: None,
        maximum_spend: None,
        tiers: vec![
            tier(Some(1_000), price(2_000)),
            tier(Some(10_000), price(1_500)),
            tier(None, price(1_000)),
        ],
        group_by: Vec::new(),
    }
}

fn metadata(tenant: &str, source: &str, event_id: String, occurred_at: i64) -> EventMetadata {
    EventMetadata {
        tenant_id: tenant.to_owned(),
        event_id,
        source: source.to_owned(),
        r#type: "backbone.loadgen".to_owned(),
        occurred_at,
        produced_at: occurred_at,
        trace: TraceContext {
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
            tracestate: None,
        },
        schema_version: None,
    }
}

impl Workload {
    /// The workload of `spec`; the same spec always gives the same workload.
    pub fn generate(spec: &LoadSpec) -> Workload {
        let mut rng = fastrand::Rng::with_seed(spec.seed);
        let tenant = spec.tenant.as_str();
        let today = backbone_calendar::day_of_micros(spec.now_micros);
        let plans = spec.plans.max(1);
        let rate_cards: Vec<RateCard> = (0..plans)
            .map(|p| RateCard {
                metadata: metadata(tenant, "catalog", format!("plan-{p}-v1"), spec.now_micros),
                plan_id: format!("plan-{p}"),
                version: 1,
                name: format!("Plan {p}"),
                currency: "EUR".to_owned(),
                effective_from: 0,
                effective_to: None,
                charges: vec![plan_charge(p)],
                recurring_fees: Vec::new(),
            })
            .collect();
        let customers: Vec<String> = (0..spec.customers.max(1))
            .map(|c| format!("cust-{c}"))
            .collect();
        let accounts: Vec<CustomerAccount> = customers
            .iter()
            .map(|c| CustomerAccount {
                metadata: metadata(tenant, "crm", format!("account-{c}"), spec.now_micros),
                customer_id: c.clone(),
                name: format!("Customer {c}"),
                status: AccountStatus::Active,
                currency: "EUR".to_owned(),
                legal_entity_id: LEGAL_ENTITY.to_owned(),
                country_code: "DE".to_owned(),
                billing_contact_name: None,
                billing_email: None,
                billing_address: None,
                tax_id: None,
                crm_account_id: None,
                erp_customer_id: None,
            })
            .collect();
        let subscriptions: Vec<Subscription> = customers
            .iter()
            .enumerate()
            .map(|(i, c)| Subscription {
                metadata: metadata(
                    tenant,
                    "billing",
                    format!("subscription-{c}"),
                    spec.now_micros,
                ),
                subscription_id: format!("sub-{c}"),
                customer_id: c.clone(),
                plan_id: format!("plan-{}", i % plans),
                status: SubscriptionStatus::Active,
                currency: "EUR".to_owned(),
                legal_entity_id: LEGAL_ENTITY.to_owned(),
                billing_interval: BillingInterval::Monthly,
                billing_anchor_day: 1,
                current_period_start: today,
                current_period_end: today + 30,
                started_at: 0,
                ends_at: None,
                trial_ends_at: None,
            })
            .collect();

        let gl_mappings = vec![GlMapping {
            metadata: metadata(tenant, "erp", format!("gl-{LEGAL_ENTITY}"), spec.now_micros),
            mapping_id: format!("gl-{LEGAL_ENTITY}-default"),
            legal_entity_id: LEGAL_ENTITY.to_owned(),
            product_id: None,
            charge_id: None,
            revenue_account: "4000".to_owned(),
            receivable_account: "1210".to_owned(),
            deferred_revenue_account: "2400".to_owned(),
            tax_account: "3800".to_owned(),
            effective_from: 0,
            effective_to: None,
        }];
        let mut expected = Expected {
            records: spec.events,
            ..Expected::default()
        };
        // (subscription, period start) -> quantity, for pricing per period.
        let mut per_period: BTreeMap<(usize, i32), i128> = BTreeMap::new();
        let mut usage: Vec<UsageRecord> = Vec::with_capacity(spec.events);
        // Billed events only: a repeat of anything else would be judged again, not dropped.
        let mut sent: Vec<usize> = Vec::new();
        let mut dead_letters: BTreeMap<String, usize> = BTreeMap::new();
        let mut dead = |reason: &str| *dead_letters.entry(reason.to_owned()).or_default() += 1;
        for n in 0..spec.events {
            let roll = rng.f64();
            if roll < spec.duplicate_share && !sent.is_empty() {
                let original = sent[rng.usize(..sent.len())];
                usage.push(usage[original].clone());
                expected.duplicates += 1;
                continue;
            }
            let roll = rng.f64();
            let customer = rng.usize(..customers.len());
            let key = format!("{tenant}:{}", customers[customer]);
            let quantity = i128::from(rng.u32(1..=200));
            let mut occurred_at = spec.now_micros - i64::from(rng.u32(1..600)) * 1_000_000;
            let poison = spec.poison_share / 4.0;
            let mut event = UsageEvent {
                metadata: metadata(
                    tenant,
                    "loadgen",
                    format!("e-{}-{n}", spec.seed),
                    occurred_at,
                ),
                customer_id: customers[customer].clone(),
                subscription_id: Some(format!("sub-{}", customers[customer])),
                meter_id: METER.to_owned(),
                quantity: Quantity::from_unscaled(quantity * UNIT).unwrap_or(Quantity::ZERO),
                unit: "call".to_owned(),
                dimensions: None,
                unique_value: None,
            };
            if roll < poison {
                let mut garbage = vec![b'{'];
                garbage.extend_from_slice(format!("\"not-avro\":{n}}}").as_bytes());
                usage.push(UsageRecord {
                    key,
                    payload: Payload::Raw(garbage),
                });
                dead("wrong_magic_byte");
                continue;
            }
            if roll < 2.0 * poison {
                let mut unknown = vec![0, 0x7f, 0xff, 0xff, 0xf0];
                unknown.extend_from_slice(&[2, 4, 6]);
                usage.push(UsageRecord {
                    key,
                    payload: Payload::Raw(unknown),
                });
                dead("unknown_schema_id");
                continue;
            }
            if roll < 3.0 * poison {
                event.quantity =
                    Quantity::from_unscaled(-quantity * UNIT).unwrap_or(Quantity::ZERO);
                usage.push(UsageRecord {
                    key,
                    payload: Payload::Event(Box::new(event)),
                });
                dead("invalid_quantity");
                continue;
            }
            if roll < 4.0 * poison {
                event.customer_id = format!("ghost-{n}");
                event.subscription_id = Some(format!("sub-ghost-{n}"));
                usage.push(UsageRecord {
                    key: format!("{tenant}:ghost-{n}"),
                    payload: Payload::Event(Box::new(event)),
                });
                dead("unknown_account");
                continue;
            }
            let late = rng.f64();
            if late < spec.out_of_window_share {
                occurred_at = spec.now_micros - 40 * DAY_MICROS;
                event.metadata.occurred_at = occurred_at;
                event.metadata.produced_at = occurred_at;
                usage.push(UsageRecord {
                    key,
                    payload: Payload::Event(Box::new(event)),
                });
                dead("too_late");
                continue;
            }
            if late < spec.out_of_window_share + spec.late_share {
                occurred_at = spec.now_micros - i64::from(rng.u32(1..6)) * HOUR_MICROS;
                event.metadata.occurred_at = occurred_at;
                event.metadata.produced_at = occurred_at;
            }
            let plan = PeriodPlan::new(today, 1, BillingInterval::Monthly)
                .unwrap_or_else(|_| unreachable!("anchor day 1 and a monthly interval are valid"));
            let day = backbone_calendar::day_of_micros(occurred_at);
            *per_period
                .entry((customer, plan.period_of(day).start))
                .or_default() += quantity * UNIT;
            expected.billed_events += 1;
            usage.push(UsageRecord {
                key,
                payload: Payload::Event(Box::new(event)),
            });
            sent.push(usage.len() - 1);
        }
        expected.dead_letters = dead_letters;
        let mut totals: BTreeMap<usize, (i128, i128)> = BTreeMap::new();
        for ((customer, period), quantity) in per_period {
            if let Ok(used) = Quantity::from_unscaled(quantity) {
                expected
                    .periods
                    .entry(format!("sub-{}", customers[customer]))
                    .or_default()
                    .insert(period, used);
            }
            let charge = plan_charge(customer % plans);
            let amount = Quantity::from_unscaled(quantity)
                .ok()
                .and_then(|q| price(&charge, q).ok())
                .unwrap_or(Amount::ZERO);
            let total = totals.entry(customer).or_default();
            total.0 += quantity;
            total.1 += amount.unscaled();
        }
        let net: i128 = totals.values().map(|(_, amount)| amount).sum();
        expected.ledger.insert(
            format!("{LEGAL_ENTITY}/EUR"),
            Amount::from_unscaled(net)
                .map(|a| a.to_string())
                .unwrap_or_default(),
        );
        for (customer, (quantity, amount)) in totals {
            expected.subscriptions.insert(
                format!("sub-{}", customers[customer]),
                Billed {
                    quantity: Quantity::from_unscaled(quantity)
                        .map(|q| q.to_string())
                        .unwrap_or_default(),
                    amount: Amount::from_unscaled(amount)
                        .map(|a| a.to_string())
                        .unwrap_or_default(),
                },
            );
        }
        Workload {
            accounts,
            subscriptions,
            rate_cards,
            gl_mappings,
            usage,
            expected,
        }
    }
}

/// Topics a workload is published to.
#[derive(Debug, Clone, Copy)]
pub struct Destinations<'a> {
    /// Raw usage.
    pub usage: &'a str,
    /// Customer accounts.
    pub accounts: &'a str,
    /// Subscriptions.
    pub subscriptions: &'a str,
    /// Rate cards.
    pub rate_cards: &'a str,
    /// GL mappings.
    pub gl_mappings: &'a str,
}

/// Why publishing a workload failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A record could not be encoded or its contract registered.
    #[error("encoding a record for `{topic}`: {source}")]
    Encode {
        /// The topic.
        topic: String,
        /// The codec's error.
        source: backbone_schemas::WireError,
    },
    /// The broker did not take a record.
    #[error("publishing to `{topic}`: {source}")]
    Kafka {
        /// The topic.
        topic: String,
        /// The client's error.
        source: rdkafka::error::KafkaError,
    },
}

impl Workload {
    /// Publishes the workload through `codec` and the registry: master data first (rate cards,
    /// GL mappings, subscriptions, accounts, keyed `<tenant>:<id>`), then the usage records in order, at most
    /// `rate` per second (0: as fast as the broker takes them).
    pub async fn publish(
        &self,
        producer: &FutureProducer,
        codec: &WireCodec,
        to: Destinations<'_>,
        rate: u32,
    ) -> Result<(), PublishError> {
        // Records are not sent one by one: each would wait out the producer's linger. Master
        // data is all acknowledged before the first usage record; the producer keeps each
        // topic's order.
        let mut sent = InFlight {
            producer,
            codec,
            pending: Vec::with_capacity(IN_FLIGHT),
        };
        for card in &self.rate_cards {
            let key = rate_card_key(&card.metadata.tenant_id, &card.plan_id, card.version);
            sent.send_contract(to.rate_cards, &key, card).await?;
        }
        for mapping in &self.gl_mappings {
            let key = format!("{}:{}", mapping.metadata.tenant_id, mapping.mapping_id);
            sent.send_contract(to.gl_mappings, &key, mapping).await?;
        }
        for subscription in &self.subscriptions {
            let key = format!(
                "{}:{}",
                subscription.metadata.tenant_id, subscription.subscription_id
            );
            sent.send_contract(to.subscriptions, &key, subscription)
                .await?;
        }
        for account in &self.accounts {
            let key = format!("{}:{}", account.metadata.tenant_id, account.customer_id);
            sent.send_contract(to.accounts, &key, account).await?;
        }
        sent.acknowledge().await?;
        let subject = format!("{}-value", to.usage);
        let encode = |source| PublishError::Encode {
            topic: to.usage.to_owned(),
            source,
        };
        // Registered once; each record is then encoded without another registry lookup.
        let id = codec
            .contract_id::<UsageEvent>(&subject)
            .await
            .map_err(encode)?;
        let started = std::time::Instant::now();
        for (n, record) in self.usage.iter().enumerate() {
            if rate > 0 {
                let due = started + std::time::Duration::from_secs_f64(n as f64 / f64::from(rate));
                tokio::time::sleep_until(due.into()).await;
            }
            let value = match &record.payload {
                Payload::Event(event) => encode_framed(id, event.as_ref()).map_err(encode)?,
                Payload::Raw(bytes) => bytes.clone(),
            };
            sent.send(to.usage, &record.key, &value).await?;
        }
        sent.acknowledge().await
    }
}

/// The most records handed to the producer before their acknowledgements are awaited.
const IN_FLIGHT: usize = 1_000;

/// Records handed to the producer and not yet acknowledged (at most `IN_FLIGHT`).
struct InFlight<'a> {
    producer: &'a FutureProducer,
    codec: &'a WireCodec,
    pending: Vec<(&'a str, DeliveryFuture)>,
}

impl<'a> InFlight<'a> {
    /// Encodes `value` for `topic` through the registry and sends it.
    async fn send_contract<T: Contract>(
        &mut self,
        topic: &'a str,
        key: &str,
        value: &T,
    ) -> Result<(), PublishError> {
        let bytes = self
            .codec
            .encode_contract(&format!("{topic}-value"), value)
            .await
            .map_err(|source| PublishError::Encode {
                topic: topic.to_owned(),
                source,
            })?;
        self.send(topic, key, &bytes).await
    }

    /// Hands `value` to the producer.
    async fn send(&mut self, topic: &'a str, key: &str, value: &[u8]) -> Result<(), PublishError> {
        let delivery = self
            .producer
            .send_result(FutureRecord::to(topic).key(key).payload(value))
            .map_err(|(source, _)| PublishError::Kafka {
                topic: topic.to_owned(),
                source,
            })?;
        self.pending.push((topic, delivery));
        if self.pending.len() >= IN_FLIGHT {
            self.acknowledge().await?;
        }
        Ok(())
    }

    /// Awaits every pending acknowledgement; an error names the record's topic.
    async fn acknowledge(&mut self) -> Result<(), PublishError> {
        for (topic, delivery) in self.pending.drain(..) {
            let acknowledged = delivery
                .await
                .map_err(|_| rdkafka::error::KafkaError::Canceled)
                .and_then(|result| result.map(drop).map_err(|(err, _)| err));
            acknowledged.map_err(|source| PublishError::Kafka {
                topic: topic.to_owned(),
                source,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(seed: u64) -> LoadSpec {
        LoadSpec {
            seed,
            tenant: "acme".to_owned(),
            customers: 20,
            plans: 3,
            events: 2_000,
            duplicate_share: 0.05,
            late_share: 0.05,
            out_of_window_share: 0.01,
            poison_share: 0.04,
            now_micros: 1_795_000_000_000_000,
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_workload_and_another_seed_another() {
        let (a, b, c) = (
            Workload::generate(&spec(7)),
            Workload::generate(&spec(7)),
            Workload::generate(&spec(8)),
        );
        assert_eq!(a.expected, b.expected);
        assert_eq!(format!("{:?}", a.usage), format!("{:?}", b.usage));
        assert_ne!(a.expected, c.expected);
    }

    #[test]
    fn every_record_is_accounted_for_and_shares_are_near_their_settings() {
        let workload = Workload::generate(&spec(42));
        let e = &workload.expected;
        let dead: usize = e.dead_letters.values().sum();
        assert_eq!(e.records, workload.usage.len());
        assert_eq!(e.records, e.billed_events + e.duplicates + dead);
        for reason in [
            "wrong_magic_byte",
            "unknown_schema_id",
            "invalid_quantity",
            "unknown_account",
            "too_late",
        ] {
            assert!(
                e.dead_letters.get(reason).is_some_and(|n| *n > 0),
                "{reason}"
            );
        }
        let duplicates = e.duplicates as f64 / e.records as f64;
        assert!((0.03..0.07).contains(&duplicates), "{duplicates}");
    }
}
