//! The reorder buffer: events waiting for the watermark, released earliest first (by
//! event time, then arrival).
//!
//! Nearly every event arrives no earlier than the one before it; those join a run kept in
//! order, at constant cost. Only an event older than the run's newest goes to a heap.
//! Releasing takes the earlier of the two fronts, so the order is exactly a single
//! heap's, at a fraction of its cost.

use crate::model::event::Event;
use crate::model::Ts;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// An event waiting, with its place in arrival order.
pub(crate) struct Queued {
    pub(crate) ts: Ts,
    pub(crate) seq: u64,
    pub(crate) event: Event,
}

impl Queued {
    fn key(&self) -> (Ts, u64) {
        (self.ts, self.seq)
    }
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        self.key() == o.key()
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.key().cmp(&o.key())
    }
}

/// Events in waiting, earliest `(ts, seq)` first.
#[derive(Default)]
pub(crate) struct Reorder {
    /// In order.
    run: VecDeque<Queued>,
    /// Those that arrived older than the run's newest.
    late: BinaryHeap<Reverse<Queued>>,
}

impl Reorder {
    pub(crate) fn push(&mut self, q: Queued) {
        if self.run.back().is_none_or(|b| b.key() <= q.key()) {
            self.run.push_back(q);
        } else {
            self.late.push(Reverse(q));
        }
    }

    /// The earliest event's time.
    pub(crate) fn peek_ts(&self) -> Option<Ts> {
        match (self.run.front(), self.late.peek()) {
            (Some(a), Some(Reverse(b))) => Some(a.ts.min(b.ts)),
            (a, b) => a.map(|a| a.ts).or(b.map(|Reverse(b)| b.ts)),
        }
    }

    /// Takes the earliest event.
    pub(crate) fn pop(&mut self) -> Option<Queued> {
        let from_run = match (self.run.front(), self.late.peek()) {
            (Some(a), Some(Reverse(b))) => a.key() < b.key(),
            (a, _) => a.is_some(),
        };
        if from_run {
            self.run.pop_front()
        } else {
            self.late.pop().map(|Reverse(q)| q)
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.run.len() + self.late.len()
    }

    /// Every event waiting, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Queued> {
        self.run.iter().chain(self.late.iter().map(|Reverse(q)| q))
    }

    /// Empties it, handing every event over in no particular order.
    pub(crate) fn take(&mut self) -> impl Iterator<Item = Queued> {
        let Reorder { run, late } = std::mem::take(self);
        run.into_iter().chain(late.into_iter().map(|Reverse(q)| q))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Quality;
    use proptest::prelude::*;

    fn queued(ts: Ts, seq: u64) -> Queued {
        let event = Event::Sample {
            ts,
            point: 0,
            value: 0.0,
            quality: Quality::Good,
        };
        Queued { ts, seq, event }
    }

    proptest! {
        /// Whatever the arrival order and however pushes and pops interleave, events
        /// leave in exactly the order one heap would release them.
        #[test]
        fn releases_in_a_heap_s_order(ops in prop::collection::vec((any::<bool>(), 0i64..50), 0..300)) {
            let (mut r, mut heap, mut seq) = (Reorder::default(), BinaryHeap::new(), 0u64);
            for (pop, ts) in ops {
                if pop {
                    let want = heap.pop().map(|Reverse(q): Reverse<Queued>| q.key());
                    prop_assert_eq!(r.peek_ts(), want.map(|k| k.0));
                    prop_assert_eq!(r.pop().map(|q| q.key()), want);
                } else {
                    seq += 1;
                    r.push(queued(ts, seq));
                    heap.push(Reverse(queued(ts, seq)));
                }
                prop_assert_eq!(r.len(), heap.len());
            }
            let mut rest: Vec<_> = r.take().map(|q| q.key()).collect();
            rest.sort();
            let mut want: Vec<_> = heap.into_iter().map(|Reverse(q)| q.key()).collect();
            want.sort();
            prop_assert_eq!(rest, want);
        }
    }
}
