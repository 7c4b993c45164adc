//! scikit-learn's `IsolationForest`, scored exactly as its `decision_function` does:
//! each row is cast to float32 (sklearn validates IsolationForest input as float32), walks every
//! tree to a leaf (`x <= threshold` goes left, NaN follows `missing_go_to_left`), adds that leaf's
//! `depth + average_path_length(n_node_samples) - 1` tree by tree in the forest's order, and
//! `decision = -2^(-depth / (n_trees · average_path_length(max_samples))) - offset_`.
//! `predict` calls a row an outlier only when its decision is strictly negative.

use ndarray::{ArrayView2, Axis};
use rayon::prelude::*;

/// numpy's `np.euler_gamma`.
const EULER_GAMMA: f64 = 0.577_215_664_901_532_9;

/// Rows walked through one tree before moving to the next (keeps each tree in cache).
const BLOCK: usize = 256;

/// Marks a leaf in [`TreeNode::left`] (scikit-learn's `TREE_LEAF` is -1).
pub const LEAF: u32 = u32::MAX;

/// One node of an isolation tree, laid out for scoring.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TreeNode {
    /// Split threshold for inner nodes; for leaves, the value the leaf adds to the path length
    /// (`depth + average_path_length(n_node_samples) - 1`, computed in sklearn's order).
    pub value: f64,
    /// Left child index, or [`LEAF`].
    pub left: u32,
    /// Right child index.
    pub right: u32,
    /// Feature (column of the tree's input) the node splits on.
    pub feature: u32,
    /// Whether NaN goes left (sklearn ≥ 1.3 `missing_go_to_left`; false before).
    pub missing_left: bool,
}

/// One fitted tree and the input columns it reads.
#[derive(Debug, Clone, PartialEq)]
pub struct IsolationTree {
    /// Nodes in scikit-learn's order (root first; children after their parent).
    pub nodes: Vec<TreeNode>,
    /// The forest's input column for each of the tree's features, when the forest subsamples
    /// features (`_max_features != n_features_in_`); `None`: the tree reads the row as is.
    pub features: Option<Vec<usize>>,
}

/// A fitted isolation forest.
#[derive(Debug, Clone, PartialEq)]
pub struct IsolationForest {
    /// Trees in `estimators_` order (the order sklearn sums them in).
    pub trees: Vec<IsolationTree>,
    /// Features per input row (`n_features_in_`).
    pub n_features: usize,
    /// Samples drawn per tree (`_max_samples`), which sets the normalising path length.
    pub max_samples: f64,
    /// `offset_`: decision = score_samples - offset_.
    pub offset: f64,
}

/// Why a forest is inconsistent.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("tree {tree}: {reason}")]
pub struct ForestError {
    /// Index of the offending tree.
    pub tree: usize,
    /// What is wrong.
    pub reason: String,
}

/// How far below 0 a decision still counts as sklearn's tie at 0 (an inlier): 4 ε·|offset|.
///
/// With `contamination` set, `offset_` is a percentile of the training scores, so training rows
/// at the threshold have a decision of exactly 0 in sklearn, which calls them inliers. Those
/// scores come from numpy's vectorised `2 ** x`, which on AVX-512 CPUs is not libm's `pow` and
/// differs from it by an ulp for about 5% of inputs; fleetscore's decision for such a row can
/// then be one or two ulps below 0. No other row lies that close to the threshold except by
/// the same rounding, on which numpy on different CPUs disagrees with itself.
pub fn tie_band(offset: f64) -> f64 {
    4.0 * f64::EPSILON * offset.abs()
}

/// scikit-learn's `_average_path_length` for one node size: the mean path length of an
/// unsuccessful search in a binary search tree of `n` items.
pub fn average_path_length(n: f64) -> f64 {
    if n <= 1.0 {
        0.0
    } else if n == 2.0 {
        1.0
    } else {
        2.0 * ((n - 1.0).ln() + EULER_GAMMA) - 2.0 * (n - 1.0) / n
    }
}

/// Node depths with the root at 1 (sklearn's `compute_node_depths`); children must follow
/// their parent, which [`IsolationForest::validate`] checks first.
pub fn node_depths(left: &[i64], right: &[i64]) -> Vec<i64> {
    let mut depth = vec![0i64; left.len()];
    if let Some(d) = depth.first_mut() {
        *d = 1;
    }
    for i in 0..left.len() {
        for c in [left[i], right[i]] {
            if let Some(slot) = usize::try_from(c)
                .ok()
                .filter(|c| *c > i && *c < left.len())
            {
                depth[slot] = depth[i] + 1;
            }
        }
    }
    depth
}

