//! Request bodies, opt-in (README, "Request bodies"): with Envoy's `with_request_body`, a JSON
//! body becomes `context.request.body`, converted to the record the schema declares
//! (`body?: { … }` in the request record, [`super::shapes`]). Read only when the schema
//! declares it; then a body that is cut short, not JSON, nested deeper than allowed or of
//! another shape is a deny with its own reason (413 or 400), never an evaluation error that
//! could skip a `forbid`. An empty body is an absent `body`.

use std::collections::BTreeMap;

use cedar_policy::RestrictedExpression;

use super::Snapshot;
use super::reads::Reads;
use super::shapes::ShapeError;
use crate::request::RequestBody;

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
    #[error("the body is not JSON")]
    NotJson,
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
            Self::NotJson | Self::TooDeep(_) | Self::NotObject | Self::Shape(_) => "bad_body",
        }
    }

    /// The HTTP status: 413 for a body cut short, else 400.
    pub fn status(&self) -> u16 {
        match self {
            Self::Partial | Self::TooLarge { .. } => 413,
            _ => 400,
        }
    }
}

impl Body {
    /// The `context.request.body` record, with only the fields a policy can read.
    pub fn record(&self, reads: &Reads) -> Option<RestrictedExpression> {
        super::shapes::readable_record(&self.0, reads, &["request", "body"])
    }
}

/// The request's body in the form the snapshot declares: `None` when the schema declares no
/// body or the request has none.
pub fn parse(snapshot: &Snapshot, body: &RequestBody) -> Result<Option<Body>, BodyError> {
    let Some(declared) = &snapshot.reads.body else {
        return Ok(None);
    };
    if body.bytes.is_empty() && !body.partial {
        return Ok(None);
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
    if depth(&body.bytes) > body.max_depth {
        return Err(BodyError::TooDeep(body.max_depth));
    }
    let value: serde_json::Value =
        serde_json::from_slice(&body.bytes).map_err(|_| BodyError::NotJson)?;
    let serde_json::Value::Object(map) = value else {
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
