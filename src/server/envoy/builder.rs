//! Builds a CheckRequest the way Envoy's HTTP ext_authz filter fills it: pseudo-headers in the
//! header map, the request id from `x-request-id`, the peer's `source.principal` and URL-encoded
//! certificate. Used by `cedargate test` and `cedargate check` (so a policy test runs the same
//! protobuf → decision path as a real Check) and by the test suite.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::{
    Address, HeaderMap, HeaderValue, Metadata, SocketAddress, address,
    socket_address::PortSpecifier,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};

/// A CheckRequest under construction.
#[derive(Debug, Clone)]
pub struct CheckBuilder {
    method: String,
    path: String,
    host: String,
    scheme: String,
    headers: Vec<(String, Vec<u8>)>,
    raw_headers: bool,
    principal: String,
    certificate: String,
    address: (String, u32),
    destination: (String, u32, String),
    route_metadata: HashMap<String, String>,
    extensions: HashMap<String, String>,
    body: String,
}

impl CheckBuilder {
    /// `method path` (the path with its query) on host `shop.example` over https, from
    /// 127.0.0.1:51234 without a client certificate, with no headers.
    pub fn new(method: &str, path: &str) -> Self {
        Self {
            method: method.into(),
            path: path.into(),
            host: "shop.example".into(),
            scheme: "https".into(),
            headers: Vec::new(),
            raw_headers: false,
            principal: String::new(),
            certificate: String::new(),
            address: ("127.0.0.1".into(), 51234),
            destination: ("127.0.0.1".into(), 8443, String::new()),
            route_metadata: HashMap::new(),
            extensions: HashMap::new(),
            body: String::new(),
        }
    }

    /// The request body, as Envoy's `with_request_body` sends it (text in `body`).
    pub fn body(mut self, body: &str) -> Self {
        self.body = body.into();
        self
    }

    pub fn host(mut self, host: &str) -> Self {
        host.clone_into(&mut self.host);
        self
    }

    pub fn scheme(mut self, scheme: &str) -> Self {
        scheme.clone_into(&mut self.scheme);
        self
    }

    /// Adds `Authorization: Bearer <token>`.
    pub fn bearer(self, token: &str) -> Self {
        self.header("authorization", &format!("Bearer {token}"))
    }

    /// Adds a header, its name as given (Envoy sends lower-case names).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.as_bytes().to_vec()));
        self
    }

    /// Sends headers in `header_map` with raw bytes, as Envoy's `encode_raw_headers: true` does.
    pub fn raw_header(mut self, name: &str, value: &[u8]) -> Self {
        self.raw_headers = true;
        self.headers.push((name.into(), value.to_vec()));
        self
    }

    pub fn without_header(mut self, name: &str) -> Self {
        self.headers.retain(|(n, _)| n != name);
        self
    }

    /// The peer's `source.principal`, as Envoy computes it from a verified client certificate.
    pub fn peer(mut self, principal: &str) -> Self {
        principal.clone_into(&mut self.principal);
        self
    }

    /// `source.certificate`, URL-encoded PEM (Envoy's `include_peer_certificate: true`).
    pub fn certificate(mut self, url_encoded_pem: &str) -> Self {
        url_encoded_pem.clone_into(&mut self.certificate);
        self
    }

    /// The downstream socket address.
    pub fn address(mut self, ip: &str, port: u32) -> Self {
        self.address = (ip.into(), port);
        self
    }

    /// An Envoy per-route `context_extensions` entry.
    pub fn extension(mut self, key: &str, value: &str) -> Self {
        self.extensions.insert(key.into(), value.into());
        self
    }

    /// A string field of the route's metadata in the `cedargate` namespace.
    pub fn route_metadata(mut self, key: &str, value: &str) -> Self {
        self.route_metadata.insert(key.into(), value.into());
        self
    }

    /// Envoy's `destination`: the listener's address and the identity Envoy presented.
    pub fn destination(mut self, ip: &str, port: u32, principal: &str) -> Self {
        self.destination = (ip.into(), port, principal.into());
        self
    }

    pub fn build(self) -> CheckRequest {
        let request_id = self
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("x-request-id"))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        let mut all = vec![
            (":authority".to_owned(), self.host.as_bytes().to_vec()),
            (":method".to_owned(), self.method.as_bytes().to_vec()),
            (":path".to_owned(), self.path.as_bytes().to_vec()),
            (":scheme".to_owned(), self.scheme.as_bytes().to_vec()),
        ];
        all.extend(self.headers);
        let (headers, header_map) = if self.raw_headers {
            let map = HeaderMap {
                headers: all
                    .into_iter()
                    .map(|(key, raw_value)| HeaderValue {
                        key,
                        value: String::new(),
                        raw_value,
                    })
                    .collect(),
            };
            (HashMap::new(), Some(map))
        } else {
            // Envoy joins repeated headers with a comma in the `headers` map.
            let mut map = HashMap::<String, String>::new();
            for (k, v) in all {
                let v = String::from_utf8_lossy(&v).into_owned();
                map.entry(k)
                    .and_modify(|e| *e = format!("{e},{v}"))
                    .or_insert(v);
            }
            (map, None)
        };
        let socket = |ip: &str, port| Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: ip.into(),
                port_specifier: Some(PortSpecifier::PortValue(port)),
                ..SocketAddress::default()
            })),
        };
        CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(Peer {
                    address: Some(socket(&self.address.0, self.address.1)),
                    principal: self.principal,
                    certificate: self.certificate,
                    ..Peer::default()
                }),
                destination: Some(Peer {
                    address: Some(socket(&self.destination.0, self.destination.1)),
                    principal: self.destination.2,
                    ..Peer::default()
                }),
                request: Some(Request {
                    time: None,
                    http: Some(HttpRequest {
                        id: request_id,
                        method: self.method,
                        headers,
                        header_map,
                        path: self.path,
                        host: self.host,
                        scheme: self.scheme,
                        protocol: "HTTP/1.1".into(),
                        size: i64::try_from(self.body.len()).unwrap_or(i64::MAX),
                        body: self.body,
                        ..HttpRequest::default()
                    }),
                }),
                context_extensions: self.extensions,
                route_metadata_context: (!self.route_metadata.is_empty()).then(|| {
                    let fields = self
                        .route_metadata
                        .into_iter()
                        .map(|(k, v)| {
                            let value = Value {
                                kind: Some(Kind::StringValue(v)),
                            };
                            (k, value)
                        })
                        .collect();
                    Metadata {
                        filter_metadata: HashMap::from([(
                            super::ROUTE_METADATA_NAMESPACE.to_owned(),
                            Struct { fields },
                        )]),
                        ..Metadata::default()
                    }
                }),
                ..AttributeContext::default()
            }),
        }
    }
}
