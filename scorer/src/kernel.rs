//! The scoring kernel: scikit-learn's one-class SVM `decision_function`, batched and vectorised.
//!
//! Rows are processed in blocks of [`BLOCK`]: each block is scaled once and stored transposed
//! (feature-major), then every support vector is applied to the whole block, so the innermost
//! loop runs over rows with no dependencies between iterations and the compiler vectorises it,
//! including the exponential ([`exp_fast`], a branch-free polynomial). The arithmetic follows
//! libsvm's order exactly: RBF distances are summed as squared differences (never the
//! ||x||²+||sv||²−2x·sv form, which loses precision far from zero), terms are added support
//! vector by support vector, then the intercept.

use ndarray::{ArrayView2, Axis};
use rayon::prelude::*;

use crate::model::{KernelKind, OneClassSvm, Scaler};

/// Rows scored together; the transposed block (`BLOCK × features` floats) stays in L1 cache.
pub const BLOCK: usize = 64;

/// A model's numbers laid out for scoring.
#[derive(Debug, Clone)]
pub struct ScoringKernel {
    kind: KernelKind,
    gamma: f64,
    coef0: f64,
    degree: u32,
    n_features: usize,
    /// Support vectors, row-major (n_sv × n_features).
    sv: Vec<f64>,
    coef: Vec<f64>,
    intercept: f64,
    mean: Option<Vec<f64>>,
    scale: Option<Vec<f64>>,
}

impl ScoringKernel {
    /// Lays out a validated model for scoring.
    pub fn new(scaler: Option<&Scaler>, svm: &OneClassSvm) -> ScoringKernel {
        ScoringKernel {
            kind: svm.kernel,
            gamma: svm.gamma,
            coef0: svm.coef0,
            degree: svm.degree,
            n_features: svm.support_vectors.ncols(),
            sv: svm.support_vectors.iter().copied().collect(),
            coef: svm.dual_coef.clone(),
            intercept: svm.intercept,
            mean: scaler.and_then(|s| s.mean.clone()),
            scale: scaler.and_then(|s| s.scale.clone()),
        }
    }

    /// Writes the decision of each row of `x` (rows × n_features) into `out` (one per row).
    /// The caller guarantees the shapes (checked by [`crate::model::Model`]).
    pub fn decide_into(&self, x: ArrayView2<f64>, out: &mut [f64]) {
        // pulp runs the operation inside a function compiled for the best instruction set this CPU
        // has (AVX-512, else AVX2+FMA, else the SSE2 baseline); everything below is inlined into
        // it so the compiler vectorises it for that set. Results are bit-identical either way:
        // Rust never fuses a*b+c on its own, and mul_add is a true FMA in both.
        pulp::Arch::new().dispatch(Decide {
            kernel: self,
            x,
            out,
        })
    }

    #[inline(always)]
    fn decide_into_inline<const L: usize>(&self, x: ArrayView2<f64>, out: &mut [f64]) {
        let d = self.n_features;
        let mut zt = vec![[0.0f64; BLOCK]; d];
        let mut acc = [0.0f64; BLOCK];
        for (block, out_block) in x
            .axis_chunks_iter(Axis(0), BLOCK)
            .zip(out.chunks_mut(BLOCK))
        {
            self.load_block(block, &mut zt);
            acc.fill(0.0);
            self.block::<L>(&zt, &mut acc);
            for (o, a) in out_block.iter_mut().zip(acc.iter()) {
                *o = a + self.intercept;
            }
        }
    }

    /// [`ScoringKernel::decide_into`] split over rayon's current pool in chunks of whole blocks.
    pub fn decide_into_parallel(&self, x: ArrayView2<f64>, out: &mut [f64]) {
        let rows = x.nrows();
        let threads = rayon::current_num_threads().max(1);
        // A few chunks per thread balance load; whole blocks keep the kernel's tail handling rare.
        let per = rows.div_ceil(threads * 4).max(BLOCK * 4).div_ceil(BLOCK) * BLOCK;
        out.par_chunks_mut(per).enumerate().for_each(|(i, chunk)| {
            let start = i * per;
            let end = start + chunk.len();
            self.decide_into(
                x.slice_axis(Axis(0), ndarray::Slice::from(start..end)),
                chunk,
            );
        });
    }

