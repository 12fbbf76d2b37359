//! Loads a policy set: `*.cedar` policies, one `*.cedarschema` schema, optional `entities.json`
//! and `routes.yaml`, from a directory or from the example set compiled into the binary.
//!
//! Everything is validated before a [`Snapshot`] exists: policies strictly against the schema,
//! entities against the schema, routes against the schema's actions and entity types, and every
//! action's context type against the context cedargate builds. Problems are reported together,
//! each with file, line and column where the source has them, the policy id and a hint. A
//! snapshot is immutable; reloading builds a new one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy::{Entities, PolicyId, PolicySet, Schema};
use miette::Diagnostic;

use super::mapping;
pub use super::problem::Problem;
use super::routes::Routes;

/// A policy set ready to serve: validated, immutable, shared by every Check.
#[derive(Debug)]
pub struct Snapshot {
    pub policies: PolicySet,
    pub schema: Schema,
    pub entities: Entities,
    pub routes: Routes,
    /// Which file each policy came from.
    pub policy_files: HashMap<PolicyId, PathBuf>,
    /// Content hash of the files (first 12 hex digits of a SHA-256 over names and texts):
    /// the policy set version in metrics, logs and answers.
    pub version: std::sync::Arc<str>,
    /// The same hash over the files that are not policies (schema, entities, routes): two
    /// sets with the same frame differ only in their policies.
    pub frame: std::sync::Arc<str>,
    /// What does not stop the set from loading but is probably a mistake: Cedar's validator
    /// warnings (a policy that can never apply, confusable identifiers) and policies whose
    /// actions no request can reach. `cedargate validate` prints them; `serve` logs them.
    pub warnings: Vec<Problem>,
    /// The policies indexed by action, principal type and resource type.
    pub slices: super::slices::Slices,
    /// The schema's actions and `appliesTo`, precomputed for the hot path.
    pub index: super::index::SchemaIndex,
    /// What each static entity refers to, to build a Check's entity store.
    pub graph: super::index::EntityGraph,
    /// The context paths and tag names the policies can read: all a check builds.
    pub reads: super::reads::Reads,
    /// The `Path::` ids the set names, to refuse a fallback path that differs only by case.
    pub path_literals: super::index::PathLiterals,
    /// The tag names the policies read, as lenient upstreams read names.
    pub lenient_names: super::reads::LenientNames,
    /// Unique per snapshot in this process: the key of parts cached for it elsewhere (a
    /// token's principal entities), so that a reload is never served the previous set's.
    pub id: u64,
    /// The bytes the tokens' decision caches may hold: the server gives every snapshot it
    /// installs its one budget (`limits.decision_cache_bytes`); a snapshot used on its own
    /// (the CLI, tests) has its own, of the default size.
    pub decisions: std::sync::Arc<super::decisions::Budget>,
}

/// The next snapshot id.
fn next_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// One file of a policy set, read into memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
}

/// Why a policy set could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyLoadError {
    #[error("{}: cannot read the policy directory: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("policy set is invalid:\n{}", problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid { problems: Vec<Problem> },
}

/// The example policy set from `policies/`, compiled in for `cedargate serve` without a config.
const EMBEDDED: &[(&str, &str)] = &[
    (
        "policies/orders.cedar",
        include_str!("../../policies/orders.cedar"),
    ),
    (
        "policies/schema.cedarschema",
        include_str!("../../policies/schema.cedarschema"),
    ),
    (
        "policies/entities.json",
        include_str!("../../policies/entities.json"),
    ),
    (
        "policies/routes.yaml",
        include_str!("../../policies/routes.yaml"),
    ),
];

