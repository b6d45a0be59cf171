//! Kernels as closures: [`crate::Closure`] and [`crate::Fold`], workloads with no trait
//! impl, no name and no registry.
//!
//! A closure job is a [`Workload`] like any other (the pool, the lab, streaming and
//! cancelling take it as they take `Squares`), under one reserved name. Its parameters are
//! the closure's `params` preceded by its *site*: where, in the binary, the descriptor
//! that rebuilds the job lies (`site.rs`). A worker does not look the name up in its
//! registry: it resolves the site, checks it, and lets the descriptor (code monomorphized
//! for the job's closures) decode the parameters.
//!
//! A closure runs in another process, so it may capture nothing: it must be zero-sized
//! (a closure without captures, or a function), and the worker makes its own copy of
//! that nothing. What it needs travels in `params` (serde) or an [`Input`] (shared
//! memory). A capturing closure is refused when the program is built.

mod site;

use std::fmt;
use std::ops::Range;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Serialize, Serializer};

use crate::engine::input::Input;
use crate::error::Result;
use crate::workload::{DynKernel, Element, Reduce, Workload, params_format};

pub(crate) use crate::workload::CLOSURE_NAME;

/// What a closure's parameters must be: sent to every worker (serde), shared between
/// threads, kept for the job.
pub trait Params:
    Serialize + DeserializeOwned + Clone + fmt::Debug + Send + Sync + 'static
{
}

impl<P: Serialize + DeserializeOwned + Clone + fmt::Debug + Send + Sync + 'static> Params for P {}

/// A closure's error, unwound from the kernel to the worker's chunk loop, which reports it
/// as [`Error::KernelFailed`](crate::Error::KernelFailed) rather than a panic.
pub(crate) struct KernelError(pub(crate) String);

/// A job whose kernel is a closure: what [`Pool::map_range`](crate::Pool::map_range),
/// [`Pool::map_chunks`](crate::Pool::map_chunks), [`Pool::map_items`](crate::Pool::map_items)
/// and [`Pool::try_map_range`](crate::Pool::try_map_range) run, as a value.
///
/// It is a [`Workload`], so everything that takes a workload takes it: [`Pool::run_with`]
/// (job options), [`Pool::for_each_chunk`] (results as they finish) and the lab's
/// [`run`](crate::run()) (a measured run: a single-process baseline, verification, the
/// speedup and where the time went), with no registry: workers find the closure in their
/// binary, which is the parent's own.
///
/// **What the closure needs goes in `params` or an [`Input`].** The closure runs in
/// another process, so it may capture nothing; the pool sends `params` to each worker
/// (once per job, and only when they changed) and shares an `Input`'s memory. A closure
/// that captures a variable is refused when the program is built:
///
/// ```compile_fail,E0080
/// let scale = 2.0;
/// // error: "a closure given to procpool may capture nothing: pass what it needs in params"
/// let job = procpool::Closure::map((), move |_: &(), i| i as f64 * scale);
/// ```
///
/// ```no_run
/// use procpool::{Closure, Pool, RunOptions};
///
/// procpool::init(); // first thing in main
/// let job = Closure::map(2.0_f64, |scale, i| (i as f64).sqrt() * scale);
/// let mut pool = Pool::builder().workers(2).build()?;
/// assert_eq!(pool.run(&job, 100)?.results()[49], 14.0);
/// // The same job, measured against one process and verified:
/// let report = procpool::run(&job, 1_000_000, &RunOptions::new(2))?;
/// assert_eq!(report.verified, Some(true));
/// # Ok::<(), procpool::Error>(())
/// ```
///
/// [`Pool::run_with`]: crate::Pool::run_with
/// [`Pool::for_each_chunk`]: crate::Pool::for_each_chunk
pub struct Closure<P, T> {
    params: P,
    /// Fills a chunk: the closure, through a function monomorphized for it.
    call: fn(&P, Range<u64>, &mut [T]),
    /// Where workers find the descriptor that rebuilds this job.
    site: i64,
}

impl<P: Clone, T> Clone for Closure<P, T> {
    fn clone(&self) -> Self {
        Closure {
            params: self.params.clone(),
            call: self.call,
            site: self.site,
        }
    }
}

impl<P: fmt::Debug, T> fmt::Debug for Closure<P, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Closure")
            .field("params", &self.params)
            .field("output", &std::any::type_name::<T>())
            .finish_non_exhaustive()
    }
}

/// On the wire: the site, then the parameters.
impl<P: Serialize, T> Serialize for Closure<P, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        (self.site, &self.params).serialize(serializer)
    }
}

impl<P: Params, T: Element> Workload for Closure<P, T> {
    const NAME: &'static str = CLOSURE_NAME;
    type Output = T;

    fn kernel(&self, range: Range<u64>, out: &mut [T]) {
        (self.call)(&self.params, range, out);
    }
}

