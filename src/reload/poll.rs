//! Bundles pulled from a bundle server (`policies.bundle.url`), for a fleet of cedargates that
//! should all serve the same revision: `GET url` every `poll_interval` (spread ±10 % so a
//! fleet does not poll in step) with `If-None-Match` (a `304` costs no download), a timeout
//! over the whole download and a size cap, and on failure a backoff with jitter (from 0.5 s,
//! doubling, never longer than the poll interval). A downloaded bundle is verified, validated
//! and put in force by [`super::activate`] (all or nothing, rollbacks refused), then written
//! to `policies.bundle.path`, from which a restart may start while the server is down.
//!
//! Until a first bundle is in force (the server has not answered and no cached copy may be
//! used) the server is not ready and every check is denied, 503 `no_policy_set`. SIGHUP polls
//! at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::{Activation, IssuerTypes, Target, activate, refused};
use crate::config::{BundleSource, RemoteBundle};
use crate::policy::bundle::{self, Opened};
use crate::server::Shared;
use crate::telemetry;

/// Why a download failed (the `reason` of `cedargate_bundle_failures_total`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("the bundle server answered HTTP {0}")]
    Status(u16),
    #[error("the bundle server did not answer within the timeout")]
    Timeout,
    #[error("the bundle is over {0} bytes")]
    TooLarge(usize),
    #[error("the bundle server cannot be reached: {0}")]
    Unreachable(String),
}

impl FetchError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Status(_) => "status",
            Self::Timeout => "timeout",
            Self::TooLarge(_) => "too_large",
            Self::Unreachable(_) => "unreachable",
        }
    }
}

/// What a poll brought.
#[derive(Debug)]
pub enum Fetched {
    /// `304`: the bundle with the ETag sent is still the one published.
    NotModified,
    Bundle {
        bytes: Vec<u8>,
        etag: Option<String>,
    },
}

/// Downloads bundles from one server.
#[derive(Debug, Clone)]
pub struct Fetcher {
    client: crate::http_client::Client,
    url: String,
    max_bytes: usize,
    timeout: Duration,
}

impl Fetcher {
    pub fn new(remote: &RemoteBundle) -> Result<Self, crate::http_client::ClientError> {
        let client = crate::http_client::build(&crate::http_client::ClientSettings {
            ca_file: remote.ca_file.as_deref(),
            client_cert: remote.client_cert.as_deref(),
            client_key: remote.client_key.as_deref(),
            bearer_token_file: remote.bearer_token_file.as_deref(),
            timeout: remote.timeout,
        })?;
        Ok(Self {
            client,
            url: remote.url.clone(),
            max_bytes: remote.max_bytes,
            timeout: remote.timeout,
        })
    }

    /// One `GET`, with `If-None-Match: etag` when given; the whole download within the
    /// timeout and the size cap.
    pub async fn fetch(&self, etag: Option<&str>) -> Result<Fetched, FetchError> {
        tokio::time::timeout(self.timeout, self.get(etag))
            .await
            .unwrap_or(Err(FetchError::Timeout))
    }

