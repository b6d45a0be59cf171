//! The `procpool` command: parse the command line, call the library, print, exit.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use procpool::fault::Fault;
use procpool::interrupt::Interrupt;
use procpool::parse::{parse_count, parse_duration};
use procpool::pool::{StartMethod, Supervision};
use procpool::run::Mode;
use procpool::workload::hash::DEFAULT_ROUNDS;
use procpool::workload::mandelbrot::{DEFAULT_MAX_ITER, write_png};
use procpool::workload::{Collatz, Hash, Mandelbrot, Primes, Sleep, Spin};
use procpool::{Report, RunOptions, Squares, Workload};

/// Run a CPU-bound job across worker processes with shared memory, check it against a
/// single-process run, and report the multi-core speedup and where the time went.
#[derive(Debug, Parser)]
#[command(name = "procpool", version, about, max_term_width = 100)]
#[command(after_help = "Examples:\n  \
    procpool --workers 8 squares 10000000\n  \
    procpool squares 1e7 --workers 2 --json\n  \
    procpool --workers 2 primes 1e6 --mode threads\n  \
    procpool --workers 4 squares 1e6 --inject kill@3   (watch a worker die)\n  \
    procpool list")]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
    #[command(subcommand)]
    workload: Command,
}

/// Options of a run; accepted before or after the workload.
#[derive(Debug, Args)]
struct RunArgs {
    /// Worker processes [default: the number of logical cores]
    #[arg(short, long, global = true, value_name = "W", value_parser = parse_workers)]
    workers: Option<usize>,

    /// Elements per chunk [default: about 4 chunks per worker, like Python's Pool.map]
    #[arg(long, global = true, value_name = "N", value_parser = parse_chunk_size)]
    chunk_size: Option<u64>,

    /// Chunks in flight per worker (one running, the rest queued)
    #[arg(long, global = true, value_name = "K", default_value_t = procpool::pool::DEFAULT_INFLIGHT,
          value_parser = parse_inflight)]
    inflight: usize,

    /// Print the report as one JSON object on stdout
    #[arg(long, global = true)]
    json: bool,

    /// Skip the single-process run (speedup and verified are then null)
    #[arg(long, global = true)]
    no_baseline: bool,

    /// Make a worker fail on purpose at chunk CHUNK, on its first attempt or on every attempt
    /// (ACTION: kill, abort, panic, segv, exit, hang, corrupt). Repeatable.
    #[arg(long, global = true, value_name = "ACTION@CHUNK[:always]")]
    inject: Vec<Fault>,

    /// Retry a chunk whose worker died or timed out up to K times (so it is tried at most
    /// K+1 times), then fail naming the chunk
    #[arg(long, global = true, value_name = "K", default_value_t = procpool::pool::DEFAULT_RETRIES)]
    retries: u32,

    /// Fail when workers had to be restarted more than M times in one job
    /// [default: 10 + 2 × workers]
    #[arg(long, global = true, value_name = "M")]
    max_restarts: Option<u64>,

    /// Kill a worker whose chunk runs longer than this (e.g. 500ms, 2s) and retry the chunk
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration_arg)]
    timeout: Option<Duration>,

    /// On Ctrl-C or SIGTERM, how long workers get at each step: stop message, SIGTERM, SIGKILL
    #[arg(long, global = true, value_name = "DURATION", default_value = "500ms",
          value_parser = parse_duration_arg)]
    grace: Duration,

    /// Run the job on worker processes (the pool), on threads of one process, or in one
    /// process, to compare what each costs
    #[arg(long, global = true, value_enum, default_value_t = Mode::Processes)]
    mode: Mode,

    /// How worker processes start: re-executing this binary, or fork (only from a
    /// single-threaded process)
    #[arg(long, global = true, value_enum, default_value_t = StartMethod::Spawn)]
    start: StartMethod,

    /// How long workers may take to start and connect back
    #[arg(long, global = true, value_name = "DURATION", default_value = "10s",
          value_parser = parse_duration_arg)]
    handshake_timeout: Duration,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// out[i] = i*i (u64, wrapping): memory-bound, 8 bytes written per multiply
    Squares {
        /// Number of elements: 10000000, 10_000_000 or 1e7
        #[arg(value_name = "N", value_parser = parse_n, allow_hyphen_values = true)]
        n: u64,
    },
    /// out[i] = 1 if i is prime (trial division): CPU-bound, cost grows with i
    Primes {
        /// Number of elements
        #[arg(value_name = "N", value_parser = parse_n, allow_hyphen_values = true)]
        n: u64,
    },
    /// out[i] = Collatz steps from i to 1: CPU-bound, irregular
    Collatz {
        /// Number of elements
        #[arg(value_name = "N", value_parser = parse_n, allow_hyphen_values = true)]
        n: u64,
    },
    /// Iterations per pixel of an N×N Mandelbrot image: CPU-bound, irregular by row
    Mandelbrot {
        /// Side of the image in pixels (N×N elements)
        #[arg(value_name = "N", value_parser = parse_n, allow_hyphen_values = true)]
        n: u64,
        /// Iteration cap per pixel
        #[arg(long, value_name = "K", default_value_t = DEFAULT_MAX_ITER, value_parser = parse_max_iter)]
        max_iter: u32,
        /// Also write the picture as a PNG
        #[arg(long, value_name = "FILE.png")]
        image: Option<PathBuf>,
    },
    /// First 8 bytes of SHA-256 applied R times to i: CPU-bound, uniform
    Hash {
        /// Number of elements
        #[arg(value_name = "N", value_parser = parse_n, allow_hyphen_values = true)]
        n: u64,
        /// SHA-256 rounds per element
        #[arg(long, value_name = "R", default_value_t = DEFAULT_ROUNDS)]
        rounds: u32,
    },
    /// About X µs of pure CPU per element: task granularity against IPC cost
    Spin {
        /// Number of elements
        #[arg(value_name = "N", value_parser = parse_n, allow_hyphen_values = true)]
        n: u64,
        /// Microseconds of work per element (calibrated once per run)
        #[arg(long, value_name = "X", value_parser = parse_non_negative)]
        us: f64,
    },
    /// out[i] = i after sleeping X ms per element: the I/O-bound stand-in
    Sleep {
        /// Number of elements
        #[arg(value_name = "N", value_parser = parse_n, allow_hyphen_values = true)]
        n: u64,
        /// Milliseconds of sleep per element
        #[arg(long, value_name = "X", value_parser = parse_non_negative)]
        ms: f64,
    },
    /// List the workloads: arguments, output, and which bound each one shows
    List,
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

