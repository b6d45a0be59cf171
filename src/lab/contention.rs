//! Whether other processes took the CPUs from the run: each worker's CPU time against the
//! time it spent working, the single-process run's the same way, and the machine's load
//! average and steal time at the run's start and end.
//!
//! A busy machine halves a speedup without any limit of the job's own showing: the workers
//! still compute for as long, but get half a core to do it in. Without these figures the
//! advice would blame memory or the job's shape for what the neighbours did.

use serde::Serialize;

use crate::lab::model::{OsUsage, WorkerStats};

/// A worker's (or the baseline's) CPU share is only read when it worked at least this long
/// (seconds): below it, the clocks' granularity and the process's own start dominate.
pub(crate) const MIN_BUSY_S: f64 = 0.01;

/// What other processes took from the run (the JSON's `contention`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Contention {
    /// Per worker, its CPU seconds over the seconds it spent working (computing, and with
    /// queue dispatch claiming), at most 1.0, a whole core (with channel dispatch the CPU
    /// time covers the messages too, which the working time does not). `None` where
    /// unreadable, or where the worker worked for less than 10 ms.
    pub cpu_share_per_worker: Vec<Option<f64>>,
    /// The mean of the known `cpu_share_per_worker`.
    pub cpu_share_mean: Option<f64>,
    /// The single-process run's CPU seconds over its wall time (last round), when measured.
    pub baseline_cpu_share: Option<f64>,
    /// The 1-minute load average (`/proc/loadavg`) when the run started.
    pub load_start: Option<f64>,
    /// The 1-minute load average when the run ended.
    pub load_end: Option<f64>,
    /// The share of all CPU time between the run's start and end that the hypervisor gave
    /// to other machines (`steal` in `/proc/stat`); `None` where unreadable.
    pub steal_share: Option<f64>,
}

/// The machine's load at one moment: what [`Contention`] compares between a run's start
/// and end.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct LoadSnapshot {
    /// The 1-minute load average.
    pub(crate) load1: Option<f64>,
    /// All CPUs' ticks so far: (steal, total).
    pub(crate) ticks: Option<(u64, u64)>,
}

impl LoadSnapshot {
    /// Reads `/proc/loadavg` and `/proc/stat` now.
    pub(crate) fn now() -> LoadSnapshot {
        let read = |path| std::fs::read_to_string(path).ok();
        LoadSnapshot {
            load1: read("/proc/loadavg").as_deref().and_then(parse_loadavg),
            ticks: read("/proc/stat").as_deref().and_then(parse_stat_ticks),
        }
    }
}

/// The 1-minute load average: the first field of `/proc/loadavg`.
pub(crate) fn parse_loadavg(text: &str) -> Option<f64> {
    let load: f64 = text.split_whitespace().next()?.parse().ok()?;
    (load.is_finite() && load >= 0.0).then_some(load)
}

/// (steal, total) ticks of the `cpu` line of `/proc/stat` (user nice system idle iowait irq
/// softirq steal ...; guest time is already inside user and is not added again).
pub(crate) fn parse_stat_ticks(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let total = fields.iter().try_fold(0u64, |a, &f| a.checked_add(f))?;
    Some((fields.get(7).copied().unwrap_or(0), total))
}

/// `cpu / busy`, at most 1 (a process runs on one core at a time: more CPU than busy time
/// was spent outside what `busy` counts), when `busy` is long enough to read
/// ([`MIN_BUSY_S`]) and both are numbers.
pub(crate) fn share_of(cpu: f64, busy: f64) -> Option<f64> {
    (cpu.is_finite() && busy.is_finite() && cpu >= 0.0 && busy >= MIN_BUSY_S)
        .then(|| (cpu / busy).min(1.0))
}

