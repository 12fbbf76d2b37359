//! Request normalisation: turns the HTTP attributes of a Check (already out of their protobuf
//! types) into one [`HttpRequest`] whose path, query and headers can be trusted for matching.
//!
//! Rules (fail closed: anything ambiguous is a [`RequestError`], which is a deny):
//! - the method is an RFC 9110 token in upper case: methods are case-sensitive (RFC 9110 §9.1)
//!   but many upstreams fold them, so `delete` would be served as `DELETE` while a route table
//!   and policies compare exactly; a method with a lower-case letter is refused;
//! - the request target starts with `/`, is at most `max_path_bytes` long and carries no fragment;
//! - the path has one canonical form, used for route matching, the fallback `Path::` resource and
//!   `context.request.path` alike: a trailing `/` is dropped (`/a/` is `/a`; `/` stays), and the
//!   forms upstreams disagree on are refused: an empty segment (`//a`, `/a//b`, which many
//!   upstreams merge) and a `;` (a path parameter, which servlet containers and others drop:
//!   `/a;x=1` is `/a` to them), also when percent-encoded;
//! - the path is percent-decoded (RFC 3986 §2.1) into UTF-8 without control characters; an encoded
//!   `/` or `\` (`%2F`, `%5C`) or a literal `\` is refused, because upstreams disagree on them;
//! - a path with dot-segments (`.` or `..`, also encoded) is refused: resolving them here would
//!   authorise another path than the one an upstream without normalisation serves. Envoy's
//!   `normalize_path: true` resolves them before ext_authz runs, so well-configured traffic never
//!   hits this rule; so is `..;` (a dot-segment to servlet containers) and a path that is still
//!   percent-encoded after decoding (`%252e`), which an upstream decoding twice would resolve;
//! - a query parameter given twice is refused: joined (`a,b`) or first-wins, a policy comparing
//!   `debug == "true"` could be dodged by `?debug=true&debug=true`, and upstreams disagree on
//!   which value counts;
//! - header names are lowercased; a repeated header is joined with `,` when RFC 9110 defines it as
//!   a list (`accept`, `x-forwarded-for`, …) and refused otherwise (a policy comparing
//!   `x-env == "prod"` must not be dodged by sending it twice); pseudo-headers are left out (their
//!   content is in method, host and path); a value that is not UTF-8 is refused;
//! - the request id (`x-request-id`, else Envoy's id, else a fresh UUID) is at most 128 printable
//!   ASCII bytes, because it is echoed in answers and logs.
//!
//! This module never sees protobuf types and never decides: it only normalises.

use std::collections::BTreeMap;

