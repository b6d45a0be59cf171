//! The fork server: a small process, forked by [`crate::init`] while the program is still
//! single-threaded, that forks workers on the pool's request: no exec, no loader, no
//! handshake, whatever threads the program has by then.
//!
//! Why? Re-executing the binary (`spawn`) costs each worker an exec, the loader, the Rust
//! runtime and a handshake, about a millisecond and a half of CPU. Forking the program
//! itself is cheap but only safe while it has one thread, and a pool has threads of its
//! own by the time it replaces a worker. Python met the same trade-off and starts workers
//! with a fork server by default since 3.14; this is procpool's.
//!
//! **What it holds.** A copy of the program as it was when `init` ran: the registry
//! `init_with` was given, its end of a socket pair made just before the fork (no path, no
//! file anywhere), and the sending end of an ipc-channel for its answers. No thread, no
//! pool, no shared region. It never runs a kernel: only the workers it forks do.
//!
//! **The workers are the pool's children.** A worker is made with `clone(CLONE_PARENT)`
//! ([`crate::engine::sys::fork_sibling`]), so its parent is the program, not the server:
//! the pool waits for it with `waitpid` and gets its exact exit status, as for a spawned
//! worker, and no status has to be relayed (or trusted) from the server. Its death signal
//! follows the program's main thread (the one that forked the server), so workers die
//! with the program even when it is SIGKILLed. The server checks nothing of the pool's
//! messages it would act on outside itself: it forks, and hands the pool what it made.
//!
//! **A request** is one message on the socket pair: a worker's id and CPU, and the
//! descriptors it needs (`SCM_RIGHTS`): the shared region's memfd, the worker's end of its
//! private input socket and the write end of its output pipe. The server makes the
//! worker's two ipc-channels, forks it, and answers with the pool's ends of those channels
//! and the worker's pid. The pool sends up to [`BATCH`] requests before it reads their
//! answers, so that the server forks while the pool prepares the next; the server reads
//! one request at a time, so a worker inherits no other worker's descriptors. The pool
//! believes a pid only when it is a child of its own ([`crate::engine::sys::is_our_child`]).
//!
//! **Its lifetime.** Started eagerly by `init` (the only moment the program is sure to
//! have a single thread); a program that never builds a pool pays that one fork. It dies
//! with the main thread (`PR_SET_PDEATHSIG`), leads a process group of its own (a Ctrl-C
//! at the terminal is the program's to handle), and ends when its socket closes. If it is
//! gone, stopped or refuses, the pool marks it broken, reaps it and spawns its workers
//! instead; a stopped server is seen as such within [`STOP_CHECK`], not after the
//! handshake timeout, while a merely slow one (a loaded machine) has all of it. A rank of
//! an MPI job starts none (it works through MPI), and the launcher of one ends its own.
//!
//! Every worker's output goes to one thread of the pool's process, the output hub
//! ([`crate::engine::pool`]'s `spawn`), not to a thread of its own: a start costs the pool
//! a pipe and a socket pair, no thread.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;
use std::time::Duration;

use ipc_channel::ipc::{IpcReceiver, IpcSender};
use serde::{Deserialize, Serialize};

use crate::engine::protocol::{FromWorker, Registered, ToWorker};
use crate::engine::sealed::{recv_message, send_message};
use crate::engine::sys::{OneThread, Process, fork_child, fork_sibling, is_our_child};
use crate::engine::worker::ForkedEnds;
use crate::workload::Registry;

/// The most requests the pool sends before it reads their answers: it bounds the
/// descriptors in flight (see [`crate::engine::limits`]).
pub(crate) const BATCH: usize = 32;
/// The server's name (`comm`): its command line is the program's.
pub(crate) const SERVER_NAME: &std::ffi::CStr = c"procpool-server";
/// A request's bytes are at most this long.
const REQUEST_MAX: usize = 256;

/// What the pool asks for: one worker (id, CPU), and the pool's open-file limit, which
/// the worker takes on (the pool may have raised its own since `init`). Its descriptors
/// travel with it: the shared region's memfd, the worker's end of its input socket and the
/// write end of its output pipe.
#[derive(Serialize, Deserialize)]
struct Request {
    open_files: u64,
    id: u32,
    cpu: Option<u32>,
}

/// A worker the server forked: its pid and the pool's ends of its channels.
#[derive(Serialize, Deserialize)]
struct Forked {
    id: u32,
    pid: u32,
    tx: IpcSender<ToWorker>,
    rx: IpcReceiver<FromWorker>,
}

/// The server's answer to one request: the worker, or why not.
type Reply = Result<Forked, String>;

