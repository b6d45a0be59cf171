//! The shared region: one anonymous `memfd` that every worker maps.
//!
//! Why memfd and not named POSIX shared memory (`/dev/shm/...`)? A memfd has no name, so
//! nothing can be left behind when procpool is killed: its pages disappear with the last
//! process that holds the descriptor or a mapping. Workers inherit the descriptor when they
//! start and map it again for every job, so the region can grow between jobs.
//!
//! This module and [`crate::engine::sys`] hold the crate's `unsafe` code. The core invariant that
//! makes writing into the region sound is stated on [`Mapping::slice_mut`]: at any time a
//! byte range is written by at most one process, and nobody reads it meanwhile. The pool
//! upholds it by handing out disjoint chunk ranges (the `Dispenser` of `schedule.rs` makes
//! each chunk start where the previous ended; a re-queued chunk goes to one worker after
//! its previous holder is dead and reaped) and by reading the region only once every chunk
//! is reported done and no chunk is in flight.

use std::ffi::c_void;
use std::io;
use std::num::NonZeroUsize;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};

/// An anonymous shared-memory file (memfd), owned by the parent.
///
/// It is created close-on-exec; the worker start-up code clears that flag in the child only
/// (see [`crate::engine::sys`]), so unrelated programs the user runs never inherit it.
#[derive(Debug)]
pub(crate) struct SharedRegion {
    fd: OwnedFd,
    /// Bytes of the control area at the start of the file (see [`crate::engine::control`]).
    control_bytes: u64,
    /// Bytes of results after it.
    len: u64,
    /// The size of the pages backing it: 4096, or the huge page size with `MFD_HUGETLB`
    /// (then every length and offset in the file is a multiple of it).
    page: u64,
}

/// Huge pages as this machine offers them for a shared region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HugePages {
    /// Reserved huge pages free now (`HugePages_Free` in `/proc/meminfo`).
    pub(crate) free: u64,
    /// Their size in bytes (`Hugepagesize`).
    pub(crate) page_bytes: u64,
}

impl HugePages {
    /// Reads `/proc/meminfo`; `None` when it cannot be read or names no huge page size.
    pub(crate) fn read() -> Option<HugePages> {
        HugePages::parse(&std::fs::read_to_string("/proc/meminfo").ok()?)
    }

    /// Parses the `HugePages_Free` and `Hugepagesize` lines of a `/proc/meminfo`.
    pub(crate) fn parse(meminfo: &str) -> Option<HugePages> {
        let field = |name: &str| {
            meminfo
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        };
        Some(HugePages {
            free: field("HugePages_Free:")?,
            page_bytes: field("Hugepagesize:")? * 1024,
        })
    }

    /// Huge pages a region with `bytes` of results needs (one more for the control area).
    pub(crate) fn needed(&self, bytes: u64) -> u64 {
        bytes.div_ceil(self.page_bytes.max(1)) + 1
    }
}

/// Whether the kernel gives shared memory transparent huge pages on `MADV_HUGEPAGE`:
/// `/sys/kernel/mm/transparent_hugepage/shmem_enabled` selects `advise`, `within_size`,
/// `always` or `force`, not `never` or `deny`.
pub(crate) fn shmem_thp() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
        .is_ok_and(|s| shmem_thp_in(&s))
}

/// [`shmem_thp`] on the file's text: the selected word is the one in brackets.
pub(crate) fn shmem_thp_in(text: &str) -> bool {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
        .is_some_and(|w| matches!(w, "advise" | "within_size" | "always" | "force"))
}

impl SharedRegion {
    /// Creates a region with a control area of `control_bytes` bytes (a whole number of
    /// pages, zeroed) and no results yet.
    pub(crate) fn with_control(control_bytes: u64) -> io::Result<Self> {
        let fd = memfd_create("procpool-results", MFdFlags::MFD_CLOEXEC)?;
        let mut region = SharedRegion {
            fd,
            control_bytes,
            len: 0,
            page: 4096,
        };
        region.reset(0)?;
        Ok(region)
    }

