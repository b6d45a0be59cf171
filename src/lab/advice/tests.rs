//! Every rule on the measurements that should and should not make it fire.

use super::*;

/// A CPU-bound run that scales: 2 workers on 2 cores, 95 % efficiency, cheap start,
/// chunks 1250× their messaging cost, balanced, little output.
fn healthy() -> Observations {
    Observations {
        workers: 2,
        cores_logical: 2,
        n: 1_000_000,
        chunks: 8,
        chunk_size: 125_000,
        pool_wall_s: 0.105,
        spawn_s: 0.005,
        baseline_wall_s: Some(0.2),
        threads_wall_s: Some(0.101),
        compute_s: vec![0.099, 0.1],
        mean_chunk_compute_s: 0.025,
        dispatch_per_chunk_s: 0.000_02,
        dispatch: Some(Dispatch::Queue),
        output_bytes: 8_000_000,
        schedule: "dynamic".to_string(),
        io_bound_hint: false,
        pool_minor_faults: None,
        baseline_minor_faults: None,
        param_bytes: 0,
        cpu_share: Some(0.99),
        ..Observations::default()
    }
}

fn limits(obs: &Observations) -> Vec<Limit> {
    advise(obs).iter().map(|a| a.limit).collect()
}

fn fires(obs: &Observations, limit: Limit) -> bool {
    limits(obs).contains(&limit)
}

#[test]
fn healthy_run_scales_and_fires_no_limit() {
    let advice = advise(&healthy());
    assert_eq!(advice.len(), 1);
    assert_eq!(advice[0].limit, Limit::Scaling);
    assert_eq!(
        advice[0].text,
        "Efficiency 95%: the run scales; more cores would help."
    );
    let m = Measured::new(&healthy());
    assert!(start_dominated(&healthy(), &m, false).is_none());
    assert!(ipc_bound(&healthy(), &m).is_none());
    assert!(oversubscribed(&healthy(), &m).is_none());
    assert!(imbalanced(&healthy(), &m).is_none());
    assert!(memory_bound(&healthy(), &m).is_none());
    assert!(io_bound(&healthy(), &m).is_none());
}

#[test]
fn scaling_suggests_the_idle_cores() {
    let obs = Observations {
        cores_logical: 4,
        ..healthy()
    };
    assert_eq!(
        advise(&obs)[0].text,
        "Efficiency 95%: the run scales; more workers would help: try --workers 4."
    );
}

#[test]
fn scaling_without_baseline_says_what_it_can() {
    let obs = Observations {
        baseline_wall_s: None,
        ..healthy()
    };
    let advice = advise(&obs);
    assert_eq!(advice.len(), 1);
    assert_eq!(advice[0].limit, Limit::Scaling);
    assert_eq!(
        advice[0].text,
        "No single-process baseline, so the speedup is unknown; starting took 5% of the \
         run, each chunk computed 1250× its queue dispatch cost and the slowest worker \
         computed 1% more than the mean: nothing measured limited the run."
    );
    // The fact names the dispatch that ran.
    let obs = Observations {
        dispatch: Some(Dispatch::Channel),
        ..obs
    };
    assert!(
        advise(&obs)[0]
            .text
            .contains("each chunk computed 1250× its channel messaging cost"),
        "{:?}",
        advise(&obs)
    );
}

#[test]
fn low_efficiency_with_no_limit_says_so() {
    let obs = Observations {
        baseline_wall_s: Some(0.12),
        ..healthy()
    };
    let advice = advise(&obs);
    assert_eq!(limits(&obs), [Limit::Scaling]);
    assert!(
        advice[0]
            .text
            .starts_with("Efficiency 57% with no single limit")
    );
    assert!(advice[0].text.contains("--mode threads"));
}

#[test]
fn start_dominated_fires_on_a_short_job() {
    let obs = Observations {
        workers: 8,
        cores_logical: 8,
        pool_wall_s: 0.020,
        spawn_s: 0.012,
        baseline_wall_s: Some(0.03),
        compute_s: vec![0.001; 8],
        mean_chunk_compute_s: 0.000_25,
        dispatch_per_chunk_s: 0.000_01,
        threads_wall_s: None,
        ..healthy()
    };
    let advice = advise(&obs);
    assert_eq!(advice[0].limit, Limit::StartDominated);
    assert_eq!(
        advice[0].text,
        "Starting 8 workers took 12 ms of the 20 ms run: the job is too short for \
         processes to pay off; give it more work (larger n) or reuse a Pool across jobs."
    );
}

#[test]
fn start_longer_than_the_whole_job_alone_is_start_dominated() {
    // `hash 200 --rounds 1`: one process needs 2 ms (unoptimized), starting 2 workers 1 ms
    // and sending and collecting the job the rest of a 3.5 ms run: starting is under 30 %
    // of it, but the pool's fixed costs are longer than the whole job alone.
    let obs = Observations {
        n: 200,
        chunks: 8,
        chunk_size: 25,
        pool_wall_s: 0.0035,
        spawn_s: 0.001,
        baseline_wall_s: Some(0.002),
        compute_s: vec![0.000_01, 0.000_01],
        mean_chunk_compute_s: 0.000_002,
        dispatch_per_chunk_s: 0.000_000_1,
        output_bytes: 1_600,
        ..healthy()
    };
    let advice = advise(&obs);
    assert_eq!(advice[0].limit, Limit::StartDominated, "{advice:?}");
    assert_eq!(
        advice[0].text,
        "Starting 2 workers and handing them the job took 3.5 ms of the 3.5 ms run \
         (starting alone 1 ms), longer than one process took for the whole job (2 ms): the \
         job is too short for processes to pay off; give it more work (larger n) or reuse a \
         Pool across jobs."
    );
    // A job longer than the pool's fixed costs is not.
    let longer = Observations {
        baseline_wall_s: Some(0.004),
        ..obs.clone()
    };
    assert!(!fires(&longer, Limit::StartDominated));
    // With a per-chunk cost, the time outside compute is the chunks': only starting itself
    // is compared with the job (here 1 ms against 2 ms: silent; against 20 µs: said).
    let per_chunk = Observations {
        dispatch_per_chunk_s: 0.000_001,
        ..obs.clone()
    };
    assert_eq!(limits(&per_chunk), [Limit::IpcBound]);
    let per_chunk = Observations {
        baseline_wall_s: Some(0.000_02),
        ..per_chunk
    };
    // Starting (29 % of the run) costs more than the chunks' 4 µs of claims: said first.
    assert_eq!(limits(&per_chunk), [Limit::StartDominated, Limit::IpcBound]);
    assert!(advise(&per_chunk)[0].text.starts_with(
        "Starting 2 workers took 1 ms of the 3.5 ms run, longer than one \
                          process took for the whole job (20 µs)"
    ));
}

