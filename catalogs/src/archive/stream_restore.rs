//! One snapshot from an archive read once, in order (a pipe or a tape), onto a target: the
//! manifests come first in an archive, so by the time chunks pass every one is known to be
//! needed or not; a needed chunk is decoded, its SHA-256 checked, and written at each place of
//! the disk that holds it. A pieced chunk ([`kura_imaging::pieced`]) is written the same way:
//! its base where no patch covers it, each patch at its piece, in whatever order they pass (each
//! stored chunk is checked by its own digest; the assembled whole is not hashed again, as the
//! target is not read back). Memory: the snapshot's chunk map and one record.
//!
//! A pipe cannot be checked before writing as a store can: the target is opened once the
//! manifest is read and the target's size checked. A damaged needed chunk stops the restore
//! naming it; chunks still missing at the end of the archive are named; either way the error
//! says the target is partially written.

use super::format::{self, Kind};
use super::read::{Event, RecordReader};
use kura_imaging::chunk::{Decoder, Digest};
use kura_imaging::flow::RestoreTarget;
use kura_imaging::layout::Scheme;
use kura_imaging::manifest::{ChunkRef, Manifest};
use kura_imaging::restore::RestoreStats;
use kura_imaging::Error;
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};

fn failed(snapshot: &str, why: String) -> Error {
    Error::Store {
        message: format!("restore of snapshot {snapshot} from the archive failed: {why}; the target is partially written (a file created for the restore is removed)"),
        retryable: false,
    }
}

