//! `procpool --ranks K`: starting `mpirun` on procpool's own command line and seeing it
//! through to its end ([`run_mpirun`]), with a private directory for the run and, in it, a
//! state file where rank 0 writes what the job is doing.
//!
//! mpirun runs in a process group of its own, with a death signal, so that a Ctrl-C reaches
//! procpool only and procpool's death ends mpirun; procpool passes SIGINT and SIGTERM on
//! itself, because mpirun answers its own by exiting 1 whatever the ranks did (Open MPI's
//! choice, fixed in its launcher), and says how mpirun ended in an [`MpirunEnd`] the
//! command turns into its exit codes.
//!
//! The directory (`$TMPDIR/procpool-mpi-<pid>-<random>`, 0700) is mpirun's `TMPDIR`, so
//! Open MPI's session directory (`ompi.<host>.<uid>`) goes inside it and leaves with it,
//! however mpirun ended. A run killed outright leaves it; the next run removes every such
//! directory of ours whose process is gone.
//!
//! The state file exists because a rank lost after every chunk is done may be named by
//! nobody: rank 0 itself, or what rank 0 prints while mpirun stops the job (mpirun drops
//! the ranks' output then). Rank 0 writes its phase, the ranks (pid, start time, host) and
//! its last error there; the launcher watches the ranks on its host while mpirun runs and
//! says which one died, and when.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::engine::interrupt::Interrupt;
use crate::error::{Error, Phase, Result};

/// The variable that tells rank 0 where the state file is.
const STATE_VAR: &str = "PROCPOOL_MPI_STATE";
/// The name every run directory starts with.
const PREFIX: &str = "procpool-mpi-";

/// Rank 0's state file, when the launcher asked for one.
static STATE: Mutex<Option<State>> = Mutex::new(None);

/// What rank 0 writes: everything, again, at each change (a small file).
struct State {
    path: PathBuf,
    phase: Phase,
    ranks: Vec<(u32, u64, String)>,
    error: Option<String>,
}

impl State {
    /// Writes the file; whether it is there.
    fn write(&self) -> bool {
        let mut text = format!("phase {}\n", phase_name(self.phase));
        for (rank, (pid, started, host)) in self.ranks.iter().enumerate() {
            text += &format!("rank {rank} {pid} {started} {host}\n");
        }
        if let Some(e) = &self.error {
            text += &format!("error {}\n", e.replace('\n', " "));
        }
        // Written beside, then renamed: the launcher never reads half a file.
        let new = self.path.with_extension("new");
        std::fs::write(&new, text).is_ok() && std::fs::rename(&new, &self.path).is_ok()
    }
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Start => "start",
        Phase::Pool => "pool",
        Phase::Baseline => "baseline",
        Phase::Verify => "verify",
        Phase::Threads => "threads",
        Phase::Single => "single",
    }
}

fn phase_named(name: &str) -> Option<Phase> {
    [Phase::Start, Phase::Pool, Phase::Baseline, Phase::Verify]
        .into_iter()
        .find(|p| phase_name(*p) == name)
}

/// On rank 0, started by [`Launch`]: records the ranks (pid, start time, host; rank 0
/// first) and starts the state file.
pub(super) fn record_ranks(ranks: Vec<(u32, u64, String)>) {
    let Some(path) = std::env::var_os(STATE_VAR).map(PathBuf::from) else {
        return;
    };
    let state = State {
        path,
        phase: Phase::Start,
        ranks,
        error: None,
    };
    if !state.write() {
        return;
    }
    *STATE.lock().unwrap_or_else(|p| p.into_inner()) = Some(state);
}

/// On rank 0: the job entered `phase`.
pub(super) fn record_phase(phase: Phase) {
    if let Some(state) = STATE.lock().unwrap_or_else(|p| p.into_inner()).as_mut()
        && state.phase != phase
    {
        state.phase = phase;
        let _ = state.write();
    }
}

/// On rank 0: the job stopped with `e`; true when the launcher will say so (its state file
/// has it), so that rank 0 need not print it where mpirun may drop it.
pub(super) fn record_stop(e: &Error) -> bool {
    let mut state = STATE.lock().unwrap_or_else(|p| p.into_inner());
    let Some(state) = state.as_mut() else {
        return false;
    };
    state.error = Some(e.to_string());
    if !state.write() {
        state.error = None;
    }
    state.error.is_some()
}

