//! The peer process: forked, pinned if asked, serving round trips and transfers.

use super::*;

/// Parent to peer.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum ToPeer {
    /// Answer `Pong(n + 1)`.
    Ping(u64),
    /// Read this many messages from the byte channel, then answer with their `Tally`.
    Bytes { messages: u64 },
    /// A message waits in the shared region at `offset..offset + len`: read it, then `Ack`.
    Ready { offset: u64, len: u64 },
    /// Answer with the `Tally` of the shared-memory messages since the last `ShmEnd`.
    ShmEnd,
    /// Claim from queue posting `posting` (of `chunks` chunks) once the parent says go,
    /// until nothing is left; answer `Claimed`.
    Claim { posting: u64, chunks: u64 },
    /// Play `rounds` rounds of futex ping-pong, then answer `FutexDone`.
    Futex { rounds: u64 },
    /// Exit with status 0.
    Stop,
}

/// Peer to parent.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum FromPeer {
    /// Started (and pinned, if asked).
    Ready,
    Pong(u64),
    /// A shared-memory message was read; its slot is free.
    Ack,
    Tally(Tally),
    /// The queue's posting is drained: the chunks this peer claimed, and when it finished
    /// (CLOCK_MONOTONIC ns).
    Claimed {
        claims: u64,
        end_ns: u64,
    },
    /// The ping-pong is over: how many of the peer's futex waits slept.
    FutexDone {
        slept: u64,
    },
    /// The peer cannot go on; it exits next.
    Failed(String),
}

/// The forked peer, seen from the parent. Dropping it kills and reaps the process (a no-op
/// kill once it is reaped), so no error path leaves a child behind.
pub(super) struct Peer {
    pub(super) child: Process,
    pub(super) tx: IpcSender<ToPeer>,
    pub(super) rx: IpcReceiver<FromPeer>,
}

impl Peer {
    /// Forks the peer, pinned to `cpu` if given, and waits for its `Ready`.
    pub(super) fn start(
        cpu: Option<usize>,
        bytes: Option<IpcBytesReceiver>,
        shm: Option<&Mapping>,
    ) -> Result<Peer> {
        Self::fork(cpu, bytes, shm, None)
    }

    /// Forks the peer with the queue's shared memory, to claim chunks and play futex
    /// ping-pong.
    pub(super) fn start_with_queue(cpu: Option<usize>, queue: &QueueArea) -> Result<Peer> {
        Self::fork(cpu, None, None, Some(queue))
    }

    fn fork(
        cpu: Option<usize>,
        bytes: Option<IpcBytesReceiver>,
        shm: Option<&Mapping>,
        queue: Option<&QueueArea>,
    ) -> Result<Peer> {
        let parent = nix::unistd::getpid();
        let (tx, peer_rx) = ipc::channel::<ToPeer>()?;
        let (peer_tx, rx) = ipc::channel::<FromPeer>()?;
        let shared = Shared { bytes, shm, queue };
        let pid = crate::engine::sys::fork_child(move || {
            peer_main(parent, cpu, &peer_rx, &peer_tx, &shared)
        })
        .map_err(|e| {
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("cannot fork the ipc-bench peer: {e}"),
            ))
        })?;
        // The closure, holding the peer's ends of the channels, was dropped here when
        // `fork_child` returned: only the peer holds them now, so its death shows as
        // Disconnected on our side.
        let mut peer = Peer {
            child: Process::from_pid(pid),
            tx,
            rx,
        };
        match peer.reply("starting")? {
            FromPeer::Ready => Ok(peer),
            other => Err(peer.unexpected(other, "starting")),
        }
    }

    pub(super) fn send(&mut self, message: ToPeer, what: &str) -> Result<()> {
        match self.tx.send(message) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.lost(what, &e)),
        }
    }

    /// A control reply, within [`PEER_TIMEOUT`].
    pub(super) fn reply(&mut self, what: &str) -> Result<FromPeer> {
        match self.rx.try_recv_timeout(PEER_TIMEOUT) {
            Ok(message) => Ok(message),
            Err(TryRecvError::Empty) => Err(Error::Ipc(format!(
                "the ipc-bench peer (pid {}) did not answer within {PEER_TIMEOUT:?} while {what}",
                self.child.id()
            ))),
            Err(TryRecvError::IpcError(e)) => Err(self.lost(what, &e)),
        }
    }

    /// Waits (blocking, as in the timed loop) for one shared-memory `Ack`.
    pub(super) fn ack(&mut self) -> Result<()> {
        match self.rx.recv() {
            Ok(FromPeer::Ack) => Ok(()),
            Ok(other) => Err(self.unexpected(other, "waiting for an ack")),
            Err(e) => Err(self.lost("waiting for an ack", &e)),
        }
    }

    pub(super) fn check_tally(
        &mut self,
        reply: FromPeer,
        expected: &Tally,
        transport: &str,
        size: usize,
    ) -> Result<()> {
        match reply {
            FromPeer::Tally(got) if got == *expected => Ok(()),
            FromPeer::Tally(got) => Err(Error::Ipc(format!(
                "the ipc-bench {transport} transfer of {}-byte messages arrived wrong: the peer \
                 saw {} messages, {} bytes, checksum {:#x}; expected {} messages, {} bytes, \
                 checksum {:#x}",
                size,
                got.messages,
                got.bytes,
                got.checksum,
                expected.messages,
                expected.bytes,
                expected.checksum
            ))),
            other => Err(self.unexpected(other, "waiting for a tally")),
        }
    }

    /// The error for a reply that is not the one expected.
    pub(super) fn unexpected(&mut self, message: FromPeer, what: &str) -> Error {
        match message {
            FromPeer::Failed(why) => Error::Ipc(format!(
                "the ipc-bench peer (pid {}) failed while {what}: {why}",
                self.child.id()
            )),
            other => Error::Ipc(format!(
                "the ipc-bench peer (pid {}) sent {other:?} while {what}",
                self.child.id()
            )),
        }
    }

    /// The error for a broken channel: how the peer ended, if it did.
    pub(super) fn lost(&mut self, what: &str, error: &dyn std::fmt::Display) -> Error {
        match self.exit_within(Duration::from_secs(1)) {
            Some(cause) => Error::Ipc(format!(
                "the ipc-bench peer (pid {}) {cause} while {what}",
                self.child.id()
            )),
            None => Error::Ipc(format!(
                "the channel to the ipc-bench peer (pid {}) failed while {what}: {error}",
                self.child.id()
            )),
        }
    }

    /// Reaps the peer if it exits within `grace`.
    pub(super) fn exit_within(&mut self, grace: Duration) -> Option<ExitCause> {
        let deadline = Instant::now() + grace;
        loop {
            match self.child.try_wait() {
                Ok(Some(cause)) => return Some(cause),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_micros(200))
                }
                _ => return None,
            }
        }
    }

    /// Asks the peer to stop and reaps it; an exit other than status 0 is an error.
    pub(super) fn finish(mut self) -> Result<()> {
        self.send(ToPeer::Stop, "stopping")?;
        match self.exit_within(PEER_TIMEOUT) {
            Some(ExitCause::Exited(0)) => Ok(()),
            Some(cause) => Err(Error::Ipc(format!(
                "the ipc-bench peer (pid {}) {cause} when asked to stop",
                self.child.id()
            ))),
            None => Err(Error::Ipc(format!(
                "the ipc-bench peer (pid {}) did not stop within {PEER_TIMEOUT:?}; it was killed",
                self.child.id()
            ))),
        }
        // `self` drops here: kill (a no-op once reaped) and reap.
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the peer inherits besides its channels, each only for the requests that need it.
pub(super) struct Shared<'a> {
    /// The byte channel of the throughput test.
    pub(super) bytes: Option<IpcBytesReceiver>,
    /// The shared ring of the throughput test.
    pub(super) shm: Option<&'a Mapping>,
    /// The queue's control area and futex words.
    pub(super) queue: Option<&'a QueueArea>,
}

