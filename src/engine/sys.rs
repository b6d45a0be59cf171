//! Operating-system corners of starting and stopping workers.
//!
//! Spawning a worker (fork and exec), forking one, reaping, CPU affinity and resource
//! limits live here, each `unsafe` call with its reason, so the rest of the pool stays safe
//! code.

pub(crate) use crate::error::ExitCause;

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use nix::fcntl::{FcntlArg, fcntl};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, getppid};

/// What a spawned worker's process gets: its program, arguments and environment, where its
/// output goes, and the descriptors it inherits.
#[derive(Debug)]
pub(crate) struct SpawnSpec {
    /// The executable.
    pub(crate) program: std::ffi::CString,
    /// `argv`, the program's name first.
    pub(crate) args: Vec<std::ffi::CString>,
    /// The whole environment, `NAME=value` each.
    pub(crate) env: Vec<std::ffi::CString>,
    /// Becomes the child's stdout and stderr.
    pub(crate) output: (RawFd, RawFd),
    /// Open in this process and close-on-exec; inherited by the child (only).
    pub(crate) keep: Vec<RawFd>,
}

/// A process [`spawn_process`] started.
#[derive(Debug)]
pub(crate) struct Spawned {
    /// Its process id, which is also its process group's id.
    pub(crate) pid: u32,
    /// The read end (non-blocking) of a pipe on which the child writes its `errno` (4
    /// bytes, native order) if its exec fails. End of file with nothing read: the exec
    /// happened, or the child died before it.
    pub(crate) exec_status: std::io::PipeReader,
}

/// Starts `spec` (fork, then exec in the child) and returns at once, whatever the child
/// does next.
///
/// glibc's `posix_spawn` runs the child in the parent's memory until it execs (`CLONE_VM |
/// CLONE_VFORK`) and blocks the calling thread until then: a child stopped (SIGSTOP)
/// before its exec would hold the caller forever. A plain fork costs a copy of the page
/// tables instead, but the pid is known the moment the child exists and nothing waits for
/// the exec: whether it failed is read later from [`Spawned::exec_status`].
///
/// Everything the child uses (the strings, the argv and envp arrays, `/dev/null`, the
/// status pipe) is made before the fork: the child of a multi-threaded process may only
/// make async-signal-safe calls. In the child, with every signal blocked: a process group
/// of its own (`setpgid(0, 0)`; the parent sets it too, so that it holds from the fork
/// on), the death signal (`PR_SET_PDEATHSIG`, SIGKILL when the thread that forked it
/// ends; it survives the exec) and a check that the parent still lives; stdin is
/// `/dev/null`, stdout and stderr are `spec.output`, each of `spec.keep` loses its
/// close-on-exec flag; every caught signal and SIGPIPE get their default action; then no
/// signal is blocked, and it execs.
pub(crate) fn spawn_process(spec: &SpawnSpec) -> io::Result<Spawned> {
    let mut argv: Vec<*const libc::c_char> = spec.args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = spec.env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    let dev_null = nix::fcntl::open(
        c"/dev/null",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    let (status_read, status_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let child = ChildPlan {
        program: spec.program.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        stdin: dev_null.as_raw_fd(),
        output: spec.output,
        keep: &spec.keep,
        status: status_write.as_raw_fd(),
        parent: nix::unistd::getpid().as_raw(),
        last_signal: libc::SIGRTMAX(),
    };
    // SAFETY: sigset_t is plain data; sigfillset and sigemptyset initialise it.
    let (all, none) = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        (all, none)
    };
    let mut old: libc::sigset_t = none;
    // SAFETY: every signal is blocked in this thread across the fork, so that no handler
    // of ours runs in the child before its exec (the child resets them and unblocks), and
    // the thread's mask is restored right after. In the child, `run` makes only
    // async-signal-safe calls through pointers into memory it got a copy of (argv, envp,
    // their strings, `spec.keep`), all alive in this frame at the fork, and never
    // returns. `fork` itself has no precondition.
    let pid = unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = libc::fork();
        if pid == 0 {
            child.run(&none);
        }
        let fork_error = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if pid < 0 {
            return Err(fork_error);
        }
        pid
    };
    // The child does the same first thing; setting it here too means it holds from now
    // on, even for a child stopped before it ran a line. (After the child's exec this
    // fails, having been done by then.)
    let _ = nix::unistd::setpgid(Pid::from_raw(pid), Pid::from_raw(pid));
    drop(status_write);
    drop(dev_null);
    let exec_status = std::io::PipeReader::from(status_read);
    fcntl(
        &exec_status,
        FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    Ok(Spawned {
        pid: pid as u32,
        exec_status,
    })
}

/// What the child of [`spawn_process`] does between its fork and its exec, prepared before
/// the fork.
struct ChildPlan<'a> {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    stdin: RawFd,
    output: (RawFd, RawFd),
    keep: &'a [RawFd],
    status: RawFd,
    parent: libc::pid_t,
    last_signal: libc::c_int,
}

