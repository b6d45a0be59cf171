//! The worker side: a handshake, then `loop { wait for a posting -> claim chunks from the
//! shared-memory queue (or receive them over the channel) -> kernel into shm }`.
//!
//! A spawned worker says on a pipe only procpool holds that it started, checks through a
//! descriptor that the directory procpool gave it (`TMPDIR`, the pool's private 0700
//! directory) is the one procpool made, opens an ipc-channel one-shot server there, reports
//! the socket's path on the pipe, and waits, with a deadline, for procpool to connect and
//! send `Welcome` with the channel for its answers. A handshake that fails is reported on
//! the same pipe, in one line ([`Report`]). The worker never deletes anything it did not
//! create.
//!
//! A worker is the same binary as the parent, re-executed with [`WORKER_ARG`] as its first
//! argument; [`crate::init_with`] notices that and calls [`serve`] before `main` does
//! anything else.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use ipc_channel::ipc::{IpcOneShotServer, IpcSender};

use crate::engine::control::{ChunkTable, Control, Posting, TableLayout, TraceRecord};
use crate::engine::fault::{Fault, FaultAction};
use crate::engine::protocol::{
    FromWorker, InputRef, JobSpec, Layout, PROTOCOL_VERSION, ToWorker, Transport, WORKER_ARG,
};
use crate::engine::schedule::{Geometry, Schedule};
use crate::engine::sealed::{MAX_INPUTS, Sealed};
use crate::engine::shm::Mapping;
use crate::engine::sys::OsCounts;
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
    /// The inherited end of the worker's private socket on which the parent sends the
    /// descriptors of the jobs' shared inputs.
    pub inputs_fd: RawFd,
    /// How long the worker waits for procpool to connect before it gives up.
    pub timeout: Duration,
    /// procpool's process id: a worker whose parent is someone else gives up at once.
    pub parent: u32,
    /// The CPU the worker pins itself to, if any.
    pub cpu: Option<usize>,
}

impl WorkerArgs {
    /// The arguments after the executable name.
    pub(crate) fn to_args(&self) -> Vec<String> {
        vec![
            WORKER_ARG.to_string(),
            self.shm_fd.to_string(),
            self.id.to_string(),
            self.report_fd.to_string(),
            self.inputs_fd.to_string(),
            // Whole milliseconds, at least one; a timeout past u64::MAX ms waits as long.
            self.timeout
                .as_millis()
                .clamp(1, u128::from(u64::MAX))
                .to_string(),
            self.parent.to_string(),
            self.cpu.map_or("-".to_string(), |c| c.to_string()),
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
            [flag, shm, id, report, inputs, timeout_ms, parent, cpu] if flag == WORKER_ARG => {
                Ok(WorkerArgs {
                    shm_fd: fd(shm)?,
                    id: id.parse().map_err(|_| format!("bad id `{id}`"))?,
                    report_fd: fd(report)?,
                    inputs_fd: fd(inputs)?,
                    timeout: timeout_ms
                        .parse::<u64>()
                        .ok()
                        .filter(|&ms| ms > 0)
                        .map(Duration::from_millis)
                        .ok_or_else(|| format!("bad timeout `{timeout_ms}`"))?,
                    parent: parent
                        .parse()
                        .map_err(|_| format!("bad parent `{parent}`"))?,
                    cpu: match cpu.as_str() {
                        "-" => None,
                        n => Some(n.parse().map_err(|_| format!("bad CPU `{n}`"))?),
                    },
                })
            }
            _ => Err(format!(
                "usage: {WORKER_ARG} SHM_FD ID REPORT_FD INPUTS_FD TIMEOUT_MS PARENT_PID CPU|- (this \
                 entry is started by procpool itself)"
            )),
        }
    }
}

/// How long a worker waits for the input descriptors that go with a spec (the parent sent
/// them before the spec, so they are there at once unless something is broken).
const INPUTS_TIMEOUT: Duration = Duration::from_secs(10);

/// The spec a worker last received, with its kernel built.
struct CurrentJob {
    spec_id: u64,
    transport: Transport,
    kernel: Box<dyn DynKernel>,
    elem_size: usize,
    layout: Layout,
    faults: Vec<Fault>,
    /// Bytes of a chunk's accumulator slot when the job reduces (0: it does not).
    reduce_slot: u64,
    /// False for a reduction-only job: the kernel writes into `scratch`, not the region.
    output: bool,
    /// Memory of this worker's own for a reduction-only job's chunks, reused chunk after
    /// chunk; in cache lines, so that any element type is aligned in it.
    scratch: std::cell::RefCell<Vec<Line>>,
}

/// 64 bytes aligned to 64: the unit of a worker's scratch memory.
#[derive(Debug, Clone, Copy, bytemuck::Zeroable, bytemuck::Pod)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// What a worker keeps between postings.
struct Worker<'a> {
    slot: usize,
    to_parent: &'a IpcSender<FromWorker>,
    from_parent: &'a ipc_channel::ipc::IpcReceiver<ToWorker>,
    registry: &'a Registry,
    shm: BorrowedFd<'a>,
    /// The private socket the parent sends input descriptors on.
    inputs_socket: BorrowedFd<'a>,
    /// The shared inputs this process holds, by id: those of the last spec received.
    inputs: HashMap<u64, Arc<Sealed>>,
    control: Control,
    /// The results (and the chunk table after them), mapped for the current posting.
    results: Mapping,
    job: Option<CurrentJob>,
    /// The newest spec received but not yet built.
    pending: Option<JobSpec>,
    /// The chunk geometry of the posting it was last inside.
    geometry: Option<(u64, Geometry)>,
    /// The last channel-dispatched posting it served.
    served_channel: u64,
    /// Checks of the futex word before sleeping on it.
    spin: u32,
    /// CPUs this process may run on (read once: it costs a few system calls).
    cores: u64,
    /// Chunks this process has finished, over all jobs (for recycling).
    chunks_done: std::cell::Cell<u64>,
    /// This process told the parent it is retiring.
    retiring: std::cell::Cell<bool>,
    /// Chunk messages read while looking for a spec, before their job was seen.
    early: std::collections::VecDeque<ToWorker>,
    parent: nix::unistd::Pid,
}

