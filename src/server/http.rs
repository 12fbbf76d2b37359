//! The HTTP authorization service (`listen.http`): Envoy's ext_authz `http_service`, and the
//! forward-auth of other proxies (Traefik `forwardAuth`, nginx `auth_request`), decided on the
//! same path as the gRPC Check ([`check::decide_counted`]): same admission, deadline, panic
//! guard, stages, metrics and decision log.
//!
//! The request in: the original method and target (behind `http_service.path_prefix`), or the
//! `X-Forwarded-*` description of a forward-auth proxy; the original headers, less those that
//! describe the authorization hop itself (`Host`, which becomes the host; `Content-Length`,
//! `Transfer-Encoding`, `Connection`, `Keep-Alive`, Envoy's `x-envoy-expected-rq-timeout-ms`,
//! which shortens the deadline). There is no peer certificate, source address or
//! `context_extensions` on this path: the peer is known only from `X-Forwarded-Client-Cert`
//! when `peer.trust_xfcc` is on.
//!
//! The listener: HTTP/1.1 only, served by hyper with a connection cap
//! (`limits.max_http_connections`; one more is closed at once and counted), a header read
//! timeout, and header limits a little above `limits.max_headers` / `max_header_bytes` (so that
//! cedargate's own 431 answers with its JSON body, not hyper's bare one).
//!
//! The answer out: 200 with the identity headers and `x-envoy-auth-headers-to-remove` (the
//! client's copies of identity headers, the token when it is not forwarded) for an allow;
//! the deny's status, headers and JSON body otherwise. A deny is never a 2xx.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;

use super::check::{self, Shared};
use super::envoy::CheckInput;
use crate::config::{HttpService, OriginalRequest};
use crate::decision::Answer;
use crate::identity::PeerSource;
use crate::request::{RawHeader, RawHttp, RequestError};

/// The response header listing the upstream request headers Envoy removes on an allow.
pub const HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";

/// Envoy's timeout for this authorization request, in milliseconds, when it sends one.
const EXPECTED_TIMEOUT: &str = "x-envoy-expected-rq-timeout-ms";

/// The forward-auth headers that name the original request (`request: forwarded`).
const FORWARDED: [&str; 3] = ["x-forwarded-method", "x-forwarded-uri", "x-forwarded-host"];

/// Headers that describe the hop from the proxy to cedargate, not the original request.
const HOP_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    EXPECTED_TIMEOUT,
];

#[derive(Debug)]
struct Service {
    shared: Arc<Shared>,
    settings: HttpService,
}

/// How long a client may take to send a request's headers (an idle kept-alive connection
/// waits under the same bound): slow senders cannot hold connections.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Headers Envoy adds to the authorization request beyond the client's (`x-forwarded-*`,
/// `x-envoy-*`, `content-length`, `x-request-id`): hyper's header count allows for them.
const PROXY_HEADERS: usize = 16;

/// Serves `router` on `listener` until `stop` resolves, then lets the open connections finish
/// their request (keep-alive off) and returns once they are closed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: &crate::config::Limits,
    max_connections: usize,
    stop: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_headers(limits.max_headers.saturating_add(PROXY_HEADERS))
        .max_buf_size(
            limits
                .max_header_bytes
                .saturating_add(limits.max_path_bytes)
                .saturating_add(16 * 1024),
        );
    let connections = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let accepted = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(err) => {
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            crate::telemetry::rejected("http_connections");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(tcp), service));
        tokio::spawn(async move {
            let _ = connection.await;
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Every method and path of the listener is an authorization request.
pub fn router(shared: Arc<Shared>, settings: HttpService) -> Router {
    Router::new()
        .fallback(authorize)
        .with_state(Arc::new(Service { shared, settings }))
}

async fn authorize(State(service): State<Arc<Service>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let shared = &*service.shared;
    let request_id = parts
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|id| crate::request::is_request_id(id))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), ToOwned::to_owned);
    let started = std::time::Instant::now();
    let budget = deadline(shared.limits.check_timeout, &parts);
    let settings = &service.settings;
    // The body Envoy's `with_request_body` sends, up to the limit, within the check's
    // deadline and before the check takes one of the in-flight places (a client sending its
    // body slowly holds a connection, of which there are `max_http_connections`, not a place
    // gRPC checks need); one over the limit (or cut off) is marked cut short, and only a
    // schema that declares `context.request.body` cares (413 `body_too_large`).
    let limit = shared.limits.max_body_bytes;
    let body = tokio::time::timeout(budget, axum::body::to_bytes(body, limit)).await;
    let (body, cut) = match body {
        Ok(Ok(bytes)) => (bytes.to_vec(), false),
        Ok(Err(_)) | Err(_) => (Vec::new(), true),
    };
    let Some(_permit) = shared.admit() else {
        return respond(check::overloaded(shared, request_id).answer());
    };
    // What reading the body took is spent from the check's deadline.
    let budget = budget.saturating_sub(started.elapsed());
    let input = || {
        let mut input = read(&parts, settings)?;
        if let Some(http) = input.http.as_mut() {
            http.body = body;
            http.body_cut = cut;
        }
        Ok(input)
    };
    let decision = check::decide_counted(shared, input, request_id, budget).await;
    respond(decision.answer())
}

