//! Eight chains at once: the per-edge forward–backward of `chain_edges` with one item per
//! SIMD lane (AVX2; f32 lanes in one register, f64 lanes in two).
//!
//! For a small class count the per-item kernel's rows are short: `C = 7` is one partial
//! vector per row, a serial tail in every dot product, a scalar exponential for the odd
//! entry of every table. Here a group of eight items of the same length runs together,
//! every quantity held as one eight-lane vector (lane `l` = the group's item `l`): each
//! row operation is a whole vector however small `C` is. The scores are gathered into that
//! layout with register transposes (8×8 for f32, two 4×4 for f64; the tables a slab at a
//! time, so their range and exponentials are taken from L1), and the marginals transposed
//! back into each item's rows once the backward pass has written them over the
//! exponentiated tables.
//!
//! Every lane performs exactly the per-item kernel's operations, in its order and
//! precision (the same f64 sums, the same partial sums in the dot products, the same
//! roundings, the same exponential): the results are bit-identical to running the items
//! one by one, so the grouping — which depends on the batch, never on the thread count —
//! changes no result. A group in which any item needs more than this path holds (a table
//! wider than its products hold — f32 products for float32 scores —, a −inf entry, NaN or
//! +inf, an infeasible item) reports it, and its items run one by one. CPUs with AVX2 and
//! FMA (the tables' exponential is `logspace::fma`'s, as the per-item kernel takes it
//! there); others run item by item.

use std::any::TypeId;
use std::mem::MaybeUninit;

use crate::kernels::real::Real;

/// Items per group.
pub(crate) const LANES: usize = 8;

/// Largest class count run in groups: above it the per-item rows are nearly whole vectors
/// already, and a group's working set (eight items' tables) leaves the cache sooner.
/// Measured, whole calls on 2 threads against the one-item kernel: float32 1.6–2.1× at
/// C <= 9, 1.1× at 12, equal at 16 and 20; float64 1.5–1.9× at C <= 12, 1.3× at 16 and 20;
/// groups were 5–25% slower at C = 24 and 32 (float32).
pub(crate) const MAX_CLASSES: usize = 20;

/// Largest per-worker buffer of a group's exponentiated tables (bytes).
const MAX_GROUP_TABLES: usize = 256 << 20;

/// Whether a batch of `batch` chains of `n` nodes and `c` classes, scores of type `T`,
/// runs in groups.
pub(crate) fn applies<T: Real>(n: usize, c: usize, batch: usize) -> bool {
    cfg!(target_arch = "x86_64") && crate::kernels::batch::has_fma() && shape_fits::<T>(n, c, batch)
}

/// [`applies`] but for the CPU: what a caller whose order of work follows the groups
/// (whatever runs them) decides by, so that its results do not depend on the CPU.
pub(crate) fn shape_fits<T: Real>(n: usize, c: usize, batch: usize) -> bool {
    batch >= LANES
        && (2..=MAX_CLASSES).contains(&c)
        && (n.saturating_sub(1))
            .checked_mul(c * c * LANES * std::mem::size_of::<T>())
            .is_some_and(|b| b <= MAX_GROUP_TABLES)
}

/// One item of a group: its scores and where its marginals go.
pub(crate) struct Lane<'x, T> {
    /// `(n, C)` node scores.
    pub node: &'x [T],
    /// `(n-1, C, C)` edge tables.
    pub tabs: &'x [T],
    /// Factor on the marginals (the item's weight).
    pub w: f64,
    /// `(n, C)` node marginals times `w` (zero past the item's length).
    pub node_out: &'x mut [T],
    /// `(n-1, C, C)` pair marginals times `w`, every entry written (zero past the last
    /// edge); `None` to skip them.
    pub rows: Option<&'x mut [MaybeUninit<T>]>,
}

/// `lanes` as lanes of `U` when `T` is `U`.
fn same<'a, 'x, T: 'static, U: 'static>(
    lanes: &'a mut [Lane<'x, T>],
) -> Option<&'a mut [Lane<'x, U>]> {
    (TypeId::of::<T>() == TypeId::of::<U>()).then(|| {
        // SAFETY: `T` and `U` are the same type (checked just above).
        unsafe { &mut *(lanes as *mut [Lane<'x, T>] as *mut [Lane<'x, U>]) }
    })
}

