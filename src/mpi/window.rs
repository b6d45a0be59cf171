//! The MPI-3 windows: the shared-memory window on rank 0's node (procpool's memfd region
//! in MPI's terms), and the window on the world communicator over the same memory that
//! ranks on other nodes `MPI_Put` their results into. rsmpi has no window API, so this file
//! calls `mpi::ffi` directly; it is the MPI backend's only `unsafe` corner, behind a small
//! safe API.

use std::ffi::c_void;

use mpi::collective::SystemOperation;
use mpi::ffi;
use mpi::raw::AsRaw;
use mpi::topology::SimpleCommunicator;
use mpi::traits::CommunicatorCollectives;

/// A shared window allocated on a node communicator: node rank 0 holds all of its bytes,
/// every other rank of the node maps the same memory (`MPI_Win_shared_query`). It stays in
/// a passive-target epoch for all ranks (`MPI_Win_lock_all`) from allocation to drop;
/// writers call [`Window::sync`] before telling rank 0 a chunk is done, and rank 0 calls
/// it before reading.
pub(crate) struct Window {
    win: ffi::MPI_Win,
    base: *mut u8,
    len: usize,
}

impl Window {
    /// Allocates `len` bytes held by node rank 0 (`len` is ignored on other ranks, which
    /// map rank 0's part). Collective over `node`.
    pub(crate) fn allocate(
        node: &SimpleCommunicator,
        len: usize,
        holder: bool,
    ) -> Result<Self, String> {
        // At least a few bytes, so that even an empty window (n = 0) has an address of
        // its own, aligned for any element, and never a null base.
        let mine = if holder { len.max(8) } else { 0 };
        let mut base: *mut c_void = std::ptr::null_mut();
        let mut win = std::mem::MaybeUninit::<ffi::MPI_Win>::uninit();
        // SAFETY: `node` is a valid communicator for the call's duration; `base` and `win`
        // are out-parameters of the right types; RSMPI_INFO_NULL is a constant MPI_Info
        // that the MPI library initialized in MPI_Init.
        let code = unsafe {
            ffi::MPI_Win_allocate_shared(
                mine as ffi::MPI_Aint,
                1,
                ffi::RSMPI_INFO_NULL,
                node.as_raw(),
                (&mut base as *mut *mut c_void).cast::<c_void>(),
                win.as_mut_ptr(),
            )
        };
        if code != 0 {
            return Err(format!(
                "MPI_Win_allocate_shared of {mine} bytes failed (code {code})"
            ));
        }
        // SAFETY: MPI_Win_allocate_shared returned success, so it wrote the window handle.
        let win = unsafe { win.assume_init() };
        let mut size: ffi::MPI_Aint = 0;
        let mut unit: std::ffi::c_int = 0;
        let mut root: *mut c_void = std::ptr::null_mut();
        // SAFETY: `win` is the valid window just created; the out-parameters have the types
        // MPI_Win_shared_query writes (MPI_Aint, int, and a pointer written through void*).
        let code = unsafe {
            ffi::MPI_Win_shared_query(
                win,
                0,
                &mut size,
                &mut unit,
                (&mut root as *mut *mut c_void).cast::<c_void>(),
            )
        };
        let mut window = Window {
            win,
            base: root.cast::<u8>(),
            len: 0,
        };
        if code != 0 || root.is_null() || (size as usize) < len {
            return Err(format!(
                "MPI_Win_shared_query found {size} bytes (code {code}), {len} needed"
            ));
        }
        window.len = len;
        // SAFETY: `win` is valid; assert 0 asks for no optimization, always allowed. The
        // matching MPI_Win_unlock_all is in Drop.
        let code = unsafe { ffi::MPI_Win_lock_all(0, win) };
        if code != 0 {
            return Err(format!("MPI_Win_lock_all failed (code {code})"));
        }
        Ok(window)
    }

    /// Makes this rank's writes visible to the other ranks of the node and theirs to this
    /// one (`MPI_Win_sync`, a memory barrier for the window).
    pub(crate) fn sync(&self) {
        // SAFETY: the window is valid and in the lock_all epoch opened in `allocate`.
        unsafe { ffi::MPI_Win_sync(self.win) };
    }

    /// The bytes `offset..offset + len` of the window, to write one chunk's results into.
    ///
    /// Panics when the range is out of bounds.
    pub(crate) fn chunk_mut(&mut self, offset: usize, len: usize) -> &mut [u8] {
        let end = offset.checked_add(len).expect("chunk range overflows");
        assert!(
            end <= self.len,
            "chunk {offset}..{end} past the window's {} bytes",
            self.len
        );
        // SAFETY: `base..base + self.len` is the window's memory, mapped in this process
        // for the window's lifetime (checked in `allocate`: `base` is never null, even for
        // an empty window), and the range is inside it.
        // Other processes write this memory too, but only other chunks: rank 0's
        // dispatcher (a `Dispenser`) hands each chunk out once and chunks are disjoint, and
        // rank 0 reads only after the writer's `sync` and its `Done` message. Within this
        // process the `&mut self` borrow keeps slices from overlapping.
        unsafe { std::slice::from_raw_parts_mut(self.base.add(offset), len) }
    }

