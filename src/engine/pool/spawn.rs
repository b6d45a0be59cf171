//! Starting workers: re-execute the worker binary, then a handshake with a deadline.
//!
//! The handshake runs the other way round from what one might expect, so that procpool
//! never accepts a connection from anyone:
//! 1. procpool starts the worker with `TMPDIR` set to the pool's private 0700 directory
//!    ([`PrivateDir`]), [`PRIVATE_DIR_ENV`] to that directory's device and inode, and the
//!    write end of a pipe that only this child inherits;
//! 2. the worker says on the pipe that it started, checks that its directory is the one
//!    procpool made, opens an ipc-channel one-shot server (its socket lands in the private
//!    directory) and writes the socket's path on the pipe, or why it cannot ([`Report`]);
//! 3. procpool checks that the path is a socket of its own user inside its own directory
//!    (the very directory it made, looked up through its descriptor), connects, and sends
//!    `Welcome` with a channel it made itself for the answers;
//! 4. the worker answers `Hello` (its protocol version) on that channel.
//!
//! Who is on the other end is known from the kernel, not from any message: the path comes
//! through a pipe only our child holds, the socket sits where only our user can reach, and
//! the answers come on a channel whose sending end only that worker received. The pid
//! procpool trusts is the one `spawn` returned; no message carries one.
//!
//! A start is a small state machine ([`Starting::poll`]) that never blocks, so the dispatch
//! loop can start a replacement while the other workers keep computing.

use std::io;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipc_channel::ipc::{IpcReceiver, IpcSender};

use super::Death;
use super::private_dir::{Misplaced, PrivateDir};
use crate::engine::interrupt::Interrupt;
use crate::engine::protocol::{
    FromWorker, PROTOCOL_VERSION, Registered, ToWorker, welcome_wire_size, wire_size,
};
use crate::engine::sys::{ExitCause, Process, SpawnSpec, Spawned};
use crate::engine::worker::{PRIVATE_DIR_ENV, Report, USER_TMPDIR_ENV, WorkerArgs};
use crate::error::{Doing, Error, Loss, LossCause, Phase, Result};
use crate::workload::Registry;

/// How often a start in progress is looked at when nothing else wakes the caller.
pub(crate) const START_TICK: Duration = Duration::from_millis(2);
/// A socket path is at most this long; a longer report is not a path of ours.
const REPORT_MAX: usize = 4096;

/// A worker that finished its handshake.
pub(crate) struct Started {
    pub id: usize,
    pub pid: u32,
    pub child: Process,
    pub tx: IpcSender<ToWorker>,
    pub rx: IpcReceiver<FromWorker>,
    /// The thread copying the worker's stdout and stderr to ours, prefixed.
    pub output: Option<Forwarder>,
    /// Messages and bytes of the handshake, for the IPC counters.
    pub handshake_ipc: super::Ipc,
    /// The workloads the worker can run (name, element size), as its `Hello` said; for a
    /// forked worker, the pool's registry.
    pub workloads: Vec<Registered>,
    /// Our end of the worker's private socket for input descriptors.
    pub inputs_socket: std::os::fd::OwnedFd,
}

/// Why a start failed.
#[derive(Debug)]
pub(crate) enum StartFailure {
    /// The worker ended before its handshake was done.
    Died {
        id: usize,
        pid: u32,
        cause: ExitCause,
        /// It said on its report pipe that it runs procpool's worker entry: its program
        /// does call `init`.
        reached_init: bool,
        /// The executable it ran.
        exe: PathBuf,
    },
    /// The worker did not finish its handshake in time; it was killed.
    TimedOut {
        id: usize,
        pid: u32,
        timeout: Duration,
    },
    /// The worker broke its handshake off (a system call failed, a signal interrupted
    /// it), as it said on its report pipe; it was killed.
    GaveUp {
        id: usize,
        pid: u32,
        errno: Option<i32>,
    },
    /// The worker said why it cannot start, and another start would fail the same way; it
    /// was killed.
    Failed {
        id: usize,
        pid: u32,
        message: String,
    },
    /// The worker said something procpool cannot accept; it was killed.
    Refused { message: String },
    /// The worker's executable could not be run (its exec failed): [`Error::Spawn`].
    Exec(Error),
}

impl StartFailure {
    /// Killed by a signal, hung, or broke its handshake off: worth another try. A worker
    /// that exited on its own, said it cannot start or spoke another protocol will do the
    /// same again.
    pub(crate) fn retryable(&self) -> bool {
        matches!(
            self,
            StartFailure::Died {
                cause: ExitCause::Signaled { .. },
                ..
            } | StartFailure::TimedOut { .. }
                | StartFailure::GaveUp { .. }
        )
    }

    /// The lost start as a [`Loss`] of worker `id`, process `pid`. (A refusal kills the
    /// worker, which ends it; its message is in [`StartFailure::into_error`].)
    pub(crate) fn loss(&self, id: usize, pid: u32) -> Loss {
        let cause = match self {
            StartFailure::Died { cause, .. } => LossCause::Ended(*cause),
            StartFailure::TimedOut { timeout, .. } => LossCause::NoHandshake(*timeout),
            StartFailure::GaveUp { errno, .. } => LossCause::GaveUp(*errno),
            StartFailure::Failed { .. } | StartFailure::Refused { .. } | StartFailure::Exec(_) => {
                LossCause::Ended(ExitCause::Unknown)
            }
        };
        Loss {
            worker: id,
            pid,
            cause,
            doing: Doing::Starting,
        }
    }