impl ChildPlan<'_> {
    /// Runs in the forked child: async-signal-safe calls only, no allocation, no lock.
    ///
    /// # Safety
    /// Only in the child of a fork, with every pointer of the plan valid in it.
    unsafe fn run(&self, unblocked: &libc::sigset_t) -> ! {
        // SAFETY: each call below is async-signal-safe (POSIX lists setpgid, getppid, dup2,
        // fcntl, sigaction, sigprocmask, execve, write and _exit; prctl is a plain system
        // call); the pointers are valid in this copy of the parent's memory (see the
        // caller), and argv and envp end with a null.
        unsafe {
            let fail = |status: RawFd| -> ! {
                let errno = *libc::__errno_location();
                libc::write(status, (&raw const errno).cast(), 4);
                libc::_exit(127)
            };
            // Its own process group first: from here on, killing the group reaches it and
            // everything it starts.
            if libc::setpgid(0, 0) != 0 {
                fail(self.status);
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                fail(self.status);
            }
            // The parent died before the death signal was armed: nobody will reap us.
            if libc::getppid() != self.parent {
                libc::_exit(127);
            }
            for (from, to) in [(self.stdin, 0), (self.output.0, 1), (self.output.1, 2)] {
                let moved = if from == to {
                    libc::fcntl(to, libc::F_SETFD, 0)
                } else {
                    libc::dup2(from, to)
                };
                if moved < 0 {
                    fail(self.status);
                }
            }
            for &fd in self.keep {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    fail(self.status);
                }
            }
            for signal in 1..=self.last_signal {
                if signal == libc::SIGKILL || signal == libc::SIGSTOP {
                    continue;
                }
                let mut action: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(signal, std::ptr::null(), &mut action) != 0 {
                    continue;
                }
                let handled =
                    action.sa_sigaction != libc::SIG_DFL && action.sa_sigaction != libc::SIG_IGN;
                if handled || signal == libc::SIGPIPE {
                    action.sa_sigaction = libc::SIG_DFL;
                    action.sa_flags = 0;
                    libc::sigemptyset(&mut action.sa_mask);
                    libc::sigaction(signal, &action, std::ptr::null_mut());
                }
            }
            libc::sigprocmask(libc::SIG_SETMASK, unblocked, std::ptr::null_mut());
            libc::execve(self.program, self.argv, self.envp);
            fail(self.status)
        }
    }
}

/// The resident memory of this process in bytes (`/proc/self/statm`), if readable.
pub(crate) fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    Some(pages * page)
}

/// First thing in a spawned worker: die with SIGKILL when the thread that started it ends
/// (`PR_SET_PDEATHSIG`; a pool starts its workers from a thread that lives as long as the
/// pool), so a SIGKILLed procpool never leaves workers behind; and give up at once if
/// `parent` already died before the death signal was armed (this process was then handed
/// to another parent). [`spawn_process`] did both before the exec already; doing them
/// again costs nothing and holds for a worker started any other way. Then run only on CPU
/// `pin`, when given.
pub(crate) fn arm_worker(parent: u32, pin: Option<usize>) -> Result<(), String> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| format!("cannot arm the death signal: {e}"))?;
    if getppid().as_raw() as u32 != parent {
        return Err(format!(
            "procpool (pid {parent}) is gone: nobody will talk to this worker"
        ));
    }
    if let Some(cpu) = pin {
        pin_to(cpu).map_err(|e| format!("cannot pin to CPU {cpu}: {e}"))?;
    }
    Ok(())
}