/// Whether this process, rank 0 under `procpool --ranks`, left its error for the launcher
/// to print: the caller then prints nothing (mpirun may be dropping the ranks' output
/// while it stops the job) and exits with the error's code.
pub fn error_left_to_launcher() -> bool {
    STATE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .is_some_and(|s| s.error.is_some())
}

/// How an `mpirun` started by [`run_mpirun`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MpirunEnd {
    /// mpirun exited 0: the job ran and verified.
    Finished,
    /// mpirun exited 2: a rank refused the input, and said why on stderr.
    Refused,
    /// The job failed: a rank died (mpirun exits with its status, or 128 + its signal) or
    /// rank 0 stopped it. What stopped it, when rank 0 left it for the launcher or a rank
    /// on this host was seen gone; `None` when rank 0 printed its own error.
    Failed(Option<String>),
    /// A SIGINT or SIGTERM (`signal`) was passed on to mpirun, which stopped every rank;
    /// `killed` when a second one came before mpirun was done, and mpirun and its ranks
    /// were killed outright.
    Interrupted {
        /// The signal's number: the first one, or with `killed` the second.
        signal: i32,
        /// Whether a second signal killed mpirun and its ranks (SIGKILL to each).
        killed: bool,
    },
}

/// Whether this process is a rank of an MPI job (Open MPI, or another PMI launcher).
pub fn under_mpirun() -> bool {
    crate::engine::sys::under_mpirun()
}

/// Runs `mpirun -np ranks program args` (adding `--oversubscribe` when `ranks` exceeds the
/// CPUs), waits for it, and says how it ended.
///
/// Meant for `program` being this same program, whose ranks then report through the state
/// file of a private run directory. SIGINT and SIGTERM are taken by this thread, which must
/// be the process's only one, and passed on to mpirun once (a signal `interrupt` already
/// saw is passed on at once); a second one kills mpirun and its ranks. If this process is
/// killed outright, mpirun gets SIGTERM from the kernel and stops the ranks. Either way the
/// run's directory, with Open MPI's session directory in it, is removed before this returns.
///
/// Refused (`ranks`) under mpirun, and where mpirun is not installed.
pub fn run_mpirun(
    ranks: u64,
    program: &Path,
    args: &[OsString],
    interrupt: &Interrupt,
) -> Result<MpirunEnd> {
    use std::os::unix::process::CommandExt;
    if under_mpirun() {
        return Err(Error::invalid(
            "ranks",
            "`ranks` starts mpirun itself: under mpirun, drop it (mpirun's -np sets the ranks)",
        ));
    }
    // This process starts no worker of its own: the fork server `init` started is ended
    // (mpirun's ranks have none: they are ranks from the start).
    crate::engine::forkserver::stop();
    let cannot = |what: &str, e: &dyn std::fmt::Display| {
        Error::Io(std::io::Error::other(format!("{what}: {e}")))
    };
    // SIGINT and SIGTERM are taken here, one by one, instead of by the handlers that make
    // a second one exit at once: this process cleans up after mpirun first.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals
        .thread_block()
        .map_err(|e| cannot("cannot take SIGINT and SIGTERM", &e))?;
    let signal_fd = SignalFd::with_flags(&signals, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| cannot("cannot take SIGINT and SIGTERM", &e))?;
    let mut launch = Launch::create()?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let mut mpirun = std::process::Command::new("mpirun");
    mpirun.arg("-np").arg(ranks.to_string());
    if ranks > cpus {
        mpirun.arg("--oversubscribe");
    }
    // mpirun in a process group of its own: a Ctrl-C reaches this process only, and mpirun
    // gets one SIGTERM from it (a second signal within 5 s makes mpirun exit without
    // stopping the ranks). Its stdin is not the terminal, which only the foreground group
    // may read.
    mpirun
        .arg(program)
        .args(args)
        .envs(launch.env())
        .stdin(std::process::Stdio::null())
        .process_group(0);
    // If this process is killed outright (SIGKILL, which it cannot pass on), mpirun gets
    // SIGTERM from the kernel and stops the ranks: no job runs on without its launcher.
    // The child inherits the mask set above: mpirun must take SIGINT and SIGTERM again.
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed: it makes one prctl and one sigprocmask system
    // call (pthread_sigmask) and allocates nothing.
    unsafe {
        mpirun.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)?;
            signals.thread_unblock().map_err(std::io::Error::from)
        })
    };
    let mut child = mpirun.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::invalid(
            "ranks",
            "`ranks` runs mpirun, which is not installed: apt-get install openmpi-bin \
             libopenmpi-dev (docs/mpi.md)",
        ),
        _ => cannot("cannot start mpirun", &e),
    })?;
    let mpirun_pid = nix::unistd::Pid::from_raw(child.id() as i32);
    // A signal that arrived before the mask was set went to the handlers.
    let mut passed_on = interrupt.requested();
    if passed_on.is_some() {
        let _ = nix::sys::signal::kill(mpirun_pid, Signal::SIGTERM);
    }
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| cannot("cannot wait for mpirun", &e))?
        {
            break status;
        }
        launch.watch();
        if let Ok(Some(info)) = signal_fd.read_signal() {
            let signal = info.ssi_signo as i32;
            if passed_on.is_some() {
                // The second: mpirun and its ranks now, then this process.
                kill_mpirun(child.id());
                let _ = child.wait();
                return Ok(MpirunEnd::Interrupted {
                    signal,
                    killed: true,
                });
            }
            let _ = nix::sys::signal::kill(mpirun_pid, Signal::SIGTERM);
            passed_on = Some(signal);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if let Some(signal) = passed_on {
        return Ok(MpirunEnd::Interrupted {
            signal,
            killed: false,
        });
    }
    Ok(match status.code() {
        Some(0) => MpirunEnd::Finished,
        Some(2) => MpirunEnd::Refused,
        code => MpirunEnd::Failed(launch.failure(code)),
    })
}

