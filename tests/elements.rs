//! Any plain-data element across real worker processes: a `#[repr(C)]` struct, `f64`, `i32`
//! and `[f32; 3]` outputs, checked against the same kernel run in this process; and float
//! verification within a workload's `Tolerance`, where workers really compute something
//! else than the parent (they add noise when they are not the parent process).
//!
//! Workers run this test binary through `enable_test_support!`.

use std::ops::Range;

use procpool::bytemuck::{self, Pod, Zeroable};
use procpool::{
    Dispatch, Element, JobOptions, Mode, Pool, Registry, RunOptions, Tolerance, Workload,
};
use serde::{Deserialize, Serialize};
use sha2::Digest;

/// One particle: `repr(C)` with no padding (12 + 4 + 8 bytes, 8-aligned).
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
#[bytemuck(crate = "procpool::bytemuck")]
#[repr(C)]
struct Particle {
    position: [f32; 3],
    id: u32,
    energy: f64,
}

/// Particles on a spiral: every field depends on the index.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Spiral {
    turn: f32,
}

impl Workload for Spiral {
    const NAME: &'static str = "spiral";
    type Output = Particle;
    fn kernel(&self, range: Range<u64>, out: &mut [Particle]) {
        for (slot, i) in out.iter_mut().zip(range) {
            let t = i as f32 * self.turn;
            *slot = Particle {
                position: [t.cos() * t, t.sin() * t, t],
                id: i as u32,
                energy: (i as f64).sqrt() * 0.5,
            };
        }
    }
}

/// `f64` output: a smooth function of the index.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Wave;

impl Workload for Wave {
    const NAME: &'static str = "wave";
    type Output = f64;
    fn kernel(&self, range: Range<u64>, out: &mut [f64]) {
        for (slot, i) in out.iter_mut().zip(range) {
            let x = i as f64 * 1e-3;
            *slot = x.sin() * (-x).exp() + x.ln_1p();
        }
    }
}

/// `i32` output, negative values included.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Signed;

impl Workload for Signed {
    const NAME: &'static str = "signed";
    type Output = i32;
    fn kernel(&self, range: Range<u64>, out: &mut [i32]) {
        for (slot, i) in out.iter_mut().zip(range) {
            *slot = (i as i64 * 7919 % 20_011 - 10_005) as i32;
        }
    }
}

/// `[f32; 3]` output: a point per index.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Points;

impl Workload for Points {
    const NAME: &'static str = "points";
    type Output = [f32; 3];
    fn kernel(&self, range: Range<u64>, out: &mut [[f32; 3]]) {
        for (slot, i) in out.iter_mut().zip(range) {
            let t = i as f32 / 100.0;
            *slot = [t.cos(), t.sin(), -t];
        }
    }
}

/// Two f64 lanes per index; a worker (any process but `parent`) adds `noise` to lane 1, so
/// the pool's output really differs from the single-process run's.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Noisy {
    parent: u32,
    noise: f64,
    tolerance: Option<f64>,
}

impl Noisy {
    fn new(noise: f64, tolerance: Option<f64>) -> Self {
        Noisy {
            parent: std::process::id(),
            noise,
            tolerance,
        }
    }

    /// What a worker computes for index `i`.
    fn in_a_worker(&self, i: u64) -> [f64; 2] {
        let [a, b] = exact(i);
        [a, b + self.noise]
    }
}

/// What the parent computes for index `i`.
fn exact(i: u64) -> [f64; 2] {
    [i as f64 + 0.5, (i as f64).sqrt() + 1.0]
}

impl Workload for Noisy {
    const NAME: &'static str = "noisy";
    type Output = [f64; 2];
    fn kernel(&self, range: Range<u64>, out: &mut [[f64; 2]]) {
        let worker = std::process::id() != self.parent;
        for (slot, i) in out.iter_mut().zip(range) {
            *slot = if worker {
                self.in_a_worker(i)
            } else {
                exact(i)
            };
        }
    }
    fn tolerance(&self) -> Option<Tolerance> {
        self.tolerance.map(|abs| Tolerance::f64().abs(abs))
    }
}

/// Six bytes: no whole number of f32 lanes, with a tolerance that asks for them.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Misfit;

impl Workload for Misfit {
    const NAME: &'static str = "misfit";
    type Output = [u8; 6];
    fn kernel(&self, range: Range<u64>, out: &mut [[u8; 6]]) {
        for (slot, i) in out.iter_mut().zip(range) {
            *slot = [i as u8; 6];
        }
    }
    fn tolerance(&self) -> Option<Tolerance> {
        Some(Tolerance::f32().ulps(2))
    }
}

/// No bytes at all.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Nothing;

impl Workload for Nothing {
    const NAME: &'static str = "nothing";
    type Output = ();
    fn kernel(&self, _: Range<u64>, _: &mut [()]) {}
}

fn registry() -> Registry {
    Registry::builtin()
        .register::<Spiral>()
        .register::<Wave>()
        .register::<Signed>()
        .register::<Points>()
        .register::<Noisy>()
        .register::<Misfit>()
}