impl<P: Params, T: Element> Closure<P, T> {
    /// A job whose element `i` is `f(&params, i)`: rayon's `(0..n).map(f)`.
    pub fn map<F: Fn(&P, u64) -> T + Send + Sync>(params: P, f: F) -> Self {
        let _ = f;
        Self::with(
            params,
            map_chunk::<P, T, F>,
            const { &site::describe(decode::<P, T, F, MapForm>) },
        )
    }

    /// A job whose kernel gets a whole chunk: `f(&params, range, out)` fills `out[k]` for
    /// index `range.start + k`, as [`Workload::kernel`] does. For set-up per chunk, or a
    /// loop the compiler vectorizes.
    pub fn chunks<F: Fn(&P, Range<u64>, &mut [T]) + Send + Sync>(params: P, f: F) -> Self {
        let _ = f;
        Self::with(
            params,
            whole_chunk::<P, T, F>,
            const { &site::describe(decode::<P, T, F, ChunkForm>) },
        )
    }

    /// A job whose element `i` is `f(&params, i)?`: the first error fails the job with
    /// [`Error::KernelFailed`](crate::Error::KernelFailed), which names the chunk, its
    /// range, the worker and the error's text; the workers stay for the next job.
    pub fn try_map<E: fmt::Display, F: Fn(&P, u64) -> std::result::Result<T, E> + Send + Sync>(
        params: P,
        f: F,
    ) -> Self {
        let _ = f;
        Self::with(
            params,
            try_map_chunk::<P, T, E, F>,
            const { &site::describe(decode::<P, T, F, TryForm<E>>) },
        )
    }

    fn with(
        params: P,
        call: fn(&P, Range<u64>, &mut [T]),
        descriptor: &'static site::Descriptor,
    ) -> Self {
        Closure {
            params,
            call,
            site: site::site_of(descriptor),
        }
    }

    /// The parameters.
    pub fn params(&self) -> &P {
        &self.params
    }
}

impl<I: Element, P: Params, T: Element> Closure<(Input<I>, P), T> {
    /// A job over items you already have: element `i` is `f(&params, &items[i])`, for
    /// `n = items.len()`.
    ///
    /// The items are copied once into a sealed memfd every worker maps read-only (an
    /// [`Input`]); no chunk message carries them. Fails as [`Input::new`] does.
    pub fn items<F: Fn(&P, &I) -> T + Send + Sync>(items: &[I], params: P, f: F) -> Result<Self> {
        let _ = f;
        let params = (Input::new(items)?, params);
        Ok(Self::with(
            params,
            item_chunk::<I, P, T, F>,
            const { &site::describe(decode::<(Input<I>, P), T, F, ItemForm<I>>) },
        ))
    }
}

/// A reduction whose parts are closures: what [`Pool::fold_range`](crate::Pool::fold_range)
/// runs, as a value, for [`Pool::reduce_with`](crate::Pool::reduce_with) or the lab's
/// [`run_reduce`](crate::run_reduce).
///
/// Each chunk folds its indices from `identity` (`fold(&params, acc, i)`); the parent then
/// combines the chunks' accumulators **in chunk order** (`combine(left, right)`), so a
/// float sum comes out the same on every run with the same chunks, as [`Reduce`] does.
/// The same rule as [`Closure`]'s: the closures capture nothing; what they need goes in
/// `params` or an [`Input`].
///
/// ```no_run
/// use procpool::{Fold, Pool};
///
/// procpool::init(); // first thing in main
/// let mut pool = Pool::builder().workers(2).build()?;
/// // The sum of 1/(i+1)², reduced in the workers: no output buffer at all.
/// let job = Fold::new((), 0.0, |_, acc: f64, i| acc + 1.0 / ((i + 1) * (i + 1)) as f64, |a, b| a + b);
/// let sum = pool.reduce(&job, 1_000_000)?.value;
/// assert!((sum - std::f64::consts::PI.powi(2) / 6.0).abs() < 1e-5);
/// # Ok::<(), procpool::Error>(())
/// ```
pub struct Fold<P, A> {
    params: P,
    identity: A,
    fold: fn(&P, A, Range<u64>) -> A,
    combine: fn(A, A) -> A,
    site: i64,
}

impl<P: Clone, A: Clone> Clone for Fold<P, A> {
    fn clone(&self) -> Self {
        Fold {
            params: self.params.clone(),
            identity: self.identity.clone(),
            fold: self.fold,
            combine: self.combine,
            site: self.site,
        }
    }
}

impl<P: fmt::Debug, A: fmt::Debug> fmt::Debug for Fold<P, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fold")
            .field("params", &self.params)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// On the wire: the site, the parameters, the identity.
impl<P: Serialize, A: Serialize> Serialize for Fold<P, A> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        (self.site, &self.params, &self.identity).serialize(serializer)
    }
}

