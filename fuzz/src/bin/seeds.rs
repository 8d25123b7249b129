//! Writes the seed corpora, `corpus/<target>/`, from the contracts themselves: for every
//! contract a minimal and a full sample value, framed as the targets read them, and for the
//! registry the requests and `_schemas` records a client and an instance send. Each seed is
//! checked to pass (a contract seed decodes into its type), so the fuzzer starts from inputs
//! that reach deep into the decoders. Usage: `seeds [corpus dir]`.

use std::fs;
use std::path::{Path, PathBuf};

use backbone_compat::CompatibilityMode;
use backbone_fuzz::{codec, contract_id, evolved_id, sample, Fill, CONTRACTS};
use backbone_registry::index::{ConfigRecord, LogKey, SchemaRecord};
use backbone_registry::request::parse_register_request;
use backbone_schemas::wire::{encode_body, frame};
use backbone_schemas::ContractSet;
use serde_json::json;

/// The contracts whose compatibility checks and `_schemas` records seed the registry target;
/// every contract seeds a register request.
const SMALL_SEEDS: &[&str] = &["ControlTotal", "PriceTier", "UsageEvent", "DeliveryResult"];

fn main() {
    let root = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    let mut written = 0;
    let mut write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = root.join(target);
        fs::create_dir_all(&dir).expect("create corpus dir");
        fs::write(dir.join(name), bytes).expect("write seed");
        written += 1;
    };

    let contracts = ContractSet::embedded().expect("embedded contracts");
    for (index, case) in CONTRACTS.iter().enumerate() {
        let short = case.name.rsplit('.').next().unwrap_or(case.name);
        let schema = (case.schema)();
        for (fill, tag, added) in [
            (Fill::Minimal, "minimal", &[0x00][..]),
            (Fill::Full, "full", &[0x02, 0x02, b'x'][..]),
        ] {
            let body = encode_body(schema, sample(schema, fill)).expect("a sample encodes");
            let evolved_body = [body.as_slice(), added].concat();
            for (id, body) in [
                (contract_id(index), &body),
                (evolved_id(index), &evolved_body),
            ] {
                (case.decode)(codec(), contract_id(index), &frame(id, body))
                    .unwrap_or_else(|e| panic!("{} seed {tag} (id {id}): {e}", case.name));
            }
            write(
                "wire_frame",
                &format!("{short}-{tag}"),
                &frame(contract_id(index), &body),
            );
            let selector = index as u8;
            write(
                "contract_decode",
                &format!("{short}-{tag}"),
                &[&[selector][..], &body].concat(),
            );
            write(
                "contract_decode",
                &format!("{short}-{tag}-evolved"),
                &[&[selector | 0x80][..], &evolved_body].concat(),
            );
        }

        // The contract as `contracts register` sends it, then without docs: the parser's
        // paths are in the structure, and smaller seeds mutate faster.
        let text = contracts
            .bundled(case.name)
            .expect("bundled contract")
            .to_string();
        let request = json!({ "schema": text, "schemaType": "AVRO" }).to_string();
        parse_register_request(request.as_bytes())
            .unwrap_or_else(|e| panic!("{} register request: {e}", case.name));
        if SMALL_SEEDS.contains(&short) {
            write(
                "registry_request",
                &format!("register-{short}-bundled"),
                &[b"\x00", request.as_bytes()].concat(),
            );
        }
        let text = without_docs(serde_json::from_str(&text).expect("bundled json")).to_string();
        let request = json!({ "schema": text, "schemaType": "AVRO" }).to_string();
        parse_register_request(request.as_bytes())
            .unwrap_or_else(|e| panic!("{} register request: {e}", case.name));
        write(
            "registry_request",
            &format!("register-{short}"),
            &[b"\x00", request.as_bytes()].concat(),
        );
        if !SMALL_SEEDS.contains(&short) {
            continue;
        }
        let evolved = serde_json::to_value(backbone_fuzz::evolved(schema)).expect("schema json");
        let evolved = without_docs(evolved).to_string();
        write(
            "registry_request",
            &format!("compatibility-{short}"),
            &[b"\x03", text.as_bytes(), b"\x00", evolved.as_bytes()].concat(),
        );
        let key = serde_json::to_vec(&LogKey::Schema {
            subject: format!("{short}-value"),
            version: 1,
        })
        .expect("key json");
        let record = serde_json::to_vec(&SchemaRecord {
            subject: format!("{short}-value"),
            version: 1,
            id: contract_id(index),
            schema: text,
            deleted: false,
        })
        .expect("record json");
        write(
            "registry_request",
            &format!("log-{short}"),
            &[b"\x04", &key[..], b"\x00", &record[..]].concat(),
        );
    }

    let referencing = json!({
        "schema": "\"string\"",
        "references": [{ "name": "x", "subject": "s", "version": 1 }],
    });
    write(
        "registry_request",
        "register-references",
        &[b"\x00", referencing.to_string().as_bytes()].concat(),
    );
    for mode in CompatibilityMode::ALL {
        let body = json!({ "compatibility": mode });
        write(
            "registry_request",
            &format!("config-{mode:?}"),
            &[b"\x01", body.to_string().as_bytes()].concat(),
        );
        let key = serde_json::to_vec(&LogKey::Config {
            subject: Some("s-value".into()),
        })
        .expect("key json");
        let value = serde_json::to_vec(&ConfigRecord {
            compatibility: Some(mode),
        })
        .expect("record json");
        write(
            "registry_request",
            &format!("log-config-{mode:?}"),
            &[b"\x04", &key[..], b"\x00", &value[..]].concat(),
        );
    }
    for segment in ["latest", "-1", "1", "2147483647", "4294967295"] {
        write(
            "registry_request",
            &format!("path-{segment}"),
            &[b"\x02", segment.as_bytes()].concat(),
        );
    }
    println!("wrote {written} seeds under {}", root.display());
}

/// `json` without `doc` keys.
fn without_docs(json: serde_json::Value) -> serde_json::Value {
    match json {
        serde_json::Value::Object(map) => map
            .into_iter()
            .filter(|(key, _)| key != "doc")
            .map(|(key, value)| (key, without_docs(value)))
            .collect(),
        serde_json::Value::Array(items) => items.into_iter().map(without_docs).collect(),
        other => other,
    }
}