/// A child process of ours, started by `spawn` or by `fork`, waited for with `waitpid`.
///
/// std's `Child` only knows processes started by `Command`; forked workers need the same
/// handle, so both kinds use this one. Reaping it kills its process group first (see
/// `reap`): a worker's group ends with the worker.
#[derive(Debug)]
pub(crate) struct Process {
    pid: Pid,
    /// Set once reaped.
    status: Option<ExitCause>,
}

impl Process {
    /// Takes charge of child `pid` (which must be our child, not yet reaped).
    pub(crate) fn from_pid(pid: u32) -> Self {
        Process {
            pid: Pid::from_raw(pid as i32),
            status: None,
        }
    }

    /// The process id.
    pub(crate) fn id(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    /// Reaps the process if it has exited; `None` while it runs.
    pub(crate) fn try_wait(&mut self) -> io::Result<Option<ExitCause>> {
        if let Some(status) = self.status {
            return Ok(Some(status));
        }
        self.reap(Some(WaitPidFlag::WNOHANG))
    }

    /// Waits for the process to exit and reaps it.
    pub(crate) fn wait(&mut self) -> io::Result<ExitCause> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        loop {
            if let Some(status) = self.reap(None)? {
                return Ok(status);
            }
        }
    }

    /// Sends SIGKILL, unless already reaped (so a recycled pid is never hit).
    pub(crate) fn kill(&mut self) {
        if self.status.is_none() {
            let _ = nix::sys::signal::kill(self.pid, Signal::SIGKILL);
        }
    }

    /// Whether the process has exited, without reaping it: until it is reaped, its pid
    /// and process group id cannot be given to another process.
    pub(crate) fn has_exited(&self) -> bool {
        if self.status.is_some() {
            return true;
        }
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        match nix::sys::wait::waitid(nix::sys::wait::Id::Pid(self.pid), flags) {
            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::EINTR) => false,
            Ok(_) | Err(_) => true,
        }
    }

    /// Reaps the process once it has exited (at once with `WNOHANG`), first sending SIGKILL
    /// to its process group: a worker leads a group of its own, and whatever it started
    /// there (a helper process, a fork) ends with it. The group is killed while the
    /// process is a zombie, so its id cannot have been reused. A process that leads no
    /// group (never a worker) is unaffected: no group bears its id.
    fn reap(&mut self, flags: Option<WaitPidFlag>) -> io::Result<Option<ExitCause>> {
        let mut exited = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT;
        if let Some(flags) = flags {
            exited |= flags;
        }
        match nix::sys::wait::waitid(nix::sys::wait::Id::Pid(self.pid), exited) {
            // Stopped or continued are not asked for: still alive.
            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::EINTR) => return Ok(None),
            Ok(_) => {
                let _ = nix::sys::signal::killpg(self.pid, Signal::SIGKILL);
            }
            Err(nix::errno::Errno::ECHILD) => {}
            Err(e) => return Err(e.into()),
        }
        let cause = match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => ExitCause::Exited(code),
            Ok(WaitStatus::Signaled(_, signal, core_dumped)) => ExitCause::Signaled {
                signal: signal as i32,
                core_dumped,
            },
            // Stopped or continued (never after WEXITED): still alive.
            Ok(_) => return Ok(None),
            Err(nix::errno::Errno::EINTR) => return Ok(None),
            // Someone else reaped it (ECHILD): it is gone, how is unknown.
            Err(nix::errno::Errno::ECHILD) => ExitCause::Unknown,
            Err(e) => return Err(e.into()),
        };
        self.status = Some(cause);
        Ok(Some(cause))
    }
}

/// Forks a child that runs `child_main` and exits with the status it returns (101 if it
/// panics). Refused unless this process has exactly one thread: after `fork` only the
/// calling thread exists in the child, and a lock (in malloc, stdio, …) held by another
/// thread at that moment would stay locked forever.
pub(crate) fn fork_child(child_main: impl FnOnce() -> i32) -> io::Result<u32> {
    ensure_single_threaded("fork", "start the process another way")?;
    // SAFETY: this process has a single thread (checked just above), so every lock the
    // child inherits is unlocked and the child may run ordinary Rust code.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok(child.as_raw() as u32),
        nix::unistd::ForkResult::Child => run_child(child_main),
    }
}

