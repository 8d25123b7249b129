//! The wire codec against a real registry: ids resolve once, round trips are exact, and every
//! kind of bad record gets its typed error.

use apache_avro::types::Value;
use apache_avro::Schema;
use backbone_registry::{LocalRegistry, RegistryConfig};
use backbone_schemas::wire::{frame, split_frame, WireCodec, WireError};
use backbone_testkit::{shared_settings, unique_topic};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Reading {
    sensor: String,
    value: i64,
    note: Option<String>,
}

fn reading_schema() -> Schema {
    Schema::parse_str(
        r#"{"type":"record","name":"Reading","namespace":"test","fields":[
            {"name":"sensor","type":"string"},
            {"name":"value","type":"long"},
            {"name":"note","type":["null","string"],"default":null}]}"#,
    )
    .expect("valid test schema")
}

async fn registry() -> LocalRegistry {
    LocalRegistry::start(&RegistryConfig::ephemeral(
        shared_settings(),
        &unique_topic("schemas"),
    ))
    .await
    .expect("registry starts")
}

#[tokio::test]
async fn round_trip_through_the_registry() {
    let registry = registry().await;
    let codec = WireCodec::new(registry.url());
    let schema = reading_schema();
    let value = Reading {
        sensor: "s-1".into(),
        value: -42,
        note: Some("calibrated".into()),
    };
    let bytes = codec
        .encode("readings-value", &schema, &value)
        .await
        .unwrap();
    let (id, _) = split_frame(&bytes).unwrap();
    assert_eq!(codec.register("readings-value", &schema).await.unwrap(), id);

    // A fresh codec knows nothing yet: it resolves the id through the registry.
    let reader = WireCodec::new(registry.url());
    let decoded: Reading = reader.decode_as(&bytes, &schema).await.unwrap();
    assert_eq!(decoded, value);
    let (got_id, generic) = reader.decode(&bytes).await.unwrap();
    assert_eq!(got_id, id);
    assert!(matches!(generic, Value::Record(_)));
    // And from then on it decodes from its cache, without the registry.
    registry.stop().await.unwrap();
    let cached: Reading = reader.decode_cached_as(&bytes, &schema).unwrap();
    assert_eq!(cached, value);
}

#[tokio::test]
async fn bad_records_get_typed_errors() {
    let registry = registry().await;
    let codec = WireCodec::new(registry.url());
    let schema = reading_schema();
    let value = Reading {
        sensor: "s-2".into(),
        value: 7,
        note: None,
    };
    let good = codec
        .encode("readings-value", &schema, &value)
        .await
        .unwrap();
    let (id, body) = split_frame(&good).unwrap();

    let wrong_magic = [&[1u8][..], &good[1..]].concat();
    assert!(matches!(
        codec.decode(&wrong_magic).await,
        Err(WireError::WrongMagicByte { found: 1 })
    ));
    assert!(matches!(
        codec.decode(&good[..3]).await,
        Err(WireError::TooShort { len: 3 })
    ));
    let unknown = frame(id + 1000, body);
    let err = codec.decode(&unknown).await.unwrap_err();
    assert!(
        matches!(err, WireError::UnknownSchemaId { id: u } if u == id + 1000),
        "{err}"
    );
    assert!(!err.is_transient());
    let truncated = frame(id, &body[..body.len() - 1]);
    let got = codec.decode(&truncated).await;
    assert!(matches!(got, Err(WireError::Body { .. })), "{got:?}");
    let garbage = frame(id, &[0xff; 12]);
    assert!(matches!(
        codec.decode(&garbage).await,
        Err(WireError::Body { .. })
    ));
    let json = br#"{"sensor":"s-2","value":7}"#;
    assert!(matches!(
        codec.decode(json).await,
        Err(WireError::WrongMagicByte { found: b'{' })
    ));

    // A registry that is down is a transient error: the same record may decode later.
    let url = registry.url().to_owned();
    registry.stop().await.unwrap();
    let offline = WireCodec::new(&url);
    let err = offline.decode(&good).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
}