    /// Scales a block of rows into feature-major layout; rows past the end are zero.
    #[inline(always)]
    fn load_block(&self, block: ArrayView2<f64>, zt: &mut [[f64; BLOCK]]) {
        let n = block.nrows();
        for (k, col) in zt.iter_mut().enumerate() {
            let src = block.column(k);
            for (r, z) in col.iter_mut().enumerate() {
                *z = if r < n { src[r] } else { 0.0 };
            }
            // scikit-learn's StandardScaler: subtract, then divide (not multiply by a reciprocal).
            if let Some(mean) = &self.mean {
                let m = mean[k];
                col.iter_mut().for_each(|z| *z -= m);
            }
            if let Some(scale) = &self.scale {
                let s = scale[k];
                col.iter_mut().for_each(|z| *z /= s);
            }
        }
    }

    /// Adds Σ coef_j K(sv_j, z_r) to `acc[r]` for one block.
    #[inline(always)]
    fn block<const L: usize>(&self, zt: &[[f64; BLOCK]], acc: &mut [f64; BLOCK]) {
        match self.kind {
            KernelKind::Rbf => match self.n_features {
                1 => rbf_fixed::<1, L>(zt, &self.sv, &self.coef, self.gamma, acc),
                2 => rbf_fixed::<2, L>(zt, &self.sv, &self.coef, self.gamma, acc),
                3 => rbf_fixed::<3, L>(zt, &self.sv, &self.coef, self.gamma, acc),
                4 => rbf_fixed::<4, L>(zt, &self.sv, &self.coef, self.gamma, acc),
                5 => rbf_fixed::<5, L>(zt, &self.sv, &self.coef, self.gamma, acc),
                6 => rbf_fixed::<6, L>(zt, &self.sv, &self.coef, self.gamma, acc),
                7 => rbf_fixed::<7, L>(zt, &self.sv, &self.coef, self.gamma, acc),
                8 => rbf_fixed::<8, L>(zt, &self.sv, &self.coef, self.gamma, acc),
                _ => rbf_any(zt, &self.sv, &self.coef, self.gamma, acc),
            },
            KernelKind::Linear | KernelKind::Poly | KernelKind::Sigmoid => {
                self.dot_kernels(zt, acc)
            }
        }
    }

    /// Kernels built on the dot product a · b.
    #[inline(always)]
    fn dot_kernels(&self, zt: &[[f64; BLOCK]], acc: &mut [f64; BLOCK]) {
        let d = self.n_features;
        let mut dot = [0.0f64; BLOCK];
        for (s, &c) in self.sv.chunks_exact(d).zip(self.coef.iter()) {
            dot.fill(0.0);
            // scikit-learn takes dot products from BLAS ddot, whose short-vector loop on
            // current x86 builds is a fused multiply-add chain; mul_add reproduces it bit for bit.
            for (col, &sk) in zt.iter().zip(s) {
                for (t, z) in dot.iter_mut().zip(col) {
                    *t = z.mul_add(sk, *t);
                }
            }
            match self.kind {
                KernelKind::Linear => {
                    for (a, t) in acc.iter_mut().zip(&dot) {
                        *a += c * t;
                    }
                }
                KernelKind::Poly => {
                    for (a, t) in acc.iter_mut().zip(&dot) {
                        *a += c * powi_libsvm(self.gamma * t + self.coef0, self.degree);
                    }
                }
                KernelKind::Sigmoid | KernelKind::Rbf => {
                    for (a, t) in acc.iter_mut().zip(&dot) {
                        *a += c * (self.gamma * t + self.coef0).tanh();
                    }
                }
            }
        }
    }
}

