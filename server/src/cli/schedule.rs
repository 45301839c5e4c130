//! `kura schedule add|list|remove|runs`: scheduled captures of a host or a group on the engine
//! (semantics: `docs/operations.md`, "Schedules"). Times are shown in UTC.

use super::engine::client;
use super::ServerArgs;
use anyhow::Result;
use clap::Subcommand;
use kura_protocol::routes;
use serde_json::{json, Value};
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum ScheduleCommand {
    /// Capture a host, or every host of a group, at the due times of a cron expression (UTC).
    Add {
        /// A host name or a group name.
        #[arg(long, value_name = "GROUP_OR_HOST")]
        hosts: String,
        /// Five fields, UTC: minute hour day-of-month month day-of-week, e.g. "0 2 1 * *".
        #[arg(long)]
        cron: String,
        /// A unique name (default: the host or group name).
        #[arg(long)]
        name: Option<String>,
        /// Say whether --hosts is a host or a group when a name is both.
        #[arg(long, value_parser = ["host", "group"])]
        target_kind: Option<String>,
        /// Retention applied to a host after each successful scheduled capture.
        #[arg(long)]
        keep_last: Option<u32>,
        #[arg(long)]
        keep_monthly: Option<u32>,
        /// At most this many of the schedule's jobs queued or running at once.
        #[arg(long, default_value_t = 5)]
        max_concurrent: u32,
        /// Further attempts for a host whose capture failed.
        #[arg(long, default_value_t = 0)]
        retries: u32,
        /// Wait between a failed attempt and the next (e.g. 90s, 30m, 2h).
        #[arg(long, default_value = "30m", value_parser = super::parse_duration_arg)]
        retry_delay: i64,
        /// Create it disabled (no runs until enabled).
        #[arg(long)]
        disabled: bool,
        /// Boot-test each snapshot the schedule's captures commit, on the engine host, one test
        /// at a time (docs/boot-test.md).
        #[arg(long)]
        boot_test: bool,
        /// With --boot-test: a console text that also means the system came up.
        #[arg(long, value_name = "TEXT", requires = "boot_test")]
        boot_test_expect: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List schedules.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Pause a schedule (by id or name): no runs until it is enabled again.
    Disable {
        schedule: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Resume a paused schedule; the due times that passed while it was paused are not run.
    Enable {
        schedule: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Remove a schedule (by id or name) with its run history; jobs it queued stay.
    Remove {
        schedule: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// The newest runs of a schedule with each host's outcome.
    Runs {
        schedule: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        server: ServerArgs,
    },
}

fn time(v: &Value) -> String {
    match v.as_i64() {
        Some(t) => kura_imaging::time::format_rfc3339(t),
        None => "-".into(),
    }
}

fn set_enabled(schedule: &str, server: &ServerArgs, enabled: bool) -> Result<()> {
    let s: Value =
        client(server)?.put_json(&routes::SCHEDULE_ENABLED.url(&[schedule]), &json!({ "enabled": enabled }))?;
    if server.json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        eprintln!(
            "schedule {} ({}) is {}",
            s["name"].as_str().unwrap_or(""),
            s["id"],
            if enabled { "enabled" } else { "paused" }
        );
    }
    Ok(())
}

pub fn run(cmd: ScheduleCommand) -> Result<ExitCode> {
    match cmd {
        ScheduleCommand::Add {
            hosts,
            cron,
            name,
            target_kind,
            keep_last,
            keep_monthly,
            max_concurrent,
            retries,
            retry_delay,
            disabled,
            boot_test,
            boot_test_expect,
            server,
        } => {
            let retention = (keep_last.is_some() || keep_monthly.is_some())
                .then(|| json!({"keep_last": keep_last.unwrap_or(0), "keep_monthly": keep_monthly.unwrap_or(0)}));
            let body = json!({
                "name": name, "target": hosts, "target_kind": target_kind, "cron": cron, "retention": retention,
                "max_concurrent": max_concurrent, "retries": retries, "retry_delay": retry_delay,
                "enabled": !disabled, "boot_test": boot_test, "boot_test_expect": boot_test_expect,
            });
            let s: Value = client(&server)?.post_json(routes::SCHEDULE_CREATE.path, &body)?;
            if server.json {
                println!("{}", serde_json::to_string(&s)?);
            } else {
                println!("{}", s["id"]);
                eprintln!(
                    "schedule {} captures {} {} at \"{}\" (UTC)",
                    s["name"].as_str().unwrap_or(""),
                    s["target_kind"].as_str().unwrap_or(""),
                    s["target"].as_str().unwrap_or(""),
                    s["cron"].as_str().unwrap_or("")
                );
            }
        }
        ScheduleCommand::List { server } => {
            let list: Vec<Value> = client(&server)?.get_json(routes::SCHEDULES.path)?;
            if server.json {
                println!("{}", serde_json::to_string(&list)?);
            } else {
                println!(
                    "{:>4}  {:16}  {:20}  {:16}  {:>3}  {:>7}  {:8}  {:9}  RETENTION",
                    "ID", "NAME", "TARGET", "CRON (UTC)", "CAP", "RETRIES", "ENABLED", "BOOT TEST"
                );
                for s in list {
                    let retention = match s["retention"].as_object() {
                        Some(r) => format!("last {} monthly {}", r["keep_last"], r["keep_monthly"]),
                        None => "-".into(),
                    };
                    println!(
                        "{:>4}  {:16}  {:20}  {:16}  {:>3}  {:>7}  {:8}  {:9}  {}",
                        s["id"],
                        s["name"].as_str().unwrap_or(""),
                        format!("{} {}", s["target_kind"].as_str().unwrap_or(""), s["target"].as_str().unwrap_or("")),
                        s["cron"].as_str().unwrap_or(""),
                        s["max_concurrent"],
                        format!("{}/{}s", s["retries"], s["retry_delay"]),
                        s["enabled"],
                        if s["boot_test"] == true { "yes" } else { "no" },
                        retention
                    );
                }
            }
        }
        ScheduleCommand::Enable { schedule, server } => set_enabled(&schedule, &server, true)?,
        ScheduleCommand::Disable { schedule, server } => set_enabled(&schedule, &server, false)?,
        ScheduleCommand::Remove { schedule, server } => {
            let s: Value = client(&server)?.delete_json(&routes::SCHEDULE_DELETE.url(&[&schedule]))?;
            if server.json {
                println!("{}", serde_json::to_string(&s)?);
            } else {
                eprintln!("removed schedule {} ({})", s["name"].as_str().unwrap_or(""), s["id"]);
            }
        }
        ScheduleCommand::Runs { schedule, limit, server } => {
            let runs: Vec<Value> =
                client(&server)?.get_json(&format!("{}?limit={limit}", routes::SCHEDULE_RUNS.url(&[&schedule])))?;
            if server.json {
                println!("{}", serde_json::to_string(&runs)?);
            } else {
                for r in runs {
                    let hosts = r["hosts"].as_array().cloned().unwrap_or_default();
                    println!(
                        "run {}  due {}  {}  ({} hosts)",
                        r["id"],
                        time(&r["due"]),
                        r["state"].as_str().unwrap_or(""),
                        hosts.len()
                    );
                    for h in hosts {
                        println!(
                            "    {:20}  {:9}  job {:>5}  attempts {}  {}",
                            h["host"].as_str().unwrap_or(""),
                            h["state"].as_str().unwrap_or(""),
                            h["job"],
                            h["attempts"],
                            h["error"].as_str().unwrap_or("")
                        );
                    }
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
