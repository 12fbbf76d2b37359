//! Authentication of one request: find the bearer token, answer from the verified-token cache,
//! else inspect, pick the issuer, verify against its current keys, and on an unknown `kid`
//! wait (bounded) for one early key-set fetch. Owns the issuers' key state and their refresher
//! tasks. A check never waits on a fetch longer than `authentication.fetch_wait`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::task::JoinHandle;

use super::jwks::{self, IssuerKeys, JwksError};
use super::token::{self, IssuerPolicy, TokenError, VerifiedToken};
use super::token_cache::{self, Entry, TokenCache};
use crate::config::{AuthSettings, IssuerConfig, JwksSource};
use crate::request::HttpRequest;

/// Why authentication could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AuthnError {
    #[error("issuer `{issuer}`: {source}")]
    Jwks {
        issuer: String,
        #[source]
        source: JwksError,
    },
}

/// One issuer's configuration and keys, as the Status API reports them.
#[derive(Debug, Clone, Copy)]
pub struct IssuerState<'a> {
    pub config: &'a IssuerConfig,
    pub keys: &'a IssuerKeys,
}

struct Issuer {
    policy: IssuerPolicy,
    keys: Arc<IssuerKeys>,
}

/// The trusted issuers, their keys and the token cache.
pub struct Authenticator {
    issuers: Vec<Issuer>,
    by_iss: HashMap<String, usize>,
    cache: TokenCache,
    settings: AuthSettings,
    /// Signature verifications performed (the cached path performs none).
    verifications: AtomicU64,
    refreshers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("issuers", &self.by_iss.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Drop for Authenticator {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Authenticator {
    /// Loads file key sets and starts a refresher per URI key set (must run inside tokio).
    /// An unreachable URI does not stop start-up: readiness waits for its first key set.
    pub fn start(issuers: Vec<IssuerConfig>, settings: AuthSettings) -> Result<Self, AuthnError> {
        let mut shared_client: Option<reqwest::Client> = None;
        let mut refreshers = Vec::new();
        let mut list = Vec::new();
        for config in issuers {
            let remote = matches!(
                config.jwks,
                JwksSource::Uri { .. } | JwksSource::Discovery { .. }
            );
            let keys = Arc::new(IssuerKeys::new(config.issuer.clone(), remote));
            let jwks_err = |source| AuthnError::Jwks {
                issuer: config.issuer.clone(),
                source,
            };
            match &config.jwks {
                JwksSource::File(path) => jwks::load_file(&keys, path).map_err(jwks_err)?,
                JwksSource::Inline(body) => {
                    jwks::load_body(&keys, body.as_bytes()).map_err(jwks_err)?;
                }
                JwksSource::Uri { fetch, .. } | JwksSource::Discovery { fetch } => {
                    let target = match &config.jwks {
                        JwksSource::Uri { uri, .. } => jwks::Target::Jwks(uri.clone()),
                        _ => jwks::Target::Discovery {
                            issuer: config.issuer.clone(),
                            insecure_allow_http: fetch.insecure_allow_http,
                        },
                    };
                    // Issuers with their own CA bundle get their own client.
                    let client = match (&fetch.ca_file, &shared_client) {
                        (Some(ca), _) => {
                            jwks::http_client(&settings, Some(ca)).map_err(jwks_err)?
                        }
                        (None, Some(client)) => client.clone(),
                        (None, None) => shared_client
                            .insert(jwks::http_client(&settings, None).map_err(jwks_err)?)
                            .clone(),
                    };
                    refreshers.push(tokio::spawn(jwks::refresh(
                        keys.clone(),
                        client,
                        target,
                        settings.clone(),
                    )));
                }
            }
            tracing::info!(issuer = %config.issuer, jwks = %jwks::describe(&config.jwks), "issuer configured");
            list.push(Issuer {
                policy: IssuerPolicy::new(config),
                keys,
            });
        }
        let by_iss = list
            .iter()
            .enumerate()
            .map(|(i, issuer)| (issuer.policy.config.issuer.clone(), i))
            .collect();
        Ok(Self {
            issuers: list,
            by_iss,
            cache: TokenCache::new(settings.token_cache_entries, settings.negative_ttl),
            settings,
            verifications: AtomicU64::new(0),
            refreshers,
        })
    }

    /// Stops the key-set refreshers (shutdown).
    pub fn stop(&self) {
        for task in &self.refreshers {
            task.abort();
        }
    }

    /// True when a request without a token is refused by default.
    pub fn requires_token(&self) -> bool {
        self.settings.require_token && !self.issuers.is_empty()
    }

    /// Headers to remove from an allowed request that carried a token, when tokens are not
    /// forwarded (`authentication.forward_token: false`).
    pub fn token_headers_to_strip(&self) -> Vec<String> {
        if self.settings.forward_token {
            return Vec::new();
        }
        std::iter::once("authorization".to_owned())
            .chain(self.settings.token_source.header.clone())
            .collect()
    }

    /// True once every issuer has a key set.
    pub fn is_ready(&self) -> bool {
        self.issuers.iter().all(|i| i.keys.is_loaded())
    }

    /// Resolves once every issuer has a key set.
    pub async fn wait_ready(&self) {
        for issuer in &self.issuers {
            issuer.keys.wait_loaded().await;
        }
    }

    /// Each issuer with its key state, for the Status API.
    pub fn issuers(&self) -> impl Iterator<Item = IssuerState<'_>> {
        self.issuers.iter().map(|issuer| IssuerState {
            config: &issuer.policy.config,
            keys: &issuer.keys,
        })
    }

    pub fn verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }

    /// Drops the parts cached tokens hold for the policy snapshot that was in force.
    pub fn forget_derived(&self) {
        self.cache.forget_derived();
    }

    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }

