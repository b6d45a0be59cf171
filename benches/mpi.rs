//! cargo bench --features mpi --bench mpi
//!
//! The MPI backend against procpool's own process pool on the machine at hand: the same
//! jobs run as `mpirun -np 3 --oversubscribe procpool --backend mpi ...` (rank 0 dispatches,
//! ranks 1 and 2 compute) and as `procpool --workers 2 ...`, alternately (A B A B, 5 pairs,
//! or `PROCPOOL_BENCH_PAIRS`), and each ratio is taken pair by pair, so a noisy machine
//! moves both sides of a pair alike. It prints the median and range of each ratio, a table
//! of the goals and the exact commands it ran.
//!
//! - `hash`, `squares`: whole (`pool_wall_s`) and after start-up (`run_s`);
//! - `dispatch`: chunks per second with chunk size 1 (`spin 100000 --us 0`), MPI against
//!   `--dispatch channel` (a message per chunk, as MPI does) and the default queue;
//! - `startup`: the wall time of a whole tiny job, `mpirun` included, its `spawn_s`, and
//!   `mpi.launch_s` when the report has one.
//!
//! `cargo bench --features mpi --bench mpi -- dispatch` runs the sections whose name
//! contains the argument. Needs Open MPI's `mpirun` (docs/mpi.md). Every
//! job is checked: exit status 0, one JSON report, the MPI runs' `mpi` object, and
//! `"verified": true` where a baseline ran. Each job gets a deadline: past it, SIGTERM (mpirun
//! stops its ranks, procpool its workers), then SIGKILL to it and every process below it,
//! and it is reaped. The jobs stay in the terminal's process group, so Ctrl-C stops them too.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

/// The longest one job may take before it is killed.
const DEADLINE: Duration = Duration::from_secs(120);

/// After SIGTERM to a job past its deadline, how long it has to stop before SIGKILL.
const GRACE: Duration = Duration::from_secs(5);

/// Pairs per comparison unless `PROCPOOL_BENCH_PAIRS` says otherwise.
const DEFAULT_PAIRS: usize = 5;

/// The sections, in the order they run; a filter argument picks those whose name contains it.
const SECTIONS: [&str; 5] = ["hash", "squares", "routes", "dispatch", "startup"];

