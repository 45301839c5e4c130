//! A fixed-length bitmap of used blocks: bit `i` is bit `i % 8` of byte `i / 8` (LSB first),
//! the layout ext4, NTFS and Kura's manifest all use.

#[derive(Clone, PartialEq, Eq)]
pub struct Bitmap {
    bits: Vec<u8>,
    len: u64,
}

impl std::fmt::Debug for Bitmap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bitmap {{ len: {}, ones: {} }}", self.len, self.count_ones())
    }
}

impl Bitmap {
    /// A bitmap of `len` clear bits.
    pub fn new(len: u64) -> Self {
        Bitmap { bits: vec![0; len.div_ceil(8) as usize], len }
    }

    /// A bitmap of `len` set bits.
    pub fn full(len: u64) -> Self {
        let mut b = Bitmap { bits: vec![0xff; len.div_ceil(8) as usize], len };
        b.clear_tail();
        b
    }

    /// Takes `len` bits from `bytes` (which must hold at least `len` bits); bits past `len` are
    /// cleared.
    pub fn from_bytes(mut bytes: Vec<u8>, len: u64) -> Option<Self> {
        let need = len.div_ceil(8) as usize;
        if bytes.len() < need {
            return None;
        }
        bytes.truncate(need);
        let mut b = Bitmap { bits: bytes, len };
        b.clear_tail();
        Some(b)
    }

    fn clear_tail(&mut self) {
        let rem = (self.len % 8) as u32;
        if rem != 0 {
            if let Some(last) = self.bits.last_mut() {
                *last &= (1u8 << rem) - 1;
            }
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }

    pub fn get(&self, i: u64) -> bool {
        i < self.len && self.bits[(i / 8) as usize] & (1 << (i % 8)) != 0
    }

    pub fn set(&mut self, i: u64) {
        if i < self.len {
            self.bits[(i / 8) as usize] |= 1 << (i % 8);
        }
    }

    /// Sets bits `[start, start + count)`, clipped to the bitmap's length.
    pub fn set_range(&mut self, start: u64, count: u64) {
        let end = start.saturating_add(count).min(self.len);
        let mut i = start;
        while i < end {
            if i.is_multiple_of(8) && end - i >= 8 {
                let full = ((end - i) / 8) as usize;
                let b = (i / 8) as usize;
                self.bits[b..b + full].fill(0xff);
                i += full as u64 * 8;
            } else {
                self.set(i);
                i += 1;
            }
        }
    }

    /// ORs `other` into `self` (lengths must match).
    pub fn union_with(&mut self, other: &Bitmap) {
        assert_eq!(self.len, other.len, "bitmap lengths differ");
        for (a, b) in self.bits.iter_mut().zip(&other.bits) {
            *a |= *b;
        }
    }

    pub fn count_ones(&self) -> u64 {
        self.bits.iter().map(|b| b.count_ones() as u64).sum()
    }

    /// Whether any bit in `[start, start + count)` is set.
    pub fn any_in(&self, start: u64, count: u64) -> bool {
        let end = start.saturating_add(count).min(self.len);
        let mut i = start;
        while i < end {
            if i.is_multiple_of(8) && end - i >= 8 {
                if self.bits[(i / 8) as usize] != 0 {
                    return true;
                }
                i += 8;
            } else {
                if self.get(i) {
                    return true;
                }
                i += 1;
            }
        }
        false
    }

    /// Maximal runs of set bits as `(start, count)`, in order.
    pub fn runs(&self) -> Runs<'_> {
        Runs { bm: self, pos: 0, end: self.len }
    }

    /// Maximal runs of set bits inside `[start, start + count)`, in order.
    pub fn runs_in(&self, start: u64, count: u64) -> Runs<'_> {
        Runs { bm: self, pos: start.min(self.len), end: start.saturating_add(count).min(self.len) }
    }
}

pub struct Runs<'a> {
    bm: &'a Bitmap,
    pos: u64,
    end: u64,
}

impl Runs<'_> {
    /// Next index >= pos (and < end) whose bit equals `want`, skipping whole bytes quickly.
    fn next_bit_eq(&self, mut pos: u64, want: bool) -> u64 {
        let skip = if want { 0x00 } else { 0xff };
        while pos < self.end {
            if pos.is_multiple_of(8) && self.end - pos >= 8 && self.bm.bits[(pos / 8) as usize] == skip {
                pos += 8;
                continue;
            }
            if self.bm.get(pos) == want {
                return pos;
            }
            pos += 1;
        }
        self.end
    }
}

impl Iterator for Runs<'_> {
    type Item = (u64, u64);
    fn next(&mut self) -> Option<(u64, u64)> {
        let start = self.next_bit_eq(self.pos, true);
        if start >= self.end {
            self.pos = self.end;
            return None;
        }
        let stop = self.next_bit_eq(start, false);
        self.pos = stop;
        Some((start, stop - start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn runs_and_ranges() {
        let mut b = Bitmap::new(100);
        b.set_range(3, 10);
        b.set_range(40, 24);
        b.set(99);
        assert_eq!(b.runs().collect::<Vec<_>>(), vec![(3, 10), (40, 24), (99, 1)]);
        assert_eq!(b.runs_in(5, 40).collect::<Vec<_>>(), vec![(5, 8), (40, 5)]);
        assert_eq!(b.count_ones(), 35);
        assert!(b.any_in(12, 1));
        assert!(!b.any_in(13, 27));
        assert_eq!(Bitmap::full(13).count_ones(), 13);
        assert_eq!(Bitmap::full(13).as_bytes(), &[0xff, 0x1f]);
    }

    proptest! {
        #[test]
        fn runs_match_naive(bits in proptest::collection::vec(any::<bool>(), 0..300)) {
            let mut b = Bitmap::new(bits.len() as u64);
            for (i, v) in bits.iter().enumerate() { if *v { b.set(i as u64); } }
            let mut rebuilt = vec![false; bits.len()];
            let mut last_end = None;
            for (s, c) in b.runs() {
                prop_assert!(c > 0);
                if let Some(e) = last_end { prop_assert!(s > e); }
                for i in s..s + c { rebuilt[i as usize] = true; }
                last_end = Some(s + c);
            }
            prop_assert_eq!(rebuilt, bits);
        }
    }
}
