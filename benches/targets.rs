//! cargo bench --bench targets
//!
//! Measures procpool's performance targets on the machine at hand, each as a ratio measured
//! in one run (so a noisy machine moves both sides alike), and prints them with the goal.
//! Every job is verified against the single-process run before its time is used.

use procpool::Mode;
use procpool::StartMethod;
use procpool::workload::{Collatz, Hash, Mandelbrot, Spin, Squares};
use procpool::{
    ChunkOrder, Closure, Dispatch, Input, JobOptions, Param, Pool, Registry, RunOptions,
    TraceEventKind, Workload,
};
use serde::{Deserialize, Serialize};

fn main() -> Result<(), procpool::Error> {
    // Workers re-execute this benchmark binary: they serve here.
    procpool::init_with(
        Registry::builtin()
            .register::<SharedRows>()
            .register::<CopiedRows>()
            .register::<PlainBytes>()
            .register::<HeldBytes>()
            .register::<MatVec>(),
    );
    let machine = procpool::lab::Machine::read();
    println!(
        "procpool targets on {} logical / {} physical cores\n",
        machine.cores_logical,
        machine.cores_physical.map_or("?".into(), |c| c.to_string())
    );
    let mut rows = Vec::new();

    // What tracing costs (`JobOptions::trace`, `--trace`): traced against untraced jobs on
    // one pool, alternating. `cargo bench --bench targets -- tracing` runs only these rows.
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let load_at_start = load_average();
    if only.as_deref().is_none_or(|o| "tracing".contains(o)) {
        let hash = trace_cost(&Hash { rounds: 50 }, 200_000, None)?;
        rows.push(Row::at_most(
            format!(
                "hash 200000 --rounds 50, 2 workers: traced / untraced pool time ({:.1} / \
                 {:.1} ms, medians of 7)",
                hash.1 * 1e3,
                hash.2 * 1e3
            ),
            hash.0,
            1.02,
        ));
        let spin = trace_cost(&Spin::calibrate(0.0), 200_000, Some(1))?;
        rows.push(Row::at_most(
            format!(
                "spin 200000 --us 0 --chunk-size 1, 2 workers: traced / untraced ({:.0} / \
                 {:.0} ns a chunk)",
                spin.1 / 200_000.0 * 1e9,
                spin.2 / 200_000.0 * 1e9
            ),
            spin.0,
            1.10,
        ));
        if only.is_some() {
            print_rows(&rows, only.as_deref(), &load_at_start);
            return Ok(());
        }
    }

    // A kernel as a closure against the same kernel as a `Workload`: matvec (2000 × 2000
    // shared, 16 vectors) on one 2-worker pool, alternately.
    // `cargo bench --bench targets -- closures` runs only this row.
    if only.as_deref().is_none_or(|o| "closures".contains(o)) {
        let (ratio, closure, workload) = closure_cost()?;
        rows.push(Row::at_most(
            format!(
                "matvec 2000×2000 · 16, 2 workers: closure / Workload pool time ({:.1} / {:.1} \
                 ms, medians of 9)",
                closure * 1e3,
                workload * 1e3
            ),
            ratio,
            1.05,
        ));
        if only.is_some() {
            print_rows(&rows, only.as_deref(), &load_at_start);
            return Ok(());
        }
    }

    // Large parameters: a `Vec<u8>` field with a new value every job, 2 workers, both
    // dispatch paths interleaved; then a tiny job holding an unchanged 50 MiB `Param`
    // against the same tiny job without it, on two pools, alternately.
    // `cargo bench --bench targets -- params` runs only these rows and the next.
    if only.as_deref().is_none_or(|o| "params".contains(o)) {
        for (label, bytes, goal_ms) in [
            ("512 KiB", 512 << 10, 5.0),
            ("4 MiB", 4 << 20, 20.0),
            ("30.5 MiB", 32_000_000, 150.0),
        ] {
            let (queue, channel) = new_params_per_job(bytes)?;
            rows.push(Row::at_most(
                format!(
                    "a new {label} Vec<u8> parameter each job, 2 workers: ms per job, queue \
                     (channel {:.1} ms), median of 7",
                    channel * 1e3
                ),
                queue * 1e3,
                goal_ms,
            ));
        }
        let (param, plain) = unchanged_param_cost()?;
        rows.push(Row::at_most(
            format!(
                "an unchanged 50 MiB Param<Vec<u8>> in a tiny job: ms added (a plain Vec<u8>: \
                 {:.1} ms), median of 15",
                plain * 1e3
            ),
            param * 1e3,
            1.0,
        ));
    }

    // A kernel panic costs the job, not the workers: the job after it runs on the same
    // processes (its spec differs from the panicking job's fault list, so it goes to the
    // workers again). `cargo bench --bench targets -- panic` runs only this row.
    if only.as_deref().is_none_or(|o| "panic".contains(o)) {
        let (before, after) = after_panic()?;
        rows.push(Row::at_most(
            format!(
                "squares 2, 2 workers: the job after a kernel panic / a job before ({after:.1} \
                 / {before:.1} µs, medians of 21)"
            ),
            after / before,
            4.0,
        ));
        if only.is_some() {
            print_rows(&rows, only.as_deref(), &load_at_start);
            return Ok(());
        }
    }

    // Starting workers: the fork server (the default start) against spawn and fork, and
    // what a cheap start buys where the start is part of the job: short jobs, many
    // workers, replacements. `cargo bench --bench targets -- start` runs only these rows.
    if only.as_deref().is_none_or(|o| "start".contains(o)) {
        start_rows(&mut rows)?;
        if only.is_some() {
            print_rows(&rows, only.as_deref(), &load_at_start);
            return Ok(());
        }
    }

    // A 30.5 MiB input carried as a shared `Input<f64>` against a `Vec<f64>` field in the
    // parameters, on one long-lived 2-worker pool; every job changes a parameter, so its
    // spec goes to the workers again (the Vec encoded with it, the Input as an index).
    // Interleaved.
    let (mut shared_s, mut copied_s, mut shared_ipc, mut copied_ipc) =
        (vec![], vec![], vec![], vec![]);
    {
        let data: Vec<f64> = (0..INPUT_ROWS * INPUT_COLS)
            .map(|i| (i % 1000) as f64)
            .collect();
        let input = Input::new(&data)?;
        let mut pool = Pool::builder().workers(2).build()?;
        // The handshakes are charged to the first job: take them out.
        drop(pool.run(&Squares, 2)?);
        for round in 1..=6u64 {
            let shared = SharedRows {
                round,
                data: input.clone(),
            };
            let copied = CopiedRows {
                round,
                data: data.clone(),
            };
            let mut expected = vec![0.0; INPUT_ROWS];
            shared.kernel(0..INPUT_ROWS as u64, &mut expected);
            let began = std::time::Instant::now();
            let run = pool.run(&shared, INPUT_ROWS as u64)?;
            let wall = began.elapsed().as_secs_f64();
            assert_eq!(run.results(), &expected[..], "a verified answer");
            assert_eq!(
                run.stats().input_bytes,
                (INPUT_ROWS * INPUT_COLS * 8) as u64
            );
            // The first round of each sends the data (descriptor or bytes) for the first
            // time: both are kept, as the median sees them.
            shared_s.push(wall);
            shared_ipc.push(run.stats().param_bytes as f64);
            drop(run);
            let began = std::time::Instant::now();
            let run = pool.run(&copied, INPUT_ROWS as u64)?;
            let wall = began.elapsed().as_secs_f64();
            assert_eq!(run.results(), &expected[..], "a verified answer");
            copied_s.push(wall);
            copied_ipc.push(run.stats().param_bytes as f64);
        }
    }
    let (shared_s, copied_s) = (median(shared_s), median(copied_s));
    let (shared_ipc, copied_ipc) = (median(shared_ipc), median(copied_ipc));
    rows.push(Row::at_most(
        format!(
            "30.5 MiB input, 2 workers, per job: wall Input<f64> ({:.1} ms) / Vec<f64> in \
             the parameters ({:.1} ms), medians of 6",
            shared_s * 1e3,
            copied_s * 1e3
        ),
        shared_s / copied_s,
        0.5,
    ));
    rows.push(Row::at_least(
        format!(
            "  … parameter bytes encoded per job: Vec<f64> ({copied_ipc:.0} B) / Input<f64> \
             ({shared_ipc:.0} B)"
        ),
        copied_ipc / shared_ipc,
        10_000.0,
    ));
    if only.is_some() {
        print_rows(&rows, only.as_deref(), &load_at_start);
        return Ok(());
    }

    // Worker start, per worker, fork first: it needs this process single-threaded, which it
    // is again once each pool is dropped.
    for (start, goal_ms) in [(StartMethod::Fork, 0.3), (StartMethod::Spawn, 1.5)] {
        let per_worker_ms = median(
            (0..7)
                .map(|_| {
                    let pool = Pool::builder().workers(8).start(start).build()?;
                    Ok(pool.spawn_time().as_secs_f64() * 1e3 / 8.0)
                })
                .collect::<Result<Vec<_>, procpool::Error>>()?,
        );
        rows.push(Row::at_most(
            format!("worker start with {start}, ms per worker (8 workers, median of 7)"),
            per_worker_ms,
            goal_ms,
        ));
    }

    // squares 10^7, 2 workers: processes (starting included) against threads and against
    // the single process, every round interleaved, medians compared.
    let (mut spawned, mut forked, mut threads, mut single) = (vec![], vec![], vec![], vec![]);
    for _ in 0..9 {
        for (mode, start, into) in [
            (Mode::Processes, StartMethod::Spawn, &mut spawned),
            (Mode::Processes, StartMethod::Fork, &mut forked),
            (Mode::Threads, StartMethod::Spawn, &mut threads),
            (Mode::Single, StartMethod::Spawn, &mut single),
        ] {
            let mut options = RunOptions::new(2);
            options.mode = mode;
            options.pool.start = start;
            let report = procpool::run(&Squares, 10_000_000, &options)?;
            check(&report);
            into.push(report.pool_wall_s);
        }
    }
    let (spawned, forked, threads, single) = (
        median(spawned),
        median(forked),
        median(threads),
        median(single),
    );
    rows.push(Row::at_most(
        "squares 1e7, 2 workers: processes (spawn) / threads, medians of 9".into(),
        spawned / threads,
        1.15,
    ));
    rows.push(Row::at_most(
        "squares 1e7, 2 workers: processes (fork) / threads, medians of 9".into(),
        forked / threads,
        1.15,
    ));
    rows.push(Row::at_most(
        "squares 1e7, 2 workers: processes (spawn) / single process, medians of 9".into(),
        spawned / single,
        1.0,
    ));

    // A CPU-bound workload: hash, 2 workers.
    let hash = procpool::run(
        &Hash { rounds: 100 },
        200_000,
        &RunOptions {
            repeat: 3,
            ..RunOptions::new(2)
        },
    )?;
    check(&hash);
    rows.push(Row::at_least(
        "hash 2e5 (100 rounds), 2 workers: speedup (means of 3 interleaved)".into(),
        hash.speedup.unwrap_or(f64::NAN),
        1.9,
    ));

    // Task granularity: spin --us 0 with chunk size 1, 2 workers, through the shared-memory
    // queue (the default) and over the channels, interleaved.
    let (mut queue_rates, mut channel_rates) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        for (dispatch, n, into) in [
            (Dispatch::Queue, 2_000_000, &mut queue_rates),
            (Dispatch::Channel, 200_000, &mut channel_rates),
        ] {
            let spin = procpool::run(
                &Spin { iters: 0 },
                n,
                &RunOptions {
                    job: procpool::JobOptions {
                        chunk_size: Some(1),
                        dispatch,
                        ..Default::default()
                    },
                    baseline: false,
                    ..RunOptions::new(2)
                },
            )?;
            into.push(spin.chunks as f64 / spin.run_s);
        }
    }
    let (queue_rate, channel_rate) = (median(queue_rates), median(channel_rates));
    rows.push(Row::at_least(
        "spin 2e6 --us 0, chunk size 1, 2 workers: chunks per second (queue), median of 5".into(),
        queue_rate,
        2_000_000.0,
    ));
    rows.push(Row::at_least(
        format!("  … the channel path does {channel_rate:.0} chunks/s (spin 2e5): queue / channel"),
        queue_rate / channel_rate,
        8.0,
    ));

    // Results as they finish: the per-chunk cost of `for_each_chunk` (completion order),
    // against the same job through `run_with`, on one pool, alternately. Tiny chunks on 2
    // workers, where the parent never sleeps; then chunks of about 100 µs on one worker,
    // where the parent has a core to sleep on and a chunk may cost a wake-up.
    for (name, iteration) in [
        (
            "squares 1e6, chunk size 10",
            iteration_rates(2, &Squares, 1_000_000, 10)?,
        ),
        (
            "hash 1e4 --rounds 100, chunk size 20",
            iteration_rates(1, &Hash { rounds: 100 }, 10_000, 20)?,
        ),
    ] {
        rows.push(Row::at_least(
            format!(
                "{name}, {} worker(s): chunks/s iterated ({:.0}) / run_with ({:.0}), medians \
                 of 7 ({:+.0} ns per chunk)",
                iteration.workers,
                iteration.iterated,
                iteration.plain,
                (1.0 / iteration.iterated - 1.0 / iteration.plain) * 1e9
            ),
            iteration.iterated / iteration.plain,
            0.75,
        ));
        rows.push(Row::at_most(
            format!(
                "  … wake messages per chunk while iterating ({:.0} parent sleeps per job)",
                iteration.parent_sleeps
            ),
            iteration.wakes_per_chunk,
            1.0,
        ));
    }

    // Irregular work with a measured chunk length, against the best hand-picked length on
    // the channel path. The best length is picked in a first pass, then it and `auto` run
    // alternately in a second: comparing `auto` with the best of several noisy medians
    // measured once would favour the hand-picked side by the noise itself.
    for (name, workload) in [
        ("collatz 3e6", Irregular::Collatz),
        ("mandelbrot 2000", Irregular::Mandelbrot),
    ] {
        let sizes = [1_000, 10_000, 100_000, 1_000_000];
        let mut picked = vec![Vec::new(); sizes.len()];
        for _ in 0..3 {
            for (k, &size) in sizes.iter().enumerate() {
                picked[k].push(workload.speedup(Some(size), Dispatch::Channel)?);
            }
        }
        let medians: Vec<f64> = picked.into_iter().map(median).collect();
        let best = sizes[(0..sizes.len())
            .max_by(|&a, &b| medians[a].total_cmp(&medians[b]))
            .unwrap_or(0)];
        let (mut auto, mut hand) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            auto.push(workload.speedup(None, Dispatch::Queue)?);
            hand.push(workload.speedup(Some(best), Dispatch::Channel)?);
        }
        let (auto, hand) = (median(auto), median(hand));
        rows.push(Row::at_least(
            format!(
                "{name}, 2 workers: speedup with --chunk-size auto ({auto:.2}×) / the best \
                 hand-picked, {best} on the channels ({hand:.2}×), medians of 5"
            ),
            auto / hand,
            1.0,
        ));
    }

    // Dispatch must cost nothing where chunks are large: queue against channel.
    for (name, workload) in [
        ("squares 1e7", Regular::Squares),
        ("hash 2e5 --rounds 50", Regular::Hash),
    ] {
        let (mut queue, mut channel) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            queue.push(workload.pool_wall(Dispatch::Queue)?);
            channel.push(workload.pool_wall(Dispatch::Channel)?);
        }
        rows.push(Row::at_most(
            format!("{name}, 2 workers: pool time, queue / channel, medians of 5"),
            median(queue) / median(channel),
            1.0,
        ));
    }

    // Streaming 10^9 squares (8 GB) to a file on tmpfs, 2 workers, in bounded memory.
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let file = dir.join(format!("procpool-bench-{}.bin", std::process::id()));
    let streamed = procpool::run(
        &Squares,
        1_000_000_000,
        &RunOptions {
            baseline: false,
            output: Some(file.clone()),
            ..RunOptions::new(2)
        },
    );
    let _ = std::fs::remove_file(&file);
    let streamed = streamed?;
    let bytes = streamed.output.as_ref().map_or(0, |o| o.bytes);
    assert_eq!(bytes, 8_000_000_000, "the whole output was written");
    rows.push(Row::at_least(
        format!("squares 1e9 streamed to {}, 2 workers: GB/s", dir.display()),
        bytes as f64 / streamed.pool_wall_s / 1e9,
        1.0,
    ));
    let peak: u64 = streamed.parent_peak_rss_bytes.unwrap_or(0)
        + streamed
            .per_worker
            .iter()
            .map(|w| w.peak_rss_bytes.unwrap_or(0))
            .sum::<u64>();
    rows.push(Row::at_most(
        "  … peak RSS of procpool and its workers together, MiB".into(),
        peak as f64 / (1 << 20) as f64,
        512.0,
    ));

    // A library user's tiny jobs on one long-lived pool: the fixed cost of a job, against
    // Python's `multiprocessing.Pool(2).map(f, range(2))` measured right after.
    let per_job_us = tiny_jobs()?;
    rows.push(Row::at_most(
        "Pool::run(&Squares, 2) on a 2-worker pool, 500 times: µs per job (median)".into(),
        per_job_us,
        25.0,
    ));
    match python_tiny_jobs() {
        Some(python_us) => rows.push(Row::at_least(
            format!(
                "  … Python's Pool(2).map(f, range(2)) takes {python_us:.0} µs: Python / procpool"
            ),
            python_us / per_job_us,
            2.0,
        )),
        None => println!("(python3 not found: the Python comparison is skipped)\n"),
    }

    print_rows(&rows, only.as_deref(), &load_at_start);
    Ok(())
}

