//! The Confluent wire format: magic byte 0, a 4-byte big-endian schema id, then the Avro
//! body. The codec resolves ids through the registry once and caches them, so there is no
//! registry round trip per record.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, OnceLock, RwLock};

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;

use crate::access::RegistryAccess;
use crate::contracts::ContractSet;
use crate::registry::RegistryClient;
use crate::types::Contract;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// How long the codec waits for one registry answer; an outage is retried by the runtime.
const REGISTRY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A decoded value shared by [`WireCodec::decode_shared`].
type SharedValue = Arc<dyn Any + Send + Sync>;

/// Decoded values by type, then by exact bytes.
type SharedMemo = HashMap<TypeId, HashMap<Vec<u8>, SharedValue>>;

/// How many decoded records [`WireCodec::decode_shared`] keeps.
pub const SHARED_CAPACITY: usize = 10_000;

/// The first byte of every framed record.
pub const MAGIC_BYTE: u8 = 0;

/// The most the Avro decoder may allocate for one string, bytes value or collection of a
/// record: 16 MiB, sixteen times Kafka's default largest record (1 MiB). No string can be
/// longer than its record, and an array of the smallest items of the largest record still
/// fits, so a length beyond it is corrupt data: the body is undecodable. apache-avro's own
/// default, 512 MiB, let a 10-byte record allocate hundreds of megabytes (found by the
/// `wire_frame` and `contract_decode` fuzz targets).
pub const MAX_ALLOCATION_BYTES: usize = 16 * 1024 * 1024;

/// Makes [`MAX_ALLOCATION_BYTES`] apache-avro's allocation limit. apache-avro keeps the first
/// limit set in a process, and its first decode sets the default if none was set, so every
/// decode here calls this first; after the first call it is one atomic read.
fn limit_allocations() {
    apache_avro::util::max_allocation_bytes(MAX_ALLOCATION_BYTES);
}

/// Why a record could not be framed, encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Shorter than the 5-byte header.
    #[error("record of {len} bytes is too short for the 5-byte wire-format header")]
    TooShort {
        /// Its length.
        len: usize,
    },
    /// The first byte is not 0.
    #[error("wrong magic byte {found:#04x}: not Confluent wire format")]
    WrongMagicByte {
        /// The byte found.
        found: u8,
    },
    /// The registry has no schema with this id.
    #[error("schema id {id} is unknown to the registry")]
    UnknownSchemaId {
        /// The id.
        id: u32,
    },
    /// The registry could not be asked (transient).
    #[error("schema registry: {message}")]
    Registry {
        /// What failed.
        message: String,
        /// Whether trying again may help.
        retriable: bool,
    },
    /// The body does not decode with the writer schema.
    #[error("body does not decode with schema id {id}: {message}")]
    Body {
        /// Writer schema id.
        id: u32,
        /// Why.
        message: String,
    },
    /// The decoded value does not fit the Rust type, or a value does not fit its schema.
    #[error("value does not match the contract: {message}")]
    Contract {
        /// Why.
        message: String,
    },
}

impl WireError {
    /// Whether the same record may decode later (registry unreachable), as opposed to never.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Registry {
                retriable: true,
                ..
            }
        )
    }

    /// The dead-letter reason for this error, from a fixed set.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooShort { .. } => "truncated_record",
            Self::WrongMagicByte { .. } => "wrong_magic_byte",
            Self::UnknownSchemaId { .. } => "unknown_schema_id",
            Self::Registry { .. } => "registry_unavailable",
            Self::Body { .. } => "undecodable_body",
            Self::Contract { .. } => "contract_violation",
        }
    }
}

impl WireCodec {
    /// Makes sure the schema of `value` (and of any id a synchronous decode missed) is cached,
    /// so that processors can decode synchronously. A value that is not wire format is left to
    /// the decode that follows; only a transient registry failure or the value's own unknown
    /// schema is an error.
    pub async fn resolve(&self, value: Option<&[u8]>) -> Result<(), WireError> {
        // Ids that a synchronous decode missed (a record read from state, say) first.
        let wanted: Vec<u32> = self
            .wanted
            .lock()
            .map(|mut w| w.drain().collect())
            .unwrap_or_default();
        for id in wanted {
            match self.schema(id).await {
                Ok(_) => {}
                Err(err) if err.is_transient() => return Err(err),
                // Not this input's fault: the decode that wanted it fails permanently.
                Err(_) => {
                    if let Ok(mut missing) = self.missing.lock() {
                        missing.insert(id);
                    }
                }
            }
        }
        let Some(Ok((id, _))) = value.map(split_frame) else {
            return Ok(());
        };
        self.schema(id).await.map(|_| ())
    }
}

