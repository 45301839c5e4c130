//! The one capture flow and the one restore flow, whoever drives them: the `kura` CLI against a
//! local store or an engine, and the netbooted agent.
//!
//! - [`capture_flow`]: layout and allocation maps → chunks into a [`SnapshotSink`] → commit of
//!   the manifest; on any failure the sink's session is aborted.
//! - [`restore_flow`]: the target's size → [`restore::preflight`] (size, every chunk present and
//!   intact) → only then is the [`RestoreTarget`] opened for writing → write → sync → on a
//!   larger GPT target, the backup GPT moved to the end → sync. A refusal before the target was
//!   opened says "nothing was written"; a target created for the restore is removed again if the
//!   restore fails after it was created.
//!
//! - [`capture_set_flow`] and [`restore_set_flow`]: the same for a host's several disks, as one
//!   snapshot set: every disk captured into one session and committed as one set; every target
//!   sized and every member's preflight passed before the first target is opened for writing.
//!
//! Where the snapshot goes, where the chunks come from and what the target is are the caller's;
//! the order of the steps and the error texts are defined here, once.

use crate::capture::{self, CaptureOptions, CaptureStats};
use crate::chunk::{ChunkSink, ChunkSource};
use crate::diskmap::DiskIdentity;
use crate::diskset::{Member, SnapshotSet};
use crate::error::{Error, Result};
use crate::layout::{relocate_backup_gpt, LayoutError, Scheme};
use crate::manifest::Manifest;
use crate::progress::Progress;
use crate::restore::{self, RestoreOptions, RestoreStats};
use std::io::{Read, Seek, Write};

/// Where a capture's snapshot goes: its chunks, then the commit of its manifest, or an abort.
pub trait SnapshotSink: ChunkSink {
    /// What a commit answers (a snapshot id, or the engine's reply).
    type Committed;
    /// Makes the snapshot visible; every chunk the manifest names has been handed over.
    fn commit(&self, manifest: &Manifest) -> Result<Self::Committed>;
    /// Makes a snapshot set visible, whole (every member at once) or not at all. Only a sink
    /// that can do so takes sets (the engine's upload session: its commit records the set and
    /// its members in one catalog transaction); the default refuses.
    fn commit_set(&self, set: &SnapshotSet) -> Result<Self::Committed> {
        Err(Error::Manifest(format!(
            "a snapshot set of {} disks is committed through the engine (kura serve), not into a store directly",
            set.members.len()
        )))
    }
    /// The capture failed: give up the session (best effort; errors are not reported).
    fn abort(&self);
}

/// A capture that did not produce a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("capturing {source_name}")]
    Capture {
        source_name: String,
        #[source]
        source: Error,
    },
    #[error("committing the snapshot")]
    Commit(#[source] Error),
}

/// Captures the disk in `src` into `sink` and commits the snapshot. `before_commit` runs between
/// the last chunk and the commit (the agent reports its last progress there: a commit ends its
/// job). Any failure aborts the sink's session.
pub fn capture_flow<R: Read + Seek, S: SnapshotSink>(
    src: R,
    opts: &CaptureOptions,
    sink: &S,
    progress: &dyn Progress,
    before_commit: impl FnOnce(&CaptureStats) -> Result<()>,
) -> Result<(S::Committed, CaptureStats), CaptureError> {
    let result = capture::capture(src, opts, sink, progress)
        .map_err(|source| CaptureError::Capture { source_name: opts.source.clone(), source })
        .and_then(|(manifest, stats)| {
            before_commit(&stats).and_then(|_| sink.commit(&manifest)).map(|c| (c, stats)).map_err(CaptureError::Commit)
        });
    if result.is_err() {
        sink.abort();
    }
    result
}

/// A restore target opened for writing.
pub struct Opened<D> {
    pub disk: D,
    /// The target reads as zeros everywhere (a file created for this restore): zero chunks are
    /// not written.
    pub zeroed: bool,
}

