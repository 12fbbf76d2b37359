//! The command line: `cedargate serve`, and the policy author's tools `validate`, `test` and
//! `check`. Parses arguments and dispatches; each subcommand lives in its own module, and
//! `case`/`offline` hold what `test` and `check` share (a request as an author writes it, and
//! an authorizer that decides without a server).

/// Writes a line to stdout; a closed pipe (`cedargate test | head`) ends the output quietly
/// instead of panicking as `println!` would.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

pub mod bundle;
pub mod case;
pub mod check;
pub mod offline;
pub mod replay;
pub mod serve;
pub mod test;
pub mod validate;

use clap::{Parser, Subcommand};

/// External authorizer for Envoy and Istio: ext_authz gRPC decided by Cedar policies.
#[derive(Debug, Parser)]
#[command(name = "cedargate", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve Envoy's ext_authz Check API (gRPC) and the admin listener.
    Serve(serve::ServeArgs),
    /// Validate a policy directory (and a configuration) exactly as `serve` would load it.
    Validate(validate::ValidateArgs),
    /// Run policy test files (YAML) through the real Check stages.
    Test(test::TestArgs),
    /// Decide one request and show why (offline, or through a server's Explain API).
    Check(Box<check::CheckArgs>),
    /// Build, inspect and sign policy bundles.
    Bundle(bundle::BundleArgs),
    /// Decide recorded checks again against a policy set and show what would change.
    Replay(replay::ReplayArgs),
}

/// Runs the parsed command; returns the process exit code.
pub fn run(cli: Cli) -> std::process::ExitCode {
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Validate(args) => validate::run(args),
        Command::Test(args) => test::run(args),
        Command::Check(args) => check::run(*args),
        Command::Replay(args) => replay::run(args),
        Command::Bundle(args) => bundle::run(args),
    }
}
