//! The library's error type: what went wrong, and to which worker or chunk.

use std::io;
use std::time::Duration;

use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use nix::sys::signal::Signal;

/// Everything a pool run can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bad input, refused before anything started (the CLI exits with code 2).
    ///
    /// The message names options by their library names in backticks (`` `workers` ``,
    /// `` `chunk_timeout` ``, the fields of [`crate::RunOptions`] and the methods of
    /// [`crate::PoolBuilder`]); the `procpool` command shows its flags in their place.
    #[error("{message}")]
    InvalidInput {
        /// The option at fault, by its library name (`"workers"`), when there is one.
        option: Option<&'static str>,
        /// What is wrong and what to do about it.
        message: String,
    },

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

    /// A worker said why it cannot finish its handshake (another start would fail the same
    /// way): "worker 0 (pid 4242) cannot create its handshake socket in /tmp/x: No such
    /// file or directory".
    #[error("worker {id} (pid {pid}) {message}")]
    HandshakeFailed {
        /// The worker's id.
        id: usize,
        /// Its process id.
        pid: u32,
        /// What it said, in words that follow its name.
        message: String,
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

    /// The kernel panicked on a chunk. The worker caught the panic and lived on; a panic is
    /// not retried (the same input would panic again) unless
    /// [`Supervision::retry_panics`](crate::Supervision::retry_panics) says so.
    #[error(
        "the kernel panicked on chunk {chunk} (elements {start}..{end}) in worker {worker} \
         (pid {pid}): {message}{}",
        location.as_deref().map(|l| format!(" (at {l})")).unwrap_or_default()
    )]
    KernelPanicked {
        /// The chunk id.
        chunk: u64,
        /// Its first index.
        start: u64,
        /// One past its last index.
        end: u64,
        /// The worker's id.
        worker: usize,
        /// Its process id.
        pid: u32,
        /// The panic message.
        message: String,
        /// Where it panicked (`file:line:column`), when known.
        location: Option<String>,
    },

    /// The kernel returned an error on a chunk (a fallible closure:
    /// [`Closure::try_map`](crate::Closure::try_map)). Not retried: the same input gives
    /// the same error. The workers stay for the next job, as after a panic.
    #[error(
        "the kernel failed on chunk {chunk} (elements {start}..{end}) in worker {worker} \
         (pid {pid}): {message}"
    )]
    KernelFailed {
        /// The chunk id.
        chunk: u64,
        /// Its first index.
        start: u64,
        /// One past its last index.
        end: u64,
        /// The worker's id.
        worker: usize,
        /// Its process id.
        pid: u32,
        /// The error's text (with the index it happened at).
        message: String,
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
         last: {last}",
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
        /// The worker lost on the last attempt.
        last: Loss,
    },

    /// Workers died more often than the restart limit allows.
    #[error(
        "{} exceed{} `max_restarts` {limit}; last: {last}",
        crate::units::count(*.restarts, "worker restart"),
        if *.restarts == 1 { "s" } else { "" }
    )]
    TooManyRestarts {
        /// Restarts so far.
        restarts: u64,
        /// The limit.
        limit: u64,
        /// The last worker lost.
        last: Loss,
    },

    /// SIGINT or SIGTERM stopped the job; every worker was stopped and reaped.
    #[error(
        "interrupted by {}{}",
        signal_name(*.signal),
        interrupted_text(*.phase, *.chunks_done, *.elements_done, *.n, *.workers)
            + &escalation_text(*.needed_term, *.needed_kill)
    )]
    Interrupted {
        /// The signal number.
        signal: i32,
        /// What procpool was doing when the signal arrived.
        phase: Phase,
        /// Chunks completed before the stop.
        chunks_done: u64,
        /// Chunks handed out so far (done, running or queued).
        chunks: u64,
        /// Elements completed (of the phase's own work: the pool's, the baseline's, …).
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

    /// The job's [`Cancel`](crate::Cancel) was cancelled: the pool stopped handing out its
    /// chunks and kept its workers for the next job.
    #[error(
        "cancelled: {}",
        progress_text(*.chunks_done, *.elements_done, *.n)
    )]
    Cancelled {
        /// Chunks completed before the stop.
        chunks_done: u64,
        /// Elements completed.
        elements_done: u64,
        /// Elements in the job.
        n: u64,
    },

    /// The job ran past its [`JobOptions::deadline`](crate::JobOptions::deadline): the pool
    /// stopped handing out its chunks and kept its workers for the next job.
    #[error(
        "the job's deadline of {:?} passed: {}",
        .deadline,
        progress_text(*.chunks_done, *.elements_done, *.n)
    )]
    DeadlineExceeded {
        /// The deadline, from the job's start.
        deadline: Duration,
        /// Chunks completed before the stop.
        chunks_done: u64,
        /// Elements completed.
        elements_done: u64,
        /// Elements in the job.
        n: u64,
    },

    /// An MPI rank died in the middle of the job (the MPI backend, feature `mpi`): plain
    /// MPI cannot replace it, so mpirun stopped every rank.
    #[error(
        "MPI rank {rank} (pid {pid} on host {host}) died{}; mpirun stopped every rank (the \
         MPI backend cannot replace a rank or retry its chunk: the process backend can)",
        match (chunk, during) {
            (Some((id, start, end)), _) => format!(" while running chunk {id} (elements {start}..{end})"),
            (None, Some(phase)) => rank_lost_phase_text(*phase).to_string(),
            (None, None) => String::new(),
        }
    )]
    RankLost {
        /// The rank in `MPI_COMM_WORLD`.
        rank: usize,
        /// Its process id.
        pid: u32,
        /// Its host.
        host: String,
        /// The chunk it was running (id, first index, one past the last), if it had one.
        chunk: Option<(u64, u64, u64)>,
        /// What the job was doing when it died, when known: [`Phase::Baseline`] and
        /// [`Phase::Verify`] come after every chunk is done.
        during: Option<Phase>,
    },

    /// The queue's control block in shared memory held a value its posting cannot have (a
    /// kernel wrote outside its chunk, or something else wrote over it), or the queue stopped
    /// moving with chunks left that nobody took even when queued again: the job stopped
    /// rather than trust it (or report results it cannot vouch for).
    #[error("{what}; the job stopped{}", running_text(running))]
    QueueDamaged {
        /// What was found, in words.
        what: String,
        /// The workers running a chunk when the damage was found or when the block was last
        /// seen intact: (worker id, pid, chunk id). One of them may have written over it.
        running: Vec<(usize, u32, u64)>,
    },

    /// The streamed output could not be written (see [`crate::Pool::stream_with`]).
    #[error("{0}")]
    Output(String),

    /// The pool lost its shared region's mapping in the middle of a job (a bug of
    /// procpool's; the next job maps it again).
    #[error("the pool's shared region is not mapped; the job stopped")]
    Broken,

    /// An IPC channel failed in an unexpected way.
    #[error("ipc: {0}")]
    Ipc(String),

    /// Another operating-system error.
    #[error(transparent)]
    Io(#[from] io::Error),
}

