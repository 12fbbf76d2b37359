//! An authorizer without a server, for `cedargate test` and `cedargate check`: the real
//! policy set, the real Check stages ([`crate::server::check::explain`]) and real token
//! verification, with every issuer's keys replaced by one ephemeral ES256 key generated for
//! the run (aws-lc-rs). Claims written in a test are signed with that key, so a test exercises
//! signature verification, the issuer's claim rules and the claim → principal mapping.
//! Nothing is fetched and nothing listens.

use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value, json};

use crate::config::{
    AuthSettings, Config, IssuerConfig, JwksSource, Limits, PeerSettings, PolicySource,
};
use crate::identity::authn::Authenticator;
use crate::policy::PolicyLoadError;
use crate::server::Shared;
use crate::server::check::{self, CheckOptions, Explained};

/// The key id of the ephemeral signing key.
const KID: &str = "cedargate-test";
/// How long a signed test token is valid when the claims do not say.
const LIFETIME_SECS: i64 = 300;

/// Why an offline authorizer could not be built or a token not signed.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error(transparent)]
    Policy(#[from] PolicyLoadError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot set up the test issuers: {0}")]
    Authn(#[from] crate::identity::authn::AuthnError),
    #[error("cannot generate the ephemeral signing key")]
    KeyGeneration,
    #[error("cannot sign the test token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
    #[error(
        "issuer `{0}` is not one of the test issuers; declare it under `issuers:` in the test file or in --config"
    )]
    UnknownIssuer(String),
    #[error("the token claims must be a mapping of claim names to values")]
    ClaimsNotObject,
    #[error("issuers: {0}")]
    Issuers(String),
    #[error(
        "issuer `{issuer}`: `{entity_type}` (its principal_type or group_type) is not an entity type of the schema; declare it or change the issuer's setting"
    )]
    IssuerType { issuer: String, entity_type: String },
}

/// The `iss` of [`default_issuer`].
pub const STAND_IN_ISSUER: &str = "https://issuer.test";

/// The issuer used when neither the test file nor `--config` names one: `iss`
/// `https://issuer.test`, audience `cedargate-test`, principal type `User`, groups in `groups`.
pub fn default_issuer() -> Result<IssuerConfig, OfflineError> {
    let entry: yaml_serde::Value = yaml_serde::from_str(
        "{ issuer: \"https://issuer.test\", audiences: [cedargate-test], groups_claim: groups }",
    )
    .map_err(|err| OfflineError::Issuers(err.to_string()))?;
    crate::config::issuers_without_keys(vec![entry])
        .map_err(OfflineError::Issuers)?
        .pop()
        .ok_or_else(|| OfflineError::Issuers("no default issuer".into()))
}

/// Settings an offline run takes from a configuration file.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub issuers: Vec<IssuerConfig>,
    pub auth: AuthSettings,
    pub peer: PeerSettings,
    pub limits: Limits,
    pub dry_run: bool,
    /// The identity header names the answer shows.
    pub identity_headers: crate::config::IdentityHeaders,
    /// The configuration's policy set (its `policies.dir`, else the compiled-in example set).
    pub policies: Option<PolicySource>,
    /// Entity types fetched from the entity source (the configuration's
    /// `entity_source.types`, and the types of the entities test cases give): offline, the
    /// source answers with a case's `entities`, never over the network.
    pub entity_types: Vec<String>,
}

impl Settings {
    /// Reads the parts of a configuration file that change decisions.
    pub fn from_config(path: &Path) -> Result<Self, crate::config::ConfigError> {
        let config = Config::load(path)?;
        Ok(Self {
            issuers: config.issuers,
            auth: config.auth,
            peer: config.peer,
            limits: config.limits,
            dry_run: config.dry_run,
            identity_headers: config.identity_headers,
            policies: Some(config.policies),
            entity_types: config
                .entity_source
                .map(|source| source.types.into_keys().collect())
                .unwrap_or_default(),
        })
    }
}

/// The ephemeral ES256 key and its public JWKS.
struct Signer {
    encoding: EncodingKey,
    jwks: String,
}

