//! Bearer tokens: extraction from the request (RFC 6750 §2.1), strict JOSE parsing before any
//! key lookup (RFC 7515), and verification against one issuer's keys (RFC 7519, RFC 8725).
//!
//! Order of checks, cheapest and least trusting first: size → exactly three base64url parts
//! (no padding, no `+` or `/`) → JSON nesting depth → header: `alg` is not `none` or HMAC, no
//! `jku`/`jwk`/`x5u`/`x5c` (never trusted), no `crit` → issuer by `iss` → `alg` in the issuer's
//! allowlist → key by `kid` → key type fits `alg` → signature and claims (jsonwebtoken, with a
//! `Validation` built at load) → `iat` not in the future, lifetime within `max_token_age`,
//! required claims present. Errors never carry the token.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::Value;

use super::jwks::{KeySet, VerifyKey};
use crate::config::{IssuerConfig, TokenSource};

/// Why a token was refused; each is an HTTP 401 with its [`TokenError::code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenError {
    #[error("no bearer token")]
    Missing,
    #[error("more than one Authorization header")]
    Duplicate,
    #[error("token in the query string")]
    InQuery,
    #[error("token is {0} bytes, over the limit")]
    TooLarge(usize),
    #[error("token is malformed: {0}")]
    Malformed(Cow<'static, str>),
    #[error("algorithm `{0}` is not accepted")]
    Algorithm(String),
    #[error("header parameter `{0}` is not trusted")]
    UntrustedHeader(Cow<'static, str>),
    #[error("the token has critical header parameters cedargate does not understand")]
    UnknownCrit,
    #[error("issuer is not trusted")]
    UnknownIssuer,
    #[error("no key with the token's `kid`")]
    UnknownKid,
    #[error("the key does not fit the token's algorithm")]
    KeyMismatch,
    #[error("signature does not verify")]
    BadSignature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token was issued in the future")]
    IssuedInFuture,
    #[error("token lives longer than the issuer's max_token_age")]
    TooOld,
    #[error("token is not meant for this audience")]
    Audience,
    #[error("claim `{0}` is missing")]
    MissingClaim(String),
    /// A claim the schema declares (typed claims) has another type, or a required one is
    /// missing (`problem`: "is not a Set of String", "is missing"); names the claim
    /// (`realm_access.roles`), never its value.
    #[error("claim `{claim}` {problem}")]
    InvalidClaim { claim: String, problem: String },
    #[error("the token is not bound to the peer's certificate")]
    CertBinding,
    #[error("the token's `cnf` names a proof of possession cedargate cannot check")]
    UnsupportedBinding,
    #[error("the token's `typ` is not one the issuer's token_types accepts")]
    Type,
}

impl TokenError {
    /// The reason code in the 401 body, metrics and logs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "missing_token",
            Self::Duplicate => "duplicate_token",
            Self::InQuery => "token_in_query",
            Self::TooLarge(_) => "token_too_large",
            Self::Malformed(_) => "malformed_token",
            Self::Algorithm(_) => "unsupported_algorithm",
            Self::UntrustedHeader(_) => "untrusted_key_header",
            Self::UnknownCrit => "unknown_crit",
            Self::UnknownIssuer => "unknown_issuer",
            Self::UnknownKid => "unknown_kid",
            Self::KeyMismatch => "key_mismatch",
            Self::BadSignature => "bad_signature",
            Self::Expired => "token_expired",
            Self::NotYetValid => "token_not_yet_valid",
            Self::IssuedInFuture => "token_issued_in_future",
            Self::TooOld => "token_too_old",
            Self::Audience => "audience_mismatch",
            Self::MissingClaim(_) => "missing_claim",
            Self::InvalidClaim { .. } => "invalid_claim",
            Self::CertBinding => "cert_binding_mismatch",
            Self::UnsupportedBinding => "unsupported_binding",
            Self::Type => "wrong_token_type",
        }
    }

    /// Whether the same token could pass later (then it is not remembered as failed).
    pub fn may_change(&self) -> bool {
        matches!(
            self,
            Self::UnknownKid | Self::NotYetValid | Self::IssuedInFuture
        )
    }
}

