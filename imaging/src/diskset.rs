//! Snapshot sets: one snapshot of a host with several disks (docs/manifest.md, "Snapshot set,
//! version 1").
//!
//! A set is one file holding its record (the host, the time, each disk's identity and member
//! manifest id) and every member manifest, whole:
//!
//! ```text
//! file   := magic[8] version:u32 flags:u32 meta_len:u32 meta[meta_len] member* sha256[32]
//! member := len:u64 manifest[len]          (one per disk, in the order of meta.disks)
//! ```
//!
//! One file is what makes the commit atomic: the store makes it visible by one rename, so a
//! refused or interrupted commit leaves no member behind. Its id is taken like a manifest's
//! (first 8 bytes of the SHA-256 of the whole file, hex), so sets and single-disk snapshots
//! share one id space. Chunks are shared across the set like across any snapshots.

use crate::chunk::Digest;
use crate::diskmap::DiskIdentity;
use crate::error::{Error, Result};
use crate::manifest::{Manifest, MAGIC as MANIFEST_MAGIC};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::HashSet;

/// First 8 bytes of `sha256("Kura snapshot set v1")`.
pub const MAGIC: [u8; 8] = [13, 12, 239, 62, 79, 117, 7, 25];
pub const FORMAT_VERSION: u32 = 1;
/// Most disks in one set.
pub const MAX_DISKS: usize = 64;
const MAX_META: u32 = 1 << 20;
const HEADER: usize = 20;
const TRAILER: usize = 32;

/// One disk of a set: who it is and its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub disk: DiskIdentity,
    pub manifest: Manifest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotSet {
    pub name: Option<String>,
    /// RFC 3339 UTC, like a manifest's.
    pub created: String,
    pub host: Option<String>,
    pub members: Vec<Member>,
}

/// The record of one disk in the set's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskEntry {
    #[serde(flatten)]
    pub disk: DiskIdentity,
    /// The member manifest's id.
    pub manifest: String,
    pub used_bytes: u64,
}

/// A set's record: its file's metadata, exactly (the catalog keeps it on the set's row, and
/// with the member manifests it rebuilds the set file byte for byte: [`SnapshotSet::from_record`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetRecord {
    pub name: Option<String>,
    pub created: String,
    pub host: Option<String>,
    pub disks: Vec<DiskEntry>,
}

use SetRecord as Meta;

impl SnapshotSet {
    /// The disks as recorded (identity, member id, used bytes), in capture order.
    pub fn entries(&self) -> Result<Vec<DiskEntry>> {
        self.members
            .iter()
            .map(|m| {
                Ok(DiskEntry {
                    disk: m.disk.clone(),
                    manifest: Manifest::id_of(&m.manifest.encode()?),
                    used_bytes: m.manifest.used_bytes(),
                })
            })
            .collect()
    }

    /// The set's record (what its file's metadata holds).
    pub fn record(&self) -> Result<SetRecord> {
        Ok(SetRecord {
            name: self.name.clone(),
            created: self.created.clone(),
            host: self.host.clone(),
            disks: self.entries()?,
        })
    }

    /// Rebuilds a set from its record and its member manifests (in the record's order); each
    /// member must match the id the record names.
    pub fn from_record(record: SetRecord, manifests: Vec<Manifest>) -> Result<SnapshotSet> {
        if record.disks.len() != manifests.len() {
            return Err(Error::Manifest(format!(
                "snapshot set: {} disks recorded, {} manifests given",
                record.disks.len(),
                manifests.len()
            )));
        }
        let mut members = Vec::with_capacity(manifests.len());
        for (entry, manifest) in record.disks.into_iter().zip(manifests) {
            if Manifest::id_of(&manifest.encode()?) != entry.manifest {
                return Err(Error::Manifest(format!(
                    "snapshot set: member {} does not match its id {}",
                    entry.disk.name, entry.manifest
                )));
            }
            members.push(Member { disk: entry.disk, manifest });
        }
        Ok(SnapshotSet { name: record.name, created: record.created, host: record.host, members })
    }

    pub fn disk_size(&self) -> u64 {
        self.members.iter().map(|m| m.manifest.disk_size()).sum()
    }