/// Where a restore writes: sized before the preflight, opened for writing only after it passed.
pub trait RestoreTarget {
    type Disk: Read + Write + Seek;
    /// The target's name in messages (a path).
    fn name(&self) -> String;
    /// The target's size in bytes, opening nothing for writing; `needed` (the snapshot's disk
    /// size) is the size of a target the restore would create.
    fn size(&mut self, needed: u64) -> Result<u64>;
    /// Opens the target for writing, at the size [`RestoreTarget::size`] answered. Called only
    /// once the preflight passed.
    fn open(&mut self) -> Result<Opened<Self::Disk>>;
    /// Makes everything written to `disk` durable.
    fn sync(&mut self, disk: &mut Self::Disk) -> Result<()>;
    /// The restore failed after [`RestoreTarget::open`]: undo what can be undone (remove a file
    /// created for it).
    fn discard(&mut self) {}
}

/// The milestones of a restore, for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreStep<'a> {
    /// The preflight starts: every chunk the snapshot needs is checked.
    Checking { snapshot: &'a str, needed: u64, target: &'a str, size: u64 },
    /// The preflight passed; the target is open and being written.
    Writing { target: &'a str },
    /// The target is larger than the captured disk: its backup GPT was moved to its end.
    MovedBackupGpt { target: &'a str },
}

impl std::fmt::Display for RestoreStep<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestoreStep::Checking { snapshot, needed, target, size } => write!(
                f,
                "preflight: snapshot {snapshot} ({needed} bytes) onto {target} ({size} bytes): checking every chunk"
            ),
            RestoreStep::Writing { target } => write!(f, "preflight passed; writing {target}"),
            RestoreStep::MovedBackupGpt { target } => {
                write!(f, "{target} is larger than the captured disk: moved the backup GPT to its end")
            }
        }
    }
}

/// Watches a restore: progress of each pass, and its milestones.
pub trait RestoreObserver {
    /// Progress of the preflight, in chunks checked.
    fn checking(&self) -> &dyn Progress;
    /// Progress of the write pass, in bytes.
    fn writing(&self) -> &dyn Progress;
    fn step(&self, _step: &RestoreStep<'_>) {}
}

/// A restore that did not complete.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// Refused before the target was opened for writing: it is as it was (or was not created).
    #[error("snapshot {snapshot} cannot be restored onto {target}; nothing was written")]
    Refused {
        snapshot: String,
        target: String,
        #[source]
        source: Error,
    },
    /// Failed once the target was open: it may be partially written (a created file is removed).
    #[error("restoring snapshot {snapshot} onto {target}")]
    Failed {
        snapshot: String,
        target: String,
        #[source]
        source: Error,
    },
    /// Every byte was written, but the backup GPT could not be moved to the larger target's end.
    #[error("restoring snapshot {snapshot} onto {target}: moving the backup GPT to the end of the larger target")]
    BackupGpt {
        snapshot: String,
        target: String,
        #[source]
        source: LayoutError,
    },
}

/// Restores snapshot `snapshot` (its `manifest`, chunks from `source`) onto `target` with
/// `threads` workers; see the module docs for the steps.
pub fn restore_flow<T: RestoreTarget>(
    snapshot: &str,
    manifest: &Manifest,
    source: &dyn ChunkSource,
    target: &mut T,
    threads: usize,
    observer: &dyn RestoreObserver,
) -> Result<RestoreStats, RestoreError> {
    let (checked, size) = check_one(snapshot, manifest, source, target, threads, observer)?;
    write_one(snapshot, manifest, checked, size, source, target, threads, observer)
}

/// Sizes the target and runs the preflight; opens nothing for writing.
fn check_one<'m, T: RestoreTarget>(
    snapshot: &str,
    manifest: &'m Manifest,
    source: &dyn ChunkSource,
    target: &mut T,
    threads: usize,
    observer: &dyn RestoreObserver,
) -> Result<(restore::Checked<'m>, u64), RestoreError> {
    let name = target.name();
    let refused = |source| RestoreError::Refused { snapshot: snapshot.to_string(), target: name.clone(), source };
    let needed = manifest.disk_size();
    let size = target.size(needed).map_err(refused)?;
    observer.step(&RestoreStep::Checking { snapshot, needed, target: &name, size });
    let checked = restore::preflight(manifest, source, size, threads, observer.checking()).map_err(refused)?;
    Ok((checked, size))
}