fn parse_n(s: &str) -> Result<u64, String> {
    parse_count(s)
}

fn parse_workers(s: &str) -> Result<usize, String> {
    let n = parse_count(s)?;
    if n == 0 {
        return Err("--workers must be at least 1 (got 0)".into());
    }
    usize::try_from(n).map_err(|_| format!("`{s}` is too large"))
}

fn parse_chunk_size(s: &str) -> Result<u64, String> {
    match parse_count(s)? {
        0 => Err("--chunk-size must be at least 1 (got 0)".into()),
        n => Ok(n),
    }
}

fn parse_inflight(s: &str) -> Result<usize, String> {
    match parse_count(s)? {
        0 => Err("--inflight must be at least 1 (got 0)".into()),
        n => usize::try_from(n).map_err(|_| format!("`{s}` is too large")),
    }
}

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s)
}

/// Exit codes: 0 done and verified, 1 the job failed, 2 bad input (nothing started),
/// 130/143 interrupted by SIGINT/SIGTERM.
const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    // A re-executed worker serves here and never returns.
    procpool::init();
    // Before any thread starts: the first Ctrl-C or SIGTERM stops cleanly, a second one at
    // once.
    let interrupt = match Interrupt::install() {
        Ok(interrupt) => interrupt,
        Err(e) => {
            eprintln!("procpool: cannot install signal handlers: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };

    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                eprintln!(
                    "procpool: no workload given: try `procpool --workers 8 squares 10000000` \
                     (procpool --help lists the workloads)"
                );
                return ExitCode::from(EXIT_USAGE);
            }
            eprintln!("procpool: {}", one_line(&e.render().to_string()));
            return ExitCode::from(EXIT_USAGE);
        }
    };

    let options = RunOptions {
        workers: cli
            .run
            .workers
            .unwrap_or_else(|| procpool::limits::Machine::read().cores_logical),
        chunk_size: cli.run.chunk_size,
        inflight: cli.run.inflight,
        baseline: !cli.run.no_baseline,
        worker_exe: None,
        handshake_timeout: cli.run.handshake_timeout,
        faults: cli.run.inject.clone(),
        supervision: Supervision {
            retries: cli.run.retries,
            max_restarts: cli.run.max_restarts,
            chunk_timeout: cli.run.timeout,
            grace: cli.run.grace,
            interrupt,
        },
        mode: cli.run.mode,
        start: cli.run.start,
    };
    let json = cli.run.json;
    let result = match cli.workload {
        Command::List => {
            print!("{}", procpool::workload::catalogue::render());
            return ExitCode::SUCCESS;
        }
        Command::Squares { n } => execute(&Squares, n, &options, json, |_| Ok(())),
        Command::Primes { n } => execute(&Primes, n, &options, json, |_| Ok(())),
        Command::Collatz { n } => execute(&Collatz, n, &options, json, |_| Ok(())),
        Command::Mandelbrot { n, max_iter, image } => match n.checked_mul(n) {
            None => Err(anyhow::Error::new(procpool::Error::InvalidInput(format!(
                "mandelbrot {n}: an image of {n}×{n} pixels has more than 2^64 pixels"
            )))),
            Some(pixels) => execute(
                &Mandelbrot::new(n, max_iter),
                pixels,
                &options,
                json,
                |out| {
                    let Some(path) = &image else { return Ok(()) };
                    write_png(path, n, out, max_iter)
                        .with_context(|| format!("cannot write the image {}", path.display()))?;
                    eprintln!("procpool: wrote {} ({n}×{n} pixels)", path.display());
                    Ok(())
                },
            ),
        },
        Command::Hash { n, rounds } => execute(&Hash { rounds }, n, &options, json, |_| Ok(())),
        Command::Spin { n, us } => execute(&Spin::calibrate(us), n, &options, json, |_| Ok(())),
        Command::Sleep { n, ms } => execute(&Sleep { ms }, n, &options, json, |_| Ok(())),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("procpool: {e:#}");
            let error = e.downcast_ref::<procpool::Error>();
            if let Some(signal) = error.and_then(procpool::Error::interrupted_by) {
                // 130 for SIGINT, 143 for SIGTERM, as a shell reports a killed job.
                return ExitCode::from(128 + signal as u8);
            }
            let usage = error.is_some_and(procpool::Error::is_invalid_input);
            ExitCode::from(if usage { EXIT_USAGE } else { EXIT_FAILED })
        }
    }
}