/// The set in force before a bundle server has first answered: no policy, so nothing is
/// allowed (and checks are denied before it is even asked, see `Shared::has_policy_set`).
pub fn placeholder() -> Result<Snapshot, PolicyLoadError> {
    load_files(vec![SourceFile {
        path: PathBuf::from("(no policy set yet).cedarschema"),
        text: "entity HttpHeaders tags String;\nentity HttpQuery tags String;\nentity PathParams tags String;\nentity TokenClaims tags String;\nentity Workload { trust_domain: String };\n".to_owned(),
    }])
}

/// Loads the example policy set compiled into the binary.
pub fn load_embedded() -> Result<Snapshot, PolicyLoadError> {
    load_files(
        EMBEDDED
            .iter()
            .map(|(path, text)| SourceFile {
                path: PathBuf::from(path),
                text: (*text).to_owned(),
            })
            .collect(),
    )
}

/// The content hash of a policy set: independent of the directory it was read from.
fn version_of(files: &[SourceFile]) -> std::sync::Arc<str> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let mut named: Vec<_> = files
        .iter()
        .map(|f| (f.path.file_name().unwrap_or_default(), &f.text))
        .collect();
    named.sort();
    for (name, text) in named {
        hasher.update(name.as_encoded_bytes());
        hasher.update([0]);
        hasher.update(text.len().to_le_bytes());
        hasher.update(text.as_bytes());
    }
    let digest = hasher.finalize();
    digest
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .into()
}

/// Reads the policy files directly in `dir` (not below it) and loads them.
pub fn load_dir(dir: &Path) -> Result<Snapshot, PolicyLoadError> {
    load_files(read_dir(dir)?)
}