/// Prints the rows, and records them in docs/performance.md (see [`record`]).
fn print_rows(rows: &[Row], only: Option<&str>, load_at_start: &str) {
    let width = rows.iter().map(|r| r.what.len()).max().unwrap_or(0);
    for r in rows {
        println!(
            "{:width$}  {:>10.3}  goal {} {:<9}  {}",
            r.what,
            r.value,
            if r.at_most { "≤" } else { "≥" },
            r.goal,
            if r.met() { "met" } else { "NOT MET" }
        );
    }
    let doc = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/performance.md");
    match record(doc, rows, only, load_at_start) {
        Ok(()) => println!("\n(recorded in {doc})"),
        Err(e) => println!("\n(not recorded in {doc}: {e})"),
    }
}

/// The 1-, 5- and 15-minute load averages, as /proc/loadavg gives them.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_string())
}

/// Writes this run's rows into `doc` between the markers of its command: a run of every
/// target (no filter) replaces every block, a filtered one (`-- start`) its own. Each block
/// says the command, the date, the machine and the load, so the file is never edited by
/// hand and never holds a figure without its conditions.
fn record(doc: &str, rows: &[Row], only: Option<&str>, load_at_start: &str) -> std::io::Result<()> {
    let text = std::fs::read_to_string(doc)?;
    let name = only.unwrap_or("all");
    let (begin, end) = (
        format!("<!-- BEGIN targets {name} -->"),
        format!("<!-- END targets {name} -->"),
    );
    let machine = procpool::lab::Machine::read();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let command = match only {
        Some(o) => format!("cargo bench --bench targets -- {o}"),
        None => "cargo bench --bench targets".to_string(),
    };
    let mut block = format!(
        "{begin}\n`{command}`, {date}: {} logical / {} physical cores, Linux {}, {:.1} GiB; \
         load average {load_at_start} at the start, {} at the end.\n\n\
         | target | measured | goal | |\n|---|---|---|---|\n",
        machine.cores_logical,
        machine.cores_physical.map_or("?".into(), |c| c.to_string()),
        kernel.trim(),
        machine.total_memory as f64 / (1u64 << 30) as f64,
        load_average(),
    );
    for r in rows {
        block.push_str(&format!(
            "| {} | {:.3} | {} {} | {} |\n",
            r.what.trim().replace('|', "\\|"),
            r.value,
            if r.at_most { "≤" } else { "≥" },
            r.goal,
            if r.met() { "met" } else { "**not met**" }
        ));
    }
    block.push_str(&end);
    // A full run stands for every target: the filtered runs' blocks go.
    let mut kept = text.clone();
    if only.is_none() {
        while let Some(at) = kept.find("<!-- BEGIN targets ") {
            let Some(stop) = kept[at..].find("<!-- END targets ") else {
                break;
            };
            let stop = at + stop;
            let line_end = kept[stop..]
                .find("-->")
                .map_or(kept.len(), |e| stop + e + 3);
            let next = kept[line_end..]
                .strip_prefix('\n')
                .map_or(line_end, |_| line_end + 1);
            kept.replace_range(at..next, "");
        }
    }
    let updated = match (kept.find(&begin), kept.find(&end)) {
        (Some(a), Some(b)) if a < b => format!("{}{block}{}", &kept[..a], &kept[b + end.len()..]),
        _ => match kept.find(TARGETS_HERE) {
            Some(at) => {
                let at = at + TARGETS_HERE.len();
                format!("{}\n{block}\n{}", &kept[..at], &kept[at..])
            }
            None => format!("{kept}\n{block}\n"),
        },
    };
    std::fs::write(doc, updated)
}