/// A verified token, reduced to what the Cedar mapping needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    pub issuer: String,
    pub subject: String,
    pub principal_type: String,
    /// The entity type of `groups` (the issuer's `group_type`).
    pub group_type: String,
    pub audience: Vec<String>,
    pub scopes: Vec<String>,
    pub groups: Vec<String>,
    pub expires_at: i64,
    pub issued_at: Option<i64>,
    /// Every claim, strings as they are and other values as JSON text (the tag form).
    pub claims: BTreeMap<String, String>,
    /// Every claim as the token carried it, for the typed form the schema declares.
    pub claims_json: std::sync::Arc<serde_json::Map<String, Value>>,
    /// RFC 8705 `cnf.x5t#S256`, when the token is bound to a certificate.
    pub cnf_x5t_s256: Option<String>,
    /// The issuer requires the binding to be checked against the peer on every request.
    pub require_cert_binding: bool,
    /// The Cedar parts of this token's principal, built once per policy snapshot by the
    /// mapping and cached with the token (they leave the token cache with it).
    pub cedar: super::memo::Memo,
    /// The claims converted to the record the snapshot's schema declares (or why they do not
    /// fit it), once per policy snapshot (`policy/claims.rs`).
    pub typed_claims: super::memo::Memo,
}

impl VerifiedToken {
    /// RFC 8705 §3: a bound token is only valid from the certificate it is bound to. Checked on
    /// every request (a cached token may be replayed from another workload).
    pub fn check_binding(&self, peer_sha256: Option<&[u8; 32]>) -> Result<(), TokenError> {
        // A token bound to a certificate is checked whether or not its issuer requires
        // binding: accepting it as a plain bearer token would drop the sender constraint.
        if !self.require_cert_binding && self.cnf_x5t_s256.is_none() {
            return Ok(());
        }
        let thumbprint = peer_sha256.map(|sha| URL_SAFE_NO_PAD.encode(sha));
        match (&self.cnf_x5t_s256, thumbprint) {
            (Some(bound), Some(actual)) if *bound == actual => Ok(()),
            _ => Err(TokenError::CertBinding),
        }
    }
}

/// The claims in the tag form ([`VerifiedToken::claims`]): strings as they are, other values
/// as JSON text.
pub fn tag_claims(claims: &serde_json::Map<String, Value>) -> BTreeMap<String, String> {
    claims
        .iter()
        .map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), text)
        })
        .collect()
}

/// Finds the bearer token of a request: `Authorization: Bearer …` (scheme case-insensitive),
/// or the configured header, cookie or query parameter. RFC 6750 §2: one method per request,
/// so a token in two places is refused; Envoy joins repeated headers with `,`, which never
/// occurs in a JWT, so a `,` means two Authorization headers.
pub fn extract<'r>(
    headers: &'r BTreeMap<String, String>,
    query: &'r BTreeMap<String, String>,
    source: &TokenSource,
) -> Result<Option<&'r str>, TokenError> {
    let mut found = Vec::new();
    if let Some(value) = headers.get("authorization") {
        if value.contains(',') {
            return Err(TokenError::Duplicate);
        }
        let value = value.trim();
        if value.eq_ignore_ascii_case("bearer") {
            return Err(TokenError::Malformed(Cow::Borrowed("empty bearer token")));
        }
        // Any whitespace separates scheme and token (`Bearer<TAB>x` is a bearer token to
        // lenient upstream parsers, so it must be one here too); a scheme that only starts
        // like `Bearer` (`Bearer:x`, `BearerX`) is refused rather than ignored.
        let (scheme, token) = value
            .split_once(|c: char| c.is_ascii_whitespace())
            .unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            found.push(token.trim_start());
        } else if scheme
            .get(..6)
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case("bearer"))
        {
            return Err(TokenError::Malformed(Cow::Borrowed("not a bearer token")));
        }
    }
    if let Some(value) = source.header.as_ref().and_then(|name| headers.get(name)) {
        found.push(value.trim());
    }
    if let Some(name) = &source.cookie {
        let cookies = headers
            .get("cookie")
            .map(String::as_str)
            .unwrap_or_default();
        found.extend(
            cookies
                .split(';')
                .filter_map(|pair| pair.trim().split_once('='))
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v),
        );
    }
    match &source.query {
        Some(name) => found.extend(query.get(name).map(String::as_str)),
        // Any spelling a lenient upstream reads as `access_token` (`Access_Token`,
        // `access.token`, `access_token[]`).
        None if query
            .keys()
            .any(|k| crate::request::query_name_key(k) == "access_token") =>
        {
            return Err(TokenError::InQuery);
        }
        None => {}
    }
    match found.as_slice() {
        [] => Ok(None),
        [token] if token.is_empty() || token.contains(char::is_whitespace) => {
            Err(TokenError::Malformed(Cow::Borrowed("not a bearer token")))
        }
        [token] => Ok(Some(token)),
        _ => Err(TokenError::Duplicate),
    }
}

