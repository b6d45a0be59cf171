//! The worker side: a handshake, then `loop { receive chunk -> kernel into shm -> reply }`.
//!
//! A spawned worker opens an ipc-channel one-shot server in the directory procpool gave it
//! (`TMPDIR`, the pool's private 0700 directory), reports the socket's path on a pipe only
//! procpool holds, and waits, with a deadline, for procpool to connect and send `Welcome`
//! with the channel for its answers. The worker never deletes anything it did not create.
//!
//! A worker is the same binary as the parent, re-executed with [`WORKER_ARG`] as its first
//! argument; [`crate::init_with`] notices that and calls [`serve`] before `main` does
//! anything else.

use std::io::Write;
use std::os::fd::{BorrowedFd, FromRawFd, RawFd};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ipc_channel::ipc::{IpcOneShotServer, IpcSender};

use crate::engine::fault::{Fault, FaultAction};
use crate::engine::protocol::{
    FromWorker, JobSpec, Layout, PROTOCOL_VERSION, ToWorker, Transport, WORKER_ARG,
};
use crate::engine::shm::Mapping;
use crate::workload::{DynKernel, Registry};

/// What the parent tells a worker on its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WorkerArgs {
    /// The inherited memfd of the shared region.
    pub shm_fd: RawFd,
    /// The worker's id in the pool.
    pub id: usize,
    /// The inherited write end of a pipe on which the worker reports its socket's path.
    pub report_fd: RawFd,
    /// How long the worker waits for procpool to connect before it gives up.
    pub timeout: Duration,
}

impl WorkerArgs {
    /// The arguments after the executable name.
    pub(crate) fn to_args(&self) -> Vec<String> {
        vec![
            WORKER_ARG.to_string(),
            self.shm_fd.to_string(),
            self.id.to_string(),
            self.report_fd.to_string(),
            // Whole milliseconds, at least one; a timeout past u64::MAX ms waits as long.
            self.timeout
                .as_millis()
                .clamp(1, u128::from(u64::MAX))
                .to_string(),
        ]
    }

    /// Parses what [`WorkerArgs::to_args`] produced (including [`WORKER_ARG`]).
    pub(crate) fn from_args(args: &[String]) -> Result<Self, String> {
        let fd = |s: &str| -> Result<RawFd, String> {
            s.parse::<RawFd>()
                .ok()
                .filter(|&fd| fd > 2)
                .ok_or_else(|| format!("bad descriptor `{s}`"))
        };
        match args {
            [flag, shm, id, report, timeout_ms] if flag == WORKER_ARG => Ok(WorkerArgs {
                shm_fd: fd(shm)?,
                id: id.parse().map_err(|_| format!("bad id `{id}`"))?,
                report_fd: fd(report)?,
                timeout: timeout_ms
                    .parse::<u64>()
                    .ok()
                    .filter(|&ms| ms > 0)
                    .map(Duration::from_millis)
                    .ok_or_else(|| format!("bad timeout `{timeout_ms}`"))?,
            }),
            _ => Err(format!(
                "usage: {WORKER_ARG} SHM_FD ID REPORT_FD TIMEOUT_MS (this entry is started by \
                 procpool itself)"
            )),
        }
    }
}

/// The state of the job a worker is serving.
struct CurrentJob {
    /// The shared region (empty with the channel transport, which does not write it).
    mapping: Mapping,
    transport: Transport,
    kernel: Box<dyn DynKernel>,
    elem_size: usize,
    layout: Layout,
    faults: Vec<Fault>,
}

/// Runs the worker until the parent says `Shutdown` or goes away. Returns the exit status.
pub(crate) fn serve(args: &WorkerArgs, registry: &Registry) -> i32 {
    crate::engine::sys::ignore_interrupts();
    quiet_panics();
    match serve_inner(args, registry) {
        Ok(()) => 0,
        Err(message) => {
            // Our stderr reaches the user prefixed with our id.
            eprintln!("error: {message}");
            1
        }
    }
}