/// The line in docs/performance.md after which new blocks of figures go.
const TARGETS_HERE: &str =
    "<!-- the targets' figures, written by `cargo bench --bench targets` -->";

/// `workload` on `0..n` (in chunks of `chunk_size`, or the default) on one 2-worker pool,
/// traced and untraced alternately 7 times (plus one of each first, discarded), each
/// answer checked against the first: the ratio of the medians of the pool time, and the
/// two medians in seconds. The traced jobs must trace every chunk.
fn trace_cost<W: Workload<Output = u64>>(
    workload: &W,
    n: u64,
    chunk_size: Option<u64>,
) -> Result<(f64, f64, f64), procpool::Error> {
    let mut pool = Pool::builder().workers(2).build()?;
    let plain = JobOptions {
        chunk_size,
        ..JobOptions::default()
    };
    let traced = JobOptions {
        trace: true,
        ..plain.clone()
    };
    let sum = |xs: &[u64]| xs.iter().fold(0u64, |a, &x| a.wrapping_add(x));
    let expected = sum(pool.run_with(workload, n, &plain)?.results());
    let (mut with, mut without) = (vec![], vec![]);
    for round in 0..8 {
        let run = pool.run_with(workload, n, &traced)?;
        assert_eq!(sum(run.results()), expected, "a verified answer (traced)");
        let stats = run.stats();
        let trace = stats.trace.as_ref().expect("a trace");
        assert_eq!(
            trace.attempts.len() as u64,
            stats.chunks,
            "every chunk traced"
        );
        let traced_s = stats.wall.as_secs_f64();
        drop(run);
        let run = pool.run_with(workload, n, &plain)?;
        assert_eq!(sum(run.results()), expected, "a verified answer");
        if round > 0 {
            with.push(traced_s);
            without.push(run.stats().wall.as_secs_f64());
        }
    }
    let (with, without) = (median(with), median(without));
    Ok((with / without, with, without))
}

