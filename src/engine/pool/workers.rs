//! The worker processes' lifecycle: their slots, starting and replacing them, recycling,
//! stopping and reaping them.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use ipc_channel::ipc::{IpcReceiverSet, IpcSender};

use super::{Death, Pool, StartMethod, spawn};
use crate::engine::protocol::{FromWorker, ToWorker, wire_size};
use crate::engine::sys::{ExitCause, Process};
use crate::error::{Error, Result};

/// Workers of a pool started in the background spawned per turn of a dispatch loop: the
/// loop polls handshakes in between, so each worker joins as soon as it is ready.
pub(super) const SPAWN_BATCH: usize = 8;

/// How often the dispatch loops ask the workers' processes whether they ended.
pub(super) const DEATH_SCAN: Duration = Duration::from_millis(2);

/// A worker process as the parent sees it. The slot (its id) outlives the process: a
/// replacement takes the same id.
pub(super) struct WorkerSlot {
    pub(super) id: usize,
    pub(super) pid: u32,
    /// `None` once reaped.
    pub(super) child: Option<Process>,
    /// `None` once told to stop, or dead.
    pub(super) tx: Option<IpcSender<ToWorker>>,
    /// Receiver id in the pool's set.
    pub(super) rid: Option<u64>,
    /// The thread forwarding the worker's output.
    pub(super) output: Option<spawn::Forwarder>,
    /// A replacement on its way through the handshake.
    pub(super) starting: Option<spawn::Starting>,
    /// The job spec this process was last sent (0: none).
    pub(super) spec_sent: u64,
    /// Not started yet (a pool started in the background): a job starts it.
    pub(super) unspawned: bool,
    /// It said it reached its recycling limit; its exit is not a death.
    pub(super) retiring: bool,
    /// Chunks this process ran (channel dispatch: its `Done` arrived), for the recycling
    /// limit. Counted as the worker counts them: a chunk it skipped (its job stopped
    /// early) does not count.
    pub(super) ran_chunks: u64,
    /// Our end of the process's private socket for input descriptors.
    pub(super) inputs_socket: Option<OwnedFd>,
    /// The inputs (ids) the process holds: those of the last spec it was sent.
    pub(super) inputs_held: Vec<u64>,
}

impl WorkerSlot {
    pub(super) fn empty(id: usize) -> Self {
        WorkerSlot {
            id,
            pid: 0,
            child: None,
            tx: None,
            rid: None,
            output: None,
            starting: None,
            spec_sent: 0,
            unspawned: false,
            retiring: false,
            ran_chunks: 0,
            inputs_socket: None,
            inputs_held: Vec::new(),
        }
    }

    /// Waits up to `grace` for the process to exit (then kills it), reaps it (which ends
    /// its process group: anything a kernel started there dies with it), and copies its
    /// last output lines for [`spawn::OUTPUT_DRAIN`] at most.
    pub(super) fn reap(&mut self, grace: Duration) -> ExitCause {
        self.tx = None;
        let cause = match self.child.take() {
            Some(mut child) => spawn::reap_within(&mut child, grace),
            None => ExitCause::Unknown,
        };
        if let Some(output) = self.output.take() {
            output.finish(Instant::now() + spawn::OUTPUT_DRAIN);
        }
        cause
    }
}

impl Pool {
    /// At the end of a job, the workers that said they retire but have not been replaced
    /// yet: waits for each to exit and starts its successor (before the next job, not
    /// during it). Returns how many.
    pub(super) fn settle_retired(&mut self) -> Result<u64> {
        let mut settled = 0;
        for w in 0..self.workers.len() {
            if !self.workers[w].retiring {
                continue;
            }
            if let Some(tx) = self.workers[w].tx.take() {
                let _ = tx.send(ToWorker::Shutdown);
            }
            self.retire(w);
            self.respawn(w)?;
            settled += 1;
        }
        Ok(settled)
    }

