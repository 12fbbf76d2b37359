//! `cedargate test`: runs policy test files (YAML, README "Writing and testing policies")
//! through the real Check stages against a policy directory. One line per case, the
//! expected/actual difference on failure, a final `N passed, M failed`, `--junit` for CI
//! systems, `--filter` to run some cases, `--coverage` for the policies no case exercised.
//! Exit code 1 when any case fails, when a file cannot be read or when no case ran (an empty
//! run proves nothing).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Deserialize;

use super::case::{Case, ExpectedOutcome};
use super::offline::{Offline, Settings};
use crate::api;
use crate::config::PolicySource;

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Test files, or directories: a policy directory runs the `*.yaml` files under its
    /// `tests/`, any other directory the `*.yaml` files under it. Default: `policies`.
    pub paths: Vec<PathBuf>,
    /// Policy directory for test files that do not name one with `policies:`.
    #[arg(long)]
    pub policies: Option<PathBuf>,
    /// Configuration whose issuers, authentication and peer settings the tests use (keys are
    /// replaced by an ephemeral test key).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Run only the cases whose name (or `file::name`) contains this text.
    #[arg(long)]
    pub filter: Option<String>,
    /// Also write the results as JUnit XML to this file.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Show the reason and determining policies of passing cases too.
    #[arg(long, short)]
    pub verbose: bool,
    /// List, per policy set, the policies that determined no case's decision.
    #[arg(long, conflicts_with = "format")]
    pub coverage: bool,
    /// `json`: one JSON document on stdout with every case's result and time (like
    /// `opa test --format=json`), instead of the text report.
    #[arg(long, value_parser = ["text", "json"], default_value = "text")]
    pub format: String,
}

/// A test file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    /// The policy directory, relative to the test file.
    #[serde(default)]
    policies: Option<PathBuf>,
    /// Token issuers the cases sign for, written as in the configuration's `issuers:` without
    /// `jwks`; default: those of `--config`, else one test issuer.
    #[serde(default)]
    issuers: Vec<yaml_serde::Value>,
    cases: Vec<Case>,
}

/// The result of one case.
#[derive(Debug)]
struct CaseResult {
    name: String,
    line: Option<usize>,
    elapsed: Duration,
    /// Empty when the case passed.
    failures: Vec<String>,
    /// What was decided, in one line (for `--verbose`).
    summary: String,
    /// The determining (or failing) policies.
    policies: Vec<String>,
}

/// The results of one file; `error` when it could not run at all.
#[derive(Debug)]
struct FileResult {
    path: PathBuf,
    error: Option<String>,
    cases: Vec<CaseResult>,
    /// The policy set the file ran against, and the ids of its policies.
    policy_set: Option<(String, Vec<String>)>,
}

