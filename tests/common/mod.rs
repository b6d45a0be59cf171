//! Helpers shared by the integration tests: run the real `procpool` binary with a deadline,
//! read its report, and check that nothing it started is left behind.
//!
//! Every run gets a unique `PROCPOOL_TEST_TAG` in its environment. Workers inherit the
//! environment, so after a run any process still carrying the tag in `/proc/<pid>/environ`
//! was started by that run and outlived it. Runs write stdout and stderr to anonymous files,
//! not pipes, so a stray worker holding the descriptor open can never block the test.

// Each test crate includes this module privately, so `pub` here means "for the test
// files"; the lint that asks for `pub(crate)` does not fit a shared module.
#![allow(unreachable_pub)]
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;

/// The binary under test.
pub const EXE: &str = env!("CARGO_BIN_EXE_procpool");

/// The environment variable that marks every process a run started.
pub const TAG_VAR: &str = "PROCPOOL_TEST_TAG";

/// How long one run of procpool may take before the test kills it (debug build, a loaded
/// 2-core machine, 10^7 elements: well under a second normally).
pub const RUN_DEADLINE: Duration = Duration::from_secs(120);

/// How long the kernel gets to finish tearing processes down before a leftover is a failure.
pub const TEARDOWN_DEADLINE: Duration = Duration::from_secs(2);

/// Exit codes of the CLI.
pub const EXIT_OK: i32 = 0;
/// The job failed (including a verification mismatch).
pub const EXIT_FAILED: i32 = 1;
/// Bad input; nothing started.
pub const EXIT_USAGE: i32 = 2;

/// A tag no other run (in this or any other test process) uses.
pub fn unique_tag() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "pp-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A `procpool` command line, ready to run with a deadline.
pub struct Procpool {
    cmd: Command,
    tag: String,
    deadline: Duration,
}

impl Procpool {
    /// `procpool ARGS...`, tagged.
    pub fn new(args: &[&str]) -> Self {
        let tag = unique_tag();
        let mut cmd = Command::new(EXE);
        cmd.args(args).env(TAG_VAR, &tag).stdin(Stdio::null());
        Procpool {
            cmd,
            tag,
            deadline: RUN_DEADLINE,
        }
    }

    /// `PREFIX... procpool ARGS...`, tagged: procpool run by another command that ends by
    /// executing it (`taskset -c 0`, `sh -c '...; exec "$@"'`).
    pub fn wrapped(prefix: &[&str], args: &[&str]) -> Self {
        let tag = unique_tag();
        let mut cmd = Command::new(prefix[0]);
        cmd.args(&prefix[1..])
            .arg(EXE)
            .args(args)
            .env(TAG_VAR, &tag)
            .stdin(Stdio::null());
        Procpool {
            cmd,
            tag,
            deadline: RUN_DEADLINE,
        }
    }

    /// Sets an environment variable for procpool (and so for its workers).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.cmd.env(key, value);
        self
    }

    /// Overrides [`RUN_DEADLINE`].
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Limits `resource` (soft and hard limit both `limit`) for procpool and its workers, as
    /// `ulimit` does in a shell.
    pub fn rlimit(mut self, resource: nix::sys::resource::Resource, limit: u64) -> Self {
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure runs in the forked child before exec and only calls
        // setrlimit, a plain system call that allocates nothing and takes no lock.
        unsafe {
            self.cmd.pre_exec(move || {
                nix::sys::resource::setrlimit(resource, limit, limit).map_err(std::io::Error::from)
            });
        }
        self
    }

    /// Runs procpool in `dir`.
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.cmd.current_dir(dir);
        self
    }

    /// Runs to completion (at most [`RUN_DEADLINE`]); on the deadline kills procpool and
    /// everything it started, then fails the test.
    pub fn run(self) -> Outcome {
        self.run_while(|_, _| {})
    }

    /// Like [`Procpool::run`], calling `during(pid, tag)` while procpool runs: the place to
    /// send signals or kill workers from outside. If `during` panics, procpool and
    /// everything it started are killed and reaped before the panic goes on.
    pub fn run_while(mut self, during: impl FnOnce(u32, &str)) -> Outcome {
        let mut out = tempfile::tempfile().expect("temp file for stdout");
        let mut err = tempfile::tempfile().expect("temp file for stderr");
        self.cmd
            .stdout(out.try_clone().expect("dup stdout file"))
            .stderr(err.try_clone().expect("dup stderr file"));
        let mut child = self
            .cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {EXE}: {e}"));
        let pid = child.id();
        let tag = self.tag.clone();
        if let Err(panic) =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| during(pid, &tag)))
        {
            let _ = child.kill();
            let _ = child.wait();
            kill_tagged(&tag);
            std::panic::resume_unwind(panic);
        }
        let status = wait_child(&mut child, self.deadline);
        let read = |f: &mut fs::File| {
            let mut s = String::new();
            f.seek(SeekFrom::Start(0)).expect("seek output file");
            f.read_to_string(&mut s).expect("procpool output is UTF-8");
            s
        };
        let outcome = Outcome {
            args: format!("{:?}", self.cmd.get_args().collect::<Vec<_>>()),
            code: status.and_then(|s| s.code()),
            stdout: read(&mut out),
            stderr: read(&mut err),
            tag: self.tag,
        };
        if status.is_none() {
            kill_tagged(&outcome.tag);
            panic!(
                "procpool {} did not finish within {:?}; killed it.\nstderr:\n{}",
                outcome.args, self.deadline, outcome.stderr
            );
        }
        outcome
    }
}

