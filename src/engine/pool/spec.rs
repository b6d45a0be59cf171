//! A job's spec, made once per job: its parameters encoded once, carried in a sealed memfd
//! when large, and its identity found without encoding anything again.
//!
//! Why? A spec reaches every worker that does not have it yet. Sent through each worker's
//! channel, a large one fills the socket and is copied and encoded once per worker; and
//! telling whether the next job's spec is the same used to encode the whole of it again.
//! Here the workload is encoded once (by the caller); encoded parameters above
//! [`SEALED_PARAMS_BYTES`] are written once into a sealed memfd that travels like an
//! [`crate::Input`] (its descriptor on each worker's private socket, checked sealed and of
//! the spec's size there), so the channel carries a few hundred bytes whatever the size.
//! The identity of a spec is the encoding of what is left (small), with the memfd named by
//! its id: large parameters equal to the last job's (a byte comparison, no encoding) keep
//! the same memfd and so the same identity.

use std::sync::Arc;

use serde_bytes::ByteBuf;

use serde::Serialize;

use crate::engine::input::ParamCache;
use crate::workload::params_format;
use crate::engine::protocol::{InputRef, JobSpec, SEALED_PARAMS_BYTES};
use crate::engine::sealed::Sealed;

/// A job's encoded parameters: small ones in a vector (they travel in the spec), large
/// ones already in a sealed memfd (they travel as one of the job's inputs).
pub(super) enum Params {
    Inline(Vec<u8>),
    Sealed(Arc<Sealed>),
}

impl Params {
    /// Bytes of the encoding.
    pub(super) fn len(&self) -> usize {
        match self {
            Params::Inline(bytes) => bytes.len(),
            Params::Sealed(sealed) => sealed.len(),
        }
    }
}

/// Encodes a workload's parameters for the workers: counted first, then written once into
/// what carries them, a vector or (above [`SEALED_PARAMS_BYTES`]) a new sealed memfd.
pub(super) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Params, params_format::Error> {
    let len = params_format::encoded_len(value)?;
    if len <= SEALED_PARAMS_BYTES {
        let mut bytes = vec![0; len];
        params_format::encode_into(value, &mut bytes)?;
        return Ok(Params::Inline(bytes));
    }
    let id = crate::engine::input::next_id();
    Ok(Params::Sealed(Arc::new(crate::engine::input::to_sealed(value, len, id)?)))
}

/// The pool's memory of the last job's spec.
#[derive(Debug, Default)]
pub(super) struct Specs {
    /// The last spec's identity: its encoding without the job number, the parameters
    /// small or named by their memfd.
    key: Vec<u8>,
    /// The last spec's id (0: none yet).
    id: u64,
    /// The last job's large parameters, to compare the next job's with and keep.
    sealed_params: Option<Arc<Sealed>>,
    /// The sealed encodings of the [`crate::Param`] values the last job held.
    pub(super) param_cache: ParamCache,
}

