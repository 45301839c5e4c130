//! The snapshot's disk ([`crate::snapshot_disk::SnapshotDisk`]: lazy chunks, bounded cache,
//! unused ranges as zeros) as an NBD export.

use super::proto::Export;
pub use crate::snapshot_disk::SnapshotDisk;

impl Export for SnapshotDisk {
    fn name(&self) -> &str {
        self.id()
    }

    fn size(&self) -> u64 {
        SnapshotDisk::size(self)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> anyhow::Result<()> {
        SnapshotDisk::read_at(self, offset, buf)
    }
}
