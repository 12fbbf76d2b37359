//! The HTTP entity source: `POST <url>` with `{"uids": [{"type": "Order", "id": "1002"}]}`,
//! answered `200` with a JSON array of Cedar entities (`[{"uid": …, "attrs": …, "parents":
//! …}]`, the `entities.json` format), over [`crate::http_client`] (rustls, a CA file or the
//! system's roots, optional mTLS or bearer token, no redirects, no proxy); the answer is read
//! to `max_response_bytes` at most.

use std::time::Duration;

use cedar_policy::EntityUid;
use futures_util::future::BoxFuture;

use super::{EntitySource, SourceError};
use crate::config::EntitySourceSettings;

/// Why the HTTP source cannot be set up; stops start-up.
#[derive(Debug, thiserror::Error)]
#[error("entity_source: {0}")]
pub struct SetupError(#[from] crate::http_client::ClientError);

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
        let crate::http_client::Client { client, bearer } =
            crate::http_client::build(&crate::http_client::ClientSettings {
                ca_file: settings.ca_file.as_deref(),
                client_cert: settings.client_cert.as_deref(),
                client_key: settings.client_key.as_deref(),
                bearer_token_file: settings.bearer_token_file.as_deref(),
                timeout: settings.timeout,
            })?;
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
