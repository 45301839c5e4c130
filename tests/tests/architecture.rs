//! The crate picture of `docs/architecture.md`, enforced: every arrow between the workspace's
//! crates points one way, and a crate that gains a dependency the picture forbids fails here.
//! Also: the netbooted agent stays small (imaging + protocol + its own system crates).
//!
//! Both checks ask cargo itself (`cargo metadata`, `cargo tree`) about the workspace.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Which workspace crates each workspace crate may depend on (normal and build dependencies;
/// dev-dependencies are the tests' business). Keep in step with `docs/architecture.md`.
const ALLOWED: &[(&str, &[&str])] = &[
    ("kura-imaging", &[]),
    ("kura-protocol", &["kura-imaging"]),
    ("kura-catalogs", &["kura-imaging", "kura-protocol"]),
    ("kura-netboot", &["kura-protocol"]),
    ("kura-bootenv", &[]),
    ("kura-diskgen", &[]),
    ("kura-agent", &["kura-imaging", "kura-protocol", "kura-bootenv"]),
    ("kura", &["kura-imaging", "kura-protocol", "kura-catalogs", "kura-netboot", "kura-bootenv", "kura-diskgen"]),
    ("kura-tests", &["kura-imaging", "kura-protocol", "kura-catalogs", "kura-netboot", "kura-bootenv", "kura-diskgen"]),
];

/// The agent's linked dependency tree (normal edges without proc-macros, unique crates) must
/// stay under this. It was 202 when the agent linked the whole server (SQLite, axum, rcgen…);
/// 136 with imaging + the protocol client. What remains above 100 is named in
/// `docs/architecture.md` (reqwest's hyper/tower stack, dhcproto's hickory-proto/ICU, rtnetlink).
const AGENT_MAX_CRATES: usize = 140;

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    c
}

fn run(mut c: Command) -> String {
    let out = c.output().expect("running cargo");
    assert!(out.status.success(), "{c:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn workspace_crates_depend_only_along_the_allowed_arrows() {
    let mut c = cargo();
    c.args(["metadata", "--format-version", "1", "--no-deps", "--offline"]);
    let meta: serde_json::Value = serde_json::from_str(&run(c)).expect("cargo metadata JSON");
    let members: BTreeSet<String> =
        meta["packages"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect();
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut wrong = Vec::new();
    for p in meta["packages"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let Some(ok) = allowed.get(name) else {
            wrong.push(format!("{name} is not in the architecture's picture (add it to ALLOWED and the doc)"));
            continue;
        };
        for d in p["dependencies"].as_array().unwrap() {
            let dep = d["name"].as_str().unwrap();
            let dev = d["kind"].as_str() == Some("dev");
            if members.contains(dep) && !dev && !ok.contains(&dep) {
                wrong.push(format!("{name} depends on {dep}"));
            }
        }
    }
    assert!(wrong.is_empty(), "forbidden dependencies (see docs/architecture.md):\n  {}", wrong.join("\n  "));
}

#[test]
fn the_agent_carries_imaging_and_the_protocol_client_only() {
    let mut c = cargo();
    c.args(["tree", "-p", "kura-agent", "-e", "normal,no-proc-macro", "--prefix", "none", "--offline"]);
    let tree = run(c);
    let crates: BTreeSet<&str> = tree.lines().filter_map(|l| l.split_whitespace().next()).collect();
    println!("kura-agent: {} crates in its dependency tree", crates.len());
    for banned in ["kura", "kura-catalogs", "kura-netboot", "rusqlite", "libsqlite3-sys", "axum", "rcgen"] {
        assert!(!crates.contains(banned), "the agent links {banned}:\n{tree}");
    }
    assert!(
        crates.len() < AGENT_MAX_CRATES,
        "the agent's tree has {} crates (limit {AGENT_MAX_CRATES}):\n{tree}",
        crates.len()
    );
}
