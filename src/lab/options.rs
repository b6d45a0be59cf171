//! Which run options each way of running a job takes, as one table.
//!
//! A mode (`processes`, `threads`, `single`), a backend (`mpi`) or a command that runs
//! jobs (a sweep, compare-modes, the tools) has no use for some options; such an option is
//! refused in one line naming it and the fix, never silently ignored. The decision is this
//! table: a run's checks, the mpi backend's refusal and the `procpool` command's parser all
//! read it, and docs/guide/measuring.md prints it (a test holds that copy against
//! [`markdown`]), so none of them can drift from the others.
//!
//! Each row names its option twice: as the library's refusals name it, in backticks
//! (`` `chunk_timeout` ``, a field of [`crate::RunOptions`] or of the mpi backend's options),
//! and as the `procpool` command spells it (`--timeout`).

use crate::error::Error;

/// A way to run a job, or a command that runs jobs: a column of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runner {
    /// procpool's own worker processes (`mode` processes on the process backend).
    Processes,
    /// Threads of one process (`mode` threads).
    Threads,
    /// One process, one call of the kernel (`mode` single).
    Single,
    /// The ranks of an mpirun (the mpi backend).
    Mpi,
    /// A sweep over worker counts and chunk sizes: many runs on worker processes.
    Sweep,
    /// Processes against threads, alternating, each run verified in memory.
    CompareModes,
    /// The tools that run no workload: ipc-bench and list.
    Tools,
}

impl Runner {
    /// Every column, in the table's order.
    pub const ALL: [Runner; 7] = [
        Runner::Processes,
        Runner::Threads,
        Runner::Single,
        Runner::Mpi,
        Runner::Sweep,
        Runner::CompareModes,
        Runner::Tools,
    ];

    /// The column's heading.
    pub fn heading(self) -> &'static str {
        match self {
            Runner::Processes => "processes",
            Runner::Threads => "threads",
            Runner::Single => "single",
            Runner::Mpi => "mpi",
            Runner::Sweep => "sweep",
            Runner::CompareModes => "compare-modes",
            Runner::Tools => "ipc-bench, list",
        }
    }

    /// Why this runner takes none of the options it refuses, and what to use instead, in
    /// the library's words (options in backticks).
    fn why_not(self) -> (&'static str, &'static str) {
        match self {
            Runner::Processes => (
                "is for `backend` mpi (a build with --features mpi)",
                "add `backend` mpi",
            ),
            Runner::Threads => (
                "has no effect with `mode` threads (threads of one process)",
                "use `mode` processes",
            ),
            Runner::Single => (
                "has no effect with `mode` single (a single process)",
                "use `mode` processes",
            ),
            Runner::Mpi => (
                "has no effect with `backend` mpi: mpirun starts the ranks (`mpirun -np K`, or \
                 `ranks` K), MPI carries the chunks, and a lost rank ends the job",
                "use `backend` processes",
            ),
            Runner::Sweep => (
                "has no effect in a sweep (many runs on worker processes: no single timeline \
                 or picture)",
                "run one job without sweep",
            ),
            Runner::CompareModes => (
                "has no effect in compare-modes (both modes, each run verified, in memory)",
                "run one job without compare-modes",
            ),
            Runner::Tools => (
                "has no effect in ipc-bench or list (they run no workload)",
                "give it to a workload",
            ),
        }
    }
}

/// One row: a run option and the runners that take it.
#[derive(Debug)]
pub struct RunOption {
    /// How the library names it in a refusal, without the backticks: `chunk_timeout`.
    pub name: &'static str,
    /// How the `procpool` command spells it: `--timeout`.
    pub flag: &'static str,
    /// Whether each runner of [`Runner::ALL`] takes it, in that order.
    takes: [bool; 7],
}

impl RunOption {
    /// Whether `runner` takes this option.
    pub fn taken_by(&self, runner: Runner) -> bool {
        self.takes[runner as usize]
    }

