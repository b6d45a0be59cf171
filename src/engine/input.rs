//! [`Input`]: a read-only slice shared by the parent and every worker through one sealed
//! memfd, held by a workload as a field.
//!
//! Why not a field of the parameters? Parameters are serialized to every worker: a 30 MiB
//! table would cost 30 MiB of messages per worker and per changed job. An `Input` is
//! copied once, into a sealed memfd (see [`crate::engine::sealed`]); what the job's
//! parameters carry is a small index.
//!
//! It serializes the way ipc-channel serializes its `IpcSharedMemory`: through a
//! thread-local context. When a pool encodes a job ([`encoding`]), each `Input` records
//! itself in the context and writes only its index in the job's list of inputs; the pool
//! sends the list (ids and sizes) in the job's spec and the descriptors on the worker's
//! private socket. A worker decodes the parameters inside [`decoding`], with the inputs it
//! has mapped, and each index becomes a view of the same pages. Outside such a context an
//! `Input` refuses to serialize (a serde error, never a panic), except where the lab
//! describes a workload for a report ([`describing`]): then it is its size.
//!
//! This file lives in the engine layer, not beside the `Workload` trait, because it needs
//! the engine's sealed memfd; the trait does not name it.

use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::Error as _;
use serde::ser::{Error as _, SerializeStruct};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::engine::sealed::Sealed;
use crate::error::{Error, Result};
use crate::workload::params_format;

/// `value` encoded into a new sealed memfd (a [`crate::Param`] value, or a job's large
/// parameters) of id `id`.
pub(crate) fn to_sealed<T: Serialize + ?Sized>(
    value: &T,
    id: u64,
) -> std::result::Result<Sealed, String> {
    let bytes = params_format::to_vec(value).map_err(|e| e.to_string())?;
    Sealed::create(id, &bytes, 1).map_err(|e| {
        format!(
            "cannot place {} encoded bytes in a sealed memfd: {e}",
            bytes.len()
        )
    })
}

/// Ids for inputs created in this process (the parent): 0 is never used.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A new id for a sealed memfd of this process (an input, or parameters a job carries in
/// one): unique among them, never 0.
pub(crate) fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// A read-only slice of plain data shared with every worker through one sealed memfd.
///
/// Hold it as a field of your workload; read it in the kernel like a slice (it derefs to
/// `[T]`). It is cheap to clone (a reference count), and the parent's single-process run,
/// `--mode threads` and every worker read the very same pages: the data is copied once,
/// when the `Input` is made, and never serialized. A job's IPC carries only its size and
/// an index; the descriptor reaches each worker once, over a private socket, and the
/// worker maps it read-only after checking it is sealed (nobody, parent or worker, can
/// write it). [`JobStats::input_bytes`](crate::JobStats::input_bytes) reports its size.
///
/// ```no_run
/// use std::ops::Range;
/// use procpool::{Input, Pool, Registry, Workload};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// struct RowSums {
///     cols: usize,
///     matrix: Input<u32>,
/// }
///
/// impl Workload for RowSums {
///     const NAME: &'static str = "row-sums";
///     type Output = u64;
///     fn kernel(&self, range: Range<u64>, out: &mut [u64]) {
///         for (slot, r) in out.iter_mut().zip(range) {
///             let r = r as usize;
///             let row = &self.matrix[r * self.cols..(r + 1) * self.cols];
///             *slot = row.iter().map(|&x| u64::from(x)).sum();
///         }
///     }
/// }
///
/// fn main() -> Result<(), procpool::Error> {
///     procpool::init_with(Registry::builtin().register::<RowSums>());
///     let matrix: Vec<u32> = (0..1000 * 1000).collect();
///     let work = RowSums { cols: 1000, matrix: Input::new(&matrix)? };
///     let mut pool = Pool::builder().workers(2).build()?;
///     let run = pool.run(&work, 1000)?;
///     assert_eq!(run.results()[0], (0..1000).sum::<u64>());
///     Ok(())
/// }
/// ```
///
/// Serializing an `Input` outside a pool's job (with `serde_json`, say) is an error: it is
/// shared, not copied.
pub struct Input<T: bytemuck::Pod> {
    sealed: Arc<Sealed>,
    _t: PhantomData<T>,
}

