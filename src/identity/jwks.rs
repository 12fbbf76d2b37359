//! JSON Web Key Sets (RFC 7517): parsing into verification keys, and per-issuer key state that
//! a background task keeps fresh.
//!
//! - Keys are parsed once per fetch into `jsonwebtoken::DecodingKey`s; a check never parses a key.
//! - The current set sits behind an `ArcSwap`: a refresh swaps it whole, readers never wait.
//! - The refresher honours the server's freshness (`Cache-Control`, `Expires`, `Age`, read by
//!   `http-cache-semantics`) within configured bounds, retries failures
//!   with exponential backoff, and keeps serving the last good set meanwhile.
//! - An unknown `kid` may ask for one early fetch per issuer per interval; every check that
//!   asked waits on the same fetch (a generation counter), bounded by `fetch_wait`.
//! - Fetches have a timeout, a body-size cap, and follow at most 3 redirects, each only to the
//!   same origin (scheme, host, port) and never with userinfo.
//!
//! Keys of unsupported types, keys meant for encryption (`use: enc`) and keys without `kid` in a
//! set of several are skipped; key material is never logged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, watch};

use crate::config::{AuthSettings, JwksSource};

/// Why a key set could not be had.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot read `{path}`: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("fetch failed: {0}")]
    Fetch(String),
    #[error("the fetch timed out")]
    Timeout,
    #[error("the key set answered HTTP {0}")]
    Status(u16),
    #[error("the key set is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the key set is not a JWKS document: {0}")]
    Invalid(String),
    #[error("OIDC discovery failed: {0}")]
    Discovery(String),
}

/// The kind of key, for matching a token's `alg` before any cryptography.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

/// One verification key, parsed once.
pub struct VerifyKey {
    pub kid: Option<String>,
    pub kind: KeyKind,
    /// The JWK's own `alg`, when it names one.
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
    /// SHA-256 of the JWK as served (canonical JSON), to recognise the same key in a refresh.
    pub fingerprint: [u8; 32],
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl VerifyKey {
    /// RFC 7518 §3: the `alg` must fit the key type and curve, and the JWK's own `alg` if set.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        use Algorithm::*;
        let fits = match self.kind {
            KeyKind::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::P256 => alg == ES256,
            KeyKind::P384 => alg == ES384,
            KeyKind::Ed25519 => alg == EdDSA,
        };
        fits && self.alg.is_none_or(|own| own == alg)
    }
}

/// A parsed key set: by `kid`, plus the keys without one.
#[derive(Debug, Default)]
pub struct KeySet {
    by_kid: HashMap<String, Arc<VerifyKey>>,
    anonymous: Vec<Arc<VerifyKey>>,
}

impl KeySet {
    /// The key a token names; a token without `kid` may use the only key of a one-key set.
    pub fn find(&self, kid: Option<&str>) -> Option<&Arc<VerifyKey>> {
        match kid {
            Some(kid) => self.by_kid.get(kid),
            None => match (self.by_kid.len(), self.anonymous.as_slice()) {
                (0, [only]) => Some(only),
                (1, []) => self.by_kid.values().next(),
                _ => None,
            },
        }
    }

    /// Takes over the `Arc`s of keys that `old` already had, unchanged: a refresh that serves
    /// the same keys must not invalidate every cached token (they are matched by pointer).
    fn reuse(&mut self, old: &KeySet) {
        for (kid, key) in &mut self.by_kid {
            if let Some(prev) = old.by_kid.get(kid)
                && prev.fingerprint == key.fingerprint
            {
                *key = Arc::clone(prev);
            }
        }
        for key in &mut self.anonymous {
            if let Some(prev) = old
                .anonymous
                .iter()
                .find(|prev| prev.fingerprint == key.fingerprint)
            {
                *key = Arc::clone(prev);
            }
        }
    }

    /// True when `key` is still part of this set (a cached token dies with its key).
    pub fn contains(&self, key: &Arc<VerifyKey>) -> bool {
        match &key.kid {
            Some(kid) => self.by_kid.get(kid).is_some_and(|k| Arc::ptr_eq(k, key)),
            None => self.anonymous.iter().any(|k| Arc::ptr_eq(k, key)),
        }
    }

    pub fn len(&self) -> usize {
        self.by_kid.len() + self.anonymous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.by_kid.keys().map(String::as_str)
    }

