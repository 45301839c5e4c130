//! Which disk of a machine is which: a disk's identity (size, model, serial, WWN, position)
//! and the rules that map the source disks of a snapshot set onto a machine's target disks
//! before a restore writes anything (docs/operations.md, "Hosts with several disks").
//!
//! The rules, in order; each source disk is mapped by the first that decides it:
//!
//! 1. **Override** (`--map SRC=DST,…`): the operator's word. `SRC=none` leaves a source disk
//!    out of the restore.
//! 2. **Identity**: the target with the same WWN, else the same serial (the same machine, its
//!    disks enumerated in another order). Two targets with the source's serial are ambiguous.
//! 3. **Position**: the one remaining target at the same position (controller PCI path and
//!    SCSI channel:target:lun), when it can hold the source.
//! 4. **Size**: the only remaining target that can hold the source (repeated until nothing
//!    changes, so a large source takes the only large target and a small one the rest).
//!
//! Then every mapped target must hold its source (`size` at least the source's), two sources
//! may not share a target, and every source must be mapped or left out explicitly; otherwise
//! the whole mapping is refused with what is wrong and the candidates, before any byte is
//! written. Target disks no rule chose are never touched.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What identifies a disk across boots and machines.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskIdentity {
    /// Kernel name at capture (`sda`, `nvme0n1`, `vda`).
    pub name: String,
    /// Bytes.
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wwn: Option<String>,
    /// Where it hangs: the PCI path of its controller, plus channel:target:lun on SCSI/SATA
    /// (like udev's `by-path`, without the enumeration-order numbers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl fmt::Display for DiskIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} bytes", self.name, self.size)?;
        if let Some(m) = &self.model {
            write!(f, ", model {m}")?;
        }
        if let Some(s) = &self.serial {
            write!(f, ", serial {s}")?;
        }
        if let Some(w) = &self.wwn {
            write!(f, ", wwn {w}")?;
        }
        if let Some(p) = &self.path {
            write!(f, ", at {p}")?;
        }
        f.write_str(")")
    }
}

/// Why a source disk went to its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MapRule {
    Override,
    Wwn,
    Serial,
    Position,
    Size,
}

impl fmt::Display for MapRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MapRule::Override => "--map",
            MapRule::Wwn => "same WWN",
            MapRule::Serial => "same serial",
            MapRule::Position => "same position",
            MapRule::Size => "only target that holds it",
        })
    }
}

/// One source disk and the target it is restored onto (indexes into the two lists).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pair {
    pub source: usize,
    pub target: usize,
    pub rule: MapRule,
}

/// The decided mapping: pairs in source order, and the sources left out by `SRC=none`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub pairs: Vec<Pair>,
    pub skipped: Vec<usize>,
}

impl Mapping {
    /// One line per source disk, for the job log and the CLI: `vda → vdc (same serial)`.
    pub fn describe(&self, sources: &[DiskIdentity], targets: &[DiskIdentity]) -> Vec<String> {
        let mut lines: Vec<(usize, String)> = self
            .pairs
            .iter()
            .map(|p| (p.source, format!("{} → {} ({})", sources[p.source], targets[p.target].name, p.rule)))
            .collect();
        lines.extend(self.skipped.iter().map(|&s| (s, format!("{} → not restored (--map)", sources[s]))));
        lines.sort();
        lines.into_iter().map(|(_, l)| l).collect()
    }
}

/// A mapping refused before any write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("--map {0:?}: expected SRC=DST pairs separated by commas (DST `none` leaves SRC out)")]
    BadOverride(String),
    #[error("--map names source disk {name}, but the snapshot has: {have}")]
    UnknownSource { name: String, have: String },
    #[error("--map names target disk {name}, but this machine has: {have}")]
    UnknownTarget { name: String, have: String },
    #[error("target disk {target} is chosen for both {first} and {second}: nothing was written")]
    SharedTarget { target: String, first: String, second: String },
    #[error("target disk {target} is too small for source disk {source_disk}: nothing was written")]
    TooSmall { source_disk: String, source_size: u64, target: String, target_size: u64 },
    #[error(
        "source disk {source_disk} maps ambiguously ({why}); candidates: {candidates}: say which with \
         --map {source_name}=DISK; nothing was written"
    )]
    Ambiguous { source_disk: String, source_name: String, why: String, candidates: String },
    #[error("no target disk for source disk {source_disk}: {why}; nothing was written")]
    Unmapped { source_disk: String, why: String },
}