pub fn run(args: TestArgs) -> ExitCode {
    let settings = match args
        .config
        .as_deref()
        .map(Settings::from_config)
        .transpose()
    {
        Ok(settings) => settings.unwrap_or_default(),
        Err(err) => {
            eprintln!("cedargate test: {err}");
            return ExitCode::FAILURE;
        }
    };
    let paths = if args.paths.is_empty() {
        vec![PathBuf::from("policies")]
    } else {
        args.paths.clone()
    };
    let files = match collect(&paths) {
        Ok(files) => files,
        Err(err) => {
            eprintln!("cedargate test: {err}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cedargate test: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let json = args.format == "json";
    let mut results = Vec::new();
    for (file, dir_hint) in files {
        // The command line's --policies, then the directory the path argument implies, then
        // the configuration's policy set.
        let hint = args
            .policies
            .clone()
            .or(dir_hint)
            .map(PolicySource::Dir)
            .or_else(|| settings.policies.clone());
        let result = runtime.block_on(run_file(&file, hint, &settings, args.filter.as_deref()));
        if !json {
            print_file(&result, args.verbose);
        }
        results.push(result);
    }
    if args.coverage {
        print_coverage(&results);
    }
    let passed = results
        .iter()
        .flat_map(|f| &f.cases)
        .filter(|c| c.failures.is_empty())
        .count();
    let failed = results
        .iter()
        .flat_map(|f| &f.cases)
        .filter(|c| !c.failures.is_empty())
        .count();
    let broken = results.iter().filter(|f| f.error.is_some()).count();
    if json {
        say!("{}", to_json(&results, passed, failed, broken));
    } else {
        let mut summary = format!("{passed} passed, {failed} failed");
        if broken > 0 {
            summary.push_str(&format!(", {broken} files with errors"));
        }
        say!("{summary}");
    }
    if let Some(path) = &args.junit
        && let Err(err) = write_junit(path, &results)
    {
        eprintln!("cedargate test: cannot write {}: {err}", path.display());
        return ExitCode::FAILURE;
    }
    if passed + failed == 0 && broken == 0 {
        eprintln!(
            "cedargate test: no test case ran{}",
            if args.filter.is_some() {
                " (nothing matches --filter)"
            } else {
                ""
            }
        );
        return ExitCode::FAILURE;
    }
    if failed > 0 || broken > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Test files and the policy directory their argument implies.
fn collect(paths: &[PathBuf]) -> Result<Vec<(PathBuf, Option<PathBuf>)>, String> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_file() {
            files.push((path.clone(), None));
        } else if path.is_dir() {
            let (root, hint) = if has_schema(path) {
                (path.join("tests"), Some(path.clone()))
            } else {
                (path.clone(), None)
            };
            let mut found = Vec::new();
            yaml_files(&root, &mut found)
                .map_err(|err| format!("{}: cannot read: {err}", root.display()))?;
            found.sort();
            if found.is_empty() {
                return Err(format!("{}: no *.yaml test files", root.display()));
            }
            files.extend(found.into_iter().map(|f| (f, hint.clone())));
        } else {
            return Err(format!("{}: no such file or directory", path.display()));
        }
    }
    Ok(files)
}

fn has_schema(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.path().extension().is_some_and(|x| x == "cedarschema"))
    })
}

fn yaml_files(dir: &Path, found: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            yaml_files(&path, found)?;
        } else if path.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            found.push(path);
        }
    }
    Ok(())
}

/// The policy set of a test file: its `policies:` key (relative to the file), else what the
/// command line or configuration says, else the parent of the file's directory or the file's
/// directory, whichever holds a schema.
fn policy_source(
    file: &Path,
    declared: Option<&Path>,
    hint: Option<PolicySource>,
) -> Option<PolicySource> {
    let base = file.parent().unwrap_or(Path::new("."));
    if let Some(declared) = declared {
        return Some(PolicySource::Dir(base.join(declared)));
    }
    hint.or_else(|| {
        [base.parent(), Some(base)]
            .into_iter()
            .flatten()
            .find(|dir| has_schema(dir))
            .map(|dir| PolicySource::Dir(dir.to_owned()))
    })
}

fn describe_source(source: &PolicySource) -> String {
    match source {
        PolicySource::Dir(dir) => dir.display().to_string(),
        PolicySource::Bundle(bundle) => bundle.path.display().to_string(),
        PolicySource::Embedded => "the compiled-in example set".into(),
    }
}