/// The program's link to its fork server.
struct Server {
    /// The process that forked the server and may talk to it: a copy of this program
    /// made by `fork` (a worker started with `--start fork`, a daemon) holds the same
    /// link, and must not use it.
    owner: u32,
    /// The server, our child.
    process: Process,
    /// Our end of the socket pair requests go on.
    requests: OwnedFd,
    /// Where the answers come.
    replies: IpcReceiver<Reply>,
    /// The workloads the server's registry holds.
    catalogue: Vec<Registered>,
}

/// The program's fork server, once `init` started it; `None` when it could not, or once
/// it broke.
static SERVER: Mutex<Option<Server>> = Mutex::new(None);

/// The program's fork server, if this process started it and it works. (`None` in a
/// copy of the program made by `fork`: the server is the original's.)
fn server() -> std::sync::MutexGuard<'static, Option<Server>> {
    let mut slot = SERVER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if slot.as_ref().is_some_and(|s| s.owner != std::process::id()) {
        // Forget it without a word to it: dropping closes only this copy's descriptors.
        *slot = None;
    }
    slot
}

/// Starts the program's fork server with `registry`, unless it runs already or the program
/// has more than one thread (then pools spawn their workers). Called by `init`.
pub(crate) fn start(registry: &Registry) {
    if available() || crate::engine::sys::thread_count() != Some(1) {
        return;
    }
    // A rank of an MPI job works through MPI, not through pools of its own.
    #[cfg(feature = "mpi")]
    if crate::engine::sys::under_mpirun() {
        return;
    }
    // Not under the lock: the server (and every worker it forks) gets a copy of this
    // process's memory, and a lock held at the fork would stay held in the copy.
    if let Ok(started) = fork_server(registry) {
        *server() = Some(started);
    }
}

/// Ends the program's fork server, if this process has one, and reaps it: for a process
/// that will never start a worker through it (the launcher of an MPI job).
#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
pub(crate) fn stop() {
    if let Some(mut gone) = server().take() {
        gone.process.kill();
        let _ = gone.process.wait();
    }
}

/// Whether this program has a working fork server.
pub(crate) fn available() -> bool {
    server().is_some()
}

/// Forks the server.
fn fork_server(registry: &Registry) -> io::Result<Server> {
    let (requests, server_end) = crate::engine::sealed::channel()?;
    let (reply_tx, replies) = ipc_channel::ipc::channel::<Reply>()?;
    let program = nix::unistd::getpid();
    // The server's copies of our ends are closed in the server (`take`), so that only the
    // server holds its own.
    let mut ours = Some((requests, replies));
    let mut link = Some((server_end, reply_tx));
    let pid = fork_child(|| {
        drop(ours.take());
        match link.take() {
            Some((socket, replies)) => serve(socket, replies, registry, program),
            None => 1,
        }
    })?;
    drop(link);
    // The server's own first step, done here too so that it holds from the fork on: in a
    // group of its own, stopped before it set its death signal and orphaned when the
    // program dies, it is sent SIGHUP and SIGCONT by the kernel, and ends.
    let group = nix::unistd::Pid::from_raw(pid as i32);
    let _ = nix::unistd::setpgid(group, group);
    let (requests, replies) = ours
        .take()
        .ok_or_else(|| io::Error::other("lost our ends"))?;
    Ok(Server {
        owner: std::process::id(),
        process: Process::from_pid(pid),
        requests,
        replies,
        catalogue: registry.catalogue(),
    })
}