impl IsolationForest {
    /// Checks that every tree terminates, indexes only existing features, and that the numbers
    /// are finite, so scoring can neither loop nor index out of bounds.
    pub fn validate(&self) -> Result<(), ForestError> {
        if self.trees.is_empty() {
            return Err(ForestError {
                tree: 0,
                reason: "the forest has no trees".into(),
            });
        }
        for (t, tree) in self.trees.iter().enumerate() {
            let err = |reason: String| ForestError { tree: t, reason };
            let width = match &tree.features {
                Some(f) => {
                    if let Some(c) = f.iter().find(|c| **c >= self.n_features) {
                        return Err(err(format!(
                            "reads input column {c} of {}",
                            self.n_features
                        )));
                    }
                    f.len()
                }
                None => self.n_features,
            };
            if tree.nodes.is_empty() {
                return Err(err("has no nodes".into()));
            }
            let n = tree.nodes.len();
            for (i, node) in tree.nodes.iter().enumerate() {
                if !node.value.is_finite() {
                    return Err(err(format!(
                        "node {i} has a non-finite threshold or leaf value"
                    )));
                }
                if node.left == LEAF {
                    continue;
                }
                // Children after their parent: every walk ends at a leaf within n steps.
                for c in [node.left, node.right] {
                    if c as usize <= i || c as usize >= n {
                        return Err(err(format!(
                            "node {i} has child {c} (of {n} nodes, must follow it)"
                        )));
                    }
                }
                if node.feature as usize >= width {
                    return Err(err(format!(
                        "node {i} splits on feature {} of {width}",
                        node.feature
                    )));
                }
            }
        }
        for (field, v) in [("offset", self.offset), ("max_samples", self.max_samples)] {
            if !v.is_finite() {
                return Err(ForestError {
                    tree: 0,
                    reason: format!("{field} {v} is not finite"),
                });
            }
        }
        Ok(())
    }
}

/// A validated forest laid out for scoring: per tree, flat node arrays in which every leaf
/// points to itself, so each row takes exactly `depth` steps with no exit test, and the rows
/// of a block advance together (independent loads the CPU overlaps). Subsampled feature
/// indices are resolved to input columns once, here.
#[derive(Debug, Clone)]
pub struct ForestKernel {
    n_features: usize,
    trees: Vec<FlatTree>,
    denominator: f64,
    offset: f64,
}

#[derive(Debug, Clone)]
struct FlatTree {
    /// Steps from the root to the deepest leaf.
    depth: usize,
    /// Node arrays, one entry per node (separate arrays measured faster than one record).
    left: Vec<u32>,
    right: Vec<u32>,
    /// Input column of each split (0 for leaves).
    column: Vec<u32>,
    threshold: Vec<f64>,
    nan_left: Vec<bool>,
    /// Leaf values (0 for inner nodes).
    value: Vec<f64>,
}

impl FlatTree {
    fn push(&mut self, left: u32, right: u32, column: u32, threshold: f64, nan_left: bool) {
        self.left.push(left);
        self.right.push(right);
        self.column.push(column);
        self.threshold.push(threshold);
        self.nan_left.push(nan_left);
    }
}

impl ForestKernel {
    /// Lays out a forest that [`IsolationForest::validate`] accepted.
    pub fn new(forest: &IsolationForest) -> ForestKernel {
        let trees = forest
            .trees
            .iter()
            .map(|t| {
                let n = t.nodes.len();
                let mut f = FlatTree {
                    depth: 0,
                    left: Vec::with_capacity(n),
                    right: Vec::with_capacity(n),
                    column: Vec::with_capacity(n),
                    threshold: Vec::with_capacity(n),
                    nan_left: Vec::with_capacity(n),
                    value: Vec::with_capacity(n),
                };
                let mut steps = vec![0usize; n];
                for (i, node) in t.nodes.iter().enumerate() {
                    if node.left == LEAF {
                        f.push(i as u32, i as u32, 0, 0.0, false);
                        f.value.push(node.value);
                        f.depth = f.depth.max(steps[i]);
                    } else {
                        let col = match &t.features {
                            Some(map) => map[node.feature as usize],
                            None => node.feature as usize,
                        };
                        f.push(
                            node.left,
                            node.right,
                            col as u32,
                            node.value,
                            node.missing_left,
                        );
                        f.value.push(0.0);
                        // Children follow their parent (validated), so their step counts are set here.
                        steps[node.left as usize] = steps[i] + 1;
                        steps[node.right as usize] = steps[i] + 1;
                    }
                }
                f
            })
            .collect();
        ForestKernel {
            n_features: forest.n_features,
            trees,
            denominator: forest.trees.len() as f64 * average_path_length(forest.max_samples),
            offset: forest.offset,
        }
    }