impl Signer {
    fn generate() -> Result<Self, OfflineError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| OfflineError::KeyGeneration)?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .map_err(|_| OfflineError::KeyGeneration)?;
        // Uncompressed point: 0x04 || x (32 bytes) || y (32 bytes).
        let point = pair.public_key().as_ref();
        let (x, y) = point
            .get(1..)
            .filter(|xy| xy.len() == 64)
            .map(|xy| xy.split_at(32))
            .ok_or(OfflineError::KeyGeneration)?;
        let jwks = json!({ "keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": KID,
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
        }]});
        Ok(Self {
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwks: jwks.to_string(),
        })
    }
}

/// A policy set, the test issuers and the Check stages, ready to decide CheckRequests.
pub struct Offline {
    pub shared: Arc<Shared>,
    /// What the entity source answers for the case being decided.
    source: Arc<CaseSource>,
    signer: Signer,
    issuers: Vec<IssuerConfig>,
    /// No issuer came from a test file or the configuration: tokens are signed by the
    /// stand-in issuer, which `serve` would not trust ([`Offline::differences`]).
    stand_in: bool,
}

impl std::fmt::Debug for Offline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offline")
            .field("issuers", &self.issuers.len())
            .finish_non_exhaustive()
    }
}

impl Offline {
    /// Loads `policies` and trusts `test_issuers` (a test file's), else the configuration's
    /// issuers, else [`default_issuer`], all with the ephemeral key; as at start-up, every
    /// issuer's principal type must be in the schema. Must run inside a tokio runtime.
    pub fn new(
        policies: &PolicySource,
        settings: &Settings,
        test_issuers: Option<Vec<IssuerConfig>>,
    ) -> Result<Self, OfflineError> {
        let snapshot = crate::app::load_policies(policies)?;
        let signer = Signer::generate()?;
        let mut auth = settings.auth.clone();
        let mut issuers: Vec<IssuerConfig> = match test_issuers {
            Some(issuers) if !issuers.is_empty() => issuers,
            _ if !settings.issuers.is_empty() => settings.issuers.clone(),
            _ => {
                // `serve` with no issuer requires no token: the stand-in issuer only signs
                // the tokens a case asks for, and must not make a tokenless request a 401.
                auth.require_token = false;
                vec![default_issuer()?]
            }
        };
        let stand_in = issuers.len() == 1
            && settings.issuers.is_empty()
            && issuers.first().is_some_and(|i| i.issuer == STAND_IN_ISSUER);
        if let Some((issuer, missing)) = crate::reload::IssuerTypes::of(&issuers).missing(&snapshot)
        {
            return Err(OfflineError::IssuerType {
                issuer: issuer.to_owned(),
                entity_type: missing.to_owned(),
            });
        }
        for issuer in &mut issuers {
            issuer.jwks = JwksSource::Inline(signer.jwks.clone());
            issuer.algorithms = vec![Algorithm::ES256];
        }
        let authn = Authenticator::start(issuers.clone(), auth)?;
        let source = Arc::new(CaseSource::default());
        let options = CheckOptions {
            dry_run: settings.dry_run,
            identity_headers: settings.identity_headers.clone(),
            entities: case_entity_cache(&source, &settings.entity_types),
            ..CheckOptions::with_secrets(&settings.auth.token_source)
        };
        let shared = Shared::new(
            snapshot,
            authn,
            settings.limits,
            settings.peer.clone(),
            options,
        );
        shared
            .ready
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(Self {
            shared: Arc::new(shared),
            source,
            signer,
            issuers,
            stand_in,
        })
    }

    /// What this run decides differently from `serve` with the same configuration, to be
    /// shown to the user (empty when nothing differs).
    pub fn differences(&self) -> Vec<String> {
        if self.stand_in {
            vec![format!(
                "no issuer is configured (give --config, or issuers: in the test file): tokens are signed by the stand-in issuer {STAND_IN_ISSUER}, which serve would not trust; requests without a token are decided as serve without issuers decides them (no token required)"
            )]
        } else {
            Vec::new()
        }
    }