/// Reads the policy files directly in `dir` (not below it), sorted by path. A directory
/// without policy files, or with an empty one, is refused: an empty file is what an editor
/// or a copy leaves while it writes (a truncated forbid must not be a policy change), so a
/// file's policies are removed by deleting the file, never by emptying it.
pub fn read_dir(dir: &Path) -> Result<Vec<SourceFile>, PolicyLoadError> {
    let read_err = |path: &Path| {
        let path = path.to_owned();
        move |source| PolicyLoadError::Read { path, source }
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err(dir))? {
        let path = entry.map_err(read_err(dir))?.path();
        if path.is_file() && kind(&path).is_some() {
            let text = std::fs::read_to_string(&path).map_err(read_err(&path))?;
            files.push(SourceFile { path, text });
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    if files.is_empty() {
        return Err(PolicyLoadError::Invalid {
            problems: vec![
                Problem::in_file(dir, "no policy files here")
                    .hint("put *.cedar policies and one *.cedarschema schema in this directory"),
            ],
        });
    }
    let empty: Vec<Problem> = files
        .iter()
        .filter(|f| f.text.trim().is_empty())
        .map(|f| {
            Problem::in_file(&f.path, "the file is empty").hint(
                "an empty file is taken for one being written, not for a change; delete the file to remove what it held",
            )
        })
        .collect();
    if !empty.is_empty() {
        return Err(PolicyLoadError::Invalid { problems: empty });
    }
    Ok(files)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Policies,
    Schema,
    Entities,
    Routes,
}

fn kind(path: &Path) -> Option<Kind> {
    let name = path.file_name()?.to_str()?;
    match name {
        "entities.json" => Some(Kind::Entities),
        "routes.yaml" | "routes.yml" => Some(Kind::Routes),
        _ if name.ends_with(".cedarschema") => Some(Kind::Schema),
        _ if name.ends_with(".cedar") => Some(Kind::Policies),
        _ => None,
    }
}

/// Loads a policy set from files in memory; see the module docs for what is checked.
pub fn load_files(files: Vec<SourceFile>) -> Result<Snapshot, PolicyLoadError> {
    let version = version_of(&files);
    let frame = version_of(
        &files
            .iter()
            .filter(|f| kind(&f.path) != Some(Kind::Policies))
            .cloned()
            .collect::<Vec<_>>(),
    );
    let of_kind = |k: Kind| files.iter().filter(move |f| kind(&f.path) == Some(k));
    let mut problems = Vec::new();

    let schemas: Vec<_> = of_kind(Kind::Schema).collect();
    let schema = match schemas.as_slice() {
        [file] => parse_schema(file, &mut problems),
        [] => {
            let dir = files
                .first()
                .and_then(|f| f.path.parent())
                .unwrap_or(Path::new("."));
            problems.push(Problem::in_file(dir, "no `*.cedarschema` file").hint(
                "cedargate validates every policy against a schema; add one (see policies/schema.cedarschema)",
            ));
            None
        }
        [_, second, ..] => {
            problems.push(
                Problem::in_file(&second.path, "a second schema file")
                    .hint("keep exactly one *.cedarschema file per policy directory"),
            );
            None
        }
    };

    let (claims, body) = match (&schema, schemas.as_slice()) {
        (Some(_), [file]) => declared_records(file, &mut problems),
        _ => (None, None),
    };
    let (policies, policy_files) = parse_policies(of_kind(Kind::Policies), &mut problems);
    let Some(schema) = schema else {
        return Err(PolicyLoadError::Invalid { problems });
    };

    // Typechecked by the actions each scope admits: the same diagnostics as Cedar's
    // validator on the whole set, without typechecking every policy for every action.
    let schema_json = schemas
        .first()
        .and_then(|file| super::shapes::json_form(&file.text).ok());
    let validation = super::validation::validate(&schema, schema_json.as_ref(), &policies);
    let in_policy = |diag: &dyn Diagnostic, id: &PolicyId| {
        let file = policy_files.get(id);
        let text = file
            .and_then(|f| files.iter().find(|s| &s.path == f))
            .map(|s| s.text.as_str());
        let mut problem =
            diagnostic_problem(diag, file.map_or(Path::new("?"), PathBuf::as_path), text);
        problem.policy_id = Some(id.to_string());
        problem
    };
    for err in validation.errors() {
        problems.push(in_policy(err, err.policy_id()));
    }
    let mut warnings: Vec<Problem> = validation
        .warnings()
        .map(|warning| in_policy(warning, warning.policy_id()))
        .collect();

    // Parsed with the schema, the store also holds the schema's action entities, which
    // `action in Action::"group"` needs; without an entities file it holds only those.
    let entities_file = of_kind(Kind::Entities).next();
    let entities = Entities::from_json_str(
        entities_file.map_or("[]", |f| f.text.as_str()),
        Some(&schema),
    )
    .unwrap_or_else(|err| {
        let path = entities_file.map_or(Path::new("entities.json"), |f| f.path.as_path());
        problems.push(diagnostic_problem(&err, path, None));
        Entities::empty()
    });

    // `routes.yaml` and `routes.yml` together: which one is meant? Refused, not guessed.
    let route_files: Vec<&SourceFile> = of_kind(Kind::Routes).collect();
    if let [_, second, ..] = route_files.as_slice() {
        problems.push(
            Problem::in_file(&second.path, "a second routes file")
                .hint("keep one of routes.yaml and routes.yml"),
        );
    }
    let routes = match route_files.first() {
        Some(file) => Routes::parse(&file.path, &file.text, &schema).unwrap_or_else(|mut p| {
            problems.append(&mut p);
            Routes::default()
        }),
        None => Routes::default(),
    };

    let schema_file = schemas
        .first()
        .map_or(PathBuf::from("?"), |f| f.path.clone());
    if let Some(err) = mapping::check_entity_shapes(&schema, claims.is_some()) {
        problems.push(
            Problem::in_file(&schema_file, format!("the entities cedargate builds per request do not fit the schema: {err}")).hint(
                "declare HttpHeaders, HttpQuery, PathParams and TokenClaims with `tags String`, and Workload with `trust_domain: String`, as policies/schema.cedarschema does",
            ),
        );
    }
    let facts = mapping::supported_facts(&schema, claims.as_ref());
    // Without any set of optional facts that fits, the errors of the plain context are shown.
    for (action, err) in mapping::check_schema(&schema, facts.unwrap_or_default(), claims.as_ref())
    {
        problems.push(
            Problem::in_file(&schema_file, format!("action `{action}`: {err}")).hint(
                "declare the context and the helper entity types cedargate builds, as policies/schema.cedarschema does (README: Cedar mapping)",
            ),
        );
    }

    if problems.is_empty() {
        for (id, actions) in unreachable_policies(&policies, &entities, &routes) {
            let file = policy_files.get(&id).cloned().unwrap_or_default();
            let text = files
                .iter()
                .find(|s| s.path == file)
                .map(|s| s.text.as_str());
            let offset = text.and_then(|t| t.find(&format!("@id(\"{id}\")")));
            let mut warning = match text {
                Some(text) => located(
                    offset,
                    &file,
                    text,
                    format!("no request can reach this policy's action ({actions})"),
                ),
                None => Problem::in_file(&file, "no request can reach this policy's action"),
            };
            warning.policy_id = Some(id.to_string());
            warning.hint = Some(
                "map the action in routes.yaml, or name it in an Envoy route's context_extensions `cedargate.action` (then ignore this warning)".into(),
            );
            warnings.push(warning);
        }
        let slices = super::slices::Slices::build(&policies, &schema, &entities);
        let index = super::index::SchemaIndex::build(&schema);
        let graph = super::index::EntityGraph::build(&entities, &policies);
        let path_literals =
            super::index::PathLiterals::build(&entities, &policies, mapping::PATH_TYPE);
        // Decoded, so that an escaped type name (`Http\u0048eaders`) is seen as what it is.
        let static_entities = entities
            .to_json_value()
            .map_or_else(|_| mapping::HELPER_TYPES.join(" "), |v| v.to_string());
        let applies_to: std::collections::HashSet<String> = schema
            .actions()
            .flat_map(|action| {
                let principals = schema.principals_for_action(action).into_iter().flatten();
                let resources = schema.resources_for_action(action).into_iter().flatten();
                principals.chain(resources).map(ToString::to_string)
            })
            .collect();
        let facts = facts.unwrap_or_default();
        let reads = super::reads::Reads::of(&policies, &mapping::HELPER_TYPES, |helper| {
            applies_to.contains(helper) || static_entities.contains(helper)
        })
        .with_facts(facts)
        .with_claims(claims)
        .with_body(body);
        // A policy that names an optional fact the schema declares otherwise (`ip: String`)
        // would compare against a value cedargate never builds: refused, not left to deny.
        let misdeclared = [
            (
                ["peer", "ip"].as_slice(),
                facts.peer_ip,
                "in the peer record: `ip?: ipaddr`",
            ),
            (
                ["destination"].as_slice(),
                facts.destination,
                "in the context: `destination?: { address: String, principal: String, ip?: ipaddr, port?: Long }`",
            ),
            (
                ["request", "extensions"].as_slice(),
                facts.extensions,
                "in the request record, with its type: `extensions: ContextExtensions` and `entity ContextExtensions tags String;`",
            ),
            (
                ["request", "route_metadata"].as_slice(),
                facts.route_metadata,
                "in the request record, with its type: `route_metadata: RouteMetadata` and `entity RouteMetadata tags String;`",
            ),
        ];
        let misdeclared: Vec<Problem> = misdeclared
            .into_iter()
            .filter(|(path, supported, _)| !supported && reads.names(path))
            .map(|(path, _, declare)| {
                Problem::in_file(
                    &schema_file,
                    format!("a policy reads `context.{}`, which this schema does not declare as cedargate builds it", path.join(".")),
                )
                .hint(format!("declare it {declare}, as policies/schema.cedarschema does"))
            })
            .collect();
        if !misdeclared.is_empty() {
            return Err(PolicyLoadError::Invalid {
                problems: misdeclared,
            });
        }
        Ok(Snapshot {
            lenient_names: super::reads::LenientNames::of(&reads),
            reads,
            path_literals,
            id: next_id(),
            decisions: std::sync::Arc::new(super::decisions::Budget::new(
                crate::config::Limits::default().decision_cache_bytes,
            )),
            policies,
            schema,
            entities,
            routes,
            policy_files,
            version,
            frame,
            warnings,
            slices,
            index,
            graph,
        })
    } else {
        Err(PolicyLoadError::Invalid { problems })
    }
}

/// Policies whose action scope matches no action a request can be mapped to without Envoy's
/// help: the route table's actions and the HTTP-method fallback actions (`Action::"GET"`).
fn unreachable_policies(
    policies: &PolicySet,
    entities: &Entities,
    routes: &Routes,
) -> Vec<(PolicyId, String)> {
    let is_method = |uid: &cedar_policy::EntityUid| {
        let id = uid.id().unescaped();
        !id.is_empty() && id.bytes().all(|b| b.is_ascii_uppercase())
    };
    let actions_in_schema = entities
        .iter()
        .map(cedar_policy::Entity::uid)
        .filter(|uid| uid.type_name().basename() == "Action");
    let reachable: Vec<cedar_policy::EntityUid> = routes
        .actions()
        .cloned()
        .chain(actions_in_schema.filter(is_method))
        .collect();
    let reaches = |target: &cedar_policy::EntityUid| {
        reachable.iter().any(|action| {
            action == target
                || entities
                    .ancestors(action)
                    .is_some_and(|mut a| a.any(|p| p == target))
        })
    };
    policies
        .policies()
        .filter_map(|policy| {
            let targets = match policy.action_constraint() {
                cedar_policy::ActionConstraint::Any => return None,
                cedar_policy::ActionConstraint::Eq(uid) => vec![uid],
                cedar_policy::ActionConstraint::In(uids) => uids,
            };
            if targets.iter().any(reaches) {
                return None;
            }
            let shown = targets
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            Some((policy.id().clone(), shown))
        })
        .collect()
}

fn parse_schema(file: &SourceFile, problems: &mut Vec<Problem>) -> Option<Schema> {
    match Schema::from_cedarschema_str(&file.text) {
        Ok((schema, warnings)) => {
            for warning in warnings {
                tracing::warn!(file = %file.path.display(), %warning, "schema warning");
            }
            Some(schema)
        }
        Err(err) => {
            problems.push(diagnostic_problem(&err, &file.path, Some(&file.text)));
            None
        }
    }
}

/// The records the schema declares for `context.token.claims` (typed claims; `None` for the
/// tag form or a schema without claims) and `context.request.body` (`None`: bodies are not
/// read); a declaration cedargate cannot build is a problem.
fn declared_records(file: &SourceFile, problems: &mut Vec<Problem>) -> (Shared, Shared) {
    use super::shapes::{DeclarationError, Declared, declaration_offset, declared_at, json_form};
    let mut problem = |err: DeclarationError, what: &str, near: &str, hint: &str| {
        // The field's declaration, else the record's, for the position.
        let offset = err
            .field
            .as_deref()
            .and_then(|field| declaration_offset(&file.text, field))
            .or_else(|| declaration_offset(&file.text, near));
        let mut problem = located(offset, &file.path, &file.text, format!("{what}: {err}"));
        problem.hint = Some(hint.to_owned());
        problems.push(problem);
    };
    let json = match json_form(&file.text) {
        Ok(json) => json,
        // Cedar's own parse error is reported by `parse_schema`.
        Err(_) => return (None, None),
    };
    let claims = match declared_at(&json, &["token", "claims"]) {
        Ok(Declared::Record(record)) => Some(std::sync::Arc::new(record)),
        Ok(Declared::Entity(_) | Declared::Absent) => None,
        Err(err) => {
            problem(
                err,
                "typed claims",
                "claims",
                "declare the claims as a record of String, Long, Bool, Set<…> and records of these (`claims: { tenant?: String, roles?: Set<String> }`), or as `claims: TokenClaims` with `entity TokenClaims tags String;` (README: Typed claims)",
            );
            None
        }
    };
    let body_hint = "declare the body in the request record as an optional record of String, Long, Bool, Set<…> and records of these: `body?: { amount?: Long, currency?: String }` (README: Request bodies)";
    let body = match declared_at(&json, &["request", "body"]) {
        Ok(Declared::Record(record)) => Some(std::sync::Arc::new(record)),
        Ok(Declared::Absent) => None,
        Ok(Declared::Entity(name)) => {
            let err = DeclarationError {
                message: format!("`context.request.body` is declared as entity {name}"),
                field: None,
            };
            problem(err, "request body", "body", body_hint);
            None
        }
        Err(err) => {
            problem(err, "request body", "body", body_hint);
            None
        }
    };
    (claims, body)
}

/// A declared record, shared by the snapshot's reads.
type Shared = Option<std::sync::Arc<super::shapes::Record>>;

/// Parses every policy file; ids come from `@id("…")` or else `<file name>#<index>`.
fn parse_policies<'a>(
    files: impl Iterator<Item = &'a SourceFile>,
    problems: &mut Vec<Problem>,
) -> (PolicySet, HashMap<PolicyId, PathBuf>) {
    let mut set = PolicySet::new();
    let mut origin: HashMap<PolicyId, PathBuf> = HashMap::new();
    for file in files {
        let parsed = match PolicySet::from_str(&file.text) {
            Ok(parsed) => parsed,
            Err(errors) => {
                for err in errors.iter() {
                    problems.push(diagnostic_problem(err, &file.path, Some(&file.text)));
                }
                continue;
            }
        };
        let name = file
            .path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        for (index, policy) in parsed.policies().enumerate() {
            let id = PolicyId::new(
                policy
                    .annotation("id")
                    .map_or_else(|| format!("{name}#{index}"), str::to_owned),
            );
            if let Some(previous) = origin.get(&id) {
                let offset = file.text.find(&format!("@id(\"{id}\")"));
                let mut problem = located(
                    offset,
                    &file.path,
                    &file.text,
                    format!("policy id `{id}` is already used in {}", previous.display()),
                );
                problem.hint = Some("give each policy a unique @id(\"…\")".into());
                problems.push(problem);
                continue;
            }
            if let Err(err) = set.add(policy.new_id(id.clone())) {
                problems.push(Problem::in_file(&file.path, err.to_string()));
                continue;
            }
            origin.insert(id, file.path.clone());
        }
    }
    (set, origin)
}

/// A problem from a Cedar diagnostic: its message and help, positioned at its first label.
fn diagnostic_problem(diag: &dyn Diagnostic, file: &Path, text: Option<&str>) -> Problem {
    let offset = diag
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|label| label.offset());
    let mut problem = match text {
        Some(text) => located(offset, file, text, diag.to_string()),
        None => Problem::in_file(file, diag.to_string()),
    };
    problem.hint = diag.help().map(|h| h.to_string());
    problem
}

fn located(offset: Option<usize>, file: &Path, text: &str, message: String) -> Problem {
    let mut problem = Problem::in_file(file, message);
    problem.position = offset.map(|offset| line_column(text, offset));
    problem
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_placeholder_set_loads_and_allows_nothing() {
        let snapshot = placeholder().unwrap();
        assert_eq!(snapshot.policies.policies().count(), 0);
    }

    #[test]
    fn line_column_counts_from_one() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_column("ab", 99), (1, 3));
    }

    #[test]
    fn the_example_set_loads() {
        let snapshot = load_embedded().unwrap();
        assert!(snapshot.policies.policies().count() >= 4);
    }
}
