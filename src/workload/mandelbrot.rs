//! `mandelbrot`: escape-time iteration counts for an `N × N` image of the Mandelbrot set.
//!
//! Index `i` is the pixel at row `i / N`, column `i % N` of the region
//! `x ∈ [-2.0, 0.5]`, `y ∈ [-1.25, 1.25]`; its value is how many times `z = z² + c` runs from
//! `z = 0` before `|z|² > 4`, capped at `max_iter`. Points inside the set cost the full
//! `max_iter` while most points outside escape in a few steps, so rows through the middle of
//! the image cost far more than rows near the top and bottom: the CPU-bound case that is
//! *irregular by row*. [`write_png`] turns the counts into a picture.

#[cfg(feature = "plot")]
use std::fs::File;
#[cfg(feature = "plot")]
use std::io::{self, BufWriter, Write};
use std::ops::Range;
#[cfg(feature = "plot")]
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Workload;

/// The `max_iter` used when none is given.
pub const DEFAULT_MAX_ITER: u32 = 256;

const X_MIN: f64 = -2.0;
const X_MAX: f64 = 0.5;
const Y_MIN: f64 = -1.25;
const Y_MAX: f64 = 1.25;

/// Escape-time counts (`u32`) of a `size × size` image, row-major, top row first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mandelbrot {
    /// Side of the image in pixels; the workload has `size * size` elements.
    pub size: u64,
    /// Iteration cap: the value of points that never escape.
    pub max_iter: u32,
}

impl Mandelbrot {
    /// An image `size` pixels on a side, iterating at most `max_iter` times per pixel.
    pub fn new(size: u64, max_iter: u32) -> Self {
        Mandelbrot { size, max_iter }
    }

    /// Number of elements, `size * size`, or `None` if that overflows `u64`.
    pub fn checked_pixels(&self) -> Option<u64> {
        self.size.checked_mul(self.size)
    }

    /// Number of elements, `size * size`.
    ///
    /// # Panics
    ///
    /// If `size * size` overflows `u64`; check user input with
    /// [`checked_pixels`](Self::checked_pixels).
    pub fn pixels(&self) -> u64 {
        self.checked_pixels()
            .unwrap_or_else(|| panic!("a {0} x {0} image has more than 2^64 pixels", self.size))
    }

    /// The point `c = (x, y)` sampled by pixel `i`: the centre of the pixel's square.
    pub fn point(&self, i: u64) -> (f64, f64) {
        let size = self.size as f64;
        let row = (i / self.size) as f64;
        let col = (i % self.size) as f64;
        (
            X_MIN + (col + 0.5) * (X_MAX - X_MIN) / size,
            Y_MAX - (row + 0.5) * (Y_MAX - Y_MIN) / size,
        )
    }
}

impl Workload for Mandelbrot {
    const NAME: &'static str = "mandelbrot";
    type Output = u32;

    #[inline(never)]
    fn kernel(&self, range: Range<u64>, out: &mut [u32]) {
        for (slot, i) in out.iter_mut().zip(range) {
            let (cx, cy) = self.point(i);
            *slot = escape_time(cx, cy, self.max_iter);
        }
    }
}

/// Iterations of `z = z² + c` from `z = 0` until `|z|² > 4`, at most `max_iter`.
fn escape_time(cx: f64, cy: f64, max_iter: u32) -> u32 {
    let (mut x, mut y) = (0.0f64, 0.0f64);
    let (mut x2, mut y2) = (0.0f64, 0.0f64);
    let mut n = 0;
    while n < max_iter && x2 + y2 <= 4.0 {
        y = 2.0 * x * y + cy;
        x = x2 - y2 + cx;
        x2 = x * x;
        y2 = y * y;
        n += 1;
    }
    n
}

/// Writes `iterations` (a `size × size` result of [`Mandelbrot`]) as an 8-bit RGB PNG
/// (with the `plot` feature, on by default).
///
/// Points that reached `max_iter` are black; the others are coloured on a logarithmic scale
/// of their count, from deep blue (quick escape) through gold to dark near the boundary.
/// Errors name `path`; a slice whose length is not `size * size` is
/// [`io::ErrorKind::InvalidInput`].
#[cfg(feature = "plot")]
pub fn write_png(path: &Path, size: u64, iterations: &[u32], max_iter: u32) -> io::Result<()> {
    let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
    let side = u32::try_from(size).map_err(|_| {
        invalid(format!(
            "cannot write {}: a PNG side is at most {} pixels (got {size})",
            path.display(),
            u32::MAX
        ))
    })?;
    if size.checked_mul(size) != Some(iterations.len() as u64) {
        return Err(invalid(format!(
            "cannot write {}: {} iteration counts do not make a {size} x {size} image",
            path.display(),
            iterations.len()
        )));
    }
    let context = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let file = File::create(path).map_err(context)?;
    encode_png_sides(file, side, iterations, max_iter).map_err(context)
}

/// Writes `iterations` as [`write_png`] does, to `out` (a file opened by the caller).
/// Errors do not name a path.
#[cfg(feature = "plot")]
pub fn encode_png(out: impl Write, size: u64, iterations: &[u32], max_iter: u32) -> io::Result<()> {
    let side = u32::try_from(size)
        .ok()
        .filter(|_| size.checked_mul(size) == Some(iterations.len() as u64))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} iteration counts do not make a {size} x {size} PNG image",
                    iterations.len()
                ),
            )
        })?;
    encode_png_sides(out, side, iterations, max_iter)
}