#[test]
fn waiting_workers_are_not_called_busy_beside_the_speedup() {
    let obs = Observations {
        io_bound_hint: true,
        cpu_share: Some(0.01),
        baseline_cpu_share: Some(0.0),
        ..healthy()
    };
    assert!(caveats(&obs, &rounds(&[0.1]), Some(1.8)).is_empty());
}

#[test]
fn start_below_threshold_does_not_fire() {
    let obs = Observations {
        pool_wall_s: 0.1,
        spawn_s: 0.029,
        ..healthy()
    };
    assert!(!fires(&obs, Limit::StartDominated));
}

#[test]
fn ipc_bound_fires_and_suggests_a_chunk_size() {
    let obs = Observations {
        workers: 8,
        cores_logical: 8,
        n: 10_000_000,
        chunks: 25_000,
        chunk_size: 400,
        pool_wall_s: 0.5,
        spawn_s: 0.01,
        baseline_wall_s: Some(0.1),
        threads_wall_s: None,
        compute_s: vec![0.01; 8],
        mean_chunk_compute_s: 3e-6,
        dispatch_per_chunk_s: 15e-6,
        ..healthy()
    };
    let advice = advise(&obs);
    assert_eq!(advice[0].limit, Limit::IpcBound);
    assert_eq!(
        advice[0].text,
        "Each chunk computed for 3 µs but its queue dispatch (claim + bookkeeping) cost \
         15 µs: the chunks are too small even for the queue. Try --chunk-size 40000 or \
         --chunk-size auto."
    );
}

/// Tiny chunks over the channels: 5 µs of compute, 10 µs of messages each (the shape of
/// `squares 1e6 --chunk-size 1000 --dispatch channel` on 2 workers).
fn channel_tiny_chunks() -> Observations {
    Observations {
        n: 1_000_000,
        chunks: 1_000,
        chunk_size: 1_000,
        pool_wall_s: 0.015,
        spawn_s: 0.001,
        baseline_wall_s: Some(0.005),
        threads_wall_s: None,
        compute_s: vec![0.0027, 0.0028],
        mean_chunk_compute_s: 5e-6,
        dispatch_per_chunk_s: 10e-6,
        dispatch: Some(Dispatch::Channel),
        ..healthy()
    }
}

#[test]
fn channel_dispatch_that_costs_much_suggests_the_queue() {
    let obs = channel_tiny_chunks();
    let advice = advise(&obs);
    assert_eq!(advice[0].limit, Limit::IpcBound);
    // 1000 × 20 × 10 / 5 = 40 000, under the cap 10^6 / 8 = 125 000.
    assert_eq!(
        advice[0].text,
        "Each chunk computed for 5 µs but cost 10 µs of channel messaging (200% of its \
         compute): a message out and a Done back per chunk. Try --dispatch queue, where \
         workers claim chunks from shared memory with no message each, or --chunk-size \
         40000."
    );
    let m = Measured::new(&obs);
    assert!(channel_dispatch(&obs, &m).is_some());
    // The same numbers under the queue get the queue's advice, not the channel's.
    let queue = Observations {
        dispatch: Some(Dispatch::Queue),
        ..obs.clone()
    };
    let advice = advise(&queue);
    assert_eq!(advice[0].limit, Limit::IpcBound);
    assert!(advice[0].text.contains("queue dispatch"), "{advice:?}");
    assert!(!advice[0].text.contains("--dispatch"), "{advice:?}");
}

#[test]
fn channel_dispatch_names_the_queue_even_when_chunks_cannot_grow() {
    // Already 4 chunks per worker: only the dispatch can change.
    let obs = Observations {
        n: 8_000,
        chunks: 8,
        ..channel_tiny_chunks()
    };
    let text = &advise(&obs)[0].text;
    assert!(text.contains("Try --dispatch queue"), "{text}");
    assert!(!text.contains("--chunk-size"), "{text}");
}

#[test]
fn channel_dispatch_fires_above_a_tenth_of_compute() {
    // 10 % exactly: not yet.
    let obs = Observations {
        mean_chunk_compute_s: 100e-6,
        dispatch_per_chunk_s: 10e-6,
        ..channel_tiny_chunks()
    };
    let m = Measured::new(&obs);
    assert!(channel_dispatch(&obs, &m).is_none());
    assert!(!fires(&obs, Limit::IpcBound));
    // 11 %: the queue is worth a try.
    let obs = Observations {
        dispatch_per_chunk_s: 11e-6,
        ..obs
    };
    let m = Measured::new(&obs);
    let advice = channel_dispatch(&obs, &m).expect("fires").advice;
    assert!(
        advice
            .text
            .contains("cost 11 µs of channel messaging (11% of its compute)"),
        "{}",
        advice.text
    );
    assert!(advice.text.contains("--dispatch queue"), "{}", advice.text);
    // Nothing measured, nothing said.
    let obs = Observations {
        dispatch_per_chunk_s: 0.0,
        ..obs
    };
    assert!(channel_dispatch(&obs, &Measured::new(&obs)).is_none());
}

#[test]
fn channel_dispatch_is_not_blamed_for_shared_cores() {
    let obs = Observations {
        workers: 4,
        compute_s: vec![0.0014; 4],
        ..channel_tiny_chunks()
    };
    assert!(fires(&obs, Limit::Oversubscribed));
    assert!(!fires(&obs, Limit::IpcBound), "{:?}", advise(&obs));
}