/// Opens the target and writes what [`check_one`] checked.
#[allow(clippy::too_many_arguments)]
fn write_one<T: RestoreTarget>(
    snapshot: &str,
    manifest: &Manifest,
    checked: restore::Checked<'_>,
    size: u64,
    source: &dyn ChunkSource,
    target: &mut T,
    threads: usize,
    observer: &dyn RestoreObserver,
) -> Result<RestoreStats, RestoreError> {
    let name = target.name();
    let needed = manifest.disk_size();
    let (snapshot_s, target_s) = (|| snapshot.to_string(), || name.clone());
    let failed = |source| RestoreError::Failed { snapshot: snapshot_s(), target: target_s(), source };
    let Opened { mut disk, zeroed } = target.open().map_err(failed)?;
    observer.step(&RestoreStep::Writing { target: &name });
    let opts = RestoreOptions { threads, target_is_zeroed: zeroed };
    let finish = || {
        let stats = restore::write(checked, source, &mut disk, size, &opts, observer.writing())
            .and_then(|stats| target.sync(&mut disk).map(|_| stats))
            .map_err(failed)?;
        // A GPT disk restored byte for byte onto a larger one has its backup table where the
        // old disk ended: move it to the end (an MBR or unpartitioned disk has none to move).
        if size > needed && manifest.layout.scheme == Scheme::Gpt {
            let moved = relocate_backup_gpt(&mut disk, size).map_err(|source| RestoreError::BackupGpt {
                snapshot: snapshot_s(),
                target: target_s(),
                source,
            })?;
            if moved {
                target.sync(&mut disk).map_err(failed)?;
                observer.step(&RestoreStep::MovedBackupGpt { target: &name });
            }
        }
        Ok(stats)
    };
    let result = finish();
    if result.is_err() {
        target.discard();
    }
    result
}

/// Captures several disks of one host into `sink` as one snapshot set (`set` gives its name,
/// time and host; its members are filled here, in the order of `disks`), and commits it whole.
/// On any failure the session is aborted and nothing is committed.
pub fn capture_set_flow<R: Read + Seek, S: SnapshotSink>(
    disks: Vec<(DiskIdentity, R, CaptureOptions)>,
    mut set: SnapshotSet,
    sink: &S,
    progress: &dyn Progress,
    before_commit: impl FnOnce(&[CaptureStats]) -> Result<()>,
) -> Result<(S::Committed, Vec<CaptureStats>), CaptureError> {
    let mut all = Vec::new();
    let result = (|| {
        for (disk, src, opts) in disks {
            let (manifest, stats) = capture::capture(src, &opts, sink, progress)
                .map_err(|source| CaptureError::Capture { source_name: opts.source.clone(), source })?;
            set.members.push(Member { disk, manifest });
            all.push(stats);
        }
        before_commit(&all[..]).and_then(|_| sink.commit_set(&set)).map_err(CaptureError::Commit)
    })();
    match result {
        Ok(c) => Ok((c, all)),
        Err(e) => {
            sink.abort();
            Err(e)
        }
    }
}

/// Restores the members of snapshot set `snapshot` onto their targets (`pairs`: member index
/// and target, as [`crate::diskmap::map_disks`] decided). Every target is sized and every
/// member's preflight passed before the first target is opened for writing; then each is
/// written in turn. Targets not in `pairs` are not touched.
pub fn restore_set_flow<T: RestoreTarget>(
    snapshot: &str,
    set: &SnapshotSet,
    pairs: &mut [(usize, T)],
    source: &dyn ChunkSource,
    threads: usize,
    observer: &dyn RestoreObserver,
) -> Result<Vec<RestoreStats>, RestoreError> {
    let label = |i: usize| format!("{snapshot} disk {}", set.members[i].disk.name);
    let mut checked = Vec::with_capacity(pairs.len());
    for (member, target) in pairs.iter_mut() {
        let m = &set.members[*member].manifest;
        checked.push(check_one(&label(*member), m, source, target, threads, observer)?);
    }
    let mut out = Vec::with_capacity(pairs.len());
    for ((member, target), (c, size)) in pairs.iter_mut().zip(checked) {
        let m = &set.members[*member].manifest;
        out.push(write_one(&label(*member), m, c, size, source, target, threads, observer)?);
    }
    Ok(out)
}
