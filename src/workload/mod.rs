//! Workloads: what a pool computes, and the registry workers use to find it.
//!
//! A workload is a value (its parameters) plus a kernel that fills `out[i - start]` for every
//! `i` in a range. The parent sends the workload's name and its serialized value to each
//! worker once per job; chunk messages then carry only ranges. Built-in workloads are
//! registered exactly like a user's own.

mod build_id;
pub mod catalogue;
pub mod collatz;
pub mod hash;
pub mod mandelbrot;
pub(crate) mod params_format;
pub mod primes;
pub mod sleep;
pub mod spin;
mod squares;
mod tolerance;

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use collatz::Collatz;
pub use hash::Hash;
pub use mandelbrot::Mandelbrot;
pub use primes::Primes;
pub use sleep::Sleep;
pub use spin::Spin;
pub use squares::Squares;
pub use tolerance::{Lane, Tolerance};

/// A type a workload can write into shared memory: any plain old data with a fixed size.
///
/// Every [`bytemuck::Pod`] type that is also `Debug` is an element, with nothing to
/// implement: integers, floats, fixed arrays of them (`[f32; 3]`), and your own
/// `#[repr(C)]` structs deriving `Pod` and `Zeroable`. The pool copies elements as bytes;
/// verification compares them as bytes (or lane by lane within a
/// [`Workload::tolerance`]); mismatch reports show them with `Debug`.
///
/// A struct of your own derives the traits through procpool's re-export of `bytemuck`, so
/// your crate needs no dependency of its own on it. The `#[bytemuck(crate = ...)]`
/// attribute tells the derive where to find it; without it, the generated code names a
/// crate `bytemuck` and fails with "cannot find `bytemuck` in the crate root" (unless your
/// crate depends on `bytemuck` itself, which works too):
///
/// ```
/// use std::ops::Range;
/// use procpool::bytemuck::{Pod, Zeroable};
/// use procpool::Workload;
/// use serde::{Deserialize, Serialize};
///
/// /// One particle: no padding (three f32 and one u32 are 16 bytes), `Copy`, `repr(C)`.
/// #[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
/// #[bytemuck(crate = "procpool::bytemuck")]
/// #[repr(C)]
/// struct Particle {
///     position: [f32; 3],
///     id: u32,
/// }
///
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// struct Spiral;
///
/// impl Workload for Spiral {
///     const NAME: &'static str = "spiral";
///     type Output = Particle;
///     fn kernel(&self, range: Range<u64>, out: &mut [Particle]) {
///         for (slot, i) in out.iter_mut().zip(range) {
///             let t = i as f32 * 0.1;
///             *slot = Particle { position: [t.cos(), t.sin(), t], id: i as u32 };
///         }
///     }
/// }
///
/// let mut out = [Particle::zeroed(); 2];
/// Spiral.kernel(0..2, &mut out);
/// assert_eq!(out[1].id, 1);
/// ```
///
/// The derive refuses a struct with padding or with fields that are not `Pod` themselves
/// (a `bool`, a reference, a `Vec`): those are not plain bytes.
pub trait Element: bytemuck::Pod + fmt::Debug + Send + Sync {}

impl<T: bytemuck::Pod + fmt::Debug + Send + Sync> Element for T {}