/// Runs the sections the filter picks, then prints the table and the commands; exit 1, with
/// the reason on stderr, when a job fails, times out or is not verified.
fn main() -> ExitCode {
    match bench() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nmpi bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The whole benchmark; an `Err` is a sentence for the user.
fn bench() -> Result<(), String> {
    // `cargo bench` passes `--bench` (and the user's filter) to a `harness = false` bench.
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let sections: Vec<&str> = SECTIONS
        .into_iter()
        .filter(|s| only.as_deref().is_none_or(|o| s.contains(o)))
        .collect();
    if sections.is_empty() {
        return Err(format!(
            "no section matches {:?}; the sections are {}",
            only.unwrap_or_default(),
            SECTIONS.join(", ")
        ));
    }
    let mut bench = Bench::new()?;
    println!(
        "procpool MPI backend against the process pool: {} pairs per comparison (A = MPI, B = \
         processes, alternately), {} logical CPUs, load average {}",
        bench.pairs,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    println!("procpool: {}\n", bench.procpool.display());

    let mut rows = Vec::new();
    for section in sections {
        match section {
            "hash" => rows.extend(bench.versus(&["hash", "200000", "--rounds", "50"], 1.2)?),
            "squares" => rows.extend(bench.versus(&["squares", "1e7"], 1.5)?),
            "routes" => rows.extend(bench.routes()?),
            "dispatch" => rows.extend(bench.dispatch()?),
            _ => rows.extend(bench.startup()?),
        }
    }

    println!();
    print_rows(&rows);
    println!("\ncommands (each run {} times, alternately):", bench.pairs);
    for command in &bench.commands {
        println!("  {command}");
    }
    Ok(())
}

/// What every section needs: the binary, the environment for mpirun, the pair count, and
/// the commands run so far (for the list at the end).
struct Bench {
    procpool: PathBuf,
    /// `OMPI_ALLOW_RUN_AS_ROOT*`, set only when running as root.
    mpi_env: Vec<(&'static str, &'static str)>,
    pairs: usize,
    commands: Vec<String>,
}

impl Bench {
    /// Finds the procpool binary and reads `PROCPOOL_BENCH_PAIRS`.
    fn new() -> Result<Self, String> {
        let pairs = match std::env::var("PROCPOOL_BENCH_PAIRS") {
            Ok(v) => match v.trim().parse::<usize>() {
                Ok(p) if p >= 1 => p,
                _ => return Err(format!("PROCPOOL_BENCH_PAIRS={v:?}: a whole number ≥ 1")),
            },
            Err(_) => DEFAULT_PAIRS,
        };
        let mpi_env = if nix::unistd::geteuid().is_root() {
            vec![
                ("OMPI_ALLOW_RUN_AS_ROOT", "1"),
                ("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"),
            ]
        } else {
            vec![]
        };
        Ok(Bench {
            procpool: procpool_binary()?,
            mpi_env,
            pairs,
            commands: Vec::new(),
        })
    }

    /// `mpirun -np 3 --oversubscribe procpool --backend mpi ARGS --json`.
    fn mpi(&self, args: &[&str]) -> Job {
        let mut all: Vec<String> = ["-np", "3", "--oversubscribe"].map(String::from).into();
        all.push(self.procpool.display().to_string());
        all.extend(["--backend", "mpi"].map(String::from));
        all.extend(args.iter().map(|a| a.to_string()));
        all.push("--json".into());
        Job {
            program: "mpirun".into(),
            args: all,
            env: self.mpi_env.clone(),
            mpi: true,
        }
    }

    /// `procpool --workers 2 ARGS --json`.
    fn processes(&self, args: &[&str]) -> Job {
        let mut all: Vec<String> = ["--workers", "2"].map(String::from).into();
        all.extend(args.iter().map(|a| a.to_string()));
        all.push("--json".into());
        Job {
            program: self.procpool.display().to_string(),
            args: all,
            env: vec![],
            mpi: false,
        }
    }

    /// Runs `job`, checks it, and remembers its command line for the list at the end.
    fn run(&mut self, job: &Job) -> Result<Outcome, String> {
        let line = job.to_string();
        if !self.commands.contains(&line) {
            self.commands.push(line);
        }
        job.run()
    }

    /// `args` on MPI and on 2 worker processes, alternately: rows for the ratio MPI /
    /// processes of `pool_wall_s` (goal `goal`) and of `run_s` (no goal), pair by pair.
    fn versus(&mut self, args: &[&str], goal: f64) -> Result<Vec<Row>, String> {
        let name = args.join(" ");
        println!("{name}: MPI against --workers 2");
        let (mpi, processes) = (self.mpi(args), self.processes(args));
        let (mut wall, mut run) = (Vec::new(), Vec::new());
        let (mut mpi_wall, mut proc_wall) = (Vec::new(), Vec::new());
        for pair in 1..=self.pairs {
            let a = self.run(&mpi)?;
            a.require_verified()?;
            let b = self.run(&processes)?;
            b.require_verified()?;
            let (aw, ar) = (a.f64("pool_wall_s")?, a.f64("run_s")?);
            let (bw, br) = (b.f64("pool_wall_s")?, b.f64("run_s")?);
            println!(
                "  pair {pair}: MPI {} (run {}), processes {} (run {}): {:.2}× whole, {:.2}× \
                 run",
                secs(aw),
                secs(ar),
                secs(bw),
                secs(br),
                aw / bw,
                ar / br
            );
            wall.push(aw / bw);
            run.push(ar / br);
            mpi_wall.push(aw);
            proc_wall.push(bw);
        }
        let (wall, run) = (Spread::of(&wall), Spread::of(&run));
        Ok(vec![
            Row::goal(
                format!(
                    "{name}: MPI / processes, pool_wall_s ({} / {}), median {}",
                    secs(median(&mpi_wall)),
                    secs(median(&proc_wall)),
                    wall.range()
                ),
                wall.median,
                Goal::AtMost(goal),
            ),
            Row::goal(
                format!("  … after start-up, run_s, median {}", run.range()),
                run.median,
                Goal::None,
            ),
        ])
    }

    /// The two routes results take between nodes, on one machine (`--mpi-node-size 1`:
    /// every result crosses "nodes"): `--mpi-route put` against `--mpi-route send` for
    /// `squares 1e7`, alternately; a row for the ratio of `run_s`, pair by pair. Each run's
    /// `cross_node_bytes` must be the whole output.
    fn routes(&mut self) -> Result<Vec<Row>, String> {
        let base = ["squares", "1e7", "--mpi-node-size", "1", "--mpi-route"];
        println!("squares 1e7 --mpi-node-size 1: --mpi-route put against send");
        let put = self.mpi(&[&base[..], &["put"]].concat());
        let send = self.mpi(&[&base[..], &["send"]].concat());
        let (mut ratios, mut put_runs, mut send_runs) = (Vec::new(), Vec::new(), Vec::new());
        for pair in 1..=self.pairs {
            let mut run = [0.0; 2];
            for (k, job) in [&put, &send].into_iter().enumerate() {
                let outcome = self.run(job)?;
                outcome.require_verified()?;
                let crossed = outcome.report["mpi"]["cross_node_bytes"].as_f64();
                if crossed != Some(8e7) {
                    return Err(format!(
                        "`{job}`: {crossed:?} bytes crossed nodes, 80000000 (the output) expected"
                    ));
                }
                run[k] = outcome.f64("run_s")?;
            }
            println!(
                "  pair {pair}: put run {}, send run {}: put / send {:.2}×",
                secs(run[0]),
                secs(run[1]),
                run[0] / run[1]
            );
            ratios.push(run[0] / run[1]);
            put_runs.push(run[0]);
            send_runs.push(run[1]);
        }
        let ratio = Spread::of(&ratios);
        Ok(vec![Row::goal(
            format!(
                "squares 1e7 across \"nodes\": put / send, run_s ({} / {}), median {}",
                secs(median(&put_runs)),
                secs(median(&send_runs)),
                ratio.range()
            ),
            ratio.median,
            Goal::None,
        )])
    }

    /// Chunks per second (n / `run_s`) of `spin 100000 --us 0 --chunk-size 1` on MPI, on 2
    /// workers with `--dispatch channel`, and on 2 workers with the default queue, in turn.
    fn dispatch(&mut self) -> Result<Vec<Row>, String> {
        let args = [
            "spin",
            "100000",
            "--us",
            "0",
            "--chunk-size",
            "1",
            "--no-baseline",
        ];
        println!("{}: dispatch rate, chunk size 1", args[..6].join(" "));
        let mpi = self.mpi(&args);
        let channel = self.processes(&[&["--dispatch", "channel"], &args[..]].concat());
        let queue = self.processes(&args);
        let (mut rates, mut ratio_channel, mut ratio_queue) =
            ([Vec::new(), Vec::new(), Vec::new()], Vec::new(), Vec::new());
        for pair in 1..=self.pairs {
            let mut rate = [0.0; 3];
            for (k, job) in [&mpi, &channel, &queue].into_iter().enumerate() {
                let outcome = self.run(job)?;
                outcome.require_completed()?;
                let (n, chunks) = (outcome.f64("n")?, outcome.f64("chunks")?);
                if chunks != n {
                    return Err(format!(
                        "`{job}` ran {chunks} chunks for n = {n}: with --chunk-size 1 they \
                         must be equal"
                    ));
                }
                rate[k] = n / outcome.f64("run_s")?;
                rates[k].push(rate[k]);
            }
            println!(
                "  pair {pair}: chunks/s MPI {:.0}, channel {:.0}, queue {:.0}: MPI / channel \
                 {:.2}×",
                rate[0],
                rate[1],
                rate[2],
                rate[0] / rate[1]
            );
            ratio_channel.push(rate[0] / rate[1]);
            ratio_queue.push(rate[0] / rate[2]);
        }
        let (channel_ratio, queue_ratio) = (Spread::of(&ratio_channel), Spread::of(&ratio_queue));
        let [mpi_rate, channel_rate, queue_rate] = rates.map(|r| median(&r));
        Ok(vec![
            Row::goal(
                "spin 100000 --us 0 --chunk-size 1: MPI chunks/s (median)".into(),
                mpi_rate,
                Goal::None,
            ),
            Row::goal(
                "  … --workers 2 --dispatch channel: chunks/s (median)".into(),
                channel_rate,
                Goal::None,
            ),
            Row::goal(
                "  … --workers 2, queue (the default): chunks/s (median)".into(),
                queue_rate,
                Goal::None,
            ),
            Row::goal(
                format!(
                    "  … MPI / channel, chunks/s, median {}",
                    channel_ratio.range()
                ),
                channel_ratio.median,
                Goal::None,
            ),
            Row::goal(
                format!("  … MPI / queue, chunks/s, median {}", queue_ratio.range()),
                queue_ratio.median,
                Goal::None,
            ),
        ])
    }

    /// A tiny job, `spin 2 --us 0 --no-baseline`, timed whole from outside (spawn to exit):
    /// `mpirun -np 3` against `procpool --workers 2`, with the MPI run's `spawn_s` and, when
    /// its report has it, `mpi.launch_s`.
    fn startup(&mut self) -> Result<Vec<Row>, String> {
        let args = ["spin", "2", "--us", "0", "--no-baseline"];
        println!("{}: start-up, the whole command timed", args.join(" "));
        let (mpi, processes) = (self.mpi(&args), self.processes(&args));
        let (mut mpi_wall, mut proc_wall, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
        let (mut mpi_spawn, mut proc_spawn, mut launch) = (Vec::new(), Vec::new(), Vec::new());
        let (mut launch_null, mut launch_absent) = (0, 0);
        for pair in 1..=self.pairs {
            let a = self.run(&mpi)?;
            a.require_completed()?;
            let b = self.run(&processes)?;
            b.require_completed()?;
            let (aw, bw) = (a.wall.as_secs_f64(), b.wall.as_secs_f64());
            let a_launch = match a.report.get("mpi").and_then(|m| m.get("launch_s")) {
                None => {
                    launch_absent += 1;
                    None
                }
                Some(Value::Null) => {
                    launch_null += 1;
                    None
                }
                Some(v) => Some(v.as_f64().ok_or_else(|| {
                    format!("`{mpi}`: mpi.launch_s is {v}, neither a number nor null")
                })?),
            };
            println!(
                "  pair {pair}: mpirun whole {} (spawn_s {}, launch_s {}), processes whole {} \
                 (spawn_s {}): {:.2}×",
                secs(aw),
                secs(a.f64("spawn_s")?),
                a_launch.map_or("-".into(), secs),
                secs(bw),
                secs(b.f64("spawn_s")?),
                aw / bw
            );
            mpi_wall.push(aw);
            proc_wall.push(bw);
            ratio.push(aw / bw);
            mpi_spawn.push(a.f64("spawn_s")?);
            proc_spawn.push(b.f64("spawn_s")?);
            launch.extend(a_launch);
        }
        let ratio = Spread::of(&ratio);
        let mut rows = vec![
            Row::goal(
                format!(
                    "start-up: mpirun -np 3 ... spin 2, whole command, s, median {}",
                    Spread::of(&mpi_wall).range()
                ),
                median(&mpi_wall),
                Goal::None,
            ),
            Row::goal(
                "  … its spawn_s, rank 0's exec to every rank reporting in, s (median)".into(),
                median(&mpi_spawn),
                Goal::None,
            ),
        ];
        if launch.is_empty() {
            rows.push(Row::note(format!(
                "  … mpi.launch_s: not reported (absent in {launch_absent}, null in \
                 {launch_null} of {} runs)",
                self.pairs
            )));
        } else {
            rows.push(Row::goal(
                format!(
                    "  … mpi.launch_s, mpirun's start to the first chunk, s (median of {}{})",
                    launch.len(),
                    if launch.len() < self.pairs {
                        format!("; absent {launch_absent}, null {launch_null}")
                    } else {
                        String::new()
                    }
                ),
                median(&launch),
                Goal::None,
            ));
        }
        rows.push(Row::goal(
            format!(
                "  … procpool --workers 2 spin 2, whole command, s (spawn_s {})",
                secs(median(&proc_spawn))
            ),
            median(&proc_wall),
            Goal::None,
        ));
        rows.push(Row::goal(
            format!(
                "  … whole command, MPI / processes, median {}",
                ratio.range()
            ),
            ratio.median,
            Goal::None,
        ));
        Ok(rows)
    }
}

/// The procpool binary cargo built for this bench (with the `mpi` feature, as
/// `cargo bench --features mpi` builds it), or `procpool` beside the bench's `deps` folder.
fn procpool_binary() -> Result<PathBuf, String> {
    if let Some(path) = option_env!("CARGO_BIN_EXE_procpool") {
        return Ok(PathBuf::from(path));
    }
    // target/release/deps/mpi-<hash> → target/release/procpool.
    let exe = std::env::current_exe().map_err(|e| format!("where is this bench? {e}"))?;
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("procpool"))
        .ok_or_else(|| format!("{} has no target folder", exe.display()))?;
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} is missing: build it first with `cargo build --release --features mpi`",
            path.display()
        ))
    }
}

