//! Exact decimal amounts and calendar strings as the simulated APIs accept them.
//!
//! Amounts travel as JSON strings (`"12.34"`, `"-0.005"`) so that no party rounds them through
//! a float; sums per currency are compared exactly.

use std::fmt;
use std::str::FromStr;

/// Digits kept after the point: every amount is held as a count of 10⁻¹² units.
const SCALE: u32 = 12;
/// Integer digits accepted; with [`SCALE`] a value stays below 10³⁰, far inside `i128`.
const MAX_INTEGER_DIGITS: usize = 18;

/// A decimal amount, exact to twelve places.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Amount(i128);

impl Amount {
    /// The sum, or `None` when it leaves the representable range.
    pub(crate) fn checked_add(self, other: Amount) -> Option<Amount> {
        self.0.checked_add(other.0).map(Amount)
    }
}

impl FromStr for Amount {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || format!("expected a decimal like \"12.34\", got {text:?}");
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (integer, fraction) = digits.split_once('.').unwrap_or((digits, ""));
        let all_digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
        if integer.is_empty()
            || !all_digits(integer)
            || !all_digits(fraction)
            || (digits.contains('.') && fraction.is_empty())
        {
            return Err(invalid());
        }
        if integer.len() > MAX_INTEGER_DIGITS || fraction.len() > SCALE as usize {
            return Err(format!(
                "{text:?} has more than {MAX_INTEGER_DIGITS} integer or {SCALE} decimal digits"
            ));
        }
        let padded = format!("{integer}{fraction:0<width$}", width = SCALE as usize);
        let units: i128 = padded.parse().map_err(|_| invalid())?;
        Ok(Amount(if negative { -units } else { units }))
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scale = 10i128.pow(SCALE);
        let sign = if self.0 < 0 { "-" } else { "" };
        let (integer, fraction) = (self.0.abs() / scale, self.0.abs() % scale);
        let fraction = format!("{fraction:0width$}", width = SCALE as usize);
        let fraction = fraction.trim_end_matches('0');
        if fraction.is_empty() {
            write!(f, "{sign}{integer}")
        } else {
            write!(f, "{sign}{integer}.{fraction}")
        }
    }
}

/// Whether `text` is a calendar date `YYYY-MM-DD`.
pub(crate) fn is_date(text: &str) -> bool {
    backbone_calendar::parse_date(text).is_some()
}

/// Whether `text` is an accounting period `YYYY-MM`.
pub(crate) fn is_period(text: &str) -> bool {
    split_period(text).is_some()
}

fn split_period(text: &str) -> Option<(u32, u32)> {
    let (year, month) = text.split_once('-')?;
    let digits =
        |part: &str, len: usize| part.len() == len && part.bytes().all(|b| b.is_ascii_digit());
    if !digits(year, 4) || !digits(month, 2) {
        return None;
    }
    let month: u32 = month.parse().ok()?;
    (1..=12)
        .contains(&month)
        .then(|| year.parse().ok().map(|year| (year, month)))
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amount(text: &str) -> Amount {
        text.parse().expect("a valid amount")
    }

    #[test]
    fn equal_values_compare_equal_whatever_their_scale() {
        assert_eq!(amount("12.30"), amount("12.3"));
        assert_eq!(amount("-0.005"), amount("-0.0050"));
        assert_eq!(amount("0"), amount("-0.000"));
        assert!(amount("0.1") > amount("0.099999999999"));
    }

    #[test]
    fn sums_are_exact_where_floats_are_not() {
        let sum = ["0.1", "0.2"]
            .iter()
            .map(|t| amount(t))
            .try_fold(Amount::default(), Amount::checked_add)
            .expect("no overflow");
        assert_eq!(sum, amount("0.3"));
        assert_eq!(sum.to_string(), "0.3");
        assert_eq!(amount("-1234.500").to_string(), "-1234.5");
    }

    #[test]
    fn malformed_amounts_are_refused() {
        for text in [
            "",
            "-",
            "1.",
            ".5",
            "+1",
            "1e3",
            "1,5",
            "ten",
            "1.0000000000001",
        ] {
            assert!(text.parse::<Amount>().is_err(), "{text:?} was accepted");
        }
        assert!("1234567890123456789".parse::<Amount>().is_err());
    }

    #[test]
    fn dates_and_periods() {
        assert!(is_date("2024-02-29") && !is_date("2023-02-29"));
        assert!(!is_date("2024-13-01") && !is_date("2024-1-01") && !is_date("2024-04-31"));
        assert!(is_period("2024-01") && !is_period("2024-00") && !is_period("24-01"));
    }
}
