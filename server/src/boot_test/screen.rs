//! Reading a boot test's screen, for a guest that says nothing on the serial console — a
//! Windows system: is what the machine shows a graphical logon screen or desktop? Pure image
//! in, a [`Look`] out; the runner ([`super::run`]) decides how many alike looks make a pass.
//!
//! A screen counts as *graphical* when it is not the VGA text mode (QEMU dumps 80×25 text as
//! 720×400), shows at least [`MIN_COLOURS`] distinct colours in a sample of its pixels, and no
//! one colour covers more than [`MAX_DOMINANT`] of it. That rules out the firmware's and boot
//! managers' text screens, a black (hung or blanked) screen, and a stop-error screen (one
//! colour with text on it); a logon screen's picture, gradients and anti-aliased text pass.
//! The runner passes the test when the same graphical screen (by [`Look::hash`]) was seen
//! [`STABLE_LOOKS`] times in a row: a boot animation changes, a logon screen waits.

use anyhow::{Context, Result};
use std::collections::HashMap;
use std::path::Path;

/// Distinct colours (in the sample) a graphical screen shows at least.
pub const MIN_COLOURS: usize = 64;
/// The largest share of the sample one colour may cover on a graphical screen.
pub const MAX_DOMINANT: f64 = 0.8;
/// Consecutive identical graphical looks that mean the system waits at its logon screen.
pub const STABLE_LOOKS: u32 = 3;
/// Pixels sampled per screen (on a grid), whatever its size.
const SAMPLES: usize = 64 * 64;

/// What one screen dump shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Look {
    pub width: u32,
    pub height: u32,
    /// Distinct colours among the sampled pixels.
    pub colours: usize,
    /// The share of the most common colour, in thousandths.
    pub dominant_permille: u32,
    /// A digest of the sampled pixels: equal looks, equal screens (for stability).
    pub hash: u64,
}

impl Look {
    /// Whether this is a graphical screen by the rules at the top of this module.
    pub fn graphical(&self) -> bool {
        let text_mode = (self.width, self.height) == (720, 400);
        !text_mode && self.colours >= MIN_COLOURS && f64::from(self.dominant_permille) / 1000.0 <= MAX_DOMINANT
    }
}

/// Reads a PNG screen dump (QMP `screendump`, 8-bit RGB or RGBA).
pub fn look_at(path: &Path) -> Result<Look> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    // A screen dump is at most a few megapixels; refuse anything absurd before allocating.
    decoder.set_limits(png::Limits { bytes: 64 << 20 });
    let mut reader = decoder.read_info().with_context(|| format!("reading {}", path.display()))?;
    let mut buf = vec![0u8; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).with_context(|| format!("decoding {}", path.display()))?;
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => anyhow::bail!("{}: unexpected PNG colour type {other:?}", path.display()),
    };
    anyhow::ensure!(info.bit_depth == png::BitDepth::Eight, "{}: not an 8-bit PNG", path.display());
    Ok(look(info.width, info.height, &buf[..info.buffer_size()], channels, info.line_size))
}

/// The look of a `width`×`height` image of `channels` bytes per pixel, rows `stride` apart.
pub fn look(width: u32, height: u32, pixels: &[u8], channels: usize, stride: usize) -> Look {
    let side = (SAMPLES as f64).sqrt() as u32;
    let mut counts: HashMap<[u8; 3], usize> = HashMap::new();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut n = 0usize;
    for gy in 0..side {
        for gx in 0..side {
            let (x, y) = ((gx * width) / side, (gy * height) / side);
            let at = y as usize * stride + x as usize * channels;
            let Some(p) = pixels.get(at..at + 3) else { continue };
            let rgb = [p[0], p[1], p[2]];
            *counts.entry(rgb).or_default() += 1;
            for b in rgb {
                hash = (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
            }
            n += 1;
        }
    }
    let top = counts.values().copied().max().unwrap_or(0);
    Look {
        width,
        height,
        colours: counts.len(),
        dominant_permille: (top * 1000).checked_div(n).unwrap_or(1000) as u32,
        hash,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
        let f = &f;
        (0..h).flat_map(|y| (0..w).flat_map(move |x| f(x, y))).collect()
    }

    #[test]
    fn a_picture_is_graphical_text_black_and_stop_screens_are_not() {
        let (w, h) = (1024, 768);
        let picture = image(w, h, |x, y| [(x % 256) as u8, (y % 256) as u8, ((x + y) % 200) as u8]);
        let l = look(w, h, &picture, 3, w as usize * 3);
        assert!(l.graphical(), "{l:?}");

        let black = image(w, h, |_, _| [0, 0, 0]);
        assert!(!look(w, h, &black, 3, w as usize * 3).graphical());

        // A stop-error screen: one blue with white text.
        let stop = image(w, h, |x, y| if (x / 7 + y / 11) % 9 == 0 { [255, 255, 255] } else { [0, 120, 215] });
        assert!(!look(w, h, &stop, 3, w as usize * 3).graphical());

        // VGA text mode, however colourful.
        let text = image(720, 400, |x, y| [(x % 256) as u8, (y % 256) as u8, 7]);
        assert!(!look(720, 400, &text, 3, 720 * 3).graphical());

        // The same picture looks the same; another does not.
        let again = look(w, h, &picture, 3, w as usize * 3);
        let other = image(w, h, |x, y| [(y % 256) as u8, (x % 256) as u8, 9]);
        assert_eq!(again.hash, l.hash);
        assert_ne!(look(w, h, &other, 3, w as usize * 3).hash, l.hash);
    }
}
