//! The HTTPS client cedargate uses to reach a service of the operator's (the entity source,
//! the bundle server): rustls with the system's roots or a CA file, an optional client
//! certificate (mTLS) and bearer token read once at start-up, no redirects, no proxy from the
//! environment (the configured URL is the one checked, and credentials go to it only), and a
//! timeout on connecting and on each request.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// What the client trusts and presents.
#[derive(Debug, Clone, Default)]
pub struct ClientSettings<'a> {
    pub ca_file: Option<&'a Path>,
    pub client_cert: Option<&'a Path>,
    pub client_key: Option<&'a Path>,
    pub bearer_token_file: Option<&'a Path>,
    pub timeout: Duration,
}

/// Why the client cannot be set up; stops start-up.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read {}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    #[error("{0}")]
    Tls(String),
}

/// A configured client and the `Authorization` value to send, if any.
#[derive(Debug, Clone)]
pub struct Client {
    pub client: reqwest::Client,
    pub bearer: Option<String>,
}

pub fn build(settings: &ClientSettings<'_>) -> Result<Client, ClientError> {
    let file_err = |path: &Path, reason: String| ClientError::File {
        path: path.to_owned(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    match settings.ca_file {
        Some(path) => {
            let certs =
                CertificateDer::pem_file_iter(path).map_err(|e| file_err(path, e.to_string()))?;
            for cert in certs {
                let cert = cert.map_err(|e| file_err(path, e.to_string()))?;
                roots
                    .add(cert)
                    .map_err(|e| ClientError::Tls(format!("CA certificate: {e}")))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ClientError::Tls(e.to_string()))?
    .with_root_certificates(roots);
    let tls = match (settings.client_cert, settings.client_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| file_err(cert, e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| file_err(cert, e.to_string()))?;
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e.to_string()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ClientError::Tls(format!("client certificate: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    let bearer = match settings.bearer_token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| file_err(path, e.to_string()))?;
            Some(format!("Bearer {}", text.trim()))
        }
        None => None,
    };
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout)
        .build()
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    Ok(Client { client, bearer })
}
