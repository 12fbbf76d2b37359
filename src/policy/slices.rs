//! Policy slicing: the loaded policy set indexed by action, principal type and resource type,
//! so a Check evaluates only the policies whose scope can match its request.
//!
//! A policy goes into the slice of every (action, principal type, resource type) its scope
//! admits: `action == A` one action, `action in [G, …]` each action that is or descends from a
//! listed group, an unconstrained action every action; `principal == T::"x"`, `is T` and
//! `is T in …` one type, `principal in E` or no constraint every type the action applies to
//! (and likewise for the resource). Only combinations the schema's `appliesTo` allows exist;
//! a request outside them is refused before evaluation (the request is validated against the
//! schema), and a request without a slice falls back to the whole set.
//!
//! A policy outside the slice cannot apply: Cedar tests a policy's scope before its
//! conditions, so such a policy is neither satisfied nor evaluated (no error either). The
//! decision, the determining policies and the evaluation errors are therefore the same as with
//! the whole set; `tests/slicing.rs` checks that over generated requests.

use std::collections::{HashMap, HashSet};

use cedar_policy::{
    ActionConstraint, Entities, EntityTypeName, EntityUid, Policy, PolicySet, PrincipalConstraint,
    ResourceConstraint, Schema,
};

/// The slices of one policy set.
#[derive(Debug, Default)]
pub struct Slices {
    by_action: HashMap<EntityUid, HashMap<EntityTypeName, HashMap<EntityTypeName, PolicySet>>>,
}

/// Entity types a scope constraint admits; `None` for every type.
fn principal_types(policy: &Policy) -> Option<EntityTypeName> {
    match policy.principal_constraint() {
        PrincipalConstraint::Any | PrincipalConstraint::In(_) => None,
        PrincipalConstraint::Eq(uid) => Some(uid.type_name().clone()),
        PrincipalConstraint::Is(t) | PrincipalConstraint::IsIn(t, _) => Some(t),
    }
}

fn resource_types(policy: &Policy) -> Option<EntityTypeName> {
    match policy.resource_constraint() {
        ResourceConstraint::Any | ResourceConstraint::In(_) => None,
        ResourceConstraint::Eq(uid) => Some(uid.type_name().clone()),
        ResourceConstraint::Is(t) | ResourceConstraint::IsIn(t, _) => Some(t),
    }
}

impl Slices {
    /// Indexes `policies`; `entities` holds the schema's action entities (their groups).
    /// Returns an empty index (every request uses the whole set) when the set holds templates.
    pub fn build(policies: &PolicySet, schema: &Schema, entities: &Entities) -> Self {
        if policies.templates().next().is_some() {
            return Self::default();
        }
        // Every action a request can carry, with the types it applies to.
        let actions: Vec<(EntityUid, Vec<EntityTypeName>, Vec<EntityTypeName>)> = schema
            .actions()
            .filter_map(|action| {
                let principals: Vec<_> = schema.principals_for_action(action)?.cloned().collect();
                let resources: Vec<_> = schema.resources_for_action(action)?.cloned().collect();
                (!principals.is_empty() && !resources.is_empty())
                    .then(|| (action.clone(), principals, resources))
            })
            .collect();
        let mut by_action: HashMap<
            EntityUid,
            HashMap<EntityTypeName, HashMap<EntityTypeName, PolicySet>>,
        > = HashMap::new();
        // Every slice exists, empty or not, so that only requests outside the schema fall back.
        for (action, principals, resources) in &actions {
            let by_principal = by_action.entry(action.clone()).or_default();
            for principal in principals {
                let by_resource = by_principal.entry(principal.clone()).or_default();
                for resource in resources {
                    by_resource.entry(resource.clone()).or_default();
                }
            }
        }
        for policy in policies.policies() {
            let matching: HashSet<&EntityUid> = match policy.action_constraint() {
                ActionConstraint::Any => actions.iter().map(|(a, _, _)| a).collect(),
                ActionConstraint::Eq(target) => actions
                    .iter()
                    .map(|(a, _, _)| a)
                    .filter(|a| **a == target)
                    .collect(),
                ActionConstraint::In(groups) => actions
                    .iter()
                    .map(|(a, _, _)| a)
                    .filter(|a| {
                        groups.iter().any(|g| {
                            *a == g
                                || entities
                                    .ancestors(a)
                                    .is_some_and(|mut ancestors| ancestors.any(|p| p == g))
                        })
                    })
                    .collect(),
            };
            let principal = principal_types(policy);
            let resource = resource_types(policy);
            for action in matching {
                let Some(by_principal) = by_action.get_mut(action) else {
                    continue;
                };
                for (principal_type, by_resource) in by_principal.iter_mut() {
                    if principal.as_ref().is_some_and(|t| t != principal_type) {
                        continue;
                    }
                    for (resource_type, slice) in by_resource.iter_mut() {
                        if resource.as_ref().is_some_and(|t| t != resource_type) {
                            continue;
                        }
                        // Ids are unique in the whole set, so adding cannot fail; if it did,
                        // a slice would miss a policy (a forbid, say): use no slices at all.
                        if slice.add(policy.clone()).is_err() {
                            tracing::error!(policy = %policy.id(), "policy slicing failed; evaluating the whole set");
                            return Self::default();
                        }
                    }
                }
            }
        }
        Self { by_action }
    }

    /// The policies that can apply to a request of these action and entity types, or `None`
    /// when the set has no slice for them (evaluate the whole set).
    pub fn get(
        &self,
        action: &EntityUid,
        principal: &EntityTypeName,
        resource: &EntityTypeName,
    ) -> Option<&PolicySet> {
        self.by_action.get(action)?.get(principal)?.get(resource)
    }

    /// Whether the slice for `action`, `principal` and `resource` holds the same policies
    /// (ids and texts) here as in `other`; `false` when either has none to offer (then a
    /// caller cannot tell, and must evaluate).
    pub fn same_as(
        &self,
        other: &Self,
        action: &EntityUid,
        principal: &EntityTypeName,
        resource: &EntityTypeName,
    ) -> bool {
        let texts = |set: &PolicySet| {
            let mut texts: Vec<(String, String)> = set
                .policies()
                .map(|p| (p.id().to_string(), p.to_string()))
                .collect();
            texts.sort_unstable();
            texts
        };
        match (
            self.get(action, principal, resource),
            other.get(action, principal, resource),
        ) {
            (Some(mine), Some(theirs)) => texts(mine) == texts(theirs),
            _ => false,
        }
    }

    /// The number of slices and the size of the largest, for the load log.
    pub fn stats(&self) -> (usize, usize) {
        let slices = self
            .by_action
            .values()
            .flat_map(HashMap::values)
            .flat_map(HashMap::values);
        slices.fold((0, 0), |(count, largest), slice| {
            (count + 1, largest.max(slice.policies().count()))
        })
    }
}
