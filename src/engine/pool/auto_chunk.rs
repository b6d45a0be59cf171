//! `--chunk-size auto`: time the first few small chunks, then choose the chunk length that
//! makes each chunk's compute about [`COMPUTE_OVER_OVERHEAD`] times its messaging cost.
//!
//! Plain data and arithmetic, no processes: the dispatch loop feeds it the probes' times
//! and applies the choice.

use std::time::Duration;

use super::AutoChunk;

/// Chosen chunks aim to compute for this many times their messaging cost.
pub(crate) const COMPUTE_OVER_OVERHEAD: f64 = 20.0;
/// … while every worker still gets at least this many chunks of what remains.
pub(crate) const MIN_CHUNKS_PER_WORKER: u64 = 4;

/// The probing of one job.
#[derive(Debug, Clone)]
pub(crate) struct AutoProbe {
    /// Length of the probe chunks.
    pub(crate) probe_size: u64,
    /// Probe chunks done, and their summed elements, compute and round trip.
    chunks: u64,
    elements: u64,
    compute: Duration,
    rtt: Duration,
    /// Probe chunks to time before choosing.
    needed: u64,
    /// The choice, once made.
    pub(crate) result: Option<AutoChunk>,
    /// The shortest chunk worth choosing, in elements (1 unless set): with the queue, a
    /// page of output, so that two workers never write one cache line or fault one page.
    pub(crate) floor: u64,
    /// What a chunk's overhead is called in the reason ("messaging", "dispatch").
    pub(crate) overhead_name: &'static str,
}

impl AutoProbe {
    /// Probes for a job of `n` elements on `workers` workers, each keeping `inflight`
    /// chunks: about 1/256 of each worker's share per probe (1 to 4096 elements), small
    /// enough to leave most of the work for the chosen size, big enough to time; one probe
    /// for every chunk that is in flight at the start.
    pub(crate) fn new(n: u64, workers: u64, inflight: u64) -> Self {
        AutoProbe {
            probe_size: (n / (workers.max(1) * 256)).clamp(1, 4096),
            chunks: 0,
            elements: 0,
            compute: Duration::ZERO,
            rtt: Duration::ZERO,
            needed: workers.max(1) * inflight.max(1),
            result: None,
            floor: 1,
            overhead_name: "messaging",
        }
    }

    /// Records a probe chunk of `len` elements that computed for `compute` within a round
    /// trip of `rtt`. Returns true when enough probes are in (or `nothing_left`): time to
    /// [`choose`](Self::choose).
    pub(crate) fn record(
        &mut self,
        len: u64,
        compute: Duration,
        rtt: Duration,
        nothing_left: bool,
    ) -> bool {
        self.chunks += 1;
        self.elements += len;
        self.compute += compute;
        self.rtt += rtt;
        self.chunks >= self.needed || nothing_left
    }

    /// Records probes all at once (queue dispatch): `chunks` chunks of `elements` in all,
    /// computing for `compute`, and `overhead` of dispatch between them.
    pub(crate) fn record_totals(
        &mut self,
        chunks: u64,
        elements: u64,
        compute: Duration,
        overhead: Duration,
    ) {
        self.chunks += chunks;
        self.elements += elements;
        self.compute += compute;
        self.rtt += compute + overhead;
    }

    /// Whether a finished chunk of `len` elements is one of the probes still awaited.
    pub(crate) fn awaits(&self, len: u64) -> bool {
        self.result.is_none() && len == self.probe_size
    }

