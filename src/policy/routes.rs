//! The route table (`routes.yaml`): which Cedar action and resource an HTTP method and path
//! template mean, e.g. `GET /orders/{id}` → `Action::"orders:read"` on `Order::"{id}"`.
//!
//! Templates use matchit's syntax (`{name}` for one segment, `{*name}` for the rest). A route
//! with a method wins over a route for any method (`method: "*"` or omitted). Resources are built
//! structurally (type name + id), never by pasting request text into Cedar syntax, so a path
//! parameter cannot inject another entity. Every route is checked against the schema at load.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

use cedar_policy::{EntityId, EntityTypeName, EntityUid, Schema};
use serde::Deserialize;

use super::problem::Problem;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoutes {
    #[serde(default)]
    routes: Vec<RawRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    #[serde(default)]
    method: Option<String>,
    path: String,
    action: String,
    #[serde(default)]
    resource: Option<String>,
    #[serde(default)]
    token: Option<TokenRequirement>,
    #[serde(default)]
    dry_run: bool,
}

pub use crate::identity::TokenRequirement;

/// The validated route table.
#[derive(Debug, Default)]
pub struct Routes {
    /// One router per method; `"*"` holds the routes for any method.
    routers: HashMap<String, matchit::Router<usize>>,
    /// The same templates lowercased, to spot a path that differs from a route only by case.
    folded: HashMap<String, matchit::Router<()>>,
    routes: Vec<Route>,
}

#[derive(Debug)]
struct Route {
    action: EntityUid,
    resource: Option<ResourceTemplate>,
    token: Option<TokenRequirement>,
    dry_run: bool,
}

/// `Type::"literal {param} literal"`, kept as a type and id pieces.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ResourceTemplate {
    type_name: EntityTypeName,
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Param(String),
}

/// What a route says about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch<'r> {
    pub action: &'r EntityUid,
    /// The resource, when the route names one.
    pub resource: Option<EntityUid>,
    /// Path parameters in template order.
    pub params: Vec<(String, String)>,
    pub token: Option<TokenRequirement>,
    /// Decisions on this route are recorded but not enforced (`dry_run: true`).
    pub dry_run: bool,
}

const ANY_METHOD: &str = "*";

/// A path that matches a route (or a `Path::` literal) only when case is ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NearMiss(pub String);

impl Routes {
    /// Parses `routes.yaml` and checks every route against the schema; reports all problems.
    pub fn parse(file: &Path, text: &str, schema: &Schema) -> Result<Self, Vec<Problem>> {
        let raw: RawRoutes = yaml_serde::from_str(text).map_err(|err| {
            let mut problem = Problem::in_file(file, err.to_string());
            problem.position = err.location().map(|l| (l.line(), l.column()));
            vec![problem.hint("see README, section Routes, for the format")]
        })?;
        let mut table = Self::default();
        let mut problems = Vec::new();
        for (index, raw) in raw.routes.into_iter().enumerate() {
            let label = format!(
                "route {} (`{} {}`)",
                index + 1,
                raw.method.as_deref().unwrap_or(ANY_METHOD),
                raw.path
            );
            if let Err(message) = table.add(raw, schema) {
                problems.push(Problem::in_file(file, format!("{label}: {message}")));
            }
        }
        if problems.is_empty() {
            Ok(table)
        } else {
            Err(problems)
        }
    }

    fn add(&mut self, raw: RawRoute, schema: &Schema) -> Result<(), String> {
        let RawRoute {
            method,
            path,
            action,
            resource,
            token,
            dry_run,
        } = raw;
        let action =
            action_uid(&action).ok_or_else(|| format!("`{action}` is not an action name"))?;
        if !schema.actions().any(|a| a == &action) {
            return Err(format!("action `{action}` is not declared in the schema"));
        }
        let params = template_params(&path);
        let resource = resource
            .map(|r| ResourceTemplate::parse(&r, &params, schema))
            .transpose()?;
        // Request paths are matched without a trailing `/`: templates are stored the same way.
        let path = without_trailing_slash(&path).to_owned();
        let method = method.map_or_else(|| ANY_METHOD.to_owned(), |m| m.to_ascii_uppercase());
        // Two templates equal but for case share one folded entry: the insert conflict of the
        // second one is expected and harmless.
        let _ = self
            .folded
            .entry(method.clone())
            .or_default()
            .insert(crate::text::fold_case(&path), ());
        self.routers
            .entry(method)
            .or_default()
            .insert(path, self.routes.len())
            .map_err(|err| format!("{err}"))?;
        self.routes.push(Route {
            action,
            resource,
            token,
            dry_run,
        });
        Ok(())
    }