impl Procpool {
    /// Starts procpool and returns at once. The [`Running`] handle kills and reaps it, and
    /// everything it started, when dropped.
    pub fn spawn(mut self) -> Running {
        let child = self
            .cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {EXE}: {e}"));
        Running {
            args: format!("{:?}", self.cmd.get_args().collect::<Vec<_>>()),
            child: Some(child),
            tag: self.tag,
        }
    }
}

/// A procpool process still running.
pub struct Running {
    /// The arguments, for messages.
    pub args: String,
    /// `None` once reaped.
    child: Option<Child>,
    /// The tag in the environment of procpool and its workers.
    pub tag: String,
}

impl Running {
    /// procpool's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Processes carrying this run's tag: procpool and its workers.
    pub fn processes(&self) -> Vec<(u32, String)> {
        tagged_processes(&self.tag)
    }

    /// Sends `signal` to procpool itself.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(child) = &self.child {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            nix::sys::signal::kill(pid, signal).expect("signal procpool");
        }
    }

    /// Waits at most `deadline` for procpool to end, and reaps it; past the deadline, kills
    /// it and returns `None`.
    pub fn wait(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        wait_child(&mut child, deadline)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        kill_tagged(&self.tag);
    }
}

/// Runs `procpool ARGS...` with a deadline.
pub fn procpool(args: &[&str]) -> Outcome {
    Procpool::new(args).run()
}

/// What one run of procpool did.
#[derive(Debug)]
pub struct Outcome {
    /// The arguments, for messages.
    pub args: String,
    /// The exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
    /// The tag in the environment of procpool and its workers.
    pub tag: String,
}

impl Outcome {
    /// Asserts the exit code, showing the output when it is not the expected one.
    pub fn assert_code(&self, expected: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(expected),
            "procpool {}: expected exit code {expected}\nstdout:\n{}\nstderr:\n{}",
            self.args,
            self.stdout,
            self.stderr
        );
        self
    }

    /// stdout parsed as exactly one JSON object on one line.
    pub fn json(&self) -> serde_json::Value {
        assert!(
            self.stdout.ends_with('\n') && self.stdout.lines().count() == 1,
            "procpool {}: --json stdout must be exactly one line, got:\n{}",
            self.args,
            self.stdout
        );
        let value: serde_json::Value = serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "procpool {}: stdout is not one JSON value ({e}):\n{}",
                self.args, self.stdout
            )
        });
        assert!(
            value.is_object(),
            "procpool {}: stdout is not a JSON object: {value}",
            self.args
        );
        value
    }

    /// The single non-empty line on stderr (fails the test if there are more, or none).
    pub fn one_line_error(&self) -> &str {
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert!(
            lines.len() == 1 && !lines[0].trim().is_empty(),
            "procpool {}: stderr must be exactly one non-empty line, got {} lines:\n{}",
            self.args,
            lines.len(),
            self.stderr
        );
        lines[0]
    }
}