impl<P: Params, A: Params> Workload for Fold<P, A> {
    const NAME: &'static str = CLOSURE_NAME;
    /// A fold writes no output; a job that asks for one gets zeros.
    type Output = u8;

    fn kernel(&self, _range: Range<u64>, out: &mut [u8]) {
        out.fill(0);
    }
}

impl<P: Params, A: Params> Reduce for Fold<P, A> {
    type Acc = A;
    /// Room for any fixed-size accumulator: postcard writes a number in at most its size
    /// plus a quarter, and a sequence's length in a few bytes.
    const ACC_BYTES: usize = 16 + 2 * std::mem::size_of::<A>();

    fn identity(&self) -> A {
        self.identity.clone()
    }

    fn reduce_chunk(&self, range: Range<u64>, _out: &[u8]) -> A {
        (self.fold)(&self.params, self.identity.clone(), range)
    }

    fn combine(&self, left: A, right: A) -> A {
        (self.combine)(left, right)
    }
}

impl<P: Params, A: Params> Fold<P, A> {
    /// A reduction of `0..n` that folds one index at a time: each chunk computes
    /// `fold(&params, … fold(&params, identity, start) …, end - 1)`.
    pub fn new<F, C>(params: P, identity: A, fold: F, combine: C) -> Self
    where
        F: Fn(&P, A, u64) -> A + Send + Sync,
        C: Fn(A, A) -> A + Send + Sync,
    {
        let _ = (fold, combine);
        Self::with(
            params,
            identity,
            fold_each::<P, A, F>,
            combine_with::<A, C>,
            const { &site::describe(decode_fold::<P, A, F, C, EachForm>) },
        )
    }

    /// A reduction of `0..n` that folds a whole chunk at a time: each chunk's accumulator
    /// is `fold(&params, identity, range)`.
    pub fn chunks<F, C>(params: P, identity: A, fold: F, combine: C) -> Self
    where
        F: Fn(&P, A, Range<u64>) -> A + Send + Sync,
        C: Fn(A, A) -> A + Send + Sync,
    {
        let _ = (fold, combine);
        Self::with(
            params,
            identity,
            fold_chunk::<P, A, F>,
            combine_with::<A, C>,
            const { &site::describe(decode_fold::<P, A, F, C, RangeForm>) },
        )
    }