// f64 results for `examples/matvec.rs` until every Pod type is an `Element`: the checksum
// adds the bits.
/// A computation the pool can spread over processes.
///
/// The value itself is the workload's parameters. A pool encodes them (postcard's format)
/// once per job and sends them to each worker only when they changed; encoded parameters
/// above 64 KiB travel in one sealed memfd every worker maps, not through each worker's
/// channel.
///
/// **Large parameters.** A plain field is encoded again on every job to see whether it
/// changed, and decoded by every worker when it did. A plain `Vec<u8>`, `Vec<f32>` or
/// `Vec<f64>` is decoded in one copy (about 0.6 ms per MiB in each worker, where element
/// by element took 3–4 ms; no `#[serde(with = "serde_bytes")]` needed) and encoded at a
/// fraction of a millisecond per MiB; other vectors, maps and strings of structs go
/// element by element. Still:
/// - read-only plain data (`Vec<f64>`, a table of `u32`s) belongs in an [`crate::Input`]:
///   never encoded, the same pages in every process;
/// - any other large value in a [`crate::Param`]: recognised by an identity, so an
///   unchanged one costs nothing, and a worker decodes it once per change;
/// - [`crate::JobStats::param_bytes`] says how large the parameters are, and the report's
///   advice (`large-params`) names `Input` and `Param` above 1 MiB.
///
/// [`Workload::kernel`] must be deterministic: the pool's output is checked byte for
/// byte against a single-process run of the same kernel (or, for floating-point output,
/// within a declared [`Workload::tolerance`]).
pub trait Workload: Serialize + Clone + fmt::Debug + Send + Sync + 'static {
    /// The name under which workers find this workload in the [`Registry`].
    const NAME: &'static str;
    /// The element type of the output.
    type Output: Element;
    /// True for workloads that wait rather than compute (like `sleep`): the advice then
    /// treats more workers than cores as a help, not a limit.
    const WAITS: bool = false;
    /// Fills `out[k]` with the result for index `range.start + k`.
    /// `out.len() == range.end - range.start`.
    ///
    /// A process the kernel starts (a helper with `std::process::Command`, a `fork`) joins
    /// its worker's process group, and is killed with the group when the worker ends (a
    /// death, a recycling, the pool's shutdown): nothing it starts outlives the worker.
    /// One that leaves the group (`setsid`, `Command::process_group`) is neither killed
    /// nor waited for, though it may hold the worker's output pipe: procpool copies what
    /// the worker wrote for a moment after the worker ends, then stops listening.
    fn kernel(&self, range: Range<u64>, out: &mut [Self::Output]);

    /// The single-process run's time when it is known without running it (`sleep`: n × ms).
    /// The baseline then reports this time and compares against [`Workload::expected`]
    /// instead of waiting it out. Default: unknown, so the baseline runs the kernel.
    fn sequential_time(&self, n: u64) -> Option<std::time::Duration> {
        let _ = n;
        None
    }

    /// The values the pool's output must equal: by default the kernel itself. A workload
    /// with a [`Workload::sequential_time`] computes them here without the waiting.
    fn expected(&self, range: Range<u64>, out: &mut [Self::Output]) {
        self.kernel(range, out);
    }

    /// Prepares what every kernel call may read, once per worker process (Python's
    /// `Pool(initializer=…)`): load a model, build a table. It runs on the worker's own
    /// copy of the workload, after the parameters arrive and before its first chunk; keep
    /// what it builds in fields marked `#[serde(skip)]`, so they are never sent. A worker
    /// keeps it for back-to-back jobs of an equal workload value, and builds it again when
    /// the value changes. The single-process run and `--mode threads` call it once on
    /// their own copy, so every output is computed alike. Its time is reported per worker
    /// ([`WorkerStats::setup_s`](crate::WorkerStats::setup_s)). The default does nothing.
    ///
    /// ```
    /// use std::ops::Range;
    /// use procpool::Workload;
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Debug, Clone, Serialize, Deserialize)]
    /// struct Lookup {
    ///     size: usize,
    ///     #[serde(skip)]
    ///     table: Vec<u64>,
    /// }
    ///
    /// impl Workload for Lookup {
    ///     const NAME: &'static str = "lookup";
    ///     type Output = u64;
    ///     fn setup(&mut self) {
    ///         self.table = (0..self.size as u64).map(|i| i * i).collect();
    ///     }
    ///     fn kernel(&self, range: Range<u64>, out: &mut [u64]) {
    ///         for (slot, i) in out.iter_mut().zip(range) {
    ///             *slot = self.table[i as usize % self.size];
    ///         }
    ///     }
    /// }
    /// ```
    fn setup(&mut self) {}

    /// How far the pool's floating-point output may differ from the single-process run's
    /// and still verify. The default, `None`, asks for identical bytes: right for every
    /// deterministic kernel, floats included, since a worker runs the same machine code on
    /// the same inputs. Declare a [`Tolerance`] when results may differ in their last bits
    /// between processes; a tolerance whose lanes do not fit the element type is refused
    /// before the job runs.
    ///
    /// ```
    /// # use std::ops::Range;
    /// # use procpool::{Tolerance, Workload};
    /// # use serde::{Deserialize, Serialize};
    /// #[derive(Debug, Clone, Serialize, Deserialize)]
    /// struct Waves;
    ///
    /// impl Workload for Waves {
    ///     const NAME: &'static str = "waves";
    ///     type Output = [f64; 2];
    ///     fn kernel(&self, range: Range<u64>, out: &mut [[f64; 2]]) {
    ///         for (slot, i) in out.iter_mut().zip(range) {
    ///             *slot = [(i as f64).sin(), (i as f64).cos()];
    ///         }
    ///     }
    ///     fn tolerance(&self) -> Option<Tolerance> {
    ///         Some(Tolerance::f64().abs(1e-12).ulps(4))
    ///     }
    /// }
    /// ```
    fn tolerance(&self) -> Option<Tolerance> {
        None
    }
}

