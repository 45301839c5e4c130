//! Jobs from the CLI: `kura capture HOST` and `kura restore HOST` queue a job that the
//! machine's next PXE boot runs; `kura jobs [--watch]` shows them with live progress bars.

use super::engine::client;
use super::ServerArgs;
use anyhow::{bail, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use kura_protocol::routes;
use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

/// Queues a capture (no snapshot) or restore job for `host`; `disks` is a capture's `--disks`
/// or a restore's `--map`. A restore of a snapshot set prints its disks and the overrides
/// (the machine's disks are known only to its agent, which logs the mapping before writing).
#[allow(clippy::too_many_arguments)]
pub fn queue(
    kind: &str,
    host: &str,
    snapshot: Option<String>,
    disk: Option<String>,
    disks: Option<String>,
    allow_unconfirmed: bool,
    s: &ServerArgs,
) -> Result<ExitCode> {
    let c = client(s)?;
    let snapshot = match (kind, snapshot) {
        ("restore", None) => {
            // The newest committed snapshot of the host that is confirmed (a snapshot held
            // after an unusual boot only with --allow-unconfirmed).
            let list: Vec<serde_json::Value> = c.get_json(&routes::snapshots(Some(host)))?;
            let usable =
                |v: &&serde_json::Value| v["state"] == "committed" && (allow_unconfirmed || v["confirmed"] != false);
            match list.iter().rev().find(usable).and_then(|v| v["id"].as_str()) {
                Some(id) => Some(id.to_string()),
                None if list.iter().any(|v| v["state"] == "committed") => bail!(
                    "host {host} has no confirmed snapshot to restore: confirm one (kura snapshot confirm ID) \
                     or pass --allow-unconfirmed"
                ),
                None => bail!("host {host} has no snapshot to restore"),
            }
        }
        (_, s) => s,
    };
    let v: serde_json::Value = c.post_json(
        routes::JOB_CREATE.path,
        &serde_json::json!({
            "kind": kind, "host": host, "snapshot": snapshot, "disk": disk, "disks": disks,
            "allow_unconfirmed": allow_unconfirmed,
        }),
    )?;
    if let (Some(id), false) = (snapshot.as_deref(), s.json) {
        let list = c.get_json::<Vec<serde_json::Value>>(&routes::snapshots(None)).unwrap_or_default();
        if let Some(snap) = list.iter().find(|v| v["id"] == id) {
            print_set_plan(snap, disks.as_deref());
        }
    }
    if s.json {
        println!("{}", serde_json::to_string(&v["job"])?);
    } else {
        let job = &v["job"];
        println!("{}", job["id"]);
        eprintln!(
            "queued {kind} job {} for {host}{}: it runs at the machine's next PXE boot",
            job["id"],
            snapshot.map(|s| format!(" (snapshot {s})")).unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// For a restore of a snapshot set: its disks, and what `--map` says of each (stderr).
fn print_set_plan(snap: &serde_json::Value, map: Option<&str>) {
    let Some(disks) = snap["set"]["disks"].as_array() else { return };
    let overrides = map.and_then(|m| kura_imaging::diskmap::parse_overrides(m).ok()).unwrap_or_default();
    eprintln!("snapshot {} is a set of {} disks:", snap["id"].as_str().unwrap_or("?"), disks.len());
    for d in disks {
        let name = d["name"].as_str().unwrap_or("?");
        let to = overrides.iter().find(|(s, _)| s == name).map(|(_, t)| t.as_str());
        eprintln!(
            "  {name}: {} bytes{}{} → {}",
            d["size"],
            d["serial"].as_str().map(|s| format!(", serial {s}")).unwrap_or_default(),
            d["wwn"].as_str().map(|s| format!(", wwn {s}")).unwrap_or_default(),
            match to {
                Some("none") => "not restored (--map)".to_string(),
                Some(t) => format!("{t} (--map)"),
                None => "mapped by the agent: WWN/serial, else position and size".to_string(),
            }
        );
    }
    eprintln!("the agent logs the mapping before it writes; a too-small or ambiguous mapping writes nothing");
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:28} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}")
        .expect("valid template")
        .progress_chars("=> ")
}

/// Lists jobs; with `watch`, redraws progress bars for running jobs until none is active.
pub fn list(watch: bool, s: &ServerArgs) -> Result<ExitCode> {
    let c = client(s)?;
    if !watch {
        let jobs: Vec<serde_json::Value> = c.get_json(routes::JOBS.path)?;
        if s.json {
            println!("{}", serde_json::to_string(&jobs)?);
        } else {
            println!(
                "{:>5}  {:8}  {:16}  {:10}  {:>12}  {:16}  ERROR",
                "JOB", "KIND", "HOST", "STATE", "DONE", "SNAPSHOT"
            );
            for j in jobs {
                println!(
                    "{:>5}  {:8}  {:16}  {:10}  {:>12}  {:16}  {}",
                    j["id"],
                    j["kind"].as_str().unwrap_or(""),
                    j["host"].as_str().unwrap_or(""),
                    j["state"].as_str().unwrap_or(""),
                    indicatif::BinaryBytes(j["done_bytes"].as_u64().unwrap_or(0)).to_string(),
                    j["snapshot"].as_str().unwrap_or("-"),
                    j["error"].as_str().unwrap_or("")
                );
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let multi = MultiProgress::new();
    let mut bars: HashMap<i64, ProgressBar> = HashMap::new();
    loop {
        let jobs: Vec<serde_json::Value> = c.get_json(routes::JOBS.path)?;
        let mut active = 0;
        for j in &jobs {
            let Some(id) = j["id"].as_i64() else { continue };
            let state = j["state"].as_str().unwrap_or("");
            let running = matches!(state, "queued" | "running");
            if running {
                active += 1;
            }
            if !running && !bars.contains_key(&id) {
                continue;
            }
            let bar = bars.entry(id).or_insert_with(|| {
                let b = multi.add(ProgressBar::new(0));
                b.set_style(bar_style());
                b.set_prefix(format!(
                    "{} {} {}",
                    id,
                    j["kind"].as_str().unwrap_or(""),
                    j["host"].as_str().unwrap_or("")
                ));
                b
            });
            bar.set_length(j["total_bytes"].as_u64().unwrap_or(0));
            bar.set_position(j["done_bytes"].as_u64().unwrap_or(0));
            match state {
                "queued" => bar.set_message("waiting for the machine's PXE boot"),
                "running" => bar.set_message(""),
                other => {
                    let msg = format!("{other} {}", j["error"].as_str().unwrap_or(""));
                    bar.finish_with_message(msg);
                }
            }
        }
        if active == 0 {
            if bars.is_empty() {
                eprintln!("no queued or running jobs");
            }
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}