/// What the report's `checksum` is, computed here independently: the first 16 hex digits of
/// the SHA-256 of the elements' bytes in index order (little-endian).
pub fn checksum_of<T: procpool::bytemuck::Pod>(xs: &[T]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(procpool::bytemuck::cast_slice::<T, u8>(xs));
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The checksum of `squares n`: the output `i * i` (u64, wrapping) for `i < n`.
pub fn squares_checksum(n: u64) -> String {
    let squares: Vec<u64> = (0..n).map(|i| i.wrapping_mul(i)).collect();
    checksum_of(&squares)
}

/// Every process id listed in /proc right now.
pub fn all_pids() -> Vec<u32> {
    // Without /proc every leak check would see nothing and pass: fail instead.
    let entries = fs::read_dir("/proc").expect("the tests need /proc to find processes");
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .collect()
}

/// Processes whose environment carries `TAG_VAR=tag`: pid and command line.
pub fn tagged_processes(tag: &str) -> Vec<(u32, String)> {
    let needle = format!("{TAG_VAR}={tag}");
    all_pids()
        .into_iter()
        .filter(|pid| {
            // A process may vanish between listing and reading; that is fine.
            fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
                environ
                    .split(|&b| b == 0)
                    .any(|var| var == needle.as_bytes())
            })
        })
        .map(|pid| (pid, cmdline(pid)))
        .collect()
}

/// The workers among a tagged run's processes: spawned ones by their hidden first
/// argument, forked ones (fork server, `--start fork`) by their name, `procpool-w<id>`.
pub fn tagged_workers(tag: &str) -> Vec<u32> {
    tagged_processes(tag)
        .into_iter()
        .filter(|&(pid, ref cmd)| {
            cmd.contains("__procpool_worker")
                || comm_and_ppid(pid).is_some_and(|(comm, _)| comm.starts_with("procpool-w"))
        })
        .map(|(pid, _)| pid)
        .collect()
}

