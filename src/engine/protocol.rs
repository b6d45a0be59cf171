//! The messages between the parent and its workers.
//!
//! Small on purpose: a chunk is a range and an id, a reply is an id and a duration. With
//! the default transport ([`Transport::Shm`]) results never cross the channel: workers
//! write them into the shared region. With [`Transport::Channel`] they come back inside
//! each `Done`, to measure what shared memory saves. Every message is postcard-encoded by
//! ipc-channel; [`wire_size`] gives its size for the IPC byte counters.

use ipc_channel::ipc::IpcSender;
use serde::{Deserialize, Serialize};

use crate::engine::fault::Fault;
pub(crate) use crate::workload::Registered;

/// Bumped whenever a message changes shape; a worker from another build is refused.
pub(crate) const PROTOCOL_VERSION: u32 = 8;

/// The first argument that turns a procpool-linked binary into a worker (see [`crate::init`]).
pub(crate) const WORKER_ARG: &str = "__procpool_worker";

/// Parent to worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum ToWorker {
    /// The first message on a spawned worker's connection: the channel on which the worker
    /// answers. The parent made this channel itself, so what arrives on it comes from the
    /// process it handed the sender to and nobody else.
    Welcome {
        /// Where the worker sends [`FromWorker`] messages.
        to_parent: IpcSender<FromWorker>,
    },
    /// A job's spec, sent when it differs from the last one this worker got; the job itself
    /// starts when the parent opens a posting with this spec in the control block.
    Job(JobSpec),
    /// Compute `start..end` of the current job into the shared region.
    Chunk {
        /// The posting the chunk belongs to: a worker runs it only while that posting is
        /// open (a job stopped early leaves chunks in the socket that nobody must run).
        posting: u64,
        /// Chunk id within the job.
        id: u64,
        /// First index.
        start: u64,
        /// One past the last index.
        end: u64,
        /// 0 the first time this chunk is handed out, then 1, 2, … on retries.
        attempt: u32,
    },
    /// The channel-dispatched posting `posting` is over: wait on the control block again.
    EndJob {
        /// The posting it ends.
        posting: u64,
    },
    /// Finish: exit with status 0.
    Shutdown,
}

/// What a worker needs to know about a job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct JobSpec {
    /// Job id within this pool.
    pub job: u64,
    /// Which spec this is: postings name it, and a worker that has it already is not sent
    /// it again (back-to-back jobs of one workload cost no message).
    pub spec_id: u64,
    /// Registry name of the workload.
    pub workload: String,
    /// The workload value, postcard-encoded, when it is small enough to travel in the
    /// message (empty when `params_sealed`).
    pub params: serde_bytes::ByteBuf,
    /// The encoded workload is too large for a message (more than
    /// [`SEALED_PARAMS_BYTES`]): it is the last of `inputs`, a sealed memfd the worker
    /// maps and decodes like the other inputs.
    pub params_sealed: bool,
    /// Size of one output element in bytes.
    pub elem_size: u32,
    /// The job's shared read-only inputs, in the order the parameters index them: sizes
    /// only, never data. Their descriptors travel on the worker's private socket, once per
    /// worker (see [`crate::engine::sealed`]).
    pub inputs: Vec<InputRef>,
    /// Faults to inject, for demonstrations and tests.
    pub faults: Vec<Fault>,
    /// How results come back.
    pub transport: Transport,
    /// The layout of the shared region: element `i` lives in window slot
    /// `(i / window_elems) % ring`, at `i % window_elems` within it. A job without streaming
    /// has one window as long as the job (`ring` = 1), so element `i` is at `i`.
    pub layout: Layout,
    /// Bytes of each chunk's accumulator slot when the job reduces (0: it does not); the
    /// worker reduces every chunk and puts the encoded accumulator in the chunk table (or
    /// in its `Done`).
    pub reduce_slot: u64,
    /// False for a reduction-only job: the region holds no output, and each worker runs
    /// the kernel into memory of its own.
    pub output: bool,
}

/// Encoded parameters larger than this travel in a sealed memfd, not in the spec's message.
///
/// Why 64 KiB: a message this small fits in a channel's socket buffer (about 208 KiB by
/// default) beside the few others that may be queued, so sending it never waits for the
/// worker to read; and a memfd costs a few system calls (tens of microseconds), less than
/// copying 64 KiB through a socket twice per worker. Above it, the parameters are written
/// once, whatever the number of workers, and every worker maps the same pages.
pub(crate) const SEALED_PARAMS_BYTES: usize = 64 << 10;

/// One shared input of a job, as the spec names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InputRef {
    /// The input's id in the parent: a worker keeps its mapping under it across jobs.
    pub id: u64,
    /// Its size in bytes.
    pub bytes: u64,
    /// The size of one of its elements in bytes.
    pub elem_size: u32,
}

/// Where each element of a job lives in the shared region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Layout {
    /// Elements per window.
    pub window_elems: u64,
    /// Window slots in the region.
    pub ring: u64,
}

