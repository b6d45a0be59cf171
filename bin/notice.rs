//! Lines for the user ("worker 3 (pid 812) killed by SIGKILL …") that never hold up
//! supervision.
//!
//! Writing to stderr blocks when whoever reads it stops reading (a full pipe, a paused
//! terminal). The dispatch loop must never wait on that, or every worker would stall with
//! it. So the observer only queues a line; a thread of its own writes it. When the queue is
//! full the line is dropped (it is in the report's `deaths` all the same). The thread ends
//! after a second without lines, so a later `--start fork` still finds one thread only.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Lines waiting at most; more are dropped.
const QUEUE: usize = 256;
/// The writer thread ends after this long without a line.
const IDLE: Duration = Duration::from_secs(1);

struct Writer {
    tx: SyncSender<String>,
    /// Lines queued and not yet written.
    pending: Arc<AtomicUsize>,
}

static WRITER: Mutex<Option<Writer>> = Mutex::new(None);

/// Queues `line` for stderr without waiting.
pub(crate) fn notice(line: String) {
    let Ok(mut writer) = WRITER.lock() else {
        return;
    };
    let line = match writer.as_ref() {
        Some(w) => {
            // Counted before it is sent, so the writer never counts below zero.
            w.pending.fetch_add(1, Ordering::SeqCst);
            match w.tx.try_send(line) {
                Ok(()) => return,
                Err(TrySendError::Full(_)) => {
                    w.pending.fetch_sub(1, Ordering::SeqCst);
                    return;
                }
                Err(TrySendError::Disconnected(line)) => line,
            }
        }
        None => line,
    };
    start(&mut writer, Some(line));
}

/// Starts the writer thread (again) and queues `first`.
fn start(writer: &mut Option<Writer>, first: Option<String>) {
    let (tx, rx) = sync_channel::<String>(QUEUE);
    let pending = Arc::new(AtomicUsize::new(0));
    let counter = pending.clone();
    let spawned = std::thread::Builder::new()
        .name("procpool-notices".into())
        .stack_size(64 * 1024)
        .spawn(move || write_lines(rx, &counter));
    if spawned.is_err() {
        *writer = None;
        return;
    }
    if let Some(line) = first {
        pending.fetch_add(1, Ordering::SeqCst);
        if tx.try_send(line).is_err() {
            pending.fetch_sub(1, Ordering::SeqCst);
        }
    }
    *writer = Some(Writer { tx, pending });
}

fn write_lines(rx: Receiver<String>, pending: &AtomicUsize) {
    loop {
        match rx.recv_timeout(IDLE) {
            Ok(line) => {
                let _ = writeln!(std::io::stderr().lock(), "{line}");
                pending.fetch_sub(1, Ordering::SeqCst);
            }
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Waits up to `limit` for the queued lines to be written (before a report is printed).
pub(crate) fn flush(limit: Duration) {
    let pending = match WRITER.lock() {
        Ok(w) => w.as_ref().map(|w| w.pending.clone()),
        Err(_) => None,
    };
    let Some(pending) = pending else {
        return;
    };
    let began = Instant::now();
    while pending.load(Ordering::SeqCst) > 0 && began.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(1));
    }
}