/// The command line of `pid`, spaces between arguments (empty for a zombie).
pub fn cmdline(pid: u32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .split('\0')
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// SIGKILLs every process carrying the tag (cleanup after a failure).
pub fn kill_tagged(tag: &str) {
    for (pid, _) in tagged_processes(tag) {
        kill(pid);
    }
}

/// SIGKILLs `pid`, ignoring a process that is already gone.
pub fn kill(pid: u32) {
    signal(pid, nix::sys::signal::Signal::SIGKILL);
}

/// Sends `sig` to `pid`, ignoring a process that is already gone.
pub fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

/// Polls `done` until it returns true or `deadline` passes; returns its last answer.
pub fn wait_until(deadline: Duration, mut done: impl FnMut() -> bool) -> bool {
    let began = Instant::now();
    loop {
        if done() {
            return true;
        }
        if began.elapsed() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Asserts that no process started by the run tagged `tag` remains (after a short grace
/// period for the kernel's teardown). Kills any leftover before failing.
pub fn assert_no_tagged_process(tag: &str, what: &str) {
    if wait_until(TEARDOWN_DEADLINE, || tagged_processes(tag).is_empty()) {
        return;
    }
    let left = tagged_processes(tag);
    kill_tagged(tag);
    panic!("{what}: processes started by procpool are still running: {left:?}");
}

/// Entry names in `dir` (empty if it cannot be read).
pub fn dir_entries(dir: &Path) -> BTreeSet<OsString> {
    fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default()
}

/// Entries of `/dev/shm` (named POSIX shared memory and semaphores).
pub fn shm_entries() -> BTreeSet<OsString> {
    dir_entries(Path::new("/dev/shm"))
}

/// A place to run procpool and then check that it left nothing behind: a fresh, empty
/// `TMPDIR` (ipc-channel puts its one-shot handshake sockets there), a fresh working
/// directory, and a snapshot of `/dev/shm` taken before the run.
pub struct Sandbox {
    tmp: TempDir,
    cwd: TempDir,
    shm_before: BTreeSet<OsString>,
    /// `--dispatch` given to every command, if set.
    dispatch: Option<&'static str>,
}

/// Defines, for each function `name(dispatch: &'static str)`, the tests `name::queue` and
/// `name::channel`: the same scenario on both ways of handing out chunks.
#[macro_export]
macro_rules! on_both_dispatches {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn queue() {
                    super::$name("queue")
                }
                #[test]
                fn channel() {
                    super::$name("channel")
                }
            }
        )*
    };
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    /// A fresh sandbox.
    pub fn new() -> Self {
        Sandbox {
            tmp: tempfile::Builder::new()
                .prefix("procpool-test-tmpdir")
                .tempdir()
                .expect("temp dir for TMPDIR"),
            cwd: tempfile::Builder::new()
                .prefix("procpool-test-cwd")
                .tempdir()
                .expect("temp dir for the working directory"),
            shm_before: shm_entries(),
            dispatch: None,
        }
    }

    /// A fresh sandbox whose commands all run with `--dispatch DISPATCH`.
    pub fn with_dispatch(dispatch: &'static str) -> Self {
        Sandbox {
            dispatch: Some(dispatch),
            ..Self::new()
        }
    }

    /// The directory given to procpool as `TMPDIR`.
    pub fn tmpdir(&self) -> &Path {
        self.tmp.path()
    }

    /// `procpool ARGS...` with this sandbox's `TMPDIR` and working directory.
    pub fn command(&self, args: &[&str]) -> Procpool {
        let mut all: Vec<&str> = args.to_vec();
        if let Some(dispatch) = self.dispatch {
            all.extend(["--dispatch", dispatch]);
        }
        Procpool::new(&all)
            .env("TMPDIR", self.tmp.path())
            .current_dir(self.cwd.path())
    }

    /// Runs `procpool ARGS...` in the sandbox.
    pub fn run(&self, args: &[&str]) -> Outcome {
        self.command(args).run()
    }

    /// Asserts that the run left no process, no file in `TMPDIR` or the working directory,
    /// and no new entry in `/dev/shm`.
    pub fn assert_nothing_left(&self, outcome: &Outcome) {
        self.assert_nothing_left_by(&outcome.tag, &outcome.args);
    }

    /// For a run that could not clean up (SIGKILLed, or a second signal that exits at
    /// once): no process remains, and the only thing in `TMPDIR` is the pool's private
    /// directory, which the next procpool in this `TMPDIR` sweeps away.
    pub fn assert_swept_after_sudden_death(&self, tag: &str, args: &str) {
        assert_no_tagged_process(tag, &format!("procpool {args}"));
        let left = dir_entries(self.tmp.path());
        assert!(
            left.iter()
                .all(|name| name.to_string_lossy().starts_with("procpool-")),
            "procpool {args}: left {left:?} in TMPDIR besides its private directory"
        );
        let next = self.run(&["--workers", "1", "squares", "10"]);
        next.assert_code(0);
        self.assert_nothing_left(&next);
    }

    /// Like [`Sandbox::assert_nothing_left`], for the run tagged `tag` with arguments `args`.
    pub fn assert_nothing_left_by(&self, tag: &str, args: &str) {
        let what = format!("procpool {args}");
        assert_no_tagged_process(tag, &what);
        for (name, dir) in [("TMPDIR", self.tmp.path()), ("cwd", self.cwd.path())] {
            let empty = wait_until(TEARDOWN_DEADLINE, || dir_entries(dir).is_empty());
            assert!(
                empty,
                "{what}: left {:?} in its {name} {}",
                dir_entries(dir),
                dir.display()
            );
        }
        // Another test's run may hold a /dev/shm entry for a moment; only one that stays
        // is a leak.
        let new_shm = || -> Vec<OsString> {
            shm_entries()
                .difference(&self.shm_before)
                .cloned()
                .collect()
        };
        let clean = wait_until(TEARDOWN_DEADLINE, || new_shm().is_empty());
        assert!(clean, "{what}: new entries in /dev/shm: {:?}", new_shm());
    }
}

/// Children of this test process (`ppid == std::process::id()`), zombies included:
/// pid and `comm` (the executable's or script's base name, at most 15 bytes).
pub fn children_of_this_process() -> Vec<(u32, String)> {
    let me = std::process::id();
    all_pids()
        .into_iter()
        .filter_map(|pid| match comm_and_ppid(pid) {
            Some((comm, ppid)) if ppid == me => Some((pid, comm)),
            _ => None,
        })
        .collect()
}

/// `comm` and parent pid of `pid`, from `/proc/<pid>/stat`.
pub fn comm_and_ppid(pid: u32) -> Option<(String, u32)> {
    proc_stat(pid).map(|stat| (stat.comm, stat.ppid))
}

/// The name (`comm`) of a program's fork server.
pub const SERVER_COMM: &str = "procpool-server";

/// What a test reads of `/proc/<pid>/stat`.
#[derive(Debug, Clone)]
pub struct ProcStat {
    /// The name (at most 15 bytes).
    pub comm: String,
    /// `R`, `S`, `T` (stopped), `Z` (zombie)...
    pub state: char,
    /// The parent's pid.
    pub ppid: u32,
    /// The process group.
    pub pgrp: u32,
    /// When it started, in clock ticks after boot.
    pub starttime: u64,
}

/// `/proc/<pid>/stat`, or `None` once the process is gone.
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid pgrp ...": comm may contain spaces and parentheses.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_string();
    let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // Fields 3 (state), 4 (ppid), 5 (pgrp) and 22 (starttime) of proc(5).
    Some(ProcStat {
        comm,
        state: rest.first()?.chars().next()?,
        ppid: rest.get(1)?.parse().ok()?,
        pgrp: rest.get(2)?.parse().ok()?,
        starttime: rest.get(19)?.parse().ok()?,
    })
}

