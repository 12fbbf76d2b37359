//! `cedargate validate`: loads a policy directory exactly as `serve` does (policies strictly
//! against the schema, entities, routes, the context every action must accept) and, with
//! `--config`, checks the configuration and that its issuers' principal types are in the
//! schema. Prints every problem with file:line:column, policy id and hint, then the warnings
//! (policies that can never apply). Exit code 0 when the set would load, 1 when not.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use serde_json::{Value, json};

use crate::config::{Config, PolicySource};
use crate::policy::store::Problem;
use crate::policy::{PolicyLoadError, Snapshot};

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Policy directory (default: `policies.dir` of `--config`, else `./policies`).
    #[arg(long)]
    pub policies: Option<PathBuf>,
    /// Also validate this configuration file and its issuers against the schema.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// `text` for people, `json` for tools.
    #[arg(long, value_parser = ["text", "json"], default_value = "text")]
    pub format: String,
    /// Warnings fail the validation too.
    #[arg(long)]
    pub strict: bool,
}

/// What validation found.
#[derive(Debug, Default)]
pub struct Report {
    pub dir: PathBuf,
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
    /// Set when the policy set loaded.
    pub summary: Option<Summary>,
}

#[derive(Debug)]
pub struct Summary {
    pub version: String,
    pub policies: usize,
    pub routes: usize,
}

