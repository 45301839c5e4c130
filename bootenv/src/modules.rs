//! A kernel's module metadata, as `depmod` writes it under `/lib/modules/<release>/`:
//!
//! - `modules.alias`: `alias <glob> <module>` lines; a device's modalias (from
//!   `/sys/devices/**/modalias`, e.g. `pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00`)
//!   matched against the globs (`fnmatch(3)` rules: `*`, `?`, `[...]`) names its drivers.
//! - `modules.dep`: `<path>: <dep path> <dep path> ...` lines, each module with every module it
//!   needs (the transitive closure, in an order `modprobe` loads from the end).
//! - `modules.builtin`: paths of modules compiled into the kernel: nothing to load.
//!
//! Module names are the file name without `.ko` (or `.ko.xz`, `.ko.zst`, `.ko.gz`) and with `-`
//! written `_`, as the kernel names them (`nvme-core.ko` is `nvme_core`).

use anyhow::{bail, Result};
use std::collections::{BTreeSet, HashMap, HashSet};

/// File name endings of kernel modules, compressed or not.
pub const MODULE_SUFFIXES: [&str; 4] = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"];

/// The kernel's name of the module at `path` (`kernel/drivers/nvme/host/nvme-core.ko.xz` →
/// `nvme_core`).
pub fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let stem = MODULE_SUFFIXES.iter().rev().find_map(|s| base.strip_suffix(s)).unwrap_or(base);
    normalize(stem)
}

/// `-` and `_` are the same in module names; the kernel uses `_`.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// `path` with any compression suffix replaced by plain `.ko` (the form the initramfs ships).
pub fn plain_path(path: &str) -> String {
    for s in [".ko.xz", ".ko.zst", ".ko.gz"] {
        if let Some(p) = path.strip_suffix(s) {
            return format!("{p}.ko");
        }
    }
    path.to_string()
}