/// Parses the text of schema `id` as the registry gave it. apache-avro 0.22 panics on some
/// schemas instead of refusing them (explaining an invalid default, it takes a canonical form
/// that panics on attributes named like keywords); any registry may hold one, and a panic here
/// would stop the processor on every record written with it, so it is a refusal.
fn parse_registered(id: u32, text: &str) -> Result<Schema, WireError> {
    let invalid = |message: String| WireError::Registry {
        message: format!("schema {id} from the registry is not valid Avro: {message}"),
        retriable: false,
    };
    std::panic::catch_unwind(|| Schema::parse_str(text))
        .map_err(|_| invalid("the Avro parser failed on it".to_owned()))?
        .map_err(|e| invalid(e.to_string()))
}

/// Splits a framed record into schema id and Avro body.
pub fn split_frame(bytes: &[u8]) -> Result<(u32, &[u8]), WireError> {
    match bytes {
        [MAGIC_BYTE, a, b, c, d, body @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), body)),
        [found, _, _, _, _, ..] => Err(WireError::WrongMagicByte { found: *found }),
        short => Err(WireError::TooShort { len: short.len() }),
    }
}

/// Frames an Avro body with its schema id.
pub fn frame(id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(MAGIC_BYTE);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Decodes an Avro body written with `writer`, requiring that every byte is used and that
/// the decoder never ran out of bytes.
pub fn decode_body(id: u32, writer: &Schema, body: &[u8]) -> Result<Value, WireError> {
    let datum = GenericDatumReader::builder(writer)
        .build()
        .map_err(|e| WireError::Body {
            id,
            message: e.to_string(),
        })?;
    read_body(id, &datum, body)
}

/// [`decode_body`] with a reader built beforehand.
fn read_body(id: u32, datum: &GenericDatumReader<'_>, body: &[u8]) -> Result<Value, WireError> {
    limit_allocations();
    let body_error = |message: String| WireError::Body { id, message };
    let mut reader = BodyReader {
        body,
        position: 0,
        ran_out: false,
    };
    let value = datum
        .read_value(&mut reader)
        .map_err(|e| body_error(e.to_string()))?;
    // apache-avro reads a union index at the end of the input as branch 0 instead of failing,
    // so a body cut just before a trailing union would pass unnoticed without this check.
    if reader.ran_out {
        return Err(body_error(
            "body ends in the middle of the record".to_owned(),
        ));
    }
    if reader.position != body.len() {
        return Err(body_error(format!(
            "{} trailing bytes after the record",
            body.len() - reader.position
        )));
    }
    Ok(value)
}

/// Sign-extends every decimal to 16 bytes. Avro writers send the shortest two's complement
/// form, but apache-avro's schema resolution refuses decimal bytes shorter than the reader's
/// precision could need; 16 bytes hold any precision up to 38 and leave the value unchanged.
pub fn widen_decimals(value: Value) -> Value {
    match value {
        Value::Decimal(decimal) => {
            let bytes: Vec<u8> = Vec::try_from(&decimal).unwrap_or_default();
            if bytes.is_empty() || bytes.len() >= 16 {
                return Value::Decimal(decimal);
            }
            let fill = if bytes[0] & 0x80 == 0 { 0x00 } else { 0xff };
            let mut wide = vec![fill; 16 - bytes.len()];
            wide.extend_from_slice(&bytes);
            Value::Decimal(wide.into())
        }
        Value::Union(index, inner) => Value::Union(index, Box::new(widen_decimals(*inner))),
        Value::Record(fields) => Value::Record(
            fields
                .into_iter()
                .map(|(name, v)| (name, widen_decimals(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(widen_decimals).collect()),
        Value::Map(entries) => Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (k, widen_decimals(v)))
                .collect(),
        ),
        other => other,
    }
}

/// Reads a body and remembers whether the decoder asked for more than there was.
struct BodyReader<'a> {
    body: &'a [u8],
    position: usize,
    ran_out: bool,
}

impl Read for BodyReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let rest = self.body.get(self.position..).unwrap_or_default();
        if rest.is_empty() && !buf.is_empty() {
            self.ran_out = true;
            return Ok(0);
        }
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.position += n;
        Ok(n)
    }
}

/// Encodes an Avro value with `schema` (no framing).
pub fn encode_body(schema: &Schema, value: Value) -> Result<Vec<u8>, WireError> {
    GenericDatumWriter::builder(schema)
        .build()
        .and_then(|writer| writer.write_value_to_vec(value))
        .map_err(|e| WireError::Contract {
            message: e.to_string(),
        })
}