/// Parses `--map` text: `sda=nvme0n1,sdb=nvme1n1` (a `/dev/` prefix is dropped).
pub fn parse_overrides(text: &str) -> Result<Vec<(String, String)>, MapError> {
    let bad = || MapError::BadOverride(text.to_string());
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (s, d) = part.split_once('=').ok_or_else(bad)?;
        let (s, d) = (s.trim().trim_start_matches("/dev/"), d.trim().trim_start_matches("/dev/"));
        if s.is_empty() || d.is_empty() || out.iter().any(|(o, _): &(String, String)| o == s) {
            return Err(bad());
        }
        out.push((s.to_string(), d.to_string()));
    }
    if out.is_empty() {
        return Err(bad());
    }
    Ok(out)
}

fn names(disks: &[DiskIdentity], which: impl Iterator<Item = usize>) -> String {
    which.map(|i| disks[i].to_string()).collect::<Vec<_>>().join(", ")
}

fn same(a: &Option<String>, b: &Option<String>) -> bool {
    matches!((a, b), (Some(a), Some(b)) if !a.trim().is_empty() && a.trim() == b.trim())
}

/// Maps `sources` (the snapshot set's disks) onto `targets` (this machine's) by the rules in
/// the module docs.
pub fn map_disks(
    sources: &[DiskIdentity],
    targets: &[DiskIdentity],
    overrides: &[(String, String)],
) -> Result<Mapping, MapError> {
    let mut to: Vec<Option<(usize, MapRule)>> = vec![None; sources.len()];
    let mut skipped = Vec::new();
    let all = |d: &[DiskIdentity]| d.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ");
    // 1. Overrides.
    for (s, d) in overrides {
        let si = sources
            .iter()
            .position(|x| &x.name == s)
            .ok_or_else(|| MapError::UnknownSource { name: s.clone(), have: all(sources) })?;
        if d == "none" {
            skipped.push(si);
            continue;
        }
        let ti = targets
            .iter()
            .position(|x| &x.name == d)
            .ok_or_else(|| MapError::UnknownTarget { name: d.clone(), have: all(targets) })?;
        to[si] = Some((ti, MapRule::Override));
    }
    let open = |to: &[Option<(usize, MapRule)>], skipped: &[usize], i: usize| to[i].is_none() && !skipped.contains(&i);
    let taken = |to: &[Option<(usize, MapRule)>], t: usize| to.iter().flatten().any(|(x, _)| *x == t);
    // 2. Identity: WWN, then serial.
    fn wwn(d: &DiskIdentity) -> &Option<String> {
        &d.wwn
    }
    fn serial(d: &DiskIdentity) -> &Option<String> {
        &d.serial
    }
    for (rule, key) in [(MapRule::Wwn, wwn as fn(&DiskIdentity) -> &Option<String>), (MapRule::Serial, serial)] {
        for si in 0..sources.len() {
            if !open(&to, &skipped, si) {
                continue;
            }
            let hits: Vec<usize> = (0..targets.len()).filter(|&t| same(key(&sources[si]), key(&targets[t]))).collect();
            match hits.as_slice() {
                [] => {}
                [t] => to[si] = Some((*t, rule)),
                many => {
                    return Err(MapError::Ambiguous {
                        source_disk: sources[si].to_string(),
                        source_name: sources[si].name.clone(),
                        why: format!(
                            "{} targets have its {}",
                            many.len(),
                            if rule == MapRule::Wwn { "WWN" } else { "serial" }
                        ),
                        candidates: names(targets, many.iter().copied()),
                    })
                }
            }
        }
    }
    // 3. Position.
    for si in 0..sources.len() {
        if !open(&to, &skipped, si) || sources[si].path.is_none() {
            continue;
        }
        let hits: Vec<usize> = (0..targets.len())
            .filter(|&t| {
                !taken(&to, t) && same(&sources[si].path, &targets[t].path) && targets[t].size >= sources[si].size
            })
            .collect();
        if let [t] = hits.as_slice() {
            to[si] = Some((*t, MapRule::Position));
        }
    }
    // 4. Size, until nothing changes.
    loop {
        let mut changed = false;
        for si in 0..sources.len() {
            if !open(&to, &skipped, si) {
                continue;
            }
            let fits: Vec<usize> =
                (0..targets.len()).filter(|&t| !taken(&to, t) && targets[t].size >= sources[si].size).collect();
            if let [t] = fits.as_slice() {
                to[si] = Some((*t, MapRule::Size));
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    // Checks: what is left unmapped, shared targets, sizes.
    for (si, source) in sources.iter().enumerate() {
        if !open(&to, &skipped, si) {
            continue;
        }
        let fits: Vec<usize> =
            (0..targets.len()).filter(|&t| !taken(&to, t) && targets[t].size >= source.size).collect();
        if fits.len() > 1 {
            return Err(MapError::Ambiguous {
                source_disk: source.to_string(),
                source_name: source.name.clone(),
                why: "no target has its WWN, serial or position, and several can hold it".into(),
                candidates: names(targets, fits.into_iter()),
            });
        }
        let free: Vec<usize> = (0..targets.len()).filter(|&t| !taken(&to, t)).collect();
        let why = if free.is_empty() {
            "every target disk is taken".to_string()
        } else {
            format!("none of the free targets can hold it: {}", names(targets, free.into_iter()))
        };
        return Err(MapError::Unmapped { source_disk: source.to_string(), why });
    }
    let mut pairs = Vec::new();
    for (si, m) in to.iter().enumerate() {
        let Some((ti, rule)) = *m else { continue };
        if let Some(first) = pairs.iter().find(|p: &&Pair| p.target == ti) {
            return Err(MapError::SharedTarget {
                target: targets[ti].name.clone(),
                first: sources[first.source].name.clone(),
                second: sources[si].name.clone(),
            });
        }
        if targets[ti].size < sources[si].size {
            return Err(MapError::TooSmall {
                source_disk: sources[si].to_string(),
                source_size: sources[si].size,
                target: targets[ti].to_string(),
                target_size: targets[ti].size,
            });
        }
        pairs.push(Pair { source: si, target: ti, rule });
    }
    skipped.sort();
    Ok(Mapping { pairs, skipped })
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 1 << 30;

    fn disk(name: &str, size: u64, serial: Option<&str>, path: Option<&str>) -> DiskIdentity {
        DiskIdentity {
            name: name.into(),
            size,
            serial: serial.map(String::from),
            path: path.map(String::from),
            ..Default::default()
        }
    }

    fn pairs(m: &Mapping, s: &[DiskIdentity], t: &[DiskIdentity]) -> Vec<(String, String, MapRule)> {
        m.pairs.iter().map(|p| (s[p.source].name.clone(), t[p.target].name.clone(), p.rule)).collect()
    }

    fn p(s: &str, t: &str, r: MapRule) -> (String, String, MapRule) {
        (s.into(), t.into(), r)
    }

    /// The three-disk machine of the issue: two RAID1 members and a data disk.
    fn source() -> Vec<DiskIdentity> {
        vec![
            disk("vda", 2 * G, Some("KURA-R1-A"), Some("pci-0000:00:04.0")),
            disk("vdb", 2 * G, Some("KURA-R1-B"), Some("pci-0000:00:05.0")),
            disk("vdc", 3 * G, Some("KURA-DATA"), Some("pci-0000:00:06.0")),
        ]
    }

    #[test]
    fn the_same_disks_in_another_order_map_by_serial() {
        let t = vec![
            disk("vda", 3 * G, Some("KURA-DATA"), Some("pci-0000:00:04.0")),
            disk("vdb", 2 * G, Some("KURA-R1-B"), Some("pci-0000:00:05.0")),
            disk("vdc", 2 * G, Some("KURA-R1-A"), Some("pci-0000:00:06.0")),
        ];
        let s = source();
        let m = map_disks(&s, &t, &[]).unwrap();
        use MapRule::Serial;
        assert_eq!(pairs(&m, &s, &t), [p("vda", "vdc", Serial), p("vdb", "vdb", Serial), p("vdc", "vda", Serial)]);
        let lines = m.describe(&s, &t);
        assert!(
            lines[0].starts_with("vda (2147483648 bytes, serial KURA-R1-A")
                && lines[0].ends_with("→ vdc (same serial)")
        );
    }

    #[test]
    fn wwn_wins_over_serial_and_a_doubled_serial_is_ambiguous() {
        let mut s = vec![disk("sda", G, Some("X"), None)];
        s[0].wwn = Some("naa.5000c500a1b2c3d4".into());
        let mut t = vec![disk("sda", G, Some("X"), None), disk("sdb", G, None, None)];
        t[1].wwn = s[0].wwn.clone();
        assert_eq!(pairs(&map_disks(&s, &t, &[]).unwrap(), &s, &t), [p("sda", "sdb", MapRule::Wwn)]);
        s[0].wwn = None;
        let t = vec![disk("sda", G, Some("X"), None), disk("sdb", G, Some("X"), None)];
        let e = map_disks(&s, &t, &[]).unwrap_err().to_string();
        assert!(e.contains("2 targets have its serial") && e.contains("sda (") && e.contains("sdb ("), "{e}");
    }

    #[test]
    fn a_new_machine_maps_by_position_then_size() {
        // New serials; the data disk sits at the same position, the others fit only one way.
        let t = vec![
            disk("sda", 2 * G, Some("N1"), Some("pci-0000:00:1f.2-ata-1")),
            disk("sdb", 4 * G, Some("N2"), Some("pci-0000:00:06.0")),
            disk("sdc", 2 * G, Some("N3"), Some("pci-0000:00:1f.2-ata-2")),
        ];
        let s = source();
        let e = map_disks(&s, &t, &[]).unwrap_err();
        // vdc takes sdb by position; vda and vdb both fit sda and sdc: ambiguous, refused.
        match &e {
            MapError::Ambiguous { source_name, candidates, .. } => {
                assert_eq!(source_name, "vda");
                assert!(candidates.contains("sda (") && candidates.contains("sdc ("), "{candidates}");
            }
            other => panic!("{other}"),
        }
        assert!(e.to_string().contains("--map vda=DISK"), "{e}");
        // Resolved with an override for one; the other is then the only one left.
        let o = parse_overrides("vda=/dev/sdc").unwrap();
        let m = map_disks(&s, &t, &o).unwrap();
        assert_eq!(
            pairs(&m, &s, &t),
            [p("vda", "sdc", MapRule::Override), p("vdb", "sda", MapRule::Size), p("vdc", "sdb", MapRule::Position)]
        );
        // Size alone: the big source takes the only big target, the small the rest.
        let s = vec![disk("a", 3 * G, None, None), disk("b", G, None, None)];
        let t = vec![disk("x", G, None, None), disk("y", 3 * G, None, None)];
        let m = map_disks(&s, &t, &[]).unwrap();
        assert_eq!(pairs(&m, &s, &t), [p("a", "y", MapRule::Size), p("b", "x", MapRule::Size)]);
    }

    #[test]
    fn a_too_small_target_is_refused_even_when_its_serial_matches_or_it_is_named() {
        let s = source();
        let mut t = source();
        t[2].size = 2 * G;
        let e = map_disks(&s, &t, &[]).unwrap_err();
        assert!(matches!(&e, MapError::TooSmall { target_size, .. } if *target_size == 2 * G), "{e}");
        assert!(e.to_string().contains("nothing was written"), "{e}");
        let t = source();
        let e = map_disks(&s, &t, &parse_overrides("vdc=vda").unwrap()).unwrap_err();
        // vdc → vda (2 GiB) by --map: too small, or shared with vda's serial match.
        assert!(matches!(e, MapError::SharedTarget { .. } | MapError::TooSmall { .. }), "{e}");
    }

    #[test]
    fn every_source_needs_a_target_unless_left_out() {
        let s = source();
        let t = vec![disk("sda", 3 * G, Some("KURA-DATA"), None), disk("sdb", 2 * G, Some("KURA-R1-A"), None)];
        let e = map_disks(&s, &t, &[]).unwrap_err();
        assert!(matches!(&e, MapError::Unmapped { source_disk, .. } if source_disk.starts_with("vdb")), "{e}");
        let m = map_disks(&s, &t, &parse_overrides("vdb=none").unwrap()).unwrap();
        assert_eq!(m.skipped, [1]);
        assert_eq!(m.pairs.len(), 2);
        assert!(m.describe(&s, &t)[1].contains("not restored"));
    }

    #[test]
    fn overrides_are_checked() {
        let s = source();
        for bad in ["", "vda", "vda=", "=vdb", "vda=vdb,vda=vdc"] {
            assert!(matches!(parse_overrides(bad), Err(MapError::BadOverride(_))), "{bad}");
        }
        let e = map_disks(&s, &s, &parse_overrides("sdz=vda").unwrap()).unwrap_err().to_string();
        assert!(e.contains("source disk sdz") && e.contains("vda, vdb, vdc"), "{e}");
        let e = map_disks(&s, &s, &parse_overrides("vda=nvme9n1").unwrap()).unwrap_err().to_string();
        assert!(e.contains("target disk nvme9n1"), "{e}");
        let e = map_disks(&s, &s, &parse_overrides("vda=vdb,vdb=vdb").unwrap()).unwrap_err();
        assert!(matches!(e, MapError::SharedTarget { .. }), "{e}");
    }

    #[test]
    fn one_disk_onto_one_disk_is_the_old_restore() {
        let s = vec![disk("vda", G, None, None)];
        let t = vec![disk("sda", 2 * G, None, None)];
        assert_eq!(pairs(&map_disks(&s, &t, &[]).unwrap(), &s, &t), [p("vda", "sda", MapRule::Size)]);
        let two = vec![disk("sda", 2 * G, None, None), disk("sdb", 2 * G, None, None)];
        assert!(matches!(map_disks(&s, &two, &[]), Err(MapError::Ambiguous { .. })));
    }
}
