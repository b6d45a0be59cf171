//! Ending a job early without stopping its workers: a cancel, a deadline, a kernel panic.
//!
//! A job stopped this way costs the job, not the workers. The protocol, on both dispatch
//! paths:
//! 1. **Stop at once.** The dispatch loop returns its error as soon as it sees the stop
//!    ([`JobStop::due`] at the same place it looks at the interrupt flag; the pool's waker
//!    cuts its wait short, so a cancel or a deadline is seen at once). [`Pool::abandon`]
//!    then closes the job's posting in the control block without waiting: on the queue no
//!    worker claims another chunk (each looks at the posting before every claim, and a
//!    worker that caught a panic waits for the close); on the channels the parent sends
//!    every worker `EndJob`, and a worker runs no chunk of a closed posting (every chunk
//!    message names its posting), so the chunks still queued in its socket are skipped.
//!    No worker computes the stopped job longer than the chunk it is running.
//! 2. **The next job waits for quiet, not the caller.** Before the next job (or the next
//!    posting) is written, [`Pool::settle`] waits until no worker is inside the old posting
//!    any more. A channel worker stays inside its posting until it reads `EndJob`, so by
//!    then every reply it sent for the stopped job (`Done`, `Panicked`) is in the parent's
//!    socket: [`Pool::settle`] reads and drops them, so none reaches the next job's
//!    ledger. On the queue the next posting clears the claims, the retry ring and the chunk
//!    table, which no worker of the old posting can write any more.
//! 3. **A bound.** A worker still inside the old posting `grace` after the next job began
//!    waiting (a chunk far longer than that, or a stopped process) is killed, reaped and
//!    replaced before the next job starts, as a death between jobs.
//!
//! Everything else that fails a job (workers lost beyond the limits, a damaged queue, an
//! interrupt, a worker that cannot run the job, a result that does not add up) still
//! stops every worker, and the next job starts a fresh set.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use ipc_channel::TrySelectError;
use ipc_channel::ipc::{IpcSelectionResult, IpcSender};

use super::{Death, JobOptions, Pool};
use crate::engine::cancel::{Cancel, Waking};
use crate::engine::protocol::{FromWorker, ToWorker};
use crate::error::{Error, Result};

/// What may stop the job in progress besides a signal: its cancel token and its deadline.
#[derive(Debug, Default)]
pub(super) struct JobStop {
    cancel: Option<Cancel>,
    /// The deadline as given, and when it passes.
    deadline: Option<(Duration, Instant)>,
    /// The pool's waker, registered with the cancel token for the job.
    _waking: Option<Waking>,
    /// Wakes the pool when the deadline passes; ended (and joined) with the job.
    timer: Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
}

/// Why a job stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    Cancelled,
    Deadline(Duration),
}

impl JobStop {
    /// The stops of a job with `options` that began at `began`; `waker` wakes the pool's
    /// dispatch loop.
    pub(super) fn new(options: &JobOptions, waker: &IpcSender<()>, began: Instant) -> Self {
        let deadline = options
            .deadline
            .and_then(|d| Some((d, began.checked_add(d)?)));
        let timer = deadline.and_then(|(limit, _)| {
            let (stop, stopped) = mpsc::channel::<()>();
            let waker = waker.clone();
            let wait = limit.saturating_sub(began.elapsed());
            let thread = std::thread::Builder::new()
                .name("procpool-deadline".into())
                .spawn(move || {
                    if let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(wait) {
                        let _ = waker.send(());
                    }
                })
                // Without the thread the loop still sees the deadline at its next tick.
                .ok()?;
            Some((stop, thread))
        });
        JobStop {
            _waking: options.cancel.as_ref().map(|c| c.wake(waker.clone())),
            cancel: options.cancel.clone(),
            deadline,
            timer,
        }
    }

    /// The stop that is due now, if any.
    pub(super) fn due(&self) -> Option<Stop> {
        if self.cancel.as_ref().is_some_and(Cancel::is_cancelled) {
            return Some(Stop::Cancelled);
        }
        match self.deadline {
            Some((limit, at)) if Instant::now() >= at => Some(Stop::Deadline(limit)),
            _ => None,
        }
    }
}

impl Drop for JobStop {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.timer.take() {
            drop(stop);
            let _ = thread.join();
        }
    }
}

impl Stop {
    /// The error for this stop, after `chunks_done` chunks and `elements_done` of `n`.
    pub(super) fn error(self, chunks_done: u64, elements_done: u64, n: u64) -> Error {
        match self {
            Stop::Cancelled => Error::Cancelled {
                chunks_done,
                elements_done,
                n,
            },
            Stop::Deadline(deadline) => Error::DeadlineExceeded {
                deadline,
                chunks_done,
                elements_done,
                n,
            },
        }
    }
}

/// Whether a job that failed with `error` costs only the job: its workers are kept.
pub(super) fn keeps_workers(error: &Error) -> bool {
    matches!(
        error,
        Error::KernelPanicked { .. }
            | Error::KernelFailed { .. }
            | Error::Cancelled { .. }
            | Error::DeadlineExceeded { .. }
    )
}

