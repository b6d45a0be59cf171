//! What `procpool --ranks K` keeps around the `mpirun` it starts: a private directory for
//! the run, and in it a state file where rank 0 writes what the job is doing.
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

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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

/// The run directory and state file of one `mpirun` that procpool starts (`--ranks K`).
///
/// Create it before mpirun, pass mpirun [`Launch::env`], call [`Launch::watch`] while it
/// runs, and after a failed run print [`Launch::failure`]. Dropping it removes the
/// directory, with Open MPI's session directory inside.
#[derive(Debug)]
pub struct Launch {
    dir: tempfile::TempDir,
    host: String,
    /// The first rank seen gone on this host, and the phase then.
    lost: Option<Error>,
}

impl Launch {
    /// Removes what killed runs left in the temp directory, then makes this run's own
    /// directory there (0700, ours).
    pub fn create() -> Result<Self> {
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
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The environment mpirun gets: `TMPDIR` is the run's directory (Open MPI's session
    /// directory goes there), and rank 0 learns where its state file is.
    pub fn env(&self) -> [(&'static str, PathBuf); 2] {
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
    pub fn watch(&mut self) {
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
    pub fn failure(&mut self, code: Option<i32>) -> Option<String> {
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
pub fn kill_mpirun(mpirun: u32) {
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