/// clap's message on one line: the error and what it lists (e.g. the missing `<N>`),
/// without the usage block and the `--help` tip.
fn one_line(rendered: &str) -> String {
    rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
        .trim_start_matches("error: ")
        .to_string()
}

/// Runs the job, prints the report, and hands the verified output to `output` (e.g. to
/// write an image).
fn execute<W: Workload>(
    workload: &W,
    n: u64,
    options: &RunOptions,
    json: bool,
    output: impl FnOnce(&[W::Output]) -> anyhow::Result<()>,
) -> anyhow::Result<ExitCode> {
    let mut written = Ok(());
    let report = procpool::run::run_inspect(workload, n, options, |out| written = output(out))?;
    print_report(&report, json)?;
    written?;
    if let Some(m) = report.mismatch {
        eprintln!(
            "procpool: the pool output differs from the single-process run: element {} is {} \
             (pool) but {} (single process)",
            m.index, m.pool, m.baseline
        );
        return Ok(ExitCode::from(EXIT_FAILED));
    }
    if report.verified == Some(false) {
        eprintln!(
            "procpool: the per-chunk reductions differ: {:?} (pool) but {:?} (single process)",
            report.reduction, report.baseline_reduction
        );
        return Ok(ExitCode::from(EXIT_FAILED));
    }
    Ok(ExitCode::SUCCESS)
}

fn print_report(report: &Report, json: bool) -> anyhow::Result<()> {
    let text = if json {
        report.to_json() + "\n"
    } else {
        procpool::report::render_text(report)
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        // A closed pipe (`procpool ... | head -1`) is the reader's choice, not our failure.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