/// Like [`fork_child`], but the child is this process's *sibling*: a child of this
/// process's parent (`clone` with `CLONE_PARENT`), which reaps it with `waitpid` and gets
/// its exit status like any child of its own. The fork server starts workers this way, so
/// that they are the pool's children (see [`crate::engine::forkserver`]).
///
/// Only for a process that has exactly one thread, as for [`fork_child`]: the caller
/// shows a [`OneThread`], checked once (a fork server forks many workers, and never starts
/// a thread). The child's parent *thread* is this process's parent thread, so a death
/// signal it sets (`PR_SET_PDEATHSIG`) follows that thread.
pub(crate) fn fork_sibling(_one: &OneThread, child_main: impl FnOnce() -> i32) -> io::Result<u32> {
    let flags = (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: with no new stack (0), `clone` behaves as `fork` does: the child continues
    // from this call on a copy of this thread's stack and memory. This process has a single
    // thread (a `OneThread` was made, and its holder starts none), so every lock the child
    // inherits is unlocked and it may run ordinary Rust code. The raw system call skips the C library's fork handlers, which
    // only matter with other threads, and leaves the thread id the C library caches for
    // this thread unchanged in the child: the child uses it only as the owner mark of its
    // own recursive locks, which none of its threads shares while this process lives.
    let pid = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => run_child(child_main),
        pid => u32::try_from(pid).map_err(|_| io::Error::other("clone returned a bad pid")),
    }
}

/// The child's side of [`fork_child`] and [`fork_sibling`]: runs `child_main` and exits
/// with the status it returns (101 if it panics).
fn run_child(child_main: impl FnOnce() -> i32) -> ! {
    let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(child_main)).unwrap_or(101);
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // SAFETY: `_exit` ends the process without running the exit handlers it inherited from
    // the parent (they are not the child's to run); our own output is flushed just above.
    unsafe { libc::_exit(code) }
}

/// The first steps of a child forked without an exec (a fork server, a forked worker):
/// leads a process group of its own, takes SIGKILL as its death signal, and checks that
/// `parent` is still its parent (it may have died before the death signal was set).
/// False when any of them failed: the child should exit.
pub(crate) fn own_group_and_death_signal(parent: Pid) -> bool {
    let own_group = Pid::from_raw(0);
    nix::unistd::setpgid(own_group, own_group).is_ok()
        && nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_ok()
        && getppid() == parent
}

/// Whether `pid` is a child of this process that has not been reaped: only then is the
/// number sure to name the process it named when it was made (see [`Process`]).
pub(crate) fn is_our_child(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    // WNOWAIT: look without reaping. ECHILD: not ours (or already reaped).
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    nix::sys::wait::waitid(nix::sys::wait::Id::Pid(Pid::from_raw(raw)), flags).is_ok()
}

/// The CPUs this process may run on (its affinity mask), in order; never empty.
pub(crate) fn allowed_cpus() -> Vec<usize> {
    let cpus: Vec<usize> = match nix::sched::sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => (0..nix::sched::CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect(),
        Err(_) => Vec::new(),
    };
    // Never empty: a process always runs somewhere.
    if cpus.is_empty() { vec![0] } else { cpus }
}

fn cpu_set_of(cpu: usize) -> Option<nix::sched::CpuSet> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).ok()?;
    Some(set)
}

/// Pins the calling process (all its future work) to CPU `cpu`.
pub(crate) fn pin_to(cpu: usize) -> io::Result<()> {
    let set = cpu_set_of(cpu).ok_or_else(|| io::Error::other(format!("no CPU {cpu}")))?;
    nix::sched::sched_setaffinity(Pid::from_raw(0), &set)?;
    Ok(())
}