fn running_text(running: &[(usize, u32, u64)]) -> String {
    if running.is_empty() {
        return String::new();
    }
    let list: Vec<String> = running
        .iter()
        .map(|(w, pid, chunk)| format!("worker {w} (pid {pid}) chunk {chunk}"))
        .collect();
    format!(" (workers running a chunk then: {})", list.join(", "))
}

fn signal_name(signal: i32) -> String {
    nix::sys::signal::Signal::try_from(signal)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {signal}"))
}

/// What a run was doing when a signal stopped it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// Worker processes were starting and connecting.
    Start,
    /// The pool was computing the job.
    Pool,
    /// The single-process run was computing the job for comparison.
    Baseline,
    /// The two outputs were being compared.
    Verify,
    /// Threads of this process were computing the job (`--mode threads`).
    Threads,
    /// This process alone was computing the job (`--mode single`).
    Single,
}

fn interrupted_text(phase: Phase, chunks: u64, elements: u64, n: u64, workers: usize) -> String {
    let count = |workers: usize| crate::units::count(workers, "worker");
    let chunks_text = |chunks: u64| crate::units::count(chunks, "chunk");
    let progress = format!(
        "{elements} of {n} elements, {}",
        crate::units::share(elements, n)
    );
    match phase {
        Phase::Start => format!(" while starting {}; none is left running", count(workers)),
        Phase::Pool => format!(
            ": {} done ({progress}); stopped {}",
            chunks_text(chunks),
            count(workers)
        ),
        Phase::Baseline => format!(" during the single-process run ({progress})"),
        Phase::Verify => format!(" while comparing the outputs ({progress} checked)"),
        Phase::Threads => format!(
            " during the threads run: {} done ({progress})",
            chunks_text(chunks)
        ),
        Phase::Single => format!(" during the single-process job ({progress})"),
    }
}

