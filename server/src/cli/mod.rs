//! Command-line arguments and dispatch.
//!
//! `kura image ...` works against a local store (`--store DIR`, offline) or an engine
//! (`--server URL`); `kura serve` runs the engine; the other commands talk to an engine.

mod bench;
mod boot_test;
mod bootenv;
mod bootenv_report;
mod engine;
mod export;
mod files;
mod image;
mod jobs;
mod nbd;
mod netboot;
mod notify;
mod power;
mod replication;
mod routes;
mod schedule;
mod tokens;

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
    /// Disk images: capture, restore, list, verify (local store or engine).
    #[command(subcommand)]
    Image(ImageCommand),
    /// Run the engine: HTTP API, chunk store and catalog under one data directory.
    Serve(ServeArgs),
    /// List snapshots on the engine.
    Snapshots {
        #[arg(long)]
        host: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// One snapshot on the engine.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Queue a capture of HOST, run at the machine's next PXE boot: every disk of the machine
    /// (several disks make one snapshot set) unless --disks narrows it.
    Capture {
        host: String,
        /// Disk to capture, alone (old form of --disks with one name).
        #[arg(long, conflicts_with = "disks")]
        disk: Option<String>,
        /// Disks to capture, by kernel name, separated by commas (vda,vdb).
        #[arg(long)]
        disks: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Queue a restore of HOST (its newest confirmed snapshot unless --snapshot), run at its
    /// next PXE boot.
    Restore {
        host: String,
        #[arg(long)]
        snapshot: Option<String>,
        /// Allow a snapshot held unconfirmed after an unusual boot (`kura serve
        /// --hold-unusual-captures`); without --snapshot, take the newest even if unconfirmed.
        #[arg(long)]
        allow_unconfirmed: bool,
        /// Target disk of a one-disk snapshot (default: the machine's only disk).
        #[arg(long)]
        disk: Option<String>,
        /// Map a snapshot set's disks onto the machine's: SRC=DST pairs by kernel name,
        /// separated by commas (sda=nvme0n1,sdb=none); the rest is mapped by WWN/serial,
        /// position and size. The agent logs the mapping before it writes anything.
        #[arg(long)]
        map: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List jobs; --watch shows live progress bars until none is queued or running.
    Jobs {
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List hosts on the engine.
    Hosts {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// One host's settings on the engine.
    #[command(subcommand)]
    Host(HostCommand),
    /// API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Scheduled captures of a host or a group (cron, UTC).
    #[command(subcommand)]
    Schedule(schedule::ScheduleCommand),
    /// Re-read and re-hash every chunk on the engine; quarantine damaged ones.
    Verify {
        /// Only this snapshot.
        snapshot: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
        /// Boot the snapshot in a throwaway QEMU machine on the engine host instead, and
        /// record the verdict on it (docs/boot-test.md).
        #[arg(long, requires = "snapshot")]
        boot: bool,
        /// With --boot: a console text that also means the system came up (repeatable).
        #[arg(long, value_name = "TEXT", requires = "boot")]
        expect: Vec<String>,
        /// With --boot: the test machine's firmware (default: as the snapshot's layout says).
        #[arg(long, value_enum, requires = "boot")]
        firmware: Option<crate::boot_test::Firmware>,
        /// With --boot: the test's time limit, seconds.
        #[arg(long, default_value_t = 900)]
        timeout: u64,
        /// With --boot: seconds of console silence that fail the test.
        #[arg(long, default_value_t = 180)]
        stall: u64,
    },
    /// Set and apply retention: delete the snapshots a keep-last / keep-monthly rule does not
    /// keep (never a host's newest). Without --keep-*, applies the rules already set.
    Retention {
        #[arg(long, conflicts_with = "group")]
        host: Option<String>,
        #[arg(long)]
        group: Option<String>,
        #[arg(long)]
        keep_last: Option<u32>,
        #[arg(long)]
        keep_monthly: Option<u32>,
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Garbage-collect chunks no snapshot references.
    Gc {
        /// Keep chunks younger than this many seconds.
        #[arg(long, default_value_t = 3600)]
        grace: u64,
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Administration on the engine's data directory (run on the engine's machine).
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Notifications (webhooks, e-mail) on job failures and schedule runs (admin only).
    #[command(subcommand)]
    Notify(notify::NotifyCommand),
    /// Remote engines (DR sites) this engine copies snapshots to (admin only; docs/dr.md).
    #[command(subcommand)]
    Remote(replication::RemoteCommand),
    /// Replication rules: which hosts' snapshots go to which remote (admin only; docs/dr.md).
    #[command(subcommand)]
    Replicate(replication::ReplicateCommand),
    /// Network boot (PXE/iPXE) services of the engine.
    #[command(subcommand)]
    Netboot(netboot::NetbootCommand),
    /// The netboot image: `kura bootenv build` makes the kernel and initramfs served to machines.
    #[command(subcommand)]
    Bootenv(bootenv::BootenvCommand),
    /// Export a snapshot's whole disk read-only over NBD (for qemu, qemu-img, nbd-client),
    /// reading chunks as they are asked for; runs until killed.
    Nbd {
        /// Snapshot id (or, with --store, a unique prefix).
        snapshot: String,
        #[command(flatten)]
        at: Location,
        /// unix:PATH, or a loopback ADDRESS:PORT (port 0: any free port).
        #[arg(long, default_value = nbd::DEFAULT_LISTEN, value_parser = nbd::parse_listen)]
        listen: nbd::ListenAddr,
    },
    /// Mount a snapshot's disk and partitions as read-only files DIR/disk, DIR/part1, ... (a
    /// snapshot set's as DIR/disk0, DIR/disk0-part1, DIR/disk1, ...) (FUSE; root), to loop-mount
    /// with the kernel's drivers; until `umount DIR` (docs/files.md).
    Mount {
        /// Snapshot id (or, with --store, a unique prefix).
        snapshot: String,
        /// An empty directory to mount on.
        dir: PathBuf,
        #[command(flatten)]
        at: Location,
    },
    /// A snapshot's files, read in place without restoring or mounting (ext4, NTFS, FAT):
    /// ls, get, find, diff; from a local store or an engine.
    #[command(subcommand)]
    Files(files::FilesCommand),
    /// Benchmark the imaging pipeline against partclone+zstd on a generated test disk.
    Bench(bench::BenchArgs),
    /// Write snapshots of a store to an offline archive (a file, a tape, or stdout), whole or
    /// incremental to a previous export (docs/dr.md).
    Export(export::ExportArgs),
    /// Load an offline archive into a store or an engine's data directory (every chunk verified).
    Import(export::ImportArgs),
}

#[derive(Args)]
pub struct ServeArgs {
    /// Data directory (store, catalog, TLS certificate, first admin token).
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// The catalog: a PostgreSQL URL, postgres://USER@HOST/DB (see "More than one server" in
    /// the README). Default: the SQLite file DIR/catalog.db.
    #[arg(long, value_name = "URL", env = "KURA_CATALOG")]
    pub catalog: Option<String>,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub listen: std::net::SocketAddr,
    /// Serve plain HTTP instead of HTTPS (only on a trusted, isolated network).
    #[arg(long)]
    pub insecure_http: bool,
    /// PEM certificate to use instead of the self-signed one.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Also run the netboot services (proxyDHCP or DHCP, TFTP, boot HTTP) with this JSON
    /// configuration.
    #[arg(long, value_name = "CONFIG.json")]
    pub netboot: Option<PathBuf>,
    /// Fail a running job whose agent has sent nothing (progress, log, chunks) for this many
    /// seconds: a network cut or a dead machine ends as a clear failure.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub agent_timeout: u64,
    /// At most this many capture jobs released by schedules queued or running at once, all
    /// schedules together (each schedule also has its own cap).
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub max_concurrent_jobs: u32,
    /// After downtime, the newest missed due time of a schedule is still run if it is younger
    /// than this (e.g. 90m, 6h, 1d); older ones are recorded as missed.
    #[arg(long, default_value = "6h", value_parser = parse_duration_arg, value_name = "DURATION")]
    pub schedule_catch_up: i64,
    /// Hold the snapshot of a capture whose netboot was unusual (its token requested twice,
    /// from another address, …: a possible impostor on the boot network) unconfirmed until an
    /// operator accepts it with `kura snapshot confirm ID`; restores do not pick it by default.
    #[arg(long)]
    pub hold_unusual_captures: bool,
    /// Keep chunks and manifests in an S3-compatible bucket instead of DATA/store:
    /// s3://BUCKET/PREFIX[?endpoint=URL&region=R&path_style=true&credentials=FILE]
    /// (credentials: FILE of mode 0600, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY). Recorded
    /// in DATA/store.spec at the first start; later starts may omit it.
    #[arg(long, value_name = "SPEC")]
    pub store: Option<String>,
    /// Size bound of the local chunk cache of an S3 store (DATA/cache), e.g. 20G.
    #[arg(long, default_value = "10G", value_parser = parse_disk_size, value_name = "SIZE")]
    pub cache_size: u64,
    /// Several engine nodes on one S3 store and PostgreSQL catalog: an upload session's writer
    /// lease in the catalog lasts this long unrenewed (renewed every third of it); a node
    /// silent for longer is treated as dead and its uploads' protection from garbage
    /// collection ends. Node clocks must agree to well within GC's grace period (NTP).
    #[arg(long, default_value = "5m", value_parser = parse_duration_arg, value_name = "DURATION")]
    pub writer_lease: i64,
    /// Tests: read the current time (RFC 3339 UTC) from FILE at every use.
    #[arg(long, hide = true, value_name = "FILE")]
    pub test_clock: Option<PathBuf>,
    /// Tests: time between scheduler ticks, in milliseconds.
    #[arg(long, hide = true, default_value_t = 10_000)]
    pub scheduler_tick_ms: u64,
}

fn parse_duration_arg(s: &str) -> Result<i64, String> {
    crate::scheduler::parse_duration(s)
}

/// How to reach an engine.
#[derive(Args, Clone)]
pub struct ServerArgs {
    /// Engine URL, e.g. https://kura.backup.lan:8443.
    #[arg(long, env = "KURA_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// API token.
    #[arg(long, env = "KURA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// SHA-256 fingerprint of the engine's certificate (printed by `kura serve`).
    #[arg(long, env = "KURA_FINGERPRINT")]
    pub fingerprint: Option<String>,
    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Where images live: a local store directory, or an engine.
#[derive(Args)]
struct Location {
    /// A store: a local directory, or s3://BUCKET/PREFIX[?…] as for `kura serve --store`
    /// (offline mode; created on first capture).
    #[arg(long, value_name = "DIR", conflicts_with = "server")]
    store: Option<PathBuf>,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Capture a disk (block device or image file); prints the new snapshot's id. With
    /// --server, several disks of one host are captured as one snapshot set.
    Capture {
        /// Block device or disk image file to read (only read, never written); with --server,
        /// more than one: a snapshot set of the host's disks, in this order.
        #[arg(required = true, num_args = 1..)]
        source: Vec<PathBuf>,
        #[command(flatten)]
        at: Location,
        /// A name for the snapshot.
        #[arg(long)]
        name: Option<String>,
        /// The host the disk belongs to (required with --server).
        #[arg(long)]
        host: Option<String>,
        /// Worker threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
        /// With --server: capture for queued or running capture job ID (e.g. one a schedule
        /// queued, for a machine captured outside netboot): the job starts, and succeeds with
        /// the commit; the host is the job's.
        #[arg(long, value_name = "ID", conflicts_with = "store")]
        job: Option<i64>,
        /// Store every changed chunk whole, not as patches on the previous snapshot's chunks
        /// (the two-level scheme of docs/chunk.md; the previous snapshot is the store's newest of
        /// the same host or source, or with --server the host's latest): a snapshot that shares
        /// no patch with the ones before it.
        #[arg(long)]
        full: bool,
    },
    /// List the snapshots in a local store.
    List {
        #[command(flatten)]
        at: Location,
    },
    /// Show one snapshot: partition table, filesystems, used bytes; a snapshot set (an engine's,
    /// a host's several disks) disk by disk, each with its identity and own snapshot id.
    Show {
        snapshot: String,
        #[command(flatten)]
        at: Location,
    },
    /// Restore a snapshot onto a block device or image file (a missing file is created).
    Restore {
        /// Snapshot id (or, with --store, a unique prefix).
        snapshot: String,
        /// Block device or image file to write.
        target: PathBuf,
        #[command(flatten)]
        at: Location,
        /// Restore from offline archives instead (files, or `-` for stdin): a full export and
        /// its incrementals; no engine or store needed.
        #[arg(long, value_name = "PATH", conflicts_with_all = ["store", "server"])]
        archive: Vec<PathBuf>,
        /// Decompressing threads (default: all cores; against an engine, downloads in flight come on top).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Derive a new snapshot that fits a smaller disk: the last partition and its filesystem
    /// (ext2/3/4 or NTFS) shrink to end before SIZE, the GPT is rewritten for SIZE. The source
    /// snapshot is only read; data that does not fit is refused before anything is written.
    Fit {
        /// Snapshot id (or, with --store, a unique prefix).
        snapshot: String,
        /// The smaller disk's size in bytes (or with a suffix: 1G, 800M, 1.5GiB).
        #[arg(long, value_parser = parse_disk_size)]
        size: u64,
        #[command(flatten)]
        at: Location,
        /// A name for the new snapshot (default: "<source name or id> fit to SIZE").
        #[arg(long)]
        name: Option<String>,
        /// Directory for the scratch copy (about the snapshot's used bytes; default: the
        /// system's temporary directory).
        #[arg(long)]
        scratch: Option<PathBuf>,
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Re-read and re-hash every chunk of one snapshot (or of all) of a local store. With
    /// --boot: boot the snapshot in a throwaway QEMU machine here instead (nothing restored,
    /// nothing written to the store) and report whether it came up.
    Verify {
        snapshot: Option<String>,
        #[command(flatten)]
        at: Location,
        #[arg(long)]
        threads: Option<usize>,
        /// Boot test instead of the chunk check.
        #[arg(long, requires = "snapshot")]
        boot: bool,
        #[command(flatten)]
        boot_args: boot_test::BootArgs,
    },
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Accept a snapshot held unconfirmed after an unusual boot (operator; audited): restores
    /// may then pick it.
    Confirm {
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Delete a snapshot (admin; its chunks go at the next `kura gc`). Refused while S3 Object
    /// Lock retains it, naming the retention date.
    Delete {
        id: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Subcommand)]
enum HostCommand {
    /// Power control: how Kura gets the machine into netboot when a job is queued for it
    /// (Wake-on-LAN, Redfish, IPMI); `kura host power HOST pxe-reset|on|off` acts now.
    Power(Box<power::PowerArgs>),
    /// Change a host's settings: `--secure-boot on|off|auto|default` is the boot chain of its
    /// UEFI netboots (`default`: the netboot configuration's "secure_boot"); `--add-mac` and
    /// `--remove-mac` change the MAC addresses it netboots from (a replacement machine, a
    /// second NIC).
    #[command(group(clap::ArgGroup::new("change").required(true).multiple(true).args(["secure_boot", "add_mac", "remove_mac"])))]
    Set {
        host: String,
        #[arg(long, value_parser = ["on", "off", "auto", "default"])]
        secure_boot: Option<String>,
        /// Add this MAC address (repeatable); refused when another host has it.
        #[arg(long, value_name = "MAC")]
        add_mac: Vec<String>,
        /// Remove this MAC address (repeatable).
        #[arg(long, value_name = "MAC")]
        remove_mac: Vec<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create an API token (admin only); it is printed once.
    Create {
        /// admin, operator, replica (a token for a primary engine that copies its snapshots
        /// here: it may add chunks and snapshots, never delete or overwrite), or reader (a
        /// token for a DR engine that pulls snapshots from here: it may read them and report
        /// its copies, nothing else); docs/dr.md.
        #[arg(long, value_parser = ["admin", "operator", "replica", "reader"])]
        role: String,
        /// A note saying what the token is for (shown by `kura token list`).
        #[arg(long, alias = "label", default_value = "cli")]
        note: String,
        /// The user the token belongs to (default: named after the role).
        #[arg(long)]
        user: Option<String>,
        /// When the token stops working: a lifetime (30d, 12h, 90m) or an RFC 3339 time
        /// (2027-01-31T00:00:00Z). Default: never.
        #[arg(long, value_parser = tokens::parse_expires, value_name = "DURATION|TIME")]
        expires: Option<tokens::Expires>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List API tokens (admin only): id, role, user, note, created, last used, expiry, state.
    /// Secrets are never shown: the engine keeps only their hashes.
    List {
        /// Also list the agent tokens of jobs.
        #[arg(long)]
        agents: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Revoke a token (admin only): it and the browser sessions made from it stop at once.
    Revoke {
        id: i64,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Replace the bootstrap admin token: revoke it and write a new one to DIR/admin.token.
    /// Run on the engine's machine, as the user that runs `kura serve` (no API token needed).
    RotateAdmin {
        /// The engine's data directory.
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// The catalog: a PostgreSQL URL, postgres://USER@HOST/DB (see "More than one server" in
        /// the README). Default: the SQLite file DIR/catalog.db.
        #[arg(long, value_name = "URL", env = "KURA_CATALOG")]
        catalog: Option<String>,
        /// The admin user the new token belongs to (created if missing).
        #[arg(long, default_value = "admin")]
        user: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Rebuild the catalog's snapshot list from the store (the store is the source of truth).
    RebuildCatalog {
        /// The engine's data directory.
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// The engine's S3 store, if it is not recorded in DATA/store.spec (see `kura serve`).
        #[arg(long, value_name = "SPEC")]
        store: Option<String>,
        /// The catalog: a PostgreSQL URL, postgres://USER@HOST/DB (see "More than one server" in
        /// the README). Default: the SQLite file DIR/catalog.db.
        #[arg(long, value_name = "URL", env = "KURA_CATALOG")]
        catalog: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Make an existing data directory private: directories 0700, files 0600 (symbolic links
    /// are not followed; entries owned by another user are listed, not changed). Stop
    /// `kura serve` first.
    FixPermissions {
        /// The engine's data directory.
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Print the API route table (method, path, required access, body cap); for tests and
    /// docs/security.md (`--markdown`).
    #[command(hide = true)]
    Routes {
        #[arg(long)]
        json: bool,
        /// The route × role table of docs/security.md.
        #[arg(long, conflicts_with = "json")]
        markdown: bool,
    },
}

/// A disk size: bytes, or a number with a binary suffix (K, M, G, T; optionally `iB`/`B`).
fn parse_disk_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("iB").or_else(|| t.strip_suffix('B')).unwrap_or(t);
    let (num, shift) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 30),
        Some('T' | 't') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    match num.parse::<f64>() {
        Ok(n) if n > 0.0 && n.is_finite() && n * ((1u64 << shift) as f64) < u64::MAX as f64 => {
            Ok((n * (1u64 << shift) as f64) as u64)
        }
        _ => Err(format!("not a size: {s:?} (try 1G, 800M or a number of bytes)")),
    }
}

fn local_only(at: &Location, what: &str) -> anyhow::Result<PathBuf> {
    match &at.store {
        Some(s) => Ok(s.clone()),
        None => anyhow::bail!("{what} works on a local store: give --store DIR"),
    }
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Image(cmd) => match cmd {
            ImageCommand::Capture { source, at, name, host, threads, job, full } => match (at.store, source.as_slice())
            {
                (Some(store), [one]) => image::capture(one, &store, at.server.json, name, host, threads, full),
                (Some(_), _) => anyhow::bail!(
                    "several disks make a snapshot set, which an engine keeps: capture them with --server \
                     (a local store holds single-disk snapshots)"
                ),
                (None, [one]) => engine::capture(one, &at.server, name, host, threads, job, full),
                (None, several) => engine::capture_set(several, &at.server, name, host, threads, job, full),
            },
            ImageCommand::List { at } => image::list(&local_only(&at, "kura image list")?, at.server.json),
            ImageCommand::Show { snapshot, at } => match &at.store {
                Some(store) => image::show(&snapshot, store, at.server.json),
                None => image::show_remote(&snapshot, &at.server),
            },
            ImageCommand::Restore { snapshot, target, at, archive, threads } => match at.store {
                None if !archive.is_empty() => export::restore(&snapshot, &target, &archive, at.server.json, threads),
                Some(store) => image::restore(&snapshot, &target, &store, at.server.json, threads),
                None => engine::restore(&snapshot, &target, &at.server, threads),
            },
            ImageCommand::Fit { snapshot, size, at, name, scratch, threads } => match at.store {
                Some(store) => image::fit(&snapshot, size, &store, at.server.json, name, scratch.as_deref(), threads),
                None => engine::fit(&snapshot, size, &at.server, name, scratch.as_deref(), threads),
            },
            ImageCommand::Verify { snapshot: Some(snapshot), at, boot: true, boot_args, .. } => {
                boot_test::run(&snapshot, &at, &boot_args)
            }
            ImageCommand::Verify { snapshot, at, threads, .. } => match at.store {
                Some(store) => image::verify(snapshot.as_deref(), &store, at.server.json, threads),
                None => engine::verify(snapshot.as_deref(), &at.server),
            },
        },
        Command::Serve(args) => {
            crate::serve::run(crate::serve::ServeOptions {
                data: args.data,
                catalog: args.catalog,
                listen: args.listen,
                insecure_http: args.insecure_http,
                tls_cert: args.tls_cert,
                tls_key: args.tls_key,
                netboot: args.netboot,
                agent_timeout: std::time::Duration::from_secs(args.agent_timeout.max(1)),
                scheduler: crate::scheduler::SchedulerConfig {
                    tick: std::time::Duration::from_millis(args.scheduler_tick_ms.max(10)),
                    catch_up: args.schedule_catch_up,
                    max_concurrent_jobs: args.max_concurrent_jobs,
                },
                test_clock: args.test_clock,
                hold_unusual_captures: args.hold_unusual_captures,
                store: args.store,
                cache_bytes: args.cache_size,
                writer_lease: std::time::Duration::from_secs(args.writer_lease.max(1) as u64),
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Snapshots { host, server } => engine::snapshots(host.as_deref(), &server),
        Command::Snapshot(SnapshotCommand::Confirm { id, server }) => engine::confirm_snapshot(&id, &server),
        Command::Snapshot(SnapshotCommand::Delete { id, server }) => engine::delete_snapshot(&id, &server),
        Command::Hosts { server } => engine::hosts(&server),
        Command::Host(HostCommand::Power(args)) => power::run(*args),
        Command::Host(HostCommand::Set { host, secure_boot, add_mac, remove_mac, server }) => {
            engine::set_host(&host, secure_boot.as_deref(), &add_mac, &remove_mac, &server)
        }
        Command::Capture { host, disk, disks, server } => {
            jobs::queue("capture", &host, None, disk, disks, false, &server)
        }
        Command::Restore { host, snapshot, allow_unconfirmed, disk, map, server } => {
            jobs::queue("restore", &host, snapshot, disk, map, allow_unconfirmed, &server)
        }
        Command::Jobs { watch, server } => jobs::list(watch, &server),
        Command::Token(TokenCommand::Create { role, note, user, expires, server }) => {
            tokens::create(&role, &note, user.as_deref(), expires, &server)
        }
        Command::Token(TokenCommand::List { agents, server }) => tokens::list(agents, &server),
        Command::Token(TokenCommand::Revoke { id, server }) => tokens::revoke(id, &server),
        Command::Token(TokenCommand::RotateAdmin { data, catalog, user, json }) => {
            tokens::rotate_admin(&data, catalog.as_deref(), &user, json)
        }
        Command::Schedule(cmd) => schedule::run(cmd),
        Command::Verify { snapshot: Some(snapshot), server, boot: true, expect, firmware, timeout, stall } => {
            engine::verify_boot(&snapshot, &expect, firmware, timeout, stall, &server)
        }
        Command::Verify { snapshot, server, .. } => engine::verify(snapshot.as_deref(), &server),
        Command::Gc { grace, dry_run, server } => engine::gc(grace, dry_run, &server),
        Command::Retention { host, group, keep_last, keep_monthly, dry_run, server } => {
            engine::retention(host, group, keep_last, keep_monthly, dry_run, &server)
        }
        Command::Admin(AdminCommand::RebuildCatalog { data, store, catalog, json }) => {
            engine::rebuild_catalog(&data, store.as_deref(), catalog.as_deref(), json)
        }
        Command::Admin(AdminCommand::FixPermissions { data, json }) => engine::fix_permissions(&data, json),
        Command::Admin(AdminCommand::Routes { json, markdown }) => routes::print(json, markdown),
        Command::Netboot(cmd) => netboot::run(cmd),
        Command::Notify(cmd) => notify::run(cmd),
        Command::Remote(cmd) => replication::remote(cmd),
        Command::Replicate(cmd) => replication::replicate(cmd),
        Command::Nbd { snapshot, at, listen } => nbd::run(&snapshot, &at, &listen),
        Command::Mount { snapshot, dir, at } => nbd::mount(&snapshot, &dir, &at),
        Command::Files(cmd) => files::run(cmd),
        Command::Bench(args) => bench::run(args),
        Command::Export(args) => export::export(args),
        Command::Import(args) => export::import(args),
        Command::Bootenv(cmd) => bootenv::run(cmd),
    }
}
