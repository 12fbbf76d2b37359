//! Record types a schema declares for JSON that cedargate turns into Cedar values: a verified
//! token's claims as `context.token.claims` (README, "Typed claims"). The declared type is
//! read once per snapshot from the schema's JSON form; a JSON value is converted to it once
//! (per token and snapshot for claims): undeclared fields are dropped, and a field of the wrong
//! type or a required field that is missing is an error naming the field, never a silently
//! missing attribute (which would make a `forbid` that reads it an evaluation error, skipped).
//!
//! Supported field types: `String`, `Long`, `Bool`, `Set<…>` and records of these. A JSON
//! `null` is an absent field. A number is a `Long` only when it is an integer in range.

use std::collections::BTreeMap;

use cedar_policy::RestrictedExpression;
use serde_json::{Map, Value};

/// A declared type a JSON value can be converted to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    String,
    Long,
    Bool,
    Set(Box<Shape>),
    Record(Record),
}

/// A declared record: its fields by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub fields: BTreeMap<String, Field>,
}

/// One declared field of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub shape: Shape,
    pub required: bool,
}

/// Why a JSON value does not fit its declared record; `path` names the field
/// (`realm_access.roles`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    #[error("`{path}` is not {expected}")]
    WrongType { path: String, expected: String },
    #[error("`{path}` is missing")]
    Missing { path: String },
    /// A field spelt like a declared one but for case (`Total` beside `total`): which one an
    /// upstream reads is its own choice, so neither is taken.
    #[error("`{path}` differs from a declared field only in case")]
    CaseVariant { path: String },
}

impl ShapeError {
    /// The field the error names.
    pub fn path(&self) -> &str {
        match self {
            Self::WrongType { path, .. } | Self::Missing { path } | Self::CaseVariant { path } => {
                path
            }
        }
    }

    /// What is wrong with the field, after its name: "is not a Long", "is missing".
    pub fn problem(&self) -> String {
        match self {
            Self::WrongType { expected, .. } => format!("is not {expected}"),
            Self::Missing { .. } => "is missing".into(),
            Self::CaseVariant { .. } => "differs from a declared field only in case".into(),
        }
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::String => f.write_str("a String"),
            Self::Long => f.write_str("a Long"),
            Self::Bool => f.write_str("a Bool"),
            Self::Set(element) => write!(f, "a Set of {}", Bare(element)),
            Self::Record(_) => f.write_str("a record"),
        }
    }
}

/// A shape's name without its article: `Set<String>`.
struct Bare<'a>(&'a Shape);

impl std::fmt::Display for Bare<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Shape::String => f.write_str("String"),
            Shape::Long => f.write_str("Long"),
            Shape::Bool => f.write_str("Bool"),
            Shape::Set(element) => write!(f, "Set<{}>", Bare(element)),
            Shape::Record(_) => f.write_str("record"),
        }
    }
}

impl Record {
    /// The declared fields of `json`, converted; undeclared fields are left out.
    pub fn convert(
        &self,
        json: &Map<String, Value>,
    ) -> Result<BTreeMap<String, RestrictedExpression>, ShapeError> {
        self.fields_of(json, "")
    }

    fn fields_of(
        &self,
        json: &Map<String, Value>,
        prefix: &str,
    ) -> Result<BTreeMap<String, RestrictedExpression>, ShapeError> {
        let mut out = BTreeMap::new();
        let join = |name: &str| {
            if prefix.is_empty() {
                name.to_owned()
            } else {
                format!("{prefix}.{name}")
            }
        };
        for key in json.keys() {
            if !self.fields.contains_key(key)
                && self
                    .fields
                    .keys()
                    .any(|name| name.eq_ignore_ascii_case(key))
            {
                return Err(ShapeError::CaseVariant { path: join(key) });
            }
        }
        for (name, field) in &self.fields {
            let path = join(name);
            match json.get(name) {
                None | Some(Value::Null) if field.required => {
                    return Err(ShapeError::Missing { path });
                }
                None | Some(Value::Null) => {}
                Some(value) => {
                    out.insert(name.clone(), field.shape.convert(value, &path)?);
                }
            }
        }
        Ok(out)
    }

