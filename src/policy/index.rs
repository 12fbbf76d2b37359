//! What the hot path needs from the schema and the static entities, computed once per policy
//! set so that a Check never scans or copies them:
//!
//! - [`SchemaIndex`]: the declared actions, the principal and resource types each applies to
//!   (a request outside them is refused, as validating the request against the schema would),
//!   and the entity types that may be members of `Group`;
//! - [`EntityGraph`]: for every static entity (entities.json and the schema's actions) the
//!   entities it refers to (entity values in attributes and tags), and the entities
//!   the policies' conditions name literally. A Check's entity store holds only what its
//!   evaluation can reach — the principal, action and resource, what they refer to
//!   transitively, and the conditions' literals whose data may be read (not those only
//!   compared, such as the right side of `in`), with theirs — instead of a copy of every
//!   static entity;
//! - [`PathLiterals`]: the `Path::` uids the policies and static entities name, folded, so a
//!   fallback path that differs from one of them only by case (or a trailing `/` in the
//!   literal) is refused rather than decided as another resource.
//!
//! Why the smaller store decides the same: a Cedar expression reaches an entity only through
//! `principal`, `action`, `resource`, the context, a literal in a condition (scope literals
//! are only compared with the request's entities and their ancestors), or an entity-typed
//! attribute or tag of an entity it already reached; `in` reads only the ancestors of its left
//! operand, and a static entity brings its ancestors with it: Cedar computed their transitive
//! closure when the static store loaded, so an ancestor need not be in a Check's store (and is
//! not, unless reached otherwise) for `in` to see it. What the request adds is closed again
//! in the Check's store: the principal's groups are seeds (each with its own ancestors), and a
//! static entity below the request's principal or a fetched entity gets their ancestors when
//! Cedar computes the closure of that store. `tests/slicing.rs` and `tests/decide.rs` compare
//! decisions against the whole store.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::{Entities, Entity, EntityTypeName, EntityUid, Policy, PolicySet, Schema};
use serde_json::Value;

/// Facts about the schema the mapping checks per request.
#[derive(Debug, Default)]
pub struct SchemaIndex {
    /// Principal and resource types per action (actions without `appliesTo` are absent).
    applies: HashMap<EntityUid, (HashSet<EntityTypeName>, HashSet<EntityTypeName>)>,
    /// Every declared action, with or without `appliesTo`.
    actions: HashSet<EntityUid>,
    /// The types each entity type may have as ancestors (`User in [Group]`).
    ancestors: HashMap<EntityTypeName, HashSet<EntityTypeName>>,
}

impl SchemaIndex {
    pub fn build(schema: &Schema) -> Self {
        let actions: HashSet<EntityUid> = schema.actions().cloned().collect();
        let applies = actions
            .iter()
            .filter_map(|action| {
                let principals: HashSet<_> =
                    schema.principals_for_action(action)?.cloned().collect();
                let resources: HashSet<_> = schema.resources_for_action(action)?.cloned().collect();
                Some((action.clone(), (principals, resources)))
            })
            .collect();
        let ancestors = schema
            .entity_types()
            .map(|t| {
                let of: HashSet<EntityTypeName> =
                    schema.ancestors(t).into_iter().flatten().cloned().collect();
                (t.clone(), of)
            })
            .collect();
        Self {
            applies,
            actions,
            ancestors,
        }
    }

    pub fn is_action(&self, action: &EntityUid) -> bool {
        self.actions.contains(action)
    }

    /// True when the schema lets `action` apply to these principal and resource types.
    pub fn applies(
        &self,
        action: &EntityUid,
        principal: &EntityTypeName,
        resource: &EntityTypeName,
    ) -> bool {
        self.applies
            .get(action)
            .is_some_and(|(p, r)| p.contains(principal) && r.contains(resource))
    }

    /// True when entities of type `member` may have a `group` ancestor.
    pub fn may_join(&self, member: &EntityTypeName, group: &EntityTypeName) -> bool {
        self.ancestors
            .get(member)
            .is_some_and(|ancestors| ancestors.contains(group))
    }
}