    /// Signs `claims` for the issuer named by `issuer`, else by the claims' `iss`, else the
    /// first issuer. Missing `iss`, `aud`, `iat` and `exp` are filled in (valid for 5
    /// minutes); a claim given as `null` is left out, so tests can send incomplete tokens.
    pub fn sign(&self, claims: &Value, issuer: Option<&str>) -> Result<String, OfflineError> {
        let Value::Object(given) = claims else {
            return Err(OfflineError::ClaimsNotObject);
        };
        let wanted = issuer.or_else(|| given.get("iss").and_then(Value::as_str));
        let config = match wanted {
            Some(name) => self.issuers.iter().find(|i| i.issuer == name),
            None => self.issuers.first(),
        };
        let config = match (config, wanted, issuer) {
            (Some(config), _, _) => config,
            // An `iss` no test issuer has: sign it anyway; verification refuses it, as it should.
            (None, Some(_), None) => self
                .issuers
                .first()
                .ok_or_else(|| OfflineError::UnknownIssuer(String::new()))?,
            (None, name, _) => {
                return Err(OfflineError::UnknownIssuer(
                    name.unwrap_or_default().to_owned(),
                ));
            }
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let mut full = Map::new();
        full.insert("iss".into(), json!(config.issuer));
        if let Some(audience) = config.audiences.first() {
            full.insert("aud".into(), json!(audience));
        }
        full.insert("iat".into(), json!(now));
        full.insert("exp".into(), json!(now.saturating_add(LIFETIME_SECS)));
        for (name, value) in given {
            if value.is_null() {
                full.remove(name);
            } else {
                full.insert(name.clone(), value.clone());
            }
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(KID.into());
        Ok(jsonwebtoken::encode(
            &header,
            &Value::Object(full),
            &self.signer.encoding,
        )?)
    }

    /// Decides one CheckRequest as the server would.
    pub async fn explain(&self, request: CheckRequest) -> Explained {
        self.explain_with(request, &[]).await
    }

    /// [`Self::explain`], with the entity source answering with `entities` (Cedar entity JSON;
    /// the uids it is asked for among them). Cases are decided one at a time.
    pub async fn explain_with(&self, request: CheckRequest, entities: &[Value]) -> Explained {
        *self
            .source
            .answer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = entities.to_vec();
        check::explain(&self.shared, request, self.shared.limits.check_timeout).await
    }
}

/// The entity source of an offline run: whatever the case being decided gives.
#[derive(Default)]
struct CaseSource {
    answer: std::sync::Mutex<Vec<Value>>,
}

impl crate::entities::EntitySource for CaseSource {
    fn fetch<'a>(
        &'a self,
        _uids: &'a [cedar_policy::EntityUid],
    ) -> futures_util::future::BoxFuture<'a, Result<Vec<Value>, crate::entities::SourceError>> {
        let answer = self
            .answer
            .lock()
            .map(|a| a.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        Box::pin(async move { Ok(answer) })
    }
}

/// An entity cache over the case source for `types`, keeping nothing from one case to the
/// next (every lookup asks the source); `None` without fetched types.
fn case_entity_cache(
    source: &Arc<CaseSource>,
    types: &[String],
) -> Option<crate::entities::cache::EntityCache> {
    if types.is_empty() {
        return None;
    }
    let none = std::time::Duration::from_nanos(1);
    let settings = crate::config::EntitySourceSettings {
        url: String::new(),
        ca_file: None,
        client_cert: None,
        client_key: None,
        bearer_token_file: None,
        timeout: std::time::Duration::from_secs(5),
        max_response_bytes: usize::MAX,
        types: types
            .iter()
            .map(|name| {
                let kept = crate::config::EntityTypeSettings {
                    ttl: none,
                    negative_ttl: none,
                    max_entries: 1024,
                    max_stale: std::time::Duration::ZERO,
                };
                (name.clone(), kept)
            })
            .collect(),
    };
    let source: Arc<dyn crate::entities::EntitySource> = Arc::clone(source) as _;
    Some(crate::entities::cache::EntityCache::new(source, &settings))
}
