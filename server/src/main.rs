//! `kura`: the command-line front end. Offline mode (`kura image ...`) works on a local store
//! directory with no server.
//!
//! Error policy for the binary: library errors are wrapped with `anyhow` context naming what was
//! being done; `main` prints the whole chain on one line as `error: ...` and exits with status 1.

mod api;
mod boot_policy;
mod boot_test;
mod cli;
mod datadir;
mod engine;
mod files;
mod mount;
mod nbd;
mod notify;
mod power;
mod progress_bar;
mod replication;
mod replication_forward;
mod replication_pull;
mod scheduler;
mod serve;
mod snapshot_disk;

use clap::Parser;
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("KURA_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        // A log line that cannot be written (stderr's reader is gone) is dropped: reporting
        // that failure would go to the same stderr with eprintln!, which panics.
        .log_internal_errors(false)
        .init();
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, skipping a cause whose text the message already holds
/// (library errors often include their source's text in their own).
fn chain(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if !msg.contains(&s) {
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(&s);
        }
    }
    msg
}
