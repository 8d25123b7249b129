//! Exact decimals for the contracts' `bytes`/`decimal` fields.
//!
//! A value is its unscaled integer (`12.345678` at scale 6 is `12345678`) in an `i128`, which
//! holds every precision up to 38 digits; precision and scale are part of the type, so an
//! [`Amount`] cannot be passed where a [`Quantity`] is expected.
//!
//! On the wire a decimal is the unscaled value as big-endian two's complement. apache-avro 0.22
//! refuses, when resolving a value against a decimal schema, byte strings too short to hold the
//! schema's precision, so values serialise sign-extended to that length (8 bytes for precision
//! 18, 11 for 24, 4 for 9). Decoding accepts any length, as other Avro writers send the
//! shortest form.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use apache_avro::schema::{DecimalSchema, InnerDecimalSchema, Name, NamespaceRef, RecordField};
use apache_avro::{AvroSchemaComponent, Schema};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A money amount: precision 18, scale 6, in the currency named next to it.
pub type Amount = Decimal<18, 6>;
/// A quantity of usage or goods: precision 24, scale 9.
pub type Quantity = Decimal<24, 9>;
/// A price per unit or a rate: precision 24, scale 12.
pub type UnitPrice = Decimal<24, 12>;
/// A percentage (2.5 means 2.5 %): precision 9, scale 6.
pub type Percent = Decimal<9, 6>;

/// Why a decimal could not be built from text, an integer or bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecimalError {
    /// The text is not a plain decimal number like `-12.5`.
    #[error("decimal {text:?}: expected digits with an optional sign and decimal point")]
    Syntax {
        /// The text given.
        text: String,
    },
    /// More significant fraction digits than the scale allows; rounding is left to the caller.
    #[error("decimal {text:?}: more than {scale} fraction digits")]
    TooManyFractionDigits {
        /// The text given.
        text: String,
        /// The type's scale.
        scale: usize,
    },
    /// More digits than the precision allows.
    #[error("decimal value exceeds {precision} significant digits")]
    OutOfRange {
        /// The type's precision.
        precision: usize,
    },
    /// The encoded value has no bytes.
    #[error("decimal bytes are empty")]
    Empty,
}

/// An exact decimal with `PRECISION` significant digits, `SCALE` of them after the point.
///
/// Build one by parsing text (`"12.345678".parse::<Amount>()`) or from its unscaled integer;
/// [`Display`](fmt::Display) writes all `SCALE` fraction digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Decimal<const PRECISION: usize, const SCALE: usize> {
    unscaled: i128,
}

impl<const PRECISION: usize, const SCALE: usize> Decimal<PRECISION, SCALE> {
    /// Zero.
    pub const ZERO: Self = Self { unscaled: 0 };

    /// The largest unscaled magnitude, `10^PRECISION - 1`; also rejects, at compile time,
    /// precisions an `i128` cannot hold.
    pub const MAX_UNSCALED: i128 = {
        assert!(
            PRECISION >= 1 && PRECISION <= 38 && SCALE <= PRECISION,
            "decimal precision must be 1 to 38 and at least the scale"
        );
        pow10(PRECISION) - 1
    };

    /// Length of the encoded form: the fewest bytes whose two's complement range holds
    /// `PRECISION` digits, which apache-avro requires when resolving.
    pub const WIRE_BYTES: usize = wire_bytes(Self::MAX_UNSCALED);

    /// The decimal whose unscaled value is `unscaled` (`unscaled / 10^SCALE`).
    pub fn from_unscaled(unscaled: i128) -> Result<Self, DecimalError> {
        if unscaled.unsigned_abs() > Self::MAX_UNSCALED.unsigned_abs() {
            return Err(DecimalError::OutOfRange {
                precision: PRECISION,
            });
        }
        Ok(Self { unscaled })
    }

    /// The unscaled value: the decimal times `10^SCALE`.
    pub const fn unscaled(self) -> i128 {
        self.unscaled
    }

    /// `self + other`, or `None` when the sum exceeds the precision.
    pub fn checked_add(self, other: Self) -> Option<Self> {
        Self::from_unscaled(self.unscaled.checked_add(other.unscaled)?).ok()
    }

    /// `self - other`, or `None` when the difference exceeds the precision.
    pub fn checked_sub(self, other: Self) -> Option<Self> {
        Self::from_unscaled(self.unscaled.checked_sub(other.unscaled)?).ok()
    }

    /// Reads big-endian two's complement bytes of any length.
    fn from_twos_complement(bytes: &[u8]) -> Result<Self, DecimalError> {
        let [first, ..] = bytes else {
            return Err(DecimalError::Empty);
        };
        let fill = if first & 0x80 == 0 { 0x00 } else { 0xff };
        let (extension, tail) = bytes.split_at(bytes.len().saturating_sub(16));
        let mut buffer = [fill; 16];
        buffer[16 - tail.len()..].copy_from_slice(tail);
        let unscaled = i128::from_be_bytes(buffer);
        // Bytes beyond the 16 an i128 holds may only repeat the sign.
        let sign_matches = (unscaled < 0) == (fill == 0xff);
        if extension.iter().any(|b| *b != fill) || !sign_matches {
            return Err(DecimalError::OutOfRange {
                precision: PRECISION,
            });
        }
        Self::from_unscaled(unscaled)
    }
}

