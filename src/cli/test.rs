//! `cedargate test`: runs policy test files (YAML, README "Writing and testing policies")
//! through the real Check stages against a policy directory. One line per case, the
//! expected/actual difference on failure, a final `N passed, M failed`, `--junit` for CI
//! systems, `--filter` to run some cases. Exit code 1 when any case fails, when a file cannot
//! be read or when no case ran (an empty run proves nothing).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Deserialize;

use super::case::{Case, ExpectedOutcome};
use super::offline::{Offline, Settings, TestIssuer};
use crate::api;

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
}

/// A test file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    /// The policy directory, relative to the test file.
    #[serde(default)]
    policies: Option<PathBuf>,
    /// Token issuers the cases sign for; default: those of `--config`, else one test issuer.
    #[serde(default)]
    issuers: Vec<TestIssuer>,
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
}

/// The results of one file; `error` when it could not run at all.
#[derive(Debug)]
struct FileResult {
    path: PathBuf,
    error: Option<String>,
    cases: Vec<CaseResult>,
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
    let fallback_dir = args.policies.clone().or(settings.policies.clone());
    let mut results = Vec::new();
    for (file, dir_hint) in files {
        let policy_hint = fallback_dir.clone().or(dir_hint);
        let result = runtime.block_on(run_file(
            &file,
            policy_hint.as_deref(),
            &settings,
            args.filter.as_deref(),
        ));
        print_file(&result);
        results.push(result);
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
    let mut summary = format!("{passed} passed, {failed} failed");
    if broken > 0 {
        summary.push_str(&format!(", {broken} files with errors"));
    }
    println!("{summary}");
    if let Some(path) = &args.junit
        && let Err(err) = write_junit(path, &results)
    {
        eprintln!("cedargate test: cannot write {}: {err}", path.display());
        return ExitCode::FAILURE;
    }
    if passed + failed == 0 {
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

/// The policy directory of a test file: its `policies:` key, else the directory the command
/// line implies, else the parent of the file's directory or the file's directory, whichever
/// holds a schema.
fn policy_dir(file: &Path, declared: Option<&Path>, hint: Option<&Path>) -> Option<PathBuf> {
    let base = file.parent().unwrap_or(Path::new("."));
    if let Some(declared) = declared {
        return Some(base.join(declared));
    }
    if let Some(hint) = hint {
        return Some(hint.to_owned());
    }
    [base.parent(), Some(base)]
        .into_iter()
        .flatten()
        .find(|dir| has_schema(dir))
        .map(Path::to_owned)
}

async fn run_file(
    path: &Path,
    hint: Option<&Path>,
    settings: &Settings,
    filter: Option<&str>,
) -> FileResult {
    let mut result = FileResult {
        path: path.to_owned(),
        error: None,
        cases: Vec::new(),
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) => {
            result.error = Some(format!("cannot read: {err}"));
            return result;
        }
    };
    let file: TestFile = match serde_yaml::from_str(&text) {
        Ok(file) => file,
        Err(err) => {
            let at = err
                .location()
                .map(|l| format!("{}:{}: ", l.line(), l.column()))
                .unwrap_or_default();
            result.error = Some(format!("{at}{err}"));
            return result;
        }
    };
    let Some(dir) = policy_dir(path, file.policies.as_deref(), hint) else {
        result.error = Some(
            "no policy directory: add `policies: <dir>` to the file or pass --policies".into(),
        );
        return result;
    };
    let offline = match Offline::new(&dir, settings, &file.issuers) {
        Ok(offline) => offline,
        Err(err) => {
            result.error = Some(format!("policy directory {}: {err}", dir.display()));
            return result;
        }
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let stem = path.display().to_string();
    for (index, case) in file.cases.iter().enumerate() {
        let name = case
            .name
            .clone()
            .unwrap_or_else(|| format!("case {}", index + 1));
        if let Some(filter) = filter
            && !format!("{stem}::{name}").contains(filter)
        {
            continue;
        }
        let line = case_line(&text, case.name.as_deref());
        let started = Instant::now();
        let failures = run_case(&offline, case, base).await;
        result.cases.push(CaseResult {
            name,
            line,
            elapsed: started.elapsed(),
            failures,
        });
    }
    result
}

/// The line of a case's `name:` in the file, for `file:line` in failures.
fn case_line(text: &str, name: Option<&str>) -> Option<usize> {
    let name = name?;
    text.lines()
        .position(|line| {
            let line = line.trim_start().trim_start_matches("- ").trim_start();
            line.strip_prefix("name:")
                .is_some_and(|rest| rest.trim().trim_matches(|c| c == '"' || c == '\'') == name)
        })
        .map(|i| i + 1)
}

/// Decides one case and compares; the differences, empty when it passed.
async fn run_case(offline: &Offline, case: &Case, base: &Path) -> Vec<String> {
    let Some(expect) = &case.expect else {
        return vec![
            "the case has no `expect:` (allow, deny, unauthenticated or a mapping)".into(),
        ];
    };
    let request = match case.build(base, Some(offline)) {
        Ok(request) => request,
        Err(err) => return vec![format!("cannot build the request: {err}")],
    };
    let explained = offline.explain(request).await;
    let response = api::explain_response(&explained, &offline.shared.options.secret_headers);
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
    if let Some(reason) = &expect.reason
        && *reason != response.reason
    {
        differ("reason", reason.clone(), response.reason.clone());
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
    failures
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

fn print_file(result: &FileResult) {
    println!("{}", result.path.display());
    if let Some(err) = &result.error {
        println!("  ERROR {err}");
    }
    for case in &result.cases {
        if case.failures.is_empty() {
            println!("  ok    {}", case.name);
        } else {
            let at = case
                .line
                .map(|l| format!(" ({}:{l})", result.path.display()))
                .unwrap_or_default();
            println!("  FAIL  {}{at}", case.name);
            for failure in &case.failures {
                for line in failure.lines() {
                    println!("        {line}");
                }
            }
        }
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
