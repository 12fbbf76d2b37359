//! The command line: `cedargate serve` (and, later, validate, test, check). Parses arguments
//! and dispatches; each subcommand lives in its own module.

pub mod serve;

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
}

/// Runs the parsed command; returns the process exit code.
pub fn run(cli: Cli) -> std::process::ExitCode {
    match cli.command {
        Command::Serve(args) => serve::run(args),
    }
}
