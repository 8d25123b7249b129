//! Output contracts a processor writes: registered once, before its first record, so that
//! `process` can encode synchronously.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;

use backbone_core::{Prefetch, ProcessError};

use crate::types::embedded_schema;
use crate::{ContractSet, WireCodec, WireError};

/// A processor's codec and the registry ids of the contracts it writes, by subject. As the
/// processor's [`Prefetch`] it resolves each input's schema (like [`WireCodec`]'s own) and, once,
/// registers every output contract.
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

    /// The id registered for `topic`'s values; an outage until the first prefetch registered it.
    pub fn id(&self, topic: &str) -> Result<u32, ProcessError> {
        let ids = self.ids.get().ok_or_else(|| {
            ProcessError::Unavailable("output contracts not registered yet".to_owned())
        })?;
        self.outputs
            .iter()
            .position(|(t, _)| t == topic)
            .and_then(|at| ids.get(at).copied())
            .ok_or_else(|| ProcessError::Fatal {
                kind: "configuration",
                detail: format!("topic `{topic}` is not among the processor's outputs"),
            })
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

impl Prefetch for OutputContracts {
    fn prefetch<'a>(
        &'a self,
        value: Option<&'a [u8]>,
    ) -> Pin<Box<dyn Future<Output = Result<(), ProcessError>> + Send + 'a>> {
        Box::pin(async move {
            self.codec.prefetch(value).await?;
            if self.ids.get().is_none() {
                let ids = self
                    .register()
                    .await
                    .map_err(WireError::into_process_error)?;
                let _ = self.ids.set(ids);
            }
            Ok(())
        })
    }
}