/// A worker's buffers for groups, per precision (made when first needed).
#[derive(Default)]
pub(crate) struct GroupWork {
    #[cfg(target_arch = "x86_64")]
    f32: Option<avx::LaneWs<avx::F8>>,
    #[cfg(target_arch = "x86_64")]
    f64: Option<avx::LaneWs<avx::D8>>,
}

/// Forward–backward of a group of [`LANES`] items (scores of type `T`), each of `len`
/// active nodes, products in the scores' precision: each item's log Z, its marginals
/// written as its [`Lane`] says. `None` when an item needs more than this path holds (see
/// the module doc), or [`applies`] does not hold; the outputs are then partly written,
/// and the caller runs the items one by one.
pub(crate) fn group<T: Real>(
    lanes: &mut [Lane<'_, T>],
    len: usize,
    c: usize,
    gw: &mut GroupWork,
) -> Option<[f64; LANES]> {
    if !applies::<T>(len.max(2), c, LANES) {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let n = lanes[0].node.len() / c;
        if let Some(l) = same::<T, f32>(lanes) {
            let ws = gw.f32.get_or_insert_with(|| avx::LaneWs::new(n, c));
            return avx::group(l, len, c, ws);
        }
        if let Some(l) = same::<T, f64>(lanes) {
            let ws = gw.f64.get_or_insert_with(|| avx::LaneWs::new(n, c));
            return avx::group(l, len, c, ws);
        }
    }
    let _ = (lanes, gw);
    None
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;

    use super::{Lane, LANES};
    use crate::exact::chain::{SPAN, SPAN_F32};
    use crate::kernels::layout::avx::t8;
    use crate::kernels::logspace::{expf, EXP_FLUSH, EXP_POLY, LN2_HI, LN2_LO, LOG2E, MAGIC};

    // The helpers below are `unsafe fn`s without `target_feature`, always inlined: their
    // one contract is that the CPU has AVX2 and FMA, and they are only called from `body`
    // (compiled for both), where they inline into vector code. (A `target_feature`
    // helper cannot be `inline(always)`, and one that is not inlined costs a call per
    // row.)

    /// Tables gathered and exponentiated at a time: a slab of about 16 KiB.
    const SLAB_BYTES: usize = 16 << 10;

    /// Eight lanes of one float type in AVX registers, with the operations the kernel
    /// needs: each is the one-item kernel's scalar operation on every lane (the same bits).
    pub(crate) trait Lanes: Copy {
        /// The scores' (and products') type.
        type S: Copy + Default;
        /// Widest finite span of a table these products hold (`chain::SPAN_F32` for f32
        /// products, `chain::SPAN` for f64).
        const SPAN: f64;
        unsafe fn splat(x: f64) -> Self;
        unsafe fn add(self, b: Self) -> Self;
        unsafe fn sub(self, b: Self) -> Self;
        unsafe fn mul(self, b: Self) -> Self;
        /// `self > m ? self : m`, the scalar kernel's max.
        unsafe fn max(self, m: Self) -> Self;
        /// `self < m ? self : m`.
        unsafe fn min(self, m: Self) -> Self;
        /// `Gemm::exp_nonpos` of this type, operation for operation.
        unsafe fn exp(self) -> Self;
        /// The one-item kernel's table exponential of this type, operation for operation
        /// (`logspace::fma::exp` for f32, [`Lanes::exp`] for f64).
        unsafe fn exp_table(self) -> Self;
        /// 0 where a lane is below the type's normal range.
        unsafe fn flush(self) -> Self;
        /// Lanes 0–3 and 4–7 as f64 (exact).
        unsafe fn wide(self) -> (__m256d, __m256d);
        /// f64 halves rounded to this type (as `as` rounds).
        unsafe fn narrow(lo: __m256d, hi: __m256d) -> Self;
        /// `out[i − from][l] = src[l][i]` for `i` in `from..to`.
        ///
        /// # Safety
        /// Each `src[l]` is valid for reads of `to` values; `out` holds `to − from`.
        unsafe fn gather(src: &[*const Self::S; 8], from: usize, to: usize, out: &mut [Self]);
        /// `dst[l][i] = buf[i][l]` for `i` in `0..k`.
        ///
        /// # Safety
        /// Each `dst[l]` is valid for writes of `k` values; `buf` holds `k`.
        unsafe fn scatter(dst: &[*mut Self::S; 8], k: usize, buf: &[Self]);
    }

    /// Eight f32 lanes.
    #[derive(Clone, Copy)]
    pub(crate) struct F8(__m256);

    impl Lanes for F8 {
        type S = f32;
        const SPAN: f64 = SPAN_F32;
        #[inline(always)]
        unsafe fn splat(x: f64) -> Self {
            F8(_mm256_set1_ps(x as f32))
        }
        #[inline(always)]
        unsafe fn add(self, b: Self) -> Self {
            F8(_mm256_add_ps(self.0, b.0))
        }
        #[inline(always)]
        unsafe fn sub(self, b: Self) -> Self {
            F8(_mm256_sub_ps(self.0, b.0))
        }
        #[inline(always)]
        unsafe fn mul(self, b: Self) -> Self {
            F8(_mm256_mul_ps(self.0, b.0))
        }
        #[inline(always)]
        unsafe fn max(self, m: Self) -> Self {
            F8(_mm256_max_ps(self.0, m.0))
        }
        #[inline(always)]
        unsafe fn min(self, m: Self) -> Self {
            F8(_mm256_min_ps(self.0, m.0))
        }
        /// `logspace::exp_nonpos_f32`: clamp, range reduction, the same polynomial, the
        /// exponent bits, the flush.
        #[inline(always)]
        unsafe fn exp(self) -> Self {
            let (x, s) = (self.0, _mm256_set1_ps);
            // clamp(x, FLUSH, 0) as `f32::clamp` does it: `x < FLUSH → FLUSH`, then
            // `> 0 → 0` (max/min return their second operand when the compare fails).
            let xc = _mm256_min_ps(s(0.0), _mm256_max_ps(s(expf::FLUSH), x));
            let t = _mm256_add_ps(_mm256_mul_ps(xc, s(expf::LOG2E)), s(expf::MAGIC));
            let n = _mm256_sub_ps(t, s(expf::MAGIC));
            let r = _mm256_sub_ps(
                _mm256_sub_ps(xc, _mm256_mul_ps(n, s(expf::LN2_HI))),
                _mm256_mul_ps(n, s(expf::LN2_LO)),
            );
            let mut p = s(expf::POLY[0]);
            for &k in &expf::POLY[1..] {
                p = _mm256_add_ps(_mm256_mul_ps(p, r), s(k));
            }
            let y = _mm256_add_ps(
                _mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(p, r), r), r),
                s(1.0),
            );
            let ni = _mm256_sub_epi32(
                _mm256_castps_si256(t),
                _mm256_set1_epi32(expf::MAGIC.to_bits() as i32),
            );
            let scale = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
                ni,
                _mm256_set1_epi32(127),
            )));
            let flush = _mm256_cmp_ps::<_CMP_LT_OQ>(x, s(expf::FLUSH));
            F8(_mm256_andnot_ps(flush, _mm256_mul_ps(y, scale)))
        }
        #[inline(always)]
        unsafe fn exp_table(self) -> Self {
            F8(crate::kernels::logspace::fma::exp8(self.0))
        }
        #[inline(always)]
        unsafe fn flush(self) -> Self {
            let low = _mm256_cmp_ps::<_CMP_LT_OQ>(self.0, _mm256_set1_ps(f32::MIN_POSITIVE));
            F8(_mm256_andnot_ps(low, self.0))
        }
        #[inline(always)]
        unsafe fn wide(self) -> (__m256d, __m256d) {
            (
                _mm256_cvtps_pd(_mm256_castps256_ps128(self.0)),
                _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(self.0)),
            )
        }
        #[inline(always)]
        unsafe fn narrow(lo: __m256d, hi: __m256d) -> Self {
            F8(_mm256_set_m128(_mm256_cvtpd_ps(hi), _mm256_cvtpd_ps(lo)))
        }
        #[inline(always)]
        unsafe fn gather(src: &[*const f32; 8], from: usize, to: usize, out: &mut [Self]) {
            let mut i = from;
            while i + 8 <= to {
                let mut r = [_mm256_setzero_ps(); 8];
                for (v, p) in r.iter_mut().zip(src) {
                    // SAFETY: i + 8 <= to (the caller's contract).
                    *v = unsafe { _mm256_loadu_ps(p.add(i)) };
                }
                for (o, v) in out[i - from..i - from + 8].iter_mut().zip(t8(r)) {
                    *o = F8(v);
                }
                i += 8;
            }
            while i < to {
                // SAFETY: i < to.
                let x: [f32; 8] = std::array::from_fn(|l| unsafe { *src[l].add(i) });
                // SAFETY: eight f32.
                out[i - from] = F8(unsafe { _mm256_loadu_ps(x.as_ptr()) });
                i += 1;
            }
        }
        #[inline(always)]
        unsafe fn scatter(dst: &[*mut f32; 8], k: usize, buf: &[Self]) {
            let mut i = 0;
            while i + 8 <= k {
                let r: [__m256; 8] = std::array::from_fn(|j| buf[i + j].0);
                for (d, v) in dst.iter().zip(t8(r)) {
                    // SAFETY: i + 8 <= k (the caller's contract).
                    unsafe { _mm256_storeu_ps(d.add(i), v) };
                }
                i += 8;
            }
            while i < k {
                let x = split(buf[i]);
                for (d, &v) in dst.iter().zip(&x) {
                    // SAFETY: i < k.
                    unsafe { d.add(i).write(v as f32) };
                }
                i += 1;
            }
        }
    }

    /// Eight f64 lanes: lanes 0–3 and 4–7.
    #[derive(Clone, Copy)]
    pub(crate) struct D8(__m256d, __m256d);

    impl Lanes for D8 {
        type S = f64;
        const SPAN: f64 = SPAN;
        #[inline(always)]
        unsafe fn splat(x: f64) -> Self {
            D8(_mm256_set1_pd(x), _mm256_set1_pd(x))
        }
        #[inline(always)]
        unsafe fn add(self, b: Self) -> Self {
            D8(_mm256_add_pd(self.0, b.0), _mm256_add_pd(self.1, b.1))
        }
        #[inline(always)]
        unsafe fn sub(self, b: Self) -> Self {
            D8(_mm256_sub_pd(self.0, b.0), _mm256_sub_pd(self.1, b.1))
        }
        #[inline(always)]
        unsafe fn mul(self, b: Self) -> Self {
            D8(_mm256_mul_pd(self.0, b.0), _mm256_mul_pd(self.1, b.1))
        }
        #[inline(always)]
        unsafe fn max(self, m: Self) -> Self {
            D8(_mm256_max_pd(self.0, m.0), _mm256_max_pd(self.1, m.1))
        }
        #[inline(always)]
        unsafe fn min(self, m: Self) -> Self {
            D8(_mm256_min_pd(self.0, m.0), _mm256_min_pd(self.1, m.1))
        }
        /// `logspace::exp`: clamp, range reduction, the same polynomial, the exponent
        /// bits, the flush.
        #[inline(always)]
        unsafe fn exp(self) -> Self {
            D8(exp4(self.0), exp4(self.1))
        }
        #[inline(always)]
        unsafe fn exp_table(self) -> Self {
            self.exp()
        }
        #[inline(always)]
        unsafe fn flush(self) -> Self {
            let m = _mm256_set1_pd(f64::MIN_POSITIVE);
            let (a, b) = (self.0, self.1);
            D8(
                _mm256_andnot_pd(_mm256_cmp_pd::<_CMP_LT_OQ>(a, m), a),
                _mm256_andnot_pd(_mm256_cmp_pd::<_CMP_LT_OQ>(b, m), b),
            )
        }
        #[inline(always)]
        unsafe fn wide(self) -> (__m256d, __m256d) {
            (self.0, self.1)
        }
        #[inline(always)]
        unsafe fn narrow(lo: __m256d, hi: __m256d) -> Self {
            D8(lo, hi)
        }
        #[inline(always)]
        unsafe fn gather(src: &[*const f64; 8], from: usize, to: usize, out: &mut [Self]) {
            let mut i = from;
            while i + 4 <= to {
                let mut r = [_mm256_setzero_pd(); 8];
                for (v, p) in r.iter_mut().zip(src) {
                    // SAFETY: i + 4 <= to (the caller's contract).
                    *v = unsafe { _mm256_loadu_pd(p.add(i)) };
                }
                let lo = t4([r[0], r[1], r[2], r[3]]);
                let hi = t4([r[4], r[5], r[6], r[7]]);
                for j in 0..4 {
                    out[i - from + j] = D8(lo[j], hi[j]);
                }
                i += 4;
            }
            while i < to {
                // SAFETY: i < to.
                let x: [f64; 8] = std::array::from_fn(|l| unsafe { *src[l].add(i) });
                // SAFETY: four f64 each.
                out[i - from] = unsafe {
                    D8(
                        _mm256_loadu_pd(x.as_ptr()),
                        _mm256_loadu_pd(x.as_ptr().add(4)),
                    )
                };
                i += 1;
            }
        }
        #[inline(always)]
        unsafe fn scatter(dst: &[*mut f64; 8], k: usize, buf: &[Self]) {
            let mut i = 0;
            while i + 4 <= k {
                let lo = t4(std::array::from_fn(|j| buf[i + j].0));
                let hi = t4(std::array::from_fn(|j| buf[i + j].1));
                for l in 0..4 {
                    // SAFETY: i + 4 <= k (the caller's contract).
                    unsafe {
                        _mm256_storeu_pd(dst[l].add(i), lo[l]);
                        _mm256_storeu_pd(dst[l + 4].add(i), hi[l]);
                    }
                }
                i += 4;
            }
            while i < k {
                let x = split(buf[i]);
                for (d, &v) in dst.iter().zip(&x) {
                    // SAFETY: i < k.
                    unsafe { d.add(i).write(v) };
                }
                i += 1;
            }
        }
    }

    /// 4×4 transpose of f64: `out[j][l] = r[l][j]`.
    #[inline(always)]
    unsafe fn t4(r: [__m256d; 4]) -> [__m256d; 4] {
        let t0 = _mm256_unpacklo_pd(r[0], r[1]);
        let t1 = _mm256_unpackhi_pd(r[0], r[1]);
        let t2 = _mm256_unpacklo_pd(r[2], r[3]);
        let t3 = _mm256_unpackhi_pd(r[2], r[3]);
        [
            _mm256_permute2f128_pd::<0x20>(t0, t2),
            _mm256_permute2f128_pd::<0x20>(t1, t3),
            _mm256_permute2f128_pd::<0x31>(t0, t2),
            _mm256_permute2f128_pd::<0x31>(t1, t3),
        ]
    }

    /// `logspace::exp` on four lanes, operation for operation.
    #[inline(always)]
    unsafe fn exp4(x: __m256d) -> __m256d {
        let s = _mm256_set1_pd;
        // clamp(x, EXP_FLUSH, 709) as `f64::clamp` does it (see `F8::exp`).
        let xc = _mm256_min_pd(s(709.0), _mm256_max_pd(s(EXP_FLUSH), x));
        let t = _mm256_add_pd(_mm256_mul_pd(xc, s(LOG2E)), s(MAGIC));
        let n = _mm256_sub_pd(t, s(MAGIC));
        let r = _mm256_sub_pd(
            _mm256_sub_pd(xc, _mm256_mul_pd(n, s(LN2_HI))),
            _mm256_mul_pd(n, s(LN2_LO)),
        );
        let mut p = s(EXP_POLY[0]);
        for &k in &EXP_POLY[1..] {
            p = _mm256_add_pd(_mm256_mul_pd(p, r), s(k));
        }
        let ni = _mm256_sub_epi64(
            _mm256_castpd_si256(t),
            _mm256_set1_epi64x(MAGIC.to_bits() as i64),
        );
        let scale = _mm256_castsi256_pd(_mm256_slli_epi64::<52>(_mm256_add_epi64(
            ni,
            _mm256_set1_epi64x(1023),
        )));
        let flush = _mm256_cmp_pd::<_CMP_LT_OQ>(x, s(EXP_FLUSH));
        _mm256_andnot_pd(flush, _mm256_mul_pd(p, scale))
    }

    /// The eight lanes as f64 values (exact).
    #[inline(always)]
    unsafe fn split<L: Lanes>(v: L) -> [f64; 8] {
        let (lo, hi) = v.wide();
        let mut x = [0.0f64; 8];
        // SAFETY: four f64 each.
        unsafe {
            _mm256_storeu_pd(x.as_mut_ptr(), lo);
            _mm256_storeu_pd(x.as_mut_ptr().add(4), hi);
        }
        x
    }

    /// A worker's buffers for groups.
    pub(crate) struct LaneWs<L> {
        phi: Vec<L>,
        alpha: Vec<L>,
        e: Vec<L>,
        beta: Vec<L>,
        g: Vec<L>,
        bt: Vec<L>,
    }

    fn zeros<L: Lanes>(k: usize) -> Vec<L> {
        // SAFETY: all-zero bits are valid vectors (every lane +0.0).
        vec![unsafe { std::mem::zeroed::<L>() }; k]
    }

    impl<L: Lanes> LaneWs<L> {
        pub(crate) fn new(n: usize, c: usize) -> LaneWs<L> {
            LaneWs {
                phi: zeros(n * c),
                alpha: zeros(n * c),
                e: zeros(n.saturating_sub(1) * c * c),
                beta: zeros(c),
                g: zeros(c),
                bt: zeros(c),
            }
        }
    }

    /// See [`super::group`] (the CPU has AVX2 and FMA: checked there).
    pub(crate) fn group<L: Lanes>(
        lanes: &mut [Lane<'_, L::S>],
        len: usize,
        c: usize,
        ws: &mut LaneWs<L>,
    ) -> Option<[f64; LANES]> {
        assert!(crate::kernels::batch::has_fma() && lanes.len() == LANES);
        let cc = c * c;
        let edges = len.saturating_sub(1);
        for ln in lanes.iter() {
            assert!(ln.node.len() >= len * c && ln.node_out.len() >= len * c);
            assert!(ln.tabs.len() >= edges * cc);
            assert!(ln.rows.as_ref().is_none_or(|r| r.len() >= edges * cc));
        }
        assert!(ws.phi.len() >= len * c && ws.e.len() >= edges * cc && ws.beta.len() >= c);
        // SAFETY: the CPU has AVX2 and FMA, and the slices hold what the body reads and writes
        // (asserted just above).
        unsafe { body(lanes, len, c, ws) }
    }

    /// Each lane normalised by its sum (in f64, in order); the sums. A lane summing to 0
    /// is left as it is.
    #[inline(always)]
    unsafe fn normalise<L: Lanes>(v: &mut [L]) -> [f64; 8] {
        let (mut s0, mut s1) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        for &x in v.iter() {
            let (a, b) = x.wide();
            s0 = _mm256_add_pd(s0, a);
            s1 = _mm256_add_pd(s1, b);
        }
        let (zero, one) = (_mm256_setzero_pd(), _mm256_set1_pd(1.0));
        let pos0 = _mm256_cmp_pd::<_CMP_GT_OQ>(s0, zero);
        let pos1 = _mm256_cmp_pd::<_CMP_GT_OQ>(s1, zero);
        let k = L::narrow(
            _mm256_blendv_pd(one, _mm256_div_pd(one, s0), pos0),
            _mm256_blendv_pd(one, _mm256_div_pd(one, s1), pos1),
        );
        for x in v.iter_mut() {
            *x = x.mul(k);
        }
        let mut s = [0.0f64; 8];
        _mm256_storeu_pd(s.as_mut_ptr(), s0);
        _mm256_storeu_pd(s.as_mut_ptr().add(4), s1);
        s
    }

    /// `Σ_k a[k] b[k]` per lane, in the per-item kernel's order (`chain_edges::dot`:
    /// eight partial sums over whole chunks of eight, a serial tail, their fixed
    /// combination).
    #[inline(always)]
    unsafe fn dot<L: Lanes>(a: &[L], b: &[L]) -> L {
        let full = a.len() / 8 * 8;
        let mut tail = L::splat(0.0);
        for (&x, &y) in a[full..].iter().zip(&b[full..]) {
            tail = tail.add(x.mul(y));
        }
        if full == 0 {
            // Eight zero partial sums combine to +0, and +0 + tail = tail: the tail is a
            // sum of products of non-negative values, never −0.
            return tail;
        }
        let mut acc = [L::splat(0.0); 8];
        for (x, y) in a[..full].chunks_exact(8).zip(b[..full].chunks_exact(8)) {
            for j in 0..8 {
                acc[j] = acc[j].add(x[j].mul(y[j]));
            }
        }
        let a01 = acc[0].add(acc[1]);
        let a23 = acc[2].add(acc[3]);
        let a45 = acc[4].add(acc[5]);
        let a67 = acc[6].add(acc[7]);
        a01.add(a23).add(a45.add(a67)).add(tail)
    }

    /// # Safety
    /// The CPU has AVX2 and FMA; the lanes' slices and the buffers hold what `group`
    /// asserts.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn body<L: Lanes>(
        lanes: &mut [Lane<'_, L::S>],
        len: usize,
        c: usize,
        ws: &mut LaneWs<L>,
    ) -> Option<[f64; 8]> {
        let cc = c * c;
        let edges = len.saturating_sub(1);
        for ln in lanes.iter_mut() {
            // Past the item's length; the rest is written by the backward pass.
            ln.node_out[len * c..].fill(L::S::default());
            if let Some(r) = ln.rows.as_deref_mut() {
                for x in &mut r[edges * cc..] {
                    x.write(L::S::default());
                }
            }
        }
        if len == 0 {
            return Some([0.0; LANES]);
        }
        let mut log_z = [0.0f64; LANES];
        // Node potentials φ_t = exp(s_t − max s_t), flushed to zero below the type's
        // normal range.
        let node: [*const L::S; 8] = std::array::from_fn(|l| lanes[l].node.as_ptr());
        // SAFETY: each node slice holds len·C scores (asserted by `group`).
        unsafe { L::gather(&node, 0, len * c, &mut ws.phi[..len * c]) };
        for t in 0..len {
            let row = &mut ws.phi[t * c..(t + 1) * c];
            let mut m = L::splat(f64::NEG_INFINITY);
            for &x in row.iter() {
                m = x.max(m);
            }
            let mm = split(m);
            for l in 0..LANES {
                if mm[l] == f64::NEG_INFINITY {
                    return None;
                }
                log_z[l] += mm[l];
            }
            for x in row.iter_mut() {
                *x = x.sub(m).exp().flush();
            }
        }
        // Tables, a slab at a time: gathered, range checked per lane, E = exp(θ − max θ).
        let tabs: [*const L::S; 8] = std::array::from_fn(|l| lanes[l].tabs.as_ptr());
        let slab = (SLAB_BYTES / (cc * std::mem::size_of::<L>())).max(1);
        let mut t0 = 0;
        while t0 < edges {
            let t1 = (t0 + slab).min(edges);
            // SAFETY: each table slice holds (len − 1)·C² scores.
            unsafe { L::gather(&tabs, t0 * cc, t1 * cc, &mut ws.e[t0 * cc..t1 * cc]) };
            for t in t0..t1 {
                let blk = &mut ws.e[t * cc..(t + 1) * cc];
                let (mut hi, mut lo) = (L::splat(f64::NEG_INFINITY), L::splat(f64::INFINITY));
                // Σ (x − x): NaN where an entry is NaN or ±inf.
                let mut bad = L::splat(0.0);
                for &x in blk.iter() {
                    hi = x.max(hi);
                    lo = x.min(lo);
                    bad = bad.add(x.sub(x));
                }
                let (h, lw, b) = (split(hi), split(lo), split(bad));
                for l in 0..LANES {
                    // (A −inf entry makes its lane's sum NaN too.)
                    if b[l].is_nan() || h[l] - lw[l] > L::SPAN {
                        return None;
                    }
                    log_z[l] += h[l];
                }
                for x in blk.iter_mut() {
                    *x = x.sub(hi).exp_table();
                }
            }
            t0 = t1;
        }
        // Forward: α_0 = φ_0, α_t = (α_{t-1} E_{t-1}) ⊙ φ_t, normalised.
        ws.alpha[..c].copy_from_slice(&ws.phi[..c]);
        let sums = normalise(&mut ws.alpha[..c]);
        for l in 0..LANES {
            if sums[l] <= 0.0 {
                return None;
            }
            log_z[l] += sums[l].ln();
        }
        for t in 1..len {
            let (done, rest) = ws.alpha.split_at_mut(t * c);
            let prev = &done[(t - 1) * c..];
            let cur = &mut rest[..c];
            cur.fill(L::splat(0.0));
            let e = &ws.e[(t - 1) * cc..t * cc];
            for (a, &av) in prev.iter().enumerate() {
                for (o, &x) in cur.iter_mut().zip(&e[a * c..(a + 1) * c]) {
                    *o = o.add(av.mul(x));
                }
            }
            for (o, &p) in cur.iter_mut().zip(&ws.phi[t * c..(t + 1) * c]) {
                *o = o.mul(p);
            }
            let sums = normalise(cur);
            for l in 0..LANES {
                if sums[l] <= 0.0 {
                    return None;
                }
                log_z[l] += sums[l].ln();
            }
        }
        // Backward. Node marginals are written over α, pair marginals over E (each read
        // for the last time at its own step), and transposed out at the end.
        let w: [f64; 8] = std::array::from_fn(|l| lanes[l].w);
        let (w0, w1) = (
            _mm256_loadu_pd(w.as_ptr()),
            _mm256_loadu_pd(w.as_ptr().add(4)),
        );
        let want_rows = lanes[0].rows.is_some();
        let last = (len - 1) * c;
        for a in ws.alpha[last..last + c].iter_mut() {
            let (x0, x1) = a.wide();
            *a = L::narrow(_mm256_mul_pd(x0, w0), _mm256_mul_pd(x1, w1));
        }
        ws.beta[..c].fill(L::splat(1.0));
        for t in (0..edges).rev() {
            for ((g, &p), &b) in ws.g[..c]
                .iter_mut()
                .zip(&ws.phi[(t + 1) * c..])
                .zip(&ws.beta)
            {
                *g = p.mul(b);
            }
            let e = &mut ws.e[t * cc..(t + 1) * cc];
            for (a, bt) in ws.bt[..c].iter_mut().enumerate() {
                *bt = dot(&e[a * c..(a + 1) * c], &ws.g[..c]);
            }
            let alpha = &mut ws.alpha[t * c..(t + 1) * c];
            let (mut d0, mut d1) = (_mm256_setzero_pd(), _mm256_setzero_pd());
            for (&a, &b) in alpha.iter().zip(&ws.bt[..c]) {
                let ((a0, a1), (b0, b1)) = (a.wide(), b.wide());
                d0 = _mm256_add_pd(d0, _mm256_mul_pd(a0, b0));
                d1 = _mm256_add_pd(d1, _mm256_mul_pd(a1, b1));
            }
            let (k0, k1) = (_mm256_div_pd(w0, d0), _mm256_div_pd(w1, d1));
            if want_rows {
                for (a, &av) in alpha.iter().enumerate() {
                    let (a0, a1) = av.wide();
                    let k = L::narrow(_mm256_mul_pd(a0, k0), _mm256_mul_pd(a1, k1));
                    for (x, &g) in e[a * c..(a + 1) * c].iter_mut().zip(&ws.g[..c]) {
                        *x = k.mul(*x).mul(g);
                    }
                }
            }
            for (a, &b) in alpha.iter_mut().zip(&ws.bt[..c]) {
                let ((a0, a1), (b0, b1)) = (a.wide(), b.wide());
                *a = L::narrow(
                    _mm256_mul_pd(_mm256_mul_pd(a0, b0), k0),
                    _mm256_mul_pd(_mm256_mul_pd(a1, b1), k1),
                );
            }
            ws.beta[..c].copy_from_slice(&ws.bt[..c]);
            normalise(&mut ws.beta[..c]);
        }
        let out: [*mut L::S; 8] = std::array::from_fn(|l| lanes[l].node_out.as_mut_ptr());
        // SAFETY: each node output holds len·C entries.
        unsafe { L::scatter(&out, len * c, &ws.alpha[..len * c]) };
        if want_rows {
            let rows: [*mut L::S; 8] = std::array::from_fn(|l| {
                let r = lanes[l].rows.as_deref_mut().expect("every lane or none");
                r.as_mut_ptr().cast::<L::S>()
            });
            // SAFETY: each row output holds (len − 1)·C² entries (MaybeUninit<S> has S's
            // layout; every one is written here).
            unsafe { L::scatter(&rows, edges * cc, &ws.e[..edges * cc]) };
        }
        Some(log_z)
    }
}
