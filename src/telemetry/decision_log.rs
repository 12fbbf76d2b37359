//! The decision log line: one typed record per decision, serialised once, straight into the
//! batched log writer ([`super::log_writer`]) when logs are JSON. `policy_ids` is a JSON
//! array, `attributes` a JSON object, uids are written as Cedar prints them, and a field with
//! nothing to say is left out (no empty strings, no JSON inside JSON strings, no Rust `Debug`
//! text). The check thread pays one serialisation and a bounded append; the writer thread
//! does the I/O. With text logs the same fields go through `tracing` as before.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde::ser::SerializeMap;

use super::log_writer::BatchedStderr;
use crate::decision::Decision;

/// Where JSON decision lines go: set by [`super::init_logging`] for the JSON format.
static JSON_WRITER: OnceLock<BatchedStderr> = OnceLock::new();

/// Sends decision lines to `writer` as typed JSON records (the JSON log format).
pub(super) fn write_json_to(writer: BatchedStderr) {
    let _ = JSON_WRITER.set(writer);
}

/// The `tracing` target of decision lines (`RUST_LOG=cedargate::decision=off` turns them off).
pub const TARGET: &str = "cedargate::decision";

/// One decision line.
#[derive(Debug, Serialize)]
struct Line<'a> {
    timestamp: String,
    level: &'static str,
    target: &'static str,
    service: &'static str,
    request_id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    peer_addr: &'a str,
    decision: &'static str,
    enforced: bool,
    reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    principal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<String>,
    policy_ids: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    policy_version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Attributes::is_empty")]
    attributes: Attributes<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    /// The verdict came from the token's decision cache.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    cached: bool,
    /// Entities fetched from the entity source that the decision used.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    fetched: Vec<String>,
    latency_us: u64,
}

/// Log attributes as one JSON object.
#[derive(Debug)]
struct Attributes<'a>(&'a [(String, String)]);

impl Attributes<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Attributes<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// Writes the line of one decision; `false` when JSON logs are not on (the caller logs it
/// through `tracing`).
pub fn write(decision: &Decision, detail: Option<&str>, elapsed: Duration) -> bool {
    let Some(writer) = JSON_WRITER.get() else {
        return false;
    };
    if !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
        return true;
    }
    let Decision {
        evaluation,
        envelope,
    } = decision;
    let uid = |u: &Option<cedar_policy::EntityUid>| u.as_ref().map(ToString::to_string);
    let line = Line {
        timestamp: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
        level: "INFO",
        target: TARGET,
        service: "cedargate",
        request_id: &envelope.request_id,
        peer_addr: &envelope.peer_addr,
        decision: if decision.is_allow() { "allow" } else { "deny" },
        enforced: envelope.enforced,
        reason: decision.reason_code(),
        principal: uid(&evaluation.principal),
        action: uid(&evaluation.action),
        resource: uid(&evaluation.resource),
        policy_ids: &evaluation.policy_ids,
        policy_version: evaluation.version.as_deref(),
        trace_id: envelope.trace_id.as_deref(),
        attributes: Attributes(&envelope.log_attributes),
        detail,
        cached: evaluation.recall == crate::decision::Recall::Hit,
        fetched: evaluation.fetched.iter().map(ToString::to_string).collect(),
        latency_us: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
    };
    let mut text = Vec::with_capacity(512);
    if serde_json::to_writer(&mut text, &line).is_ok() {
        text.push(b'\n');
        writer.write_line(&text);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::{DenyReason, Envelope, Evaluation};

    #[test]
    fn a_line_is_typed_json_without_empty_fields() {
        let decision = Decision {
            evaluation: Evaluation {
                policy_ids: vec!["p1".into(), "p2".into()],
                ..Evaluation::denied(DenyReason::PolicyDenied)
            },
            envelope: Envelope {
                log_attributes: vec![("header.x-tenant".into(), "blue".into())],
                ..Envelope::bare("rid".into())
            },
        };
        let line = Line {
            timestamp: "t".into(),
            level: "INFO",
            target: TARGET,
            service: "cedargate",
            request_id: &decision.envelope.request_id,
            peer_addr: "",
            decision: "deny",
            enforced: true,
            reason: decision.reason_code(),
            principal: None,
            action: None,
            resource: None,
            policy_ids: &decision.evaluation.policy_ids,
            policy_version: None,
            trace_id: None,
            attributes: Attributes(&decision.envelope.log_attributes),
            detail: None,
            cached: false,
            fetched: Vec::new(),
            latency_us: 7,
        };
        let json = serde_json::to_value(&line).unwrap();
        assert_eq!(json["policy_ids"], serde_json::json!(["p1", "p2"]));
        assert_eq!(json["attributes"]["header.x-tenant"], "blue");
        for absent in [
            "peer_addr",
            "principal",
            "policy_version",
            "trace_id",
            "detail",
            "cached",
        ] {
            assert!(json.get(absent).is_none(), "{absent} in {json}");
        }
    }
}