/// A posting closed without waiting for its workers to leave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Draining {
    posting: u64,
    /// Stopped early: replies to it may still wait in the sockets.
    stopped: bool,
}

impl Pool {
    /// The job failed with an error that costs only the job ([`keeps_workers`]): closes
    /// its posting, and on the channels sends every worker `EndJob`, without waiting for
    /// anyone; [`Pool::settle`] waits before the next job.
    pub(super) fn abandon(&mut self) {
        let Some(posting) = self.control.open_posting() else {
            // Never opened, or closed and waited for already.
            return;
        };
        let channel = self.control.posting(posting).channel;
        self.control.close();
        if channel {
            for w in &self.workers {
                if let Some(tx) = w.tx.as_ref() {
                    // A worker that is gone is replaced before the next job.
                    let _ = tx.send(ToWorker::EndJob { posting });
                }
            }
        }
        self.draining = Some(Draining {
            posting,
            stopped: true,
        });
    }

    /// Closes channel posting `posting` at the end of its job (every worker has been sent
    /// `EndJob`); the next job waits for the workers to leave it.
    pub(super) fn close_later(&mut self, posting: u64) {
        self.control.close();
        self.draining = Some(Draining {
            posting,
            stopped: false,
        });
    }

    /// Before a job: waits until no worker is inside the last job's posting, killing and
    /// replacing one still inside after the grace period; after a job stopped early, drops
    /// the replies to it that wait in the sockets.
    pub(super) fn settle(&mut self) -> Result<()> {
        let Some(draining) = self.draining.take() else {
            return Ok(());
        };
        let grace = self.supervision.grace;
        for (w, pid) in self.await_leaving(draining.posting) {
            let new_pid = self.respawn(w)?;
            self.charges.deaths.push(Death {
                id: self.workers[w].id,
                pid,
                cause: format!(
                    "killed: still in the chunk of a stopped job {grace:?} after it ended"
                ),
                chunk: None,
                replaced_by: Some(new_pid),
            });
        }
        if draining.stopped {
            self.drop_stale_replies()?;
            self.settle_retired()?;
        }
        Ok(())
    }

    /// Reads every message waiting from the workers and drops it: replies to a job that
    /// stopped early. A `Retiring` is kept in mind (the worker is replaced before the next
    /// job), a `Done` counted toward its worker's recycling limit; a closed channel or a
    /// `Failed` shows as the process's exit, which the next job's check for dead workers
    /// handles.
    fn drop_stale_replies(&mut self) -> Result<()> {
        loop {
            let events = match self.set.try_select() {
                Ok(events) => events,
                Err(TrySelectError::Empty) => return Ok(()),
                Err(TrySelectError::IoError(e)) => {
                    return Err(Error::Ipc(format!("reading the workers' messages: {e}")));
                }
            };
            for event in events {
                let IpcSelectionResult::MessageReceived(rid, message) = event else {
                    continue;
                };
                match self.decode(rid, message) {
                    Ok(Some((w, FromWorker::Retiring, _))) => self.workers[w].retiring = true,
                    // It counts the chunk toward its recycling limit: so does the pool.
                    Ok(Some((w, FromWorker::Done { .. }, _))) => self.workers[w].ran_chunks += 1,
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_is_due_once_cancelled_or_past_the_deadline() {
        let (waker, woken) = ipc_channel::ipc::channel::<()>().unwrap();
        let cancel = Cancel::new();
        let options = JobOptions {
            cancel: Some(cancel.clone()),
            deadline: Some(Duration::from_millis(30)),
            ..JobOptions::default()
        };
        let began = Instant::now();
        let stop = JobStop::new(&options, &waker, began);
        assert_eq!(stop.due(), None);
        // The timer wakes the loop when the deadline passes.
        assert!(woken.try_recv_timeout(Duration::from_secs(10)).is_ok());
        assert!(began.elapsed() >= Duration::from_millis(30));
        assert_eq!(stop.due(), Some(Stop::Deadline(Duration::from_millis(30))));
        cancel.cancel();
        assert_eq!(stop.due(), Some(Stop::Cancelled));
        assert!(woken.try_recv_timeout(Duration::from_secs(10)).is_ok());
        drop(stop);
        // A deadline past any clock means none.
        let far = JobOptions {
            deadline: Some(Duration::MAX),
            ..JobOptions::default()
        };
        assert_eq!(JobStop::new(&far, &waker, Instant::now()).due(), None);
    }

    #[test]
    fn the_errors_say_how_far_the_job_got_and_which_keep_the_workers() {
        let e = Stop::Deadline(Duration::from_millis(200)).error(3, 300, 1000);
        assert_eq!(
            e.to_string(),
            "the job's deadline of 200ms passed: 3 chunks done (300 of 1000 elements, 30%)"
        );
        assert!(keeps_workers(&e));
        let e = Stop::Cancelled.error(0, 0, 10);
        assert!(e.to_string().starts_with("cancelled: 0 chunks done"), "{e}");
        assert!(keeps_workers(&e));
        assert!(!keeps_workers(&Error::Broken));
    }
}
