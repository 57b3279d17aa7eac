//! `wg-agent`: parse the command line, install tracing, load the config, call the library.
//! Exit codes: 0 success, 1 runtime failure, 2 bad configuration or usage.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod cli;
mod man;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    // Usage errors exit 2 through clap; --help and --version exit 0.
    let args = cli::Cli::parse();
    cli::execute(args)
}