/// Encodes `value` with its contract's schema, registered as `id`, as a framed record.
pub fn encode_framed<T: Contract>(id: u32, value: &T) -> Result<Vec<u8>, WireError> {
    // Serialized straight into Avro by the schema, without an intermediate `Value`.
    let mut out = Vec::with_capacity(256);
    out.push(MAGIC_BYTE);
    out.extend_from_slice(&id.to_be_bytes());
    contract_writer(T::schema())?
        .write_ser(&mut out, value)
        .map_err(|e| WireError::Contract {
            message: e.to_string(),
        })?;
    Ok(out)
}

/// The datum writer of a contract's schema, built once per process. Building one resolves every
/// named type in the schema, which costs more than encoding a record; there is one per contract
/// type, so keeping them for the life of the process is bounded.
fn contract_writer(
    schema: &'static Schema,
) -> Result<&'static GenericDatumWriter<'static>, WireError> {
    static WRITERS: OnceLock<RwLock<HashMap<usize, &'static GenericDatumWriter<'static>>>> =
        OnceLock::new();
    let writers = WRITERS.get_or_init(RwLock::default);
    let key = std::ptr::from_ref(schema) as usize;
    if let Some(writer) = writers.read().ok().and_then(|w| w.get(&key).copied()) {
        return Ok(writer);
    }
    let writer = GenericDatumWriter::builder(schema)
        .build()
        .map_err(|e| WireError::Contract {
            message: e.to_string(),
        })?;
    let writer: &'static GenericDatumWriter<'static> = Box::leak(Box::new(writer));
    if let Ok(mut cache) = writers.write() {
        cache.insert(key, writer);
    }
    Ok(writer)
}

/// Encodes and decodes framed records, resolving schema ids through a registry.
#[derive(Clone)]
pub struct WireCodec {
    registry: RegistryClient,
    by_id: Arc<RwLock<HashMap<u32, Arc<Schema>>>>,
    by_subject: Arc<RwLock<HashMap<(String, String), u32>>>,
    /// (subject, contract name) to id, so that a contract is bundled once per subject.
    by_contract: Arc<RwLock<HashMap<(String, &'static str), u32>>>,
    /// (schema id, reader schema address) to whether they are the same schema.
    same: Arc<RwLock<HashMap<(u32, usize), bool>>>,
    /// Datum readers by writer schema id, built once (see [`WireCodec::datum_reader`]).
    readers: Arc<RwLock<HashMap<u32, &'static GenericDatumReader<'static>>>>,
    /// Decoded reference data by type and exact bytes (see [`WireCodec::decode_shared`]).
    shared: Arc<RwLock<SharedMemo>>,
    /// Ids a cache-only decode missed, for the next prefetch to resolve.
    wanted: Arc<std::sync::Mutex<std::collections::HashSet<u32>>>,
    /// Wanted ids the registry does not know.
    missing: Arc<std::sync::Mutex<std::collections::HashSet<u32>>>,
}

impl std::fmt::Debug for WireCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireCodec").finish_non_exhaustive()
    }
}

impl WireCodec {
    /// A codec using the registry `access` names (a URL converts).
    pub fn new(access: impl Into<RegistryAccess>) -> Self {
        limit_allocations();
        Self {
            registry: RegistryClient::new(access, REGISTRY_TIMEOUT),
            by_id: Arc::default(),
            by_subject: Arc::default(),
            by_contract: Arc::default(),
            same: Arc::default(),
            readers: Arc::default(),
            shared: Arc::default(),
            wanted: Arc::default(),
            missing: Arc::default(),
        }
    }

    /// The writer schema of `id`, from the cache or, once, from the registry.
    pub async fn schema(&self, id: u32) -> Result<Arc<Schema>, WireError> {
        if let Some(schema) = self.by_id.read().ok().and_then(|c| c.get(&id).cloned()) {
            return Ok(schema);
        }
        let text = self
            .registry
            .schema_by_id(id)
            .await
            .map_err(|e| WireError::Registry {
                // Only a 404 without the registry's own code is an answer to give up on.
                retriable: e.status() != Some(404),
                message: e.to_string(),
            })?
            .ok_or(WireError::UnknownSchemaId { id })?;
        let schema = Arc::new(parse_registered(id, &text)?);
        if let Ok(mut cache) = self.by_id.write() {
            cache.insert(id, Arc::clone(&schema));
        }
        Ok(schema)
    }

    /// The id of `schema` under `subject`, registering it once if needed.
    pub async fn register(&self, subject: &str, schema: &Schema) -> Result<u32, WireError> {
        let json = serde_json::to_string(schema).map_err(|e| WireError::Contract {
            message: e.to_string(),
        })?;
        self.register_text(subject, &json, schema).await
    }