/// The shared-input comparison's matrix: 4000 rows of 1000 `f64` (30.5 MiB).
const INPUT_ROWS: usize = 4000;
const INPUT_COLS: usize = 1000;

/// Element `r`: the sum of row `r` of the shared matrix, times `round`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SharedRows {
    round: u64,
    data: Input<f64>,
}

impl Workload for SharedRows {
    const NAME: &'static str = "bench-shared-rows";
    type Output = f64;
    fn kernel(&self, range: std::ops::Range<u64>, out: &mut [f64]) {
        row_sums(&self.data, self.round, range, out);
    }
}

/// The same, with the matrix in the parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CopiedRows {
    round: u64,
    data: Vec<f64>,
}

impl Workload for CopiedRows {
    const NAME: &'static str = "bench-copied-rows";
    type Output = f64;
    fn kernel(&self, range: std::ops::Range<u64>, out: &mut [f64]) {
        row_sums(&self.data, self.round, range, out);
    }
}

/// Element `i`: `i` plus the parameter's length, first and last byte (a tiny job whatever
/// the parameter's size, whose answer shows the worker got the value).
fn bytes_kernel(bytes: &[u8], range: std::ops::Range<u64>, out: &mut [u64]) {
    let ends = match bytes {
        [] => 0,
        [first, .., last] => u64::from(*first) + u64::from(*last),
        [one] => 2 * u64::from(*one),
    };
    for (slot, i) in out.iter_mut().zip(range) {
        *slot = i + bytes.len() as u64 + ends;
    }
}

