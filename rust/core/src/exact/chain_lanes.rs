//! Eight float32 chains at once: the per-edge forward–backward of `chain_edges` with one
//! item per SIMD lane (AVX2).
//!
//! For a small class count the per-item kernel's rows are short: `C = 7` is one partial
//! vector per row, a serial tail in every dot product, a scalar exponential for the odd
//! entry of every table. Here a group of eight items of the same length runs together,
//! every quantity held as one eight-lane vector (lane `l` = the group's item `l`): each
//! row operation is a whole vector however small `C` is. The scores are gathered into that
//! layout with 8×8 transposes (the tables a slab at a time, so their range and
//! exponentials are taken from L1), and the marginals transposed back into each item's
//! rows once the backward pass has written them over the exponentiated tables.
//!
//! Every lane performs exactly the per-item kernel's operations, in its order and
//! precision (the same f64 sums, the same partial sums in the dot products, the same
//! roundings, the same exponential): the results are bit-identical to running the items
//! one by one, so the grouping — which depends on the batch, never on the thread count —
//! changes no result. A group in which any item needs more than this path holds (a table
//! wider than f32 products, a −inf entry, NaN or +inf, an infeasible item) reports it, and
//! its items run one by one. Float32 models on CPUs with AVX2; others run item by item.

use std::mem::MaybeUninit;

/// Items per group.
pub(crate) const LANES: usize = 8;

/// Largest class count run in groups: above it the per-item rows are nearly whole vectors
/// already, and a group's working set (eight items' tables) leaves the cache sooner
/// (measured, whole calls on 2 threads: groups 10% faster at C = 20, 5–25% slower at
/// C = 24 and 32; 1.15× (C = 16) to 2.2× (C = 3) faster below).
pub(crate) const MAX_CLASSES: usize = 20;

/// Largest per-worker buffer of a group's exponentiated tables (bytes).
const MAX_GROUP_TABLES: usize = 256 << 20;

/// Whether a batch of `batch` float32 chains of `n` nodes and `c` classes runs in groups.
pub(crate) fn applies(n: usize, c: usize, batch: usize) -> bool {
    cfg!(target_arch = "x86_64") && crate::kernels::batch::has_avx2() && shape_fits(n, c, batch)
}

/// [`applies`] but for the CPU: what a caller whose order of work follows the groups
/// (whatever runs them) decides by, so that its results do not depend on the CPU.
pub(crate) fn shape_fits(n: usize, c: usize, batch: usize) -> bool {
    batch >= LANES
        && (2..=MAX_CLASSES).contains(&c)
        && (n.saturating_sub(1))
            .checked_mul(c * c * LANES * 4)
            .is_some_and(|b| b <= MAX_GROUP_TABLES)
}

/// One item of a group: its scores and where its marginals go.
pub(crate) struct Lane<'x> {
    /// `(n, C)` node scores.
    pub node: &'x [f32],
    /// `(n-1, C, C)` edge tables.
    pub tabs: &'x [f32],
    /// Factor on the marginals (the item's weight).
    pub w: f64,
    /// `(n, C)` node marginals times `w` (zero past the item's length).
    pub node_out: &'x mut [f32],
    /// `(n-1, C, C)` pair marginals times `w`, every entry written (zero past the last
    /// edge); `None` to skip them.
    pub rows: Option<&'x mut [MaybeUninit<f32>]>,
}

/// `rows` as float32 rows when `T` is f32.
pub(crate) fn f32_rows<T: crate::kernels::real::Real>(
    rows: &mut [MaybeUninit<T>],
) -> Option<&mut [MaybeUninit<f32>]> {
    T::as_f32(&[])?;
    // SAFETY: `T` is f32 (checked just above), so the two slice types are the same.
    Some(unsafe { &mut *(rows as *mut [MaybeUninit<T>] as *mut [MaybeUninit<f32>]) })
}

#[cfg(target_arch = "x86_64")]
pub(crate) use avx::{group, LaneWs};

#[cfg(not(target_arch = "x86_64"))]
pub(crate) use portable::{group, LaneWs};

#[cfg(not(target_arch = "x86_64"))]
mod portable {
    use super::Lane;

    /// Never built: groups run on x86_64 with AVX2 only (see [`super::applies`]).
    pub(crate) struct LaneWs;

    impl LaneWs {
        pub(crate) fn new(_: usize, _: usize) -> LaneWs {
            LaneWs
        }
    }

