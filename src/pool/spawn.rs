//! Starting workers: re-execute the worker binary, then a handshake with a deadline.
//!
//! Each worker gets its own ipc-channel one-shot server. `accept()` blocks until someone
//! connects, and forever if the worker dies first, so the accepts run on a helper thread
//! while this thread watches the children and the clock. When a worker dies or the deadline
//! passes, every child is killed and each server still waiting is unblocked by connecting to
//! it ourselves with a `Cancelled` message; then the helper thread ends, every child is
//! reaped, and the error says which worker failed and how.

use std::io;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipc_channel::ipc::{IpcOneShotServer, IpcReceiver, IpcSender};

use crate::error::{Error, Result};
use crate::protocol::{FromWorker, PROTOCOL_VERSION, ToWorker, hello_wire_size};
use crate::sys::{ExitCause, Process, kill_hard, prepare_worker_command};
use crate::worker::WorkerArgs;

/// A worker that connected back.
pub(crate) struct Started {
    pub id: usize,
    pub pid: u32,
    pub child: Process,
    pub tx: IpcSender<ToWorker>,
    pub rx: IpcReceiver<FromWorker>,
    /// The thread copying the worker's stdout and stderr to ours, prefixed.
    pub output: Option<JoinHandle<()>>,
    /// Bytes of the Hello message, for the IPC counters.
    pub hello_bytes: u64,
}

struct Pending {
    id: usize,
    pid: u32,
    /// Moved into [`Started`] once the worker connected.
    child: Option<Process>,
    output: Option<JoinHandle<()>>,
    /// The read end of the worker's output pipe, until its forwarding thread starts.
    reader: Option<io::PipeReader>,
    server_name: String,
    answered: bool,
}

impl Pending {
    fn kill_and_reap(&mut self) {
        if let Some(child) = self.child.as_mut() {
            kill_and_reap(child);
        }
        if let Some(output) = self.output.take() {
            let _ = output.join();
        }
    }
}

type Accepted = (
    usize,
    std::result::Result<(IpcReceiver<FromWorker>, FromWorker), String>,
);

