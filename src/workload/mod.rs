//! Workloads: what a pool computes, and the registry workers use to find it.
//!
//! A workload is a value (its parameters) plus a kernel that fills `out[i - start]` for every
//! `i` in a range. The parent sends the workload's name and its serialized value to each
//! worker once per job; chunk messages then carry only ranges. Built-in workloads are
//! registered exactly like a user's own.

pub mod catalogue;
pub mod collatz;
pub mod hash;
pub mod mandelbrot;
pub mod primes;
pub mod sleep;
pub mod spin;
mod squares;

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

/// A type a workload can write into shared memory: plain old data with a fixed size.
pub trait Element: bytemuck::Pod + PartialEq + fmt::Debug + fmt::Display + Send + Sync {
    /// The value widened to `u64`, used for checksums and mismatch reports.
    fn widen(self) -> u64;
}

macro_rules! element {
    ($($t:ty),*) => {$(
        impl Element for $t {
            fn widen(self) -> u64 {
                u64::from(self)
            }
        }
    )*};
}
element!(u8, u16, u32, u64);

// f64 results for `examples/matvec.rs` until every Pod type is an `Element`: the checksum
// adds the bits.
impl Element for f64 {
    fn widen(self) -> u64 {
        self.to_bits()
    }
}

/// A computation the pool can spread over processes.
///
/// The value itself is the workload's parameters; it is serialized to every worker once per
/// job. [`Workload::kernel`] must be deterministic: the pool's output is checked element by
/// element against a single-process run of the same kernel.
pub trait Workload:
    Serialize + DeserializeOwned + Clone + fmt::Debug + Send + Sync + 'static
{
    /// The name under which workers find this workload in the [`Registry`].
    const NAME: &'static str;
    /// The element type of the output.
    type Output: Element;
    /// True for workloads that wait rather than compute (like `sleep`): the advice then
    /// treats more workers than cores as a help, not a limit.
    const WAITS: bool = false;
    /// Fills `out[k]` with the result for index `range.start + k`.
    /// `out.len() == range.end - range.start`.
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

    /// An optional per-chunk reduction: a number summarising one chunk's output (a count, a
    /// sum), computed by the worker right after the kernel and sent back in its `Done`
    /// message. The pool adds the chunks' values (wrapping, mod 2^64) into
    /// [`JobStats::reduction`](crate::JobStats::reduction), and the report checks it against
    /// the same reduction of the single-process output. The default reduces nothing.
    fn reduce(&self, out: &[Self::Output]) -> Option<u64> {
        let _ = out;
        None
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
}

/// A workload with its type erased, as a worker holds it during a job.
pub(crate) trait DynKernel: Send + Sync {
    /// Runs the kernel on `range`, writing little-endian elements into `out`, then the
    /// workload's per-chunk reduction, if it has one.
    fn run(&self, range: Range<u64>, out: &mut [u8]) -> Option<u64>;
}

struct Typed<W>(W);

impl<W: Workload> DynKernel for Typed<W> {
    fn run(&self, range: Range<u64>, out: &mut [u8]) -> Option<u64> {
        // The region is page aligned and chunk offsets are multiples of the element size,
        // so this cast cannot fail; bytemuck checks it anyway.
        let out: &mut [W::Output] = bytemuck::cast_slice_mut(out);
        self.0.kernel(range, out);
        self.0.reduce(out)
    }
}

type Decoder = fn(&[u8]) -> Result<(Box<dyn DynKernel>, Duration), postcard::Error>;

/// Rebuilds the workload and runs its [`Workload::setup`]; returns how long that took.
fn decode<W: Workload>(params: &[u8]) -> Result<(Box<dyn DynKernel>, Duration), postcard::Error> {
    let mut workload = postcard::from_bytes::<W>(params)?;
    let began = Instant::now();
    workload.setup();
    Ok((Box::new(Typed(workload)), began.elapsed()))
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
}

/// Entry of the registry: how to rebuild a workload from its serialized parameters.
#[derive(Clone, Copy)]
struct Entry {
    elem_size: usize,
    decode: Decoder,
    /// The Rust type registered, to tell two workloads that share a name apart.
    type_name: &'static str,
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
            .register::<Squares>()
            .register::<Primes>()
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
    /// type twice is harmless.) See [`Registry::try_register`] to handle it yourself.
    pub fn register<W: Workload>(self) -> Self {
        match self.try_register::<W>() {
            Ok(registry) => registry,
            Err(message) => panic!("{message}"),
        }
    }

    /// Adds workload `W`, or says which type already holds its name.
    pub fn try_register<W: Workload>(mut self) -> Result<Self, String> {
        let type_name = std::any::type_name::<W>();
        if let Some(taken) = self.entries.get(W::NAME)
            && taken.type_name != type_name
        {
            return Err(format!(
                "workload name `{}` is taken by {} and cannot also name {type_name}: give one \
                 of them another Workload::NAME",
                W::NAME,
                taken.type_name
            ));
        }
        self.entries.insert(
            W::NAME,
            Entry {
                elem_size: std::mem::size_of::<W::Output>(),
                decode: decode::<W>,
                type_name,
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
            })
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
        kernel.run(4..7, &mut out);
        let got: &[u64] = bytemuck::cast_slice(&out);
        assert_eq!(got, &[16, 25, 36]);
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
        assert!(
            err.contains("`squares` is taken by") && err.contains("Impostor"),
            "{err}"
        );
        // The same type again is fine.
        assert!(Registry::builtin().try_register::<Squares>().is_ok());
        let caught = std::panic::catch_unwind(|| Registry::builtin().register::<Impostor>());
        assert!(caught.is_err(), "register panics on a taken name");
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