pub fn run(args: ValidateArgs) -> ExitCode {
    let report = validate(args.policies.as_deref(), args.config.as_deref());
    let failed = !report.errors.is_empty() || (args.strict && !report.warnings.is_empty());
    if args.format == "json" {
        say!("{}", to_json(&report, !failed));
    } else {
        print_text(&report, failed);
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Validates a policy directory (and optionally a configuration) without serving.
pub fn validate(policies: Option<&Path>, config_path: Option<&Path>) -> Report {
    let mut report = Report::default();
    let config = match config_path.map(Config::load).transpose() {
        Ok(config) => config,
        Err(err) => {
            let file = config_path.unwrap_or(Path::new("?"));
            report.errors.push(config_problem(file, &err));
            // Without --policies, the policy set is the configuration's: nothing to validate
            // (not ./policies, which the summary would then call invalid). The summary names
            // no file: the error above did.
            if policies.is_none() {
                return report;
            }
            None
        }
    };
    // What serve would load: --policies, else the configuration's policy set (its directory,
    // or the compiled-in example set when it names none), else ./policies.
    let source = match (policies, config.as_ref().map(|c| &c.policies)) {
        (Some(path), _) if crate::policy::bundle::is_bundle(path) => {
            PolicySource::Bundle(crate::config::BundleSource {
                path: path.to_owned(),
                public_key: None,
                allow_rollback: false,
                remote: None,
            })
        }
        (Some(dir), _) => PolicySource::Dir(dir.to_owned()),
        (None, Some(source)) => source.clone(),
        (None, None) => PolicySource::Dir(PathBuf::from("policies")),
    };
    report.dir = match &source {
        PolicySource::Dir(dir) => dir.clone(),
        PolicySource::Bundle(bundle) => bundle.path.clone(),
        PolicySource::Embedded => PathBuf::from("(compiled-in example set)"),
    };
    let snapshot = match crate::app::load_policies(&source) {
        Ok(snapshot) => snapshot,
        Err(PolicyLoadError::Invalid { problems }) => {
            report.errors.extend(problems);
            return report;
        }
        Err(err @ PolicyLoadError::Read { .. }) => {
            report.errors.push(
                Problem::in_file(&report.dir, err.to_string())
                    .hint("pass the directory that holds the *.cedar files with --policies"),
            );
            return report;
        }
    };
    if let (Some(config), Some(path)) = (&config, config_path) {
        check_issuers(config, path, &snapshot, &mut report.errors);
    }
    report.warnings.clone_from(&snapshot.warnings);
    report.summary = Some(Summary {
        version: snapshot.version.to_string(),
        policies: snapshot.policies.policies().count(),
        routes: snapshot.routes.actions().count(),
    });
    report
}

/// A configuration error, positioned where the YAML parser could say.
fn config_problem(file: &Path, err: &crate::config::ConfigError) -> Problem {
    let mut problem = Problem::in_file(file, err.to_string());
    // The problem names the file already: the error's own `<path>: ` prefix would repeat it.
    let prefix = format!("{}: ", file.display());
    if let Some(message) = problem.message.strip_prefix(&prefix) {
        problem.message = message.to_owned();
    }
    if let crate::config::ConfigError::Parse {
        line,
        column,
        message,
        ..
    } = err
    {
        problem.position = Some((*line, *column));
        problem.message.clone_from(message);
        problem.hint = Some(
            "correct the YAML; every field is listed in README.md, section Configuration".into(),
        );
    }
    problem
}

/// The start-up check of `serve`: every issuer's principal type (and group type, when it
/// asserts groups) is an entity type of the schema.
fn check_issuers(config: &Config, path: &Path, snapshot: &Snapshot, errors: &mut Vec<Problem>) {
    if let Some((issuer, missing)) =
        crate::reload::IssuerTypes::of(&config.issuers).missing(snapshot)
    {
        errors.push(
            Problem::in_file(
                path,
                format!("issuer `{issuer}`: `{missing}` (its principal_type or group_type) is not an entity type of the schema"),
            )
            .hint("declare the entity type in the schema or change the issuer's principal_type or group_type"),
        );
    }
}

/// Problems go to stderr, like a compiler's; the verdict of a valid set to stdout, of an
/// invalid one to stderr. (`--format json` writes the whole report to stdout.)
fn print_text(report: &Report, failed: bool) {
    for problem in &report.errors {
        eprintln!("error: {problem}");
    }
    for problem in &report.warnings {
        eprintln!("warning: {problem}");
    }
    let warnings = counted(report.warnings.len(), "warning");
    match &report.summary {
        Some(s) if !failed => say!(
            "{}: valid ({}, {}, version {}; {warnings})",
            report.dir.display(),
            counted(s.policies, "policy"),
            counted(s.routes, "route"),
            s.version,
        ),
        // The configuration did not load (its error names the file): nothing else was read.
        _ if report.dir.as_os_str().is_empty() => eprintln!(
            "invalid ({}, {warnings})",
            counted(report.errors.len(), "error"),
        ),
        _ => eprintln!(
            "{}: invalid ({}, {warnings})",
            report.dir.display(),
            counted(report.errors.len(), "error"),
        ),
    }
}

/// `1 error`, `2 errors`; `1 policy`, `2 policies`.
fn counted(n: usize, word: &str) -> String {
    match (n, word.strip_suffix('y')) {
        (1, _) => format!("{n} {word}"),
        (_, Some(stem)) => format!("{n} {stem}ies"),
        (_, None) => format!("{n} {word}s"),
    }
}

fn problem_json(problem: &Problem) -> Value {
    json!({
        "file": problem.file.display().to_string(),
        "line": problem.position.map(|p| p.0),
        "column": problem.position.map(|p| p.1),
        "policy_id": problem.policy_id,
        "message": problem.message,
        "hint": problem.hint,
    })
}

fn to_json(report: &Report, valid: bool) -> Value {
    json!({
        "valid": valid,
        // null when the configuration did not load and no directory was read.
        "dir": (!report.dir.as_os_str().is_empty()).then(|| report.dir.display().to_string()),
        "version": report.summary.as_ref().map(|s| s.version.clone()),
        "policies": report.summary.as_ref().map(|s| s.policies),
        "errors": report.errors.iter().map(problem_json).collect::<Vec<_>>(),
        "warnings": report.warnings.iter().map(problem_json).collect::<Vec<_>>(),
    })
}