/// The peer process: arm the death signal, pin if asked, say Ready, then serve. Returns the
/// exit status.
pub(super) fn peer_main(
    parent: Pid,
    cpu: Option<usize>,
    rx: &IpcReceiver<ToPeer>,
    tx: &IpcSender<FromPeer>,
    shared: &Shared<'_>,
) -> i32 {
    // It inherited a copy of the parent's sending end, so its receive never sees the
    // parent go: the death signal is what ends it then.
    if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err() || nix::unistd::getppid() != parent
    {
        return 1;
    }
    if let Some(cpu) = cpu
        && let Err(e) = crate::engine::sys::pin_to(cpu)
    {
        let _ = tx.send(FromPeer::Failed(format!("cannot pin to CPU {cpu}: {e}")));
        return 3;
    }
    if tx.send(FromPeer::Ready).is_err() {
        return 1;
    }
    match serve(rx, tx, shared) {
        Ok(()) => 0,
        Err(message) => {
            let _ = tx.send(FromPeer::Failed(message));
            2
        }
    }
}

pub(super) fn serve(
    rx: &IpcReceiver<ToPeer>,
    tx: &IpcSender<FromPeer>,
    shared: &Shared<'_>,
) -> std::result::Result<(), String> {
    let (bytes, shm) = (shared.bytes.as_ref(), shared.shm);
    let queue = || shared.queue.ok_or("a queue request, but no queue");
    let send = |m: FromPeer| tx.send(m).map_err(|e| format!("cannot answer: {e}"));
    let mut shm_tally = Tally::default();
    loop {
        let message = rx.recv().map_err(|e| format!("cannot receive: {e}"))?;
        match message {
            ToPeer::Ping(n) => send(FromPeer::Pong(n.wrapping_add(1)))?,
            ToPeer::Bytes { messages } => {
                let bytes = bytes.ok_or("byte messages announced, but no byte channel")?;
                let mut tally = Tally::default();
                for _ in 0..messages {
                    let message = bytes
                        .recv()
                        .map_err(|e| format!("cannot receive a byte message: {e}"))?;
                    tally.add(&message);
                }
                send(FromPeer::Tally(tally))?;
            }
            ToPeer::Ready { offset, len } => {
                let shm = shm.ok_or("a shared-memory message, but no shared region")?;
                let range = usize::try_from(offset)
                    .ok()
                    .zip(usize::try_from(len).ok())
                    .and_then(|(o, l)| Some(o..o.checked_add(l)?))
                    .filter(|r| r.end <= shm.len())
                    .ok_or_else(|| {
                        format!(
                            "slot {offset}+{len} lies outside the region of {} bytes",
                            shm.len()
                        )
                    })?;
                // SAFETY: the parent wrote this slot before sending Ready and writes it
                // again only after our Ack (sent below, once this slice is gone).
                let message = unsafe { shm.slice(range) };
                shm_tally.add(message);
                send(FromPeer::Ack)?;
            }
            ToPeer::ShmEnd => send(FromPeer::Tally(std::mem::take(&mut shm_tally)))?,
            ToPeer::Claim { posting, chunks } => send(peer_claims(queue()?, posting, chunks)?)?,
            ToPeer::Futex { rounds } => send(peer_futex(queue()?, rounds)?)?,
            ToPeer::Stop => return Ok(()),
        }
    }
}
