//! Validation by the actions each policy's scope admits (`policy::validation`) reports exactly
//! what Cedar's validator reports on the whole set: the same errors and warnings, by policy and
//! message, on the example set, on generated sets, and on a set written to hold every kind of
//! problem in every kind of scope (a namespace, action groups, a literal naming another action
//! or none, an unconstrained scope, an impossible policy). Clean groups must be validated
//! against cut-down schemas (else the speed-up is not there).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;

use cedar_policy::{PolicyId, PolicySet, Schema, ValidationMode, Validator};
use cedargate::policy::shapes::json_form;
use cedargate::policy::validation;
use cedargate::testutil::policygen;

type Diagnostics = (BTreeSet<(String, String)>, BTreeSet<(String, String)>);

fn whole(schema: &Schema, policies: &PolicySet) -> Diagnostics {
    let result = Validator::new(schema.clone()).validate(policies, ValidationMode::Strict);
    (
        result
            .validation_errors()
            .map(|e| (e.policy_id().to_string(), e.to_string()))
            .collect(),
        result
            .validation_warnings()
            .map(|w| (w.policy_id().to_string(), w.to_string()))
            .collect(),
    )
}

/// Both ways, compared; returns the fast way's diagnostics and group counts.
fn compare(schema_text: &str, policies_text: &str) -> (Diagnostics, usize, usize) {
    let (schema, _) = Schema::from_cedarschema_str(schema_text).unwrap();
    // Named by their `@id`, as cedargate names them.
    let parsed: PolicySet = policies_text.parse().unwrap();
    let mut policies = PolicySet::new();
    for policy in parsed.policies() {
        let id = policy
            .annotation("id")
            .unwrap_or(policy.id().as_ref())
            .to_owned();
        policies.add(policy.new_id(PolicyId::new(id))).unwrap();
    }
    let json = json_form(schema_text).unwrap();
    let fast = validation::validate(&schema, Some(&json), &policies);
    let found: Diagnostics = (
        fast.errors()
            .map(|e| (e.policy_id().to_string(), e.to_string()))
            .collect(),
        fast.warnings()
            .map(|w| (w.policy_id().to_string(), w.to_string()))
            .collect(),
    );
    assert_eq!(found, whole(&schema, &policies));
    (found, fast.cut, fast.whole)
}

#[test]
fn the_example_set_validates_alike() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let schema = std::fs::read_to_string(dir.join("schema.cedarschema")).unwrap();
    let mut policies = String::new();
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cedar"))
        .collect();
    names.sort();
    for name in names {
        policies.push_str(&std::fs::read_to_string(name).unwrap());
        policies.push('\n');
    }
    let ((errors, _), cut, _) = compare(&schema, &policies);
    assert!(errors.is_empty(), "{errors:?}");
    assert!(cut > 0, "no group was validated against a cut-down schema");
}

#[test]
fn generated_sets_validate_alike_against_cut_down_schemas() {
    for size in [100, 400] {
        let dir = tempfile::tempdir().unwrap();
        policygen::write_with_services(dir.path(), size, 10).unwrap();
        let schema = std::fs::read_to_string(dir.path().join("schema.cedarschema")).unwrap();
        let policies = std::fs::read_to_string(dir.path().join("policies.cedar")).unwrap();
        let ((errors, warnings), cut, whole) = compare(&schema, &policies);
        assert!(
            errors.is_empty() && warnings.is_empty(),
            "{errors:?} {warnings:?}"
        );
        // A group per set of actions named in scopes, and the guardrails that name no action
        // against the whole schema.
        assert!(cut >= 20, "{cut} groups against cut-down schemas");
        assert_eq!(
            whole, 1,
            "only the unconstrained group against the whole schema"
        );
    }
}

const SCHEMA: &str = r#"
namespace Shop {
  entity Team;
  entity User in [Team] { level: Long };
  entity Order { owner: User, total: Long };
  action "read", "write" appliesTo { principal: User, resource: Order, context: { ip: String } };
  action "all";
  action "list" in ["all"] appliesTo { principal: User, resource: Order, context: {} };
  action "export" in ["all"] appliesTo { principal: User, resource: Order, context: {} };
}
entity Admin;
action "audit" appliesTo { principal: Admin, resource: Shop::Order, context: {} };
action "ping" appliesTo { principal: Admin, resource: Admin, context: {} };
"#;