/// CPU time (user + system) of process `pid`: one read of `/proc/PID/schedstat` (on-CPU
/// time in nanoseconds), or of `stat` (10 ms ticks) where schedstat is missing. Cheap
/// enough to call at every job's start.
pub(crate) fn process_cpu(pid: u32) -> Option<Duration> {
    let precise = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|s| s.split(' ').next()?.parse::<u64>().ok())
        .map(Duration::from_nanos);
    if precise.is_some() {
        return precise;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    Some(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

/// How long this process has been running: the system's uptime minus the process's start
/// time, both from /proc (10 ms resolution). `None` when /proc cannot tell.
pub(crate) fn process_age() -> Option<Duration> {
    process_age_of(std::process::id())
}

/// How long ago process `pid` started (clock-tick resolution, 10 ms on most systems).
pub(crate) fn process_age_of(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
    // starttime is field 22 of the whole line: 20 after the name.
    let start_ticks: f64 = fields.get(19)?.parse().ok()?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(Duration::from_secs_f64(
        (uptime - start_ticks / per_second).max(0.0),
    ))
}

/// Whether this process is a rank of an MPI job (Open MPI, or another PMI launcher): its
/// launcher says so in the environment.
#[cfg(feature = "mpi")]
pub(crate) fn under_mpirun() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
}

/// Whether process `pid` is stopped (SIGSTOP, or held by a tracer): the state in
/// `/proc/PID/stat` (field 3). False when there is no such process.
pub(crate) fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| Some(stat.get(stat.rfind(')')? + 2..)?.starts_with(['T', 't'])))
        .unwrap_or(false)
}

/// When process `pid` started (clock ticks since boot, `/proc/PID/stat` field 22) and
/// whether it is a zombie; `None` when there is no such process. A pid with the same start
/// time is the same process: one the system reused for another starts later.
#[cfg(feature = "mpi")]
pub(crate) fn process_started(pid: u32) -> Option<(u64, bool)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
    // The state is field 3 of the whole line, starttime field 22: 1 and 20 after the name.
    let zombie = fields.first()? == &"Z";
    Some((fields.get(19)?.parse().ok()?, zombie))
}

/// CPU time (user + system) and peak resident memory of process `pid`, read from /proc.
pub(crate) fn process_usage(pid: u32) -> Option<(Duration, u64)> {
    let cpu = process_cpu(pid)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Some((cpu, peak_kib * 1024))
}

/// What the kernel counted for a process or a thread (`getrusage`): page faults and context
/// switches. Differences of two readings ([`OsCounts::since`]) attribute them to a job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct OsCounts {
    /// Page faults served without I/O (`ru_minflt`): on procpool's outputs, mostly the
    /// first touch of each page.
    pub(crate) minor_faults: u64,
    /// Page faults that needed I/O (`ru_majflt`).
    pub(crate) major_faults: u64,
    /// Voluntary context switches (`ru_nvcsw`): it blocked (a futex, a read).
    pub(crate) voluntary_switches: u64,
    /// Involuntary context switches (`ru_nivcsw`): the scheduler took its CPU away.
    pub(crate) involuntary_switches: u64,
}

impl OsCounts {
    fn read(who: nix::sys::resource::UsageWho) -> Option<OsCounts> {
        let u = nix::sys::resource::getrusage(who).ok()?;
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        Some(OsCounts {
            minor_faults: n(u.minor_page_faults()),
            major_faults: n(u.major_page_faults()),
            voluntary_switches: n(u.voluntary_context_switches()),
            involuntary_switches: n(u.involuntary_context_switches()),
        })
    }