/// A reduction of a workload's output: what a job can return instead of (or beside) the
/// output itself, like rayon's `.map(..).reduce(identity, op)`.
///
/// Each worker reduces every chunk it computes right after the kernel
/// ([`Reduce::reduce_chunk`]); the parent then combines the chunks' accumulators **in
/// chunk order**, left to right ([`Reduce::combine`]), so a float sum comes out the same
/// on every run with the same chunks, and the single-process run, reducing the same chunks
/// in the same order, must match it bit for bit. The accumulator can be any serde type
/// (numbers, tuples, arrays, structs); each chunk's, postcard-encoded, must fit in
/// [`Reduce::ACC_BYTES`]: it travels through a slot of that size in shared memory.
///
/// Register the workload with [`Registry::register_reduce`], then call
/// [`Pool::reduce`](crate::Pool::reduce) (no output buffer at all),
/// [`Pool::run_and_reduce_with`](crate::Pool::run_and_reduce_with) (output and reduction)
/// or [`run_reduce`](crate::run_reduce) (a measured, verified run).
///
/// ```
/// use std::ops::Range;
/// use procpool::{Reduce, Workload};
/// use serde::{Deserialize, Serialize};
///
/// /// The sum and the largest of 1/(i+1).
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// struct Harmonic;
///
/// impl Workload for Harmonic {
///     const NAME: &'static str = "harmonic";
///     type Output = f64;
///     fn kernel(&self, range: Range<u64>, out: &mut [f64]) {
///         for (slot, i) in out.iter_mut().zip(range) {
///             *slot = 1.0 / (i + 1) as f64;
///         }
///     }
/// }
///
/// impl Reduce for Harmonic {
///     type Acc = (f64, f64);
///     fn identity(&self) -> (f64, f64) {
///         (0.0, f64::NEG_INFINITY)
///     }
///     fn reduce_chunk(&self, _range: Range<u64>, out: &[f64]) -> (f64, f64) {
///         out.iter().fold(self.identity(), |(sum, max), &x| (sum + x, max.max(x)))
///     }
///     fn combine(&self, a: (f64, f64), b: (f64, f64)) -> (f64, f64) {
///         (a.0 + b.0, a.1.max(b.1))
///     }
/// }
/// ```
pub trait Reduce: Workload {
    /// The accumulator: one chunk's summary, and the job's.
    type Acc: Serialize + DeserializeOwned + Clone + fmt::Debug + Send + Sync + 'static;
    /// The most bytes one chunk's accumulator may take, postcard-encoded (a `u64` or `f64`
    /// takes at most 10; a `Vec` its length plus its elements). A chunk whose accumulator
    /// is larger fails the job with a message saying so.
    const ACC_BYTES: usize = 64;
    /// The accumulator of no elements: the result of an empty job, and where folds start.
    fn identity(&self) -> Self::Acc;
    /// One chunk's accumulator, from the chunk's indices and the kernel's output for them.
    fn reduce_chunk(&self, range: Range<u64>, out: &[Self::Output]) -> Self::Acc;
    /// Two neighbouring accumulators, `left` covering the lower indices, as one.
    fn combine(&self, left: Self::Acc, right: Self::Acc) -> Self::Acc;
}