const fn pow10(exponent: usize) -> i128 {
    let mut value = 1i128;
    let mut i = 0;
    while i < exponent {
        value *= 10;
        i += 1;
    }
    value
}

const fn wire_bytes(max_unscaled: i128) -> usize {
    let mut len = 1;
    while len < 16 && (1i128 << (8 * len - 1)) - 1 < max_unscaled {
        len += 1;
    }
    len
}

impl<const PRECISION: usize, const SCALE: usize> FromStr for Decimal<PRECISION, SCALE> {
    type Err = DecimalError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let syntax = || DecimalError::Syntax {
            text: text.to_owned(),
        };
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text.strip_prefix('+').unwrap_or(text)),
        };
        let (whole, fraction) = match digits.split_once('.') {
            Some((whole, fraction)) if !fraction.is_empty() => (whole, fraction),
            Some(_) => return Err(syntax()),
            None => (digits, ""),
        };
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) {
            return Err(syntax());
        }
        // Trailing zeros beyond the scale lose nothing; other extra digits would be rounded.
        let fraction = match fraction.get(SCALE..) {
            Some(extra) if extra.bytes().any(|b| b != b'0') => {
                return Err(DecimalError::TooManyFractionDigits {
                    text: text.to_owned(),
                    scale: SCALE,
                })
            }
            Some(_) => &fraction[..SCALE],
            None => fraction,
        };
        let out_of_range = DecimalError::OutOfRange {
            precision: PRECISION,
        };
        let padding = SCALE - fraction.len();
        let mut unscaled: i128 = 0;
        for digit in whole
            .bytes()
            .chain(fraction.bytes())
            .chain(std::iter::repeat_n(b'0', padding))
        {
            unscaled = unscaled
                .checked_mul(10)
                .and_then(|v| v.checked_add(i128::from(digit - b'0')))
                .ok_or_else(|| out_of_range.clone())?;
        }
        Self::from_unscaled(if negative { -unscaled } else { unscaled })
    }
}

impl<const PRECISION: usize, const SCALE: usize> fmt::Display for Decimal<PRECISION, SCALE> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let divisor = pow10(SCALE).unsigned_abs();
        let magnitude = self.unscaled.unsigned_abs();
        let sign = if self.unscaled < 0 { "-" } else { "" };
        let whole = magnitude / divisor;
        if SCALE == 0 {
            write!(f, "{sign}{whole}")
        } else {
            let fraction = magnitude % divisor;
            write!(f, "{sign}{whole}.{fraction:0SCALE$}")
        }
    }
}

impl<const PRECISION: usize, const SCALE: usize> fmt::Debug for Decimal<PRECISION, SCALE> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<const PRECISION: usize, const SCALE: usize> Serialize for Decimal<PRECISION, SCALE> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // The value fits in WIRE_BYTES, so the bytes dropped are sign extension.
        let bytes = self.unscaled.to_be_bytes();
        serializer.serialize_bytes(&bytes[16 - Self::WIRE_BYTES..])
    }
}

impl<'de, const PRECISION: usize, const SCALE: usize> Deserialize<'de>
    for Decimal<PRECISION, SCALE>
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_bytes(DecimalVisitor::<PRECISION, SCALE>)
    }
}

struct DecimalVisitor<const PRECISION: usize, const SCALE: usize>;

impl<'de, const PRECISION: usize, const SCALE: usize> Visitor<'de>
    for DecimalVisitor<PRECISION, SCALE>
{
    type Value = Decimal<PRECISION, SCALE>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a decimal({PRECISION}, {SCALE}) as big-endian two's complement bytes"
        )
    }

    fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Self::Value, E> {
        Decimal::from_twos_complement(bytes).map_err(E::custom)
    }

    /// Formats without a bytes type (JSON) hand the bytes over as a sequence of numbers.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut bytes = Vec::with_capacity(16);
        while let Some(byte) = seq.next_element::<u8>()? {
            if bytes.len() == MAX_ENCODED_BYTES {
                return Err(de::Error::custom(DecimalError::OutOfRange {
                    precision: PRECISION,
                }));
            }
            bytes.push(byte);
        }
        self.visit_bytes(&bytes)
    }
}

/// Longest byte sequence read before giving up: far more sign extension than any writer uses.
const MAX_ENCODED_BYTES: usize = 64;

impl<const PRECISION: usize, const SCALE: usize> AvroSchemaComponent for Decimal<PRECISION, SCALE> {
    fn get_schema_in_ctxt(_: &mut HashSet<Name>, _: NamespaceRef) -> Schema {
        Schema::Decimal(DecimalSchema {
            precision: PRECISION,
            scale: SCALE,
            inner: InnerDecimalSchema::Bytes,
        })
    }

