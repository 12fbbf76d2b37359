//! Generated policy sets of any size for benchmarks and the slicing differential test: a
//! multi-service API (`/svcK/items/{id}`) with users in nested groups, services, workloads,
//! owned and classified items, and a realistic mix of policies — per-user and per-group
//! permits, tenant-header and owner conditions, scope checks for services, forbids, and a
//! fixed handful of global guardrails whose scope names no action.

use std::fmt::Write as _;
use std::path::Path;

/// Users, groups and items in `entities.json` (the same for every size).
pub const USERS: usize = 100;
pub const GROUPS: usize = 20;
pub const ITEMS: usize = 200;

/// Services (route prefixes, four actions each) for a set of `policies` policies: about five
/// policies per action, as in a real deployment.
pub fn services(policies: usize) -> usize {
    (policies / 20).max(2)
}

/// Writes schema, routes, entities and `policies` policies into `dir`.
pub fn write(dir: &Path, policies: usize) -> std::io::Result<()> {
    write_with_services(dir, policies, services(policies))
}

/// [`write`] with `services` services (four actions each): many policies over a few hundred
/// actions is the shape of a large real set, and what Cedar's strict validator, whose cost
/// grows with policies × actions, loads in seconds rather than minutes.
pub fn write_with_services(dir: &Path, policies: usize, services: usize) -> std::io::Result<()> {
    std::fs::write(dir.join("schema.cedarschema"), schema(services))?;
    std::fs::write(dir.join("routes.yaml"), routes(services))?;
    std::fs::write(dir.join("entities.json"), entities(services))?;
    std::fs::write(dir.join("policies.cedar"), policy_text(policies, services))?;
    Ok(())
}

fn schema(services: usize) -> String {
    let example = include_str!("../../policies/schema.cedarschema");
    let context = example.split("// Principals.").next().unwrap_or_default();
    let mut text = format!(
        "{context}
entity Group in [Group];
entity User in [Group] {{ department?: String, level?: Long }};
entity Service in [Group];
entity Workload {{ trust_domain: String }};
entity Anonymous;
entity Team;
entity Item in [Team] {{ owner?: User, classification: String }};
entity Collection;
entity Path;
action \"GET\" appliesTo {{ principal: [User, Service, Workload, Anonymous], resource: Path, context: CheckContext }};
"
    );
    for k in 0..services {
        let _ = writeln!(
            text,
            "action \"svc{k}:list\" appliesTo {{ principal: [User, Service, Workload, Anonymous], resource: Collection, context: CheckContext }};
action \"svc{k}:read\", \"svc{k}:write\", \"svc{k}:delete\" appliesTo {{ principal: [User, Service, Workload, Anonymous], resource: Item, context: CheckContext }};"
        );
    }
    text
}