#[test]
fn ipc_bound_on_a_small_job_asks_for_more_work() {
    // Already 4 chunks per worker: chunks cannot grow.
    let obs = Observations {
        n: 8_000,
        chunk_size: 1_000,
        mean_chunk_compute_s: 1e-5,
        dispatch_per_chunk_s: 2e-5,
        ..healthy()
    };
    let advice = advise(&obs);
    assert_eq!(advice[0].limit, Limit::IpcBound);
    assert!(advice[0].text.contains("Chunks of 1000 cannot grow"));
    assert!(!advice[0].text.contains("--chunk-size"));
}

#[test]
fn ipc_does_not_fire_when_compute_is_ten_times_messaging() {
    let obs = Observations {
        mean_chunk_compute_s: 1.5e-4,
        dispatch_per_chunk_s: 1e-5,
        ..healthy()
    };
    assert!(!fires(&obs, Limit::IpcBound));
    let obs = Observations {
        mean_chunk_compute_s: 0.9e-4,
        ..obs
    };
    assert!(fires(&obs, Limit::IpcBound));
}

#[test]
fn suggested_chunk_size_arithmetic() {
    // 400 × 20 × 15 / 3 = 40 000, under the cap 10^7 / 32 = 312 500.
    assert_eq!(
        suggested_chunk_size(400, 3e-6, 15e-6, 10_000_000, 8),
        40_000
    );
    // Rounded: 7 × 20 × 1 / 3 = 46.67 → 47.
    assert_eq!(suggested_chunk_size(7, 3.0, 1.0, 1_000_000, 1), 47);
    // Capped so each of 8 workers keeps 4 chunks: 10^6 / 32 = 31 250.
    assert_eq!(
        suggested_chunk_size(10_000, 1e-6, 1e-5, 1_000_000, 8),
        31_250
    );
    // Never below 1, even when compute dwarfs messaging.
    assert_eq!(suggested_chunk_size(1, 1.0, 1e-9, 1_000_000, 2), 1);
    // The cap is at least 1 for tiny jobs.
    assert_eq!(suggested_chunk_size(1, 1e-6, 1e-5, 3, 8), 1);
    // No measurable compute: as large as the cap allows.
    assert_eq!(suggested_chunk_size(10, 0.0, 1e-5, 4_000, 2), 500);
    // Zero workers counts as one.
    assert_eq!(suggested_chunk_size(10, 1e-6, 1e-5, 4_000, 0), 1_000);
}

#[test]
fn oversubscribed_fires_for_cpu_bound_work() {
    let obs = Observations {
        workers: 8,
        compute_s: vec![0.05; 8],
        ..healthy()
    };
    let advice = advise(&obs);
    assert_eq!(advice[0].limit, Limit::Oversubscribed);
    // 1.90× of a 2× ceiling: fewer workers would not be faster, so no --workers.
    assert_eq!(
        advice[0].text,
        "8 workers share 2 cores: at most 2× is possible, and this run got 1.90× of it: the \
         cores set the limit, and fewer workers would not be faster (more workers than cores \
         cost memory and start time here, not speed)."
    );
    // Below the ceiling, the advice suggests the worker count.
    let slow = Observations {
        workers: 8,
        compute_s: vec![0.05; 8],
        pool_wall_s: 0.15,
        ..healthy()
    };
    let advice = advise(&slow);
    assert_eq!(advice[0].limit, Limit::Oversubscribed);
    assert!(
        advice[0].text.ends_with("; use --workers 2."),
        "{}",
        advice[0].text
    );
}

#[test]
fn oversubscribed_readme_run() {
    // The README's squares run: 8 workers on 2 cores, 1.17×.
    let obs = Observations {
        workers: 8,
        cores_logical: 2,
        n: 10_000_000,
        chunks: 32,
        chunk_size: 312_500,
        pool_wall_s: 0.041_73,
        spawn_s: 0.006_95,
        baseline_wall_s: Some(0.048_90),
        threads_wall_s: None,
        compute_s: vec![
            0.005_56, 0.029_32, 0.023_16, 0.003_42, 0.027_28, 0.027_98, 0.022_91, 0.006_98,
        ],
        mean_chunk_compute_s: 0.004_58,
        dispatch_per_chunk_s: 0.000_05,
        // The README's run predates the queue: chunks went over the channels.
        dispatch: Some(Dispatch::Channel),
        output_bytes: 80_000_000,
        schedule: "dynamic".to_string(),
        io_bound_hint: false,
        pool_minor_faults: None,
        baseline_minor_faults: None,
        param_bytes: 0,
        ..Observations::default()
    };
    let advice = advise(&obs);
    assert_eq!(advice.len(), 1, "{advice:?}");
    assert_eq!(advice[0].limit, Limit::Oversubscribed);
    assert!(advice[0].text.contains("(this run got 1.17×)"));

    // Round trips that include waiting for a core are not messaging: no IPC verdict.
    let waited = Observations {
        dispatch_per_chunk_s: 0.003,
        mean_chunk_compute_s: 0.003,
        ..obs
    };
    let advice = advise(&waited);
    assert!(
        advice.iter().all(|a| a.limit != Limit::IpcBound),
        "{advice:?}"
    );
}

#[test]
fn io_bound_run_is_never_called_oversubscribed() {
    let obs = Observations {
        workers: 16,
        cores_logical: 2,
        baseline_wall_s: Some(0.105 * 16.0 * 0.3),
        compute_s: vec![0.1; 16],
        io_bound_hint: true,
        pool_minor_faults: None,
        baseline_minor_faults: None,
        ..healthy()
    };
    assert!(!fires(&obs, Limit::Oversubscribed));
    for efficiency in [0.1, 0.5, 0.95] {
        let obs = Observations {
            baseline_wall_s: Some(0.105 * 16.0 * efficiency),
            ..obs.clone()
        };
        assert!(!fires(&obs, Limit::Oversubscribed));
        let obs = Observations {
            baseline_wall_s: None,
            ..obs
        };
        assert!(!fires(&obs, Limit::Oversubscribed));
    }
}

