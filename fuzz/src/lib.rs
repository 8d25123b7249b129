//! What the fuzz targets share: every contract type with the fixed schema id it is known
//! under, one codec that knows them all without a registry, and sample values for the seed
//! corpora.
//!
//! Contract `k` (in the order of [`CONTRACTS`]) is registered as id `FIRST_ID + k`; the same
//! contract with one extra optional field at the end, so that decoding goes through Avro
//! schema resolution as it does for a record written with a newer schema, is id
//! `EVOLVED_FIRST_ID + k`.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::OnceLock;

use apache_avro::schema::{Name, NamesRef, NamespaceRef, ResolvedSchema};
use apache_avro::types::Value;
use apache_avro::Schema;
use backbone_schemas::types::{self, Contract};
use backbone_schemas::wire::{encode_framed, WireError};
use backbone_schemas::WireCodec;

/// Schema id of the first contract.
pub const FIRST_ID: u32 = 1;

/// Schema id of the first contract's evolved writer schema.
pub const EVOLVED_FIRST_ID: u32 = 1001;

/// The field the evolved writer schemas add.
pub const EVOLVED_FIELD: &str = "fuzz_added";

/// One contract: its name, schema, and its decoder through the processors' path.
#[derive(Clone, Copy)]
pub struct ContractCase {
    /// Full Avro name.
    pub name: &'static str,
    /// The bundled schema values are written with.
    pub schema: fn() -> &'static Schema,
    /// Decodes a framed record as this contract through [`WireCodec::decode_cached_as`], as
    /// processors and sinks do, and checks that a decoded value encodes and decodes back to
    /// itself (re-encoded with the contract's own id, the second argument). Panics only when
    /// that round trip fails.
    pub decode: fn(&WireCodec, u32, &[u8]) -> Result<(), WireError>,
}

/// Decodes `framed` as `T`; a value that decodes must survive an encode/decode round trip.
fn decode_as<T: Contract + PartialEq + Debug>(
    codec: &WireCodec,
    own_id: u32,
    framed: &[u8],
) -> Result<(), WireError> {
    let value: T = codec.decode_cached_as(framed, T::schema())?;
    let encoded = encode_framed(own_id, &value)
        .unwrap_or_else(|e| panic!("{}: a decoded value does not encode: {e}", T::FULL_NAME));
    let back: T = codec
        .decode_cached_as(&encoded, T::schema())
        .unwrap_or_else(|e| {
            panic!(
                "{}: a decoded value, encoded again, does not decode: {e}",
                T::FULL_NAME
            )
        });
    assert_eq!(
        back,
        value,
        "{}: round trip changed the value",
        T::FULL_NAME
    );
    Ok(())
}

macro_rules! contract_cases {
    ($($ty:ident),* $(,)?) => {
        /// Every contract type of `backbone_schemas::types`.
        pub const CONTRACTS: &[ContractCase] = &[$(
            ContractCase {
                name: <types::$ty as Contract>::FULL_NAME,
                schema: <types::$ty as Contract>::schema,
                decode: decode_as::<types::$ty>,
            },
        )*];
    };
}

contract_cases!(
    EventMetadata,
    TraceContext,
    PostalAddress,
    CustomerAccount,
    Employee,
    GlMapping,
    LegalEntity,
    PriceTier,
    Product,
    RateCard,
    RateCharge,
    Subscription,
    Supplier,
    UsageEvent,
    EnrichedUsage,
    RatedUsage,
    UsageWindowAggregate,
    SalesOrder,
    SalesOrderLine,
    Invoice,
    InvoiceLine,
    BillingCharge,
    AccountHealthSnapshot,
    AnalyticsFact,
    JournalBatch,
    LedgerPosting,
    PostingLine,
    ControlTotal,
    DeliveryResult,
);

/// The schema id of contract `index`.
pub fn contract_id(index: usize) -> u32 {
    FIRST_ID + index as u32
}

/// The schema id of contract `index`'s evolved writer schema.
pub fn evolved_id(index: usize) -> u32 {
    EVOLVED_FIRST_ID + index as u32
}

/// A codec that knows every contract and evolved schema by its fixed id. Its registry URL
/// answers nothing: the targets decode from the cache only, as processors do.
pub fn codec() -> &'static WireCodec {
    static CODEC: OnceLock<WireCodec> = OnceLock::new();
    CODEC.get_or_init(|| {
        let codec = WireCodec::new("http://127.0.0.1:9");
        for (index, case) in CONTRACTS.iter().enumerate() {
            codec.preload(contract_id(index), (case.schema)().clone());
            codec.preload(evolved_id(index), evolved((case.schema)()));
        }
        codec
    })
}

