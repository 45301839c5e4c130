//! `kura remote` and `kura replicate`: the engines this one copies its snapshots to, and which
//! hosts go where (admins only; `docs/dr.md`). The copying is the engine's
//! (`crate::replication`).

use super::engine::client;
use super::ServerArgs;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use kura_protocol::replication::{AddRemote, AddRule, Resync, Resynced};
use kura_protocol::routes;
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;

/// This engine's connection for `kura remote add`, whose own `--fingerprint` is the remote's:
/// this engine's certificate is pinned with `--server-fingerprint` or `KURA_FINGERPRINT`.
#[derive(Args)]
pub struct PrimaryArgs {
    /// Engine URL (this engine, the primary).
    #[arg(long, env = "KURA_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// API token (an admin's).
    #[arg(long, env = "KURA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// SHA-256 fingerprint of this engine's certificate.
    #[arg(long, env = "KURA_FINGERPRINT")]
    pub server_fingerprint: Option<String>,
    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum RemoteCommand {
    /// Add a remote engine (a DR site) with a replica token made on it
    /// (`kura token create --role replica` there).
    Add {
        name: String,
        /// The remote engine's URL, e.g. https://dr.backup.lan:8443.
        url: String,
        /// The remote's certificate fingerprint (`kura serve` on the remote prints it).
        #[arg(long)]
        fingerprint: Option<String>,
        /// A file holding the remote's replica token (read once; stored sealed).
        #[arg(long, value_name = "PATH")]
        token_file: PathBuf,
        #[command(flatten)]
        server: PrimaryArgs,
    },
    /// List the remotes.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Remove a remote with its rules and queue (nothing is deleted on the remote).
    Remove {
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Subcommand)]
pub enum ReplicateCommand {
    /// Copy the snapshots of some hosts (or every host) to a remote, as they are captured.
    Add {
        /// The remote (`kura remote add`).
        #[arg(long)]
        to: String,
        /// Only these hosts (comma-separated); default every host.
        #[arg(long, value_delimiter = ',', conflicts_with = "group")]
        hosts: Vec<String>,
        /// Only the hosts of this group (as they are when each snapshot is captured).
        #[arg(long)]
        group: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// On a DR engine: fetch the snapshots of some hosts (or every host) from a remote (the
    /// primary, added with `kura remote add` and an operator token made there), polling it;
    /// for sites that only allow connections from the DR side. Never deletes anything.
    Pull {
        /// The remote to fetch from (`kura remote add`).
        #[arg(long)]
        from: String,
        /// Only these hosts (comma-separated); default every host.
        #[arg(long, value_delimiter = ',', conflicts_with = "group")]
        hosts: Vec<String>,
        /// Only the hosts of this group (the remote's groups).
        #[arg(long)]
        group: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Check snapshots on a remote again and send the chunks it lacks (after its `kura verify`
    /// quarantined some, or its store lost some).
    Resync {
        /// The remote (`kura remote add`).
        #[arg(long)]
        to: String,
        /// Only this snapshot (default: every snapshot copied there).
        snapshot: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List the rules and what each remote still lacks.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Remove a rule (what is queued is still sent).
    Remove {
        id: i64,
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub fn remote(cmd: RemoteCommand) -> Result<ExitCode> {
    match cmd {
        RemoteCommand::Add { name, url, fingerprint, token_file, server } => {
            let token = std::fs::read_to_string(&token_file)
                .with_context(|| format!("reading the remote's token from {}", token_file.display()))?;
            let token = token.trim().to_string();
            if token.is_empty() {
                bail!("{} is empty: it should hold the remote's replica token", token_file.display());
            }
            let s = ServerArgs {
                server: server.server,
                token: server.token,
                fingerprint: server.server_fingerprint,
                json: server.json,
            };
            let r: Value =
                client(&s)?.post_json(routes::REMOTE_ADD.path, &AddRemote { name, url, fingerprint, token })?;
            if s.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                eprintln!("added remote {} ({})", r["name"].as_str().unwrap_or(""), r["url"].as_str().unwrap_or(""));
            }
        }
        RemoteCommand::List { server } => {
            let list: Vec<Value> = client(&server)?.get_json(routes::REMOTES.path)?;
            if server.json {
                println!("{}", serde_json::to_string(&list)?);
            } else if list.is_empty() {
                eprintln!("no remotes (add one with `kura remote add`)");
            } else {
                for r in &list {
                    println!(
                        "{:16} {}  {}",
                        r["name"].as_str().unwrap_or(""),
                        r["url"].as_str().unwrap_or(""),
                        r["fingerprint"].as_str().unwrap_or("(no fingerprint)")
                    );
                }
            }
        }
        RemoteCommand::Remove { name, server } => {
            client(&server)?.delete(&routes::REMOTE_REMOVE.url(&[&name]))?;
            if !server.json {
                eprintln!("removed remote {name}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `kura replicate add` (push) and `kura replicate pull`: one rule, printed.
fn add_rule(server: &ServerArgs, remote: String, hosts: Vec<String>, group: Option<String>, pull: bool) -> Result<()> {
    let hosts = (!hosts.is_empty()).then_some(hosts);
    let r: Value =
        client(server)?.post_json(routes::REPLICATION_RULE_ADD.path, &AddRule { remote, hosts, group, pull })?;
    if server.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!("{}", r["id"]);
        eprintln!("added replication rule {}: {}", r["id"], describe(&r));
    }
    Ok(())
}

pub fn replicate(cmd: ReplicateCommand) -> Result<ExitCode> {
    match cmd {
        ReplicateCommand::Add { to, hosts, group, server } => add_rule(&server, to, hosts, group, false)?,
        ReplicateCommand::List { server } => {
            let v: Value = client(&server)?.get_json(routes::REPLICATION.path)?;
            if server.json {
                println!("{}", serde_json::to_string(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            let rules = v["rules"].as_array().cloned().unwrap_or_default();
            if rules.is_empty() {
                eprintln!("no replication rules (add one with `kura replicate add --to REMOTE`)");
            }
            for r in &rules {
                println!("{:4}  {}", r["id"], describe(r));
            }
            for b in v["remotes"].as_array().into_iter().flatten() {
                println!(
                    "remote {}: {} chunks ({} bytes) and {} snapshots queued{}",
                    b["remote"].as_str().unwrap_or(""),
                    b["chunks"],
                    b["chunk_bytes"],
                    b["snapshots"],
                    b["last_error"].as_str().map(|e| format!("; last error: {e}")).unwrap_or_default()
                );
            }
        }
        ReplicateCommand::Pull { from, hosts, group, server } => add_rule(&server, from, hosts, group, true)?,
        ReplicateCommand::Resync { to, snapshot, server } => {
            let r: Resynced = client(&server)?
                .post_json(routes::REPLICATION_RESYNC.path, &Resync { remote: to.clone(), snapshot })?;
            if server.json {
                println!("{}", serde_json::to_string(&serde_json::json!({ "queued": r.queued }))?);
            } else {
                eprintln!(
                    "{} snapshots queued to be checked on {to} (`kura replicate list` shows the queue)",
                    r.queued
                );
            }
        }
        ReplicateCommand::Remove { id, server } => {
            client(&server)?.delete(&routes::REPLICATION_RULE_REMOVE.url(&[&id.to_string()]))?;
            if !server.json {
                eprintln!("removed replication rule {id}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(r: &Value) -> String {
    let hosts = match (r["hosts"].as_array(), r["group"].as_str()) {
        (Some(h), _) => h.iter().filter_map(|h| h.as_str()).collect::<Vec<_>>().join(", "),
        (None, Some(g)) => format!("group {g}"),
        (None, None) => "every host".to_string(),
    };
    if r["pull"] == true {
        let up_to = r["pulled_up_to"].as_i64().unwrap_or(0);
        return format!("{hosts} ← {} (pulled; done up to {up_to})", r["remote"].as_str().unwrap_or(""));
    }
    format!("{hosts} → {}", r["remote"].as_str().unwrap_or(""))
}