/// The run directory and state file of one `mpirun` that procpool starts (`--ranks K`).
///
/// Create it before mpirun, pass mpirun [`Launch::env`], call [`Launch::watch`] while it
/// runs, and after a failed run print [`Launch::failure`]. Dropping it removes the
/// directory, with Open MPI's session directory inside.
#[derive(Debug)]
pub(crate) struct Launch {
    dir: tempfile::TempDir,
    host: String,
    /// The first rank seen gone on this host, and the phase then.
    lost: Option<Error>,
}

impl Launch {
    /// Removes what killed runs left in the temp directory, then makes this run's own
    /// directory there (0700, ours).
    pub(crate) fn create() -> Result<Self> {
        let parent = std::env::temp_dir();
        // Run directories left by a SIGKILLed procpool.
        crate::engine::pool::sweep_abandoned(&parent, PREFIX);
        let unusable = |why: String| {
            Error::Io(std::io::Error::other(format!(
                "cannot create mpirun's private directory in {} ({why}): set TMPDIR to a \
                 writable directory",
                parent.display()
            )))
        };
        let dir = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{}-", std::process::id()))
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(&parent)
            .map_err(|e| unusable(e.to_string()))?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .map_err(|e| unusable(e.to_string()))?;
        // The name MPI gives rank 0's host (Open MPI's processor name is the host name).
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        Ok(Launch {
            dir,
            host,
            lost: None,
        })
    }

