//! Which orders wait for a person's approval before anything is done for them: those whose
//! total reaches an amount, or whose lines' discounts reach a share of their list price.

use std::time::Duration;

use backbone_core::config::ConfigError;
use backbone_schemas::types::{Amount, Percent, SalesOrder};
use serde::{Deserialize, Deserializer};

/// The `[processor.approval]` section. With neither threshold set no order waits.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalSettings {
    /// Orders whose `total_amount` is at or above this wait (decimal text, in the order's
    /// currency: one threshold for every currency).
    #[serde(deserialize_with = "decimal_text")]
    pub min_total: Option<Amount>,
    /// Orders whose line discounts are at least this percent of the lines' list price
    /// (`quantity × unit_price`) wait (decimal text, `20` for 20 %).
    #[serde(deserialize_with = "decimal_text")]
    pub min_discount_percent: Option<Percent>,
    /// How long an order waits for a decision before it is escalated; after as long again it
    /// is rejected.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for ApprovalSettings {
    fn default() -> Self {
        Self {
            min_total: None,
            min_discount_percent: None,
            timeout: Duration::from_secs(24 * 3600),
        }
    }
}

impl ApprovalSettings {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            key: format!("processor.approval.{key}"),
            message: message.to_owned(),
        };
        if self.timeout.is_zero() {
            return Err(invalid("timeout", "must be above zero"));
        }
        if self.min_total.is_some_and(|t| t <= Amount::ZERO) {
            return Err(invalid(
                "min_total",
                "must be above zero (leave it out for no threshold)",
            ));
        }
        if let Some(percent) = self.min_discount_percent {
            if percent <= Percent::ZERO || percent > "100".parse().unwrap_or(Percent::ZERO) {
                return Err(invalid(
                    "min_discount_percent",
                    "must be above 0 and at most 100",
                ));
            }
        }
        Ok(())
    }

    /// Why `order` waits for approval; `None` when it does not.
    pub(crate) fn needed_for(&self, order: &SalesOrder) -> Option<String> {
        if let Some(min) = self.min_total.filter(|min| order.total_amount >= *min) {
            return Some(format!(
                "total {} {} is at or above {min}",
                order.total_amount, order.currency
            ));
        }
        let min = self.min_discount_percent?;
        let (discount, list) = discount_and_list(order)?;
        // discount / list ≥ min / 100, in unscaled integers: both amounts have the amount
        // scale and the percent its own, so each side carries the other's scale.
        let reached = discount.unscaled() * 100 * PERCENT_ONE >= min.unscaled() * list.unscaled();
        (list > Amount::ZERO && reached)
            .then(|| format!("discount {discount} of list price {list} is at or above {min} %"))
    }
}

/// `Percent`'s unscaled 1 (its scale is 6).
const PERCENT_ONE: i128 = 1_000_000;

/// The order's summed line discounts and the list price they were taken from (the line
/// amounts plus the discounts); `None` if a sum leaves the amount's range.
fn discount_and_list(order: &SalesOrder) -> Option<(Amount, Amount)> {
    let mut discount = Amount::ZERO;
    let mut list = Amount::ZERO;
    for line in &order.lines {
        let taken = line.discount_amount.unwrap_or(Amount::ZERO);
        discount = discount.checked_add(taken)?;
        list = list.checked_add(line.line_amount)?.checked_add(taken)?;
    }
    Some((discount, list))
}

/// A decimal from TOML text (`"10000.50"`) or a whole number (`10000`, as an environment
/// override reads); absent when the key is left out. A float is refused: it may already have
/// lost the digits written.
fn decimal_text<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    struct Text<T>(std::marker::PhantomData<T>);

    impl<T> serde::de::Visitor<'_> for Text<T>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        type Value = Option<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a decimal as text, like \"10000.50\", or a whole number")
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
            text.trim()
                .parse()
                .map(Some)
                .map_err(|e| E::custom(format!("`{text}` is not a decimal: {e}")))
        }

        fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Self::Value, E> {
            self.visit_str(&n.to_string())
        }

        fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Self::Value, E> {
            self.visit_str(&n.to_string())
        }
    }

    deserializer.deserialize_any(Text(std::marker::PhantomData))
}

#[cfg(test)]
mod tests {
    use super::*;
    use backbone_schemas::types::{OrderStatus, SalesOrderLine};

    fn order(total: &str, lines: &[(&str, Option<&str>)]) -> SalesOrder {
        let mut order = crate::fixtures::order(1, OrderStatus::Confirmed, false);
        order.lines = lines
            .iter()
            .zip(1..)
            .map(|((amount, discount), line_number)| SalesOrderLine {
                line_number,
                discount_amount: discount.map(|d| d.parse().expect("discount")),
                line_amount: amount.parse().expect("amount"),
                ..order.lines[0].clone()
            })
            .collect();
        order.total_amount = total.parse().expect("total");
        order
    }

    fn settings(total: Option<&str>, percent: Option<&str>) -> ApprovalSettings {
        ApprovalSettings {
            min_total: total.map(|t| t.parse().expect("total")),
            min_discount_percent: percent.map(|p| p.parse().expect("percent")),
            ..ApprovalSettings::default()
        }
    }

    #[test]
    fn an_order_waits_from_the_total_or_the_discount_share_on() {
        let rules = settings(Some("10000"), Some("20"));
        assert!(rules
            .needed_for(&order("9999.99", &[("9999.99", None)]))
            .is_none());
        assert!(rules
            .needed_for(&order("10000", &[("10000", None)]))
            .is_some());
        // 20 off a list price of 100: exactly 20 %.
        assert!(rules
            .needed_for(&order("80", &[("80", Some("20"))]))
            .is_some());
        // 19.99 off 100: below.
        assert!(rules
            .needed_for(&order("80.01", &[("80.01", Some("19.99"))]))
            .is_none());
        // Summed over the lines: 10 + 15 off 125.
        let two = order("100", &[("40", Some("10")), ("60", Some("15"))]);
        assert!(rules.needed_for(&two).is_some());
        assert!(settings(None, None).needed_for(&two).is_none());
    }

    #[test]
    fn thresholds_read_as_text_or_whole_numbers_never_as_floats() {
        let read = |toml_text: &str| toml::from_str::<ApprovalSettings>(toml_text);
        let text = read("min_total = \"10000.50\"").expect("text");
        assert_eq!(text.min_total, Some("10000.5".parse().expect("amount")));
        let whole = read("min_total = 10000").expect("whole number");
        assert_eq!(whole.min_total, Some("10000".parse().expect("amount")));
        let err = read("min_total = 0.1").expect_err("a float");
        assert!(err.to_string().contains("a decimal as text"), "{err}");
        assert!(read("min_total = \"ten\"").is_err());
    }

    #[test]
    fn thresholds_out_of_range_are_refused_naming_the_key() {
        for (rules, key) in [
            (settings(Some("0"), None), "processor.approval.min_total"),
            (
                settings(None, Some("0")),
                "processor.approval.min_discount_percent",
            ),
            (
                settings(None, Some("100.5")),
                "processor.approval.min_discount_percent",
            ),
        ] {
            let err = rules.validate().expect_err("refused");
            assert!(err.to_string().contains(key), "{err}");
        }
    }
}
