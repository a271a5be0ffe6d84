//! PNG grids of filters: a diverging colour map with zero in the middle
//! (blue negative, near-white zero, red positive) and one scale per grid, so
//! filters in one picture can be compared by colour.

use std::io::BufWriter;
use std::path::Path;

use masterkey_core::{atomic, Error, KernelSize, Result};

/// Pixels per filter tap and between cells.
const TAP_PX: usize = 12;
const GAP_PX: usize = 4;
const BACKGROUND: [u8; 3] = [255, 255, 255];

/// A grid of same-size filters, drawn row by row.
pub struct FilterGrid<'a> {
    pub kernel: KernelSize,
    /// Each filter's taps, row-major.
    pub filters: Vec<&'a [f32]>,
    pub columns: usize,
}

impl FilterGrid<'_> {
    /// The grid's colour scale: the largest `|tap|` of all its filters.
    pub fn scale(&self) -> f32 {
        self.filters.iter().flat_map(|f| f.iter()).fold(0.0f32, |m, v| m.max(v.abs()))
    }

    /// RGB pixels and the image size.
    pub fn render(&self) -> (Vec<u8>, usize, usize) {
        let cols = self.columns.max(1).min(self.filters.len().max(1));
        let rows = self.filters.len().div_ceil(cols).max(1);
        let cell_w = self.kernel.w * TAP_PX;
        let cell_h = self.kernel.h * TAP_PX;
        let width = cols * cell_w + (cols + 1) * GAP_PX;
        let height = rows * cell_h + (rows + 1) * GAP_PX;
        let mut pixels = BACKGROUND.repeat(width * height);
        let scale = self.scale();
        for (i, filter) in self.filters.iter().enumerate() {
            let x0 = GAP_PX + (i % cols) * (cell_w + GAP_PX);
            let y0 = GAP_PX + (i / cols) * (cell_h + GAP_PX);
            for r in 0..self.kernel.h {
                for c in 0..self.kernel.w {
                    let v = filter[r * self.kernel.w + c];
                    let rgb = diverging(if scale > 0.0 { v / scale } else { 0.0 });
                    for py in 0..TAP_PX {
                        let row_start = ((y0 + r * TAP_PX + py) * width + x0 + c * TAP_PX) * 3;
                        for px in 0..TAP_PX {
                            pixels[row_start + px * 3..row_start + px * 3 + 3].copy_from_slice(&rgb);
                        }
                    }
                }
            }
        }
        (pixels, width, height)
    }

    /// Writes the grid as a PNG, atomically.
    pub fn save_png(&self, path: &Path) -> Result<()> {
        let (pixels, width, height) = self.render();
        atomic::write_file_with(path, |file| {
            let mut encoder = png::Encoder::new(BufWriter::new(file), width as u32, height as u32);
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            let mut writer = encoder.write_header().map_err(std::io::Error::other)?;
            writer.write_image_data(&pixels).map_err(std::io::Error::other)?;
            writer.finish().map_err(std::io::Error::other)
        })
        .map_err(|e| match e {
            Error::Io { cause, .. } => Error::io(path, cause),
            other => other,
        })
    }
}

/// Maps `t` in [-1, 1] to blue - white - red (the end colours of ColorBrewer's RdBu).
pub fn diverging(t: f32) -> [u8; 3] {
    const NEG: [f32; 3] = [33.0, 102.0, 172.0];
    const MID: [f32; 3] = [247.0, 247.0, 247.0];
    const POS: [f32; 3] = [178.0, 24.0, 43.0];
    let t = t.clamp(-1.0, 1.0);
    let (end, s) = if t < 0.0 { (NEG, -t) } else { (POS, t) };
    std::array::from_fn(|i| (MID[i] + (end[i] - MID[i]) * s).round() as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_map_is_centred_on_zero() {
        assert_eq!(diverging(0.0), [247, 247, 247]);
        assert_eq!(diverging(1.0), [178, 24, 43]);
        assert_eq!(diverging(-1.0), [33, 102, 172]);
        assert_eq!(diverging(-7.0), diverging(-1.0));
    }

    #[test]
    fn grid_places_taps_row_major_with_one_scale() {
        // Two 1x2 filters; the second holds the grid's largest |tap|.
        let a = [0.5f32, -0.5];
        let b = [0.0f32, 1.0];
        let grid = FilterGrid { kernel: KernelSize::new(1, 2), filters: vec![&a, &b], columns: 2 };
        let (px, w, h) = grid.render();
        assert_eq!((w, h), (2 * 2 * TAP_PX + 3 * GAP_PX, TAP_PX + 2 * GAP_PX));
        let at = |x: usize, y: usize| [px[(y * w + x) * 3], px[(y * w + x) * 3 + 1], px[(y * w + x) * 3 + 2]];
        let y = GAP_PX + 1;
        assert_eq!(at(GAP_PX + 1, y), diverging(0.5));
        assert_eq!(at(GAP_PX + TAP_PX + 1, y), diverging(-0.5));
        assert_eq!(at(2 * GAP_PX + 2 * TAP_PX + TAP_PX + 1, y), diverging(1.0));
        assert_eq!(at(0, 0), BACKGROUND);
    }

    #[test]
    fn png_decodes_with_the_rendered_size() {
        let f = [0.1f32; 9];
        let grid = FilterGrid { kernel: KernelSize::square(3), filters: vec![&f; 5], columns: 4 };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.png");
        grid.save_png(&path).unwrap();
        let decoder = png::Decoder::new(std::fs::File::open(&path).unwrap());
        let reader = decoder.read_info().unwrap();
        let (_, w, h) = grid.render();
        assert_eq!((reader.info().width as usize, reader.info().height as usize), (w, h));
    }
}