/// A plain `Vec<u8>` parameter.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PlainBytes {
    bytes: Vec<u8>,
}

impl Workload for PlainBytes {
    const NAME: &'static str = "bench-plain-bytes";
    type Output = u64;
    fn kernel(&self, range: std::ops::Range<u64>, out: &mut [u64]) {
        bytes_kernel(&self.bytes, range, out);
    }
}

/// The same bytes held in a `Param`, beside a field that changes every job.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct HeldBytes {
    round: u64,
    bytes: Param<Vec<u8>>,
}

impl Workload for HeldBytes {
    const NAME: &'static str = "bench-held-bytes";
    type Output = u64;
    fn kernel(&self, range: std::ops::Range<u64>, out: &mut [u64]) {
        bytes_kernel(&self.bytes, range, out);
        out.iter_mut().for_each(|x| *x += self.round);
    }
}

/// Median seconds per job of 7 jobs (after one that starts the workers), each with a new
/// `bytes`-long parameter, on a 2-worker pool: queue dispatch, channel dispatch,
/// interleaved. Every answer is checked.
fn new_params_per_job(bytes: usize) -> Result<(f64, f64), procpool::Error> {
    let mut pools = Vec::new();
    for dispatch in [Dispatch::Queue, Dispatch::Channel] {
        let options = JobOptions {
            dispatch,
            ..JobOptions::default()
        };
        pools.push((Pool::builder().workers(2).build()?, options, Vec::new()));
    }
    for round in 0..8u8 {
        for (pool, options, times) in &mut pools {
            let work = PlainBytes {
                bytes: vec![round; bytes],
            };
            let mut expected = vec![0; 4];
            bytes_kernel(&work.bytes, 0..4, &mut expected);
            let began = std::time::Instant::now();
            let run = pool.run_with(&work, 4, options)?;
            let took = began.elapsed().as_secs_f64();
            assert_eq!(run.results(), &expected[..], "a verified answer");
            // The bytes and their length (a varint).
            let param_bytes = run.stats().param_bytes as usize;
            assert!(
                (bytes + 1..=bytes + 5).contains(&param_bytes),
                "{param_bytes}"
            );
            if round > 0 {
                times.push(took);
            }
        }
    }
    let mut medians = pools.into_iter().map(|(_, _, t)| median(t));
    Ok((medians.next().unwrap_or(0.0), medians.next().unwrap_or(0.0)))
}

/// What an unchanged 50 MiB parameter adds to a tiny job: held in a `Param` (beside a
/// `round` that changes every job), then as a plain `Vec<u8>`; seconds, see [`added`].
fn unchanged_param_cost() -> Result<(f64, f64), procpool::Error> {
    const BYTES: usize = 50 << 20;
    let (big, empty) = (Param::new(vec![3u8; BYTES]), Param::new(Vec::new()));
    let param = added(|round, large| HeldBytes {
        round,
        bytes: if large { big.clone() } else { empty.clone() },
    })?;
    let plain = vec![3u8; BYTES];
    let plain = added(|_, large| PlainBytes {
        bytes: if large { plain.clone() } else { Vec::new() },
    })?;
    Ok((param, plain))
}

/// Median seconds of a tiny job made by `make(round, true)` minus that of `make(round,
/// false)`, 15 jobs each (after one that starts the workers), alternately on two 2-worker
/// pools. The value is made before the clock starts (a clone is the caller's cost);
/// every answer is checked.
fn added<W: Workload<Output = u64>>(make: impl Fn(u64, bool) -> W) -> Result<f64, procpool::Error> {
    let mut pools = Vec::new();
    for large in [true, false] {
        pools.push((large, Pool::builder().workers(2).build()?, Vec::new()));
    }
    for round in 0..16u64 {
        for (large, pool, times) in &mut pools {
            let work = make(round, *large);
            let mut expected = vec![0; 2];
            work.kernel(0..2, &mut expected);
            let began = std::time::Instant::now();
            let run = pool.run(&work, 2)?;
            let took = began.elapsed().as_secs_f64();
            assert_eq!(run.results(), &expected[..], "a verified answer");
            if round > 0 {
                times.push(took);
            }
        }
    }
    let mut medians = pools.into_iter().map(|(_, _, t)| median(t));
    Ok(medians.next().unwrap_or(0.0) - medians.next().unwrap_or(0.0))
}

fn row_sums(data: &[f64], round: u64, range: std::ops::Range<u64>, out: &mut [f64]) {
    for (slot, r) in out.iter_mut().zip(range) {
        let r = r as usize;
        let row = &data[r * INPUT_COLS..(r + 1) * INPUT_COLS];
        *slot = round as f64 * row.iter().sum::<f64>();
    }
}

struct Row {
    what: String,
    value: f64,
    goal: f64,
    at_most: bool,
}

impl Row {
    fn at_most(what: String, value: f64, goal: f64) -> Self {
        Row {
            what,
            value,
            goal,
            at_most: true,
        }
    }
    fn at_least(what: String, value: f64, goal: f64) -> Self {
        Row {
            what,
            value,
            goal,
            at_most: false,
        }
    }
    fn met(&self) -> bool {
        if self.at_most {
            self.value <= self.goal
        } else {
            self.value >= self.goal
        }
    }
}

/// The irregular workloads of the chunk-size comparison.
#[derive(Clone, Copy)]
enum Irregular {
    Collatz,
    Mandelbrot,
}

impl Irregular {
    /// The verified speedup on 2 workers, with `chunk_size` or `auto` (`None`).
    fn speedup(self, chunk_size: Option<u64>, dispatch: Dispatch) -> Result<f64, procpool::Error> {
        let options = RunOptions {
            job: procpool::JobOptions {
                chunk_size,
                auto_chunk: chunk_size.is_none(),
                dispatch,
                ..Default::default()
            },
            ..RunOptions::new(2)
        };
        let report = match self {
            Irregular::Collatz => procpool::run(&Collatz, 3_000_000, &options)?,
            Irregular::Mandelbrot => {
                let m = Mandelbrot::new(2000, 256);
                procpool::run(&m, m.pixels(), &options)?
            }
        };
        check(&report);
        Ok(report.speedup.unwrap_or(f64::NAN))
    }
}