    fn fingerprints(&self) -> std::collections::BTreeSet<[u8; 32]> {
        self.by_kid
            .values()
            .chain(&self.anonymous)
            .map(|k| k.fingerprint)
            .collect()
    }
}

/// Whether a freshly fetched key set may replace the one in force. A set without a usable key
/// is a failed fetch (a `200 {"keys":[]}` must not log everyone out, nor a broken server
/// empty the set). A set that shares no key with a non-empty set in force replaces every key
/// at once, which a rotation never does (new keys are published before old ones go): it is
/// taken only when the next fetch serves the same keys again, so one bad answer (a cache or a
/// proxy serving another issuer's keys) is not enough.
#[derive(Debug, Default)]
struct Admission {
    /// Fingerprints of a disjoint set seen once, waiting for a second sighting.
    pending: Option<std::collections::BTreeSet<[u8; 32]>>,
}

impl Admission {
    fn admit(&mut self, current: &KeySet, fetched: &KeySet) -> Result<(), JwksError> {
        if fetched.is_empty() {
            self.pending = None;
            return Err(JwksError::Invalid("the key set has no usable key".into()));
        }
        let new = fetched.fingerprints();
        let old = current.fingerprints();
        if old.is_empty() || !new.is_disjoint(&old) {
            self.pending = None;
            return Ok(());
        }
        if self.pending.as_ref() == Some(&new) {
            self.pending = None;
            return Ok(());
        }
        self.pending = Some(new);
        Err(JwksError::Invalid(
            "the key set replaces every key in force at once; taken only if the next fetch serves it again".into(),
        ))
    }
}

/// Parses a JWKS document, skipping keys cedargate cannot or must not use.
pub fn parse(body: &[u8]) -> Result<KeySet, JwksError> {
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    let doc: Doc = serde_json::from_slice(body).map_err(|e| JwksError::Invalid(e.to_string()))?;
    let mut set = KeySet::default();
    for value in doc.keys {
        // Members sorted: the same key served with its members in another order is the same.
        // Not the RFC 7638 thumbprint (`Jwk::thumbprint`), on purpose: a thumbprint covers the
        // key material only, and here "the same key" decides whether tokens verified with it
        // stay valid, so a key whose `kid`, `alg`, `use` or `key_ops` changed must count as
        // another key (tokens cached under the old terms are verified again).
        let fingerprint: [u8; 32] = Sha256::digest(canonical(&value).as_bytes()).into();
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let kind = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => KeyKind::Rsa,
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => KeyKind::P256,
                EllipticCurve::P384 => KeyKind::P384,
                _ => continue,
            },
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                KeyKind::Ed25519
            }
            _ => continue,
        };
        let alg = match jwk.common.key_algorithm {
            Some(a) => match a.to_string().parse::<Algorithm>() {
                Ok(alg) => Some(alg),
                Err(_) => continue,
            },
            None => None,
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        let key = Arc::new(VerifyKey {
            kid: jwk.common.key_id.clone(),
            kind,
            alg,
            key,
            fingerprint,
        });
        match &key.kid {
            Some(kid) => {
                set.by_kid.insert(kid.clone(), key);
            }
            None => set.anonymous.push(key),
        }
    }
    Ok(set)
}

/// JSON with every object's members sorted by name (serde_json keeps insertion order when
/// another crate enables its `preserve_order` feature, as cedar-policy does).
fn canonical(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Object(map) => {
            let mut members: Vec<_> = map.iter().collect();
            members.sort_by(|a, b| a.0.cmp(b.0));
            let inner: Vec<String> = members
                .into_iter()
                .map(|(k, v)| format!("{}:{}", serde_json::Value::from(k.as_str()), canonical(v)))
                .collect();
            format!("{{{}}}", inner.join(","))
        }
        serde_json::Value::Array(items) => {
            format!(
                "[{}]",
                items.iter().map(canonical).collect::<Vec<_>>().join(",")
            )
        }
        other => other.to_string(),
    }
}

/// One issuer's keys, shared by checks and the refresher.
#[derive(Debug)]
pub struct IssuerKeys {
    pub issuer: String,
    current: ArcSwap<KeySet>,
    /// Bumped after every fetch attempt, good or bad.
    generation: watch::Sender<u64>,
    refetch: Notify,
    /// When the last early fetch was asked for, and the fetch generation at that moment.
    last_early_fetch: Mutex<Option<(Instant, u64)>>,
    loaded: AtomicBool,
    /// When the key set in force was stored (Unix seconds; 0 before the first).
    stored_at: std::sync::atomic::AtomicI64,
    /// False for a key set read from a file: nothing would answer a refetch.
    remote: bool,
}