/// What the MPI job was doing when a rank died, as the end of "MPI rank R … died".
fn rank_lost_phase_text(phase: Phase) -> &'static str {
    match phase {
        Phase::Start => " while the ranks started",
        Phase::Pool => " while the ranks computed the job",
        Phase::Baseline => " during the single-process baseline, after every chunk was done",
        Phase::Verify => " while the outputs were compared, after every chunk was done",
        Phase::Threads | Phase::Single => "",
    }
}

/// "3 chunks done (300 of 1000 elements, 30%)".
fn progress_text(chunks: u64, elements: u64, n: u64) -> String {
    format!(
        "{} done ({elements} of {n} elements, {})",
        crate::units::count(chunks, "chunk"),
        crate::units::share(elements, n)
    )
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

    /// The chunk that failed the job: out of retries, or its kernel panicked.
    pub fn chunk(&self) -> Option<u64> {
        match *self {
            Error::ChunkFailed { chunk, .. }
            | Error::KernelPanicked { chunk, .. }
            | Error::KernelFailed { chunk, .. } => Some(chunk),
            Error::RankLost {
                chunk: Some((chunk, ..)),
                ..
            } => Some(chunk),
            _ => None,
        }
    }

    /// True for bad input that was refused before any process started.
    pub fn is_invalid_input(&self) -> bool {
        matches!(self, Error::InvalidInput { .. })
    }

    /// Bad input about `option` (its library name), explained by `message`.
    pub(crate) fn invalid(option: &'static str, message: impl Into<String>) -> Self {
        Error::InvalidInput {
            option: Some(option),
            message: message.into(),
        }
    }

    /// Bad input that is about no option in particular (a limit of the machine).
    pub(crate) fn invalid_input(message: impl Into<String>) -> Self {
        Error::InvalidInput {
            option: None,
            message: message.into(),
        }
    }

    /// The option a refusal is about, by its library name (`"workers"`).
    pub fn option(&self) -> Option<&'static str> {
        match *self {
            Error::InvalidInput { option, .. } => option,
            _ => None,
        }
    }

    /// The id of the worker the error is about, if any.
    pub fn worker(&self) -> Option<usize> {
        match *self {
            Error::Spawn { id, .. }
            | Error::HandshakeExit { id, .. }
            | Error::HandshakeTimeout { id, .. }
            | Error::HandshakeFailed { id, .. }
            | Error::WorkerFailed { id, .. }
            | Error::KernelPanicked { worker: id, .. }
            | Error::KernelFailed { worker: id, .. }
            | Error::RankLost { rank: id, .. } => Some(id),
            Error::ChunkFailed { last, .. } | Error::TooManyRestarts { last, .. } => {
                Some(last.worker)
            }
            _ => None,
        }
    }

    /// The last worker lost, when losing workers is what failed the job.
    pub fn loss(&self) -> Option<Loss> {
        match *self {
            Error::ChunkFailed { last, .. } | Error::TooManyRestarts { last, .. } => Some(last),
            _ => None,
        }
    }
}

/// How a worker process ended, in words: "exited with status 3", "killed by SIGKILL".
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ExitCause {
    /// `exit(code)`.
    Exited(i32),
    /// Terminated by a signal.
    Signaled {
        /// The signal number.
        signal: i32,
        /// Whether a core dump was written.
        core_dumped: bool,
    },
    /// The status could not be read.
    Unknown,
}

impl From<ExitStatus> for ExitCause {
    fn from(status: ExitStatus) -> Self {
        if let Some(code) = status.code() {
            ExitCause::Exited(code)
        } else if let Some(signal) = status.signal() {
            ExitCause::Signaled {
                signal,
                core_dumped: status.core_dumped(),
            }
        } else {
            ExitCause::Unknown
        }
    }
}

impl fmt::Display for ExitCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitCause::Exited(code) => write!(f, "exited with status {code}"),
            ExitCause::Signaled {
                signal,
                core_dumped,
            } => {
                let name = Signal::try_from(signal)
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|_| format!("signal {signal}"));
                write!(f, "killed by {name}")?;
                if core_dumped {
                    write!(f, " (core dumped)")?;
                }
                Ok(())
            }
            ExitCause::Unknown => write!(f, "ended with an unknown status"),
        }
    }
}

