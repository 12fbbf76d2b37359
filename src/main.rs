//! The `cedargate` binary: parse the command line and dispatch. All logic is in the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    cedargate::app::install_crypto_provider();
    cedargate::cli::run(cedargate::cli::Cli::parse())
}