/// JOSE header parameters cedargate reads. Duplicates of these are refused by serde.
#[derive(Debug, Deserialize)]
struct JoseHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
    #[serde(default)]
    jku: Option<Value>,
    #[serde(default)]
    jwk: Option<Value>,
    #[serde(default)]
    x5u: Option<Value>,
    #[serde(default)]
    x5c: Option<Value>,
    #[serde(default)]
    typ: Option<String>,
}

/// What the unverified token says about itself, checked before any key is looked up.
#[derive(Debug)]
pub struct Inspected {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub issuer: String,
    /// The JOSE `typ`, when the token names one (RFC 8725 §3.11 explicit typing).
    pub typ: Option<String>,
}

const MAX_JSON_DEPTH: usize = 16;

/// Structural checks of the unverified token.
pub fn inspect(token: &str, max_bytes: usize) -> Result<Inspected, TokenError> {
    if token.len() > max_bytes {
        return Err(TokenError::TooLarge(token.len()));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed(Cow::Borrowed(
            "a JWS has three parts",
        )));
    };
    if signature.is_empty() {
        return Err(TokenError::Malformed(Cow::Borrowed("empty signature")));
    }
    let decode = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| TokenError::Malformed(Cow::Borrowed("not base64url without padding")))
    };
    decode(signature)?;
    let header: JoseHeader = json(&decode(header)?)?;
    let claims: serde_json::Map<String, Value> = json(&decode(payload)?)?;

    let bad_alg = || TokenError::Algorithm(crate::text::clip(&header.alg));
    if header.alg.eq_ignore_ascii_case("none") {
        return Err(bad_alg());
    }
    let alg: Algorithm = header.alg.parse().map_err(|_| bad_alg())?;
    if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
        return Err(bad_alg());
    }
    for (name, present) in [
        ("jku", header.jku.is_some()),
        ("jwk", header.jwk.is_some()),
        ("x5u", header.x5u.is_some()),
        ("x5c", header.x5c.is_some()),
    ] {
        if present {
            return Err(TokenError::UntrustedHeader(name.into()));
        }
    }
    if header.crit.is_some() {
        return Err(TokenError::UnknownCrit);
    }
    let issuer = match claims.get("iss") {
        Some(Value::String(iss)) => iss.clone(),
        _ => return Err(TokenError::MissingClaim("iss".into())),
    };
    Ok(Inspected {
        alg,
        kid: header.kid,
        issuer,
        typ: header.typ,
    })
}

/// A NumericDate claim (RFC 7519 §2) as whole seconds, rounded with `round`; not a number
/// (or not finite) is a malformed token.
fn numeric_date(value: &Value, round: fn(f64) -> f64) -> Result<i64, TokenError> {
    if let Some(seconds) = value.as_i64() {
        return Ok(seconds);
    }
    let seconds = value
        .as_f64()
        .filter(|f| f.is_finite())
        .ok_or(TokenError::Malformed(Cow::Borrowed(
            "a date claim is not a number",
        )))?;
    // Saturating: a date beyond i64 seconds is as good as never / forever.
    #[allow(clippy::cast_possible_truncation)]
    Ok(round(seconds) as i64)
}