procpool::enable_test_support!(registry());

fn pool() -> Pool {
    Pool::builder()
        .workers(2)
        .test_harness()
        .build()
        .expect("two workers through this test binary")
}

fn lab_options(dispatch: Dispatch) -> RunOptions {
    let mut options = RunOptions::new(2);
    options.pool.test_harness = true;
    options.job.dispatch = dispatch;
    options.job.chunk_size = Some(97);
    options
}

/// The workload's output computed in this process, in one call.
fn single<W: Workload>(workload: &W, n: u64) -> Vec<W::Output> {
    let mut out = vec![<W::Output as Zeroable>::zeroed(); n as usize];
    workload.kernel(0..n, &mut out);
    out
}

/// The report's checksum, computed here: the first 16 hex digits of the SHA-256 of the bytes.
fn checksum_of<T: Element>(xs: &[T]) -> String {
    let digest = sha2::Sha256::digest(bytemuck::cast_slice::<T, u8>(xs));
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `workload` on the pool over both dispatch paths and through the lab, and checks
/// every output against the single-process computation, byte for byte.
fn round_trip<W: Workload>(pool: &mut Pool, workload: &W, n: u64)
where
    W::Output: PartialEq,
{
    let expected = single(workload, n);
    for dispatch in [Dispatch::Queue, Dispatch::Channel] {
        let options = JobOptions {
            dispatch,
            chunk_size: Some(61),
            ..Default::default()
        };
        let run = pool.run_with(workload, n, &options).expect("run");
        assert_eq!(run.results().len(), expected.len(), "{}", W::NAME);
        if let Some(i) = (0..expected.len()).find(|&i| run.results()[i] != expected[i]) {
            panic!(
                "{} {dispatch}: element {i} is {:?} from the workers but {:?} here",
                W::NAME,
                run.results()[i],
                expected[i]
            );
        }
        assert_eq!(
            bytemuck::cast_slice::<W::Output, u8>(run.results()),
            bytemuck::cast_slice::<W::Output, u8>(&expected),
            "{} {dispatch}: the bytes",
            W::NAME
        );
        // Computed by the workers, not here.
        assert!(
            run.stats()
                .workers
                .iter()
                .all(|w| w.pid != std::process::id())
        );
        assert_eq!(run.stats().chunks, n.div_ceil(61));

        let mut seen = None;
        let report = procpool::run_inspect(workload, n, &lab_options(dispatch), |out| {
            seen = Some(checksum_of(out));
        })
        .expect("a lab run");
        assert_eq!(report.verified, Some(true), "{} {dispatch}", W::NAME);
        assert_eq!(report.mismatch, None);
        assert_eq!(report.tolerance, None);
        assert_eq!(report.checksum, checksum_of(&expected), "{}", W::NAME);
        assert_eq!(seen.as_ref(), Some(&report.checksum));
    }
}

#[test]
fn a_repr_c_struct_round_trips_through_workers_on_both_dispatch_paths() {
    let mut pool = pool();
    let spiral = Spiral { turn: 0.01 };
    round_trip(&mut pool, &spiral, 5_003);
    // The fields arrived whole, not just some bytes.
    let run = pool.run(&spiral, 100).expect("run");
    let p = run.results()[42];
    assert_eq!(p.id, 42);
    assert_eq!(p.energy, 42f64.sqrt() * 0.5);
    assert_eq!(p.position[2], 42.0 * 0.01f32);
}

#[test]
fn f64_i32_and_f32_array_outputs_round_trip() {
    let mut pool = pool();
    round_trip(&mut pool, &Wave, 10_007);
    round_trip(&mut pool, &Signed, 10_007);
    round_trip(&mut pool, &Points, 3_001);
    let run = pool.run(&Signed, 3).expect("run");
    assert_eq!(run.results(), &[-10_005, 7919 - 10_005, 15_838 - 10_005]);
}

#[test]
fn noise_within_the_tolerance_verifies_and_beyond_it_names_the_index_lane_and_both_values() {
    let n = 2_000;
    for dispatch in [Dispatch::Queue, Dispatch::Channel] {
        let options = lab_options(dispatch);
        // The workers really compute something else: without a tolerance, it is caught.
        let strict = procpool::run(&Noisy::new(1e-12, None), n, &options).expect("run");
        assert_eq!(strict.verified, Some(false), "{dispatch}: the bytes differ");
        let m = strict.mismatch.expect("a mismatch");
        assert_eq!((m.lane, m.difference), (None, None), "{m:?}");

        // Within the tolerance: verified, and the report says within what.
        let close = Noisy::new(1e-12, Some(1e-9));
        let report = procpool::run(&close, n, &options).expect("run");
        assert_eq!(report.verified, Some(true), "{dispatch}: {report:?}");
        assert_eq!(report.tolerance, close.tolerance());
        // The checksum is the pool output's (noise included), not the baseline's.
        let noisy: Vec<[f64; 2]> = (0..n).map(|i| close.in_a_worker(i)).collect();
        assert_eq!(report.checksum, checksum_of(&noisy));
        let text = procpool::report::render_text(&report);
        assert!(
            text.contains("within abs 1e-9 on f64 lanes"),
            "{dispatch}:\n{text}"
        );

        // Beyond it: the first index, the lane, the difference and both values.
        // 2^-10: exact in binary, so the values print as they read.
        let far = Noisy::new(1.0 / 1024.0, Some(1e-9));
        let report = procpool::run(&far, n, &options).expect("run");
        assert_eq!(report.verified, Some(false), "{dispatch}");
        let m = report.mismatch.clone().expect("a mismatch");
        assert_eq!(m.index, 0, "every index came from a worker: {m:?}");
        assert_eq!(m.lane, Some(1), "{m:?}");
        let d = m.difference.expect("a difference");
        assert_eq!(d, 1.0 / 1024.0, "{m:?}");
        assert_eq!(m.baseline, format!("{:?}", exact(0)));
        assert_eq!(m.pool, format!("{:?}", far.in_a_worker(0)));
        assert_eq!(m.pool, "[0.5, 1.0009765625]");

        // The JSON carries both values as strings.
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["mismatch"]["pool"], m.pool.as_str(), "{json}");
        assert_eq!(json["mismatch"]["baseline"], "[0.5, 1.0]", "{json}");
        assert_eq!(json["mismatch"]["lane"], 1, "{json}");
        assert_eq!(json["tolerance"]["lane"], "f64", "{json}");
        // So does the text report.
        let text = procpool::report::render_text(&report);
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with("verified"))
            .expect("a verified line");
        assert!(
            line.contains("element 0 is [0.5, 1.0009765625] in the pool output")
                && line.contains("but [0.5, 1.0] in the single-process run")
                && line.contains("lane 1 differs by 0.0009765625"),
            "{line}"
        );
    }
}

