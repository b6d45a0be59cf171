//! Streaming a job's output to a file in bounded memory (`--output FILE`).
//!
//! The shared region becomes a ring of windows: workers fill the next windows while a writer
//! thread verifies the finished one against the single-process kernel (computed window by
//! window too, so verification is bounded as well) and appends it to the file; then its slot
//! takes a later window. Memory stays at a few windows whatever `n` is, and after the first
//! lap nobody page-faults: the slots' pages are reused.
//!
//! The file holds the elements in index order, little-endian, with nothing else: exactly
//! the bytes of the single-process output (`out[0]`, `out[1]`, …).

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::engine::pool::WindowSink;
use crate::lab::baseline::{Checksum, first_mismatch};
use crate::lab::model::Mismatch;
use crate::workload::{Tolerance, Workload};

/// Default window length in bytes.
pub(crate) const DEFAULT_WINDOW_BYTES: u64 = 32 << 20;
/// Windows in the ring: one being written out while the workers fill the other two.
pub(crate) const RING: u64 = 3;

/// Elements per window for a window of about `window_bytes` bytes: a whole number of
/// pages when possible, so that giving a window back frees whole pages.
pub(crate) fn window_elems(window_bytes: u64, elem_size: usize) -> u64 {
    let elems = (window_bytes / elem_size.max(1) as u64).max(1);
    if elems >= 4096 {
        elems / 4096 * 4096
    } else {
        elems
    }
}

/// Writes windows to a file, verifying each against the single-process kernel.
pub(crate) struct FileSink<'a, W: Workload> {
    workload: &'a W,
    file: File,
    path: PathBuf,
    verify: bool,
    expected: Vec<W::Output>,
    /// The workload's tolerance, if it declares one.
    tolerance: Option<Tolerance>,
    /// The running checksum of every window written, in order.
    checksum: Checksum,
    /// The first element that differed from the single-process kernel.
    pub mismatch: Option<Mismatch>,
    /// Time the single-process kernel took, summed over windows (or known, for `sleep`).
    pub baseline: Duration,
    /// Time spent writing the file.
    pub write: Duration,
    /// Bytes written.
    pub bytes: u64,
    /// Windows written.
    pub windows: u64,
}

impl<'a, W: Workload> FileSink<'a, W> {
    /// A sink writing to `file` (already created at `path`); with `verify`, each window is
    /// compared with the single-process kernel's values.
    pub(crate) fn new(workload: &'a W, file: File, path: &Path, verify: bool) -> Self {
        FileSink {
            workload,
            file,
            path: path.to_path_buf(),
            verify,
            expected: Vec::new(),
            tolerance: workload.tolerance(),
            checksum: Checksum::default(),
            mismatch: None,
            baseline: Duration::ZERO,
            write: Duration::ZERO,
            bytes: 0,
            windows: 0,
        }
    }

    /// The checksum of the windows written so far: the same as the whole output's.
    pub(crate) fn checksum(&self) -> String {
        self.checksum.hex()
    }

    fn check(&mut self, start: u64, out: &[W::Output]) {
        self.expected.clear();
        self.expected
            .resize(out.len(), bytemuck::Zeroable::zeroed());
        let range = start..start + out.len() as u64;
        let began = Instant::now();
        match self.workload.sequential_time(out.len() as u64) {
            Some(known) => {
                self.workload.expected(range, &mut self.expected);
                self.baseline += known;
            }
            None => {
                self.workload.kernel(range, &mut self.expected);
                self.baseline += began.elapsed();
            }
        }
        if self.mismatch.is_none()
            && let Some(mut m) = first_mismatch(out, &self.expected, self.tolerance.as_ref())
        {
            m.index += start;
            self.mismatch = Some(m);
        }
    }
}

impl<W: Workload> WindowSink for FileSink<'_, W> {
    fn window(&mut self, start: u64, bytes: &[u8]) -> Result<(), String> {
        let out: &[W::Output] = bytemuck::cast_slice(bytes);
        // Windows arrive in order: the running hash is the whole output's.
        self.checksum.update(bytes);
        if self.verify {
            self.check(start, out);
        }
        let began = Instant::now();
        // The region holds native-endian elements; procpool's platforms are little-endian.
        self.file.write_all(bytes).map_err(|e| {
            format!(
                "cannot write {}: {e}{}",
                self.path.display(),
                limit_hint(&e)
            )
        })?;
        self.write += began.elapsed();
        self.bytes += bytes.len() as u64;
        self.windows += 1;
        Ok(())
    }
}

/// For "File too large" (EFBIG): the file-size limit that caused it.
fn limit_hint(e: &io::Error) -> String {
    use nix::sys::resource::{Resource, getrlimit};
    match getrlimit(Resource::RLIMIT_FSIZE) {
        Ok((soft, _)) if e.raw_os_error() == Some(libc::EFBIG) && soft != libc::RLIM_INFINITY => {
            format!(
                " (the file-size limit, ulimit -f, is {})",
                crate::units::bytes(u128::from(soft))
            )
        }
        _ => String::new(),
    }
}

const _: () = assert!(
    cfg!(target_endian = "little"),
    "the --output format is little-endian"
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Squares;

    #[test]
    fn windows_are_whole_pages_when_large() {
        assert_eq!(window_elems(32 << 20, 8), 4 << 20);
        assert_eq!(window_elems(100_000, 8), 12_288);
        assert_eq!(window_elems(800, 8), 100);
        assert_eq!(window_elems(3, 8), 1);
    }

    #[test]
    fn file_sink_writes_verifies_and_sums() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        let file = File::create(&path).unwrap();
        let mut sink = FileSink::new(&Squares, file, &path, true);
        let window = |start: u64, len: u64| -> Vec<u8> {
            let v: Vec<u64> = (start..start + len).map(|i| i * i).collect();
            bytemuck::cast_slice(&v).to_vec()
        };
        sink.window(0, &window(0, 5)).unwrap();
        let mut bad = window(5, 3);
        bad[8] ^= 1;
        sink.window(5, &bad).unwrap();
        let m = sink.mismatch.clone().expect("element 6 was changed");
        assert_eq!(
            (m.index, m.pool.as_str(), m.baseline.as_str()),
            (6, "37", "36")
        );
        assert_eq!(sink.bytes, 64);
        let written = std::fs::read(&path).unwrap();
        assert_eq!(written.len(), 64);
        assert_eq!(&written[..40], &window(0, 5)[..]);
        let whole: Vec<u64> = bytemuck::pod_collect_to_vec(&written);
        assert_eq!(sink.checksum(), crate::lab::baseline::checksum(&whole));
    }
}