/// Restores `snapshot` (id or unique prefix) from the archive read from `input` onto `target`.
/// Returns the snapshot id and what was written.
pub fn stream_restore<R: Read, T: RestoreTarget>(
    input: R,
    snapshot: &str,
    target: &mut T,
    progress: &dyn kura_imaging::progress::Progress,
) -> Result<(String, RestoreStats), Error> {
    let mut r = RecordReader::new(input)?;
    let mut listed = false;
    let mut problems: Vec<String> = Vec::new();
    // The front: find the manifest.
    let mut found: Option<(String, Manifest)> = None;
    while let Some(ev) = r.next_event()? {
        match ev {
            Event::Record { kind: Kind::Header, payload, payload_ok: true, .. } => {
                if let Ok(h) = serde_json::from_slice::<format::Header>(&payload) {
                    listed = h.snapshots.iter().any(|s| s.id.starts_with(snapshot));
                }
            }
            Event::Record { kind: Kind::Manifest, payload, .. } => {
                let id = Manifest::id_of(&payload);
                if id.starts_with(snapshot) && !snapshot.is_empty() {
                    if found.is_some() {
                        return Err(Error::Store {
                            message: format!("snapshot id {snapshot:?} is ambiguous in the archive"),
                            retryable: false,
                        });
                    }
                    let m = Manifest::decode(&payload).map_err(|e| Error::Manifest(format!("snapshot {id}: {e}")))?;
                    found = Some((id, m));
                }
            }
            Event::Record { kind: Kind::Header, .. } => problems.push("the header record is damaged".into()),
            Event::Record { .. } => break,
            Event::Damage { block, reason } => problems.push(format!("block {block}: {reason}")),
            Event::Truncated { reason } => {
                problems.push(reason);
                break;
            }
        }
    }
    let Some((id, manifest)) = found else {
        let why = if listed {
            format!(" (the archive lists it, but its manifest is damaged: {})", problems.join("; "))
        } else {
            String::new()
        };
        return Err(Error::Store {
            message: format!("no snapshot {snapshot:?} in the archive{why}"),
            retryable: false,
        });
    };
    let needed = manifest.disk_size();
    let size = target.size(needed)?;
    if size < needed {
        return Err(Error::TargetTooSmall { needed, actual: size });
    }
    // Where each stored chunk goes — (disk offset, offset in the chunk, length) — and the zero
    // chunks.
    let mut places: HashMap<Digest, Vec<(u64, u64, u64)>> = HashMap::new();
    let mut zeros: Vec<(u64, u64)> = Vec::new();
    let mut stats = RestoreStats { disk_size: needed, ..Default::default() };
    for region in &manifest.regions {
        for (i, c) in region.chunks.iter().enumerate() {
            let off = region.start + i as u64 * manifest.chunk_size as u64;
            let len = manifest.chunk_len(region, i);
            match c {
                ChunkRef::Data(d) => {
                    places.entry(*d).or_default().push((off, 0, len));
                    stats.data_chunks += 1;
                }
                ChunkRef::Pieced(p) => {
                    let ps = p.piece_size as u64;
                    let mut from = 0;
                    for (i, pd) in &p.patches {
                        let at = *i as u64 * ps;
                        let n = ps.min(len.saturating_sub(at));
                        if at > from {
                            places.entry(p.base).or_default().push((off + from, from, at - from));
                        }
                        places.entry(*pd).or_default().push((off + at, 0, n));
                        from = at + n;
                    }
                    if len > from {
                        places.entry(p.base).or_default().push((off + from, from, len - from));
                    }
                    stats.data_chunks += 1;
                }
                ChunkRef::Zero => {
                    zeros.push((off, len));
                    stats.zero_chunks += 1;
                }
                ChunkRef::Unused => stats.unused_chunks += 1,
            }
        }
    }
    progress.set_total(places.len() as u64);
    let name = target.name();
    let opened = target.open()?;
    let mut disk = opened.disk;
    let result = (|| -> Result<(), Error> {
        let write_at = |disk: &mut T::Disk, off: u64, data: &[u8]| -> Result<(), Error> {
            disk.seek(SeekFrom::Start(off))
                .and_then(|_| disk.write_all(data))
                .map_err(|e| Error::io(format!("writing {name} at {off}"), e))
        };
        if !opened.zeroed {
            let buf = vec![0u8; manifest.chunk_size as usize];
            for (off, len) in &zeros {
                write_at(&mut disk, *off, &buf[..*len as usize])?;
                stats.written_bytes += len;
            }
        }
        let mut dec = Decoder::new()?;
        let mut plain = Vec::new();
        while !places.is_empty() {
            let Some(ev) = r.next_event()? else { break };
            match ev {
                Event::Record { kind: Kind::Chunk, payload, payload_ok, .. } => {
                    let Some(d) = format::claimed_digest(&payload) else { continue };
                    let Some(at) = places.get(&d) else { continue };
                    if !payload_ok {
                        return Err(failed(
                            &id,
                            format!("chunk {d} is damaged in the archive (record checksum mismatch)"),
                        ));
                    }
                    dec.decode_into(&payload, &d, &mut plain)
                        .map_err(|e| failed(&id, format!("chunk {d} is damaged in the archive: {e}")))?;
                    for &(off, from, len) in at {
                        let piece = plain.get(from as usize..(from + len) as usize).ok_or_else(|| {
                            failed(
                                &id,
                                format!("chunk {d} holds {} bytes, the snapshot needs {}", plain.len(), from + len),
                            )
                        })?;
                        write_at(&mut disk, off, piece)?;
                        stats.written_bytes += len;
                    }
                    places.remove(&d);
                    progress.advance(1);
                }
                Event::Record { .. } => {}
                Event::Damage { block, reason } => problems.push(format!("block {block}: {reason}")),
                Event::Truncated { reason } => problems.push(reason),
            }
        }
        if !places.is_empty() {
            let mut names: Vec<String> = places.keys().map(|d| d.to_hex()).collect();
            names.sort();
            names.truncate(3);
            let mut why =
                format!("{} of its chunks are not in the archive (first: {})", places.len(), names.join(", "));
            if !problems.is_empty() {
                why += &format!("; the archive is damaged or cut: {}", problems.join("; "));
            }
            return Err(failed(&id, why));
        }
        target.sync(&mut disk)?;
        if size > needed && manifest.layout.scheme == Scheme::Gpt {
            let moved = kura_imaging::layout::relocate_backup_gpt(&mut disk, size)
                .map_err(|e| failed(&id, format!("moving the backup GPT: {e}")))?;
            if moved {
                target.sync(&mut disk)?;
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        target.discard();
        return Err(e);
    }
    Ok((id, stats))
}
