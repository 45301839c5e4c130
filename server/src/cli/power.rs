//! `kura host power ...`: a host's power control (how Kura gets it into netboot) and manual
//! power actions, through the engine's API.
//!
//! ```text
//! kura host power set HOST --driver redfish --address https://bmc --user U --password-file F [--system ID] [--insecure | --tls-fingerprint FP]
//! kura host power set HOST --driver ipmi --address HOST[:PORT] --user U --password-file F [--cipher-suite N]
//! kura host power set HOST --driver wol [--broadcast 10.0.0.255] [--interface br0]
//! kura host power show HOST          # the password shows as "set", never its value
//! kura host power clear HOST
//! kura host power HOST pxe-reset     # or on, off
//! ```

use super::engine::client;
use super::ServerArgs;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use kura_protocol::routes;
use std::path::PathBuf;
use std::process::ExitCode;

/// `kura host power`: either a subcommand, or `HOST ACTION`.
#[derive(Args)]
pub struct PowerArgs {
    #[command(subcommand)]
    command: Option<PowerCommand>,
    /// The host to run ACTION on (a host cannot be named set, show or clear here).
    host: Option<String>,
    /// pxe-reset (network boot once, now), on or off.
    #[arg(value_parser = ["pxe-reset", "on", "off"], requires = "host")]
    action: Option<String>,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Subcommand)]
enum PowerCommand {
    /// Set how Kura powers HOST into netboot when a job is queued for it.
    Set(SetArgs),
    /// Show HOST's power control (the password shows as "set").
    Show {
        host: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Remove HOST's power control (jobs then wait for its next PXE boot).
    Clear {
        host: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Args)]
struct SetArgs {
    host: String,
    #[arg(long, value_parser = ["none", "wol", "redfish", "ipmi"])]
    driver: String,
    /// Redfish: the BMC's URL (https://bmc.example); IPMI: HOST or HOST:PORT.
    #[arg(long)]
    address: Option<String>,
    /// The BMC user (Redfish, IPMI).
    #[arg(long)]
    user: Option<String>,
    /// A file holding the BMC password (one line); absent keeps the stored password.
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Redfish: the ComputerSystem id (default: the BMC's only system).
    #[arg(long, value_name = "ID")]
    system: Option<String>,
    /// Redfish over HTTPS: accept any certificate (a BMC's self-signed one).
    #[arg(long, conflicts_with = "tls_fingerprint")]
    insecure: bool,
    /// Redfish over HTTPS: accept exactly the certificate with this SHA-256 fingerprint.
    #[arg(long, value_name = "FP")]
    tls_fingerprint: Option<String>,
    /// Wake-on-LAN: the IPv4 broadcast address (default 255.255.255.255).
    #[arg(long)]
    broadcast: Option<String>,
    /// Wake-on-LAN: the interface to send from.
    #[arg(long)]
    interface: Option<String>,
    /// IPMI: the RMCP+ cipher suite (ipmitool -C, e.g. 3 or 17; default: negotiated).
    #[arg(long, value_name = "N")]
    cipher_suite: Option<u8>,
    #[command(flatten)]
    server: ServerArgs,
}

fn read_password(path: &PathBuf) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading the password file {}", path.display()))?;
    let pw = text.strip_suffix('\n').map(|s| s.strip_suffix('\r').unwrap_or(s)).unwrap_or(&text);
    if pw.is_empty() {
        bail!("the password file {} is empty", path.display());
    }
    Ok(pw.to_string())
}

fn print_view(v: &serde_json::Value, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(v)?);
        return Ok(());
    }
    let s = |k: &str| v[k].as_str().unwrap_or("-").to_string();
    println!("host       {}", s("host"));
    println!("driver     {}", s("driver"));
    match v["driver"].as_str() {
        Some("redfish") | Some("ipmi") => {
            println!("address    {}", s("address"));
            println!("user       {}", s("username"));
            println!("password   {}", if v["password"] == "set" { "set" } else { "-" });
            if v["driver"] == "ipmi" {
                println!(
                    "cipher     {}",
                    v["cipher_suite"].as_u64().map(|c| c.to_string()).unwrap_or("negotiated".into())
                );
            }
            if v["driver"] == "redfish" {
                println!("system     {}", v["system_id"].as_str().unwrap_or("(the BMC's only system)"));
                let tls = if v["insecure"] == true {
                    "any certificate (insecure)".to_string()
                } else if let Some(fp) = v["tls_fingerprint"].as_str() {
                    format!("pinned {fp}")
                } else {
                    "the system's CA certificates".to_string()
                };
                println!("tls        {tls}");
            }
        }
        Some("wol") => {
            println!("broadcast  {}", v["broadcast"].as_str().unwrap_or("255.255.255.255"));
            println!("interface  {}", v["interface"].as_str().unwrap_or("(by routing)"));
        }
        _ => {}
    }
    Ok(())
}

pub fn run(args: PowerArgs) -> Result<ExitCode> {
    match (args.command, args.host, args.action) {
        (Some(PowerCommand::Set(a)), _, _) => {
            let password = a.password_file.as_ref().map(read_password).transpose()?;
            let body = serde_json::json!({
                "driver": a.driver,
                "address": a.address,
                "username": a.user,
                "password": password,
                "system_id": a.system,
                "insecure": a.insecure,
                "tls_fingerprint": a.tls_fingerprint,
                "broadcast": a.broadcast,
                "interface": a.interface,
                "cipher_suite": a.cipher_suite,
            });
            let v: serde_json::Value = client(&a.server)?
                .put_json(&routes::HOST_POWER_SET.url(&[&a.host]), &body)
                .with_context(|| format!("setting the power control of {}", a.host))?;
            print_view(&v, a.server.json)?;
        }
        (Some(PowerCommand::Show { host, server }), _, _) => {
            let v: serde_json::Value = client(&server)?.get_json(&routes::HOST_POWER.url(&[&host]))?;
            print_view(&v, server.json)?;
        }
        (Some(PowerCommand::Clear { host, server }), _, _) => {
            client(&server)?.delete(&routes::HOST_POWER_CLEAR.url(&[&host]))?;
            if !server.json {
                eprintln!("power control of {host} removed: its jobs wait for its next PXE boot");
            }
        }
        (None, Some(host), Some(action)) => {
            let v: serde_json::Value = client(&args.server)?
                .post_json_once(&routes::HOST_POWER_ACT.url(&[&host, &action]), &serde_json::json!({}))
                .with_context(|| format!("power {action} of {host}"))?;
            if args.server.json {
                println!("{}", serde_json::to_string(&v)?);
            } else {
                println!("{host}: {}", v["done"].as_str().unwrap_or(""));
            }
        }
        (None, Some(_), None) => bail!("say what to do: kura host power HOST pxe-reset|on|off"),
        (None, None, _) => bail!("use kura host power set|show|clear HOST, or kura host power HOST pxe-reset|on|off"),
    }
    Ok(ExitCode::SUCCESS)
}
