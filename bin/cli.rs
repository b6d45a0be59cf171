//! The command line: clap definitions and the parsers for what users type.

use std::path::PathBuf;
use std::time::Duration;

use crate::parse::{parse_bytes, parse_count, parse_duration};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use procpool::Fault;
use procpool::lab::options::{RUN_OPTIONS, RunOption, Runner};
use procpool::workload::hash::DEFAULT_ROUNDS;
use procpool::workload::mandelbrot::DEFAULT_MAX_ITER;

/// Run a CPU-bound job across worker processes with shared memory, check it against a
/// single-process run, and report the multi-core speedup and where the time went.
#[derive(Debug, Parser)]
#[command(name = "procpool", version, about, max_term_width = 100)]
#[command(after_help = "Examples:\n  \
    procpool --workers 8 squares 10000000\n  \
    procpool squares 1e7 --workers 2 --json\n  \
    procpool --workers 2 primes 1e6 --mode threads\n  \
    procpool --workers 4 squares 1e6 --inject kill@3   (watch a worker die)\n  \
    procpool sweep --workers 1,2,4 --repeat 3 hash 1e5 --plot speedup.svg\n  \
    procpool compare-modes --workers 2 squares 1e7\n  \
    procpool ipc-bench\n  \
    procpool list --json\n  \
    procpool generate completions bash\n  \
    procpool generate man | man -l -")]
pub(crate) struct Cli {
    /// Options of every run.
    #[command(flatten)]
    pub run: RunArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The command line as clap sees it, with the options a subcommand does not use hidden from
/// its help, completions and man page (see [`uses`]).
pub(crate) fn command() -> clap::Command {
    let cmd = Cli::command();
    let globals: Vec<clap::Arg> = cmd
        .get_arguments()
        .filter(|a| a.is_global_set())
        .cloned()
        .collect();
    hide_unused(cmd, &globals, &mut Vec::new())
}

/// The command line for completion scripts: clap_complete's scripts offer hidden options
/// too, so there the options of a run are not global at the root but copied into each
/// subcommand that uses them.
pub(crate) fn completion_command() -> clap::Command {
    let mut cmd = Cli::command();
    let globals: Vec<clap::Arg> = cmd
        .get_arguments()
        .filter(|a| a.is_global_set())
        .cloned()
        .collect();
    for global in &globals {
        cmd = cmd.mut_arg(global.get_id(), |a| a.global(false));
    }
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|sc| sc.get_name().to_string())
        .collect();
    for name in names {
        cmd = cmd.mut_subcommand(&name, |mut sc| {
            for global in &globals {
                let id = global.get_id().as_str();
                if uses(&[name.as_str()], id) && !sc.get_arguments().any(|a| a.get_id() == id) {
                    sc = sc.arg(global.clone());
                }
            }
            sc
        });
    }
    hide_unused(cmd, &[], &mut Vec::new())
}

/// Parses `args` (the program's name first), refusing an option the subcommand does not use.
pub(crate) fn parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let mut cmd = command();
    let matches = cmd.try_get_matches_from_mut(args)?;
    refuse_unused(&cmd, &matches)?;
    Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))
}

/// Whether the subcommand at `path` (`["ipc-bench"]`, `["sweep", "mandelbrot"]`) uses the
/// option `id`. The options of a run are declared once, `global`, so that they go before or
/// after the workload's name (`procpool --workers 8 squares 1e7`, `procpool squares 1e7
/// --workers 8`); clap then accepts them everywhere, and the library's table of options
/// ([`procpool::lab::options`]) says where they mean something.
fn uses(path: &[&str], id: &str) -> bool {
    let runner = match path {
        ["generate", ..] => return !is_run_option(id),
        ["list" | "ipc-bench", ..] => Runner::Tools,
        ["sweep", ..] => Runner::Sweep,
        ["compare-modes", ..] => Runner::CompareModes,
        _ => return true,
    };
    option_of(id).map_or(!is_run_option(id), |o| o.taken_by(runner))
}

/// The table's row for the clap argument `id` (`max_worker_rss`, the flag's name with `_`).
fn option_of(id: &str) -> Option<&'static RunOption> {
    RUN_OPTIONS
        .iter()
        .find(|o| o.flag.trim_start_matches("--").replace('-', "_") == id)
}

/// Whether `id` is one of the options of a run ([`RunArgs`]), not a subcommand's own.
fn is_run_option(id: &str) -> bool {
    static IDS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    IDS.get_or_init(|| {
        RunArgs::augment_args(clap::Command::new("run"))
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .collect()
    })
    .iter()
    .any(|run| run == id)
}