    /// The one-line refusal when `runner` does not take this option, in the library's
    /// words; `None` when it does.
    pub fn refusal(&self, runner: Runner) -> Option<Error> {
        if self.taken_by(runner) {
            return None;
        }
        let (why, instead) = runner.why_not();
        Some(Error::invalid(
            self.name,
            format!("`{}` {why}: drop it, or {instead}", self.name),
        ))
    }
}

const fn row(name: &'static str, flag: &'static str, takes: [u8; 7]) -> RunOption {
    let mut bools = [false; 7];
    let mut i = 0;
    while i < 7 {
        bools[i] = takes[i] == 1;
        i += 1;
    }
    RunOption {
        name,
        flag,
        takes: bools,
    }
}

/// The table, in the order of `procpool --help`: 1 where the runner of that column (in the
/// order of [`Runner::ALL`]: processes, threads, single, mpi, sweep, compare-modes, the
/// tools) takes the option. A refused value (`--transport channel` in threads, a fault
/// that would hit procpool) is refused with the option; one that is harmless there (the
/// default) is not.
pub const RUN_OPTIONS: &[RunOption] = &[
    //   library name, command flag:        proc thr sgl mpi swp cmp tools
    row("workers", "--workers", [1, 1, 0, 0, 1, 1, 0]),
    row("chunk_size", "--chunk-size", [1, 1, 0, 1, 1, 1, 0]),
    row("schedule", "--schedule", [1, 1, 0, 1, 1, 1, 0]),
    // Threads write into one buffer: nothing crosses a channel.
    row("transport", "--transport", [1, 0, 0, 0, 1, 0, 0]),
    row("dispatch", "--dispatch", [1, 0, 0, 0, 1, 1, 0]),
    row("pin", "--pin", [1, 0, 0, 0, 1, 1, 0]),
    // On the mpi backend, chunks queued per rank.
    row("inflight", "--inflight", [1, 0, 0, 1, 1, 1, 0]),
    row("mode", "--mode", [1, 1, 1, 0, 1, 0, 0]),
    row("huge_pages", "--huge-pages", [1, 0, 0, 0, 1, 1, 0]),
    row("backend", "--backend", [1, 1, 1, 1, 1, 0, 0]),
    row("node_size", "--mpi-node-size", [0, 0, 0, 1, 0, 0, 0]),
    row("route", "--mpi-route", [0, 0, 0, 1, 0, 0, 0]),
    row("ranks", "--ranks", [0, 0, 0, 1, 0, 0, 0]),
    row("start", "--start", [1, 0, 0, 0, 1, 1, 0]),
    // In threads or a single process a fault would hit procpool itself.
    row("faults", "--inject", [1, 0, 0, 1, 1, 0, 0]),
    row("retries", "--retries", [1, 0, 0, 0, 1, 1, 0]),
    row("max_restarts", "--max-restarts", [1, 0, 0, 0, 1, 1, 0]),
    row(
        "max_chunks_per_worker",
        "--max-chunks-per-worker",
        [1, 0, 0, 0, 1, 1, 0],
    ),
    row("max_worker_rss", "--max-worker-rss", [1, 0, 0, 0, 1, 1, 0]),
    row("retry_panics", "--retry-panics", [1, 0, 0, 0, 1, 1, 0]),
    row("chunk_timeout", "--timeout", [1, 0, 0, 0, 1, 1, 0]),
    // One job's deadline: a sweep or compare-modes runs many (give it to one run).
    row("deadline", "--deadline", [1, 0, 0, 0, 0, 0, 0]),
    row("grace", "--grace", [1, 0, 0, 0, 1, 1, 0]),
    row(
        "handshake_timeout",
        "--handshake-timeout",
        [1, 0, 0, 0, 1, 1, 0],
    ),
    row("repeat", "--repeat", [1, 1, 1, 1, 1, 1, 0]),
    row("warmup", "--warmup", [1, 1, 1, 1, 1, 0, 0]),
    row("baseline", "--no-baseline", [1, 1, 1, 1, 1, 0, 0]),
    // Streaming goes through worker processes.
    row("output", "--output", [1, 0, 0, 0, 1, 0, 0]),
    row("window_bytes", "--window-size", [1, 0, 0, 0, 1, 0, 0]),
    row("json", "--json", [1, 1, 1, 1, 1, 1, 1]),
    // A timeline shows worker processes, of one run.
    row("trace", "--trace", [1, 0, 0, 0, 0, 0, 0]),
    row("timeline", "--timeline", [1, 0, 0, 0, 0, 0, 0]),
    // Mandelbrot's picture, of one run, in memory.
    row("image", "--image", [1, 1, 1, 0, 0, 0, 0]),
];