#[test]
fn streamed_output_is_verified_within_the_tolerance_window_by_window() {
    let dir = tempfile::tempdir().unwrap();
    let n = 5_000;
    let mut options = lab_options(Dispatch::Queue);
    options.job.chunk_size = None;
    options.window_bytes = 4096;
    options.output = Some(dir.path().join("close.bin"));
    let close = Noisy::new(1e-12, Some(1e-9));
    let report = procpool::run(&close, n, &options).expect("run");
    assert_eq!(report.verified, Some(true), "{report:?}");
    assert!(report.output.as_ref().is_some_and(|o| o.windows > 1));
    let bytes = std::fs::read(dir.path().join("close.bin")).unwrap();
    let noisy: Vec<[f64; 2]> = (0..n).map(|i| close.in_a_worker(i)).collect();
    assert_eq!(bytes, bytemuck::cast_slice::<_, u8>(&noisy));
    assert_eq!(
        report.checksum,
        checksum_of(&noisy),
        "hashed window by window"
    );

    options.output = Some(dir.path().join("far.bin"));
    let report = procpool::run(&Noisy::new(1e-3, Some(1e-9)), n, &options).expect("run");
    assert_eq!(report.verified, Some(false));
    let m = report.mismatch.expect("a mismatch");
    assert_eq!((m.index, m.lane), (0, Some(1)), "{m:?}");
    assert_eq!(m.baseline, "[0.5, 1.0]");
}

#[test]
fn threads_and_single_modes_verify_float_outputs_too() {
    for mode in [Mode::Threads, Mode::Single] {
        let mut options = lab_options(Dispatch::Queue);
        options.mode = mode;
        let report = procpool::run(&Wave, 10_000, &options).expect("run");
        assert_eq!(report.verified, Some(true), "{mode:?}");
        assert_eq!(report.checksum, checksum_of(&single(&Wave, 10_000)));
        // In this process, the noisy workload adds no noise.
        let noisy = procpool::run(&Noisy::new(1.0, None), 1000, &options).expect("run");
        assert_eq!(noisy.verified, Some(true), "{mode:?}");
    }
}

#[test]
fn a_tolerance_that_does_not_fit_the_element_and_empty_elements_are_refused_up_front() {
    let err = procpool::run(&Misfit, 100, &lab_options(Dispatch::Queue)).unwrap_err();
    assert!(err.is_invalid_input(), "{err:?}");
    let text = format!("{err:#}");
    assert!(
        text.contains("6-byte elements") && text.contains("whole number of lanes"),
        "{text}"
    );
    let err = procpool::run(&Nothing, 100, &lab_options(Dispatch::Queue)).unwrap_err();
    assert!(
        err.is_invalid_input() && err.to_string().contains("zero-sized"),
        "{err:#}"
    );
    let mut pool = pool();
    let err = pool.run(&Nothing, 100).map(|_| ()).unwrap_err();
    assert!(err.to_string().contains("zero-sized"), "{err:#}");
    // The pool is still ready.
    assert_eq!(pool.run(&Signed, 10).expect("run").results().len(), 10);
}