/// Why a worker stops serving.
enum Stop {
    /// Shutdown, or the parent went away: exit 0.
    Asked,
    /// Exit 1 with this message.
    Failed(String),
}

impl From<String> for Stop {
    fn from(message: String) -> Self {
        Stop::Failed(message)
    }
}

/// Runs the worker until the parent says `Shutdown` or goes away. Returns the exit status.
pub(crate) fn serve(args: &WorkerArgs, registry: &Registry) -> i32 {
    crate::engine::sys::ignore_interrupts();
    quiet_panics();
    match serve_inner(args, registry) {
        Ok(()) => 0,
        // procpool heard why on the report pipe and words it itself.
        Err(None) => 1,
        Err(Some(message)) => {
            // Our stderr reaches the user prefixed with our id.
            eprintln!("error: {message}");
            1
        }
    }
}

/// The handshake, then the work. `Err(None)`: the handshake failed and procpool was told
/// why on the report pipe; `Err(Some(message))`: anything else, for stderr.
fn serve_inner(args: &WorkerArgs, registry: &Registry) -> Result<(), Option<String>> {
    for (fd, what) in [
        (args.shm_fd, "SHM_FD"),
        (args.report_fd, "REPORT_FD"),
        (args.inputs_fd, "INPUTS_FD"),
    ] {
        if !crate::engine::sys::fd_is_open(fd) {
            return Err(Some(format!(
                "{what} {fd} is not an open descriptor: this entry is started by procpool itself"
            )));
        }
    }
    // SAFETY: procpool made this descriptor (a pipe's write end) for us alone and kept it
    // open across exec (checked open above); nothing else in this process uses it, and the
    // File closes it once the handshake is over.
    let mut report = unsafe { std::fs::File::from_raw_fd(args.report_fd) };
    // The first line: procpool learns that its program reached `init`, whatever happens next.
    let _ = tell(&mut report, &Report::Started);
    // ipc-channel panics on some errors of its own (an assertion on a wrapped I/O error);
    // a panic here is said like any other failure, never a bare exit status 101.
    let shook = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        handshake(args, registry, &mut report)
    }))
    .unwrap_or_else(|payload| {
        Err(Report::Failed(format!(
            "panicked during its handshake: {}",
            panic_report(payload.as_ref()).0
        )))
    });
    let (from_parent, to_parent) = match shook {
        Ok(channels) => channels,
        Err(failure) => {
            return Err(tell(&mut report, &failure)
                .err()
                .map(|_| failure.to_string()));
        }
    };
    drop(report);
    // SAFETY: the parent passed us this descriptor number and kept it open across exec for
    // us (checked open above); nothing else in this process uses it.
    let shm = unsafe { BorrowedFd::borrow_raw(args.shm_fd) };
    // SAFETY: as for the shared region: the parent made this socket for us alone and kept
    // it open across exec (checked open above); nothing else in this process uses it.
    let inputs = unsafe { BorrowedFd::borrow_raw(args.inputs_fd) };
    serve_loop(&to_parent, &from_parent, shm, inputs, registry, args.id).map_err(Some)
}

/// The environment variable with which procpool tells a spawned worker which directory it
/// made for it: `DEVICE:INODE` of the private directory that `TMPDIR` names.
pub(crate) const PRIVATE_DIR_ENV: &str = "PROCPOOL_PRIVATE_DIR";

/// The user's own `TMPDIR` when a spawned worker starts (absent when the user had none):
/// procpool points `TMPDIR` at its private directory only for the worker's handshake
/// socket, then gives the user's back to the code the worker runs.
pub(crate) const USER_TMPDIR_ENV: &str = "PROCPOOL_USER_TMPDIR";
/// Longest socket path the kernel takes: `sun_path` holds 108 bytes with the final NUL.
/// ipc-channel cuts a longer path short without a word, so procpool refuses it up front.
pub(crate) const SOCKET_PATH_MAX: usize = 107;
/// What a worker's one-shot server adds to its directory: `/.tmpXXXXXX/socket`.
pub(crate) const SERVER_SUFFIX: &str = "/.tmpXXXXXX/socket";

/// One line a spawned worker writes on its report pipe during its handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Report {
    /// The worker entry runs (the first line): the program reached `init`.
    Started,
    /// Where procpool connects: the handshake socket's path (a line starting with `/`).
    Socket(String),
    /// The handshake broke off when a system call failed with this error number (`None`:
    /// not an operating-system error); another start may well succeed.
    GaveUp(Option<i32>),
    /// This worker cannot start, and another would fail the same way: why, in words that
    /// follow "worker N (pid P) ".
    Failed(String),
}

impl Report {
    /// The line, without its newline.
    fn line(&self) -> String {
        match self {
            Report::Started => "started".to_string(),
            Report::Socket(path) => path.clone(),
            Report::GaveUp(errno) => format!("gave-up {}", errno.unwrap_or(0)),
            Report::Failed(message) => format!("failed {}", message.replace('\n', " ")),
        }
    }

    /// Reads a line [`Report::line`] wrote; `None` for anything else.
    pub(crate) fn parse(line: &str) -> Option<Report> {
        if line.starts_with('/') {
            return Some(Report::Socket(line.to_string()));
        }
        if line == "started" {
            return Some(Report::Started);
        }
        if let Some(errno) = line.strip_prefix("gave-up ") {
            let errno: i32 = errno.parse().ok()?;
            return Some(Report::GaveUp((errno > 0).then_some(errno)));
        }
        line.strip_prefix("failed ")
            .map(|message| Report::Failed(message.to_string()))
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Report::GaveUp(errno) => {
                let why = crate::error::LossCause::GaveUp(*errno);
                write!(f, "{why}")
            }
            Report::Failed(message) => write!(f, "{message}"),
            other => write!(f, "{}", other.line()),
        }
    }
}

/// Writes `what` on the report pipe, as one line in one write (a pipe never splits it).
fn tell(report: &mut std::fs::File, what: &Report) -> std::io::Result<()> {
    let mut line = what.line();
    line.push('\n');
    report.write_all(line.as_bytes())
}

/// The handshake of a spawned worker: arm, open the one-shot server in the directory
/// procpool made (checked through a descriptor, before and after binding), report where,
/// and wait with a deadline for procpool's `Welcome`. A failure is what to report.
fn handshake(
    args: &WorkerArgs,
    registry: &Registry,
    report: &mut std::fs::File,
) -> Result<
    (
        ipc_channel::ipc::IpcReceiver<ToWorker>,
        IpcSender<FromWorker>,
    ),
    Report,