    /// Picks the chunk length from the probes for the `remaining` elements on `workers`
    /// workers, no chunk longer than `boundary` (a streaming window), and stores it.
    pub(crate) fn choose(&mut self, remaining: u64, boundary: u64, workers: usize) -> &AutoChunk {
        let per_element_s = self.compute.as_secs_f64() / self.elements.max(1) as f64;
        let overhead_s =
            (self.rtt.saturating_sub(self.compute)).as_secs_f64() / self.chunks.max(1) as f64;
        // Every worker keeps several chunks, and (streaming) no chunk outgrows a window.
        let cap = (remaining / (MIN_CHUNKS_PER_WORKER * workers.max(1) as u64)).clamp(1, boundary);
        let wanted = if per_element_s > 0.0 {
            (COMPUTE_OVER_OVERHEAD * overhead_s / per_element_s).ceil() as u64
        } else {
            cap
        };
        let floored = wanted.max(self.floor);
        let chosen = floored.clamp(1, cap);
        let name = self.overhead_name;
        let reason = if floored > cap {
            let limit = if cap == boundary {
                "a chunk may not outgrow a streaming window".to_string()
            } else {
                format!("that would leave workers fewer than {MIN_CHUNKS_PER_WORKER} chunks each")
            };
            format!(
                "a chunk should compute ≥ {COMPUTE_OVER_OVERHEAD}× its {:.1} µs {name} cost \
                 ({floored} elements at {:.3} µs each), but {limit}, so {chosen}",
                overhead_s * 1e6,
                per_element_s * 1e6
            )
        } else if floored > wanted {
            format!(
                "{wanted} elements at {:.3} µs each would compute for ≈ \
                 {COMPUTE_OVER_OVERHEAD}× the {:.2} µs a chunk costs in {name}, but a chunk \
                 fills at least a page of output ({chosen} elements), so that no two workers \
                 write one cache line or fault one page",
                per_element_s * 1e6,
                overhead_s * 1e6
            )
        } else {
            format!(
                "{chosen} elements at {:.3} µs each compute for ≈ {COMPUTE_OVER_OVERHEAD}× the \
                 {:.1} µs a chunk costs in {name}",
                per_element_s * 1e6,
                overhead_s * 1e6
            )
        };
        self.result.insert(AutoChunk {
            chosen,
            probe_size: self.probe_size,
            per_element_s,
            overhead_s,
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    /// Probes of 100 elements at `per_element` each, with `overhead` of messaging a chunk.
    fn probed(per_element: Duration, overhead: Duration) -> AutoProbe {
        let mut probe = AutoProbe::new(1_000_000, 2, 2);
        assert_eq!(probe.probe_size, 1953);
        probe.probe_size = 100;
        let compute = per_element * 100;
        let mut ready = false;
        for _ in 0..4 {
            assert!(!ready, "four probes for 2 workers × 2 in flight");
            ready = probe.record(100, compute, compute + overhead, false);
        }
        assert!(ready);
        probe
    }

    #[test]
    fn chunks_compute_twenty_times_their_messaging_cost() {
        // 1 µs an element, 50 µs of messaging a chunk: 1000 elements compute for 20 × 50 µs.
        let mut probe = probed(US, 50 * US);
        let chosen = probe.choose(1_000_000, u64::MAX, 2).clone();
        // 1000, give or take the rounding of the division.
        assert!((1000..=1001).contains(&chosen.chosen), "{chosen:?}");
        assert!((chosen.per_element_s - 1e-6).abs() < 1e-12);
        assert!((chosen.overhead_s - 50e-6).abs() < 1e-12);
        assert!(
            chosen.reason.contains(" elements at 1.000 µs each"),
            "{}",
            chosen.reason
        );
        assert_eq!(probe.result.map(|r| r.chosen), Some(chosen.chosen));
    }

    #[test]
    fn every_worker_keeps_four_chunks_of_what_remains() {
        // Wants 1000 elements a chunk, but 4000 remain for 2 workers: at most 500.
        let mut probe = probed(US, 50 * US);
        let chosen = probe.choose(4000, u64::MAX, 2);
        assert_eq!(chosen.chosen, 500);
        assert!(
            chosen.reason.contains("fewer than 4 chunks each"),
            "{}",
            chosen.reason
        );
    }

    #[test]
    fn no_chunk_outgrows_a_streaming_window() {
        let mut probe = probed(US, 50 * US);
        let chosen = probe.choose(1_000_000, 300, 2);
        assert_eq!(chosen.chosen, 300);
        assert!(
            chosen.reason.contains("streaming window"),
            "{}",
            chosen.reason
        );
    }

    #[test]
    fn free_elements_take_the_largest_chunk_allowed_and_slow_ones_the_smallest() {
        let mut free = probed(Duration::ZERO, 50 * US);
        assert_eq!(
            free.choose(8000, u64::MAX, 2).chosen,
            1000,
            "8000 / (4 × 2)"
        );
        let mut slow = probed(Duration::from_millis(10), 50 * US);
        assert_eq!(slow.choose(8000, u64::MAX, 2).chosen, 1);
    }

    #[test]
    fn only_probe_sized_chunks_count_and_the_last_one_ends_probing() {
        let mut probe = AutoProbe::new(1000, 4, 2);
        assert_eq!(probe.probe_size, 1);
        assert!(probe.awaits(1));
        assert!(!probe.awaits(2));
        assert!(
            probe.record(1, US, 2 * US, true),
            "nothing left: choose now"
        );
        probe.choose(0, u64::MAX, 4);
        assert!(!probe.awaits(1), "chosen: no more probes");
    }

    #[test]
    fn the_queue_never_chooses_less_than_a_page_of_output() {
        // 0.3 µs of dispatch, 0.2 µs an element: 30 elements would do, a page of u64 is 512.
        let mut probe = probed(Duration::from_nanos(200), Duration::from_nanos(300));
        probe.floor = 512;
        probe.overhead_name = "dispatch";
        let chosen = probe.choose(1_000_000, u64::MAX, 2);
        assert_eq!(chosen.chosen, 512);
        assert!(
            chosen.reason.contains("a page of output"),
            "{}",
            chosen.reason
        );
        assert!(chosen.reason.contains("in dispatch"), "{}", chosen.reason);
    }
}