    /// Process `pid`'s counts so far, from `/proc/PID/stat` (faults) and `/proc/PID/status`
    /// (context switches): how the parent reads a worker that does not report its own.
    pub(crate) fn of_process(pid: u32) -> Option<OsCounts> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // After the command name (which may hold spaces): minflt and majflt are fields 10
        // and 12 of the whole line, 8 and 10 after the name.
        let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
        let field = |i: usize| fields.get(i)?.parse::<u64>().ok();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        Some(OsCounts {
            minor_faults: field(7)?,
            major_faults: field(9)?,
            voluntary_switches: line("voluntary_ctxt_switches:")?,
            involuntary_switches: line("nonvoluntary_ctxt_switches:")?,
        })
    }

    /// This process's counts so far (all its threads).
    pub(crate) fn this_process() -> Option<OsCounts> {
        OsCounts::read(nix::sys::resource::UsageWho::RUSAGE_SELF)
    }

    /// The calling thread's counts so far.
    pub(crate) fn this_thread() -> Option<OsCounts> {
        OsCounts::read(nix::sys::resource::UsageWho::RUSAGE_THREAD)
    }

    /// What was counted between `earlier` and `self` (0 where a counter went backwards).
    pub(crate) fn since(self, earlier: OsCounts) -> OsCounts {
        OsCounts {
            minor_faults: self.minor_faults.saturating_sub(earlier.minor_faults),
            major_faults: self.major_faults.saturating_sub(earlier.major_faults),
            voluntary_switches: self
                .voluntary_switches
                .saturating_sub(earlier.voluntary_switches),
            involuntary_switches: self
                .involuntary_switches
                .saturating_sub(earlier.involuntary_switches),
        }
    }

    /// The sum of two counts.
    pub(crate) fn plus(self, other: OsCounts) -> OsCounts {
        OsCounts {
            minor_faults: self.minor_faults + other.minor_faults,
            major_faults: self.major_faults + other.major_faults,
            voluntary_switches: self.voluntary_switches + other.voluntary_switches,
            involuntary_switches: self.involuntary_switches + other.involuntary_switches,
        }
    }
}

/// CPU time the calling thread has used, in nanoseconds (CLOCK_THREAD_CPUTIME_ID).
pub(crate) fn thread_cpu_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Keeps freed heap memory for reuse instead of giving it back to the kernel at once.
///
/// ipc-channel allocates a receive buffer of its largest fragment size (a few hundred KiB)
/// for every message. Above glibc's default mmap threshold (128 KiB) each one is a fresh
/// `mmap` and `munmap`, with a page fault per page touched: for tiny chunks that costs
/// more than the message itself. Buffers up to 4 MiB now come from the heap, and up to
/// 64 MiB of freed heap is kept for reuse.
pub(crate) fn keep_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes glibc's allocator parameters; it takes the allocator's
    // own lock and is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TOP_PAD, 1 << 20);
    }
}

/// Sets `name` to `value` (removes it for `None`) and removes `carrier`, the variable that
/// brought the value, while this process has a single thread; with more, changes nothing
/// (code that ran before procpool's entry started them, and may read the environment).
pub(crate) fn restore_env(name: &str, value: Option<std::ffi::OsString>, carrier: &str) {
    if thread_count() != Some(1) {
        return;
    }
    // SAFETY: this process has one thread (checked just above; only this thread could
    // start another, and it does not here), so nothing reads or writes the environment
    // while it changes: the condition `set_var` and `remove_var` ask for.
    unsafe {
        match value {
            Some(value) => std::env::set_var(name, value),
            None => std::env::remove_var(name),
        }
        std::env::remove_var(carrier);
    }
}

/// Threads of this process, from `/proc/self/task`; `None` when that cannot be read.
pub(crate) fn thread_count() -> Option<usize> {
    std::fs::read_dir("/proc/self/task").ok().map(|d| d.count())
}

/// A process that had exactly one thread when this was made (see
/// [`ensure_single_threaded`]), and has one still: only a process that never starts a
/// thread may keep one (the fork server, which forks a worker per request without checking
/// again). Neither `Send` nor `Sync`: it stays with the thread that checked.
pub(crate) struct OneThread(std::marker::PhantomData<*const ()>);

impl OneThread {
    /// This process's one thread, or why not (see [`ensure_single_threaded`]).
    pub(crate) fn check(what: &str, fix: &str) -> io::Result<OneThread> {
        ensure_single_threaded(what, fix)?;
        Ok(OneThread(std::marker::PhantomData))
    }
}

/// Fails unless this process certainly has exactly one thread, as `fork` needs: after
/// `fork` only the calling thread exists in the child, and a lock (in malloc, stdio, …)
/// held by another thread at that moment would stay locked forever. When the thread count
/// cannot be read, the answer is no: a wrong yes would hang the child.
///
/// `what` names who needs it ("--start fork"), `fix` what to do instead.
pub(crate) fn ensure_single_threaded(what: &str, fix: &str) -> io::Result<()> {
    match thread_count() {
        Some(1) => Ok(()),
        Some(threads) => Err(io::Error::other(format!(
            "{what} needs a single-threaded process, and this one has {threads} threads \
             (fork copies only the calling thread): {fix}"
        ))),
        None => Err(io::Error::other(format!(
            "{what} needs a single-threaded process, and /proc/self/task, which tells, \
             cannot be read: {fix}"
        ))),
    }
}