    /// The error a job fails with when this start cannot be retried.
    pub(crate) fn into_error(self) -> Error {
        match self {
            StartFailure::Died {
                id,
                pid,
                cause,
                reached_init,
                exe,
            } => {
                // A program that never reached procpool's worker entry may not call init().
                let hint = match cause {
                    ExitCause::Exited(_) if !reached_init => super::options::forgotten_entry(&exe),
                    _ => String::new(),
                };
                Error::HandshakeExit {
                    id,
                    pid,
                    cause,
                    hint,
                }
            }
            StartFailure::TimedOut { id, pid, timeout } => {
                Error::HandshakeTimeout { id, pid, timeout }
            }
            StartFailure::GaveUp { id, pid, errno } => Error::HandshakeFailed {
                id,
                pid,
                message: LossCause::GaveUp(errno).to_string(),
            },
            StartFailure::Failed { id, pid, message } => {
                Error::HandshakeFailed { id, pid, message }
            }
            StartFailure::Refused { message } => Error::Ipc(message),
            StartFailure::Exec(error) => error,
        }
    }
}

/// Where a start stands after [`Starting::poll`].
pub(crate) enum Progress {
    /// Still going.
    Pending,
    /// Done: the worker is ready for jobs.
    Ready(Started),
    /// Failed: the process is killed and reaped.
    Failed(StartFailure),
}

/// A spawned worker on its way through the handshake.
pub(crate) struct Starting {
    id: usize,
    pid: u32,
    /// `None` once reaped.
    child: Option<Process>,
    timeout: Duration,
    deadline: Instant,
    /// The read end of the pipe the worker reports its socket on (non-blocking).
    report: Option<io::PipeReader>,
    /// Bytes of the report read so far (a line not yet whole at the end).
    reported: Vec<u8>,
    /// Bytes read from the report pipe in all.
    reported_len: usize,
    /// The worker said it runs procpool's worker entry.
    announced: bool,
    /// The socket path the worker reported, until procpool connects.
    socket: Option<String>,
    /// The read end of the worker's output pipe, until it is handed to the output hub.
    output_pipe: Option<io::PipeReader>,
    /// The worker is a test binary, whose harness first prints a header of its own.
    test_header: bool,
    output: Option<Forwarder>,
    /// The pipe on which the child reports a failed exec, until it closes.
    exec_status: Option<io::PipeReader>,
    /// The executable, for the message when its exec failed.
    exe: PathBuf,
    /// After `Welcome` was sent: our end of each direction.
    connected: Option<(IpcSender<ToWorker>, IpcReceiver<FromWorker>)>,
    /// Our end of the worker's private socket for input descriptors.
    inputs_socket: Option<std::os::fd::OwnedFd>,
    /// A worker that needed no handshake, until the first poll hands it over.
    done: Option<Box<Started>>,
}

impl Starting {
    /// The process id `spawn` returned: the only one procpool trusts.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Starts copying the worker's output to our stderr. Separate from the spawn so that a
    /// batch of workers is forked before the output hub's thread exists (its stack would
    /// make the next fork slower).
    pub(crate) fn forward_output(&mut self) {
        if let Some(reader) = self.output_pipe.take() {
            self.output = forward_output(self.id, reader, self.test_header);
        }
    }

    /// A start that is already done (a worker the fork server made): its first
    /// [`poll`](Self::poll) hands it over.
    pub(crate) fn ready(started: Started) -> Starting {
        Starting {
            id: started.id,
            pid: started.pid,
            child: None,
            timeout: Duration::ZERO,
            deadline: far_future(),
            report: None,
            reported: Vec::new(),
            reported_len: 0,
            announced: true,
            socket: None,
            output_pipe: None,
            test_header: false,
            output: None,
            exec_status: None,
            exe: PathBuf::new(),
            connected: None,
            inputs_socket: None,
            done: Some(Box::new(started)),
        }
    }

    /// Moves the handshake on as far as it can go without blocking.
    pub(crate) fn poll(&mut self, dir: &PrivateDir) -> Progress {
        if let Some(started) = self.done.take() {
            return Progress::Ready(*started);
        }
        if let Some(failure) = self.exec_failure() {
            return self.fail(failure);
        }
        if let Err(failure) = self.read_report() {
            return self.fail(failure);
        }
        if self.connected.is_none() {
            if let Some(path) = self.socket.take() {
                if let Err(failure) = self.connect(dir, &path) {
                    return self.fail(failure);
                }
            } else if self.report.is_none() {
                // The pipe closed and no connection is coming: the worker is ending. Its
                // status says how.
                return self.died();
            }
        }
        if let Some((_, rx)) = &self.connected {
            match rx.try_recv() {
                Ok(FromWorker::Hello { version, workloads }) if version == PROTOCOL_VERSION => {
                    return Progress::Ready(self.finish(version, workloads));
                }
                Ok(FromWorker::Hello { version, .. }) => {
                    let message = format!(
                        "worker {} speaks protocol version {version}, this procpool \
                         {PROTOCOL_VERSION}: the worker executable is from another build",
                        self.id
                    );
                    return self.fail(StartFailure::Refused { message });
                }
                Ok(other) => {
                    let message = format!("worker {} sent {other:?} instead of Hello", self.id);
                    return self.fail(StartFailure::Refused { message });
                }
                Err(ipc_channel::TryRecvError::Empty) => {}
                Err(_) => return self.died(),
            }
        }
        if let Some(Ok(Some(cause))) = self.child.as_mut().map(Process::try_wait) {
            // What it wrote just before it ended says more than its status.
            if let Err(failure) = self.read_report() {
                return self.fail(failure);
            }
            return self.fail(StartFailure::Died {
                id: self.id,
                pid: self.pid,
                cause,
                reached_init: self.announced,
                exe: self.exe.clone(),
            });
        }
        if Instant::now() >= self.deadline {
            return self.fail(StartFailure::TimedOut {
                id: self.id,
                pid: self.pid,
                timeout: self.timeout,
            });
        }
        Progress::Pending
    }

    /// Kills and reaps the worker (and its process group) and copies its last output
    /// lines, for [`OUTPUT_DRAIN`] at most.
    pub(crate) fn abort(&mut self) {
        if let Some(mut done) = self.done.take() {
            kill_and_reap(&mut done.child);
            if let Some(output) = done.output.take() {
                output.finish(Instant::now() + OUTPUT_DRAIN);
            }
        }
        if let Some(child) = self.child.as_mut() {
            kill_and_reap(child);
        }
        self.child = None;
        self.connected = None;
        self.forward_output();
        if let Some(output) = self.output.take() {
            output.finish(Instant::now() + OUTPUT_DRAIN);
        }
    }

