//! Output contracts a processor writes: registered once, before its first record, so that
//! `process` can encode synchronously.

use std::sync::OnceLock;

use crate::types::embedded_schema;
use crate::{ContractSet, WireCodec, WireError};

/// A processor's codec and the registry ids of the contracts it writes, by subject.
/// [`OutputContracts::resolve`] resolves each input's schema (like [`WireCodec::resolve`]) and,
/// once, registers every output contract.
#[derive(Debug)]
pub struct OutputContracts {
    codec: WireCodec,
    /// (topic, contract full name) in the order given; each registers under `<topic>-value`.
    outputs: Vec<(String, &'static str)>,
    ids: OnceLock<Vec<u32>>,
}

impl OutputContracts {
    /// Outputs of `codec`'s processor: each topic with the full name of its contract, registered
    /// under the topic-name strategy's value subject.
    pub fn new(codec: WireCodec, outputs: Vec<(String, &'static str)>) -> Self {
        Self {
            codec,
            outputs,
            ids: OnceLock::new(),
        }
    }

    /// The codec, for decoding.
    pub fn codec(&self) -> &WireCodec {
        &self.codec
    }

    /// The id registered for `topic`'s values, once [`OutputContracts::resolve`] registered them.
    pub fn id(&self, topic: &str) -> Result<u32, OutputError> {
        let ids = self.ids.get().ok_or(OutputError::NotRegistered)?;
        self.outputs
            .iter()
            .position(|(t, _)| t == topic)
            .and_then(|at| ids.get(at).copied())
            .ok_or_else(|| OutputError::NotAnOutput(topic.to_owned()))
    }

    /// Resolves `value`'s schema and, on the first call that reaches the registry, registers
    /// every output contract.
    pub async fn resolve(&self, value: Option<&[u8]>) -> Result<(), WireError> {
        self.codec.resolve(value).await?;
        if self.ids.get().is_none() {
            let ids = self.register().await?;
            let _ = self.ids.set(ids);
        }
        Ok(())
    }

    async fn register(&self) -> Result<Vec<u32>, WireError> {
        let set = ContractSet::embedded().map_err(|e| WireError::Contract {
            message: e.to_string(),
        })?;
        let mut ids = Vec::with_capacity(self.outputs.len());
        for (topic, full_name) in &self.outputs {
            let subject = format!("{topic}-value");
            let text = set
                .bundled(full_name)
                .map_err(|e| WireError::Contract {
                    message: e.to_string(),
                })?
                .to_string();
            let schema = embedded_schema(full_name).ok_or_else(|| WireError::Contract {
                message: format!("`{full_name}` is not an embedded contract"),
            })?;
            ids.push(self.codec.register_text(&subject, &text, schema).await?);
        }
        Ok(ids)
    }
}

/// Why an output's registry id is not at hand.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// Nothing resolved yet: the registry has not been reached since start-up.
    #[error("output contracts not registered yet")]
    NotRegistered,
    /// A processor asked for a topic it did not declare: a configuration mistake.
    #[error("topic `{0}` is not among the processor's outputs")]
    NotAnOutput(String),
}
