//! Sealed read-only inputs: a memfd written once, sealed against every change, mapped
//! read-only; and the private socket its descriptor travels on from the parent to a worker.
//!
//! Why seal? A worker maps the same pages the parent reads for its single-process
//! baseline; the seals (`F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`) make the
//! kernel refuse any write to them, by anyone, for as long as the file lives: no
//! `PROT_WRITE` shared mapping, no `write`/`pwrite`, no resize. A worker checks the seals
//! and the size of every descriptor before it maps it, and only ever takes descriptors from
//! its private socket (a socketpair the parent made at spawn time), never a path or a
//! number named in a message.
//!
//! This module holds the `unsafe` of the shared input: mapping and unmapping, the slice
//! over the mapping, and adopting descriptors received with `SCM_RIGHTS`.

use std::ffi::c_void;
use std::io::{self, IoSlice, IoSliceMut, Write};
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};

/// The most inputs one job may carry: one `SCM_RIGHTS` message holds them all.
pub(crate) const MAX_INPUTS: usize = 64;

/// The seals a worker requires before it maps an input: nobody can write, shrink or grow it.
fn required_seals() -> SealFlag {
    SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW
}

/// A sealed memfd and its read-only mapping.
#[derive(Debug)]
pub(crate) struct Sealed {
    /// The input's id: unique in the process that created it (the parent).
    id: u64,
    fd: OwnedFd,
    /// The mapping's start; `None` for an empty input (nothing is mapped).
    ptr: Option<NonNull<u8>>,
    /// Bytes.
    len: usize,
    /// Bytes of one element of the input's type.
    elem_size: usize,
}

// SAFETY: the mapping is read-only and its file is sealed against writes, so its bytes
// never change while it is mapped: sharing the pointer between threads reads immutable
// memory. The descriptor is an owned fd, itself Send and Sync.
unsafe impl Send for Sealed {}
// SAFETY: as above: `&Sealed` gives only reads of immutable bytes.
unsafe impl Sync for Sealed {}

impl Sealed {
    /// Copies `bytes` into a new memfd, seals it and maps it read-only.
    pub(crate) fn create(id: u64, bytes: &[u8], elem_size: usize) -> io::Result<Sealed> {
        let fd = memfd_create(
            "procpool-input",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )?;
        let mut file = std::fs::File::from(fd);
        // Reserve the size first: a machine without the memory fails here, in one call,
        // rather than half-way through the copy.
        file.set_len(bytes.len() as u64)?;
        file.write_all(bytes)?;
        let fd = OwnedFd::from(file);
        seal(&fd)?;
        let ptr = map(fd.as_fd(), bytes.len())?;
        Ok(Sealed {
            id,
            fd,
            ptr,
            len: bytes.len(),
            elem_size,
        })
    }

    /// Takes a descriptor received from the parent as input `id` of `len` bytes: checks it
    /// is sealed against writes and resizing and has exactly that size, then maps it
    /// read-only. Anything else is refused.
    pub(crate) fn adopt(
        id: u64,
        fd: OwnedFd,
        len: u64,
        elem_size: usize,
    ) -> Result<Sealed, String> {
        let seals = fcntl(&fd, FcntlArg::F_GET_SEALS)
            .map_err(|e| format!("input {id}: not a sealable memfd ({e})"))?;
        let seals = SealFlag::from_bits_truncate(seals);
        if !seals.contains(required_seals()) {
            return Err(format!(
                "input {id}: its descriptor is not sealed against writes and resizing \
                 (seals {seals:?}); refused"
            ));
        }
        let size = nix::sys::stat::fstat(&fd)
            .map_err(|e| format!("input {id}: cannot stat its descriptor ({e})"))?
            .st_size;
        if u64::try_from(size).ok() != Some(len) {
            return Err(format!(
                "input {id}: its descriptor holds {size} bytes, the job says {len}; refused"
            ));
        }
        let len = usize::try_from(len).map_err(|_| format!("input {id}: too large"))?;
        let ptr = map(fd.as_fd(), len)
            .map_err(|e| format!("input {id}: cannot map {len} bytes read-only ({e})"))?;
        Ok(Sealed {
            id,
            fd,
            ptr,
            len,
            elem_size,
        })
    }