/// The row of the option the library names `name` (`chunk_timeout`).
pub fn run_option(name: &str) -> Option<&'static RunOption> {
    RUN_OPTIONS.iter().find(|o| o.name == name)
}

/// The first of the options the library names in `given` that `runner` does not take, as
/// its refusal.
pub fn first_refused<'a>(
    runner: Runner,
    given: impl IntoIterator<Item = &'a str>,
) -> Option<Error> {
    given
        .into_iter()
        .filter_map(run_option)
        .find_map(|o| o.refusal(runner))
}

/// The table as Markdown, as docs/guide/measuring.md prints it: one row per option, ✓ where the runner
/// takes it.
pub fn markdown() -> String {
    let mut text = String::from("| option |");
    for runner in Runner::ALL {
        text += &format!(" {} |", runner.heading());
    }
    text += "\n|---|";
    text += &"---|".repeat(Runner::ALL.len());
    text += "\n";
    for option in RUN_OPTIONS {
        text += &format!("| `{}` |", option.flag);
        for runner in Runner::ALL {
            text += if option.taken_by(runner) {
                " ✓ |"
            } else {
                " – |"
            };
        }
        text += "\n";
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_option_is_named_once_and_taken_somewhere() {
        for (at, option) in RUN_OPTIONS.iter().enumerate() {
            assert!(
                RUN_OPTIONS[at + 1..]
                    .iter()
                    .all(|o| o.name != option.name && o.flag != option.flag),
                "{} twice",
                option.name
            );
            assert!(
                Runner::ALL.iter().any(|r| option.taken_by(*r)),
                "{} is taken nowhere",
                option.name
            );
        }
    }

    #[test]
    fn a_refusal_is_one_line_naming_the_option_and_the_fix() {
        let e = run_option("chunk_timeout")
            .and_then(|o| o.refusal(Runner::Threads))
            .expect("threads take no chunk time limit");
        assert_eq!(e.option(), Some("chunk_timeout"));
        let line = e.to_string();
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.starts_with("`chunk_timeout` has no effect with `mode` threads"),
            "{line}"
        );
        assert!(line.ends_with("drop it, or use `mode` processes"), "{line}");
        assert!(
            run_option("workers")
                .unwrap()
                .refusal(Runner::Threads)
                .is_none()
        );
        // The first refused of several, in the order given.
        let e = first_refused(Runner::Single, ["repeat", "schedule", "workers"]).unwrap();
        assert_eq!(e.option(), Some("schedule"));
        assert!(first_refused(Runner::Mpi, ["inflight", "repeat", "unknown"]).is_none());
    }

    #[test]
    fn the_measuring_guide_prints_this_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/guide/measuring.md");
        let guide = std::fs::read_to_string(path).expect("read docs/guide/measuring.md");
        assert!(
            guide.contains(&markdown()),
            "docs/guide/measuring.md's table of which options each mode takes differs from \
             lab::options::RUN_OPTIONS; paste this in its place:\n{}",
            markdown()
        );
    }

    #[test]
    fn the_markdown_has_a_row_per_option_and_a_column_per_runner() {
        let text = markdown();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), RUN_OPTIONS.len() + 2);
        assert!(
            lines
                .iter()
                .all(|l| l.matches('|').count() == Runner::ALL.len() + 2)
        );
        assert_eq!(lines[2 + 20], "| `--timeout` | ✓ | – | – | – | ✓ | ✓ | – |");
    }
}