> {
    crate::engine::sys::arm_worker(args.parent, args.cpu).map_err(Report::Failed)?;
    // procpool set TMPDIR to its private 0700 directory, where our server's socket goes:
    // nobody but our own user can reach it.
    let tmpdir = std::env::temp_dir();
    let dir = open_private_dir(&tmpdir).map_err(Report::Failed)?;
    let (server, name) = IpcOneShotServer::<ToWorker>::new().map_err(|e| {
        Report::Failed(format!(
            "cannot create its handshake socket in {}: {e}",
            tmpdir.display()
        ))
    })?;
    check_bound(&dir, &tmpdir, &name).map_err(Report::Failed)?;
    drop(dir);
    // The socket exists: the kernels see the user's TMPDIR, as in the parent.
    crate::engine::sys::restore_env("TMPDIR", std::env::var_os(USER_TMPDIR_ENV), USER_TMPDIR_ENV);
    tell(report, &Report::Socket(name.clone()))
        .map_err(|e| Report::Failed(format!("cannot tell procpool where to connect: {e}")))?;

    // accept() blocks until someone connects, forever if nobody does: wait on a thread,
    // with a deadline.
    let (accepted_tx, accepted) = mpsc::channel();
    std::thread::Builder::new()
        .name("procpool-accept".into())
        .spawn(move || {
            // A signal handled while accept() waits interrupts it (EINTR), and ipc-channel
            // cannot try again: accept() consumes its server. With every signal blocked on
            // this thread, one sent to the process lands on another thread, and one aimed
            // at this thread stays pending, harmless, until the thread ends.
            let _ = nix::sys::signal::pthread_sigmask(
                nix::sys::signal::SigmaskHow::SIG_BLOCK,
                Some(&nix::sys::signal::SigSet::all()),
                None,
            );
            let _ = accepted_tx.send(server.accept());
        })
        .map_err(|e| Report::Failed(format!("cannot start its handshake thread: {e}")))?;
    let (from_parent, to_parent) = match accepted.recv_timeout(args.timeout) {
        Ok(Ok((rx, ToWorker::Welcome { to_parent }))) => (rx, to_parent),
        Ok(Ok((_, other))) => {
            return Err(Report::Failed(format!(
                "received {other:?} from procpool instead of Welcome"
            )));
        }
        Ok(Err(ipc_channel::IpcError::Io(e))) => return Err(Report::GaveUp(e.raw_os_error())),
        Ok(Err(_)) => return Err(Report::GaveUp(None)),
        Err(_) => {
            // The server is still waiting on its thread; its socket and directory are ours
            // (created just above), so we remove them before we go.
            let socket = Path::new(&name);
            let _ = std::fs::remove_file(socket);
            if let Some(dir) = socket.parent() {
                let _ = std::fs::remove_dir(dir);
            }
            return Err(Report::GaveUp(Some(libc::ETIMEDOUT)));
        }
    };
    to_parent
        .send(FromWorker::Hello {
            version: PROTOCOL_VERSION,
            workloads: registry.catalogue(),
        })
        .map_err(|e| Report::Failed(format!("cannot greet procpool: {e}")))?;
    Ok((from_parent, to_parent))
}

/// Opens `dir`, where this worker's socket goes, and checks through the descriptor that it
/// is the private directory procpool made: not a symbolic link, owned by our user, mode
/// 0700, and, when procpool said which ([`PRIVATE_DIR_ENV`]), that very directory (device
/// and inode), not another put under its name.
fn open_private_dir(dir: &Path) -> Result<OwnedFd, String> {
    use nix::fcntl::OFlag;
    let shown = dir.display();
    let cannot = |why: String| format!("cannot create its handshake socket in {shown}: {why}");
    let longest = dir.as_os_str().len() + SERVER_SUFFIX.len();
    if longest > SOCKET_PATH_MAX {
        return Err(cannot(format!(
            "a socket path there would be {longest} bytes, and one holds at most \
             {SOCKET_PATH_MAX}"
        )));
    }
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = match nix::fcntl::open(dir, flags, nix::sys::stat::Mode::empty()) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ELOOP) => {
            return Err(format!(
                "refused to bind in {shown}: it is a symbolic link, not procpool's private \
                 directory"
            ));
        }
        Err(e) => return Err(cannot(std::io::Error::from(e).to_string())),
    };
    let meta =
        nix::sys::stat::fstat(&fd).map_err(|e| cannot(std::io::Error::from(e).to_string()))?;
    let mode = meta.st_mode & 0o7777;
    if meta.st_uid != nix::unistd::geteuid().as_raw() || mode != 0o700 {
        return Err(format!(
            "refused to bind in {shown}: it is not a private directory of this user (owner \
             uid {}, mode {mode:04o})",
            meta.st_uid
        ));
    }
    let expected = std::env::var(PRIVATE_DIR_ENV).ok().and_then(|id| {
        let (dev, ino) = id.split_once(':')?;
        Some((dev.parse::<u64>().ok()?, ino.parse::<u64>().ok()?))
    });
    if expected.is_some_and(|id| id != (meta.st_dev as u64, meta.st_ino as u64)) {
        return Err(format!(
            "refused to bind in {shown}: it is not the private directory procpool made \
             (another directory was put in its place)"
        ));
    }
    Ok(fd)
}

/// Checks, through the descriptor of the directory checked before binding, that the socket
/// ipc-channel bound at `name` lies in that directory: if the directory's name was given to
/// another directory in between, the socket is not in ours, and nobody may connect to it.
fn check_bound(dir: &OwnedFd, tmpdir: &Path, name: &str) -> Result<(), String> {
    use nix::fcntl::AtFlags;
    use nix::sys::stat::SFlag;
    let moved = || {
        format!(
            "refused its handshake socket {name}: it is not in the private directory checked \
             before (another directory was put in place of {})",
            tmpdir.display()
        )
    };
    let inside = Path::new(name).strip_prefix(tmpdir).map_err(|_| moved())?;
    let me = nix::unistd::geteuid().as_raw();
    let is = |path: &Path, kind: SFlag| {
        nix::sys::stat::fstatat(dir, path, AtFlags::AT_SYMLINK_NOFOLLOW).is_ok_and(|m| {
            SFlag::from_bits_truncate(m.st_mode) & SFlag::S_IFMT == kind && m.st_uid == me
        })
    };
    let server_dir = inside.parent().unwrap_or(Path::new(""));
    if inside.components().count() != 2
        || !is(server_dir, SFlag::S_IFDIR)
        || !is(inside, SFlag::S_IFSOCK)
    {
        return Err(moved());
    }
    Ok(())
}