/// The static entities' references, for building a Check's store from what it can reach.
#[derive(Debug, Default)]
pub struct EntityGraph {
    /// Outgoing references of each static entity.
    refs: HashMap<EntityUid, Vec<EntityUid>>,
    /// The policies' literal entities and what they reach: in every Check's store.
    core: Vec<EntityUid>,
}

impl EntityGraph {
    /// Indexes `entities` (already validated) and the literals of `policies`.
    pub fn build(entities: &Entities, policies: &PolicySet) -> Self {
        let mut refs = HashMap::new();
        if let Ok(Value::Array(list)) = entities.to_json_value() {
            for entity in &list {
                let Some(uid) = entity.get("uid").and_then(uid_of) else {
                    continue;
                };
                let mut out = Vec::new();
                // Not the parents: their closure is already in the entity's ancestors.
                for key in ["attrs", "tags"] {
                    if let Some(value) = entity.get(key) {
                        collect_uids(value, &mut out);
                    }
                }
                refs.insert(uid, out);
            }
        }
        // Literals in a policy's scope are compared with the request's principal, action or
        // resource (or their ancestors) and never looked up; only conditions can look an
        // entity up (`Group::"x".attr`, `User::"a" in …`).
        let mut literals = Vec::new();
        for policy in policies.policies() {
            match policy.to_json() {
                Ok(json) => {
                    for body in condition_bodies(&json) {
                        looked_up(body, &mut literals);
                    }
                }
                // No JSON form (never expected): keep every static entity reachable.
                Err(_) => literals.extend(refs.keys().cloned()),
            }
        }
        let mut graph = Self {
            refs,
            core: Vec::new(),
        };
        graph.core = graph.reach(literals, &[]);
        graph
    }

    /// Every static entity reachable from `seeds` (the seeds included, when static), not
    /// entering `known` (a set closed under reach, already taken).
    fn reach(&self, seeds: Vec<EntityUid>, known: &[Entity]) -> Vec<EntityUid> {
        let mut seen: HashSet<EntityUid> = HashSet::new();
        let mut queue = seeds;
        let mut found = Vec::new();
        while let Some(uid) = queue.pop() {
            if seen.contains(&uid) || known.iter().any(|e| e.uid() == uid) {
                continue;
            }
            if let Some(out) = self.refs.get(&uid) {
                queue.extend(out.iter().cloned());
                found.push(uid.clone());
            }
            seen.insert(uid);
        }
        found
    }

    /// The static entities a Check whose principal, action and resource (and the per-request
    /// entities' parents) are `seeds` can reach, cloned from `store`.
    pub fn subset(&self, store: &Entities, seeds: Vec<EntityUid>) -> Vec<Entity> {
        let mut queue = seeds;
        queue.extend(self.core.iter().cloned());
        self.reach(queue, &[])
            .iter()
            .filter_map(|uid| store.get(uid).cloned())
            .collect()
    }

    /// Whether `other` puts the same static entities in every Check's store (the policies'
    /// looked-up literals and what they reach).
    pub fn same_core(&self, other: &Self) -> bool {
        let mine: HashSet<&EntityUid> = self.core.iter().collect();
        let theirs: HashSet<&EntityUid> = other.core.iter().collect();
        mine == theirs
    }

    /// The static entities reachable from `seeds` that `known` (a [`Self::subset`] already
    /// taken, with the policies' literals) does not hold, cloned from `store`.
    pub fn subset_beyond(
        &self,
        store: &Entities,
        seeds: Vec<EntityUid>,
        known: &[Entity],
    ) -> Vec<Entity> {
        self.reach(seeds, known)
            .iter()
            .filter_map(|uid| store.get(uid).cloned())
            .collect()
    }
}

