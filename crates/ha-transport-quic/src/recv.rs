//! Turning a stream's received segments into frames, copying each byte once.
//!
//! QUIC hands a stream reader its data as segments of at most one UDP
//! datagram each (a few KiB), while a frame's payload must reach the
//! consumer as one contiguous [`Bytes`]. So the payload bytes are copied
//! once, out of quinn's segments. [`StreamAssembler`] makes sure it is only
//! once:
//!
//! * **Small frames** (payload below [`DIRECT_PAYLOAD_BYTES_MIN`]) are copied
//!   into a shared buffer, whole runs of them per segment, and handed out as
//!   slices of it.
//! * **Large frames** get a buffer of their own, sized from the header, and
//!   their payload is copied from the segments straight into it. The
//!   header is never buffered together with payload bytes, so nothing is
//!   copied a second time when a buffer runs out of room.
//!
//! A frame's slice keeps its buffer alive until the consumer drops it, so a
//! buffer cannot be reused in place; allocating fresh ones made the
//! allocator map, page-fault and unmap memory continuously. Used buffers are
//! therefore parked in a [`BufferPool`] and reused once every frame of them
//! is gone.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::frame::{FRAME_HEADER_BYTES, FrameDecoder, FrameError, FrameHeader, WireFrame};

/// Payloads of at least this many bytes are assembled in a buffer of their
/// own; smaller ones share the small-frame buffer.
pub(crate) const DIRECT_PAYLOAD_BYTES_MIN: usize = 16 << 10;
/// Size of a small-frame buffer, and the smallest allocation of the pool.
pub(crate) const RECV_BUFFER_BYTES: usize = 64 << 10;
/// Used buffers a stream reader keeps for reuse.
pub(crate) const RECV_BUFFERS_PARKED_MAX: usize = 16;
/// Bytes of used buffers a stream reader keeps for reuse (the sum of their
/// allocation sizes); a larger buffer is never parked.
pub(crate) const RECV_PARKED_BYTES_MAX: usize = 2 << 20;

/// Used receive buffers waiting to be reused, oldest first. A buffer is
/// reusable once the consumer has dropped every frame that points into it.
/// Bounded by [`RECV_BUFFERS_PARKED_MAX`] buffers and
/// [`RECV_PARKED_BYTES_MAX`] bytes.
#[derive(Debug, Default)]
pub(crate) struct BufferPool {
    /// Used buffers (empty handles that still own their allocation) with
    /// their allocation sizes.
    parked: VecDeque<(BytesMut, usize)>,
    /// Sum of the parked allocation sizes.
    parked_bytes: usize,
}

impl BufferPool {
    /// An empty buffer of at least `want` bytes (at least
    /// [`RECV_BUFFER_BYTES`]) and its allocation size: a parked one whose
    /// frames are all gone, or a new one.
    fn take(&mut self, want: usize) -> (BytesMut, usize) {
        let want = want.max(RECV_BUFFER_BYTES);
        // Frames are dropped roughly in order, so the oldest is the likely
        // candidate; a few more checks are cheap (one atomic load each).
        let free = self
            .parked
            .iter_mut()
            .position(|(b, alloc)| *alloc >= want && b.try_reclaim(want));
        match free.and_then(|i| self.parked.remove(i)) {
            Some((mut b, alloc)) => {
                self.parked_bytes -= alloc;
                b.clear();
                (b, alloc)
            }
            None => (BytesMut::with_capacity(want), want),
        }
    }

    /// Parks `used` (whose frames may still be alive) for reuse. At a bound
    /// the oldest parked buffers are let go: frames still pointing into them
    /// keep their memory alive as long as they need it.
    fn park(&mut self, mut used: BytesMut, alloc: usize) {
        if alloc > RECV_PARKED_BYTES_MAX {
            return;
        }
        used.clear();
        while self.parked.len() >= RECV_BUFFERS_PARKED_MAX
            || self.parked_bytes + alloc > RECV_PARKED_BYTES_MAX
        {
            match self.parked.pop_front() {
                Some((_, a)) => self.parked_bytes -= a,
                None => break,
            }
        }
        self.parked_bytes += alloc;
        self.parked.push_back((used, alloc));
    }

    #[cfg(test)]
    fn check_bounds(&self) {
        assert!(self.parked.len() <= RECV_BUFFERS_PARKED_MAX);
        let sum: usize = self.parked.iter().map(|&(_, a)| a).sum();
        assert_eq!(sum, self.parked_bytes);
        assert!(sum <= RECV_PARKED_BYTES_MAX);
    }
}