    pub fn used_bytes(&self) -> u64 {
        self.members.iter().map(|m| m.manifest.used_bytes()).sum()
    }

    pub fn created_unix(&self) -> Result<i64> {
        crate::time::parse_rfc3339(&self.created).map_err(|e| Error::Manifest(format!("set created time: {e}")))
    }

    /// Every distinct chunk the set needs (shared chunks once).
    pub fn unique_digests(&self) -> Vec<Digest> {
        let mut seen = HashSet::new();
        self.members.iter().flat_map(|m| m.manifest.data_digests()).filter(|d| seen.insert(**d)).copied().collect()
    }

    pub fn encode(&self) -> Result<Vec<u8>> {
        if self.members.is_empty() || self.members.len() > MAX_DISKS {
            return Err(Error::Manifest(format!("a set has 1 to {MAX_DISKS} disks, not {}", self.members.len())));
        }
        let encoded: Vec<Vec<u8>> = self.members.iter().map(|m| m.manifest.encode()).collect::<Result<_>>()?;
        let disks = self
            .members
            .iter()
            .zip(&encoded)
            .map(|(m, e)| DiskEntry {
                disk: m.disk.clone(),
                manifest: Manifest::id_of(e),
                used_bytes: m.manifest.used_bytes(),
            })
            .collect();
        let meta = Meta { name: self.name.clone(), created: self.created.clone(), host: self.host.clone(), disks };
        let meta = serde_json::to_vec(&meta).map_err(|e| Error::Manifest(e.to_string()))?;
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        out.extend_from_slice(&meta);
        for e in &encoded {
            out.extend_from_slice(&(e.len() as u64).to_le_bytes());
            out.extend_from_slice(e);
        }
        let sum: [u8; 32] = Sha256::digest(&out).into();
        out.extend_from_slice(&sum);
        Ok(out)
    }

    /// Decodes a set; each member is decoded within what is left of `max_decoded` (see
    /// [`Manifest::decode_within`]) and must match the id its entry records.
    pub fn decode_within(bytes: &[u8], max_decoded: u64) -> Result<SnapshotSet> {
        let bad = |m: String| Error::Manifest(format!("snapshot set: {m}"));
        if bytes.len() < HEADER + TRAILER || bytes[..8] != MAGIC {
            return Err(bad("bad magic (not a Kura snapshot set)".into()));
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4"));
        if version != FORMAT_VERSION {
            return Err(bad(format!("unsupported version {version}")));
        }
        let (content, trailer) = bytes.split_at(bytes.len() - TRAILER);
        let sum: [u8; 32] = Sha256::digest(content).into();
        if sum != trailer {
            return Err(bad("checksum mismatch (damaged)".into()));
        }
        let meta_len = u32::from_le_bytes(content[16..20].try_into().expect("4"));
        if meta_len > MAX_META || HEADER + meta_len as usize > content.len() {
            return Err(bad(format!("metadata of {meta_len} bytes does not fit")));
        }
        let meta: Meta = serde_json::from_slice(&content[HEADER..HEADER + meta_len as usize])
            .map_err(|e| bad(format!("metadata: {e}")))?;
        if meta.disks.is_empty() || meta.disks.len() > MAX_DISKS {
            return Err(bad(format!("a set has 1 to {MAX_DISKS} disks, not {}", meta.disks.len())));
        }
        let mut rest = &content[HEADER + meta_len as usize..];
        let mut budget = max_decoded;
        let mut members = Vec::with_capacity(meta.disks.len());
        for entry in meta.disks {
            if rest.len() < 8 {
                return Err(bad(format!("member {} is missing", entry.disk.name)));
            }
            let len = u64::from_le_bytes(rest[..8].try_into().expect("8"));
            if len > (rest.len() - 8) as u64 {
                return Err(bad(format!("member {} declares {len} bytes; fewer remain", entry.disk.name)));
            }
            let (m, tail) = rest[8..].split_at(len as usize);
            rest = tail;
            if Manifest::id_of(m) != entry.manifest {
                return Err(bad(format!("member {} does not match its id {}", entry.disk.name, entry.manifest)));
            }
            let manifest = Manifest::decode_within(m, budget)?;
            budget = budget.saturating_sub(m.len() as u64);
            members.push(Member { disk: entry.disk, manifest });
        }
        if !rest.is_empty() {
            return Err(bad(format!("{} bytes after the last member", rest.len())));
        }
        Ok(SnapshotSet { name: meta.name, created: meta.created, host: meta.host, members })
    }

    pub fn decode(bytes: &[u8]) -> Result<SnapshotSet> {
        Self::decode_within(bytes, crate::manifest::MAX_DECODED)
    }
}

/// What a snapshot file is: one disk's manifest, or a set of several.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotFile {
    Disk(Manifest),
    Set(SnapshotSet),
}