impl IssuerKeys {
    pub fn new(issuer: String, remote: bool) -> Self {
        Self {
            issuer,
            current: ArcSwap::from_pointee(KeySet::default()),
            generation: watch::channel(0).0,
            refetch: Notify::new(),
            last_early_fetch: Mutex::new(None),
            loaded: AtomicBool::new(false),
            stored_at: std::sync::atomic::AtomicI64::new(0),
            remote,
        }
    }

    pub fn keys(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.current.load()
    }

    /// True once a key set has been loaded (readiness).
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Resolves once a key set is loaded (readiness without polling).
    pub async fn wait_loaded(&self) {
        let mut generation = self.generation.subscribe();
        while !self.is_loaded() {
            if generation.changed().await.is_err() {
                return;
            }
        }
    }

    fn store(&self, mut set: KeySet) {
        set.reuse(&self.current.load());
        metrics::gauge!(crate::telemetry::names::JWKS_KEYS, "issuer" => self.issuer.clone())
            .set(set.len() as f64);
        self.current.store(Arc::new(set));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        metrics::gauge!(crate::telemetry::names::JWKS_LOADED_AT, "issuer" => self.issuer.clone())
            .set(now as f64);
        self.stored_at.store(now, Ordering::Release);
        self.loaded.store(true, Ordering::Release);
    }