    pub(crate) fn group(
        _: &mut [Lane<'_>],
        _: usize,
        _: usize,
        _: &mut LaneWs,
    ) -> Option<[f64; 8]> {
        None
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;

    use super::{Lane, LANES};
    use crate::exact::chain::SPAN_F32;
    use crate::kernels::layout::avx::t8 as transpose;

    type V = __m256;

    // The helpers below are `unsafe fn`s without `target_feature`, always inlined: their
    // one contract is that the CPU has AVX2, and they are only called from `body`
    // (compiled for AVX2), where they inline into vector code. (A `target_feature`
    // helper cannot be `inline(always)`, and one that is not inlined costs a call per
    // row.)

    /// Tables gathered and exponentiated at a time: a slab of about 16 KiB.
    const SLAB_BYTES: usize = 16 << 10;

    /// A worker's buffers for groups.
    pub(crate) struct LaneWs {
        phi: Vec<V>,
        alpha: Vec<V>,
        e: Vec<V>,
        beta: Vec<V>,
        g: Vec<V>,
        bt: Vec<V>,
    }

    fn zeros(k: usize) -> Vec<V> {
        // SAFETY: all-zero bits are a valid __m256 (eight +0.0).
        vec![unsafe { std::mem::zeroed::<V>() }; k]
    }

    impl LaneWs {
        pub(crate) fn new(n: usize, c: usize) -> LaneWs {
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

    /// Forward–backward of a group of [`LANES`] items, each of `len` active nodes: each
    /// item's log Z, its marginals written as its [`Lane`] says. `None` when an item needs
    /// more than this path holds (see the module doc); the outputs are then partly
    /// written, and the caller runs the items one by one.
    pub(crate) fn group(
        lanes: &mut [Lane<'_>],
        len: usize,
        c: usize,
        ws: &mut LaneWs,
    ) -> Option<[f64; LANES]> {
        assert!(super::applies(len.max(2), c, LANES) && lanes.len() == LANES);
        let cc = c * c;
        for ln in lanes.iter() {
            assert!(ln.node.len() >= len * c && ln.node_out.len() >= len * c);
            assert!(ln.tabs.len() >= len.saturating_sub(1) * cc);
            assert!(ln
                .rows
                .as_ref()
                .is_none_or(|r| r.len() >= len.saturating_sub(1) * cc));
        }
        assert!(ws.phi.len() >= len * c && ws.e.len() >= len.saturating_sub(1) * cc);
        assert!(ws.beta.len() >= c);
        // SAFETY: the CPU has AVX2 (`applies`), and the slices hold what the body reads
        // and writes (asserted just above).
        unsafe { body(lanes, len, c, ws) }
    }

    /// `out[i − from][l] = src[l][i]` for `i` in `from..to`.
    ///
    /// # Safety
    /// Each `src[l]` is valid for reads of `to` f32; `out` holds `to − from` vectors.
    #[inline(always)]
    unsafe fn gather(src: &[*const f32; 8], from: usize, to: usize, out: &mut [V]) {
        let mut i = from;
        while i + 8 <= to {
            let mut r = [_mm256_setzero_ps(); 8];
            for (v, p) in r.iter_mut().zip(src) {
                // SAFETY: i + 8 <= to (caller's contract).
                *v = unsafe { _mm256_loadu_ps(p.add(i)) };
            }
            for (o, v) in out[i - from..i - from + 8].iter_mut().zip(transpose(r)) {
                *o = v;
            }
            i += 8;
        }
        while i < to {
            // SAFETY: i < to.
            let x: [f32; 8] = std::array::from_fn(|l| unsafe { *src[l].add(i) });
            // SAFETY: eight f32.
            out[i - from] = unsafe { _mm256_loadu_ps(x.as_ptr()) };
            i += 1;
        }
    }

    /// `dst[l][i] = buf[i][l]` for `i` in `0..k`.
    ///
    /// # Safety
    /// Each `dst[l]` is valid for writes of `k` f32; `buf` holds `k` vectors.
    #[inline(always)]
    unsafe fn scatter(dst: &[*mut f32; 8], k: usize, buf: &[V]) {
        let mut i = 0;
        while i + 8 <= k {
            let mut r = [_mm256_setzero_ps(); 8];
            r.copy_from_slice(&buf[i..i + 8]);
            for (l, v) in transpose(r).into_iter().enumerate() {
                // SAFETY: i + 8 <= k (caller's contract).
                unsafe { _mm256_storeu_ps(dst[l].add(i), v) };
            }
            i += 8;
        }
        while i < k {
            let x = split(buf[i]);
            for l in 0..8 {
                // SAFETY: i < k.
                unsafe { dst[l].add(i).write(x[l]) };
            }
            i += 1;
        }
    }

    #[inline(always)]
    unsafe fn split(v: V) -> [f32; 8] {
        let mut x = [0.0f32; 8];
        // SAFETY: eight f32.
        unsafe { _mm256_storeu_ps(x.as_mut_ptr(), v) };
        x
    }

    #[inline(always)]
    unsafe fn split_pd(lo: __m256d, hi: __m256d) -> [f64; 8] {
        let mut x = [0.0f64; 8];
        // SAFETY: four f64 each.
        unsafe {
            _mm256_storeu_pd(x.as_mut_ptr(), lo);
            _mm256_storeu_pd(x.as_mut_ptr().add(4), hi);
        }
        x
    }

    /// The eight lanes widened to f64: (lanes 0–3, lanes 4–7).
    #[inline(always)]
    unsafe fn wide(v: V) -> (__m256d, __m256d) {
        (
            _mm256_cvtps_pd(_mm256_castps256_ps128(v)),
            _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v)),
        )
    }

    /// Two f64 halves rounded to f32 lanes (as `as f32` rounds).
    #[inline(always)]
    unsafe fn narrow(lo: __m256d, hi: __m256d) -> V {
        _mm256_set_m128(_mm256_cvtpd_ps(hi), _mm256_cvtpd_ps(lo))
    }

    /// `logspace::exp_nonpos_f32` on eight lanes, operation for operation (so the same
    /// bits): clamp, range reduction, the same polynomial, the exponent bits, the flush.
    #[inline(always)]
    unsafe fn exp(x: V) -> V {
        let s = _mm256_set1_ps;
        // clamp(x, -87, 0) as `f32::clamp` does it: `x < -87 → -87`, then `> 0 → 0`
        // (max/min return their second operand when the compare fails: NaN kept).
        let xc = _mm256_min_ps(s(0.0), _mm256_max_ps(s(-87.0), x));
        let t = _mm256_add_ps(
            _mm256_mul_ps(xc, s(std::f32::consts::LOG2_E)),
            s(12_582_912.0),
        );
        let n = _mm256_sub_ps(t, s(12_582_912.0));
        let r = _mm256_sub_ps(
            _mm256_sub_ps(xc, _mm256_mul_ps(n, s(0.693_359_4))),
            _mm256_mul_ps(n, s(-2.121_944_4e-4)),
        );
        let mut p = s(1.987_569_1e-4);
        for k in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            p = _mm256_add_ps(_mm256_mul_ps(p, r), s(k));
        }
        let y = _mm256_add_ps(
            _mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(p, r), r), r),
            s(1.0),
        );
        let ni = _mm256_sub_epi32(
            _mm256_castps_si256(t),
            _mm256_set1_epi32(12_582_912.0f32.to_bits() as i32),
        );
        let scale = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            ni,
            _mm256_set1_epi32(127),
        )));
        let flush = _mm256_cmp_ps::<_CMP_LT_OQ>(x, s(-87.0));
        _mm256_andnot_ps(flush, _mm256_mul_ps(y, scale))
    }

    /// Each lane normalised by its sum (in f64, in order); the sums. A lane summing to 0
    /// is left as it is.
    #[inline(always)]
    unsafe fn normalise(v: &mut [V]) -> [f64; 8] {
        let (mut s0, mut s1) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        for &x in v.iter() {
            let (a, b) = wide(x);
            s0 = _mm256_add_pd(s0, a);
            s1 = _mm256_add_pd(s1, b);
        }
        let (zero, one) = (_mm256_setzero_pd(), _mm256_set1_pd(1.0));
        let pos0 = _mm256_cmp_pd::<_CMP_GT_OQ>(s0, zero);
        let pos1 = _mm256_cmp_pd::<_CMP_GT_OQ>(s1, zero);
        let k = narrow(
            _mm256_blendv_pd(one, _mm256_div_pd(one, s0), pos0),
            _mm256_blendv_pd(one, _mm256_div_pd(one, s1), pos1),
        );
        for x in v.iter_mut() {
            *x = _mm256_mul_ps(*x, k);
        }
        split_pd(s0, s1)
    }

    /// `Σ_k a[k] b[k]` per lane, in the per-item kernel's order (`chain_edges::dot`:
    /// eight partial sums over whole chunks of eight, a serial tail, their fixed
    /// combination).
    #[inline(always)]
    unsafe fn dot(a: &[V], b: &[V]) -> V {
        let full = a.len() / 8 * 8;
        let mut tail = _mm256_setzero_ps();
        for (&x, &y) in a[full..].iter().zip(&b[full..]) {
            tail = _mm256_add_ps(tail, _mm256_mul_ps(x, y));
        }
        if full == 0 {
            // Eight zero partial sums combine to +0, and +0 + tail = tail: the tail is a
            // sum of products of non-negative values, never −0.
            return tail;
        }
        let mut acc = [_mm256_setzero_ps(); 8];
        for (x, y) in a[..full].chunks_exact(8).zip(b[..full].chunks_exact(8)) {
            for j in 0..8 {
                acc[j] = _mm256_add_ps(acc[j], _mm256_mul_ps(x[j], y[j]));
            }
        }
        let a01 = _mm256_add_ps(acc[0], acc[1]);
        let a23 = _mm256_add_ps(acc[2], acc[3]);
        let a45 = _mm256_add_ps(acc[4], acc[5]);
        let a67 = _mm256_add_ps(acc[6], acc[7]);
        let all = _mm256_add_ps(_mm256_add_ps(a01, a23), _mm256_add_ps(a45, a67));
        _mm256_add_ps(all, tail)
    }

    /// # Safety
    /// The CPU has AVX2; the lanes' slices and the buffers hold what `group` asserts.
    #[target_feature(enable = "avx2")]
    unsafe fn body(
        lanes: &mut [Lane<'_>],
        len: usize,
        c: usize,
        ws: &mut LaneWs,
    ) -> Option<[f64; 8]> {
        let cc = c * c;
        let edges = len.saturating_sub(1);
        for ln in lanes.iter_mut() {
            // Past the item's length; the rest is written by the backward pass.
            ln.node_out[len * c..].fill(0.0);
            if let Some(r) = ln.rows.as_deref_mut() {
                for x in &mut r[edges * cc..] {
                    x.write(0.0);
                }
            }
        }
        if len == 0 {
            return Some([0.0; LANES]);
        }
        let s = _mm256_set1_ps;
        let mut log_z = [0.0f64; LANES];
        // Node potentials φ_t = exp(s_t − max s_t), flushed to zero below f32's normal
        // range.
        let node: [*const f32; 8] = std::array::from_fn(|l| lanes[l].node.as_ptr());
        // SAFETY: each node slice holds len·c scores (asserted by `group`).
        unsafe { gather(&node, 0, len * c, &mut ws.phi[..len * c]) };
        for t in 0..len {
            let row = &mut ws.phi[t * c..(t + 1) * c];
            let mut m = s(f32::NEG_INFINITY);
            for &x in row.iter() {
                m = _mm256_max_ps(x, m);
            }
            let mm = split(m);
            for l in 0..LANES {
                if mm[l] == f32::NEG_INFINITY {
                    return None;
                }
                log_z[l] += mm[l] as f64;
            }
            for x in row.iter_mut() {
                let v = exp(_mm256_sub_ps(*x, m));
                *x = _mm256_andnot_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(v, s(f32::MIN_POSITIVE)), v);
            }
        }
        // Tables, a slab at a time: gathered, range checked per lane, E = exp(θ − max θ).
        let tabs: [*const f32; 8] = std::array::from_fn(|l| lanes[l].tabs.as_ptr());
        let slab = (SLAB_BYTES / (cc * 32)).max(1);
        let mut t0 = 0;
        while t0 < edges {
            let t1 = (t0 + slab).min(edges);
            // SAFETY: each table slice holds (len − 1)·C² scores.
            unsafe { gather(&tabs, t0 * cc, t1 * cc, &mut ws.e[t0 * cc..t1 * cc]) };
            for t in t0..t1 {
                let blk = &mut ws.e[t * cc..(t + 1) * cc];
                let (mut hi, mut lo) = (s(f32::NEG_INFINITY), s(f32::INFINITY));
                // Σ (x − x): NaN where an entry is NaN or ±inf.
                let mut bad = _mm256_setzero_ps();
                for &x in blk.iter() {
                    hi = _mm256_max_ps(x, hi);
                    lo = _mm256_min_ps(x, lo);
                    bad = _mm256_add_ps(bad, _mm256_sub_ps(x, x));
                }
                let (h, lw, b) = (split(hi), split(lo), split(bad));
                for l in 0..LANES {
                    // (A −inf entry makes its lane's sum NaN too.)
                    if b[l].is_nan() || h[l] as f64 - lw[l] as f64 > SPAN_F32 {
                        return None;
                    }
                    log_z[l] += h[l] as f64;
                }
                for x in blk.iter_mut() {
                    *x = exp(_mm256_sub_ps(*x, hi));
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
            cur.fill(_mm256_setzero_ps());
            let e = &ws.e[(t - 1) * cc..t * cc];
            for (a, &av) in prev.iter().enumerate() {
                for (o, &x) in cur.iter_mut().zip(&e[a * c..(a + 1) * c]) {
                    *o = _mm256_add_ps(*o, _mm256_mul_ps(av, x));
                }
            }
            for (o, &p) in cur.iter_mut().zip(&ws.phi[t * c..(t + 1) * c]) {
                *o = _mm256_mul_ps(*o, p);
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
        // SAFETY: four f64 each.
        let (w0, w1) = unsafe {
            (
                _mm256_loadu_pd(w.as_ptr()),
                _mm256_loadu_pd(w.as_ptr().add(4)),
            )
        };
        let want_rows = lanes[0].rows.is_some();
        let last = (len - 1) * c;
        for a in ws.alpha[last..last + c].iter_mut() {
            let (x0, x1) = wide(*a);
            *a = narrow(_mm256_mul_pd(x0, w0), _mm256_mul_pd(x1, w1));
        }
        ws.beta[..c].fill(s(1.0));
        for t in (0..edges).rev() {
            for ((g, &p), &b) in ws.g[..c]
                .iter_mut()
                .zip(&ws.phi[(t + 1) * c..])
                .zip(&ws.beta)
            {
                *g = _mm256_mul_ps(p, b);
            }
            let e = &mut ws.e[t * cc..(t + 1) * cc];
            for (a, bt) in ws.bt[..c].iter_mut().enumerate() {
                *bt = dot(&e[a * c..(a + 1) * c], &ws.g[..c]);
            }
            let alpha = &mut ws.alpha[t * c..(t + 1) * c];
            let (mut d0, mut d1) = (_mm256_setzero_pd(), _mm256_setzero_pd());
            for (&a, &b) in alpha.iter().zip(&ws.bt[..c]) {
                let ((a0, a1), (b0, b1)) = (wide(a), wide(b));
                d0 = _mm256_add_pd(d0, _mm256_mul_pd(a0, b0));
                d1 = _mm256_add_pd(d1, _mm256_mul_pd(a1, b1));
            }
            let (k0, k1) = (_mm256_div_pd(w0, d0), _mm256_div_pd(w1, d1));
            if want_rows {
                for (a, &av) in alpha.iter().enumerate() {
                    let (a0, a1) = wide(av);
                    let k = narrow(_mm256_mul_pd(a0, k0), _mm256_mul_pd(a1, k1));
                    for (x, &g) in e[a * c..(a + 1) * c].iter_mut().zip(&ws.g[..c]) {
                        *x = _mm256_mul_ps(_mm256_mul_ps(k, *x), g);
                    }
                }
            }
            for (a, &b) in alpha.iter_mut().zip(&ws.bt[..c]) {
                let ((a0, a1), (b0, b1)) = (wide(*a), wide(b));
                *a = narrow(
                    _mm256_mul_pd(_mm256_mul_pd(a0, b0), k0),
                    _mm256_mul_pd(_mm256_mul_pd(a1, b1), k1),
                );
            }
            ws.beta[..c].copy_from_slice(&ws.bt[..c]);
            normalise(&mut ws.beta[..c]);
        }
        let out: [*mut f32; 8] = std::array::from_fn(|l| lanes[l].node_out.as_mut_ptr());
        // SAFETY: each node output holds len·C entries.
        unsafe { scatter(&out, len * c, &ws.alpha[..len * c]) };
        if want_rows {
            let rows: [*mut f32; 8] = std::array::from_fn(|l| {
                let r = lanes[l].rows.as_deref_mut().expect("every lane or none");
                r.as_mut_ptr().cast::<f32>()
            });
            // SAFETY: each row output holds (len − 1)·C² entries (MaybeUninit<f32> has
            // f32's layout; every one is written here).
            unsafe { scatter(&rows, edges * cc, &ws.e[..edges * cc]) };
        }
        Some(log_z)
    }
}