/// Hides what the subcommand at `path` does not use: a hidden copy of each global option
/// it does not use (clap then copies the visible one only where it is not defined yet), and
/// its own such options. clap must not be built yet: a built command's arguments are indexed.
fn hide_unused(
    mut cmd: clap::Command,
    globals: &[clap::Arg],
    path: &mut Vec<String>,
) -> clap::Command {
    let here: Vec<&str> = path.iter().map(String::as_str).collect();
    let defined = |cmd: &clap::Command, id: &str| cmd.get_arguments().any(|a| a.get_id() == id);
    if !here.is_empty() {
        for global in globals {
            let id = global.get_id().as_str();
            if !uses(&here, id) && !defined(&cmd, id) {
                // Without its heading: a hidden copy would put the heading first in --help.
                cmd = cmd.arg(global.clone().hide(true).help_heading(None::<&str>));
            }
        }
    }
    let hidden: Vec<String> = cmd
        .get_arguments()
        .filter(|a| !a.is_global_set() && !a.is_hide_set())
        .map(|a| a.get_id().to_string())
        .filter(|id| !uses(&here, id))
        .collect();
    for id in hidden {
        cmd = cmd.mut_arg(id, |a| a.hide(true));
    }
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|sc| sc.get_name().to_string())
        .collect();
    for name in names {
        path.push(name.clone());
        cmd = cmd.mut_subcommand(name, |sc| hide_unused(sc, globals, path));
        path.pop();
    }
    cmd
}

/// A usage error naming the first option given to a subcommand that does not use it, and
/// the options it does take.
fn refuse_unused(root: &clap::Command, matches: &ArgMatches) -> Result<(), clap::Error> {
    let (mut cmd, mut here, mut path) = (root, matches, Vec::new());
    while let Some((name, sub)) = here.subcommand() {
        let Some(next) = cmd.find_subcommand(name) else {
            break;
        };
        (cmd, here) = (next, sub);
        path.push(name);
    }
    if path.first() == Some(&"help") {
        return Ok(());
    }
    // (Asking clap about an argument the subcommand does not have is a bug it panics on.)
    let given = |id: &str| {
        cmd.get_arguments().any(|a| a.get_id() == id)
            && here.value_source(id) == Some(ValueSource::CommandLine)
    };
    let given_unused = cmd.get_arguments().find(|a| {
        let id = a.get_id().as_str();
        !uses(&path, id) && given(id)
    });
    let Some(arg) = given_unused else {
        if let Some(message) = unused_here(&path, here, &given) {
            return Err(clap::Error::raw(
                clap::error::ErrorKind::ArgumentConflict,
                message,
            ));
        }
        // clap's `requires` cannot see a global option given at another level.
        if given("window_size") && !given("output") {
            return Err(clap::Error::raw(
                clap::error::ErrorKind::MissingRequiredArgument,
                "--window-size sets the windows of --output: add --output FILE, or drop it\n",
            ));
        }
        return Ok(());
    };
    let flags: Vec<String> = cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set() && !matches!(a.get_id().as_str(), "help" | "version"))
        .filter_map(|a| a.get_long().map(|long| format!("--{long}")))
        .collect();
    let takes = match flags.len() {
        0 => "it takes no options".to_string(),
        1..=6 => format!("its options: {}", flags.join(", ")),
        _ => format!("`procpool {} --help` lists its options", path.join(" ")),
    };
    let message = format!(
        "`procpool {}` does not use --{} ({takes})\n",
        path.join(" "),
        arg.get_long().unwrap_or(arg.get_id().as_str()),
    );
    Err(clap::Error::raw(
        clap::error::ErrorKind::ArgumentConflict,
        message,
    ))
}

/// A usage error for an option that the chosen mode (`--mode threads`, `--mode single`) or
/// backend (`--backend mpi`, or the default process backend) has no use for: it would be
/// silently ignored.
fn unused_here(path: &[&str], here: &ArgMatches, given: &dyn Fn(&str) -> bool) -> Option<String> {
    // Only a workload's run (and a sweep of one) has a mode and a backend.
    if matches!(
        path.first(),
        Some(&("list" | "ipc-bench" | "generate")) | None
    ) {
        return None;
    }
    let value = |id: &str| {
        here.get_raw(id)
            .and_then(|mut values| values.next())
            .and_then(|value| value.to_str())
    };
    let runner = match (value("backend"), value("mode")) {
        (Some("mpi"), _) => Runner::Mpi,
        (_, Some("threads")) => Runner::Threads,
        (_, Some("single")) => Runner::Single,
        _ => Runner::Processes,
    };
    let refusal = RUN_OPTIONS
        .iter()
        .filter(|o| given(&o.flag.trim_start_matches("--").replace('-', "_")))
        .find_map(|o| o.refusal(runner))?;
    Some(with_flags(&refusal.to_string()) + "\n")
}