/// The configured bound, shortened by Envoy's own timeout for this request when it says one.
fn deadline(bound: Duration, parts: &Parts) -> Duration {
    parts
        .headers
        .get(EXPECTED_TIMEOUT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ms| ms.parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map_or(bound, |ms| check::within(bound, Duration::from_millis(ms)))
}

/// The original request as the proxy describes it.
pub fn read(parts: &Parts, settings: &HttpService) -> Result<CheckInput, RequestError> {
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    // A header that says what the request is must say it once: with two, a proxy that appends
    // rather than overwrites would let the client's copy be read first.
    for name in ["host", "x-forwarded-proto"].into_iter().chain(
        match settings.request {
            OriginalRequest::Envoy => [].as_slice(),
            OriginalRequest::Forwarded => FORWARDED.as_slice(),
        }
        .iter()
        .copied(),
    ) {
        if parts.headers.get_all(name).iter().nth(1).is_some() {
            return Err(RequestError::RepeatedHeader(name.to_owned()));
        }
    }
    let scheme = match header("x-forwarded-proto").as_deref() {
        Some(proto @ ("http" | "https")) => proto.to_owned(),
        _ => "http".to_owned(),
    };
    let (method, target, host) = match settings.request {
        OriginalRequest::Envoy => {
            let target = parts
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            let target = strip_prefix(target, &settings.path_prefix)?;
            let host = header("host")
                .or_else(|| parts.uri.authority().map(ToString::to_string))
                .unwrap_or_default();
            (parts.method.as_str().to_owned(), target, host)
        }
        OriginalRequest::Forwarded => {
            let required = |name: &'static str| {
                header(name)
                    .filter(|v| !v.is_empty())
                    .ok_or(RequestError::MissingForwarded(name))
            };
            (
                required("x-forwarded-method")?,
                required("x-forwarded-uri")?,
                required("x-forwarded-host")?,
            )
        }
    };
    let headers = parts
        .headers
        .iter()
        .filter(|(name, _)| !HOP_HEADERS.contains(&name.as_str()))
        .map(|(name, value)| RawHeader {
            name: name.as_str().to_owned(),
            value: value.as_bytes().to_vec(),
        })
        .collect();
    Ok(CheckInput {
        http: Some(RawHttp {
            method,
            target,
            host,
            scheme,
            protocol: String::new(),
            // Envoy's `http.id` is the `x-request-id` it sends; a value unfit for a log line
            // or an answer is not taken (a fresh id is made).
            id: header("x-request-id")
                .filter(|id| crate::request::is_request_id(id))
                .unwrap_or_default(),
            headers,
            body: Vec::new(),
            body_cut: false,
        }),
        peer: PeerSource::default(),
        destination: crate::request::Destination::default(),
        route_metadata: std::collections::HashMap::new(),
        extensions: std::collections::HashMap::new(),
    })
}

/// The original target behind Envoy's `path_prefix`: `/authz/orders?x=1` under `/authz` is
/// `/orders?x=1`; `/authzorders` and `/other` are outside it.
fn strip_prefix(target: String, prefix: &str) -> Result<String, RequestError> {
    if prefix.is_empty() {
        return Ok(target);
    }
    match target.strip_prefix(prefix) {
        Some(rest) if rest.starts_with('/') => Ok(rest.to_owned()),
        _ => Err(RequestError::OutsidePrefix(prefix.to_owned())),
    }
}