#[test]
fn io_bound_fires_when_speedup_is_near_workers() {
    let obs = Observations {
        workers: 8,
        cores_logical: 2,
        pool_wall_s: 1.0,
        spawn_s: 0.01,
        baseline_wall_s: Some(7.6),
        threads_wall_s: None,
        compute_s: vec![0.98; 8],
        mean_chunk_compute_s: 0.25,
        io_bound_hint: true,
        pool_minor_faults: None,
        baseline_minor_faults: None,
        ..healthy()
    };
    let advice = advise(&obs);
    assert_eq!(advice.len(), 1);
    assert_eq!(advice[0].limit, Limit::IoBound);
    assert_eq!(
        advice[0].text,
        "The workers mostly wait: 8 workers gave 7.60× on 2 cores (efficiency 95%), so \
         more workers than cores help here (the tutorials' threads-or-async case); try \
         --workers 16."
    );
    // Far from 8×: not the I/O verdict.
    let slow = Observations {
        baseline_wall_s: Some(2.0),
        ..obs.clone()
    };
    assert!(!fires(&slow, Limit::IoBound));
    // Without a baseline the hint alone decides.
    let blind = Observations {
        baseline_wall_s: None,
        ..obs
    };
    assert_eq!(limits(&blind), [Limit::IoBound]);
    assert!(
        advise(&blind)[0]
            .text
            .starts_with("The workers mostly wait rather than compute, so")
    );
}

#[test]
fn io_bound_comes_after_what_cost_time() {
    let obs = Observations {
        workers: 8,
        cores_logical: 2,
        pool_wall_s: 1.0,
        spawn_s: 0.01,
        baseline_wall_s: Some(7.6),
        threads_wall_s: None,
        compute_s: vec![0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.98],
        io_bound_hint: true,
        pool_minor_faults: None,
        baseline_minor_faults: None,
        ..healthy()
    };
    assert_eq!(limits(&obs), [Limit::Imbalanced, Limit::IoBound]);
}

#[test]
fn imbalanced_static_suggests_dynamic() {
    let obs = Observations {
        pool_wall_s: 0.2,
        baseline_wall_s: Some(0.2),
        compute_s: vec![0.05, 0.19],
        schedule: "static".to_string(),
        ..healthy()
    };
    let advice = advise(&obs);
    assert_eq!(advice[0].limit, Limit::Imbalanced);
    assert_eq!(
        advice[0].text,
        "Worker 1 computed for 190 ms, 70 ms (58%) more than the mean of 120 ms, more than \
         starting and dispatch cost together (5.1 ms): on average a worker sat idle 70 ms \
         of the 200 ms run waiting for it. The static schedule fixes each worker's share up \
         front; try --schedule dynamic."
    );
}

#[test]
fn imbalanced_dynamic_suggests_smaller_chunks() {
    for schedule in ["dynamic", "guided"] {
        let obs = Observations {
            pool_wall_s: 0.2,
            baseline_wall_s: Some(0.2),
            compute_s: vec![0.19, 0.05],
            schedule: schedule.to_string(),
            ..healthy()
        };
        let advice = advise(&obs);
        assert_eq!(advice[0].limit, Limit::Imbalanced);
        assert!(advice[0].text.starts_with("Worker 0 computed for 190 ms"));
        assert!(
            advice[0]
                .text
                .ends_with("Chunks of 125000 are too coarse to even out; try --chunk-size 62500.")
        );
    }
}

#[test]
fn imbalance_that_costs_little_does_not_fire() {
    // 1.6× the mean, but the gap is 3 % of the wall time.
    let obs = Observations {
        pool_wall_s: 1.0,
        baseline_wall_s: Some(1.9),
        compute_s: vec![0.04, 0.08, 0.04, 0.04],
        workers: 4,
        cores_logical: 4,
        ..healthy()
    };
    assert!(!fires(&obs, Limit::Imbalanced));
    // Above the other overheads, but the gap is 5 % of the wall time.
    let obs = Observations {
        compute_s: vec![0.95, 1.05],
        workers: 2,
        cores_logical: 2,
        ..obs
    };
    assert!(!fires(&obs, Limit::Imbalanced));
    // 15 % of the wall time and 1.2× the mean, but starting cost more (250 ms).
    let obs = Observations {
        spawn_s: 0.25,
        compute_s: vec![0.6, 0.9],
        ..obs
    };
    assert!(!fires(&obs, Limit::Imbalanced));
}

/// `procpool --workers 2 --schedule static primes 3000000` on this machine: the later
/// primes cost more, so the worker given the upper half computed 21 % more than the mean.
fn static_primes() -> Observations {
    Observations {
        workers: 2,
        cores_logical: 2,
        n: 3_000_000,
        chunks: 2,
        chunk_size: 1_500_000,
        pool_wall_s: 0.375,
        spawn_s: 0.020,
        baseline_wall_s: Some(0.382),
        threads_wall_s: None,
        compute_s: vec![0.2315, 0.3532],
        mean_chunk_compute_s: 0.2924,
        dispatch_per_chunk_s: 0.000_001,
        dispatch: Some(Dispatch::Queue),
        output_bytes: 3_000_000,
        schedule: "static".to_string(),
        io_bound_hint: false,
        pool_minor_faults: None,
        baseline_minor_faults: None,
        param_bytes: 0,
        cpu_share: Some(0.99),
        ..Observations::default()
    }
}

#[test]
fn imbalance_above_the_other_overheads_is_named_below_one_and_a_half() {
    let obs = static_primes();
    let advice = advise(&obs);
    assert_eq!(advice[0].limit, Limit::Imbalanced, "{advice:?}");
    assert_eq!(
        advice[0].text,
        "Worker 1 computed for 353 ms, 61 ms (21%) more than the mean of 292 ms, more than \
         starting and dispatch cost together (20 ms): on average a worker sat idle 61 ms of \
         the 375 ms run waiting for it. The static schedule fixes each worker's share up \
         front; try --schedule dynamic."
    );
    assert!(!limits(&obs).contains(&Limit::Scaling));
}

