//! Fault injection: make a worker fail on purpose at a chosen chunk.
//!
//! `--inject ACTION@CHUNK[:always]` lets users watch the supervisor work and lets tests be
//! exact. The action fires in the worker that receives chunk `CHUNK`, on the first attempt
//! only, or on every attempt with `:always`. Most actions end or stall the worker; `corrupt`
//! spoils the chunk's output, and `scribble` and `wipe` write over the queue's control block
//! in shared memory, as a kernel writing out of bounds could.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What an injected fault does to the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FaultAction {
    /// The worker sends itself SIGKILL.
    Kill,
    /// The worker calls `abort()` (SIGABRT).
    Abort,
    /// The kernel panics (the worker exits with status 101 and prints the panic message).
    Panic,
    /// The worker raises SIGSEGV.
    Segv,
    /// The worker exits with status 3.
    Exit,
    /// The worker stops responding (sleeps forever).
    Hang,
    /// The worker writes a wrong value into the chunk's first element, then reports success:
    /// verification against the single-process run must catch it.
    Corrupt,
    /// The worker forks a child that sleeps until it is killed, holding the worker's output
    /// pipes and channel (as a kernel's stray helper process would), then runs the chunk:
    /// the pool ends the child with the worker's process group.
    Fork,
    /// The worker overwrites the queue's shared claim counter (`next`) with garbage, as a
    /// kernel writing outside its chunk could, then runs the chunk: the supervisor must
    /// notice the control block was overwritten and stop the job.
    Scribble,
    /// The worker zeroes the whole control block of the queue, then runs the chunk.
    Wipe,
}

impl FaultAction {
    const ALL: [(&'static str, FaultAction); 10] = [
        ("kill", FaultAction::Kill),
        ("abort", FaultAction::Abort),
        ("panic", FaultAction::Panic),
        ("segv", FaultAction::Segv),
        ("exit", FaultAction::Exit),
        ("hang", FaultAction::Hang),
        ("corrupt", FaultAction::Corrupt),
        ("fork", FaultAction::Fork),
        ("scribble", FaultAction::Scribble),
        ("wipe", FaultAction::Wipe),
    ];

    /// Makes this process fail the way the action says, right before it runs chunk `id`
    /// (`Corrupt` does nothing here: it acts on the chunk's output after the kernel; `Fork`
    /// leaves a child behind and returns). `Scribble` and `Wipe` write into `control`, the
    /// queue's control block (nothing without one).
    pub(crate) fn strike(self, id: u64, control: Option<&crate::engine::control::Control>) {
        use nix::sys::signal::Signal;
        match self {
            FaultAction::Kill => crate::engine::sys::die_by_signal(Signal::SIGKILL),
            FaultAction::Abort => std::process::abort(),
            FaultAction::Panic => panic!("injected panic at chunk {id}"),
            FaultAction::Segv => crate::engine::sys::die_by_signal(Signal::SIGSEGV),
            FaultAction::Exit => std::process::exit(3),
            FaultAction::Hang => loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            },
            FaultAction::Corrupt => {}
            FaultAction::Fork => {
                if let Err(e) = crate::engine::sys::fork_sleeper() {
                    eprintln!("injected fork at chunk {id}: {e}");
                }
            }
            FaultAction::Scribble => {
                if let Some(control) = control {
                    control.scribble_next();
                }
            }
            FaultAction::Wipe => {
                if let Some(control) = control {
                    control.wipe();
                }
            }
        }
    }

    fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, a)| *a == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }
}

/// One injected fault: an action at a chunk, once or on every attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// What happens.
    pub action: FaultAction,
    /// The chunk id at which it happens.
    pub chunk: u64,
    /// Every attempt (true) or only the first (false).
    pub always: bool,
}

impl Fault {
    /// True when this fault fires for `chunk` on attempt `attempt` (0-based).
    pub fn fires(&self, chunk: u64, attempt: u32) -> bool {
        self.chunk == chunk && (self.always || attempt == 0)
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.action.name(), self.chunk)?;
        if self.always {
            write!(f, ":always")?;
        }
        Ok(())
    }
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let usage = "expected ACTION@CHUNK or ACTION@CHUNK:always, where ACTION is one of \
                     kill, abort, panic, segv, exit, hang, corrupt, fork, scribble, wipe \
                     (e.g. kill@3)";
        let (body, always) = match s.strip_suffix(":always") {
            Some(body) => (body, true),
            None => (s, false),
        };
        let (action, chunk) = body
            .split_once('@')
            .ok_or_else(|| format!("`{s}`: {usage}"))?;
        let action = FaultAction::ALL
            .iter()
            .find(|(n, _)| *n == action)
            .map(|(_, a)| *a)
            .ok_or_else(|| format!("unknown action `{action}`: {usage}"))?;
        let chunk = chunk
            .parse::<u64>()
            .map_err(|_| format!("`{chunk}` is not a chunk number: {usage}"))?;
        Ok(Fault {
            action,
            chunk,
            always,
        })
    }
}

/// Refuses faults aimed at a chunk the job does not have (`chunks`: how many it has), which
/// would otherwise never fire.
pub(crate) fn check_faults(faults: &[Fault], chunks: u64) -> crate::error::Result<()> {
    match faults.iter().find(|f| f.chunk >= chunks) {
        None => Ok(()),
        Some(f) => Err(crate::error::Error::invalid(
            "faults",
            match chunks {
                0 => format!("`faults` {f}: the job has no chunks (n = 0): drop `faults`"),
                _ => format!(
                    "`faults` {f}: the job has only {chunks} chunk{} (0 to {}): inject at a \
                     chunk below {chunks}, or use a smaller `chunk_size`",
                    if chunks == 1 { "" } else { "s" },
                    chunks - 1
                ),
            },
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_beyond_the_last_chunk_are_refused_naming_the_count() {
        let faults: Vec<Fault> = vec!["kill@3".parse().unwrap(), "hang@999".parse().unwrap()];
        assert!(check_faults(&faults[..1], 4).is_ok());
        let err = check_faults(&faults, 25).unwrap_err();
        assert!(err.is_invalid_input());
        assert_eq!(
            err.to_string(),
            "`faults` hang@999: the job has only 25 chunks (0 to 24): inject at a chunk below \
             25, or use a smaller `chunk_size`"
        );
        assert!(
            check_faults(&faults, 0)
                .unwrap_err()
                .to_string()
                .contains("no chunks")
        );
    }

    #[test]
    fn parses_and_prints_faults() {
        let f: Fault = "kill@3".parse().unwrap();
        assert_eq!(
            f,
            Fault {
                action: FaultAction::Kill,
                chunk: 3,
                always: false
            }
        );
        assert!(f.fires(3, 0) && !f.fires(3, 1) && !f.fires(2, 0));
        let g: Fault = "hang@0:always".parse().unwrap();
        assert!(g.always && g.fires(0, 5));
        assert_eq!(g.to_string(), "hang@0:always");
        assert!(
            "boom@1"
                .parse::<Fault>()
                .unwrap_err()
                .contains("unknown action")
        );
        assert!("kill".parse::<Fault>().is_err());
        let s: Fault = "scribble@2".parse().unwrap();
        assert_eq!(
            (s.action, s.to_string()),
            (FaultAction::Scribble, "scribble@2".into())
        );
        assert_eq!("wipe@0".parse::<Fault>().unwrap().action, FaultAction::Wipe);
        assert!("kill@x".parse::<Fault>().is_err());
    }
}