    /// Writes the decision of each (already scaled) row of `x` into `out`.
    pub fn decide_into(&self, x: ArrayView2<f64>, out: &mut [f64]) {
        let d = self.n_features;
        // Feature-major block: zt[c * BLOCK + r] is column c of row r.
        let mut zt = vec![0.0f64; BLOCK * d];
        let mut depth = [0.0f64; BLOCK];
        let mut idx = [0u32; BLOCK];
        for (block, out_block) in x
            .axis_chunks_iter(Axis(0), BLOCK)
            .zip(out.chunks_mut(BLOCK))
        {
            let rows = block.nrows();
            // sklearn validates input as float32, then compares it with f64 thresholds.
            for (r, row) in block.rows().into_iter().enumerate() {
                for (c, v) in row.iter().enumerate() {
                    zt[c * BLOCK + r] = f64::from(*v as f32);
                }
            }
            depth[..rows].fill(0.0);
            for t in &self.trees {
                idx[..rows].fill(0);
                for _ in 0..t.depth {
                    for (r, i) in idx[..rows].iter_mut().enumerate() {
                        let n = *i as usize;
                        let v = zt[t.column[n] as usize * BLOCK + r];
                        // Bitwise, not short-circuit: no data-dependent branch to mispredict.
                        let go_left = (v <= t.threshold[n]) | (v.is_nan() & t.nan_left[n]);
                        let (l, r) = (t.left[n], t.right[n]);
                        *i = r ^ ((l ^ r) & 0u32.wrapping_sub(u32::from(go_left)));
                    }
                }
                // Tree by tree, in the forest's order, as sklearn sums them.
                for (dep, i) in depth[..rows].iter_mut().zip(&idx[..rows]) {
                    *dep += t.value[*i as usize];
                }
            }
            for (o, dep) in out_block.iter_mut().zip(&depth[..rows]) {
                // np.divide(..., out=ones, where=denominator != 0): one tree of one sample.
                let ratio = if self.denominator != 0.0 {
                    dep / self.denominator
                } else {
                    1.0
                };
                let score = -(2f64.powf(-ratio));
                *o = score - self.offset;
            }
        }
    }

    /// [`ForestKernel::decide_into`] split over rayon's current pool in whole blocks.
    pub fn decide_into_parallel(&self, x: ArrayView2<f64>, out: &mut [f64]) {
        let threads = rayon::current_num_threads().max(1);
        let chunk = x.nrows().div_ceil(threads * 4).div_ceil(BLOCK).max(1) * BLOCK;
        out.par_chunks_mut(chunk).enumerate().for_each(|(i, o)| {
            let start = i * chunk;
            self.decide_into(
                x.slice_axis(Axis(0), ndarray::Slice::from(start..start + o.len())),
                o,
            );
        });
    }
}

