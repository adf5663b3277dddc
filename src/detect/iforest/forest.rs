//! Isolation forest (Liu, Ting & Zhou, ICDM 2008) written as linfa algorithms are:
//! hyperparameters checked through [`ParamGuard`], fitting through [`Fit`] on a
//! `DatasetBase`, scoring through [`PredictInplace`] (so `Predict` comes for free).
//!
//! - `t` trees, each grown on a subsample of `ψ` rows drawn without replacement, to a
//!   height limit of ⌈log₂ ψ⌉: a random feature (among those not constant in the node)
//!   and a split drawn uniformly between its minimum and maximum.
//! - The path length of a row is its depth in the tree plus c(n) for the rows left
//!   unseparated in its leaf, c(n) = 2H(n−1) − 2(n−1)/n, H(i) ≈ ln i + γ; the score is
//!   2^(−E[h(x)] / c(ψ)): near 1 for anomalies, about 0.5 or less for normal rows.
//! - Deterministic for a seed (tree `i` uses its own generator seeded from the seed and
//!   `i`). Trees are stored flat, one array of nodes each with child indices, so scoring
//!   a row allocates nothing and a fitted forest is `Send + Sync`.

use linfa::dataset::DatasetBase;
use linfa::traits::{Fit, PredictInplace};
use linfa::ParamGuard;
use ndarray::{Array1, ArrayBase, ArrayView1, Data, Ix2};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why fitting or loading failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum IForestError {
    /// A hyperparameter out of range.
    #[error("isolation forest: {0}")]
    Params(String),
    /// No rows, or rows with non-finite values.
    #[error("isolation forest: {0}")]
    Data(String),
    /// A tree that is not a valid tree (loaded from an untrusted file).
    #[error("isolation forest: tree {tree}: {problem}")]
    Malformed {
        /// Tree index.
        tree: usize,
        /// What is wrong.
        problem: String,
    },
    /// linfa's own error.
    #[error(transparent)]
    Linfa(#[from] linfa::Error),
}

/// Hyperparameters, checked (what fitting uses).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct IsolationForestValidParams {
    /// Trees (`t`, default 100).
    pub n_trees: usize,
    /// Rows per tree (`ψ`, default 256; fewer rows than this use them all).
    pub sample_size: usize,
    /// Seed.
    pub seed: u64,
    /// Score values outside a node's range as possibly isolated there (see
    /// [`IsolationForest::extrapolate`]); off by default, as in the paper.
    #[serde(default)]
    pub extrapolate: bool,
}

/// Hyperparameters, unchecked: build, then [`ParamGuard::check`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IsolationForestParams(IsolationForestValidParams);

impl Default for IsolationForestParams {
    fn default() -> Self {
        Self(IsolationForestValidParams {
            n_trees: 100,
            sample_size: 256,
            seed: 0,
            extrapolate: false,
        })
    }
}

impl IsolationForestParams {
    /// Sets `t`.
    pub fn n_trees(mut self, n: usize) -> Self {
        self.0.n_trees = n;
        self
    }
    /// Sets `ψ`.
    pub fn sample_size(mut self, n: usize) -> Self {
        self.0.sample_size = n;
        self
    }
    /// Sets the seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.0.seed = seed;
        self
    }
    /// Sets extrapolating scores.
    pub fn extrapolate(mut self, on: bool) -> Self {
        self.0.extrapolate = on;
        self
    }
}

impl ParamGuard for IsolationForestParams {
    type Checked = IsolationForestValidParams;
    type Error = IForestError;

    fn check_ref(&self) -> Result<&Self::Checked, Self::Error> {
        let p = &self.0;
        if !(1..=10_000).contains(&p.n_trees) {
            return Err(IForestError::Params(format!(
                "n_trees {} is not in 1..=10000",
                p.n_trees
            )));
        }
        if !(2..=1 << 20).contains(&p.sample_size) {
            return Err(IForestError::Params(format!(
                "sample_size {} is not in 2..=1048576",
                p.sample_size
            )));
        }
        Ok(p)
    }

    fn check(self) -> Result<Self::Checked, Self::Error> {
        self.check_ref()?;
        Ok(self.0)
    }
}

/// A tree node: a split, or a leaf holding its path-length adjustment. 24 bytes: the
/// right child is always `left + 1`. A split also keeps the range `[lo, hi]` its rows
/// had on its feature (for extrapolating scores). Written compactly: a split as
/// `[feature, value, left, lo, hi]`, a leaf as `[value]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(into = "NodeRepr")]
pub struct Node {
    /// Split value (`x < value` goes left), or for a leaf: depth + c(size).
    pub value: f64,
    /// Feature index, or `u32::MAX` for a leaf.
    pub feature: u32,
    /// Left child index; the right child follows it (unused for leaves).
    pub left: u32,
    /// Lowest value of the split feature among the node's rows (0 for leaves).
    pub lo: f32,
    /// Highest value of the split feature among the node's rows (0 for leaves).
    pub hi: f32,
}

const LEAF: u32 = u32::MAX;