impl<T: bytemuck::Pod> Input<T> {
    /// Copies `data` into a new sealed memfd and maps it read-only.
    ///
    /// Fails when the machine has not the memory for it (checked first, like a pool's
    /// shared region) or when the memfd cannot be made, written or sealed. Zero-sized
    /// element types are refused.
    pub fn new(data: &[T]) -> Result<Input<T>> {
        let elem_size = std::mem::size_of::<T>();
        if elem_size == 0 {
            return Err(Error::invalid_input(format!(
                "an Input of {} is not possible: the element type has no size",
                std::any::type_name::<T>()
            )));
        }
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let what = format!("an Input of {} {}", data.len(), std::any::type_name::<T>());
        crate::engine::limits::check_memory(
            &what,
            &[("shared input", bytes.len() as u128)],
            &crate::engine::limits::Machine::read(),
        )?;
        let sealed = Sealed::create(next_id(), bytes, elem_size).map_err(|e| {
            Error::invalid_input(format!(
                "cannot place {what} ({} bytes) in a sealed memfd: {e}",
                bytes.len()
            ))
        })?;
        Ok(Input {
            sealed: Arc::new(sealed),
            _t: PhantomData,
        })
    }

    /// Its size in bytes.
    pub fn byte_len(&self) -> usize {
        self.sealed.len()
    }
}

impl<T: bytemuck::Pod> TryFrom<Vec<T>> for Input<T> {
    type Error = Error;
    /// [`Input::new`] on the vector's elements (the vector is dropped afterwards).
    fn try_from(data: Vec<T>) -> Result<Self> {
        Input::new(&data)
    }
}

impl<T: bytemuck::Pod> Deref for Input<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.sealed.elements()
    }
}

impl<T: bytemuck::Pod> Clone for Input<T> {
    fn clone(&self) -> Self {
        Input {
            sealed: Arc::clone(&self.sealed),
            _t: PhantomData,
        }
    }
}

impl<T: bytemuck::Pod> fmt::Debug for Input<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Input")
            .field("type", &std::any::type_name::<T>())
            .field("len", &self.len())
            .field("bytes", &self.byte_len())
            .finish()
    }
}

/// What serializing an `Input` does on this thread right now.
enum Context {
    /// A pool encodes a job: inputs go into this list, their index into the bytes; with
    /// a cache, so do [`crate::Param`] values (each encoded into a sealed memfd of its
    /// own the first time the pool sees it).
    Encode(Vec<Arc<Sealed>>, Option<ParamCache>),
    /// The lab describes the workload for a report: an input is its size.
    Describe,
}

/// The sealed encodings of [`crate::Param`] values a pool sent, by the value's identity:
/// a value seen again is not encoded again.
#[derive(Debug, Default)]
pub(crate) struct ParamCache {
    pub(crate) known: std::collections::HashMap<u64, Arc<Sealed>>,
    /// The identities the job being encoded holds.
    used: Vec<u64>,
}

impl ParamCache {
    /// Forgets the values the last encoded job did not hold; returns the bytes of those
    /// it held (each distinct value once).
    fn keep_used(&mut self) -> u64 {
        let used = std::mem::take(&mut self.used);
        self.known.retain(|id, _| used.contains(id));
        self.known.values().map(|s| s.len() as u64).sum()
    }
}

/// What serializing a [`crate::Param`] does on this thread right now.
pub(crate) enum ParamSlot {
    /// A pool encodes a job: the value is the job's input at this index.
    Index(u32),
    /// Anywhere else: the value is written in place.
    Inline,
}

