//! LVM2 physical volumes: which bytes of a PV hold data, through the volume group's metadata.
//!
//! A PV is a label (`LABELONE` in one of the first four sectors), a metadata area holding the
//! volume group's text metadata in a circular buffer, and from `pe_start` on, the physical
//! extents that logical volumes are made of. The map of a PV:
//!
//! - everything outside the extent area (label, metadata areas, any tail) is used;
//! - extents no logical volume uses are free: not captured;
//! - an LV that is plain (every segment `striped` with one stripe, all on this PV), visible and
//!   not a part of another LV is probed like a partition ([`super::probe`], through a view that
//!   maps the LV's bytes to the PV's), and its filesystem's map is translated back onto the PV;
//! - an LV that is plain but continues on other PVs is read across them when all its PVs are
//!   partitions of the same disk ([`spanning`], run once per disk before the partitions are
//!   probed): each PV's share of its filesystem's map is placed on that PV;
//! - every other allocated extent is used: LVs continuing on a PV not on this disk, thin pools
//!   and their volumes, snapshots' copy-on-write stores, RAID/mirror/cache LVs and their sub-LVs, hidden
//!   LVs. Each gets a warning naming the LV and the reason.
//!
//! The metadata used is the committed copy (`raw_locn[0]` of the first metadata area, checked
//! against its CRC); a PV without a usable metadata copy of its own is captured raw. Everything
//! is validated before it is used: the label and metadata-area header checksums, sizes against
//! the partition, the text's size (bounded by the metadata area, at most [`MAX_TEXT`]) and its
//! nesting depth, every segment inside the PV's extents, no extent claimed twice.

use super::volume::ReadSeek;
use super::volume::{place, set_bytes, Piece, VolumeView};
use super::{le32, le64, read_at_or, AllocationMap, DiskContext, FsKind, Inside};
use crate::bitmap::Bitmap;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Seek};

const SECTOR: u64 = 512;
const LABEL_ID: &[u8; 8] = b"LABELONE";
const LABEL_TYPE: &[u8; 8] = b"LVM2 001";
const MDA_MAGIC: &[u8; 16] = b" LVM2 x[5A%r0N*>";
const MDA_HEADER_SIZE: u64 = 512;
/// `INITIAL_CRC` of LVM's `calc_crc`.
const INITIAL_CRC: u32 = 0xf597_a6cf;
/// `RAW_LOCN_IGNORED`: the metadata copy in this area is not used.
const RAW_LOCN_IGNORED: u32 = 1;
/// Largest metadata text accepted (LVM's own default area is 1 MiB; large VGs use a few).
pub(super) const MAX_TEXT: u64 = 16 << 20;
/// Nesting depth of the text format: VG → section → LV → segment is 4.
const MAX_DEPTH: usize = 8;
/// Bytes per bit of a PV's map.
const BLOCK: u64 = 4096;

/// Whether `head` (the start of a partition) carries an LVM2 label in one of its first four
/// sectors.
pub(super) fn detect(head: &[u8]) -> bool {
    find_label(head).is_some()
}

fn find_label(head: &[u8]) -> Option<usize> {
    (0..4)
        .map(|s| s * SECTOR as usize)
        .find(|&off| head.get(off..off + 32).is_some_and(|l| &l[0..8] == LABEL_ID && &l[24..32] == LABEL_TYPE))
}

/// LVM's `calc_crc`: CRC-32 (reflected 0xEDB88320) from `initial`, no final inversion.
pub(super) fn calc_crc(initial: u32, buf: &[u8]) -> u32 {
    const TAB: [u32; 16] = [
        0x00000000, 0x1db71064, 0x3b6e20c8, 0x26d930ac, 0x76dc4190, 0x6b6b51f4, 0x4db26158, 0x5005713c, 0xedb88320,
        0xf00f9344, 0xd6d6a3e8, 0xcb61b38c, 0x9b64c2b0, 0x86d3d2d4, 0xa00ae278, 0xbdbdf21c,
    ];
    let mut crc = initial;
    for &b in buf {
        crc ^= b as u32;
        crc = (crc >> 4) ^ TAB[(crc & 0xf) as usize];
        crc = (crc >> 4) ^ TAB[(crc & 0xf) as usize];
    }
    crc
}