/// What to do: run a workload, or one of the tools.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run a workload (the subcommands below).
    #[command(flatten)]
    Workload(WorkloadCmd),
    /// List the workloads: arguments, output, and which bound each one shows
    List,
    /// Run a workload over a grid of worker counts (and chunk sizes); fit Amdahl's law
    Sweep(SweepArgs),
    /// Run a workload as processes and as threads, alternating; say what processes cost
    CompareModes(CompareArgs),
    /// Measure IPC on this machine: round-trip latency, and throughput of the channels
    /// against shared memory, from 64 B to 1 MiB
    IpcBench(IpcBenchArgs),
    /// Write a shell completion script or the man page to stdout
    #[command(subcommand)]
    Generate(Generate),
}

/// `procpool generate`.
#[derive(Debug, Clone, Copy, Subcommand)]
pub(crate) enum Generate {
    /// A completion script for SHELL, e.g. `procpool generate completions bash >
    /// ~/.local/share/bash-completion/completions/procpool`
    Completions {
        /// The shell to complete in
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// The man page (roff), e.g. `procpool generate man | man -l -`
    Man,
}

/// The headings the options of a run are grouped under in `--help`.
const WORKERS: &str = "Workers and chunks";
const SUPERVISION: &str = "Supervision";
const MEASUREMENT: &str = "Measurement";
const OUTPUT: &str = "Output";
const SWEEP_OUTPUT: &str = "Sweep output";

/// `procpool sweep`.
#[derive(Debug, Args)]
pub(crate) struct SweepArgs {
    /// Draw speedup and efficiency against workers as an SVG
    #[arg(help_heading = SWEEP_OUTPUT, long, global = true, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Write the rows to a file: .csv, .json or .md
    #[arg(help_heading = SWEEP_OUTPUT, long, global = true, value_name = "FILE")]
    pub export: Option<PathBuf>,
    /// The workload to sweep
    #[command(subcommand)]
    pub workload: WorkloadCmd,
}

/// `procpool compare-modes`.
#[derive(Debug, Args)]
pub(crate) struct CompareArgs {
    /// The workload to run both ways
    #[command(subcommand)]
    pub workload: WorkloadCmd,
}

/// `procpool ipc-bench`.
#[derive(Debug, Args)]
pub(crate) struct IpcBenchArgs {
    /// Round trips timed for the latency percentiles
    #[arg(long, value_name = "N", default_value = "20000", allow_negative_numbers = true, value_parser = parse_n)]
    pub round_trips: u64,
    /// Skip the pinned variants
    #[arg(long)]
    pub no_pin: bool,
    /// Message sizes for the throughput table [default: 64B,256B,1KiB,…,1MiB]
    #[arg(long, value_name = "SIZES", allow_negative_numbers = true, value_parser = parse_sizes)]
    pub sizes: Option<List<u64>>,
}

/// A comma-separated list (`1,2,4,8`); one value outside `sweep`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct List<T>(pub Vec<T>);

/// A chunk size: a number of elements, or measured and chosen (`auto`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum ChunkSize {
    /// Measure the first chunks and choose.
    Auto,
    /// This many elements.
    Elements(u64),
}

