//! Regions: the disk cut into partitions and the gaps between them.
//!
//! Every byte of the disk belongs to exactly one region. Partitions are captured through their
//! filesystem's allocation map; gaps (the MBR and primary GPT, the space before the first
//! partition, EBRs of logical partitions, unpartitioned space, the backup GPT) are captured raw,
//! so partition tables and boot areas come back byte for byte.

use crate::layout::DiskLayout;

/// A byte range of the disk and what lies there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: u64,
    pub size: u64,
    /// Index into `DiskLayout::partitions`, or `None` for a gap.
    pub partition: Option<usize>,
}

/// Cuts `[0, layout.disk_size)` into spans, in disk order. Assumes the layout was validated
/// (partitions inside the disk, sorted, not overlapping).
pub fn spans(layout: &DiskLayout) -> Vec<Span> {
    let mut out = Vec::new();
    let mut pos = 0u64;
    for (i, p) in layout.partitions.iter().enumerate() {
        if p.size == 0 {
            continue;
        }
        if p.start > pos {
            out.push(Span { start: pos, size: p.start - pos, partition: None });
        }
        out.push(Span { start: p.start, size: p.size, partition: Some(i) });
        pos = p.end();
    }
    if layout.disk_size > pos {
        out.push(Span { start: pos, size: layout.disk_size - pos, partition: None });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{Partition, PartitionEntry, Scheme};

    fn part(number: u32, start: u64, size: u64) -> Partition {
        Partition {
            number,
            start,
            size,
            entry: PartitionEntry::Mbr { type_byte: 0x83, bootable: false, logical: false },
        }
    }

    #[test]
    fn spans_cover_the_disk_exactly() {
        let layout = DiskLayout {
            disk_size: 1000,
            sector_size: 512,
            scheme: Scheme::Mbr,
            gpt: None,
            partitions: vec![part(1, 100, 200), part(2, 300, 100), part(5, 500, 400)],
            warnings: vec![],
        };
        let s = spans(&layout);
        let sizes: Vec<_> = s.iter().map(|s| (s.start, s.size, s.partition)).collect();
        assert_eq!(
            sizes,
            vec![
                (0, 100, None),
                (100, 200, Some(0)),
                (300, 100, Some(1)),
                (400, 100, None),
                (500, 400, Some(2)),
                (900, 100, None)
            ]
        );
    }
}