#[cfg(feature = "plot")]
fn encode_png_sides(
    out: impl Write,
    side: u32,
    iterations: &[u32],
    max_iter: u32,
) -> io::Result<()> {
    let mut rgb = Vec::with_capacity(iterations.len() * 3);
    for &n in iterations {
        rgb.extend_from_slice(&colour(n, max_iter));
    }
    let mut out = BufWriter::new(out);
    let mut encoder = png::Encoder::new(&mut out, side, side);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(io::Error::from)?;
    writer.write_image_data(&rgb).map_err(io::Error::from)?;
    writer.finish().map_err(io::Error::from)?;
    // Flush here: an error while dropping a `BufWriter` would be lost.
    out.flush()
}

/// Colour of a pixel that took `n` of at most `max_iter` iterations.
#[cfg(feature = "plot")]
fn colour(n: u32, max_iter: u32) -> [u8; 3] {
    if n >= max_iter {
        return [0, 0, 0];
    }
    // Most points escape within a few iterations, so a log scale spreads them over the map.
    let t = (1.0 + f64::from(n)).ln() / (1.0 + f64::from(max_iter)).ln();
    let s = 1.0 - t;
    // Bernstein-polynomial palette: dark at both ends, blue then gold in between.
    let r = 9.0 * s * t * t * t;
    let g = 15.0 * s * s * t * t;
    let b = 8.5 * s * s * s * t;
    let byte = |v: f64| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    [byte(r), byte(g), byte(b)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compute(m: &Mandelbrot, range: Range<u64>) -> Vec<u32> {
        let mut out = vec![u32::MAX; (range.end - range.start) as usize];
        m.kernel(range, &mut out);
        out
    }

    #[test]
    fn pixel_nearest_the_origin_is_inside() {
        let m = Mandelbrot::new(10, 300);
        // Column 7, row 4 samples c = -0.125 + 0.125i, inside the main cardioid.
        let i = 4 * 10 + 7;
        assert_eq!(m.point(i), (-0.125, 0.125));
        assert_eq!(compute(&m, i..i + 1), [300]);
    }

    #[test]
    fn corners_escape_at_once() {
        let m = Mandelbrot::new(10, 300);
        let last = m.pixels() - 1;
        for i in [0, 9, 90, last] {
            let n = compute(&m, i..i + 1)[0];
            assert!((1..=2).contains(&n), "pixel {i} took {n} iterations");
        }
    }

    #[test]
    fn small_image_matches_an_independent_computation() {
        // Same formula evaluated in Python (IEEE doubles, same operation order).
        let m = Mandelbrot::new(8, 50);
        let out = compute(&m, 0..m.pixels());
        #[rustfmt::skip]
        let expected: [u32; 64] = [
            1, 2, 3, 3, 3, 5, 4, 3,
            1, 3, 3, 4, 5, 10, 9, 4,
            3, 3, 5, 6, 18, 50, 50, 11,
            4, 5, 50, 50, 50, 50, 50, 50,
            4, 5, 50, 50, 50, 50, 50, 50,
            3, 3, 5, 6, 18, 50, 50, 11,
            1, 3, 3, 4, 5, 10, 9, 4,
            1, 2, 3, 3, 3, 5, 4, 3,
        ];
        assert_eq!(out, expected);

        let m = Mandelbrot::new(37, 100);
        let total: u64 = compute(&m, 0..m.pixels())
            .iter()
            .map(|&n| u64::from(n))
            .sum();
        assert_eq!(total, 40_822);
    }

    #[test]
    fn sub_ranges_agree_with_one_call() {
        let m = Mandelbrot::new(64, DEFAULT_MAX_ITER);
        let whole = compute(&m, 0..m.pixels());
        let mut pieces = Vec::new();
        for w in [0, 1, 63, 64, 65, 1_000, 2_048, 4_095, 4_096].windows(2) {
            pieces.extend(compute(&m, w[0]..w[1]));
        }
        assert_eq!(whole, pieces);
    }

    #[test]
    fn pixel_counts_are_checked() {
        assert_eq!(Mandelbrot::new(1_000, 1).pixels(), 1_000_000);
        assert_eq!(Mandelbrot::new(1 << 32, 1).checked_pixels(), None);
        assert_eq!(
            Mandelbrot::new((1 << 32) - 1, 1).checked_pixels(),
            Some(((1u64 << 32) - 1) * ((1u64 << 32) - 1))
        );
    }

    #[cfg(feature = "plot")]
    #[test]
    fn png_is_written_and_decodes_to_the_right_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.png");
        let m = Mandelbrot::new(24, 64);
        let counts = compute(&m, 0..m.pixels());
        write_png(&path, m.size, &counts, m.max_iter).unwrap();

        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.starts_with(&[0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n']));
        let decoder = png::Decoder::new(io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (24, 24));
        assert_eq!(info.color_type, png::ColorType::Rgb);
        // Inside points are black, escaped ones are not.
        let pixel = |i: usize| &buf[3 * i..3 * i + 3];
        let inside = counts.iter().position(|&n| n == 64).unwrap();
        assert_eq!(pixel(inside), [0, 0, 0]);
        assert_ne!(pixel(0), [0, 0, 0]);
    }

    #[cfg(feature = "plot")]
    #[test]
    fn png_errors_name_the_path_and_the_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.png");
        let err = write_png(&path, 3, &[0; 8], 10).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("bad.png"), "{err}");

        let missing = dir.path().join("no/such/dir/m.png");
        let err = write_png(&missing, 1, &[0], 10).unwrap_err();
        assert!(err.to_string().contains("no/such/dir"), "{err}");
    }
}
