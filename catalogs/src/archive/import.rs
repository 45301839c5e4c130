//! `kura import`: an archive, read once in order, into a store. Every chunk is decoded and its
//! SHA-256 checked (also the ones the store already has: the archive is what is being
//! proven); chunks the store lacks are stored. A snapshot is committed only when all its
//! chunks are in the store, so a truncated or damaged archive imports every snapshot whose
//! data is complete and names the others, with the damaged chunks and who needs them.

use super::format::{self, Header, Kind};
use super::read::{Event, RecordReader};
use crate::store::LocalStore;
use kura_imaging::chunk::{ChunkSink, Decoder, Digest};
use kura_imaging::manifest::Manifest;
use kura_imaging::Error;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::io::Read;

#[derive(Debug, Clone, Serialize)]
pub struct DamagedChunk {
    pub digest: String,
    pub reason: String,
    /// Snapshots of the archive that need it.
    pub snapshots: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IncompleteSnapshot {
    pub id: String,
    pub host: Option<String>,
    pub reason: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportReport {
    pub archive_id: String,
    /// Snapshots committed by this import.
    pub imported: Vec<String>,
    /// Snapshots the store already had.
    pub already: Vec<String>,
    pub incomplete: Vec<IncompleteSnapshot>,
    pub chunks_read: u64,
    pub chunks_stored: u64,
    pub damaged_chunks: Vec<DamagedChunk>,
    /// Damaged blocks and records, and truncation, as met.
    pub problems: Vec<String>,
    pub truncated: bool,
    pub ok: bool,
}

/// Imports the archive read from `input` into `store` (held under its exclusive lock by the
/// caller).
pub fn import<R: Read>(
    store: &LocalStore,
    input: R,
    progress: &dyn kura_imaging::progress::Progress,
) -> Result<ImportReport, Error> {
    let mut r = RecordReader::new(input)?;
    let mut report = ImportReport { archive_id: format::archive_id_hex(r.archive_id()), ..Default::default() };
    let mut header: Option<Header> = None;
    let mut manifests: Vec<(String, Manifest)> = Vec::new();
    let mut users: BTreeMap<Digest, Vec<String>> = BTreeMap::new();
    let mut damaged: BTreeMap<Digest, String> = BTreeMap::new();
    let mut dec = Decoder::new()?;
    let mut plain = Vec::new();
    while let Some(ev) = r.next_event()? {
        match ev {
            Event::Record { kind: Kind::Header, payload, payload_ok, .. } => {
                header = if payload_ok { serde_json::from_slice(&payload).ok() } else { None };
                if header.is_none() {
                    report.problems.push("the header record is damaged".into());
                } else if let Some(h) = &header {
                    progress.set_total(h.snapshots.iter().map(|s| s.new_chunks).sum());
                }
            }
            Event::Record { kind: Kind::Manifest, payload, .. } => {
                let id = Manifest::id_of(&payload);
                match Manifest::decode(&payload) {
                    Ok(m) => {
                        for d in m.unique_digests() {
                            users.entry(d).or_default().push(id.clone());
                        }
                        manifests.push((id, m));
                    }
                    Err(e) => report.problems.push(format!("a manifest record is damaged: {e}")),
                }
            }
            Event::Record { kind: Kind::Chunk, payload, payload_ok, .. } => {
                report.chunks_read += 1;
                progress.advance(1);
                let Some(d) = format::claimed_digest(&payload) else {
                    report.problems.push("a chunk record too short to name its chunk".into());
                    continue;
                };
                let checked = if payload_ok {
                    dec.decode_into(&payload, &d, &mut plain).map_err(|e| match e {
                        Error::ChunkCorrupt { reason, .. } => reason,
                        other => other.to_string(),
                    })
                } else {
                    Err("archive record checksum mismatch".to_string())
                };
                match checked {
                    Ok(()) => {
                        damaged.remove(&d);
                        if store.put_chunk(&d, &payload)? {
                            report.chunks_stored += 1;
                        }
                    }
                    Err(reason) => {
                        damaged.insert(d, reason);
                    }
                }
            }
            Event::Record { kind: Kind::Pack | Kind::Index | Kind::End, payload_ok: true, .. } => {}
            Event::Record { kind, at, .. } => {
                report.problems.push(format!("{kind:?} record at stream offset {at}: checksum mismatch"))
            }
            Event::Damage { block, reason } => report.problems.push(format!("block {block}: {reason}")),
            Event::Truncated { reason } => {
                report.truncated = true;
                report.problems.push(reason);
            }
        }
    }
    store.flush_staged()?;
    for (id, m) in &manifests {
        if store.manifest_exists(id) {
            report.already.push(id.clone());
            continue;
        }
        let unique = m.unique_digests();
        let bad: Vec<&Digest> = unique.iter().filter(|d| damaged.contains_key(d)).collect();
        let missing = unique.iter().filter(|d| !store.has(d)).count();
        if missing > 0 {
            let mut reason = format!("{missing} of its {} chunks are not in the archive or the store", unique.len());
            if !bad.is_empty() {
                let names: Vec<String> = bad.iter().take(3).map(|d| d.to_hex()).collect();
                reason += &format!("; damaged in the archive: {}", names.join(", "));
            } else if report.truncated {
                reason += " (the archive is truncated)";
            }
            report.incomplete.push(IncompleteSnapshot { id: id.clone(), host: m.host.clone(), reason });
            continue;
        }
        let committed = store.commit_manifest(m)?;
        if &committed != id {
            return Err(Error::Manifest(format!(
                "snapshot {id} from the archive re-encodes as {committed}: the manifest encoding changed"
            )));
        }
        report.imported.push(id.clone());
    }
    let have: HashSet<&String> = manifests.iter().map(|(id, _)| id).collect();
    for s in header.iter().flat_map(|h| &h.snapshots) {
        if !have.contains(&s.id) {
            report.incomplete.push(IncompleteSnapshot {
                id: s.id.clone(),
                host: s.host.clone(),
                reason: "its manifest is not in the archive (damaged or cut off)".into(),
            });
        }
    }
    report.damaged_chunks = damaged
        .into_iter()
        .map(|(d, reason)| DamagedChunk {
            digest: d.to_hex(),
            reason,
            snapshots: users.get(&d).cloned().unwrap_or_default(),
        })
        .collect();
    report.ok = report.incomplete.is_empty()
        && report.damaged_chunks.is_empty()
        && report.problems.is_empty()
        && header.is_some();
    Ok(report)
}
