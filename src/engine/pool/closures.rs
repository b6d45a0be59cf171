//! [`Pool`]'s closure methods: a job in one call, with no trait, name or registry
//! ([`crate::Closure`] and [`crate::Fold`] are the jobs as values).

use std::fmt;
use std::ops::Range;

use super::{Pool, PoolRun};
use crate::engine::closure::{Closure, Fold, Params};
use crate::error::Result;
use crate::workload::Element;

impl Pool {
    /// Computes `f(&params, i)` for every `i` in `0..n` in the workers, each writing its
    /// elements straight into shared memory: rayon's `(0..n).into_par_iter().map(f)`,
    /// across processes.
    ///
    /// **What the closure needs goes in `params` (or an [`Input`](crate::Input) inside
    /// them).** The closure runs in the worker processes, which cannot see the caller's
    /// variables, so it may capture nothing (a closure that does is refused when the
    /// program is built, saying so); `params` is sent to each worker once per job (serde),
    /// and only when it changed since the worker's last job. The workers run this very
    /// binary, so `procpool::init()` must come first in `main`, as for any pool.
    ///
    /// The output stays in shared memory until the next job; [`PoolRun::to_vec`] copies
    /// it out. [`Closure::map`] is the same job as a value, for the lab
    /// ([`run`](crate::run())) or [`Pool::run_with`]'s options.
    ///
    /// ```no_run
    /// use procpool::Pool;
    ///
    /// procpool::init();
    /// let mut pool = Pool::builder().workers(2).build()?;
    /// let offset = 10u64;
    /// let squares = pool.map_range(1000, &offset, |offset, i| i * i + offset)?;
    /// assert_eq!(squares.results()[3], 19);
    /// # Ok::<(), procpool::Error>(())
    /// ```
    pub fn map_range<P, T, F>(&mut self, n: u64, params: &P, f: F) -> Result<PoolRun<'_, T>>
    where
        P: Params,
        T: Element,
        F: Fn(&P, u64) -> T + Send + Sync,
    {
        self.run(&Closure::map(params.clone(), f), n)
    }

    /// Like [`Pool::map_range`], with a closure that fills a whole chunk:
    /// `f(&params, range, out)` writes `out[k]` for index `range.start + k`.
    pub fn map_chunks<P, T, F>(&mut self, n: u64, params: &P, f: F) -> Result<PoolRun<'_, T>>
    where
        P: Params,
        T: Element,
        F: Fn(&P, Range<u64>, &mut [T]) + Send + Sync,
    {
        self.run(&Closure::chunks(params.clone(), f), n)
    }

    /// Computes `f(&params, &items[i])` for every item: a map over data you already have.
    ///
    /// The items are copied once into a sealed memfd that every worker maps read-only
    /// (an [`Input`](crate::Input)); chunk messages carry ranges, never items. To run
    /// several jobs over the same items, build the [`Closure::items`] job once and
    /// [`Pool::run`] it: the items are then shared once.
    pub fn map_items<I, P, T, F>(&mut self, items: &[I], params: &P, f: F) -> Result<PoolRun<'_, T>>
    where
        I: Element,
        P: Params,
        T: Element,
        F: Fn(&P, &I) -> T + Send + Sync,
    {
        let job = Closure::items(items, params.clone(), f)?;
        self.run(&job, items.len() as u64)
    }

    /// Like [`Pool::map_range`] with a fallible closure: the first `Err` fails the job
    /// with [`Error::KernelFailed`](crate::Error::KernelFailed), naming the chunk, its
    /// range, the worker and the error's text. It is not a panic and not retried, and the
    /// pool keeps its workers for the next job.
    pub fn try_map_range<P, T, E, F>(&mut self, n: u64, params: &P, f: F) -> Result<PoolRun<'_, T>>
    where
        P: Params,
        T: Element,
        E: fmt::Display,
        F: Fn(&P, u64) -> std::result::Result<T, E> + Send + Sync,
    {
        self.run(&Closure::try_map(params.clone(), f), n)
    }

    /// Folds `0..n` in the workers and returns the result, with no output buffer at all:
    /// each chunk folds its indices from `identity` (`fold(&params, acc, i)`), and the
    /// chunks' accumulators are combined **in chunk order** (`combine(left, right)`), so
    /// a float sum is the same on every run with the same chunks. [`Fold`] is the same job
    /// as a value (a chunk-at-a-time fold, the lab's [`run_reduce`](crate::run_reduce)).
    ///
    /// ```no_run
    /// use procpool::Pool;
    ///
    /// procpool::init();
    /// let mut pool = Pool::builder().workers(2).build()?;
    /// let sum = pool.fold_range(1_000_000, &(), 0u64, |_, acc, i| acc + i, |a, b| a + b)?;
    /// assert_eq!(sum, 499_999_500_000);
    /// # Ok::<(), procpool::Error>(())
    /// ```
    pub fn fold_range<P, A, F, C>(
        &mut self,
        n: u64,
        params: &P,
        identity: A,
        fold: F,
        combine: C,
    ) -> Result<A>
    where
        P: Params,
        A: Params,
        F: Fn(&P, A, u64) -> A + Send + Sync,
        C: Fn(A, A) -> A + Send + Sync,
    {
        let job = Fold::new(params.clone(), identity, fold, combine);
        Ok(self.reduce(&job, n)?.value)
    }
}