/// One scoring call as a pulp operation: unlike a closure, its entry point can be
/// `#[inline(always)]`, so the kernel is compiled inside pulp's target-feature function.
struct Decide<'k, 'x, 'o> {
    kernel: &'k ScoringKernel,
    x: ArrayView2<'x, f64>,
    out: &'o mut [f64],
}

impl pulp::WithSimd for Decide<'_, '_, '_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        // Resolved at compile time per instruction set.
        if S::F64_LANES >= 8 {
            self.kernel
                .decide_into_inline::<WIDE_LANES>(self.x, self.out);
        } else {
            self.kernel.decide_into_inline::<LANES>(self.x, self.out);
        }
    }
}

/// Rows whose accumulators stay in registers while every support vector is applied to them:
/// 16 f64 = 4 AVX vectors of independent work. The exp is a chain of 13 dependent FMAs, so with
/// fewer lanes (8 was measured) the loop waits on latency: 16 ran 1.6–1.9× faster than 8.
const LANES: usize = 16;

/// The same with AVX-512's 32 registers of 8 f64: 32 rows (4 vectors) ran 6–11% faster than 16.
const WIDE_LANES: usize = 32;

// A block splits into whole lane groups.
const _: () = assert!(BLOCK.is_multiple_of(LANES) && BLOCK.is_multiple_of(WIDE_LANES));

/// RBF for a feature count known at compile time: the distance loop unrolls and the lanes
/// vectorise, exponential included.
#[inline(always)]
fn rbf_fixed<const D: usize, const L: usize>(
    zt: &[[f64; BLOCK]],
    sv: &[f64],
    coef: &[f64],
    gamma: f64,
    acc: &mut [f64; BLOCK],
) {
    if zt.len() != D {
        return rbf_any(zt, sv, coef, gamma, acc);
    }
    for (g, acc_group) in acc.chunks_exact_mut(L).enumerate() {
        let mut zg = [[0.0f64; L]; D];
        for (dst, col) in zg.iter_mut().zip(zt) {
            dst.copy_from_slice(&col[g * L..(g + 1) * L]);
        }
        let mut a = [0.0f64; L];
        a.copy_from_slice(acc_group);
        for (s, &c) in sv.chunks_exact(D).zip(coef) {
            let Ok(s) = <&[f64; D]>::try_from(s) else {
                continue;
            };
            let mut dist = [0.0f64; L];
            for k in 0..D {
                for l in 0..L {
                    let t = zg[k][l] - s[k];
                    dist[l] += t * t;
                }
            }
            for l in 0..L {
                a[l] += c * exp_fast(-gamma * dist[l]);
            }
        }
        acc_group.copy_from_slice(&a);
    }
}

/// RBF for any feature count.
#[inline(always)]
fn rbf_any(zt: &[[f64; BLOCK]], sv: &[f64], coef: &[f64], gamma: f64, acc: &mut [f64; BLOCK]) {
    let d = zt.len();
    let mut dist = [0.0f64; BLOCK];
    for (s, &c) in sv.chunks_exact(d).zip(coef) {
        dist.fill(0.0);
        for (col, &sk) in zt.iter().zip(s) {
            for (t, z) in dist.iter_mut().zip(col) {
                let diff = z - sk;
                *t += diff * diff;
            }
        }
        for (a, t) in acc.iter_mut().zip(&dist) {
            *a += c * exp_fast(-gamma * t);
        }
    }
}

/// libsvm's integer power (square-and-multiply), so poly kernels round as scikit-learn's do.
#[inline(always)]
pub fn powi_libsvm(base: f64, times: u32) -> f64 {
    let (mut tmp, mut ret, mut t) = (base, 1.0, times);
    while t > 0 {
        if t % 2 == 1 {
            ret *= tmp;
        }
        tmp *= tmp;
        t /= 2;
    }
    ret
}