/// The server's life: set itself up, then answer requests until the socket closes.
fn serve(
    socket: OwnedFd,
    replies: IpcSender<Reply>,
    registry: &Registry,
    program: nix::unistd::Pid,
) -> i32 {
    if !crate::engine::sys::own_group_and_death_signal(program) {
        return 1;
    }
    // Checked once: the server never starts a thread, so every fork below may rely on it.
    let Ok(one) = OneThread::check("a fork server", "start it before any thread") else {
        return 1;
    };
    let _ = nix::sys::prctl::set_name(SERVER_NAME);
    // The program's stdin, stdout and stderr are not the server's to hold: whoever reads
    // the program's output through a pipe would wait for the server to end too. Its
    // workers get their output pipe from the pool, and /dev/null for input, as spawned
    // ones do.
    if let Ok(null) = nix::fcntl::open(
        c"/dev/null",
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    ) {
        let _ = nix::unistd::dup2_stdin(&null);
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
    // Up to the hard limit: a request carries three descriptors a worker, and the server
    // makes four more before it forks each. Each worker takes the pool's own limit.
    let _ = crate::engine::sys::set_open_file_limit(u64::MAX);
    // What every worker would otherwise work out for itself, worked out once here: the
    // CPUs it may use, and ipc-channel's socket buffer size (found by its first send).
    crate::engine::worker::cores();
    if let Ok((tx, rx)) = ipc_channel::ipc::channel::<()>() {
        let _ = tx.send(());
        let _ = rx.try_recv();
    }
    let mut link = Some((socket, replies));
    loop {
        let Some((socket, _)) = link.as_ref() else {
            return 1;
        };
        let reply = match recv_message(socket.as_fd(), REQUEST_MAX) {
            Ok(Some((bytes, fds))) => fork_one(&one, &mut link, &bytes, fds, registry, program),
            Ok(None) => return 0,
            Err(e) => Err(format!("the fork server could not read a request: {e}")),
        };
        let Some((_, replies)) = link.as_ref() else {
            return 1;
        };
        if replies.send(reply).is_err() {
            return 0;
        }
    }
}

/// Forks the worker one request asks for. `link` is the server's own: the worker closes
/// its copy, and holds nothing else of the server's (requests are read one at a time).
fn fork_one(
    one: &OneThread,
    link: &mut Option<(OwnedFd, IpcSender<Reply>)>,
    bytes: &[u8],
    fds: Vec<OwnedFd>,
    registry: &Registry,
    program: nix::unistd::Pid,
) -> Reply {
    let Ok(Request {
        open_files,
        id,
        cpu,
    }) = postcard::from_bytes::<Request>(bytes)
    else {
        return Err("the fork server got a request it cannot read".into());
    };
    let Ok::<[OwnedFd; 3], _>([shm, inputs, output]) = fds.try_into() else {
        return Err(format!(
            "the request for worker {id} did not carry its 3 descriptors"
        ));
    };
    let channels = ipc_channel::ipc::channel::<ToWorker>().and_then(|to_worker| {
        ipc_channel::ipc::channel::<FromWorker>().map(|from_worker| (to_worker, from_worker))
    });
    let ((tx, from_parent), (to_parent, rx)) =
        channels.map_err(|e| format!("cannot make the channels of worker {id}: {e}"))?;
    let mut pool_ends = Some((tx, rx));
    let mut worker_ends = Some((from_parent, to_parent, inputs, output));
    let pid = fork_sibling(one, || {
        // The worker keeps what is its own and closes the server's link and the pool's
        // ends of its channels.
        drop(link.take());
        drop(pool_ends.take());
        let Some((from_parent, to_parent, inputs, output)) = worker_ends.take() else {
            return 1;
        };
        // The pool's open-file limit, as a spawned worker inherits it.
        if crate::engine::sys::set_open_file_limit(open_files).is_err() {
            return 1;
        }
        let ends = ForkedEnds {
            id: id as usize,
            to_parent,
            from_parent,
            inputs,
            output,
            cpu: cpu.map(|c| c as usize),
        };
        crate::engine::worker::enter_forked(ends, shm.as_fd(), registry, program)
    })
    .map_err(|e| format!("cannot fork worker {id}: {e}"))?;
    // Ours are closed here (`worker_ends`, `shm`): only the worker holds its ends now.
    let (tx, rx) = pool_ends.take().ok_or("lost the channels of a worker")?;
    Ok(Forked { id, pid, tx, rx })
}

/// A worker the fork server made for the pool, with the pool's ends of everything it holds.
pub(crate) struct ForkedWorker {
    /// Its id in the pool.
    pub id: usize,
    /// Its process id: a child of this process, not yet reaped.
    pub pid: u32,
    /// The channel to it.
    pub tx: IpcSender<ToWorker>,
    /// The channel from it.
    pub rx: IpcReceiver<FromWorker>,
    /// The read end of its output pipe.
    pub output: io::PipeReader,
    /// Our end of its private socket for input descriptors.
    pub inputs_socket: OwnedFd,
}

/// Has the fork server fork `workers` (id, CPU) with the shared region `shm`, waiting at
/// most `timeout` for each answer; with them, the workloads the server's registry holds.
///
/// On any failure the workers this call made are killed and reaped, and the error says
/// why; when the server itself failed (gone, silent, or it answered nonsense) it is
/// reaped and marked broken, and later calls fail at once, so that the pool spawns.
pub(crate) fn fork_workers(
    shm: BorrowedFd<'_>,
    workers: &[(usize, Option<usize>)],
    timeout: Duration,
) -> io::Result<(Vec<ForkedWorker>, Vec<Registered>)> {
    let mut slot = server();
    let Some(server) = slot.as_mut() else {
        return Err(io::Error::other("this program has no fork server"));
    };
    let mut made: Vec<ForkedWorker> = Vec::with_capacity(workers.len());
    for batch in workers.chunks(BATCH) {
        match fork_one_batch(server, shm, batch, timeout, &mut made) {
            Ok(()) => {}
            Err((e, broken)) => {
                for worker in &made {
                    let mut process = Process::from_pid(worker.pid);
                    process.kill();
                    let _ = process.wait();
                }
                if broken && let Some(mut gone) = slot.take() {
                    gone.process.kill();
                    let _ = gone.process.wait();
                }
                return Err(e);
            }
        }
    }
    Ok((made, server.catalogue.clone()))
}

/// How often the pool, waiting for an answer, looks whether the server is stopped.
const STOP_CHECK: Duration = Duration::from_millis(10);

/// The server's next answer, within `timeout`. A server that is stopped (SIGSTOP, a
/// debugger) is given up on as soon as that is seen, within [`STOP_CHECK`]: it would
/// answer no sooner than someone resumes it. A server that is merely slow (a loaded
/// machine) has the whole `timeout`. The error says the server is broken.
fn await_reply(server: &Server, timeout: Duration) -> Result<Reply, (io::Error, bool)> {
    let broken = |what: String| (io::Error::other(what), true);
    let deadline = std::time::Instant::now().checked_add(timeout);
    loop {
        let left = deadline.map_or(Duration::MAX, |d| {
            d.saturating_duration_since(std::time::Instant::now())
        });
        match server.replies.try_recv_timeout(left.min(STOP_CHECK)) {
            Ok(reply) => return Ok(reply),
            Err(ipc_channel::TryRecvError::Empty) if !left.is_zero() => {
                if crate::engine::sys::is_stopped(server.process.id()) {
                    return Err(broken(
                        "the fork server is stopped (SIGSTOP or a debugger)".to_string(),
                    ));
                }
            }
            Err(e) => {
                return Err(broken(format!(
                    "the fork server did not answer within {timeout:?}: {e:?}"
                )));
            }
        }
    }
}

/// Up to [`BATCH`] requests, then their answers; the error says whether the server is
/// broken.
fn fork_one_batch(
    server: &mut Server,
    shm: BorrowedFd<'_>,
    batch: &[(usize, Option<usize>)],
    timeout: Duration,
    made: &mut Vec<ForkedWorker>,
) -> Result<(), (io::Error, bool)> {
    let local = |e: io::Error| (e, false);
    let broken = |what: String| (io::Error::other(what), true);
    let open_files = crate::engine::sys::open_file_limit().map_or(0, |(soft, _)| soft);
    let mut ours = Vec::with_capacity(batch.len());
    for &(id, cpu) in batch {
        let (reader, writer) = io::pipe().map_err(local)?;
        let (inputs_socket, inputs_end) = crate::engine::sealed::channel().map_err(local)?;
        let request = Request {
            open_files,
            id: id as u32,
            cpu: cpu.map(|c| c as u32),
        };
        let bytes = postcard::to_stdvec(&request).map_err(|e| local(io::Error::other(e)))?;
        let writer = OwnedFd::from(writer);
        send_message(
            server.requests.as_fd(),
            &bytes,
            &[shm, inputs_end.as_fd(), writer.as_fd()],
        )
        .map_err(|e| broken(format!("the fork server is gone: {e}")))?;
        // Only the worker will hold these ends (`inputs_end` and `writer` close here).
        ours.push((id, reader, inputs_socket));
    }
    let mut failed = None;
    for (id, output, inputs_socket) in ours {
        let reply = await_reply(server, timeout)?;
        let forked = match reply {
            Ok(forked) => forked,
            // The server could not fork this one (a limit, a full table): not broken.
            Err(error) => {
                failed.get_or_insert(error);
                continue;
            }
        };
        if !is_our_child(forked.pid) {
            // Not ours: never signalled, never waited for.
            return Err(broken(format!(
                "the fork server named process {} for worker {id}, which is not a child of \
                 this program; refused",
                forked.pid
            )));
        }
        made.push(ForkedWorker {
            id,
            pid: forked.pid,
            tx: forked.tx,
            rx: forked.rx,
            output,
            inputs_socket,
        });
        if forked.id as usize != id {
            return Err(broken(format!(
                "the fork server answered for worker {} when asked for worker {id}; refused",
                forked.id
            )));
        }
    }
    match failed {
        Some(error) => Err((io::Error::other(error), false)),
        None => Ok(()),
    }
}
