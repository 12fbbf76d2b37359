//! Request bodies, opt-in (README, "Request bodies"): with Envoy's `with_request_body`, a JSON
//! body becomes `context.request.body`, converted to the record the schema declares
//! (`body?: { … }` in the request record, [`super::shapes`]). Read only when the schema
//! declares it; then a body that is cut short, not JSON, nested deeper than allowed or of
//! another shape is a deny with its own reason (413 or 400), never an evaluation error that
//! could skip a `forbid`. An empty body is an absent `body`.

use std::collections::BTreeMap;

use cedar_policy::RestrictedExpression;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::Snapshot;
use super::reads::Reads;
use super::shapes::ShapeError;
use crate::request::Request;

/// `context_extensions` key with which an Envoy route turns body reading off (`"off"`): the
/// route's bodies are not JSON, and Envoy does not send them.
pub const BODY_EXTENSION: &str = "cedargate.body";

/// A request body converted to the declared record.
#[derive(Debug)]
pub struct Body(BTreeMap<String, RestrictedExpression>);

/// Why a body cannot become `context.request.body`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Envoy sent only the first bytes (`allow_partial_message`): nothing is decided on part
    /// of a body.
    #[error(
        "the body is incomplete: Envoy sent only its first bytes (allow_partial_message), or it is over limits.max_body_bytes"
    )]
    Partial,
    #[error("the body is {len} bytes, over the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("the body is not JSON cedargate reads one way only: {0}")]
    NotJson(String),
    #[error("the body's content-type is not JSON (application/json or */*+json)")]
    NotJsonType,
    #[error(
        "the request announces a body (content-length, transfer-encoding) that Envoy did not send: enable with_request_body in the ext_authz filter"
    )]
    NotSent,
    #[error("the body nests deeper than {0} levels")]
    TooDeep(usize),
    #[error("the body is not a JSON object")]
    NotObject,
    #[error("body field {0}")]
    Shape(String),
}

impl BodyError {
    /// The reason code in bodies, metrics and logs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Partial | Self::TooLarge { .. } => "body_too_large",
            Self::NotSent => "body_not_sent",
            Self::NotJson(_)
            | Self::NotJsonType
            | Self::TooDeep(_)
            | Self::NotObject
            | Self::Shape(_) => "bad_body",
        }
    }

    /// The HTTP status: 413 for a body cut short, else 400.
    pub fn status(&self) -> u16 {
        match self {
            Self::Partial | Self::TooLarge { .. } => 413,
            // A gateway that does not send bodies the schema declares: not the client's fault.
            Self::NotSent => 500,
            _ => 400,
        }
    }
}

impl Body {
    /// The `context.request.body` record, with only the fields a policy can read.
    pub fn record(&self, reads: &Reads) -> Option<RestrictedExpression> {
        super::shapes::readable_record(&self.0, |path| reads.context(path), &["request", "body"])
    }
}

/// The request's body in the form the snapshot declares: `None` when the schema declares no
/// body or the request has none.
///
/// Read one way only, as the upstream might read it otherwise: a key twice in an object, a key
/// with a control character, a key that differs from a declared field only in case, or a
/// content-type that is not JSON is refused, not resolved.
pub fn parse(snapshot: &Snapshot, request: &Request) -> Result<Option<Body>, BodyError> {
    let Some(declared) = &snapshot.reads.body else {
        return Ok(None);
    };
    // A route whose bodies are not JSON says so in Envoy (with its body buffering off).
    if request
        .extensions
        .get(BODY_EXTENSION)
        .is_some_and(|v| v == "off")
    {
        return Ok(None);
    }
    let body = &request.body;
    let headers = &request.http.headers;
    if body.bytes.is_empty() && !body.partial {
        // A body the request announces but Envoy did not send would be read as none, and a
        // `forbid` on it skipped.
        let announced = headers
            .get("content-length")
            .is_some_and(|len| len.trim() != "0")
            || headers.contains_key("transfer-encoding");
        return if announced {
            Err(BodyError::NotSent)
        } else {
            Ok(None)
        };
    }
    if body.partial {
        return Err(BodyError::Partial);
    }
    if body.bytes.len() > body.max_bytes {
        return Err(BodyError::TooLarge {
            len: body.bytes.len(),
            max: body.max_bytes,
        });
    }
    let json_type = headers.get("content-type").is_some_and(|value| {
        let media = value.split(';').next().unwrap_or_default().trim();
        media.eq_ignore_ascii_case("application/json")
            || media.to_ascii_lowercase().ends_with("+json")
    });
    if !json_type {
        return Err(BodyError::NotJsonType);
    }
    if depth(&body.bytes) > body.max_depth {
        return Err(BodyError::TooDeep(body.max_depth));
    }
    let Strict(value) = serde_json::from_slice(&body.bytes)
        .map_err(|err| BodyError::NotJson(crate::text::clip(&err.to_string())))?;
    let Value::Object(map) = value else {
        return Err(BodyError::NotObject);
    };
    declared
        .convert(&map)
        .map(|b| Some(Body(b)))
        .map_err(|err: ShapeError| {
            BodyError::Shape(format!(
                "`{}` {}",
                crate::text::clip(err.path()),
                err.problem()
            ))
        })
}

/// A JSON value read strictly: an object with a key twice, or a key with a control character,
/// is an error (serde_json's own map keeps the last of two keys silently).
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        use serde::de::Error;
        let mut fields = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if key.chars().any(char::is_control) {
                return Err(A::Error::custom("a key has a control character"));
            }
            let Strict(value) = map.next_value()?;
            if fields.insert(key, value).is_some() {
                return Err(A::Error::custom("an object has a key twice"));
            }
        }
        Ok(Value::Object(fields))
    }
}

/// The deepest nesting of arrays and objects in JSON text (brackets inside strings do not
/// count), read before parsing so that a deep body costs one pass and no recursion.
fn depth(bytes: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::depth;

    #[test]
    fn depth_counts_brackets_outside_strings() {
        assert_eq!(depth(b"{}"), 1);
        assert_eq!(depth(br#"{"a":[1,{"b":[]}]}"#), 4);
        assert_eq!(depth(br#"{"a":"[[[[{{{"}"#), 1);
        assert_eq!(depth(br#"{"a":"\"[[[["}"#), 1);
        assert_eq!(depth(br#"{"a":"\\"}"#), 1);
        assert_eq!(depth(b"1"), 0);
        assert_eq!(depth(&[b'['; 10_000]), 10_000);
    }
}