/// Where the [`crate::Param`] of identity `id` goes in the job being encoded: its cached
/// memfd, else the new one `encode(memfd_id)` makes, listed among the job's inputs.
/// Outside a pool's encoding, [`ParamSlot::Inline`]. `encode` runs outside any context,
/// so what it holds is written in place.
pub(crate) fn param_slot(
    id: u64,
    encode: impl FnOnce(u64) -> std::result::Result<Sealed, String>,
) -> std::result::Result<ParamSlot, String> {
    let cached = ENCODE.with(|c| match &mut *c.borrow_mut() {
        Some(Context::Encode(inputs, Some(cache))) => {
            let sealed = cache.known.get(&id).cloned();
            Some(sealed.map(|s| {
                cache.used.push(id);
                list(inputs, &s)
            }))
        }
        _ => None,
    });
    match cached {
        None => return Ok(ParamSlot::Inline),
        Some(Some(index)) => return Ok(ParamSlot::Index(index)),
        Some(None) => {}
    }
    let outer = ENCODE.with(|c| c.replace(None));
    let sealed = encode(next_id());
    ENCODE.with(|c| c.replace(outer));
    let sealed = Arc::new(sealed?);
    ENCODE.with(|c| match &mut *c.borrow_mut() {
        Some(Context::Encode(inputs, Some(cache))) => {
            cache.known.insert(id, Arc::clone(&sealed));
            cache.used.push(id);
            Ok(ParamSlot::Index(list(inputs, &sealed)))
        }
        _ => Err("the job's encoding ended while a Param was encoded".to_string()),
    })
}

/// The index of `sealed` in `inputs`, listing it first if it is not there yet.
fn list(inputs: &mut Vec<Arc<Sealed>>, sealed: &Arc<Sealed>) -> u32 {
    match inputs.iter().position(|s| s.id() == sealed.id()) {
        Some(index) => index as u32,
        None => {
            inputs.push(Arc::clone(sealed));
            (inputs.len() - 1) as u32
        }
    }
}

/// The value a worker decodes from the sealed memfd at `index` of the job it is decoding:
/// `decode(bytes)` the first time, then the same value while later jobs list the same
/// memfd (kept beside it, checked by type). `decode` runs outside the context.
pub(crate) fn param_sealed<T: Send + Sync + 'static>(
    index: u32,
    decode: impl FnOnce(&[u8]) -> std::result::Result<T, String>,
) -> std::result::Result<Arc<T>, String> {
    let sealed = DECODE.with(|c| match &*c.borrow() {
        None => Err("a Param index outside a worker's decoding".to_string()),
        Some(inputs) => inputs.get(index as usize).cloned().ok_or_else(|| {
            format!(
                "Param index {index} is out of range: the job has {} inputs",
                inputs.len()
            )
        }),
    })?;
    let known = DECODED.with(|d| {
        d.borrow()
            .iter()
            .find(|(s, _)| Arc::ptr_eq(s, &sealed))
            .and_then(|(_, v)| Arc::clone(v).downcast::<T>().ok())
    });
    if let Some(value) = known {
        return Ok(value);
    }
    let outer = DECODE.with(|c| c.replace(None));
    let result = decode(sealed.bytes());
    DECODE.with(|c| c.replace(outer));
    let value = Arc::new(result?);
    DECODED.with(|d| {
        let value: Arc<dyn std::any::Any + Send + Sync> = Arc::clone(&value) as _;
        d.borrow_mut().push((sealed, value));
    });
    Ok(value)
}

/// Whether this thread decodes a job for a worker right now (a [`crate::Param`] then
/// reads an index, not its value).
pub(crate) fn in_decoding() -> bool {
    DECODE.with(|c| c.borrow().is_some())
}

thread_local! {
    static ENCODE: RefCell<Option<Context>> = const { RefCell::new(None) };
    static DECODE: RefCell<Option<Vec<Arc<Sealed>>>> = const { RefCell::new(None) };
    /// The values a worker decoded from `Param` memfds, beside their memfd: those of the
    /// job decoded last, dropped once a job no longer lists their memfd.
    #[allow(clippy::type_complexity)]
    static DECODED: RefCell<Vec<(Arc<Sealed>, Arc<dyn std::any::Any + Send + Sync>)>> =
        const { RefCell::new(Vec::new()) };
}

