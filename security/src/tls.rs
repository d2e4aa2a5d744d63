//! TLS settings from PEM files: the coordinator's certificate and key (and, for mutual TLS, the CA
//! its clients' certificates must chain to), and a client's CA, certificate and key. Files are read
//! when the settings are built, so a wrong path fails at start with the path named.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::SecurityError;

fn read_pem(path: &Path, what: &'static str, marker: &str) -> Result<Vec<u8>, SecurityError> {
    let bytes = std::fs::read(path).map_err(|source| SecurityError::Read {
        what,
        path: path.display().to_string(),
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    if !text.contains("-----BEGIN") || !text.contains(marker) {
        return Err(SecurityError::Invalid {
            what: format!("{what} `{}`", path.display()),
            reason: format!("not a PEM file holding a {marker}"),
        });
    }
    Ok(bytes)
}

fn read_cert(path: &Path, what: &'static str) -> Result<Vec<u8>, SecurityError> {
    read_pem(path, what, "CERTIFICATE")
}

fn read_key(path: &Path) -> Result<Vec<u8>, SecurityError> {
    read_pem(path, "TLS key", "PRIVATE KEY")
}

/// The coordinator's side.
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, every client and agent must present a certificate signed by this CA (mTLS).
    pub client_ca: Option<PathBuf>,
}

impl ServerTls {
    pub fn config(&self) -> Result<ServerTlsConfig, SecurityError> {
        let identity = Identity::from_pem(
            read_cert(&self.cert, "TLS certificate")?,
            read_key(&self.key)?,
        );
        let mut config = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca {
            config = config.client_ca_root(Certificate::from_pem(read_cert(ca, "client CA")?));
        }
        Ok(config)
    }
}

/// A client's or agent's side. Without a CA, the system's trusted roots are used.
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    pub ca: Option<PathBuf>,
    /// This client's certificate and key, for a coordinator that requires mTLS.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The name the coordinator's certificate must carry, when it differs from the URL's host.
    pub domain: Option<String>,
}

impl ClientTls {
    pub fn config(&self) -> Result<ClientTlsConfig, SecurityError> {
        let mut config = ClientTlsConfig::new();
        config = match &self.ca {
            Some(ca) => config.ca_certificate(Certificate::from_pem(read_cert(ca, "TLS CA")?)),
            None => config.with_native_roots(),
        };
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                config = config.identity(Identity::from_pem(
                    read_cert(cert, "TLS certificate")?,
                    read_key(key)?,
                ));
            }
            (None, None) => {}
            _ => {
                return Err(SecurityError::Invalid {
                    what: "client certificate".into(),
                    reason: "--tls-cert and --tls-key go together".into(),
                });
            }
        }
        if let Some(d) = &self.domain {
            config = config.domain_name(d.clone());
        }
        Ok(config)
    }
}