    /// A value of this record with every field present (empty strings and sets, zero,
    /// false): what the load-time schema check puts in the sample context.
    pub fn sample(&self) -> RestrictedExpression {
        let fields = self
            .fields
            .iter()
            .map(|(name, field)| (name.clone(), field.shape.sample()));
        // Field names are unique (a map's keys): a record is always built.
        RestrictedExpression::new_record(fields)
            .unwrap_or_else(|_| RestrictedExpression::new_bool(false))
    }
}

impl Shape {
    fn convert(&self, value: &Value, path: &str) -> Result<RestrictedExpression, ShapeError> {
        let wrong = || ShapeError::WrongType {
            path: path.to_owned(),
            expected: self.to_string(),
        };
        match (self, value) {
            (Self::String, Value::String(s)) => Ok(RestrictedExpression::new_string(s.clone())),
            (Self::Long, Value::Number(n)) => n
                .as_i64()
                .map(RestrictedExpression::new_long)
                .ok_or_else(wrong),
            (Self::Bool, Value::Bool(b)) => Ok(RestrictedExpression::new_bool(*b)),
            (Self::Set(element), Value::Array(items)) => {
                let items = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| element.convert(item, &format!("{path}[{i}]")))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(RestrictedExpression::new_set(items))
            }
            (Self::Record(record), Value::Object(map)) => {
                let fields = record.fields_of(map, path)?;
                RestrictedExpression::new_record(fields).map_err(|_| wrong())
            }
            _ => Err(wrong()),
        }
    }

    fn sample(&self) -> RestrictedExpression {
        match self {
            Self::String => RestrictedExpression::new_string(String::new()),
            Self::Long => RestrictedExpression::new_long(0),
            Self::Bool => RestrictedExpression::new_bool(false),
            Self::Set(_) => RestrictedExpression::new_set([]),
            Self::Record(record) => record.sample(),
        }
    }
}

/// The record of the converted `fields` a policy can read (`readable`, given a context path)
/// at `path` under the context (`["token", "claims"]`): the others are left out, as no policy
/// can see them.
pub fn readable_record(
    fields: &BTreeMap<String, RestrictedExpression>,
    readable: impl Fn(&[&str]) -> bool,
    path: &[&str],
) -> Option<RestrictedExpression> {
    let read = fields
        .iter()
        .filter(|(name, _)| {
            let mut full = path.to_vec();
            full.push(name.as_str());
            readable(&full)
        })
        .map(|(name, value)| (name.clone(), value.clone()));
    RestrictedExpression::new_record(read).ok()
}

/// What a schema declares at a path under every action's context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Declared {
    /// No action's context declares the path.
    Absent,
    /// An entity type (`claims: TokenClaims`, the tag form).
    Entity(String),
    /// A record cedargate converts JSON to.
    Record(Record),
}

/// Why a schema's declaration cannot be built: `message` for a load problem, and the name of
/// the innermost field it is about (to point at its line), if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclarationError {
    pub message: String,
    pub field: Option<String>,
}

impl std::fmt::Display for DeclarationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A resolver's error: the text after the field path, and the fields from the innermost out.
#[derive(Debug)]
struct Trail {
    text: String,
    fields: Vec<String>,
}

impl From<&str> for Trail {
    fn from(text: &str) -> Self {
        Self {
            text: text.to_owned(),
            fields: Vec::new(),
        }
    }
}

impl From<String> for Trail {
    fn from(text: String) -> Self {
        Self {
            text,
            fields: Vec::new(),
        }
    }
}

/// What the actions of a schema (its JSON form, `SchemaFragment::to_json_value`) declare at
/// `path` under their context (`["token", "claims"]`). Every action that declares it must
/// declare the same type: cedargate builds one value for every action.
pub fn declared_at(schema: &Value, path: &[&str]) -> Result<Declared, DeclarationError> {
    let resolver = Resolver { schema };
    let mut found: Option<(String, Declared)> = None;
    let namespaces = schema.as_object().into_iter().flatten();
    for (namespace, body) in namespaces {
        let actions = body.get("actions").and_then(Value::as_object);
        for (action, spec) in actions.into_iter().flatten() {
            let Some(context) = spec.get("appliesTo").and_then(|a| a.get("context")) else {
                continue;
            };
            let shown = format!("context.{}", path.join("."));
            let declared = resolver.at(namespace, context, path).map_err(|err| {
                let fields: Vec<&str> = err.fields.iter().rev().map(String::as_str).collect();
                let below = fields.iter().map(|f| format!(".{f}")).collect::<String>();
                DeclarationError {
                    message: format!("action `{action}`: `{shown}{below}`{}", err.text),
                    field: err.fields.first().cloned(),
                }
            })?;
            match &found {
                None => found = Some((action.clone(), declared)),
                Some((first, seen)) if *seen != declared => {
                    return Err(DeclarationError {
                        message: format!(
                            "actions `{first}` and `{action}` declare `{shown}` differently; cedargate builds one value for every action"
                        ),
                        field: path.last().map(|f| (*f).to_owned()),
                    });
                }
                Some(_) => {}
            }
        }
    }
    Ok(found.map_or(Declared::Absent, |(_, declared)| declared))
}