    /// The child's exec failed: what it reported on its status pipe. Never waits: the
    /// child may not have reached its exec yet (or be stopped before it).
    fn exec_failure(&mut self) -> Option<StartFailure> {
        let pipe = self.exec_status.as_mut()?;
        let mut errno = [0u8; 4];
        // Four bytes written at once to a pipe arrive at once.
        match pipe.read(&mut errno) {
            Ok(4) => {
                self.exec_status = None;
                let error = io::Error::from_raw_os_error(i32::from_ne_bytes(errno));
                Some(StartFailure::Exec(spawn_error(self.id, &self.exe, error)))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                None
            }
            // End of file: the exec happened (or the child died before it).
            _ => {
                self.exec_status = None;
                None
            }
        }
    }

    /// Reads what the worker reported so far (see [`Report`]): notes that it started and
    /// where its socket is; a failure it reported, or a report procpool cannot take, is
    /// returned. The report ends (`self.report` is `None`) when the pipe closes.
    fn read_report(&mut self) -> std::result::Result<(), StartFailure> {
        let Some(mut report) = self.report.take() else {
            return Ok(());
        };
        let mut buf = [0u8; 512];
        loop {
            match report.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(k) => {
                    self.reported.extend_from_slice(&buf[..k]);
                    self.reported_len += k;
                    if self.reported_len > REPORT_MAX {
                        return Err(self.refused(&format!(
                            "wrote more than {REPORT_MAX} bytes on its report pipe"
                        )));
                    }
                    while let Some(end) = self.reported.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = self.reported.drain(..=end).collect();
                        let line = String::from_utf8_lossy(&line[..end]).into_owned();
                        self.take_report(&line)?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.report = Some(report);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Ok(()),
            }
        }
    }

    /// One line of the report.
    fn take_report(&mut self, line: &str) -> std::result::Result<(), StartFailure> {
        let (id, pid) = (self.id, self.pid);
        match Report::parse(line) {
            Some(Report::Started) => self.announced = true,
            Some(Report::Socket(path)) if self.socket.is_none() && self.connected.is_none() => {
                self.socket = Some(path);
            }
            Some(Report::Socket(_)) => {
                return Err(self.refused("reported a second handshake socket"));
            }
            Some(Report::GaveUp(errno)) => return Err(StartFailure::GaveUp { id, pid, errno }),
            Some(Report::Failed(message)) => {
                return Err(StartFailure::Failed { id, pid, message });
            }
            None => {
                let shown: String = line.chars().take(80).collect();
                return Err(self.refused(&format!(
                    "wrote {shown:?} on its report pipe, which is not a report of procpool's \
                     worker entry"
                )));
            }
        }
        Ok(())
    }

    /// A refusal of this worker: "worker N (pid P) {what}: refused".
    fn refused(&self, what: &str) -> StartFailure {
        StartFailure::Refused {
            message: format!("worker {} (pid {}) {what}: refused", self.id, self.pid),
        }
    }

    /// Connects to the socket the worker reported and sends `Welcome`.
    fn connect(&mut self, dir: &PrivateDir, path: &str) -> std::result::Result<(), StartFailure> {
        let shown = dir.path().display();
        let socket = match dir.locate(Path::new(path)) {
            Ok(Some(socket)) => socket,
            // The socket is gone: the worker is ending, and its report or its status will
            // say why.
            Ok(None) => return Ok(()),
            Err(Misplaced::Outside) => {
                return Err(self.refused(&format!(
                    "reported a handshake socket outside procpool's private directory {shown}"
                )));
            }
            Err(Misplaced::Replaced) => {
                return Err(self.refused(&format!(
                    "reported a handshake socket in {shown}, which is no longer the private \
                     directory procpool made (another directory was put in its place)"
                )));
            }
            Err(Misplaced::NotOurs) => {
                return Err(self.refused(&format!(
                    "reported {path}, which is not a socket of procpool's user in its private \
                     directory {shown}"
                )));
            }
        };
        let refused = |what: &str, e: &dyn std::fmt::Display| StartFailure::Refused {
            message: format!("worker {} (pid {}): {what}: {e}", self.id, self.pid),
        };
        let tx = match IpcSender::<ToWorker>::connect(socket.to_string_lossy().into_owned()) {
            Ok(tx) => tx,
            // Nobody listens any more: the worker died after reporting.
            Err(_) => return Ok(()),
        };
        let (to_parent, rx) = ipc_channel::ipc::channel::<FromWorker>()
            .map_err(|e| refused("cannot create a channel", &e))?;
        // A small message on a fresh connection: it fits in the socket buffer, so the send
        // does not wait for the worker.
        if tx.send(ToWorker::Welcome { to_parent }).is_err() {
            return Ok(());
        }
        self.connected = Some((tx, rx));
        Ok(())
    }

    fn finish(&mut self, version: u32, workloads: Vec<Registered>) -> Started {
        let hello = FromWorker::Hello {
            version,
            workloads: workloads.clone(),
        };
        let (tx, rx) = self.connected.take().expect("connected before Hello");
        self.forward_output();
        Started {
            id: self.id,
            pid: self.pid,
            child: self.child.take().expect("alive until ready"),
            tx,
            rx,
            output: self.output.take(),
            handshake_ipc: super::Ipc {
                messages: 2,
                bytes: welcome_wire_size() + wire_size(&hello),
            },
            workloads,
            inputs_socket: self.inputs_socket.take().expect("held until ready"),
        }
    }

    /// The worker closed its end: wait a moment for its exit status.
    fn died(&mut self) -> Progress {
        let cause = match self.child.as_mut() {
            Some(child) => reap_within(child, Duration::from_secs(1)),
            None => ExitCause::Unknown,
        };
        self.fail(StartFailure::Died {
            id: self.id,
            pid: self.pid,
            cause,
            reached_init: self.announced,
            exe: self.exe.clone(),
        })
    }