fn routes(services: usize) -> String {
    let mut text = String::from("routes:\n");
    for k in 0..services {
        let _ = write!(
            text,
            "  - {{ method: GET, path: \"/svc{k}/items\", action: \"svc{k}:list\", resource: 'Collection::\"svc{k}\"' }}
  - {{ method: GET, path: \"/svc{k}/items/{{id}}\", action: \"svc{k}:read\", resource: 'Item::\"{{id}}\"' }}
  - {{ method: PUT, path: \"/svc{k}/items/{{id}}\", action: \"svc{k}:write\", resource: 'Item::\"{{id}}\"' }}
  - {{ method: DELETE, path: \"/svc{k}/items/{{id}}\", action: \"svc{k}:delete\", resource: 'Item::\"{{id}}\"' }}
"
        );
    }
    text
}

fn entities(services: usize) -> String {
    let mut list = vec![
        r#"{"uid":{"type":"Group","id":"all"},"attrs":{},"parents":[]}"#.to_owned(),
        r#"{"uid":{"type":"Group","id":"admins"},"attrs":{},"parents":[{"type":"Group","id":"all"}]}"#.to_owned(),
    ];
    for g in 0..GROUPS {
        list.push(format!(
            r#"{{"uid":{{"type":"Group","id":"g{g}"}},"attrs":{{}},"parents":[{{"type":"Group","id":"all"}}]}}"#
        ));
    }
    for t in 0..10 {
        list.push(format!(
            r#"{{"uid":{{"type":"Team","id":"team{t}"}},"attrs":{{}},"parents":[]}}"#
        ));
    }
    for u in 0..USERS {
        let admin = if u % 25 == 3 {
            r#",{"type":"Group","id":"admins"}"#
        } else {
            ""
        };
        list.push(format!(
            r#"{{"uid":{{"type":"User","id":"u{u}"}},"attrs":{{"department":"d{}","level":{}}},"parents":[{{"type":"Group","id":"g{}"}}{admin}]}}"#,
            u % 8,
            u % 7,
            u % GROUPS
        ));
    }
    for i in 0..ITEMS {
        let classification = if i % 10 == 9 { "secret" } else { "public" };
        list.push(format!(
            r#"{{"uid":{{"type":"Item","id":"item{i}"}},"attrs":{{"owner":{{"__entity":{{"type":"User","id":"u{}"}}}},"classification":"{classification}"}},"parents":[{{"type":"Team","id":"team{}"}}]}}"#,
            i % USERS,
            i % 10
        ));
    }
    let _ = services;
    format!("[\n{}\n]\n", list.join(",\n"))
}

/// The `i`-th generated policy; `i` picks the shape, the service, user and group.
fn policy(i: usize, services: usize) -> String {
    let k = i % services;
    let user = i % USERS;
    let group = i % GROUPS;
    // Some permits name the top group, so that membership through nested groups counts.
    let members = if i % 12 == 1 {
        "all".to_owned()
    } else {
        format!("g{group}")
    };
    // A fixed handful of global guardrails (no action in their scope): they belong to every
    // slice, as in a real set.
    if matches!(i, 5 | 55 | 95) {
        return match i {
            5 => format!(
                "@id(\"p{i}\")\nforbid (principal is User, action, resource is Item)\nwhen {{ resource.classification == \"secret\" && !(principal has level && principal.level >= 5) }};\n"
            ),
            55 => format!(
                "@id(\"p{i}\")\nforbid (principal is Workload, action, resource)\nunless {{ principal.trust_domain == \"shop.example\" }};\n"
            ),
            _ => format!(
                "@id(\"p{i}\")\nforbid (principal, action, resource)\nwhen {{ context.request.headers.hasTag(\"x-block\") }};\n"
            ),
        };
    }
    // Colleagues (same department as the owner) may write: reads an attribute of an entity
    // reached through another entity's attribute.
    if i % 12 == 8 {
        return format!(
            "@id(\"p{i}\")\npermit (principal is User, action == Action::\"svc{k}:write\", resource is Item)\nwhen {{ resource has owner && resource.owner has department && principal has department && resource.owner.department == principal.department }};\n"
        );
    }
    match i % 6 {
        0 => format!(
            "@id(\"p{i}\")\npermit (principal == User::\"u{user}\", action == Action::\"svc{k}:read\", resource is Item);\n"
        ),
        1 => format!(
            "@id(\"p{i}\")\npermit (principal in Group::\"{members}\", action in [Action::\"svc{k}:list\", Action::\"svc{k}:read\"], resource)\nwhen {{ context.request.headers.hasTag(\"x-tenant\") && context.request.headers.getTag(\"x-tenant\") == \"t{}\" }};\n",
            i % 7
        ),
        2 => format!(
            "@id(\"p{i}\")\npermit (principal is User, action == Action::\"svc{k}:write\", resource is Item)\nwhen {{ resource has owner && resource.owner == principal && resource.owner has level && resource.owner.level >= 0 }};\n"
        ),
        3 => format!(
            "@id(\"p{i}\")\nforbid (principal, action == Action::\"svc{k}:delete\", resource)\nunless {{ principal in Group::\"admins\" }};\n"
        ),
        4 => format!(
            "@id(\"p{i}\")\npermit (principal is Service, action in [Action::\"svc{k}:list\", Action::\"svc{k}:read\"], resource)\nwhen {{ context has token && context.token.scope.contains(\"svc{k}.read\") }};\n"
        ),
        _ => format!(
            "@id(\"p{i}\")\npermit (principal in Group::\"g{group}\", action == Action::\"svc{k}:delete\", resource is Item)\nwhen {{ principal has department && principal.department == \"d{}\" && resource in Team::\"team{}\" }};\n",
            i % 8,
            i % 10
        ),
    }
}

fn policy_text(policies: usize, services: usize) -> String {
    (0..policies).map(|i| policy(i, services)).collect()
}

/// A verified token of the generated sets' user `u<user>`, member of group `g<user % GROUPS>`,
/// as the token cache hands one out (for benchmarks that decide without a key server).
pub fn token(user: usize) -> std::sync::Arc<crate::identity::VerifiedToken> {
    std::sync::Arc::new(crate::identity::VerifiedToken {
        issuer: "https://idp.test".into(),
        subject: format!("u{user}"),
        principal_type: "User".into(),
        group_type: "Group".into(),
        audience: vec!["orders".into()],
        scopes: Vec::new(),
        groups: vec![format!("g{}", user % GROUPS)],
        expires_at: i64::MAX,
        issued_at: None,
        claims: Default::default(),
        claims_json: Default::default(),
        cnf_x5t_s256: None,
        require_cert_binding: false,
        cedar: Default::default(),
        typed_claims: Default::default(),
    })
}