/// What the label and the PV header say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PvLabel {
    /// The PV's UUID, 32 characters without dashes.
    pub uuid: String,
    pub device_size: u64,
    /// Offset of the first data area (`pe_start` as the label records it).
    pub data_offset: u64,
    /// Metadata areas: (offset, size) in bytes from the start of the PV.
    pub metadata_areas: Vec<(u64, u64)>,
}

/// Reads and checks the label in `head` (the first bytes of the PV).
pub(super) fn read_label(head: &[u8], part_size: u64) -> Result<PvLabel, String> {
    let off = find_label(head).ok_or("no LVM2 label in the first four sectors")?;
    let sector = head.get(off..off + SECTOR as usize).ok_or("label sector cut short")?;
    let crc = calc_crc(INITIAL_CRC, &sector[20..]);
    if crc != le32(sector, 16) {
        return Err(format!("label checksum {crc:#010x} does not match the stored {:#010x}", le32(sector, 16)));
    }
    if le64(sector, 8) != (off as u64) / SECTOR {
        return Err(format!("label in sector {} says it is in sector {}", off as u64 / SECTOR, le64(sector, 8)));
    }
    let ph = le32(sector, 20) as usize;
    if !(32..=SECTOR as usize - 56).contains(&ph) {
        return Err(format!("PV header offset {ph} is outside the label sector"));
    }
    let uuid = std::str::from_utf8(&sector[ph..ph + 32])
        .ok()
        .filter(|u| u.bytes().all(|c| c.is_ascii_alphanumeric()))
        .ok_or("PV UUID is not 32 alphanumeric characters")?
        .to_string();
    let device_size = le64(sector, ph + 32);
    // Two lists of (offset, size), each ended by a zero offset: data areas, then metadata areas.
    let mut lists: [Vec<(u64, u64)>; 2] = [Vec::new(), Vec::new()];
    let mut pos = ph + 40;
    for list in &mut lists {
        loop {
            if pos + 16 > sector.len() {
                return Err("PV header's area lists run past the label sector".into());
            }
            let (o, s) = (le64(sector, pos), le64(sector, pos + 8));
            pos += 16;
            if o == 0 {
                break;
            }
            list.push((o, s));
        }
    }
    let [data, metadata] = lists;
    let data_offset = match data.as_slice() {
        [(o, _)] => *o,
        [] => return Err("PV header lists no data area".into()),
        _ => return Err(format!("PV header lists {} data areas; one is supported", data.len())),
    };
    if data_offset >= part_size {
        return Err(format!("data area at {data_offset} is past the end of the partition ({part_size} bytes)"));
    }
    for &(o, s) in &metadata {
        if o.checked_add(s).is_none_or(|e| e > part_size) || s < MDA_HEADER_SIZE * 2 {
            return Err(format!("metadata area at {o} of {s} bytes does not fit the partition"));
        }
    }
    Ok(PvLabel { uuid, device_size, data_offset, metadata_areas: metadata })
}