    /// The input's id.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Its size in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The size of one element, in bytes.
    pub(crate) fn elem_size(&self) -> usize {
        self.elem_size
    }

    /// The descriptor, to send to a worker.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The mapped bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        match self.ptr {
            None => &[],
            // SAFETY: `ptr` is the start of a live read-only mapping of `len` bytes (unmapped
            // only on drop, which `&self` prevents). Its file is sealed against writes and
            // resizing, so the bytes never change and never go away under the slice.
            Some(ptr) => unsafe { std::slice::from_raw_parts(ptr.as_ptr(), self.len) },
        }
    }

    /// The mapped bytes as elements of `T`: the mapping is page aligned, so any Pod type of
    /// `elem_size` bytes fits.
    pub(crate) fn elements<T: bytemuck::Pod>(&self) -> &[T] {
        if self.len == 0 {
            return &[];
        }
        bytemuck::cast_slice(self.bytes())
    }
}

impl Drop for Sealed {
    fn drop(&mut self) {
        if let Some(ptr) = self.ptr {
            // SAFETY: `ptr`/`len` are the mapping `map` made; every slice into it borrows
            // `self`, so none outlives this drop.
            let _ = unsafe { munmap(ptr.cast::<c_void>(), self.len) };
        }
    }
}

/// Seals a memfd just written against every change. The kernel refuses the write seal
/// with `EBUSY` while some of its pages are still referenced elsewhere for a moment (seen
/// on a busy machine with tens of MiB just written: pages not yet out of the kernel's
/// per-CPU lists); the kernel itself waits a few milliseconds, so this tries again, for a
/// second at most.
fn seal(fd: &OwnedFd) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match fcntl(
            fd,
            FcntlArg::F_ADD_SEALS(required_seals() | SealFlag::F_SEAL_SEAL),
        ) {
            Err(nix::errno::Errno::EBUSY) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            sealed => return sealed.map(drop).map_err(io::Error::from),
        }
    }
}

/// Maps `len` bytes of `fd` read-only and shared (`None` when `len` is 0: nothing to map).
///
/// Since Linux 6.7 a read-only shared mapping of a write-sealed memfd can never be made
/// writable (`mprotect` fails with `EACCES`). Older kernels refuse any shared mapping of
/// it (`EPERM`); there the mapping is private instead: the same page-cache pages, and a
/// write a process forces through `mprotect` lands in a private copy, never in the file.
fn map(fd: BorrowedFd<'_>, len: usize) -> io::Result<Option<NonNull<u8>>> {
    let Some(length) = NonZeroUsize::new(len) else {
        return Ok(None);
    };
    let map_with = |flags: MapFlags| {
        // SAFETY: a fresh read-only mapping chosen by the kernel (no address given), so
        // it overlaps nothing of ours; the file is sealed against shrinking, so no access
        // within `len` can fault with SIGBUS.
        unsafe { mmap(None, length, ProtFlags::PROT_READ, flags, fd, 0) }
    };
    let ptr = match map_with(MapFlags::MAP_SHARED) {
        Err(nix::errno::Errno::EPERM) => map_with(MapFlags::MAP_PRIVATE)?,
        mapped => mapped?,
    };
    Ok(Some(ptr.cast::<u8>()))
}

/// A private socket pair for the descriptors of a worker's inputs: the parent's end and the
/// worker's end, both close-on-exec (the worker's end is inherited by that worker only).
pub(crate) fn channel() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

/// The bytes that go with a batch of descriptors: the spec they belong to and their count.
fn header(spec_id: u64, count: usize) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..8].copy_from_slice(&spec_id.to_le_bytes());
    h[8..].copy_from_slice(&(count as u64).to_le_bytes());
    h
}

/// Bytes one batch of descriptors costs on the socket (for the IPC counters).
pub(crate) const BATCH_BYTES: u64 = 16;

/// Sends `fds` (at most [`MAX_INPUTS`]) for spec `spec_id` in one message on `socket`.
pub(crate) fn send_fds(
    socket: BorrowedFd<'_>,
    spec_id: u64,
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    send_message(socket, &header(spec_id, fds.len()), fds)
}