impl Specs {
    /// Completes `spec` (whose `params` are empty and `inputs` list the job's `inputs`)
    /// with the job's encoded parameters `params` and gives it its id: the last job's
    /// when nothing but the job number changed, else a new one. Large parameters, already
    /// in a sealed memfd, are appended to `inputs` (the last job's memfd instead when the
    /// bytes are equal).
    pub(super) fn complete(
        &mut self,
        mut spec: JobSpec,
        params: Params,
        inputs: &mut Vec<Arc<Sealed>>,
    ) -> JobSpec {
        match params {
            Params::Sealed(new) => {
                let sealed = match self.sealed_params.take() {
                    Some(last) if last.bytes() == new.bytes() => last,
                    _ => new,
                };
                spec.inputs.push(InputRef {
                    id: sealed.id(),
                    bytes: sealed.len() as u64,
                    elem_size: 1,
                });
                inputs.push(Arc::clone(&sealed));
                self.sealed_params = Some(sealed);
                spec.params_sealed = true;
            }
            Params::Inline(bytes) => {
                self.sealed_params = None;
                spec.params = ByteBuf::from(bytes);
            }
        }
        let job = std::mem::replace(&mut spec.job, 0);
        let key = postcard::to_stdvec(&spec).unwrap_or_default();
        spec.job = job;
        if key != self.key || self.id == 0 {
            self.key = key;
            self.id += 1;
        }
        spec.spec_id = self.id;
        spec
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::protocol::{Layout, Transport};

    fn bare(job: u64) -> JobSpec {
        JobSpec {
            job,
            spec_id: 0,
            workload: "w".into(),
            params: ByteBuf::new(),
            params_sealed: false,
            elem_size: 8,
            inputs: Vec::new(),
            faults: Vec::new(),
            transport: Transport::Shm,
            layout: Layout::flat(10),
            reduce_slot: 0,
            output: true,
        }
    }

    #[test]
    fn small_parameters_travel_inline_and_large_ones_in_one_memfd() {
        let mut specs = Specs::default();
        let mut inputs = Vec::new();
        let three = || encode(&(1u8, 2u8, 3u8)).unwrap();
        let small = specs.complete(bare(1), three(), &mut inputs);
        assert!(!small.params_sealed && inputs.is_empty());
        assert_eq!(&small.params[..], &[1, 2, 3]);
        let again = specs.complete(bare(2), three(), &mut inputs);
        assert_eq!(again.spec_id, small.spec_id, "only the job number changed");

        let large = vec![9u8; SEALED_PARAMS_BYTES + 1];
        let encoded = params_format::to_vec(&large).unwrap();
        let first = specs.complete(bare(3), encode(&large).unwrap(), &mut inputs);
        assert!(first.params_sealed && first.params.is_empty());
        assert_ne!(first.spec_id, small.spec_id);
        assert_eq!(inputs.len(), 1);
        assert_eq!(inputs[0].bytes(), &encoded[..]);
        assert_eq!(first.inputs.last().unwrap().bytes, encoded.len() as u64);
        assert!(
            postcard::to_stdvec(&first).unwrap().len() < 100,
            "a few bytes"
        );

        let mut inputs2 = Vec::new();
        let same = specs.complete(bare(4), encode(&large).unwrap(), &mut inputs2);
        assert_eq!(same.spec_id, first.spec_id, "equal bytes: the same spec");
        assert_eq!(inputs2[0].id(), inputs[0].id(), "and the same memfd");

        let mut changed = large;
        *changed.last_mut().unwrap() = 0;
        let mut inputs3 = Vec::new();
        let new = specs.complete(bare(5), encode(&changed).unwrap(), &mut inputs3);
        assert_ne!(
            new.spec_id, first.spec_id,
            "a change in the last byte is seen"
        );
        assert_ne!(inputs3[0].id(), inputs[0].id());
    }

    #[test]
    fn a_worker_maps_the_parameters_only_sealed_and_of_the_specs_size() {
        use std::io::Write;
        use std::os::fd::AsFd;
        let mut specs = Specs::default();
        let mut inputs = Vec::new();
        let value = vec![4u8; SEALED_PARAMS_BYTES + 10];
        let params = params_format::to_vec(&value).unwrap();
        let spec = specs.complete(bare(1), encode(&value).unwrap(), &mut inputs);
        let named = *spec.inputs.last().unwrap();
        let fd = || inputs[0].fd().try_clone_to_owned().unwrap();
        let mapped = Sealed::adopt(named.id, fd(), named.bytes, 1).unwrap();
        assert_eq!(mapped.bytes(), &params[..]);
        let err = Sealed::adopt(named.id, fd(), named.bytes + 1, 1).unwrap_err();
        assert!(err.contains("refused"), "{err}");
        // The same bytes in a memfd nobody sealed: refused.
        let open =
            nix::sys::memfd::memfd_create("params", nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING)
                .unwrap();
        let mut file = std::fs::File::from(open);
        file.write_all(&params).unwrap();
        let err = Sealed::adopt(
            named.id,
            file.as_fd().try_clone_to_owned().unwrap(),
            named.bytes,
            1,
        )
        .unwrap_err();
        assert!(err.contains("not sealed"), "{err}");
    }
}
