//! One direction of a TCP connection put back in order, and cut into Modbus ADUs.
//!
//! Segments arrive as captured: duplicated (retransmissions), overlapping, out of order,
//! or never (a tap that dropped them, a snaplen that cut them). In-order bytes go to a
//! buffer that is cut at MBAP boundaries; early segments wait, bounded, for the hole
//! before them. When the hole cannot be filled (too much waiting, end of capture) the
//! stream skips it and is *out of step*: the bytes after a gap are not trusted to start
//! a frame until a segment begins with something that parses as an MBAP header — the
//! usual case, since Modbus clients and servers write one ADU per segment. A capture
//! that starts mid-connection begins out of step the same way.

use crate::protocol::frame::{self, FrameError, Mbap};
use std::collections::BTreeMap;

/// Out-of-order segments kept per direction before the hole is given up.
const MAX_WAITING_SEGMENTS: usize = 64;
/// Out-of-order bytes kept per direction before the hole is given up.
const MAX_WAITING_BYTES: usize = 256 * 1024;

/// What happened to a segment, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pushed {
    /// Bytes already delivered (a retransmission), ignored.
    pub duplicate: bool,
    /// Arrived before a hole; held back.
    pub early: bool,
    /// Holes skipped because they could not be filled.
    pub gaps: u32,
    /// Bytes dropped while out of step.
    pub unsynced_bytes: u64,
}

/// A frame-level problem found while cutting the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desync(pub FrameError);

/// One direction of a connection.
#[derive(Debug, Default)]
pub struct Stream {
    /// Absolute position of the next expected byte (sequence numbers unwrapped).
    next: Option<u64>,
    /// Sequence number that corresponds to `next`.
    next_seq: u32,
    /// In-order bytes not yet cut; `buf[pos..]` is live.
    buf: Vec<u8>,
    pos: usize,
    /// Early segments by absolute position.
    waiting: BTreeMap<u64, Vec<u8>>,
    waiting_bytes: usize,
    /// Whether `buf` starts at a frame boundary.
    synced: bool,
    /// A segment was cut short by the capture: the next hole will not fill.
    cut: bool,
}

impl Stream {
    /// Takes a segment: its sequence number, payload and SYN flag.
    pub fn push(&mut self, seq: u32, syn: bool, payload: &[u8]) -> Pushed {
        let mut p = Pushed::default();
        // The SYN occupies one sequence number; data starts after it.
        let seq = if syn { seq.wrapping_add(1) } else { seq };
        let Some(next) = self.next else {
            // First sight of this direction: start here, in step only after a SYN.
            self.next = Some(0);
            self.next_seq = seq;
            self.synced = syn;
            if !payload.is_empty() {
                self.deliver(payload, true, &mut p);
            }
            return p;
        };
        if syn && payload.is_empty() {
            if seq != self.next_seq {
                // A new connection on the same ports (port reuse): start afresh.
                *self = Self::default();
                return self.push(seq.wrapping_sub(1), true, payload);
            }
            return p;
        }
        if payload.is_empty() {
            return p;
        }
        let dist = seq.wrapping_sub(self.next_seq) as i32;
        let len = payload.len() as i64;
        if dist <= 0 {
            let overlap = -i64::from(dist);
            if overlap >= len {
                p.duplicate = true;
                return p;
            }
            self.deliver(&payload[overlap as usize..], overlap == 0, &mut p);
        } else {
            let at = next + dist as u64;
            if self.waiting.insert(at, payload.to_vec()).is_none() {
                self.waiting_bytes += payload.len();
            }
            p.early = true;
            if self.cut
                || self.waiting.len() > MAX_WAITING_SEGMENTS
                || self.waiting_bytes > MAX_WAITING_BYTES
            {
                self.skip_hole(&mut p);
            }
        }
        self.drain_waiting(&mut p);
        p
    }

    /// A segment starting at `seq` was captured without its payload (snaplen): the hole
    /// it leaves is given up as soon as data after it arrives.
    pub fn lost(&mut self, _seq: u32) {
        self.cut = true;
    }

    /// The capture ended: skip any holes and deliver what waited behind them.
    pub fn finish(&mut self) -> Pushed {
        let mut p = Pushed::default();
        while !self.waiting.is_empty() {
            self.skip_hole(&mut p);
            self.drain_waiting(&mut p);
        }
        p
    }

    /// Gives up the hole before the first early segment.
    fn skip_hole(&mut self, p: &mut Pushed) {
        self.cut = false;
        let (Some(next), Some((&first, _))) = (self.next, self.waiting.first_key_value()) else {
            return;
        };
        if first > next {
            self.next_seq = self.next_seq.wrapping_add((first - next) as u32);
            self.next = Some(first);
            self.lose_step();
            p.gaps += 1;
        }
    }

    /// Delivers early segments that are now in order (or overlap what was delivered).
    fn drain_waiting(&mut self, p: &mut Pushed) {
        while let (Some(next), Some((&at, _))) = (self.next, self.waiting.first_key_value()) {
            if at > next {
                break;
            }
            let Some((_, seg)) = self.waiting.pop_first() else {
                break;
            };
            self.waiting_bytes -= seg.len();
            let overlap = (next - at) as usize;
            if overlap < seg.len() {
                self.deliver(&seg[overlap..], overlap == 0, p);
            }
        }
    }

