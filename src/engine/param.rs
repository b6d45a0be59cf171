//! [`Param`]: a large parameter value with an identity, so that a pool sends it once and
//! not with every job.
//!
//! Why? A pool knows whether a job's parameters changed only by looking at them. For a
//! plain field (a `Vec<u8>` of 50 MiB) that means encoding and comparing 50 MiB on every
//! job: tens of milliseconds, however small the job. A `Param` carries an identity (a
//! number unique in the process) that changes whenever the value may have changed (every
//! `&mut` access), so the pool recognises a value it already sent without reading it.
//!
//! It rides on the machinery of [`crate::Input`]: inside a pool's encoding, the first time
//! the pool sees an identity it encodes the value into a sealed memfd of its own (see
//! [`crate::engine::input::param_slot`]) and the parameters carry its index; the worker
//! maps the memfd (checked sealed and of the right size, as any input) and decodes the
//! value from it. Everywhere else (a report, JSON, the MPI backend) a `Param` is written
//! in place, as its value.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::{DeserializeOwned, Error as _};
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::engine::input::{ParamSlot, in_decoding, param_sealed, param_slot};
use crate::workload::params_format;

/// Identities of `Param` values in this process: 0 is never used.
static NEXT_IDENTITY: AtomicU64 = AtomicU64::new(1);

fn identity() -> u64 {
    NEXT_IDENTITY.fetch_add(1, Ordering::Relaxed)
}

/// A parameter value a pool sends to its workers only when it changed.
///
/// Every job's parameters (the workload value) reach each worker that does not have them
/// yet. To know whether they changed, the pool encodes them again on every job and
/// compares the bytes: a fraction of a millisecond per MiB for a vector of bytes or
/// floats, more for other types. Put a large parameter in a `Param` and the pool
/// compares an identity instead: a job whose `Param` is unchanged costs what
/// a job without it costs, whatever its size. The rule:
///
/// - Reading a `Param` (it derefs to `T`) keeps its identity; so does cloning it.
/// - Any `&mut` access ([`DerefMut`], [`Param::set`]) gives it a new identity, so the
///   next job encodes it again (once, into a sealed memfd every worker maps).
/// - A change made through `&T` (a `Cell`, a `Mutex`, an atomic inside `T`) is not seen:
///   keep such types out of a `Param`.
///
/// A large plain field works too (above 64 KiB of encoded parameters, they travel through
/// one sealed memfd, not through each worker's channel), but costs its encoding on every
/// job, changed or not. Read-only plain data (`[f64]`, `[u32]`, …) is best in an
/// [`Input`](crate::Input): never encoded at all, and the same pages in every process.
///
/// ```no_run
/// use std::ops::Range;
/// use procpool::{Param, Pool, Registry, Workload};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// struct Lookup {
///     round: u64,
///     table: Param<Vec<u8>>,
/// }
///
/// impl Workload for Lookup {
///     const NAME: &'static str = "lookup";
///     type Output = u64;
///     fn kernel(&self, range: Range<u64>, out: &mut [u64]) {
///         for (slot, i) in out.iter_mut().zip(range) {
///             *slot = self.round + u64::from(self.table[i as usize % self.table.len()]);
///         }
///     }
/// }
///
/// fn main() -> Result<(), procpool::Error> {
///     procpool::init_with(Registry::builtin().register::<Lookup>());
///     let mut pool = Pool::builder().workers(2).build()?;
///     let mut work = Lookup { round: 0, table: Param::new(vec![7; 50 << 20]) };
///     for round in 0..100 {
///         work.round = round; // the table is not encoded again
///         pool.run(&work, 1000)?;
///     }
///     work.table[0] = 8; // a new identity: the next job sends the table once
///     pool.run(&work, 1000)?;
///     Ok(())
/// }
/// ```
pub struct Param<T> {
    identity: u64,
    /// Shared by clones; a worker also shares it between the jobs of one spec's value.
    value: Arc<T>,
}

impl<T> Param<T> {
    /// Wraps `value` with a new identity.
    pub fn new(value: T) -> Self {
        Param {
            identity: identity(),
            value: Arc::new(value),
        }
    }

    /// Replaces the value (a new identity).
    pub fn set(&mut self, value: T) {
        self.identity = identity();
        self.value = Arc::new(value);
    }
}

impl<T: Clone> Param<T> {
    /// The value (a copy when clones of this `Param` still share it).
    pub fn into_inner(self) -> T {
        Arc::unwrap_or_clone(self.value)
    }
}