async fn run_file(
    path: &Path,
    hint: Option<PolicySource>,
    settings: &Settings,
    filter: Option<&str>,
) -> FileResult {
    let mut result = FileResult {
        path: path.to_owned(),
        error: None,
        cases: Vec::new(),
        policy_set: None,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) => {
            result.error = Some(format!("cannot read: {err}"));
            return result;
        }
    };
    let file: TestFile = match yaml_serde::from_str(&text) {
        Ok(file) => file,
        Err(err) => {
            let at = err
                .location()
                .map(|l| format!("{}:{}:{}: ", path.display(), l.line(), l.column()))
                .unwrap_or_default();
            result.error = Some(format!("{at}{err}"));
            return result;
        }
    };
    let lines = case_lines(&text);
    let names: Vec<String> = file
        .cases
        .iter()
        .enumerate()
        .map(|(index, case)| {
            case.name
                .clone()
                .unwrap_or_else(|| format!("case {}", index + 1))
        })
        .collect();
    if let Some((index, name)) = names
        .iter()
        .enumerate()
        .find(|(i, name)| names.iter().take(*i).any(|n| n == *name))
    {
        let at = lines.get(index).map_or(String::new(), |l| format!(":{l}"));
        result.error = Some(format!(
            "{}{at}: the case name `{name}` is used twice; give each case its own name",
            path.display()
        ));
        return result;
    }
    let Some(source) = policy_source(path, file.policies.as_deref(), hint) else {
        result.error = Some(
            "no policy directory: add `policies: <dir>` to the file or pass --policies".into(),
        );
        return result;
    };
    let issuers = if file.issuers.is_empty() {
        None
    } else {
        match crate::config::issuers_without_keys(file.issuers) {
            Ok(issuers) => Some(issuers),
            Err(err) => {
                result.error = Some(format!("{}: issuers: {err}", path.display()));
                return result;
            }
        }
    };
    // The entity types the cases give entities of are fetched in this file's run.
    let mut settings = settings.clone();
    for case in &file.cases {
        for entity in &case.entities {
            let uid = entity.get("uid");
            let uid = uid.and_then(|u| u.get("__entity")).or(uid);
            if let Some(ty) = uid
                .and_then(|u| u.get("type"))
                .and_then(serde_json::Value::as_str)
                && !settings.entity_types.iter().any(|t| t == ty)
            {
                settings.entity_types.push(ty.to_owned());
            }
        }
    }
    let offline = match Offline::new(&source, &settings, issuers) {
        Ok(offline) => offline,
        Err(err) => {
            result.error = Some(format!("policy set {}: {err}", describe_source(&source)));
            return result;
        }
    };
    for difference in offline.differences() {
        eprintln!("note: {}: {difference}", path.display());
    }
    let snapshot = offline.shared.snapshot.load();
    result.policy_set = Some((
        describe_source(&source),
        snapshot
            .policies
            .policies()
            .map(|p| p.id().to_string())
            .collect(),
    ));
    let base = path.parent().unwrap_or(Path::new("."));
    let stem = path.display().to_string();
    for ((index, case), name) in file.cases.iter().enumerate().zip(names) {
        if let Some(filter) = filter
            && !format!("{stem}::{name}").contains(filter)
        {
            continue;
        }
        let started = Instant::now();
        let ran = run_case(&offline, case, base).await;
        result.cases.push(CaseResult {
            name,
            line: lines.get(index).copied(),
            elapsed: started.elapsed(),
            failures: ran.failures,
            summary: ran.summary,
            policies: ran.policies,
        });
    }
    result
}

/// The line of each item of the top-level `cases:` list (block or flow style), in order.
fn case_lines(text: &str) -> Vec<usize> {
    let mut lines = text.lines().enumerate();
    if !lines.any(|(_, line)| line.trim_end() == "cases:") {
        return Vec::new();
    }
    let mut indent = None;
    let mut found = Vec::new();
    for (index, line) in lines {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let depth = line.len() - trimmed.len();
        if depth == 0 && !trimmed.starts_with('-') {
            break;
        }
        if trimmed.starts_with("- ") || trimmed == "-" {
            let level = *indent.get_or_insert(depth);
            if depth == level {
                found.push(index + 1);
            }
        }
    }
    found
}

/// One case's result: the differences (empty when it passed) and what was decided.
struct Ran {
    failures: Vec<String>,
    summary: String,
    policies: Vec<String>,
}

