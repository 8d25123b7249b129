//! Serving an HTTP API over TLS (the schema registry, the sandbox): the certificate chain and
//! key from PEM files, checked at start-up, and a server that drops a client failing its
//! handshake without stopping.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use crate::certificates::{check_dates, CertificateUse};
use crate::config::ConfigError;
use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
pub use tokio_rustls::TlsAcceptor;

/// A TLS acceptor for the certificate chain in `cert_file` and the key in `key_file` (PEM);
/// errors name the settings `cert_key` and `key_key` and the file.
pub fn acceptor(
    cert_file: &Path,
    key_file: &Path,
    cert_key: &str,
    key_key: &str,
) -> Result<TlsAcceptor, ConfigError> {
    let invalid = |key: &str, path: &Path, message: String| ConfigError::Invalid {
        key: key.to_owned(),
        message: format!("`{}`: {message}", path.display()),
    };
    let chain = CertificateDer::pem_file_iter(cert_file)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|err| invalid(cert_key, cert_file, err.to_string()))?;
    if chain.is_empty() {
        return Err(invalid(cert_key, cert_file, "holds no certificate".into()));
    }
    check_dates(cert_file, CertificateUse::Present, cert_key)?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|err| invalid(key_key, key_file, err.to_string()))?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|err| invalid(key_key, key_file, err.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

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
            let tls = match acceptor.accept(stream).await {
                Ok(tls) => tls,
                Err(err) => {
                    tracing::info!(%peer, error = %err, "TLS handshake refused");
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