/// A large frame whose payload is being filled.
#[derive(Debug)]
struct LargeFrame {
    header: FrameHeader,
    /// The payload so far; its capacity holds all of it.
    buf: BytesMut,
    /// Allocation size of `buf`.
    alloc: usize,
}

/// Reassembles the frames of one stream from its received segments (see
/// the module docs). Frames come out in stream order; a decode error is
/// final for the stream.
#[derive(Debug)]
pub(crate) struct StreamAssembler {
    decoder: FrameDecoder,
    /// Small frames, and any incomplete header. Never holds payload bytes
    /// of a large frame.
    small: BytesMut,
    /// Allocation size of `small`.
    small_alloc: usize,
    large: Option<LargeFrame>,
    pool: BufferPool,
    /// Bytes copied so far (the tests hold it to each received byte once).
    #[cfg(test)]
    copied: u64,
}

impl StreamAssembler {
    /// An assembler for frames `decoder` accepts.
    pub(crate) fn new(decoder: FrameDecoder) -> Self {
        let mut pool = BufferPool::default();
        let (small, small_alloc) = pool.take(RECV_BUFFER_BYTES);
        Self {
            decoder,
            small,
            small_alloc,
            large: None,
            pool,
            #[cfg(test)]
            copied: 0,
        }
    }

    /// Adds the next received segment, appending every frame it completes
    /// to `out` in order. On error, the frames before the bad one are in
    /// `out` and the stream must be closed.
    pub(crate) fn push(
        &mut self,
        mut data: &[u8],
        out: &mut VecDeque<WireFrame>,
    ) -> Result<(), FrameError> {
        loop {
            if let Some(large) = &mut self.large {
                let missing = large.header.len - large.buf.len();
                let n = missing.min(data.len());
                large.buf.extend_from_slice(&data[..n]);
                data = &data[n..];
                self.note_copied(n);
                if n < missing {
                    return Ok(());
                }
                if let Some(LargeFrame {
                    header,
                    mut buf,
                    alloc,
                }) = self.large.take()
                {
                    let payload = buf.split().freeze();
                    self.pool.park(buf, alloc);
                    out.push_back(header.into_frame(payload));
                }
                continue;
            }
            if data.is_empty() {
                return Ok(());
            }
            if !self.small.is_empty() {
                data = self.complete_pending(data, out)?;
                continue;
            }
            // Nothing pending: copy the run of small frames at the front in
            // one go, up to the header of the first large frame (or to the
            // end, where a frame or header may be cut short).
            let run = small_run(data);
            if run == 0 {
                // A whole large-frame header at the front (`small_run`
                // returns 0 for nothing else, `data` being non-empty).
                let mut h = [0u8; FRAME_HEADER_BYTES];
                h.copy_from_slice(&data[..FRAME_HEADER_BYTES]);
                self.note_copied(FRAME_HEADER_BYTES);
                data = &data[FRAME_HEADER_BYTES..];
                let header = self.decoder.header(&h)?;
                self.start_large(header);
                continue;
            }
            self.append_small(&data[..run]);
            data = &data[run..];
            self.drain_small(out)?;
        }
    }

    /// At the end of the stream: an error if a frame is cut short.
    pub(crate) fn finish(&self) -> Result<(), FrameError> {
        let left = self.small.len() + self.large.as_ref().map_or(0, |l| l.buf.len());
        if self.large.is_some() || left > 0 {
            return Err(FrameError::Truncated(left));
        }
        Ok(())
    }