/// Receives the batch of `count` descriptors for spec `spec_id` from `socket`, waiting
/// until `timeout` at most. Received descriptors are close-on-exec. A batch for another
/// spec, of another count, or a silent or closed socket is an error (and every descriptor
/// received is closed).
pub(crate) fn recv_fds(
    socket: BorrowedFd<'_>,
    spec_id: u64,
    count: usize,
    timeout: Duration,
) -> Result<Vec<OwnedFd>, String> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "the parent did not send the job's {count} input descriptors within {timeout:?}"
            ));
        }
        let mut fds = [PollFd::new(socket, PollFlags::POLLIN)];
        let wait = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, wait) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => break,
            Err(e) => return Err(format!("cannot wait for input descriptors: {e}")),
        }
    }
    let mut buf = [0u8; 16];
    let (bytes, owned, truncated) = receive(socket, &mut buf, MsgFlags::MSG_DONTWAIT)
        .map_err(|e| format!("cannot receive input descriptors: {e}"))?;
    if bytes == 0 {
        return Err("the parent closed the input socket".into());
    }
    if truncated || bytes != buf.len() || buf != header(spec_id, count) || owned.len() != count {
        return Err(format!(
            "expected {count} input descriptors for spec {spec_id}, received {} in a message \
             that does not match; refused",
            owned.len()
        ));
    }
    Ok(owned)
}

/// One `recvmsg` into `buf` (with `flags`, close-on-exec added): the bytes received, the
/// descriptors that came with them (owned now), and whether the message was cut short.
fn receive(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    flags: MsgFlags,
) -> io::Result<(usize, Vec<OwnedFd>, bool)> {
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_MESSAGE_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC | flags,
    )?;
    let mut received = Vec::new();
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmRights(fds) = c {
                received.extend(fds);
            }
        }
    }
    let truncated = msg
        .flags
        .intersects(MsgFlags::MSG_CTRUNC | MsgFlags::MSG_TRUNC);
    let owned = received
        .into_iter()
        // SAFETY: each of these descriptors was just installed in this process by the
        // kernel for this message (SCM_RIGHTS); nothing else owns them yet.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    Ok((msg.bytes, owned, truncated))
}

/// The most descriptors [`recv_message`] takes in one message.
pub(crate) const MAX_MESSAGE_FDS: usize = 72;