/// The ids of the `Path::` entities the policy set names (in scopes, conditions and static
/// entities), to spot a request path that differs from one only by case or a trailing `/`.
///
/// Upstreams disagree on case (Express and ASP.NET fold it, most others do not), so
/// `forbid … resource == Path::"/internal/metrics"` must not be dodged by
/// `/Internal/metrics`; nor can cedargate fold every fallback path, because a `permit` on
/// `Path::"/files/a"` would then allow `/FILES/A`, another resource to a case-sensitive
/// upstream. Such a request is refused instead, like a near miss of a route.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PathLiterals {
    exact: HashSet<String>,
    folded: HashSet<String>,
}

impl PathLiterals {
    /// Collects the `Path::` ids of `policies` and `entities`.
    pub fn build(entities: &Entities, policies: &PolicySet, path_type: &str) -> Self {
        let mut uids = Vec::new();
        if let Ok(list) = entities.to_json_value() {
            collect_uids(&list, &mut uids);
        }
        // The literals of scopes and conditions, from the parsed policy (its JSON form would
        // parse the policy's text again).
        uids.extend(policies.policies().flat_map(Policy::entity_literals));
        let exact: HashSet<String> = uids
            .iter()
            .filter(|uid| uid.type_name().to_string() == path_type)
            .map(|uid| uid.id().unescaped().to_owned())
            .collect();
        let folded = exact.iter().map(|id| fold(id)).collect();
        Self { exact, folded }
    }

    /// True when `path` (canonical: no trailing `/`) is not a literal but equals one once case
    /// and a trailing `/` are ignored.
    pub fn near_miss(&self, path: &str) -> bool {
        !self.folded.is_empty() && !self.exact.contains(path) && self.folded.contains(&fold(path))
    }
}

fn fold(path: &str) -> String {
    let trimmed = match path.strip_suffix('/') {
        Some(rest) if !rest.is_empty() => rest,
        _ => path,
    };
    crate::text::fold_case(trimmed)
}