/// Encodes one chunk's accumulator; panics (a kernel error the pool reports as such) when
/// it does not fit in [`Reduce::ACC_BYTES`].
fn encode_acc<W: Reduce>(acc: &W::Acc) -> Vec<u8> {
    let bytes = match postcard::to_stdvec(acc) {
        Ok(bytes) => bytes,
        Err(e) => panic!("cannot encode the accumulator of `{}`: {e}", W::NAME),
    };
    assert!(
        bytes.len() <= W::ACC_BYTES,
        "a chunk's accumulator of `{}` encodes to {} bytes, more than Reduce::ACC_BYTES = {}: \
         raise ACC_BYTES in its Reduce impl",
        W::NAME,
        bytes.len(),
        W::ACC_BYTES
    );
    bytes
}

/// Bytes of one chunk's slot in the shared chunk table for `W`: a length word and the
/// encoded accumulator, in whole 8-byte words.
pub(crate) fn acc_slot<W: Reduce>() -> u64 {
    8 + (W::ACC_BYTES as u64).next_multiple_of(8)
}

/// A reduction with its accumulator's type erased: what the engine and the lab hold to
/// combine encoded chunk accumulators and to reduce the single-process output alike.
pub(crate) trait ChunkReducer<T>: Sync {
    /// [`acc_slot`] of the workload.
    fn slot(&self) -> u64;
    /// One chunk's accumulator, encoded.
    fn reduce_chunk(&self, range: Range<u64>, out: &[T]) -> Vec<u8>;
    /// Combines encoded accumulators in the order given (chunk order); returns the result
    /// encoded. Fails on bytes that do not decode.
    fn combine(&self, parts: &mut dyn Iterator<Item = &[u8]>) -> Result<Vec<u8>, String>;
    /// The encoded accumulator as JSON, for reports (`null` if it has no JSON form).
    fn describe(&self, acc: &[u8]) -> serde_json::Value;
}

/// The [`ChunkReducer`] of a [`Reduce`] workload.
pub(crate) struct ReducerOf<'w, W>(pub(crate) &'w W);

impl<W: Reduce> ChunkReducer<W::Output> for ReducerOf<'_, W> {
    fn slot(&self) -> u64 {
        acc_slot::<W>()
    }

    fn reduce_chunk(&self, range: Range<u64>, out: &[W::Output]) -> Vec<u8> {
        encode_acc::<W>(&self.0.reduce_chunk(range, out))
    }

    fn combine(&self, parts: &mut dyn Iterator<Item = &[u8]>) -> Result<Vec<u8>, String> {
        let acc = decode_combined(self.0, parts)?;
        postcard::to_stdvec(&acc).map_err(|e| e.to_string())
    }

    fn describe(&self, acc: &[u8]) -> serde_json::Value {
        postcard::from_bytes::<W::Acc>(acc)
            .ok()
            .and_then(|a| serde_json::to_value(a).ok())
            .unwrap_or(serde_json::Value::Null)
    }
}

/// Decodes encoded chunk accumulators and combines them in order, from the identity.
pub(crate) fn decode_combined<W: Reduce>(
    workload: &W,
    parts: &mut dyn Iterator<Item = &[u8]>,
) -> Result<W::Acc, String> {
    let mut total = workload.identity();
    for part in parts {
        let acc: W::Acc = postcard::from_bytes(part).map_err(|e| {
            format!(
                "a chunk's accumulator of `{}` does not decode: {e}",
                W::NAME
            )
        })?;
        total = workload.combine(total, acc);
    }
    Ok(total)
}