/// The CPUs this process may use (`available_parallelism`, which reads the control
/// group's quota), read once: a fork server reads it before it forks, and its workers
/// inherit the answer.
pub(crate) fn cores() -> u64 {
    static CORES: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |c| c.get() as u64))
}

/// The name (`comm`, at most 15 bytes) of a worker started without an exec, before its
/// id: its command line is the program's own.
pub(crate) const WORKER_NAME: &str = "procpool-w";

/// What a worker started without an exec holds of its own: its ends of the two channels,
/// its end of the private input socket and the write end of its output pipe.
pub(crate) struct ForkedEnds {
    /// The worker's id in the pool.
    pub id: usize,
    /// The channel to the pool.
    pub to_parent: IpcSender<FromWorker>,
    /// The channel from the pool.
    pub from_parent: ipc_channel::ipc::IpcReceiver<ToWorker>,
    /// The worker's end of its private socket for input descriptors.
    pub inputs: OwnedFd,
    /// Becomes the worker's stdout and stderr.
    pub output: OwnedFd,
    /// The CPU it pins itself to, if any.
    pub cpu: Option<usize>,
}

/// The first steps of a worker started by `fork` (by the pool, or by the fork server on
/// the pool's behalf), then [`serve_forked`]: a process group of its own, the death signal
/// (SIGKILL when the pool's thread that it belongs to ends) and a check that the pool
/// (`pool`) is still its parent, its CPU, its output to the pool's pipe.
pub(crate) fn enter_forked(
    ends: ForkedEnds,
    shm: BorrowedFd<'_>,
    registry: &Registry,
    pool: nix::unistd::Pid,
) -> i32 {
    if !crate::engine::sys::own_group_and_death_signal(pool) {
        return 1;
    }
    if let Some(cpu) = ends.cpu
        && crate::engine::sys::pin_to(cpu).is_err()
    {
        return 1;
    }
    // Its command line is the program's: its name says what it is (`ps -o comm`, `top`).
    if let Ok(name) = std::ffi::CString::new(format!("{WORKER_NAME}{}", ends.id)) {
        let _ = nix::sys::prctl::set_name(&name);
    }
    let _ = nix::unistd::dup2_stdout(&ends.output);
    let _ = nix::unistd::dup2_stderr(&ends.output);
    drop(ends.output);
    serve_forked(
        &ends.to_parent,
        &ends.from_parent,
        shm,
        ends.inputs.as_fd(),
        registry,
        ends.id,
    )
}

/// The worker of a forked start: channels and the shared region are inherited, so there is
/// no handshake. Returns the exit status.
pub(crate) fn serve_forked(
    to_parent: &IpcSender<FromWorker>,
    from_parent: &ipc_channel::ipc::IpcReceiver<ToWorker>,
    shm: BorrowedFd<'_>,
    inputs: BorrowedFd<'_>,
    registry: &Registry,
    id: usize,
) -> i32 {
    crate::engine::sys::ignore_interrupts();
    quiet_panics();
    match serve_loop(to_parent, from_parent, shm, inputs, registry, id) {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("error: {message}");
            1
        }
    }
}