/// `schema` with [`EVOLVED_FIELD`], an optional string defaulting to null, added at the end:
/// what a backward-compatible new version of a contract looks like.
pub fn evolved(schema: &Schema) -> Schema {
    let mut json = serde_json::to_value(schema).expect("a parsed schema serialises");
    let fields = json
        .get_mut("fields")
        .and_then(serde_json::Value::as_array_mut)
        .expect("contracts are records");
    fields.push(serde_json::json!({
        "name": EVOLVED_FIELD,
        "type": ["null", "string"],
        "default": null,
    }));
    Schema::parse(&json).expect("the evolved schema parses")
}

/// How a sample value fills optional parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// Null unions, empty arrays and maps.
    Minimal,
    /// The last union branch, two array items, one map entry.
    Full,
}

/// A value of `schema` that its contract type accepts: text fields named after the field,
/// small positive numbers and decimals, the first enum symbol.
pub fn sample(schema: &Schema, fill: Fill) -> Value {
    let resolved = ResolvedSchema::try_from(schema).expect("contracts resolve");
    sample_of(schema, resolved.get_names(), None, "x", fill)
}

fn sample_of(
    schema: &Schema,
    names: &NamesRef<'_>,
    namespace: NamespaceRef,
    label: &str,
    fill: Fill,
) -> Value {
    let items = match fill {
        Fill::Minimal => 0,
        Fill::Full => 2,
    };
    match schema {
        Schema::Null => Value::Null,
        Schema::Boolean => Value::Boolean(fill == Fill::Full),
        Schema::Int => Value::Int(7),
        Schema::Long => Value::Long(42),
        Schema::Float => Value::Float(1.5),
        Schema::Double => Value::Double(2.5),
        Schema::Bytes => Value::Bytes(label.as_bytes().to_vec()),
        Schema::String => Value::String(label.to_owned()),
        Schema::Date => Value::Date(20_600),
        Schema::TimestampMicros => Value::TimestampMicros(1_790_000_000_000_000),
        Schema::TimestampMillis => Value::TimestampMillis(1_790_000_000_000),
        Schema::Decimal(decimal) => {
            // 12.5 at the schema's scale, in the fewest bytes its precision needs.
            let unscaled = 125i128 * 10i128.pow(decimal.scale.saturating_sub(1) as u32);
            let mut len = 1;
            while len < 16
                && (1i128 << (8 * len - 1)) - 1 < 10i128.pow(decimal.precision as u32) - 1
            {
                len += 1;
            }
            Value::Decimal(unscaled.to_be_bytes()[16 - len..].to_vec().into())
        }
        Schema::Array(array) => Value::Array(
            (0..items)
                .map(|i| {
                    sample_of(
                        &array.items,
                        names,
                        namespace,
                        &format!("{label}-{i}"),
                        fill,
                    )
                })
                .collect(),
        ),
        // One entry at most: apache-avro writes a map in its hash order, which differs from
        // run to run, and seeds should not.
        Schema::Map(map) => Value::Map(
            (0..items.min(1))
                .map(|i| {
                    let key = format!("{label}-{i}");
                    let value = sample_of(&map.types, names, namespace, &key, fill);
                    (key, value)
                })
                .collect::<HashMap<_, _>>(),
        ),
        Schema::Union(union) => {
            let variants = union.variants();
            let index = match fill {
                Fill::Minimal => 0,
                Fill::Full => variants.len() - 1,
            };
            Value::Union(
                index as u32,
                Box::new(sample_of(&variants[index], names, namespace, label, fill)),
            )
        }
        Schema::Record(record) => Value::Record(
            record
                .fields
                .iter()
                .map(|field| {
                    let value = sample_of(
                        &field.schema,
                        names,
                        record.name.namespace(),
                        &field.name,
                        fill,
                    );
                    (field.name.clone(), value)
                })
                .collect(),
        ),
        Schema::Enum(enumeration) => Value::Enum(0, enumeration.symbols[0].clone()),
        Schema::Fixed(fixed) => Value::Fixed(fixed.size, vec![0; fixed.size]),
        Schema::Ref { name } => {
            let full: Name = name.fully_qualified_name(namespace).into_owned();
            let target = names
                .get(&full)
                .unwrap_or_else(|| panic!("reference to unknown type {full}"));
            sample_of(target, names, full.namespace(), label, fill)
        }
        other => panic!("no sample for schema {other:?}; extend `sample_of`"),
    }
}
