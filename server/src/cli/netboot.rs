//! `kura netboot status`: what the engine's netboot services offered each machine and what the
//! machine fetched (`GET /api/v1/netboot/status`).

use super::ServerArgs;
use anyhow::Result;
use clap::Subcommand;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum NetbootCommand {
    /// Recent network boots per machine: DHCP offers, TFTP files, scripts, kernel and initrd.
    Status {
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub fn run(cmd: NetbootCommand) -> Result<ExitCode> {
    match cmd {
        NetbootCommand::Status { server } => status(&server),
    }
}

fn status(s: &ServerArgs) -> Result<ExitCode> {
    let v: serde_json::Value = super::engine::client(s)?.get_json(kura_protocol::routes::NETBOOT_STATUS.path)?;
    if s.json {
        println!("{}", serde_json::to_string(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    if v["enabled"] != true {
        println!("netboot is not running on this engine (start kura serve with --netboot CONFIG.json)");
        return Ok(ExitCode::SUCCESS);
    }
    let machines = v["machines"].as_array().cloned().unwrap_or_default();
    if machines.is_empty() {
        println!("no network boots seen yet");
    }
    for m in machines {
        let mac = m["mac"].as_str().unwrap_or("(unknown MAC)");
        let ip = m["ip"].as_str().unwrap_or("-");
        println!("{mac}  {ip}");
        for e in m["events"].as_array().into_iter().flatten() {
            println!(
                "  {}  {:7}  {}",
                e["time"].as_i64().map(time_of_day).unwrap_or_default(),
                e["stage"].as_str().unwrap_or(""),
                e["detail"].as_str().unwrap_or("")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `HH:MM:SS` UTC of a unix time.
fn time_of_day(t: i64) -> String {
    kura_imaging::time::format_rfc3339(t)[11..].to_string()
}