/// The regular workloads of the dispatch comparison.
#[derive(Clone, Copy)]
enum Regular {
    Squares,
    Hash,
}

impl Regular {
    /// The verified pool time (start included) on 2 workers.
    fn pool_wall(self, dispatch: Dispatch) -> Result<f64, procpool::Error> {
        let options = RunOptions {
            job: procpool::JobOptions {
                dispatch,
                ..Default::default()
            },
            ..RunOptions::new(2)
        };
        let report = match self {
            Regular::Squares => procpool::run(&Squares, 10_000_000, &options)?,
            Regular::Hash => procpool::run(&Hash { rounds: 50 }, 200_000, &options)?,
        };
        check(&report);
        Ok(report.pool_wall_s)
    }
}

/// A time is only worth reporting for a verified answer.
fn check(report: &procpool::Report) {
    assert_eq!(
        report.verified,
        Some(true),
        "{} was not verified",
        report.workload
    );
}

/// Median µs of `pool.run(&Squares, 2)`, 500 jobs on one pool, each checked.
fn tiny_jobs() -> Result<f64, procpool::Error> {
    let mut pool = Pool::builder().workers(2).build()?;
    let mut us = Vec::with_capacity(500);
    for _ in 0..500 {
        let began = std::time::Instant::now();
        let run = pool.run(&Squares, 2)?;
        assert_eq!(run.results(), &[0, 1], "a verified answer");
        drop(run);
        us.push(began.elapsed().as_secs_f64() * 1e6);
    }
    Ok(median(us))
}

/// Median µs of a tiny job (`squares 2`) on a 2-worker pool right before and right after
/// a job whose kernel panics, 21 rounds; every answer checked, the workers the same
/// processes throughout.
fn after_panic() -> Result<(f64, f64), procpool::Error> {
    let mut pool = Pool::builder().workers(2).build()?;
    let pids = pool.pids();
    let panics = JobOptions {
        faults: vec!["panic@0".parse().expect("a fault")],
        ..JobOptions::default()
    };
    let tiny = |pool: &mut Pool| -> Result<f64, procpool::Error> {
        let began = std::time::Instant::now();
        let run = pool.run(&Squares, 2)?;
        assert_eq!(run.results(), &[0, 1], "a verified answer");
        Ok(began.elapsed().as_secs_f64() * 1e6)
    };
    tiny(&mut pool)?;
    let (mut before, mut after) = (vec![], vec![]);
    for _ in 0..21 {
        before.push(tiny(&mut pool)?);
        let failed = pool.run_with(&Squares, 2, &panics);
        assert!(
            matches!(failed, Err(procpool::Error::KernelPanicked { .. })),
            "the kernel panicked"
        );
        after.push(tiny(&mut pool)?);
        assert_eq!(pool.pids(), pids, "the same workers");
    }
    Ok((median(before), median(after)))
}

/// What [`iteration_rates`] measured: medians over the rounds.
struct Iteration {
    workers: usize,
    /// Chunks per second through `run_with`, results summed after the job.
    plain: f64,
    /// Chunks per second through `for_each_chunk`, each chunk summed as it comes.
    iterated: f64,
    /// `Wake` messages per chunk while iterating.
    wakes_per_chunk: f64,
    parent_sleeps: f64,
}

/// The same job, `workload` on `0..n` in chunks of `chunk_size` on a pool of `workers`,
/// through `run_with` and through `for_each_chunk`, alternately 7 times; both sum every
/// result, and each sum is checked against the first `run_with`'s.
fn iteration_rates<W: procpool::Workload<Output = u64>>(
    workers: usize,
    workload: &W,
    n: u64,
    chunk_size: u64,
) -> Result<Iteration, procpool::Error> {
    let mut pool = Pool::builder().workers(workers).build()?;
    let options = JobOptions {
        chunk_size: Some(chunk_size),
        ..JobOptions::default()
    };
    let expected = {
        let run = pool.run_with(workload, n, &options)?;
        run.results().iter().fold(0u64, |a, &r| a.wrapping_add(r))
    };
    let (mut plain, mut iterated, mut wakes, mut sleeps) = (vec![], vec![], vec![], vec![]);
    for _ in 0..7 {
        let began = std::time::Instant::now();
        let run = pool.run_with(workload, n, &options)?;
        let sum = run.results().iter().fold(0u64, |a, &r| a.wrapping_add(r));
        let seconds = began.elapsed().as_secs_f64();
        assert_eq!(sum, expected, "a verified answer (run_with)");
        plain.push(run.stats().chunks as f64 / seconds);
        drop(run);

        let began = std::time::Instant::now();
        let mut sum = 0u64;
        let stats = pool.for_each_chunk(workload, n, &options, ChunkOrder::Completion, |c| {
            sum = c.output.iter().fold(sum, |a, &r| a.wrapping_add(r));
            std::ops::ControlFlow::Continue(())
        })?;
        let seconds = began.elapsed().as_secs_f64();
        assert_eq!(sum, expected, "a verified answer (for_each_chunk)");
        assert_eq!(stats.chunks_delivered, stats.chunks, "every chunk once");
        iterated.push(stats.chunks as f64 / seconds);
        wakes.push(stats.wake_messages as f64 / stats.chunks as f64);
        sleeps.push(stats.parent_sleeps as f64);
    }
    Ok(Iteration {
        workers,
        plain: median(plain),
        iterated: median(iterated),
        wakes_per_chunk: median(wakes),
        parent_sleeps: median(sleeps),
    })
}

