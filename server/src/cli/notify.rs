//! `kura notify`: the engine's notification targets (webhooks, e-mail relays), admins only.

use super::engine::client;
use super::ServerArgs;
use anyhow::{bail, Result};
use clap::Subcommand;
use kura_protocol::routes;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum NotifyCommand {
    /// Add a target: `webhook URL` or `email --smtp HOST:PORT --from A --to B [--starttls]`.
    #[command(subcommand)]
    Add(AddCommand),
    /// List the targets.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Remove a target.
    Remove {
        id: i64,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Send a test message to every target and say how each went.
    Test {
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Subcommand)]
pub enum AddCommand {
    /// POST a JSON document to URL on every event (see docs/operations.md for the payload).
    Webhook {
        url: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Send mail through an SMTP relay on every event.
    Email {
        /// The relay, HOST:PORT (plain SMTP; add --starttls to require encryption).
        #[arg(long, value_name = "HOST:PORT")]
        smtp: String,
        #[arg(long)]
        from: String,
        /// Recipient (repeat for several).
        #[arg(long, required = true)]
        to: Vec<String>,
        /// Require STARTTLS (the relay's certificate is checked against the system's roots).
        #[arg(long)]
        starttls: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
}

fn describe(t: &serde_json::Value) -> String {
    match t["kind"].as_str() {
        Some("webhook") => format!("webhook {}", t["url"].as_str().unwrap_or("")),
        Some("email") => {
            let to: Vec<&str> = t["to"].as_array().into_iter().flatten().filter_map(|a| a.as_str()).collect();
            format!(
                "email via {}{} from {} to {}",
                t["smtp"].as_str().unwrap_or(""),
                if t["starttls"].as_bool() == Some(true) { " (STARTTLS)" } else { "" },
                t["from"].as_str().unwrap_or(""),
                to.join(", ")
            )
        }
        _ => t.to_string(),
    }
}

pub fn run(cmd: NotifyCommand) -> Result<ExitCode> {
    match cmd {
        NotifyCommand::Add(add) => {
            let (body, server) = match add {
                AddCommand::Webhook { url, server } => (serde_json::json!({ "kind": "webhook", "url": url }), server),
                AddCommand::Email { smtp, from, to, starttls, server } => (
                    serde_json::json!({ "kind": "email", "smtp": smtp, "from": from, "to": to, "starttls": starttls }),
                    server,
                ),
            };
            let t: serde_json::Value = client(&server)?.post_json(routes::NOTIFY_ADD.path, &body)?;
            if server.json {
                println!("{}", serde_json::to_string(&t)?);
            } else {
                println!("{}", t["id"]);
                eprintln!("added notification target {}: {}", t["id"], describe(&t));
            }
        }
        NotifyCommand::List { server } => {
            let list: Vec<serde_json::Value> = client(&server)?.get_json(routes::NOTIFY.path)?;
            if server.json {
                println!("{}", serde_json::to_string(&list)?);
            } else if list.is_empty() {
                eprintln!("no notification targets (add one with `kura notify add`)");
            } else {
                for t in &list {
                    println!("{:4}  {}", t["id"], describe(t));
                }
            }
        }
        NotifyCommand::Remove { id, server } => {
            client(&server)?.delete(&routes::NOTIFY_REMOVE.url(&[&id.to_string()]))?;
            if !server.json {
                eprintln!("removed notification target {id}");
            }
        }
        NotifyCommand::Test { server } => {
            let v: serde_json::Value = client(&server)?.post_json(routes::NOTIFY_TEST.path, &serde_json::json!({}))?;
            if server.json {
                println!("{}", serde_json::to_string(&v)?);
            } else {
                let targets = v["targets"].as_array().cloned().unwrap_or_default();
                if targets.is_empty() {
                    eprintln!("no notification targets to test");
                }
                for t in &targets {
                    match t["ok"].as_bool() {
                        Some(true) => println!("{:4}  {}  sent", t["target"], t["kind"].as_str().unwrap_or("")),
                        _ => println!(
                            "{:4}  {}  FAILED: {}",
                            t["target"],
                            t["kind"].as_str().unwrap_or(""),
                            t["error"].as_str().unwrap_or("")
                        ),
                    }
                }
            }
            if v["ok"].as_bool() != Some(true) {
                bail!("some notification targets failed");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