/// Resolves type references of a schema's JSON form.
struct Resolver<'a> {
    schema: &'a Value,
}

/// How deep common types may refer to each other before the schema is taken as cyclic
/// (Cedar refuses cycles itself; this only bounds the walk).
const MAX_DEPTH: usize = 64;

impl Resolver<'_> {
    /// The declaration at `path` under `ty` (a record type, or a reference to one).
    fn at(&self, namespace: &str, ty: &Value, path: &[&str]) -> Result<Declared, Trail> {
        let mut ty = self.resolve(namespace, ty, 0)?;
        for (i, name) in path.iter().enumerate() {
            let attributes = match ty.get("type").and_then(Value::as_str) {
                Some("Record") => ty.get("attributes").and_then(Value::as_object),
                _ => return Ok(Declared::Absent),
            };
            let Some(next) = attributes.and_then(|a| a.get(*name)) else {
                return Ok(Declared::Absent);
            };
            ty = self.resolve(namespace, next, 0)?;
            if i + 1 < path.len() {
                continue;
            }
            return match ty.get("type").and_then(Value::as_str) {
                Some("Entity") => Ok(Declared::Entity(
                    ty.get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                )),
                Some("Record") => self.record(namespace, &ty, 0).map(Declared::Record),
                _ => Err(" must be a record".into()),
            };
        }
        Ok(Declared::Absent)
    }

    fn record(&self, namespace: &str, ty: &Value, depth: usize) -> Result<Record, Trail> {
        let mut record = Record::default();
        let attributes = ty.get("attributes").and_then(Value::as_object);
        for (name, attribute) in attributes.into_iter().flatten() {
            let required = attribute
                .get("required")
                .and_then(Value::as_bool)
                .unwrap_or(true);
            let shape = self
                .shape(namespace, attribute, depth + 1)
                .map_err(|mut err| {
                    err.fields.push(name.clone());
                    err
                })?;
            record
                .fields
                .insert(name.clone(), Field { shape, required });
        }
        Ok(record)
    }

    fn shape(&self, namespace: &str, ty: &Value, depth: usize) -> Result<Shape, Trail> {
        if depth > MAX_DEPTH {
            return Err(" nests too deep".into());
        }
        let ty = self.resolve(namespace, ty, 0)?;
        match ty.get("type").and_then(Value::as_str) {
            Some("String") => Ok(Shape::String),
            Some("Long") => Ok(Shape::Long),
            Some("Boolean") => Ok(Shape::Bool),
            Some("Set") => {
                let element = ty
                    .get("element")
                    .ok_or(" is a Set without an element type")?;
                Ok(Shape::Set(Box::new(self.shape(
                    namespace,
                    element,
                    depth + 1,
                )?)))
            }
            Some("Record") => Ok(Shape::Record(self.record(namespace, &ty, depth)?)),
            Some(other) => Err(Trail::from(format!(
                " is declared as {} {}; JSON can become String, Long, Bool, Set<…> and records of these",
                if other == "Entity" {
                    "entity"
                } else {
                    "extension type"
                },
                ty.get("name").and_then(Value::as_str).unwrap_or(other)
            ))),
            None => Err(" has no type".into()),
        }
    }

    /// `ty` with common-type and ambiguous references followed: a `Record`, `Set`, `String`,
    /// `Long`, `Boolean`, `Entity` or `Extension` type.
    fn resolve(&self, namespace: &str, ty: &Value, depth: usize) -> Result<Value, Trail> {
        if depth > MAX_DEPTH {
            return Err(" refers through too many common types".into());
        }
        let Some(kind) = ty.get("type").and_then(Value::as_str) else {
            return Err(" has no type".into());
        };
        let name = match kind {
            "Record" | "Set" | "String" | "Long" | "Boolean" | "Entity" | "Extension" => {
                return Ok(ty.clone());
            }
            "EntityOrCommon" => ty.get("name").and_then(Value::as_str).unwrap_or_default(),
            common => common,
        };
        if let Some(common) = self.common(namespace, name) {
            return self.resolve(namespace, common, depth + 1);
        }
        let builtin = name.strip_prefix("__cedar::").unwrap_or(name);
        let primitive = match builtin {
            "String" => Some("String"),
            "Long" => Some("Long"),
            "Bool" | "Boolean" => Some("Boolean"),
            _ => None,
        };
        if let Some(primitive) = primitive
            && !self.is_entity(namespace, name)
        {
            return Ok(serde_json::json!({ "type": primitive }));
        }
        if ["ipaddr", "decimal", "datetime", "duration"].contains(&builtin)
            && !self.is_entity(namespace, name)
        {
            return Ok(serde_json::json!({ "type": "Extension", "name": builtin }));
        }
        Ok(serde_json::json!({ "type": "Entity", "name": name }))
    }

    /// The common type `name` refers to from `namespace`: qualified, in that namespace, or in
    /// the empty one.
    fn common(&self, namespace: &str, name: &str) -> Option<&Value> {
        let lookup = |ns: &str, local: &str| {
            self.schema
                .get(ns)
                .and_then(|n| n.get("commonTypes"))
                .and_then(|c| c.get(local))
        };
        match name.rsplit_once("::") {
            Some((ns, local)) => lookup(ns, local),
            None => lookup(namespace, name).or_else(|| lookup("", name)),
        }
    }

    fn is_entity(&self, namespace: &str, name: &str) -> bool {
        let lookup = |ns: &str, local: &str| {
            self.schema
                .get(ns)
                .and_then(|n| n.get("entityTypes"))
                .and_then(|e| e.get(local))
                .is_some()
        };
        match name.rsplit_once("::") {
            Some((ns, local)) => lookup(ns, local),
            None => lookup(namespace, name) || lookup("", name),
        }
    }
}