/// Whether `fd` is an open descriptor of this process.
pub(crate) fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor's flags; on a closed number it fails with
    // EBADF, and the borrow ends with this call.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    fd >= 0 && fcntl(borrowed, FcntlArg::F_GETFD).is_ok()
}

/// Sends SIGKILL to `pid`, ignoring a process that is already gone.
pub(crate) fn kill_hard(pid: u32) {
    let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
}

/// Ends this process with `signal`, as if it came from outside (used by fault injection).
pub(crate) fn die_by_signal(signal: Signal) -> ! {
    // SAFETY: installing the default disposition runs no code of ours in signal context; it
    // undoes handlers such as std's stack-overflow SIGSEGV handler, so the signal is fatal.
    let _ = unsafe { nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigDfl) };
    let _ = nix::sys::signal::raise(signal);
    // A blocked or ignored signal: still never return.
    std::process::abort()
}

/// Forks a child that sleeps until it is killed, holding every descriptor this process has
/// (its output pipes, its channel, the shared region): what a kernel's stray helper process
/// does (used by fault injection). The child keeps the process group, so it ends when the
/// pool ends the worker's group.
pub(crate) fn fork_sleeper() -> io::Result<u32> {
    // SAFETY: in the child of a multi-threaded process only async-signal-safe calls are
    // allowed until exec; the child calls nothing but pause() and _exit(), which are. The
    // parent's memory is not touched by the child.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => loop {
            // SAFETY: pause() and _exit() are async-signal-safe; the loop never returns.
            unsafe {
                libc::pause();
            }
        },
        pid => Ok(pid as u32),
    }
}

/// Ignores SIGINT in this process. Workers do this: a Ctrl-C in the terminal reaches the
/// whole process group, and it is the parent's job to decide how workers stop.
pub(crate) fn ignore_interrupts() {
    // SAFETY: SIG_IGN installs no handler code, so no async-signal-safety rule is at stake.
    let _ =
        unsafe { nix::sys::signal::signal(Signal::SIGINT, nix::sys::signal::SigHandler::SigIgn) };
}

/// Ignores SIGXFSZ, so that a write past the file-size limit (`ulimit -f`) fails with
/// EFBIG, reported like a full disk, instead of killing the process without a word.
pub(crate) fn ignore_file_size_signal() {
    // SAFETY: SIG_IGN installs no handler code, so no async-signal-safety rule is at stake.
    let _ =
        unsafe { nix::sys::signal::signal(Signal::SIGXFSZ, nix::sys::signal::SigHandler::SigIgn) };
}

/// Sends SIGTERM to `pid`, ignoring a process that is already gone.
pub(crate) fn terminate(pid: u32) {
    let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
}

/// The soft and hard limits on open files (`ulimit -n`).
pub(crate) fn open_file_limit() -> io::Result<(u64, u64)> {
    Ok(getrlimit(Resource::RLIMIT_NOFILE)?)
}

/// Raises the soft open-file limit to `want` (at most the hard limit). Returns the new soft
/// limit.
pub(crate) fn raise_open_file_limit(want: u64) -> io::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= want {
        return Ok(soft);
    }
    let new_soft = want.min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, new_soft, hard)?;
    Ok(new_soft)
}

/// Sets this process's soft open-file limit to `soft` (within the hard limit): raising or
/// lowering it.
pub(crate) fn set_open_file_limit(soft: u64) -> io::Result<()> {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, soft.min(hard), hard)?;
    Ok(())
}

/// The soft limit on this process's address space (`ulimit -v`) in bytes, if one is set.
pub(crate) fn address_space_limit() -> Option<u64> {
    match getrlimit(Resource::RLIMIT_AS) {
        Ok((soft, _)) if soft != libc::RLIM_INFINITY => Some(soft),
        _ => None,
    }
}