/// Options of a run; accepted before or after the workload.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// Worker processes [default: $PROCPOOL_WORKERS, else one per CPU this process may use
    /// (affinity and cgroup quota)]; under `sweep`, a list (1,2,4,8)
    #[arg(help_heading = WORKERS, short, long, global = true, value_name = "W", allow_negative_numbers = true, value_parser = parse_workers)]
    pub workers: Option<List<usize>>,

    /// Elements per chunk, or `auto` to measure and choose [default: about 4 chunks per
    /// worker, like Python's Pool.map]; under `sweep`, a list
    #[arg(help_heading = WORKERS, long, global = true, value_name = "N|auto", allow_negative_numbers = true, value_parser = parse_chunk_sizes)]
    pub chunk_size: Option<List<ChunkSize>>,

    /// How chunks are handed out (OpenMP's meanings): static (dealt in advance), dynamic
    /// (to whoever is free), guided (shrinking)
    #[arg(help_heading = WORKERS, long, global = true, value_enum, default_value_t = ScheduleArg::Dynamic)]
    pub schedule: ScheduleArg,

    /// How results come back: shm (written straight into shared memory) or channel (sent
    /// over ipc-channel), to see what shared memory saves
    #[arg(help_heading = WORKERS, long, global = true, value_enum, default_value_t = TransportArg::Shm)]
    pub transport: TransportArg,

    /// How chunks reach the workers: queue (claimed from shared memory with one atomic add,
    /// no message per chunk) or channel (one message out and one back per chunk) [default:
    /// queue; channel with --transport channel]
    #[arg(help_heading = WORKERS, long, global = true, value_enum)]
    pub dispatch: Option<DispatchArg>,

    /// Pin each worker to one CPU (sched_setaffinity)
    #[arg(help_heading = WORKERS, long, global = true)]
    pub pin: bool,

    /// Chunks in flight per worker (one running, the rest queued), or `auto`: start at 2 and
    /// queue more when chunks compute for less than a message's round trip (at most 16)
    #[arg(help_heading = WORKERS, long, global = true, value_name = "K|auto", default_value = "auto", allow_negative_numbers = true,
          value_parser = parse_inflight)]
    pub inflight: Inflight,

    /// Run the job on worker processes (the pool), on threads of one process, or in one
    /// process, to compare what each costs
    #[arg(help_heading = WORKERS, long, global = true, value_enum, default_value_t = ModeArg::Processes)]
    pub mode: ModeArg,

    /// Back the shared results with reserved huge pages (/proc/sys/vm/nr_hugepages)
    #[arg(help_heading = WORKERS, long, global = true)]
    pub huge_pages: bool,

    /// Where the workers run: processes procpool starts, or the ranks of the `mpirun` that
    /// started procpool (`mpirun -np K procpool --backend mpi ...`; needs a build with
    /// `--features mpi`)
    #[arg(help_heading = WORKERS, long, global = true, value_enum, default_value_t = BackendArg::Processes)]
    pub backend: BackendArg,

    /// With --backend mpi: treat every N consecutive ranks as one node instead of asking MPI
    /// (1: every result takes the route between nodes)
    #[arg(help_heading = WORKERS, long, global = true, value_name = "N",
          allow_negative_numbers = true, value_parser = parse_node_size)]
    pub mpi_node_size: Option<u64>,

    /// With --backend mpi: how results of ranks on other nodes reach rank 0's window,
    /// inside each chunk's reply (default: works over any network) or `MPI_Put` into it
    /// (faster, where the MPI can do it between the nodes)
    #[arg(help_heading = WORKERS, long, global = true, value_enum, value_name = "ROUTE")]
    pub mpi_route: Option<MpiRouteArg>,

    /// With --backend mpi: start `mpirun -np K` on this command yourself (adding
    /// --oversubscribe when K exceeds the CPUs), and exit 130/143 when interrupted, which
    /// mpirun itself does not
    #[arg(help_heading = WORKERS, long, global = true, value_name = "K",
          allow_negative_numbers = true, value_parser = parse_ranks)]
    pub ranks: Option<u64>,

    /// How worker processes start: forked by a fork server (the default), re-executing
    /// this binary, or fork (only from a single-threaded process)
    #[arg(help_heading = WORKERS, long, global = true, value_enum, default_value_t = StartArg::ForkServer)]
    pub start: StartArg,

    /// Make a worker fail on purpose at chunk CHUNK, on its first attempt or on every attempt
    /// (ACTION: kill, abort, panic, segv, exit, hang, corrupt, fork; scribble and wipe
    /// overwrite the queue's claim counter or zero its control block in shared memory).
    /// Repeatable.
    #[arg(help_heading = SUPERVISION, long, global = true, value_name = "ACTION@CHUNK[:always]")]
    pub inject: Vec<Fault>,

    /// Retry a chunk whose worker died or timed out up to K times (so it is tried at most
    /// K+1 times), then fail naming the chunk
    #[arg(help_heading = SUPERVISION, long, global = true, value_name = "K", default_value_t = procpool::Supervision::DEFAULT_RETRIES, allow_negative_numbers = true,
          value_parser = parse_u32)]
    pub retries: u32,

    /// Fail when workers had to be restarted more than M times in one job
    /// [default: 10 + 2 × workers]
    #[arg(help_heading = SUPERVISION, long, global = true, value_name = "M", allow_negative_numbers = true, value_parser = parse_n)]
    pub max_restarts: Option<u64>,

    /// Replace each worker process after it has run N chunks (Python's maxtasksperchild):
    /// a recycle, not a death
    #[arg(help_heading = SUPERVISION, long, global = true, value_name = "N", allow_negative_numbers = true, value_parser = parse_n)]
    pub max_chunks_per_worker: Option<u64>,

    /// Replace a worker process, between chunks, once its resident memory passes BYTES
    /// (e.g. 512MiB): a recycle, not a death
    #[arg(help_heading = SUPERVISION, long, global = true, value_name = "BYTES", allow_negative_numbers = true, value_parser = parse_bytes)]
    pub max_worker_rss: Option<u64>,

    /// Retry a chunk whose kernel panicked, like a crash (by default a panic fails the run
    /// at once, naming the chunk and the panic: the same input would panic again)
    #[arg(help_heading = SUPERVISION, long, global = true)]
    pub retry_panics: bool,

    /// Kill a worker whose chunk runs longer than this (e.g. 500ms, 2s) and retry the chunk
    #[arg(help_heading = SUPERVISION, long, global = true, value_name = "DURATION", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,

    /// Stop the worker processes' job once it has run this long (e.g. 200ms, 30s) and fail
    /// the run (exit 1): each parallel run (each round with --repeat), workers still
    /// starting included; not the single-process baseline or the comparison
    #[arg(help_heading = SUPERVISION, long, global = true, value_name = "DURATION", allow_hyphen_values = true, value_parser = parse_deadline)]
    pub deadline: Option<Duration>,

    /// On Ctrl-C or SIGTERM, how long workers get at each step: stop message, SIGTERM, SIGKILL
    #[arg(help_heading = SUPERVISION, long, global = true, value_name = "DURATION", default_value = "500ms",
          value_parser = parse_duration_arg)]
    pub grace: Duration,

    /// How long workers may take to start and connect back
    #[arg(help_heading = SUPERVISION, long, global = true, value_name = "DURATION", default_value = "10s",
          value_parser = parse_handshake_timeout)]
    pub handshake_timeout: Duration,

    /// Time R rounds of baseline and parallel run (alternating) and report mean ± σ
    /// [default: 1; 3 under compare-modes]
    #[arg(help_heading = MEASUREMENT, long, global = true, value_name = "R", allow_negative_numbers = true, value_parser = parse_repeat)]
    pub repeat: Option<usize>,

    /// Rounds to run first and discard
    #[arg(help_heading = MEASUREMENT, long, global = true, value_name = "K", default_value_t = 0, allow_negative_numbers = true, value_parser = parse_usize)]
    pub warmup: usize,

    /// Skip the single-process run (speedup and verified are then null)
    #[arg(help_heading = MEASUREMENT, long, global = true)]
    pub no_baseline: bool,

    /// Stream the output to FILE (little-endian elements in index order) in bounded memory,
    /// verifying window by window
    #[arg(help_heading = OUTPUT, long, global = true, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// With --output, the length of each window of the ring in shared memory
    #[arg(help_heading = OUTPUT, long, global = true, value_name = "BYTES", allow_negative_numbers = true, default_value = "32MiB",
          value_parser = parse_window)]
    pub window_size: u64,

    /// Print the report as one JSON object on stdout (`list`: the catalogue as an array)
    #[arg(help_heading = OUTPUT, long, global = true)]
    pub json: bool,

    /// Write every chunk and worker event as a Chrome trace (open it in ui.perfetto.dev)
    #[arg(help_heading = OUTPUT, long, global = true, value_name = "FILE.json")]
    pub trace: Option<PathBuf>,

    /// Draw the run's timeline as an SVG: workers by time, compute, waiting, retries, deaths
    #[arg(help_heading = OUTPUT, long, global = true, value_name = "FILE.svg")]
    pub timeline: Option<PathBuf>,
}

