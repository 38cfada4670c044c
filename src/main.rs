//! volguard's entry point: parse the command line, set up logging, run the command, and
//! turn its outcome into the exit code promised by the CLI contract.

use clap::Parser;
use tracing_subscriber::EnvFilter;
use volguard::cli::Cli;
use volguard::error::{Error, exit};

fn main() {
    let cli = Cli::parse();
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("VOLGUARD_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let code = match volguard::cmd::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("volguard: error: {e}");
            match e {
                Error::Usage(_) => exit::USAGE,
                _ => exit::ERROR,
            }
        }
    };
    std::process::exit(code);
}
