//! `kura`: the command-line front end. Offline mode (`kura image ...`) works on a local store
//! directory with no server.
//!
//! Error policy for the binary: library errors are wrapped with `anyhow` context naming what was
//! being done; `main` prints the whole chain on one line as `error: ...` and exits with status 1.

mod cli;
mod progress_bar;
mod target;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("KURA_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
