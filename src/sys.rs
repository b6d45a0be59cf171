//! Operating-system corners of starting and stopping workers.
//!
//! Everything that must run between `fork` and `exec` lives here, in one `unsafe` hook with a
//! short list of async-signal-safe calls, so the rest of the pool stays safe code.

use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus};

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::signal::Signal;
use nix::unistd::{Pid, getppid};

/// Arranges for the command's child to
/// - die with SIGKILL when the thread that started it exits (`PR_SET_PDEATHSIG`), so a
///   SIGKILLed procpool never leaves workers behind;
/// - exit at once if its parent already died before the death signal was armed;
/// - inherit `keep_fd` (the shared region), which is close-on-exec everywhere else.
pub fn prepare_worker_command(cmd: &mut Command, keep_fd: RawFd) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe functions may be called. It calls prctl, getppid, fcntl and _exit
    // (all plain system calls), allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            if getppid() != parent {
                // The parent died before the death signal was armed: nobody will ever
                // talk to us.
                libc::_exit(1);
            }
            // SAFETY (fd): `keep_fd` is the parent's memfd, open across the fork; clearing
            // close-on-exec in the child affects only the child's descriptor table.
            let fd = std::os::fd::BorrowedFd::borrow_raw(keep_fd);
            fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))?;
            Ok(())
        });
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

/// Sends SIGKILL to `pid`, ignoring a process that is already gone.
pub fn kill_hard(pid: u32) {
    let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
}

/// Ends this process with `signal`, as if it came from outside (used by fault injection).
pub fn die_by_signal(signal: Signal) -> ! {
    // SAFETY: installing the default disposition runs no code of ours in signal context; it
    // undoes handlers such as std's stack-overflow SIGSEGV handler, so the signal is fatal.
    let _ = unsafe { nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigDfl) };
    let _ = nix::sys::signal::raise(signal);
    // A blocked or ignored signal: still never return.
    std::process::abort()
}

/// Ignores SIGINT in this process. Workers do this: a Ctrl-C in the terminal reaches the
/// whole process group, and it is the parent's job to decide how workers stop.
pub fn ignore_interrupts() {
    // SAFETY: SIG_IGN installs no handler code, so no async-signal-safety rule is at stake.
    let _ =
        unsafe { nix::sys::signal::signal(Signal::SIGINT, nix::sys::signal::SigHandler::SigIgn) };
}

/// Sends SIGTERM to `pid`, ignoring a process that is already gone.
pub fn terminate(pid: u32) {
    let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
}

/// The soft and hard limits on open files (`ulimit -n`).
pub fn open_file_limit() -> io::Result<(u64, u64)> {
    Ok(getrlimit(Resource::RLIMIT_NOFILE)?)
}

/// Raises the soft open-file limit to `want` (at most the hard limit). Returns the new soft
/// limit.
pub fn raise_open_file_limit(want: u64) -> io::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= want {
        return Ok(soft);
    }
    let new_soft = want.min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, new_soft, hard)?;
    Ok(new_soft)
}

/// The soft limit on processes for this user (`ulimit -u`), if one is set and enforced.
pub fn process_limit() -> Option<u64> {
    if nix::unistd::geteuid().is_root() {
        // root is not held to RLIMIT_NPROC.
        return None;
    }
    match getrlimit(Resource::RLIMIT_NPROC) {
        Ok((soft, _)) if soft != libc::RLIM_INFINITY => Some(soft),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_causes_read_like_a_person_would_say_them() {
        assert_eq!(ExitCause::Exited(3).to_string(), "exited with status 3");
        let killed = ExitCause::Signaled {
            signal: 9,
            core_dumped: false,
        };
        assert_eq!(killed.to_string(), "killed by SIGKILL");
        let segv = ExitCause::Signaled {
            signal: 11,
            core_dumped: true,
        };
        assert_eq!(segv.to_string(), "killed by SIGSEGV (core dumped)");
    }

    #[test]
    fn exit_cause_from_a_real_status() {
        let status = Command::new("sh").args(["-c", "exit 7"]).status().unwrap();
        assert_eq!(ExitCause::from(status), ExitCause::Exited(7));
        let status = Command::new("sh")
            .args(["-c", "kill -KILL $$"])
            .status()
            .unwrap();
        assert_eq!(ExitCause::from(status).to_string(), "killed by SIGKILL");
    }
}