    async fn get(&self, etag: Option<&str>) -> Result<Fetched, FetchError> {
        let failure = |err: reqwest::Error| {
            if err.is_timeout() {
                FetchError::Timeout
            } else {
                FetchError::Unreachable(err.without_url().to_string())
            }
        };
        let mut request = self.client.client.get(&self.url);
        if let Some(bearer) = &self.client.bearer {
            request = request.header(http::header::AUTHORIZATION, bearer);
        }
        if let Some(etag) = etag {
            request = request.header(http::header::IF_NONE_MATCH, etag);
        }
        let mut response = request.send().await.map_err(failure)?;
        if response.status() == http::StatusCode::NOT_MODIFIED {
            return Ok(Fetched::NotModified);
        }
        if !response.status().is_success() {
            return Err(FetchError::Status(response.status().as_u16()));
        }
        if response
            .content_length()
            .is_some_and(|len| len > self.max_bytes as u64)
        {
            return Err(FetchError::TooLarge(self.max_bytes));
        }
        let etag = response
            .headers()
            .get(http::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(failure)? {
            if bytes.len() + chunk.len() > self.max_bytes {
                return Err(FetchError::TooLarge(self.max_bytes));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Fetched::Bundle { bytes, etag })
    }
}

/// Opens downloaded bytes off the async threads, with the configured key.
async fn open(bytes: Vec<u8>, source: &BundleSource) -> Result<Opened, bundle::BundleError> {
    let source = source.clone();
    tokio::task::spawn_blocking(move || {
        let key = match &source.public_key {
            Some(path) => Some(bundle::keys::PublicKey::from_pem(
                &std::fs::read(path).map_err(|err| bundle::BundleError::Read {
                    path: path.clone(),
                    source: err,
                })?,
            )?),
            None => None,
        };
        bundle::open(&bytes, &source.path, key.as_ref())
    })
    .await
    .unwrap_or_else(|err| Err(bundle::BundleError::Archive(err.to_string())))
}

/// Writes the bundle in force to `path` (a new file renamed into place), for a restart while
/// the server is down. A failure is logged, not fatal.
fn keep(path: &std::path::Path, bytes: &[u8]) {
    let partial = path.with_extension("partial");
    if let Err(err) = std::fs::write(&partial, bytes).and_then(|()| std::fs::rename(&partial, path))
    {
        tracing::warn!(path = %path.display(), error = %err, "cannot keep the downloaded bundle on disk; a restart while the server is down will not be able to use it");
    }
}

/// The first bundle at start-up: downloaded (then kept on disk), or, when the server cannot
/// be reached or its bundle is refused and `start_from_cache` allows it, the copy on disk.
/// `None`: nothing to serve yet. Returns the ETag of a download.
///
/// The copy kept on disk is the revision this replica last had in force: a download of a
/// lower revision is a rollback, refused at start-up as it is while running (unless
/// `allow_rollback`), so that a restart is not a way around it.
pub async fn first(source: &BundleSource, fetcher: &Fetcher) -> (Option<Opened>, Option<String>) {
    let kept = if source.path.exists() {
        let owned = source.clone();
        match tokio::task::spawn_blocking(move || bundle::load(&owned)).await {
            Ok(Ok(opened)) => Some(opened),
            Ok(Err(err)) => {
                refused(source, err.code(), &err);
                None
            }
            Err(_) => None,
        }
    } else {
        None
    };
    let floor = kept.as_ref().map(|k| k.manifest.revision);
    match fetcher.fetch(None).await {
        Ok(Fetched::Bundle { bytes, etag }) => match open(bytes.clone(), source).await {
            Ok(opened)
                if floor.is_some_and(|f| opened.manifest.revision < f)
                    && !source.allow_rollback =>
            {
                let error = format!(
                    "revision {} is older than revision {} kept on disk (last in force); set policies.bundle.allow_rollback to install it",
                    opened.manifest.revision,
                    floor.unwrap_or_default()
                );
                refused(source, "rollback", &error);
            }
            Ok(opened) => {
                telemetry::bundle_fetched();
                keep(&source.path, &bytes);
                return (Some(opened), etag);
            }
            Err(err) => refused(source, err.code(), &err),
        },
        Ok(Fetched::NotModified) => {}
        Err(err) => refused(source, err.code(), &err),
    }
    let from_cache = source.remote.as_ref().is_some_and(|r| r.start_from_cache);
    match kept {
        Some(opened) if from_cache => {
            tracing::warn!(path = %source.path.display(), revision = opened.manifest.revision, "no bundle from the server; serving the bundle kept on disk until one comes");
            (Some(opened), None)
        }
        _ => (None, None),
    }
}

/// The running poller; it stops when stopped or dropped with the app.
#[derive(Debug)]
pub struct Poller {
    task: JoinHandle<()>,
}

impl Poller {
    pub fn start(
        source: BundleSource,
        fetcher: Fetcher,
        shared: Arc<Shared>,
        issuer_types: IssuerTypes,
        etag: Option<String>,
        target: Target,
    ) -> Self {
        Self {
            task: tokio::spawn(run(source, fetcher, shared, issuer_types, etag, target)),
        }
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

/// How long to wait before the next poll: the interval spread ±10 %, or after `failures`
/// failures in a row a backoff from 0.5 s, doubling, at most the interval, with jitter.
pub fn next_wait(interval: Duration, failures: u32) -> Duration {
    if failures == 0 {
        return interval.mul_f64(0.9 + fastrand::f64() * 0.2);
    }
    let backoff = Duration::from_millis(500)
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(interval);
    backoff.mul_f64(0.5 + fastrand::f64() * 0.5)
}

async fn run(
    source: BundleSource,
    fetcher: Fetcher,
    shared: Arc<Shared>,
    issuer_types: IssuerTypes,
    mut etag: Option<String>,
    target: Target,
) {
    let Some(interval) = source.remote.as_ref().map(|r| r.poll_interval) else {
        return;
    };
    let mut hangup = super::hangup_signal();
    let mut failures = 0u32;
    loop {
        // Not ready yet: try again soon, whatever the interval.
        let waiting = match target {
            Target::Live => !shared.has_policy_set(),
            Target::Candidate => shared.candidate_version().is_none(),
        };
        let wait = next_wait(interval, failures.max(u32::from(waiting)));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = super::next(&mut hangup) => tracing::info!("SIGHUP: polling the bundle server"),
        }
        let outcome = match fetcher.fetch(etag.as_deref()).await {
            Ok(Fetched::NotModified) => Ok(None),
            Ok(Fetched::Bundle { bytes, etag: tag }) => match open(bytes.clone(), &source).await {
                Ok(opened) => match activate(opened, &source, &shared, &issuer_types, target) {
                    Ok(activation) => {
                        if activation == Activation::Installed {
                            keep(&source.path, &bytes);
                        }
                        Ok(tag)
                    }
                    Err((reason, error)) => Err((reason, error)),
                },
                Err(err) => Err((err.code(), err.to_string())),
            },
            Err(err) => Err((err.code(), err.to_string())),
        };
        match outcome {
            Ok(tag) => {
                telemetry::bundle_fetched();
                failures = 0;
                if tag.is_some() {
                    etag = tag;
                }
            }
            Err((reason, error)) => {
                refused(&source, reason, &error);
                failures = failures.saturating_add(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_spread_polls_and_back_off_within_the_interval() {
        let interval = Duration::from_secs(30);
        for _ in 0..100 {
            let wait = next_wait(interval, 0);
            assert!(wait >= Duration::from_secs(27) && wait <= Duration::from_secs(33));
            let first = next_wait(interval, 1);
            assert!(first >= Duration::from_millis(250) && first <= Duration::from_millis(500));
            let fourth = next_wait(interval, 4);
            assert!(fourth >= Duration::from_secs(2) && fourth <= Duration::from_secs(4));
            assert!(
                next_wait(interval, 60) <= interval,
                "never past the interval"
            );
            assert!(next_wait(Duration::from_millis(100), 5) <= Duration::from_millis(100));
        }
    }
}
