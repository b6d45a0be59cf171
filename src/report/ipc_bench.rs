//! `procpool ipc-bench` as text: the tables (message round trips, the queue's claims and
//! futex wake-ups, throughput, the start of a worker) and a closing line.

use std::fmt::Write as _;

use crate::lab::ipc_bench::{IpcBenchReport, QueueBench, StartCost, UNPINNED};
use crate::units::seconds_short;

/// Renders the report as tables and a closing line that compares a chunk message's round
/// trip with a claim from the queue, and moving the largest size through each transport.
pub fn render_text(report: &IpcBenchReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "procpool ipc-bench: two processes, ipc-channel and shared memory; {}",
        crate::units::count(report.cores_logical, "logical core")
    );
    if !report.latency.is_empty() {
        let _ = writeln!(s, "  round trip of a small message, µs");
        let _ = writeln!(
            s,
            "    {:<10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "placement", "samples", "p50", "p90", "p99", "max", "mean"
        );
        for l in &report.latency {
            let _ = writeln!(
                s,
                "    {:<10} {:>8} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
                l.placement, l.samples, l.p50_us, l.p90_us, l.p99_us, l.max_us, l.mean_us
            );
        }
    }
    render_queue(&mut s, &report.queue);
    if !report.throughput.is_empty() {
        let _ = writeln!(s, "  one-way throughput, MB/s (1 MB = 10^6 bytes)");
        let _ = writeln!(
            s,
            "    {:<10} {:>9} {:>9} {:>9} {:>9} {:>11}",
            "placement", "size", "messages", "channel", "shm", "shm/channel"
        );
        for t in &report.throughput {
            let _ = writeln!(
                s,
                "    {:<10} {:>9} {:>9} {:>9.1} {:>9.1} {:>10.2}×",
                t.placement,
                crate::units::bytes(t.size_bytes as u128),
                t.messages,
                t.channel_mb_s,
                t.shm_mb_s,
                t.shm_mb_s / t.channel_mb_s
            );
        }
    }
    render_start(&mut s, &report.worker_start);
    // The note is a list joined with "; ": one item per line.
    for (k, item) in report
        .note
        .split("; ")
        .filter(|i| !i.is_empty())
        .enumerate()
    {
        let label = if k == 0 { "note" } else { "" };
        let _ = writeln!(s, "  {label:<5} {item}");
    }
    if let Some(line) = closing_line(report) {
        let _ = writeln!(s, "{line}");
    }
    s
}

/// The time one claim takes in each of `processes` processes claiming `per_s` in all.
fn per_claim(processes: f64, per_s: f64) -> String {
    if per_s > 0.0 && per_s.is_finite() {
        seconds_short(processes / per_s)
    } else {
        "-".to_string()
    }
}

/// The queue's claims (alone and contending) and the futex round trips per placement.
fn render_queue(s: &mut String, q: &QueueBench) {
    let _ = writeln!(
        s,
        "  chunks claimed from the shared-memory queue (--dispatch queue), {} a run",
        q.claims
    );
    let _ = writeln!(
        s,
        "    {:>9} {:>10} {:>11}",
        "processes", "claims/s", "each claim"
    );
    let _ = writeln!(
        s,
        "    {:>9} {:>8.1} M {:>11}",
        1,
        q.solo_claims_per_s / 1e6,
        per_claim(1.0, q.solo_claims_per_s)
    );
    let _ = writeln!(
        s,
        "    {:>9} {:>8.1} M {:>11}  (both together; the peer claimed {:.0}%)",
        2,
        q.contended_claims_per_s / 1e6,
        per_claim(2.0, q.contended_claims_per_s),
        q.peer_share * 100.0
    );
    if !q.futex.is_empty() {
        let _ = writeln!(
            s,
            "  futex wake-up round trip (how the queue wakes a sleeper), µs"
        );
        let _ = writeln!(
            s,
            "    {:<10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7}",
            "placement", "samples", "p50", "p90", "p99", "max", "mean", "slept"
        );
        for f in &q.futex {
            let l = &f.round_trip;
            let _ = writeln!(
                s,
                "    {:<10} {:>8} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>6.0}%",
                l.placement,
                l.samples,
                l.p50_us,
                l.p90_us,
                l.p99_us,
                l.max_us,
                l.mean_us,
                f.slept_share * 100.0
            );
        }
    }
}