/// `fnmatch(3)` without flags, as `modprobe` applies alias globs: `*` any run, `?` one
/// character, `[abc]`, `[a-z]`, `[!x]` / `[^x]` a class. Iterative with one backtrack point, so
/// linear-ish and never recursive.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() {
            match p[pi] {
                b'*' => {
                    star = Some((pi, ti));
                    pi += 1;
                    continue;
                }
                b'?' => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class_match(p, pi, t[ti]) {
                        if matched {
                            pi = next;
                            ti += 1;
                            continue;
                        }
                    } else if t[ti] == b'[' {
                        // An unterminated class is a literal '['.
                        pi += 1;
                        ti += 1;
                        continue;
                    }
                }
                c if c == t[ti] => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, st)) => {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class starting at `p[start] == b'['`. Returns whether it matched
/// and the index after the class, or `None` if the class is not terminated.
fn class_match(p: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some(b'!') | Some(b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if i + 2 < p.len() && p[i + 1] == b'-' && p[i + 2] != b']' {
            if p[i] <= c && c <= p[i + 2] {
                matched = true;
            }
            i += 3;
        } else {
            if p[i] == c {
                matched = true;
            }
            i += 1;
        }
    }
    None
}

/// The parsed `modules.alias`, bucketed by bus (the text before the first `:`) so a lookup
/// only tries the globs of the device's bus plus the few whose bus part is itself a glob.
#[derive(Debug, Default, Clone)]
pub struct AliasTable {
    by_bus: HashMap<String, Vec<(String, String)>>,
    wild: Vec<(String, String)>,
    len: usize,
}

fn bus_of(s: &str) -> &str {
    s.split(':').next().unwrap_or(s)
}

impl AliasTable {
    /// Parses `modules.alias` text. Lines that are not `alias <glob> <module>` are skipped.
    pub fn parse(text: &str) -> AliasTable {
        let mut t = AliasTable::default();
        for line in text.lines() {
            let mut w = line.split_whitespace();
            let (Some("alias"), Some(glob), Some(module), None) = (w.next(), w.next(), w.next(), w.next()) else {
                continue;
            };
            t.insert(glob, module);
        }
        t
    }

    fn insert(&mut self, glob: &str, module: &str) {
        let bus = bus_of(glob);
        let entry = (glob.to_string(), normalize(module));
        if bus.contains(['*', '?', '[']) {
            self.wild.push(entry);
        } else {
            self.by_bus.entry(bus.to_string()).or_default().push(entry);
        }
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The modules whose alias globs match `modalias`, each once, in file order.
    pub fn lookup(&self, modalias: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let bucket = self.by_bus.get(bus_of(modalias)).map(Vec::as_slice).unwrap_or(&[]);
        for (glob, module) in bucket.iter().chain(&self.wild) {
            if glob_match(glob, modalias) && !out.contains(module) {
                out.push(module.clone());
            }
        }
        out
    }

    /// Writes the table back as `modules.alias` text, keeping only modules `keep` accepts.
    pub fn to_text(&self, keep: impl Fn(&str) -> bool) -> String {
        let mut lines: Vec<String> = self
            .by_bus
            .values()
            .flatten()
            .chain(&self.wild)
            .filter(|(_, m)| keep(m))
            .map(|(g, m)| format!("alias {g} {m}"))
            .collect();
        lines.sort();
        let mut s = lines.join("\n");
        s.push('\n');
        s
    }
}

/// One module of `modules.dep`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepEntry {
    /// Path relative to the modules directory, as `modules.dep` has it.
    pub path: String,
    /// Names of the modules it needs.
    pub deps: Vec<String>,
}

/// The parsed `modules.dep`, by module name.
#[derive(Debug, Default, Clone)]
pub struct DepTable {
    pub modules: HashMap<String, DepEntry>,
}

impl DepTable {
    pub fn parse(text: &str) -> Result<DepTable> {
        let mut modules = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let Some((path, deps)) = line.split_once(':') else {
                bail!("modules.dep line {}: no ':' in {line:?}", n + 1);
            };
            let deps = deps.split_whitespace().map(module_name).collect();
            modules.insert(module_name(path), DepEntry { path: path.trim().to_string(), deps });
        }
        Ok(DepTable { modules })
    }

    pub fn get(&self, name: &str) -> Option<&DepEntry> {
        self.modules.get(&normalize(name))
    }

    /// The modules to load, in order, so that `names` and everything they need are loaded with
    /// each module after its dependencies (a depth-first post-order; each module once). A name
    /// not in the table is an error unless `skip` accepts it (e.g. a builtin module).
    pub fn load_order(&self, names: &[String], skip: impl Fn(&str) -> bool) -> Result<Vec<String>> {
        let mut order = Vec::new();
        let mut done: HashSet<String> = HashSet::new();
        for n in names {
            self.visit(&normalize(n), &skip, &mut done, &mut Vec::new(), &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        skip: &impl Fn(&str) -> bool,
        done: &mut HashSet<String>,
        stack: &mut Vec<String>,
        order: &mut Vec<String>,
    ) -> Result<()> {
        if done.contains(name) {
            return Ok(());
        }
        if stack.iter().any(|s| s == name) {
            bail!("modules.dep has a dependency cycle: {} -> {name}", stack.join(" -> "));
        }
        let Some(entry) = self.modules.get(name) else {
            if skip(name) {
                return Ok(());
            }
            bail!("module {name} is not in modules.dep");
        };
        stack.push(name.to_string());
        // modules.dep lists the whole closure in an order modprobe loads from the end; visiting
        // from the end keeps that order where it does not matter.
        for d in entry.deps.iter().rev() {
            self.visit(d, skip, done, stack, order)?;
        }
        stack.pop();
        done.insert(name.to_string());
        order.push(name.to_string());
        Ok(())
    }

    /// Writes `modules.dep` text for the modules `keep` accepts, paths passed through `rename`.
    pub fn to_text(&self, keep: impl Fn(&str) -> bool, rename: impl Fn(&str) -> String) -> String {
        let mut lines: Vec<String> = self
            .modules
            .iter()
            .filter(|(n, _)| keep(n))
            .map(|(_, e)| {
                let mut line = format!("{}:", rename(&e.path));
                for d in &e.deps {
                    if let Some(de) = self.modules.get(d) {
                        line.push(' ');
                        line.push_str(&rename(&de.path));
                    }
                }
                line
            })
            .collect();
        lines.sort();
        let mut s = lines.join("\n");
        s.push('\n');
        s
    }
}

/// Names of the modules in `modules.builtin` text.
pub fn parse_builtin(text: &str) -> BTreeSet<String> {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).map(module_name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_module_paths() {
        assert_eq!(module_name("kernel/drivers/nvme/host/nvme-core.ko"), "nvme_core");
        assert_eq!(module_name("kernel/drivers/net/virtio_net.ko.xz"), "virtio_net");
        assert_eq!(module_name("a/b/mlx5_core.ko.zst"), "mlx5_core");
        assert_eq!(plain_path("kernel/x/e1000e.ko.zst"), "kernel/x/e1000e.ko");
        assert_eq!(plain_path("kernel/x/e1000e.ko"), "kernel/x/e1000e.ko");
    }

    #[test]
    fn globs_match_like_fnmatch() {
        assert!(glob_match("pci:v00001AF4d*sv*sd*bc*sc*i*", "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"));
        assert!(!glob_match("pci:v00001AF4d*sv*sd*bc*sc*i*", "pci:v00008086d00001000sv00001AF4sd00000001bc02sc00i00"));
        assert!(glob_match("pci:v*d*sv*sd*bc01sc08i02*", "pci:v0000144Dd0000A808sv0000144Dsd0000A801bc01sc08i02"));
        assert!(!glob_match("pci:v*d*sv*sd*bc01sc08i02*", "pci:v0000144Dd0000A808sv0000144Dsd0000A801bc01sc06i01"));
        assert!(glob_match("virtio:d00000001v*", "virtio:d00000001v00001AF4"));
        assert!(!glob_match("virtio:d00000001v*", "virtio:d00000002v00001AF4"));
        assert!(glob_match("scsi:t-0x00*", "scsi:t-0x00"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("x[0-9]y", "x5y"));
        assert!(!glob_match("x[!0-9]y", "x5y"));
        assert!(glob_match("x[!0-9]y", "xay"));
        assert!(glob_match("x[]]y", "x]y"));
        assert!(glob_match("a[b", "a[b"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("a", ""));
        assert!(glob_match("acpi*:PNP0A03:*", "acpi:PNP0A03:"));
    }

    const ALIAS: &str = "\
# Aliases extracted from modules themselves.
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias virtio:d00000001v* virtio_net
alias virtio:d00000002v* virtio_blk
alias pci:v*d*sv*sd*bc01sc08i02* nvme
alias pci:v*d*sv*sd*bc01sc06i01* ahci
alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e
alias scsi:t-0x00* sd_mod
alias acpi*:PNP0A03:* pci_thing
alias symbol:foo bar
";

    #[test]
    fn alias_lookup_by_real_modaliases() {
        let t = AliasTable::parse(ALIAS);
        assert_eq!(t.len(), 9);
        assert_eq!(t.lookup("pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"), ["virtio_pci"]);
        assert_eq!(t.lookup("pci:v00001AF4d00001042sv00001AF4sd00001042bc01sc80i00"), ["virtio_pci"]);
        assert_eq!(t.lookup("virtio:d00000001v00001AF4"), ["virtio_net"]);
        assert_eq!(t.lookup("pci:v00008086d000010D3sv00008086sd0000A01Fbc02sc00i00"), ["e1000e"]);
        assert_eq!(t.lookup("pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01"), ["ahci"]);
        assert_eq!(t.lookup("pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02"), ["nvme"]);
        assert_eq!(t.lookup("acpi:PNP0A03:"), ["pci_thing"]);
        assert!(t.lookup("usb:v1D6Bp0002d0601dc09dsc00dp01ic09isc00ip00in00").is_empty());
        let text = t.to_text(|m| m != "e1000e");
        assert!(text.contains("alias virtio:d00000001v* virtio_net\n"));
        assert!(!text.contains("e1000e"));
    }

    const DEP: &str = "\
kernel/drivers/nvme/host/nvme.ko: kernel/drivers/nvme/host/nvme-core.ko kernel/block/t10-pi.ko kernel/lib/crc64-rocksoft.ko kernel/lib/crc-t10dif.ko kernel/lib/crc64.ko kernel/crypto/crct10dif_common.ko
kernel/drivers/nvme/host/nvme-core.ko: kernel/block/t10-pi.ko kernel/lib/crc64-rocksoft.ko kernel/lib/crc-t10dif.ko kernel/lib/crc64.ko kernel/crypto/crct10dif_common.ko
kernel/block/t10-pi.ko: kernel/lib/crc64-rocksoft.ko kernel/lib/crc-t10dif.ko kernel/lib/crc64.ko kernel/crypto/crct10dif_common.ko
kernel/lib/crc64-rocksoft.ko: kernel/lib/crc64.ko
kernel/lib/crc-t10dif.ko: kernel/crypto/crct10dif_common.ko
kernel/lib/crc64.ko:
kernel/crypto/crct10dif_common.ko:
kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz kernel/net/core/failover.ko.xz kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko.xz: kernel/net/core/failover.ko.xz
kernel/net/core/failover.ko.xz:
";

    fn pos(order: &[String], m: &str) -> usize {
        order.iter().position(|x| x == m).unwrap_or_else(|| panic!("{m} not in {order:?}"))
    }

    #[test]
    fn dependencies_load_first() {
        let t = DepTable::parse(DEP).unwrap();
        let builtin = ["virtio", "virtio_ring"];
        let order = t.load_order(&["nvme".into(), "virtio-net".into()], |n| builtin.contains(&n)).unwrap();
        assert_eq!(order.len(), 10, "{order:?}");
        for (before, after) in [
            ("crc64", "crc64_rocksoft"),
            ("crct10dif_common", "crc_t10dif"),
            ("crc64_rocksoft", "t10_pi"),
            ("crc_t10dif", "t10_pi"),
            ("t10_pi", "nvme_core"),
            ("nvme_core", "nvme"),
            ("failover", "net_failover"),
            ("net_failover", "virtio_net"),
        ] {
            assert!(pos(&order, before) < pos(&order, after), "{before} must load before {after}: {order:?}");
        }
        assert!(t.load_order(&["nosuch".into()], |_| false).is_err());
        assert!(t.load_order(&["virtio_net".into()], |_| false).is_err(), "virtio is neither listed nor builtin");
        let text = t.to_text(|n| n.contains("failover"), plain_path);
        assert_eq!(
            text,
            "kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\nkernel/net/core/failover.ko:\n"
        );
    }

    #[test]
    fn dependency_cycles_are_errors() {
        let t = DepTable::parse("a.ko: b.ko\nb.ko: a.ko\n").unwrap();
        let e = t.load_order(&["a".into()], |_| false).unwrap_err();
        assert!(e.to_string().contains("cycle"), "{e}");
    }

    /// Against the kernel installed on this machine, when there is one.
    #[test]
    fn installed_kernel_tables() {
        let Some(dir) = crate::initramfs::find_installed_modules() else {
            eprintln!("skipped: no /lib/modules/<release> with modules.dep on this machine");
            return;
        };
        let dep = DepTable::parse(&std::fs::read_to_string(dir.join("modules.dep")).unwrap()).unwrap();
        let alias = AliasTable::parse(&std::fs::read_to_string(dir.join("modules.alias")).unwrap());
        let builtin = parse_builtin(&std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default());
        let virtio_pci = alias.lookup("pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00");
        assert!(virtio_pci.contains(&"virtio_pci".to_string()) || builtin.contains("virtio_pci"), "{virtio_pci:?}");
        let net = alias.lookup("virtio:d00000001v00001AF4");
        assert!(net.contains(&"virtio_net".to_string()) || builtin.contains("virtio_net"), "{net:?}");
        let nvme = alias.lookup("pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02");
        assert!(nvme.contains(&"nvme".to_string()) || builtin.contains("nvme"), "{nvme:?}");
        if dep.get("nvme").is_some() {
            let order = dep.load_order(&["nvme".into()], |n| builtin.contains(n)).unwrap();
            assert_eq!(order.last().map(String::as_str), Some("nvme"));
            if dep.get("nvme_core").is_some() {
                assert!(pos(&order, "nvme_core") < pos(&order, "nvme"));
            }
        }
    }
}