    /// The run's directory.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The environment mpirun gets: `TMPDIR` is the run's directory (Open MPI's session
    /// directory goes there), and rank 0 learns where its state file is.
    pub(crate) fn env(&self) -> [(&'static str, PathBuf); 2] {
        [
            ("TMPDIR", self.dir().to_path_buf()),
            (STATE_VAR, self.state_path()),
        ]
    }

    fn state_path(&self) -> PathBuf {
        self.dir().join("state")
    }

    fn read(&self) -> Option<Read> {
        let text = std::fs::read_to_string(self.state_path()).ok()?;
        let mut read = Read {
            phase: Phase::Start,
            ranks: Vec::new(),
            error: None,
        };
        for line in text.lines() {
            let (key, rest) = line.split_once(' ').unwrap_or((line, ""));
            match key {
                "phase" => read.phase = phase_named(rest).unwrap_or(Phase::Start),
                "rank" => {
                    let f: Vec<&str> = rest.splitn(4, ' ').collect();
                    if let [_, pid, started, host] = f[..]
                        && let (Ok(pid), Ok(started)) = (pid.parse(), started.parse())
                    {
                        read.ranks.push((pid, started, host.to_string()));
                    }
                }
                "error" => read.error = Some(rest.to_string()),
                _ => {}
            }
        }
        Some(read)
    }

    /// Looks at the ranks on this host once: the first seen gone is remembered, with what
    /// the job was doing then. Call it every few tens of milliseconds while mpirun runs.
    pub(crate) fn watch(&mut self) {
        if self.lost.is_some() {
            return;
        }
        let Some(read) = self.read() else {
            return;
        };
        let gone = |(pid, started, host): &(u32, u64, String)| {
            *host == self.host
                && crate::engine::sys::process_started(*pid)
                    .is_none_or(|(s, zombie)| zombie || s != *started)
        };
        // Rank 0 first: when it is gone with another, it is the one that cannot say so.
        if let Some((rank, (pid, _, host))) = read.ranks.iter().enumerate().find(|(_, r)| gone(r)) {
            self.lost = Some(Error::RankLost {
                rank,
                pid: *pid,
                host: host.clone(),
                chunk: None,
                during: Some(read.phase),
            });
        }
    }

    /// After mpirun failed with exit code `code`: what rank 0 said stopped the job, or
    /// else, when a rank was killed by a signal (mpirun exits with 128 + its number), the
    /// rank seen gone and when; `None` when neither is known (rank 0 printed its own error).
    pub(crate) fn failure(&mut self, code: Option<i32>) -> Option<String> {
        self.watch();
        match self.read().and_then(|r| r.error) {
            Some(error) => Some(error),
            // Ranks that end by themselves (a failed job) are not lost ones.
            None if code.is_some_and(|c| c > 128) => self.lost.as_ref().map(|e| e.to_string()),
            None => None,
        }
    }
}

/// Kills `mpirun` and every process it started on this host (its ranks, which it puts in
/// process groups of their own), with SIGKILL, and everything they started: for a second
/// interrupt, which ends the run at once.
pub(crate) fn kill_mpirun(mpirun: u32) {
    let parents: Vec<(u32, u32)> = super::processes()
        .into_iter()
        .filter_map(|(pid, dir)| {
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            // After the name in parentheses: the state, then the parent's pid.
            let ppid = stat[stat.rfind(')')? + 1..].split_whitespace().nth(1)?;
            Some((pid, ppid.parse().ok()?))
        })
        .collect();
    let mut doomed = vec![mpirun];
    let mut at = 0;
    while at < doomed.len() {
        let parent = doomed[at];
        doomed.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        at += 1;
    }
    // Children first: mpirun gone first would leave them orphans a moment longer.
    for pid in doomed.into_iter().rev() {
        if let Ok(pid) = i32::try_from(pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The state file, as the launcher reads it.
struct Read {
    phase: Phase,
    ranks: Vec<(u32, u64, String)>,
    error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_launcher_names_a_rank_gone_from_its_host_with_the_phase_rank_0_wrote() {
        let mut launch = Launch::create().expect("a run directory");
        let mode = std::fs::metadata(launch.dir()).expect("it exists").mode();
        assert_eq!(mode & 0o777, 0o700);
        let me = std::process::id();
        let started = crate::engine::sys::process_started(me)
            .expect("this process")
            .0;
        // A process that has ended and been reaped.
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("true runs");
        let gone = child.id();
        child.wait().expect("reaped");
        let mut state = State {
            path: launch.state_path(),
            phase: Phase::Pool,
            ranks: vec![
                (me, started, launch.host.clone()),
                (gone, 1, launch.host.clone()),
            ],
            error: None,
        };
        assert!(state.write());
        state.phase = Phase::Baseline;
        assert!(state.write());
        launch.watch();
        // Ranks that end by themselves are not named; one killed by a signal is.
        assert_eq!(launch.failure(Some(1)), None);
        let line = launch.failure(Some(137)).expect("a lost rank");
        assert!(
            line.starts_with(&format!("MPI rank 1 (pid {gone} on host ")),
            "{line}"
        );
        assert!(
            line.contains("died during the single-process baseline"),
            "{line}"
        );
        // What rank 0 said comes first.
        state.error = Some("MPI rank 2 died".into());
        assert!(state.write());
        assert_eq!(
            launch.failure(Some(137)).as_deref(),
            Some("MPI rank 2 died")
        );
        let dir = launch.dir().to_path_buf();
        drop(launch);
        assert!(!dir.exists(), "the run directory goes with it");
    }
}