    fn fail(&mut self, failure: StartFailure) -> Progress {
        // A child whose exec failed exits at once: say why, not how it exited.
        let failure = self.exec_failure().unwrap_or(failure);
        self.abort();
        Progress::Failed(failure)
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        self.abort();
    }
}

/// The program a spawned worker runs, and how it reaches procpool's worker entry.
#[derive(Debug, Clone)]
pub(crate) struct WorkerExe {
    /// The executable.
    pub(crate) path: PathBuf,
    /// A test binary: the worker entry is the hidden test that
    /// [`enable_test_support!`](crate::enable_test_support) defines, which libtest runs
    /// when asked with these arguments; the worker's own arguments travel in
    /// [`TEST_WORKER_ENV`].
    pub(crate) via_test: bool,
    /// The thread spawned workers are started from (none yet: the calling thread).
    pub(crate) spawner: Option<std::sync::Arc<Spawner>>,
}

/// A request to the spawner thread: a command to start, and where to say how it went.
type SpawnRequest = (SpawnSpec, std::sync::mpsc::Sender<io::Result<Spawned>>);

/// The thread a pool starts its spawned workers from.
///
/// Linux sends a worker its death signal (`PR_SET_PDEATHSIG`) when the *thread* that
/// started it ends, not the process. Started from whichever thread built the pool or ran a
/// job, workers would die with that thread: a pool built on a short-lived thread would lose
/// them all. This thread lives exactly as long as the pool, so workers die with the pool
/// or with the process, never earlier.
///
/// A request returns as soon as the child exists (see
/// [`spawn_process`](crate::engine::sys::spawn_process)): the thread never waits for a
/// child's exec, so a child stopped before it holds neither this thread nor its caller.
#[derive(Debug)]
pub(crate) struct Spawner {
    requests: Option<std::sync::mpsc::Sender<SpawnRequest>>,
    thread: Option<JoinHandle<()>>,
}

impl Spawner {
    /// Starts the spawner thread.
    pub(crate) fn new() -> io::Result<Self> {
        let (requests, incoming) = std::sync::mpsc::channel::<SpawnRequest>();
        let thread = std::thread::Builder::new()
            .name("procpool-spawner".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                for (spec, reply) in incoming {
                    // The pool reaps the worker with waitpid, which works from any thread.
                    let _ = reply.send(crate::engine::sys::spawn_process(&spec));
                }
            })?;
        Ok(Spawner {
            requests: Some(requests),
            thread: Some(thread),
        })
    }

    /// Starts `spec` from the spawner thread.
    fn spawn(&self, spec: SpawnSpec) -> io::Result<Spawned> {
        let gone = || io::Error::other("the pool's spawner thread is gone");
        let (reply, answer) = std::sync::mpsc::channel();
        self.requests
            .as_ref()
            .ok_or_else(gone)?
            .send((spec, reply))
            .map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The name of the hidden test that [`enable_test_support!`](crate::enable_test_support)
/// defines in a test binary.
pub(crate) const TEST_WORKER_NAME: &str = "__procpool_test_worker";
/// The environment variable carrying a test-binary worker's arguments.
pub(crate) const TEST_WORKER_ENV: &str = "PROCPOOL_TEST_WORKER";

impl WorkerExe {
    /// What starts a worker with `args`: `TMPDIR` set to the private directory `dir` (and
    /// [`PRIVATE_DIR_ENV`] to its identity), output to `output`, inheriting `keep`.
    fn spec(
        &self,
        args: &WorkerArgs,
        dir: &PrivateDir,
        output: (RawFd, RawFd),
        keep: Vec<RawFd>,
    ) -> io::Result<SpawnSpec> {
        use std::ffi::{CString, OsStr, OsString};
        use std::os::unix::ffi::{OsStrExt, OsStringExt};
        let c = |s: &OsStr| {
            CString::new(s.as_bytes()).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{s:?} holds a NUL byte"),
                )
            })
        };
        let program = c(self.path.as_os_str())?;
        let mut argv = vec![program.clone()];
        let mut set: Vec<(OsString, OsString)> = vec![
            ("TMPDIR".into(), dir.path().into()),
            (PRIVATE_DIR_ENV.into(), dir.identity().into()),
        ];
        if let Some(user) = std::env::var_os("TMPDIR") {
            set.push((USER_TMPDIR_ENV.into(), user));
        }
        if self.via_test {
            // libtest runs the one hidden test (it is #[ignore]d, so only with --ignored),
            // on one thread, printing nothing of its own but a header line.
            for a in [
                TEST_WORKER_NAME,
                "--ignored",
                "--nocapture",
                "--test-threads=1",
                "-q",
            ] {
                argv.push(c(OsStr::new(a))?);
            }
            set.push((TEST_WORKER_ENV.into(), args.to_args().join(" ").into()));
        } else {
            for a in args.to_args() {
                argv.push(c(OsStr::new(&a))?);
            }
        }
        let mut env = Vec::new();
        for (name, value) in std::env::vars_os().filter(|(n, _)| !set.iter().any(|(s, _)| s == n)) {
            env.push([name, value]);
        }
        for (name, value) in set {
            env.push([name, value]);
        }
        let env = env
            .into_iter()
            .map(|[name, value]| {
                let mut pair = name.into_vec();
                pair.push(b'=');
                pair.extend(value.into_vec());
                c(OsStr::from_bytes(&pair))
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(SpawnSpec {
            program,
            args: argv,
            env,
            output,
            keep,
        })
    }
}