/// An answer as the HTTP authorization protocol says it: 200 allows, anything else denies.
fn respond(answer: Answer) -> Response {
    let Answer {
        code: _,
        http_status,
        headers,
        headers_to_remove,
        body,
        metadata: _,
    } = answer;
    let status = match http_status {
        None => StatusCode::OK,
        Some(status) => StatusCode::from_u16(status)
            .ok()
            .filter(|s| !s.is_success() && !s.is_informational())
            .unwrap_or(StatusCode::FORBIDDEN),
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let map = response.headers_mut();
    for (name, value) in headers {
        // A value that is not a valid header (never a name cedargate writes) is left out;
        // the client's copy of an identity header is removed anyway.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            map.append(name, value);
        }
    }
    if status == StatusCode::OK
        && !headers_to_remove.is_empty()
        && let Ok(value) = HeaderValue::from_str(&headers_to_remove.join(", "))
    {
        map.insert(HEADERS_TO_REMOVE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(request: axum::http::Request<()>) -> Parts {
        request.into_parts().0
    }

    #[test]
    fn envoy_requests_are_read_behind_the_prefix() {
        let settings = HttpService {
            path_prefix: "/authz".into(),
            request: OriginalRequest::Envoy,
        };
        let request = axum::http::Request::builder()
            .method("DELETE")
            .uri("/authz/orders/7?x=1")
            .header("host", "shop.example")
            .header("content-length", "0")
            .header("x-env", "a")
            .header("x-env", "b")
            .body(())
            .unwrap();
        let input = read(&parts(request), &settings).unwrap();
        let http = input.http.unwrap();
        assert_eq!(
            (
                http.method.as_str(),
                http.target.as_str(),
                http.host.as_str()
            ),
            ("DELETE", "/orders/7?x=1", "shop.example")
        );
        let names: Vec<&str> = http.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["x-env", "x-env"], "repeated headers stay repeated");
        for outside in ["/authzorders", "/other", "/authz"] {
            let request = axum::http::Request::builder()
                .uri(outside)
                .body(())
                .unwrap();
            assert!(matches!(
                read(&parts(request), &settings),
                Err(RequestError::OutsidePrefix(_))
            ));
        }
    }

    #[test]
    fn forwarded_requests_need_the_forwarded_headers() {
        let settings = HttpService {
            path_prefix: String::new(),
            request: OriginalRequest::Forwarded,
        };
        let request = axum::http::Request::builder()
            .uri("/auth")
            .header("x-forwarded-method", "POST")
            .header("x-forwarded-uri", "/orders")
            .header("x-forwarded-host", "shop.example")
            .header("x-forwarded-proto", "https")
            .body(())
            .unwrap();
        let http = read(&parts(request), &settings).unwrap().http.unwrap();
        assert_eq!(
            (
                http.method.as_str(),
                http.target.as_str(),
                http.scheme.as_str()
            ),
            ("POST", "/orders", "https")
        );
        let twice = axum::http::Request::builder()
            .uri("/auth")
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-uri", "/public")
            .header("x-forwarded-uri", "/admin")
            .header("x-forwarded-host", "shop.example")
            .body(())
            .unwrap();
        assert!(matches!(
            read(&parts(twice), &settings),
            Err(RequestError::RepeatedHeader(name)) if name == "x-forwarded-uri"
        ));
        let request = axum::http::Request::builder()
            .uri("/orders")
            .header("x-forwarded-method", "GET")
            .body(())
            .unwrap();
        assert!(matches!(
            read(&parts(request), &settings),
            Err(RequestError::MissingForwarded("x-forwarded-uri"))
        ));
    }

    #[test]
    fn a_deny_is_never_answered_with_a_success_status() {
        let deny = |status| Answer {
            code: tonic::Code::PermissionDenied,
            http_status: Some(status),
            headers: Vec::new(),
            headers_to_remove: vec!["authorization".into()],
            body: String::new(),
            metadata: serde_json::Map::new(),
        };
        assert_eq!(respond(deny(401)).status(), StatusCode::UNAUTHORIZED);
        for odd in [200, 204, 100, 0] {
            let response = respond(deny(odd));
            assert_eq!(response.status(), StatusCode::FORBIDDEN, "{odd}");
            assert!(response.headers().get(HEADERS_TO_REMOVE).is_none());
        }
    }
}