/// Reads the committed metadata text of the area at (`offset`, `size`).
pub(super) fn read_metadata<R: Read + Seek>(part: &mut R, offset: u64, size: u64) -> Result<Vec<u8>, String> {
    let mut hdr = vec![0u8; MDA_HEADER_SIZE as usize];
    read_at_or(part, offset, &mut hdr, "the metadata area header")?;
    if &hdr[4..20] != MDA_MAGIC {
        return Err("metadata area header has no LVM2 magic".into());
    }
    let crc = calc_crc(INITIAL_CRC, &hdr[4..]);
    if crc != le32(&hdr, 0) {
        return Err(format!(
            "metadata area header checksum {crc:#010x} does not match the stored {:#010x}",
            le32(&hdr, 0)
        ));
    }
    if le32(&hdr, 20) != 1 {
        return Err(format!("metadata area header version {} is not 1", le32(&hdr, 20)));
    }
    if le64(&hdr, 24) != offset || le64(&hdr, 32) != size {
        return Err("metadata area header disagrees with the label about its place".into());
    }
    let (t_off, t_size, t_crc, flags) = (le64(&hdr, 40), le64(&hdr, 48), le32(&hdr, 56), le32(&hdr, 60));
    if t_off == 0 || t_size == 0 {
        return Err("metadata area holds no metadata (a PV not in a volume group)".into());
    }
    if flags & RAW_LOCN_IGNORED != 0 {
        return Err("this PV's metadata copy is marked ignored".into());
    }
    let ring = size - MDA_HEADER_SIZE;
    if t_off < MDA_HEADER_SIZE || t_off >= size || t_size > ring || t_size > MAX_TEXT {
        return Err(format!("metadata text of {t_size} bytes at {t_off} does not fit its area of {size} bytes"));
    }
    let mut text = vec![0u8; t_size as usize];
    let first = t_size.min(size - t_off) as usize;
    read_at_or(part, offset + t_off, &mut text[..first], "the metadata text")?;
    if first < text.len() {
        read_at_or(part, offset + MDA_HEADER_SIZE, &mut text[first..], "the wrapped metadata text")?;
    }
    let crc = calc_crc(INITIAL_CRC, &text);
    if crc != t_crc {
        return Err(format!("metadata text checksum {crc:#010x} does not match the stored {t_crc:#010x}"));
    }
    // The text ends with a NUL LVM writes with it.
    while text.last() == Some(&0) {
        text.pop();
    }
    Ok(text)
}

/// A value of LVM's text metadata format.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    Int(i64),
    Str(String),
    List(Vec<Value>),
    Section(BTreeMap<String, Value>),
}

impl Value {
    fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Section(m) => m.get(key),
            _ => None,
        }
    }
    fn int(&self, key: &str) -> Result<i64, String> {
        match self.get(key) {
            Some(Value::Int(i)) => Ok(*i),
            _ => Err(format!("metadata lacks the number {key:?}")),
        }
    }
    fn u64(&self, key: &str) -> Result<u64, String> {
        u64::try_from(self.int(key)?).map_err(|_| format!("metadata {key:?} is negative"))
    }
    fn str(&self, key: &str) -> Option<&str> {
        match self.get(key) {
            Some(Value::Str(s)) => Some(s),
            _ => None,
        }
    }
    fn sections(&self) -> impl Iterator<Item = (&String, &Value)> {
        let m = match self {
            Value::Section(m) => Some(m),
            _ => None,
        };
        m.into_iter().flatten().filter(|(_, v)| matches!(v, Value::Section(_)))
    }
    /// Every string inside this value, recursively.
    fn strings<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            Value::Str(s) => out.push(s),
            Value::List(l) => l.iter().for_each(|v| v.strings(out)),
            Value::Section(m) => m.values().for_each(|v| v.strings(out)),
            Value::Int(_) => {}
        }
    }
}