/// Spawns worker `id` and begins its handshake; [`Starting::poll`] takes it from there.
pub(crate) fn spawn_worker(
    exe: &WorkerExe,
    dir: &PrivateDir,
    shm_fd: std::os::fd::RawFd,
    id: usize,
    timeout: Duration,
    pin: &[usize],
) -> Result<Starting> {
    let fail = |e: io::Error| spawn_error(id, &exe.path, e);
    let (report, report_end) = io::pipe().map_err(fail)?;
    // The worker's stdout and stderr go through one pipe to a thread that prints each line
    // on our stderr as `[worker N] ...`: a kernel's println! never mixes into the report on
    // stdout, and a panic message says whose it is.
    let (output, output_end) = io::pipe().map_err(fail)?;
    // The worker's inputs arrive on a socket pair only it and we hold.
    let (inputs_socket, inputs_end) = crate::engine::sealed::channel().map_err(fail)?;
    let args = WorkerArgs {
        shm_fd,
        id,
        report_fd: report_end.as_raw_fd(),
        inputs_fd: inputs_end.as_raw_fd(),
        timeout,
        parent: std::process::id(),
        cpu: cpu_for(id, pin),
    };
    let spec = exe
        .spec(
            &args,
            dir,
            (output_end.as_raw_fd(), output_end.as_raw_fd()),
            vec![shm_fd, report_end.as_raw_fd(), inputs_end.as_raw_fd()],
        )
        .map_err(fail)?;
    // From the pool's spawner thread when it has one (see [`Spawner`]); the pool reaps the
    // worker with waitpid, like a forked one.
    let spawned = match &exe.spawner {
        Some(spawner) => spawner.spawn(spec).map_err(fail)?,
        None => crate::engine::sys::spawn_process(&spec).map_err(fail)?,
    };
    // The handshake's deadline runs from here: the child exists, whether or not it
    // reached its exec.
    let started_at = Instant::now();
    // Our copies of the pipes' write ends close, or the readers would never see EOF.
    drop(output_end);
    let child = Process::from_pid(spawned.pid);
    drop(report_end);
    drop(inputs_end);
    let nonblocking = nix::fcntl::fcntl(
        &report,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    );
    let mut starting = Starting {
        id,
        pid: child.id(),
        child: Some(child),
        timeout,
        deadline: started_at.checked_add(timeout).unwrap_or_else(far_future),
        report: Some(report),
        reported: Vec::new(),
        reported_len: 0,
        announced: false,
        socket: None,
        output_pipe: Some(output),
        test_header: exe.via_test,
        output: None,
        exec_status: Some(spawned.exec_status),
        exe: exe.path.clone(),
        connected: None,
        inputs_socket: Some(inputs_socket),
        done: None,
    };
    if let Err(e) = nonblocking {
        starting.abort();
        return Err(fail(e.into()));
    }
    Ok(starting)
}

/// A moment no deadline reaches (about a century from now).
pub(crate) fn far_future() -> Instant {
    let now = Instant::now();
    now.checked_add(Duration::from_secs(100 * 365 * 86_400))
        .unwrap_or(now)
}

/// Starts workers `ids`, all at once, and waits until every one is ready.
///
/// A worker killed by a signal or hung during its handshake is replaced (same id), as in a
/// job, while `restarts` stays within `max_restarts`; each such death is added to `deaths`.
/// Any other failure, or an interrupt, stops every worker started here before the error
/// returns.
#[allow(clippy::too_many_arguments)]
pub(crate) fn start_workers(
    exe: &WorkerExe,
    dir: &PrivateDir,
    shm_fd: std::os::fd::RawFd,
    ids: std::ops::Range<usize>,
    timeout: Duration,
    pin: &[usize],
    max_restarts: u64,
    interrupt: &Interrupt,
    deaths: &mut Vec<Death>,
) -> Result<Vec<Started>> {
    let mut starting = Vec::with_capacity(ids.len());
    for id in ids.clone() {
        // On an error, dropping `starting` kills and reaps what was spawned.
        starting.push(Some(spawn_worker(exe, dir, shm_fd, id, timeout, pin)?));
    }
    // The output hub starts only now: every fork above copied this process's memory map.
    for s in starting.iter_mut().flatten() {
        s.forward_output();
    }
    let mut started: Vec<Option<Started>> = ids.clone().map(|_| None).collect();
    let waited = wait_ready(
        &mut starting,
        &mut started,
        |id| spawn_worker(exe, dir, shm_fd, id, timeout, pin),
        dir,
        max_restarts,
        interrupt,
        deaths,
    );
    match waited {
        Ok(()) => Ok(started.into_iter().flatten().collect()),
        Err(e) => {
            // `starting` kills and reaps its own when dropped; the ready ones are ours.
            drop(starting);
            let drain = Instant::now() + OUTPUT_DRAIN;
            for s in started.iter_mut().flatten() {
                kill_and_reap(&mut s.child);
                if let Some(output) = s.output.take() {
                    output.finish(drain);
                }
            }
            Err(e)
        }
    }
}

/// Polls every start until all are ready, replacing retryable failures within the limit.
fn wait_ready(
    starting: &mut [Option<Starting>],
    started: &mut [Option<Started>],
    respawn: impl Fn(usize) -> Result<Starting>,
    dir: &PrivateDir,
    max_restarts: u64,
    interrupt: &Interrupt,
    deaths: &mut Vec<Death>,
) -> Result<()> {
    let mut restarts = 0u64;
    while started.iter().any(Option::is_none) {
        if let Some(signal) = interrupt.requested() {
            return Err(Error::Interrupted {
                signal,
                phase: Phase::Start,
                chunks_done: 0,
                chunks: 0,
                elements_done: 0,
                n: 0,
                workers: started.len(),
                needed_term: 0,
                needed_kill: 0,
            });
        }
        for (k, slot) in starting.iter_mut().enumerate() {
            let Some(s) = slot.as_mut() else { continue };
            match s.poll(dir) {
                Progress::Pending => {}
                Progress::Ready(ready) => {
                    started[k] = Some(ready);
                    *slot = None;
                }
                Progress::Failed(failure) if failure.retryable() && restarts < max_restarts => {
                    restarts += 1;
                    let (id, pid) = (s.id, s.pid);
                    let mut next = respawn(id)?;
                    next.forward_output();
                    deaths.push(Death {
                        id,
                        pid,
                        cause: failure.loss(id, pid).cause_text(),
                        chunk: None,
                        replaced_by: Some(next.pid),
                    });
                    *slot = Some(next);
                }
                Progress::Failed(failure) if failure.retryable() => {
                    return Err(Error::TooManyRestarts {
                        restarts: restarts + 1,
                        limit: max_restarts,
                        last: failure.loss(s.id, s.pid),
                    });
                }
                Progress::Failed(failure) => return Err(failure.into_error()),
            }
        }
        if started.iter().any(Option::is_none) {
            std::thread::sleep(START_TICK);
        }
    }
    Ok(())
}