/// Median µs of Python's `Pool(2).map(f, range(2))`, 500 maps on one pool, when `python3`
/// is installed.
fn python_tiny_jobs() -> Option<f64> {
    let script = r#"
import multiprocessing as mp, time

def f(x):
    return x * x

if __name__ == "__main__":
    with mp.Pool(2) as p:
        t = []
        for _ in range(500):
            s = time.perf_counter()
            assert p.map(f, range(2)) == [0, 1]
            t.append((time.perf_counter() - s) * 1e6)
        t.sort()
        print(t[250])
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

/// The rows of the `start` section.
fn start_rows(rows: &mut Vec<Row>) -> Result<(), procpool::Error> {
    // Pools ready: 2 workers by each method, 8 by the default and by spawn, interleaved;
    // `spawn_time` is the report's `spawn_s`. Fork only while this process is
    // single-threaded (it is again once each pool is shut down).
    let (mut server2, mut spawn2, mut fork2, mut server8, mut spawn8) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut fork_refused = None;
    for _ in 0..15 {
        server2.push(ready_ms(2, None)?);
        spawn2.push(ready_ms(2, Some(StartMethod::Spawn))?);
        if fork_refused.is_none() {
            match ready_ms(2, Some(StartMethod::Fork)) {
                Ok(ms) => fork2.push(ms),
                Err(e) => fork_refused = Some(e),
            }
        }
        server8.push(ready_ms(8, None)?);
        spawn8.push(ready_ms(8, Some(StartMethod::Spawn))?);
    }
    let fork2 = match fork_refused {
        None => format!("{:.2} ms", median(fork2)),
        Some(e) => format!("n/a: {e}"),
    };
    rows.push(Row::at_most(
        format!(
            "2 workers ready, default start (forkserver): ms (spawn {:.2} ms, fork {fork2}), \
             medians of 15",
            median(spawn2)
        ),
        median(server2),
        1.0,
    ));
    rows.push(Row::at_most(
        format!(
            "8 workers ready, default start (forkserver): ms (spawn {:.2} ms), medians of 15",
            median(spawn8)
        ),
        median(server8),
        2.0,
    ));

    // 1000 workers: the build of the pool, until every worker is connected (the pool
    // raises the open-file limit it needs); one verified job on the first pool, untimed.
    let mut thousand = Vec::new();
    for round in 0..3 {
        let began = std::time::Instant::now();
        let mut pool = Pool::builder().workers(1000).build()?;
        thousand.push(began.elapsed().as_secs_f64());
        assert_eq!(
            pool.start_method(),
            StartMethod::ForkServer,
            "the default start"
        );
        assert!(
            pool.pids().iter().all(|&pid| pid != 0),
            "every worker started"
        );
        if round == 0 {
            let options = JobOptions {
                chunk_size: Some(1),
                ..JobOptions::default()
            };
            let run = pool.run_with(&Squares, 1000, &options)?;
            assert!(
                (0..1000u64).zip(run.results()).all(|(i, &r)| r == i * i),
                "a verified answer"
            );
        }
        pool.shutdown();
    }
    rows.push(Row::at_most(
        "1000 workers connected, default start: seconds to build the pool, median of 3".into(),
        median(thousand),
        0.5,
    ));

    // squares 1e7 on 2 workers, the pool's time with its start against rayon's 2 threads
    // in one process running the same kernel on the same chunks into a fresh buffer
    // (page faults on both sides), interleaved.
    let threads = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("rayon's 2 threads");
    let (mut pool_s, mut start_s, mut rayon_s) = (vec![], vec![], vec![]);
    for _ in 0..9 {
        let report = procpool::run(&Squares, 10_000_000, &RunOptions::new(2))?;
        check(&report);
        assert_eq!(
            report.start,
            Some(StartMethod::ForkServer),
            "the default start"
        );
        pool_s.push(report.pool_wall_s);
        start_s.push(report.spawn_s);
        rayon_s.push(rayon_squares(&threads, 10_000_000, report.chunk_size));
    }
    let (pool_s, rayon_s) = (median(pool_s), median(rayon_s));
    rows.push(Row::at_most(
        format!(
            "squares 1e7, 2 workers: pool time with the start ({:.1} ms, start {:.2} ms) / \
             rayon's 2 threads ({:.1} ms), medians of 9",
            pool_s * 1e3,
            median(start_s) * 1e3,
            rayon_s * 1e3
        ),
        pool_s / rayon_s,
        1.10,
    ));

    // A CPU-bound job where the start used to show: each run's own speedup (its baseline
    // right after its pool), the median of 5.
    let mut speedups = Vec::new();
    for _ in 0..5 {
        let report = procpool::run(&Hash { rounds: 50 }, 200_000, &RunOptions::new(2))?;
        check(&report);
        speedups.push(report.speedup.unwrap_or(f64::NAN));
    }
    rows.push(Row::at_least(
        "hash 200000 --rounds 50, 2 workers: speedup over one process, median of 5".into(),
        median(speedups),
        1.95,
    ));

    // The tutorial's benchmark, as `procpool --workers W sleep 10000 --ms 100` runs it: the
    // baseline is known without running it (n × 100 ms), the output is verified. The row
    // is the pool's wall time (start to last result); the whole run is in the label.
    for (workers, goal) in [(200, 5.10), (1000, 1.2)] {
        let began = std::time::Instant::now();
        let report = procpool::run(
            &procpool::workload::Sleep { ms: 100.0 },
            10_000,
            &RunOptions::new(workers),
        )?;
        let whole = began.elapsed().as_secs_f64();
        check(&report);
        rows.push(Row::at_most(
            format!(
                "sleep 10000 --ms 100 on {workers} workers: pool seconds (ideal {:.1}; start \
                 {:.3} s, the whole run {whole:.2} s)",
                10_000.0 * 0.1 / workers as f64,
                report.spawn_s
            ),
            report.pool_wall_s,
            goal,
        ));
    }

    // A replacement in a process with threads.
    let (replace_us, threads) = replacement_us()?;
    rows.push(Row::at_most(
        format!(
            "a killed worker's replacement, 2-worker pool in a process of {threads} threads: \
             ms from its death to its replacement started (job trace), median of 21"
        ),
        replace_us / 1e3,
        0.5,
    ));
    Ok(())
}

/// Builds a pool of `workers` started by `start` (`None`: the default, the fork server),
/// and gives its start time (`Pool::spawn_time`, the report's `spawn_s`) in ms.
fn ready_ms(workers: usize, start: Option<StartMethod>) -> Result<f64, procpool::Error> {
    let builder = Pool::builder().workers(workers);
    let pool = match start {
        Some(start) => {
            if start == StartMethod::Fork {
                single_threaded();
            }
            builder.start(start).build()?
        }
        None => builder.build()?,
    };
    assert_eq!(
        pool.start_method(),
        start.unwrap_or(StartMethod::ForkServer),
        "the pool started its workers as asked"
    );
    let ms = pool.spawn_time().as_secs_f64() * 1e3;
    pool.shutdown();
    Ok(ms)
}

/// Waits (up to 200 ms) for the threads of the pools before to end.
fn single_threaded() {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(200);
    while threads() != 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// This process's threads.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

/// Seconds for rayon's `threads` to compute `squares n` into a fresh buffer in chunks of
/// `chunk` elements, with the workload's own kernel; the answer is checked after the time.
fn rayon_squares(threads: &rayon::ThreadPool, n: u64, chunk: u64) -> f64 {
    use rayon::prelude::*;
    let began = std::time::Instant::now();
    let mut out = vec![0u64; n as usize];
    threads.install(|| {
        out.par_chunks_mut(chunk as usize)
            .enumerate()
            .for_each(|(k, part)| {
                let lo = k as u64 * chunk;
                Squares.kernel(lo..lo + part.len() as u64, part);
            });
    });
    let seconds = began.elapsed().as_secs_f64();
    assert!(
        out.iter()
            .enumerate()
            .all(|(i, &r)| r == (i as u64).wrapping_mul(i as u64)),
        "rayon's answer"
    );
    seconds
}

/// A 2-worker pool (the default start) in a process with a thread of its own besides the
/// pool's: 21 jobs of `squares 200000` in chunks of 1000, each killing the worker that
/// runs chunk 50. Returns the median µs from the death to its replacement started, as the
/// job's trace records them (the dead process already reaped; the replacement forked and
/// its channels in hand), and the thread count.
fn replacement_us() -> Result<(f64, usize), procpool::Error> {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let helper = std::thread::spawn(move || {
        let _ = stopped.recv();
    });
    let mut pool = Pool::builder().workers(2).build()?;
    assert_eq!(
        pool.start_method(),
        StartMethod::ForkServer,
        "the default start"
    );
    let options = JobOptions {
        chunk_size: Some(1000),
        faults: vec!["kill@50".parse().expect("a fault")],
        trace: true,
        ..JobOptions::default()
    };
    let running = threads();
    assert!(running > 1, "a process with threads");
    let mut us = Vec::with_capacity(21);
    for _ in 0..21 {
        let run = pool.run_with(&Squares, 200_000, &options)?;
        assert!(
            (0..200_000u64).zip(run.results()).all(|(i, &r)| r == i * i),
            "a verified answer"
        );
        let stats = run.stats();
        assert_eq!(stats.deaths.len(), 1, "one worker killed");
        assert!(stats.deaths[0].replaced_by.is_some(), "and replaced");
        let trace = stats.trace.as_ref().expect("asked for");
        let at = |kind: TraceEventKind| {
            trace
                .events
                .iter()
                .find(|e| e.kind == kind)
                .map(|e| e.at_ns)
                .expect("the death and the restart are in the trace")
        };
        us.push(at(TraceEventKind::Restart).saturating_sub(at(TraceEventKind::Death)) as f64 / 1e3);
    }
    drop(stop);
    let _ = helper.join();
    Ok((median(us), running))
}

/// `A · X` as a `Workload`: element `i` is row `i / vectors` of `A` times vector
/// `i % vectors` of `X`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MatVec {
    cols: usize,
    vectors: usize,
    matrix: Input<f64>,
    x: Input<f64>,
}

impl Workload for MatVec {
    const NAME: &'static str = "bench-matvec";
    type Output = f64;
    fn kernel(&self, range: std::ops::Range<u64>, out: &mut [f64]) {
        for (slot, i) in out.iter_mut().zip(range) {
            *slot = matvec_element(&self.matrix, &self.x, self.cols, self.vectors, i);
        }
    }
}

fn matvec_element(matrix: &[f64], x: &[f64], cols: usize, vectors: usize, i: u64) -> f64 {
    let (r, k) = (i as usize / vectors, i as usize % vectors);
    let row = &matrix[r * cols..(r + 1) * cols];
    row.iter()
        .zip(&x[k * cols..(k + 1) * cols])
        .map(|(a, b)| a * b)
        .sum()
}

/// The same matvec as a [`Closure`] and as a [`Workload`] on one 2-worker pool, 9 times
/// each alternately (after one of each, discarded), every answer checked against one
/// process: the ratio of the medians of the pool time (closure / workload), and both in
/// seconds.
fn closure_cost() -> Result<(f64, f64, f64), procpool::Error> {
    let (rows, cols, vectors) = (2000usize, 2000usize, 16usize);
    let matrix: Vec<f64> = (0..rows * cols).map(|i| (i % 13) as f64 - 6.0).collect();
    let x: Vec<f64> = (0..vectors * cols).map(|j| 1.0 / (j + 1) as f64).collect();
    let (matrix, x) = (Input::new(&matrix)?, Input::new(&x)?);
    let n = (rows * vectors) as u64;
    let workload = MatVec {
        cols,
        vectors,
        matrix: matrix.clone(),
        x: x.clone(),
    };
    let closure = Closure::map((matrix, x, cols, vectors), |(a, x, cols, vectors), i| {
        matvec_element(a, x, *cols, *vectors, i)
    });
    let mut expected = vec![0.0; n as usize];
    workload.kernel(0..n, &mut expected);
    let mut pool = Pool::builder().workers(2).build()?;
    let (mut by_closure, mut by_workload) = (Vec::new(), Vec::new());
    for round in 0..10 {
        let run = pool.run(&closure, n)?;
        assert!(
            run.iter()
                .zip(&expected)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
        let closure_s = run.stats().wall.as_secs_f64();
        drop(run);
        let run = pool.run(&workload, n)?;
        assert!(
            run.iter()
                .zip(&expected)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
        if round > 0 {
            by_closure.push(closure_s);
            by_workload.push(run.stats().wall.as_secs_f64());
        }
    }
    let (closure_s, workload_s) = (median(by_closure), median(by_workload));
    Ok((closure_s / workload_s, closure_s, workload_s))
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}