/// Parses LVM's text metadata format: `key = value` and `name { ... }`, values being integers,
/// quoted strings, or `[ ... ]` lists of them; `#` comments. Bounded by the input's size and
/// [`MAX_DEPTH`].
pub(super) fn parse_text(text: &[u8]) -> Result<Value, String> {
    let mut p = Parser { s: text, i: 0 };
    let top = p.section_body(0)?;
    p.skip_ws();
    if p.i != p.s.len() {
        return Err(format!("metadata text has a stray {:?} at byte {}", p.s[p.i] as char, p.i));
    }
    Ok(Value::Section(top))
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while let Some(&c) = self.s.get(self.i) {
            if c == b'#' {
                while self.s.get(self.i).is_some_and(|&c| c != b'\n') {
                    self.i += 1;
                }
            } else if c.is_ascii_whitespace() {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    fn err(&self, what: &str) -> String {
        format!("metadata text: {what} at byte {}", self.i)
    }

    fn ident(&mut self) -> Result<String, String> {
        let start = self.i;
        while self.s.get(self.i).is_some_and(|&c| c.is_ascii_alphanumeric() || b"_.+-".contains(&c)) {
            self.i += 1;
        }
        if start == self.i {
            return Err(self.err("expected a name"));
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    /// Entries up to a `}` (depth > 0) or the end of the text (depth 0).
    fn section_body(&mut self, depth: usize) -> Result<BTreeMap<String, Value>, String> {
        if depth > MAX_DEPTH {
            return Err(self.err("sections nested too deep"));
        }
        let mut m = BTreeMap::new();
        loop {
            self.skip_ws();
            match self.s.get(self.i) {
                None if depth == 0 => return Ok(m),
                None => return Err(self.err("unterminated section")),
                Some(b'}') if depth > 0 => {
                    self.i += 1;
                    return Ok(m);
                }
                Some(_) => {}
            }
            let key = self.ident()?;
            self.skip_ws();
            let value = match self.s.get(self.i) {
                Some(b'{') => {
                    self.i += 1;
                    Value::Section(self.section_body(depth + 1)?)
                }
                Some(b'=') => {
                    self.i += 1;
                    self.skip_ws();
                    self.value()?
                }
                _ => return Err(self.err("expected '=' or '{'")),
            };
            if m.insert(key.clone(), value).is_some() {
                return Err(self.err(&format!("{key:?} given twice")));
            }
        }
    }

    fn value(&mut self) -> Result<Value, String> {
        match self.s.get(self.i) {
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                loop {
                    self.skip_ws();
                    match self.s.get(self.i) {
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Value::List(items));
                        }
                        Some(b',') if !items.is_empty() => self.i += 1,
                        Some(_) if items.is_empty() => {}
                        _ => return Err(self.err("expected ',' or ']'")),
                    }
                    self.skip_ws();
                    if self.s.get(self.i) == Some(&b']') {
                        continue;
                    }
                    match self.value()? {
                        Value::List(_) => return Err(self.err("nested list")),
                        v => items.push(v),
                    }
                }
            }
            Some(b'"') => {
                self.i += 1;
                let mut out = Vec::new();
                loop {
                    match self.s.get(self.i) {
                        None => return Err(self.err("unterminated string")),
                        Some(b'"') => break,
                        Some(b'\\') => {
                            let c = *self.s.get(self.i + 1).ok_or_else(|| self.err("unterminated string"))?;
                            out.push(c);
                            self.i += 2;
                        }
                        Some(&c) => {
                            out.push(c);
                            self.i += 1;
                        }
                    }
                }
                self.i += 1;
                Ok(Value::Str(String::from_utf8_lossy(&out).into_owned()))
            }
            Some(c) if *c == b'-' || c.is_ascii_digit() => {
                let start = self.i;
                self.i += 1;
                while self.s.get(self.i).is_some_and(|c| c.is_ascii_digit()) {
                    self.i += 1;
                }
                let t = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
                // LVM writes floats only for `version`-like fields we do not use: skip a fraction.
                if self.s.get(self.i) == Some(&b'.') {
                    self.i += 1;
                    while self.s.get(self.i).is_some_and(|c| c.is_ascii_digit()) {
                        self.i += 1;
                    }
                }
                t.parse().map(Value::Int).map_err(|_| self.err("number out of range"))
            }
            _ => Err(self.err("expected a value")),
        }
    }
}

/// An LV's share of this PV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LvOnPv {
    pub name: String,
    /// The LV's size over all its segments (also those on other PVs).
    pub size: u64,
    /// Its extents on this PV, in LV order.
    pub pieces: Vec<Piece>,
    /// Why it cannot be probed as a plain volume, if so.
    pub raw_reason: Option<String>,
    /// Whether it also has extents on other PVs (then only a map of the whole LV, read across
    /// the PVs of one disk by [`spanning`], can say which of its extents here are used).
    pub elsewhere: bool,
}