/// Waits on the control block for postings and serves them (claiming chunks from the
/// queue, or receiving them over the channel) until Shutdown or the parent goes away.
/// Set once this process serves a pool as a worker: its chunk loop catches a kernel's
/// unwinding and reports it.
static SERVING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process serves a pool as a worker (its chunk loop reports what a kernel
/// unwinds with), rather than running a kernel itself (a single-process baseline).
pub(crate) fn serving() -> bool {
    SERVING.load(std::sync::atomic::Ordering::Relaxed)
}

fn serve_loop(
    to_parent: &IpcSender<FromWorker>,
    from_parent: &ipc_channel::ipc::IpcReceiver<ToWorker>,
    shm: BorrowedFd<'_>,
    inputs_socket: BorrowedFd<'_>,
    registry: &Registry,
    slot: usize,
) -> Result<(), String> {
    SERVING.store(true, std::sync::atomic::Ordering::Relaxed);
    let control =
        Control::map(shm, None).map_err(|e| format!("cannot map the control block: {e}"))?;
    if slot >= control.slots() {
        return Err(format!(
            "worker id {slot} has no slot in a control block of {}",
            control.slots()
        ));
    }
    let mut worker = Worker {
        slot,
        to_parent,
        from_parent,
        registry,
        shm,
        inputs_socket,
        inputs: HashMap::new(),
        control,
        results: Mapping::new(shm, 0).map_err(|e| e.to_string())?,
        job: None,
        pending: None,
        geometry: None,
        served_channel: 0,
        spin: 0,
        cores: cores(),
        chunks_done: std::cell::Cell::new(0),
        retiring: std::cell::Cell::new(false),
        early: std::collections::VecDeque::new(),
        parent: nix::unistd::getppid(),
    };
    match worker.run() {
        Stop::Asked => Ok(()),
        Stop::Failed(message) => Err(message),
    }
}

impl Worker<'_> {
    fn run(&mut self) -> Stop {
        loop {
            let seen = self.control.epoch();
            if self.control.shutting_down() {
                return Stop::Asked;
            }
            if let Err(stop) = self.serve_posting() {
                return stop;
            }
            let slept = self
                .control
                .wait(self.slot, seen, self.spin, Duration::from_secs(1));
            if slept && nix::unistd::getppid() != self.parent {
                // The parent is gone (its death signal should have ended us already).
                return Stop::Asked;
            }
        }
    }

    /// Serves the open posting, if there is one this worker has not finished.
    fn serve_posting(&mut self) -> Result<(), Stop> {
        let Some(id) = self.control.open_posting() else {
            // Nothing to do: take in any spec waiting on the channel, so messages for
            // jobs this worker slept through never pile up.
            return self.drain_mail();
        };
        if !self.control.enter(self.slot, id) {
            return Ok(());
        }
        let posting = self.control.posting(id);
        if posting.channel {
            // Channel dispatch: chunks come as messages; nothing to claim here. The worker
            // stays inside the posting until its `EndJob`, so that once it has left, every
            // reply it sent for the posting is in the parent's socket (a job stopped early
            // waits for that before the next posting: see `pool/quiesce.rs`).
            if self.served_channel == id {
                self.control.leave(self.slot);
                return Ok(());
            }
            self.served_channel = id;
            let served = self.prepare(&posting).and_then(|ready| match ready {
                true => self.serve_channel(&posting),
                false => Ok(()),
            });
            self.control.leave(self.slot);
            return served;
        }
        let cpu = crate::engine::control::process_cpu_ns();
        let os = OsCounts::this_process();
        let result = self.prepare(&posting).and_then(|ready| match ready {
            true => self.claim_loop(&posting),
            false => Ok(()),
        });
        let maxrss_kib = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
            .map_or(0, |u| u.max_rss() as u64);
        let os = OsCounts::this_process()
            .zip(os)
            .map(|(now, then)| now.since(then))
            .unwrap_or_default();
        self.control.add_usage(
            self.slot,
            crate::engine::control::process_cpu_ns().saturating_sub(cpu),
            os,
            maxrss_kib,
        );
        self.control.leave(self.slot);
        result?;
        if self.control.deaths_noted() && self.control.take_parent_waiting(self.slot) {
            self.wake_parent()?;
        }
        Ok(())
    }

    /// Makes the posting's spec, mapping and chunk geometry ready. Returns false when the
    /// posting turned out to be over before its spec came (see [`Worker::receive_spec`]).
    fn prepare(&mut self, posting: &Posting) -> Result<bool, Stop> {
        if self.job.as_ref().map(|j| j.spec_id) != Some(posting.spec_id)
            && !self.receive_spec(posting)?
        {
            return Ok(false);
        }
        if self.results.len() as u64 != posting.region_len {
            self.results = Mapping::new(self.shm, 0).map_err(|e| e.to_string())?;
            self.results =
                Mapping::at(self.shm, self.control.len(), posting.region_len).map_err(|e| {
                    format!(
                        "cannot map the shared region ({} bytes): {e}",
                        posting.region_len
                    )
                })?;
            if self.control.huge_advise() {
                self.results.advise_huge();
            }
        }
        if self.geometry.as_ref().map(|g| g.0) != Some(posting.id) {
            let schedule = match posting.schedule {
                0 => Schedule::Static,
                2 => Schedule::Guided,
                _ => Schedule::Dynamic,
            };
            let geometry = Geometry::new(
                schedule,
                posting.start,
                posting.n,
                posting.size,
                posting.workers,
                posting.boundary,
                posting.id_base,
            );
            self.geometry = Some((posting.id, geometry));
        }
        // Spin before sleeping only while every worker has a core of its own: then a spin
        // catches the next job or retry without a wake-up. Otherwise back off at once.
        self.spin = if posting.workers <= self.cores {
            4096
        } else {
            64
        };
        Ok(true)
    }

    /// Takes the posting's job spec from the channel (the parent sent it before posting).
    /// Returns false when a later job's spec or chunk comes first: the posting is over.
    /// (This process entered it while starting, and the parent took it in only in a later
    /// job.) What came is kept for the posting open now.
    fn receive_spec(&mut self, posting: &Posting) -> Result<bool, Stop> {
        let spec_id = posting.spec_id;
        loop {
            let spec = match self.pending.take() {
                Some(spec) if spec.spec_id == spec_id => spec,
                _ => match self.from_parent.recv() {
                    Ok(ToWorker::Job(spec)) => {
                        self.take_inputs(&spec)?;
                        if spec.spec_id > spec_id {
                            self.pending = Some(spec);
                            return Ok(false);
                        }
                        if spec.spec_id != spec_id {
                            // An older spec, for a job this worker slept through.
                            continue;
                        }
                        spec
                    }
                    Ok(chunk @ ToWorker::Chunk { posting: of, .. }) if of > posting.id => {
                        self.early.push_front(chunk);
                        return Ok(false);
                    }
                    // The spec comes before its posting's chunks: a chunk here belongs to
                    // a posting that is over (stopped before this worker joined it).
                    Ok(ToWorker::EndJob { .. } | ToWorker::Chunk { .. }) => continue,
                    Ok(ToWorker::Shutdown) | Err(_) => return Err(Stop::Asked),
                    Ok(other) => {
                        return Err(Stop::Failed(format!(
                            "expected the job's spec, got {other:?}"
                        )));
                    }
                },
            };
            let inputs = self.job_inputs(&spec);
            let instantiated = inputs.and_then(|inputs| {
                // Large parameters are the spec's last input, mapped and checked like any.
                let params = match spec.params_sealed {
                    true => Some(
                        inputs
                            .last()
                            .cloned()
                            .ok_or("sealed parameters, no input")?,
                    ),
                    false => None,
                };
                let params = params.as_ref().map_or(&spec.params[..], |p| p.bytes());
                let elem_size = spec.elem_size as usize;
                crate::engine::input::decoding(inputs, || match spec.workload.as_str() {
                    crate::engine::closure::CLOSURE_NAME => {
                        crate::engine::closure::instantiate(params, elem_size)
                    }
                    name => self.registry.instantiate(name, params, elem_size),
                })
            });
            return match instantiated {
                Ok((kernel, setup)) => {
                    self.control.add_setup(self.slot, setup.as_nanos() as u64);
                    self.job = Some(CurrentJob {
                        spec_id: spec.spec_id,
                        transport: spec.transport,
                        kernel,
                        elem_size: spec.elem_size as usize,
                        layout: spec.layout,
                        faults: spec.faults,
                        reduce_slot: spec.reduce_slot,
                        output: spec.output,
                        scratch: std::cell::RefCell::new(Vec::new()),
                    });
                    Ok(true)
                }
                Err(message) => {
                    let _ = self.to_parent.send(FromWorker::Failed {
                        message: message.clone(),
                    });
                    Err(Stop::Failed(message))
                }
            };
        }
    }

    /// Takes in the shared inputs of a spec just received: the descriptors of those this
    /// process does not hold yet arrive on its private socket (the parent sent them right
    /// before the spec), each checked sealed and of the spec's size, then mapped read-only;
    /// mappings the spec no longer lists are dropped (a running kernel keeps its own).
    /// Called for every spec in the order they arrive, as the parent counts them.
    fn take_inputs(&mut self, spec: &JobSpec) -> Result<(), Stop> {
        let fail = |message: String| {
            let _ = self.to_parent.send(FromWorker::Failed {
                message: message.clone(),
            });
            Stop::Failed(message)
        };
        if spec.inputs.len() > MAX_INPUTS {
            return Err(fail(format!(
                "a spec with {} inputs (at most {MAX_INPUTS})",
                spec.inputs.len()
            )));
        }
        let mut new: Vec<InputRef> = Vec::new();
        for input in &spec.inputs {
            if new.iter().any(|n| n.id == input.id) {
                return Err(fail(format!("input {} listed twice in a spec", input.id)));
            }
            if !self.inputs.contains_key(&input.id) {
                new.push(*input);
            }
        }
        if !new.is_empty() {
            let fds = crate::engine::sealed::recv_fds(
                self.inputs_socket,
                spec.spec_id,
                new.len(),
                INPUTS_TIMEOUT,
            )
            .map_err(fail)?;
            for (input, fd) in new.iter().zip(fds) {
                let sealed = Sealed::adopt(input.id, fd, input.bytes, input.elem_size as usize)
                    .map_err(fail)?;
                self.inputs.insert(input.id, Arc::new(sealed));
            }
        }
        self.inputs
            .retain(|id, _| spec.inputs.iter().any(|i| i.id == *id));
        Ok(())
    }

    /// The mappings of `spec`'s inputs, in its order (all taken in by [`Worker::take_inputs`]).
    fn job_inputs(&self, spec: &JobSpec) -> Result<Vec<Arc<Sealed>>, String> {
        spec.inputs
            .iter()
            .map(|i| {
                self.inputs
                    .get(&i.id)
                    .cloned()
                    .ok_or_else(|| format!("input {} of the job was never received", i.id))
            })
            .collect()
    }

    /// Reads what waits on the channel without blocking: specs are kept, Shutdown obeyed.
    fn drain_mail(&mut self) -> Result<(), Stop> {
        loop {
            let received = match self.from_parent.try_recv() {
                // The parent announced a spec it is sending now: take it as it arrives, so
                // a spec larger than the socket buffer never waits for this worker's sleep.
                Err(ipc_channel::TryRecvError::Empty) if self.spec_announced() => self
                    .from_parent
                    .try_recv_timeout(Duration::from_millis(100)),
                other => other,
            };
            match received {
                Ok(ToWorker::Job(spec)) => {
                    self.take_inputs(&spec)?;
                    self.pending = Some(spec);
                }
                Ok(ToWorker::Shutdown) => return Err(Stop::Asked),
                // Chunks held back for a posting that is over are dropped with it.
                Ok(ToWorker::EndJob { posting }) => self.early.retain(
                    |m| !matches!(m, ToWorker::Chunk { posting: of, .. } if *of <= posting),
                ),
                // A channel job opened after we looked: its chunks wait for `serve_channel`,
                // in order, the rest still in the channel. (The parent opens a posting
                // before it sends its chunks: a chunk of a posting no longer open belongs
                // to a job stopped before this worker joined it.)
                Ok(chunk @ ToWorker::Chunk { posting, .. }) => {
                    if self.control.open_posting() == Some(posting) {
                        self.early.push_back(chunk);
                        return Ok(());
                    }
                }
                Ok(other) => {
                    return Err(Stop::Failed(format!("unexpected {other:?} between jobs")));
                }
                // Still on its way (the parent is between announcing and sending): wait on,
                // unless the pool is shutting down or the parent is gone.
                Err(ipc_channel::TryRecvError::Empty)
                    if self.spec_announced()
                        && !self.control.shutting_down()
                        && nix::unistd::getppid() == self.parent => {}
                Err(ipc_channel::TryRecvError::Empty) => return Ok(()),
                Err(ipc_channel::TryRecvError::IpcError(_)) => return Err(Stop::Asked),
            }
        }
    }

    /// Whether the parent announced a job spec this worker has not received yet.
    fn spec_announced(&self) -> bool {
        let announced = self.control.announced_spec(self.slot);
        announced != 0
            && self.pending.as_ref().map(|s| s.spec_id) != Some(announced)
            && self.job.as_ref().map(|j| j.spec_id) != Some(announced)
    }

    /// Claims chunks from the queue and runs them until none is left to claim.
    fn claim_loop(&mut self, posting: &Posting) -> Result<(), Stop> {
        let Some(job) = self.job.as_ref() else {
            return Err(Stop::Failed("a posting before any spec".into()));
        };
        let Some((_, geometry)) = self.geometry.as_ref() else {
            return Err(Stop::Failed("a posting without its geometry".into()));
        };
        let layout = TableLayout {
            at: posting.table_at,
            chunks: posting.chunks,
            ring: posting.ring,
            acc_slot: job.reduce_slot,
            log: posting.log,
            trace: posting.trace,
        };
        let Some(table) = ChunkTable::new(&self.results, layout).map(|t| t.by(self.slot)) else {
            return Err(Stop::Failed(format!(
                "the chunk table does not fit in the shared region of {} bytes",
                self.results.len()
            )));
        };
        let statically = (posting.schedule == 0).then_some(posting.workers);
        let total = posting.n - posting.start;
        let mut between = Instant::now();
        let mut first = true;
        loop {
            // A stopped job (an interrupt, a failure): claim nothing more.
            if self.control.shutting_down() {
                return Err(Stop::Asked);
            }
            // A posting closed early (the caller stopped iterating): leave what is not
            // claimed yet. (The same cache line as the shutdown word: free to look at.)
            if self.control.open_posting() != Some(posting.id) {
                break;
            }
            let Some((index, attempt)) = self.control.claim(self.slot, posting.chunks, statically)
            else {
                break;
            };
            while !self.control.may_run(index) {
                // Streaming: this chunk's window slot is not free yet.
                let seen = self.control.epoch();
                if self.control.may_run(index) {
                    break;
                }
                if self.control.shutting_down() || self.control.open_posting() != Some(posting.id) {
                    return Ok(());
                }
                self.control
                    .wait(self.slot, seen, self.spin, Duration::from_secs(1));
            }
            let chunk = geometry.chunk(index);
            let started_ns = self.control.running(self.slot);
            let began = Instant::now();
            if !first {
                self.control
                    .add_gap(self.slot, (began - between).as_nanos() as u64);
            }
            first = false;
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_chunk(
                    job,
                    &self.results,
                    Some(&self.control),
                    chunk.id,
                    chunk.start,
                    chunk.end,
                    attempt,
                )
            }));
            let reduction = match ran {
                Ok(Ok((reduction, _))) => reduction,
                Ok(Err(message)) => return Err(Stop::Failed(message)),
                Err(payload) => {
                    self.control.panicked(self.slot);
                    let (message, location, failed) = chunk_report(payload.as_ref());
                    let panicked = FromWorker::Panicked {
                        id: chunk.id,
                        message,
                        location,
                        failed,
                    };
                    if self.to_parent.send(panicked).is_err() {
                        return Err(Stop::Asked);
                    }
                    // Hold the chunk until the parent decides: it kills us (to retry the
                    // chunk), or it closes the posting (the job failed) and we serve the
                    // next job.
                    return self.await_close(posting.id);
                }
            };
            let compute_ns = began.elapsed().as_nanos() as u64;
            // One clock read for the slot's `last done` and the trace record.
            let end_ns = crate::engine::control::monotonic_ns();
            if posting.trace {
                // Before the done byte, which publishes it with the results.
                let record = TraceRecord {
                    slot: self.slot,
                    attempt,
                    start_ns: started_ns,
                    end_ns,
                };
                table.trace_record(index, record);
            }
            if posting.log {
                table.set_done_and_log(index, reduction.as_deref());
            } else {
                table.set_done(index, reduction.as_deref());
            }
            let done = self
                .control
                .finished(self.slot, chunk.len(), compute_ns, end_ns);
            let window_full = posting.ring > 1 && {
                let window = chunk.start / posting.window_elems;
                let window_start = window * posting.window_elems;
                let len = (window_start + posting.window_elems).min(posting.n) - window_start;
                table.window_done(window, chunk.len()) >= len
            };
            // Someone iterating hears of every chunk: a sleeping parent is woken (once).
            let tell = done >= total || window_full || posting.log;
            if tell && self.control.take_parent_waiting(self.slot) {
                self.wake_parent()?;
            }
            if self.finished_one(posting) {
                // Recycled: leave the job holding nothing and exit; a fresh process takes
                // this slot.
                return Err(Stop::Asked);
            }
            between = Instant::now();
        }
        Ok(())
    }

    /// After a panic on the queue: waits until the parent closes posting `id` (the job
    /// failed; this process serves the next one) or shuts the pool down; a kill, to retry
    /// the chunk, may come first.
    fn await_close(&self, id: u64) -> Result<(), Stop> {
        loop {
            let seen = self.control.epoch();
            if self.control.shutting_down() {
                return Err(Stop::Asked);
            }
            if self.control.open_posting() != Some(id) {
                return Ok(());
            }
            let slept = self
                .control
                .wait(self.slot, seen, 0, Duration::from_secs(1));
            if slept && nix::unistd::getppid() != self.parent {
                return Err(Stop::Asked);
            }
        }
    }

    /// Counts a finished chunk; true (once, after telling the parent) when this process
    /// has reached its recycling limit: `recycle_chunks` chunks, or `recycle_rss` bytes
    /// resident.
    fn finished_one(&self, posting: &Posting) -> bool {
        let done = self.chunks_done.get() + 1;
        self.chunks_done.set(done);
        if self.retiring.get() {
            return false;
        }
        let by_count = posting.recycle_chunks > 0 && done >= posting.recycle_chunks;
        let by_memory = posting.recycle_rss > 0
            && crate::engine::sys::resident_bytes().is_some_and(|rss| rss > posting.recycle_rss);
        if !(by_count || by_memory) {
            return false;
        }
        self.retiring.set(true);
        let _ = self.to_parent.send(FromWorker::Retiring);
        true
    }

    fn wake_parent(&self) -> Result<(), Stop> {
        self.to_parent
            .send(FromWorker::Wake)
            .map_err(|_| Stop::Asked)
    }

    /// Channel dispatch: `receive chunk -> run -> reply Done` until the posting ends.
    fn serve_channel(&mut self, posting_fields: &Posting) -> Result<(), Stop> {
        let posting = posting_fields.id;
        loop {
            let msg = match self.early.pop_front() {
                Some(msg) => msg,
                None => match self.from_parent.recv() {
                    Ok(msg) => msg,
                    // The parent closed the channel (or died): nothing more to do.
                    Err(_) => return Err(Stop::Asked),
                },
            };
            match msg {
                ToWorker::Chunk {
                    posting: of,
                    id,
                    start,
                    end,
                    attempt,
                } => {
                    // A chunk of a later posting: this one is over. (This process entered
                    // it while starting, and the parent took it in only once the posting's
                    // `EndJob` had gone to the others.) Leave it, and run the chunk in the
                    // posting it belongs to.
                    if of > posting {
                        self.early.push_front(ToWorker::Chunk {
                            posting: of,
                            id,
                            start,
                            end,
                            attempt,
                        });
                        return Ok(());
                    }
                    // A chunk of an earlier posting, or of this one after the parent
                    // stopped it (a cancel, a deadline, a panic): not run, not answered.
                    if of != posting || self.control.open_posting() != Some(posting) {
                        continue;
                    }
                    let Some(job) = self.job.as_ref() else {
                        return Err(Stop::Failed("received a chunk before any job".into()));
                    };
                    let began = Instant::now();
                    // A panicking kernel is the caller's bug, not a crash: report it and
                    // serve on.
                    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        run_chunk(job, &self.results, None, id, start, end, attempt)
                    }));
                    let (reduction, data) = match ran {
                        Ok(ran) => ran?,
                        Err(payload) => {
                            let (message, location, failed) = chunk_report(payload.as_ref());
                            let panicked = FromWorker::Panicked {
                                id,
                                message,
                                location,
                                failed,
                            };
                            if self.to_parent.send(panicked).is_err() {
                                return Err(Stop::Asked);
                            }
                            continue;
                        }
                    };
                    let compute_ns = began.elapsed().as_nanos() as u64;
                    let done = FromWorker::Done {
                        id,
                        compute_ns,
                        reduction: reduction.map(serde_bytes::ByteBuf::from),
                        data: data.map(serde_bytes::ByteBuf::from),
                    };
                    if self.to_parent.send(done).is_err() {
                        return Err(Stop::Asked);
                    }
                    // Recycled: the parent sends no more chunks, and `Shutdown` once the
                    // ones already sent are done.
                    let _ = self.finished_one(posting_fields);
                }
                ToWorker::EndJob { posting: p } if p == posting => return Ok(()),
                ToWorker::EndJob { .. } => {}
                ToWorker::Job(spec) => {
                    self.take_inputs(&spec)?;
                    self.pending = Some(spec);
                }
                ToWorker::Shutdown => return Err(Stop::Asked),
                ToWorker::Welcome { .. } => return Err(Stop::Failed("a second Welcome".into())),
            }
        }
    }
}

