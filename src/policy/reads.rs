//! What a policy set can read of the data cedargate builds per request, derived once per
//! snapshot from the policies' JSON form, so that a check builds only that: the context paths
//! the conditions reach (`context.request.method`, `context has token`) and the tag names they
//! read with a literal key (`context.request.headers.getTag("x-tenant")`).
//!
//! The analysis is conservative: a use of `context` other than a chain of attribute accesses
//! (`context` compared or passed whole) keeps the whole context, and a tag read with a
//! computed key (`getTag(context.request.method)`) keeps every tag. Leaving out what no policy
//! can read cannot change a decision: Cedar has no way to list a record's keys or an entity's
//! tags, so an attribute or a tag no policy names is invisible to every policy. The
//! differential tests (`tests/slicing.rs`, `tests/decide.rs`) check this against the reference
//! that builds everything.

use std::collections::{BTreeSet, HashSet};

use cedar_policy::PolicySet;
use serde_json::Value;

/// The parts of the per-request data a policy set reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reads {
    /// Attribute paths under `context` that some condition reads, each with whether its value
    /// is used (`context.token.scope`: `true`) or only its presence (`context has token`:
    /// `false`); `None` when some condition uses the context whole.
    context: Option<BTreeSet<(Vec<String>, bool)>>,
    /// Tag names some condition reads with a literal key, or `None` when some key is computed.
    tags: Option<HashSet<String>>,
}

impl Reads {
    /// Everything is read (no analysis): what the reference builds.
    pub fn everything() -> Self {
        Self {
            context: None,
            tags: None,
        }
    }

    /// What the static policies and templates of `policies` read. A policy without a JSON
    /// form (never expected) reads everything.
    pub fn of(policies: &PolicySet) -> Self {
        let mut reads = Self {
            context: Some(BTreeSet::new()),
            tags: Some(HashSet::new()),
        };
        let forms = policies
            .policies()
            .map(cedar_policy::Policy::to_json)
            .chain(policies.templates().map(cedar_policy::Template::to_json));
        for form in forms {
            match form {
                Ok(json) => {
                    for condition in json
                        .get("conditions")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        reads.visit(condition.get("body").unwrap_or(condition));
                    }
                }
                Err(_) => return Self::everything(),
            }
        }
        reads
    }

    /// True when a condition may read the context attribute at `path`: its value or
    /// something below it, or (for a `has` test) whether it is there.
    pub fn context(&self, path: &[&str]) -> bool {
        let prefix = |short: &[&str], long: &[String]| {
            short.len() <= long.len() && short.iter().zip(long).all(|(a, b)| *a == b.as_str())
        };
        self.context.as_ref().is_none_or(|reads| {
            reads.iter().any(|(read, whole)| {
                prefix(path, read)
                    || (*whole
                        && read.len() <= path.len()
                        && read.iter().zip(path).all(|(a, b)| a.as_str() == *b))
            })
        })
    }

    /// True when a condition may read the tag `name` (of any entity).
    pub fn tag(&self, name: &str) -> bool {
        self.tags.as_ref().is_none_or(|tags| tags.contains(name))
    }

    /// True when a condition may read a context attribute whose value differs between two
    /// requests of the same token: a request field other than the helper entities (which are
    /// the same uids every time), the peer, or the time. When false, a token's context is the
    /// same for all its requests and is built once.
    pub fn context_varies(&self) -> bool {
        ["method", "host", "path", "scheme", "protocol", "id"]
            .iter()
            .any(|field| self.context(&["request", field]))
            || self.context(&["peer"])
            || self.context(&["time"])
    }

    /// True when no condition reads any tag: the tag-holding helper entities are not needed.
    pub fn no_tags(&self) -> bool {
        self.tags.as_ref().is_some_and(HashSet::is_empty)
    }

    fn visit(&mut self, expr: &Value) {
        if let Some(read) = context_path(expr) {
            if let Some(reads) = &mut self.context {
                reads.insert(read);
            }
            return;
        }
        let Some(object) = expr.as_object() else {
            if let Some(items) = expr.as_array() {
                items.iter().for_each(|item| self.visit(item));
            }
            return;
        };
        for (key, arg) in object {
            match key.as_str() {
                "Var" if arg.as_str() == Some("context") => self.context = None,
                "getTag" | "hasTag" => {
                    match arg
                        .get("right")
                        .and_then(|r| r.get("Value"))
                        .and_then(Value::as_str)
                    {
                        Some(name) => {
                            if let Some(tags) = &mut self.tags {
                                tags.insert(name.to_owned());
                            }
                        }
                        None => self.tags = None,
                    }
                    self.visit(arg);
                }
                // A string literal (`Value`) holds no expression, but an entity or record
                // literal's JSON could look like one: skip literals whole.
                "Value" => {}
                _ => self.visit(arg),
            }
        }
    }
}

