//! Backbone's governed event contracts.
//!
//! `contracts/` holds one Avro record per `.avsc` file (the source of truth); `manifest.toml`
//! maps each topic to its contract, subject, owner and data rules. This crate embeds both,
//! bundles files into the self-contained schemas the registry stores, and frames records in
//! the Confluent wire format with a caching registry client. It depends on no runtime crate:
//! the `contracts` CLI (`tools/contracts`) lints, checks, registers and applies them.

pub mod access;
pub mod contracts;
pub mod lint;
pub mod manifest;
pub mod outputs;
pub mod registry;
pub mod types;
pub mod wire;

include!(concat!(env!("OUT_DIR"), "/embedded.rs"));

pub use access::{BasicAuth, RegistryAccess};
pub use contracts::{ContractError, ContractSet};
pub use manifest::{Manifest, TopicContract};
pub use outputs::{OutputContracts, OutputError};
pub use registry::{Registration, RegistryClient, RegistryError};
pub use wire::{WireCodec, WireError};