/// Bytes of address space this process has mapped now (`VmSize` in /proc/self/status).
pub(crate) fn address_space_in_use() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmSize:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The soft limit on processes and threads for this user (`ulimit -u`), if one is set,
/// whether or not it binds this process (root is exempt; see [`process_limit`]).
pub(crate) fn process_soft_limit() -> Option<u64> {
    match getrlimit(Resource::RLIMIT_NPROC) {
        Ok((soft, _)) if soft != libc::RLIM_INFINITY => Some(soft),
        _ => None,
    }
}

/// The soft limit on processes for this user (`ulimit -u`), if one is set and enforced.
pub(crate) fn process_limit() -> Option<u64> {
    if nix::unistd::geteuid().is_root() {
        // root is not held to RLIMIT_NPROC.
        return None;
    }
    process_soft_limit()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_process_counts_from_proc_agree_with_getrusage() {
        // Fault in 4 MiB so the counts move.
        let mut v = vec![0u8; 4 << 20];
        v.iter_mut().step_by(4096).for_each(|b| *b = 1);
        std::hint::black_box(&v);
        let proc = OsCounts::of_process(std::process::id()).expect("/proc is readable");
        let own = OsCounts::this_process().expect("getrusage");
        assert!(proc.minor_faults >= 1024, "{proc:?}");
        // Read one after the other: the later reading has at least the earlier's faults.
        assert!(
            own.minor_faults >= proc.minor_faults,
            "{own:?} against {proc:?}"
        );
        assert_eq!(OsCounts::of_process(u32::MAX), None, "no such process");
    }

    use super::*;
    use std::process::Command;

    #[test]
    fn this_process_has_a_plausible_age() {
        let age = process_age().expect("/proc tells");
        // The test binary started before this test, and not a day ago.
        assert!(age < Duration::from_secs(86_400), "{age:?}");
    }

    #[test]
    fn fork_is_refused_in_a_process_with_threads() {
        // The test harness runs this on a thread of its own, beside the main thread.
        let _other = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_secs(1)));
        assert!(thread_count().is_some_and(|n| n > 1));
        let e = ensure_single_threaded("--start fork", "use --start spawn").unwrap_err();
        assert!(e.to_string().contains("use --start spawn"), "{e}");
        let e = fork_child(|| 0).unwrap_err();
        assert!(e.to_string().contains("single-threaded"), "{e}");
    }

    #[test]
    fn os_counts_see_this_threads_first_touches() {
        let before = OsCounts::this_thread().unwrap();
        let process_before = OsCounts::this_process().unwrap();
        let mut v = vec![0u8; 64 << 20];
        for i in (0..v.len()).step_by(4096) {
            v[i] = 1;
        }
        std::hint::black_box(&v);
        let used = OsCounts::this_thread().unwrap().since(before);
        // 16384 pages touched: at least a few faults, whatever the page size or THP.
        assert!(used.minor_faults >= 16, "{used:?}");
        let process = OsCounts::this_process().unwrap().since(process_before);
        assert!(
            process.minor_faults >= used.minor_faults,
            "{process:?} {used:?}"
        );
        assert_eq!(used.since(used), OsCounts::default());
        assert_eq!(used.plus(OsCounts::default()), used);
        assert!(thread_cpu_ns() > 0);
    }

    #[test]
    fn usage_of_this_process_is_readable() {
        let (_, rss) = process_usage(std::process::id()).expect("our own /proc entry");
        assert!(rss > 0);
        assert!(!allowed_cpus().is_empty());
    }

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
    // The children are reaped through `Process` (waitpid), which clippy cannot see.
    #[allow(clippy::zombie_processes)]
    fn process_handle_reaps_and_reads_the_status() {
        let child = Command::new("sh").args(["-c", "exit 5"]).spawn().unwrap();
        let mut p = Process::from_pid(child.id());
        assert_eq!(p.wait().unwrap(), ExitCause::Exited(5));
        // Cached after reaping; kill is then a no-op.
        p.kill();
        assert_eq!(p.try_wait().unwrap(), Some(ExitCause::Exited(5)));

        let child = Command::new("sleep").arg("30").spawn().unwrap();
        let mut p = Process::from_pid(child.id());
        assert_eq!(p.try_wait().unwrap(), None);
        p.kill();
        assert_eq!(p.wait().unwrap().to_string(), "killed by SIGKILL");
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