/// The declaration at `path` under the contexts of the schema in `text` (Cedar syntax).
pub fn declared_in_cedarschema(text: &str, path: &[&str]) -> Result<Declared, DeclarationError> {
    declared_at(&json_form(text)?, path)
}

/// The JSON form of a schema in Cedar syntax, which [`declared_at`] reads.
pub fn json_form(text: &str) -> Result<Value, DeclarationError> {
    let problem = |message: String| DeclarationError {
        message,
        field: None,
    };
    let (fragment, _) = cedar_policy::SchemaFragment::from_cedarschema_str(text)
        .map_err(|err| problem(format!("the schema does not parse: {err}")))?;
    fragment
        .to_json_value()
        .map_err(|err| problem(format!("the schema has no JSON form: {err}")))
}

/// The byte offset of the first declaration of the field `name` (`name:` or `name?:`) in a
/// Cedar schema's text, outside comments: where a load problem about it points.
pub fn declaration_offset(text: &str, name: &str) -> Option<usize> {
    let mut line_start = 0;
    for line in text.split_inclusive('\n') {
        let code = line.split("//").next().unwrap_or_default();
        for (at, _) in code.match_indices(name) {
            let before = code[..at].chars().next_back();
            let boundary = !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '"');
            let rest = code[at + name.len()..].trim_start();
            let rest = rest.strip_prefix('?').unwrap_or(rest).trim_start();
            if boundary && rest.starts_with(':') && !rest.starts_with("::") {
                return Some(line_start + at);
            }
        }
        line_start += line.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str =
        "entity User; action \"read\" appliesTo { principal: User, resource: User, context: Ctx };";

    fn claims(decl: &str) -> Result<Declared, String> {
        declared_in_cedarschema(&format!("{HEAD} {decl}"), &["token", "claims"])
            .map_err(|err| err.to_string())
    }

    fn record(decl: &str) -> Record {
        match claims(decl) {
            Ok(Declared::Record(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_claims_record_is_read_through_common_types() {
        let r = record(
            "type Claims = { tenant?: String, roles?: Set<String>, level: Long, ok?: Bool, realm_access?: { roles: Set<String> } };
             type Ctx = { token?: { claims: Claims } };",
        );
        let names: Vec<&str> = r.fields.keys().map(String::as_str).collect();
        assert_eq!(names, ["level", "ok", "realm_access", "roles", "tenant"]);
        assert_eq!(r.fields["roles"].shape, Shape::Set(Box::new(Shape::String)));
        assert!(r.fields["level"].required);
        assert!(!r.fields["tenant"].required);
        assert_eq!(r.fields["ok"].shape, Shape::Bool);
        assert!(matches!(r.fields["realm_access"].shape, Shape::Record(_)));
    }

    #[test]
    fn the_tag_form_and_absence_are_told_apart() {
        assert_eq!(
            claims(
                "entity TokenClaims tags String; type Ctx = { token?: { claims: TokenClaims } };"
            ),
            Ok(Declared::Entity("TokenClaims".into()))
        );
        assert_eq!(claims("type Ctx = { time: Long };"), Ok(Declared::Absent));
    }

    #[test]
    fn unsupported_and_inconsistent_declarations_are_refused() {
        let err = claims("type Ctx = { token?: { claims: { owner: User } } };").unwrap_err();
        assert!(
            err.contains("`context.token.claims.owner` is declared as entity User"),
            "{err}"
        );
        let err =
            claims("type Ctx = { token?: { claims: { a?: { b: Set<ipaddr> } } } };").unwrap_err();
        assert!(
            err.contains("`context.token.claims.a.b` is declared as extension type ipaddr"),
            "{err}"
        );
        let err = claims("type Ctx = { token?: { claims: { net: ipaddr } } };").unwrap_err();
        assert!(err.contains("extension type ipaddr"), "{err}");
        let err = declared_in_cedarschema(
            "entity User;
             action \"a\" appliesTo { principal: User, resource: User, context: { token?: { claims: { x: String } } } };
             action \"b\" appliesTo { principal: User, resource: User, context: { token?: { claims: { x: Long } } } };",
            &["token", "claims"],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("declare `context.token.claims` differently"),
            "{err}"
        );
    }

    #[test]
    fn a_fields_declaration_is_found_outside_comments() {
        let text = "// claims: here\ntype C = {\n  xclaims: Long,\n  \"claims\": Long,\n  claims?: { a: String },\n};";
        let at = declaration_offset(text, "claims").unwrap();
        assert!(text[at..].starts_with("claims?: {"), "{}", &text[at..]);
        assert_eq!(declaration_offset(text, "missing"), None);
        assert_eq!(declaration_offset("a::b: x", "a"), None);
    }

    #[test]
    fn json_converts_to_the_declared_types_or_names_the_field() {
        let r = record(
            "type Ctx = { token?: { claims: { tenant?: String, roles?: Set<String>, level?: Long, ok?: Bool, realm_access?: { roles: Set<String> } } } };",
        );
        let json = |text: &str| -> Map<String, Value> { serde_json::from_str(text).unwrap() };
        let fine = r
            .convert(&json(
                r#"{"tenant":"acme","roles":["a","b"],"level":3,"ok":true,"extra":{"x":1},"realm_access":{"roles":[],"other":1}}"#,
            ))
            .unwrap();
        assert_eq!(
            fine.keys().map(String::as_str).collect::<Vec<_>>(),
            ["level", "ok", "realm_access", "roles", "tenant"],
            "undeclared claims are dropped"
        );
        assert!(
            r.convert(&json(r#"{"tenant":null}"#)).unwrap().is_empty(),
            "null is absent"
        );
        let err = |text: &str| r.convert(&json(text)).unwrap_err().to_string();
        assert_eq!(err(r#"{"roles":"a"}"#), "`roles` is not a Set of String");
        assert_eq!(err(r#"{"roles":["a",1]}"#), "`roles[1]` is not a String");
        assert_eq!(err(r#"{"level":1.5}"#), "`level` is not a Long");
        assert_eq!(err(r#"{"level":"3"}"#), "`level` is not a Long");
        assert_eq!(
            err(r#"{"level":18446744073709551615}"#),
            "`level` is not a Long"
        );
        assert_eq!(err(r#"{"ok":"true"}"#), "`ok` is not a Bool");
        assert_eq!(
            err(r#"{"realm_access":{}}"#),
            "`realm_access.roles` is missing"
        );
        assert_eq!(
            err(r#"{"realm_access":[]}"#),
            "`realm_access` is not a record"
        );
    }
}
