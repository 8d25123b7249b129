//! The CRM route: a running summary of each customer's rated usage, kept in partition state
//! keyed by customer, and the [`AccountHealthSnapshot`] it gives after every rated line.

use std::collections::BTreeMap;

use backbone_rating::content_id;
use backbone_schemas::types::{AccountHealthSnapshot, Amount, HealthStatus, Percent, RatedUsage};
use serde::{Deserialize, Serialize};

use crate::envelope;
use backbone_calendar::day_of_micros;

/// Days in each of the two windows the trend compares.
const TREND_DAYS: i32 = 7;
/// A decline of more than this many percent week on week puts an account on watch.
const WATCH_BELOW: i128 = -20;
/// A decline of more than this many percent week on week puts an account at risk.
const AT_RISK_BELOW: i128 = -50;

/// What the fanout remembers of one customer's rated usage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountActivity {
    /// `as_of` of the latest snapshot, in microseconds; each snapshot's is later than the one
    /// before, so the CRM's newest-wins upsert keeps them in the order they were made.
    pub as_of: i64,
    /// Event time of the latest usage, in microseconds.
    pub last_usage_at: i64,
    /// Rated amount per day of event time (unscaled), for the last two trend windows.
    pub daily: BTreeMap<i32, i128>,
    /// Per subscription, its current and previous billing period.
    pub subscriptions: BTreeMap<String, SubscriptionSpend>,
}

/// Rated amounts of one subscription by billing period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionSpend {
    /// Currency of the amounts.
    pub currency: String,
    /// First day of the current period.
    pub period_start: i32,
    /// Day after the current period.
    pub period_end: i32,
    /// Rated amount of the current period so far (unscaled).
    pub amount: i128,
    /// Start and rated amount of the period before, once the subscription moved on.
    pub previous: Option<(i32, i128)>,
}

impl AccountActivity {
    /// Folds `line` in and returns the snapshot as of it.
    pub fn apply(&mut self, line: &RatedUsage) -> AccountHealthSnapshot {
        let delta = line.delta_amount.unscaled();
        let occurred_at = line.metadata.occurred_at;
        let spend = self
            .subscriptions
            .entry(line.subscription_id.clone())
            .or_insert_with(|| SubscriptionSpend {
                currency: line.currency.clone(),
                period_start: line.period_start,
                period_end: line.period_end,
                amount: 0,
                previous: None,
            });
        if line.period_start > spend.period_start {
            spend.previous = Some((spend.period_start, spend.amount));
            spend.period_start = line.period_start;
            spend.period_end = line.period_end;
            spend.amount = 0;
        }
        if line.period_start == spend.period_start {
            spend.amount += delta;
        } else if let Some((start, amount)) = spend.previous.as_mut() {
            if *start == line.period_start {
                *amount += delta;
            }
        }
        let day = day_of_micros(occurred_at);
        *self.daily.entry(day).or_default() += delta;
        self.last_usage_at = self.last_usage_at.max(occurred_at);
        self.as_of = occurred_at.max(self.as_of + 1);
        let latest = day_of_micros(self.last_usage_at);
        self.daily.retain(|d, _| *d > latest - 2 * TREND_DAYS);
        self.snapshot(line)
    }

    fn snapshot(&self, line: &RatedUsage) -> AccountHealthSnapshot {
        let tenant = &line.metadata.tenant_id;
        let as_of = self.as_of.to_string();
        let snapshot_id = content_id("ahs-", &[tenant, &line.customer_id, &as_of]);
        let same_currency = || {
            self.subscriptions
                .values()
                .filter(|s| s.currency == line.currency)
        };
        let period_to_date: i128 = same_currency().map(|s| s.amount).sum();
        let previous: Option<i128> = same_currency()
            .filter_map(|s| s.previous.map(|(_, amount)| amount))
            .reduce(|a, b| a + b);
        let today = day_of_micros(self.as_of);
        let window = |last: i32| -> i128 {
            self.daily
                .range(last - TREND_DAYS + 1..=last)
                .map(|(_, amount)| amount)
                .sum()
        };
        let change = change_percent(window(today), window(today - TREND_DAYS));
        let current = self.subscriptions.get(&line.subscription_id);
        AccountHealthSnapshot {
            metadata: envelope(
                &line.metadata,
                &snapshot_id,
                "backbone.crm.account-health",
                self.as_of,
            ),
            snapshot_id,
            customer_id: line.customer_id.clone(),
            as_of: self.as_of,
            crm_account_id: None,
            health: health(change),
            active_subscriptions: i32::try_from(
                self.subscriptions
                    .values()
                    .filter(|s| s.period_end > today)
                    .count(),
            )
            .unwrap_or(i32::MAX),
            period_start: current.map_or(line.period_start, |s| s.period_start),
            period_end: current.map_or(line.period_end, |s| s.period_end),
            period_to_date_amount: amount(period_to_date),
            previous_period_amount: previous.map(amount),
            currency: line.currency.clone(),
            usage_change_percent: change,
            last_usage_at: Some(self.last_usage_at),
        }
    }
}

/// An amount, saturated at the contract's bounds rather than failing a summary over it.
fn amount(unscaled: i128) -> Amount {
    let bound = Amount::MAX_UNSCALED;
    Amount::from_unscaled(unscaled.clamp(-bound, bound)).unwrap_or(Amount::ZERO)
}