/// Why a request could not be normalised. Messages quote user input in backticks, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("the check carries no HTTP request attributes")]
    MissingHttp,
    #[error("method `{0}` is not an HTTP token")]
    BadMethod(String),
    #[error("method `{0}` is not in upper case")]
    MethodCase(String),
    #[error("request target is {len} bytes, over the limit of {max}")]
    PathTooLong { len: usize, max: usize },
    #[error("request target must start with `/`")]
    PathNotAbsolute,
    #[error("request target carries a fragment")]
    Fragment,
    #[error("invalid percent-encoding in the path")]
    BadPercentEncoding,
    #[error("path contains an encoded `/` or `\\`")]
    EncodedSlash,
    #[error("path contains a backslash")]
    Backslash,
    #[error("path is not UTF-8 once decoded")]
    PathNotUtf8,
    #[error("path contains a control character")]
    ControlCharacter,
    #[error("path contains a `.` or `..` segment")]
    DotSegment,
    #[error("path is percent-encoded twice")]
    DoubleEncoded,
    #[error("path contains an empty segment (`//`)")]
    EmptySegment,
    #[error("path contains a `;` (a path parameter)")]
    PathParameter,
    #[error("query parameter `{0}` is repeated")]
    RepeatedQuery(String),
    #[error("the query contains a `;` (some upstreams split parameters on it)")]
    QuerySemicolon,
    #[error("host `{0}` is not a host name")]
    BadHost(String),
    #[error(
        "{kind} `{name}` is read by lenient upstreams as one the policies read under another spelling"
    )]
    LenientName { kind: &'static str, name: String },
    #[error("value of header `{0}` is not UTF-8")]
    HeaderNotUtf8(String),
    #[error("header `{0}` is repeated, and it is not a list")]
    RepeatedHeader(String),
    #[error("the request carries {count} headers, over the limit of {max}")]
    TooManyHeaders { count: usize, max: usize },
    #[error("the request's headers are {len} bytes, over the limit of {max}")]
    HeadersTooLarge { len: usize, max: usize },
    #[error("the authorization request's path is not under http_service.path_prefix `{0}`")]
    OutsidePrefix(String),
    #[error("a forward-auth request must carry `{0}` (http_service.request: forwarded)")]
    MissingForwarded(&'static str),
}

impl RequestError {
    /// True when the request was refused only for its length (HTTP 414 rather than 400).
    pub fn is_too_long(&self) -> bool {
        matches!(self, Self::PathTooLong { .. })
    }

    /// True when the request was refused for the number or size of its headers (HTTP 431).
    pub fn is_headers_too_large(&self) -> bool {
        matches!(
            self,
            Self::TooManyHeaders { .. } | Self::HeadersTooLarge { .. }
        )
    }
}

/// A header as Envoy sent it: from the `headers` map (text) or from `header_map` (raw bytes).
#[derive(Debug, Clone)]
pub struct RawHeader {
    pub name: String,
    pub value: Vec<u8>,
}

/// The HTTP attributes of a Check, before normalisation.
#[derive(Debug, Clone, Default)]
pub struct RawHttp {
    pub method: String,
    /// The request target as in the request line: path and query, not decoded.
    pub target: String,
    pub host: String,
    pub scheme: String,
    pub protocol: String,
    /// Envoy's `http.id` (the `x-request-id` it generated or accepted).
    pub id: String,
    pub headers: Vec<RawHeader>,
    /// The body, when Envoy sends it (`with_request_body`); empty otherwise.
    pub body: Vec<u8>,
    /// The body was not read whole (over the HTTP service's limit, or cut off).
    pub body_cut: bool,
}

/// A normalised HTTP request, ready for route matching and the Cedar mapping.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: String,
    /// Lowercased, without a trailing `.` or the scheme's default port (`:443` for https,
    /// `:80` for http): `Shop.Example.:443` is `shop.example`. Another port is kept.
    pub host: String,
    /// Decoded path without query, in its canonical form (no trailing `/` but for `/`).
    pub path: String,
    pub scheme: String,
    pub protocol: String,
    /// Query parameters, decoded; each name at most once.
    pub query: BTreeMap<String, String>,
    /// Lowercased header names; repeated list headers joined with `,`; no pseudo-headers.
    pub headers: BTreeMap<String, String>,
    /// The request id: `x-request-id`, else Envoy's `http.id`, else a fresh UUID.
    pub request_id: String,
}

/// Where the checked request was going: Envoy's `destination` (the listener's local address
/// and, under mTLS, its own identity).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Destination {
    /// `ip:port` (or a pipe path), empty when Envoy sent none.
    pub address: String,
    /// The URI SAN (else subject) of the certificate Envoy presented downstream; empty without
    /// TLS.
    pub principal: String,
}

/// One check's request, normalised once: what the decision core reads of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub http: HttpRequest,
    pub destination: Destination,
    /// Envoy's per-route `context_extensions` (`cedargate.action`, `cedargate.resource`).
    pub extensions: std::collections::HashMap<String, String>,
    /// The `cedargate` namespace of the route's metadata (Envoy's `route_metadata_context`):
    /// strings as they are, other values as JSON text.
    pub route_metadata: std::collections::HashMap<String, String>,
    /// The body Envoy sent (`with_request_body`), read only when the schema declares
    /// `context.request.body` (`policy/body.rs`).
    pub body: RequestBody,
    /// Entities fetched for this request from the entity source (`entities/`), before the
    /// decision: the decision core adds them to its store and does no I/O itself.
    pub fetched: crate::entities::Fetched,
}