/// The volume group's layout of this PV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PvLayout {
    pub vg: String,
    /// The VG's UUID (`id`), which tells VGs of the same name apart.
    pub vg_id: String,
    pub pe_start: u64,
    pub extent_size: u64,
    pub pe_count: u64,
    pub lvs: Vec<LvOnPv>,
}

/// Finds this PV (by `uuid`) in the VG metadata and lists every LV's extents on it.
pub(super) fn layout(meta: &Value, uuid: &str, part_size: u64) -> Result<PvLayout, String> {
    let mut vgs = meta.sections();
    let (vg_name, vg) = vgs.next().ok_or("metadata holds no volume group")?;
    if vgs.next().is_some() {
        return Err("metadata holds more than one volume group".into());
    }
    let extent_size = vg.u64("extent_size")?.checked_mul(SECTOR).ok_or("extent size overflows")?;
    if extent_size == 0 || extent_size % SECTOR != 0 {
        return Err(format!("extent size {extent_size} is not a positive multiple of 512"));
    }
    let pvs = vg.get("physical_volumes").ok_or("metadata lacks physical_volumes")?;
    let mut this = None;
    for (pv_name, pv) in pvs.sections() {
        let id = pv.str("id").ok_or_else(|| format!("PV {pv_name} lacks an id"))?;
        if id.replace('-', "") == uuid {
            this = Some((pv_name.clone(), pv));
        }
    }
    let (pv_name, pv) = this.ok_or("this PV is not listed in its own volume group's metadata")?;
    let pe_start = vg_sectors(pv, "pe_start")?;
    let pe_count = pv.u64("pe_count")?;
    let end = pe_count.checked_mul(extent_size).and_then(|b| b.checked_add(pe_start));
    if end.is_none_or(|e| e > part_size) {
        return Err(format!(
            "{pe_count} extents of {extent_size} bytes from {pe_start} do not fit the partition ({part_size} bytes)"
        ));
    }

    let lvs_v = vg.get("logical_volumes");
    let all_lvs: Vec<(&String, &Value)> = lvs_v.map(|l| l.sections().collect()).unwrap_or_default();
    // LVs named by a non-plain segment of another LV are its parts (thin pool data, RAID legs,
    // a snapshot's copy-on-write store…). A snapshot's `origin` stays a plain volume.
    let mut parts: HashSet<&str> = HashSet::new();
    for (_, lv) in &all_lvs {
        for (_, seg) in lv.sections() {
            if seg.str("type") == Some("striped") {
                continue;
            }
            if let Value::Section(m) = seg {
                let mut names = Vec::new();
                m.iter()
                    .filter(|(k, _)| !matches!(k.as_str(), "origin" | "type"))
                    .for_each(|(_, v)| v.strings(&mut names));
                parts.extend(names);
            }
        }
    }

    let mut owner: Vec<Option<usize>> = Vec::new();
    owner.resize(usize::try_from(pe_count).map_err(|_| "too many extents")?.min(1 << 26), None);
    if owner.len() as u64 != pe_count {
        return Err(format!("{pe_count} extents is more than this reader accepts"));
    }
    let mut lvs = Vec::new();
    for (lv_name, lv) in &all_lvs {
        let mut size = 0u64;
        let mut pieces = Vec::new();
        let mut reasons: Vec<String> = Vec::new();
        let mut elsewhere = false;
        let status = status_flags(lv);
        if !status.iter().any(|s| s == "VISIBLE") {
            reasons.push("it is a hidden (internal) volume".into());
        }
        if parts.contains(lv_name.as_str()) {
            reasons.push("it is a part of another volume".into());
        }
        let mut segs: Vec<&Value> = lv.sections().map(|(_, s)| s).collect();
        segs.sort_by_key(|s| s.int("start_extent").unwrap_or(i64::MAX));
        for seg in segs {
            let start = seg.u64("start_extent")?;
            let count = seg.u64("extent_count")?;
            if start.checked_mul(extent_size) != Some(size) {
                return Err(format!("LV {lv_name}: segments are not contiguous at extent {start}"));
            }
            size = count
                .checked_add(start)
                .and_then(|e| e.checked_mul(extent_size))
                .ok_or_else(|| format!("LV {lv_name}: size overflows"))?;
            let kind = seg.str("type").unwrap_or("");
            if kind != "striped" {
                reasons.push(format!("it has a {kind:?} segment"));
                // A non-plain segment's own areas are LVs (listed above), not PV extents.
                continue;
            }
            let stripes = match seg.get("stripes") {
                Some(Value::List(l)) => l,
                _ => return Err(format!("LV {lv_name}: striped segment lacks its stripes")),
            };
            let stripe_count = seg.u64("stripe_count")?;
            if stripe_count == 0 || stripes.len() as u64 != stripe_count * 2 {
                return Err(format!("LV {lv_name}: {stripe_count} stripes but {} stripe entries", stripes.len()));
            }
            if stripe_count > 1 {
                reasons.push(format!("it is striped over {stripe_count} PVs"));
            }
            let per_stripe = count / stripe_count;
            if per_stripe * stripe_count != count {
                return Err(format!("LV {lv_name}: {count} extents do not divide into {stripe_count} stripes"));
            }
            for pair in stripes.chunks(2) {
                let (Value::Str(on), Value::Int(first)) = (&pair[0], &pair[1]) else {
                    return Err(format!("LV {lv_name}: a stripe is not a PV name and an extent"));
                };
                let first = u64::try_from(*first).map_err(|_| format!("LV {lv_name}: negative extent"))?;
                if *on != pv_name {
                    elsewhere = true;
                    continue;
                }
                if first.checked_add(per_stripe).is_none_or(|e| e > pe_count) {
                    return Err(format!("LV {lv_name}: extents {first}+{per_stripe} are past the PV's {pe_count}"));
                }
                for pe in first..first + per_stripe {
                    if let Some(other) = owner[pe as usize] {
                        let other: &LvOnPv = &lvs[other];
                        return Err(format!("extent {pe} is claimed by LV {} and LV {lv_name}", other.name));
                    }
                    owner[pe as usize] = Some(lvs.len());
                }
                pieces.push(Piece {
                    vol_offset: start * extent_size,
                    at: pe_start + first * extent_size,
                    len: per_stripe * extent_size,
                });
            }
        }
        reasons.dedup();
        let raw_reason = (!reasons.is_empty()).then(|| reasons.join(", "));
        lvs.push(LvOnPv { name: (*lv_name).clone(), size, pieces, raw_reason, elsewhere });
    }
    let vg_id = vg.str("id").unwrap_or_default().to_string();
    Ok(PvLayout { vg: vg_name.clone(), vg_id, pe_start, extent_size, pe_count, lvs })
}

