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
    /// Claim whose strings become the principal's parent groups (`<group_type>::"<name>"`);
    /// off unless configured: a group claim is trusted only from an issuer named for it.
    pub groups_claim: Option<String>,
    /// Entity type of the groups this issuer asserts (default `Group`). Issuers of different
    /// user populations never share one, so a partner's `admins` is not the home `admins`.
    pub group_type: String,
    /// `iss` of another issuer whose subjects are the same users (an IdP migration, a second
    /// region): this issuer then shares its `principal_type` and may share its `group_type`.
    pub same_users_as: Option<String>,
    /// Claim holding the space-separated scopes (RFC 8693 `scope`).
    pub scope_claim: String,
    /// RFC 8705: the token's `cnf.x5t#S256` must be the peer certificate's thumbprint.
    pub require_cert_binding: bool,
    /// RFC 8725 §3.11: accepted JOSE `typ` values (e.g. `at+jwt`, RFC 9068); empty accepts
    /// any, including none.
    pub token_types: Vec<String>,
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

/// True for an `https://` URL with a host, or `http://` to a loopback address (127.0.0.0/8,
/// `[::1]`, `localhost`) when allowed; never with userinfo (`https://a@b/`), which hides the
/// real host from a reader (`http://127.0.0.1:1@idp.example/` goes to `idp.example`). Parsed
/// with the same URL parser the HTTP client uses, so the host checked is the host contacted.
pub fn uri_allowed(uri: &str, insecure_allow_http: bool) -> bool {
    let Ok(url) = url::Url::parse(uri) else {
        return false;
    };
    if !url.username().is_empty() || url.password().is_some() {
        return false;
    }
    match url.scheme() {
        "https" => url.host().is_some(),
        "http" => insecure_allow_http && is_loopback(&url),
        _ => false,
    }
}