fn spawn_error(id: usize, exe: &Path, source: io::Error) -> Error {
    let hint = match source.raw_os_error() {
        Some(libc::EAGAIN) => match crate::engine::sys::process_soft_limit() {
            Some(n) => format!(
                "; the process limit (ulimit -u, which counts threads too) is {n}: raise it \
                 or use fewer workers"
            ),
            None => "; the process limit (ulimit -u) is unlimited, so the system's limit \
                     (kernel.threads-max or kernel.pid_max) was reached: use fewer workers"
                .to_string(),
        },
        Some(libc::EMFILE) | Some(libc::ENFILE) => {
            let (soft, _) = crate::engine::sys::open_file_limit().unwrap_or((0, 0));
            format!("; the open-file limit (ulimit -n) is {soft}")
        }
        Some(libc::ENOENT) => "; check the worker executable path".to_string(),
        _ => String::new(),
    };
    Error::Spawn {
        id,
        exe: exe.display().to_string(),
        os_error: source,
        hint,
    }
}

/// Starts workers `ids` by forking this process: no exec and no handshake, the channels
/// are made before the fork and inherited, as is the shared region. Needs a
/// single-threaded process (see [`crate::engine::sys::fork_child`]); the output hub gets
/// the workers' output only after the last fork.
///
/// The child keeps inherited copies of the parent's ends of its own channels; it is
/// stopped by the Shutdown message or, if the parent dies, by its death signal. Like a
/// spawned worker, it leads a process group of its own, which ends with it.
pub(crate) fn fork_workers(
    shm_fd: std::os::fd::RawFd,
    ids: std::ops::Range<usize>,
    pin: &[usize],
    registry: &Registry,
) -> Result<Vec<Started>> {
    crate::engine::sys::ensure_single_threaded("`start` fork", "use `start` spawn")
        .map_err(|e| Error::invalid("start", e.to_string()))?;
    let mut started: Vec<Started> = Vec::with_capacity(ids.len());
    let mut readers = Vec::with_capacity(ids.len());
    let parent = nix::unistd::getpid();
    for id in ids {
        let forked = (|| -> io::Result<Started> {
            let (to_worker, from_parent) = ipc_channel::ipc::channel::<ToWorker>()?;
            let (to_parent, from_worker) = ipc_channel::ipc::channel::<FromWorker>()?;
            let (reader, writer) = io::pipe()?;
            let (inputs_socket, inputs_end) = crate::engine::sealed::channel()?;
            let ends = crate::engine::worker::ForkedEnds {
                id,
                to_parent,
                from_parent,
                inputs: inputs_end,
                output: writer.into(),
                cpu: cpu_for(id, pin),
            };
            let pid = crate::engine::sys::fork_child(move || {
                // SAFETY: the shared region's memfd is open in the parent and so, by
                // inheritance, in this child for as long as it lives.
                let shm = unsafe { std::os::fd::BorrowedFd::borrow_raw(shm_fd) };
                crate::engine::worker::enter_forked(ends, shm, registry, parent)
            })?;
            // The closure, with the child's ends of the channels and the pipe, was dropped
            // in this process when `fork_child` returned: only the child holds them now.
            readers.push((id, reader));
            // The child's own first step, done here too so that it holds from now on.
            let group = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::unistd::setpgid(group, group);
            Ok(Started {
                id,
                pid,
                child: Process::from_pid(pid),
                tx: to_worker,
                rx: from_worker,
                output: None,
                handshake_ipc: super::Ipc::default(),
                workloads: registry.catalogue(),
                inputs_socket,
            })
        })();
        match forked {
            Ok(s) => started.push(s),
            Err(e) => {
                for s in &mut started {
                    kill_and_reap(&mut s.child);
                }
                return Err(Error::Spawn {
                    id,
                    exe: "fork".into(),
                    os_error: e,
                    hint: String::new(),
                });
            }
        }
    }
    for (s, (_, reader)) in started.iter_mut().zip(readers) {
        s.output = forward_output(s.id, reader, false);
    }
    Ok(started)
}

/// Starts workers `ids` through the program's fork server (see
/// [`crate::engine::forkserver`]): no exec and no handshake, from any thread. The workers
/// are children of this process; their output goes to the output hub once all exist.
/// On an error, none of them is left running.
pub(crate) fn fork_via_server(
    shm_fd: std::os::fd::RawFd,
    ids: std::ops::Range<usize>,
    pin: &[usize],
    timeout: Duration,
) -> Result<Vec<Started>> {
    let wanted: Vec<(usize, Option<usize>)> =
        ids.clone().map(|id| (id, cpu_for(id, pin))).collect();
    // SAFETY: the shared region's memfd stays open in the pool while this call runs.
    let shm = unsafe { std::os::fd::BorrowedFd::borrow_raw(shm_fd) };
    let (forked, workloads) = crate::engine::forkserver::fork_workers(shm, &wanted, timeout)
        .map_err(|e| Error::Spawn {
            id: ids.start,
            exe: "the fork server".into(),
            os_error: e,
            hint: String::new(),
        })?;
    Ok(forked
        .into_iter()
        .map(|w| {
            // The worker's own first step, done here too so that it holds from now on.
            let group = nix::unistd::Pid::from_raw(w.pid as i32);
            let _ = nix::unistd::setpgid(group, group);
            Started {
                id: w.id,
                pid: w.pid,
                child: Process::from_pid(w.pid),
                tx: w.tx,
                rx: w.rx,
                output: forward_output(w.id, w.output, false),
                handshake_ipc: super::Ipc::default(),
                workloads: workloads.clone(),
                inputs_socket: w.inputs_socket,
            }
        })
        .collect())
}

