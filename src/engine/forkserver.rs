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
//! **A request** is one message on the socket pair: how many workers, their ids and CPUs,
//! and the descriptors each needs (`SCM_RIGHTS`): the shared region's memfd, each worker's
//! end of its private input socket and the write end of its output pipe. The server makes
//! the two ipc-channels of each worker, forks it, and answers with the pool's ends of those
//! channels and the worker's pid, up to [`BATCH`] workers a message. The pool believes a pid
//! only when it is a child of its own ([`crate::engine::sys::is_our_child`]).
//!
//! **Its lifetime.** Started eagerly by `init` (the only moment the program is sure to
//! have a single thread); a program that never builds a pool pays that one fork. It dies
//! with the main thread (`PR_SET_PDEATHSIG`), leads a process group of its own (a Ctrl-C
//! at the terminal is the program's to handle), and ends when its socket closes. If it is
//! gone, stopped or refuses, the pool marks it broken, reaps it and spawns its workers
//! instead.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;
use std::time::Duration;

use ipc_channel::ipc::{IpcReceiver, IpcSender};
use serde::{Deserialize, Serialize};

use crate::engine::protocol::{FromWorker, Registered, ToWorker};
use crate::engine::sealed::{recv_message, send_message};
use crate::engine::sys::{Process, fork_child, fork_sibling, is_our_child};
use crate::engine::worker::ForkedEnds;
use crate::workload::Registry;

/// The most workers one request asks for: ipc-channel carries at most 64 descriptors in a
/// message, and each worker's answer holds two (its channels).
pub(crate) const BATCH: usize = 32;
/// The server's name (`comm`): its command line is the program's.
pub(crate) const SERVER_NAME: &std::ffi::CStr = c"procpool-server";
/// A request's bytes are at most this long (a few per worker).
const REQUEST_MAX: usize = 4096;

/// What the pool asks for: workers (id, CPU), and the pool's open-file limit, which the
/// server takes on before it forks them (the pool may have raised its own since `init`).
#[derive(Serialize, Deserialize)]
struct Request {
    open_files: u64,
    workers: Vec<(u32, Option<u32>)>,
}

/// A worker the server forked: its pid and the pool's ends of its channels.
#[derive(Serialize, Deserialize)]
struct Forked {
    id: u32,
    pid: u32,
    tx: IpcSender<ToWorker>,
    rx: IpcReceiver<FromWorker>,
}

/// The server's answer to one request: the workers it forked, in the order asked, and why
/// it stopped short, if it did.
#[derive(Serialize, Deserialize)]
struct Reply {
    forked: Vec<Forked>,
    error: Option<String>,
}