/// Why procpool lost a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LossCause {
    /// The process ended: it exited, or a signal killed it.
    Ended(ExitCause),
    /// Its chunk ran longer than the chunk timeout; procpool killed it.
    TimedOut(Duration),
    /// It did not connect within the handshake timeout; procpool killed it.
    NoHandshake(Duration),
    /// Its kernel panicked, and panics are retried: procpool replaced it.
    Panicked,
    /// It was stopped (SIGSTOP, SIGTSTP, a tracer) while the job made no progress for this
    /// long; procpool killed it.
    Stopped(Duration),
    /// It broke its handshake off when a system call failed with this error number (`None`:
    /// not an operating-system error), as it told procpool; procpool replaced it.
    GaveUp(Option<i32>),
}

impl fmt::Display for LossCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LossCause::Ended(cause) => write!(f, "{cause}"),
            LossCause::TimedOut(limit) => write!(f, "timed out after {limit:?} (killed)"),
            LossCause::NoHandshake(limit) => write!(f, "did not connect within {limit:?} (killed)"),
            LossCause::Panicked => write!(f, "panicked (replaced)"),
            LossCause::Stopped(limit) => write!(
                f,
                "was stopped while the job made no progress for {limit:?} (killed)"
            ),
            LossCause::GaveUp(None) => write!(f, "gave up its handshake"),
            LossCause::GaveUp(Some(errno)) => write!(
                f,
                "gave up its handshake: {}",
                nix::errno::Errno::from_raw(*errno).desc()
            ),
        }
    }
}

/// What a lost worker was doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Doing {
    /// Running this chunk (more may have been queued behind it).
    Running(u64),
    /// Nothing: it held no chunk.
    Idle,
    /// Starting: it had not connected yet.
    Starting,
}

/// A worker procpool lost: which, how, and what it was doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loss {
    /// The worker's id (its replacement takes the same id).
    pub worker: usize,
    /// The lost process's id.
    pub pid: u32,
    /// How it was lost.
    pub cause: LossCause,
    /// What it was doing then.
    pub doing: Doing,
}

impl Loss {
    /// The cause as the report's `deaths` say it: "killed by SIGKILL", "killed by SIGKILL
    /// before it connected", "timed out after 500ms (killed)".
    pub fn cause_text(&self) -> String {
        match (self.doing, self.cause) {
            (Doing::Starting, LossCause::Ended(_)) => format!("{} before it connected", self.cause),
            _ => self.cause.to_string(),
        }
    }
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "worker {} (pid {}) {}",
            self.worker,
            self.pid,
            self.cause_text()
        )?;
        match self.doing {
            Doing::Running(chunk) => write!(f, " while running chunk {chunk}"),
            Doing::Idle => write!(f, " while idle"),
            Doing::Starting => Ok(()),
        }
    }
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_worker_reads_as_a_sentence() {
        let sigkill = ExitCause::Signaled {
            signal: 9,
            core_dumped: false,
        };
        let loss = Loss {
            worker: 2,
            pid: 4242,
            cause: LossCause::Ended(sigkill),
            doing: Doing::Running(7),
        };
        assert_eq!(
            loss.to_string(),
            "worker 2 (pid 4242) killed by SIGKILL while running chunk 7"
        );
        let e = Error::ChunkFailed {
            chunk: 7,
            start: 70,
            end: 80,
            attempts: 4,
            last: loss,
        };
        assert!(
            e.to_string()
                .ends_with("; last: worker 2 (pid 4242) killed by SIGKILL while running chunk 7"),
            "{e}"
        );
        assert_eq!(e.chunk(), Some(7));
        assert_eq!((e.worker(), e.loss()), (Some(2), Some(loss)));
        let starting = Loss {
            doing: Doing::Starting,
            ..loss
        };
        assert_eq!(
            starting.cause_text(),
            "killed by SIGKILL before it connected"
        );
        let hung = Loss {
            cause: LossCause::NoHandshake(Duration::from_secs(2)),
            doing: Doing::Starting,
            ..loss
        };
        assert_eq!(
            hung.to_string(),
            "worker 2 (pid 4242) did not connect within 2s (killed)"
        );
        let late = Loss {
            cause: LossCause::TimedOut(Duration::from_millis(500)),
            doing: Doing::Idle,
            ..loss
        };
        assert_eq!(
            late.to_string(),
            "worker 2 (pid 4242) timed out after 500ms (killed) while idle"
        );
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