/// A workload with its type erased, as a worker holds it during a job.
pub(crate) trait DynKernel: Send + Sync {
    /// Runs the kernel on `range`, writing little-endian elements into `out`; with
    /// `reduce`, then reduces the chunk and returns its encoded accumulator (`None` when the
    /// workload was registered without its reduction).
    fn run(&self, range: Range<u64>, out: &mut [u8], reduce: bool) -> Option<Vec<u8>>;
}

struct Typed<W>(W);

/// `workload` as a worker holds it.
pub(crate) fn typed_kernel<W: Workload>(workload: W) -> Box<dyn DynKernel> {
    Box::new(Typed(workload))
}

/// `workload` with its reduction, as a worker holds it.
pub(crate) fn reducing_kernel<W: Reduce>(workload: W) -> Box<dyn DynKernel> {
    Box::new(Reducing(workload))
}

impl<W: Workload> DynKernel for Typed<W> {
    fn run(&self, range: Range<u64>, out: &mut [u8], _reduce: bool) -> Option<Vec<u8>> {
        // The region is page aligned and chunk offsets are multiples of the element size,
        // so this cast cannot fail; bytemuck checks it anyway.
        let out: &mut [W::Output] = bytemuck::cast_slice_mut(out);
        self.0.kernel(range, out);
        None
    }
}

/// A workload registered with its reduction ([`Registry::register_reduce`]).
struct Reducing<W>(W);

impl<W: Reduce> DynKernel for Reducing<W> {
    fn run(&self, range: Range<u64>, out: &mut [u8], reduce: bool) -> Option<Vec<u8>> {
        let out: &mut [W::Output] = bytemuck::cast_slice_mut(out);
        self.0.kernel(range.clone(), out);
        reduce.then(|| encode_acc::<W>(&self.0.reduce_chunk(range, out)))
    }
}

type Decoder = fn(&[u8]) -> Result<(Box<dyn DynKernel>, Duration), params_format::Error>;

/// Rebuilds the workload and runs its [`Workload::setup`]; returns how long that took.
fn decode<W: Workload + DeserializeOwned>(
    params: &[u8],
) -> Result<(Box<dyn DynKernel>, Duration), params_format::Error> {
    let (workload, took) = rebuild::<W>(params)?;
    Ok((Box::new(Typed(workload)), took))
}

/// [`decode`] for a workload registered with its reduction.
fn decode_reducing<W: Reduce + DeserializeOwned>(
    params: &[u8],
) -> Result<(Box<dyn DynKernel>, Duration), params_format::Error> {
    let (workload, took) = rebuild::<W>(params)?;
    Ok((Box::new(Reducing(workload)), took))
}

/// The workload its encoded parameters describe (the whole of `params`), set up.
fn rebuild<W: Workload + DeserializeOwned>(
    params: &[u8],
) -> Result<(W, Duration), params_format::Error> {
    let mut workload = params_format::from_bytes::<W>(params)?;
    let began = Instant::now();
    workload.setup();
    Ok((workload, began.elapsed()))
}

/// The name under which every worker runs closure jobs ([`crate::Closure`],
/// [`crate::Fold`]): not in any registry, always in a worker's catalogue (with element size
/// 0: any), and refused as a workload's own name.
pub(crate) const CLOSURE_NAME: &str = "procpool::closure";

/// The catalogue's entry for closure jobs: any element size, reductions, and this
/// program's build identity as its type, which a parent compares with its own (a closure
/// is named by its place in the binary, meaningful only in the same build).
pub(crate) fn closures_of_this_build() -> Registered {
    Registered {
        name: CLOSURE_NAME.to_string(),
        elem_size: 0,
        type_name: format!("closures of {}", build_id::this_build()),
        reduces: true,
    }
}

/// A workload a worker can run: its name, element size and Rust type.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
pub(crate) struct Registered {
    /// [`Workload::NAME`].
    pub(crate) name: String,
    /// The size of one output element in bytes.
    pub(crate) elem_size: u32,
    /// `std::any::type_name` of the workload: two types under one name are told apart.
    pub(crate) type_name: String,
    /// Registered with its reduction ([`Registry::register_reduce`]).
    pub(crate) reduces: bool,
}