/// A request's body as Envoy sent it, with the depth it may nest to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestBody {
    pub bytes: Vec<u8>,
    /// Envoy sent only the first bytes (`x-envoy-auth-partial-body: true`).
    pub partial: bool,
    /// Largest body accepted, in bytes (`limits.max_body_bytes`).
    pub max_bytes: usize,
    /// Deepest nesting of arrays and objects accepted (`limits.max_body_depth`).
    pub max_depth: usize,
}

/// Refuses a request with more than `max_headers` headers, or whose header names and values
/// add up to more than `max_bytes`, before any of them is copied.
pub fn check_header_bounds(
    raw: &RawHttp,
    max_headers: usize,
    max_bytes: usize,
) -> Result<(), RequestError> {
    let count = raw.headers.len();
    if count > max_headers {
        return Err(RequestError::TooManyHeaders {
            count,
            max: max_headers,
        });
    }
    let len: usize = raw
        .headers
        .iter()
        .map(|h| h.name.len().saturating_add(h.value.len()))
        .fold(0, usize::saturating_add);
    if len > max_bytes {
        return Err(RequestError::HeadersTooLarge {
            len,
            max: max_bytes,
        });
    }
    Ok(())
}

/// Normalises the HTTP attributes of a Check; see the module docs for the rules.
pub fn normalise(raw: RawHttp, max_path_bytes: usize) -> Result<HttpRequest, RequestError> {
    let RawHttp {
        method,
        target,
        host,
        scheme,
        protocol,
        id,
        headers: raw_headers,
        body: _,
        body_cut: _,
    } = raw;
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err(RequestError::BadMethod(crate::text::clip(&method)));
    }
    if method.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(RequestError::MethodCase(crate::text::clip(&method)));
    }
    if target.len() > max_path_bytes {
        return Err(RequestError::PathTooLong {
            len: target.len(),
            max: max_path_bytes,
        });
    }
    if target.contains('#') {
        return Err(RequestError::Fragment);
    }
    let (raw_path, raw_query) = target.split_once('?').unwrap_or((&target, ""));
    let path = decode_path(raw_path)?;
    let query = unique_query(raw_query)?;
    let mut headers = BTreeMap::<String, String>::new();
    for RawHeader { name, value } in raw_headers {
        if name.starts_with(':') {
            continue;
        }
        let name = name.to_ascii_lowercase();
        let Ok(value) = String::from_utf8(value) else {
            return Err(RequestError::HeaderNotUtf8(crate::text::clip(&name)));
        };
        match headers.get_mut(&name) {
            None => {
                headers.insert(name, value);
            }
            Some(joined) if LIST_HEADERS.contains(&name.as_str()) => {
                joined.push(',');
                joined.push_str(&value);
            }
            // `x-env: prod` twice must not become `prod,prod` and slip past `== "prod"`.
            Some(_) => return Err(RequestError::RepeatedHeader(crate::text::clip(&name))),
        }
    }
    // `x_env` is `x-env` to CGI, WSGI, Rack and PHP: two spellings at once are the same header
    // sent twice. Only names with a `_` (rare) cost anything here.
    let mut spelled: Vec<String> = Vec::new();
    for name in headers.keys().filter(|name| name.contains('_')) {
        let key = name.replace('_', "-");
        if headers.contains_key(&key) || spelled.contains(&key) {
            return Err(RequestError::RepeatedHeader(crate::text::clip(name)));
        }
        spelled.push(key);
    }
    let request_id = [
        headers.get("x-request-id").map(String::as_str),
        Some(id.as_str()),
    ]
    .into_iter()
    .flatten()
    .find(|id| is_request_id(id))
    .map_or_else(|| uuid::Uuid::new_v4().to_string(), ToOwned::to_owned);
    Ok(HttpRequest {
        host: canonical_host(&host, &scheme)?,
        method,
        path,
        scheme,
        protocol,
        query,
        headers,
        request_id,
    })
}