/// RFC 8705 / RFC 7800 `cnf`: the certificate thumbprint a token is bound to. A confirmation
/// method cedargate cannot check (`jkt` for DPoP, `jwk`, `jwe`, `kid`) makes the token
/// unusable here rather than a plain bearer token.
fn certificate_binding(cnf: Option<&Value>) -> Result<Option<String>, TokenError> {
    let Some(cnf) = cnf else {
        return Ok(None);
    };
    let Some(members) = cnf.as_object() else {
        return Err(TokenError::UnsupportedBinding);
    };
    if members.keys().any(|k| k != "x5t#S256") {
        return Err(TokenError::UnsupportedBinding);
    }
    match members.get("x5t#S256") {
        Some(Value::String(thumbprint)) => Ok(Some(thumbprint.clone())),
        _ => Err(TokenError::UnsupportedBinding),
    }
}

/// Parses JSON after checking its nesting depth (serde_json's own limit is 128).
fn json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, TokenError> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        match (in_string, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => in_string = false,
            (false, _, b'"') => in_string = true,
            (false, _, b'{' | b'[') => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(TokenError::Malformed(Cow::Borrowed(
                        "JSON nested too deeply",
                    )));
                }
            }
            (false, _, b'}' | b']') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    serde_json::from_slice(bytes)
        .map_err(|_| TokenError::Malformed(Cow::Borrowed("not a JSON object")))
}

/// One trusted issuer, with a `Validation` per accepted algorithm built at load.
#[derive(Debug)]
pub struct IssuerPolicy {
    pub config: IssuerConfig,
    validations: HashMap<Algorithm, Validation>,
}

impl IssuerPolicy {
    pub fn new(config: IssuerConfig) -> Self {
        let validations = config
            .algorithms
            .iter()
            .map(|&alg| {
                // Every field set here on purpose: jsonwebtoken's defaults are not ours.
                let mut v = Validation::new(alg);
                v.algorithms = vec![alg];
                v.leeway = config.leeway.as_secs();
                v.reject_tokens_expiring_in_less_than = 0;
                v.validate_exp = true;
                v.validate_nbf = true;
                v.validate_aud = true;
                v.set_audience(&config.audiences);
                v.set_issuer(&[&config.issuer]);
                v.sub = None;
                // `exp` is required below, after its type is checked: jsonwebtoken reports an
                // `exp` of the wrong type as a missing claim, which misleads whoever debugs it.
                v.required_spec_claims = ["iss", "aud", "sub"]
                    .iter()
                    .map(|c| (*c).to_owned())
                    .collect();
                (alg, v)
            })
            .collect();
        Self {
            config,
            validations,
        }
    }

    /// RFC 8725 §3.11: the token's `typ` is one of the issuer's `token_types` (compared
    /// without case and without an `application/` prefix, RFC 7515 §4.1.9).
    fn accepts_type(&self, typ: Option<&str>) -> bool {
        let bare = |t: &str| {
            let lower = t.to_ascii_lowercase();
            lower
                .strip_prefix("application/")
                .map_or_else(|| lower.clone(), str::to_owned)
        };
        typ.is_some_and(|typ| {
            let typ = bare(typ);
            self.config.token_types.iter().any(|t| bare(t) == typ)
        })
    }

