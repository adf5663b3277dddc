//! A partition's offset bookkeeping, without a broker: which record comes next and what
//! to do about offsets the broker skipped, which records are settled (every event they
//! carried released by their site's pipeline, so nothing derived from them is still to
//! come) and
//! may be committed, and where a next owner's warm-up starts.

use crate::model::Ts;
use std::collections::VecDeque;

/// Times a gap in offsets is read again before it is taken as real.
pub const GAP_RETRIES: u32 = 3;
/// How far back (in records) a re-read starts per try: librdkafka's largest batch.
pub const REREAD_BACK: i64 = 10_000;

/// What a record's offset means, given what was read before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The record after the last one read: process it.
    Next,
    /// Read before (a re-read from further back): already processed, skip it.
    Seen,
    /// Offsets before it were skipped: seek back to `from` and read again.
    Reread {
        /// The first offset missing.
        expected: i64,
        /// Where to read from.
        from: i64,
        /// Which try this is (1..=GAP_RETRIES).
        tries: u32,
    },
    /// Offsets `from..to` were skipped and reading again did not bring them: a real gap
    /// (retention, compaction). Process the record.
    Gap {
        /// The first offset missing.
        from: i64,
        /// The record's offset.
        to: i64,
    },
}

/// One partition's offsets.
#[derive(Debug, Clone)]
pub struct Offsets {
    /// Offsets below this are replayed muted (the previous owner judged them).
    pub live_from: i64,
    /// The offset after the last record read (none yet).
    next: Option<i64>,
    /// The gap in offsets last read again, and how many times.
    gap: (i64, u32),
    /// Offsets processed live and not yet settled, with their newest event time and the
    /// pipeline (one per site) that has them.
    pending: VecDeque<(i64, Ts, u32)>,
    /// Records of the last `warmup` of event time (newest event time, offset): the
    /// front is where a next owner's warm-up starts.
    window: VecDeque<(Ts, i64)>,
    /// The next offset to commit and its event time.
    commit: Option<(i64, Ts)>,
    /// The highest offset the group coordinator has acknowledged.
    acked: i64,
}

impl Offsets {
    /// A partition assigned with its first live offset (the committed one).
    pub fn new(live_from: i64) -> Self {
        Self {
            live_from,
            next: None,
            gap: (-1, 0),
            pending: VecDeque::new(),
            window: VecDeque::new(),
            commit: None,
            acked: live_from,
        }
    }

    /// The offset after the last record read (none yet).
    pub fn position(&self) -> Option<i64> {
        self.next
    }

    /// Past the warm-up: what is read now is judged live.
    pub fn live(&self) -> bool {
        self.next.is_some_and(|n| n >= self.live_from)
    }

    /// Judges a record's offset against what was read before.
    pub fn arrive(&mut self, o: i64) -> Arrival {
        match self.next {
            Some(n) if o < n => return Arrival::Seen,
            Some(n) if o > n => {
                let tries = if self.gap.0 == n { self.gap.1 + 1 } else { 1 };
                self.gap = (n, tries);
                if tries <= GAP_RETRIES {
                    let from = (n - REREAD_BACK * i64::from(tries)).max(0);
                    return Arrival::Reread {
                        expected: n,
                        from,
                        tries,
                    };
                }
                self.next = Some(o + 1);
                return Arrival::Gap { from: n, to: o };
            }
            _ => {}
        }
        self.next = Some(o + 1);
        Arrival::Next
    }

    /// Remembers a processed record (its newest event time, and the pipeline `site` it
    /// went to) for the warm-up window of the last `warmup` of event time; true when it
    /// is to be judged live, false when it is replayed muted.
    pub fn read(&mut self, o: i64, newest: Ts, warmup: Ts, site: u32) -> bool {
        self.window.push_back((newest, o));
        while self
            .window
            .front()
            .is_some_and(|&(t, _)| t < newest.saturating_sub(warmup))
        {
            self.window.pop_front();
        }
        if o < self.live_from {
            return false;
        }
        self.pending.push_back((o, newest, site));
        true
    }

    /// Moves the commit point past every record, in offset order, whose events its
    /// site's pipeline has released (`released(site)` is that pipeline's watermark).
    pub fn settle(&mut self, released: impl Fn(u32) -> Ts) {
        while let Some(&(o, ts, site)) = self.pending.front() {
            if ts >= released(site) {
                break;
            }
            self.pending.pop_front();
            self.commit = Some((o + 1, ts));
        }
    }

    /// Everything read is settled (the pipeline was flushed at a graceful stop).
    pub fn settle_all(&mut self) {
        if let Some(&(o, ts, _)) = self.pending.back() {
            self.commit = Some((o + 1, ts));
            self.pending.clear();
        }
    }

    /// The offset to commit and its metadata, `"<event time> <warm-up start offset>"`,
    /// when one is settled that the coordinator has not acknowledged.
    pub fn committable(&self) -> Option<(i64, String)> {
        let (o, ts) = self.commit.filter(|&(o, _)| o > self.acked)?;
        let warm_from = self.window.front().map_or(o, |&(_, w)| w.min(o));
        Some((o, format!("{ts} {warm_from}")))
    }

    /// The coordinator acknowledged a commit of `o`.
    pub fn acknowledged(&mut self, o: i64) {
        self.acked = self.acked.max(o);
    }