#[test]
fn imbalance_when_already_dynamic_suggests_smaller_chunks() {
    let obs = Observations {
        schedule: "dynamic".to_string(),
        chunks: 4,
        chunk_size: 750_000,
        ..static_primes()
    };
    let advice = advise(&obs);
    assert_eq!(advice[0].limit, Limit::Imbalanced);
    assert!(
        advice[0]
            .text
            .ends_with("Chunks of 750000 are too coarse to even out; try --chunk-size 375000."),
        "{}",
        advice[0].text
    );
}

#[test]
fn imbalance_below_the_other_overheads_is_not_named() {
    // The same 61 ms gap, but starting took 80 ms.
    let obs = Observations {
        spawn_s: 0.080,
        pool_wall_s: 0.435,
        ..static_primes()
    };
    assert!(!fires(&obs, Limit::Imbalanced));
}

/// Two processes writing 80 MB of squares: 1.6 GB/s, each slowed by the other.
fn memory_heavy() -> Observations {
    Observations {
        workers: 2,
        cores_logical: 2,
        n: 10_000_000,
        chunks: 8,
        chunk_size: 1_250_000,
        pool_wall_s: 0.045,
        spawn_s: 0.002,
        baseline_wall_s: Some(0.049),
        threads_wall_s: Some(0.042),
        compute_s: vec![0.041, 0.042],
        mean_chunk_compute_s: 0.010,
        dispatch_per_chunk_s: 0.000_03,
        dispatch: Some(Dispatch::Queue),
        output_bytes: 80_000_000,
        schedule: "dynamic".to_string(),
        io_bound_hint: false,
        pool_minor_faults: None,
        baseline_minor_faults: None,
        param_bytes: 0,
        cpu_share: Some(0.99),
        ..Observations::default()
    }
}

#[test]
fn memory_bound_fires_when_workers_slow_each_other() {
    let advice = advise(&memory_heavy());
    assert_eq!(advice[0].limit, Limit::MemoryBound);
    assert_eq!(
        advice[0].text,
        "The 2 workers computed for 83 ms in total where one process needed 49 ms, \
         writing 1.6 GB/s of results in chunks of 9.5 MiB, and threads took 42 ms, no faster \
         than processes: page faults and memory bandwidth set the speed, not the cores, so more cores won't help; write \
         less, or compute more per byte."
    );
    // Without a threads measurement the other two conditions decide.
    let obs = Observations {
        threads_wall_s: None,
        ..memory_heavy()
    };
    assert!(
        advise(&obs)[0]
            .text
            .contains("writing 1.6 GB/s of results in chunks of 9.5 MiB: page faults")
    );
}

#[test]
fn memory_bound_names_the_page_faults_per_page_and_their_cost() {
    // 80 MB of results is 19531 pages of 4 KiB; the workers faulted 1.6 times per page
    // (shmem), the single process about once.
    let obs = Observations {
        pool_minor_faults: Some(31_250),
        baseline_minor_faults: Some(19_600),
        ..memory_heavy()
    };
    let advice = advise(&obs);
    assert_eq!(advice[0].limit, Limit::MemoryBound);
    assert!(
        advice[0].text.ends_with(
            "write less, or compute more per byte. The workers took 31250 page faults (1.6 \
             per 4 KiB page of results), one process 19600 (1): about 2.7 µs of compute per \
             fault in the pool against 2.5 µs alone. Try --huge-pages: one fault per 2 MiB \
             instead of per 4 KiB; it needs 40 huge pages reserved (as root: echo 40 > \
             /proc/sys/vm/nr_hugepages)."
        ),
        "{}",
        advice[0].text
    );
    // Unknown or zero counts: no fault sentence.
    for (pool, single) in [
        (None, Some(19_600)),
        (Some(0), Some(19_600)),
        (Some(1), None),
    ] {
        let obs = Observations {
            pool_minor_faults: pool,
            baseline_minor_faults: single,
            ..memory_heavy()
        };
        assert!(advise(&obs)[0].text.ends_with("compute more per byte."));
    }
}

#[test]
fn memory_bound_needs_every_condition() {
    // Threads clearly faster than processes: processes' own cost, not memory.
    let obs = Observations {
        threads_wall_s: Some(0.02),
        ..memory_heavy()
    };
    assert!(!fires(&obs, Limit::MemoryBound));
    // Little output: the slowdown is not memory's.
    let obs = Observations {
        output_bytes: 10_000_000,
        ..memory_heavy()
    };
    assert!(!fires(&obs, Limit::MemoryBound));
    // Summed compute close to the baseline: nobody slowed anybody down.
    let obs = Observations {
        compute_s: vec![0.03, 0.031],
        ..memory_heavy()
    };
    assert!(!fires(&obs, Limit::MemoryBound));
    // No baseline: nothing to compare with.
    let obs = Observations {
        baseline_wall_s: None,
        ..memory_heavy()
    };
    assert!(!fires(&obs, Limit::MemoryBound));
}

#[test]
fn memory_bound_is_not_blamed_for_shared_cores() {
    // 8 workers on 2 cores: the summed kernel time is 4× inflated by waiting for a core.
    let obs = Observations {
        workers: 8,
        compute_s: vec![0.025; 8],
        threads_wall_s: None,
        ..memory_heavy()
    };
    assert_eq!(limits(&obs), [Limit::Oversubscribed]);
}