/// Declares a value enum of the command line and its mapping onto the library's enum: the
/// library knows nothing of clap (it builds without it), the command line names the values.
macro_rules! value_enum {
    ($(#[$doc:meta])* $name:ident => $lib:path { $($(#[$vdoc:meta])* $variant:ident),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                <$lib>::from(*self).fmt(f)
            }
        }

        impl From<$name> for $lib {
            fn from(value: $name) -> Self {
                match value {
                    $($name::$variant => <$lib>::$variant),+
                }
            }
        }
    };
}

value_enum! {
    /// `--schedule`.
    ScheduleArg => procpool::Schedule {
        /// Chunks dealt round-robin in advance: chunk k belongs to worker k mod W. Without
        /// `--chunk-size`, one contiguous block per worker. No balancing at all.
        Static,
        /// The next chunk goes to whichever worker is free (the default).
        Dynamic,
        /// Like dynamic, with chunks shrinking as the work runs out: each is the remaining
        /// work divided by the number of workers, but at least the chunk size.
        Guided,
    }
}

value_enum! {
    /// `--transport`.
    TransportArg => procpool::Transport {
        /// Written straight into the shared region; only a small `Done` crosses the channel.
        Shm,
        /// Sent back inside the `Done` message over ipc-channel, and copied into place by
        /// the parent: what shared memory saves, made visible.
        Channel,
    }
}

value_enum! {
    /// `--dispatch`.
    DispatchArg => procpool::Dispatch {
        /// Workers claim chunks from a queue in shared memory, one atomic add each; no
        /// message crosses a channel per chunk.
        Queue,
        /// The parent sends every chunk over ipc-channel and the worker answers each: the
        /// classic pool, to see what the queue saves.
        Channel,
    }
}

/// `--mpi-route`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum MpiRouteArg {
    /// One-sided `MPI_Put` into rank 0's memory, then a short reply.
    Put,
    /// The results inside each chunk's reply; rank 0 copies them.
    Send,
}

/// `--backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum BackendArg {
    /// Worker processes this command starts and supervises.
    Processes,
    /// The ranks of the `mpirun` that started this command: rank 0 dispatches and
    /// verifies, the others compute.
    Mpi,
}

value_enum! {
    /// `--mode`.
    ModeArg => procpool::Mode {
        /// Worker processes writing into shared memory: the pool.
        Processes,
        /// The same kernel on threads of this process, sharing one output buffer.
        Threads,
        /// One process, one call of the kernel over the whole range.
        Single,
    }
}