/// exp(x) for x ≤ 709 without branches, so loops calling it vectorise. Range reduction
/// x = n·ln2 + r with |r| ≤ ln2/2 (Cody–Waite split of ln2), a degree-13 Taylor polynomial for
/// e^r (truncation < 2e-17), and 2^n built from the exponent bits: about 1 ulp for x in
/// [-708, 709]. Below that, 2^n is applied as two normal halves, so results fall into the
/// subnormals with one rounding and reach exactly 0 below about -745, as libm's exp does: a far
/// point then adds exactly nothing and a decision equal to the intercept keeps sklearn's tie
/// rule (0 is an anomaly). NaN stays NaN. (A final select for the edges would stop the
/// compiler vectorising callers, so there is none.)
#[inline(always)]
pub fn exp_fast(x: f64) -> f64 {
    const LOG2E: f64 = std::f64::consts::LOG2_E;
    // fdlibm's split: LN2_HI has trailing zero bits, so n·LN2_HI is exact for |n| < 2^11.
    const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000); // 6.93147180369123816490e-01
    const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76); // 1.90821492927058770002e-10
    // Adding 1.5·2^52 rounds to an integer and leaves it in the low mantissa bits.
    const SHIFT: f64 = 6_755_399_441_055_744.0;
    // Far enough below -745 that the result is 0; |n| stays < 2^11 for the split of ln2.
    let xc = if x < -1080.0 { -1080.0 } else { x };
    let t = xc * LOG2E + SHIFT;
    let n = t - SHIFT;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    // Horner with fused multiply-adds: one instruction a step under pulp's AVX2+FMA dispatch
    // (half the latency of mul then add, and one rounding less).
    const C: [f64; 13] = [
        1.0 / 479_001_600.0,
        1.0 / 39_916_800.0,
        1.0 / 3_628_800.0,
        1.0 / 362_880.0,
        1.0 / 40_320.0,
        1.0 / 5_040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ];
    let mut p: f64 = 1.0 / 6_227_020_800.0; // 1/13!
    for c in C {
        p = p.mul_add(r, c);
    }
    // 2^n = 2^n1 · 2^n2 with both halves in [-1022, 1023] (n1 = n/2 rounded, exact in floats):
    // for normal results both products are exact, so this equals p · 2^n; below, only the last
    // product rounds. Low 12 bits of (k + 1023) become the exponent field of 2^k.
    let t1 = n * 0.5 + SHIFT;
    let n1 = t1 - SHIFT;
    let t2 = (n - n1) + SHIFT;
    let scale1 = f64::from_bits(t1.to_bits().wrapping_add(1023) << 52);
    let scale2 = f64::from_bits(t2.to_bits().wrapping_add(1023) << 52);
    (p * scale1) * scale2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_fast_is_within_two_ulp_of_the_standard_exp() {
        let mut worst: f64 = 0.0;
        let mut x: f64 = -708.0;
        while x < 709.0 {
            let (want, got) = (x.exp(), exp_fast(x));
            worst = worst.max(((got - want) / want).abs());
            x += 0.000_731_3;
        }
        for x in [
            0.0,
            -0.0,
            -1e-300,
            1e-300,
            -0.5 * std::f64::consts::LN_2,
            1.0,
            -1.0,
        ] {
            let (want, got) = (f64::exp(x), exp_fast(x));
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 1e-15, "worst relative error {worst:e}");
    }

    #[test]
    fn exp_fast_handles_the_edges() {
        assert_eq!(exp_fast(0.0), 1.0);
        assert_eq!(exp_fast(-800.0), 0.0);
        assert_eq!(exp_fast(-1e6), 0.0);
        assert_eq!(exp_fast(f64::NEG_INFINITY), 0.0);
        // Subnormal results: within a few units of the smallest subnormal of libm's.
        for x in [-708.5, -720.0, -740.0, -745.0] {
            let (want, got) = (f64::exp(x), exp_fast(x));
            assert!(
                (got - want).abs() <= 4.0 * 5e-324 + want * 1e-15,
                "{x}: {got:e} vs {want:e}"
            );
        }
        assert!(exp_fast(f64::NAN).is_nan());
    }

    #[test]
    fn a_point_far_from_every_support_vector_scores_exactly_the_intercept() {
        // sklearn's exp underflows to 0, so the decision is the intercept; with an intercept of
        // 0 that is a tie, which sklearn's predict calls an anomaly (libsvm: dec > 0 ? 1 : -1).
        let mut kernel = sample_kernel(KernelKind::Rbf, 1, 22);
        kernel.intercept = 0.0;
        let x = ndarray::Array2::from_shape_fn((4, 1), |(r, _)| {
            [80.0 + 6.0 * 130.0, -1e6, 1e6, 80.0][r]
        });
        let mut out = vec![f64::NAN; 4];
        kernel.decide_into(x.view(), &mut out);
        assert_eq!(&out[..3], &[0.0, 0.0, 0.0]);
        assert!(out[..3].iter().all(|d| crate::model::is_anomaly(*d)));
        assert!(out[3] > 0.0 && !crate::model::is_anomaly(out[3]));
    }

    /// A kernel with `n_sv` support vectors in `d` features, numbers from a fixed sequence.
    fn sample_kernel(kind: KernelKind, d: usize, n_sv: usize) -> ScoringKernel {
        let wave = |i: usize, f: f64| (i as f64 * f).sin();
        ScoringKernel {
            kind,
            gamma: 0.37,
            coef0: 0.5,
            degree: 3,
            n_features: d,
            sv: (0..n_sv * d).map(|i| wave(i, 0.7)).collect(),
            coef: (0..n_sv).map(|i| 0.1 + wave(i, 1.3).abs()).collect(),
            intercept: -0.42,
            mean: Some((0..d).map(|k| 80.0 + k as f64).collect()),
            scale: Some((0..d).map(|k| 6.0 + wave(k, 0.9).abs()).collect()),
        }
    }

    #[test]
    fn every_instruction_set_gives_the_same_bits() {
        // The dispatcher picks AVX-512, AVX2+FMA or the SSE2 baseline by CPU: a model must score
        // bit-identically on every one, so results never depend on the node a pod lands on.
        for kind in [
            KernelKind::Rbf,
            KernelKind::Linear,
            KernelKind::Poly,
            KernelKind::Sigmoid,
        ] {
            for (d, n_sv) in [(1, 22), (3, 5), (8, 73), (11, 9)] {
                let kernel = sample_kernel(kind, d, n_sv);
                // Not a whole number of blocks, so the tail is covered too.
                let rows = 3 * BLOCK + 17;
                let x = ndarray::Array2::from_shape_fn((rows, d), |(r, k)| {
                    80.0 + 6.0 * ((r * d + k) as f64 * 0.61).sin()
                });
                let run = |simd: &dyn Fn(Decide<'_, '_, '_>)| {
                    let mut out = vec![0.0; rows];
                    simd(Decide {
                        kernel: &kernel,
                        x: x.view(),
                        out: &mut out,
                    });
                    out.iter().map(|v| v.to_bits()).collect::<Vec<u64>>()
                };
                let baseline = run(&|op| pulp::WithSimd::with_simd(op, pulp::Scalar::new()));
                let dispatched = run(&|op| pulp::Arch::new().dispatch(op));
                assert_eq!(
                    dispatched, baseline,
                    "{kind:?} d={d}: dispatched vs baseline"
                );
                #[cfg(target_arch = "x86_64")]
                {
                    if let Some(v3) = pulp::x86::V3::try_new() {
                        assert_eq!(
                            run(&|op| v3.vectorize(|| pulp::WithSimd::with_simd(op, v3))),
                            baseline,
                            "{kind:?} d={d}: AVX2"
                        );
                    }
                    if let Some(v4) = pulp::x86::V4::try_new() {
                        assert_eq!(
                            run(&|op| v4.vectorize(|| pulp::WithSimd::with_simd(op, v4))),
                            baseline,
                            "{kind:?} d={d}: AVX-512"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn powi_libsvm_matches_repeated_multiplication() {
        assert_eq!(powi_libsvm(1.5, 0), 1.0);
        assert_eq!(powi_libsvm(1.5, 3), 1.5 * 1.5 * 1.5);
        assert_eq!(powi_libsvm(-2.0, 5), -32.0);
    }
}
