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
    /// The helper entity types a policy or a static entity names other than through the
    /// context (`HttpHeaders::"request".hasTag(…)`, an attribute holding that uid): such a
    /// helper is built whenever tags are read, whether or not its context path is.
    named: BTreeSet<String>,
    /// The optional context facts this snapshot's schema declares (and so cedargate builds).
    pub facts: Facts,
    /// The record the schema declares for `context.token.claims` (typed claims), or `None`
    /// for the tag form (`claims: TokenClaims`).
    pub claims: Option<std::sync::Arc<super::shapes::Record>>,
    /// The record the schema declares for `context.request.body` (request bodies), or `None`
    /// when it declares none (bodies are not read).
    pub body: Option<std::sync::Arc<super::shapes::Record>>,
}

/// Context attributes cedargate builds only for a schema that declares them, so that a schema
/// written before they existed still loads: `context.peer.ip` (an `ipaddr`) and
/// `context.destination`. Decided once per snapshot ([`super::mapping::supported_facts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Facts {
    pub peer_ip: bool,
    pub destination: bool,
    /// `context.request.extensions`: Envoy's per-route `context_extensions` as the tags of a
    /// `ContextExtensions` entity.
    pub extensions: bool,
    /// `context.request.route_metadata`: the `cedargate` namespace of Envoy's route metadata
    /// as the tags of a `RouteMetadata` entity.
    pub route_metadata: bool,
}

impl Facts {
    /// Both facts: for the schema check that decides which ones a schema declares.
    pub const ALL: Self = Self {
        peer_ip: true,
        destination: true,
        extensions: true,
        route_metadata: true,
    };
}

impl Reads {
    /// The same reads, building the optional `facts` the schema declares.
    #[must_use]
    pub fn with_facts(self, facts: Facts) -> Self {
        Self { facts, ..self }
    }

    /// The same reads, with the typed claims record the schema declares.
    #[must_use]
    pub fn with_claims(self, claims: Option<std::sync::Arc<super::shapes::Record>>) -> Self {
        Self { claims, ..self }
    }

    /// The same reads, with the request body record the schema declares.
    #[must_use]
    pub fn with_body(self, body: Option<std::sync::Arc<super::shapes::Record>>) -> Self {
        Self { body, ..self }
    }

    /// Everything read (what Explain and the reference build), with the facts, the claims
    /// form and the body of these reads.
    #[must_use]
    pub fn widened(&self) -> Self {
        Self::everything()
            .with_facts(self.facts)
            .with_claims(self.claims.clone())
            .with_body(self.body.clone())
    }

    /// True when some condition names the context attribute at `path` (or one below it)
    /// itself; unlike [`Self::context`], a use of the whole context does not count.
    pub fn names(&self, path: &[&str]) -> bool {
        self.context.as_ref().is_some_and(|reads| {
            reads.iter().any(|(read, _)| {
                path.len() <= read.len() && path.iter().zip(read).all(|(a, b)| *a == b.as_str())
            })
        })
    }

    /// Everything is read (no analysis): what the reference builds.
    pub fn everything() -> Self {
        Self {
            context: None,
            tags: None,
            named: BTreeSet::new(),
            facts: Facts::default(),
            claims: None,
            body: None,
        }
    }

    /// What the static policies and templates of `policies` read, given the types of the
    /// helper entities cedargate builds (`helper_types`) and whether something other than a
    /// policy can hand one to a policy (`mentioned`: a static entity's attribute, parent or
    /// tag, or an action's `appliesTo`, which lets a route or a context extension make it the
    /// request's principal or resource). A policy without a JSON form (never expected) reads
    /// everything.
    pub fn of(
        policies: &PolicySet,
        helper_types: &[&str],
        mentioned: impl Fn(&str) -> bool,
    ) -> Self {
        let mut reads = Self {
            context: Some(BTreeSet::new()),
            tags: Some(HashSet::new()),
            named: BTreeSet::new(),
            facts: Facts::default(),
            claims: None,
            body: None,
        };
        let forms = policies
            .policies()
            .map(cedar_policy::Policy::to_json)
            .chain(policies.templates().map(cedar_policy::Template::to_json));
        for form in forms {
            match form {
                Ok(json) => {
                    for body in super::index::condition_bodies(&json) {
                        reads.expr(body);
                    }
                    names_types(&json, helper_types, &mut reads.named);
                }
                Err(_) => return Self::everything(),
            }
        }
        // Reached without a policy naming it: an attribute holding its uid, a route's resource.
        for helper in helper_types {
            if mentioned(helper) {
                reads.named.insert((*helper).to_owned());
            }
        }
        reads
    }

    /// True when the helper entity of type `helper`, reachable from the context at `path`,
    /// must be built: some policy can read its tags.
    pub fn helper(&self, path: &[&str], helper: &str) -> bool {
        !self.no_tags() && (self.context(path) || self.named.contains(helper))
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

    /// The tag names conditions read with a literal key; `None` when a key is computed.
    pub fn tag_names(&self) -> Option<&HashSet<String>> {
        self.tags.as_ref()
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
            || (self.facts.destination && self.context(&["destination"]))
            || (self.body.is_some() && self.context(&["request", "body"]))
            || self.context(&["time"])
    }

    /// True when no condition reads any tag: the tag-holding helper entities are not needed.
    pub fn no_tags(&self) -> bool {
        self.tags.as_ref().is_some_and(HashSet::is_empty)
    }

    /// Visits one expression of Cedar's JSON policy form: an object whose one key is the
    /// operator. Unknown operators are walked through (their arguments can read context).
    fn expr(&mut self, expr: &Value) {
        if let Some(read) = context_path(expr) {
            if let Some(reads) = &mut self.context {
                reads.insert(read);
            }
            return;
        }
        let Some(object) = expr.as_object() else {
            return;
        };
        for (op, arg) in object {
            match op.as_str() {
                // Literals hold no expression.
                "Value" | "Slot" => {}
                "Var" => {
                    if arg.as_str() == Some("context") {
                        self.context = None;
                    }
                }
                // Field names are the author's (a field may be called `Value`): only the field
                // values are expressions.
                "Record" => match arg.as_object() {
                    Some(fields) => fields.values().for_each(|field| self.expr(field)),
                    None => self.unknown(arg),
                },
                "Set" => match arg.as_array() {
                    Some(items) => items.iter().for_each(|item| self.expr(item)),
                    None => self.unknown(arg),
                },
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
                    self.arguments(arg);
                }
                _ => self.arguments(arg),
            }
        }
    }