#[derive(Serialize)]
#[serde(untagged)]
enum NodeRepr {
    Leaf((f64,)),
    Split((u32, f64, u32, f32, f32)),
}

/// Read by hand rather than as the untagged [`NodeRepr`]: serde buffers every untagged
/// value and tries each variant in turn, which made loading the built-in models most of
/// a short replay's time.
impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a leaf [value] or a split [feature, value, left, lo, hi]")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
                use serde::de::Error;
                let first: f64 = a
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(0, &self))?;
                let Some(value) = a.next_element::<f64>()? else {
                    return Ok(Node {
                        value: first,
                        feature: LEAF,
                        left: 0,
                        lo: 0.0,
                        hi: 0.0,
                    });
                };
                if !(first >= 0.0 && first < f64::from(LEAF) && first.fract() == 0.0) {
                    return Err(A::Error::custom(format!(
                        "split feature {first} is not an index"
                    )));
                }
                let left: u32 = a
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(2, &self))?;
                let lo: f32 = a
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(3, &self))?;
                let hi: f32 = a
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(4, &self))?;
                if a.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    return Err(A::Error::invalid_length(6, &self));
                }
                Ok(Node {
                    value,
                    feature: first as u32,
                    left,
                    lo,
                    hi,
                })
            }
        }
        d.deserialize_seq(V)
    }
}

impl From<Node> for NodeRepr {
    fn from(n: Node) -> Self {
        if n.feature == LEAF {
            NodeRepr::Leaf((n.value,))
        } else {
            NodeRepr::Split((n.feature, n.value, n.left, n.lo, n.hi))
        }
    }
}

/// A fitted forest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IsolationForest {
    /// Columns of the rows it was fitted on.
    pub n_features: usize,
    /// Rows per tree actually used (ψ, or fewer when the data had fewer rows).
    pub sample_size: usize,
    /// The trees, each an array of nodes rooted at index 0.
    pub trees: Vec<Vec<Node>>,
    /// Extrapolating scores. A plain isolation forest scores a value far outside the
    /// training data like the most extreme training row (it lands in their leaf), so
    /// scores saturate. With this on, a value outside a split node's range `[lo, hi]`
    /// counts as isolated at that node with the probability that a split drawn over
    /// the range widened to include it would have cut it off — `(lo − x)/(hi − x)`
    /// below, `(x − hi)/(x − lo)` above — and the path length is the expectation.
    /// Rows inside every range score exactly as without it.
    #[serde(default)]
    pub extrapolate: bool,
    /// The trees laid out for scoring, built at the first score.
    #[serde(skip)]
    flat: Flat,
}

/// c(n): the average path length of an unsuccessful search in a binary search tree.
pub fn c(n: usize) -> f64 {
    match n {
        0 | 1 => 0.0,
        2 => 1.0,
        n => {
            let n = n as f64;
            2.0 * ((n - 1.0).ln() + 0.577_215_664_9) - 2.0 * (n - 1.0) / n
        }
    }
}

