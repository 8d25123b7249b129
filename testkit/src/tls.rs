//! A certificate authority of a test's own, for TLS listeners on 127.0.0.1: the broker's
//! SASL_SSL listener, and the servers a client must verify.
//!
//! Keys and certificates come from the `openssl` command (`make setup` installs it), written as
//! PEM files in a directory the authority deletes when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::run_tool;
use crate::TestkitError;

/// A self-signed CA that issues server certificates for `127.0.0.1` and `localhost`.
#[derive(Debug)]
pub struct TestCa {
    dir: PathBuf,
}

/// A server's certificate and key, issued by a [`TestCa`].
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The certificate, PEM.
    pub cert: PathBuf,
    /// Its private key, unencrypted PKCS#8 PEM.
    pub key: PathBuf,
    /// The key and then the certificate in one PEM file: what a Kafka broker's PEM keystore
    /// (`ssl.keystore.type=PEM`) reads.
    pub key_and_cert: PathBuf,
}

impl TestCa {
    /// A new CA in a directory of its own under the system's temporary directory.
    pub fn new(name: &str) -> Result<Self, TestkitError> {
        let dir = std::env::temp_dir().join(format!(
            "backbone-ca-{name}-{}",
            crate::kafka::unique_suffix()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| failed(format!("{}: {e}", dir.display())))?;
        let ca = Self { dir };
        openssl(
            &ca.dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=Backbone test CA",
            ],
        )?;
        Ok(ca)
    }

    /// The CA's certificate: what a client trusts (`ssl.ca.location`).
    pub fn cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate for `name`, valid for 127.0.0.1 and localhost for two days.
    pub fn issue(&self, name: &str) -> Result<IssuedCert, TestkitError> {
        let (key, csr, cert) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                "/CN=127.0.0.1",
            ],
        )?;
        let extensions = self.dir.join(format!("{name}.ext"));
        write(
            &extensions,
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
        )?;
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &cert,
                "-days",
                "2",
                "-extfile",
                &extensions.display().to_string(),
            ],
        )?;
        let issued = IssuedCert {
            cert: self.dir.join(&cert),
            key: self.dir.join(&key),
            key_and_cert: self.dir.join(format!("{name}-key-and-cert.pem")),
        };
        let both = [read(&issued.key)?, read(&issued.cert)?].concat();
        write(&issued.key_and_cert, &both)?;
        Ok(issued)
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn openssl(dir: &Path, args: &[&str]) -> Result<(), TestkitError> {
    run_tool(
        Command::new("openssl").args(args).current_dir(dir),
        &format!("openssl {}", args.join(" ")),
    )
}

fn read(path: &Path) -> Result<String, TestkitError> {
    std::fs::read_to_string(path).map_err(|e| failed(format!("{}: {e}", path.display())))
}

fn write(path: &Path, text: &str) -> Result<(), TestkitError> {
    std::fs::write(path, text).map_err(|e| failed(format!("{}: {e}", path.display())))
}

fn failed(message: String) -> TestkitError {
    TestkitError::Process {
        program: "openssl".into(),
        message,
    }
}
