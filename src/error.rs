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
    #[error("cannot start worker {id} ({exe}): {source}{hint}")]
    Spawn {
        /// The worker's id.
        id: usize,
        /// The executable that was started.
        exe: String,
        /// The operating system's error.
        source: io::Error,
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

impl Error {
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
}