#[test]
fn at_most_two_and_most_important_first() {
    // Start-up, IPC, shared cores and memory all fire here.
    let obs = Observations {
        workers: 4,
        cores_logical: 2,
        n: 10_000_000,
        chunk_size: 100,
        pool_wall_s: 0.1,
        spawn_s: 0.04,
        baseline_wall_s: Some(0.05),
        threads_wall_s: None,
        compute_s: vec![0.04; 4],
        mean_chunk_compute_s: 1e-6,
        dispatch_per_chunk_s: 4e-6,
        output_bytes: 200_000_000,
        schedule: "static".to_string(),
        io_bound_hint: false,
        pool_minor_faults: None,
        baseline_minor_faults: None,
        param_bytes: 0,
        chunks: 100_000,
        dispatch: Some(Dispatch::Queue),
        ..Observations::default()
    };
    let m = Measured::new(&obs);
    assert!(start_dominated(&obs, &m, false).is_some());
    assert!(ipc_bound(&obs, &m).is_some());
    assert!(oversubscribed(&obs, &m).is_some());
    assert!(short_chunks(&obs, &m).is_some());
    // Shared cores explain 1 - 2/4 = 50 %, start 40 %, short chunks 1 - 0.05 / (0.16 ×
    // 2/4) = 37.5 %. IPC would explain 0.6 × 4/5 = 48 %, but with workers waiting for cores a
    // round trip is not messaging, so it is not said.
    assert_eq!(limits(&obs), [Limit::Oversubscribed, Limit::StartDominated]);
}

#[test]
fn always_at_least_one_even_from_nothing() {
    let empty = Observations::default();
    let advice = advise(&empty);
    assert_eq!(advice.len(), 1);
    assert_eq!(advice[0].limit, Limit::Scaling);
    assert!(!advice[0].text.contains("NaN") && !advice[0].text.contains("inf"));

    let broken = Observations {
        pool_wall_s: f64::NAN,
        spawn_s: f64::INFINITY,
        baseline_wall_s: Some(-1.0),
        threads_wall_s: Some(f64::NAN),
        compute_s: vec![f64::NAN, 1.0],
        mean_chunk_compute_s: f64::NAN,
        dispatch_per_chunk_s: -1.0,
        ..healthy()
    };
    let advice = advise(&broken);
    assert!(!advice.is_empty() && advice.len() <= MAX_ADVICE);
    for a in &advice {
        assert!(
            !a.text.contains("NaN") && !a.text.contains("inf"),
            "{}",
            a.text
        );
    }
}

#[test]
fn limits_serialize_in_kebab_case() {
    let a = Advice {
        limit: Limit::StartDominated,
        text: "t".to_string(),
    };
    assert_eq!(
        serde_json::to_string(&a).unwrap(),
        r#"{"limit":"start-dominated","text":"t"}"#
    );
    assert_eq!(
        serde_json::to_string(&Limit::IpcBound).unwrap(),
        r#""ipc-bound""#
    );
}

#[test]
fn durations_read_well() {
    assert_eq!(seconds_short(3e-6), "3 µs");
    assert_eq!(seconds_short(0.006_9), "6.9 ms");
    assert_eq!(seconds_short(0.004_5), "4.5 ms");
    assert_eq!(seconds_short(0.012), "12 ms");
    assert_eq!(seconds_short(0.9999), "1 s");
    assert_eq!(seconds_short(1.26), "1.3 s");
    assert_eq!(seconds_short(4e-7), "400 ns");
    assert_eq!(seconds_short(0.0), "0 ns");
}

#[test]
fn large_parameters_name_input_and_param_first() {
    let small = Observations {
        param_bytes: LARGE_PARAMS_BYTES,
        ..healthy()
    };
    assert!(advise(&small).iter().all(|a| a.limit != Limit::LargeParams));
    let large = Observations {
        param_bytes: 4 << 20,
        ..healthy()
    };
    let advice = advise(&large);
    assert_eq!(advice[0].limit, Limit::LargeParams, "{advice:?}");
    let text = &advice[0].text;
    assert!(text.contains("4.0 MiB") || text.contains("4 MiB"), "{text}");
    assert!(
        text.contains("procpool::Input") && text.contains("procpool::Param"),
        "{text}"
    );
    assert_eq!(text.matches(". ").count(), 0, "one sentence: {text}");
}

// ---- evidence, not elimination: each rule on its own evidence and silent on others' ----

/// `collatz 1e6` on 2 workers of a 2-core machine while other processes ran (load 3-5):
/// 1.1×, the workers' CPU time about half their computing time.
fn busy_collatz() -> Observations {
    Observations {
        n: 1_000_000,
        chunks: 8,
        chunk_size: 125_000,
        pool_wall_s: 0.36,
        spawn_s: 0.002,
        baseline_wall_s: Some(0.4),
        threads_wall_s: None,
        compute_s: vec![0.35, 0.34],
        mean_chunk_compute_s: 0.086,
        dispatch_per_chunk_s: 2e-6,
        output_bytes: 8_000_000,
        cpu_share: Some(0.55),
        baseline_cpu_share: Some(0.93),
        load: (Some(3.1), Some(3.4)),
        steal_share: Some(0.001),
        ..healthy()
    }
}

#[test]
fn a_busy_machine_is_said_first_with_its_figures() {
    let advice = advise(&busy_collatz());
    assert_eq!(advice[0].limit, Limit::Contended, "{advice:?}");
    assert_eq!(
        advice[0].text,
        "The workers got 0.55 of a core each while they computed: other processes used the \
         CPUs (load 3.1 at the start, 3.4 at the end); run again on a quiet machine or with \
         fewer workers (--workers 1)."
    );
    // Not "no single limit standing out", and nothing the busy machine explains.
    assert_eq!(limits(&busy_collatz()), [Limit::Contended]);
    // Steal time and a slowed baseline are named when they are large enough to matter.
    let obs = Observations {
        steal_share: Some(0.12),
        baseline_cpu_share: Some(0.6),
        load: (Some(3.1), None),
        ..busy_collatz()
    };
    let text = &advise(&obs)[0].text;
    assert!(
        text.contains(
            "(load 3.1, 12% of all CPU time stolen by the hypervisor); the \
             single-process run got 0.60 of a core"
        ),
        "{text}"
    );
}