/// One command line to run.
struct Job {
    program: String,
    args: Vec<String>,
    env: Vec<(&'static str, &'static str)>,
    /// An `mpirun` job: its report must carry the `mpi` object.
    mpi: bool,
}

impl std::fmt::Display for Job {
    /// The command as a shell would take it (the arguments here need no quoting).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (k, v) in &self.env {
            write!(f, "{k}={v} ")?;
        }
        write!(f, "{} {}", self.program, self.args.join(" "))
    }
}

/// What one job printed and how long it took, its JSON report parsed.
struct Outcome {
    /// The whole command, spawn to exit, measured here.
    wall: Duration,
    report: Value,
    /// The command line, for messages.
    command: String,
}

impl Job {
    /// Runs the job with [`DEADLINE`]: past it, SIGTERM (mpirun stops its ranks), after
    /// [`GRACE`] SIGKILL to it and every process below it, then reaped. Fails
    /// unless it exits 0 with one JSON report on stdout (with an `mpi` object for mpirun).
    fn run(&self) -> Result<Outcome, String> {
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .envs(self.env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let began = Instant::now();
        let mut child = command.spawn().map_err(|e| {
            format!(
                "could not start `{self}`: {e}{}",
                if self.mpi {
                    " (install Open MPI: apt-get install openmpi-bin libopenmpi-dev)"
                } else {
                    ""
                }
            )
        })?;
        let pid = Pid::from_raw(child.id() as i32);
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        // A thread waits, so the exit is timed to the moment it happens.
        let (sender, exited) = mpsc::channel::<(std::io::Result<ExitStatus>, Instant)>();
        let waiter = std::thread::spawn(move || {
            let status = child.wait();
            let _ = sender.send((status, Instant::now()));
        });
        let (status, overdue) = match exited.recv_timeout(DEADLINE) {
            Ok(done) => (done, false),
            Err(_) => {
                let _ = kill(pid, Signal::SIGTERM);
                let done = match exited.recv_timeout(GRACE) {
                    Ok(done) => done,
                    Err(_) => {
                        // Open MPI gives each rank a process group of its own: kill the
                        // job's whole tree, found before its root dies.
                        let tree = descendants(pid.as_raw());
                        let _ = kill(pid, Signal::SIGKILL);
                        for below in tree {
                            let _ = kill(Pid::from_raw(below), Signal::SIGKILL);
                        }
                        exited
                            .recv()
                            .map_err(|_| format!("`{self}`: lost its waiter"))?
                    }
                };
                (done, true)
            }
        };
        let _ = waiter.join();
        let (status, ended) = status;
        let status = status.map_err(|e| format!("`{self}`: could not wait for it: {e}"))?;
        let (stdout, stderr) = (
            stdout.join().unwrap_or_default(),
            stderr.join().unwrap_or_default(),
        );
        if overdue {
            return Err(format!(
                "`{self}` passed its {DEADLINE:?} deadline and was killed\nstderr: {}",
                stderr.trim_end()
            ));
        }
        if !status.success() {
            return Err(format!(
                "`{self}` failed ({status})\nstdout: {}\nstderr: {}",
                stdout.trim_end(),
                stderr.trim_end()
            ));
        }
        let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
        let report: Value = match lines[..] {
            [line] => serde_json::from_str(line)
                .map_err(|e| format!("`{self}`: its report is not JSON ({e}): {line}"))?,
            _ => {
                return Err(format!(
                    "`{self}`: expected one JSON line on stdout, got {}:\n{}",
                    lines.len(),
                    stdout.trim_end()
                ));
            }
        };
        if self.mpi && !report.get("mpi").is_some_and(Value::is_object) {
            return Err(format!(
                "`{self}`: the report has no `mpi` object, so it did not run on the MPI \
                 backend (build with `cargo bench --features mpi`)"
            ));
        }
        Ok(Outcome {
            wall: ended - began,
            report,
            command: self.to_string(),
        })
    }
}

impl Outcome {
    /// The report's number `key`, or an error naming the command.
    fn f64(&self, key: &str) -> Result<f64, String> {
        self.report.get(key).and_then(Value::as_f64).ok_or_else(|| {
            format!(
                "`{}`: the report's `{key}` is {}, not a number",
                self.command,
                self.report
                    .get(key)
                    .map_or("absent".into(), Value::to_string)
            )
        })
    }