impl<D: Data<Elem = f64>, T> Fit<ArrayBase<D, Ix2>, T, IForestError>
    for IsolationForestValidParams
{
    type Object = IsolationForest;

    fn fit(
        &self,
        dataset: &DatasetBase<ArrayBase<D, Ix2>, T>,
    ) -> Result<IsolationForest, IForestError> {
        let x = &dataset.records;
        let (rows, cols) = x.dim();
        if rows == 0 || cols == 0 {
            return Err(IForestError::Data("no rows or no columns".into()));
        }
        if x.iter().any(|v| !v.is_finite()) {
            return Err(IForestError::Data("rows must be finite".into()));
        }
        let p = self;
        let psi = p.sample_size.min(rows);
        let limit = (psi as f64).log2().ceil() as usize;
        let trees = (0..p.n_trees)
            .map(|t| {
                let mut rng =
                    StdRng::seed_from_u64(p.seed ^ (t as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let sample = rand::seq::index::sample(&mut rng, rows, psi).into_vec();
                grow(x, sample, limit, &mut rng)
            })
            .collect();
        Ok(IsolationForest {
            n_features: cols,
            sample_size: psi,
            trees,
            extrapolate: p.extrapolate,
            flat: Flat::default(),
        })
    }
}

/// `v` as f32, rounded away from the data (`dir` −1: down, +1: up), so every row the
/// node held is inside its stored range.
fn outward(v: f64, dir: f64) -> f32 {
    let r = v as f32;
    if (f64::from(r) - v) * dir >= 0.0 {
        r
    } else {
        r + dir as f32 * (r.abs() * f32::EPSILON + f32::MIN_POSITIVE)
    }
}

/// Grows one tree over `rows` (indices into `x`).
fn grow<D: Data<Elem = f64>>(
    x: &ArrayBase<D, Ix2>,
    rows: Vec<usize>,
    limit: usize,
    rng: &mut StdRng,
) -> Vec<Node> {
    let mut nodes = vec![Node {
        feature: LEAF,
        value: 0.0,
        left: 0,
        lo: 0.0,
        hi: 0.0,
    }];
    // (node index, its rows, depth)
    let mut stack = vec![(0usize, rows, 0usize)];
    let cols = x.ncols();
    while let Some((at, rows, depth)) = stack.pop() {
        let leaf = |n: usize| Node {
            feature: LEAF,
            value: depth as f64 + c(n),
            left: 0,
            lo: 0.0,
            hi: 0.0,
        };
        if depth >= limit || rows.len() <= 1 {
            nodes[at] = leaf(rows.len());
            continue;
        }
        // Features that still vary in this node.
        let ranges: Vec<(usize, f64, f64)> = (0..cols)
            .filter_map(|f| {
                let (lo, hi) =
                    rows.iter()
                        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &r| {
                            let v = x[[r, f]];
                            (lo.min(v), hi.max(v))
                        });
                (lo < hi).then_some((f, lo, hi))
            })
            .collect();
        if ranges.is_empty() {
            nodes[at] = leaf(rows.len());
            continue;
        }
        let (f, lo, hi) = ranges[rng.random_range(0..ranges.len())];
        let split = rng.random_range(lo..hi);
        let (left, right): (Vec<usize>, Vec<usize>) =
            rows.into_iter().partition(|&r| x[[r, f]] < split);
        let l = nodes.len();
        nodes.push(leaf(0));
        nodes.push(leaf(0));
        nodes[at] = Node {
            feature: f as u32,
            value: split,
            left: l as u32,
            lo: outward(lo, -1.0),
            hi: outward(hi, 1.0),
        };
        stack.push((l, left, depth + 1));
        stack.push((l + 1, right, depth + 1));
    }
    nodes
}

/// The chance that a split drawn over node `n`'s range widened to include `x` would
/// have cut `x` off there; `None` inside the range (a chance of 0, which leaves a walk's
/// sums as they were, so walks skip them).
#[inline]
fn cut_at(lo: f32, hi: f32, x: f64) -> Option<f64> {
    let (lo, hi) = (f64::from(lo), f64::from(hi));
    if x < lo {
        Some((lo - x) / (hi - x))
    } else if x > hi {
        Some((x - hi) / (x - lo))
    } else {
        None
    }
}

/// Trees one row walks side by side in single-row scoring.
const SIDE_BY_SIDE: usize = 8;
/// Rows that walk one tree side by side in batch scoring: more walks in flight than 8
/// (about 5 % faster on 100,000 rows, plain and extrapolated; `cargo bench --bench
/// iforest`, two rounds alternating).
const BATCH_LANES: usize = 16;

/// A node of [`FlatTrees`]: 32 bytes, so a step of a walk reads one cache line (with
/// ranges and leaves in arrays of their own beside 16-byte nodes, a replay's walks
/// missed L1 20 % more often: callgrind's cache simulation). A leaf points at itself
/// and compares against NaN (so every row stays there) and has an infinite range (so
/// nothing is cut at it): a walk needs no branch to stop, it just takes as many steps
/// as its deepest tree. Its path length is in the node (in the cache line the walk last
/// loaded).
#[derive(Clone, Copy)]
struct FlatNode {
    value: f64,
    leaf: f64,
    lo: f32,
    hi: f32,
    feature: u32,
    left: u32,
}

impl FlatNode {
    /// A leaf at index `at` whose path length is `leaf`.
    fn leaf(at: u32, leaf: f64) -> Self {
        FlatNode {
            value: f64::NAN,
            leaf,
            lo: f32::NEG_INFINITY,
            hi: f32::INFINITY,
            feature: 0,
            left: at,
        }
    }
}

/// Every tree's nodes in one array (children indexed in it), laid out once from
/// validated trees. The trees must not change after it: it is built at the first score.
struct FlatTrees {
    nodes: Vec<FlatNode>,
    /// A leaf of no tree, the last node: where the lanes a walk does not use idle.
    idle: u32,
    /// Each tree's root in `nodes`.
    roots: Vec<u32>,
    /// Each tree's deepest leaf: the steps a batch walks it.
    depth: Vec<u32>,
    /// The deepest leaf of each group of [`SIDE_BY_SIDE`] trees: the steps one row
    /// walks them (the group's largest `depth`, kept so scoring need not recompute it).
    steps: Vec<u32>,
    /// For each group of [`SIDE_BY_SIDE`] trees, the least path length that the trees
    /// after it can add (see [`FlatTrees::least_path`]), for plain walks (`[0]`) and
    /// extrapolating ones (`[1]`): what lets single-row scoring stop before the partial
    /// sum alone passes its limit.
    rest: [Vec<f64>; 2],
}

impl FlatTrees {
    /// Lays out validated trees (see [`IsolationForest::validate`]).
    fn new(trees: &[Vec<Node>]) -> Self {
        let total: usize = trees.iter().map(Vec::len).sum();
        let mut nodes = Vec::with_capacity(total);
        let mut roots = Vec::with_capacity(trees.len());
        let mut depths = Vec::with_capacity(trees.len());
        let mut least = Vec::with_capacity(trees.len());
        for tree in trees {
            let base = nodes.len() as u32;
            roots.push(base);
            let mut depth = vec![0u32; tree.len()];
            for (i, n) in tree.iter().enumerate() {
                let at = base + i as u32;
                if n.feature == LEAF {
                    nodes.push(FlatNode::leaf(at, n.value));
                } else {
                    for child in [n.left as usize, n.left as usize + 1] {
                        depth[child] = depth[i] + 1;
                    }
                    nodes.push(FlatNode {
                        value: n.value,
                        leaf: 0.0,
                        lo: n.lo,
                        hi: n.hi,
                        feature: n.feature,
                        left: base + n.left,
                    });
                }
            }
            depths.push(depth.into_iter().max().unwrap_or(0));
            least.push([false, true].map(|e| Self::least_path(tree, e)));
        }
        // The idle leaf (see `walk`).
        let idle = nodes.len() as u32;
        nodes.push(FlatNode::leaf(idle, 0.0));
        let steps = depths
            .chunks(SIDE_BY_SIDE)
            .map(|d| d.iter().copied().max().unwrap_or(0))
            .collect();
        let rest = [0, 1].map(|e| {
            let groups = least.chunks(SIDE_BY_SIDE);
            let mut rest = vec![0.0; groups.len()];
            let mut after = 0.0;
            for (r, group) in rest.iter_mut().zip(groups).rev() {
                *r = after;
                after += group.iter().map(|l| l[e]).sum::<f64>();
            }
            rest
        });
        FlatTrees {
            nodes,
            idle,
            roots,
            depth: depths,
            steps,
            rest,
        }
    }

    /// The least path length any row can have through `tree`. A plain path ends at a
    /// leaf. An extrapolated one is a weighted mean (weights summing to 1) of the depths
    /// at which it may be cut, each at least 1, and of its leaf's path length, so at
    /// least the smaller of 1 and the least leaf.
    fn least_path(tree: &[Node], extrapolate: bool) -> f64 {
        let leaf = tree
            .iter()
            .filter(|n| n.feature == LEAF)
            .map(|n| n.value)
            .fold(f64::INFINITY, f64::min);
        // (A file's leaves may be anything finite, negative too: the bound is still the
        // least, so early stopping stays exact on any validated forest.)
        let splits = tree.iter().any(|n| n.feature != LEAF);
        if extrapolate && splits {
            leaf.min(1.0)
        } else {
            leaf
        }
    }

    /// Walks taken side by side, so the loads of their nodes overlap instead of each
    /// walk waiting on its own chain of nodes: walk `k` starts at node `at[k]` and reads
    /// the row at `rows[k · stride..]` (a stride of 0: one row through several trees;
    /// of the row width: several rows through one tree), for `steps` steps (a walk at a
    /// leaf stays there and is cut nothing more, so none needs a branch to stop).
    /// Lanes past `out.len()` idle at the idle leaf on the first row, so every step
    /// walks all `N` lanes, a loop the compiler unrolls. `out[k]` = its path length,
    /// expected (`EXTRAPOLATE`, see [`IsolationForest::extrapolate`]) or plain: depth plus the leaf's adjustment, with
    /// the arithmetic of one walk in its order, so the same bits in every layout.
    #[inline]
    fn walk<const EXTRAPOLATE: bool, const N: usize>(
        &self,
        mut at: [u32; N],
        steps: u32,
        rows: &[f64],
        stride: usize,
        out: &mut [f64],
    ) {
        let n = out.len();
        let mut offset = [0usize; N];
        for k in 0..N {
            if k < n {
                offset[k] = k * stride;
            } else {
                at[k] = self.idle;
            }
        }
        let nodes = &self.nodes;
        let mut depth = 0.0f64;
        let mut stay = [1.0f64; N];
        let mut acc = [0.0f64; N];
        for _ in 0..steps {
            if EXTRAPOLATE {
                depth += 1.0;
            }
            for k in 0..N {
                let node = nodes[at[k] as usize];
                let x = rows[offset[k] + node.feature as usize];
                if EXTRAPOLATE {
                    if let Some(cut) = cut_at(node.lo, node.hi, x) {
                        acc[k] += stay[k] * cut * depth;
                        stay[k] *= 1.0 - cut;
                    }
                }
                at[k] = node.left + u32::from(x >= node.value);
            }
        }
        for (k, o) in out.iter_mut().enumerate() {
            let leaf = nodes[at[k] as usize].leaf;
            *o = if EXTRAPOLATE {
                acc[k] + stay[k] * leaf
            } else {
                leaf
            };
        }
    }

    /// `out[k]` = the path length of `row` through tree `group · SIDE_BY_SIDE + k`.
    fn paths(&self, extrapolate: bool, group: usize, row: &[f64], out: &mut [f64]) {
        let first = group * SIDE_BY_SIDE;
        let mut at = [0u32; SIDE_BY_SIDE];
        at[..out.len()].copy_from_slice(&self.roots[first..first + out.len()]);
        let steps = self.steps[group];
        if extrapolate {
            self.walk::<true, SIDE_BY_SIDE>(at, steps, row, 0, out);
        } else {
            self.walk::<false, SIDE_BY_SIDE>(at, steps, row, 0, out);
        }
    }

    /// Adds the path lengths of `lanes.len()` consecutive rows (row-major in `rows`,
    /// `cols` wide) through tree `tree` to `lanes`.
    fn add_paths(
        &self,
        extrapolate: bool,
        tree: usize,
        rows: &[f64],
        cols: usize,
        lanes: &mut [f64],
    ) {
        let at = [self.roots[tree]; BATCH_LANES];
        let mut paths = [0.0; BATCH_LANES];
        let paths = &mut paths[..lanes.len()];
        let steps = self.depth[tree];
        if extrapolate {
            self.walk::<true, BATCH_LANES>(at, steps, rows, cols, paths);
        } else {
            self.walk::<false, BATCH_LANES>(at, steps, rows, cols, paths);
        }
        for (l, p) in lanes.iter_mut().zip(paths) {
            *l += *p;
        }
    }
}

/// [`FlatTrees`] built once, at the first score; not part of the model's
/// identity or its file.
#[derive(Default)]
struct Flat(std::sync::OnceLock<FlatTrees>);

impl Clone for Flat {
    fn clone(&self) -> Self {
        Flat::default()
    }
}

impl PartialEq for Flat {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for Flat {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("Flat")
    }
}

/// Rows scored together, tree by tree, so each tree stays in cache across the block.
const BLOCK: usize = 256;

impl IsolationForest {
    /// Anomaly score of one row (length `n_features`), in (0, 1].
    pub fn score_row(&self, row: ArrayView1<'_, f64>) -> f64 {
        self.score_row_at_least(row, 0.0).unwrap_or(0.0)
    }

    /// The score of a row if it is at least `threshold`, else `None` — exactly the
    /// decision `score_row(row) >= threshold`, but a row stops early once its path
    /// lengths so far, plus the least that the trees it has not walked can add, exceed
    /// what a score of `threshold` allows: a normal row is settled after well under
    /// half of the trees.
    ///
    /// A single row walks [`SIDE_BY_SIDE`] trees side by side, so the loads of their nodes
    /// overlap instead of each walk waiting on its own chain of nodes; the path lengths
    /// are added in tree order, so the total is the batch scorer's to the last bit.
    pub fn score_row_at_least(&self, row: ArrayView1<'_, f64>, threshold: f64) -> Option<f64> {
        // score ≥ threshold ⟺ total ≤ −log2(threshold) · c(ψ) · t.
        let limit = -threshold.log2() * c(self.sample_size) * self.trees.len() as f64;
        // Stop only when clearly past the limit; the exact comparison is the score's.
        let stop = limit * (1.0 + 1e-9) + 1e-9;
        let copied;
        let row = match row.as_slice() {
            Some(r) => r,
            None => {
                copied = row.to_vec();
                &copied
            }
        };
        let flat = self.flat();
        let rest = &flat.rest[usize::from(self.extrapolate)];
        let mut total = 0.0;
        let mut lanes = [0.0; SIDE_BY_SIDE];
        for (group, trees) in self.trees.chunks(SIDE_BY_SIDE).enumerate() {
            let lanes = &mut lanes[..trees.len()];
            flat.paths(self.extrapolate, group, row, lanes);
            for &p in lanes.iter() {
                total += p;
            }
            if total + rest[group] > stop {
                return None;
            }
        }
        let s = self.score_of(total);
        (s >= threshold).then_some(s)
    }

    /// The trees laid out for scoring (laid out at the first call).
    fn flat(&self) -> &FlatTrees {
        self.flat.0.get_or_init(|| FlatTrees::new(&self.trees))
    }

    /// The score of a row whose path lengths over all trees sum to `total`.
    fn score_of(&self, total: f64) -> f64 {
        let mean = total / self.trees.len() as f64;
        2f64.powf(-mean / c(self.sample_size).max(f64::MIN_POSITIVE))
    }

    /// Checks a forest read from an untrusted file: feature indices in range, children
    /// after their parent (so no cycles) and inside the tree, finite values.
    pub fn validate(&self) -> Result<(), IForestError> {
        if self.trees.is_empty() || self.n_features == 0 || self.sample_size < 2 {
            return Err(IForestError::Malformed {
                tree: 0,
                problem: "no trees, no features or a sample size below 2".into(),
            });
        }
        for (t, tree) in self.trees.iter().enumerate() {
            let bad = |problem: String| IForestError::Malformed { tree: t, problem };
            if tree.is_empty() {
                return Err(bad("no nodes".into()));
            }
            for (i, n) in tree.iter().enumerate() {
                if !n.value.is_finite() {
                    return Err(bad(format!("node {i} has a non-finite value")));
                }
                if n.feature == LEAF {
                    continue;
                }
                if n.feature as usize >= self.n_features {
                    return Err(bad(format!(
                        "node {i} splits on feature {} of {}",
                        n.feature, self.n_features
                    )));
                }
                if !(n.lo.is_finite() && n.hi.is_finite() && n.lo <= n.hi) {
                    return Err(bad(format!("node {i} has an invalid range")));
                }
                for child in [n.left as usize, n.left as usize + 1] {
                    if child <= i || child >= tree.len() {
                        return Err(bad(format!(
                            "node {i} has child {child} (must be after it and below {})",
                            tree.len()
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

impl<D: Data<Elem = f64>> PredictInplace<ArrayBase<D, Ix2>, Array1<f64>> for IsolationForest {
    /// Tree-major over blocks of rows (a tree's nodes stay in L1 while a block of rows
    /// walks it); contiguous rows are read as slices.
    fn predict_inplace(&self, x: &ArrayBase<D, Ix2>, y: &mut Array1<f64>) {
        let (rows, cols) = x.dim();
        let flat = self.flat();
        let mut acc = [0.0f64; BLOCK];
        let mut copied = Vec::new();
        for start in (0..rows).step_by(BLOCK) {
            let end = (start + BLOCK).min(rows);
            let acc = &mut acc[..end - start];
            acc.fill(0.0);
            let block = match x.as_slice() {
                Some(contiguous) => &contiguous[start * cols..end * cols],
                None => {
                    copied.clear();
                    for r in start..end {
                        copied.extend(x.row(r).iter());
                    }
                    &copied[..]
                }
            };
            for tree in 0..self.trees.len() {
                for (g, lanes) in acc.chunks_mut(BATCH_LANES).enumerate() {
                    let rows = &block[g * BATCH_LANES * cols..];
                    flat.add_paths(self.extrapolate, tree, rows, cols, lanes);
                }
            }
            for (k, a) in acc.iter().enumerate() {
                y[start + k] = self.score_of(*a);
            }
        }
    }

    fn default_target(&self, x: &ArrayBase<D, Ix2>) -> Array1<f64> {
        Array1::zeros(x.nrows())
    }
}

impl IsolationForest {
    /// Batch scoring on all cores (rayon's pool): blocks of rows scored as by
    /// `predict`, each block on whichever thread is free. Same scores, bit for bit.
    pub fn predict_par<D: Data<Elem = f64> + Sync>(&self, x: &ArrayBase<D, Ix2>) -> Array1<f64> {
        use rayon::prelude::*;
        let mut y = Array1::zeros(x.nrows());
        if let Some(out) = y.as_slice_mut() {
            out.par_chunks_mut(BLOCK * 4)
                .enumerate()
                .for_each(|(i, chunk)| {
                    let start = i * BLOCK * 4;
                    let rows = x.slice(ndarray::s![start..start + chunk.len(), ..]);
                    let mut part = Array1::zeros(chunk.len());
                    self.predict_inplace(&rows, &mut part);
                    chunk.copy_from_slice(part.as_slice().unwrap_or(&[]));
                });
        }
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use linfa::traits::Predict;
    use ndarray::Array2;
    use proptest::prelude::*;
    use rand_distr::{Distribution, Normal};

    #[test]
    fn nodes_read_back_as_written_and_malformed_ones_are_refused() {
        let forest = IsolationForestParams::default()
            .fit(&DatasetBase::from(blob(300, 5, 1)))
            .unwrap();
        let back: IsolationForest =
            serde_json::from_str(&serde_json::to_string(&forest).unwrap()).unwrap();
        assert_eq!(back, forest);
        let node = |s: &str| serde_json::from_str::<Node>(s);
        assert_eq!(node("[3.5]").unwrap().feature, LEAF);
        let split = node("[2, 0.25, 5, -1.0, 2.0]").unwrap();
        assert_eq!((split.feature, split.value, split.left), (2, 0.25, 5));
        for bad in [
            "[]",
            "[1, 2]",
            "[1, 2, 3, 0.0]",
            "[1.5, 2, 3, 0.0, 1.0]",
            "[-1, 2, 3, 0.0, 1.0]",
            "[4294967295, 2, 3, 0.0, 1.0]",
            "[1, 2, 3, 0.0, 1.0, 7]",
            "{\"value\": 1}",
            "7",
        ] {
            assert!(node(bad).is_err(), "{bad} was accepted");
        }
    }

    // The walks as defined, one tree and one row at a time: what the flat layout's
    // side-by-side walks must equal bit for bit.
    /// Path length of a row through one tree: depth plus the leaf's adjustment.
    fn path(tree: &[Node], value: impl Fn(usize) -> f64) -> f64 {
        let mut i = 0usize;
        loop {
            let n = tree[i];
            if n.feature == LEAF {
                return n.value;
            }
            i = n.left as usize + usize::from(value(n.feature as usize) >= n.value);
        }
    }

    /// Expected path length of a row through one tree when values outside a node's range
    /// may be isolated there (see [`IsolationForest::extrapolate`]).
    fn path_extrapolated(tree: &[Node], value: impl Fn(usize) -> f64) -> f64 {
        let (mut i, mut depth, mut stay, mut acc) = (0usize, 0.0f64, 1.0f64, 0.0f64);
        loop {
            let n = tree[i];
            if n.feature == LEAF {
                return acc + stay * n.value;
            }
            let x = value(n.feature as usize);
            let cut = cut_at(n.lo, n.hi, x).unwrap_or(0.0);
            depth += 1.0;
            acc += stay * cut * depth;
            stay *= 1.0 - cut;
            i = n.left as usize + usize::from(x >= n.value);
        }
    }

    #[test]
    fn flat_walks_equal_the_walks_as_defined_bit_for_bit() {
        // Rows inside and far outside the training ranges; 100 trees are not a multiple
        // of the 8 walked side by side, 1,030 rows not a multiple of the 16 in a batch lane.
        let x = blob(1000, 30, 5);
        for (x, f) in both_kinds(x) {
            let batch = f.predict(&x);
            let strided: Array1<f64> = f.predict(&x.t().to_owned().reversed_axes());
            for (r, row) in x.rows().into_iter().enumerate() {
                let total: f64 = f
                    .trees
                    .iter()
                    .map(|t| {
                        if f.extrapolate {
                            path_extrapolated(t, |i| row[i])
                        } else {
                            path(t, |i| row[i])
                        }
                    })
                    .sum();
                let want = f.score_of(total);
                assert_eq!(batch[r].to_bits(), want.to_bits(), "batch row {r}");
                assert_eq!(strided[r].to_bits(), want.to_bits(), "strided row {r}");
                assert_eq!(f.score_row(row).to_bits(), want.to_bits(), "row {r}");
            }
        }
    }

    fn blob(n: usize, outliers: usize, seed: u64) -> Array2<f64> {
        let mut rng = StdRng::seed_from_u64(seed);
        let normal = Normal::new(0.0, 1.0).unwrap();
        Array2::from_shape_fn((n + outliers, 4), |(r, _)| {
            if r < n {
                normal.sample(&mut rng)
            } else {
                8.0 + normal.sample(&mut rng)
            }
        })
    }

    #[test]
    fn outliers_score_high_and_fits_are_deterministic() {
        let x = blob(1000, 10, 1);
        let params = IsolationForestParams::default().seed(7);
        let model = params
            .check()
            .unwrap()
            .fit(&DatasetBase::from(x.clone()))
            .unwrap();
        let scores: Array1<f64> = model.predict(&x);
        let normal = scores.slice(ndarray::s![..1000]).mean().unwrap();
        let outlier = scores.slice(ndarray::s![1000..]).mean().unwrap();
        assert!(
            outlier > 0.65 && normal < 0.5,
            "normal {normal}, outlier {outlier}"
        );
        let again = params
            .check()
            .unwrap()
            .fit(&DatasetBase::from(x.clone()))
            .unwrap();
        assert_eq!(model, again);
        model.validate().unwrap();
        fn send_sync<T: Send + Sync>() {}
        send_sync::<IsolationForest>();
    }

    #[test]
    fn batch_scoring_equals_row_by_row_in_any_layout() {
        let x = blob(700, 5, 3);
        let m = IsolationForestParams::default()
            .n_trees(20)
            .check()
            .unwrap()
            .fit(&DatasetBase::from(x.clone()))
            .unwrap();
        let batch: Array1<f64> = m.predict(&x);
        let transposed = x.t().to_owned().reversed_axes(); // same values, column-major
        let batch_f: Array1<f64> = m.predict(&transposed);
        for (r, row) in x.rows().into_iter().enumerate() {
            assert_eq!(batch[r], m.score_row(row));
            assert_eq!(batch_f[r], batch[r]);
        }
    }

    #[test]
    fn parameters_and_data_are_checked() {
        assert!(IsolationForestParams::default().n_trees(0).check().is_err());
        assert!(IsolationForestParams::default()
            .sample_size(1)
            .check()
            .is_err());
        let p = IsolationForestParams::default().check().unwrap();
        let bad = Array2::from_elem((3, 2), f64::NAN);
        assert!(p.fit(&DatasetBase::from(bad)).is_err());
    }

    #[test]
    fn extrapolation_lifts_only_rows_outside_the_training_ranges() {
        // Fewer rows than ψ: every tree holds every row, so each training row is inside
        // the range of every node on its path.
        let x = blob(200, 0, 3);
        let plain = IsolationForestParams::default().seed(1).check().unwrap();
        let ext = IsolationForestParams::default()
            .seed(1)
            .extrapolate(true)
            .check()
            .unwrap();
        let (a, b) = (
            plain.fit(&DatasetBase::from(x.view())).unwrap(),
            ext.fit(&DatasetBase::from(x.view())).unwrap(),
        );
        assert_eq!(
            a.trees, b.trees,
            "extrapolation changes scoring, not the trees"
        );
        for r in 0..x.nrows() {
            let row = x.row(r);
            assert!((a.score_row(row) - b.score_row(row)).abs() < 1e-12);
        }
        let far = |d: f64| ndarray::Array1::from(vec![d; x.ncols()]);
        let (near, farther) = (b.score_row(far(8.0).view()), b.score_row(far(80.0).view()));
        assert!(farther > near, "{farther} vs {near}");
        assert!(farther > 0.8, "a far outlier scores near 1: {farther}");
        // The plain forest cannot tell them apart: both land in the same leaves.
        assert!((a.score_row(far(8.0).view()) - a.score_row(far(80.0).view())).abs() < 1e-12);
        let batch = b.predict(&ndarray::stack![ndarray::Axis(0), far(8.0), far(80.0)]);
        assert!((batch[0] - near).abs() < 1e-12 && (batch[1] - farther).abs() < 1e-12);
    }

    /// The data with a plain and an extrapolating forest fitted on it.
    fn both_kinds(x: Array2<f64>) -> Vec<(Array2<f64>, IsolationForest)> {
        [false, true]
            .into_iter()
            .map(|extrapolate| {
                let f = IsolationForestParams::default()
                    .extrapolate(extrapolate)
                    .check()
                    .unwrap()
                    .fit(&DatasetBase::from(x.view()))
                    .unwrap();
                (x.clone(), f)
            })
            .collect()
    }

    #[test]
    fn early_stopping_decides_exactly_like_the_full_score() {
        let mut forests = both_kinds(blob(2000, 40, 11));
        // A model file may hold any finite leaf: here the last group's are negative,
        // so a partial sum past the limit does not settle a row by itself.
        for (x, f) in forests.clone() {
            let mut f = f;
            for tree in f.trees.iter_mut().skip(96) {
                for n in tree.iter_mut().filter(|n| n.feature == LEAF) {
                    n.value -= 60.0;
                }
            }
            f.validate().unwrap();
            forests.push((x, f));
        }
        for (x, f) in forests {
            let scores = f.predict(&x);
            for th in [0.3, 0.5, 0.55, 0.6, 0.7, 0.9] {
                for (r, &s) in scores.iter().enumerate() {
                    let got = f.score_row_at_least(x.row(r), th);
                    assert_eq!(got, (s >= th).then_some(s), "row {r} threshold {th}");
                }
            }
        }
    }

    #[test]
    fn no_row_has_a_path_shorter_than_its_trees_least() {
        // Rows inside, at the edges of and far outside the training data, on every
        // side: the bound that lets scoring stop early must hold for each tree.
        let x = blob(500, 20, 13);
        let mut probes = x.clone();
        for scale in [-1e6f64, -30.0, -3.0, 0.0, 3.0, 30.0, 1e6] {
            let far = x.mapv(|v| v * scale.abs().max(1.0) + scale);
            probes.append(ndarray::Axis(0), far.view()).unwrap();
        }
        for (_, f) in both_kinds(x) {
            for tree in &f.trees {
                let least = FlatTrees::least_path(tree, f.extrapolate);
                assert!(
                    least >= 1.0 || tree.len() == 1,
                    "a tree's least path {least}"
                );
                for row in probes.rows() {
                    let p = if f.extrapolate {
                        path_extrapolated(tree, |i| row[i])
                    } else {
                        path(tree, |i| row[i])
                    };
                    assert!(p >= least, "path {p} < least {least}");
                }
            }
        }
    }

    #[test]
    fn parallel_scoring_equals_sequential() {
        for (x, f) in both_kinds(blob(3000, 30, 9)) {
            assert_eq!(f.predict(&x), f.predict_par(&x));
        }
    }

    #[test]
    fn c_matches_the_paper() {
        assert_eq!(c(1), 0.0);
        assert_eq!(c(2), 1.0);
        assert!((c(256) - 10.244_770_920_8).abs() < 1e-6, "{}", c(256));
    }

    #[test]
    fn malformed_trees_are_refused() {
        let x = blob(50, 0, 2);
        let mut m = IsolationForestParams::default()
            .n_trees(3)
            .check()
            .unwrap()
            .fit(&DatasetBase::from(x))
            .unwrap();
        let split = m.trees[0].iter().position(|n| n.feature != LEAF).unwrap();
        m.trees[0][split].left = split as u32; // a cycle
        assert!(m.validate().is_err());
        m.trees[0][split].left = 10_000;
        assert!(m.validate().is_err());
    }

    proptest! {
        #[test]
        fn scores_stay_in_range(rows in proptest::collection::vec(proptest::collection::vec(-1e6f64..1e6, 3), 2..60), probe in proptest::collection::vec(-1e9f64..1e9, 3)) {
            let n = rows.len();
            let x = Array2::from_shape_vec((n, 3), rows.into_iter().flatten().collect()).unwrap();
            let m = IsolationForestParams::default().n_trees(10).check().unwrap().fit(&DatasetBase::from(x)).unwrap();
            m.validate().unwrap();
            let s = m.score_row(ArrayView1::from(&probe));
            prop_assert!(s > 0.0 && s <= 1.0, "{}", s);
        }
    }
}