#[test]
fn contention_stays_silent_without_its_evidence() {
    // A whole core each: not contended, whatever the efficiency.
    for obs in [
        healthy(),
        memory_heavy(),
        channel_tiny_chunks(),
        static_primes(),
    ] {
        assert!(!fires(&obs, Limit::Contended), "{obs:?}");
    }
    // Off the CPU by blocking, not by preemption: the workers' own waiting.
    let obs = Observations {
        switches: Some((40, 3)),
        ..busy_collatz()
    };
    assert!(!fires(&obs, Limit::Contended));
    let obs = Observations {
        switches: Some((0, 33)),
        ..busy_collatz()
    };
    assert!(fires(&obs, Limit::Contended));
    // Unreadable CPU time: nothing claimed.
    let obs = Observations {
        cpu_share: None,
        ..busy_collatz()
    };
    assert!(!fires(&obs, Limit::Contended));
    // Waiting workloads use little CPU on purpose.
    let obs = Observations {
        io_bound_hint: true,
        ..busy_collatz()
    };
    assert!(!fires(&obs, Limit::Contended));
    // 8 workers on 2 cores get a quarter of a core each by their own doing: oversubscribed,
    // not contended; below 80 % of that quarter, both.
    let obs = Observations {
        workers: 8,
        compute_s: vec![0.09; 8],
        cpu_share: Some(0.24),
        ..busy_collatz()
    };
    assert_eq!(limits(&obs), [Limit::Oversubscribed]);
    let obs = Observations {
        cpu_share: Some(0.1),
        ..obs
    };
    assert_eq!(limits(&obs), [Limit::Contended, Limit::Oversubscribed]);
}

#[test]
fn contention_silences_the_rules_whose_evidence_it_distorts() {
    // Memory: compute inflated by waiting for a core is not memory.
    let obs = Observations {
        cpu_share: Some(0.5),
        ..memory_heavy()
    };
    assert_eq!(limits(&obs), [Limit::Contended]);
    // Imbalance: one worker given less CPU is not uneven work.
    let obs = Observations {
        cpu_share: Some(0.5),
        ..static_primes()
    };
    assert_eq!(limits(&obs), [Limit::Contended]);
}

/// `--chunk-size 1000 squares 1e7` on 2 workers: 10,000 chunks of 8 KB on the queue, 0.69×
/// (the issue's first misfire: called memory-bound).
fn squares_short_chunks() -> Observations {
    Observations {
        n: 10_000_000,
        chunks: 10_000,
        chunk_size: 1_000,
        pool_wall_s: 0.133,
        spawn_s: 0.001,
        baseline_wall_s: Some(0.092),
        threads_wall_s: None,
        compute_s: vec![0.1226, 0.1235],
        mean_chunk_compute_s: 24.5e-6,
        dispatch_per_chunk_s: 0.36e-6,
        output_bytes: 80_000_000,
        pool_minor_faults: Some(19_808),
        baseline_minor_faults: Some(19_532),
        ..healthy()
    }
}

#[test]
fn short_chunks_on_the_queue_are_not_called_memory_bound() {
    let obs = squares_short_chunks();
    assert_eq!(limits(&obs), [Limit::ShortChunks]);
    // 1000 × ⌈1 MiB / 8000 B⌉ = 132 000 elements, under the cap 10^7 / 8.
    assert_eq!(
        advise(&obs)[0].text,
        "Each chunk wrote 7.8 KiB of results (2 pages of 4 KiB), and the 2 workers computed \
         for 246 ms in total where one process needed 92 ms (2.67×): in chunks this short, \
         workers fault neighbouring pages of one shared region and claim a chunk every few \
         pages. Try --chunk-size 132000 (about 1 MiB of results a chunk)."
    );
    let m = Measured::new(&obs);
    assert!(memory_bound(&obs, &m).is_none());
}

#[test]
fn short_chunks_stay_silent_without_their_evidence() {
    let silent = |obs: &Observations| {
        let m = Measured::new(obs);
        short_chunks(obs, &m).is_none()
    };
    // Long chunks (memory's evidence).
    assert!(silent(&memory_heavy()));
    // Short chunks whose elements cost what they cost alone (collatz in chunks of 1000).
    assert!(silent(&Observations {
        compute_s: vec![0.046, 0.047],
        ..squares_short_chunks()
    }));
    // The channels: their messaging is ipc-bound's evidence.
    assert!(silent(&Observations {
        dispatch: Some(Dispatch::Channel),
        ..squares_short_chunks()
    }));
    // Chunks that cannot grow while every worker keeps four.
    assert!(silent(&Observations {
        n: 80_000,
        chunks: 8,
        chunk_size: 10_000,
        output_bytes: 640_000,
        ..squares_short_chunks()
    }));
    // No measured baseline to compare with.
    assert!(silent(&Observations {
        baseline_estimated: true,
        ..squares_short_chunks()
    }));
    for obs in [healthy(), busy_collatz(), channel_tiny_chunks()] {
        assert!(!fires(&obs, Limit::ShortChunks), "{obs:?}");
    }
}

#[test]
fn a_per_chunk_cost_is_not_called_memory_bound() {
    // `--chunk-size 1 spin 100000 --us 0` (the second misfire): 800 KB written, chunks of
    // 166 ns against 229 ns of claiming.
    let obs = Observations {
        n: 100_000,
        chunks: 100_000,
        chunk_size: 1,
        pool_wall_s: 0.035,
        spawn_s: 0.0013,
        baseline_wall_s: Some(0.0004),
        compute_s: vec![0.0083, 0.0083],
        mean_chunk_compute_s: 166e-9,
        dispatch_per_chunk_s: 229e-9,
        output_bytes: 800_000,
        ..healthy()
    };
    // The per-chunk cost, then the start (longer than the whole job alone): what the issue
    // named as the limits, and no memory paragraph.
    assert_eq!(limits(&obs), [Limit::IpcBound, Limit::StartDominated]);
    // `--dispatch channel --chunk-size 1 squares 200000` (the third): messaging first,
    // and no memory paragraph after it.
    let obs = Observations {
        n: 200_000,
        chunks: 200_000,
        chunk_size: 1,
        pool_wall_s: 2.93,
        spawn_s: 0.0014,
        baseline_wall_s: Some(0.0015),
        compute_s: vec![0.0266, 0.0267],
        mean_chunk_compute_s: 267e-9,
        dispatch_per_chunk_s: 29e-6,
        dispatch: Some(Dispatch::Channel),
        output_bytes: 1_600_000,
        ..healthy()
    };
    assert_eq!(limits(&obs), [Limit::IpcBound]);
    assert!(advise(&obs)[0].text.contains("Try --dispatch queue"));
}