/// Runs `f` (which serializes a job's workload) in an encoding context; returns its result
/// and the distinct inputs it serialized, in index order.
pub(crate) fn encoding<R>(f: impl FnOnce() -> R) -> (R, Vec<Arc<Sealed>>) {
    let outer = ENCODE.with(|c| c.replace(Some(Context::Encode(Vec::new(), None))));
    let result = f();
    let inner = ENCODE.with(|c| c.replace(outer));
    match inner {
        Some(Context::Encode(inputs, _)) => (result, inputs),
        _ => (result, Vec::new()),
    }
}

/// What [`encoding_params`] found besides the encoded bytes.
#[derive(Debug, Default)]
pub(crate) struct Encoded {
    /// The job's sealed memfds in index order: its `Input`s and its `Param` values.
    pub(crate) inputs: Vec<Arc<Sealed>>,
    /// Bytes of the `Param` values' encodings among them (each distinct value once).
    pub(crate) param_bytes: u64,
}

/// [`encoding`] for a pool's job: [`crate::Param`] values go into sealed memfds too,
/// found in `cache` when the pool saw them before (and not encoded again). The cache
/// keeps only the values this job holds.
pub(crate) fn encoding_params<R>(cache: &mut ParamCache, f: impl FnOnce() -> R) -> (R, Encoded) {
    let context = Context::Encode(Vec::new(), Some(std::mem::take(cache)));
    let outer = ENCODE.with(|c| c.replace(Some(context)));
    let result = f();
    let inner = ENCODE.with(|c| c.replace(outer));
    let Some(Context::Encode(inputs, Some(back))) = inner else {
        return (result, Encoded::default());
    };
    *cache = back;
    let param_bytes = cache.keep_used();
    (
        result,
        Encoded {
            inputs,
            param_bytes,
        },
    )
}

/// The bytes of the distinct inputs `workload` holds (0 when it holds none, or cannot be
/// encoded).
pub(crate) fn input_bytes<W: Serialize>(workload: &W) -> u64 {
    let (_, inputs) = encoding(|| crate::workload::params_format::encoded_len(workload));
    inputs.iter().map(|s| s.len() as u64).sum()
}

/// The bytes of `workload`'s encoded parameters: its `Input` fields as an index each, its
/// `Param` fields written in place (0 when it cannot be encoded).
pub(crate) fn param_bytes<W: Serialize>(workload: &W) -> u64 {
    let (size, _) = encoding(|| crate::workload::params_format::encoded_len(workload));
    size.map_or(0, |n| n as u64)
}

/// Runs `f` (which serializes a workload for a report) with every input written as its
/// size.
pub(crate) fn describing<R>(f: impl FnOnce() -> R) -> R {
    let outer = ENCODE.with(|c| c.replace(Some(Context::Describe)));
    let result = f();
    ENCODE.with(|c| c.replace(outer));
    result
}

/// Runs `f` (which decodes a job's workload) with `inputs`, the job's inputs in index
/// order, for its `Input` fields to find.
pub(crate) fn decoding<R>(inputs: Vec<Arc<Sealed>>, f: impl FnOnce() -> R) -> R {
    DECODED.with(|d| {
        d.borrow_mut()
            .retain(|(s, _)| inputs.iter().any(|i| Arc::ptr_eq(i, s)))
    });
    let outer = DECODE.with(|c| c.replace(Some(inputs)));
    let result = f();
    DECODE.with(|c| c.replace(outer));
    result
}