fn vg_sectors(v: &Value, key: &str) -> Result<u64, String> {
    v.u64(key)?.checked_mul(SECTOR).ok_or_else(|| format!("{key} overflows"))
}

fn status_flags(lv: &Value) -> Vec<String> {
    match lv.get("status") {
        Some(Value::List(l)) => {
            l.iter().filter_map(|v| if let Value::Str(s) = v { Some(s.clone()) } else { None }).collect()
        }
        _ => Vec::new(),
    }
}

/// The allocation map of the PV in `part`. Errors are reasons for a raw capture.
pub(super) fn read<R: Read + Seek>(
    part: &mut R,
    part_size: u64,
    head: &[u8],
    disk: &DiskContext,
) -> Result<AllocationMap, String> {
    let label = read_label(head, part_size)?;
    let &(mda_off, mda_size) = label.metadata_areas.first().ok_or("PV has no metadata area of its own")?;
    let text = read_metadata(part, mda_off, mda_size)?;
    let meta = parse_text(&text)?;
    let pv = layout(&meta, &label.uuid, part_size)?;
    if pv.pe_start != label.data_offset {
        return Err(format!("metadata's pe_start {} differs from the label's {}", pv.pe_start, label.data_offset));
    }

    let blocks = part_size.div_ceil(BLOCK);
    // Everything outside the extent area is used; inside it, only what the LVs use.
    let mut bitmap = Bitmap::new(blocks);
    let ext_end = pv.pe_start + pv.pe_count * pv.extent_size;
    set_bytes(&mut bitmap, BLOCK, 0, pv.pe_start);
    set_bytes(&mut bitmap, BLOCK, ext_end, part_size);
    let mut warnings = Vec::new();
    let mut notes = Vec::new();
    for lv in &pv.lvs {
        if lv.pieces.is_empty() {
            continue;
        }
        if let Some(reason) = &lv.raw_reason {
            warnings.push(format!("LVM volume {}/{} captured raw: {reason}", pv.vg, lv.name));
            for p in &lv.pieces {
                set_bytes(&mut bitmap, BLOCK, p.at, p.at + p.len);
            }
            continue;
        }
        if lv.elsewhere {
            // Its extents on the other PVs are needed to read its filesystem: a map of the
            // whole LV comes from the disk-wide scan when all its PVs are on this disk.
            match disk.spanning.get(&(pv.vg_id.clone(), lv.name.clone())) {
                Some(map) => {
                    for w in &map.warnings {
                        warnings.push(format!("LVM volume {}/{}: {w}", pv.vg, lv.name));
                    }
                    place(&mut bitmap, BLOCK, map, &lv.pieces, lv.size);
                    notes.push(format!("{}: {:?} across PVs", lv.name, map.kind));
                }
                None => {
                    warnings.push(format!(
                        "LVM volume {}/{} captured raw: it continues on a PV that is not on this disk",
                        pv.vg, lv.name
                    ));
                    for p in &lv.pieces {
                        set_bytes(&mut bitmap, BLOCK, p.at, p.at + p.len);
                    }
                }
            }
            continue;
        }
        let mut view = VolumeView::new(part, &lv.pieces, lv.size);
        let map = super::probe_volume(&mut view, lv.size, Inside::Lvm, &DiskContext::default());
        for w in &map.warnings {
            warnings.push(format!("LVM volume {}/{}: {w}", pv.vg, lv.name));
        }
        place(&mut bitmap, BLOCK, &map, &lv.pieces, lv.size);
        notes.push(format!("{}: {:?}", lv.name, map.kind));
    }
    tracing::debug!(vg = %pv.vg, volumes = %notes.join(", "), "LVM physical volume mapped");
    Ok(AllocationMap { kind: FsKind::Lvm, block_size: BLOCK as u32, bitmap, label: Some(pv.vg), warnings })
}