    /// `small` holds the start of a frame (or of a header): complete it from
    /// `data`. Returns what is left of `data`.
    fn complete_pending<'a>(
        &mut self,
        mut data: &'a [u8],
        out: &mut VecDeque<WireFrame>,
    ) -> Result<&'a [u8], FrameError> {
        if self.small.len() < FRAME_HEADER_BYTES {
            let n = (FRAME_HEADER_BYTES - self.small.len()).min(data.len());
            self.append_small(&data[..n]);
            data = &data[n..];
            if self.small.len() < FRAME_HEADER_BYTES {
                // Still short: check what is there so garbage fails fast.
                self.decoder.decode(&mut self.small)?;
                return Ok(data);
            }
            let mut h = [0u8; FRAME_HEADER_BYTES];
            h.copy_from_slice(&self.small[..FRAME_HEADER_BYTES]);
            let header = self.decoder.header(&h)?;
            if header.len >= DIRECT_PAYLOAD_BYTES_MIN {
                self.small.clear();
                self.start_large(header);
                return Ok(data);
            }
        }
        // A small frame's header is in `small` (a large one never stays
        // there): copy the rest of the frame, no more.
        let mut h = [0u8; FRAME_HEADER_BYTES];
        h.copy_from_slice(&self.small[..FRAME_HEADER_BYTES]);
        let header = self.decoder.header(&h)?;
        let missing = FRAME_HEADER_BYTES + header.len - self.small.len();
        let n = missing.min(data.len());
        self.append_small(&data[..n]);
        self.drain_small(out)?;
        Ok(&data[n..])
    }

    fn start_large(&mut self, header: FrameHeader) {
        let (buf, alloc) = self.pool.take(header.len);
        self.large = Some(LargeFrame { header, buf, alloc });
    }

    /// Appends to `small` (making room first).
    fn append_small(&mut self, data: &[u8]) {
        self.room_small(self.small.len() + data.len());
        self.small.extend_from_slice(data);
        self.note_copied(data.len());
    }

    /// Makes `small` able to hold `total` bytes from its start, moving its
    /// content (only ever an incomplete small frame) to a pooled buffer if
    /// it cannot.
    fn room_small(&mut self, total: usize) {
        if self.small.capacity() >= total {
            return;
        }
        let (mut next, alloc) = self.pool.take(total);
        next.extend_from_slice(&self.small);
        self.note_copied(self.small.len());
        let used = std::mem::replace(&mut self.small, next);
        let used_alloc = std::mem::replace(&mut self.small_alloc, alloc);
        self.pool.park(used, used_alloc);
    }

    /// Moves every complete frame in `small` to `out`, then makes room for
    /// the rest of an incomplete one (so the decoder never reallocates).
    fn drain_small(&mut self, out: &mut VecDeque<WireFrame>) -> Result<(), FrameError> {
        loop {
            if let Some(h) = self.small.get(..FRAME_HEADER_BYTES) {
                let len = u32::from_le_bytes([h[10], h[11], h[12], h[13]]) as usize;
                // A larger length is refused by the decoder: allocate nothing.
                if len <= self.decoder.max_frame_bytes() {
                    self.room_small(FRAME_HEADER_BYTES + len);
                }
            }
            match self.decoder.decode(&mut self.small)? {
                Some(f) => out.push_back(f),
                None => return Ok(()),
            }
        }
    }

    #[cfg(test)]
    fn note_copied(&mut self, n: usize) {
        self.copied += n as u64;
    }

    #[cfg(not(test))]
    fn note_copied(&mut self, _n: usize) {}
}

/// Length of the run of whole small frames at the front of `data`, plus a
/// trailing incomplete small frame or header: the offset of the first
/// header announcing a payload of [`DIRECT_PAYLOAD_BYTES_MIN`] or more, or
/// `data.len()`. (A small length above the configured limit is copied like
/// any small frame; the decoder refuses it from its header.)
fn small_run(data: &[u8]) -> usize {
    let mut at = 0;
    while let Some(h) = data.get(at..at + FRAME_HEADER_BYTES) {
        let len = u32::from_le_bytes([h[10], h[11], h[12], h[13]]) as usize;
        if len >= DIRECT_PAYLOAD_BYTES_MIN {
            return at;
        }
        at += FRAME_HEADER_BYTES + len;
    }
    // Ran past the end, or the last header is cut short.
    data.len()
}