/// Decides one case and compares.
async fn run_case(offline: &Offline, case: &Case, base: &Path) -> Ran {
    let refused = |message: String| Ran {
        failures: vec![message],
        summary: String::new(),
        policies: Vec::new(),
    };
    let Some(expect) = &case.expect else {
        return refused(
            "the case has no `expect:` (allow, deny, unauthenticated or a mapping)".into(),
        );
    };
    let request = match case.build(base, Some(offline)) {
        Ok(request) => request,
        Err(err) => return refused(format!("cannot build the request: {err}")),
    };
    let explained = offline.explain_with(request, &case.entities).await;
    let response = api::explain_response(&explained, &offline.shared.options);
    let expect = expect.detailed();
    let actual = match api::outcome(&explained.decision) {
        api::pb::Outcome::Allow => ExpectedOutcome::Allow,
        api::pb::Outcome::Unauthenticated => ExpectedOutcome::Unauthenticated,
        _ => ExpectedOutcome::Deny,
    };
    let mut failures = Vec::new();
    let mut differ = |field: &str, expected: String, actual: String| {
        failures.push(format!(
            "- expected {field}: {expected}\n+ actual   {field}: {actual}"
        ));
    };
    if expect.decision != actual {
        differ(
            "decision",
            expect.decision.as_str().into(),
            format!("{} ({})", actual.as_str(), describe(&response)),
        );
    }
    // `deny` means denied by the policies; any other reason must be named.
    let reason = match (&expect.reason, expect.decision) {
        (Some(reason), _) => Some(reason.clone()),
        (None, ExpectedOutcome::Deny) => Some("policy_denied".to_owned()),
        (None, _) => None,
    };
    if let Some(reason) = reason
        && reason != response.reason
        && expect.decision == actual
    {
        differ("reason", reason, response.reason.clone());
    }
    if let Some(enforced) = expect.enforced
        && enforced != response.enforced
    {
        differ(
            "enforced",
            enforced.to_string(),
            response.enforced.to_string(),
        );
    }
    if let Some(policies) = &expect.policies {
        let mut expected = policies.clone();
        expected.sort();
        let mut actual_ids: Vec<String> = response
            .determining_policies
            .iter()
            .chain(response.errors.iter().map(|e| &e.policy_id))
            .cloned()
            .collect();
        actual_ids.sort();
        if expected != actual_ids {
            differ(
                "policies",
                format!("{expected:?}"),
                format!("{actual_ids:?}"),
            );
        }
    }
    if let Some(status) = expect.status
        && u32::from(status) != response.http_status
    {
        let actual = match response.http_status {
            0 => "none (allowed)".to_owned(),
            s => s.to_string(),
        };
        differ("status", status.to_string(), actual);
    }
    for (name, value) in &expect.headers {
        let found = response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.clone());
        if found.as_deref() != Some(value.as_str()) {
            differ(
                &format!("header {name}"),
                value.clone(),
                found.unwrap_or_else(|| "(absent)".into()),
            );
        }
    }
    Ran {
        failures,
        summary: describe(&response),
        policies: response
            .determining_policies
            .iter()
            .chain(response.errors.iter().map(|e| &e.policy_id))
            .cloned()
            .collect(),
    }
}

/// What was decided, in one line: reason, policies, the Cedar request.
fn describe(response: &api::pb::ExplainResponse) -> String {
    let mut parts = vec![format!("reason {}", response.reason)];
    if !response.determining_policies.is_empty() {
        parts.push(format!(
            "policies {}",
            response.determining_policies.join(", ")
        ));
    }
    if let Some(call) = &response.cedar_request {
        parts.push(format!(
            "{} {} {}",
            call.principal, call.action, call.resource
        ));
    }
    if !response.message.is_empty() && response.reason != "allow" {
        parts.push(response.message.clone());
    }
    parts.join("; ")
}