    fn get_record_fields_in_ctxt(
        _: &mut HashSet<Name>,
        _: NamespaceRef,
    ) -> Option<Vec<RecordField>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use apache_avro::types::Value;

    use super::*;

    #[test]
    fn text_round_trips_at_the_type_scale() {
        let amount: Amount = "12.345678".parse().unwrap();
        assert_eq!(amount.unscaled(), 12_345_678);
        assert_eq!(amount.to_string(), "12.345678");
        assert_eq!("-0.5".parse::<Amount>().unwrap().to_string(), "-0.500000");
        assert_eq!("+7".parse::<Quantity>().unwrap().to_string(), "7.000000000");
        assert_eq!(
            "1.2300000000".parse::<Amount>().unwrap().unscaled(),
            1_230_000
        );
        assert_eq!(
            "999999999999.999999".parse::<Amount>().unwrap().unscaled(),
            999_999_999_999_999_999
        );
        assert_eq!(Amount::ZERO.to_string(), "0.000000");
        assert_eq!(format!("{:?}", Percent::ZERO), "0.000000");
    }

    #[test]
    fn bad_text_is_rejected_not_rounded() {
        for text in ["", "-", ".5", "5.", "1e3", "1,5", "12.3.4", " 1", "--1"] {
            assert!(
                matches!(text.parse::<Amount>(), Err(DecimalError::Syntax { .. })),
                "{text:?}"
            );
        }
        assert!(matches!(
            "0.0000001".parse::<Amount>(),
            Err(DecimalError::TooManyFractionDigits { scale: 6, .. })
        ));
        assert!(matches!(
            "1000000000000".parse::<Amount>(),
            Err(DecimalError::OutOfRange { precision: 18 })
        ));
        assert!(matches!(
            "1000".parse::<Percent>(),
            Err(DecimalError::OutOfRange { precision: 9 })
        ));
        let huge = "9".repeat(60);
        assert!(matches!(
            huge.parse::<Quantity>(),
            Err(DecimalError::OutOfRange { precision: 24 })
        ));
    }

    #[test]
    fn arithmetic_stays_within_precision() {
        let max = Percent::from_unscaled(999_999_999).unwrap();
        let step = Percent::from_unscaled(1).unwrap();
        assert_eq!(max.checked_add(step), None);
        assert_eq!(
            max.checked_sub(step).map(Percent::unscaled),
            Some(999_999_998)
        );
        assert!(Percent::from_unscaled(-1_000_000_000).is_err());
    }

    #[test]
    fn encodes_at_the_length_apache_avro_requires() {
        assert_eq!(Percent::WIRE_BYTES, 4);
        assert_eq!(Amount::WIRE_BYTES, 8);
        assert_eq!(Quantity::WIRE_BYTES, 11);
        assert_eq!(UnitPrice::WIRE_BYTES, 11);
        let negative: Amount = "-12.345678".parse().unwrap();
        assert_eq!(
            apache_avro::to_value(negative).unwrap(),
            Value::Bytes(vec![0xff, 0xff, 0xff, 0xff, 0xff, 0x43, 0x9e, 0xb2])
        );
        let schema = Amount::get_schema_in_ctxt(&mut HashSet::new(), None);
        let resolved = apache_avro::to_value(negative)
            .unwrap()
            .resolve(&schema)
            .unwrap();
        assert_eq!(
            apache_avro::from_value::<Amount>(&resolved).unwrap(),
            negative
        );
    }

    #[test]
    fn decodes_any_length_that_other_writers_send() {
        let decode = |bytes: &[u8]| {
            apache_avro::from_value::<Amount>(&Value::Decimal(apache_avro::Decimal::from(bytes)))
        };
        // Shortest form, as Java's BigDecimal writes it.
        assert_eq!(
            decode(&[0x00, 0xbc, 0x61, 0x4e]).unwrap().unscaled(),
            12_345_678
        );
        assert_eq!(decode(&[0xff]).unwrap().unscaled(), -1);
        // Over-long sign extension is harmless; real excess digits are not.
        let mut long = vec![0xff; 20];
        long.push(0x85);
        assert_eq!(decode(&long).unwrap().unscaled(), -123);
        let mut wrapped = vec![0x00; 4];
        wrapped.extend([0x80; 16]);
        assert!(decode(&wrapped).is_err());
        assert!(decode(&[0x0d, 0xe0, 0xb6, 0xb3, 0xa7, 0x64, 0x00, 0x00]).is_err());
        assert!(decode(&[]).is_err());
    }

    #[test]
    fn json_round_trips_through_the_byte_sequence() {
        let price: UnitPrice = "0.000125000125".parse().unwrap();
        let json = serde_json::to_string(&price).unwrap();
        assert_eq!(serde_json::from_str::<UnitPrice>(&json).unwrap(), price);
    }
}