impl<T> Deref for Param<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: Clone> DerefMut for Param<T> {
    /// The value, mutably: the `Param` takes a new identity, so the next job sends it.
    /// When clones of this `Param` share the value, it is copied first (they keep theirs).
    fn deref_mut(&mut self) -> &mut T {
        self.identity = identity();
        Arc::make_mut(&mut self.value)
    }
}

impl<T> Clone for Param<T> {
    /// The same value (shared, not copied), so the same identity.
    fn clone(&self) -> Self {
        Param {
            identity: self.identity,
            value: Arc::clone(&self.value),
        }
    }
}

impl<T: Default> Default for Param<T> {
    fn default() -> Self {
        Param::new(T::default())
    }
}

impl<T> From<T> for Param<T> {
    fn from(value: T) -> Self {
        Param::new(value)
    }
}

impl<T: fmt::Debug> fmt::Debug for Param<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.value.fmt(f)
    }
}

impl<T: Serialize> Serialize for Param<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let slot = param_slot(self.identity, |id| {
            crate::engine::input::to_sealed(&*self.value, id)
                .map_err(|e| format!("cannot encode a Param: {e}"))
        })
        .map_err(S::Error::custom)?;
        match slot {
            ParamSlot::Index(index) => serializer.serialize_u32(index),
            ParamSlot::Inline => (*self.value).serialize(serializer),
        }
    }
}

impl<'de, T: DeserializeOwned + Send + Sync + 'static> Deserialize<'de> for Param<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if !in_decoding() {
            return T::deserialize(deserializer).map(Param::new);
        }
        let index = u32::deserialize(deserializer)?;
        // A worker decodes a memfd once: the next spec holding it shares the value.
        let value = param_sealed(index, |bytes| {
            params_format::from_bytes::<T>(bytes).map_err(|e| format!("cannot decode a Param: {e}"))
        })
        .map_err(D::Error::custom)?;
        Ok(Param {
            identity: identity(),
            value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::input::{ParamCache, decoding, encoding_params};

    #[derive(Debug, Clone, Serialize, Deserialize)]
    struct Job {
        round: u64,
        table: Param<Vec<u8>>,
    }

    #[test]
    fn an_unchanged_param_is_encoded_once_and_a_changed_one_again() {
        let mut cache = ParamCache::default();
        let mut job = Job {
            round: 1,
            table: Param::new(vec![3; 100_000]),
        };
        let (bytes, first) = encoding_params(&mut cache, || params_format::to_vec(&job));
        let bytes = bytes.unwrap();
        assert!(bytes.len() < 8, "an index, not the table: {}", bytes.len());
        assert_eq!(first.inputs.len(), 1);
        assert_eq!(
            first.param_bytes,
            params_format::to_vec(&*job.table).unwrap().len() as u64
        );
        let back: Job =
            decoding(first.inputs.clone(), || params_format::from_bytes(&bytes)).unwrap();
        assert_eq!(*back.table, *job.table);

        job.round = 2;
        let copy = job.clone();
        let (_, second) = encoding_params(&mut cache, || params_format::to_vec(&copy));
        assert_eq!(
            second.inputs[0].id(),
            first.inputs[0].id(),
            "the same memfd: not encoded again"
        );

        job.table[0] = 4;
        let (bytes, third) = encoding_params(&mut cache, || params_format::to_vec(&job));
        assert_ne!(
            third.inputs[0].id(),
            first.inputs[0].id(),
            "a change is seen"
        );
        let back: Job =
            decoding(third.inputs, || params_format::from_bytes(&bytes.unwrap())).unwrap();
        assert_eq!(back.table[0], 4);
        assert_eq!(cache.known.len(), 1, "the old encoding is forgotten");
    }

    #[test]
    fn outside_a_pool_a_param_is_its_value() {
        let job = Job {
            round: 5,
            table: Param::new(vec![1, 2]),
        };
        let json = serde_json::to_value(&job).unwrap();
        assert_eq!(json["table"], serde_json::json!([1, 2]));
        let back: Job = params_format::from_bytes(&params_format::to_vec(&job).unwrap()).unwrap();
        assert_eq!(*back.table, vec![1, 2]);
        // In a worker's decoding, an index out of range is an error, never a panic.
        let err = decoding(Vec::new(), || params_format::from_bytes::<Job>(&[5, 0]));
        assert!(err.is_err());
    }
}
