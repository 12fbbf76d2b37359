//! `cedargate replay`: decides recorded checks (`records:` files) again against a policy set
//! and prints what would change: allow → deny and deny → allow, by action and by determining
//! policy, with example request ids. Compared with the outcomes the records carry, or with a
//! `--baseline` set. Exit code 0 when nothing changed, 1 when something did (a CI gate), 2
//! when the records or the policies cannot be read.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::record::replay::{Changes, Replay, Report};
use crate::record::{Record, RecordError};

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Records files (JSON lines, as `records.path` and its rotated files hold them).
    #[arg(long, num_args = 1.., required = true)]
    pub records: Vec<PathBuf>,
    /// The policy set to decide the records with: a directory or a bundle (`.tar.gz`).
    #[arg(long)]
    pub policies: PathBuf,
    /// Compare with this policy set's decisions (a directory or a bundle) instead of the
    /// recorded ones.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Bundles must be signed by this public key (PEM).
    #[arg(long)]
    pub public_key: Option<PathBuf>,
    /// `text` for people, `json` for tools.
    #[arg(long, value_parser = ["text", "json"], default_value = "text")]
    pub format: String,
}

/// Why a replay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: {source}", path.display())]
    Record {
        path: PathBuf,
        line: usize,
        #[source]
        source: RecordError,
    },
    #[error("{}: {source}", path.display())]
    Policies {
        path: PathBuf,
        #[source]
        source: crate::policy::PolicyLoadError,
    },
}

pub fn run(args: ReplayArgs) -> ExitCode {
    match replay(&args) {
        Ok(report) => {
            if args.format == "json" {
                say!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                print_text(&report, &args);
            }
            if report.any_change() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(err) => {
            eprintln!("cedargate replay: {err}");
            ExitCode::from(2)
        }
    }
}

/// Loads the sets and decides every record of every file, in order.
pub fn replay(args: &ReplayArgs) -> Result<Report, ReplayError> {
    let load = |path: &PathBuf| {
        let loaded = if crate::policy::bundle::is_bundle(path) {
            crate::policy::bundle::load(&crate::config::BundleSource {
                path: path.clone(),
                public_key: args.public_key.clone(),
                allow_rollback: true,
                remote: None,
            })
            .map(|opened| opened.snapshot)
            .map_err(|err| err.into_load_error(path))
        } else {
            crate::policy::store::load_dir(path)
        };
        loaded.map_err(|source| ReplayError::Policies {
            path: path.clone(),
            source,
        })
    };
    let policies = load(&args.policies)?;
    let baseline = args.baseline.as_ref().map(load).transpose()?;
    let mut replay = Replay::new(&policies, baseline.as_ref());
    for path in &args.records {
        let read = |source| ReplayError::Read {
            path: path.clone(),
            source,
        };
        let file = std::io::BufReader::new(std::fs::File::open(path).map_err(read)?);
        for (index, line) in file.lines().enumerate() {
            let line = line.map_err(read)?;
            if line.trim().is_empty() {
                continue;
            }
            let at = |source| ReplayError::Record {
                path: path.clone(),
                line: index + 1,
                source,
            };
            let record = Record::parse(&line).map_err(at)?;
            replay.decide(&record).map_err(at)?;
        }
    }
    Ok(replay.report)
}

fn print_text(report: &Report, args: &ReplayArgs) {
    let against = match &args.baseline {
        Some(baseline) => format!(
            "the decisions of {} (version {})",
            baseline.display(),
            report.baseline_version.as_deref().unwrap_or("?")
        ),
        None => "the recorded decisions".to_owned(),
    };
    say!(
        "replayed {} records against {} (version {}), compared with {against}",
        report.records,
        args.policies.display(),
        report.version
    );
    say!("unchanged: {}", report.unchanged);
    say!("changed:   {}", report.changed.total());
    if report.inexact > 0 {
        say!(
            "inexact:   {} (the policies could read a value these records left out: a credential, a redacted name, a body; e.g. {})",
            report.inexact,
            report
                .inexact_examples
                .iter()
                .map(|(id, what)| format!("{id} ({what})"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !report.any_change() {
        return;
    }
    print_changes("  ", &report.changed);
    say!("by action:");
    for (action, changes) in &report.by_action {
        say!("  {action}");
        print_changes("    ", changes);
    }
    say!("by determining policy:");
    for (policy, changes) in &report.by_policy {
        say!("  {policy}");
        print_changes("    ", changes);
    }
}

fn print_changes(indent: &str, changes: &Changes) {
    for (change, ids) in &changes.examples {
        let count = match change {
            crate::record::replay::Change::AllowToDeny => changes.allow_to_deny,
            crate::record::replay::Change::DenyToAllow => changes.deny_to_allow,
            crate::record::replay::Change::DenyReason => changes.deny_reason,
            crate::record::replay::Change::Policies => changes.policies,
        };
        say!(
            "{indent}{}: {count} (e.g. {})",
            change.label(),
            ids.join(", ")
        );
    }
}