    /// A run with a baseline: its output must equal the single-process run's.
    fn require_verified(&self) -> Result<(), String> {
        match self.report.get("verified") {
            Some(Value::Bool(true)) => Ok(()),
            other => Err(format!(
                "`{}` was not verified: \"verified\" is {} (its time is not worth reporting)",
                self.command,
                other.map_or("absent".into(), Value::to_string)
            )),
        }
    }

    /// A run without a baseline (`verified` is null there): every element was computed.
    fn require_completed(&self) -> Result<(), String> {
        if self.report.get("verified") == Some(&Value::Bool(false)) {
            return Err(format!("`{}`: \"verified\" is false", self.command));
        }
        let _ = self.f64("run_s")?;
        Ok(())
    }
}

/// The processes below `root` (children, their children, ...), from /proc.
fn descendants(root: i32) -> Vec<i32> {
    let mut parents = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            // /proc/PID/stat: "pid (comm) state ppid ...", comm may hold spaces or ')'.
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if let Some(ppid) = ppid {
                parents.push((pid, ppid));
            }
        }
    }
    let mut found = vec![root];
    let mut next = 0;
    while next < found.len() {
        let parent = found[next];
        found.extend(
            parents
                .iter()
                .filter(|&&(_, p)| p == parent)
                .map(|&(c, _)| c),
        );
        next += 1;
    }
    found.split_off(1)
}