/// The host as a policy compares it: lowercased, without the scheme's default port (also
/// written `:0443` or as an empty `:`) and without the trailing `.` of a fully qualified name
/// (all reach the same upstream, so a policy on `admin.shop.example` must not be dodged by
/// `admin.shop.example.:443`). A name with an empty label (`a..b`, `.a`, `a..`) or a character
/// outside letters, digits, `.`, `-` and `_` (or an IPv6 literal in brackets) is refused.
fn canonical_host(host: &str, scheme: &str) -> Result<String, RequestError> {
    let host = host.to_ascii_lowercase();
    let bad = || RequestError::BadHost(crate::text::clip(&host));
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or_else(bad)?;
        if inside.is_empty()
            || !inside
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b".:".contains(&b))
        {
            return Err(bad());
        }
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(bad)?),
        };
        (format!("[{inside}]"), port)
    } else {
        let (name, port) = match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host.as_str(), None),
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        let labels_ok = name.is_empty()
            || name.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
            });
        if !labels_ok {
            return Err(bad());
        }
        (name.to_owned(), port)
    };
    let default_port = match scheme {
        "https" => Some(443),
        "http" => Some(80),
        _ => None,
    };
    let port = match port {
        None | Some("") => None,
        Some(digits) if digits.len() <= 5 && digits.bytes().all(|b| b.is_ascii_digit()) => {
            let number: u32 = digits.parse().map_err(|_| bad())?;
            if number > u32::from(u16::MAX) {
                return Err(bad());
            }
            (Some(number) != default_port).then_some(number)
        }
        Some(_) => return Err(bad()),
    };
    Ok(match port {
        Some(port) => format!("{name}:{port}"),
        None => name,
    })
}