    /// Like [`SharedRegion::with_control`], backed by reserved huge pages of `page` bytes
    /// (`MFD_HUGETLB`): the control area takes a whole huge page, and results are sized in
    /// huge pages. Fails (`ENOMEM` on first touch aside) when the kernel refuses the memfd.
    pub(crate) fn with_control_huge(control_bytes: u64, page: u64) -> io::Result<Self> {
        let fd = memfd_create(
            "procpool-results",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_HUGETLB,
        )?;
        let mut region = SharedRegion {
            fd,
            control_bytes: control_bytes.next_multiple_of(page),
            len: 0,
            page,
        };
        region.reset(0)?;
        Ok(region)
    }

    /// The size of the pages backing the region (4096 unless huge).
    pub(crate) fn page_bytes(&self) -> u64 {
        self.page
    }

    /// The memfd.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Bytes of the control area at the start of the memfd (the queue above this module
    /// maps them).
    pub(crate) fn control_bytes(&self) -> u64 {
        self.control_bytes
    }

    /// Sets the length to `len` bytes, every byte zero.
    ///
    /// The results are first truncated away, which gives any pages of the previous job back
    /// to the kernel; the new pages are allocated lazily, on first touch, by whichever worker
    /// writes them first. No mapping of the old results may be in use. The control area
    /// before them stays as it is: workers keep it mapped and may be waiting on it.
    pub(crate) fn reset(&mut self, len: u64) -> io::Result<()> {
        let len_off = len
            .checked_next_multiple_of(self.page)
            .and_then(|len| len.checked_add(self.control_bytes))
            .and_then(|total| i64::try_from(total).ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "region too large"))?;
        nix::unistd::ftruncate(&self.fd, self.control_bytes as i64)?;
        nix::unistd::ftruncate(&self.fd, len_off).map_err(|e| {
            let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_FSIZE)
                .map_or(0, |(soft, _)| soft);
            match e {
                nix::errno::Errno::EFBIG => io::Error::new(
                    io::ErrorKind::FileTooLarge,
                    format!(
                        "cannot make the shared region {}: the file-size limit (ulimit -f) \
                         of {} applies to shared memory too; raise it (`ulimit -f unlimited`)",
                        crate::units::bytes(u128::from(len)),
                        crate::units::bytes(u128::from(limit))
                    ),
                ),
                other => io::Error::from(other),
            }
        })?;
        self.len = len;
        Ok(())
    }

    /// Makes the results `len` bytes long, keeping what they hold (`len` ≥ the length).
    pub(crate) fn grow(&mut self, len: u64) -> io::Result<()> {
        let total = len
            .checked_next_multiple_of(self.page)
            .and_then(|len| len.checked_add(self.control_bytes))
            .and_then(|t| i64::try_from(t).ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "region too large"))?;
        if len > self.len {
            nix::unistd::ftruncate(&self.fd, total)?;
            self.len = len;
        }
        Ok(())
    }

    /// Its length in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The raw descriptor number, passed to workers on their command line.
    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Maps the results into this process.
    pub(crate) fn map(&self) -> io::Result<Mapping> {
        Mapping::at(self.fd.as_fd(), self.control_bytes, self.len)
    }
}

/// Bytes of the inaccessible (`PROT_NONE`) guard on each side of every mapping.
const GUARD: usize = 4096;

/// A shared, writable mapping of a region (or of its first `len` bytes).
///
/// Every mapping sits between two guard pages that no process may touch: the kernel places
/// new mappings next to each other, so without them a worker's results would end exactly
/// where its control block begins, and a kernel writing a few KiB past its last chunk would
/// overwrite the claim counter. With them, it faults (SIGSEGV) and its chunk is retried.
///
/// Unmapped on drop.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    /// `len` rounded up to whole pages of the file: what was mapped from the file.
    map_len: usize,
    /// The whole reservation (guards included): what is unmapped on drop.
    reserved: NonNull<u8>,
    reserved_len: usize,
}