/// One PV found by [`spanning`]: where its partition lies and its VG metadata.
struct FoundPv {
    uuid: String,
    vg_id: String,
    start: u64,
    size: u64,
    meta: Value,
    seqno: i64,
}

/// Maps of the LVs that span several PVs of one disk, by (VG id, LV name). `parts` are the
/// disk's partitions (start, size). A VG counts only if its PVs' metadata copies agree
/// (same seqno) and no PV appears twice; an LV only if it is plain apart from spanning (linear
/// segments, visible, not a part of another LV) and its pieces on the PVs found cover it
/// exactly. Anything else is left out, and the per-partition reader captures it raw.
pub(super) fn spanning(disk: &mut dyn ReadSeek, parts: &[(u64, u64)]) -> HashMap<(String, String), AllocationMap> {
    let mut groups: BTreeMap<String, Vec<FoundPv>> = BTreeMap::new();
    for &(start, size) in parts {
        let whole = [Piece { vol_offset: 0, at: start, len: size }];
        let mut part = VolumeView::new(disk, &whole, size);
        let mut head = vec![0u8; (4 * SECTOR).min(size) as usize];
        if read_at_or(&mut part, 0, &mut head, "the LVM label").is_err() || !detect(&head) {
            continue;
        }
        let found = (|| -> Result<FoundPv, String> {
            let label = read_label(&head, size)?;
            let &(off, len) = label.metadata_areas.first().ok_or("no metadata area")?;
            let meta = parse_text(&read_metadata(&mut part, off, len)?)?;
            let (_, vg) = meta.sections().next().ok_or("no volume group")?;
            let vg_id = vg.str("id").ok_or("VG without id")?.to_string();
            let seqno = vg.int("seqno")?;
            Ok(FoundPv { uuid: label.uuid, vg_id, start, size, meta, seqno })
        })();
        if let Ok(pv) = found {
            groups.entry(pv.vg_id.clone()).or_default().push(pv);
        }
    }
    let mut out = HashMap::new();
    for (vg_id, pvs) in groups {
        let uuids: HashSet<&str> = pvs.iter().map(|p| p.uuid.as_str()).collect();
        if pvs.len() < 2 || uuids.len() != pvs.len() || pvs.iter().any(|p| p.seqno != pvs[0].seqno) {
            continue;
        }
        // Every LV's pieces over all PVs, in disk offsets.
        let mut lvs: BTreeMap<String, (u64, bool, Vec<Piece>)> = BTreeMap::new();
        let mut usable = true;
        for pv in &pvs {
            let Ok(layout) = layout(&pv.meta, &pv.uuid, pv.size) else {
                usable = false;
                break;
            };
            for lv in layout.lvs {
                let e = lvs.entry(lv.name).or_insert((lv.size, true, Vec::new()));
                e.1 &= lv.raw_reason.is_none() && lv.elsewhere && e.0 == lv.size;
                e.2.extend(lv.pieces.iter().map(|p| Piece { at: p.at + pv.start, ..*p }));
            }
        }
        if !usable {
            continue;
        }
        for (name, (size, plain, mut pieces)) in lvs {
            pieces.sort_by_key(|p| p.vol_offset);
            let mut covered = 0;
            let exact = pieces.iter().all(|p| {
                let ok = p.vol_offset == covered;
                covered += p.len;
                ok
            }) && covered == size;
            if !plain || !exact {
                continue;
            }
            let mut view = VolumeView::new(disk, &pieces, size);
            let map = super::probe_volume(&mut view, size, Inside::Lvm, &DiskContext::default());
            out.insert((vg_id.clone(), name), map);
        }
    }
    out
}

