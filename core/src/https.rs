//! Serving an HTTP API over TLS (the schema registry, the sandbox): the certificate chain and
//! key from PEM files, checked at start-up, optionally client certificates from a CA (mutual
//! TLS), and a server that drops a client failing its handshake without stopping.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::certificates::{self, CertificateUse};
use crate::config::ConfigError;
use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::PrivateKeyDer;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::RootCertStore;
pub use tokio_rustls::TlsAcceptor;

/// A `tls` config section: the server's certificate chain and key, and optionally the CA
/// whose certificates clients must present (mutual TLS).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The certificate chain, PEM, the server's own certificate first.
    pub cert_file: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CA certificates, PEM: when set, a client must present a certificate they issued.
    pub client_ca_file: Option<PathBuf>,
}

impl TlsFiles {
    /// The acceptor these files make, read and checked now; errors name `{section}.<key>` and
    /// the file.
    pub fn acceptor(&self, section: &str) -> Result<TlsAcceptor, ConfigError> {
        let key = |name: &str| format!("{section}.{name}");
        let invalid = |name: &str, path: &Path, message: String| ConfigError::Invalid {
            key: key(name),
            message: format!("`{}`: {message}", path.display()),
        };
        let chain =
            certificates::read(&self.cert_file, CertificateUse::Present, &key("cert_file"))?;
        let private_key = PrivateKeyDer::from_pem_file(&self.key_file)
            .map_err(|err| invalid("key_file", &self.key_file, err.to_string()))?;
        let builder = rustls::ServerConfig::builder();
        let builder = match &self.client_ca_file {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for certificate in
                    certificates::read(path, CertificateUse::Trust, &key("client_ca_file"))?
                {
                    roots
                        .add(certificate)
                        .map_err(|err| invalid("client_ca_file", path, err.to_string()))?;
                }
                let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                    .build()
                    .map_err(|err| invalid("client_ca_file", path, err.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder
            .with_single_cert(chain, private_key)
            .map_err(|err| invalid("key_file", &self.key_file, err.to_string()))?;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// Longest a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` over TLS on `listener` until `shutdown` completes. A client that fails its
/// handshake is logged and dropped; the server goes on.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors and the like: the next accept may succeed.
                Err(err) => {
                    tracing::warn!(error = %err, "accepting a connection");
                    continue;
                }
            },
        };
        let (acceptor, router) = (acceptor.clone(), router.clone());
        tokio::spawn(async move {
            // A client that opens a connection and says nothing holds no task for long.
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => {
                    tracing::info!(%peer, error = %err, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::info!(%peer, "TLS handshake not finished in {HANDSHAKE_TIMEOUT:?}");
                    return;
                }
            };
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), TowerToHyperService::new(router))
                .await;
            if let Err(err) = served {
                tracing::debug!(%peer, error = %err, "connection ended");
            }
        });
    }
}