impl Contention {
    /// The figures of a run: its workers, its single-process run (wall seconds and what the
    /// kernel counted), and the machine's load at its start and end.
    pub(crate) fn measure(
        workers: &[WorkerStats],
        baseline: Option<(f64, OsUsage)>,
        start: LoadSnapshot,
        end: LoadSnapshot,
    ) -> Contention {
        let per_worker: Vec<Option<f64>> = workers
            .iter()
            .map(|w| share_of(w.cpu_s?, w.compute_s + w.dispatch_s))
            .collect();
        let known: Vec<f64> = per_worker.iter().flatten().copied().collect();
        let steal_share = match (start.ticks, end.ticks) {
            (Some((s0, t0)), Some((s1, t1))) if t1 > t0 && s1 >= s0 => {
                Some((s1 - s0) as f64 / (t1 - t0) as f64)
            }
            _ => None,
        };
        Contention {
            cpu_share_mean: (!known.is_empty())
                .then(|| known.iter().sum::<f64>() / known.len() as f64),
            cpu_share_per_worker: per_worker,
            baseline_cpu_share: baseline.and_then(|(wall, os)| share_of(os.cpu_s, wall)),
            load_start: start.load1,
            load_end: end.load1,
            steal_share,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loadavg_and_stat_are_parsed() {
        assert_eq!(parse_loadavg("3.10 2.53 2.64 2/125 27353\n"), Some(3.1));
        assert_eq!(parse_loadavg(""), None);
        assert_eq!(parse_loadavg("x 1 2"), None);
        let stat =
            "cpu  4107160 0 738833 1265940 66136 0 6677 76482 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        assert_eq!(
            parse_stat_ticks(stat),
            Some((76482, 4107160 + 738833 + 1265940 + 66136 + 6677 + 76482))
        );
        // An old kernel without the steal column: none stolen.
        assert_eq!(parse_stat_ticks("cpu 1 2 3 4\n"), Some((0, 10)));
        assert_eq!(parse_stat_ticks("intr 5\n"), None);
        assert_eq!(parse_stat_ticks("cpu 1 x 3\n"), None);
    }

    fn worker(compute_s: f64, dispatch_s: f64, cpu_s: Option<f64>) -> WorkerStats {
        let mut w = WorkerStats::idle(0, 1);
        w.compute_s = compute_s;
        w.dispatch_s = dispatch_s;
        w.cpu_s = cpu_s;
        w
    }

    #[test]
    fn shares_steal_and_load_come_from_the_measurements() {
        let workers = [
            worker(0.375, 0.125, Some(0.25)),
            worker(0.25, 0.0, Some(0.1875)),
            // More CPU than working time (messages outside the kernel): a whole core.
            worker(0.25, 0.0, Some(0.5)),
            // Too short to read, and unreadable.
            worker(0.005, 0.0, Some(0.005)),
            worker(0.3, 0.0, None),
        ];
        let os = OsUsage {
            cpu_s: 0.375,
            minor_faults: 0,
            major_faults: 0,
            voluntary_switches: 0,
            involuntary_switches: 0,
        };
        let c = Contention::measure(
            &workers,
            Some((0.5, os)),
            LoadSnapshot {
                load1: Some(3.1),
                ticks: Some((100, 1000)),
            },
            LoadSnapshot {
                load1: Some(3.4),
                ticks: Some((150, 1200)),
            },
        );
        assert_eq!(
            c.cpu_share_per_worker,
            [Some(0.5), Some(0.75), Some(1.0), None, None]
        );
        assert!((c.cpu_share_mean.unwrap() - 0.75).abs() < 1e-12);
        assert_eq!(c.baseline_cpu_share, Some(0.75));
        assert_eq!((c.load_start, c.load_end), (Some(3.1), Some(3.4)));
        assert_eq!(c.steal_share, Some(0.25));
        // Nothing readable: nothing claimed.
        let c = Contention::measure(&[], None, LoadSnapshot::default(), LoadSnapshot::default());
        assert_eq!(
            (c.cpu_share_mean, c.baseline_cpu_share, c.steal_share),
            (None, None, None)
        );
    }
}