// SAFETY: a Mapping is a pointer to memory that lives until it is unmapped in `drop`; it has no
// thread affinity. Access to its bytes goes through `slice`/`slice_mut`, whose contracts
// (below) put the burden of exclusive writes on the caller, whichever thread it runs on.
unsafe impl Send for Mapping {}
// SAFETY: as above; shared references only hand out the raw pointer through unsafe methods.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of the memfd `fd` shared and read-write.
    ///
    /// A zero length gives an empty mapping without calling `mmap` (which refuses zero).
    pub(crate) fn new(fd: BorrowedFd<'_>, len: u64) -> io::Result<Self> {
        Self::at(fd, 0, len)
    }

    /// Maps `len` bytes of the memfd `fd` from byte `offset` (a whole number of pages).
    pub(crate) fn at(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<Self> {
        let offset = i64::try_from(offset)
            .ok()
            .filter(|o| o % 4096 == 0)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad offset"))?;
        let len = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "region too large"))?;
        let Some(nz) = NonZeroUsize::new(len) else {
            return Ok(Mapping {
                ptr: NonNull::dangling(),
                len: 0,
                map_len: 0,
                reserved: NonNull::dangling(),
                reserved_len: 0,
            });
        };
        // A memfd on huge pages (MFD_HUGETLB) is a hugetlbfs file: its offsets must be
        // multiples of its page size, and the kernel maps (and must be told to unmap) whole
        // pages.
        let page = page_size_of(fd);
        if !(offset as u64).is_multiple_of(page) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "offset is not a whole number of the file's pages",
            ));
        }
        let page = page as usize;
        let map_len = len.next_multiple_of(page);
        // Room for a guard on each side, and for aligning the file's part to its pages.
        let reserved_len = map_len
            .checked_add(2 * GUARD + (page - 4096))
            .and_then(NonZeroUsize::new)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "region too large"))?;
        // SAFETY: a fresh private anonymous reservation (no address hint), inaccessible and
        // backed by nothing, so no existing Rust object is overlaid.
        let reserved = unsafe {
            nix::sys::mman::mmap_anonymous(
                None,
                reserved_len,
                ProtFlags::PROT_NONE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE,
            )?
        };
        let base = reserved.as_ptr() as usize;
        let start = (base + GUARD).next_multiple_of(page);
        // The aligned start leaves at least a guard before it and after the file's part.
        debug_assert!(
            start - base >= GUARD && start + map_len + GUARD <= base + reserved_len.get()
        );
        // SAFETY: `start..start + map_len` lies inside the reservation made just above, which
        // no Rust object uses, so MAP_FIXED replaces only our own inaccessible pages. `fd`
        // is a memfd at least `offset + len` bytes long (the parent sized it before it told
        // anyone the length), so every mapped page is backed by the file.
        let mapped = unsafe {
            mmap(
                NonZeroUsize::new(start),
                nz,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED | MapFlags::MAP_FIXED,
                fd,
                offset,
            )
        };
        let ptr = match mapped {
            Ok(ptr) => ptr,
            Err(e) => {
                // SAFETY: the reservation made above, used by nothing yet.
                let _ = unsafe { munmap(reserved, reserved_len.get()) };
                return Err(e.into());
            }
        };
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
            map_len,
            reserved: reserved.cast(),
            reserved_len: reserved_len.get(),
        })
    }

    /// The first byte of the mapping, for the atomics of [`crate::engine::control`].
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length of the mapping in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// True for an empty mapping.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Faults in the pages wholly inside `range` for writing, in one system call
    /// (`MADV_POPULATE_WRITE`), instead of one page fault per page as the kernel writes
    /// them. Contents are unchanged; a kernel without it (before 5.14) is simply skipped.
    pub(crate) fn populate(&self, range: Range<usize>) {
        const PAGE: usize = 4096;
        let start = range.start.next_multiple_of(PAGE);
        let end = range.end.min(self.len) / PAGE * PAGE;
        if end <= start {
            return;
        }
        // SAFETY: `start..end` lies inside the mapping and is page aligned (the mapping
        // itself starts on a page). Populating changes no byte of the memory, so no
        // reader or writer, in this process or another, can observe it.
        let _ = unsafe {
            nix::sys::mman::madvise(
                NonNull::new_unchecked(self.ptr.as_ptr().add(start)).cast(),
                end - start,
                nix::sys::mman::MmapAdvise::MADV_POPULATE_WRITE,
            )
        };
    }

    /// Asks the kernel to back the mapping with transparent huge pages
    /// (`MADV_HUGEPAGE`), where `shmem_enabled` allows it for shared memory ([`shmem_thp`]);
    /// a kernel that cannot is simply not asked again.
    pub(crate) fn advise_huge(&self) {
        if self.len == 0 {
            return;
        }
        // SAFETY: the range is exactly what `at` mapped (`map_len` whole pages from its
        // page-aligned start). The advice changes no byte of the memory, only which pages
        // back it, so no reader or writer in any process can observe it.
        let _ = unsafe {
            nix::sys::mman::madvise(
                self.ptr.cast(),
                self.map_len,
                nix::sys::mman::MmapAdvise::MADV_HUGEPAGE,
            )
        };
    }

    /// Reads the bytes in `range`.
    ///
    /// # Panics
    /// If `range` is outside the mapping.
    ///
    /// # Safety
    /// No process may write to `range` while the returned slice is alive. The pool
    /// guarantees this by reading only after every chunk is done and none is in flight.
    pub(crate) unsafe fn slice(&self, range: Range<usize>) -> &[u8] {
        assert!(
            range.start <= range.end && range.end <= self.len,
            "range outside mapping"
        );
        // SAFETY: the range is inside the mapping (checked above), the mapping lives as long
        // as `self`, and the caller promises no concurrent writer.
        unsafe {
            std::slice::from_raw_parts(self.ptr.as_ptr().add(range.start), range.end - range.start)
        }
    }

    /// Gives write access to the bytes in `range`.
    ///
    /// # Panics
    /// If `range` is outside the mapping.
    ///
    /// # Safety
    /// While the returned slice is alive, no other slice of an overlapping range may exist in
    /// any process or thread, and nobody may read the range. The pool guarantees this by
    /// giving each chunk (a disjoint range) to exactly one worker at a time and by reading the
    /// region only after the worker reported the chunk done.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice_mut(&self, range: Range<usize>) -> &mut [u8] {
        assert!(
            range.start <= range.end && range.end <= self.len,
            "range outside mapping"
        );
        // SAFETY: in bounds (checked above), alive as long as `self`, and exclusive by the
        // caller's promise.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.ptr.as_ptr().add(range.start),
                range.end - range.start,
            )
        }
    }
}

