//! TLS for clients and servers (rustls), configured from PEM files.
//!
//! The files are read and their PEM blocks checked when the config is built, so a wrong path
//! or a key in the certificate's place is an error at start-up that names the file, not a
//! failed handshake later.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::Error;

fn read(path: &Path, what: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Io {
        context: format!("reading {what} {}", path.display()),
        source,
    })
}

fn certs(path: &Path, what: &str) -> Result<Vec<u8>, Error> {
    let pem = read(path, what)?;
    let n = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("{what} {}: {e}", path.display())))?
        .len();
    if n == 0 {
        return Err(Error::Tls(format!(
            "{what} {} has no CERTIFICATE block",
            path.display()
        )));
    }
    Ok(pem)
}

fn key(path: &Path) -> Result<Vec<u8>, Error> {
    let pem = read(path, "private key")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        Error::Tls(format!(
            "private key {}: {e} (expected a PRIVATE KEY block)",
            path.display()
        ))
    })?;
    Ok(pem)
}

/// Client-side TLS: the CA that signs the servers, an optional client identity (mTLS) and
/// an optional server name override.
///
/// ```no_run
/// use steadfast::tls::ClientTls;
/// let tls = ClientTls::from_pem_files("certs/ca.pem")?
///     .identity("certs/client.pem", "certs/client.key")?
///     .domain_name("user-svc.internal");
/// # Ok::<(), steadfast::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct ClientTls {
    config: ClientTlsConfig,
    ca: PathBuf,
}

impl ClientTls {
    /// Trusts the CA certificates in the PEM file `ca`.
    pub fn from_pem_files(ca: impl AsRef<Path>) -> Result<Self, Error> {
        let ca = ca.as_ref();
        let pem = certs(ca, "CA certificate")?;
        Ok(ClientTls {
            config: ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
            ca: ca.to_owned(),
        })
    }

    /// Presents a client certificate (mutual TLS).
    pub fn identity(
        mut self,
        cert: impl AsRef<Path>,
        key_file: impl AsRef<Path>,
    ) -> Result<Self, Error> {
        let cert = certs(cert.as_ref(), "client certificate")?;
        let key = key(key_file.as_ref())?;
        self.config = self.config.identity(Identity::from_pem(cert, key));
        Ok(self)
    }

    /// Verifies the server against this name instead of the endpoint's host.
    pub fn domain_name(mut self, name: impl Into<String>) -> Self {
        self.config = self.config.domain_name(name);
        self
    }

    pub(crate) fn config(&self) -> ClientTlsConfig {
        self.config.clone()
    }

    /// The CA file this config trusts.
    pub fn ca_path(&self) -> &Path {
        &self.ca
    }
}

/// Server-side TLS: the server's certificate chain and key, and optionally a CA that client
/// certificates must chain to (mutual TLS).
///
/// ```no_run
/// use steadfast::tls::ServerTls;
/// # async fn run(routes: tonic::service::Routes) -> Result<(), Box<dyn std::error::Error>> {
/// let tls = ServerTls::from_pem_files("certs/server.pem", "certs/server.key")?;
/// tonic::transport::Server::builder()
///     .tls_config(tls.into_tonic())?
///     .add_routes(routes)
///     .serve("127.0.0.1:50051".parse()?)
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct ServerTls {
    config: ServerTlsConfig,
}

impl ServerTls {
    /// Serves with the certificate chain in `cert` and the private key in `key_file`.
    pub fn from_pem_files(
        cert: impl AsRef<Path>,
        key_file: impl AsRef<Path>,
    ) -> Result<Self, Error> {
        let cert = certs(cert.as_ref(), "server certificate")?;
        let key = key(key_file.as_ref())?;
        Ok(ServerTls {
            config: ServerTlsConfig::new().identity(Identity::from_pem(cert, key)),
        })
    }

    /// Requires client certificates signed by the CA in `ca`.
    pub fn client_ca(mut self, ca: impl AsRef<Path>) -> Result<Self, Error> {
        let pem = certs(ca.as_ref(), "client CA certificate")?;
        self.config = self.config.client_ca_root(Certificate::from_pem(pem));
        Ok(self)
    }

    /// The tonic config, for `Server::builder().tls_config(..)`.
    pub fn into_tonic(self) -> ServerTlsConfig {
        self.config
    }
}