impl<T: bytemuck::Pod> Serialize for Input<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        enum Found {
            Index(u32),
            Describe,
            Outside,
        }
        let found = ENCODE.with(|c| match &mut *c.borrow_mut() {
            Some(Context::Encode(inputs, _)) => Found::Index(list(inputs, &self.sealed)),
            Some(Context::Describe) => Found::Describe,
            None => Found::Outside,
        });
        match found {
            Found::Index(index) => serializer.serialize_u32(index),
            Found::Describe => {
                let mut s = serializer.serialize_struct("Input", 2)?;
                s.serialize_field("input_elems", &self.len())?;
                s.serialize_field("input_bytes", &self.byte_len())?;
                s.end()
            }
            Found::Outside => Err(S::Error::custom(
                "a procpool::Input is shared through memory, not copied: only a Pool sending a \
                 job can serialize it",
            )),
        }
    }
}

impl<'de, T: bytemuck::Pod> Deserialize<'de> for Input<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let index = u32::deserialize(deserializer)? as usize;
        let sealed = DECODE.with(|c| match &*c.borrow() {
            None => Err(D::Error::custom(
                "a procpool::Input can only be decoded by a worker receiving a job",
            )),
            Some(inputs) => inputs.get(index).cloned().ok_or_else(|| {
                D::Error::custom(format!(
                    "input index {index} is out of range: the job has {} inputs",
                    inputs.len()
                ))
            }),
        })?;
        let size = std::mem::size_of::<T>();
        if sealed.elem_size() != size || size == 0 || sealed.len() % size != 0 {
            return Err(D::Error::custom(format!(
                "input {index} holds {} bytes of {}-byte elements, not of {} ({size} bytes)",
                sealed.len(),
                sealed.elem_size(),
                std::any::type_name::<T>()
            )));
        }
        Ok(Input {
            sealed,
            _t: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Serialize, Deserialize)]
    struct Two {
        a: Input<u32>,
        b: Input<u32>,
        again: Input<u32>,
    }

    #[test]
    fn an_input_encodes_as_an_index_and_decodes_to_the_same_pages() {
        let a = Input::new(&[1u32, 2, 3]).unwrap();
        let b = Input::try_from(vec![4u32; 1000]).unwrap();
        let two = Two {
            a: a.clone(),
            b,
            again: a.clone(),
        };
        let (bytes, inputs) = encoding(|| params_format::to_vec(&two));
        let bytes = bytes.unwrap();
        assert_eq!(bytes.len(), 3, "three one-byte indices");
        assert_eq!(inputs.len(), 2, "one input listed once");
        let back: Two = decoding(inputs, || params_format::from_bytes(&bytes)).unwrap();
        assert_eq!(&back.a[..], &[1, 2, 3]);
        assert_eq!(back.b.len(), 1000);
        assert_eq!(back.again.as_ptr(), a.as_ptr(), "the same mapping");
    }

    #[test]
    fn outside_a_job_an_input_is_a_serde_error_or_its_size() {
        let two = Two {
            a: Input::new(&[1u32]).unwrap(),
            b: Input::new(&[]).unwrap(),
            again: Input::new(&[2u32, 3]).unwrap(),
        };
        let err = serde_json::to_string(&two).unwrap_err().to_string();
        assert!(err.contains("shared through memory"), "{err}");
        let json = describing(|| serde_json::to_value(&two)).unwrap();
        assert_eq!(json["again"]["input_bytes"], 8);
        assert!(params_format::from_bytes::<Two>(&[0, 0, 0]).is_err());
    }

    #[test]
    fn a_bad_index_or_element_size_is_a_decode_error() {
        let a = Input::new(&[1u32, 2]).unwrap();
        let (bytes, inputs) = encoding(|| params_format::to_vec(&a));
        let bytes = bytes.unwrap();
        let err = decoding(Vec::new(), || {
            params_format::from_bytes::<Input<u32>>(&bytes)
        });
        assert!(err.is_err());
        let wrong = decoding(inputs.clone(), || {
            params_format::from_bytes::<Input<u64>>(&bytes)
        });
        assert!(wrong.is_err());
        let ok = decoding(inputs, || params_format::from_bytes::<Input<u32>>(&bytes)).unwrap();
        assert_eq!(&ok[..], &[1, 2]);
        assert!(Input::<()>::new(&[(); 3]).is_err());
    }
}
