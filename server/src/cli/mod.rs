//! Command-line arguments and dispatch.

mod bench;
mod image;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "kura", version, about = "Kura: bare-metal system image backup and restore")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Disk images in a local store (offline mode, no server).
    #[command(subcommand)]
    Image(ImageCommand),
    /// Benchmark the imaging pipeline against partclone+zstd on a generated test disk.
    Bench(bench::BenchArgs),
}

#[derive(Args)]
struct StoreArgs {
    /// The local store directory (created on first capture).
    #[arg(long, value_name = "DIR")]
    store: PathBuf,
    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Capture a disk (block device or image file) into the store; prints the snapshot id.
    Capture {
        /// Block device or disk image file to read (only read, never written).
        source: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
        /// A name for the snapshot.
        #[arg(long)]
        name: Option<String>,
        /// The host the disk belongs to.
        #[arg(long)]
        host: Option<String>,
        /// Worker threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// List the snapshots in the store.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Show one snapshot: partition table, filesystems, used bytes.
    Show {
        snapshot: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Restore a snapshot onto a block device or image file (a missing file is created).
    Restore {
        /// Snapshot id (or a unique prefix).
        snapshot: String,
        /// Block device or image file to write.
        target: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Re-read and re-hash every chunk of one snapshot (or of all); report damage.
    Verify {
        snapshot: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        threads: Option<usize>,
    },
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Image(cmd) => match cmd {
            ImageCommand::Capture { source, store, name, host, threads } => {
                image::capture(&source, &store.store, store.json, name, host, threads)
            }
            ImageCommand::List { store } => image::list(&store.store, store.json),
            ImageCommand::Show { snapshot, store } => image::show(&snapshot, &store.store, store.json),
            ImageCommand::Restore { snapshot, target, store, threads } => {
                image::restore(&snapshot, &target, &store.store, store.json, threads)
            }
            ImageCommand::Verify { snapshot, store, threads } => {
                image::verify(snapshot.as_deref(), &store.store, store.json, threads)
            }
        },
        Command::Bench(args) => bench::run(args),
    }
}