    /// Remembered failures (the negative cache).
    pub fn cached_failures(&self) -> usize {
        self.cache.failures()
    }

    /// The request's verified token, `None` without one, or why it was refused; `now` is the
    /// check's clock reading (seconds since the epoch).
    pub async fn authenticate(
        &self,
        http: &HttpRequest,
        now: i64,
    ) -> Result<Option<Arc<VerifiedToken>>, TokenError> {
        let Some(token) = token::extract(&http.headers, &http.query, &self.settings.token_source)?
        else {
            return Ok(None);
        };
        if token.len() > self.settings.max_token_bytes {
            return Err(TokenError::TooLarge(token.len()));
        }
        let hash = token_cache::hash(token);
        if let Some(entry) = self.cache.get(&hash, now) {
            let issuer = self.issuers.get(entry.issuer);
            if issuer.is_some_and(|i| i.keys.keys().contains(&entry.key)) {
                metrics::counter!(crate::telemetry::names::TOKEN_CACHE_TOTAL, "result" => "hit")
                    .increment(1);
                return Ok(Some(entry.token));
            }
            self.cache.remove(&hash);
        }
        metrics::counter!(crate::telemetry::names::TOKEN_CACHE_TOTAL, "result" => "miss")
            .increment(1);
        if let Some(err) = self.cache.failure(&hash) {
            return Err(err);
        }
        let result = self.verify(token, hash, now).await;
        let label = match &result {
            Ok(_) => "ok",
            Err(err) => err.code(),
        };
        metrics::counter!(crate::telemetry::names::TOKEN_VERIFICATIONS_TOTAL, "result" => label)
            .increment(1);
        if let Err(err) = &result {
            self.cache.insert_failure(hash, err.clone());
        }
        result.map(Some)
    }

    async fn verify(
        &self,
        token: &str,
        hash: token_cache::TokenHash,
        now: i64,
    ) -> Result<Arc<VerifiedToken>, TokenError> {
        let inspected = token::inspect(token, self.settings.max_token_bytes)?;
        let index = *self
            .by_iss
            .get(&inspected.issuer)
            .ok_or(TokenError::UnknownIssuer)?;
        let issuer = self.issuers.get(index).ok_or(TokenError::UnknownIssuer)?;
        if !issuer.policy.config.algorithms.contains(&inspected.alg) {
            return Err(TokenError::Algorithm(format!("{:?}", inspected.alg)));
        }
        let mut attempt = issuer
            .policy
            .verify(token, &inspected, &issuer.keys.keys(), now);
        if matches!(attempt, Err(TokenError::UnknownKid))
            && issuer
                .keys
                .refetch_and_wait(self.settings.unknown_kid_refetch, self.settings.fetch_wait)
                .await
        {
            attempt = issuer
                .policy
                .verify(token, &inspected, &issuer.keys.keys(), now);
        }
        if !matches!(
            attempt,
            Err(TokenError::UnknownKid | TokenError::KeyMismatch)
        ) {
            self.verifications.fetch_add(1, Ordering::Relaxed);
        }
        let (verified, key) = attempt?;
        let verified = Arc::new(verified);
        let leeway = i64::try_from(issuer.policy.config.leeway.as_secs()).unwrap_or(0);
        self.cache.insert(
            hash,
            Entry {
                token: verified.clone(),
                key,
                issuer: index,
                valid_until: verified.expires_at.saturating_add(leeway),
            },
        );
        Ok(verified)
    }
}