impl IsolationTree {
    /// The value of the leaf a row (full input, float32-rounded) lands in, walking node by node
    /// (the reference [`ForestKernel`] is tested against).
    pub fn leaf_value(&self, row: &[f64]) -> f64 {
        let mut i = 0usize;
        loop {
            let node = &self.nodes[i];
            if node.left == LEAF {
                return node.value;
            }
            let col = node.feature as usize;
            let v = match &self.features {
                Some(f) => row[f[col]],
                None => row[col],
            };
            let left = if v.is_nan() {
                node.missing_left
            } else {
                v <= node.value
            };
            i = if left { node.left } else { node.right } as usize;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn leaf(value: f64) -> TreeNode {
        TreeNode {
            value,
            left: LEAF,
            right: LEAF,
            feature: 0,
            missing_left: false,
        }
    }

    fn split(threshold: f64, feature: u32, left: u32, right: u32) -> TreeNode {
        TreeNode {
            value: threshold,
            left,
            right,
            feature,
            missing_left: true,
        }
    }

    #[test]
    fn average_path_length_matches_sklearn_values() {
        assert_eq!(average_path_length(0.0), 0.0);
        assert_eq!(average_path_length(1.0), 0.0);
        assert_eq!(average_path_length(2.0), 1.0);
        // sklearn 1.9.1: _average_path_length([256]) = 10.244770920119917
        assert_eq!(average_path_length(256.0), 10.244_770_920_119_917);
    }

    #[test]
    fn the_tie_band_is_a_few_ulps_of_the_offset() {
        assert_eq!(tie_band(-0.5), 2.0 * f64::EPSILON);
        assert!(tie_band(-0.5) > 1.1102230246251565e-16);
        assert!(tie_band(-0.5) < 1e-15);
    }

    #[test]
    fn node_depths_count_the_root_as_one() {
        assert_eq!(
            node_depths(&[1, -1, 3, -1, -1], &[2, -1, 4, -1, -1]),
            vec![1, 2, 2, 3, 3]
        );
    }

    #[test]
    fn rows_follow_thresholds_in_float32_and_nan_follows_the_flag() {
        // Root splits feature 0 at 0.1 (f64); 0.1 as f32 is above 0.1 in f64, so goes right.
        let tree = IsolationTree {
            nodes: vec![split(0.1, 0, 1, 2), leaf(1.0), leaf(3.0)],
            features: None,
        };
        let forest = IsolationForest {
            trees: vec![tree],
            n_features: 1,
            max_samples: 2.0,
            offset: -0.5,
        };
        forest.validate().unwrap();
        let x = array![[0.1], [0.0999], [f64::NAN]];
        let mut out = [0.0; 3];
        ForestKernel::new(&forest).decide_into(x.view(), &mut out);
        // denominator = 1 · apl(2) = 1: decision = -2^(-leaf) + 0.5
        assert_eq!(
            out,
            [
                -(2f64.powf(-3.0)) + 0.5,
                -(2f64.powf(-1.0)) + 0.5,
                -(2f64.powf(-1.0)) + 0.5
            ]
        );
    }

    #[test]
    fn a_cycle_or_a_bad_feature_is_rejected() {
        let f = |nodes| IsolationForest {
            trees: vec![IsolationTree {
                nodes,
                features: None,
            }],
            n_features: 1,
            max_samples: 4.0,
            offset: -0.5,
        };
        assert!(
            f(vec![split(0.0, 0, 0, 1), leaf(1.0)])
                .validate()
                .unwrap_err()
                .reason
                .contains("must follow")
        );
        assert!(
            f(vec![split(0.0, 1, 1, 2), leaf(1.0), leaf(1.0)])
                .validate()
                .unwrap_err()
                .reason
                .contains("feature 1")
        );
    }

    #[test]
    fn parallel_scoring_equals_serial() {
        let tree = IsolationTree {
            nodes: vec![split(0.5, 1, 1, 2), leaf(1.5), leaf(2.5)],
            features: Some(vec![1, 0]),
        };
        let forest = IsolationForest {
            trees: vec![tree.clone(), tree],
            n_features: 2,
            max_samples: 8.0,
            offset: -0.4,
        };
        forest.validate().unwrap();
        let x = ndarray::Array2::from_shape_fn((1000, 2), |(i, j)| {
            ((i * 7 + j * 3) % 11) as f64 / 10.0
        });
        let mut a = vec![0.0; 1000];
        let mut b = vec![0.0; 1000];
        let k = ForestKernel::new(&forest);
        k.decide_into(x.view(), &mut a);
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap()
            .install(|| k.decide_into_parallel(x.view(), &mut b));
        assert_eq!(a, b);
        // The flat fixed-depth walk lands in the same leaves as a node-by-node walk.
        let t = &forest.trees[0];
        for (r, row) in x.rows().into_iter().enumerate() {
            let z: Vec<f64> = row.iter().map(|v| f64::from(*v as f32)).collect();
            let dep = 0.0 + t.leaf_value(&z) + t.leaf_value(&z);
            assert_eq!(
                a[r],
                -(2f64.powf(-(dep / (2.0 * average_path_length(8.0))))) + 0.4,
                "row {r}"
            );
        }
    }
}