    /// The id of the schema `text` (which parses to `schema`) under `subject`, registering it
    /// once if needed. Registering a contract's bundled text gives the same id as
    /// `contracts register`.
    pub async fn register_text(
        &self,
        subject: &str,
        text: &str,
        schema: &Schema,
    ) -> Result<u32, WireError> {
        let key = (subject.to_owned(), text.to_owned());
        if let Some(id) = self
            .by_subject
            .read()
            .ok()
            .and_then(|c| c.get(&key).copied())
        {
            return Ok(id);
        }
        let id = self
            .registry
            .register(subject, text)
            .await
            .map_err(|e| WireError::Registry {
                retriable: e.is_transient(),
                message: format!("registering under `{subject}`: {e}"),
            })?;
        if let Ok(mut cache) = self.by_subject.write() {
            cache.insert(key, id);
        }
        if let Ok(mut cache) = self.by_id.write() {
            cache.insert(id, Arc::new(schema.clone()));
        }
        Ok(id)
    }

    /// Encodes a contract value as a framed record, its bundled contract registered under
    /// `subject` (the same schema text `contracts register` uses).
    pub async fn encode_contract<T: Contract>(
        &self,
        subject: &str,
        value: &T,
    ) -> Result<Vec<u8>, WireError> {
        let id = self.contract_id::<T>(subject).await?;
        encode_framed(id, value)
    }

    /// The id of `T`'s bundled contract under `subject`, registering it once if needed; later
    /// calls answer from the cache.
    pub async fn contract_id<T: Contract>(&self, subject: &str) -> Result<u32, WireError> {
        let key = (subject.to_owned(), T::FULL_NAME);
        if let Some(id) = self
            .by_contract
            .read()
            .ok()
            .and_then(|c| c.get(&key).copied())
        {
            return Ok(id);
        }
        let text = ContractSet::embedded()
            .and_then(|set| set.bundled(T::FULL_NAME))
            .map_err(|e| WireError::Contract {
                message: e.to_string(),
            })?
            .to_string();
        let id = self.register_text(subject, &text, T::schema()).await?;
        if let Ok(mut cache) = self.by_contract.write() {
            cache.insert(key, id);
        }
        Ok(id)
    }

    /// Caches `schema` as the writer schema of `id` without asking the registry: for tools and
    /// benchmarks that know the schema already.
    pub fn preload(&self, id: u32, schema: Schema) {
        if let Ok(mut cache) = self.by_id.write() {
            cache.insert(id, Arc::new(schema));
        }
    }

    /// The writer schema of `id` if it is cached already; never asks the registry.
    pub fn cached_schema(&self, id: u32) -> Option<Arc<Schema>> {
        self.by_id.read().ok().and_then(|c| c.get(&id).cloned())
    }

    /// Like [`WireCodec::decode_as`], from the cache only: for synchronous processors whose
    /// runtime resolved the id beforehand (see the `Prefetch` impl). An id not cached yet is an
    /// outage the runtime retries; the id is remembered, so the next prefetch resolves it even
    /// when the bytes came from state rather than from the input.
    pub fn decode_cached_as<T: DeserializeOwned>(
        &self,
        bytes: &[u8],
        reader: &Schema,
    ) -> Result<T, WireError> {
        let (id, body) = split_frame(bytes)?;
        let Some(writer) = self.cached_schema(id) else {
            if self.missing.lock().is_ok_and(|m| m.contains(&id)) {
                return Err(WireError::UnknownSchemaId { id });
            }
            // The runtime's next prefetch resolves it; the record is retried after that.
            if let Ok(mut wanted) = self.wanted.lock() {
                wanted.insert(id);
            }
            return Err(WireError::Registry {
                message: format!("schema id {id} has not been resolved yet"),
                retriable: true,
            });
        };
        self.read_as(id, &writer, body, reader)
    }

