//! Real keys and a real JWKS server for tests: keys are generated (rcgen, aws-lc-rs), tokens
//! are signed with jsonwebtoken, and the key set is served over HTTP on 127.0.0.1 by axum,
//! counting its fetches.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// A generated signing key and its public JWK.
pub struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    pub jwk: Value,
}

impl TestKey {
    /// A fresh key for `alg` (RS256, ES256, ES384 or EdDSA) with key id `kid`.
    pub fn generate(alg: Algorithm, kid: &str) -> Self {
        let (rcgen_alg, curve) = match alg {
            Algorithm::RS256 => (&rcgen::PKCS_RSA_SHA256, None),
            Algorithm::ES256 => (&rcgen::PKCS_ECDSA_P256_SHA256, Some("P-256")),
            Algorithm::ES384 => (&rcgen::PKCS_ECDSA_P384_SHA384, Some("P-384")),
            Algorithm::EdDSA => (&rcgen::PKCS_ED25519, None),
            other => panic!("no test keys for {other:?}"),
        };
        let pair = rcgen::KeyPair::generate_for(rcgen_alg).unwrap();
        let pem = pair.serialize_pem();
        let raw = pair.public_key_raw();
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        let (encoding, jwk) = match alg {
            Algorithm::RS256 => {
                let encoding = EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
                let mut jwk =
                    serde_json::to_value(Jwk::from_encoding_key(&encoding, alg).unwrap()).unwrap();
                jwk["kid"] = json!(kid);
                (encoding, jwk)
            }
            Algorithm::EdDSA => (
                EncodingKey::from_ed_pem(pem.as_bytes()).unwrap(),
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64(raw), "kid": kid, "alg": "EdDSA", "use": "sig"}),
            ),
            _ => {
                // Uncompressed point: 0x04 || x || y.
                let (x, y) = raw[1..].split_at((raw.len() - 1) / 2);
                (
                    EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
                    json!({"kty": "EC", "crv": curve.unwrap(), "x": b64(x), "y": b64(y), "kid": kid, "use": "sig"}),
                )
            }
        };
        Self {
            kid: kid.to_owned(),
            alg,
            encoding,
            jwk,
        }
    }

    /// Signs `claims` with header `{alg, kid, typ: JWT}`.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        self.sign_with(header, claims)
    }

    /// Signs `claims` with a header of the caller's making.
    pub fn sign_with(&self, header: Header, claims: &Value) -> String {
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims valid for five minutes from `iss` for audience `aud` about `sub`.
pub fn claims(iss: &str, aud: &str, sub: &str) -> Value {
    let now = now();
    json!({"iss": iss, "aud": aud, "sub": sub, "iat": now, "exp": now + 300})
}

/// Base64url-encodes a raw JWS part (for hand-made attack tokens).
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

#[derive(Clone)]
struct JwksState {
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
    max_age: Arc<Mutex<Option<u64>>>,
    /// Answers wait while a test holds this for writing.
    gate: Arc<tokio::sync::RwLock<()>>,
    /// Bytes of padding added to the document (an oversized key set).
    padding: Arc<AtomicUsize>,
    /// When set, answer with a redirect to this URL instead.
    redirect: Arc<Mutex<Option<String>>>,
    /// When set, answer with this status and body instead (a broken key server).
    failure: Arc<Mutex<Option<(u16, String)>>>,
}

/// A JWKS endpoint on 127.0.0.1 serving whatever keys the test sets.
pub struct JwksServer {
    pub addr: SocketAddr,
    state: JwksState,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    pub async fn start(keys: &[&TestKey]) -> Self {
        let state = JwksState {
            keys: Arc::new(Mutex::new(keys.iter().map(|k| k.jwk.clone()).collect())),
            fetches: Arc::new(AtomicUsize::new(0)),
            max_age: Arc::new(Mutex::new(None)),
            gate: Arc::new(tokio::sync::RwLock::new(())),
            padding: Arc::new(AtomicUsize::new(0)),
            redirect: Arc::new(Mutex::new(None)),
            failure: Arc::new(Mutex::new(None)),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // OIDC discovery: this server is its own issuer, `http://127.0.0.1:<port>`.
        let discovery = json!({
            "issuer": format!("http://{addr}"),
            "jwks_uri": format!("http://{addr}/jwks.json"),
        })
        .to_string();
        let app =
            Router::new()
                .route("/jwks.json", get(serve))
                .route(
                    "/.well-known/openid-configuration",
                    get(move || async move {
                        ([(header::CONTENT_TYPE, "application/json")], discovery)
                    }),
                )
                .with_state(state.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self {
            addr,
            state,
            stop: Some(stop),
            task,
        }
    }

    /// The issuer URL for OIDC discovery against this server.
    pub fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn uri(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    pub fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }

    pub fn set_keys(&self, keys: &[&TestKey]) {
        *self.state.keys.lock().unwrap() = keys.iter().map(|k| k.jwk.clone()).collect();
    }

    /// Holds every answer until the guard is dropped (a slow key server).
    pub async fn hold(&self) -> tokio::sync::OwnedRwLockWriteGuard<()> {
        self.state.gate.clone().write_owned().await
    }

    /// Pads the document to be larger than `bytes`.
    pub fn pad(&self, bytes: usize) {
        self.state.padding.store(bytes, Ordering::SeqCst);
    }

    /// Answers with `302 Location: url`.
    pub fn redirect_to(&self, url: &str) {
        *self.state.redirect.lock().unwrap() = Some(url.to_owned());
    }

    /// Answers every fetch with `status` and `body` (`None` restores normal answers).
    pub fn fail_with(&self, failure: Option<(u16, &str)>) {
        *self.state.failure.lock().unwrap() = failure.map(|(s, b)| (s, b.to_owned()));
    }

    pub fn set_max_age(&self, seconds: u64) {
        *self.state.max_age.lock().unwrap() = Some(seconds);
    }

    /// Stops serving; the port then refuses connections.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

async fn serve(
    State(state): State<JwksState>,
) -> (StatusCode, [(header::HeaderName, String); 2], String) {
    state.fetches.fetch_add(1, Ordering::SeqCst);
    let _open = state.gate.read().await;
    if let Some(url) = state.redirect.lock().unwrap().clone() {
        return (
            StatusCode::FOUND,
            [
                (header::LOCATION, url),
                (header::CACHE_CONTROL, "no-store".to_owned()),
            ],
            String::new(),
        );
    }
    if let Some((status, body)) = state.failure.lock().unwrap().clone() {
        return (
            StatusCode::from_u16(status).unwrap(),
            [
                (header::CONTENT_TYPE, "application/json".to_owned()),
                (header::CACHE_CONTROL, "no-store".to_owned()),
            ],
            body,
        );
    }
    let keys = state.keys.lock().unwrap().clone();
    let padding = "x".repeat(state.padding.load(Ordering::SeqCst));
    let cache = state
        .max_age
        .lock()
        .unwrap()
        .map_or_else(|| "no-store".to_owned(), |s| format!("max-age={s}"));
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (header::CACHE_CONTROL, cache),
        ],
        json!({ "keys": keys, "padding": padding }).to_string(),
    )
}
