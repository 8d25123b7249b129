//! Certificate files checked for their dates at start-up. A TLS library finds an expired
//! certificate only at a handshake, and says so in terms of the handshake (or, for our own
//! certificate, the peer says it, often as a bare alert); here it is one line naming the setting,
//! the file and the date.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::ConfigError;

/// What a certificate file is for, which decides what must be valid in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateUse {
    /// Certificates trusted (a CA bundle): at least one must be valid today; a bundle may
    /// carry roots that expired long ago beside the ones in use.
    Trust,
    /// Our own chain, presented to a peer: the first certificate is ours and must be valid.
    Present,
}

/// Refuses `path` (the value of setting `key`) when its certificates are out of date for
/// `usage`. Text that is not a PEM certificate is left to the TLS library's own check, which
/// names it.
pub fn check_dates(path: &Path, usage: CertificateUse, key: &str) -> Result<(), ConfigError> {
    let Ok(certificates) = CertificateDer::pem_file_iter(path) else {
        return Ok(());
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
        });
    let mut problems = Vec::new();
    for certificate in certificates.flatten() {
        let Ok((_, parsed)) = X509Certificate::from_der(&certificate) else {
            continue;
        };
        let validity = parsed.validity();
        let problem = if validity.not_after.timestamp() < now {
            Some(format!("expired on {}", validity.not_after))
        } else if validity.not_before.timestamp() > now {
            Some(format!("is not valid before {}", validity.not_before))
        } else {
            None
        };
        let problem = problem.map(|problem| {
            format!(
                "`{}`: the certificate of `{}` {problem}",
                path.display(),
                parsed.subject()
            )
        });
        match (usage, problem) {
            (CertificateUse::Present, problem) => {
                problems.extend(problem);
                break;
            }
            (CertificateUse::Trust, None) => return Ok(()),
            (CertificateUse::Trust, Some(problem)) => problems.push(problem),
        }
    }
    match problems.into_iter().next() {
        Some(message) => Err(ConfigError::Invalid {
            key: key.to_owned(),
            message,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use backbone_testkit::TestCa;

    #[test]
    fn an_expired_certificate_is_refused_naming_setting_file_and_date() {
        let ca = TestCa::new("dates").unwrap();
        let expired = ca.issue_expired("old").unwrap();
        let current = ca.issue("new").unwrap();
        for usage in [CertificateUse::Present, CertificateUse::Trust] {
            let err = check_dates(&expired.cert, usage, "destination.ca_file")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("destination.ca_file")
                    && err.contains(&expired.cert.display().to_string())
                    && err.contains("expired on Jan  2 00:00:00 2024"),
                "{err}"
            );
            check_dates(&current.cert, usage, "destination.ca_file").unwrap();
        }
        // A bundle with one valid certificate is a bundle that can work.
        let bundle = current.cert.with_file_name("bundle.pem");
        let text = [
            std::fs::read_to_string(&expired.cert).unwrap(),
            std::fs::read_to_string(&current.cert).unwrap(),
        ]
        .concat();
        std::fs::write(&bundle, text).unwrap();
        check_dates(&bundle, CertificateUse::Trust, "k").unwrap();
        assert!(check_dates(&bundle, CertificateUse::Present, "k").is_err());
    }
}