impl SnapshotFile {
    /// Decodes either kind, by its magic.
    pub fn decode_within(bytes: &[u8], max_decoded: u64) -> Result<SnapshotFile> {
        if is_set(bytes) {
            SnapshotSet::decode_within(bytes, max_decoded).map(SnapshotFile::Set)
        } else {
            Manifest::decode_within(bytes, max_decoded).map(SnapshotFile::Disk)
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<SnapshotFile> {
        Self::decode_within(bytes, crate::manifest::MAX_DECODED)
    }

    /// Every distinct chunk the snapshot needs.
    pub fn unique_digests(&self) -> Vec<Digest> {
        match self {
            SnapshotFile::Disk(m) => m.unique_digests(),
            SnapshotFile::Set(s) => s.unique_digests(),
        }
    }

    /// The host it names; for a set, only if every member names the same one.
    pub fn host(&self) -> Option<&str> {
        match self {
            SnapshotFile::Disk(m) => m.host.as_deref(),
            SnapshotFile::Set(s) => {
                s.host.as_deref().filter(|h| s.members.iter().all(|m| m.manifest.host.as_deref() == Some(*h)))
            }
        }
    }

    pub fn name(&self) -> Option<&str> {
        match self {
            SnapshotFile::Disk(m) => m.name.as_deref(),
            SnapshotFile::Set(s) => s.name.as_deref(),
        }
    }

    pub fn created(&self) -> &str {
        match self {
            SnapshotFile::Disk(m) => &m.created,
            SnapshotFile::Set(s) => &s.created,
        }
    }

    pub fn created_unix(&self) -> Result<i64> {
        match self {
            SnapshotFile::Disk(m) => m.created_unix(),
            SnapshotFile::Set(s) => s.created_unix(),
        }
    }

    pub fn disk_size(&self) -> u64 {
        match self {
            SnapshotFile::Disk(m) => m.disk_size(),
            SnapshotFile::Set(s) => s.disk_size(),
        }
    }

    pub fn used_bytes(&self) -> u64 {
        match self {
            SnapshotFile::Disk(m) => m.used_bytes(),
            SnapshotFile::Set(s) => s.used_bytes(),
        }
    }

    /// The disks, as a set lists them; a single-disk snapshot is one disk named by its source.
    pub fn disks(&self) -> Vec<(DiskIdentity, &Manifest)> {
        match self {
            SnapshotFile::Disk(m) => {
                let name = m.source.rsplit('/').next().unwrap_or(&m.source).to_string();
                vec![(DiskIdentity { name, size: m.disk_size(), ..Default::default() }, m)]
            }
            SnapshotFile::Set(s) => s.members.iter().map(|x| (x.disk.clone(), &x.manifest)).collect(),
        }
    }
}

/// Whether `bytes` start like a snapshot set (not a manifest).
pub fn is_set(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..8] == MAGIC && bytes[..8] != MANIFEST_MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bitmap::Bitmap;
    use crate::fs::FsKind;
    use crate::layout::{DiskLayout, Scheme};
    use crate::manifest::{ChunkRef, Region};

    fn disk_manifest(source: &str, size: u64, digest: u8) -> Manifest {
        Manifest {
            name: None,
            created: "2026-12-07T03:00:00Z".into(),
            source: source.into(),
            host: Some("srv".into()),
            chunk_size: 1 << 20,
            layout: DiskLayout {
                disk_size: size,
                sector_size: 512,
                scheme: Scheme::None,
                gpt: None,
                partitions: vec![],
                warnings: vec![],
            },
            regions: vec![Region {
                start: 0,
                size,
                partition: None,
                fs: FsKind::Raw,
                label: None,
                block_size: 4096,
                used_bytes: size,
                warnings: vec![],
                bitmap: Bitmap::full(size / 4096),
                chunks: (0..size.div_ceil(1 << 20)).map(|_| ChunkRef::Data(Digest([digest; 32]))).collect(),
            }],
        }
    }

    fn set() -> SnapshotSet {
        let id = |name: &str, serial: &str| DiskIdentity {
            name: name.into(),
            size: 2 << 20,
            serial: Some(serial.into()),
            path: Some(format!("pci-0000:00:0{}.0", name.len())),
            ..Default::default()
        };
        SnapshotSet {
            name: Some("golden".into()),
            created: "2026-12-07T03:00:00Z".into(),
            host: Some("srv".into()),
            members: vec![
                Member { disk: id("vda", "A"), manifest: disk_manifest("/dev/vda", 2 << 20, 1) },
                Member { disk: id("vdb", "B"), manifest: disk_manifest("/dev/vdb", 2 << 20, 1) },
            ],
        }
    }

    #[test]
    fn magic_is_the_hash_of_its_name() {
        let h = Sha256::digest(b"Kura snapshot set v1");
        assert_eq!(MAGIC, h[..8]);
    }

    #[test]
    fn round_trip_and_dedup_across_the_set() {
        let s = set();
        let bytes = s.encode().unwrap();
        assert!(is_set(&bytes));
        assert_eq!(SnapshotSet::decode(&bytes).unwrap(), s);
        // Both disks hold the same content: one chunk for the set.
        assert_eq!(s.unique_digests().len(), 1);
        let f = SnapshotFile::decode(&bytes).unwrap();
        assert_eq!(f.disks().iter().map(|(d, _)| d.name.as_str()).collect::<Vec<_>>(), ["vda", "vdb"]);
        assert_eq!(f.disk_size(), 4 << 20);
        let single = disk_manifest("/dev/sda", 1 << 20, 2).encode().unwrap();
        assert!(matches!(SnapshotFile::decode(&single).unwrap(), SnapshotFile::Disk(_)));
    }

    /// The catalog keeps a set's record and the store its members: the two rebuild the set
    /// file byte for byte (so its id), and a member that does not match its record is refused.
    #[test]
    fn record_and_members_rebuild_the_file() {
        let s = set();
        let bytes = s.encode().unwrap();
        let record: SetRecord = serde_json::from_str(&serde_json::to_string(&s.record().unwrap()).unwrap()).unwrap();
        let manifests: Vec<Manifest> = s.members.iter().map(|m| m.manifest.clone()).collect();
        let rebuilt = SnapshotSet::from_record(record.clone(), manifests.clone()).unwrap();
        assert_eq!(rebuilt.encode().unwrap(), bytes);
        let mut swapped = manifests.clone();
        swapped[1] = disk_manifest("/dev/vdb", 2 << 20, 9);
        assert!(SnapshotSet::from_record(record.clone(), swapped).is_err());
        assert!(SnapshotSet::from_record(record, manifests[..1].to_vec()).is_err());
    }

    #[test]
    fn damage_is_refused() {
        let bytes = set().encode().unwrap();
        for i in [0, 9, 17, 40, bytes.len() / 2, bytes.len() - 1] {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(SnapshotSet::decode(&b).is_err(), "flip at {i} accepted");
        }
        assert!(SnapshotSet::decode(&bytes[..bytes.len() - 1]).is_err());
        let empty = SnapshotSet { members: vec![], ..set() };
        assert!(empty.encode().is_err());
    }

    /// The golden set file (`UPDATE_TESTDATA=1` rewrites it): the format stays decodable and
    /// encodes to the same bytes.
    #[test]
    fn golden_file_decodes() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/set-v1.kset");
        let bytes = set().encode().unwrap();
        if std::env::var_os("UPDATE_TESTDATA").is_some() {
            std::fs::write(&path, &bytes).unwrap();
        }
        let golden = std::fs::read(&path).unwrap();
        assert_eq!(SnapshotSet::decode(&golden).unwrap(), set());
        assert_eq!(golden, bytes, "the set encoding changed: a frozen format needs a new version");
        assert_eq!(Manifest::id_of(&golden).len(), 16);
    }
}