/// Entry of the registry: how to rebuild a workload from its serialized parameters.
#[derive(Clone, Copy)]
struct Entry {
    elem_size: usize,
    decode: Decoder,
    /// The Rust type registered, to tell two workloads that share a name apart.
    type_name: &'static str,
    /// Whether its reduction was registered too.
    reduces: bool,
}

/// The workloads a worker can run, by name.
///
/// The binary that workers run must register every workload the parent will submit, and
/// hand the registry to [`crate::init_with`] as the first thing in `main`.
#[derive(Clone)]
pub struct Registry {
    entries: HashMap<&'static str, Entry>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self.entries.keys().collect();
        names.sort();
        f.debug_struct("Registry")
            .field("workloads", &names)
            .finish()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Registry {
    /// A registry with no workloads at all.
    pub fn empty() -> Self {
        Registry {
            entries: HashMap::new(),
        }
    }

    /// A registry holding procpool's built-in workloads.
    pub fn builtin() -> Self {
        Self::empty()
            .register_reduce::<Squares>()
            .register_reduce::<Primes>()
            .register::<Collatz>()
            .register::<Mandelbrot>()
            .register::<Hash>()
            .register::<Spin>()
            .register::<Sleep>()
    }

    /// Adds workload `W`.
    ///
    /// # Panics
    /// When another type is registered under the same [`Workload::NAME`]: workers would
    /// run one of them where the parent sent the other, silently. (Registering the same
    /// type twice is harmless.) The panic points at your call. See
    /// [`Registry::try_register`] to handle it yourself.
    #[track_caller]
    pub fn register<W: Workload + DeserializeOwned>(self) -> Self {
        match self.insert::<W>(decode::<W>, false) {
            Ok(registry) => registry,
            Err(error) => panic!("{error}"),
        }
    }

    /// Adds workload `W`, or says which type already holds its name (an
    /// [`Error::InvalidInput`](crate::Error::InvalidInput)).
    pub fn try_register<W: Workload + DeserializeOwned>(self) -> crate::error::Result<Self> {
        self.insert::<W>(decode::<W>, false)
    }

    /// Adds workload `W` with its [`Reduce`] implementation, so that workers can reduce
    /// its chunks ([`Pool::reduce`](crate::Pool::reduce)). Registering it with
    /// [`Registry::register`] instead runs its kernel but refuses its reductions.
    ///
    /// # Panics
    /// As [`Registry::register`], when another type holds the name.
    #[track_caller]
    pub fn register_reduce<W: Reduce + DeserializeOwned>(self) -> Self {
        match self.insert::<W>(decode_reducing::<W>, true) {
            Ok(registry) => registry,
            Err(error) => panic!("{error}"),
        }
    }

    fn insert<W: Workload>(mut self, decode: Decoder, reduces: bool) -> crate::error::Result<Self> {
        let type_name = std::any::type_name::<W>();
        if W::NAME == CLOSURE_NAME {
            return Err(crate::error::Error::invalid_input(format!(
                "workload name `{CLOSURE_NAME}` ({type_name}) is procpool's own, for closure \
                 jobs: give it another Workload::NAME"
            )));
        }
        if let Some(taken) = self.entries.get(W::NAME)
            && taken.type_name != type_name
        {
            return Err(crate::error::Error::invalid_input(format!(
                "workload name `{}` is taken by {} and cannot also name {type_name}: give one \
                 of them another Workload::NAME",
                W::NAME,
                taken.type_name
            )));
        }
        self.entries.insert(
            W::NAME,
            Entry {
                elem_size: std::mem::size_of::<W::Output>(),
                decode,
                type_name,
                reduces,
            },
        );
        Ok(self)
    }

    /// Every registered workload, sorted by name: what a worker tells the parent it can run.
    pub(crate) fn catalogue(&self) -> Vec<Registered> {
        let mut all: Vec<_> = self
            .entries
            .iter()
            .map(|(name, e)| Registered {
                name: name.to_string(),
                elem_size: e.elem_size as u32,
                type_name: e.type_name.to_string(),
                reduces: e.reduces,
            })
            .chain(std::iter::once(closures_of_this_build()))
            .collect();
        all.sort();
        all
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.entries.keys().copied().collect();
        names.sort_unstable();
        names
    }

    /// True when a workload of that name is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Rebuilds a registered workload from its name and serialized parameters, and runs
    /// its set-up; returns it with the set-up's time.
    pub(crate) fn instantiate(
        &self,
        name: &str,
        params: &[u8],
        elem_size: usize,
    ) -> Result<(Box<dyn DynKernel>, Duration), String> {
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| format!("workload `{name}` is not registered in the worker binary"))?;
        if entry.elem_size != elem_size {
            return Err(format!(
                "workload `{name}` has {}-byte elements in the worker but {elem_size} in the parent",
                entry.elem_size
            ));
        }
        (entry.decode)(params).map_err(|e| format!("bad parameters for `{name}`: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_round_trips_a_workload_through_bytes() {
        let reg = Registry::builtin();
        let params = postcard::to_stdvec(&Squares).unwrap();
        let (kernel, _) = reg.instantiate("squares", &params, 8).unwrap();
        let mut out = vec![0u8; 3 * 8];
        assert_eq!(
            kernel.run(4..7, &mut out, true),
            Some(postcard::to_stdvec(&77u64).unwrap())
        );
        let got: &[u64] = bytemuck::cast_slice(&out);
        assert_eq!(got, &[16, 25, 36]);
    }

    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
    struct Reserved;
    impl Workload for Reserved {
        const NAME: &'static str = CLOSURE_NAME;
        type Output = u8;
        fn kernel(&self, _: Range<u64>, _: &mut [u8]) {}
    }

    #[test]
    fn two_types_cannot_share_a_name() {
        #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
        struct Impostor;
        impl Workload for Impostor {
            const NAME: &'static str = "squares";
            type Output = u64;
            fn kernel(&self, _: Range<u64>, out: &mut [u64]) {
                out.fill(0);
            }
        }
        let err = Registry::builtin().try_register::<Impostor>().unwrap_err();
        assert!(err.is_invalid_input(), "{err:?}");
        let err = err.to_string();
        assert!(
            err.contains("`squares` is taken by") && err.contains("Impostor"),
            "{err}"
        );
        // The same type again is fine.
        assert!(Registry::builtin().try_register::<Squares>().is_ok());
        // The panic points at the caller's line, not into procpool (`#[track_caller]`).
        let at = std::sync::Arc::new(std::sync::Mutex::new(None));
        let previous = std::sync::Arc::new(std::panic::take_hook());
        let (seen, forward) = (at.clone(), previous.clone());
        std::panic::set_hook(Box::new(move |info| {
            if info
                .payload_as_str()
                .is_some_and(|m| m.contains("Impostor"))
            {
                *seen.lock().unwrap() = info.location().map(|l| (l.file().to_string(), l.line()));
            } else {
                forward(info);
            }
        }));
        let line = line!() + 1;
        let caught = std::panic::catch_unwind(|| Registry::builtin().register::<Impostor>());
        let _ = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| previous(info)));
        assert!(caught.is_err(), "register panics on a taken name");
        assert_eq!(
            at.lock().unwrap().clone(),
            Some((file!().to_string(), line)),
            "the panic names the caller"
        );
        let reserved = Registry::builtin().try_register::<Reserved>().unwrap_err();
        assert!(
            reserved.to_string().contains("is procpool's own"),
            "{reserved}"
        );
        let first = &Registry::builtin().catalogue()[0];
        assert_eq!((first.name.as_str(), first.elem_size), ("collatz", 4));
    }

    #[test]
    fn registry_refuses_unknown_names_and_wrong_element_sizes() {
        let reg = Registry::builtin();
        assert!(
            reg.instantiate("nope", &[], 8)
                .err()
                .unwrap()
                .contains("not registered")
        );
        assert!(
            reg.instantiate("squares", &[], 4)
                .err()
                .unwrap()
                .contains("8-byte")
        );
    }
}
