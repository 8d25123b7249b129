//! How the runtime sees the contracts library: wire-format failures classified as processing
//! errors, and the codecs as the [`Prefetch`] that resolves a record's schema before `process`.
//! This glue lives here, not in `backbone-schemas`, so that the contracts depend on no runtime.

use std::future::Future;
use std::pin::Pin;

use backbone_schemas::{OutputContracts, OutputError, WireCodec, WireError};

use crate::{Prefetch, ProcessError};

/// The registry being unreachable is an outage (retried until it answers, never
/// dead-lettered); anything else is permanent, with the wire error's reason.
impl From<WireError> for ProcessError {
    fn from(err: WireError) -> Self {
        if err.is_transient() {
            ProcessError::Unavailable(err.to_string())
        } else {
            ProcessError::permanent(err.reason(), err.to_string())
        }
    }
}

/// Not registered yet is an outage; asking for a topic the processor did not declare is a
/// configuration mistake that stops it.
impl From<OutputError> for ProcessError {
    fn from(err: OutputError) -> Self {
        match err {
            OutputError::NotRegistered => ProcessError::Unavailable(err.to_string()),
            OutputError::NotAnOutput(_) => ProcessError::Fatal {
                kind: "configuration",
                detail: err.to_string(),
            },
        }
    }
}

/// Records that are not wire format are left to the processor.
impl Prefetch for WireCodec {
    fn prefetch<'a>(
        &'a self,
        value: Option<&'a [u8]>,
    ) -> Pin<Box<dyn Future<Output = Result<(), ProcessError>> + Send + 'a>> {
        Box::pin(async move { Ok(self.resolve(value).await?) })
    }
}

/// Resolves each input's schema and, once, registers every output contract.
impl Prefetch for OutputContracts {
    fn prefetch<'a>(
        &'a self,
        value: Option<&'a [u8]>,
    ) -> Pin<Box<dyn Future<Output = Result<(), ProcessError>> + Send + 'a>> {
        Box::pin(async move { Ok(self.resolve(value).await?) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_outages_are_retried_and_bad_records_dead_lettered() {
        let outage = WireError::Registry {
            message: "connection refused".to_owned(),
            retriable: true,
        };
        assert_eq!(ProcessError::from(outage).class(), "unavailable");
        let bad = ProcessError::from(WireError::TooShort { len: 2 });
        assert!(
            matches!(
                bad,
                ProcessError::Permanent {
                    reason: "truncated_record",
                    ..
                }
            ),
            "{bad:?}"
        );
        let unknown = ProcessError::from(OutputError::NotAnOutput("x".to_owned()));
        assert!(matches!(
            unknown,
            ProcessError::Fatal {
                kind: "configuration",
                ..
            }
        ));
    }
}