/// Whether `pid` has ended: gone, or a zombie not yet reaped. (Not "its command line is
/// empty": it is, too, for a moment in the middle of its `execve`.)
pub fn ended(pid: u32) -> bool {
    proc_stat(pid).is_none_or(|stat| stat.state == 'Z' || stat.state == 'X')
}

/// How many threads `pid` has (`/proc/<pid>/task`), or `None` once it is gone.
pub fn thread_count(pid: u32) -> Option<usize> {
    Some(fs::read_dir(format!("/proc/{pid}/task")).ok()?.count())
}

/// The fork server among a tagged run's processes: the oldest process named
/// [`SERVER_COMM`]. A worker the server has just forked bears the server's name for the
/// few instructions before it names itself, so the name alone may match two processes;
/// the server is forked before any worker, so it is the oldest.
pub fn tagged_server(tag: &str) -> Option<u32> {
    tagged_processes(tag)
        .into_iter()
        .filter_map(|(pid, _)| proc_stat(pid).map(|stat| (pid, stat)))
        .filter(|(_, stat)| stat.comm == SERVER_COMM)
        .min_by_key(|&(pid, ref stat)| (stat.starttime, pid))
        .map(|(pid, _)| pid)
}

/// True while `pid` is a child of this process, running or a zombie not yet reaped.
pub fn is_our_child(pid: u32) -> bool {
    comm_and_ppid(pid).is_some_and(|(_, ppid)| ppid == std::process::id())
}

/// Writes an executable shell script `name` with `body` into `dir`.
///
/// The file is written by a short-lived `sh`, never opened for writing in this process:
/// otherwise a worker forked by a test running in another thread could inherit the
/// write descriptor for a moment, and executing the script would fail with ETXTBSY.
pub fn write_script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(r#"printf '%s' "$2" > "$1" && chmod 755 "$1""#)
        .arg("sh")
        .arg(&path)
        .arg(body)
        .stdin(Stdio::null())
        .spawn()
        .expect("run /bin/sh to write a script");
    let status = wait_child(&mut child, Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "writing {} failed: {status:?}",
        path.display()
    );
    path
}

/// Waits for `child` at most `deadline`; past it, kills it. Always reaps it. `None` when it
/// had to be killed.
pub fn wait_child(child: &mut Child, deadline: Duration) -> Option<ExitStatus> {
    let began = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if began.elapsed() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// Relative difference test for floats computed in two places.
pub fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

/// How long one library job of a test may take before the test fails instead of hanging.
pub const POOL_JOB_DEADLINE: Duration = Duration::from_secs(60);

/// Runs `body` with the pool on another thread and gives back the pool and what `body`
/// returned; past [`POOL_JOB_DEADLINE`], kills the pool's workers (those it had when
/// handed over) and fails the test.
pub fn within<R: Send + 'static>(
    pool: procpool::Pool,
    body: impl FnOnce(&mut procpool::Pool) -> R + Send + 'static,
) -> (procpool::Pool, R) {
    let pids = pool.pids();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut pool = pool;
        let r = body(&mut pool);
        let _ = tx.send((pool, r));
    });
    match rx.recv_timeout(POOL_JOB_DEADLINE) {
        Ok(done) => done,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            for pid in pids {
                kill(pid);
            }
            panic!("the job took longer than {POOL_JOB_DEADLINE:?}: it hung");
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("the job's thread panicked"),
    }
}

/// Appends this process's id to `log` in one write (appends from several processes never
/// interleave): what a test workload's `setup` calls, so that the test can count set-ups.
pub fn log_setup(log: &Path) {
    use std::io::Write;
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("the set-up log");
    file.write_all(format!("{}\n", std::process::id()).as_bytes())
        .expect("write the set-up log");
}

/// The process ids [`log_setup`] wrote to `log`, in order.
pub fn setups(log: &Path) -> Vec<u32> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| l.parse().expect("a pid"))
        .collect()
}