/// The attribute path of `context.a.b` (`.`: its value is used) or `context has a` /
/// `context.a has b` (`has`, also the extended `has a.b`: only presence is tested), when
/// `expr` is such a chain rooted at `context`.
fn context_path(expr: &Value) -> Option<(Vec<String>, bool)> {
    let object = expr.as_object()?;
    if object.len() != 1 {
        return None;
    }
    let (op, arg) = object.iter().next()?;
    let left = arg.get("left")?;
    let mut path = if left.get("Var").and_then(Value::as_str) == Some("context") {
        Vec::new()
    } else if op == "." || op == "has" {
        let inner = left.as_object()?;
        if inner.len() != 1 || !matches!(inner.keys().next()?.as_str(), ".") {
            return None;
        }
        context_path(left)?.0
    } else {
        return None;
    };
    match (op.as_str(), arg.get("attr")?) {
        (".", Value::String(attr)) | ("has", Value::String(attr)) => path.push(attr.clone()),
        ("has", Value::Array(attrs)) => {
            for attr in attrs {
                path.push(attr.as_str()?.to_owned());
            }
        }
        _ => return None,
    }
    Some((path, op == "."))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reads(text: &str) -> Reads {
        Reads::of(&text.parse::<PolicySet>().unwrap())
    }

    #[test]
    fn literal_reads_are_collected() {
        let r = reads(
            r#"permit(principal, action, resource) when {
                context.request.headers.hasTag("x-tenant") &&
                context.request.headers.getTag("x-tenant") == "t1" &&
                context has token && context.token.scope.contains("read")
            };"#,
        );
        assert!(r.context(&["request", "headers"]));
        assert!(r.context(&["request"]));
        assert!(!r.context(&["request", "method"]));
        assert!(r.context(&["token", "scope"]));
        assert!(r.context(&["token"]));
        assert!(!r.context(&["token", "issuer"]));
        assert!(!r.context(&["peer"]));
        assert!(!r.context(&["time"]));
        assert!(r.tag("x-tenant"));
        assert!(!r.tag("x-other"));
        assert!(!r.no_tags());
        assert!(!r.context_varies());
    }

    #[test]
    fn whole_or_computed_reads_keep_everything() {
        let r = reads(
            r#"permit(principal, action, resource) when { context == context };
               permit(principal, action, resource) when {
                   context.request.headers.getTag(context.request.method) == "x"
               };"#,
        );
        assert!(r.context(&["peer", "address"]));
        assert!(r.tag("anything"));
        assert!(r.context_varies());
        let none = reads("permit(principal, action, resource);");
        assert!(none.no_tags());
        assert!(!none.context(&["request"]));
        let extended =
            reads(r#"permit(principal, action, resource) when { context has peer.spiffe_id };"#);
        assert!(extended.context(&["peer", "spiffe_id"]));
        assert!(!extended.context(&["peer", "address"]));
        assert!(extended.context_varies());
    }
}
