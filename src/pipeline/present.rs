//! The site's present: the event time the watermark follows and no reading may run far
//! ahead of.
//!
//! A watermark driven by the newest timestamp belongs to whoever writes the newest
//! timestamp: one reading dated 9999 makes every later one late, and detection goes
//! blind. Here each point votes with the newest time it has claimed, and the present is
//! the k-th newest vote, k = 1 + points / 4: moving it takes more than a quarter of the
//! site's points (a site of fewer than four points has no one to outvote a liar). A
//! reading further than `max_ahead` beyond the present is held apart by the pipeline and
//! used only once the present catches up with it — a real gap in a capture, where the
//! other points follow — and dropped otherwise.

use crate::model::Ts;

/// The site's present, from its points' votes.
#[derive(Debug)]
pub(crate) struct Present {
    max_ahead: i64,
    /// Newest time each point has claimed, by point id (`Ts::MIN`: none yet).
    votes: Vec<Ts>,
    voters: usize,
    /// Votes changed since the present was last computed.
    since: usize,
    at: Option<Ts>,
    /// The newest time a trusted clock gave: live, the present never runs further
    /// ahead of it than `max_ahead`, whatever the points say.
    clock: Option<Ts>,
    scratch: Vec<Ts>,
}

impl Present {
    pub(crate) fn new(max_ahead: i64) -> Self {
        Self {
            max_ahead,
            votes: Vec::new(),
            voters: 0,
            since: 0,
            at: None,
            clock: None,
            scratch: Vec::new(),
        }
    }

    /// How far past the present a reading may be dated.
    pub(crate) fn max_ahead(&self) -> i64 {
        self.max_ahead
    }

    /// Lets readings run further ahead (the capture's own cadence is coarser).
    pub(crate) fn widen(&mut self, max_ahead: i64) {
        self.max_ahead = self.max_ahead.max(max_ahead);
    }

    /// The present, once enough points have spoken.
    pub(crate) fn at(&self) -> Option<Ts> {
        self.at
    }

    /// Whether a reading at `ts` may go in now (before the present is known, all may).
    pub(crate) fn admits(&self, ts: Ts) -> bool {
        self.at
            .is_none_or(|p| ts <= p.saturating_add(self.max_ahead))
    }

    /// The newest time a trusted clock gave, if one did.
    pub(crate) fn clock(&self) -> Option<Ts> {
        self.clock
    }

    /// Point `point` claims it has reached `ts`.
    #[inline]
    pub(crate) fn vote(&mut self, point: usize, ts: Ts) {
        if self.votes.len() <= point {
            self.votes.resize(point + 1, Ts::MIN);
        }
        let v = &mut self.votes[point];
        if ts > *v {
            if *v == Ts::MIN {
                self.voters += 1;
            }
            *v = ts;
            self.since += 1;
        }
    }

    /// Point `point` took back a claim: it now says `ts`, earlier than it said before.
    pub(crate) fn retract(&mut self, point: usize, ts: Ts) {
        if let Some(v) = self.votes.get_mut(point) {
            *v = ts;
        }
    }

    /// The present is `ts` from now on (decided from a capture's first events), or later.
    pub(crate) fn start(&mut self, ts: Ts) {
        self.at = Some(self.at.map_or(ts, |p| p.max(ts)));
    }

    /// A trusted clock (a live collector's, or a quiet site judged on the others' time)
    /// says the present is at least `ts`.
    pub(crate) fn trust(&mut self, ts: Ts) {
        self.at = Some(self.at.map_or(ts, |p| p.max(ts)));
        self.clock = Some(self.clock.map_or(ts, |c| c.max(ts)));
    }

    /// Recomputes the present when enough votes changed since the last time (amortised
    /// constant work per vote), or always with `force`. Returns it when it moved.
    /// Inlined: most calls are not due and return at once, on every event's path.
    #[inline]
    pub(crate) fn settle(&mut self, force: bool) -> Option<Ts> {
        let due = self.since >= (self.voters / 8).max(1);
        if self.at.is_none() || self.voters == 0 || !(force || due) {
            return None;
        }
        self.recompute()
    }