/// The name of a query parameter as the most lenient upstreams read it: case folded, leading
/// spaces and a trailing `[]` dropped, `.` and ` ` as `_` (PHP).
pub fn query_name_key(name: &str) -> String {
    let name = name.trim_start_matches(' ');
    let name = name.strip_suffix("[]").unwrap_or(name);
    crate::text::fold_case(name).replace(['.', ' '], "_")
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Request headers that RFC 9110 defines as comma-separated lists, where a repeated field means
/// the same as one joined field. Any other header repeated is refused.
const LIST_HEADERS: &[&str] = &[
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "cache-control",
    "connection",
    "cookie",
    "forwarded",
    "if-match",
    "if-none-match",
    "pragma",
    "te",
    "traceparent",
    "tracestate",
    "upgrade",
    "via",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-client-cert",
];

/// A request id worth echoing in answers and logs: short, printable ASCII.
pub fn is_request_id(id: &str) -> bool {
    (1..=MAX_REQUEST_ID_BYTES).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

const MAX_REQUEST_ID_BYTES: usize = 128;

/// The query's parameters, decoded. A name given twice is refused, and so are two names that
/// upstreams read as one (`debug`, `Debug`, `debug[]`, ` debug`, `de.bug` and `de_bug` to
/// PHP, ASP.NET and others: [`query_name_key`]), and a raw `;`, which Rack, older Go and
/// Python split parameters on.
fn unique_query(raw: &str) -> Result<BTreeMap<String, String>, RequestError> {
    if raw.contains(';') {
        return Err(RequestError::QuerySemicolon);
    }
    let mut map = BTreeMap::<String, String>::new();
    for (name, value) in form_urlencoded::parse(raw.as_bytes()) {
        match map.entry(name.into_owned()) {
            std::collections::btree_map::Entry::Occupied(entry) => {
                return Err(RequestError::RepeatedQuery(crate::text::clip(entry.key())));
            }
            std::collections::btree_map::Entry::Vacant(entry) => {
                entry.insert(value.into_owned());
            }
        }
    }
    // A plain name (lower-case ASCII letters, digits, `-`, `_`) is its own key, so only the
    // others (rare) are keyed, and compared with every name and with each other.
    let mut keys: Vec<String> = Vec::new();
    for name in map.keys().filter(|name| !is_plain_name(name)) {
        let key = query_name_key(name);
        if map.contains_key(&key) || keys.contains(&key) {
            return Err(RequestError::RepeatedQuery(crate::text::clip(name)));
        }
        keys.push(key);
    }
    Ok(map)
}

/// A name every upstream reads the same way: [`query_name_key`] leaves it as it is.
pub fn is_plain_name(name: &str) -> bool {
    name.bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn decode_path(raw: &str) -> Result<String, RequestError> {
    if !raw.starts_with('/') {
        return Err(RequestError::PathNotAbsolute);
    }
    let mut bytes = Vec::with_capacity(raw.len());
    let mut rest = raw.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        match b {
            b'\\' => return Err(RequestError::Backslash),
            b'%' => {
                let decoded = match tail {
                    [hi, lo, ..] => hex(*hi)
                        .zip(hex(*lo))
                        .map(|(hi, lo)| hi << 4 | lo)
                        .ok_or(RequestError::BadPercentEncoding)?,
                    _ => return Err(RequestError::BadPercentEncoding),
                };
                if decoded == b'/' || decoded == b'\\' {
                    return Err(RequestError::EncodedSlash);
                }
                bytes.push(decoded);
                rest = tail.get(2..).unwrap_or_default();
            }
            _ => bytes.push(b),
        }
    }
    let mut path = String::from_utf8(bytes).map_err(|_| RequestError::PathNotUtf8)?;
    if path.chars().any(char::is_control) {
        return Err(RequestError::ControlCharacter);
    }
    // `..;x` is `..` to servlet containers (Tomcat drops `;` path parameters): reported as the
    // dot-segment it is, before the `;` rule.
    if path
        .split('/')
        .map(|segment| segment.split(';').next().unwrap_or_default())
        .any(|segment| segment == "." || segment == "..")
    {
        return Err(RequestError::DotSegment);
    }
    if path.contains(';') {
        return Err(RequestError::PathParameter);
    }
    if path.contains("//") {
        return Err(RequestError::EmptySegment);
    }
    if path.len() > 1 && path.ends_with('/') {
        path.pop();
    }
    // `%252e` decodes to `%2e`: an upstream that decodes again would see another path.
    if path
        .as_bytes()
        .windows(3)
        .any(|w| matches!(w, [b'%', hi, lo] if hex(*hi).is_some() && hex(*lo).is_some()))
    {
        return Err(RequestError::DoubleEncoded);
    }
    Ok(path)
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(method: &str, target: &str) -> RawHttp {
        RawHttp {
            method: method.into(),
            target: target.into(),
            host: "API.example.org".into(),
            ..RawHttp::default()
        }
    }

    #[test]
    fn paths() {
        let cases: &[(&str, Result<&str, RequestError>)] = &[
            ("/orders/42", Ok("/orders/42")),
            ("/", Ok("/")),
            ("/caf%C3%A9", Ok("/café")),
            ("/a%20b", Ok("/a b")),
            ("/a..b/c.d", Ok("/a..b/c.d")),
            ("/a/../b", Err(RequestError::DotSegment)),
            ("/a/./b", Err(RequestError::DotSegment)),
            ("/a/..", Err(RequestError::DotSegment)),
            ("/a/%2e%2E/b", Err(RequestError::DotSegment)),
            ("/a/..;/b", Err(RequestError::DotSegment)),
            ("/a/.;x=1/b", Err(RequestError::DotSegment)),
            ("/a/%2e%2e;/b", Err(RequestError::DotSegment)),
            ("/a;v=1/b", Err(RequestError::PathParameter)),
            ("/orders/1001;x=1", Err(RequestError::PathParameter)),
            ("/orders/1001%3Bv=1", Err(RequestError::PathParameter)),
            ("/internal;x/metrics", Err(RequestError::PathParameter)),
            ("/orders/", Ok("/orders")),
            ("/internal/metrics/", Ok("/internal/metrics")),
            ("//orders/1001", Err(RequestError::EmptySegment)),
            ("/internal//metrics", Err(RequestError::EmptySegment)),
            ("/a//", Err(RequestError::EmptySegment)),
            ("//", Err(RequestError::EmptySegment)),
            ("/a/%252e%252e/b", Err(RequestError::DoubleEncoded)),
            ("/a%252Fb", Err(RequestError::DoubleEncoded)),
            ("/100%25", Ok("/100%")),
            ("/100%25off", Ok("/100%off")),
            ("/a%2Fb", Err(RequestError::EncodedSlash)),
            ("/a%2fb", Err(RequestError::EncodedSlash)),
            ("/a%5Cb", Err(RequestError::EncodedSlash)),
            ("/a\\b", Err(RequestError::Backslash)),
            ("/a%2", Err(RequestError::BadPercentEncoding)),
            ("/a%zz", Err(RequestError::BadPercentEncoding)),
            ("/a%ff", Err(RequestError::PathNotUtf8)),
            ("/a%00", Err(RequestError::ControlCharacter)),
            ("/a%0A", Err(RequestError::ControlCharacter)),
            ("orders", Err(RequestError::PathNotAbsolute)),
            ("", Err(RequestError::PathNotAbsolute)),
            ("/a#frag", Err(RequestError::Fragment)),
        ];
        for (target, expected) in cases {
            let got = normalise(raw("GET", target), 64).map(|r| r.path);
            assert_eq!(
                got.as_deref().map_err(Clone::clone),
                expected.clone(),
                "{target}"
            );
        }
    }

    #[test]
    fn query_is_split_off_and_decoded() {
        let r = normalise(raw("GET", "/s?q=a%20b&tag=x&e"), 64).unwrap();
        assert_eq!(r.path, "/s");
        assert_eq!(r.query.get("q").map(String::as_str), Some("a b"));
        assert_eq!(r.query.get("tag").map(String::as_str), Some("x"));
        assert_eq!(r.query.get("e").map(String::as_str), Some(""));
        // `debug=true` twice must not slip past `debug == "true"` as `true,true`; nor may
        // two spellings upstreams read as one name.
        for target in [
            "/s?debug=true&debug=true",
            "/s?debug=true&de%62ug=1",
            "/s?debug=1&Debug=1",
            "/s?debug=1&debug[]=1",
            "/s?debug=1&%20debug=1",
            "/s?de_bug=1&de.bug=1",
        ] {
            assert!(
                matches!(
                    normalise(raw("GET", target), 64),
                    Err(RequestError::RepeatedQuery(_))
                ),
                "{target}"
            );
        }
        assert_eq!(
            normalise(raw("GET", "/s?a=1;debug=1"), 64).unwrap_err(),
            RequestError::QuerySemicolon
        );
    }

    #[test]
    fn overlong_target_is_refused_before_decoding() {
        let err = normalise(raw("GET", &format!("/{}", "a".repeat(64))), 64).unwrap_err();
        assert!(err.is_too_long());
    }

    #[test]
    fn methods_must_be_tokens() {
        assert!(normalise(raw("PATCH", "/"), 64).is_ok());
        assert_eq!(
            normalise(raw("GE T", "/"), 64).unwrap_err(),
            RequestError::BadMethod("GE T".into())
        );
        assert!(normalise(raw("", "/"), 64).is_err());
        for lower in ["delete", "Delete", "gET"] {
            assert_eq!(
                normalise(raw(lower, "/"), 64).unwrap_err(),
                RequestError::MethodCase(lower.into())
            );
        }
    }

    #[test]
    fn headers_are_lowercased_joined_and_strict() {
        let mut r = raw("GET", "/");
        r.headers = vec![
            RawHeader {
                name: "Accept".into(),
                value: b"a".to_vec(),
            },
            RawHeader {
                name: "accept".into(),
                value: b"b".to_vec(),
            },
            RawHeader {
                name: ":path".into(),
                value: b"/".to_vec(),
            },
            RawHeader {
                name: "x-request-id".into(),
                value: b"rid-1".to_vec(),
            },
        ];
        let n = normalise(r.clone(), 64).unwrap();
        assert_eq!(n.headers.get("accept").map(String::as_str), Some("a,b"));
        assert!(!n.headers.contains_key(":path"));
        assert_eq!(n.request_id, "rid-1");
        assert_eq!(n.host, "api.example.org");

        let mut twice = r.clone();
        for value in ["prod", "prod"] {
            twice.headers.push(RawHeader {
                name: "X-Env".into(),
                value: value.as_bytes().to_vec(),
            });
        }
        assert_eq!(
            normalise(twice, 64).unwrap_err(),
            RequestError::RepeatedHeader("x-env".into())
        );
        let mut spellings = r.clone();
        for name in ["x-env", "x_env"] {
            spellings.headers.push(RawHeader {
                name: name.into(),
                value: b"prod".to_vec(),
            });
        }
        assert_eq!(
            normalise(spellings, 64).unwrap_err(),
            RequestError::RepeatedHeader("x_env".into())
        );

        r.headers.push(RawHeader {
            name: "X-Bin".into(),
            value: vec![0xff, 0xfe],
        });
        assert_eq!(
            normalise(r, 64).unwrap_err(),
            RequestError::HeaderNotUtf8("x-bin".into())
        );
    }

    #[test]
    fn hosts_have_one_form() {
        let host = |host: &str, scheme: &str| {
            let mut r = raw("GET", "/");
            r.host = host.into();
            r.scheme = scheme.into();
            normalise(r, 64).unwrap().host
        };
        assert_eq!(host("Admin.Shop.Example", "https"), "admin.shop.example");
        assert_eq!(host("admin.shop.example.", "https"), "admin.shop.example");
        assert_eq!(
            host("admin.shop.example:443", "https"),
            "admin.shop.example"
        );
        assert_eq!(
            host("admin.shop.example.:443", "https"),
            "admin.shop.example"
        );
        assert_eq!(host("admin.shop.example:80", "http"), "admin.shop.example");
        assert_eq!(
            host("admin.shop.example:80", "https"),
            "admin.shop.example:80"
        );
        assert_eq!(
            host("admin.shop.example:8443", "https"),
            "admin.shop.example:8443"
        );
        assert_eq!(host("[::1]:443", "https"), "[::1]");
        assert_eq!(host("", "https"), "");
        // Outside review: an empty port, a padded port.
        assert_eq!(host("admin.shop.example:", "https"), "admin.shop.example");
        assert_eq!(
            host("admin.shop.example:0443", "https"),
            "admin.shop.example"
        );
        assert_eq!(
            host("admin.shop.example:08443", "https"),
            "admin.shop.example:8443"
        );
        for bad in [
            "admin.shop.example..",
            ".admin",
            "a..b",
            "a b",
            "a/b",
            "[::1",
            "x:99999",
            "x:1a",
        ] {
            let mut r = raw("GET", "/");
            r.host = bad.into();
            r.scheme = "https".into();
            assert!(
                matches!(normalise(r, 64), Err(RequestError::BadHost(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn request_id_falls_back_to_envoy_then_fresh() {
        let mut r = raw("GET", "/");
        r.id = "envoy-id".into();
        assert_eq!(normalise(r, 64).unwrap().request_id, "envoy-id");
        let fresh = normalise(raw("GET", "/"), 64).unwrap().request_id;
        assert_eq!(fresh.len(), 36);
        // Too long or not printable: not echoed, the next source is used.
        for bad in ["x".repeat(129), "a b".into(), "a\u{7f}".into()] {
            let mut r = raw("GET", "/");
            r.id = "envoy-id".into();
            r.headers.push(RawHeader {
                name: "x-request-id".into(),
                value: bad.clone().into_bytes(),
            });
            assert_eq!(normalise(r, 64).unwrap().request_id, "envoy-id", "{bad}");
        }
    }
}