    /// The route for a method and a decoded path, if any.
    ///
    /// A trailing `/` is not significant (`/orders/` is the route of `/orders`): most
    /// frameworks serve both alike, and a miss would hand the request to the fallback action.
    pub fn find(&self, method: &str, path: &str) -> Option<RouteMatch<'_>> {
        let path = without_trailing_slash(path);
        let found = self
            .routers
            .get(method)
            .and_then(|r| r.at(path).ok())
            .or_else(|| self.routers.get(ANY_METHOD).and_then(|r| r.at(path).ok()))?;
        let route = self.routes.get(*found.value)?;
        let params: Vec<(String, String)> = found
            .params
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Some(RouteMatch {
            action: &route.action,
            resource: route.resource.as_ref().map(|t| t.build(&params)),
            params,
            token: route.token,
            dry_run: route.dry_run,
        })
    }

    /// The route semantics of one request: its route, or none (the fallback action and
    /// resource apply), or a refusal when the path misses every route only by case
    /// ([`Routes::near_miss`]).
    pub fn resolve(&self, method: &str, path: &str) -> Result<Option<RouteMatch<'_>>, NearMiss> {
        match self.find(method, path) {
            Some(found) => Ok(Some(found)),
            None if self.near_miss(method, path) => Err(NearMiss(path.to_owned())),
            None => Ok(None),
        }
    }

    /// The actions the route table maps requests to.
    pub fn actions(&self) -> impl Iterator<Item = &EntityUid> {
        self.routes.iter().map(|r| &r.action)
    }

    /// True when a path no route matches would match one if case were ignored (`/Orders/7`,
    /// `/orderſ/7`: case folded as [`crate::text::fold_case`] does):
    /// upstreams that ignore case would serve the route's resource under the fallback action,
    /// so such a request is refused instead of guessed at. (`;` path parameters and empty
    /// segments never get here: [`crate::request`] refuses them.)
    pub fn near_miss(&self, method: &str, path: &str) -> bool {
        let folded = crate::text::fold_case(without_trailing_slash(path));
        [method, ANY_METHOD]
            .iter()
            .filter_map(|m| self.folded.get(*m))
            .any(|r| r.at(&folded).is_ok())
    }
}

fn without_trailing_slash(path: &str) -> &str {
    match path.strip_suffix('/') {
        Some(trimmed) if !trimmed.is_empty() => trimmed,
        _ => path,
    }
}

/// `orders:read` → `Action::"orders:read"`; a full uid (`Shop::Action::"x"`) is taken as is.
pub fn action_uid(name: &str) -> Option<EntityUid> {
    if name.contains("::\"") {
        EntityUid::from_str(name).ok()
    } else {
        let action = EntityTypeName::from_str("Action").ok()?;
        Some(EntityUid::from_type_name_and_id(
            action,
            EntityId::new(name),
        ))
    }
}

/// Names of `{param}` and `{*param}` in a matchit template.
fn template_params(template: &str) -> Vec<String> {
    template
        .split('{')
        .skip(1)
        .filter_map(|part| part.split_once('}'))
        .map(|(name, _)| name.trim_start_matches('*').to_owned())
        .collect()
}

impl ResourceTemplate {
    fn parse(text: &str, params: &[String], schema: &Schema) -> Result<Self, String> {
        let bad = || format!("resource `{text}` is not of the form Type::\"id with {{param}}\"");
        let (type_name, quoted) = text.split_once("::\"").ok_or_else(bad)?;
        let id = quoted.strip_suffix('"').ok_or_else(bad)?;
        if id.contains(['"', '\\']) {
            return Err(bad());
        }
        let type_name = EntityTypeName::from_str(type_name).map_err(|_| bad())?;
        if !schema.entity_types().any(|t| t == &type_name) {
            return Err(format!(
                "resource type `{type_name}` is not declared in the schema"
            ));
        }
        let mut pieces = Vec::new();
        let mut rest = id;
        while let Some((literal, after)) = rest.split_once('{') {
            let (name, tail) = after.split_once('}').ok_or_else(bad)?;
            if !params.iter().any(|p| p == name) {
                return Err(format!(
                    "resource `{text}` uses `{{{name}}}`, which the path does not capture"
                ));
            }
            if !literal.is_empty() {
                pieces.push(Piece::Literal(literal.to_owned()));
            }
            pieces.push(Piece::Param(name.to_owned()));
            rest = tail;
        }
        if !rest.is_empty() {
            pieces.push(Piece::Literal(rest.to_owned()));
        }
        Ok(Self { type_name, pieces })
    }

