//! The `issuers:` and `authentication:` sections: which token issuers cedargate trusts, where
//! their keys come from, and how tokens are checked. Every `jsonwebtoken::Validation` field is
//! derived from here explicitly (the crate's defaults, such as a 60 s leeway, are not ours).

use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde::Deserialize;

use super::{Problem, duration, positive};

/// A trusted token issuer.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    /// Exact value of the `iss` claim.
    pub issuer: String,
    /// The token's `aud` must contain one of these.
    pub audiences: Vec<String>,
    pub jwks: JwksSource,
    /// Accepted `alg` values; never `none`, never HMAC.
    pub algorithms: Vec<Algorithm>,
    /// Clock skew allowed for `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// Longest accepted lifetime (`exp - iat`); tokens without `iat` are refused when set.
    pub max_token_age: Option<Duration>,
    /// Claims that must be present besides `iss`, `sub`, `aud` and `exp`.
    pub required_claims: Vec<String>,
    /// Entity type of the principal (`User`, `Service`, …).
    pub principal_type: String,
    /// Claim whose strings become the principal's parent groups (`Group::"<name>"`).
    pub groups_claim: Option<String>,
    /// Claim holding the space-separated scopes (RFC 8693 `scope`).
    pub scope_claim: String,
    /// RFC 8705: the token's `cnf.x5t#S256` must be the peer certificate's thumbprint.
    pub require_cert_binding: bool,
}

/// Where an issuer's JSON Web Key Set comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// Fetched from this URI.
    Uri { uri: String, fetch: FetchOptions },
    /// OIDC discovery: `jwks_uri` from `<issuer>/.well-known/openid-configuration`.
    Discovery { fetch: FetchOptions },
    /// Read from a file once at start-up.
    File(PathBuf),
    /// A key set given in memory (never from the configuration file): `cedargate test` and
    /// `cedargate check` sign their tokens with an ephemeral key and trust only it.
    Inline(String),
}

/// How key sets are fetched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchOptions {
    /// Accept plain `http://` to a loopback address (tests, a local IdP); never elsewhere.
    pub insecure_allow_http: bool,
    /// PEM bundle of CAs trusted for this issuer's HTTPS, instead of the system's roots.
    pub ca_file: Option<PathBuf>,
}

/// True for `https://…`, or `http://` to 127.0.0.1, [::1] or localhost when allowed.
pub fn uri_allowed(uri: &str, insecure_allow_http: bool) -> bool {
    let loopback = ["http://127.0.0.1", "http://[::1]", "http://localhost"]
        .iter()
        .any(|prefix| {
            uri.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([':', '/']))
        });
    uri.starts_with("https://") || insecure_allow_http && loopback
}

/// How tokens are found, fetched and cached.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Where tokens are looked for besides `Authorization: Bearer`.
    pub token_source: TokenSource,
    /// A request without a token is refused (401) unless its route says `token: optional`.
    pub require_token: bool,
    /// False: on allow, the header that carried the token (`authorization` or `token_header`)
    /// is removed before the request goes upstream, which then sees only identity headers.
    pub forward_token: bool,
    /// Largest accepted token, in bytes.
    pub max_token_bytes: usize,
    /// Verified tokens kept in memory.
    pub token_cache_entries: usize,
    /// How long a failed token stays known as failed.
    pub negative_ttl: Duration,
    /// At most one key-set fetch per issuer per this interval on an unknown `kid`.
    pub unknown_kid_refetch: Duration,
    /// Longest a check waits for such a fetch before answering 401.
    pub fetch_wait: Duration,
    /// Key-set refresh bounds around the server's `Cache-Control: max-age`.
    pub refresh_min: Duration,
    pub refresh_max: Duration,
    /// Timeout of one key-set fetch, and the largest accepted key-set body.
    pub fetch_timeout: Duration,
    pub max_jwks_bytes: usize,
}