#[test]
fn every_kind_of_problem_is_reported_as_cedar_reports_it() {
    let policies = r#"
@id("ok_owner") permit (principal, action == Shop::Action::"read", resource) when { resource.owner == principal };
@id("type_error") permit (principal, action == Shop::Action::"write", resource) when { resource.total == "x" };
@id("group_missing_attr") permit (principal, action in Shop::Action::"all", resource) when { resource.missing == 1 };
@id("context_missing") permit (principal, action == Shop::Action::"list", resource) when { context.ip == "1" };
@id("ok_context") permit (principal, action == Shop::Action::"read", resource) when { context.ip == "1" };
@id("other_action_literal") permit (principal, action == Shop::Action::"read", resource) when { action == Shop::Action::"write" };
@id("unknown_action_literal") permit (principal, action == Shop::Action::"read", resource) when { action == Shop::Action::"nope" };
@id("ok_group_literal") permit (principal, action == Shop::Action::"list", resource) when { action in Shop::Action::"all" };
@id("impossible_scope") permit (principal is Admin, action == Shop::Action::"read", resource);
@id("unconstrained_error") forbid (principal, action, resource) when { principal.level > 3 };
@id("ok_audit") permit (principal, action == Action::"audit", resource) when { resource.total > 10 };
@id("audit_error") permit (principal, action == Action::"audit", resource) when { principal.level > 1 };
@id("undeclared_action") permit (principal, action == Action::"nothere", resource);
@id("ok_list_of_two") permit (principal, action in [Shop::Action::"read", Shop::Action::"list"], resource) when { resource.total > 1 };
@id("list_error_in_one") permit (principal, action in [Action::"audit", Action::"ping"], resource) when { resource.total > 1 };
@id("mixed_list") permit (principal, action in [Shop::Action::"read", Action::"audit"], resource);
@id("unknown_type") permit (principal is Shop::Nobody, action == Shop::Action::"export", resource);
"#;
    let ((errors, warnings), cut, whole) = compare(SCHEMA, policies);
    let with_errors: BTreeSet<&str> = errors.iter().map(|(id, _)| id.as_str()).collect();
    for id in [
        "type_error",
        "group_missing_attr",
        "context_missing",
        "unknown_action_literal",
        "unconstrained_error",
        "audit_error",
        "undeclared_action",
        "list_error_in_one",
        "mixed_list",
        "unknown_type",
    ] {
        assert!(with_errors.contains(id), "{id} has no error: {errors:?}");
    }
    for id in [
        "ok_owner",
        "ok_context",
        "ok_group_literal",
        "ok_audit",
        "ok_list_of_two",
    ] {
        assert!(!with_errors.contains(id), "{id} has an error: {errors:?}");
    }
    assert!(
        !warnings.is_empty(),
        "the impossible policies are warned about"
    );
    assert!(cut > 0 && whole > 0, "cut {cut}, whole {whole}");
}

/// Two sets an outside review found accepted when the cut-down schemas dropped the actions a
/// group did not name: an external action (Cedar refuses an incomplete schema) and a type
/// error behind `in` with a right side that is not a literal (Cedar types it against every
/// action of the hierarchy, here a member of another namespace's group).
#[test]
fn what_the_whole_schema_declares_is_seen_by_every_group() {
    let external = format!("{SCHEMA}\nexternal action \"ghost\";\n");
    let ((errors, _), _, _) = compare(
        &external,
        r#"@id("read") permit (principal, action == Shop::Action::"read", resource) when { resource.total > 1 };"#,
    );
    assert!(!errors.is_empty(), "an incomplete schema validates nothing");

    let hierarchy = r#"
entity Order { total: Long };
entity User;
action "read" appliesTo { principal: User, resource: Order, context: {} };
action "w" in [X::Action::"g"] appliesTo { principal: User, resource: Order, context: {} };
namespace X { action "g"; }
"#;
    let ((errors, _), _, _) = compare(
        hierarchy,
        r#"@id("cut") permit (principal, action == Action::"read", resource)
           when { (action in (if true then X::Action::"g" else X::Action::"g") && resource.nope == 1) || resource.total > 0 };"#,
    );
    assert!(
        errors
            .iter()
            .any(|(id, message)| id == "cut" && message.contains("nope")),
        "{errors:?}"
    );
}