#[test]
fn memory_bound_stays_silent_without_its_evidence() {
    // Few faults per page (huge pages): faults do not set the speed.
    let obs = Observations {
        pool_minor_faults: Some(47),
        baseline_minor_faults: Some(19_532),
        ..memory_heavy()
    };
    assert!(!fires(&obs, Limit::MemoryBound));
    // The same inflation in short chunks is short-chunks' evidence.
    assert!(!fires(&squares_short_chunks(), Limit::MemoryBound));
    for obs in [
        healthy(),
        busy_collatz(),
        channel_tiny_chunks(),
        static_primes(),
    ] {
        assert!(!fires(&obs, Limit::MemoryBound), "{obs:?}");
    }
}

#[test]
fn memory_bound_offers_huge_pages_with_the_pages_to_reserve() {
    let obs = Observations {
        pool_minor_faults: Some(19_544),
        baseline_minor_faults: Some(19_532),
        huge_page_bytes: Some(2 << 20),
        huge_pages_free: Some(3),
        ..memory_heavy()
    };
    let text = &advise(&obs)[0].text;
    // 80 MB over 2 MiB pages is 38.1: 39 pages, and one for the control area.
    assert!(
        text.ends_with(
            "Try --huge-pages: one fault per 2 MiB instead of per 4 KiB; it needs 40 huge \
             pages reserved, 3 free now (as root: echo 40 > /proc/sys/vm/nr_hugepages)."
        ),
        "{text}"
    );
    // Already on huge pages: not offered again.
    let obs = Observations {
        huge_pages: true,
        ..obs
    };
    assert!(!advise(&obs)[0].text.contains("--huge-pages"));
}

// ---- caveats beside the speedup ----

fn rounds(pool_s: &[f64]) -> Rounds {
    Rounds {
        pool_s: pool_s.to_vec(),
        baseline_s: Vec::new(),
        warmup: 0,
    }
}

#[test]
fn a_run_like_for_like_has_no_caveat() {
    assert!(caveats(&healthy(), &rounds(&[0.105]), Some(1.9)).is_empty());
}

#[test]
fn huge_pages_on_one_side_explain_a_superlinear_speedup() {
    // `--huge-pages squares 1e7`: 2.46×, efficiency 123 %; 47 faults against 19,532.
    let obs = Observations {
        huge_pages: true,
        pool_minor_faults: Some(47),
        baseline_minor_faults: Some(19_532),
        ..memory_heavy()
    };
    let said = caveats(&obs, &rounds(&[0.02]), Some(2.46));
    assert_eq!(said.len(), 2, "{said:?}");
    assert!(said[0].starts_with("not like for like: the pool's results were in huge pages"));
    assert!(said[0].contains("(47 page faults against 19532)"));
    assert_eq!(
        said[1],
        "efficiency 123% is above 100% for the reason above, not from the workers alone"
    );
}

#[test]
fn a_cold_first_round_and_an_estimated_baseline_are_said() {
    // The first round after reserving huge pages: 57 ms, the next ones 14.5 ms.
    let said = caveats(
        &healthy(),
        &rounds(&[0.057, 0.0145, 0.0145, 0.0146, 0.0144]),
        Some(1.5),
    );
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(
        said[0].starts_with("the first round's pool took 57 ms, the others 14 ms (median)"),
        "{said:?}"
    );
    assert!(said[0].ends_with("--warmup 1 leaves it out"));
    // Warmed up, or rounds alike: nothing to say.
    let warmed = Rounds {
        warmup: 1,
        ..rounds(&[0.057, 0.0145, 0.0145])
    };
    assert!(caveats(&healthy(), &warmed, Some(1.5)).is_empty());
    assert!(caveats(&healthy(), &rounds(&[0.02, 0.0145, 0.0145]), Some(1.5)).is_empty());
    // `sleep`'s baseline is n × ms, known without running it.
    let obs = Observations {
        baseline_estimated: true,
        ..healthy()
    };
    let said = caveats(&obs, &rounds(&[0.1]), Some(1.9));
    assert_eq!(said.len(), 1);
    assert!(said[0].starts_with("the single-process time is estimated"));
}

#[test]
fn efficiency_above_100_percent_is_always_explained() {
    // Fewer faults in the pool.
    let obs = Observations {
        pool_minor_faults: Some(5_000),
        baseline_minor_faults: Some(19_532),
        ..healthy()
    };
    let said = caveats(&obs, &rounds(&[0.09]), Some(2.2));
    assert_eq!(said.len(), 1);
    assert!(said[0].starts_with("efficiency 110% is above 100%: the workers took 5000 page"));
    // Cheaper compute in the pool (caches).
    let obs = Observations {
        compute_s: vec![0.08, 0.08],
        ..healthy()
    };
    let said = caveats(&obs, &rounds(&[0.09]), Some(2.2));
    assert!(said[0].contains(
        "the workers computed for 160 ms in total where one process \
         needed 200 ms"
    ));
    // Nothing measured: noise, said as such.
    let said = caveats(&healthy(), &rounds(&[0.09]), Some(2.2));
    assert_eq!(
        said,
        [
            "efficiency 110% is above 100%: nothing measured made the pool's work cheaper, so it \
          is noise between the two runs (1 round); --repeat 5 shows the spread"
        ]
    );
    // A slowed single process explains it, and the busy pool is said too.
    let obs = Observations {
        baseline_cpu_share: Some(0.5),
        cpu_share: Some(0.6),
        ..healthy()
    };
    let said = caveats(&obs, &rounds(&[0.09]), Some(2.2));
    assert_eq!(said.len(), 3, "{said:?}");
    assert!(said[0].starts_with("the workers got 0.60 of a core each"));
    assert!(said[1].starts_with("the single-process run got 0.50 of a core"));
    assert!(said[2].ends_with("for the reason above, not from the workers alone"));
}
