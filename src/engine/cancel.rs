//! A per-job stop a caller triggers from any thread: [`Cancel`].
//!
//! Unlike [`crate::Interrupt`], which stands for SIGINT or SIGTERM and stops every worker,
//! a cancel ends one job: the pool stops handing out its chunks, returns
//! [`crate::Error::Cancelled`] at once, and keeps its workers for the next job (see
//! `pool/quiesce.rs`). A pool running a job with the token registers its waker here, so
//! that [`Cancel::cancel`] wakes the pool's loop at once instead of at its next tick.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ipc_channel::ipc::IpcSender;

/// A handle that stops the jobs it is given to, from any thread.
///
/// Give a clone to [`JobOptions::cancel`](crate::JobOptions::cancel) and keep another;
/// [`Cancel::cancel`] then stops the job within about one chunk's time with
/// [`Error::Cancelled`](crate::Error::Cancelled), and the pool keeps its workers: the next
/// job runs on the same processes. A token stays cancelled: make a new one for the next
/// job (a job given a cancelled token stops before it starts).
///
/// ```no_run
/// use procpool::{Cancel, JobOptions, Pool};
/// use procpool::workload::Spin;
///
/// procpool::init();
/// let mut pool = Pool::builder().workers(2).build()?;
/// let cancel = Cancel::new();
/// let options = JobOptions { cancel: Some(cancel.clone()), ..JobOptions::default() };
/// let stopper = std::thread::spawn(move || {
///     std::thread::sleep(std::time::Duration::from_millis(50));
///     cancel.cancel();
/// });
/// let result = pool.run_with(&Spin { iters: 1_000_000 }, 100_000, &options);
/// assert!(matches!(result, Err(procpool::Error::Cancelled { .. })));
/// stopper.join().unwrap();
/// // Same workers, no set-up again.
/// pool.run(&Spin { iters: 10 }, 1000)?;
/// # Ok::<(), procpool::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct Cancel {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    cancelled: AtomicBool,
    /// The wakers of the pools running a job with this token, by registration.
    wakers: Mutex<Vec<(u64, IpcSender<()>)>>,
    next: AtomicU64,
}

impl std::fmt::Debug for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cancel")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl Cancel {
    /// A token not cancelled yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stops every job running with this token (and any later one given it), and wakes
    /// their pools at once.
    pub fn cancel(&self) {
        self.inner.cancelled.store(true, Ordering::SeqCst);
        if let Ok(wakers) = self.inner.wakers.lock() {
            for (_, waker) in wakers.iter() {
                // A pool that is gone, or whose socket is full, needs no more waking.
                let _ = waker.send(());
            }
        }
    }

    /// Whether [`Cancel::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::SeqCst)
    }

    /// Has `waker` sent a message when the token is cancelled, until the returned guard is
    /// dropped.
    pub(crate) fn wake(&self, waker: IpcSender<()>) -> Waking {
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut wakers) = self.inner.wakers.lock() {
            wakers.push((id, waker));
        }
        Waking {
            cancel: self.clone(),
            id,
        }
    }
}

/// A pool's waker registered with a [`Cancel`]; unregistered when dropped.
#[derive(Debug)]
pub(crate) struct Waking {
    cancel: Cancel,
    id: u64,
}

impl Drop for Waking {
    fn drop(&mut self) {
        if let Ok(mut wakers) = self.cancel.inner.wakers.lock() {
            wakers.retain(|(id, _)| *id != self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_is_seen_by_every_clone_and_wakes_the_registered_pools() {
        let cancel = Cancel::new();
        let (waker, woken) = ipc_channel::ipc::channel::<()>().unwrap();
        let guard = cancel.clone().wake(waker);
        assert!(!cancel.is_cancelled());
        let other = cancel.clone();
        std::thread::spawn(move || other.cancel()).join().unwrap();
        assert!(cancel.is_cancelled());
        assert!(
            woken
                .try_recv_timeout(std::time::Duration::from_secs(5))
                .is_ok()
        );
        drop(guard);
        assert!(cancel.inner.wakers.lock().unwrap().is_empty());
        // Once unregistered, a cancel sends nothing.
        cancel.cancel();
        assert!(woken.try_recv().is_err());
    }
}
