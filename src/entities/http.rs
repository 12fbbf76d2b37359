//! The HTTP entity source: `POST <url>` with `{"uids": [{"type": "Order", "id": "1002"}]}`,
//! answered `200` with a JSON array of Cedar entities (`[{"uid": …, "attrs": …, "parents":
//! …}]`, the `entities.json` format). Over rustls with the system's roots or a CA file, with
//! an optional client certificate (mTLS) or bearer token; no redirects; the answer is read to
//! `max_response_bytes` at most.

use std::time::Duration;

use cedar_policy::EntityUid;
use futures_util::future::BoxFuture;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{EntitySource, SourceError};
use crate::config::EntitySourceSettings;

/// Why the HTTP source cannot be set up; stops start-up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("entity_source: cannot read {path}: {reason}")]
    File { path: String, reason: String },
    #[error("entity_source: {0}")]
    Tls(String),
}

/// An entity source over HTTP.
pub struct HttpSource {
    client: reqwest::Client,
    url: String,
    bearer: Option<String>,
    max_bytes: usize,
    timeout: Duration,
}

impl HttpSource {
    pub fn new(settings: &EntitySourceSettings) -> Result<Self, SetupError> {
        let file_err = |path: &std::path::Path, reason: String| SetupError::File {
            path: path.display().to_string(),
            reason,
        };
        let mut roots = rustls::RootCertStore::empty();
        match &settings.ca_file {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| file_err(path, e.to_string()))?;
                for cert in certs {
                    let cert = cert.map_err(|e| file_err(path, e.to_string()))?;
                    roots
                        .add(cert)
                        .map_err(|e| SetupError::Tls(format!("CA certificate: {e}")))?;
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
        .map_err(|e| SetupError::Tls(e.to_string()))?
        .with_root_certificates(roots);
        let tls = match (&settings.client_cert, &settings.client_key) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .map_err(|e| file_err(cert, e.to_string()))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| file_err(cert, e.to_string()))?;
                let key =
                    PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e.to_string()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| SetupError::Tls(format!("client certificate: {e}")))?
            }
            _ => builder.with_no_client_auth(),
        };
        let bearer = match &settings.bearer_token_file {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|e| file_err(path, e.to_string()))?;
                Some(format!("Bearer {}", text.trim()))
            }
            None => None,
        };
        // No proxy from the environment (HTTP_PROXY and the like): the configured URL is the
        // one checked (https, or http to loopback), and the credentials go to it only.
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .build()
            .map_err(|e| SetupError::Tls(e.to_string()))?;
        Ok(Self {
            client,
            url: settings.url.clone(),
            bearer,
            max_bytes: settings.max_response_bytes,
            timeout: settings.timeout,
        })
    }

    async fn post(&self, uids: &[EntityUid]) -> Result<Vec<serde_json::Value>, SourceError> {
        let body = serde_json::json!({
            "uids": uids
                .iter()
                .map(|uid| serde_json::json!({
                    "type": uid.type_name().to_string(),
                    "id": uid.id().unescaped(),
                }))
                .collect::<Vec<_>>(),
        });
        let mut request = self
            .client
            .post(&self.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        if let Some(bearer) = &self.bearer {
            request = request.header(http::header::AUTHORIZATION, bearer);
        }
        let mut response = request.send().await.map_err(failure)?;
        if !response.status().is_success() {
            return Err(SourceError::Status(response.status().as_u16()));
        }
        if response
            .content_length()
            .is_some_and(|len| len > self.max_bytes as u64)
        {
            return Err(SourceError::TooLarge(self.max_bytes));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(failure)? {
            if bytes.len() + chunk.len() > self.max_bytes {
                return Err(SourceError::TooLarge(self.max_bytes));
            }
            bytes.extend_from_slice(&chunk);
        }
        match serde_json::from_slice(&bytes) {
            Ok(serde_json::Value::Array(items)) => Ok(items),
            Ok(_) => Err(SourceError::Invalid("not a JSON array".into())),
            Err(err) => Err(SourceError::Invalid(err.to_string())),
        }
    }
}

fn failure(err: reqwest::Error) -> SourceError {
    if err.is_timeout() {
        SourceError::Timeout
    } else {
        SourceError::Unreachable(err.without_url().to_string())
    }
}

impl EntitySource for HttpSource {
    fn fetch<'a>(
        &'a self,
        uids: &'a [EntityUid],
    ) -> BoxFuture<'a, Result<Vec<serde_json::Value>, SourceError>> {
        Box::pin(async move {
            // The client's timeout covers the request; this one also covers reading the body.
            tokio::time::timeout(self.timeout, self.post(uids))
                .await
                .unwrap_or(Err(SourceError::Timeout))
        })
    }
}
