//! One-way throughput: the same bytes through the channel and through a shared ring.

use super::*;

/// Slots in the shared ring for messages of `size` bytes.
pub(super) fn ring_slots(size: usize) -> usize {
    (RING_BYTES / size).clamp(2, RING_SLOTS)
}

pub(super) fn measure_throughput(
    options: &IpcBenchOptions,
    placement: &str,
    peer_cpu: Option<usize>,
) -> Result<Vec<Throughput>> {
    let region_len = options
        .sizes
        .iter()
        .map(|&s| ring_slots(s) * s)
        .max()
        .unwrap_or(0);
    let mut region = SharedRegion::with_control(4096)?;
    region.reset(region_len as u64)?;
    // Mapped before the fork: the peer inherits this very mapping (MAP_SHARED), so both
    // processes see the same pages.
    let mapping = region.map()?;
    let (bytes_tx, bytes_rx) = ipc::bytes_channel()?;
    let mut peer = Peer::start(peer_cpu, Some(bytes_rx), Some(&mapping))?;

    let mut results = Vec::with_capacity(options.sizes.len());
    for &size in &options.sizes {
        let messages = (options.bytes_per_size / size).max(MIN_MESSAGES);
        // The channel's send buffer (and scratch space for the expected tallies).
        let mut buffer = vec![0u8; size];
        // Untimed warm-up: fault in both processes' view of every slot and the channel's
        // buffers.
        let warm = ring_slots(size);
        let expected = expected_tally(&mut buffer, warm);
        channel_transfer(&mut peer, &bytes_tx, &mut buffer, warm, &expected)?;
        shm_transfer(&mut peer, &mapping, size, warm, &expected)?;

        // Timed: REPEATS transfers per transport, interleaved so that a slow spell of the
        // machine hits both; the median of each is reported.
        let expected = expected_tally(&mut buffer, messages);
        let mut channel = Vec::with_capacity(REPEATS);
        let mut shm = Vec::with_capacity(REPEATS);
        for _ in 0..REPEATS {
            channel.push(channel_transfer(
                &mut peer,
                &bytes_tx,
                &mut buffer,
                messages,
                &expected,
            )?);
            shm.push(shm_transfer(
                &mut peer, &mapping, size, messages, &expected,
            )?);
        }
        let mb_s = |mut times: Vec<Duration>| {
            times.sort();
            (messages * size) as f64 / times[times.len() / 2].as_secs_f64() / 1e6
        };
        results.push(Throughput {
            placement: placement.to_string(),
            size_bytes: size,
            channel_mb_s: mb_s(channel),
            shm_mb_s: mb_s(shm),
            messages,
        });
    }
    peer.finish()?;
    Ok(results)
}

/// Sends `messages` byte messages through the channel: each is produced into `buffer`, then
/// sent. The peer reads them all and answers with its tally once, at the end (the channel's
/// `send` blocks while the socket buffer is full, so the peer paces us). Returns the time
/// from the start message to the tally.
pub(super) fn channel_transfer(
    peer: &mut Peer,
    bytes_tx: &IpcBytesSender,
    buffer: &mut [u8],
    messages: usize,
    expected: &Tally,
) -> Result<Duration> {
    let began = Instant::now();
    peer.send(
        ToPeer::Bytes {
            messages: messages as u64,
        },
        "starting a channel transfer",
    )?;
    for i in 0..messages {
        produce(buffer, i);
        if let Err(e) = bytes_tx.send(buffer) {
            return Err(peer.lost("sending byte messages", &e));
        }
    }
    let reply = peer.reply("waiting for the channel transfer's tally")?;
    let elapsed = began.elapsed();
    peer.check_tally(reply, expected, "channel", buffer.len())?;
    Ok(elapsed)
}

