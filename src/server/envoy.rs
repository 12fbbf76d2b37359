//! The edge: Envoy's protobuf types in, typed values out, and an [`Answer`] back to protobuf.
//! Protobuf structs are destructured exhaustively so that a new field breaks the build here
//! instead of being ignored silently. Nothing else in the crate sees these types.

pub mod builder;

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, address, header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest as PbHttp, Peer as PbPeer, Request as PbRequest,
};
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
    check_response::HttpResponse,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value as PbValue, value::Kind};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use serde_json::Value;

use crate::decision::Answer;
use crate::identity::PeerSource;
use crate::request::{RawHeader, RawHttp};

/// What cedargate reads from one CheckRequest.
#[derive(Debug, Default)]
pub struct CheckInput {
    /// The HTTP attributes; `None` when Envoy sent none (a network-filter check, or a bug).
    pub http: Option<RawHttp>,
    pub peer: PeerSource,
    pub destination: crate::request::Destination,
    /// The `cedargate` namespace of Envoy's `route_metadata_context`, as text.
    pub route_metadata: HashMap<String, String>,
    /// Envoy's per-route `context_extensions`.
    pub extensions: HashMap<String, String>,
}

/// The checked request's `traceparent` header, read without converting the whole request
/// (Envoy sends headers in `headers`, or in `header_map` with `encode_raw_headers`).
pub fn traceparent(request: &CheckRequest) -> Option<String> {
    let http = request
        .attributes
        .as_ref()?
        .request
        .as_ref()?
        .http
        .as_ref()?;
    if let Some(value) = http.headers.get("traceparent") {
        return Some(value.clone());
    }
    http.header_map
        .as_ref()?
        .headers
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case("traceparent"))
        .map(|h| {
            if h.raw_value.is_empty() {
                h.value.clone()
            } else {
                String::from_utf8_lossy(&h.raw_value).into_owned()
            }
        })
}

/// Reads a CheckRequest.
pub fn input(request: CheckRequest) -> CheckInput {
    let CheckRequest { attributes } = request;
    let Some(attributes) = attributes else {
        return CheckInput::default();
    };
    let AttributeContext {
        source,
        destination,
        request,
        context_extensions,
        metadata_context: _,
        route_metadata_context,
        tls_session: _,
    } = attributes;
    let peer = source.map(peer).unwrap_or_default();
    let destination = destination
        .map(|d| {
            let PeerSource {
                principal, address, ..
            } = self::peer(d);
            crate::request::Destination { address, principal }
        })
        .unwrap_or_default();
    let http = request
        .and_then(|PbRequest { time: _, http }| http)
        .map(http);
    let route_metadata = route_metadata_context
        .and_then(|m| m.filter_metadata.get(ROUTE_METADATA_NAMESPACE).cloned())
        .map(|fields| {
            fields
                .fields
                .into_iter()
                .map(|(k, v)| (k, metadata_text(v)))
                .collect()
        })
        .unwrap_or_default();
    CheckInput {
        http,
        peer,
        destination,
        route_metadata,
        extensions: context_extensions,
    }
}

/// Envoy without `encode_raw_headers: true` joins a repeated header with `,` before cedargate
/// sees it, so `x-env: prod` sent twice arrives as `prod,prod` and cannot be refused as
/// repeated: said once per process, at the first such check.
fn warn_joined_headers() {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        tracing::warn!("Envoy sends request headers without `encode_raw_headers: true`: a repeated header arrives joined with `,` and cannot be refused, so a policy comparing a header with `==` could be dodged by sending it twice; set encode_raw_headers: true in the ext_authz filter");
    });
}

/// The request id an early answer (overload, a panic, a timeout) carries, read without
/// normalising the request: `x-request-id`, else Envoy's `http.id`, when either is short
/// printable ASCII (as [`crate::request::normalise`] would choose); else a fresh UUID.
pub fn request_id_hint(request: &CheckRequest) -> String {
    let http = request
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref());
    let Some(http) = http else {
        return uuid::Uuid::new_v4().to_string();
    };
    let from_map = http.header_map.as_ref().and_then(|map| {
        map.headers
            .iter()
            .find(|h| h.key.eq_ignore_ascii_case("x-request-id"))
            .map(|h| {
                if h.raw_value.is_empty() {
                    h.value.clone()
                } else {
                    String::from_utf8_lossy(&h.raw_value).into_owned()
                }
            })
    });
    let from_headers = http.headers.get("x-request-id").cloned();
    [from_map.or(from_headers), Some(http.id.clone())]
        .into_iter()
        .flatten()
        .find(|id| crate::request::is_request_id(id))
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

