//! TLS to PostgreSQL: which `sslmode` of the destination URL encrypts, and what it trusts.
//!
//! `require`, `verify-ca` and `verify-full` (libpq's names) connect over TLS and verify the
//! server's certificate and name against the system's roots and `destination.ca_file`: the
//! sink never sends a password over a connection it has not verified, so `require` verifies as
//! `verify-full` does. `disable`, `prefer` and no `sslmode` connect in plain text.

use backbone_core::certificates::{self, CertificateUse};
use backbone_core::ConfigError;
use backbone_sink::DestinationSettings;
use rustls_tokio_postgres::MakeRustlsConnect;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::PrivateKeyDer;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// How the sink reaches its database.
#[derive(Clone)]
pub(crate) enum Transport {
    /// Plain text.
    Plain,
    /// TLS, the server verified.
    Verified(MakeRustlsConnect),
}

/// `url` as tokio-postgres reads it (libpq's `verify-ca` and `verify-full` become `require`,
/// which is all it knows), and whether it asks for TLS.
pub(crate) fn read_sslmode(url: &str) -> (String, bool) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), false);
    };
    let mut tls = false;
    let params: Vec<String> = query
        .split('&')
        .map(|param| match param.split_once('=') {
            Some(("sslmode", "require" | "verify-ca" | "verify-full")) => {
                tls = true;
                "sslmode=require".to_owned()
            }
            _ => param.to_owned(),
        })
        .collect();
    (format!("{base}?{}", params.join("&")), tls)
}

/// The transport `destination` asks for.
pub(crate) fn transport(
    destination: &DestinationSettings,
    tls: bool,
) -> Result<Transport, ConfigError> {
    if !tls {
        return match destination.ca_file {
            Some(_) => Err(ConfigError::Invalid {
                key: "destination.ca_file".to_owned(),
                message: "is used only with sslmode=require, verify-ca or verify-full in \
                          destination.url, which connects in plain text without one"
                    .to_owned(),
            }),
            None => Ok(Transport::Plain),
        };
    }
    let mut roots = RootCertStore::empty();
    // A system without roots still works with a `ca_file`; one that cannot be read is no root.
    for root in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(root);
    }
    if let Some(ca_file) = &destination.ca_file {
        for certificate in
            certificates::read(ca_file, CertificateUse::Trust, "destination.ca_file")?
        {
            roots.add(certificate).map_err(|err| ConfigError::Invalid {
                key: "destination.ca_file".to_owned(),
                message: format!("`{}`: {err}", ca_file.display()),
            })?;
        }
    }
    let config = ClientConfig::builder().with_root_certificates(roots);
    let config = match (&destination.client_cert_file, &destination.client_key_file) {
        (Some(cert_file), Some(key_file)) => {
            let invalid = |key: &str, path: &std::path::Path, why: String| ConfigError::Invalid {
                key: format!("destination.{key}"),
                message: format!("`{}`: {why}", path.display()),
            };
            let chain = certificates::read(
                cert_file,
                CertificateUse::Present,
                "destination.client_cert_file",
            )?;
            let key = PrivateKeyDer::from_pem_file(key_file)
                .map_err(|err| invalid("client_key_file", key_file, err.to_string()))?;
            config
                .with_client_auth_cert(chain, key)
                .map_err(|err| invalid("client_key_file", key_file, err.to_string()))?
        }
        _ => config.with_no_client_auth(),
    };
    Ok(Transport::Verified(MakeRustlsConnect::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_modes_that_verify_ask_for_tls_and_the_others_do_not() {
        for (url, tls) in [
            ("postgres://app@db/analytics", false),
            ("postgres://app@db/analytics?sslmode=disable", false),
            ("postgres://app@db/analytics?sslmode=prefer", false),
            ("postgres://app@db/analytics?sslmode=require", true),
            (
                "postgres://app@db/analytics?connect_timeout=5&sslmode=verify-full",
                true,
            ),
            ("postgres://app@db/analytics?sslmode=verify-ca", true),
        ] {
            let (read, asks) = read_sslmode(url);
            assert_eq!(asks, tls, "{url}");
            assert!(!read.contains("verify-"), "{read}");
            assert!(read.parse::<tokio_postgres::Config>().is_ok(), "{read}");
        }
    }
}
