//! Strict schema validation of a policy set, typechecking each policy only in the request
//! environments its scope admits.
//!
//! Cedar's validator typechecks every policy in every request environment of the schema
//! (each action × its principal types × its resource types): a set of 10,000 policies over
//! 200 actions is 8 million typechecks, almost all of a policy whose scope names another
//! action, where the scope is false and nothing else is checked. Here the policies are grouped
//! by the actions their scope admits (`action == A`, `action in [G, …]` with the actions in
//! those groups), and each group is validated by Cedar's own validator against the schema cut
//! down to those actions' environments: every declaration is kept (entity, common and action
//! types, the whole action hierarchy, external declarations), and only the admitted actions
//! keep their `appliesTo`, so only their environments exist. Typing an expression in an
//! environment reads the declarations, never the other environments, so a group with no
//! diagnostic here has none against the whole schema; a group with any diagnostic (or whose
//! cut-down schema does not build) is validated again against the whole schema, so that the
//! messages are exactly Cedar's. (An earlier cut also dropped the actions a group did not
//! name: an outside review found that this hid an incomplete schema's error, and a type error
//! behind an `in` whose right side is not a literal, which Cedar types against the whole
//! action hierarchy.) Policies whose scope admits every action or none, and sets with templates, are
//! validated against the whole schema. `tests/validation.rs` compares the two on generated
//! sets with deliberate errors.

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;

use cedar_policy::{
    ActionConstraint, EntityId, EntityTypeName, EntityUid, PolicySet, Schema, ValidationError,
    ValidationMode, ValidationResult, ValidationWarning, Validator,
};
use serde_json::Value;

/// The results of validating a set, one per group.
#[derive(Debug)]
pub struct Validation {
    results: Vec<ValidationResult>,
    /// Groups validated against a cut-down schema, and against the whole one.
    pub cut: usize,
    pub whole: usize,
}

impl Validation {
    pub fn errors(&self) -> impl Iterator<Item = &ValidationError> {
        self.results
            .iter()
            .flat_map(ValidationResult::validation_errors)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &ValidationWarning> {
        self.results
            .iter()
            .flat_map(ValidationResult::validation_warnings)
    }
}

/// Validates `policies` against `schema` in strict mode; `schema_json` is the schema's JSON
/// form (the cut-down schemas are built from it; without it the whole schema is used).
pub fn validate(schema: &Schema, schema_json: Option<&Value>, policies: &PolicySet) -> Validation {
    let whole =
        |set: &PolicySet| Validator::new(schema.clone()).validate(set, ValidationMode::Strict);
    let by_action = match schema_json {
        Some(_) if policies.templates().next().is_none() => by_admitted_actions(schema, policies),
        _ => None,
    };
    let (Some(groups), Some(json)) = (by_action, schema_json) else {
        return Validation {
            results: vec![whole(policies)],
            cut: 0,
            whole: 1,
        };
    };
    let actions: Vec<&EntityUid> = schema.actions().collect();
    let mut results = Vec::with_capacity(groups.len());
    let (mut cut_groups, mut whole_groups) = (0, 0);
    for (admitted, set) in groups {
        let cut = (!admitted.is_empty())
            .then(|| {
                let admitted: HashSet<&EntityUid> = admitted
                    .iter()
                    .filter_map(|&i| actions.get(i).copied())
                    .collect();
                Schema::from_json_value(cut_down(json, &admitted)).ok()
            })
            .flatten();
        let result = cut
            .map(|cut| Validator::new(cut).validate(&set, ValidationMode::Strict))
            .filter(|r| r.validation_passed() && r.validation_warnings().next().is_none());
        match result {
            Some(result) => {
                cut_groups += 1;
                results.push(result);
            }
            None => {
                whole_groups += 1;
                results.push(whole(&set));
            }
        }
    }
    Validation {
        results,
        cut: cut_groups,
        whole: whole_groups,
    }
}

/// The policies grouped by the actions their scope admits (indexes into `schema.actions()`,
/// sorted; empty for every action or none), or `None` when the schema's action hierarchy
/// cannot be built (or, impossibly, a policy id repeats).
fn by_admitted_actions(
    schema: &Schema,
    policies: &PolicySet,
) -> Option<BTreeMap<Vec<usize>, PolicySet>> {
    let actions: Vec<&EntityUid> = schema.actions().collect();
    let hierarchy = schema.action_entities().ok()?;
    let mut groups: BTreeMap<Vec<usize>, PolicySet> = BTreeMap::new();
    for policy in policies.policies() {
        let admitted: Vec<usize> = match policy.action_constraint() {
            ActionConstraint::Any => Vec::new(),
            ActionConstraint::Eq(target) => actions
                .iter()
                .position(|a| **a == target)
                .into_iter()
                .collect(),
            ActionConstraint::In(listed) => actions
                .iter()
                .enumerate()
                .filter(|(_, a)| {
                    listed.iter().any(|g| {
                        *a == &g
                            || hierarchy
                                .ancestors(a)
                                .is_some_and(|mut ancestors| ancestors.any(|p| p == g))
                    })
                })
                .map(|(i, _)| i)
                .collect(),
        };
        // Ids are unique in the set they come from.
        groups
            .entry(admitted)
            .or_default()
            .add(policy.clone())
            .ok()?;
    }
    Some(groups)
}

/// The schema (JSON form) with every declaration kept, and only the actions in `admitted`
/// applying to principals and resources.
fn cut_down(json: &Value, admitted: &HashSet<&EntityUid>) -> Value {
    let mut cut = json.clone();
    let Some(namespaces) = cut.as_object_mut() else {
        return cut;
    };
    for (namespace, definitions) in namespaces.iter_mut() {
        let action_type = if namespace.is_empty() {
            "Action".to_owned()
        } else {
            format!("{namespace}::Action")
        };
        let Ok(action_type) = EntityTypeName::from_str(&action_type) else {
            continue;
        };
        let Some(actions) = definitions
            .get_mut("actions")
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        for (id, declaration) in actions.iter_mut() {
            let uid = EntityUid::from_type_name_and_id(action_type.clone(), EntityId::new(id));
            if !admitted.contains(&uid)
                && let Some(declaration) = declaration.as_object_mut()
            {
                declaration.remove("appliesTo");
            }
        }
    }
    cut
}