fn peer(source: PbPeer) -> PeerSource {
    let PbPeer {
        address,
        service: _,
        labels: _,
        principal,
        certificate,
    } = source;
    let address = address
        .and_then(|a| a.address)
        .and_then(|a| match a {
            address::Address::SocketAddress(s) => Some(match s.port_specifier {
                // `[::1]:8443`, not `::1:8443` (which reads as another IPv6 address).
                Some(envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(port)) if s.address.contains(':') => {
                    format!("[{}]:{port}", s.address)
                }
                Some(envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(port)) => {
                    format!("{}:{port}", s.address)
                }
                _ => s.address,
            }),
            address::Address::Pipe(p) => Some(p.path),
            _ => None,
        })
        .unwrap_or_default();
    PeerSource {
        principal,
        address,
        certificate,
    }
}

fn http(http: PbHttp) -> RawHttp {
    let PbHttp {
        id,
        method,
        headers,
        header_map,
        path,
        host,
        scheme,
        query: _,
        fragment: _,
        size: _,
        protocol,
        body,
        raw_body,
    } = http;
    // `raw_body` with `pack_as_bytes` (any bytes), else the body as UTF-8 text.
    let body = if raw_body.is_empty() {
        body.into_bytes()
    } else {
        raw_body
    };
    // Envoy fills `header_map` instead of `headers` when `encode_raw_headers` is on; a raw
    // value is bytes (possibly not UTF-8), a text value is in `value`.
    let headers = match header_map {
        Some(map) => map
            .headers
            .into_iter()
            .map(
                |HeaderValue {
                     key,
                     value,
                     raw_value,
                 }| RawHeader {
                    name: key,
                    value: if raw_value.is_empty() {
                        value.into_bytes()
                    } else {
                        raw_value
                    },
                },
            )
            .collect(),
        None => {
            if !headers.is_empty() {
                warn_joined_headers();
            }
            headers
                .into_iter()
                .map(|(name, value)| RawHeader {
                    name,
                    value: value.into_bytes(),
                })
                .collect()
        }
    };
    RawHttp {
        method,
        target: path,
        host,
        scheme,
        protocol,
        id,
        headers,
        body,
        body_cut: false,
    }
}

/// Writes an answer as Envoy's CheckResponse.
pub fn response(answer: Answer) -> CheckResponse {
    let Answer {
        code,
        http_status,
        headers,
        headers_to_remove,
        body,
        metadata,
    } = answer;
    let header_options = headers
        .into_iter()
        .map(|(key, value)| HeaderValueOption {
            header: Some(HeaderValue {
                key,
                value,
                raw_value: Vec::new(),
            }),
            append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
            ..HeaderValueOption::default()
        })
        .collect();
    let http_response = match http_status {
        None => HttpResponse::OkResponse(OkHttpResponse {
            headers: header_options,
            headers_to_remove,
            ..OkHttpResponse::default()
        }),
        Some(status) => HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(status),
            }),
            headers: header_options,
            body,
        }),
    };
    CheckResponse {
        status: Some(RpcStatus {
            code: code.into(),
            message: String::new(),
            details: Vec::new(),
        }),
        dynamic_metadata: Some(to_struct(metadata)),
        http_response: Some(http_response),
    }
}

/// The route metadata namespace cedargate reads (`route_metadata_context_namespaces` in the
/// ext_authz filter must name it).
pub const ROUTE_METADATA_NAMESPACE: &str = "cedargate";

/// A metadata value as a tag: a string as it is, anything else as its JSON text.
fn metadata_text(value: PbValue) -> String {
    match value.kind {
        Some(Kind::StringValue(s)) => s,
        kind => from_value(kind).to_string(),
    }
}

fn from_value(kind: Option<Kind>) -> Value {
    match kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::NumberValue(n)) => {
            serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
        }
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::ListValue(list)) => Value::Array(
            list.values
                .into_iter()
                .map(|v| from_value(v.kind))
                .collect(),
        ),
        Some(Kind::StructValue(s)) => Value::Object(
            s.fields
                .into_iter()
                .map(|(k, v)| (k, from_value(v.kind)))
                .collect(),
        ),
    }
}

fn to_struct(map: serde_json::Map<String, Value>) -> Struct {
    Struct {
        fields: map.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
    }
}

fn to_value(value: Value) -> PbValue {
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(items) => Kind::ListValue(ListValue {
            values: items.into_iter().map(to_value).collect(),
        }),
        Value::Object(map) => Kind::StructValue(to_struct(map)),
    };
    PbValue { kind: Some(kind) }
}