/// The page size of the file behind `fd`: the huge page size for a hugetlbfs file (a memfd
/// made with `MFD_HUGETLB`), 4096 otherwise or when it cannot be told.
fn page_size_of(fd: BorrowedFd<'_>) -> u64 {
    match nix::sys::statfs::fstatfs(fd) {
        Ok(fs) if fs.filesystem_type() == nix::sys::statfs::HUGETLBFS_MAGIC => {
            u64::try_from(fs.block_size()).unwrap_or(4096).max(4096)
        }
        _ => 4096,
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len == 0 {
            return;
        }
        // SAFETY: `reserved`/`reserved_len` are the reservation `at` made, which holds the
        // file's pages and the guards around them, and are unmapped only here; slices
        // borrowed from `self` cannot outlive it.
        let _ = unsafe { munmap(self.reserved.cast::<c_void>(), self.reserved_len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shmem_thp_is_the_bracketed_choice() {
        assert!(!shmem_thp_in(
            "always within_size advise [never] deny force\n"
        ));
        assert!(shmem_thp_in(
            "always within_size [advise] never deny force\n"
        ));
        assert!(shmem_thp_in(
            "always [within_size] advise never deny force\n"
        ));
        assert!(!shmem_thp_in(
            "always within_size advise never [deny] force\n"
        ));
        assert!(!shmem_thp_in(""));
        // Advising a mapping is harmless whatever the setting.
        let region = {
            let mut r = SharedRegion::with_control(4096).unwrap();
            r.reset(8192).unwrap();
            r
        };
        let map = region.map().unwrap();
        map.advise_huge();
        // SAFETY: this test holds the only mapping of the fresh region.
        unsafe { assert_eq!(map.slice(0..8), &[0u8; 8]) };
    }

    #[test]
    fn huge_pages_are_read_from_meminfo_and_counted_per_region() {
        let meminfo = "MemTotal:       24684092 kB\nHugePages_Total:     100\n\
                       HugePages_Free:       60\nHugepagesize:       2048 kB\n";
        let huge = HugePages::parse(meminfo).unwrap();
        assert_eq!(
            huge,
            HugePages {
                free: 60,
                page_bytes: 2 << 20
            }
        );
        // 80 MB of squares: 39 pages of 2 MiB (rounded up), and one for the control area.
        assert_eq!(huge.needed(80_000_000), 40);
        assert_eq!(huge.needed(0), 1);
        assert_eq!(HugePages::parse("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn a_huge_page_region_maps_and_unmaps_whole_pages() {
        // Only where huge pages are reserved and free (`/proc/sys/vm/nr_hugepages`).
        let Some(huge) = HugePages::read().filter(|h| h.free >= 2) else {
            eprintln!("skipped: fewer than 2 huge pages free");
            return;
        };
        let mut region = SharedRegion::with_control_huge(4096, huge.page_bytes).unwrap();
        region.reset(100).unwrap();
        let map = region.map().unwrap();
        assert_eq!(map.len(), 100);
        // SAFETY: this test holds the only mapping of the fresh region.
        unsafe {
            map.slice_mut(0..100).fill(7);
            assert_eq!(map.slice(99..100), &[7]);
        }
        let control = Mapping::new(region.fd(), region.control_bytes()).unwrap();
        assert_eq!(
            control.len() as u64,
            huge.page_bytes,
            "the control area takes a whole huge page"
        );
        drop(control);
        drop(map);
    }

    #[test]
    fn region_is_zeroed_shared_and_resettable() {
        let mut region = SharedRegion::with_control(4096).unwrap();
        region.reset(4096 * 3).unwrap();
        let a = region.map().unwrap();
        let b = region.map().unwrap();
        // SAFETY: this test is the only user of the region; the write slice is dropped
        // before the read.
        unsafe {
            assert!(a.slice(0..a.len()).iter().all(|&x| x == 0));
            a.slice_mut(5000..5008).copy_from_slice(&7u64.to_le_bytes());
            assert_eq!(b.slice(5000..5008), &7u64.to_le_bytes());
        }
        drop((a, b));
        region.reset(16).unwrap();
        let c = region.map().unwrap();
        // SAFETY: sole user.
        unsafe { assert_eq!(c.slice(0..16), &[0u8; 16]) };
    }

    /// The permissions of the mapping that contains address `at`, from /proc/self/maps.
    fn perms_at(at: usize) -> Option<String> {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines().find_map(|line| {
            let (range, rest) = line.split_once(' ')?;
            let (lo, hi) = range.split_once('-')?;
            let (lo, hi) = (
                usize::from_str_radix(lo, 16).ok()?,
                usize::from_str_radix(hi, 16).ok()?,
            );
            (lo <= at && at < hi).then(|| rest.split(' ').next().unwrap_or("").to_string())
        })
    }

    #[test]
    fn every_mapping_sits_between_inaccessible_guard_pages() {
        let mut region = SharedRegion::with_control(4096).unwrap();
        region.reset(5000).unwrap();
        let control = Mapping::new(region.fd(), 4096).unwrap();
        let results = region.map().unwrap();
        for (map, name) in [(&control, "control"), (&results, "results")] {
            let start = map.as_ptr() as usize;
            let end = start + map.len().next_multiple_of(4096);
            assert_eq!(perms_at(start).as_deref(), Some("rw-s"), "{name}");
            assert_eq!(perms_at(end - 1).as_deref(), Some("rw-s"), "{name}");
            // Whatever the kernel places next to it, the page on either side is a guard.
            assert_eq!(perms_at(end).as_deref(), Some("---p"), "{name}: after");
            assert_eq!(
                perms_at(start - 1).as_deref(),
                Some("---p"),
                "{name}: before"
            );
        }
    }

    #[test]
    fn empty_region_maps_to_empty_mapping() {
        let region = SharedRegion::with_control(4096).unwrap();
        let m = region.map().unwrap();
        assert!(m.is_empty());
        // SAFETY: empty range.
        assert!(unsafe { m.slice(0..0) }.is_empty());
    }
}