fn serve_inner(args: &WorkerArgs, registry: &Registry) -> Result<(), String> {
    for (fd, what) in [(args.shm_fd, "SHM_FD"), (args.report_fd, "REPORT_FD")] {
        if !crate::engine::sys::fd_is_open(fd) {
            return Err(format!(
                "{what} {fd} is not an open descriptor: this entry is started by procpool itself"
            ));
        }
    }
    // Our server's socket goes into TMPDIR, which procpool set to its private 0700
    // directory: nobody but our own user can reach it.
    let (server, name) = IpcOneShotServer::<ToWorker>::new().map_err(|e| {
        format!(
            "cannot create the handshake socket in {}: {e}",
            std::env::temp_dir().display()
        )
    })?;
    {
        // SAFETY: procpool made this descriptor (a pipe's write end) for us alone and kept
        // it open across exec (checked open above); nothing else in this process uses it,
        // and the File closes it at the end of this block.
        let mut report = unsafe { std::fs::File::from_raw_fd(args.report_fd) };
        writeln!(report, "{name}")
            .map_err(|e| format!("cannot tell procpool where to connect: {e}"))?;
    }

    // accept() blocks until someone connects, forever if nobody does: wait on a thread,
    // with a deadline.
    let (accepted_tx, accepted) = mpsc::channel();
    std::thread::Builder::new()
        .name("procpool-accept".into())
        .spawn(move || {
            let _ = accepted_tx.send(server.accept());
        })
        .map_err(|e| format!("cannot start the handshake thread: {e}"))?;
    let (from_parent, to_parent) = match accepted.recv_timeout(args.timeout) {
        Ok(Ok((rx, ToWorker::Welcome { to_parent }))) => (rx, to_parent),
        Ok(Ok((_, other))) => {
            return Err(format!("procpool sent {other:?} instead of Welcome"));
        }
        Ok(Err(e)) => return Err(format!("the handshake failed: {e}")),
        Err(_) => {
            // The server is still waiting on its thread; its socket and directory are ours
            // (created just above), so we remove them before we go.
            let socket = Path::new(&name);
            let _ = std::fs::remove_file(socket);
            if let Some(dir) = socket.parent() {
                let _ = std::fs::remove_dir(dir);
            }
            return Err(format!(
                "procpool did not connect within {:?}; giving up",
                args.timeout
            ));
        }
    };
    to_parent
        .send(FromWorker::Hello {
            version: PROTOCOL_VERSION,
            workloads: registry.catalogue(),
        })
        .map_err(|e| format!("cannot greet the parent: {e}"))?;

    // SAFETY: the parent passed us this descriptor number and kept it open across exec for
    // us (checked open above); nothing else in this process uses it.
    let shm = unsafe { BorrowedFd::borrow_raw(args.shm_fd) };
    serve_loop(&to_parent, &from_parent, shm, registry)
}

/// The worker of a forked start: channels and the shared region are inherited, so there is
/// no handshake. Returns the exit status.
pub(crate) fn serve_forked(
    to_parent: &IpcSender<FromWorker>,
    from_parent: &ipc_channel::ipc::IpcReceiver<ToWorker>,
    shm: BorrowedFd<'_>,
    registry: &Registry,
) -> i32 {
    crate::engine::sys::ignore_interrupts();
    quiet_panics();
    match serve_loop(to_parent, from_parent, shm, registry) {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("error: {message}");
            1
        }
    }
}

/// `loop { receive -> run the kernel into shared memory -> reply }` until Shutdown or the
/// parent goes away.
fn serve_loop(
    to_parent: &IpcSender<FromWorker>,
    from_parent: &ipc_channel::ipc::IpcReceiver<ToWorker>,
    shm: BorrowedFd<'_>,
    registry: &Registry,
) -> Result<(), String> {
    let mut job: Option<CurrentJob> = None;

    loop {
        let msg = match from_parent.recv() {
            Ok(msg) => msg,
            // The parent closed the channel (or died): nothing more to do.
            Err(_) => return Ok(()),
        };
        match msg {
            ToWorker::Job(spec) => {
                // The previous job's mapping serves again when the region kept its length
                // (the parent reuses it between jobs); otherwise it is unmapped first.
                let previous = job
                    .take()
                    .map(|j| j.mapping)
                    .filter(|m| m.len() as u64 == spec.region_len);
                match start_job(&spec, shm, registry, previous) {
                    Ok(j) => job = Some(j),
                    Err(message) => {
                        let _ = to_parent.send(FromWorker::Failed {
                            message: message.clone(),
                        });
                        return Err(message);
                    }
                }
            }
            ToWorker::Chunk {
                id,
                start,
                end,
                attempt,
            } => {
                let job = job.as_ref().ok_or("received a chunk before any job")?;
                let began = Instant::now();
                // A panicking kernel is the caller's bug, not a crash: report it and serve on.
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run_chunk(job, id, start, end, attempt)
                }));
                let (reduction, data) = match ran {
                    Ok(ran) => ran?,
                    Err(payload) => {
                        let (message, location) = panic_report(payload.as_ref());
                        let panicked = FromWorker::Panicked {
                            id,
                            message,
                            location,
                        };
                        if to_parent.send(panicked).is_err() {
                            return Ok(());
                        }
                        continue;
                    }
                };
                let compute_ns = began.elapsed().as_nanos() as u64;
                let done = FromWorker::Done {
                    id,
                    compute_ns,
                    reduction,
                    data: data.map(serde_bytes::ByteBuf::from),
                };
                if to_parent.send(done).is_err() {
                    return Ok(());
                }
            }
            ToWorker::Shutdown => return Ok(()),
            ToWorker::Welcome { .. } => return Err("a second Welcome".into()),
        }
    }
}