/// A logical volume of the PV in a partition, for readers of its files (`kura files`): where
/// its bytes lie on the PV, and whether it can be read as one volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalVolume {
    pub vg: String,
    pub name: String,
    /// The LV's size.
    pub size: u64,
    /// `(lv_offset, pv_offset, len)`: `len` bytes of the LV from `lv_offset` lie at
    /// `pv_offset` in the PV's partition, in LV order.
    pub pieces: Vec<(u64, u64, u64)>,
    /// Why it cannot be read as a plain volume (a thin pool, a snapshot store, RAID legs, an
    /// LV continuing on another PV), if so.
    pub not_plain: Option<String>,
}

/// The logical volumes with extents on the PV in `part` (its label, metadata area and VG
/// metadata, read and checked as a capture reads them). An error names why the PV cannot be
/// read.
pub fn logical_volumes<R: Read + Seek>(part: &mut R, part_size: u64) -> Result<Vec<LogicalVolume>, String> {
    let mut head = vec![0u8; (4 * SECTOR).min(part_size) as usize];
    read_at_or(part, 0, &mut head, "the LVM label")?;
    if !detect(&head) {
        return Err("no LVM physical volume label".into());
    }
    let label = read_label(&head, part_size)?;
    let &(mda_off, mda_size) = label.metadata_areas.first().ok_or("PV has no metadata area of its own")?;
    let text = read_metadata(part, mda_off, mda_size)?;
    let pv = layout(&parse_text(&text)?, &label.uuid, part_size)?;
    Ok(pv
        .lvs
        .into_iter()
        .filter(|lv| !lv.pieces.is_empty())
        .map(|lv| LogicalVolume {
            vg: pv.vg.clone(),
            not_plain: lv.raw_reason.clone().or_else(|| lv.elsewhere.then(|| "it continues on another PV".to_string())),
            pieces: lv.pieces.iter().map(|p| (p.vol_offset, p.at, p.len)).collect(),
            name: lv.name,
            size: lv.size,
        })
        .collect())
}
