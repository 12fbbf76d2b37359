//! The `cedargate` binary: parse the command line and dispatch. All logic is in the library.

use clap::Parser;

/// mimalloc instead of the system allocator: Cedar allocates a lot per check (entities,
/// values, hash maps), and glibc's malloc loses time when one runtime worker frees what
/// another allocated. Measured in BENCHMARKS.md ("Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cedargate::app::install_crypto_provider();
    cedargate::cli::run(cedargate::cli::Cli::parse())
}