    /// Closes posting `id` and waits until no live worker is inside it, so that the next
    /// posting's fields can be written. A worker still inside after the grace period (a
    /// stopped process) is killed; the next job starts a fresh one in its slot.
    pub(super) fn close_posting(&mut self, id: u64) {
        self.control.close();
        self.await_leaving(id);
    }

    /// Waits until no live worker is inside posting `id` (closed already). One still inside
    /// after the grace period is killed and reaped; returned as (slot, pid), its slot marked
    /// for a fresh process.
    pub(super) fn await_leaving(&mut self, id: u64) -> Vec<(usize, u32)> {
        let deadline = Instant::now()
            .checked_add(self.supervision.grace)
            .unwrap_or_else(spawn::far_future);
        let mut spins = 0u32;
        loop {
            // A process that has exited leaves nothing to wait for (it is replaced as dead).
            let inside: Vec<usize> = (0..self.workers.len())
                .filter(|&w| self.control.inside(w, id))
                .filter(|&w| {
                    self.workers[w]
                        .child
                        .as_ref()
                        .is_some_and(|c| !c.has_exited())
                })
                .collect();
            if inside.is_empty() {
                return Vec::new();
            }
            if Instant::now() >= deadline {
                let mut killed = Vec::new();
                for w in inside {
                    killed.push((w, self.workers[w].pid));
                    crate::engine::sys::kill_hard(self.workers[w].pid);
                    let slot = &mut self.workers[w];
                    if let Some(rid) = slot.rid.take() {
                        self.by_receiver.remove(&rid);
                    }
                    slot.reap(Duration::from_secs(1));
                    // The next job starts a fresh process in the slot.
                    slot.unspawned = true;
                    self.control.reset_slot(w);
                }
                return killed;
            }
            spins += 1;
            if spins < 1000 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }

    /// Stops every worker and reaps it: a Shutdown message, then after a grace period
    /// SIGTERM, then after another SIGKILL (GNU parallel's `--termseq` idea). Returns how
    /// many workers needed SIGTERM and how many of those SIGKILL.
    pub(super) fn stop_all(&mut self) -> (usize, usize) {
        let grace = self.supervision.grace;
        // Workers waiting on the queue see this; those inside a channel job, the message.
        self.control.shut_down();
        for w in &mut self.workers {
            if let Some(mut starting) = w.starting.take() {
                starting.abort();
            }
            if let Some(tx) = w.tx.take() {
                let _ = tx.send(ToWorker::Shutdown);
            }
        }
        let mut needed = (0, 0);
        let mut running = self.wait_exits(grace);
        if !running.is_empty() {
            needed.0 = running.len();
            for &w in &running {
                crate::engine::sys::terminate(self.workers[w].pid);
            }
            running = self.wait_exits(grace);
        }
        if !running.is_empty() {
            needed.1 = running.len();
            for &w in &running {
                crate::engine::sys::kill_hard(self.workers[w].pid);
            }
        }
        // Every worker has exited or is killed: their last lines are copied in one short
        // moment, not one after the other.
        let drain = Instant::now() + spawn::OUTPUT_DRAIN;
        for output in self.workers.iter_mut().filter_map(|w| w.output.as_mut()) {
            output.stop_by(drain);
        }
        for w in &mut self.workers {
            w.reap(Duration::ZERO);
        }
        self.by_receiver.clear();
        needed
    }

    /// Waits up to `grace` for every worker to exit, reaping those that do. Returns the
    /// indices of those still running.
    pub(super) fn wait_exits(&mut self, grace: Duration) -> Vec<usize> {
        let deadline = Instant::now()
            .checked_add(grace)
            .unwrap_or_else(spawn::far_future);
        loop {
            let mut running = Vec::new();
            for (i, w) in self.workers.iter_mut().enumerate() {
                if let Some(child) = w.child.as_mut() {
                    match child.try_wait() {
                        // Its output is stopped with the others' in `stop_all`.
                        Ok(Some(_)) | Err(_) => w.child = None,
                        Ok(None) => running.push(i),
                    }
                }
            }
            if running.is_empty() || Instant::now() >= deadline {
                return running;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Registers a started worker in its slot (same id) and the receiver set.
    pub(super) fn install(&mut self, s: spawn::Started) -> Result<()> {
        self.charges.handshakes += s.handshake_ipc;
        let slot_index = self
            .workers
            .iter()
            .position(|w| w.id == s.id)
            .expect("a slot for every worker id");
        let rid = self.set.add(s.rx)?;
        self.by_receiver.insert(rid, slot_index);
        if self.workloads.is_empty() {
            self.workloads = s.workloads;
        }
        let slot = &mut self.workers[slot_index];
        slot.spec_sent = 0;
        slot.ran_chunks = 0;
        slot.inputs_socket = Some(s.inputs_socket);
        slot.inputs_held.clear();
        slot.pid = s.pid;
        slot.child = Some(s.child);
        slot.tx = Some(s.tx);
        slot.rid = Some(rid);
        slot.output = s.output;
        Ok(())
    }

    /// Starts a fresh set of workers after a failed job stopped them all. They come from
    /// the fork server, or are spawned: by now this process has threads, so it may not
    /// fork itself.
    pub(super) fn revive(&mut self) -> Result<()> {
        self.set = IpcReceiverSet::new()?;
        let (waker, waker_rx) = ipc_channel::ipc::channel::<()>()?;
        self.waker_rid = self.set.add(waker_rx)?;
        self.waker = waker;
        self.by_receiver.clear();
        // The new workers must not see the old set's shutdown.
        self.control = self.region.control()?;
        self.control.restart();
        self.draining = None;
        for w in 0..self.workers.len() {
            self.respawn(w)?;
        }
        self.broken = false;
        Ok(())
    }

    /// Replaces the workers that died between jobs (killed from outside, or ended with the
    /// thread that started them) before the job begins, so that none is blamed for a chunk
    /// it never received. Their deaths count as this job's restarts.
    pub(super) fn replace_the_dead(&mut self) -> Result<()> {
        for w in 0..self.workers.len() {
            let slot = &mut self.workers[w];
            let Some(child) = slot.child.as_mut() else {
                continue;
            };
            let Ok(Some(exit)) = child.try_wait() else {
                continue;
            };
            let (id, pid) = (slot.id, slot.pid);
            if let Some(rid) = slot.rid.take() {
                self.by_receiver.remove(&rid);
            }
            slot.reap(Duration::ZERO);
            let new_pid = self.respawn(w)?;
            self.charges.deaths.push(Death {
                id,
                pid,
                cause: format!("{exit} between jobs"),
                chunk: None,
                replaced_by: Some(new_pid),
            });
        }
        Ok(())
    }

    /// Spawns a worker for slot `w` and waits for its handshake (within the restart limit,
    /// like a start); returns its pid.
    pub(super) fn respawn(&mut self, w: usize) -> Result<u32> {
        self.workers[w].unspawned = false;
        self.control.reset_slot(w);
        let id = self.workers[w].id;
        if let Some(started) = self.fork_from_server(id) {
            let pid = started.pid;
            self.install(started)?;
            return Ok(pid);
        }
        self.ensure_spawner()?;
        let mut deaths = Vec::new();
        let started = spawn::start_workers(
            &self.exe,
            &self.dir,
            self.region.raw_fd(),
            id..id + 1,
            self.handshake_timeout,
            &self.pin,
            self.max_restarts,
            &self.supervision.interrupt,
            &mut deaths,
        )?;
        self.charges.deaths.extend(deaths);
        let mut pid = 0;
        for s in started {
            pid = s.pid;
            self.install(s)?;
        }
        Ok(pid)
    }

    /// Worker `w` retired after its recycling limit and has exited (or is exiting): reap it
    /// and start a fresh process in its slot. Not a death: nothing is blamed or retried.
    pub(super) fn recycle(&mut self, w: usize) -> Result<()> {
        self.retire(w);
        self.begin_start(w)?;
        Ok(())
    }

    /// Reaps retired worker `w` (within the grace period) and clears its slot.
    pub(super) fn retire(&mut self, w: usize) {
        let slot = &mut self.workers[w];
        if let Some(rid) = slot.rid.take() {
            self.by_receiver.remove(&rid);
        }
        slot.retiring = false;
        slot.reap(self.supervision.grace);
        self.control.reset_slot(w);
    }

    /// The worker a message came from, the message, and its size on the wire; `None` for a
    /// message from a worker already replaced (stale), or from the waker.
    pub(super) fn decode(
        &self,
        rid: u64,
        message: ipc_channel::ipc::IpcMessage,
    ) -> Result<Option<(usize, FromWorker, u64)>> {
        let Some(w) = self.by_receiver.get(&rid).copied() else {
            return Ok(None);
        };
        let msg: FromWorker = message
            .to()
            .map_err(|e| Error::Ipc(format!("worker {w} sent a bad message: {e}")))?;
        let size = wire_size(&msg);
        Ok(Some((w, msg, size)))
    }

    /// Starts up to `most` of the workers a pool started in the background has not started
    /// yet; their handshakes are polled by the loop like replacements'.
    pub(super) fn spawn_pending(&mut self, most: usize) -> Result<()> {
        let pending: Vec<usize> = (0..self.workers.len())
            .filter(|&w| self.workers[w].unspawned)
            .take(most)
            .collect();
        for w in pending {
            self.workers[w].unspawned = false;
            self.begin_start(w)?;
        }
        Ok(())
    }

    /// Whether a worker is on its way: not started yet, or in its handshake.
    pub(super) fn any_starting(&self) -> bool {
        self.workers
            .iter()
            .any(|w| w.unspawned || w.starting.is_some())
    }

    /// Spawns a replacement for slot `w`; its handshake is polled by the loop.
    pub(super) fn begin_start(&mut self, w: usize) -> Result<u32> {
        // What the old process left in its claim slot (a channel posting it was inside)
        // is not the new one's.
        self.control.reset_slot(w);
        if let Some(started) = self.fork_from_server(self.workers[w].id) {
            let pid = started.pid;
            self.workers[w].pid = pid;
            self.workers[w].starting = Some(spawn::Starting::ready(started));
            return Ok(pid);
        }
        self.ensure_spawner()?;
        let mut starting = spawn::spawn_worker(
            &self.exe,
            &self.dir,
            self.region.raw_fd(),
            self.workers[w].id,
            self.handshake_timeout,
            &self.pin,
        )?;
        starting.forward_output();
        let pid = starting.pid();
        self.workers[w].pid = pid;
        self.workers[w].starting = Some(starting);
        Ok(pid)
    }

    /// Worker `id` forked by the program's fork server, unless the pool spawns (its start
    /// method is spawn, or the server is gone or failed: then the pool spawns from now on).
    fn fork_from_server(&mut self, id: usize) -> Option<spawn::Started> {
        if self.start == StartMethod::Spawn || !crate::engine::forkserver::available() {
            return None;
        }
        let forked = spawn::fork_via_server(
            self.region.raw_fd(),
            id..id + 1,
            &self.pin,
            self.handshake_timeout,
        );
        forked.ok().and_then(|mut started| started.pop())
    }

    /// Starts the pool's spawner thread if it has none yet (see [`spawn::Spawner`]).
    fn ensure_spawner(&mut self) -> Result<()> {
        if self.exe.spawner.is_none() {
            self.exe.spawner = Some(std::sync::Arc::new(spawn::Spawner::new()?));
        }
        Ok(())
    }
}
