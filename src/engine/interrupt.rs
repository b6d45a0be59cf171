//! Ctrl-C and SIGTERM: stop cleanly the first time, at once the second time.
//!
//! [`Interrupt::install`] registers signal-hook handlers for SIGINT and SIGTERM (call it at
//! the top of `main`, before any thread starts). The first signal only records itself; the
//! pool notices at once when the signal lands on its thread (its wait ends on EINTR), within
//! 100 ms otherwise, stops handing out chunks, asks its workers to
//! stop, escalates to SIGTERM and SIGKILL, reaps them, and returns
//! [`crate::Error::Interrupted`]. A second signal exits the process at once with 128 + the
//! signal number; the workers then die with it (`PR_SET_PDEATHSIG`).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use signal_hook::consts::{SIGINT, SIGTERM};

/// A handle to the "stop now" request made by SIGINT or SIGTERM.
///
/// ```no_run
/// use procpool::{Interrupt, Pool};
///
/// procpool::init();
/// // Before any thread starts: the first Ctrl-C stops the job cleanly, a second at once.
/// let interrupt = Interrupt::install().expect("signal handlers");
/// let mut pool = Pool::builder().interrupt(interrupt).build()?;
/// # Ok::<(), procpool::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Interrupt {
    signal: Arc<AtomicUsize>,
    armed: Arc<AtomicBool>,
}

impl Interrupt {
    /// A handle that no signal sets (for library use without signal handling, and tests).
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the SIGINT and SIGTERM handlers and returns the handle they set.
    ///
    /// Also ignores SIGXFSZ, process-wide: a write past the file-size limit (`ulimit -f`,
    /// e.g. to `--output`) then fails with EFBIG and is reported like a full disk, instead
    /// of killing the process without a word.
    pub fn install() -> io::Result<Self> {
        crate::engine::sys::ignore_file_size_signal();
        let me = Self::new();
        for sig in [SIGINT, SIGTERM] {
            // Order matters: the exit action runs first, and fires only when a previous
            // signal already armed it.
            signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, me.armed.clone())?;
            signal_hook::flag::register(sig, me.armed.clone())?;
            signal_hook::flag::register_usize(sig, me.signal.clone(), sig as usize)?;
        }
        Ok(me)
    }

    /// The signal that asked us to stop, if any.
    pub fn requested(&self) -> Option<i32> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            sig => Some(sig as i32),
        }
    }

    /// Records a stop request as if `signal` had arrived (for library callers with their own
    /// signal handling). Like the signal, it stops every worker, and every later job fails
    /// at once until [`Interrupt::clear`]; to stop one job and keep the workers, use a
    /// [`Cancel`](crate::Cancel) instead.
    pub fn request(&self, signal: i32) {
        self.armed.store(true, Ordering::SeqCst);
        self.signal.store(signal as usize, Ordering::SeqCst);
    }

    /// Forgets the stop request, so that the pool runs jobs again (it starts a fresh set of
    /// workers: the request stopped the old ones). With [`Interrupt::install`]'s handlers,
    /// the next signal is a first one again: it stops cleanly instead of exiting at once.
    pub fn clear(&self) {
        self.signal.store(0, Ordering::SeqCst);
        self.armed.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_remembered() {
        let i = Interrupt::new();
        assert_eq!(i.requested(), None);
        let j = i.clone();
        j.request(SIGTERM);
        assert_eq!(i.requested(), Some(SIGTERM));
        i.clear();
        assert_eq!(j.requested(), None);
    }
}