/// What running a chunk gives back: its encoded accumulator (a reducing job) and its
/// output bytes (the channel transport).
type Ran = (Option<Vec<u8>>, Option<Vec<u8>>);

fn run_chunk(
    job: &CurrentJob,
    mapping: &Mapping,
    control: Option<&Control>,
    id: u64,
    start: u64,
    end: u64,
    attempt: u32,
) -> Result<Ran, String> {
    let fault = job
        .faults
        .iter()
        .find(|f| f.fires(id, attempt))
        .map(|f| f.action);
    if let Some(action) = fault {
        action.strike(id, control);
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
    let reduce = job.reduce_slot > 0;
    let reduced = |acc: Option<Vec<u8>>| match acc {
        None if reduce => Err(format!(
            "chunk {id}: the job reduces but this worker's registry has the workload without \
             its reduction (use Registry::register_reduce)"
        )),
        acc => Ok(acc),
    };
    if !job.output {
        // Reduction only: compute into our own memory and keep nothing but the accumulator.
        let len = hi.saturating_sub(lo);
        let mut scratch = job.scratch.borrow_mut();
        let lines = len.div_ceil(64);
        if scratch.len() < lines {
            scratch.resize(lines, Line([0; 64]));
        }
        let out = &mut bytemuck::cast_slice_mut::<Line, u8>(&mut scratch[..lines])[..len];
        let acc = job.kernel.run(start..end, out, reduce);
        return Ok((reduced(acc)?, None));
    }
    if job.transport == Transport::Channel {
        // Compute into our own memory; the bytes travel back in the Done message.
        let mut out = vec![0u8; hi.saturating_sub(lo)];
        let acc = job.kernel.run(start..end, &mut out, reduce);
        if fault == Some(FaultAction::Corrupt) && !out.is_empty() {
            out[0] ^= 0x5a;
        }
        return Ok((reduced(acc)?, Some(out)));
    }
    if lo > hi || hi > mapping.len() {
        return Err(format!(
            "chunk {id} ({start}..{end}) lies outside the shared region of {} bytes",
            mapping.len()
        ));
    }
    mapping.populate(lo..hi);
    // SAFETY: each chunk, a range disjoint from every other chunk's, is held by one worker
    // at a time (claimed from the queue, or sent by the parent), and the parent reads it
    // only after it is marked done; so for the life of this slice no other process touches
    // these bytes. (The chunk table after the results is only ever accessed atomically.)
    let out = unsafe { mapping.slice_mut(lo..hi) };
    let acc = job.kernel.run(start..end, out, reduce);
    if fault == Some(FaultAction::Corrupt) && !out.is_empty() {
        out[0] ^= 0x5a;
    }
    Ok((reduced(acc)?, None))
}

/// Where the last panic of this worker happened, kept by [`quiet_panics`]'s hook.
static PANIC_LOCATION: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Replaces the default panic hook, which prints the message (and a backtrace) on stderr,
/// with one that only notes where the panic happened: the parent gets message and
/// location in one error instead of the worker printing them.
pub(crate) fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
        if let Ok(mut last) = PANIC_LOCATION.lock() {
            *last = location;
        }
    }));
}