/// True for an issuer under the reserved `.invalid` top-level domain (RFC 2606), which the
/// shipped Kubernetes configuration uses as a placeholder: it can never serve keys, so a
/// configuration that still holds it is refused at start-up, not left unready.
fn is_placeholder(issuer: &str) -> bool {
    url::Url::parse(issuer)
        .ok()
        .and_then(|url| {
            url.host_str()
                .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
        })
        .is_some_and(|host| host == "invalid" || host.ends_with(".invalid"))
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
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
    group_type: Option<String>,
    #[serde(default)]
    same_users_as: Option<String>,
    #[serde(default)]
    scope_claim: Option<String>,
    #[serde(default)]
    require_cert_binding: bool,
    #[serde(default)]
    token_types: Vec<String>,
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
        group_type,
        same_users_as,
        scope_claim,
        require_cert_binding,
        token_types,
    } = raw;
    if issuer.is_empty() {
        problems.push(problem(
            "issuers[].issuer",
            "",
            "write the exact `iss` value of the issuer's tokens",
        ));
    }
    if is_placeholder(&issuer) {
        problems.push(problem(
            "issuers[].issuer",
            &issuer,
            "a `.invalid` host never exists (RFC 2606): this is the shipped placeholder; write your identity provider's issuer, exactly the `iss` of its tokens",
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
    let group_type = group_type.unwrap_or_else(|| DEFAULT_GROUP_TYPE.into());
    if group_type.parse::<cedar_policy::EntityTypeName>().is_err() {
        problems.push(problem(
            "issuers[].group_type",
            &group_type,
            "write a Cedar entity type name such as Group or PartnerGroup",
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
        groups_claim: groups_claim.filter(|c| !c.is_empty()),
        group_type,
        same_users_as,
        scope_claim: scope_claim.unwrap_or_else(|| "scope".into()),
        require_cert_binding,
        token_types,
    }
}

/// The group type of an issuer that does not name one: the home users' (the first issuer's).
const DEFAULT_GROUP_TYPE: &str = "Group";

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

/// Two issuers must not share an `issuer` (which keys would verify?), and issuers of different
/// user populations must share neither a `principal_type` (`sub` is unique only within one
/// issuer, so a subject of one could name a user of the other) nor a `group_type` (a partner
/// issuer's `admins` would be the home `admins`). An issuer joins another's population only by
/// naming it in `same_users_as`.
pub(super) fn check_distinct(issuers: &[IssuerConfig], problems: &mut Vec<Problem>) {
    // The issuer whose user population each issuer belongs to.
    let population = |issuer: &IssuerConfig| -> String {
        issuer
            .same_users_as
            .clone()
            .unwrap_or_else(|| issuer.issuer.clone())
    };
    for (index, issuer) in issuers.iter().enumerate() {
        if RESERVED_TYPES.contains(&issuer.principal_type.as_str()) {
            problems.push(problem(
                "issuers[].principal_type",
                &issuer.principal_type,
                "is a type cedargate builds itself (workloads, anonymous callers, groups, request helpers); a token must not claim it: choose User, Service or a type of your own",
            ));
        }
        if issuer.groups_claim.is_some()
            && (issuer.group_type != DEFAULT_GROUP_TYPE
                && RESERVED_TYPES.contains(&issuer.group_type.as_str())
                || issuers
                    .iter()
                    .any(|i| i.principal_type == issuer.group_type))
        {
            problems.push(problem(
                "issuers[].group_type",
                &issuer.group_type,
                "is a principal type or a type cedargate builds itself; name a group type of your own (declare it in the schema)",
            ));
        }
        if let Some(home) = &issuer.same_users_as {
            match issuers.iter().find(|i| &i.issuer == home) {
                None => problems.push(problem(
                    "issuers[].same_users_as",
                    home,
                    "names no configured issuer; write the exact `issuer` of the issuer whose users these are",
                )),
                Some(home) if home.issuer == issuer.issuer || home.same_users_as.is_some() => {
                    problems.push(problem(
                        "issuers[].same_users_as",
                        &home.issuer,
                        "must name another issuer that has no same_users_as itself (one home issuer per user population)",
                    ));
                }
                Some(home) if home.principal_type != issuer.principal_type => {
                    problems.push(problem(
                        "issuers[].principal_type",
                        &issuer.principal_type,
                        "must be the principal_type of the issuer named in same_users_as: they are the same users",
                    ));
                }
                Some(_) => {}
            }
        }
        let earlier = issuers.get(..index).unwrap_or_default();
        let other_population = |e: &&IssuerConfig| population(e) != population(issuer);
        if earlier.iter().any(|e| e.issuer == issuer.issuer) {
            problems.push(problem(
                "issuers[].issuer",
                &issuer.issuer,
                "is configured twice; keep one entry per issuer",
            ));
        } else if earlier
            .iter()
            .filter(other_population)
            .any(|e| e.principal_type == issuer.principal_type)
        {
            problems.push(problem(
                "issuers[].principal_type",
                &issuer.principal_type,
                "is used by two issuers, whose subjects could collide; give each issuer its own principal_type (declare it in the schema), or say `same_users_as: <issuer>` when both issue tokens for the same users",
            ));
        } else if issuer.groups_claim.is_some()
            && issuer.group_type == DEFAULT_GROUP_TYPE
            && issuers
                .first()
                .is_some_and(|home| population(home) != population(issuer))
        {
            // `Group` belongs to the home users (the first issuer's population): entities.json
            // and the policies put them in `Group::"admins"` whether or not their issuer
            // asserts groups, so another population asserting `Group` would join them.
            problems.push(problem(
                "issuers[].group_type",
                &issuer.group_type,
                "is the home users' group type (the first issuer's, also used by entities.json and the policies); an issuer of other users that asserts groups needs its own group_type (e.g. PartnerGroup, declared in the schema), or `same_users_as: <issuer>` when both issue tokens for the same users",
            ));
        } else if issuer.groups_claim.is_some()
            && earlier
                .iter()
                .filter(other_population)
                .any(|e| e.groups_claim.is_some() && e.group_type == issuer.group_type)
        {
            problems.push(problem(
                "issuers[].group_type",
                &issuer.group_type,
                "is asserted by two issuers of different users, so one could grant the other's groups; give this issuer its own group_type (e.g. PartnerGroup, declared in the schema), or say `same_users_as: <issuer>` when both issue tokens for the same users",
            ));
        }
    }
}

impl IssuerConfig {
    /// The entity types this issuer's tokens become, which the schema must declare: its
    /// principal type, and its group type when it asserts groups.
    pub fn entity_types(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.principal_type.as_str())
            .chain(self.groups_claim.as_ref().map(|_| self.group_type.as_str()))
    }
}

fn problem(field: &'static str, value: &str, fix: &'static str) -> Problem {
    Problem {
        field: field.into(),
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
                    "use https:// without user:password@; plain http is accepted only to a loopback address with `insecure_allow_http: true`",
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

#[cfg(test)]
mod tests {
    use super::uri_allowed;

    #[test]
    fn key_set_uris_are_parsed_not_prefix_matched() {
        for (uri, insecure, allowed) in [
            ("https://idp.example/jwks.json", false, true),
            ("http://127.0.0.1:8080/jwks.json", true, true),
            ("http://[::1]/jwks.json", true, true),
            ("http://localhost", true, true),
            ("http://127.0.0.1:8080/jwks.json", false, false),
            ("http://idp.example/jwks.json", true, false),
            // Userinfo hides the real host: this goes to otherhost.
            ("http://127.0.0.1:1@otherhost/jwks.json", true, false),
            ("http://localhost@otherhost/jwks.json", true, false),
            ("https://user:pass@idp.example/jwks.json", false, false),
            ("http://localhost.otherhost.example/", true, false),
            ("http://127.0.0.1.nip.io/", true, false),
            ("ftp://idp.example/jwks.json", true, false),
            ("not a url", true, false),
        ] {
            assert_eq!(uri_allowed(uri, insecure), allowed, "{uri} ({insecure})");
        }
    }
}