/// Other places a token may be sent; RFC 6750 §2 allows one method per request, so a
/// request that uses two is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenSource {
    /// A header whose whole value is the token (e.g. `x-auth-token`).
    pub header: Option<String>,
    /// A cookie whose value is the token.
    pub cookie: Option<String>,
    /// A query parameter holding the token. Without it, `access_token` in the query is refused.
    pub query: Option<String>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            token_source: TokenSource::default(),
            require_token: true,
            forward_token: true,
            max_token_bytes: 8 * 1024,
            token_cache_entries: 100_000,
            negative_ttl: Duration::from_secs(5),
            unknown_kid_refetch: Duration::from_secs(30),
            fetch_wait: Duration::from_millis(200),
            refresh_min: Duration::from_secs(60),
            refresh_max: Duration::from_secs(3600),
            fetch_timeout: Duration::from_secs(5),
            max_jwks_bytes: 1024 * 1024,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIssuer {
    issuer: String,
    audiences: Vec<String>,
    jwks: RawJwks,
    #[serde(default)]
    algorithms: Option<Vec<String>>,
    #[serde(default)]
    leeway: Option<String>,
    #[serde(default)]
    max_token_age: Option<String>,
    #[serde(default)]
    required_claims: Vec<String>,
    #[serde(default)]
    principal_type: Option<String>,
    #[serde(default)]
    groups_claim: Option<String>,
    #[serde(default)]
    scope_claim: Option<String>,
    #[serde(default)]
    require_cert_binding: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwks {
    #[serde(default)]
    uri: Option<String>,
    #[serde(default)]
    file: Option<PathBuf>,
    #[serde(default)]
    discovery: bool,
    #[serde(default)]
    insecure_allow_http: bool,
    #[serde(default)]
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    require_token: Option<bool>,
    forward_token: Option<bool>,
    token_header: Option<String>,
    token_cookie: Option<String>,
    token_query: Option<String>,
    max_token_bytes: Option<usize>,
    token_cache_entries: Option<usize>,
    negative_ttl: Option<String>,
    unknown_kid_refetch: Option<String>,
    fetch_wait: Option<String>,
    refresh_min: Option<String>,
    refresh_max: Option<String>,
    fetch_timeout: Option<String>,
    max_jwks_bytes: Option<usize>,
}

/// RFC 7518 asymmetric algorithms cedargate verifies.
const DEFAULT_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

pub(super) fn build_auth(raw: RawAuth, problems: &mut Vec<Problem>) -> AuthSettings {
    let RawAuth {
        require_token,
        forward_token,
        token_header,
        token_cookie,
        token_query,
        max_token_bytes,
        token_cache_entries,
        negative_ttl,
        unknown_kid_refetch,
        fetch_wait,
        refresh_min,
        refresh_max,
        fetch_timeout,
        max_jwks_bytes,
    } = raw;
    let d = AuthSettings::default();
    let p = problems;
    AuthSettings {
        token_source: TokenSource {
            header: token_header.map(|h| h.to_ascii_lowercase()),
            cookie: token_cookie,
            query: token_query,
        },
        require_token: require_token.unwrap_or(d.require_token),
        forward_token: forward_token.unwrap_or(d.forward_token),
        max_token_bytes: positive(
            max_token_bytes,
            "authentication.max_token_bytes",
            d.max_token_bytes,
            p,
        ),
        token_cache_entries: positive(
            token_cache_entries,
            "authentication.token_cache_entries",
            d.token_cache_entries,
            p,
        ),
        negative_ttl: duration(
            negative_ttl,
            "authentication.negative_ttl",
            d.negative_ttl,
            p,
        ),
        unknown_kid_refetch: duration(
            unknown_kid_refetch,
            "authentication.unknown_kid_refetch",
            d.unknown_kid_refetch,
            p,
        ),
        fetch_wait: duration(fetch_wait, "authentication.fetch_wait", d.fetch_wait, p),
        refresh_min: duration(refresh_min, "authentication.refresh_min", d.refresh_min, p),
        refresh_max: duration(refresh_max, "authentication.refresh_max", d.refresh_max, p),
        fetch_timeout: duration(
            fetch_timeout,
            "authentication.fetch_timeout",
            d.fetch_timeout,
            p,
        ),
        max_jwks_bytes: positive(
            max_jwks_bytes,
            "authentication.max_jwks_bytes",
            d.max_jwks_bytes,
            p,
        ),
    }
}

pub(super) fn build_issuer(
    raw: RawIssuer,
    base: &Path,
    problems: &mut Vec<Problem>,
) -> IssuerConfig {
    let RawIssuer {
        issuer,
        audiences,
        jwks,
        algorithms,
        leeway,
        max_token_age,
        required_claims,
        principal_type,
        groups_claim,
        scope_claim,
        require_cert_binding,
    } = raw;
    if issuer.is_empty() {
        problems.push(problem(
            "issuers[].issuer",
            "",
            "write the exact `iss` value of the issuer's tokens",
        ));
    }
    if audiences.is_empty() || audiences.iter().any(String::is_empty) {
        problems.push(problem(
            "issuers[].audiences",
            &audiences.join(","),
            "list at least one audience; a token must be meant for this service",
        ));
    }
    let jwks = jwks_source(jwks, &issuer, base, problems);
    let algorithms = match algorithms {
        None => DEFAULT_ALGORITHMS.to_vec(),
        Some(names) => names
            .iter()
            .filter_map(|name| match name.parse::<Algorithm>() {
                Ok(alg) if DEFAULT_ALGORITHMS.contains(&alg) || alg == Algorithm::PS384 || alg == Algorithm::PS512 => Some(alg),
                _ => {
                    problems.push(problem(
                        "issuers[].algorithms",
                        name,
                        "use asymmetric algorithms: RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA (never none; HMAC is not supported)",
                    ));
                    None
                }
            })
            .collect(),
    };
    let principal_type = principal_type.unwrap_or_else(|| "User".into());
    if principal_type
        .parse::<cedar_policy::EntityTypeName>()
        .is_err()
    {
        problems.push(problem(
            "issuers[].principal_type",
            &principal_type,
            "write a Cedar entity type name such as User or Service",
        ));
    }
    IssuerConfig {
        issuer,
        audiences,
        jwks,
        algorithms,
        leeway: duration(leeway, "issuers[].leeway", Duration::from_secs(5), problems),
        max_token_age: max_token_age.map(|age| {
            duration(
                Some(age),
                "issuers[].max_token_age",
                Duration::ZERO,
                problems,
            )
        }),
        required_claims,
        principal_type,
        groups_claim: Some(groups_claim.unwrap_or_else(|| "groups".into()))
            .filter(|c| !c.is_empty()),
        scope_claim: scope_claim.unwrap_or_else(|| "scope".into()),
        require_cert_binding,
    }
}

/// Entity types cedargate creates from other sources than a token.
const RESERVED_TYPES: &[&str] = &[
    "Workload",
    "Anonymous",
    "Group",
    "HttpHeaders",
    "HttpQuery",
    "PathParams",
    "TokenClaims",
];

/// Two issuers must not share an `issuer` (which keys would verify?) nor a `principal_type`:
/// `sub` is unique only within one issuer, so a subject of one could name a user of the other.
pub(super) fn check_distinct(issuers: &[IssuerConfig], problems: &mut Vec<Problem>) {
    for (index, issuer) in issuers.iter().enumerate() {
        if RESERVED_TYPES.contains(&issuer.principal_type.as_str()) {
            problems.push(problem(
                "issuers[].principal_type",
                &issuer.principal_type,
                "is a type cedargate builds itself (workloads, anonymous callers, groups, request helpers); a token must not claim it: choose User, Service or a type of your own",
            ));
        }
        let earlier = issuers.get(..index).unwrap_or_default();
        if earlier.iter().any(|e| e.issuer == issuer.issuer) {
            problems.push(problem(
                "issuers[].issuer",
                &issuer.issuer,
                "is configured twice; keep one entry per issuer",
            ));
        } else if earlier
            .iter()
            .any(|e| e.principal_type == issuer.principal_type)
        {
            problems.push(problem(
                "issuers[].principal_type",
                &issuer.principal_type,
                "is used by two issuers, whose subjects could collide; give each issuer its own principal_type (declare it in the schema)",
            ));
        }
    }
}

fn problem(field: &'static str, value: &str, fix: &'static str) -> Problem {
    Problem {
        field,
        value: value.to_owned(),
        fix,
    }
}

fn jwks_source(raw: RawJwks, issuer: &str, base: &Path, problems: &mut Vec<Problem>) -> JwksSource {
    let RawJwks {
        uri,
        file,
        discovery,
        insecure_allow_http,
        ca_file,
    } = raw;
    let fetch = FetchOptions {
        insecure_allow_http,
        ca_file: ca_file.map(|f| base.join(f)),
    };
    match (uri, file, discovery) {
        (Some(uri), None, false) => {
            if !uri_allowed(&uri, insecure_allow_http) {
                problems.push(problem(
                    "issuers[].jwks.uri",
                    &uri,
                    "use https://; plain http is accepted only to a loopback address with `insecure_allow_http: true`",
                ));
            }
            JwksSource::Uri { uri, fetch }
        }
        (None, None, true) => {
            if !uri_allowed(issuer, insecure_allow_http) {
                problems.push(problem(
                    "issuers[].issuer",
                    issuer,
                    "OIDC discovery needs an https:// issuer (http only to loopback with `insecure_allow_http: true`)",
                ));
            }
            JwksSource::Discovery { fetch }
        }
        (None, Some(file), false) => JwksSource::File(base.join(file)),
        _ => {
            problems.push(problem(
                "issuers[].jwks",
                "",
                "give exactly one of `uri`, `file` or `discovery: true`",
            ));
            JwksSource::File(PathBuf::new())
        }
    }
}
