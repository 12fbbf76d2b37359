//! The `http_service` section: how the HTTP authorization listener (`listen.http`) reads the
//! request it decides on. Envoy's `http_service` sends the original method and path (behind
//! its `path_prefix`) with the original headers; forward-auth proxies (Traefik `forwardAuth`,
//! nginx `auth_request`) send a request of their own and describe the original one in
//! `X-Forwarded-Method`, `X-Forwarded-Uri`, `X-Forwarded-Host` and `X-Forwarded-Proto`.

use serde::Deserialize;

use super::Problem;

/// How the HTTP authorization listener reads the original request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpService {
    /// The `path_prefix` Envoy's `http_service` puts before the original path: removed before
    /// deciding, and a request outside it is refused (400). Empty: the path is the original.
    pub path_prefix: String,
    pub request: OriginalRequest,
}

/// Where the original request's method, target, host and scheme come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OriginalRequest {
    /// Envoy `http_service`: the request's own method and path; the host from `Host`; the
    /// scheme from `X-Forwarded-Proto` (which Envoy sets), else `http`.
    #[default]
    Envoy,
    /// A forward-auth proxy: `X-Forwarded-Method`, `X-Forwarded-Uri` and `X-Forwarded-Host`
    /// are required (a request without one is refused, 400), `X-Forwarded-Proto` optional.
    Forwarded,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttpService {
    #[serde(default)]
    path_prefix: Option<String>,
    #[serde(default)]
    request: Option<OriginalRequest>,
}

pub(super) fn build(raw: RawHttpService, problems: &mut Vec<Problem>) -> HttpService {
    let RawHttpService {
        path_prefix,
        request,
    } = raw;
    let mut prefix = path_prefix.unwrap_or_default();
    if !prefix.is_empty()
        && (!prefix.starts_with('/')
            || prefix.ends_with('/')
            || prefix.contains(['?', '#', '%'])
            || prefix.bytes().any(|b| b.is_ascii_control() || b == b' '))
    {
        problems.push(Problem {
            field: "http_service.path_prefix".into(),
            value: prefix,
            fix: "write the path_prefix of Envoy's http_service as a plain path: starting with `/`, no trailing `/`, no query, no percent-encoding (e.g. /authz)",
        });
        prefix = String::new();
    }
    HttpService {
        path_prefix: prefix,
        request: request.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built(prefix: &str) -> (HttpService, usize) {
        let mut problems = Vec::new();
        let raw = RawHttpService {
            path_prefix: Some(prefix.to_owned()),
            request: None,
        };
        let service = build(raw, &mut problems);
        (service, problems.len())
    }

    #[test]
    fn a_path_prefix_is_a_plain_absolute_path() {
        assert_eq!(built("/authz").0.path_prefix, "/authz");
        assert_eq!(built("/ext/authz").1, 0);
        assert_eq!(built("").1, 0);
        for bad in ["authz", "/authz/", "/", "/a?b", "/a%2f", "/a b"] {
            assert_eq!(built(bad).1, 1, "{bad}");
        }
    }
}
