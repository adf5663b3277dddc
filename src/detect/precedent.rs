//! A point's precedent: the largest values a statistic took over its last samples (an
//! excursion's strength, a silence's length), so a detector can ask whether what it
//! sees now is beyond what this point already showed.
//!
//! The window is kept as the two largest values of each of eight blocks of samples, so
//! it costs a few numbers per point whatever its length, and spans between 7/8 of its
//! samples and all of them. Every sample counts toward the window's length; only those
//! a detector calls normal join its values.

const BLOCKS: usize = 8;

/// The two largest values of the last samples (the largest is kept to know the second).
#[derive(Debug, Clone, Default)]
pub(crate) struct Precedent {
    /// The two largest values (largest first) of each closed block, a ring.
    blocks: [[f64; 2]; BLOCKS],
    /// The block the next one to close replaces.
    oldest: usize,
    /// The two largest of `blocks`.
    top: [f64; 2],
    /// The block under way: its two largest values and its samples.
    current: [f64; 2],
    in_block: u32,
}

/// `pair` with `x` taken in, still the two largest, largest first.
fn with(pair: [f64; 2], x: f64) -> [f64; 2] {
    if x > pair[0] {
        [x, pair[0]]
    } else if x > pair[1] {
        [pair[0], x]
    } else {
        pair
    }
}

impl Precedent {
    /// Counts one sample of a window of `window` samples; `value`, if given (and
    /// finite), joins the values.
    pub(crate) fn count(&mut self, value: Option<f64>, window: u32) {
        if let Some(x) = value.filter(|x| x.is_finite()) {
            self.current = with(self.current, x);
        }
        self.in_block += 1;
        // A block is ⌈window / 8⌉ samples (at least one), without a division.
        if self.in_block as u64 * BLOCKS as u64 >= u64::from(window) {
            self.blocks[self.oldest] = self.current;
            self.oldest = (self.oldest + 1) % BLOCKS;
            self.top = self
                .blocks
                .iter()
                .flatten()
                .fold([0.0; 2], |top, &x| with(top, x));
            self.current = [0.0; 2];
            self.in_block = 0;
        }
    }

    /// The second largest value of the window (0 before two): a value beyond it has
    /// been seen at most once.
    pub(crate) fn second(&self) -> f64 {
        with(with(self.top, self.current[0]), self.current[1])[1]
    }
}

/// One point's recent judgements of a z-score: the run under way, its strength and its
/// precedent (`ewma_z`, `seasonal`).
#[derive(Default)]
pub(crate) struct Recent {
    /// |z| of the last `persist_samples` samples judged (a ring, zeros until filled).
    z: Vec<f64>,
    /// Where the next |z| goes in the ring.
    next: usize,
    /// Samples in a row at or over the threshold.
    pub(crate) run: u32,
    /// The strongest runs among the last samples its baseline learned.
    pub(crate) precedent: Precedent,
}

impl Recent {
    /// Takes a judged z: whether the run's strength, the least |z| of the last
    /// `persist` samples, reaches the bar — the threshold, and the precedent (the second
    /// strongest run among the last `window` samples learned) unless an open alert
    /// froze the sample (`!learned`): the precedent decides what starts an alert, not
    /// how long it lasts. Returns that and the precedent.
    pub(crate) fn judge(
        &mut self,
        z: f64,
        threshold: f64,
        persist: u32,
        window: u32,
        learned: bool,
    ) -> (bool, f64) {
        let strength = self.push(z.abs(), persist);
        self.run = if z.abs() >= threshold {
            self.run + 1
        } else {
            0
        };
        let precedent = self.precedent.second();
        let bar = if learned {
            threshold.max(precedent)
        } else {
            threshold
        };
        if window > 0 {
            self.precedent.count(learned.then_some(strength), window);
        }
        (strength >= bar, precedent)
    }

    /// Takes a judged |z|; returns the run's strength, the least |z| of the last
    /// `persist` samples (0 until there are that many).
    fn push(&mut self, z: f64, persist: u32) -> f64 {
        let persist = persist as usize;
        if self.z.len() != persist {
            self.z = vec![0.0; persist];
            self.next = 0;
        }
        self.z[self.next] = z;
        self.next = if self.next + 1 == persist {
            0
        } else {
            self.next + 1
        };
        self.z.iter().copied().fold(f64::INFINITY, f64::min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_two_of_the_window_and_none_older() {
        let mut p = Precedent::default();
        assert_eq!(p.second(), 0.0);
        // Window 80: blocks of 10.
        for i in 0..80 {
            let v = match i {
                5 => Some(50.0),
                30 => Some(40.0),
                31 => None,
                _ => Some((i % 7) as f64),
            };
            p.count(v, 80);
        }
        assert_eq!(p.second(), 40.0);
        // Eight more blocks without anything large: both are forgotten.
        for i in 0..80 {
            p.count(Some((i % 3) as f64), 80);
        }
        assert_eq!(p.second(), 2.0);
        // Values of the block under way count at once; a non-finite one never.
        p.count(Some(9.0), 80);
        p.count(Some(f64::INFINITY), 80);
        assert_eq!(p.second(), 2.0);
        p.count(Some(5.0), 80);
        assert_eq!(p.second(), 5.0);
    }

    proptest::proptest! {
        #[test]
        fn agrees_with_a_sort_of_whole_blocks(
            values in proptest::collection::vec(0.0f64..1e6, 1..400),
            window in 1u32..100,
        ) {
            let mut p = Precedent::default();
            for &v in &values {
                p.count(Some(v), window);
            }
            // The window holds the last 8 whole blocks and the block under way.
            let block = window.div_ceil(8) as usize;
            let under_way = values.len() % block;
            let kept = (values.len() - under_way).min(8 * block) + under_way;
            let mut last: Vec<f64> = values[values.len() - kept..].to_vec();
            last.sort_by(|a, b| b.total_cmp(a));
            proptest::prop_assert_eq!(p.second(), last.get(1).copied().unwrap_or(0.0));
        }
    }
}