/// What stopped a chunk's kernel: a closure's error (its text, no location, `true`) or a
/// panic (its message and location, `false`).
fn chunk_report(payload: &(dyn std::any::Any + Send)) -> (String, Option<String>, bool) {
    if let Some(error) = payload.downcast_ref::<crate::engine::closure::KernelError>() {
        return (error.0.clone(), None, true);
    }
    let (message, location) = panic_report(payload);
    (message, location, false)
}

/// The message of a caught panic, and where it happened.
pub(crate) fn panic_report(payload: &(dyn std::any::Any + Send)) -> (String, Option<String>) {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with a payload that is not a string".to_string());
    let location = PANIC_LOCATION.lock().ok().and_then(|mut l| l.take());
    (message, location)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines_round_trip_and_say_what_happened() {
        let reports = [
            Report::Started,
            Report::Socket("/tmp/procpool-1-x/.tmpabc/socket".into()),
            Report::GaveUp(Some(libc::EINTR)),
            Report::GaveUp(None),
            Report::Failed("cannot create its handshake socket in /x: gone".into()),
        ];
        for report in reports {
            assert_eq!(Report::parse(&report.line()), Some(report.clone()));
        }
        assert_eq!(
            Report::GaveUp(Some(libc::EINTR)).to_string(),
            "gave up its handshake: Interrupted system call"
        );
        assert_eq!(
            Report::Failed("a\nb".into()).line(),
            "failed a b",
            "one line, whatever the message"
        );
        for junk in ["", "socket", "gave-up x", "relative/path", "failed"] {
            assert_eq!(Report::parse(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn worker_args_round_trip() {
        let a = WorkerArgs {
            shm_fd: 5,
            id: 3,
            report_fd: 7,
            inputs_fd: 8,
            timeout: Duration::from_millis(1500),
            parent: 42,
            cpu: Some(1),
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
        bad[5] = "0".into();
        assert!(WorkerArgs::from_args(&bad).is_err());
    }
}