value_enum! {
    /// `--start`.
    StartArg => procpool::StartMethod {
        /// Re-execute the worker binary and connect back over an ipc-channel one-shot server
        /// (like Python's `spawn`): a fresh process image, about a millisecond per worker.
        Spawn,
        /// `fork` this process (like Python's `fork`): no exec and no handshake, a fraction
        /// of a millisecond per worker. Only from a single-threaded process; workers that
        /// replace dead ones come from the fork server, because by then the pool has
        /// threads of its own.
        Fork,
        /// Ask the fork server procpool forked when it started (like Python's
        /// `forkserver`): no exec and no handshake, from any thread; the default.
        #[value(name = "forkserver")]
        ForkServer,
    }
}

/// The workloads, each a subcommand with its own arguments.
#[derive(Debug, Clone, Subcommand)]
pub(crate) enum WorkloadCmd {
    /// out[i] = i*i (u64, wrapping): memory-bound, 8 bytes written per multiply
    Squares {
        /// Number of elements: 10000000, 10_000_000 or 1e7
        #[arg(value_name = "N", value_parser = parse_n, allow_negative_numbers = true)]
        n: u64,
    },
    /// out[i] = 1 if i is prime (trial division): CPU-bound, cost grows with i
    Primes {
        /// Number of elements
        #[arg(value_name = "N", value_parser = parse_n, allow_negative_numbers = true)]
        n: u64,
    },
    /// out[i] = Collatz steps from i to 1: CPU-bound, irregular
    Collatz {
        /// Number of elements
        #[arg(value_name = "N", value_parser = parse_n, allow_negative_numbers = true)]
        n: u64,
    },
    /// Iterations per pixel of an N×N Mandelbrot image: CPU-bound, irregular by row
    Mandelbrot {
        /// Side of the image in pixels (N×N elements)
        #[arg(value_name = "N", value_parser = parse_n, allow_negative_numbers = true)]
        n: u64,
        /// Iteration cap per pixel
        #[arg(long, value_name = "K", default_value_t = DEFAULT_MAX_ITER, allow_negative_numbers = true, value_parser = parse_max_iter)]
        max_iter: u32,
        /// Also write the picture as a PNG
        #[arg(long, value_name = "FILE.png")]
        image: Option<PathBuf>,
    },
    /// First 8 bytes of SHA-256 applied R times to i: CPU-bound, uniform
    Hash {
        /// Number of elements
        #[arg(value_name = "N", value_parser = parse_n, allow_negative_numbers = true)]
        n: u64,
        /// SHA-256 rounds per element
        #[arg(long, value_name = "R", default_value_t = DEFAULT_ROUNDS, allow_negative_numbers = true,
              value_parser = parse_u32)]
        rounds: u32,
    },
    /// About X µs of pure CPU per element: task granularity against IPC cost
    Spin {
        /// Number of elements
        #[arg(value_name = "N", value_parser = parse_n, allow_negative_numbers = true)]
        n: u64,
        /// Microseconds of work per element (calibrated once per run)
        #[arg(long, value_name = "X", allow_negative_numbers = true, value_parser = parse_us)]
        us: f64,
    },
    /// out[i] = i after sleeping X ms per element: the I/O-bound stand-in
    Sleep {
        /// Number of elements
        #[arg(value_name = "N", value_parser = parse_n, allow_negative_numbers = true)]
        n: u64,
        /// Milliseconds of sleep per element
        #[arg(long, value_name = "X", allow_negative_numbers = true, value_parser = parse_ms)]
        ms: f64,
    },
}

fn parse_n(s: &str) -> Result<u64, String> {
    parse_count(s)
}

fn parse_list<T>(s: &str, one: impl Fn(&str) -> Result<T, String>) -> Result<List<T>, String> {
    s.split(',')
        .map(|part| one(part.trim()))
        .collect::<Result<_, _>>()
        .map(List)
}

/// A count of at least 1: a negative one is told so, not that it should be ≥ 0.
fn parse_positive(s: &str) -> Result<u64, String> {
    if s.trim().starts_with('-') {
        return Err(format!("`{s}` is negative: expected a whole number ≥ 1"));
    }
    parse_count(s)
}

fn parse_u32(s: &str) -> Result<u32, String> {
    u32::try_from(parse_count(s)?).map_err(|_| format!("`{s}` is too large (at most {})", u32::MAX))
}

fn parse_workers(s: &str) -> Result<List<usize>, String> {
    parse_list(s, |part| {
        let n = parse_positive(part)?;
        if n == 0 {
            return Err("--workers must be at least 1 (got 0)".into());
        }
        usize::try_from(n).map_err(|_| format!("`{part}` is too large"))
    })
}

/// The most ranks `--ranks` starts on this machine.
const MAX_RANKS: u64 = 4096;

fn parse_ranks(s: &str) -> Result<u64, String> {
    match parse_positive(s)? {
        k @ 2..=MAX_RANKS => Ok(k),
        k @ (0 | 1) => Err(format!(
            "--ranks must be at least 2, rank 0 and a worker (got {k})"
        )),
        k => Err(format!("--ranks must be at most {MAX_RANKS} (got {k})")),
    }
}

