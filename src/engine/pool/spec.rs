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

use crate::engine::input::ParamCache;
use crate::engine::protocol::{InputRef, JobSpec, SEALED_PARAMS_BYTES};
use crate::engine::sealed::Sealed;

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
    /// when nothing but the job number changed, else a new one. Large parameters go into a
    /// sealed memfd appended to `inputs` (the last job's own when the bytes are equal).
    pub(super) fn complete(
        &mut self,
        mut spec: JobSpec,
        params: Vec<u8>,
        inputs: &mut Vec<Arc<Sealed>>,
    ) -> std::io::Result<JobSpec> {
        if params.len() > SEALED_PARAMS_BYTES {
            let sealed = match self.sealed_params.take() {
                Some(last) if last.bytes() == &params[..] => last,
                _ => Arc::new(Sealed::create(crate::engine::input::next_id(), &params, 1)?),
            };
            spec.inputs.push(InputRef {
                id: sealed.id(),
                bytes: sealed.len() as u64,
                elem_size: 1,
            });
            inputs.push(Arc::clone(&sealed));
            self.sealed_params = Some(sealed);
            spec.params_sealed = true;
        } else {
            self.sealed_params = None;
            spec.params = ByteBuf::from(params);
        }
        let job = std::mem::replace(&mut spec.job, 0);
        let key = postcard::to_stdvec(&spec).unwrap_or_default();
        spec.job = job;
        if key != self.key || self.id == 0 {
            self.key = key;
            self.id += 1;
        }
        spec.spec_id = self.id;
        Ok(spec)
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
        let small = specs.complete(bare(1), vec![1, 2, 3], &mut inputs).unwrap();
        assert!(!small.params_sealed && inputs.is_empty());
        assert_eq!(&small.params[..], &[1, 2, 3]);
        let again = specs.complete(bare(2), vec![1, 2, 3], &mut inputs).unwrap();
        assert_eq!(again.spec_id, small.spec_id, "only the job number changed");

        let large = vec![9u8; SEALED_PARAMS_BYTES + 1];
        let first = specs.complete(bare(3), large.clone(), &mut inputs).unwrap();
        assert!(first.params_sealed && first.params.is_empty());
        assert_ne!(first.spec_id, small.spec_id);
        assert_eq!(inputs.len(), 1);
        assert_eq!(inputs[0].bytes(), &large[..]);
        assert_eq!(first.inputs.last().unwrap().bytes, large.len() as u64);
        assert!(
            postcard::to_stdvec(&first).unwrap().len() < 100,
            "a few bytes"
        );

        let mut inputs2 = Vec::new();
        let same = specs
            .complete(bare(4), large.clone(), &mut inputs2)
            .unwrap();
        assert_eq!(same.spec_id, first.spec_id, "equal bytes: the same spec");
        assert_eq!(inputs2[0].id(), inputs[0].id(), "and the same memfd");

        let mut changed = large;
        *changed.last_mut().unwrap() = 0;
        let mut inputs3 = Vec::new();
        let new = specs.complete(bare(5), changed, &mut inputs3).unwrap();
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
        let params = vec![4u8; SEALED_PARAMS_BYTES + 10];
        let spec = specs
            .complete(bare(1), params.clone(), &mut inputs)
            .unwrap();
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