/// The expressions of a policy's `when` and `unless` clauses, in Cedar's JSON policy form.
pub(super) fn condition_bodies(policy: &Value) -> impl Iterator<Item = &Value> {
    policy
        .get("conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|condition| condition.get("body").unwrap_or(condition))
}

/// A `{"type": …, "id": …}` entity reference (also inside `{"__entity": …}`).
fn uid_of(value: &Value) -> Option<EntityUid> {
    let object = value.as_object()?;
    let type_name = object.get("type")?.as_str()?;
    let id = object.get("id")?.as_str()?;
    if object.len() != 2 {
        return None;
    }
    Some(EntityUid::from_type_name_and_id(
        EntityTypeName::from_str(type_name).ok()?,
        cedar_policy::EntityId::new(id),
    ))
}

/// The entity literals of a condition (Cedar's JSON policy form) whose data evaluation may
/// read: attributes, tags, or ancestors (the left side of `in`). Literals that are only
/// compared — operands of `==`/`!=`, the right side of `in` or of `is … in` (Cedar reads the
/// ancestors of the left side, which the store holds) — need not be in the store. Operators
/// not known here keep every literal below them.
fn looked_up(expr: &Value, out: &mut Vec<EntityUid>) {
    let Some((op, arg)) = expr.as_object().and_then(|o| {
        let mut entries = o.iter();
        let first = entries.next();
        if entries.next().is_some() {
            None
        } else {
            first
        }
    }) else {
        collect_uids(expr, out);
        return;
    };
    let side = |name: &str| arg.get(name).unwrap_or(&Value::Null);
    match op.as_str() {
        "Value" => collect_uids(arg, out),
        "Var" | "Slot" => {}
        "!" | "neg" | "isEmpty" => looked_up(side("arg"), out),
        "==" | "!=" => {
            compared(side("left"), out);
            compared(side("right"), out);
        }
        "in" => {
            looked_up(side("left"), out);
            compared(side("right"), out);
        }
        "is" => {
            looked_up(side("left"), out);
            if let Some(within) = arg.get("in") {
                compared(within, out);
            }
        }
        "&&" | "||" | "<" | "<=" | ">" | ">=" | "+" | "-" | "*" | "contains" | "containsAll"
        | "containsAny" | "getTag" | "hasTag" => {
            looked_up(side("left"), out);
            looked_up(side("right"), out);
        }
        "." | "has" | "like" => looked_up(side("left"), out),
        "if-then-else" => ["if", "then", "else"]
            .iter()
            .for_each(|k| looked_up(side(k), out)),
        "Set" => arg
            .as_array()
            .into_iter()
            .flatten()
            .for_each(|e| looked_up(e, out)),
        "Record" => arg
            .as_object()
            .into_iter()
            .flat_map(|o| o.values())
            .for_each(|e| looked_up(e, out)),
        _ => collect_uids(arg, out),
    }
}

/// An operand whose value is only compared: an entity literal (or a set of them) is skipped.
fn compared(expr: &Value, out: &mut Vec<EntityUid>) {
    if let Some(value) = expr.get("Value")
        && let Some(entity) = value.get("__entity")
        && uid_of(entity).is_some()
    {
        return;
    }
    if let Some(Value::Array(items)) = expr.get("Set") {
        items.iter().for_each(|e| compared(e, out));
        return;
    }
    looked_up(expr, out);
}

/// Every entity reference anywhere in a JSON value (entity JSON or a policy's JSON form).
fn collect_uids(value: &Value, out: &mut Vec<EntityUid>) {
    if let Some(uid) = uid_of(value) {
        out.push(uid);
        return;
    }
    match value {
        Value::Array(items) => items.iter().for_each(|v| collect_uids(v, out)),
        Value::Object(map) => map.values().for_each(|v| collect_uids(v, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core_of(policies: &str) -> Vec<String> {
        let set: PolicySet = policies.parse().unwrap();
        let entities = Entities::from_json_str(
            r#"[{"uid": {"type": "Group", "id": "a"}, "attrs": {}, "parents": [{"type": "Group", "id": "root"}]},
                {"uid": {"type": "Group", "id": "root"}, "attrs": {}, "parents": []},
                {"uid": {"type": "Group", "id": "b"}, "attrs": {}, "parents": []},
                {"uid": {"type": "Group", "id": "c"}, "attrs": {}, "parents": []},
                {"uid": {"type": "Group", "id": "d"}, "attrs": {}, "parents": []},
                {"uid": {"type": "Group", "id": "e"}, "attrs": {}, "parents": []},
                {"uid": {"type": "Group", "id": "f"}, "attrs": {}, "parents": []}]"#,
            None,
        )
        .unwrap();
        let graph = EntityGraph::build(&entities, &set);
        let mut core: Vec<String> = graph.core.iter().map(ToString::to_string).collect();
        core.sort();
        core
    }

    #[test]
    fn compared_literals_stay_out_of_the_store_looked_up_ones_come_in() {
        let core = core_of(
            r#"permit (principal, action, resource) when { principal in Group::"b" && principal == Group::"c" };
               permit (principal, action, resource) when { principal is User in Group::"d" };
               permit (principal, action, resource) when { Group::"a".level > 1 };
               permit (principal, action, resource) when { Group::"e" in principal };
               permit (principal, action, resource) when { [Group::"f"].contains(principal) };"#,
        );
        assert_eq!(
            core,
            // `Group::"root"`, an ancestor of `a`, is in `a`'s ancestors, not needed in the store.
            [r#"Group::"a""#, r#"Group::"e""#, r#"Group::"f""#]
        );
    }

    #[test]
    fn a_lookup_inside_the_right_side_of_in_still_counts() {
        let core = core_of(
            r#"permit (principal, action, resource) when { principal in Group::"a".parent };
               permit (principal, action, resource) when { principal is User in Group::"b".parent };
               permit (principal, action, resource) when { {"in": Group::"c".x}["in"] == 1 };"#,
        );
        assert_eq!(core, [r#"Group::"a""#, r#"Group::"b""#, r#"Group::"c""#]);
    }
}
