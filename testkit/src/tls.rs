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
        let (csr, cert) = self.request(name)?;
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
        self.issued(name)
    }

    /// A certificate for `name` that expired on 2 January 2024 (`openssl x509` cannot date one
    /// in the past; `openssl ca` can, with a throwaway database).
    pub fn issue_expired(&self, name: &str) -> Result<IssuedCert, TestkitError> {
        let (csr, cert) = self.request(name)?;
        let config = self.dir.join(format!("{name}-ca.cnf"));
        let database = self.dir.join(format!("{name}-index.txt"));
        let serial = self.dir.join(format!("{name}-serial"));
        write(
            &config,
            &format!(
                "[ca]\ndefault_ca = test\n[test]\ndatabase = {}\nnew_certs_dir = {}\n\
                 serial = {}\ndefault_md = sha256\npolicy = any\n[any]\ncommonName = supplied\n",
                database.display(),
                self.dir.display(),
                serial.display()
            ),
        )?;
        write(&database, "")?;
        write(&serial, "01\n")?;
        openssl(
            &self.dir,
            &[
                "ca",
                "-batch",
                "-notext",
                "-config",
                &config.display().to_string(),
                "-cert",
                "ca.pem",
                "-keyfile",
                "ca.key",
                "-in",
                &csr,
                "-out",
                &cert,
                "-startdate",
                "20240101000000Z",
                "-enddate",
                "20240102000000Z",
            ],
        )?;
        self.issued(name)
    }

    /// A key and a signing request for `name`: the request's and the certificate's file names.
    fn request(&self, name: &str) -> Result<(String, String), TestkitError> {
        let (key, csr) = (format!("{name}.key"), format!("{name}.csr"));
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
        Ok((csr, format!("{name}.pem")))
    }

    fn issued(&self, name: &str) -> Result<IssuedCert, TestkitError> {
        let cert = format!("{name}.pem");
        let key = format!("{name}.key");
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