/// Reads a child's pipe to its end on a thread of its own, so a full pipe never blocks it.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}

/// A goal for a row's value, or none (the row informs).
enum Goal {
    AtMost(f64),
    None,
}

/// One line of the table at the end.
struct Row {
    what: String,
    /// `None`: a note, no value.
    value: Option<f64>,
    goal: Goal,
}

impl Row {
    /// A measured value and its goal.
    fn goal(what: String, value: f64, goal: Goal) -> Self {
        Row {
            what,
            value: Some(value),
            goal,
        }
    }

    /// A line of text in the table.
    fn note(what: String) -> Self {
        Row {
            what,
            value: None,
            goal: Goal::None,
        }
    }
}

/// The table: what, value, goal, met? (`-` where there is no goal).
fn print_rows(rows: &[Row]) {
    let width = rows
        .iter()
        .map(|r| r.what.chars().count())
        .max()
        .unwrap_or(0);
    for r in rows {
        let Some(value) = r.value else {
            println!("{}", r.what);
            continue;
        };
        let value = if value.abs() >= 1000.0 {
            format!("{value:.0}")
        } else {
            format!("{value:.3}")
        };
        let (goal, met) = match r.goal {
            Goal::AtMost(g) => (
                format!("goal ≤ {g}"),
                if r.value.is_some_and(|v| v <= g) {
                    "met"
                } else {
                    "NOT MET"
                },
            ),
            Goal::None => ("-".into(), "-"),
        };
        let pad = width - r.what.chars().count();
        println!("{}{:pad$}  {value:>10}  {goal:<10}  {met}", r.what, "");
    }
}

/// A median and the range around it.
struct Spread {
    median: f64,
    min: f64,
    max: f64,
    count: usize,
}

impl Spread {
    /// The median, smallest and largest of `xs` (not empty).
    fn of(xs: &[f64]) -> Self {
        Spread {
            median: median(xs),
            min: xs.iter().copied().fold(f64::INFINITY, f64::min),
            max: xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            count: xs.len(),
        }
    }

    /// How many, and the range: "of 5 (0.75-1.34)".
    fn range(&self) -> String {
        format!("of {} ({:.2}-{:.2})", self.count, self.min, self.max)
    }
}

/// The median of `xs` (not empty): the middle value, or the mean of the two middle ones.
fn median(xs: &[f64]) -> f64 {
    let mut xs = xs.to_vec();
    xs.sort_by(f64::total_cmp);
    let mid = xs.len() / 2;
    if xs.len() % 2 == 1 {
        xs[mid]
    } else {
        (xs[mid - 1] + xs[mid]) / 2.0
    }
}

/// Seconds as `1.234 s` or `123.45 ms`.
fn secs(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.3} s")
    } else {
        format!("{:.2} ms", s * 1e3)
    }
}

/// The 1-, 5- and 15-minute load averages, as /proc/loadavg has them ("?" without it).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}
