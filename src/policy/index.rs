//! What the hot path needs from the schema and the static entities, computed once per policy
//! set so that a Check never scans or copies them:
//!
//! - [`SchemaIndex`]: the declared actions, the principal and resource types each applies to
//!   (a request outside them is refused, as validating the request against the schema would),
//!   and the entity types that may be members of `Group`;
//! - [`EntityGraph`]: for every static entity (entities.json and the schema's actions) the
//!   entities it refers to (parents, entity values in attributes and tags), and the entities
//!   the policies' conditions name literally. A Check's entity store holds only what its
//!   evaluation can reach — the principal, action and resource, what they refer to
//!   transitively, and the conditions' literals with theirs — instead of a copy of every
//!   static entity.
//!
//! Why the smaller store decides the same: a Cedar expression reaches an entity only through
//! `principal`, `action`, `resource`, the context, a literal in a condition (scope literals
//! are only compared with the request's entities and their ancestors), or an entity-typed
//! attribute or tag of an entity it already reached; `in` reads the ancestors of its left operand, and the
//! store keeps every ancestor (parents are followed transitively, so the store's transitive
//! closure is the same). `tests/slicing.rs` compares decisions against the whole store.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::{Entities, Entity, EntityTypeName, EntityUid, PolicySet, Schema};
use serde_json::Value;

/// Facts about the schema the mapping checks per request.
#[derive(Debug, Default)]
pub struct SchemaIndex {
    /// Principal and resource types per action (actions without `appliesTo` are absent).
    applies: HashMap<EntityUid, (HashSet<EntityTypeName>, HashSet<EntityTypeName>)>,
    /// Every declared action, with or without `appliesTo`.
    actions: HashSet<EntityUid>,
    /// Entity types that may have a `Group` ancestor.
    group_members: HashSet<EntityTypeName>,
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
        let group = EntityTypeName::from_str("Group").ok();
        let group_members = schema
            .entity_types()
            .filter(|t| {
                group.as_ref().is_some_and(|group| {
                    schema
                        .ancestors(t)
                        .is_some_and(|mut ancestors| ancestors.any(|a| a == group))
                })
            })
            .cloned()
            .collect();
        Self {
            applies,
            actions,
            group_members,
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

    /// True when entities of this type may be members of `Group`.
    pub fn may_join_groups(&self, entity_type: &EntityTypeName) -> bool {
        self.group_members.contains(entity_type)
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
                for key in ["parents", "attrs", "tags"] {
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
            if let Ok(json) = policy.to_json()
                && let Some(conditions) = json.get("conditions")
            {
                collect_uids(conditions, &mut literals);
            }
        }
        let mut graph = Self {
            refs,
            core: Vec::new(),
        };
        graph.core = graph.reach(literals);
        graph
    }

    /// Every static entity reachable from `seeds` (the seeds included, when static).
    fn reach(&self, seeds: Vec<EntityUid>) -> Vec<EntityUid> {
        let mut seen: HashSet<EntityUid> = HashSet::new();
        let mut queue = seeds;
        let mut found = Vec::new();
        while let Some(uid) = queue.pop() {
            if seen.contains(&uid) {
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
        self.reach(queue)
            .iter()
            .filter_map(|uid| store.get(uid).cloned())
            .collect()
    }
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