fn start_job(
    spec: &JobSpec,
    shm: BorrowedFd<'_>,
    registry: &Registry,
    previous: Option<Mapping>,
) -> Result<CurrentJob, String> {
    let kernel = registry.instantiate(&spec.workload, &spec.params, spec.elem_size as usize)?;
    let mapping = match previous {
        Some(mapping) => mapping,
        None => Mapping::new(shm, spec.region_len).map_err(|e| {
            format!(
                "cannot map the shared region ({} bytes): {e}",
                spec.region_len
            )
        })?,
    };
    Ok(CurrentJob {
        mapping,
        transport: spec.transport,
        kernel,
        elem_size: spec.elem_size as usize,
        layout: spec.layout,
        faults: spec.faults.clone(),
    })
}

fn run_chunk(
    job: &CurrentJob,
    id: u64,
    start: u64,
    end: u64,
    attempt: u32,
) -> Result<(Option<u64>, Option<Vec<u8>>), String> {
    let fault = job
        .faults
        .iter()
        .find(|f| f.fires(id, attempt))
        .map(|f| f.action);
    if let Some(action) = fault {
        inject_before(action, id);
    }
    // A chunk never crosses a window, so its bytes are contiguous in the region.
    let bytes = |i: u64| {
        usize::try_from(i)
            .ok()
            .and_then(|i| i.checked_mul(job.elem_size))
    };
    let first = job.layout.offset(start);
    let (Some(lo), Some(hi)) = (bytes(first), bytes(first + (end - start))) else {
        return Err(format!(
            "chunk {id} ({start}..{end}) does not fit in memory"
        ));
    };
    if job.transport == Transport::Channel {
        // Compute into our own memory; the bytes travel back in the Done message.
        let mut out = vec![0u8; hi.saturating_sub(lo)];
        let reduction = job.kernel.run(start..end, &mut out);
        if fault == Some(FaultAction::Corrupt) && !out.is_empty() {
            out[0] ^= 0x5a;
        }
        return Ok((reduction, Some(out)));
    }
    if lo > hi || hi > job.mapping.len() {
        return Err(format!(
            "chunk {id} ({start}..{end}) lies outside the shared region of {} bytes",
            job.mapping.len()
        ));
    }
    job.mapping.populate(lo..hi);
    // SAFETY: the parent hands each chunk, a range disjoint from every other chunk's, to one
    // worker at a time and reads it only after our `Done`; so for the life of this slice no
    // other process touches these bytes.
    let out = unsafe { job.mapping.slice_mut(lo..hi) };
    let reduction = job.kernel.run(start..end, out);
    if fault == Some(FaultAction::Corrupt) && !out.is_empty() {
        out[0] ^= 0x5a;
    }
    Ok((reduction, None))
}

/// Where the last panic of this worker happened, kept by [`quiet_panics`]'s hook.
static PANIC_LOCATION: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Replaces the default panic hook, which prints the message (and a backtrace) on stderr,
/// with one that only notes where the panic happened: the parent gets message and
/// location in one error instead of the worker printing them.
fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
        if let Ok(mut last) = PANIC_LOCATION.lock() {
            *last = location;
        }
    }));
}

/// The message of a caught panic, and where it happened.
fn panic_report(payload: &(dyn std::any::Any + Send)) -> (String, Option<String>) {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with a payload that is not a string".to_string());
    let location = PANIC_LOCATION.lock().ok().and_then(|mut l| l.take());
    (message, location)
}

/// Makes this worker fail the way `action` says, right before running chunk `id`.
fn inject_before(action: FaultAction, id: u64) {
    use nix::sys::signal::Signal;
    match action {
        FaultAction::Kill => crate::engine::sys::die_by_signal(Signal::SIGKILL),
        FaultAction::Abort => std::process::abort(),
        FaultAction::Panic => panic!("injected panic at chunk {id}"),
        FaultAction::Segv => crate::engine::sys::die_by_signal(Signal::SIGSEGV),
        FaultAction::Exit => std::process::exit(3),
        FaultAction::Hang => loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        },
        FaultAction::Corrupt => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_args_round_trip() {
        let a = WorkerArgs {
            shm_fd: 5,
            id: 3,
            report_fd: 7,
            timeout: Duration::from_millis(1500),
        };
        assert_eq!(WorkerArgs::from_args(&a.to_args()), Ok(a.clone()));
        assert!(WorkerArgs::from_args(&["x".into()]).is_err());
        // Any timeout a library caller passes reaches the worker: the longest as u64::MAX
        // milliseconds, the shortest as one.
        for (timeout, ms) in [
            (Duration::MAX, Duration::from_millis(u64::MAX)),
            (Duration::from_micros(10), Duration::from_millis(1)),
        ] {
            let args = WorkerArgs {
                timeout,
                ..a.clone()
            };
            assert_eq!(WorkerArgs::from_args(&args.to_args()).unwrap().timeout, ms);
        }
        let mut bad = a.to_args();
        bad[3] = "1".into();
        assert!(
            WorkerArgs::from_args(&bad).is_err(),
            "stdout is not a report pipe"
        );
        let mut bad = a.to_args();
        bad[4] = "0".into();
        assert!(WorkerArgs::from_args(&bad).is_err());
    }
}
