//! The agent binary runs as /init of an initramfs with no libraries: it must be static.
//! Checks the release build made with `kura_bootenv::initramfs::AGENT_BUILD` (fails, saying how
//! to build it, when it has not been built; `scripts/test` builds it).

use std::path::PathBuf;
use std::process::Command;

fn built_agent() -> Option<PathBuf> {
    let ws = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| ws.join("target"));
    let p = target.join("x86_64-unknown-linux-gnu/release/kura-agent");
    p.is_file().then_some(p)
}

#[test]
fn agent_is_static_and_runs_without_libraries() {
    let Some(agent) = built_agent() else {
        panic!("build the agent first (scripts/test does): {}", kura_bootenv::initramfs::AGENT_BUILD);
    };
    assert!(kura_bootenv::initramfs::is_static_elf(&agent).unwrap(), "{} has a dynamic loader", agent.display());
    if let Ok(out) = Command::new("ldd").arg(&agent).output() {
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        // glibc's ldd says "not a dynamic executable" for static and "statically linked" for
        // static-pie binaries.
        assert!(text.contains("not a dynamic executable") || text.contains("statically linked"), "ldd: {text}");
    }
    let out = Command::new(&agent).arg("--version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("kura-agent {}", env!("CARGO_PKG_VERSION")));
    // Not PID 1: it refuses to act as init.
    let out = Command::new(&agent).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PID 1"));

    // In an empty root (as root only): nothing but the binary, no /lib, no /etc.
    let root = tempfile::tempdir().unwrap();
    std::fs::copy(&agent, root.path().join("init")).unwrap();
    match Command::new("chroot").arg(root.path()).args(["/init", "--version"]).output() {
        Ok(o) if o.status.success() => assert!(String::from_utf8_lossy(&o.stdout).starts_with("kura-agent")),
        Ok(o) => {
            eprintln!("chroot not possible here ({}): skipped that part", String::from_utf8_lossy(&o.stderr).trim())
        }
        Err(e) => eprintln!("no chroot ({e}): skipped that part"),
    }
}