fn parse_node_size(s: &str) -> Result<u64, String> {
    match parse_positive(s)? {
        0 => Err("--mpi-node-size must be at least 1 (got 0)".into()),
        n => Ok(n),
    }
}

fn parse_chunk_sizes(s: &str) -> Result<List<ChunkSize>, String> {
    parse_list(s, |part| {
        if part.eq_ignore_ascii_case("auto") {
            return Ok(ChunkSize::Auto);
        }
        match parse_positive(part)? {
            0 => Err("--chunk-size must be at least 1 (got 0)".into()),
            n => Ok(ChunkSize::Elements(n)),
        }
    })
}

fn parse_window(s: &str) -> Result<u64, String> {
    match parse_bytes(s)? {
        0 => Err("--window-size must be at least 1 byte (got 0)".into()),
        n => Ok(n),
    }
}

fn parse_sizes(s: &str) -> Result<List<u64>, String> {
    parse_list(s, |part| match parse_bytes(part)? {
        0 => Err("--sizes must be at least 1 byte each".into()),
        n => Ok(n),
    })
}

fn parse_repeat(s: &str) -> Result<usize, String> {
    parse_positive(s)?;
    match parse_usize(s)? {
        0 => Err("--repeat must be at least 1 (got 0)".into()),
        n => Ok(n),
    }
}

fn parse_usize(s: &str) -> Result<usize, String> {
    usize::try_from(parse_count(s)?).map_err(|_| format!("`{s}` is too large"))
}

fn parse_max_iter(s: &str) -> Result<u32, String> {
    match parse_count(s)? {
        0 => Err("--max-iter must be at least 1 (got 0)".into()),
        n => u32::try_from(n).map_err(|_| format!("`{s}` is too large (at most {})", u32::MAX)),
    }
}

fn parse_non_negative(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(format!("`{s}` is not a number ≥ 0 (e.g. 10 or 0.5)")),
    }
}

/// A number ≥ 0 and at most `max` (`max_text` says it in words).
fn parse_at_most(s: &str, max: f64, max_text: &str) -> Result<f64, String> {
    let x = parse_non_negative(s)?;
    if x > max {
        return Err(format!(
            "`{s}` is more than {max_text} per element, the most allowed"
        ));
    }
    Ok(x)
}

fn parse_us(s: &str) -> Result<f64, String> {
    parse_at_most(
        s,
        procpool::workload::spin::MAX_US,
        "3600000000 µs (1 hour)",
    )
}

fn parse_ms(s: &str) -> Result<f64, String> {
    parse_at_most(s, procpool::workload::sleep::MAX_MS, "3600000 ms (1 hour)")
}

/// `--inflight`: a fixed depth, or chosen per job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Inflight {
    /// Chosen per job from its first chunks.
    Auto,
    /// This many chunks per worker.
    Fixed(usize),
}

fn parse_inflight(s: &str) -> Result<Inflight, String> {
    if s.trim() == "auto" {
        return Ok(Inflight::Auto);
    }
    match parse_positive(s)? {
        0 => Err("--inflight must be at least 1 (got 0), or auto".into()),
        n => usize::try_from(n)
            .map(Inflight::Fixed)
            .map_err(|_| format!("`{s}` is too large")),
    }
}

/// Every duration flag: a number and a unit, at most [`crate::parse::MAX_DURATION`] (clap
/// names the flag in front of the message).
fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    match parse_duration_arg(s)? {
        d if d.is_zero() => Err(format!(
            "a chunk time limit of `{s}` kills every chunk: use at least 1ms, or omit \
             --timeout for no limit"
        )),
        d => Ok(d),
    }
}

fn parse_deadline(s: &str) -> Result<Duration, String> {
    match parse_duration_arg(s)? {
        d if d.is_zero() => Err(format!(
            "a deadline of `{s}` stops the job before it starts: use at least 1ms, or omit \
             --deadline for no limit"
        )),
        d => Ok(d),
    }
}

fn parse_handshake_timeout(s: &str) -> Result<Duration, String> {
    match parse_duration_arg(s)? {
        d if d.is_zero() => Err(format!(
            "`{s}` leaves workers no time to start: use at least 1ms (the default is 10s)"
        )),
        d => Ok(d),
    }
}

/// The phrases that name a flag in the library's own words, and the options of the tools
/// (the table of run options, [`RUN_OPTIONS`], has the rest).
const FLAGS: &[(&str, &str)] = &[
    ("turn off `baseline`", "--no-baseline"),
    ("`round_trips`", "--round-trips"),
    ("`sizes`", "--sizes"),
];