impl Layout {
    /// One window for the whole job: element `i` at `i`.
    pub(crate) fn flat(n: u64) -> Self {
        Layout {
            window_elems: n.max(1),
            ring: 1,
        }
    }

    /// The element offset in the region of index `i`.
    pub(crate) fn offset(&self, i: u64) -> u64 {
        (i / self.window_elems % self.ring) * self.window_elems + i % self.window_elems
    }

    /// Elements the region must hold.
    pub(crate) fn region_elems(&self, n: u64) -> u64 {
        if self.ring == 1 {
            n
        } else {
            self.window_elems * self.ring
        }
    }
}

/// How a worker's results reach the parent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Transport {
    /// Written straight into the shared region; only a small `Done` crosses the channel.
    #[default]
    Shm,
    /// Sent back inside the `Done` message over ipc-channel, and copied into place by the
    /// parent: what shared memory saves, made visible.
    Channel,
}

/// How chunks reach the workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Dispatch {
    /// Workers claim chunks from a queue in shared memory with one atomic add each; no
    /// message crosses a channel per chunk (the default).
    #[default]
    Queue,
    /// The parent sends every chunk over the worker's channel and the worker answers each
    /// with a `Done` message: the classic pool, kept to measure what the queue saves.
    Channel,
}

impl std::fmt::Display for Dispatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dispatch::Queue => "queue",
            Dispatch::Channel => "channel",
        })
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Shm => "shm",
            Transport::Channel => "channel",
        })
    }
}

/// Worker to parent.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromWorker {
    /// The kernel panicked on chunk `id`; the worker caught it and serves on.
    Panicked {
        /// The chunk id.
        id: u64,
        /// The panic message.
        message: String,
        /// Where it panicked (`file:line:column`), when known.
        location: Option<String>,
        /// The kernel returned an error (a fallible closure's `Err`) rather than panicked:
        /// `message` is the error's text.
        failed: bool,
    },
    /// The answer to [`ToWorker::Welcome`]: the worker's build. It names no process id:
    /// procpool trusts only the pid it got from `spawn` itself.
    Hello {
        /// [`PROTOCOL_VERSION`] of the worker's build.
        version: u32,
        /// The workloads the worker can run, so that the parent refuses a job no worker
        /// could run before sending it.
        workloads: Vec<Registered>,
    },
    /// Wakes a parent that sleeps (queue dispatch): the job is done, a streaming window is
    /// complete, or a worker went idle after a death.
    Wake,
    /// The worker reached its recycling limit (chunks or memory): on the queue it has left
    /// the job holding nothing and exits; on the channels it finishes the chunks it holds
    /// and waits for `Shutdown`. Either way the pool starts a fresh process in its slot.
    Retiring,
    /// A chunk is written into the shared region.
    Done {
        /// The chunk id.
        id: u64,
        /// Time spent in the kernel, in nanoseconds.
        compute_ns: u64,
        /// The chunk's encoded accumulator, when the job reduces.
        reduction: Option<serde_bytes::ByteBuf>,
        /// The chunk's output bytes, with [`Transport::Channel`] only.
        data: Option<serde_bytes::ByteBuf>,
    },
    /// The worker could not start the job (for example an unregistered workload). It exits
    /// after sending this.
    Failed {
        /// What went wrong.
        message: String,
    },
}

/// Bytes a message occupies on the wire (its postcard encoding).
///
/// Must not be called on a message holding a channel (`Welcome`): serializing a channel
/// queues its descriptor for the next send.
pub(crate) fn wire_size<T: Serialize>(msg: &T) -> u64 {
    postcard::serialize_with_flavor::<T, _, usize>(msg, postcard::ser_flavors::Size::default())
        .map(|n| n as u64)
        .unwrap_or(0)
}

/// Size counted for a `Welcome`: its tag, the channel's descriptor travels beside the bytes.
pub(crate) fn welcome_wire_size() -> u64 {
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_places_windows_in_a_ring() {
        let flat = Layout::flat(100);
        assert_eq!((flat.offset(0), flat.offset(99)), (0, 99));
        let ring = Layout {
            window_elems: 10,
            ring: 3,
        };
        assert_eq!(ring.offset(5), 5);
        assert_eq!(ring.offset(15), 15);
        assert_eq!(ring.offset(25), 25);
        assert_eq!(ring.offset(35), 5);
        assert_eq!(ring.offset(47), 17);
        assert_eq!(ring.region_elems(1000), 30);
    }

    #[test]
    fn chunk_messages_are_a_few_bytes() {
        let msg = ToWorker::Chunk {
            posting: 100_000,
            id: 1000,
            start: 10_000_000,
            end: 10_250_000,
            attempt: 0,
        };
        let size = wire_size(&msg);
        assert!(size > 0 && size < 20, "{size}");
        let done = FromWorker::Done {
            id: 1000,
            compute_ns: 1_000_000,
            reduction: None,
            data: None,
        };
        let size = wire_size(&done);
        assert!(size > 0 && size < 16, "{size}");
        assert_eq!(size as usize, postcard::to_stdvec(&done).unwrap().len());
    }
}