    /// When the key set in force was loaded (Unix seconds), `None` before the first load.
    pub fn last_refresh(&self) -> Option<i64> {
        Some(self.stored_at.load(Ordering::Acquire)).filter(|t| *t > 0)
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// On an unknown `kid`: asks for an early fetch unless one was asked for within `interval`,
    /// then waits at most `wait` for the next fetch to finish. A check that arrives while the
    /// fetch asked for by another is still running waits for that same fetch (bounded by
    /// `wait` too), so every check of a newly rotated key benefits, not only the first. True
    /// when a fetch finished (the caller then looks up the key again).
    pub async fn refetch_and_wait(&self, interval: Duration, wait: Duration) -> bool {
        if !self.remote {
            return false;
        }
        let mut generation = self.generation.subscribe();
        let seen = *generation.borrow_and_update();
        let ask = {
            let Ok(mut last) = self.last_early_fetch.lock() else {
                return false;
            };
            match *last {
                // Asked for recently: when that fetch has finished, the caller looks at the
                // keys it brought (its first look may have come just before); otherwise it
                // waits for it.
                Some((at, asked_at)) if at.elapsed() < interval => {
                    if asked_at != seen {
                        return true;
                    }
                    false
                }
                _ => {
                    *last = Some((Instant::now(), seen));
                    true
                }
            }
        };
        if ask {
            self.refetch.notify_one();
        }
        tokio::time::timeout(wait, generation.wait_for(|g| *g > seen))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Loads a key set from a file (start-up; an unreadable file stops start-up).
pub fn load_file(keys: &IssuerKeys, path: &std::path::Path) -> Result<(), JwksError> {
    let body = std::fs::read(path).map_err(|source| JwksError::File {
        path: path.display().to_string(),
        source,
    })?;
    load_body(keys, &body)
}

/// Loads a key set given in memory.
pub fn load_body(keys: &IssuerKeys, body: &[u8]) -> Result<(), JwksError> {
    keys.store(parse(body)?);
    keys.bump();
    Ok(())
}

/// The HTTP client for key-set fetches: rustls with aws-lc-rs, the system's roots, redirects
/// only to the same origin.
pub fn http_client(
    settings: &AuthSettings,
    ca_file: Option<&std::path::Path>,
) -> Result<reqwest::Client, JwksError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let file_err = |e: rustls::pki_types::pem::Error| JwksError::File {
                path: path.display().to_string(),
                source: std::io::Error::other(e.to_string()),
            };
            for cert in CertificateDer::pem_file_iter(path).map_err(file_err)? {
                roots
                    .add(cert.map_err(file_err)?)
                    .map_err(|e| JwksError::Invalid(format!("CA certificate: {e}")))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| JwksError::Fetch(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    // A redirect is followed only to the same origin (scheme, host and port) without
    // userinfo: the configured URI was checked (https, or http to loopback), and a redirect
    // must not move the fetch to plain http or to another service on the same host.
    let same_origin = reqwest::redirect::Policy::custom(|attempt| {
        let next = attempt.url();
        let allowed = attempt.previous().first().is_some_and(|first| {
            next.scheme() == first.scheme()
                && next.host() == first.host()
                && next.port_or_known_default() == first.port_or_known_default()
                && next.username().is_empty()
                && next.password().is_none()
        });
        if attempt.previous().len() > 3 || !allowed {
            attempt.stop()
        } else {
            attempt.follow()
        }
    });
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(same_origin)
        .timeout(settings.fetch_timeout)
        .connect_timeout(settings.fetch_timeout)
        .build()
        .map_err(|e| JwksError::Fetch(e.to_string()))
}

/// Fetches and parses a key set; returns it with the server's `max-age`, if any.
pub async fn fetch(
    client: &reqwest::Client,
    uri: &str,
    max_bytes: usize,
) -> Result<(KeySet, Option<Duration>), JwksError> {
    let (body, max_age) = get_bounded(client, uri, max_bytes).await?;
    Ok((parse(&body)?, max_age))
}

/// GET with a status check and a body-size cap; returns the body and `max-age`.
async fn get_bounded(
    client: &reqwest::Client,
    uri: &str,
    max_bytes: usize,
) -> Result<(Vec<u8>, Option<Duration>), JwksError> {
    let fetch_err = fetch_error;
    let mut response = client.get(uri).send().await.map_err(fetch_err)?;
    if !response.status().is_success() {
        return Err(JwksError::Status(response.status().as_u16()));
    }
    let max_age = freshness(uri, response.status(), response.headers());
    if response
        .content_length()
        .is_some_and(|len| len > max_bytes as u64)
    {
        return Err(JwksError::TooLarge(max_bytes));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(fetch_err)? {
        if body.len() + chunk.len() > max_bytes {
            return Err(JwksError::TooLarge(max_bytes));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, max_age))
}

/// A failed request as an operator can act on it: a timeout says so, and other failures
/// carry their causes ("error sending request" alone names none). The URL is left out: it is
/// in the configuration, and a redirect target is not ours to log.
fn fetch_error(err: reqwest::Error) -> JwksError {
    if err.is_timeout() {
        return JwksError::Timeout;
    }
    let err = err.without_url();
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    JwksError::Fetch(text)
}

/// How long the server says its answer stays fresh, as a private cache reads RFC 9111:
/// `Cache-Control: max-age` (quoted or not), else `Expires` against `Date`,
/// less the `Age` it has already spent; `no-store` and `no-cache` are no time at all.
/// `None` when the answer says nothing about freshness (no `Cache-Control`, no `Expires`):
/// the configured interval applies then, not a guess from `Last-Modified`. The caller clamps
/// the result into `refresh_min..=refresh_max`.
fn freshness(
    uri: &str,
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
) -> Option<Duration> {
    use http_cache_semantics::{CacheOptions, CachePolicy};
    if !headers.contains_key(http::header::CACHE_CONTROL)
        && !headers.contains_key(http::header::EXPIRES)
    {
        return None;
    }
    let request = http::Request::get(uri).body(()).ok()?;
    let mut response = http::Response::new(());
    *response.status_mut() = status;
    *response.headers_mut() = headers.clone();
    let options = CacheOptions {
        shared: false,
        cache_heuristic: 0.0,
        ..CacheOptions::default()
    };
    let now = std::time::SystemTime::now();
    let policy = CachePolicy::new_options(&request, &response, now, options);
    Some(policy.time_to_live(now))
}

/// Keeps one issuer's key set fresh until the task is aborted.
pub async fn refresh(
    keys: Arc<IssuerKeys>,
    client: reqwest::Client,
    target: Target,
    settings: AuthSettings,
) {
    let mut backoff = Duration::from_secs(1);
    let mut resolved: Option<String> = None;
    let mut admission = Admission::default();
    loop {
        let uri = match (&target, &resolved) {
            (Target::Jwks(uri), _) | (Target::Discovery { .. }, Some(uri)) => Ok(uri.clone()),
            (
                Target::Discovery {
                    issuer,
                    insecure_allow_http,
                },
                None,
            ) => {
                discover(
                    &client,
                    issuer,
                    *insecure_allow_http,
                    settings.max_jwks_bytes,
                )
                .await
            }
        };
        let fetched = match uri {
            Ok(uri) => {
                let fetched = fetch(&client, &uri, settings.max_jwks_bytes).await;
                resolved = fetched.is_ok().then_some(uri);
                fetched.and_then(|(set, max_age)| {
                    admission.admit(&keys.current.load(), &set)?;
                    Ok((set, max_age))
                })
            }
            Err(err) => Err(err),
        };
        let next = match fetched {
            Ok((set, max_age)) => {
                metrics::counter!(crate::telemetry::names::JWKS_FETCHES_TOTAL, "issuer" => keys.issuer.clone(), "result" => "ok").increment(1);
                tracing::info!(issuer = %keys.issuer, keys = set.len(), "key set fetched");
                keys.store(set);
                backoff = Duration::from_secs(1);
                max_age
                    .unwrap_or(settings.refresh_max)
                    .clamp(settings.refresh_min, settings.refresh_max)
            }
            Err(err) => {
                metrics::counter!(crate::telemetry::names::JWKS_FETCHES_TOTAL, "issuer" => keys.issuer.clone(), "result" => "error").increment(1);
                if keys.is_loaded() {
                    tracing::warn!(issuer = %keys.issuer, error = %err, retry_in_seconds = backoff.as_secs(), "key set fetch failed; serving the last good keys");
                } else {
                    tracing::warn!(issuer = %keys.issuer, error = %err, retry_in_seconds = backoff.as_secs(), "key set fetch failed; no key set yet: this issuer's tokens are refused (401) and /readyz is 503");
                }
                let wait = backoff;
                backoff = (backoff * 2).min(settings.refresh_min.max(Duration::from_secs(1)));
                wait
            }
        };
        keys.bump();
        tokio::select! {
            () = tokio::time::sleep(next) => {}
            () = keys.refetch.notified() => {}
        }
    }
}

/// What a refresher fetches.
#[derive(Debug, Clone)]
pub enum Target {
    Jwks(String),
    /// `jwks_uri` from the issuer's OIDC discovery document, resolved again after a failure.
    Discovery {
        issuer: String,
        insecure_allow_http: bool,
    },
}

/// OpenID Connect Discovery 1.0 §4: `<issuer>/.well-known/openid-configuration` → `jwks_uri`.
async fn discover(
    client: &reqwest::Client,
    issuer: &str,
    insecure_allow_http: bool,
    max_bytes: usize,
) -> Result<String, JwksError> {
    #[derive(serde::Deserialize)]
    struct Discovery {
        issuer: String,
        jwks_uri: String,
    }
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let body = get_bounded(client, &url, max_bytes).await?.0;
    let doc: Discovery =
        serde_json::from_slice(&body).map_err(|e| JwksError::Discovery(e.to_string()))?;
    // §4.3: the issuer in the document must be the configured one.
    if doc.issuer != issuer {
        return Err(JwksError::Discovery(format!(
            "document names issuer `{}`",
            doc.issuer
        )));
    }
    if !crate::config::uri_allowed(&doc.jwks_uri, insecure_allow_http) {
        return Err(JwksError::Discovery(format!(
            "jwks_uri `{}` is not https",
            doc.jwks_uri
        )));
    }
    Ok(doc.jwks_uri)
}

/// Describes a source for logs without credentials (URIs are logged without their query).
pub fn describe(source: &JwksSource) -> String {
    match source {
        JwksSource::Uri { uri, .. } => uri.split('?').next().unwrap_or_default().to_owned(),
        JwksSource::Discovery { .. } => "OIDC discovery".to_owned(),
        JwksSource::File(path) => path.display().to_string(),
        JwksSource::Inline(_) => "in memory (ephemeral test key)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_is_read_as_a_private_cache_reads_it() {
        let fresh = |headers: &[(&str, &str)]| {
            let mut map = reqwest::header::HeaderMap::new();
            for (name, value) in headers {
                map.append(
                    reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    value.parse().unwrap(),
                );
            }
            freshness("https://idp.test/jwks", reqwest::StatusCode::OK, &map).map(|d| d.as_secs())
        };
        assert_eq!(
            fresh(&[("cache-control", "public, max-age=600")]),
            Some(600)
        );
        // The crate compares directive names case-sensitively (RFC 9111 §5.2 says not to):
        // an upper-case spelling is no freshness, so the keys are fetched at the minimum
        // interval; the safe direction, and IdPs send lower case.
        assert_eq!(fresh(&[("cache-control", "Max-Age=600")]), Some(0));
        assert_eq!(fresh(&[("cache-control", "max-age=\"600\"")]), Some(600));
        assert_eq!(
            fresh(&[("cache-control", "private, max-age=600")]),
            Some(600)
        );
        // Time already spent in a cache on the way counts.
        assert_eq!(
            fresh(&[("cache-control", "max-age=600"), ("age", "100")]),
            Some(500)
        );
        assert_eq!(
            fresh(&[("cache-control", "no-store, max-age=600")]),
            Some(0)
        );
        assert_eq!(fresh(&[("cache-control", "no-cache")]), Some(0));
        let now = std::time::SystemTime::now();
        let date = httpdate::fmt_http_date(now);
        let later = httpdate::fmt_http_date(now + Duration::from_secs(300));
        let expires = fresh(&[("date", &date), ("expires", &later)]).unwrap();
        assert!((298..=300).contains(&expires), "{expires}");
        // Saying nothing is not "no time": the configured interval applies.
        assert_eq!(fresh(&[]), None);
        assert_eq!(
            fresh(&[("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")]),
            None
        );
    }

    const RFC8037_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
    const OTHER_X: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

    fn jwks(keys: &[(&str, &str)]) -> KeySet {
        let keys: Vec<_> = keys
            .iter()
            .map(|(kid, x)| serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": x}))
            .collect();
        parse(serde_json::json!({ "keys": keys }).to_string().as_bytes()).unwrap()
    }

    #[test]
    fn a_refresh_keeps_unchanged_keys_and_replaces_changed_ones() {
        let old = jwks(&[("a", RFC8037_X), ("b", RFC8037_X)]);
        let mut new = jwks(&[("a", RFC8037_X), ("b", OTHER_X)]);
        let (old_a, old_b) = (old.find(Some("a")).unwrap(), old.find(Some("b")).unwrap());
        assert!(!new.contains(old_a), "fresh parse, fresh Arcs");
        new.reuse(&old);
        assert!(
            new.contains(old_a),
            "same kid, same material: the cached token stays valid"
        );
        assert!(
            !new.contains(old_b),
            "same kid, new material: cached tokens die"
        );
    }

    #[test]
    fn member_order_does_not_change_a_key() {
        let body = |doc: &str| parse(doc.as_bytes()).unwrap();
        let old = body(&format!(
            r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","kid":"a","x":"{RFC8037_X}"}}]}}"#
        ));
        let mut new = body(&format!(
            r#"{{"keys":[{{"x":"{RFC8037_X}","kid":"a","crv":"Ed25519","kty":"OKP"}}]}}"#
        ));
        new.reuse(&old);
        assert!(new.contains(old.find(Some("a")).unwrap()));
    }

    #[test]
    fn an_empty_or_wholly_replaced_set_is_a_failed_fetch() {
        let in_force = jwks(&[("a", RFC8037_X)]);
        let mut admission = Admission::default();
        // Review round 2: `200 {"keys":[]}` replaced the last good keys.
        assert!(admission.admit(&in_force, &jwks(&[])).is_err());
        // A rotation keeps a key in common: taken at once.
        let rotated = jwks(&[("a", RFC8037_X), ("b", OTHER_X)]);
        assert!(admission.admit(&in_force, &rotated).is_ok());
        // Every key replaced at once: refused once, taken when served again.
        let replaced = jwks(&[("b", OTHER_X)]);
        assert!(admission.admit(&in_force, &replaced).is_err());
        assert!(admission.admit(&in_force, &replaced).is_ok());
        // A different disjoint set in between starts the wait again.
        let mut admission = Admission::default();
        assert!(admission.admit(&in_force, &replaced).is_err());
        assert!(
            admission
                .admit(&in_force, &jwks(&[("c", OTHER_X)]))
                .is_err()
        );
        // The first set of all is taken as it is.
        assert!(
            Admission::default()
                .admit(&KeySet::default(), &replaced)
                .is_ok()
        );
    }
}