/// The program's link to its fork server.
struct Server {
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

fn server() -> std::sync::MutexGuard<'static, Option<Server>> {
    SERVER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts the program's fork server with `registry`, unless it runs already or the program
/// has more than one thread (then pools spawn their workers). Called by `init`.
pub(crate) fn start(registry: &Registry) {
    let mut slot = server();
    if slot.is_some() || crate::engine::sys::thread_count() != Some(1) {
        return;
    }
    if let Ok(started) = fork_server(registry) {
        *slot = Some(started);
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
    let own_group = nix::unistd::Pid::from_raw(0);
    if nix::unistd::setpgid(own_group, own_group).is_err()
        || nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).is_err()
        || nix::unistd::getppid() != program
    {
        return 1;
    }
    let _ = nix::sys::prctl::set_name(SERVER_NAME);
    // Up to the hard limit: a request carries three descriptors a worker, and the server
    // makes four more before it forks each. Each worker takes the pool's own limit.
    let _ = crate::engine::sys::set_open_file_limit(u64::MAX);
    let mut link = Some((socket, replies));
    loop {
        let Some((socket, _)) = link.as_ref() else {
            return 1;
        };
        let reply = match recv_message(socket.as_fd(), REQUEST_MAX) {
            Ok(Some((bytes, fds))) => fork_batch(&mut link, &bytes, fds, registry, program),
            Ok(None) => return 0,
            Err(e) => Reply {
                forked: Vec::new(),
                error: Some(format!("the fork server could not read a request: {e}")),
            },
        };
        let Some((_, replies)) = link.as_ref() else {
            return 1;
        };
        if replies.send(reply).is_err() {
            return 0;
        }
    }
}

/// Forks the workers one request asks for. `link` is the server's own (each worker closes
/// its copy).
fn fork_batch(
    link: &mut Option<(OwnedFd, IpcSender<Reply>)>,
    bytes: &[u8],
    fds: Vec<OwnedFd>,
    registry: &Registry,
    program: nix::unistd::Pid,
) -> Reply {
    let refuse = |error: String| Reply {
        forked: Vec::new(),
        error: Some(error),
    };
    let Ok(Request {
        open_files,
        workers: wanted,
    }) = postcard::from_bytes::<Request>(bytes)
    else {
        return refuse("the fork server got a request it cannot read".into());
    };

    if wanted.is_empty() || wanted.len() > BATCH || fds.len() != 1 + 2 * wanted.len() {
        return refuse(format!(
            "the fork server got a request for {} workers with {} descriptors",
            wanted.len(),
            fds.len()
        ));
    }
    let mut fds = fds.into_iter();
    let Some(shm) = fds.next() else {
        return refuse("no shared region in the request".into());
    };
    // Each worker's input socket and output pipe, taken by that worker only.
    let mut own: Vec<Option<(OwnedFd, OwnedFd)>> = Vec::with_capacity(wanted.len());
    while let (Some(inputs), Some(output)) = (fds.next(), fds.next()) {
        own.push(Some((inputs, output)));
    }
    let mut forked: Vec<Forked> = Vec::with_capacity(wanted.len());
    for (i, &(id, cpu)) in wanted.iter().enumerate() {
        let channels = ipc_channel::ipc::channel::<ToWorker>().and_then(|to_worker| {
            ipc_channel::ipc::channel::<FromWorker>().map(|from_worker| (to_worker, from_worker))
        });
        let ((tx, from_parent), (to_parent, rx)) = match channels {
            Ok(c) => c,
            Err(e) => return stop_short(forked, format!("cannot make a worker's channels: {e}")),
        };
        let mut pool_ends = Some((tx, rx));
        let mut worker_ends = Some((from_parent, to_parent));
        let pid = fork_sibling(|| {
            // The worker keeps what is its own and closes the rest: the server's link,
            // the pool's ends of every channel, the other workers' descriptors.
            drop(link.take());
            drop(std::mem::take(&mut forked));
            drop(pool_ends.take());
            let mine = own.get_mut(i).and_then(Option::take);
            own.clear();
            let (Some((from_parent, to_parent)), Some((inputs, output))) =
                (worker_ends.take(), mine)
            else {
                return 1;
            };
            let ends = ForkedEnds {
                id: id as usize,
                to_parent,
                from_parent,
                inputs,
                output,
                cpu: cpu.map(|c| c as usize),
            };
            // The pool's open-file limit, as a spawned worker inherits it.
            if crate::engine::sys::set_open_file_limit(open_files).is_err() {
                return 1;
            }
            crate::engine::worker::enter_forked(ends, shm.as_fd(), registry, program)
        });
        // Ours are closed: only the worker holds its ends now.
        drop(worker_ends);
        if let Some(slot) = own.get_mut(i) {
            *slot = None;
        }
        let pid = match pid {
            Ok(pid) => pid,
            Err(e) => return stop_short(forked, format!("cannot fork worker {id}: {e}")),
        };
        let Some((tx, rx)) = pool_ends.take() else {
            return stop_short(forked, "lost a worker's channels".into());
        };
        forked.push(Forked { id, pid, tx, rx });
    }
    Reply {
        forked,
        error: None,
    }
}

/// The answer for a batch that stopped at `error`, with the workers forked before it.
fn stop_short(forked: Vec<Forked>, error: String) -> Reply {
    Reply {
        forked,
        error: Some(error),
    }
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

/// One request and its answer; the error says whether the server is broken.
fn fork_one_batch(
    server: &mut Server,
    shm: BorrowedFd<'_>,
    batch: &[(usize, Option<usize>)],
    timeout: Duration,
    made: &mut Vec<ForkedWorker>,
) -> Result<(), (io::Error, bool)> {
    let local = |e: io::Error| (e, false);
    let broken = |what: String| (io::Error::other(what), true);
    let mut ours = Vec::with_capacity(batch.len());
    let mut theirs: Vec<OwnedFd> = Vec::with_capacity(2 * batch.len());
    for _ in batch {
        let (reader, writer) = io::pipe().map_err(local)?;
        let (inputs_socket, inputs_end) = crate::engine::sealed::channel().map_err(local)?;
        ours.push((reader, inputs_socket));
        theirs.push(inputs_end);
        theirs.push(writer.into());
    }
    let request = Request {
        open_files: crate::engine::sys::open_file_limit().map_or(0, |(soft, _)| soft),
        workers: batch
            .iter()
            .map(|&(id, cpu)| (id as u32, cpu.map(|c| c as u32)))
            .collect(),
    };
    let bytes = postcard::to_stdvec(&request).map_err(|e| local(io::Error::other(e)))?;
    let mut fds: Vec<BorrowedFd<'_>> = vec![shm];
    fds.extend(theirs.iter().map(AsFd::as_fd));
    send_message(server.requests.as_fd(), &bytes, &fds)
        .map_err(|e| broken(format!("the fork server is gone: {e}")))?;
    // Only the workers hold their ends from now on.
    drop(fds);
    drop(theirs);
    let reply = server.replies.try_recv_timeout(timeout).map_err(|e| {
        broken(format!(
            "the fork server did not answer within {timeout:?}: {e:?}"
        ))
    })?;
    let short = reply.error.clone();
    let complete = reply.forked.len() == batch.len();
    let mut refused = None;
    for (forked, ((id, _), (output, inputs_socket))) in
        reply.forked.into_iter().zip(batch.iter().zip(ours))
    {
        if !is_our_child(forked.pid) {
            // Not ours: never signalled, never waited for.
            refused = Some(forked.pid);
            continue;
        }
        if forked.id as usize != *id {
            let mut process = Process::from_pid(forked.pid);
            process.kill();
            let _ = process.wait();
            refused = Some(forked.pid);
            continue;
        }
        made.push(ForkedWorker {
            id: *id,
            pid: forked.pid,
            tx: forked.tx,
            rx: forked.rx,
            output,
            inputs_socket,
        });
    }
    if let Some(pid) = refused {
        return Err(broken(format!(
            "the fork server named process {pid} for a worker it was not asked for, or that \
             is not a child of this program; refused"
        )));
    }
    if !complete && short.is_none() {
        return Err(broken(
            "the fork server answered for fewer workers than asked".into(),
        ));
    }
    match short {
        Some(error) => Err((io::Error::other(error), false)),
        None => Ok(()),
    }
}