/// The `--format json` report: totals, then each file with its cases (name, line, pass or
/// the failures, what was decided, the determining policies, the time in milliseconds).
fn to_json(results: &[FileResult], passed: usize, failed: usize, broken: usize) -> String {
    let files: Vec<serde_json::Value> = results
        .iter()
        .filter(|f| !f.cases.is_empty() || f.error.is_some())
        .map(|f| {
            let cases: Vec<serde_json::Value> = f
                .cases
                .iter()
                .map(|c| {
                    serde_json::json!({
                        "name": c.name,
                        "line": c.line,
                        "passed": c.failures.is_empty(),
                        "failures": c.failures,
                        "decided": c.summary,
                        "policies": c.policies,
                        "duration_ms": c.elapsed.as_secs_f64() * 1000.0,
                    })
                })
                .collect();
            serde_json::json!({
                "file": f.path.display().to_string(),
                "error": f.error,
                "cases": cases,
            })
        })
        .collect();
    serde_json::json!({
        "passed": passed,
        "failed": failed,
        "files_with_errors": broken,
        "files": files,
    })
    .to_string()
}

fn print_file(result: &FileResult, verbose: bool) {
    // A file none of whose cases `--filter` selected has nothing to show.
    if result.cases.is_empty() && result.error.is_none() {
        return;
    }
    say!("{}", result.path.display());
    if let Some(err) = &result.error {
        say!("  ERROR {err}");
    }
    for case in &result.cases {
        if case.failures.is_empty() {
            if verbose {
                say!("  ok    {}  [{}]", case.name, case.summary);
            } else {
                say!("  ok    {}", case.name);
            }
        } else {
            let at = case
                .line
                .map(|l| format!(" ({}:{l})", result.path.display()))
                .unwrap_or_default();
            say!("  FAIL  {}{at}", case.name);
            for failure in &case.failures {
                for line in failure.lines() {
                    say!("        {line}");
                }
            }
        }
    }
}

/// Per policy set: the policies that determined (or failed) no case's decision.
fn print_coverage(results: &[FileResult]) {
    let mut sets: BTreeMap<&str, (BTreeSet<&str>, BTreeSet<&str>)> = BTreeMap::new();
    for result in results {
        let Some((name, ids)) = &result.policy_set else {
            continue;
        };
        let (all, seen) = sets.entry(name.as_str()).or_default();
        all.extend(ids.iter().map(String::as_str));
        seen.extend(
            result
                .cases
                .iter()
                .flat_map(|c| &c.policies)
                .map(String::as_str),
        );
    }
    for (name, (all, seen)) in sets {
        let missed: Vec<&str> = all.difference(&seen).copied().collect();
        let covered = all.len() - missed.len();
        say!(
            "coverage of {name}: {covered} of {} policies determined a decision{}",
            all.len(),
            if missed.is_empty() {
                String::new()
            } else {
                format!("; never: {}", missed.join(", "))
            }
        );
    }
}

fn write_junit(path: &Path, results: &[FileResult]) -> Result<(), String> {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    let mut report = Report::new("cedargate test");
    for file in results {
        let mut suite = TestSuite::new(file.path.display().to_string());
        if let Some(err) = &file.error {
            let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
            status.set_message(err.clone());
            suite.add_test_case(TestCase::new("load", status));
        }
        for case in &file.cases {
            let status = if case.failures.is_empty() {
                TestCaseStatus::success()
            } else {
                let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
                status.set_message(
                    case.failures
                        .first()
                        .and_then(|f| f.lines().next())
                        .unwrap_or_default()
                        .to_owned(),
                );
                status.set_description(case.failures.join("\n"));
                status
            };
            let mut test_case = TestCase::new(case.name.clone(), status);
            test_case.set_classname(file.path.display().to_string());
            test_case.set_time(case.elapsed);
            suite.add_test_case(test_case);
        }
        report.add_test_suite(suite);
    }
    let file = std::fs::File::create(path).map_err(|e| e.to_string())?;
    report.serialize(file).map_err(|e| e.to_string())
}