/// Starts workers `ids`, all at once, and waits for every handshake (at most `timeout`).
/// On any failure, every worker started here is killed and reaped before the error returns.
pub(crate) fn start_workers(
    exe: &Path,
    shm_fd: std::os::fd::RawFd,
    ids: std::ops::Range<usize>,
    timeout: Duration,
    pin: &[usize],
) -> Result<Vec<Started>> {
    let began = Instant::now();
    let mut pending: Vec<Pending> = Vec::with_capacity(ids.len());
    let mut servers = Vec::with_capacity(ids.len());
    for id in ids {
        let spawned = IpcOneShotServer::<FromWorker>::new()
            .map_err(|e| spawn_error(id, exe, e))
            .and_then(|(server, name)| {
                let args = WorkerArgs {
                    server: name.clone(),
                    shm_fd,
                    id,
                };
                let mut cmd = Command::new(exe);
                cmd.args(args.to_args()).stdin(Stdio::null());
                // The worker's stdout and stderr go through one pipe to a thread that prints
                // each line on our stderr as `[worker N] ...`: a kernel's println! never
                // mixes into the report on stdout, and a panic message says whose it is.
                let (reader, writer) = io::pipe().map_err(|e| spawn_error(id, exe, e))?;
                let writer2 = writer.try_clone().map_err(|e| spawn_error(id, exe, e))?;
                cmd.stdout(writer).stderr(writer2);
                prepare_worker_command(&mut cmd, shm_fd, cpu_for(id, pin));
                // std's handle is dropped (that neither waits nor kills); the pool reaps the
                // worker with waitpid, like a forked one.
                let child =
                    Process::from_pid(cmd.spawn().map_err(|e| spawn_error(id, exe, e))?.id());
                // Our copies of the write end must close, or the reader never sees EOF.
                drop(cmd);
                Ok((server, name, child, reader))
            });
        match spawned {
            Ok((server, server_name, child, reader)) => {
                servers.push((pending.len(), server));
                pending.push(Pending {
                    id,
                    pid: child.id(),
                    child: Some(child),
                    output: None,
                    reader: Some(reader),
                    server_name,
                    answered: false,
                });
            }
            Err(e) => {
                drop(servers);
                for p in &mut pending {
                    p.kill_and_reap();
                }
                return Err(e);
            }
        }
    }

    // The output threads start only now: every fork above copied this process's memory map,
    // and each thread's stack would have made the next fork slower.
    for p in &mut pending {
        if let Some(reader) = p.reader.take() {
            p.output = forward_output(p.id, reader);
        }
    }
    let (results_tx, results_rx) = mpsc::channel::<Accepted>();
    let acceptor = std::thread::Builder::new()
        .name("procpool-accept".into())
        .spawn(move || {
            for (idx, server) in servers {
                let r = server.accept().map_err(|e| e.to_string());
                if results_tx.send((idx, r)).is_err() {
                    return;
                }
            }
        });
    let acceptor = match acceptor {
        Ok(handle) => handle,
        Err(e) => {
            for p in &mut pending {
                p.kill_and_reap();
            }
            return Err(Error::Io(e));
        }
    };

    let mut started: Vec<Option<Started>> = (0..pending.len()).map(|_| None).collect();
    let mut remaining = pending.len();
    let mut failure: Option<Error> = None;
    while remaining > 0 && failure.is_none() {
        let left = timeout.saturating_sub(began.elapsed());
        match results_rx.recv_timeout(left.min(Duration::from_millis(20))) {
            Ok((idx, result)) => {
                remaining -= 1;
                let p = &mut pending[idx];
                p.answered = true;
                match result {
                    Ok((
                        rx,
                        FromWorker::Hello {
                            version,
                            pid,
                            to_worker,
                        },
                    )) if version == PROTOCOL_VERSION => {
                        started[idx] = Some(Started {
                            id: p.id,
                            pid,
                            child: p.child.take().expect("answered once"),
                            output: p.output.take(),
                            tx: to_worker,
                            rx,
                            hello_bytes: hello_wire_size(version, pid),
                        });
                    }
                    Ok((_, FromWorker::Hello { version, .. })) => {
                        failure = Some(Error::Ipc(format!(
                            "worker {} speaks protocol version {version}, this procpool {PROTOCOL_VERSION}: \
                             the worker executable is from another build",
                            p.id
                        )));
                    }
                    Ok((_, other)) => {
                        failure = Some(Error::Ipc(format!(
                            "worker {} sent {other:?} instead of Hello",
                            p.id
                        )));
                    }
                    Err(_) => {
                        // The worker connected, then closed the connection: it died. Its exit
                        // status says how.
                        let cause = match p.child.as_mut() {
                            Some(child) => reap_within(child, Duration::from_secs(1)),
                            None => ExitCause::Unknown,
                        };
                        failure = Some(handshake_exit(p, cause));
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                failure = Some(Error::Ipc("the handshake thread stopped early".into()));
            }
        }
        if failure.is_some() || remaining == 0 {
            break;
        }
        // A worker that exited before connecting will never connect.
        for p in pending.iter_mut().filter(|p| !p.answered) {
            if let Some(Ok(Some(status))) = p.child.as_mut().map(Process::try_wait) {
                failure = Some(handshake_exit(p, status));
                break;
            }
        }
        if failure.is_none() && began.elapsed() >= timeout {
            let late = pending.iter().find(|p| !p.answered).expect("remaining > 0");
            failure = Some(Error::HandshakeTimeout {
                id: late.id,
                pid: late.pid,
                timeout,
            });
        }
    }

    if let Some(error) = failure {
        // Kill first: a worker blocked half-way through the handshake then closes its end,
        // which unblocks the accept thread on its server.
        for p in &pending {
            kill_hard(p.pid);
        }
        for s in started.iter().flatten() {
            kill_hard(s.pid);
        }
        for p in pending.iter().filter(|p| !p.answered) {
            if let Ok(tx) = IpcSender::<FromWorker>::connect(p.server_name.clone()) {
                let _ = tx.send(FromWorker::Cancelled);
            }
        }
        let _ = acceptor.join();
        for p in &mut pending {
            p.kill_and_reap();
        }
        for s in started.iter_mut().flatten() {
            kill_and_reap(&mut s.child);
            if let Some(output) = s.output.take() {
                let _ = output.join();
            }
        }
        return Err(error);
    }
    let _ = acceptor.join();
    Ok(started
        .into_iter()
        .map(|s| s.expect("all accepted"))
        .collect())
}

fn handshake_exit(p: &Pending, cause: ExitCause) -> Error {
    let hint = match cause {
        ExitCause::Exited(_) => {
            "; if this is your own binary, call procpool::init() first thing in main".to_string()
        }
        _ => String::new(),
    };
    Error::HandshakeExit {
        id: p.id,
        pid: p.pid,
        cause,
        hint,
    }
}

fn spawn_error(id: usize, exe: &Path, source: io::Error) -> Error {
    let hint = match source.raw_os_error() {
        Some(libc::EAGAIN) => format!(
            "; the process limit (ulimit -u) is {}",
            crate::sys::process_limit()
                .map(|n| n.to_string())
                .unwrap_or_else(|| "reached".into())
        ),
        Some(libc::EMFILE) | Some(libc::ENFILE) => {
            let (soft, _) = crate::sys::open_file_limit().unwrap_or((0, 0));
            format!("; the open-file limit (ulimit -n) is {soft}")
        }
        Some(libc::ENOENT) => "; check the worker executable path".to_string(),
        _ => String::new(),
    };
    Error::Spawn {
        id,
        exe: exe.display().to_string(),
        source,
        hint,
    }
}

/// Starts workers `ids` by forking this process: no exec and no handshake, the channels
/// are made before the fork and inherited, as is the shared region. Needs a
/// single-threaded process (see [`crate::sys::fork_child`]); the output forwarding threads
/// start only after the last fork.
///
/// The child keeps inherited copies of the parent's ends of its own channels; it is
/// stopped by the Shutdown message or, if the parent dies, by its death signal.
pub(crate) fn fork_workers(
    shm_fd: std::os::fd::RawFd,
    ids: std::ops::Range<usize>,
    pin: &[usize],
) -> Result<Vec<Started>> {
    let threads = crate::sys::thread_count();
    if threads != 1 {
        return Err(Error::InvalidInput(format!(
            "--start fork needs a single-threaded process, and this one has {threads} threads \
             (fork copies only the calling thread): use --start spawn"
        )));
    }
    let mut started: Vec<Started> = Vec::with_capacity(ids.len());
    let mut readers = Vec::with_capacity(ids.len());
    let parent = nix::unistd::getpid();
    for id in ids {
        let forked = (|| -> io::Result<Started> {
            let (to_worker, from_parent) = ipc_channel::ipc::channel::<ToWorker>()?;
            let (to_parent, from_worker) = ipc_channel::ipc::channel::<FromWorker>()?;
            let (reader, writer) = io::pipe()?;
            let cpu = cpu_for(id, pin);
            let pid = crate::sys::fork_child(move || {
                if nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).is_err()
                    || nix::unistd::getppid() != parent
                {
                    return 1;
                }
                if let Some(cpu) = cpu
                    && crate::sys::pin_to(cpu).is_err()
                {
                    return 1;
                }
                let _ = nix::unistd::dup2_stdout(&writer);
                let _ = nix::unistd::dup2_stderr(&writer);
                drop(writer);
                // SAFETY: the shared region's memfd is open in the parent and so, by
                // inheritance, in this child for as long as it lives.
                let shm = unsafe { std::os::fd::BorrowedFd::borrow_raw(shm_fd) };
                crate::worker::serve_forked(&to_parent, &from_parent, shm, crate::registry())
            })?;
            // The closure, with the child's ends of the channels and the pipe, was dropped
            // in this process when `fork_child` returned: only the child holds them now.
            readers.push((id, reader));
            Ok(Started {
                id,
                pid,
                child: Process::from_pid(pid),
                tx: to_worker,
                rx: from_worker,
                output: None,
                hello_bytes: 0,
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
                    source: e,
                    hint: String::new(),
                });
            }
        }
    }
    for (s, (_, reader)) in started.iter_mut().zip(readers) {
        s.output = forward_output(s.id, reader);
    }
    Ok(started)
}

/// The CPU worker `id` is pinned to: CPUs are dealt round-robin over `pin` (empty: none).
pub(crate) fn cpu_for(id: usize, pin: &[usize]) -> Option<usize> {
    (!pin.is_empty()).then(|| pin[id % pin.len()])
}

/// Waits up to `grace` for `child` to exit, then kills it; always reaps it.
pub(crate) fn reap_within(child: &mut Process, grace: Duration) -> ExitCause {
    let deadline = Instant::now() + grace;
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

/// Kills `child` (if still running) and reaps it.
pub(crate) fn kill_and_reap(child: &mut Process) {
    child.kill();
    let _ = child.wait();
}

/// Copies a worker's output to our stderr, one `[worker N] line` at a time, until the
/// worker exits. `None` if no thread could be started (the output is then dropped).
fn forward_output(id: usize, reader: io::PipeReader) -> Option<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("procpool-out-{id}"))
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut lines = BufReader::new(reader);
            let mut line = Vec::new();
            loop {
                line.clear();
                match lines.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if line.last() != Some(&b'\n') {
                            line.push(b'\n');
                        }
                        let mut err = io::stderr().lock();
                        let _ = write!(err, "[worker {id}] ");
                        let _ = err.write_all(&line);
                    }
                }
            }
        })
        .ok()
}