    fn with(
        params: P,
        identity: A,
        fold: fn(&P, A, Range<u64>) -> A,
        combine: fn(A, A) -> A,
        descriptor: &'static site::Descriptor,
    ) -> Self {
        Fold {
            params,
            identity,
            fold,
            combine,
            site: site::site_of(descriptor),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The monomorphized trampolines: each turns a zero-sized closure type back into a call.

fn map_chunk<P, T, F: Fn(&P, u64) -> T>(params: &P, range: Range<u64>, out: &mut [T]) {
    let f = site::conjure::<F>();
    for (slot, i) in out.iter_mut().zip(range) {
        *slot = f(params, i);
    }
}

fn whole_chunk<P, T, F: Fn(&P, Range<u64>, &mut [T])>(
    params: &P,
    range: Range<u64>,
    out: &mut [T],
) {
    site::conjure::<F>()(params, range, out);
}

fn try_map_chunk<P, T, E: fmt::Display, F: Fn(&P, u64) -> std::result::Result<T, E>>(
    params: &P,
    range: Range<u64>,
    out: &mut [T],
) {
    let f = site::conjure::<F>();
    for (slot, i) in out.iter_mut().zip(range) {
        match f(params, i) {
            Ok(value) => *slot = value,
            Err(e) => failed(format!("at index {i}: {e}")),
        }
    }
}

/// Ends a chunk with a closure's error: in a worker, as a [`KernelError`] its chunk loop
/// reports as such; in a process that runs the kernel itself (the lab's single-process
/// run, `--mode threads`), as a panic with the error's text, as any kernel's failure.
fn failed(message: String) -> ! {
    if crate::engine::worker::serving() {
        std::panic::resume_unwind(Box::new(KernelError(message)))
    }
    panic!("{message}")
}

fn item_chunk<I: Element, P, T, F: Fn(&P, &I) -> T>(
    params: &(Input<I>, P),
    range: Range<u64>,
    out: &mut [T],
) {
    let f = site::conjure::<F>();
    let (items, params) = params;
    let Some(items) = items.get(range.start as usize..range.end as usize) else {
        panic!(
            "a job over {} items has no item {}: run it on n = items.len()",
            items.len(),
            range.end.saturating_sub(1)
        );
    };
    for (slot, item) in out.iter_mut().zip(items) {
        *slot = f(params, item);
    }
}

fn fold_each<P, A, F: Fn(&P, A, u64) -> A>(params: &P, identity: A, range: Range<u64>) -> A {
    let f = site::conjure::<F>();
    range.fold(identity, |acc, i| f(params, acc, i))
}

fn fold_chunk<P, A, F: Fn(&P, A, Range<u64>) -> A>(
    params: &P,
    identity: A,
    range: Range<u64>,
) -> A {
    site::conjure::<F>()(params, identity, range)
}

fn combine_with<A, C: Fn(A, A) -> A>(left: A, right: A) -> A {
    site::conjure::<C>()(left, right)
}

/// Which trampoline a decoder rebuilds a [`Closure`] with.
trait Form<P, T, F> {
    const CALL: fn(&P, Range<u64>, &mut [T]);
}
struct MapForm;
struct ChunkForm;
struct TryForm<E>(std::marker::PhantomData<E>);
struct ItemForm<I>(std::marker::PhantomData<I>);

impl<P, T, F: Fn(&P, u64) -> T> Form<P, T, F> for MapForm {
    const CALL: fn(&P, Range<u64>, &mut [T]) = map_chunk::<P, T, F>;
}
impl<P, T, F: Fn(&P, Range<u64>, &mut [T])> Form<P, T, F> for ChunkForm {
    const CALL: fn(&P, Range<u64>, &mut [T]) = whole_chunk::<P, T, F>;
}
impl<P, T, E: fmt::Display, F: Fn(&P, u64) -> std::result::Result<T, E>> Form<P, T, F>
    for TryForm<E>
{
    const CALL: fn(&P, Range<u64>, &mut [T]) = try_map_chunk::<P, T, E, F>;
}
impl<I: Element, P, T, F: Fn(&P, &I) -> T> Form<(Input<I>, P), T, F> for ItemForm<I> {
    const CALL: fn(&(Input<I>, P), Range<u64>, &mut [T]) = item_chunk::<I, P, T, F>;
}

/// Which trampolines a decoder rebuilds a [`Fold`] with.
trait FoldForm<P, A, F> {
    const FOLD: fn(&P, A, Range<u64>) -> A;
}
struct EachForm;
struct RangeForm;
impl<P, A, F: Fn(&P, A, u64) -> A> FoldForm<P, A, F> for EachForm {
    const FOLD: fn(&P, A, Range<u64>) -> A = fold_each::<P, A, F>;
}
impl<P, A, F: Fn(&P, A, Range<u64>) -> A> FoldForm<P, A, F> for RangeForm {
    const FOLD: fn(&P, A, Range<u64>) -> A = fold_chunk::<P, A, F>;
}

/// Rebuilds a [`Closure`] in a worker from its encoded parameters (site included).
fn decode<P: Params, T: Element, F, K: Form<P, T, F>>(
    bytes: &[u8],
    elem_size: usize,
) -> std::result::Result<(Box<dyn DynKernel>, Duration), String> {
    same_size::<T>(elem_size)?;
    let (site, params): (i64, P) = params_format::from_bytes(bytes).map_err(|e| e.to_string())?;
    let job = Closure {
        params,
        call: K::CALL,
        site,
    };
    Ok((crate::workload::typed_kernel(job), Duration::ZERO))
}

/// Rebuilds a [`Fold`] in a worker from its encoded parameters (site included).
fn decode_fold<P: Params, A: Params, F, C: Fn(A, A) -> A, K: FoldForm<P, A, F>>(
    bytes: &[u8],
    elem_size: usize,
) -> std::result::Result<(Box<dyn DynKernel>, Duration), String> {
    same_size::<u8>(elem_size)?;
    let (site, params, identity): (i64, P, A) =
        params_format::from_bytes(bytes).map_err(|e| e.to_string())?;
    let job = Fold {
        params,
        identity,
        fold: K::FOLD,
        combine: combine_with::<A, C>,
        site,
    };
    Ok((crate::workload::reducing_kernel(job), Duration::ZERO))
}

/// Refuses a job whose parent says its elements are not `T`'s size.
fn same_size<T>(elem_size: usize) -> std::result::Result<(), String> {
    match std::mem::size_of::<T>() {
        size if size == elem_size => Ok(()),
        size => Err(format!(
            "the closure writes {size}-byte elements here but {elem_size}-byte elements in the \
             parent: they are different builds"
        )),
    }
}

/// Rebuilds a closure job in a worker: its site (the start of `params`) resolved and
/// checked, then its descriptor's decoder.
pub(crate) fn instantiate(
    params: &[u8],
    elem_size: usize,
) -> std::result::Result<(Box<dyn DynKernel>, Duration), String> {
    let (site, _) = postcard::take_from_bytes::<i64>(params)
        .map_err(|e| format!("a closure job's parameters do not start with its site: {e}"))?;
    let descriptor = site::resolve(site)?;
    (descriptor.decode)(params, elem_size)
        .map_err(|e| format!("bad parameters for a closure job: {e}"))
}
