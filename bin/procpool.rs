//! The `procpool` command: parse the command line, call the library, print, exit.

mod cli;
mod generate;
#[cfg(feature = "mpi")]
mod mpirun;
mod notice;
mod parse;
mod progress;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use cli::{ChunkSize, Cli, Command, List, RunArgs, WorkloadCmd};
use procpool::lab::{OutputFile, SweepOptions};
use procpool::workload::mandelbrot::encode_png;
use procpool::workload::{Collatz, Hash, Mandelbrot, Primes, Sleep, Spin, Squares};
use procpool::{Interrupt, Reduce, Report, RunOptions, Supervision, Workload};
use serde::de::DeserializeOwned;

/// Exit codes: 0 done and verified, 1 the job failed, 2 bad input (nothing started),
/// 130/143 interrupted by SIGINT/SIGTERM.
pub(crate) const EXIT_FAILED: u8 = 1;
pub(crate) const EXIT_USAGE: u8 = 2;
/// How long the report waits for queued lines about lost workers to reach stderr.
const NOTICE_FLUSH: std::time::Duration = std::time::Duration::from_millis(200);

fn main() -> ExitCode {
    // A re-executed worker serves here and never returns.
    procpool::init();

    let cli = match cli::parse_from(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => return clap_error(e),
    };
    if let Command::Generate(what) = cli.command {
        let written =
            generate::generate(what).and_then(|text| write_stdout(&text, "the generated text"));
        return finish(written.map(|()| ExitCode::SUCCESS));
    }
    // ipc-bench forks its peer, which needs this process still single-threaded.
    if let Command::IpcBench(args) = &cli.command {
        return finish(ipc_bench(args, cli.run.json));
    }
    // Before any thread starts: the first Ctrl-C or SIGTERM stops cleanly, a second one at
    // once.
    let interrupt = match Interrupt::install() {
        Ok(interrupt) => interrupt,
        Err(e) => {
            eprintln!("procpool: cannot install signal handlers: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    finish(execute(cli, interrupt))
}

fn execute(cli: Cli, interrupt: Interrupt) -> anyhow::Result<ExitCode> {
    let json = cli.run.json;
    check_outputs(&cli)?;
    match cli.command {
        Command::List => {
            print_out(&if json {
                procpool::report::catalogue::render_json() + "\n"
            } else {
                procpool::report::catalogue::render()
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Workload(workload) if cli.run.backend == cli::BackendArg::Mpi => {
            mpi_run(workload, &cli.run, interrupt)
        }
        Command::Workload(workload) => {
            let options = run_options(&cli.run, interrupt, false)?;
            let image = match &workload {
                WorkloadCmd::Mandelbrot { n, max_iter, image } => {
                    image.as_deref().map(|path| (path, *n, *max_iter))
                }
                _ => None,
            };
            if image.is_some() && options.output.is_some() {
                return Err(usage(
                    "--image needs the whole picture in memory: use it without --output",
                ));
            }
            let image = match image {
                Some((path, n, max_iter)) => Some((open_output("--image", path)?, n, max_iter)),
                None => None,
            };
            let timeline = Timeline::prepare(&cli.run)?;
            with_workload(
                workload,
                &mut RunOne {
                    options,
                    json,
                    image,
                    timeline,
                },
            )
        }
        Command::Sweep(_) if cli.run.backend == cli::BackendArg::Mpi => Err(usage(
            "--backend mpi runs one job under mpirun: `procpool sweep` runs worker processes",
        )),
        Command::Sweep(args) => {
            let workers = match cli.run.workers.clone() {
                Some(List(w)) => w,
                None => vec![default_workers()?.0],
            };
            let chunk_sizes = match &cli.run.chunk_size {
                Some(List(sizes)) => sizes
                    .iter()
                    .map(|c| match c {
                        ChunkSize::Elements(n) => Ok(Some(*n)),
                        ChunkSize::Auto => {
                            Err(usage("sweep takes chunk sizes as numbers, not auto"))
                        }
                    })
                    .collect::<anyhow::Result<_>>()?,
                None => Vec::new(),
            };
            let run = run_options(&cli.run, interrupt, true)?;
            let mut sweep = Sweep {
                options: SweepOptions {
                    workers,
                    chunk_sizes,
                    run,
                },
                json,
                plot: args.plot,
                export: args.export,
            };
            with_workload(args.workload, &mut sweep)
        }
        Command::CompareModes(args) => {
            let run = run_options(&cli.run, interrupt, false)?;
            let rounds = cli
                .run
                .repeat
                .unwrap_or(procpool::lab::compare::DEFAULT_ROUNDS);
            with_workload(args.workload, &mut CompareModes { run, rounds, json })
        }
        Command::IpcBench(_) | Command::Generate(_) => {
            unreachable!("handled before signal handlers")
        }
    }
}

/// The library's options from the command line. `lists` allows lists of workers and chunk
/// sizes (sweep); otherwise one value each.
fn run_options(args: &RunArgs, interrupt: Interrupt, lists: bool) -> anyhow::Result<RunOptions> {
    let (workers, workers_from) = match &args.workers {
        Some(List(w)) if w.len() == 1 || lists => (w[0], procpool::lab::WorkersFrom::Given),
        Some(_) => {
            return Err(usage(
                "--workers takes one number here (lists are for `procpool sweep`)",
            ));
        }
        None => default_workers()?,
    };
    let (chunk_size, auto_chunk) = match &args.chunk_size {
        Some(List(c)) if c.len() == 1 || lists => match c[0] {
            ChunkSize::Auto => (None, true),
            ChunkSize::Elements(n) => (Some(n), false),
        },
        Some(_) => {
            return Err(usage(
                "--chunk-size takes one value here (lists are for `procpool sweep`)",
            ));
        }
        None => (None, false),
    };
    // Results through the channel travel in each chunk's reply: channel dispatch.
    let dispatch = match (args.dispatch, args.transport) {
        (Some(d), _) => d.into(),
        (None, cli::TransportArg::Channel) => procpool::Dispatch::Channel,
        (None, cli::TransportArg::Shm) => procpool::Dispatch::Queue,
    };
    // MPI ranks get their chunks as messages: --inflight applies.
    let mpi = args.backend == cli::BackendArg::Mpi;
    if let (procpool::Dispatch::Queue, cli::Inflight::Fixed(k), false) =
        (dispatch, args.inflight, mpi)
    {
        return Err(usage(&format!(
            "--inflight {k} sets how many chunk messages wait in each worker's channel, and the \
             shared-memory queue sends none: add --dispatch channel to use it"
        )));
    }
    if args.huge_pages && args.mode != cli::ModeArg::Processes {
        return Err(usage(
            "--huge-pages backs the shared region of worker processes: use it with --mode \
             processes",
        ));
    }
    Ok(RunOptions {
        pool: procpool::PoolOptions {
            workers,
            inflight: match args.inflight {
                cli::Inflight::Fixed(k) => k,
                cli::Inflight::Auto => procpool::PoolBuilder::DEFAULT_INFLIGHT,
            },
            inflight_auto: args.inflight == cli::Inflight::Auto,
            pin: args.pin,
            handshake_timeout: args.handshake_timeout,
            supervision: Supervision {
                retries: args.retries,
                max_restarts: args.max_restarts,
                chunk_timeout: args.timeout,
                grace: args.grace,
                interrupt,
                retry_panics: args.retry_panics,
            },
            start: args.start.into(),
            // Lines for lost workers always; a bar never with --json, and only on a terminal.
            observer: Some(std::sync::Arc::new(progress::Terminal::new(!args.json))),
            start_in_background: true,
            max_chunks_per_worker: args.max_chunks_per_worker,
            max_worker_rss: args.max_worker_rss,
            huge_pages: args.huge_pages,
            ..procpool::PoolOptions::default()
        },
        job: procpool::JobOptions {
            chunk_size,
            auto_chunk,
            schedule: args.schedule.into(),
            transport: args.transport.into(),
            dispatch,
            faults: args.inject.clone(),
            trace: args.trace.is_some() || args.timeline.is_some(),
            deadline: args.deadline,
            cancel: None,
        },
        baseline: !args.no_baseline,
        repeat: args.repeat.unwrap_or(1),
        warmup: args.warmup,
        output: args.output.clone(),
        window_bytes: args.window_size,
        mode: args.mode.into(),
        workers_from,
    })
}

/// `--backend mpi` in a build without the `mpi` feature.
#[cfg(not(feature = "mpi"))]
fn mpi_run(_: WorkloadCmd, _: &RunArgs, _: Interrupt) -> anyhow::Result<ExitCode> {
    Err(usage(
        "--backend mpi needs procpool built with the mpi feature: cargo build --release \
         --features mpi (docs/mpi.md)",
    ))
}

/// `mpirun -np K procpool --backend mpi WORKLOAD N`: rank 0 prints the report, the other
/// ranks compute and print nothing.
#[cfg(feature = "mpi")]
fn mpi_run(
    workload: WorkloadCmd,
    args: &RunArgs,
    interrupt: Interrupt,
) -> anyhow::Result<ExitCode> {
    // What only procpool's own worker processes use (`--image` too) was refused while
    // parsing (the library's table of options).
    let mut run = run_options(args, interrupt.clone(), false)?;
    run.pool.observer = None;
    if let Some(ranks) = args.ranks {
        return mpirun::launch(ranks, &interrupt);
    }
    let options = procpool::mpi::MpiOptions {
        run,
        node_size: args
            .mpi_node_size
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        route: match args.mpi_route {
            Some(cli::MpiRouteArg::Put) => procpool::mpi::ResultRoute::Put,
            Some(cli::MpiRouteArg::Send) | None => procpool::mpi::ResultRoute::Send,
        },
    };
    with_workload(
        workload,
        &mut MpiRun {
            options,
            json: args.json,
        },
    )
}

/// One run on the MPI backend.
#[cfg(feature = "mpi")]
struct MpiRun {
    options: procpool::mpi::MpiOptions,
    json: bool,
}

#[cfg(feature = "mpi")]
impl WithWorkload for MpiRun {
    fn with<W: Workload + DeserializeOwned>(
        &mut self,
        workload: &W,
        n: u64,
    ) -> anyhow::Result<ExitCode> {
        match procpool::mpi::run(workload, n, &self.options)
            .or_else(mpirun::exit_if_left_to_launcher)?
        {
            Some(report) => {
                print_text_or_json(&report, self.json, procpool::report::render_text)?;
                Ok(verdict(&report))
            }
            None => Ok(ExitCode::SUCCESS),
        }
    }

    fn with_reduce<W: Reduce + DeserializeOwned>(
        &mut self,
        workload: &W,
        n: u64,
    ) -> anyhow::Result<ExitCode> {
        match procpool::mpi::run_reduce(workload, n, &self.options)
            .or_else(mpirun::exit_if_left_to_launcher)?
        {
            Some(report) => {
                print_text_or_json(&report, self.json, procpool::report::render_text)?;
                Ok(verdict(&report))
            }
            None => Ok(ExitCode::SUCCESS),
        }
    }
}

/// Refuses two outputs that are the same file, or an output that is this program, before
/// anything is opened or started.
fn check_outputs(cli: &Cli) -> anyhow::Result<()> {
    let run = &cli.run;
    let mut outputs = vec![
        ("--output", run.output.as_deref()),
        ("--trace", run.trace.as_deref()),
        ("--timeline", run.timeline.as_deref()),
    ];
    match &cli.command {
        Command::Workload(WorkloadCmd::Mandelbrot { image, .. }) => {
            outputs.push(("--image", image.as_deref()));
        }
        Command::Sweep(args) => {
            outputs.push(("--plot", args.plot.as_deref()));
            outputs.push(("--export", args.export.as_deref()));
        }
        _ => {}
    }
    let given: Vec<(&str, &Path)> = outputs
        .into_iter()
        .filter_map(|(flag, path)| Some((flag, path?)))
        .collect();
    Ok(procpool::lab::check_distinct(&given)?)
}

/// Opens an output the user named, before the run: a path that cannot be written is
/// refused before anything starts.
fn open_output(flag: &str, path: &Path) -> anyhow::Result<OutputFile> {
    OutputFile::create(path).map_err(|e| usage(&format!("{flag} {}: {e}", path.display())))
}

/// Writes `bytes` to an output opened by [`open_output`] and gives it its name.
fn publish(flag: &str, mut file: OutputFile, bytes: &[u8]) -> anyhow::Result<()> {
    let path = file.path().to_path_buf();
    file.write_all(bytes)
        .and_then(|()| file.persist())
        .with_context(|| format!("{flag}: cannot write {}", path.display()))
}

/// The worker count without `--workers`: `PROCPOOL_WORKERS`, else one per effective CPU.
fn default_workers() -> anyhow::Result<(usize, procpool::lab::WorkersFrom)> {
    Ok(procpool::lab::default_workers(
        &procpool::lab::Machine::read(),
    )?)
}

pub(crate) fn usage(message: &str) -> anyhow::Error {
    anyhow::Error::new(procpool::Error::InvalidInput {
        option: None,
        message: message.to_string(),
    })
}

/// Something to do with a workload, whatever its type.
trait WithWorkload {
    fn with<W: Workload + DeserializeOwned>(
        &mut self,
        workload: &W,
        n: u64,
    ) -> anyhow::Result<ExitCode>;

    /// [`WithWorkload::with`] for a workload that reduces (squares, primes); the same
    /// unless the action reports reductions.
    fn with_reduce<W: Reduce + DeserializeOwned>(
        &mut self,
        workload: &W,
        n: u64,
    ) -> anyhow::Result<ExitCode> {
        self.with(workload, n)
    }
}

/// Builds the workload a subcommand names and hands it to `action`.
fn with_workload(cmd: WorkloadCmd, action: &mut impl WithWorkload) -> anyhow::Result<ExitCode> {
    match cmd {
        WorkloadCmd::Squares { n } => action.with_reduce(&Squares, n),
        WorkloadCmd::Primes { n } => action.with_reduce(&Primes, n),
        WorkloadCmd::Collatz { n } => action.with(&Collatz, n),
        WorkloadCmd::Mandelbrot { n, max_iter, .. } => {
            let pixels = n.checked_mul(n).ok_or_else(|| {
                usage(&format!(
                    "mandelbrot {n}: an image of {n}×{n} pixels has more than 2^64 pixels"
                ))
            })?;
            action.with(&Mandelbrot::new(n, max_iter), pixels)
        }
        WorkloadCmd::Hash { n, rounds } => action.with(&Hash { rounds }, n),
        WorkloadCmd::Spin { n, us } => action.with(&Spin::calibrate(us), n),
        WorkloadCmd::Sleep { n, ms } => action.with(&Sleep { ms }, n),
    }
}

/// One measured run, its report, and (for mandelbrot) the picture.
struct RunOne {
    options: RunOptions,
    json: bool,
    image: Option<(OutputFile, u64, u32)>,
    timeline: Timeline,
}

/// `--trace FILE.json` and `--timeline FILE.svg`: each file is opened before the run (so
/// a path that cannot be written is refused before anything starts) and given its name
/// once written.
struct Timeline {
    trace: Option<OutputFile>,
    picture: Option<OutputFile>,
}

impl Timeline {
    fn prepare(args: &RunArgs) -> anyhow::Result<Timeline> {
        // Threads and a single process were refused while parsing: a timeline shows worker
        // processes.
        let open = |path: &Option<PathBuf>, flag: &str| {
            path.as_deref().map(|p| open_output(flag, p)).transpose()
        };
        Ok(Timeline {
            trace: open(&args.trace, "--trace")?,
            picture: open(&args.timeline, "--timeline")?,
        })
    }

    /// Writes the report's trace to the files asked for.
    fn write(&mut self, report: &Report) -> anyhow::Result<()> {
        if self.trace.is_none() && self.picture.is_none() {
            return Ok(());
        }
        let trace = report
            .trace
            .as_ref()
            .context("the run recorded no timeline")?;
        let labels = procpool::report::trace::TraceLabels {
            title: format!("procpool {} n={}", report.workload, report.n),
            workers: report.workers,
        };
        if let Some(file) = self.trace.take() {
            let json = procpool::report::trace::chrome_trace(trace, &labels);
            publish(
                "--trace",
                file,
                (serde_json::to_string(&json)? + "\n").as_bytes(),
            )?;
        }
        if let Some(file) = self.picture.take() {
            let svg = procpool::report::timeline::timeline_svg_string(trace, &labels)
                .map_err(|e| anyhow::anyhow!("--timeline: cannot draw the timeline: {e}"))?;
            publish("--timeline", file, svg.as_bytes())?;
        }
        Ok(())
    }
}

impl WithWorkload for RunOne {
    fn with<W: Workload + DeserializeOwned>(
        &mut self,
        workload: &W,
        n: u64,
    ) -> anyhow::Result<ExitCode> {
        let mut written = Ok(None);
        let image = self.image.take();
        let report = procpool::run_inspect(workload, n, &self.options, |out| {
            if let Some((mut file, side, max_iter)) = image {
                // Mandelbrot's elements are u32 iteration counts.
                let pixels: Vec<u32> = procpool::bytemuck::pod_collect_to_vec(out);
                written = encode_png(&mut file, side, &pixels, max_iter)
                    .with_context(|| format!("--image: cannot write {}", file.path().display()))
                    .map(|()| Some((file, side)));
            }
        })?;
        self.timeline.write(&report)?;
        print_text_or_json(&report, self.json, procpool::report::render_text)?;
        let verdict = verdict(&report);
        // The picture replaces an older file only when the pool's output was verified.
        if let Some((file, side)) = written?
            && report.mismatch.is_none()
        {
            let path = file.path().to_path_buf();
            file.persist()
                .with_context(|| format!("--image: cannot write {}", path.display()))?;
            eprintln!("procpool: wrote {} ({side}×{side} pixels)", path.display());
        }
        Ok(verdict)
    }

    fn with_reduce<W: Reduce + DeserializeOwned>(
        &mut self,
        workload: &W,
        n: u64,
    ) -> anyhow::Result<ExitCode> {
        let report = procpool::run_reduce(workload, n, &self.options)?;
        self.timeline.write(&report)?;
        print_text_or_json(&report, self.json, procpool::report::render_text)?;
        Ok(verdict(&report))
    }
}

/// Exit code 1, with the reason on stderr, when the outputs differ.
fn verdict(report: &Report) -> ExitCode {
    if let Some(m) = &report.mismatch {
        eprintln!(
            "procpool: the pool output differs from the single-process run: {}",
            procpool::report::mismatch_text(m)
        );
        if let Some(output) = &report.output {
            // A device or FIFO was written as the run went; a file is replaced only when
            // verified.
            if std::fs::metadata(&output.path).is_ok_and(|m| !m.is_file()) {
                eprintln!("procpool: the unverified output went to {}", output.path);
            } else {
                eprintln!(
                    "procpool: {} was not written (an older file there is as it was)",
                    output.path
                );
            }
        }
        return ExitCode::from(EXIT_FAILED);
    }
    if report.verified == Some(false) {
        eprintln!(
            "procpool: the reductions differ: {} (pool) but {} (single process)",
            json_or_none(report.reduction.as_ref()),
            json_or_none(report.baseline_reduction.as_ref())
        );
        return ExitCode::from(EXIT_FAILED);
    }
    ExitCode::SUCCESS
}

/// A reduction as compact JSON, or `none`.
fn json_or_none(value: Option<&serde_json::Value>) -> String {
    value.map_or_else(|| "none".to_string(), serde_json::Value::to_string)
}

/// `procpool sweep`.
struct Sweep {
    options: SweepOptions,
    json: bool,
    plot: Option<PathBuf>,
    export: Option<PathBuf>,
}

impl WithWorkload for Sweep {
    fn with<W: Workload + DeserializeOwned>(
        &mut self,
        workload: &W,
        n: u64,
    ) -> anyhow::Result<ExitCode> {
        // Refuse an unknown export format, or a path that cannot be written, before running
        // anything.
        let exporter = match &self.export {
            Some(path) => Some((
                procpool::report::export::exporter_for(path)
                    .map_err(|e| usage(&format!("--export: {e}")))?,
                open_output("--export", path)?,
            )),
            None => None,
        };
        let plot = self
            .plot
            .as_deref()
            .map(|path| open_output("--plot", path))
            .transpose()?;
        let mut failed = false;
        let table = procpool::lab::sweep::sweep(workload, n, &self.options, |report| {
            if report.verified == Some(false) {
                failed = true;
            }
            if !self.json {
                eprintln!(
                    "procpool: {} worker{}, chunk size {}: {:.3} s",
                    report.workers,
                    if report.workers == 1 { "" } else { "s" },
                    report.chunk_size,
                    report.pool_wall_s
                );
            }
        })?;
        if let Some(file) = plot {
            let path = file.path().display().to_string();
            let svg = procpool::report::plot::speedup_svg_string(&table)
                .map_err(|e| anyhow::anyhow!("--plot: cannot draw the sweep chart: {e}"))?;
            publish("--plot", file, svg.as_bytes())?;
            eprintln!("procpool: wrote {path}");
        }
        if let Some((exporter, file)) = exporter {
            let path = file.path().display().to_string();
            publish("--export", file, exporter.export(&table).as_bytes())?;
            eprintln!("procpool: wrote {path}");
        }
        let text = if self.json {
            serde_json::to_string(&table)? + "\n"
        } else {
            procpool::report::sweep::render_text(&table)
        };
        print_out(&text)?;
        if failed {
            eprintln!("procpool: a run's output differed from the single-process run");
            return Ok(ExitCode::from(EXIT_FAILED));
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// `procpool compare-modes`.
struct CompareModes {
    run: procpool::RunOptions,
    rounds: usize,
    json: bool,
}

impl WithWorkload for CompareModes {
    fn with<W: Workload + DeserializeOwned>(
        &mut self,
        workload: &W,
        n: u64,
    ) -> anyhow::Result<ExitCode> {
        let json = self.json;
        let comparison =
            procpool::lab::compare::compare_modes(workload, n, &self.run, self.rounds, |r| {
                if !json {
                    eprintln!("procpool: {}: {:.3} s", r.mode, r.pool_wall_s);
                }
            })?;
        let text = if self.json {
            serde_json::to_string(&comparison)? + "\n"
        } else {
            procpool::report::compare::render_text(&comparison)
        };
        print_out(&text)?;
        if comparison.processes.verified == Some(false)
            || comparison.threads.verified == Some(false)
        {
            eprintln!("procpool: a run's output differed from the single-process run");
            return Ok(ExitCode::from(EXIT_FAILED));
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn ipc_bench(args: &cli::IpcBenchArgs, json: bool) -> anyhow::Result<ExitCode> {
    let mut options = procpool::lab::IpcBenchOptions {
        round_trips: usize::try_from(args.round_trips)
            .unwrap_or(usize::MAX)
            .max(1),
        pin: !args.no_pin,
        ..Default::default()
    };
    if let Some(List(sizes)) = &args.sizes {
        options.sizes = sizes
            .iter()
            .map(|&s| usize::try_from(s).unwrap_or(usize::MAX))
            .collect();
    }
    let report = procpool::lab::ipc_bench::run(&options)?;
    let text = if json {
        serde_json::to_string(&report)? + "\n"
    } else {
        procpool::report::ipc_bench::render_text(&report)
    };
    print_out(&text)?;
    Ok(ExitCode::SUCCESS)
}

fn print_text_or_json(
    report: &Report,
    json: bool,
    text: fn(&Report) -> String,
) -> anyhow::Result<()> {
    let out = if json {
        report.to_json() + "\n"
    } else {
        text(report)
    };
    print_out(&out)
}

fn print_out(text: &str) -> anyhow::Result<()> {
    // The supervisor's lines about lost workers come before the report.
    notice::flush(NOTICE_FLUSH);
    write_stdout(text, "the report")
}

/// Writes `text` (`what`, for an error message) to standard output.
fn write_stdout(text: &str, what: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        // A closed pipe (`procpool ... | head -1`) is the reader's choice, not our failure.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.with_context(|| format!("cannot write {what} to standard output")),
    }
}

/// The exit code for a result: the error chain on one line, 2 for bad input, 128 + signal
/// when interrupted, 1 otherwise.
fn finish(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            notice::flush(NOTICE_FLUSH);
            let error = e.downcast_ref::<procpool::Error>();
            // The library names its options; the command line names its flags.
            eprintln!("procpool: {}", cli::with_flags(&format!("{e:#}")));
            if let Some(signal) = error.and_then(procpool::Error::interrupted_by) {
                // 130 for SIGINT, 143 for SIGTERM, as a shell reports a killed job.
                return ExitCode::from(128 + signal as u8);
            }
            let usage = error.is_some_and(procpool::Error::is_invalid_input);
            ExitCode::from(if usage { EXIT_USAGE } else { EXIT_FAILED })
        }
    }
}

/// clap's errors as one line with exit code 2; help and version as clap prints them.
fn clap_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            eprintln!(
                "procpool: no workload given: try `procpool --workers 8 squares 10000000` \
                 (procpool --help lists the workloads)"
            );
            ExitCode::from(EXIT_USAGE)
        }
        _ => {
            eprintln!("procpool: {}", one_line(&e.render().to_string()));
            ExitCode::from(EXIT_USAGE)
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