/// A library refusal in the command line's words: its flags where the library names its
/// options (`` `workers` must be at least 1 `` becomes `--workers must be at least 1`).
pub(crate) fn with_flags(message: &str) -> String {
    let phrased = FLAGS
        .iter()
        .fold(message.to_string(), |text, (library, flag)| {
            text.replace(library, flag)
        });
    RUN_OPTIONS.iter().fold(phrased, |text, option| {
        text.replace(&format!("`{}`", option.name), option.flag)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_lines_are_consistent() {
        command().debug_assert();
        completion_command().debug_assert();
    }

    #[test]
    fn each_subcommand_uses_its_own_options_and_only_the_run_options_it_needs() {
        assert!(uses(&["squares"], "workers") && uses(&["sweep", "hash"], "inject"));
        assert!(uses(&["ipc-bench"], "round_trips") && uses(&["ipc-bench"], "json"));
        assert!(!uses(&["ipc-bench"], "workers") && !uses(&["list"], "output"));
        assert!(uses(&["list"], "json") && !uses(&["generate", "man"], "json"));
        assert!(uses(&["generate", "completions"], "shell"));
        assert!(uses(&["mandelbrot"], "image") && !uses(&["sweep", "mandelbrot"], "image"));
        assert!(uses(&["sweep", "mandelbrot"], "max_iter"));
    }

    #[test]
    fn the_table_of_options_has_a_row_for_every_run_option_and_only_those() {
        let cmd = command();
        let mandelbrot = cmd.find_subcommand("mandelbrot").expect("a subcommand");
        let ids: Vec<String> = RunArgs::augment_args(clap::Command::new("run"))
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .chain(["image".to_string()])
            .collect();
        for id in &ids {
            let option = option_of(id).unwrap_or_else(|| panic!("--{id} has no row"));
            // The library's name for it reads as the flag in every message.
            assert_eq!(with_flags(&format!("`{}`", option.name)), option.flag);
            let arg = cmd
                .get_arguments()
                .chain(mandelbrot.get_arguments())
                .find(|a| a.get_id() == id.as_str())
                .expect("an argument");
            assert_eq!(format!("--{}", arg.get_long().expect("long")), option.flag);
        }
        assert_eq!(ids.len(), RUN_OPTIONS.len(), "a row for no argument");
    }

    #[test]
    fn a_mode_or_backend_refuses_what_the_table_says_it_does_not_take() {
        let refused = |args: &[&str]| {
            let mut all = vec!["procpool"];
            all.extend_from_slice(args);
            parse_from(all).map(|_| ()).map_err(|e| e.to_string())
        };
        let line = refused(&["--mode", "single", "--pin", "squares", "10"]).unwrap_err();
        assert!(
            line.contains("--pin has no effect with --mode single")
                && line.contains("--mode processes"),
            "{line}"
        );
        let line = refused(&["squares", "10", "--ranks", "2"]).unwrap_err();
        assert!(line.contains("--ranks is for --backend mpi"), "{line}");
        let line = refused(&["sweep", "--ranks", "2", "squares", "10"]).unwrap_err();
        assert!(line.contains("does not use --ranks"), "{line}");
        let line = refused(&["compare-modes", "--inject", "kill@1", "squares", "10"]).unwrap_err();
        assert!(line.contains("does not use --inject"), "{line}");
        let line =
            refused(&["--mode", "threads", "--trace", "t.json", "squares", "10"]).unwrap_err();
        assert!(
            line.contains("--trace has no effect with --mode threads"),
            "{line}"
        );
        let line =
            refused(&["--backend", "mpi", "mandelbrot", "10", "--image", "m.png"]).unwrap_err();
        assert!(
            line.contains("--image has no effect with --backend mpi"),
            "{line}"
        );
        // What the table lets through.
        refused(&[
            "--backend",
            "mpi",
            "--inflight",
            "3",
            "--repeat",
            "2",
            "hash",
            "10",
        ])
        .expect("the mpi backend takes --inflight and --repeat");
        refused(&["--mode", "threads", "--schedule", "static", "squares", "10"])
            .expect("threads take --schedule");
    }

    #[test]
    fn options_after_the_workload_are_the_same_as_before_it() {
        let before =
            parse_from(["procpool", "--workers", "3", "--json", "squares", "10"]).expect("parses");
        let after =
            parse_from(["procpool", "squares", "10", "--workers", "3", "--json"]).expect("parses");
        for cli in [before, after] {
            assert_eq!(cli.run.workers, Some(List(vec![3])));
            assert!(cli.run.json);
        }
    }

    #[test]
    fn library_options_read_as_flags() {
        assert_eq!(
            with_flags("`workers` must be at least 1 (got 0)"),
            "--workers must be at least 1 (got 0)"
        );
        assert_eq!(
            with_flags("use a smaller n or turn off `baseline`; `ulimit -v 100`"),
            "use a smaller n or --no-baseline; `ulimit -v 100`"
        );
        assert_eq!(
            with_flags("`chunk_timeout` 0s: leave `chunk_timeout` unset"),
            "--timeout 0s: leave --timeout unset"
        );
    }
}