    /// Appends in-order bytes; `at_segment_start` says whether they begin a segment (the
    /// only place an out-of-step stream may find its footing again).
    fn deliver(&mut self, bytes: &[u8], at_segment_start: bool, p: &mut Pushed) {
        if let Some(next) = &mut self.next {
            *next += bytes.len() as u64;
        }
        if at_segment_start {
            self.cut = false;
        }
        self.next_seq = self.next_seq.wrapping_add(bytes.len() as u32);
        if !self.synced {
            if at_segment_start && matches!(frame::mbap(bytes), Ok(Some(_))) {
                self.synced = true;
            } else {
                p.unsynced_bytes += bytes.len() as u64;
                return;
            }
        }
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    fn lose_step(&mut self) {
        self.buf.clear();
        self.pos = 0;
        self.synced = false;
    }

    /// The next whole ADU (header and PDU) in the stream, if one is complete. Bytes that
    /// cannot start a frame put the stream out of step and are reported once.
    pub fn next_adu(&mut self) -> Option<Result<(Mbap, &[u8]), Desync>> {
        if self.pos > 4096 && self.pos * 2 > self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        match frame::mbap(&self.buf[self.pos..]) {
            Ok(Some(h)) if self.buf.len() - self.pos >= h.adu_len() => {
                let start = self.pos;
                self.pos += h.adu_len();
                Some(Ok((h, &self.buf[start + frame::MBAP_LEN..self.pos])))
            }
            Ok(_) => None,
            Err(e) => {
                self.lose_step();
                Some(Err(Desync(e)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An ADU with transaction `t` and a 3-register read PDU.
    fn adu(t: u16) -> Vec<u8> {
        let mut v = t.to_be_bytes().to_vec();
        v.extend_from_slice(&[0, 0, 0, 6, 1, 3, 0, 0, 0, 3]);
        v
    }

    fn cut(s: &mut Stream) -> Vec<u16> {
        let mut out = Vec::new();
        while let Some(r) = s.next_adu() {
            if let Ok((h, _)) = r {
                out.push(h.transaction);
            }
        }
        out
    }

    #[test]
    fn split_and_joined_segments() {
        let mut s = Stream::default();
        s.push(99, true, &[]);
        let mut bytes = adu(1);
        bytes.extend(adu(2));
        s.push(100, false, &bytes[..5]);
        assert_eq!(cut(&mut s), Vec::<u16>::new());
        s.push(105, false, &bytes[5..]);
        assert_eq!(cut(&mut s), [1, 2]);
    }

    #[test]
    fn retransmissions_and_reordering() {
        let mut s = Stream::default();
        s.push(0, true, &[]);
        let (a, b, c) = (adu(1), adu(2), adu(3));
        assert!(!s.push(1, false, &a).duplicate);
        assert!(s.push(1, false, &a).duplicate);
        assert!(s.push(25, false, &c).early);
        s.push(13, false, &b);
        assert_eq!(cut(&mut s), [1, 2, 3]);
    }

    #[test]
    fn a_hole_that_never_fills_is_skipped_and_the_stream_finds_its_step() {
        let mut s = Stream::default();
        s.push(0, true, &[]);
        s.push(1, false, &adu(1)[..4]);
        s.push(25, false, &adu(3));
        let p = s.finish();
        assert_eq!(p.gaps, 1);
        assert_eq!(
            cut(&mut s),
            [3],
            "the half frame before the hole is dropped"
        );
    }

    #[test]
    fn mid_stream_start_waits_for_a_frame_boundary() {
        let mut s = Stream::default();
        let p = s.push(1000, false, &adu(7)[3..]);
        assert_eq!(p.unsynced_bytes, 9);
        s.push(1009, false, &adu(8));
        assert_eq!(cut(&mut s), [8]);
    }

    #[test]
    fn non_modbus_bytes_desync_once() {
        let mut s = Stream::default();
        s.push(0, true, &[]);
        s.push(1, false, b"GET / HTTP/1.1\r\n");
        assert!(matches!(s.next_adu(), Some(Err(_))));
        assert!(s.next_adu().is_none());
    }

    proptest! {
        /// Whatever the order and duplication of segments, every ADU comes out once, in
        /// order, when nothing is lost.
        #[test]
        fn any_arrival_order_yields_the_stream(
            n in 1usize..20,
            cuts in proptest::collection::vec(1usize..30, 1..40),
            order in proptest::collection::vec(any::<u16>(), 0..40),
            dups in proptest::collection::vec(any::<u16>(), 0..10),
        ) {
            let bytes: Vec<u8> = (0..n as u16).flat_map(adu).collect();
            let mut segs = Vec::new();
            let (mut at, mut k) = (0usize, 0usize);
            while at < bytes.len() {
                let len = cuts[k % cuts.len()].min(bytes.len() - at);
                segs.push((at, len));
                at += len;
                k += 1;
            }
            // A bounded shuffle: the window of waiting segments stays under the limit.
            for (i, o) in order.iter().enumerate() {
                let i = i % segs.len();
                let j = (i + usize::from(*o) % 8).min(segs.len() - 1);
                segs.swap(i, j);
            }
            for d in &dups {
                let s = segs[usize::from(*d) % segs.len()];
                segs.push(s);
            }
            let isn = 4_294_967_000u32; // wraps inside the stream
            let mut s = Stream::default();
            s.push(isn, true, &[]);
            let mut got = Vec::new();
            for &(at, len) in &segs {
                s.push(isn.wrapping_add(1 + at as u32), false, &bytes[at..at + len]);
                got.extend(cut(&mut s));
            }
            s.finish();
            got.extend(cut(&mut s));
            prop_assert_eq!(got, (0..n as u16).collect::<Vec<_>>());
        }

        /// Arbitrary segments never panic the stream.
        #[test]
        fn arbitrary_segments(segs in proptest::collection::vec((any::<u32>(), any::<bool>(), proptest::collection::vec(any::<u8>(), 0..64)), 0..50)) {
            let mut s = Stream::default();
            for (seq, syn, data) in &segs {
                s.push(*seq, *syn, data);
                while s.next_adu().is_some() {}
            }
            s.finish();
            while s.next_adu().is_some() {}
        }
    }
}