/// The CPU worker `id` is pinned to: CPUs are dealt round-robin over `pin` (empty: none).
pub(crate) fn cpu_for(id: usize, pin: &[usize]) -> Option<usize> {
    (!pin.is_empty()).then(|| pin[id % pin.len()])
}

/// Waits up to `grace` for `child` to exit, then kills it; always reaps it (and ends its
/// process group, see [`Process`]).
pub(crate) fn reap_within(child: &mut Process, grace: Duration) -> ExitCause {
    let deadline = Instant::now().checked_add(grace).unwrap_or_else(far_future);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
            Ok(None) => {
                child.kill();
                return child.wait().unwrap_or(ExitCause::Unknown);
            }
            Err(_) => return ExitCause::Unknown,
        }
    }
}

/// Kills `child` (if still running) and reaps it, ending its process group.
pub(crate) fn kill_and_reap(child: &mut Process) {
    child.kill();
    let _ = child.wait();
}

/// How long a worker's output is still copied once the worker is reaped. What it wrote
/// before it ended is in the pipe by then; a process that inherited the pipe and left the
/// worker's process group (`setsid`) may hold it open for as long as it lives, and is not
/// waited for.
pub(crate) const OUTPUT_DRAIN: Duration = Duration::from_millis(150);

/// Where a worker's stdout and stderr go: one thread for the whole program (the output
/// hub) copies every worker's pipe to our stderr, one `[worker N] line` at a time, and
/// this is the means to stop copying one of them.
///
/// End of file on the pipe does not mean the worker is gone (a process it started may hold
/// the pipe), so the pool stops the copy itself once it reaped the worker: the hub copies
/// what is left for a moment ([`Forwarder::finish`]), then drops the pipe.
#[derive(Debug)]
pub(crate) struct Forwarder {
    hub: Arc<Hub>,
    /// When to stop copying; set once.
    stop_at: Arc<OnceLock<Instant>>,
    /// Disconnected when the hub dropped the pipe.
    ended: mpsc::Receiver<()>,
}

impl Forwarder {
    /// The worker is reaped: copy what is left in its pipe until `deadline` (an earlier
    /// deadline, once given, stays), then stop.
    pub(crate) fn stop_by(&mut self, deadline: Instant) {
        if self.stop_at.set(deadline).is_ok() {
            self.hub.wake();
        }
    }

    /// Stops copying by `deadline` and waits for the hub to drop the pipe until then. A
    /// hub still writing to our stderr after that (a reader that does not read) is left
    /// to itself: nothing waits for it. When the pipe was the hub's last, its thread is
    /// waited for too, so that a program whose pools are all shut down has no thread of
    /// procpool's left (`--start fork` needs a single-threaded process).
    pub(crate) fn finish(mut self, deadline: Instant) {
        self.stop_by(deadline);
        let deadline = *self.stop_at.get().unwrap_or(&deadline);
        // A moment past the deadline for the hub to notice it.
        let wait = deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(20);
        if let Err(mpsc::RecvTimeoutError::Disconnected) = self.ended.recv_timeout(wait) {
            self.hub
                .join_when_idle(Instant::now() + Duration::from_millis(20));
        }
    }
}

/// The output hub: its thread runs while it has a pipe to copy, and ends when it has none
/// (so that a program without pools is single-threaded again, as `--start fork` needs).
#[derive(Debug)]
struct Hub {
    /// The process the hub belongs to: a copy of the program made by `fork` has no thread
    /// of it, and starts its own.
    pid: u32,
    state: Mutex<HubState>,
    /// A byte here wakes the thread (non-blocking: a full pipe is awake enough).
    wake: io::PipeWriter,
    /// The thread's end of `wake`.
    woken: io::PipeReader,
}

/// What the hub's thread and the pools share.
#[derive(Debug, Default)]
struct HubState {
    /// Pipes handed over and not yet taken by the thread.
    incoming: Vec<Stream>,
    /// Pipes handed over and not yet dropped by the thread.
    live: usize,
    /// Whether the thread runs (it clears this, under the lock, as it ends).
    running: bool,
    /// The thread, for the last [`Forwarder::finish`] to wait for.
    thread: Option<JoinHandle<()>>,
}

/// One worker's pipe in the hub.
#[derive(Debug)]
struct Stream {
    id: usize,
    reader: io::PipeReader,
    stop_at: Arc<OnceLock<Instant>>,
    /// Bytes of a line not yet whole.
    pending: Vec<u8>,
    /// The test harness's own first lines (blank, `running 1 test`) are still to skip.
    in_header: bool,
    /// Dropped with the stream: tells [`Forwarder::finish`] it is done.
    _ended: mpsc::Sender<()>,
}

/// The program's output hub.
static HUB: Mutex<Option<Arc<Hub>>> = Mutex::new(None);

