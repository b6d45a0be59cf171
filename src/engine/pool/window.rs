//! Streaming: the ring of windows a streamed job fills, and the thread that writes each
//! complete window to the caller's sink while the workers fill the next ones.

use std::sync::mpsc;

use crate::engine::protocol::Layout;
use crate::error::{Error, Result};

use super::{Finished, Pool};

/// Where streamed windows go (see [`Pool::stream_with`]): called once per window, in
/// order, with the window's first index and its bytes (little-endian elements).
pub trait WindowSink {
    /// Takes one complete window. An error stops the job.
    fn window(&mut self, start: u64, bytes: &[u8]) -> std::result::Result<(), String>;
}

/// A window handed to the writer: its index, first element, length and ring slot.
pub(super) struct WindowJob {
    pub(super) index: u64,
    pub(super) start: u64,
    pub(super) len: u64,
    pub(super) slot: u64,
}

/// The writer thread: each complete window goes to the sink, then its slot is announced
/// free for the window `ring` places later, and `waker` wakes the dispatch loop.
/// Stops at the first error, or when the loop hangs up.
fn write_windows(
    windows: mpsc::Receiver<WindowJob>,
    freed: mpsc::Sender<std::result::Result<u64, String>>,
    sink: &mut (dyn WindowSink + Send),
    mapping: &crate::engine::shm::Mapping,
    layout: Layout,
    elem_size: u64,
    waker: &ipc_channel::ipc::IpcSender<()>,
) {
    let slot_bytes = layout.window_elems * elem_size;
    for w in windows {
        let lo = w.slot * slot_bytes;
        let hi = lo + w.len * elem_size;
        // SAFETY: every chunk of this window is done (its workers replied) and the loop
        // hands out no chunk of the slot's next window until we report it freed below, so
        // no process writes these bytes while we read them.
        let bytes = unsafe { mapping.slice(lo as usize..hi as usize) };
        // The slot's pages stay: the ring is bounded already, and the next window in this
        // slot reuses them without a page fault anywhere.
        let result = sink.window(w.start, bytes);
        let failed = result.is_err();
        if freed.send(result.map(|()| w.index)).is_err() {
            return;
        }
        let _ = waker.send(());
        if failed {
            return;
        }
    }
}

impl Pool {
    /// Runs `body` beside a thread that writes complete windows to `sink`: `body` gets the
    /// sender of windows to write and the receiver of freed ones. The writer has its own
    /// mapping of the region, so it borrows nothing from the pool while `body` changes it,
    /// and it wakes the dispatch loop (the pool's waker) after each window.
    pub(super) fn with_writer(
        &mut self,
        layout: Layout,
        elem_size: u64,
        sink: &mut (dyn WindowSink + Send),
        body: impl FnOnce(
            &mut Pool,
            mpsc::Sender<WindowJob>,
            mpsc::Receiver<std::result::Result<u64, String>>,
        ) -> Result<Finished>,
    ) -> Result<Finished> {
        let mapping = self.region.map()?;
        let (to_writer, windows) = mpsc::channel::<WindowJob>();
        let (freed, from_writer) = mpsc::channel::<std::result::Result<u64, String>>();
        let waker = self.waker.clone();
        std::thread::scope(|scope| {
            scope.spawn(move || {
                write_windows(windows, freed, sink, &mapping, layout, elem_size, &waker)
            });
            // `body` drops its sender before the scope ends, which ends the writer's loop;
            // then the scope joins the writer.
            body(self, to_writer, from_writer)
        })
    }
}

/// The ring of windows of a streamed job, as a dispatch loop sees it: which windows the
/// writer has, and which it has written (their slots are free for later windows).
pub(super) struct Ring {
    pub(super) layout: Layout,
    /// Windows in the job.
    pub(super) windows: u64,
    /// The first window not yet written (and freed).
    pub(super) base: u64,
    /// Windows handed to the writer so far.
    pub(super) handed: u64,
    to_writer: mpsc::Sender<WindowJob>,
    from_writer: mpsc::Receiver<std::result::Result<u64, String>>,
}

impl Ring {
    /// The next window to hand to the writer, while the ring has a slot for it (whether
    /// it is complete is the dispatcher's to say).
    pub(super) fn next(&self, n: u64) -> Option<WindowJob> {
        let (we, ring) = (self.layout.window_elems, self.layout.ring);
        if self.handed >= self.windows || self.handed >= self.base + ring {
            return None;
        }
        let k = self.handed;
        let start = k * we;
        Some(WindowJob {
            index: k,
            start,
            len: (start + we).min(n) - start,
            slot: k % ring,
        })
    }

    /// Hands a complete window to the writer; false when the writer is gone.
    pub(super) fn hand(&mut self, window: WindowJob) -> bool {
        if self.to_writer.send(window).is_err() {
            return false;
        }
        self.handed += 1;
        true
    }

    /// Takes the windows the writer has written since the last look, in order, giving each
    /// index to `freed`. An error of the writer's (or a writer gone early) fails the job.
    pub(super) fn written(&mut self, mut freed: impl FnMut(u64)) -> Result<()> {
        loop {
            match self.from_writer.try_recv() {
                Ok(Ok(index)) => {
                    self.base += 1;
                    freed(index);
                }
                Ok(Err(message)) => return Err(Error::Output(message)),
                Err(mpsc::TryRecvError::Empty) => return Ok(()),
                Err(mpsc::TryRecvError::Disconnected) => {
                    if !self.complete() {
                        return Err(Error::Output("the window writer stopped early".into()));
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Every window is written.
    pub(super) fn complete(&self) -> bool {
        self.base >= self.windows
    }

    /// The first element of the first window with no free slot yet: no chunk at or past it
    /// may run.
    pub(super) fn limit(&self) -> u64 {
        (self.base + self.layout.ring).saturating_mul(self.layout.window_elems)
    }
}

impl Pool {
    /// Runs `body` with the ring of a streamed job (`stream`: its layout and sink) beside
    /// its writer, or with none.
    pub(super) fn with_ring(
        &mut self,
        stream: Option<(Layout, &mut (dyn WindowSink + Send))>,
        n: u64,
        elem_size: u64,
        body: impl FnOnce(&mut Pool, Option<Ring>) -> Result<Finished>,
    ) -> Result<Finished> {
        let Some((layout, sink)) = stream else {
            return body(self, None);
        };
        self.with_writer(layout, elem_size, sink, |pool, to_writer, from_writer| {
            let ring = Ring {
                layout,
                windows: n.div_ceil(layout.window_elems),
                base: 0,
                handed: 0,
                to_writer,
                from_writer,
            };
            body(pool, Some(ring))
        })
    }
}