    /// Like [`WireCodec::decode_cached_as`], for reference data that a processor reads again and
    /// again (an account, a rate card, a GL mapping): each distinct record is decoded once and
    /// shared. Keyed by the exact bytes, so a new version of the record is decoded anew; a
    /// type's memo is emptied when it reaches [`SHARED_CAPACITY`] records.
    pub fn decode_shared<T: DeserializeOwned + Send + Sync + 'static>(
        &self,
        bytes: &[u8],
        reader: &Schema,
    ) -> Result<Arc<T>, WireError> {
        let kind = TypeId::of::<T>();
        // Looked up by borrowed bytes: a hit, the common case, allocates nothing.
        let cached = self.shared.read().ok().and_then(|m| {
            m.get(&kind)
                .and_then(|by_bytes| by_bytes.get(bytes))
                .cloned()
        });
        if let Some(value) = cached.and_then(|v| v.downcast::<T>().ok()) {
            return Ok(value);
        }
        let value: Arc<T> = Arc::new(self.decode_cached_as(bytes, reader)?);
        if let Ok(mut memo) = self.shared.write() {
            let by_bytes = memo.entry(kind).or_default();
            if by_bytes.len() >= SHARED_CAPACITY {
                by_bytes.clear();
            }
            by_bytes.insert(bytes.to_vec(), Arc::clone(&value) as SharedValue);
        }
        Ok(value)
    }

    /// Decodes `body`, written with schema `id` (`writer`), into `T` through `reader`.
    fn read_as<T: DeserializeOwned>(
        &self,
        id: u32,
        writer: &Schema,
        body: &[u8],
        reader: &Schema,
    ) -> Result<T, WireError> {
        let value = widen_decimals(read_body(id, self.datum_reader(id, writer)?, body)?);
        // A value written with the reader's own schema already has its shape: resolving it
        // again would only cost time.
        let value = if self.is_reader_schema(id, writer, reader) {
            value
        } else {
            value.resolve(reader).map_err(|e| WireError::Contract {
                message: format!("schema id {id} does not resolve to the reader contract: {e}"),
            })?
        };
        apache_avro::from_value(&value).map_err(|e| WireError::Contract {
            message: e.to_string(),
        })
    }

    /// The datum reader of writer schema `id`. Building one resolves every named type of the
    /// schema, which costs more than decoding a record, so it is built once per id and kept for
    /// the life of the process, with a copy of its schema: a process meets few schema ids.
    fn datum_reader(
        &self,
        id: u32,
        writer: &Schema,
    ) -> Result<&'static GenericDatumReader<'static>, WireError> {
        if let Some(reader) = self.readers.read().ok().and_then(|r| r.get(&id).copied()) {
            return Ok(reader);
        }
        let schema: &'static Schema = Box::leak(Box::new(writer.clone()));
        let reader = GenericDatumReader::builder(schema)
            .build()
            .map_err(|e| WireError::Body {
                id,
                message: e.to_string(),
            })?;
        let reader: &'static GenericDatumReader<'static> = Box::leak(Box::new(reader));
        if let Ok(mut cache) = self.readers.write() {
            cache.insert(id, reader);
        }
        Ok(reader)
    }

    /// Whether schema `id` (`writer`) is the same schema as `reader`, compared once per pair,
    /// type by type and field by field (apache-avro's default schema equality). Not by
    /// canonical form: `Schema::canonical_form` panics on custom attributes that are named like
    /// schema keywords (`"symbols": null` on a field), which any registered schema may carry.
    fn is_reader_schema(&self, id: u32, writer: &Schema, reader: &Schema) -> bool {
        let pair = (id, std::ptr::from_ref(reader) as usize);
        if let Some(same) = self.same.read().ok().and_then(|c| c.get(&pair).copied()) {
            return same;
        }
        let same = writer == reader;
        if let Ok(mut cache) = self.same.write() {
            cache.insert(pair, same);
        }
        same
    }

    /// Decodes a framed record to its schema id and Avro value.
    pub async fn decode(&self, bytes: &[u8]) -> Result<(u32, Value), WireError> {
        let (id, body) = split_frame(bytes)?;
        let writer = self.schema(id).await?;
        Ok((id, decode_body(id, &writer, body)?))
    }

    /// Decodes a framed record into `T`, resolving the writer schema against `reader`.
    pub async fn decode_as<T: DeserializeOwned>(
        &self,
        bytes: &[u8],
        reader: &Schema,
    ) -> Result<T, WireError> {
        let (id, body) = split_frame(bytes)?;
        let writer = self.schema(id).await?;
        self.read_as(id, &writer, body, reader)
    }

    /// Encodes `value` with `schema`, registered under `subject`, as a framed record.
    pub async fn encode<T: Serialize>(
        &self,
        subject: &str,
        schema: &Schema,
        value: &T,
    ) -> Result<Vec<u8>, WireError> {
        let id = self.register(subject, schema).await?;
        let avro = apache_avro::to_value(value).map_err(|e| WireError::Contract {
            message: e.to_string(),
        })?;
        let avro = avro.resolve(schema).map_err(|e| WireError::Contract {
            message: e.to_string(),
        })?;
        let body = encode_body(schema, avro)?;
        Ok(frame(id, &body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage_event(quantity: &str, optional: bool) -> crate::types::UsageEvent {
        use crate::types::{EventMetadata, TraceContext, UsageEvent};
        UsageEvent {
            metadata: EventMetadata {
                tenant_id: "acme".into(),
                event_id: "e-1".into(),
                source: "api-gateway".into(),
                r#type: "usage.recorded".into(),
                occurred_at: 1_790_000_000_000_000,
                produced_at: 1_790_000_000_100_000,
                trace: TraceContext {
                    traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
                    tracestate: optional.then(|| "vendor=1".into()),
                },
                schema_version: optional.then_some(3),
            },
            customer_id: "c-9".into(),
            subscription_id: optional.then(|| "sub-1".into()),
            meter_id: "api_calls".into(),
            quantity: quantity.parse().expect("quantity"),
            unit: "call".into(),
            dimensions: optional.then(|| [("region".to_owned(), "eu".to_owned())].into()),
            unique_value: optional.then(|| "user-7".into()),
        }
    }

    #[test]
    fn direct_encoding_matches_the_value_path_byte_for_byte() {
        use crate::types::{Contract, UsageEvent};
        for (quantity, optional) in [("12.5", true), ("-0.000001", false), ("0", true)] {
            let event = usage_event(quantity, optional);
            let via_value = frame(
                7,
                &encode_body(UsageEvent::schema(), event.to_avro().expect("to avro"))
                    .expect("body"),
            );
            let direct = encode_framed(7, &event).expect("direct");
            assert_eq!(direct, via_value, "{quantity} {optional}");
            let (id, body) = split_frame(&direct).expect("frame");
            let decoded = decode_body(id, UsageEvent::schema(), body).expect("decode");
            let back = UsageEvent::from_avro(&widen_decimals(decoded)).expect("from avro");
            assert_eq!(back, event);
        }
    }

    #[test]
    fn shared_decodes_once_per_distinct_record_and_follows_new_versions() {
        use crate::types::{Contract, UsageEvent};
        let codec = WireCodec::new("http://127.0.0.1:9");
        codec.preload(7, UsageEvent::schema().clone());
        let first = encode_framed(7, &usage_event("1", true)).expect("encode");
        let second = encode_framed(7, &usage_event("2", true)).expect("encode");
        let a = codec
            .decode_shared::<UsageEvent>(&first, UsageEvent::schema())
            .expect("decode");
        let again = codec
            .decode_shared::<UsageEvent>(&first, UsageEvent::schema())
            .expect("decode");
        assert!(Arc::ptr_eq(&a, &again), "the same bytes are decoded once");
        let b = codec
            .decode_shared::<UsageEvent>(&second, UsageEvent::schema())
            .expect("decode");
        assert_eq!(
            b.quantity.to_string(),
            "2.000000000",
            "a new version is decoded anew"
        );
        assert_eq!(*a, usage_event("1", true));
    }

    #[test]
    fn frames_round_trip_and_bad_headers_are_typed() {
        let framed = frame(258, b"body");
        assert_eq!(&framed[..5], &[0, 0, 0, 1, 2]);
        assert_eq!(split_frame(&framed).unwrap(), (258, &b"body"[..]));
        assert!(matches!(
            split_frame(&[1, 0, 0, 0, 1]),
            Err(WireError::WrongMagicByte { found: 1 })
        ));
        assert!(matches!(
            split_frame(&[0, 0, 0]),
            Err(WireError::TooShort { len: 3 })
        ));
        assert!(matches!(
            split_frame(&[]),
            Err(WireError::TooShort { len: 0 })
        ));
        assert_eq!(split_frame(&[0, 0, 0, 0, 9]).unwrap(), (9, &[][..]));
    }

    #[test]
    fn short_decimals_from_other_writers_resolve() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"P","fields":[{"name":"price","type":{"type":"bytes","logicalType":"decimal","precision":18,"scale":4}}]}"#,
        )
        .unwrap();
        // 1234.5600 at scale 4 in its shortest form, as other Avro writers send it.
        let short = Value::Record(vec![(
            "price".into(),
            Value::Decimal(vec![0x00, 0xbc, 0x61, 0x00].into()),
        )]);
        assert!(
            short.clone().resolve(&schema).is_err(),
            "apache-avro still refuses short decimals"
        );
        let widened = widen_decimals(short).resolve(&schema).unwrap();
        let Value::Record(fields) = widened else {
            panic!("record")
        };
        let Value::Decimal(price) = &fields[0].1 else {
            panic!("decimal")
        };
        let bytes: Vec<u8> = Vec::try_from(price).unwrap();
        assert_eq!(bytes.len(), 16);
        assert_eq!(&bytes[12..], &[0x00, 0xbc, 0x61, 0x00]);
        let negative = widen_decimals(Value::Decimal(vec![0xff, 0x38].into()));
        let Value::Decimal(n) = negative else {
            panic!("decimal")
        };
        assert_eq!(Vec::<u8>::try_from(&n).unwrap()[..14], [0xff; 14]);
    }

    /// Asserts that `result` is an undecodable body refused by the allocation limit.
    fn refused_by_the_allocation_limit<T: std::fmt::Debug>(result: Result<T, WireError>) {
        match result {
            Err(WireError::Body { message, .. }) => assert!(
                message.contains(&format!("maximum allowed: {MAX_ALLOCATION_BYTES}")),
                "{message}"
            ),
            other => panic!("expected an undecodable body, got {other:?}"),
        }
    }

    #[test]
    fn lengths_beyond_the_allocation_limit_are_undecodable_not_allocated() {
        use crate::types::{Contract, PriceTier, TraceContext};
        // fuzz/artifacts/wire_frame/oom-3d4c5efb…: a TraceContext whose traceparent declares
        // about 400 MB, which apache-avro's default limit (512 MiB) let it allocate.
        let framed = [0, 0, 0, 255, 0, 254, 255, 255, 251, 2, 0];
        let (id, body) = split_frame(&framed).expect("frame");
        refused_by_the_allocation_limit(decode_body(id, TraceContext::schema(), body));
        // fuzz/artifacts/contract_decode/oom-…: a PriceTier whose up_to decimal declares
        // 277 MB, through the processors' decode path.
        let codec = WireCodec::new("http://127.0.0.1:9");
        codec.preload(8, PriceTier::schema().clone());
        let framed = frame(8, &[2, 136, 136, 136, 136, 2, 0, 0, 0, 0, 0, 0, 0]);
        refused_by_the_allocation_limit(
            codec.decode_cached_as::<PriceTier>(&framed, PriceTier::schema()),
        );
        // A declared length just past the limit is refused; a record as large as Kafka
        // allows by default still decodes.
        codec.preload(2, TraceContext::schema().clone());
        let too_long = (MAX_ALLOCATION_BYTES as i64 + 1) << 1;
        let mut varint = Vec::new();
        let mut rest = too_long as u64;
        while rest >= 0x80 {
            varint.push((rest as u8) | 0x80);
            rest >>= 7;
        }
        varint.push(rest as u8);
        refused_by_the_allocation_limit(
            codec.decode_cached_as::<TraceContext>(&frame(2, &varint), TraceContext::schema()),
        );
        let large = TraceContext {
            traceparent: "x".repeat(1024 * 1024),
            tracestate: None,
        };
        let framed = encode_framed(2, &large).expect("encode");
        let decoded: TraceContext = codec
            .decode_cached_as(&framed, TraceContext::schema())
            .expect("a 1 MiB record decodes");
        assert_eq!(decoded, large);
    }

    #[test]
    fn a_writer_schema_with_odd_field_attributes_decodes_without_a_panic() {
        use crate::types::{Contract, TraceContext};
        // Found by the registry_request fuzz target: a field attribute named like a schema
        // keyword (`"symbols": null`) is a custom attribute the registry accepts, and on which
        // apache-avro's canonical form panics. A record written with such a schema must
        // decode, not stop the processor.
        let mut json = serde_json::to_value(TraceContext::schema()).expect("schema json");
        json["fields"][0]["symbols"] = serde_json::Value::Null;
        let odd = Schema::parse(&json).expect("the registry accepts it");
        let codec = WireCodec::new("http://127.0.0.1:9");
        codec.preload(4, odd);
        let value = TraceContext {
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            tracestate: Some("vendor=1".into()),
        };
        let (_, body) = split_frame(&encode_framed(4, &value).expect("encode"))
            .map(|(id, body)| (id, body.to_vec()))
            .expect("frame");
        let decoded: TraceContext = codec
            .decode_cached_as(&frame(4, &body), TraceContext::schema())
            .expect("decodes");
        assert_eq!(decoded, value);
        // The comparison still finds the contract itself, as the registry gives it back, to
        // be the reader's schema (so decoding skips resolution), and a renamed field not.
        let text = serde_json::to_string(TraceContext::schema()).expect("schema text");
        let fetched = Schema::parse_str(&text).expect("parses");
        assert!(codec.is_reader_schema(5, &fetched, TraceContext::schema()));
        let mut json = serde_json::to_value(TraceContext::schema()).expect("schema json");
        json["fields"][1]["name"] = "renamed".into();
        let renamed = Schema::parse(&json).expect("parses");
        assert!(!codec.is_reader_schema(6, &renamed, TraceContext::schema()));
    }

    #[test]
    fn a_symbol_the_reader_does_not_know_reads_as_the_enum_default() {
        use crate::types::{AccountStatus, Contract, CustomerAccount, EventMetadata, TraceContext};
        // A newer writer added ARCHIVED to the account status.
        let mut json = serde_json::to_value(CustomerAccount::schema()).expect("schema json");
        let fields = json["fields"].as_array_mut().expect("fields");
        let status = fields
            .iter_mut()
            .find(|f| f["name"] == "status")
            .expect("status field");
        status["type"]["symbols"]
            .as_array_mut()
            .expect("symbols")
            .push("ARCHIVED".into());
        let newer = Schema::parse(&json).expect("newer schema");
        let account = CustomerAccount {
            metadata: EventMetadata {
                tenant_id: "acme".into(),
                event_id: "a-1".into(),
                source: "crm".into(),
                r#type: "backbone.master.customer_account".into(),
                occurred_at: 1,
                produced_at: 1,
                trace: TraceContext {
                    traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
                    tracestate: None,
                },
                schema_version: None,
            },
            customer_id: "c-1".into(),
            name: "Acme".into(),
            status: AccountStatus::Active,
            currency: "EUR".into(),
            legal_entity_id: "le-eu".into(),
            country_code: "IE".into(),
            billing_contact_name: None,
            billing_email: None,
            billing_address: None,
            tax_id: None,
            crm_account_id: None,
            erp_customer_id: None,
        };
        let Value::Record(mut values) = account.to_avro().expect("to avro") else {
            panic!("a record")
        };
        for (name, value) in &mut values {
            if name == "status" {
                *value = Value::Enum(4, "ARCHIVED".into());
            }
        }
        let body = encode_body(&newer, Value::Record(values)).expect("encode");
        let codec = WireCodec::new("http://127.0.0.1:9");
        codec.preload(9, newer);
        let read: CustomerAccount = codec
            .decode_cached_as(&frame(9, &body), CustomerAccount::schema())
            .expect("resolves");
        assert_eq!(read.status, AccountStatus::Unknown);
        assert_eq!(read.customer_id, "c-1");
    }

    #[test]
    fn a_registered_schema_the_avro_parser_panics_on_is_refused() {
        // Found by the registry_request fuzz target: an invalid default of a field whose type
        // has a field carrying `"symbols": null` makes apache-avro panic while parsing.
        let text = r#"{"type":"record","name":"R","fields":[{"name":"a","default":1,"type":{"type":"record","name":"S","fields":[{"name":"x","type":"string","symbols":null}]}}]}"#;
        let err = parse_registered(12, text).expect_err("refused");
        assert!(!err.is_transient(), "{err}");
        assert!(err.to_string().contains("schema 12"), "{err}");
        assert!(parse_registered(13, r#""string""#).is_ok());
    }

    #[test]
    fn an_empty_decimal_is_a_contract_violation() {
        use crate::types::{Contract, ControlTotal};
        // Found by the wire_frame fuzz target: apache-avro decodes a decimal of zero bytes
        // (and then refuses to encode it); decoding into the contract type refuses it.
        let body = [6, b'E', b'U', b'R', 4, 0, 0];
        assert!(decode_body(3, ControlTotal::schema(), &body).is_ok());
        let codec = WireCodec::new("http://127.0.0.1:9");
        codec.preload(3, ControlTotal::schema().clone());
        let err = codec
            .decode_cached_as::<ControlTotal>(&frame(3, &body), ControlTotal::schema())
            .expect_err("refused");
        assert_eq!(err.reason(), "contract_violation", "{err}");
    }

    #[test]
    fn truncated_and_trailing_bodies_are_rejected() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"R","fields":[{"name":"s","type":"string"},{"name":"n","type":"long"}]}"#,
        )
        .unwrap();
        let value = Value::Record(vec![
            ("s".into(), Value::String("hello".into())),
            ("n".into(), Value::Long(42)),
        ]);
        let body = encode_body(&schema, value.clone()).unwrap();
        assert_eq!(decode_body(1, &schema, &body).unwrap(), value);
        for cut in 0..body.len() {
            assert!(
                matches!(
                    decode_body(1, &schema, &body[..cut]),
                    Err(WireError::Body { .. })
                ),
                "cut at {cut}"
            );
        }
        let mut long = body.clone();
        long.push(0);
        assert!(matches!(
            decode_body(1, &schema, &long),
            Err(WireError::Body { .. })
        ));
        // A string length far beyond the body is an error, not an allocation.
        assert!(matches!(
            decode_body(1, &schema, &[0xfe, 0xff, 0xff, 0xff, 0x0f]),
            Err(WireError::Body { .. })
        ));
    }
}