/// The start of one worker by each method; "n/a" and the reason for a method not measured.
fn render_start(s: &mut String, starts: &[StartCost]) {
    if starts.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "  start of one worker: a 1-worker pool built until ready, medians"
    );
    let _ = writeln!(
        s,
        "    {:<10} {:>8} {:>10} {:>10} {:>10}",
        "method", "samples", "build", "build p90", "start"
    );
    let us = |x: Option<f64>| x.map_or("-".to_string(), |x| crate::units::seconds(x / 1e6));
    for c in starts {
        match &c.skipped {
            Some(why) => {
                let _ = writeln!(s, "    {:<10} {:>8}   n/a: {why}", c.method.to_string(), 0);
            }
            None => {
                let _ = writeln!(
                    s,
                    "    {:<10} {:>8} {:>10} {:>10} {:>10}",
                    c.method.to_string(),
                    c.samples,
                    us(c.build_p50_us),
                    us(c.build_p90_us),
                    us(c.start_p50_us)
                );
            }
        }
    }
}

/// "a chunk message costs ~15 µs round trip, a claim from the queue ~40 ns; 1 MiB through
/// the channel takes X, through shared memory Y: send ranges, not data".
fn closing_line(report: &IpcBenchReport) -> Option<String> {
    let claim = report.queue.contended_claims_per_s;
    let claim = (claim > 0.0 && claim.is_finite()).then(|| {
        format!(
            ", a claim from the queue ~{} with 2 processes claiming",
            per_claim(2.0, claim)
        )
    });
    let rtt = report
        .latency
        .iter()
        .find(|l| l.placement == UNPINNED)
        .or(report.latency.first())
        .map(|l| {
            format!(
                "a chunk message costs ~{:.0} µs round trip{}",
                l.p50_us,
                claim.unwrap_or_default()
            )
        });
    let largest = report
        .throughput
        .iter()
        .filter(|t| t.placement == UNPINNED)
        .max_by_key(|t| t.size_bytes)
        .map(|t| {
            let per_message = |mb_s: f64| t.size_bytes as f64 / (mb_s * 1e6);
            let (channel, shm) = (per_message(t.channel_mb_s), per_message(t.shm_mb_s));
            let verdict = if shm < channel {
                "send ranges, not data"
            } else {
                "here the channel kept up with shared memory"
            };
            format!(
                "{} through the channel takes {}, through shared memory {}: {verdict}",
                crate::units::bytes(t.size_bytes as u128),
                crate::units::seconds(channel),
                crate::units::seconds(shm)
            )
        });
    match (rtt, largest) {
        (Some(a), Some(b)) => Some(format!("{a}; {b}")),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::ipc_bench::{FutexLatency, Latency, Throughput};
    use crate::lab::model::StartMethod;

    fn synthetic() -> IpcBenchReport {
        IpcBenchReport {
            meta: crate::lab::Meta::sample(),
            cores_logical: 2,
            latency: vec![
                Latency {
                    placement: "unpinned".into(),
                    samples: 20000,
                    p50_us: 14.8,
                    p90_us: 17.25,
                    p99_us: 31.0,
                    max_us: 412.5,
                    mean_us: 15.6,
                },
                Latency {
                    placement: "same-cpu".into(),
                    samples: 20000,
                    p50_us: 6.9,
                    p90_us: 7.4,
                    p99_us: 12.0,
                    max_us: 98.0,
                    mean_us: 7.1,
                },
            ],
            queue: QueueBench {
                claims: 1_000_000,
                solo_claims_per_s: 40e6,
                contended_claims_per_s: 25e6,
                peer_share: 0.475,
                futex: vec![FutexLatency {
                    round_trip: Latency {
                        placement: "unpinned".into(),
                        samples: 5000,
                        p50_us: 3.1,
                        p90_us: 4.0,
                        p99_us: 9.5,
                        max_us: 60.25,
                        mean_us: 3.4,
                    },
                    slept_share: 0.5,
                }],
            },
            throughput: vec![
                Throughput {
                    placement: "unpinned".into(),
                    size_bytes: 64,
                    channel_mb_s: 20.0,
                    shm_mb_s: 8.0,
                    messages: 65536,
                },
                Throughput {
                    placement: "unpinned".into(),
                    size_bytes: 1_048_576,
                    channel_mb_s: 1048.576,
                    shm_mb_s: 5242.88,
                    messages: 16,
                },
            ],
            worker_start: vec![
                StartCost {
                    method: StartMethod::Spawn,
                    samples: 21,
                    build_p50_us: Some(4512.25),
                    build_p90_us: Some(6020.0),
                    start_p50_us: Some(4100.5),
                    skipped: None,
                },
                StartCost {
                    method: StartMethod::Fork,
                    samples: 21,
                    build_p50_us: Some(710.0),
                    build_p90_us: Some(905.5),
                    start_p50_us: Some(380.25),
                    skipped: None,
                },
                StartCost {
                    method: StartMethod::ForkServer,
                    samples: 0,
                    build_p50_us: None,
                    build_p90_us: None,
                    start_p50_us: None,
                    skipped: Some("this program has no fork server".into()),
                },
            ],
            note: "cross-cpu skipped: this process may run on one CPU only; throughput: \
                   unpinned"
                .into(),
        }
    }

    #[test]
    fn render_text_snapshot() {
        let expected = "\
procpool ipc-bench: two processes, ipc-channel and shared memory; 2 logical cores
  round trip of a small message, µs
    placement   samples      p50      p90      p99      max     mean
    unpinned      20000     14.8     17.2     31.0    412.5     15.6
    same-cpu      20000      6.9      7.4     12.0     98.0      7.1
  chunks claimed from the shared-memory queue (--dispatch queue), 1000000 a run
    processes   claims/s  each claim
            1     40.0 M       25 ns
            2     25.0 M       80 ns  (both together; the peer claimed 48%)
  futex wake-up round trip (how the queue wakes a sleeper), µs
    placement   samples      p50      p90      p99      max     mean   slept
    unpinned       5000      3.1      4.0      9.5     60.2      3.4     50%
  one-way throughput, MB/s (1 MB = 10^6 bytes)
    placement       size  messages   channel       shm shm/channel
    unpinned        64 B     65536      20.0       8.0       0.40×
    unpinned       1 MiB        16    1048.6    5242.9       5.00×
  start of one worker: a 1-worker pool built until ready, medians
    method      samples      build  build p90      start
    spawn            21    4.51 ms    6.02 ms    4.10 ms
    fork             21   710.0 µs   905.5 µs   380.2 µs
    forkserver        0   n/a: this program has no fork server
  note  cross-cpu skipped: this process may run on one CPU only
        throughput: unpinned
a chunk message costs ~15 µs round trip, a claim from the queue ~80 ns with 2 processes claiming; 1 MiB through the channel takes 1.00 ms, through shared memory 200.0 µs: send ranges, not data
";
        assert_eq!(render_text(&synthetic()), expected);
    }

    #[test]
    fn closing_line_says_so_when_the_channel_keeps_up() {
        let mut r = synthetic();
        r.throughput[1].shm_mb_s = 500.0;
        let text = render_text(&r);
        assert!(
            text.ends_with("here the channel kept up with shared memory\n"),
            "{text}"
        );
        r.latency.clear();
        assert!(
            render_text(&r)
                .lines()
                .last()
                .unwrap()
                .starts_with("1 MiB through the channel"),
        );
    }
}