impl FrameHeader {
    fn into_frame(self, payload: Bytes) -> WireFrame {
        WireFrame {
            kind: self.kind,
            group: self.group,
            payload,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{StreamKind, WireKind, encode_frame, encode_header};
    use ha_core::GroupId;
    use proptest::prelude::*;

    const MAX: usize = 1 << 20;

    fn decoder() -> FrameDecoder {
        FrameDecoder::for_stream(StreamKind::Protocol, MAX)
    }

    /// Frames of these sizes, payload byte = index, group = index.
    fn wire(sizes: &[usize]) -> BytesMut {
        let mut w = BytesMut::new();
        for (i, &n) in sizes.iter().enumerate() {
            let payload = vec![i as u8; n];
            encode_frame(&mut w, WireKind::Protocol, GroupId(i as u64), &payload, MAX).unwrap();
        }
        w
    }

    fn check(sizes: &[usize], got: &[WireFrame]) {
        assert_eq!(got.len(), sizes.len());
        for (i, f) in got.iter().enumerate() {
            assert_eq!(f.group, GroupId(i as u64));
            assert_eq!(f.kind, WireKind::Protocol);
            assert_eq!(f.payload.len(), sizes[i], "frame {i}");
            assert!(f.payload.iter().all(|&b| b == i as u8), "frame {i}");
        }
    }

    /// Feeds `w` cut at `cuts` (segment lengths, cycled) and returns the
    /// frames and the assembler.
    fn feed(w: &[u8], cuts: &[usize]) -> (Vec<WireFrame>, StreamAssembler) {
        let mut asm = StreamAssembler::new(decoder());
        let mut out = VecDeque::new();
        let mut at = 0;
        for &cut in cuts.iter().cycle() {
            if at >= w.len() {
                break;
            }
            let end = (at + cut.max(1)).min(w.len());
            asm.push(&w[at..end], &mut out).unwrap();
            asm.pool.check_bounds();
            at = end;
        }
        asm.finish().unwrap();
        (out.into_iter().collect(), asm)
    }

    const SIZES: [usize; 14] = [
        10, 70_000, 64, 200_000, 1, 65_536, 3_000, 0, 16_383, 16_384, 5, 65_536, 65_536, 12,
    ];

    /// Most bytes the assembler may copy for frames of `sizes`: each byte
    /// once out of the segments, and a small frame at most twice more
    /// (moved to a new buffer as a cut header, then as a cut frame). A
    /// large frame's bytes are never copied again.
    fn copy_bound(sizes: &[usize]) -> u64 {
        let once: usize = sizes.iter().map(|n| FRAME_HEADER_BYTES + n).sum();
        let small_again: usize = sizes
            .iter()
            .filter(|&&n| n < DIRECT_PAYLOAD_BYTES_MIN)
            .map(|n| 2 * (FRAME_HEADER_BYTES + n))
            .sum();
        (once + small_again) as u64
    }

    #[test]
    fn large_frames_are_copied_exactly_once() {
        let large = [
            70_000usize,
            200_000,
            65_536,
            16_384,
            65_536,
            65_536,
            1 << 20,
        ];
        let w = wire(&large);
        let mixed = wire(&SIZES);
        // Segment sizes as QUIC delivers them (datagram payloads), and a
        // few awkward ones (inside headers, one byte at a time).
        for cuts in [
            &[6_548][..],
            &[1_452],
            &[16_371],
            &[65_000],
            &[1],
            &[13, 1, 15, 2],
            &[w.len()],
        ] {
            let (got, asm) = feed(&w, cuts);
            check(&large, &got);
            assert_eq!(asm.copied, w.len() as u64, "segments of {cuts:?}");
            let (got, asm) = feed(&mixed, cuts);
            check(&SIZES, &got);
            assert!(asm.copied >= mixed.len() as u64);
            assert!(asm.copied <= copy_bound(&SIZES), "segments of {cuts:?}");
        }
    }

    #[test]
    fn buffers_are_reused_once_the_consumer_drops_its_frames() {
        let sizes = [65_536usize; 40];
        let w = wire(&sizes);
        let mut asm = StreamAssembler::new(decoder());
        let mut out = VecDeque::new();
        let mut allocs = std::collections::HashSet::new();
        for seg in w.chunks(6_548) {
            asm.push(seg, &mut out).unwrap();
            // The consumer keeps up: every frame is dropped on arrival.
            for f in out.drain(..) {
                allocs.insert(f.payload.as_ptr() as usize);
                assert_eq!(f.payload.len(), 65_536);
            }
        }
        asm.finish().unwrap();
        // 40 large frames in a handful of allocations (the one being
        // filled, and ones whose frames were just dropped).
        assert!(allocs.len() <= 3, "{} allocations", allocs.len());

        // A consumer that holds on to frames: nothing it holds is reused,
        // and the pool stays within its bounds.
        let mut asm = StreamAssembler::new(decoder());
        let mut held = Vec::new();
        for seg in w.chunks(6_548) {
            let mut out = VecDeque::new();
            asm.push(seg, &mut out).unwrap();
            asm.pool.check_bounds();
            held.extend(out);
        }
        check(&sizes, &held);
        let ptrs: std::collections::HashSet<_> =
            held.iter().map(|f| f.payload.as_ptr() as usize).collect();
        assert_eq!(ptrs.len(), held.len());
    }

    #[test]
    fn bad_frames_are_refused_after_the_good_ones_before_them() {
        // Two good frames, then a large-size header with a bad version.
        let mut w = wire(&[3, 20_000]);
        let mut bad = encode_header(WireKind::Protocol, GroupId(9), 30_000);
        bad[0] = 9;
        w.extend_from_slice(&bad);
        w.extend_from_slice(&[0u8; 100]);
        for cut in [1usize, 5, 6_548, w.len()] {
            let mut asm = StreamAssembler::new(decoder());
            let mut out = VecDeque::new();
            let mut err = None;
            for seg in w.chunks(cut) {
                if let Err(e) = asm.push(seg, &mut out) {
                    err = Some(e);
                    break;
                }
            }
            assert_eq!(err, Some(FrameError::BadVersion(9)), "cut {cut}");
            assert_eq!(out.len(), 2, "cut {cut}");
        }

        // Oversized, large or small: refused from the header, before any of
        // the payload is buffered.
        for (limit, len) in [(MAX, MAX as u32 + 1), (100, 101)] {
            let dec = FrameDecoder::for_stream(StreamKind::Protocol, limit);
            let mut asm = StreamAssembler::new(dec);
            let mut w = BytesMut::new();
            w.extend_from_slice(&encode_header(WireKind::Protocol, GroupId(1), len));
            w.extend_from_slice(&[7u8; 200]);
            let e = asm.push(&w, &mut VecDeque::new()).unwrap_err();
            assert!(matches!(e, FrameError::TooLarge { .. }), "{e}");
            assert!(asm.large.is_none());
        }

        // A snapshot frame on a protocol stream.
        let mut asm = StreamAssembler::new(decoder());
        let h = encode_header(WireKind::Snapshot, GroupId(1), 40_000);
        let e = asm.push(&h, &mut VecDeque::new()).unwrap_err();
        assert!(matches!(e, FrameError::WrongFrameKind { .. }), "{e}");
    }

    #[test]
    fn a_stream_ending_inside_a_frame_is_truncated() {
        for (sizes, cut) in [
            (&[100usize][..], 50),
            (&[40_000], 30_000),
            (&[40_000], 14),
            (&[1], 3),
        ] {
            let w = wire(sizes);
            let mut asm = StreamAssembler::new(decoder());
            asm.push(&w[..cut], &mut VecDeque::new()).unwrap();
            assert!(
                matches!(asm.finish(), Err(FrameError::Truncated(_))),
                "{sizes:?} cut at {cut}"
            );
        }
    }

    proptest! {
        #[test]
        fn any_sizes_any_segmentation(
            sizes in proptest::collection::vec(
                prop_oneof![0usize..200, 15_000usize..70_000], 1..24),
            cuts in proptest::collection::vec(1usize..20_000, 1..8),
        ) {
            let w = wire(&sizes);
            let (got, asm) = feed(&w, &cuts);
            check(&sizes, &got);
            prop_assert!(asm.copied >= w.len() as u64);
            prop_assert!(asm.copied <= copy_bound(&sizes));
        }

        /// Damaged streams: the same frames, then the same error, as the
        /// plain decoder gives for the whole stream at once.
        #[test]
        fn agrees_with_the_plain_decoder_on_damaged_streams(
            sizes in proptest::collection::vec(
                prop_oneof![0usize..100, 15_000usize..40_000], 1..8),
            damage in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 0..3),
            cut_at in proptest::option::of(any::<proptest::sample::Index>()),
            cuts in proptest::collection::vec(1usize..20_000, 1..6),
            limit in prop_oneof![Just(MAX), 1usize..50_000],
        ) {
            let mut w = wire(&sizes);
            for (at, byte) in damage {
                let i = at.index(w.len());
                w[i] = byte;
            }
            if let Some(at) = cut_at {
                w.truncate(at.index(w.len()));
            }
            let dec = FrameDecoder::for_stream(StreamKind::Protocol, limit);
            let mut whole = w.clone();
            let mut want = Vec::new();
            let want_end = loop {
                match dec.decode(&mut whole) {
                    Ok(Some(f)) => want.push(f),
                    Ok(None) => break dec.finish(&whole).map_err(|e| std::mem::discriminant(&e)),
                    Err(e) => break Err(std::mem::discriminant(&e)),
                }
            };
            let mut asm = StreamAssembler::new(dec);
            let mut got = VecDeque::new();
            let mut got_end = None;
            let mut at = 0;
            for &cut in cuts.iter().cycle() {
                if at >= w.len() {
                    break;
                }
                let end = (at + cut).min(w.len());
                if let Err(e) = asm.push(&w[at..end], &mut got) {
                    got_end = Some(Err(std::mem::discriminant(&e)));
                    break;
                }
                at = end;
            }
            let got_end = got_end.unwrap_or_else(|| asm.finish().map_err(|e| std::mem::discriminant(&e)));
            prop_assert_eq!(Vec::from(got), want);
            prop_assert_eq!(got_end, want_end);
        }
    }
}
