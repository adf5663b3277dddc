//! Min/max decimation: what a plot needs of a long series.

use crate::model::Ts;

/// Keeps the minimum and maximum of each of `columns` equal slices of `[lo, hi]`, in
/// time order: what a plot `columns` pixels wide can show of the series.
pub fn reduce(points: &[(Ts, f64)], lo: Ts, hi: Ts, columns: usize) -> Vec<(Ts, f64)> {
    if points.len() <= 2 * columns || hi <= lo {
        return points.to_vec();
    }
    let span = (hi - lo) as f64;
    // The last instant belongs to the last column, not to one past it.
    let column = |ts: Ts| {
        (((ts - lo) as f64 / span * columns as f64).floor() as i64).min(columns as i64 - 1)
    };
    let mut out = Vec::with_capacity(2 * columns);
    let mut i = 0;
    while i < points.len() {
        let col = column(points[i].0);
        let mut j = i;
        let (mut min, mut max) = (i, i);
        while j < points.len() && column(points[j].0) == col {
            if points[j].1 < points[min].1 {
                min = j;
            }
            if points[j].1 > points[max].1 {
                max = j;
            }
            j += 1;
        }
        let (a, b) = if min <= max { (min, max) } else { (max, min) };
        out.push(points[a]);
        if b != a {
            out.push(points[b]);
        }
        i = j;
    }
    out
}