impl Hub {
    /// This process's hub, made on first use.
    fn get() -> Option<Arc<Hub>> {
        let mut slot = HUB.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(hub) = slot.as_ref().filter(|h| h.pid == std::process::id()) {
            return Some(Arc::clone(hub));
        }
        let (woken, wake) = io::pipe().ok()?;
        nix::fcntl::fcntl(
            &wake,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .ok()?;
        let hub = Arc::new(Hub {
            pid: std::process::id(),
            state: Mutex::new(HubState::default()),
            wake,
            woken,
        });
        *slot = Some(Arc::clone(&hub));
        Some(hub)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wake(&self) {
        let _ = (&self.wake).write(&[1]);
    }

    /// Hands `stream` to the thread, starting it if it is not running. False if no
    /// thread could be started (the stream is dropped: its output with it).
    fn add(self: &Arc<Self>, stream: Stream) -> bool {
        let mut state = self.state();
        state.incoming.push(stream);
        state.live += 1;
        if state.running {
            drop(state);
            self.wake();
            return true;
        }
        let hub = Arc::clone(self);
        let started = std::thread::Builder::new()
            .name("procpool-output".into())
            .stack_size(128 * 1024)
            .spawn(move || hub.run());
        match started {
            Ok(thread) => {
                // A thread that ended before is done with: its handle may go.
                state.thread = Some(thread);
                state.running = true;
                true
            }
            Err(_) => {
                state.incoming.clear();
                state.live = 0;
                false
            }
        }
    }

    /// Waits (until `deadline` at most) for the thread to end if it has no pipe left; it
    /// ends on its own then, a moment after it dropped the last one. Returns at once when
    /// it still has pipes (another pool's).
    fn join_when_idle(&self, deadline: Instant) {
        loop {
            let mut state = self.state();
            if state.live > 0 {
                return;
            }
            if !state.running {
                let thread = state.thread.take();
                drop(state);
                if let Some(thread) = thread {
                    let _ = thread.join();
                }
                return;
            }
            drop(state);
            if Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// The thread: copies whole lines from every pipe to our stderr until its end of
    /// file, or its deadline once one is set; ends when it has no pipe left.
    fn run(&self) {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let mut streams: Vec<Stream> = Vec::new();
        let mut ended: Vec<Stream> = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            {
                let mut state = self.state();
                state.live -= ended.len();
                streams.append(&mut state.incoming);
                if streams.is_empty() {
                    // Decided under the lock: a stream added from now on starts a thread.
                    state.running = false;
                    return;
                }
            }
            // Dropped once they are no longer counted: their `finish` may then look at
            // the count.
            ended.clear();
            let now = Instant::now();
            let mut k = 0;
            while k < streams.len() {
                match streams[k].stop_at.get() {
                    Some(&deadline) if deadline <= now => {
                        let mut done = streams.swap_remove(k);
                        done.flush();
                        ended.push(done);
                    }
                    _ => k += 1,
                }
            }
            if streams.is_empty() {
                continue;
            }
            let timeout = streams.iter().filter_map(|s| s.stop_at.get()).min().map_or(
                PollTimeout::NONE,
                |&deadline| {
                    let left = deadline.saturating_duration_since(now);
                    // Rounded up: a poll that ends a moment early only turns once more.
                    PollTimeout::try_from(left + Duration::from_micros(999))
                        .unwrap_or(PollTimeout::MAX)
                },
            );
            let mut fds: Vec<PollFd> = std::iter::once(&self.woken)
                .chain(streams.iter().map(|s| &s.reader))
                .map(|r| PollFd::new(r.as_fd(), PollFlags::POLLIN))
                .collect();
            let ready: Vec<bool> = match poll(&mut fds, timeout) {
                Ok(_) => fds.iter().map(|f| f.any().unwrap_or(true)).collect(),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => {
                    // Nothing to wait on: the pipes are dropped, their output with them.
                    drop(fds);
                    ended.append(&mut streams);
                    continue;
                }
            };
            drop(fds);
            if ready[0] {
                let _ = (&self.woken).read(&mut buf);
            }
            // Backwards, so that a removal leaves the indices still to visit in place.
            for k in (0..streams.len()).rev() {
                if ready[k + 1] && !streams[k].copy(&mut buf) {
                    ended.push(streams.swap_remove(k));
                }
            }
        }
    }
}

impl Stream {
    /// Reads what the pipe holds and writes its whole lines; false at its end.
    fn copy(&mut self, buf: &mut [u8]) -> bool {
        match (&self.reader).read(buf) {
            Ok(0) => {}
            Ok(k) => {
                self.pending.extend_from_slice(&buf[..k]);
                while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = self.pending.drain(..=end).collect();
                    self.emit(&line);
                }
                // A line this long is passed on in pieces.
                if self.pending.len() > LINE_MAX {
                    let line = std::mem::take(&mut self.pending);
                    self.emit(&line);
                }
                return true;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return true,
            Err(_) => {}
        }
        self.flush();
        false
    }

    /// Writes the last line, whole or not.
    fn flush(&mut self) {
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.emit(&line);
        }
    }

    fn emit(&mut self, line: &[u8]) {
        if self.in_header && (line.trim_ascii().is_empty() || line.starts_with(b"running ")) {
            return;
        }
        self.in_header = false;
        let mut err = io::stderr().lock();
        let _ = write!(err, "[worker {}] ", self.id);
        let _ = err.write_all(line);
        if line.last() != Some(&b'\n') {
            let _ = err.write_all(b"\n");
        }
    }
}

/// Starts copying a worker's output to our stderr. `None` if the hub could not start (the
/// output is then dropped). With `test_header`, the test harness's own first lines
/// (blank, `running 1 test`) are left out.
fn forward_output(id: usize, reader: io::PipeReader, test_header: bool) -> Option<Forwarder> {
    let hub = Hub::get()?;
    let stop_at = Arc::new(OnceLock::new());
    let (ended_tx, ended) = mpsc::channel::<()>();
    let stream = Stream {
        id,
        reader,
        stop_at: Arc::clone(&stop_at),
        pending: Vec::new(),
        in_header: test_header,
        _ended: ended_tx,
    };
    hub.add(stream).then_some(Forwarder {
        hub,
        stop_at,
        ended,
    })
}

/// The longest line of a worker's output kept whole.
const LINE_MAX: usize = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_fork_names_the_process_limit_and_the_os_error_once() {
        let e = spawn_error(
            3,
            Path::new("/bin/procpool"),
            io::Error::from_raw_os_error(libc::EAGAIN),
        );
        let line = format!("{:#}", anyhow::Error::from(e));
        assert!(
            line.starts_with("cannot start worker 3 (/bin/procpool): "),
            "{line}"
        );
        assert!(line.contains("ulimit -u"), "{line}");
        let os_text = io::Error::from_raw_os_error(libc::EAGAIN).to_string();
        assert_eq!(line.matches(&os_text).count(), 1, "{line}");
    }
}