/// `(now - before) / before` in percent, clamped to the contract's ±999.999999; none when the
/// earlier window rated nothing.
pub fn change_percent(now: i128, before: i128) -> Option<Percent> {
    if before == 0 {
        return None;
    }
    let scale = 10_i128.pow(6);
    let bound = Percent::MAX_UNSCALED;
    let change = (now - before).saturating_mul(100 * scale) / before.abs();
    Percent::from_unscaled(change.clamp(-bound, bound)).ok()
}

/// Healthy unless spend fell week on week: by more than 20% on watch, more than 50% at risk.
pub fn health(change: Option<Percent>) -> HealthStatus {
    let scale = 10_i128.pow(6);
    match change.map(Percent::unscaled) {
        Some(c) if c < AT_RISK_BELOW * scale => HealthStatus::AtRisk,
        Some(c) if c < WATCH_BELOW * scale => HealthStatus::Watch,
        _ => HealthStatus::Healthy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{line, DAY, MIDNIGHT};
    use backbone_calendar::DAY_MICROS;

    #[test]
    fn the_trend_compares_the_last_seven_days_with_the_seven_before() {
        let mut activity = AccountActivity::default();
        let first = activity.apply(&line("sub-1", "10", MIDNIGHT - 8 * DAY_MICROS, DAY - 8));
        assert_eq!(
            first.usage_change_percent, None,
            "nothing to compare with yet"
        );
        assert_eq!(first.health, HealthStatus::Healthy);
        let fell = activity.apply(&line("sub-1", "4", MIDNIGHT, DAY - 8));
        assert_eq!(
            fell.usage_change_percent.map(|p| p.to_string()),
            Some("-60.000000".into())
        );
        assert_eq!(fell.health, HealthStatus::AtRisk);
        let recovering = activity.apply(&line("sub-1", "3", MIDNIGHT + 1, DAY - 8));
        assert_eq!(recovering.health, HealthStatus::Watch, "-30%");
        assert_eq!(recovering.period_to_date_amount.to_string(), "17.000000");
        assert_eq!(recovering.last_usage_at, Some(MIDNIGHT + 1));
        // Three weeks later the old days have left both windows.
        let later = activity.apply(&line("sub-1", "1", MIDNIGHT + 21 * DAY_MICROS, DAY - 8));
        assert_eq!(later.usage_change_percent, None);
        assert_eq!(activity.daily.len(), 1);
    }

    #[test]
    fn a_new_period_keeps_the_last_one_as_previous_and_late_lines_restate_it() {
        let mut activity = AccountActivity::default();
        activity.apply(&line("sub-1", "10", MIDNIGHT - DAY_MICROS, DAY - 30));
        let next = activity.apply(&line("sub-1", "2", MIDNIGHT, DAY));
        assert_eq!(next.period_start, DAY);
        assert_eq!(next.period_to_date_amount.to_string(), "2.000000");
        assert_eq!(
            next.previous_period_amount.map(|a| a.to_string()),
            Some("10.000000".into())
        );
        let late = activity.apply(&line("sub-1", "1", MIDNIGHT - 2 * DAY_MICROS, DAY - 30));
        assert_eq!(
            late.previous_period_amount.map(|a| a.to_string()),
            Some("11.000000".into())
        );
        assert_eq!(late.period_to_date_amount.to_string(), "2.000000");
        assert_eq!(
            late.last_usage_at,
            Some(MIDNIGHT),
            "a late line does not move the latest usage"
        );
    }

    #[test]
    fn every_snapshot_is_later_than_the_one_before_and_sums_the_subscriptions() {
        let mut activity = AccountActivity::default();
        let a = activity.apply(&line("sub-1", "5", MIDNIGHT, DAY));
        let b = activity.apply(&line("sub-2", "7", MIDNIGHT, DAY));
        let c = activity.apply(&line("sub-1", "1", MIDNIGHT - 3_600_000_000, DAY));
        assert!(
            a.as_of < b.as_of && b.as_of < c.as_of,
            "{} {} {}",
            a.as_of,
            b.as_of,
            c.as_of
        );
        assert_ne!(a.snapshot_id, b.snapshot_id);
        assert_eq!(c.period_to_date_amount.to_string(), "13.000000");
        assert_eq!(c.active_subscriptions, 2);
        // The same lines in the same order give the same snapshots: ids are content-derived.
        let mut again = AccountActivity::default();
        again.apply(&line("sub-1", "5", MIDNIGHT, DAY));
        assert_eq!(again.apply(&line("sub-2", "7", MIDNIGHT, DAY)), b);
    }

    #[test]
    fn the_change_is_clamped_and_needs_an_earlier_amount() {
        assert_eq!(change_percent(5, 0), None);
        assert_eq!(
            change_percent(1_000_000, 1).map(|p| p.to_string()),
            Some("999.999999".into())
        );
        assert_eq!(
            change_percent(15, 10).map(|p| p.to_string()),
            Some("50.000000".into())
        );
        assert_eq!(
            change_percent(-5, 10).map(|p| p.to_string()),
            Some("-150.000000".into())
        );
    }
}