/// Hands `messages` messages of `size` bytes over through the shared ring: each is produced
/// straight into a free slot, then announced with `Ready(offset, len)`; the peer reads the
/// slot and acks. A slot is reused only after its previous message was acknowledged.
pub(super) fn shm_transfer(
    peer: &mut Peer,
    mapping: &Mapping,
    size: usize,
    messages: usize,
    expected: &Tally,
) -> Result<Duration> {
    let slots = ring_slots(size);
    let mut acked = 0usize;
    let began = Instant::now();
    for i in 0..messages {
        if i >= slots {
            // The ack of message i - slots: acks arrive in order, so slot i % slots is free.
            peer.ack()?;
            acked += 1;
        }
        let offset = (i % slots) * size;
        // SAFETY: this slot's previous message (i - slots) has been acknowledged, after which
        // the peer never touches the slot again until our Ready for message i, sent below once
        // this slice is gone; no other process maps the region.
        let slot = unsafe { mapping.slice_mut(offset..offset + size) };
        produce(slot, i);
        peer.send(
            ToPeer::Ready {
                offset: offset as u64,
                len: size as u64,
            },
            "sending a ready message",
        )?;
    }
    while acked < messages {
        peer.ack()?;
        acked += 1;
    }
    peer.send(ToPeer::ShmEnd, "ending a shared-memory transfer")?;
    let reply = peer.reply("waiting for the shared-memory transfer's tally")?;
    let elapsed = began.elapsed();
    peer.check_tally(reply, expected, "shared-memory", size)?;
    Ok(elapsed)
}

/// Writes message number `i`: every byte, as a producer writing its results would (a
/// pattern that depends on `i`), then `i` itself in the first (up to 8) bytes, so no two
/// messages are alike.
pub(super) fn produce(message: &mut [u8], i: usize) {
    let seed = (i as u8).wrapping_add(7);
    for (j, byte) in message.iter_mut().enumerate() {
        *byte = (j as u8).wrapping_mul(31).wrapping_add(seed);
    }
    let n = message.len().min(8);
    message[..n].copy_from_slice(&(i as u64).to_le_bytes()[..n]);
}

/// What the peer saw: how many messages and bytes, and an order-sensitive checksum.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Tally {
    pub(super) messages: u64,
    pub(super) bytes: u64,
    pub(super) checksum: u64,
}

impl Tally {
    pub(super) fn add(&mut self, message: &[u8]) {
        self.messages += 1;
        self.bytes += message.len() as u64;
        self.checksum = self
            .checksum
            .wrapping_mul(0x0100_0000_01b3)
            .wrapping_add(message_sum(message));
    }
}

/// The wrapping sum of the message read as little-endian `u64` words (the tail padded with
/// zeros): reads every byte, fast enough not to hide the transport's cost.
pub(super) fn message_sum(message: &[u8]) -> u64 {
    let mut words = message.chunks_exact(8);
    let mut sum = 0u64;
    for w in &mut words {
        sum = sum.wrapping_add(u64::from_le_bytes(w.try_into().expect("8 bytes")));
    }
    let mut tail = [0u8; 8];
    let rest = words.remainder();
    tail[..rest.len()].copy_from_slice(rest);
    sum.wrapping_add(u64::from_le_bytes(tail))
}

/// The tally the peer must report for `messages` messages of `scratch.len()` bytes.
pub(super) fn expected_tally(scratch: &mut [u8], messages: usize) -> Tally {
    let mut tally = Tally::default();
    for i in 0..messages {
        produce(scratch, i);
        tally.add(scratch);
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_sees_every_byte_and_the_order() {
        for size in [1, 7, 8, 9, 64, 1000] {
            let mut data = vec![0u8; size];
            let good = expected_tally(&mut data, 3);
            assert_eq!(good.messages, 3);
            assert_eq!(good.bytes, 3 * size as u64);
            // Changing any byte of any message changes the checksum.
            for at in [0, size / 2, size - 1] {
                let mut t = Tally::default();
                for i in 0..3 {
                    produce(&mut data, i);
                    let mut m = data.clone();
                    if i == 1 {
                        m[at] ^= 0x40;
                    }
                    t.add(&m);
                }
                assert_ne!(t, good, "size {size}, byte {at}");
            }
            // So does the order of the messages.
            let mut swapped = Tally::default();
            for i in [1, 0, 2] {
                produce(&mut data, i);
                swapped.add(&data);
            }
            assert_ne!(swapped.checksum, good.checksum, "size {size}");
        }
    }

    #[test]
    fn ring_has_two_to_eight_slots() {
        assert_eq!(ring_slots(64), 8);
        assert_eq!(ring_slots(1 << 20), 8);
        assert_eq!(ring_slots(4 << 20), 2);
        assert_eq!(ring_slots(MAX_SIZE), 2);
    }
}