    /// The whole window, read by rank 0 once every chunk is done (after [`Window::sync`]).
    /// Empty or not, it starts where the window does, aligned as MPI aligns windows, so
    /// it can be viewed as elements.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: as in `chunk_mut`: the window's memory, mapped for its lifetime; no rank
        // writes while rank 0 reads, since every chunk of the round is done and no new
        // chunk goes out while this borrow lives (`&self`, rank 0 sends chunks through
        // `&mut` paths only after it ends).
        unsafe { std::slice::from_raw_parts(self.base, self.len) }
    }
}

/// The most bytes one `MPI_Put` moves (its count is a C `int`).
const PUT_PIECE: usize = 1 << 30;

/// A window on the world communicator over rank 0's part of the shared window: ranks on
/// other nodes `MPI_Put` their chunks' results into it. Every rank takes part in creating
/// and freeing it; only rank 0 exposes memory. Like [`Window`] it stays in one
/// `MPI_Win_lock_all` epoch from creation to drop.
pub(crate) struct PutWindow {
    win: ffi::MPI_Win,
}

impl PutWindow {
    /// Creates the window, collectively over `world`: rank 0 passes its shared window,
    /// which it must keep until this one is dropped (see [`Windows`]); every other rank
    /// passes `None` and exposes nothing.
    fn create(world: &SimpleCommunicator, memory: Option<&Window>) -> Result<Self, String> {
        let (base, len) = match memory {
            Some(w) if w.len > 0 => (w.base.cast::<c_void>(), w.len),
            _ => (std::ptr::null_mut(), 0),
        };
        let mut win = std::mem::MaybeUninit::<ffi::MPI_Win>::uninit();
        // An MPI without one-sided communication between these ranks (Open MPI 4.1 over
        // TCP has no `osc` component for it) fails MPI_Win_create: have the call return
        // that, instead of aborting the job, for the duration of the call.
        // SAFETY: `world` is a valid communicator; RSMPI_ERRORS_RETURN and
        // RSMPI_ERRORS_ARE_FATAL are predefined handlers that MPI_Init initialized.
        unsafe { ffi::MPI_Comm_set_errhandler(world.as_raw(), ffi::RSMPI_ERRORS_RETURN) };
        // SAFETY: `base..base + len` is rank 0's shared window, mapped for as long as this
        // window lives (the `Windows` that holds both drops this one first); other ranks
        // pass a null base and size 0, which MPI allows. `world` is valid for the call;
        // `win` is an out-parameter of the right type; RSMPI_INFO_NULL is initialized by
        // MPI_Init.
        let code = unsafe {
            ffi::MPI_Win_create(
                base,
                len as ffi::MPI_Aint,
                1,
                ffi::RSMPI_INFO_NULL,
                world.as_raw(),
                win.as_mut_ptr(),
            )
        };
        // SAFETY: as above.
        unsafe { ffi::MPI_Comm_set_errhandler(world.as_raw(), ffi::RSMPI_ERRORS_ARE_FATAL) };
        if code != 0 {
            return Err(format!(
                "--mpi-route put needs one-sided communication (MPI_Win_create) between the \
                 nodes, and this MPI cannot do it here (code {code}; Open MPI 4.1 over TCP \
                 has none): use --mpi-route send"
            ));
        }
        // SAFETY: MPI_Win_create returned success, so it wrote the handle.
        let win = unsafe { win.assume_init() };
        // SAFETY: `win` is the valid window just created; assert 0 is always allowed. The
        // matching MPI_Win_unlock_all is in Drop.
        let code = unsafe { ffi::MPI_Win_lock_all(0, win) };
        if code != 0 {
            return Err(format!("MPI_Win_lock_all failed (code {code})"));
        }
        Ok(PutWindow { win })
    }