    /// The arguments of an operator: named (`left`, `right`, `arg`, `if`, …) or positional
    /// (an extension function's list). Strings among them (`attr`, `entity_type`) are names.
    fn arguments(&mut self, arg: &Value) {
        match arg {
            Value::Object(named) => named.values().for_each(|value| self.expr(value)),
            Value::Array(positional) => positional.iter().for_each(|value| self.expr(value)),
            _ => {}
        }
    }

    /// A shape this analysis does not know: read everything.
    fn unknown(&mut self, _arg: &Value) {
        self.context = None;
        self.tags = None;
    }
}

/// Adds to `named` each of `helper_types` that `json` (a policy's JSON form) names anywhere:
/// as an entity literal, in the scope, or in an `is` test.
fn names_types(json: &Value, helper_types: &[&str], named: &mut BTreeSet<String>) {
    match json {
        Value::String(text) => {
            if let Some(helper) = helper_types.iter().find(|h| text == *h) {
                named.insert((*helper).to_owned());
            }
        }
        Value::Array(items) => items
            .iter()
            .for_each(|item| names_types(item, helper_types, named)),
        Value::Object(fields) => fields
            .values()
            .for_each(|value| names_types(value, helper_types, named)),
        _ => {}
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

    const HELPERS: [&str; 2] = ["HttpHeaders", "TokenClaims"];

    fn reads(text: &str) -> Reads {
        Reads::of(&text.parse::<PolicySet>().unwrap(), &HELPERS, |_| false)
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

    #[test]
    fn field_names_and_literals_cannot_hide_a_read() {
        // A record field named like an operator is a field: its value is still read.
        let r = reads(
            r#"permit(principal, action, resource) when {
                { Value: context.request.headers.hasTag("x-block") }.Value &&
                { Value: context has token }.Value
            };"#,
        );
        assert!(r.tag("x-block"));
        assert!(r.context(&["token"]));
        // A helper entity named directly, not through the context.
        let r = reads(
            r#"permit(principal, action, resource) when { HttpHeaders::"request".hasTag("x-block") };"#,
        );
        assert!(r.tag("x-block"));
        assert!(!r.context(&["request", "headers"]));
        assert!(r.helper(&["request", "headers"], "HttpHeaders"));
        assert!(!r.helper(&["token", "claims"], "TokenClaims"));
        // A helper handed to the policies otherwise (a static entity's attribute, a route).
        let set = r#"permit(principal, action, resource) when { resource.hasTag("x") };"#;
        let policies = set.parse::<PolicySet>().unwrap();
        let r = Reads::of(&policies, &HELPERS, |helper| helper == "TokenClaims");
        assert!(!r.helper(&["request", "headers"], "HttpHeaders"));
        assert!(r.helper(&["token", "claims"], "TokenClaims"));
    }
}

/// The tag names the policies read, keyed as lenient upstreams read a name, to refuse a query
/// parameter or header that is not one of them but would be read as one: `?Debug=1` is
/// `debug` to ASP.NET, `?debug[]=1` to PHP, `x_env` is `x-env` to CGI, WSGI, Rack and PHP. A
/// `forbid` reading `debug` must not be dodged by a spelling it does not read. Nothing is
/// refused when a policy computes a tag key (every name may be read then).
#[derive(Debug, Default)]
pub struct LenientNames {
    query: std::collections::HashMap<String, Vec<String>>,
    headers: std::collections::HashMap<String, Vec<String>>,
}

impl LenientNames {
    pub fn of(reads: &Reads) -> Self {
        let mut names = Self::default();
        for name in reads.tag_names().into_iter().flatten() {
            names
                .query
                .entry(crate::request::query_name_key(name))
                .or_default()
                .push(name.clone());
            names
                .headers
                .entry(header_key(name))
                .or_default()
                .push(name.clone());
        }
        names
    }

    /// The first query parameter or header of `http` that is not a name the policies read
    /// but is one of them to a lenient upstream, with what it is.
    pub fn near_miss<'h>(
        &self,
        http: &'h crate::request::HttpRequest,
    ) -> Option<(&'static str, &'h str)> {
        let missed =
            |map: &std::collections::HashMap<String, Vec<String>>, name: &str, key: String| {
                map.get(&key)
                    .is_some_and(|read| !read.iter().any(|r| r == name))
            };
        if !self.query.is_empty() {
            // A plain name is its own key: no work for the common case.
            if let Some(name) = http.query.keys().find(|n| {
                !crate::request::is_plain_name(n)
                    && missed(&self.query, n, crate::request::query_name_key(n))
            }) {
                return Some(("query parameter", name));
            }
        }
        if !self.headers.is_empty()
            && let Some(name) = http
                .headers
                .keys()
                .find(|n| n.contains('_') && missed(&self.headers, n, header_key(n)))
        {
            return Some(("header", name));
        }
        None
    }
}

/// A header name as CGI-style upstreams read it: lower case, `_` as `-`.
fn header_key(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}
