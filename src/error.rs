//! The library's error type: what went wrong, and to which worker or chunk.

use std::io;
use std::time::Duration;

use crate::sys::ExitCause;

/// Everything a pool run can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bad input, refused before anything started (the CLI exits with code 2).
    #[error("{0}")]
    InvalidInput(String),

    /// A worker process could not be started.
    ///
    /// The operating system's error is part of the message, not an error source, so a
    /// report that prints the whole chain (`{:#}`) names it once.
    #[error("cannot start worker {id} ({exe}): {os_error}{hint}")]
    Spawn {
        /// The worker's id.
        id: usize,
        /// The executable that was started.
        exe: String,
        /// The operating system's error.
        os_error: io::Error,
        /// What to do about it, when known (starts with "; ").
        hint: String,
    },

    /// A worker exited before it connected back.
    #[error("worker {id} (pid {pid}) {cause} before it connected to procpool{hint}")]
    HandshakeExit {
        /// The worker's id.
        id: usize,
        /// Its process id.
        pid: u32,
        /// How it ended.
        cause: ExitCause,
        /// What might explain it (starts with "; ").
        hint: String,
    },

    /// A worker did not connect back in time; it was killed.
    #[error("worker {id} (pid {pid}) did not connect within {timeout:?}; it was stopped")]
    HandshakeTimeout {
        /// The worker's id.
        id: usize,
        /// Its process id.
        pid: u32,
        /// The deadline that passed.
        timeout: Duration,
    },

    /// A worker died while it held work.
    #[error("worker {id} (pid {pid}) {cause}{}", held_text(.chunks))]
    WorkerDied {
        /// The worker's id.
        id: usize,
        /// Its process id.
        pid: u32,
        /// How it ended.
        cause: ExitCause,
        /// The chunks it held when it died.
        chunks: Vec<u64>,
    },

    /// A worker reported that it cannot run the job.
    #[error("worker {id} (pid {pid}) cannot run the job: {message}")]
    WorkerFailed {
        /// The worker's id.
        id: usize,
        /// Its process id.
        pid: u32,
        /// The worker's own words.
        message: String,
    },

    /// A chunk failed on every attempt (each attempt killed or timed out its worker).
    #[error(
        "chunk {chunk} (elements {start}..{end}) failed {attempts} time{}, the retry limit; \
         last: {last_cause}",
        if *.attempts == 1 { "" } else { "s" }
    )]
    ChunkFailed {
        /// The chunk id.
        chunk: u64,
        /// Its first index.
        start: u64,
        /// One past its last index.
        end: u64,
        /// How many times it was tried.
        attempts: u32,
        /// What happened on the last attempt.
        last_cause: String,
    },

    /// Workers died more often than the restart limit allows.
    #[error("{restarts} worker restarts exceed --max-restarts {limit}; last: {last_cause}")]
    TooManyRestarts {
        /// Restarts so far.
        restarts: u64,
        /// The limit.
        limit: u64,
        /// The last death.
        last_cause: String,
    },

    /// SIGINT or SIGTERM stopped the job; every worker was stopped and reaped.
    #[error(
        "interrupted by {}: {chunks_done} chunks done ({elements_done} of {n} elements, {}); \
         stopped {workers} workers{}",
        signal_name(*.signal),
        percent(*.elements_done, *.n),
        escalation_text(*.needed_term, *.needed_kill)
    )]
    Interrupted {
        /// The signal number.
        signal: i32,
        /// Chunks completed before the stop.
        chunks_done: u64,
        /// Chunks handed out so far (done, running or queued).
        chunks: u64,
        /// Elements completed.
        elements_done: u64,
        /// Elements in the job.
        n: u64,
        /// Workers stopped.
        workers: usize,
        /// Workers that needed SIGTERM after the grace period.
        needed_term: usize,
        /// Workers that needed SIGKILL after a second grace period.
        needed_kill: usize,
    },

    /// The streamed output could not be written (see [`crate::pool::Pool::stream_with`]).
    #[error("{0}")]
    Output(String),

    /// The pool is unusable after an earlier failure.
    #[error("the pool stopped after an earlier failure; build a new one")]
    Broken,

    /// An IPC channel failed in an unexpected way.
    #[error("ipc: {0}")]
    Ipc(String),

    /// Another operating-system error.
    #[error(transparent)]
    Io(#[from] io::Error),
}

fn held_text(chunks: &[u64]) -> String {
    let list = |cs: &[u64]| cs.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
    match chunks {
        [] => " while idle".to_string(),
        [c] => format!(" while running chunk {c}"),
        [c, queued @ ..] => format!(" while running chunk {c} ({} queued)", list(queued)),
    }
}

fn signal_name(signal: i32) -> String {
    nix::sys::signal::Signal::try_from(signal)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {signal}"))
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "100%".into()
    } else {
        format!("{:.0}%", part as f64 * 100.0 / whole as f64)
    }
}

fn escalation_text(term: usize, kill: usize) -> String {
    match (term, kill) {
        (0, 0) => String::new(),
        (t, 0) => format!(" ({t} needed SIGTERM)"),
        (t, k) => format!(" ({t} needed SIGTERM, {k} of them SIGKILL)"),
    }
}

impl Error {
    /// The signal that interrupted the job, if it was interrupted.
    pub fn interrupted_by(&self) -> Option<i32> {
        match *self {
            Error::Interrupted { signal, .. } => Some(signal),
            _ => None,
        }
    }

    /// The chunk that exhausted its retries, if that is what failed.
    pub fn chunk(&self) -> Option<u64> {
        match *self {
            Error::ChunkFailed { chunk, .. } => Some(chunk),
            _ => None,
        }
    }

    /// True for bad input that was refused before any process started.
    pub fn is_invalid_input(&self) -> bool {
        matches!(self, Error::InvalidInput(_))
    }

    /// The id of the worker the error is about, if any.
    pub fn worker(&self) -> Option<usize> {
        match *self {
            Error::Spawn { id, .. }
            | Error::HandshakeExit { id, .. }
            | Error::HandshakeTimeout { id, .. }
            | Error::WorkerDied { id, .. }
            | Error::WorkerFailed { id, .. } => Some(id),
            _ => None,
        }
    }
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_death_reads_as_a_sentence() {
        let e = Error::WorkerDied {
            id: 2,
            pid: 4242,
            cause: ExitCause::Signaled {
                signal: 9,
                core_dumped: false,
            },
            chunks: vec![7],
        };
        assert_eq!(
            e.to_string(),
            "worker 2 (pid 4242) killed by SIGKILL while running chunk 7"
        );
        assert_eq!(e.worker(), Some(2));
    }

    /// Every variant's text, printed as the CLI prints an error chain (`{:#}`), names the
    /// operating system's error once.
    #[test]
    fn the_os_error_is_printed_once_in_the_whole_chain() {
        let os = || io::Error::from_raw_os_error(libc::EAGAIN);
        let os_text = os().to_string();
        for e in [
            Error::Spawn {
                id: 0,
                exe: "/bin/procpool".into(),
                os_error: os(),
                hint: "; the process limit (ulimit -u) is 10".into(),
            },
            Error::Io(os()),
        ] {
            let line = format!("{:#}", anyhow::Error::from(e));
            assert_eq!(line.matches(&os_text).count(), 1, "{line}");
        }
    }
}