    fn build(&self, params: &[(String, String)]) -> EntityUid {
        let mut id = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(text) => id.push_str(text),
                Piece::Param(name) => {
                    if let Some((_, value)) = params.iter().find(|(k, _)| k == name) {
                        id.push_str(value);
                    }
                }
            }
        }
        EntityUid::from_type_name_and_id(self.type_name.clone(), EntityId::new(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Schema {
        Schema::from_cedarschema_str(
            r#"entity User; entity Order; entity Item;
               action "orders:read", "orders:list", "items:read" appliesTo { principal: User, resource: [Order, Item] };"#,
        )
        .unwrap()
        .0
    }

    fn routes(yaml: &str) -> Result<Routes, Vec<Problem>> {
        Routes::parse(Path::new("routes.yaml"), yaml, &schema())
    }

    #[test]
    fn matches_method_then_any_and_builds_resources() {
        let table = routes(
            r#"routes:
                 - { method: GET, path: "/orders/{id}", action: "orders:read", resource: 'Order::"{id}"' }
                 - { path: "/orders", action: "orders:list" }
                 - { method: get, path: "/shops/{shop}/items/{item}", action: "items:read", resource: 'Item::"{shop}/{item}"' }
            "#,
        )
        .unwrap();
        let m = table.find("GET", "/orders/42").unwrap();
        assert_eq!(m.action.to_string(), r#"Action::"orders:read""#);
        assert_eq!(m.resource.unwrap().to_string(), r#"Order::"42""#);
        assert_eq!(m.params, vec![("id".to_owned(), "42".to_owned())]);
        assert!(table.find("POST", "/orders/42").is_none());
        assert_eq!(table.find("DELETE", "/orders").unwrap().resource, None);
        let item = table
            .find("GET", "/shops/s1/items/i\"2")
            .unwrap()
            .resource
            .unwrap();
        assert_eq!(item.id().unescaped(), "s1/i\"2");
    }

    #[test]
    fn trailing_slash_is_the_same_route_and_case_is_a_near_miss() {
        let table = routes(
            r#"routes:
                 - { method: GET, path: "/orders/{id}", action: "orders:read", resource: 'Order::"{id}"' }
                 - { path: "/orders", action: "orders:list" }
            "#,
        )
        .unwrap();
        let m = table.find("GET", "/orders/42/").unwrap();
        assert_eq!(m.resource.unwrap().to_string(), r#"Order::"42""#);
        assert!(table.find("GET", "/orders/").is_some());
        assert!(table.find("GET", "/").is_none());
        assert!(table.find("GET", "/Orders/42").is_none());
        assert!(table.near_miss("GET", "/Orders/42"));
        assert!(table.near_miss("PUT", "/ORDERS/"));
        assert!(!table.near_miss("PUT", "/Orders/42"));
        assert!(!table.near_miss("GET", "/elsewhere"));
        // A template written with a trailing `/` is reachable too.
        let table = routes(
            r#"routes:
                 - { method: GET, path: "/orders/", action: "orders:list" }
            "#,
        )
        .unwrap();
        assert!(table.find("GET", "/orders/").is_some());
        assert!(table.find("GET", "/orders").is_some());
    }

    #[test]
    fn every_bad_route_is_reported() {
        let problems = routes(
            r#"routes:
                 - { method: GET, path: "/a", action: "orders:reed" }
                 - { method: GET, path: "/b/{id}", action: "orders:read", resource: 'Ordr::"{id}"' }
                 - { method: GET, path: "/c/{id}", action: "orders:read", resource: 'Order::"{idd}"' }
                 - { method: GET, path: "/d", action: "orders:read", resource: 'Order:"x"' }
            "#,
        )
        .unwrap_err();
        let messages: Vec<_> = problems.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(messages.len(), 4, "{messages:?}");
        assert!(
            messages[0].contains("`Action::\"orders:reed\"` is not declared"),
            "{}",
            messages[0]
        );
        assert!(
            messages[1].contains("`Ordr` is not declared"),
            "{}",
            messages[1]
        );
        assert!(messages[2].contains("`{idd}`"), "{}", messages[2]);
        assert!(messages[3].contains("not of the form"), "{}", messages[3]);
    }

    #[test]
    fn conflicting_templates_are_refused() {
        let problems = routes(
            r#"routes:
                 - { method: GET, path: "/orders/{id}", action: "orders:read" }
                 - { method: GET, path: "/orders/{name}", action: "orders:read" }
            "#,
        )
        .unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].message.starts_with("route 2"),
            "{}",
            problems[0].message
        );
    }
}
