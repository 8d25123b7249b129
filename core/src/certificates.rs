//! Certificate files, read and checked at start-up: PEM that parses, at least one certificate,
//! and dates that hold today. A TLS library finds an expired certificate only at a handshake,
//! and says so in terms of the handshake (or, for our own certificate, the peer says it, often
//! as a bare alert); here it is one line naming the setting, the file and the date. Every
//! component that reads a CA or presents a certificate reads it through here.

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

/// The certificates of the PEM file `path`, the value of setting `key`, checked for `usage`;
/// a file that cannot be read, holds none, or is out of date is refused naming both.
pub fn read(
    path: &Path,
    usage: CertificateUse,
    key: &str,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        key: key.to_owned(),
        message: format!("`{}`: {message}", path.display()),
    };
    let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect)
        .map_err(|err| invalid(err.to_string()))?;
    if certificates.is_empty() {
        return Err(invalid("holds no PEM certificate".to_owned()));
    }
    in_date(&certificates, usage).map_err(invalid)?;
    Ok(certificates)
}

/// [`read`] as `reqwest` takes CA certificates, for the HTTP clients.
pub fn http_roots(path: &Path, key: &str) -> Result<Vec<reqwest::Certificate>, ConfigError> {
    read(path, CertificateUse::Trust, key)?
        .iter()
        .map(|der| reqwest::Certificate::from_der(der))
        .collect::<Result<_, _>>()
        .map_err(|err| ConfigError::Invalid {
            key: key.to_owned(),
            message: format!("`{}`: {err}", path.display()),
        })
}

/// Only the dates of `path`, for a file another TLS library reads itself (librdkafka's
/// `ssl.ca.location` may also be a directory): what is not a PEM file is left to that
/// library, which names it.
pub fn check_dates(path: &Path, usage: CertificateUse, key: &str) -> Result<(), ConfigError> {
    let Ok(certificates) =
        CertificateDer::pem_file_iter(path).and_then(Iterator::collect::<Result<Vec<_>, _>>)
    else {
        return Ok(());
    };
    in_date(&certificates, usage).map_err(|message| ConfigError::Invalid {
        key: key.to_owned(),
        message: format!("`{}`: {message}", path.display()),
    })
}

/// Whether `certificates` are in date for `usage`; the problem, naming the certificate, if not.
/// A certificate x509-parser cannot read is left to the TLS library.
fn in_date(certificates: &[CertificateDer<'_>], usage: CertificateUse) -> Result<(), String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
        });
    let mut first_problem = None;
    for certificate in certificates {
        let Ok((_, parsed)) = X509Certificate::from_der(certificate) else {
            continue;
        };
        let validity = parsed.validity();
        let problem = if validity.not_after.timestamp() < now {
            format!("expired on {}", validity.not_after)
        } else if validity.not_before.timestamp() > now {
            format!("is not valid before {}", validity.not_before)
        } else {
            return Ok(());
        };
        let problem = format!("the certificate of `{}` {problem}", parsed.subject());
        match usage {
            CertificateUse::Present => return Err(problem),
            CertificateUse::Trust => {
                first_problem.get_or_insert(problem);
            }
        }
    }
    first_problem.map_or(Ok(()), Err)
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
            let err = read(&expired.cert, usage, "destination.ca_file")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("destination.ca_file")
                    && err.contains(&expired.cert.display().to_string())
                    && err.contains("expired on Jan  2 00:00:00 2024"),
                "{err}"
            );
            read(&current.cert, usage, "destination.ca_file").unwrap();
        }
        // A bundle with one valid certificate is a bundle that can work.
        let bundle = current.cert.with_file_name("bundle.pem");
        let text = [
            std::fs::read_to_string(&expired.cert).unwrap(),
            std::fs::read_to_string(&current.cert).unwrap(),
        ]
        .concat();
        std::fs::write(&bundle, text).unwrap();
        read(&bundle, CertificateUse::Trust, "k").unwrap();
        assert!(read(&bundle, CertificateUse::Present, "k").is_err());
    }
}