    /// Verifies a token whose issuer is this one, against `keys`; returns the key used.
    pub fn verify(
        &self,
        token: &str,
        inspected: &Inspected,
        keys: &KeySet,
        now: i64,
    ) -> Result<(VerifiedToken, Arc<VerifyKey>), TokenError> {
        let validation = self
            .validations
            .get(&inspected.alg)
            .ok_or_else(|| TokenError::Algorithm(format!("{:?}", inspected.alg)))?;
        let key = keys
            .find(inspected.kid.as_deref())
            .ok_or(TokenError::UnknownKid)?;
        if !key.accepts(inspected.alg) {
            return Err(TokenError::KeyMismatch);
        }
        let data =
            jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key.key, validation)
                .map_err(|e| match e.kind() {
                    ErrorKind::InvalidSignature => TokenError::BadSignature,
                    ErrorKind::ExpiredSignature => TokenError::Expired,
                    ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                    ErrorKind::InvalidAudience => TokenError::Audience,
                    ErrorKind::InvalidIssuer => TokenError::UnknownIssuer,
                    ErrorKind::MissingRequiredClaim(c) => TokenError::MissingClaim(c.clone()),
                    ErrorKind::InvalidClaimFormat(_) => {
                        TokenError::Malformed(Cow::Borrowed("a date claim is not a number"))
                    }
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                        TokenError::KeyMismatch
                    }
                    _ => TokenError::Malformed(Cow::Borrowed("cannot be decoded")),
                })?;
        let claims = data.claims;
        if !self.config.token_types.is_empty() && !self.accepts_type(inspected.typ.as_deref()) {
            return Err(TokenError::Type);
        }
        let leeway = i64::try_from(self.config.leeway.as_secs()).unwrap_or(i64::MAX);
        // RFC 7519 NumericDate may have a fraction: an `iat` of 1.5e9 + 0.5 is a date, not
        // a missing claim (which would skip the future check). `iat` is rounded up and `exp`
        // down, the strict side of each; any other type is refused.
        let iat_claim = claims.get("iat");
        let issued_at = match iat_claim {
            None => None,
            Some(value) => Some(numeric_date(value, f64::ceil)?),
        };
        if issued_at.is_some_and(|iat| iat > now.saturating_add(leeway)) {
            return Err(TokenError::IssuedInFuture);
        }
        let expires_at = match claims.get("exp") {
            Some(value) => numeric_date(value, f64::floor)?,
            None => return Err(TokenError::MissingClaim("exp".into())),
        };
        if let Some(max_age) = self.config.max_token_age {
            let iat = issued_at.ok_or_else(|| TokenError::MissingClaim("iat".into()))?;
            let max_age = i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX);
            if expires_at.saturating_sub(iat) > max_age {
                return Err(TokenError::TooOld);
            }
        }
        if let Some(missing) = self
            .config
            .required_claims
            .iter()
            .find(|c| !claims.contains_key(*c))
        {
            return Err(TokenError::MissingClaim(missing.clone()));
        }
        let subject = match claims.get("sub") {
            Some(Value::String(sub)) if !sub.is_empty() => sub.clone(),
            _ => return Err(TokenError::MissingClaim("sub".into())),
        };
        let strings = |value: Option<&Value>| -> Vec<String> {
            match value {
                Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
                Some(Value::Array(items)) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect(),
                _ => Vec::new(),
            }
        };
        let verified = VerifiedToken {
            issuer: self.config.issuer.clone(),
            subject,
            principal_type: self.config.principal_type.clone(),
            group_type: self.config.group_type.clone(),
            audience: strings(claims.get("aud")),
            scopes: strings(claims.get(&self.config.scope_claim)),
            groups: self
                .config
                .groups_claim
                .as_ref()
                .map(|c| strings(claims.get(c)))
                .unwrap_or_default(),
            expires_at,
            issued_at,
            cnf_x5t_s256: certificate_binding(claims.get("cnf"))?,
            require_cert_binding: self.config.require_cert_binding,
            cedar: Default::default(),
            typed_claims: Default::default(),
            claims: tag_claims(&claims),
            claims_json: std::sync::Arc::new(claims),
        };
        Ok((verified, key.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    fn token(header: &str, payload: &str) -> String {
        format!("{}.{}.{}", b64(header), b64(payload), b64("sig"))
    }

    const ISS: &str = r#"{"iss":"https://idp"}"#;

    #[test]
    fn extraction() {
        let h = |v: &str| BTreeMap::from([("authorization".to_owned(), v.to_owned())]);
        let none = BTreeMap::new();
        let default = TokenSource::default();
        let x = |headers: &BTreeMap<String, String>, query: &BTreeMap<String, String>| {
            extract(headers, query, &default).map(|t| t.map(str::to_owned))
        };
        let some = |t: &str| Ok(Some(t.to_owned()));
        assert_eq!(x(&h("Bearer abc"), &none), some("abc"));
        assert_eq!(x(&h("bEaReR abc"), &none), some("abc"));
        assert_eq!(x(&h("Basic dXNlcg=="), &none), Ok(None));
        assert_eq!(x(&none, &none), Ok(None));
        assert_eq!(
            x(&h("Bearer a,Bearer b"), &none),
            Err(TokenError::Duplicate)
        );
        assert!(x(&h("Bearer a b"), &none).is_err());
        assert!(x(&h("Bearer"), &none).is_err());
        assert_eq!(x(&h("Bearer\tabc"), &none), some("abc"));
        assert!(x(&h("Bearer:abc"), &none).is_err());
        assert!(x(&h("bearerabc"), &none).is_err());
        assert_eq!(x(&h("Basic dXNlcjpwdw=="), &none), Ok(None));
        assert!(x(&h("Bearer   "), &none).is_err());
        let q = BTreeMap::from([("access_token".to_owned(), "x".to_owned())]);
        assert_eq!(x(&none, &q), Err(TokenError::InQuery));

        let source = TokenSource {
            header: Some("x-auth-token".into()),
            cookie: Some("session".into()),
            query: Some("access_token".into()),
        };
        let cookies =
            BTreeMap::from([("cookie".to_owned(), "theme=dark; session=tok1".to_owned())]);
        assert_eq!(extract(&cookies, &none, &source), Ok(Some("tok1")));
        assert_eq!(extract(&none, &q, &source), Ok(Some("x")));
        let mut two = cookies.clone();
        two.insert("x-auth-token".into(), "tok2".into());
        assert_eq!(extract(&two, &none, &source), Err(TokenError::Duplicate));
    }

    #[test]
    fn inspection_refuses_before_any_key_lookup() {
        let cases: &[(String, &str)] = &[
            (token(r#"{"alg":"none"}"#, ISS), "unsupported_algorithm"),
            (token(r#"{"alg":"NONE"}"#, ISS), "unsupported_algorithm"),
            (token(r#"{"alg":"HS256"}"#, ISS), "unsupported_algorithm"),
            (
                token(r#"{"alg":"ES256","jku":"https://evil"}"#, ISS),
                "untrusted_key_header",
            ),
            (
                token(r#"{"alg":"ES256","jwk":{}}"#, ISS),
                "untrusted_key_header",
            ),
            (
                token(r#"{"alg":"ES256","x5u":"https://evil"}"#, ISS),
                "untrusted_key_header",
            ),
            (
                token(r#"{"alg":"ES256","x5c":["MII"]}"#, ISS),
                "untrusted_key_header",
            ),
            (
                token(r#"{"alg":"ES256","crit":["exp"]}"#, ISS),
                "unknown_crit",
            ),
            (
                token(r#"{"alg":"ES256","alg":"none"}"#, ISS),
                "malformed_token",
            ),
            (
                token(r#"{"alg":"ES256"}"#, r#"{"sub":"x"}"#),
                "missing_claim",
            ),
            (
                token(
                    r#"{"alg":"ES256"}"#,
                    &format!("{}1{}", "[".repeat(20), "]".repeat(20)),
                ),
                "malformed_token",
            ),
            (
                format!("{}.{}.", b64(r#"{"alg":"ES256"}"#), b64(ISS)),
                "malformed_token",
            ),
            (
                format!("{}.{}", b64(r#"{"alg":"ES256"}"#), b64(ISS)),
                "malformed_token",
            ),
            (
                format!("{}=.{}.{}", b64(r#"{"alg":"ES256"}"#), b64(ISS), b64("s")),
                "malformed_token",
            ),
            (
                format!("{}.{}.a+b/", b64(r#"{"alg":"ES256"}"#), b64(ISS)),
                "malformed_token",
            ),
            ("x".repeat(9000), "token_too_large"),
        ];
        for (token, code) in cases {
            let err = inspect(token, 8192).expect_err(token);
            assert_eq!(err.code(), *code, "{token}: {err}");
        }
        let ok = inspect(
            &token(r#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#, ISS),
            8192,
        )
        .unwrap();
        assert_eq!(
            (ok.alg, ok.kid.as_deref(), ok.issuer.as_str()),
            (Algorithm::ES256, Some("k1"), "https://idp")
        );
    }
}