    fn recompute(&mut self) -> Option<Ts> {
        self.since = 0;
        let k = self.voters / 4;
        // The present never goes back, so only the votes past it can move it: unless
        // more than k are, the k-th newest is not past it either, and nothing is sorted
        // (most calls, as a round of votes arrives; `Ts::MIN`, no vote, is past nothing).
        let floor = self.at.unwrap_or(Ts::MIN);
        self.scratch.clear();
        self.scratch
            .extend(self.votes.iter().copied().filter(|&v| v > floor));
        if self.scratch.len() <= k {
            return None;
        }
        let (_, kth, _) = self.scratch.select_nth_unstable_by(k, |a, b| b.cmp(a));
        let mut candidate = *kth;
        if let Some(clock) = self.clock {
            candidate = candidate.min(clock.saturating_add(self.max_ahead));
        }
        match self.at {
            Some(p) if p >= candidate => None,
            _ => {
                self.at = Some(candidate);
                self.at
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIN: i64 = 60_000;

    fn settled(votes: &[(usize, Ts)]) -> Present {
        let mut p = Present::new(MIN);
        p.start(Ts::MIN);
        for &(point, ts) in votes {
            p.vote(point, ts);
        }
        p.settle(true);
        p
    }

    #[test]
    fn a_quarter_of_the_points_cannot_move_it_more_can() {
        let honest: Vec<(usize, Ts)> = (0..12).map(|i| (i, 1_000)).collect();
        let mut votes = honest.clone();
        votes.extend((12..16).map(|i| (i, 9_000_000)));
        assert_eq!(settled(&votes).at(), Some(1_000), "4 liars of 16");
        votes.push((16, 9_000_000));
        assert_eq!(settled(&votes).at(), Some(9_000_000), "5 of 17 move it");
    }

    #[test]
    fn it_never_goes_back_and_a_trusted_clock_moves_it() {
        let mut p = settled(&[(0, 5_000), (1, 5_000), (2, 5_000), (3, 5_000)]);
        p.retract(0, 1_000);
        p.retract(1, 1_000);
        assert_eq!(p.settle(true), None);
        assert_eq!(p.at(), Some(5_000));
        p.trust(7_000);
        assert_eq!(p.at(), Some(7_000));
        p.trust(6_000);
        assert_eq!(p.at(), Some(7_000));
    }

    #[test]
    fn live_no_vote_carries_it_past_the_clock() {
        let mut p = Present::new(MIN);
        p.trust(1_000);
        for point in 0..8 {
            p.vote(point, 9_000_000);
        }
        assert_eq!(
            p.settle(true),
            Some(1_000 + MIN),
            "every point lies: the clock holds"
        );
        assert!(!p.admits(9_000_000));
    }

    proptest! {
        /// However one point lies, the present stays within the honest points' times.
        #[test]
        fn one_point_never_moves_it_past_the_others(
            honest in prop::collection::vec(0i64..1_000_000, 3..50),
            lie in any::<i64>(),
            liar_first in any::<bool>(),
        ) {
            let mut votes: Vec<(usize, Ts)> =
                honest.iter().enumerate().map(|(i, &t)| (i + 1, t)).collect();
            if liar_first { votes.insert(0, (0, lie)) } else { votes.push((0, lie)) }
            let at = settled(&votes).at().unwrap();
            let newest = *honest.iter().max().unwrap();
            let oldest = *honest.iter().min().unwrap();
            prop_assert!(at <= newest && at >= oldest.min(lie));
        }

        /// Whatever the votes, retractions and clock, each settle moves the present to
        /// the k-th newest vote (capped by the clock) exactly when that is later, as
        /// sorting every vote says.
        #[test]
        fn it_moves_where_sorting_every_vote_says(
            ops in prop::collection::vec((0u8..8, 0usize..24, 0i64..50), 1..300),
        ) {
            let max_ahead = 5;
            let mut p = Present::new(max_ahead);
            p.start(10);
            let (mut votes, mut at, mut clock) = (vec![Ts::MIN; 24], 10, None::<Ts>);
            for (op, point, ts) in ops {
                match op {
                    0..=4 => {
                        p.vote(point, ts);
                        votes[point] = votes[point].max(ts);
                    }
                    // As the pipeline does: only a point that voted takes its claim back.
                    5 if votes[point] != Ts::MIN => {
                        p.retract(point, ts);
                        votes[point] = ts;
                    }
                    5 => {}
                    6 => {
                        p.trust(ts);
                        at = at.max(ts);
                        clock = Some(clock.map_or(ts, |c: Ts| c.max(ts)));
                    }
                    _ => {
                        let moved = p.settle(true);
                        let mut voted: Vec<Ts> =
                            votes.iter().copied().filter(|&v| v != Ts::MIN).collect();
                        voted.sort_unstable_by(|a, b| b.cmp(a));
                        let expected = voted.get(voted.len() / 4).map(|&kth| {
                            clock.map_or(kth, |c| kth.min(c + max_ahead))
                        });
                        let want = expected.filter(|&e| e > at);
                        prop_assert_eq!(moved, want);
                        if let Some(w) = want {
                            at = w;
                        }
                    }
                }
                prop_assert_eq!(p.at(), Some(at));
            }
        }
    }
}