    /// Where to read again from when the partition has gone quiet although the broker
    /// says its end (`end`: the last stable offset when the client reports one, else the
    /// high watermark) is past what was read, and the client has
    /// nothing of it queued (`queued`): the broker is not serving what it holds. tansu
    /// 0.6 answers a fetch that starts inside a batch with the batches after it; at a
    /// partition's end there are none, and the rest of the batch would wait for the next
    /// record produced (for ever, on a site that went quiet). From a batch's length
    /// back, the batch is there again; what was read before is skipped as seen.
    /// `None` before anything was read: there is no position to be behind.
    pub fn stalled(&self, end: i64, queued: i64) -> Option<i64> {
        let at = self.next?;
        (end > at && queued == 0).then(|| (at - REREAD_BACK).max(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_in_order_are_next_and_read_again_are_seen() {
        let mut off = Offsets::new(0);
        assert!(!off.live());
        assert_eq!(off.arrive(0), Arrival::Next);
        assert!(off.live());
        assert_eq!(off.arrive(1), Arrival::Next);
        assert_eq!(off.arrive(0), Arrival::Seen);
        assert_eq!(off.arrive(2), Arrival::Next);
    }

    #[test]
    fn a_gap_is_read_again_from_further_back_each_time_then_taken_as_real() {
        let mut off = Offsets::new(0);
        off.arrive(25_000);
        let tries: Vec<Arrival> = (0..3).map(|_| off.arrive(25_010)).collect();
        assert_eq!(
            tries,
            [
                Arrival::Reread {
                    expected: 25_001,
                    from: 15_001,
                    tries: 1
                },
                Arrival::Reread {
                    expected: 25_001,
                    from: 5_001,
                    tries: 2
                },
                Arrival::Reread {
                    expected: 25_001,
                    from: 0,
                    tries: 3
                },
            ]
        );
        assert_eq!(
            off.arrive(25_010),
            Arrival::Gap {
                from: 25_001,
                to: 25_010
            }
        );
        assert_eq!(off.arrive(25_011), Arrival::Next);
        // A re-read that fills the gap is simply the next record.
        let mut off = Offsets::new(0);
        off.arrive(7);
        assert!(matches!(off.arrive(9), Arrival::Reread { tries: 1, .. }));
        assert_eq!(off.arrive(8), Arrival::Next);
        assert_eq!(off.arrive(9), Arrival::Next);
    }

    #[test]
    fn a_quiet_partition_behind_the_broker_s_end_is_read_again_from_a_batch_back() {
        let mut off = Offsets::new(0);
        assert_eq!(off.stalled(100, 0), None, "nothing read: no position");
        for o in 0..=11_399 {
            off.arrive(o);
        }
        assert_eq!(off.stalled(11_400, 0), None, "read to the end");
        assert_eq!(
            off.stalled(11_520, 40),
            None,
            "the client has records queued"
        );
        assert_eq!(off.stalled(11_520, 0), Some(1_400));
        let mut near_start = Offsets::new(0);
        near_start.arrive(0);
        assert_eq!(near_start.stalled(500, 0), Some(0));
        // Reading again from there: what was read is seen, the rest is next.
        assert_eq!(off.arrive(1_400), Arrival::Seen);
        assert_eq!(off.arrive(11_400), Arrival::Next);
    }

    #[test]
    fn warm_up_records_are_muted_and_never_committed() {
        let mut off = Offsets::new(10);
        for o in 5..10 {
            off.arrive(o);
            assert!(
                !off.read(o, o * 1000, 60_000, 0),
                "offset {o} is the warm-up"
            );
        }
        off.settle(|_| i64::MAX);
        assert_eq!(off.committable(), None, "nothing judged live yet");
        off.arrive(10);
        assert!(off.read(10, 10_000, 60_000, 0));
        off.settle(|_| i64::MAX);
        assert_eq!(off.committable(), Some((11, "10000 5".to_owned())));
    }

    #[test]
    fn only_records_the_pipeline_released_are_committed_with_the_warm_up_start() {
        let mut off = Offsets::new(0);
        for (o, ts) in [(0, 1_000), (1, 2_000), (2, 3_000)] {
            off.arrive(o);
            off.read(o, ts, 1_500, 0);
        }
        off.settle(|_| 2_000);
        // Offset 0 (events at 1 s) is released; offset 1 (2 s) is not yet: commit 1.
        // The window keeps the records within 1.5 s of the newest (3 s): from offset 1.
        assert_eq!(off.committable(), Some((1, "1000 1".to_owned())));
        off.acknowledged(1);
        assert_eq!(off.committable(), None, "acknowledged");
        off.settle_all();
        assert_eq!(off.committable(), Some((3, "3000 1".to_owned())));
    }

    #[test]
    fn a_record_settles_when_its_own_site_released_it_and_commits_stay_in_offset_order() {
        let mut off = Offsets::new(0);
        // Site 0 is at 10 s, site 1 at 2 s: their records interleave on the partition.
        for (o, ts, site) in [(0, 10_000, 0), (1, 2_000, 1), (2, 11_000, 0), (3, 3_000, 1)] {
            off.arrive(o);
            off.read(o, ts, 60_000, site);
        }
        let released = |w0: Ts, w1: Ts| move |site: u32| if site == 0 { w0 } else { w1 };
        // Site 0 released both its records, site 1 neither: nothing past offset 0.
        off.settle(released(12_000, 1_000));
        assert_eq!(off.committable(), Some((1, "10000 0".to_owned())));
        // Site 1 released its first: offsets 1 and 2 settle; 3 waits for site 1.
        off.settle(released(12_000, 2_500));
        assert_eq!(off.committable(), Some((3, "11000 0".to_owned())));
    }
}