/// Sends `bytes` with `fds` (at most [`MAX_MESSAGE_FDS`]) as one message on the
/// sequenced-packet `socket`.
pub(crate) fn send_message(
    socket: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let iov = [IoSlice::new(bytes)];
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
    let sent = sendmsg::<()>(
        socket.as_raw_fd(),
        &iov,
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    if sent != bytes.len() {
        return Err(io::Error::other("a short send on a message socket"));
    }
    Ok(())
}

/// Receives one message of at most `max_bytes` bytes and its descriptors (close-on-exec)
/// from the sequenced-packet `socket`, waiting as long as it takes. `Ok(None)`: the other
/// end is closed. A message cut short (more bytes or descriptors than fit) is an error,
/// and every descriptor it carried is closed.
pub(crate) fn recv_message(
    socket: BorrowedFd<'_>,
    max_bytes: usize,
) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; max_bytes];
    let (bytes, owned, truncated) = loop {
        match receive(socket, &mut buf, MsgFlags::empty()) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            received => break received?,
        }
    };
    if bytes == 0 && owned.is_empty() {
        return Ok(None);
    }
    if truncated {
        return Err(io::Error::other(
            "a message with more bytes or descriptors than expected; refused",
        ));
    }
    buf.truncate(bytes);
    Ok(Some((buf, owned)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_input_round_trips_through_the_socket() {
        let data: Vec<u8> = (0..=255).collect();
        let input = Sealed::create(7, &data, 1).unwrap();
        assert_eq!(input.bytes(), &data[..]);
        let (parent, worker) = channel().unwrap();
        send_fds(parent.as_fd(), 3, &[input.fd()]).unwrap();
        let mut fds = recv_fds(worker.as_fd(), 3, 1, Duration::from_secs(5)).unwrap();
        let fd = fds.pop().unwrap();
        let flags = fcntl(&fd, FcntlArg::F_GETFD).unwrap();
        assert!(
            flags & libc::FD_CLOEXEC != 0,
            "received descriptors are close-on-exec"
        );
        let got = Sealed::adopt(7, fd, 256, 1).unwrap();
        assert_eq!(got.bytes(), &data[..]);
    }

    #[test]
    fn an_empty_input_works() {
        let input = Sealed::create(1, &[], 8).unwrap();
        assert!(input.elements::<f64>().is_empty());
        let fd = input.fd().try_clone_to_owned().unwrap();
        assert!(Sealed::adopt(1, fd, 0, 8).unwrap().bytes().is_empty());
    }

    #[test]
    fn a_worker_refuses_an_unsealed_descriptor_or_a_wrong_size() {
        let unsealed = memfd_create("x", MFdFlags::MFD_ALLOW_SEALING).unwrap();
        nix::unistd::ftruncate(&unsealed, 64).unwrap();
        let err = Sealed::adopt(2, unsealed, 64, 1).unwrap_err();
        assert!(err.contains("not sealed"), "{err}");
        // Sealed against writes only: it could still grow.
        let partly = memfd_create("x", MFdFlags::MFD_ALLOW_SEALING).unwrap();
        nix::unistd::ftruncate(&partly, 64).unwrap();
        fcntl(&partly, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_WRITE)).unwrap();
        assert!(
            Sealed::adopt(2, partly, 64, 1)
                .unwrap_err()
                .contains("not sealed")
        );
        let input = Sealed::create(3, &[1; 64], 1).unwrap();
        let fd = input.fd().try_clone_to_owned().unwrap();
        let err = Sealed::adopt(3, fd, 128, 1).unwrap_err();
        assert!(err.contains("holds 64 bytes, the job says 128"), "{err}");
        let file = tempfile::tempfile().unwrap();
        let err = Sealed::adopt(4, file.into(), 0, 1).unwrap_err();
        assert!(err.contains("not"), "{err}");
    }

    #[test]
    fn a_silent_or_wrong_batch_is_refused_in_time() {
        let (parent, worker) = channel().unwrap();
        let began = Instant::now();
        let err = recv_fds(worker.as_fd(), 1, 1, Duration::from_millis(100)).unwrap_err();
        assert!(err.contains("did not send"), "{err}");
        assert!(began.elapsed() < Duration::from_secs(5));
        let input = Sealed::create(1, &[0; 8], 1).unwrap();
        send_fds(parent.as_fd(), 9, &[input.fd()]).unwrap();
        let err = recv_fds(worker.as_fd(), 1, 1, Duration::from_secs(1)).unwrap_err();
        assert!(err.contains("does not match"), "{err}");
        send_fds(parent.as_fd(), 1, &[input.fd(), input.fd()]).unwrap();
        assert!(recv_fds(worker.as_fd(), 1, 1, Duration::from_secs(1)).is_err());
        drop(parent);
        let err = recv_fds(worker.as_fd(), 1, 1, Duration::from_secs(1)).unwrap_err();
        assert!(err.contains("closed"), "{err}");
    }

    #[test]
    fn nobody_can_write_a_sealed_input() {
        let input = Sealed::create(5, &[7; 4096], 1).unwrap();
        let err = nix::sys::uio::pwrite(input.fd(), &[0], 0).unwrap_err();
        assert_eq!(err, nix::errno::Errno::EPERM);
        // SAFETY: a new mapping chosen by the kernel; it is expected to fail.
        let writable = unsafe {
            mmap(
                None,
                NonZeroUsize::new(4096).unwrap(),
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                input.fd(),
                0,
            )
        };
        assert_eq!(writable.unwrap_err(), nix::errno::Errno::EPERM);
        let page = input.ptr.expect("mapped").cast::<c_void>();
        // SAFETY: asks to make our own read-only mapping writable; expected to fail, and
        // if it did not, nothing writes through it.
        let upgraded = unsafe {
            nix::sys::mman::mprotect(page, 4096, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE)
        };
        assert_eq!(upgraded.unwrap_err(), nix::errno::Errno::EACCES);
        assert!(input.bytes().iter().all(|&b| b == 7));
    }
}