    /// Writes `bytes` at `offset` of rank 0's window and waits until they are there
    /// (`MPI_Put`, then `MPI_Win_flush`): after this returns, a message telling rank 0 the
    /// chunk is done arrives after its results.
    pub(crate) fn put(&self, offset: usize, bytes: &[u8]) -> Result<(), String> {
        for (i, piece) in bytes.chunks(PUT_PIECE).enumerate() {
            let at = offset + i * PUT_PIECE;
            // SAFETY: `piece` is valid for reads of its length for the call's duration,
            // and MPI_Win_flush below completes the put before `bytes` can be freed; the
            // count fits a C int (at most PUT_PIECE bytes); rank 0 checks that a chunk's
            // range lies inside its window before handing it out, and MPI checks the
            // target range against the window's size.
            let code = unsafe {
                ffi::MPI_Put(
                    piece.as_ptr().cast::<c_void>(),
                    piece.len() as std::ffi::c_int,
                    ffi::RSMPI_UINT8_T,
                    0,
                    at as ffi::MPI_Aint,
                    piece.len() as std::ffi::c_int,
                    ffi::RSMPI_UINT8_T,
                    self.win,
                )
            };
            if code != 0 {
                return Err(format!(
                    "MPI_Put of {} bytes at {at} failed (code {code})",
                    piece.len()
                ));
            }
        }
        // SAFETY: the window is valid and in the lock_all epoch opened in `create`.
        let code = unsafe { ffi::MPI_Win_flush(0, self.win) };
        match code {
            0 => Ok(()),
            _ => Err(format!("MPI_Win_flush failed (code {code})")),
        }
    }

    /// Makes what other ranks put visible to this process's loads (`MPI_Win_sync`).
    pub(crate) fn sync(&self) {
        // SAFETY: the window is valid and in the lock_all epoch opened in `create`.
        unsafe { ffi::MPI_Win_sync(self.win) };
    }
}

impl Drop for PutWindow {
    fn drop(&mut self) {
        // SAFETY: as for `Window`: valid, locked in `create`, freed collectively (every rank
        // drops its `Windows` at the end of the run); the memory it exposes outlives it.
        unsafe {
            ffi::MPI_Win_unlock_all(self.win);
            ffi::MPI_Win_free(&mut self.win);
        }
    }
}

/// A rank's windows: the shared one (ranks on rank 0's node) and the world one results are
/// put into (every rank, when some worker is on another node and results travel by
/// `MPI_Put`). Fields drop in order, so the put window goes before the memory it exposes.
pub(crate) struct Windows {
    /// The world window, when results are put.
    pub(crate) put: Option<PutWindow>,
    /// The shared window, on rank 0's node.
    pub(crate) shared: Option<Window>,
}

/// Why [`Windows::create`] failed.
pub(crate) enum WindowsError {
    /// No rank could create the put window: this MPI has no one-sided communication between
    /// the nodes. Every rank is in step; the message says what to use instead.
    PutUnsupported(String),
    /// Anything else; ranks may be out of step.
    Failed(String),
}

impl Windows {
    /// Creates both, collectively: the shared window over `node` when this rank is on rank
    /// 0's node (`holder` on rank 0), then the put window over `world` when `put`.
    pub(crate) fn create(
        world: &SimpleCommunicator,
        node: &SimpleCommunicator,
        on_root_node: bool,
        holder: bool,
        len: usize,
        put: bool,
    ) -> Result<Self, WindowsError> {
        let shared = match on_root_node {
            true => Some(Window::allocate(node, len, holder).map_err(WindowsError::Failed)?),
            false => None,
        };
        let put = match put {
            true => {
                let made = PutWindow::create(world, shared.as_ref().filter(|_| holder));
                // Whether every rank, or none, made it: ranks that disagree cannot free it
                // together.
                let mine = i32::from(made.is_ok());
                let (mut all, mut any) = (0i32, 0i32);
                world.all_reduce_into(&mine, &mut all, SystemOperation::min());
                world.all_reduce_into(&mine, &mut any, SystemOperation::max());
                match (made, all, any) {
                    (Ok(w), 1, _) => Some(w),
                    (Err(why), _, 0) => return Err(WindowsError::PutUnsupported(why)),
                    (made, _, _) => {
                        std::mem::forget(made);
                        std::mem::forget(shared);
                        return Err(WindowsError::Failed(
                            "some ranks could create the put window and others not".into(),
                        ));
                    }
                }
            }
            false => None,
        };
        Ok(Windows { put, shared })
    }

    /// Makes every write into rank 0's memory visible to it: other ranks' syncs and puts.
    pub(crate) fn sync(&self) {
        if let Some(w) = &self.shared {
            w.sync();
        }
        if let Some(p) = &self.put {
            p.sync();
        }
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        // SAFETY: the window is valid and locked by `allocate`; unlock_all ends that epoch
        // and MPI_Win_free (collective over the node, as every rank drops its window at the
        // end of the run) releases it. Nothing borrows its memory after this (`&mut self`).
        unsafe {
            ffi::MPI_Win_unlock_all(self.win);
            ffi::MPI_Win_free(&mut self.win);
        }
    }
}
