//! One-pass edge rows of the BP belief pass on a grid, for small C: float32 models with
//! per-edge f32 tables and f32 messages.
//!
//! The belief pass's edge row ([`super::grid_beliefs`]) made each quantity of an edge row
//! in a pass of its own across the row, through scratch rows: the two endpoints'
//! cavities and their scales, the f32 copies, the joint's row and column sums, its
//! normaliser, the messages' logarithms, `ln z`, `1/z`, the entropy sums and the terms.
//! At small C each pass does a few operations per entry, so its loads, stores and loop
//! overhead were most of the time (the edge row was a third of a one-iteration call).
//! Here eight edges, every label of each, go through all of it in registers; what leaves
//! the block is what later steps read: the scaled f32 cavities (the pair rows are formed
//! from them), `1/z` and the edge's term of log Z. Every value goes
//! through the same operations in the same order as in the row passes, so the results are
//! the same bits (a test in `grid_beliefs` compares the two paths).
//!
//! Two copies of one block: AVX2 intrinsics (eight edges in a `__m256` and two
//! `__m256d`; left to the compiler, the mix of f32 and f64 lanes came out four wide and
//! slower than the row passes), and a portable one over arrays of lanes for CPUs without
//! AVX2 and rows shorter than eight. Both take the same operations in the same order as
//! the row passes (a test compares them bit for bit).

use crate::loopy::grid_beliefs::{ln0_f32, pow2_scale};
#[cfg(target_arch = "x86_64")]
use avx::span as avx_span;
#[cfg(target_arch = "x86_64")]
use avx512::span as avx512_span;

/// Largest C the one-pass edge row is built for (each C is compiled twice). Beyond it a
/// block's `C²` joint products and `4C` label rows no longer fit in registers, and the
/// row passes' per-entry overhead matters less.
pub(crate) const MAX_C: usize = 12;

/// Smallest normaliser the probability-domain joint keeps (the row passes' f32 floor;
/// below it, and where it is not finite, `inv` is 0).
const TINY: f64 = 1e-30;

/// An edge row of the grid: edge `col` (`col < len`) joins node `col` of the first node
/// row (v, labels `s`) to node `col + off` of the second (u, labels `d`). Label rows are
/// `[x][col]` with stride `w` and indexed by node column.
pub(crate) struct EdgeRow<'a> {
    pub c: usize,
    pub w: usize,
    pub len: usize,
    pub off: usize,
    /// Node potentials of the two node rows (`C` rows of `w`).
    pub phi_v: &'a [f64],
    pub phi_u: &'a [f64],
    /// The three messages into v other than u's, in the order the cavity multiplies them
    /// (and the same for u).
    pub cav_v: [&'a [f32]; 3],
    pub cav_u: [&'a [f32]; 3],
    /// The message into v from u, and into u from v.
    pub msg_v: &'a [f32],
    pub msg_u: &'a [f32],
    /// The edges' potentials: rows `[k][col]`, `k = s·C + d`, stride `w`.
    pub tabs: &'a [f32],
    /// `shift_v + ln Z_v` per node of each node row (`w` each), and the edges' shifts.
    pub lz_v: &'a [f64],
    pub lz_u: &'a [f64],
    pub shift: &'a [f64],
}

/// What [`edge_row`] writes, per edge of the row.
pub(crate) struct EdgeTerms<'a> {
    /// The endpoints' cavities scaled to a largest entry in [1, 2), in f32, `[x][col]`
    /// with stride `w`, by edge column (u's cavity of edge `col` at `col`, not
    /// `col + off`).
    pub qv: &'a mut [f32],
    pub qu: &'a mut [f32],
    /// The edge's term of log Z (`len`).
    pub terms: &'a mut [f64],
    /// `1/z` of the joint `qv(s) ψ(s, d) qu(d)`, or 0 where it is below f32's floor or
    /// not finite (the caller checks: see `grid_beliefs`) (`len`).
    pub inv: &'a mut [f64],
    /// The pair marginals times `scale`, edge-major (`len` rows of `C²`, entry `s·C + d`),
    /// as `layout::pair_rows_f32` makes them: `qv(s) ψ qu(d) · f32(scale / z)`. Empty:
    /// not written (C = 2 always leaves them to the caller).
    pub pairs: &'a mut [f32],
    pub scale: f64,
}

/// Calls `$f::<C>($args)` for `C` labels.
macro_rules! for_c {
    ($c:expr, $f:ident, $($arg:expr),*) => {
        match $c {
            2 => $f::<2>($($arg),*),
            3 => $f::<3>($($arg),*),
            4 => $f::<4>($($arg),*),
            5 => $f::<5>($($arg),*),
            6 => $f::<6>($($arg),*),
            7 => $f::<7>($($arg),*),
            8 => $f::<8>($($arg),*),
            9 => $f::<9>($($arg),*),
            10 => $f::<10>($($arg),*),
            11 => $f::<11>($($arg),*),
            12 => $f::<12>($($arg),*),
            c => unreachable!("one-pass edge rows are built for 2 <= C <= {MAX_C}, not {c}"),
        }
    };
}

/// The edge row's scaled cavities, `1/z` and terms (see [`EdgeTerms`]).
/// `2 <= C <= MAX_C`.
pub(crate) fn edge_row(e: &EdgeRow<'_>, o: &mut EdgeTerms<'_>) {
    check(e, o);
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::batch::has_avx512() {
        // SAFETY: the CPU has AVX-512F/DQ and AVX2 (checked just above); `check` asserted
        // the bounds.
        unsafe { for_c!(e.c, avx512_span, e, o) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::batch::has_avx2() {
        // SAFETY: the CPU has AVX2 (checked just above); `check` asserted the bounds.
        unsafe { for_c!(e.c, avx_span, e, o) };
        return;
    }
    for_c!(e.c, span, e, o)
}

/// The lengths every index of [`block`] stays within (each load and store is also
/// bounds-checked, once per label row of eight).
fn check(e: &EdgeRow<'_>, o: &EdgeTerms<'_>) {
    let (c, w, len) = (e.c, e.w, e.len);
    assert!((2..=MAX_C).contains(&c) && len + e.off <= w);
    let rows = c * w;
    assert!(e.phi_v.len() >= rows && e.phi_u.len() >= rows);
    assert!(e.cav_v.iter().chain(&e.cav_u).all(|m| m.len() >= rows));
    assert!(e.msg_v.len() >= rows && e.msg_u.len() >= rows);
    assert!(len == 0 || e.tabs.len() >= (c * c - 1) * w + len);
    assert!(e.lz_v.len() >= len && e.lz_u.len() >= len + e.off && e.shift.len() >= len);
    assert!(o.qv.len() >= rows && o.qu.len() >= rows);
    assert!(o.terms.len() >= len && o.inv.len() >= len);
    assert!(o.pairs.is_empty() || (c > 2 && o.pairs.len() >= len * c * c));
}

/// The row's edges eight at a time (the compiler's vector instructions for the CPU's
/// baseline); the last block is moved back to end at the last edge (its overlapped edges
/// are computed again from the same inputs: the same values), and a row shorter than
/// eight runs edge by edge.
#[inline(always)]
fn span<const C: usize>(e: &EdgeRow<'_>, o: &mut EdgeTerms<'_>) {
    let len = e.len;
    if len < 8 {
        for col in 0..len {
            block::<C, 1>(e, o, col);
        }
        return;
    }
    let mut col = 0;
    loop {
        let at = col.min(len - 8);
        block::<C, 8>(e, o, at);
        if at == len - 8 {
            break;
        }
        col += 8;
    }
}

#[inline(always)]
fn load<T: Copy + Default, const N: usize>(s: &[T], at: usize) -> [T; N] {
    let mut v = [T::default(); N];
    v.copy_from_slice(&s[at..at + N]);
    v
}

/// Node row cavities at columns `col..col + N`: `φ · m1 · m2 · m3` in f64 (inside its
/// range: see `grid_beliefs::node_row`), each column scaled by a power of two to a
/// largest entry in [1, 2), with the log of its scale.
#[inline(always)]
fn cavity<const C: usize, const N: usize>(
    phi: &[f64],
    m: [&[f32]; 3],
    w: usize,
    col: usize,
) -> ([[f64; N]; C], [f64; N]) {
    let mut q = [[0.0f64; N]; C];
    for (x, qx) in q.iter_mut().enumerate() {
        let at = x * w + col;
        let f = load::<f64, N>(phi, at);
        let (a, b, d) = (
            load::<f32, N>(m[0], at),
            load::<f32, N>(m[1], at),
            load::<f32, N>(m[2], at),
        );
        for j in 0..N {
            qx[j] = f[j] * a[j] as f64 * b[j] as f64 * d[j] as f64;
        }
    }
    // (Comparisons, not the NaN-aware `max`: the entries are products of positive
    // numbers, and the comparison vectorises.)
    let mut mx = q[0];
    for qx in &q[1..] {
        for j in 0..N {
            mx[j] = if qx[j] > mx[j] { qx[j] } else { mx[j] };
        }
    }
    let mut ln_scale = [0.0f64; N];
    for j in 0..N {
        let (s, l) = pow2_scale(mx[j]);
        ln_scale[j] = l;
        for qx in q.iter_mut() {
            qx[j] *= s;
        }
    }
    (q, ln_scale)
}

/// Edges `col..col + N` of the row.
#[inline(always)]
fn block<const C: usize, const N: usize>(e: &EdgeRow<'_>, o: &mut EdgeTerms<'_>, col: usize) {
    let (w, off) = (e.w, e.off);
    let (cv, lsv) = cavity::<C, N>(e.phi_v, e.cav_v, w, col);
    let (cu, lsu) = cavity::<C, N>(e.phi_u, e.cav_u, w, col + off);
    let (mut qv, mut qu) = ([[0.0f32; N]; C], [[0.0f32; N]; C]);
    for x in 0..C {
        for j in 0..N {
            qv[x][j] = cv[x][j] as f32;
            qu[x][j] = cu[x][j] as f32;
        }
        o.qv[x * w + col..x * w + col + N].copy_from_slice(&qv[x]);
        o.qu[x * w + col..x * w + col + N].copy_from_slice(&qu[x]);
    }
    // The joint's row and column sums, f32 accumulators (C terms each).
    let (mut rows, mut cols) = ([[0.0f32; N]; C], [[0.0f32; N]; C]);
    for s in 0..C {
        for d in 0..C {
            let t = load::<f32, N>(e.tabs, (s * C + d) * w + col);
            for j in 0..N {
                let p = qv[s][j] * t[j] * qu[d][j];
                rows[s][j] += p;
                cols[d][j] += p;
            }
        }
    }
    let mut z = [0.0f64; N];
    for rs in &rows {
        for j in 0..N {
            z[j] += rs[j] as f64;
        }
    }
    // The log-Z sums: `Σ_s p_s· ln m_{u→v}(s) + Σ_d p_·d ln m_{v→u}(d)` from the row and
    // column sums (a forbidden label's sum is 0 and adds nothing, whatever its log), and
    // the endpoints' beliefs `b ∝ cav · m` with their `Σ b ln m`.
    let mut acc = [0.0f64; N];
    let (mut bs_v, mut bs_u, mut bl_v, mut bl_u) = ([0.0f64; N], [0.0; N], [0.0; N], [0.0; N]);
    for x in 0..C {
        let m1 = load::<f32, N>(e.msg_v, x * w + col);
        let m2 = load::<f32, N>(e.msg_u, x * w + col + off);
        for j in 0..N {
            let (l1, l2) = (ln0_f32(m1[j]) as f64, ln0_f32(m2[j]) as f64);
            let (rs, cs) = (rows[x][j] as f64, cols[x][j] as f64);
            let (t1, t2) = (rs * l1, cs * l2);
            acc[j] += if rs > 0.0 { t1 } else { 0.0 };
            acc[j] += if cs > 0.0 { t2 } else { 0.0 };
            let (b1, b2) = (cv[x][j] * m1[j] as f64, cu[x][j] * m2[j] as f64);
            let (u1, u2) = (b1 * l1, b2 * l2);
            bs_v[j] += b1;
            bs_u[j] += b2;
            bl_v[j] += if b1 > 0.0 { u1 } else { 0.0 };
            bl_u[j] += if b2 > 0.0 { u2 } else { 0.0 };
        }
    }
    let lz_v = load::<f64, N>(e.lz_v, col);
    let lz_u = load::<f64, N>(e.lz_u, col + off);
    let shift = load::<f64, N>(e.shift, col);
    let (mut terms, mut inv) = ([0.0f64; N], [0.0f64; N]);
    for j in 0..N {
        let zj = z[j];
        let lnz = crate::kernels::logspace::ln_pos_f32(zj.max(TINY) as f32) as f64;
        inv[j] = if zj >= TINY && zj.is_finite() {
            1.0 / zj
        } else {
            0.0
        };
        // (Both sums are positive: the node pass found every node some allowed label.)
        let share = bl_v[j] / bs_v[j] + bl_u[j] / bs_u[j];
        terms[j] = shift[j] + lsv[j] + lsu[j] + lnz - lz_v[j] - lz_u[j] + acc[j] * inv[j] - share;
    }
    o.terms[col..col + N].copy_from_slice(&terms);
    o.inv[col..col + N].copy_from_slice(&inv);
    if !o.pairs.is_empty() {
        let cc = C * C;
        for j in 0..N {
            let sc = (inv[j] * o.scale) as f32;
            let row = &mut o.pairs[(col + j) * cc..(col + j + 1) * cc];
            for (k, p) in row.iter_mut().enumerate() {
                let (s, d) = (k / C, k % C);
                *p = qv[s][j] * e.tabs[k * w + col + j] * qu[d][j] * sc;
            }
        }
    }
}

/// The block in vector intrinsics, once for any width: [`lanes::F32s`] is a width's f32
/// lanes and their operations, [`lanes::F64s`] its f64 lanes. `avx` (eight edges) and
/// `avx512` (sixteen) implement them with their instructions, each operation the same
/// rounding in every lane, so both widths give the portable block's bits.
#[cfg(target_arch = "x86_64")]
mod lanes {
    use super::{EdgeRow, EdgeTerms, TINY};

    /// `N` f32 lanes. Every function needs the implementing width's CPU features (each is
    /// inlined into that width's `span`, which is compiled with them).
    pub(super) trait F32s: Copy {
        /// The f64 lanes of the same width.
        type D: F64s<F = Self>;
        unsafe fn zero() -> Self;
        /// # Safety
        /// `N` f32 readable at `p`.
        unsafe fn load(p: *const f32) -> Self;
        /// # Safety
        /// `N` f32 writable at `p`.
        unsafe fn store(self, p: *mut f32);
        unsafe fn mul(self, b: Self) -> Self;
        unsafe fn add(self, b: Self) -> Self;
        /// `logspace::ln_pos_f32`, lane-wise, the same operations in the same order.
        unsafe fn ln_pos(self) -> Self;
        /// `grid_beliefs::ln0_f32`, lane-wise (−inf at 0).
        unsafe fn ln0(self) -> Self;
        /// Entries `at..at + 8` of the pair rows of the `N` edges from `col` (`r[i]` holds
        /// entry `at + i` of each edge), transposed into the edge-major rows of `cc`.
        ///
        /// # Safety
        /// Rows `col..col + N` of `cc` entries writable at `pairs`; `at + 8 <= cc`.
        unsafe fn store_pairs(r: [Self; 8], pairs: *mut f32, col: usize, cc: usize, at: usize);
    }

    /// `N` f64 lanes (see [`F32s`]).
    pub(super) trait F64s: Copy {
        type F;
        unsafe fn splat(x: f64) -> Self;
        /// # Safety
        /// `N` f64 readable at `p`.
        unsafe fn load(p: *const f64) -> Self;
        /// # Safety
        /// `N` f64 writable at `p`.
        unsafe fn store(self, p: *mut f64);
        /// Widened from the f32 lanes.
        unsafe fn of(x: Self::F) -> Self;
        /// Rounded to the f32 lanes.
        unsafe fn to_f32(self) -> Self::F;
        unsafe fn mul(self, b: Self) -> Self;
        unsafe fn add(self, b: Self) -> Self;
        unsafe fn sub(self, b: Self) -> Self;
        unsafe fn div(self, b: Self) -> Self;
        /// `if self > b { self } else { b }`, lane-wise.
        unsafe fn max(self, b: Self) -> Self;
        /// `if self > 0 { x } else { 0 }`, lane-wise.
        unsafe fn pos_then(self, x: Self) -> Self;
        /// `grid_beliefs::pow2_scale`, lane-wise: `(2^-e, e ln 2)` for `m` in
        /// `[2^e, 2^(e+1))`, `(0, −inf)` for `m <= 0`.
        unsafe fn pow2_scale(self) -> (Self, Self);
        /// `1/self` where `TINY <= self < inf`, else 0.
        unsafe fn recip_in_range(self) -> Self;
    }

    /// `super::cavity` for `N` columns (`V`'s lanes).
    ///
    /// # Safety
    /// `V`'s CPU features; `C` label rows of stride `w` readable from `col` to
    /// `col + N` in each.
    #[inline(always)]
    unsafe fn cavity<V: F32s, const C: usize>(
        phi: &[f64],
        m: [&[f32]; 3],
        w: usize,
        col: usize,
    ) -> ([V::D; C], V::D) {
        // SAFETY: the caller's bounds and features.
        unsafe {
            let mut q = [V::D::splat(0.0); C];
            for (x, qx) in q.iter_mut().enumerate() {
                let at = x * w + col;
                let f = V::D::load(phi.as_ptr().add(at));
                let a = V::D::of(V::load(m[0].as_ptr().add(at)));
                let b = V::D::of(V::load(m[1].as_ptr().add(at)));
                let d = V::D::of(V::load(m[2].as_ptr().add(at)));
                *qx = f.mul(a).mul(b).mul(d);
            }
            let mut mx = q[0];
            for qx in &q[1..] {
                mx = qx.max(mx);
            }
            let (s, l) = mx.pow2_scale();
            for qx in q.iter_mut() {
                *qx = qx.mul(s);
            }
            (q, l)
        }
    }

    /// `super::block` for `N` edges `col..col + N` (`V`'s lanes).
    ///
    /// # Safety
    /// `V`'s CPU features; the bounds of [`super::check`] hold and `col + N <= len`.
    #[inline(always)]
    pub(super) unsafe fn block<V: F32s, const C: usize>(
        e: &EdgeRow<'_>,
        o: &mut EdgeTerms<'_>,
        col: usize,
    ) {
        let (w, off) = (e.w, e.off);
        // SAFETY: every load and store below stays in bounds: label rows
        // `x·w + col..+N` (and `+ off` for u's) lie within `C·w` entries since
        // `col + off + N <= len + off <= w`; table rows `k·w + col + N <= (C² − 1)·w +
        // len`; per-edge rows end by `len`; pair rows `(col + N − 1)·C² + C² <= len·C²`.
        unsafe {
            let (cv, lsv) = cavity::<V, C>(e.phi_v, e.cav_v, w, col);
            let (cu, lsu) = cavity::<V, C>(e.phi_u, e.cav_u, w, col + off);
            let mut qv = [V::zero(); C];
            let mut qu = [V::zero(); C];
            for x in 0..C {
                qv[x] = cv[x].to_f32();
                qu[x] = cu[x].to_f32();
                qv[x].store(o.qv.as_mut_ptr().add(x * w + col));
                qu[x].store(o.qu.as_mut_ptr().add(x * w + col));
            }
            let mut rows = [V::zero(); C];
            let mut cols = [V::zero(); C];
            // The joint's entries, kept for the pair rows.
            let mut joint = [[V::zero(); C]; C];
            for s in 0..C {
                for d in 0..C {
                    let t = V::load(e.tabs.as_ptr().add((s * C + d) * w + col));
                    let p = qv[s].mul(t).mul(qu[d]);
                    joint[s][d] = p;
                    rows[s] = rows[s].add(p);
                    cols[d] = cols[d].add(p);
                }
            }
            let mut z = V::D::splat(0.0);
            for &rs in &rows {
                z = z.add(V::D::of(rs));
            }
            let zero = V::D::splat(0.0);
            let (mut acc, mut bs_v, mut bs_u, mut bl_v, mut bl_u) = (zero, zero, zero, zero, zero);
            for x in 0..C {
                let m1 = V::load(e.msg_v.as_ptr().add(x * w + col));
                let m2 = V::load(e.msg_u.as_ptr().add(x * w + col + off));
                let (l1, l2) = (V::D::of(m1.ln0()), V::D::of(m2.ln0()));
                let (rs, cs) = (V::D::of(rows[x]), V::D::of(cols[x]));
                acc = acc.add(rs.pos_then(rs.mul(l1)));
                acc = acc.add(cs.pos_then(cs.mul(l2)));
                let (b1, b2) = (cv[x].mul(V::D::of(m1)), cu[x].mul(V::D::of(m2)));
                bs_v = bs_v.add(b1);
                bs_u = bs_u.add(b2);
                bl_v = bl_v.add(b1.pos_then(b1.mul(l1)));
                bl_u = bl_u.add(b2.pos_then(b2.mul(l2)));
            }
            let lz_v = V::D::load(e.lz_v.as_ptr().add(col));
            let lz_u = V::D::load(e.lz_u.as_ptr().add(col + off));
            let shift = V::D::load(e.shift.as_ptr().add(col));
            let lnz = V::D::of(z.max(V::D::splat(TINY)).to_f32().ln_pos());
            let inv = z.recip_in_range();
            let share = bl_v.div(bs_v).add(bl_u.div(bs_u));
            let terms = shift
                .add(lsv)
                .add(lsu)
                .add(lnz)
                .sub(lz_v)
                .sub(lz_u)
                .add(acc.mul(inv))
                .sub(share);
            terms.store(o.terms.as_mut_ptr().add(col));
            inv.store(o.inv.as_mut_ptr().add(col));
            if !o.pairs.is_empty() {
                // Scaled, then eight entries of the edges at a time transposed into the
                // edge-major rows (the last eight of a row moved back to end at its last
                // entry, as `layout::pair_rows_f32` does: the same values, written twice).
                let cc = C * C;
                let sc = inv.mul(V::D::splat(o.scale)).to_f32();
                let mut k0 = 0;
                loop {
                    let at = k0.min(cc - 8);
                    let mut r = [V::zero(); 8];
                    for (i, v) in r.iter_mut().enumerate() {
                        let k = at + i;
                        *v = joint[k / C][k % C].mul(sc);
                    }
                    V::store_pairs(r, o.pairs.as_mut_ptr(), col, cc, at);
                    if at == cc - 8 {
                        break;
                    }
                    k0 += 8;
                }
            }
        }
    }
}

/// The block on eight edges in AVX2 intrinsics (a `__m256` and two `__m256d`).
#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;

    use super::lanes::{block, F32s, F64s};
    use super::{EdgeRow, EdgeTerms, TINY};
    use crate::kernels::layout::avx::t8;

    /// Eight f64 lanes (columns 0–3, 4–7).
    #[derive(Clone, Copy)]
    pub(super) struct D8(__m256d, __m256d);

    impl F32s for __m256 {
        type D = D8;

        #[inline(always)]
        unsafe fn zero() -> __m256 {
            _mm256_setzero_ps()
        }

        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            // SAFETY: the caller's contract.
            unsafe { _mm256_loadu_ps(p) }
        }

        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            // SAFETY: the caller's contract.
            unsafe { _mm256_storeu_ps(p, self) }
        }

        #[inline(always)]
        unsafe fn mul(self, b: __m256) -> __m256 {
            _mm256_mul_ps(self, b)
        }

        #[inline(always)]
        unsafe fn add(self, b: __m256) -> __m256 {
            _mm256_add_ps(self, b)
        }

        #[inline(always)]
        unsafe fn ln_pos(self) -> __m256 {
            let bits = _mm256_castps_si256(self);
            let k = _mm256_srai_epi32::<23>(_mm256_sub_epi32(bits, _mm256_set1_epi32(0x3f35_04f3)));
            let m = _mm256_castsi256_ps(_mm256_sub_epi32(bits, _mm256_slli_epi32::<23>(k)));
            let f = _mm256_sub_ps(m, _mm256_set1_ps(1.0));
            let s = _mm256_div_ps(f, _mm256_add_ps(_mm256_set1_ps(2.0), f));
            let z = _mm256_mul_ps(s, s);
            let mut p = _mm256_set1_ps(1.0 / 9.0);
            for c in [1.0 / 7.0, 1.0 / 5.0, 1.0 / 3.0, 1.0] {
                p = _mm256_add_ps(_mm256_mul_ps(p, z), _mm256_set1_ps(c));
            }
            _mm256_add_ps(
                _mm256_mul_ps(
                    _mm256_cvtepi32_ps(k),
                    _mm256_set1_ps(std::f32::consts::LN_2),
                ),
                _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(2.0), s), p),
            )
        }

        #[inline(always)]
        unsafe fn ln0(self) -> __m256 {
            // SAFETY: the caller's features.
            let l = unsafe { _mm256_max_ps(self, _mm256_set1_ps(f32::MIN_POSITIVE)).ln_pos() };
            let pos = _mm256_cmp_ps::<_CMP_GT_OQ>(self, _mm256_setzero_ps());
            _mm256_blendv_ps(_mm256_set1_ps(f32::NEG_INFINITY), l, pos)
        }

        #[inline(always)]
        unsafe fn store_pairs(r: [__m256; 8], pairs: *mut f32, col: usize, cc: usize, at: usize) {
            for (j, v) in t8(r).into_iter().enumerate() {
                // SAFETY: the caller's contract.
                unsafe { _mm256_storeu_ps(pairs.add((col + j) * cc + at), v) };
            }
        }
    }

    impl F64s for D8 {
        type F = __m256;

        #[inline(always)]
        unsafe fn splat(x: f64) -> D8 {
            D8(_mm256_set1_pd(x), _mm256_set1_pd(x))
        }

        #[inline(always)]
        unsafe fn load(p: *const f64) -> D8 {
            // SAFETY: the caller's contract.
            unsafe { D8(_mm256_loadu_pd(p), _mm256_loadu_pd(p.add(4))) }
        }

        #[inline(always)]
        unsafe fn store(self, p: *mut f64) {
            // SAFETY: the caller's contract.
            unsafe {
                _mm256_storeu_pd(p, self.0);
                _mm256_storeu_pd(p.add(4), self.1);
            }
        }

        #[inline(always)]
        unsafe fn of(x: __m256) -> D8 {
            D8(
                _mm256_cvtps_pd(_mm256_castps256_ps128(x)),
                _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(x)),
            )
        }

        #[inline(always)]
        unsafe fn to_f32(self) -> __m256 {
            _mm256_set_m128(_mm256_cvtpd_ps(self.1), _mm256_cvtpd_ps(self.0))
        }

        #[inline(always)]
        unsafe fn mul(self, b: D8) -> D8 {
            D8(_mm256_mul_pd(self.0, b.0), _mm256_mul_pd(self.1, b.1))
        }

        #[inline(always)]
        unsafe fn add(self, b: D8) -> D8 {
            D8(_mm256_add_pd(self.0, b.0), _mm256_add_pd(self.1, b.1))
        }

        #[inline(always)]
        unsafe fn sub(self, b: D8) -> D8 {
            D8(_mm256_sub_pd(self.0, b.0), _mm256_sub_pd(self.1, b.1))
        }

        #[inline(always)]
        unsafe fn div(self, b: D8) -> D8 {
            D8(_mm256_div_pd(self.0, b.0), _mm256_div_pd(self.1, b.1))
        }

        #[inline(always)]
        unsafe fn max(self, b: D8) -> D8 {
            D8(_mm256_max_pd(self.0, b.0), _mm256_max_pd(self.1, b.1))
        }

        #[inline(always)]
        unsafe fn pos_then(self, x: D8) -> D8 {
            let z = _mm256_setzero_pd();
            D8(
                _mm256_and_pd(_mm256_cmp_pd::<_CMP_GT_OQ>(self.0, z), x.0),
                _mm256_and_pd(_mm256_cmp_pd::<_CMP_GT_OQ>(self.1, z), x.1),
            )
        }

        #[inline(always)]
        unsafe fn pow2_scale(self) -> (D8, D8) {
            // SAFETY: the caller's features.
            let ((s0, l0), (s1, l1)) = unsafe { (pow2_scale4(self.0), pow2_scale4(self.1)) };
            (D8(s0, s1), D8(l0, l1))
        }

        #[inline(always)]
        unsafe fn recip_in_range(self) -> D8 {
            // SAFETY: the caller's features.
            unsafe {
                let r = D8::splat(1.0).div(self);
                D8(
                    _mm256_and_pd(in_range4(self.0), r.0),
                    _mm256_and_pd(in_range4(self.1), r.1),
                )
            }
        }
    }

    /// [`F64s::pow2_scale`] for four lanes. (Functions, not closures, here: a closure is
    /// compiled without its caller's AVX2 and would call each intrinsic out of line.)
    #[inline(always)]
    unsafe fn pow2_scale4(m: __m256d) -> (__m256d, __m256d) {
        // The biased exponent, clamped to [1, 2045] (32-bit compares: it and the bounds'
        // upper halves are 0).
        let e = _mm256_and_si256(
            _mm256_srli_epi64::<52>(_mm256_castpd_si256(m)),
            _mm256_set1_epi64x(0x7ff),
        );
        let e = _mm256_min_epi32(
            _mm256_max_epi32(e, _mm256_set1_epi64x(1)),
            _mm256_set1_epi64x(2045),
        );
        let inv = _mm256_castsi256_pd(_mm256_slli_epi64::<52>(_mm256_sub_epi64(
            _mm256_set1_epi64x(2046),
            e,
        )));
        // e − 1023 as f64 (exact): e in the low mantissa bits of 2^52, less 2^52.
        let two52 = _mm256_set1_pd(4_503_599_627_370_496.0);
        let ef = _mm256_sub_pd(
            _mm256_castsi256_pd(_mm256_or_si256(_mm256_castpd_si256(two52), e)),
            two52,
        );
        let l = _mm256_mul_pd(
            _mm256_sub_pd(ef, _mm256_set1_pd(1023.0)),
            _mm256_set1_pd(std::f64::consts::LN_2),
        );
        let pos = _mm256_cmp_pd::<_CMP_GT_OQ>(m, _mm256_setzero_pd());
        (
            _mm256_and_pd(pos, inv),
            _mm256_blendv_pd(_mm256_set1_pd(f64::NEG_INFINITY), l, pos),
        )
    }

    /// All ones where `TINY <= a < inf`.
    #[inline(always)]
    unsafe fn in_range4(a: __m256d) -> __m256d {
        _mm256_and_pd(
            _mm256_cmp_pd::<_CMP_GE_OQ>(a, _mm256_set1_pd(TINY)),
            _mm256_cmp_pd::<_CMP_LT_OQ>(a, _mm256_set1_pd(f64::INFINITY)),
        )
    }

    /// See [`super::span`].
    ///
    /// # Safety
    /// The CPU has AVX2; the bounds of [`super::check`] hold.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn span<const C: usize>(e: &EdgeRow<'_>, o: &mut EdgeTerms<'_>) {
        let len = e.len;
        if len < 8 {
            for col in 0..len {
                super::block::<C, 1>(e, o, col);
            }
            return;
        }
        let mut col = 0;
        loop {
            let at = col.min(len - 8);
            // SAFETY: the caller's contract; `at + 8 <= len`.
            unsafe { block::<__m256, C>(e, o, at) };
            if at == len - 8 {
                break;
            }
            col += 8;
        }
    }
}

/// The block on sixteen edges for CPUs with AVX-512F/DQ (a `__m512` and two `__m512d`):
/// every operation the eight-lane block's, masks in place of the and-with-compare steps.
/// Rows shorter than sixteen take the AVX2 span.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::lanes::{block, F32s, F64s};
    use super::{EdgeRow, EdgeTerms, TINY};
    use crate::kernels::layout::avx::t8;

    /// Sixteen f64 lanes (edges 0–7, 8–15).
    #[derive(Clone, Copy)]
    pub(super) struct D16(__m512d, __m512d);

    impl F32s for __m512 {
        type D = D16;

        #[inline(always)]
        unsafe fn zero() -> __m512 {
            _mm512_setzero_ps()
        }

        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            // SAFETY: the caller's contract.
            unsafe { _mm512_loadu_ps(p) }
        }

        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            // SAFETY: the caller's contract.
            unsafe { _mm512_storeu_ps(p, self) }
        }

        #[inline(always)]
        unsafe fn mul(self, b: __m512) -> __m512 {
            _mm512_mul_ps(self, b)
        }

        #[inline(always)]
        unsafe fn add(self, b: __m512) -> __m512 {
            _mm512_add_ps(self, b)
        }

        #[inline(always)]
        unsafe fn ln_pos(self) -> __m512 {
            let bits = _mm512_castps_si512(self);
            let k = _mm512_srai_epi32::<23>(_mm512_sub_epi32(bits, _mm512_set1_epi32(0x3f35_04f3)));
            let m = _mm512_castsi512_ps(_mm512_sub_epi32(bits, _mm512_slli_epi32::<23>(k)));
            let f = _mm512_sub_ps(m, _mm512_set1_ps(1.0));
            let s = _mm512_div_ps(f, _mm512_add_ps(_mm512_set1_ps(2.0), f));
            let z = _mm512_mul_ps(s, s);
            let mut p = _mm512_set1_ps(1.0 / 9.0);
            for c in [1.0 / 7.0, 1.0 / 5.0, 1.0 / 3.0, 1.0] {
                p = _mm512_add_ps(_mm512_mul_ps(p, z), _mm512_set1_ps(c));
            }
            _mm512_add_ps(
                _mm512_mul_ps(
                    _mm512_cvtepi32_ps(k),
                    _mm512_set1_ps(std::f32::consts::LN_2),
                ),
                _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(2.0), s), p),
            )
        }

        #[inline(always)]
        unsafe fn ln0(self) -> __m512 {
            // SAFETY: the caller's features.
            let l = unsafe { _mm512_max_ps(self, _mm512_set1_ps(f32::MIN_POSITIVE)).ln_pos() };
            let pos = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(self, _mm512_setzero_ps());
            _mm512_mask_blend_ps(pos, _mm512_set1_ps(f32::NEG_INFINITY), l)
        }

        #[inline(always)]
        unsafe fn store_pairs(r: [__m512; 8], pairs: *mut f32, col: usize, cc: usize, at: usize) {
            // Each half of the edges transposed 8 × 8 into its rows. (Loops, not closures:
            // a closure is compiled without the caller's AVX-512.)
            let (mut lo, mut hi) = ([_mm256_setzero_ps(); 8], [_mm256_setzero_ps(); 8]);
            for i in 0..8 {
                lo[i] = _mm512_castps512_ps256(r[i]);
                hi[i] = _mm512_extractf32x8_ps::<1>(r[i]);
            }
            for (half, r) in [lo, hi].into_iter().enumerate() {
                for (j, v) in t8(r).into_iter().enumerate() {
                    // SAFETY: the caller's contract.
                    unsafe { _mm256_storeu_ps(pairs.add((col + 8 * half + j) * cc + at), v) };
                }
            }
        }
    }

    impl F64s for D16 {
        type F = __m512;

        #[inline(always)]
        unsafe fn splat(x: f64) -> D16 {
            D16(_mm512_set1_pd(x), _mm512_set1_pd(x))
        }

        #[inline(always)]
        unsafe fn load(p: *const f64) -> D16 {
            // SAFETY: the caller's contract.
            unsafe { D16(_mm512_loadu_pd(p), _mm512_loadu_pd(p.add(8))) }
        }

        #[inline(always)]
        unsafe fn store(self, p: *mut f64) {
            // SAFETY: the caller's contract.
            unsafe {
                _mm512_storeu_pd(p, self.0);
                _mm512_storeu_pd(p.add(8), self.1);
            }
        }

        #[inline(always)]
        unsafe fn of(x: __m512) -> D16 {
            D16(
                _mm512_cvtps_pd(_mm512_castps512_ps256(x)),
                _mm512_cvtps_pd(_mm512_extractf32x8_ps::<1>(x)),
            )
        }

        #[inline(always)]
        unsafe fn to_f32(self) -> __m512 {
            _mm512_insertf32x8::<1>(
                _mm512_castps256_ps512(_mm512_cvtpd_ps(self.0)),
                _mm512_cvtpd_ps(self.1),
            )
        }

        #[inline(always)]
        unsafe fn mul(self, b: D16) -> D16 {
            D16(_mm512_mul_pd(self.0, b.0), _mm512_mul_pd(self.1, b.1))
        }

        #[inline(always)]
        unsafe fn add(self, b: D16) -> D16 {
            D16(_mm512_add_pd(self.0, b.0), _mm512_add_pd(self.1, b.1))
        }

        #[inline(always)]
        unsafe fn sub(self, b: D16) -> D16 {
            D16(_mm512_sub_pd(self.0, b.0), _mm512_sub_pd(self.1, b.1))
        }

        #[inline(always)]
        unsafe fn div(self, b: D16) -> D16 {
            D16(_mm512_div_pd(self.0, b.0), _mm512_div_pd(self.1, b.1))
        }

        #[inline(always)]
        unsafe fn max(self, b: D16) -> D16 {
            D16(_mm512_max_pd(self.0, b.0), _mm512_max_pd(self.1, b.1))
        }

        #[inline(always)]
        unsafe fn pos_then(self, x: D16) -> D16 {
            let z = _mm512_setzero_pd();
            D16(
                _mm512_maskz_mov_pd(_mm512_cmp_pd_mask::<_CMP_GT_OQ>(self.0, z), x.0),
                _mm512_maskz_mov_pd(_mm512_cmp_pd_mask::<_CMP_GT_OQ>(self.1, z), x.1),
            )
        }

        #[inline(always)]
        unsafe fn pow2_scale(self) -> (D16, D16) {
            // SAFETY: the caller's features.
            let ((s0, l0), (s1, l1)) = unsafe { (pow2_scale8(self.0), pow2_scale8(self.1)) };
            (D16(s0, s1), D16(l0, l1))
        }

        #[inline(always)]
        unsafe fn recip_in_range(self) -> D16 {
            // SAFETY: the caller's features.
            unsafe {
                let r = D16::splat(1.0).div(self);
                D16(
                    _mm512_maskz_mov_pd(in_range8(self.0), r.0),
                    _mm512_maskz_mov_pd(in_range8(self.1), r.1),
                )
            }
        }
    }

    /// The eight-lane block's `pow2_scale4` on eight f64 lanes (64-bit clamps).
    #[inline(always)]
    unsafe fn pow2_scale8(m: __m512d) -> (__m512d, __m512d) {
        let e = _mm512_and_si512(
            _mm512_srli_epi64::<52>(_mm512_castpd_si512(m)),
            _mm512_set1_epi64(0x7ff),
        );
        let e = _mm512_min_epi64(
            _mm512_max_epi64(e, _mm512_set1_epi64(1)),
            _mm512_set1_epi64(2045),
        );
        let inv = _mm512_castsi512_pd(_mm512_slli_epi64::<52>(_mm512_sub_epi64(
            _mm512_set1_epi64(2046),
            e,
        )));
        let two52 = _mm512_set1_pd(4_503_599_627_370_496.0);
        let ef = _mm512_sub_pd(
            _mm512_castsi512_pd(_mm512_or_si512(_mm512_castpd_si512(two52), e)),
            two52,
        );
        let l = _mm512_mul_pd(
            _mm512_sub_pd(ef, _mm512_set1_pd(1023.0)),
            _mm512_set1_pd(std::f64::consts::LN_2),
        );
        let pos = _mm512_cmp_pd_mask::<_CMP_GT_OQ>(m, _mm512_setzero_pd());
        (
            _mm512_maskz_mov_pd(pos, inv),
            _mm512_mask_blend_pd(pos, _mm512_set1_pd(f64::NEG_INFINITY), l),
        )
    }

    /// Set where `TINY <= a < inf`.
    #[inline(always)]
    unsafe fn in_range8(a: __m512d) -> __mmask8 {
        _mm512_cmp_pd_mask::<_CMP_GE_OQ>(a, _mm512_set1_pd(TINY))
            & _mm512_cmp_pd_mask::<_CMP_LT_OQ>(a, _mm512_set1_pd(f64::INFINITY))
    }

    /// See [`super::span`]: sixteen edges a block, the last moved back to end at the last
    /// edge; a row shorter than sixteen takes the AVX2 span.
    ///
    /// # Safety
    /// The CPU has AVX-512F/DQ and AVX2; the bounds of [`super::check`] hold.
    #[target_feature(enable = "avx512f,avx512dq,avx2")]
    pub(super) unsafe fn span<const C: usize>(e: &EdgeRow<'_>, o: &mut EdgeTerms<'_>) {
        let len = e.len;
        if len < 16 {
            // SAFETY: the CPU has AVX2; the caller's bounds.
            unsafe { super::avx::span::<C>(e, o) };
            return;
        }
        let mut col = 0;
        loop {
            let at = col.min(len - 16);
            // SAFETY: the caller's contract; `at + 16 <= len`.
            unsafe { block::<__m512, C>(e, o, at) };
            if at == len - 16 {
                break;
            }
            col += 16;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::rng::Rng;

    /// The AVX2 block, the AVX-512 one (where the CPU has it) and the portable one give the
    /// same bits on every output (the pair rows at C > 2), including
    /// zero messages and potentials (forbidden labels) and wide-ranging cavities, at every
    /// C and for both edge orientations. (Against the row passes: `grid_beliefs`' test.)
    #[test]
    fn avx512_avx2_and_portable_blocks_agree_bit_for_bit() {
        if !crate::kernels::batch::has_avx2() {
            return;
        }
        let mut rng = Rng::stream(9, &[]);
        let w = 27;
        for c in 2..=MAX_C {
            let mut draw32 = |n: usize, lo: f64, hi: f64| -> Vec<f32> {
                (0..n)
                    .map(|_| (lo + (hi - lo) * rng.uniform()).exp() as f32)
                    .collect()
            };
            let (mut phi_v, phi_u) = (draw32(c * w, -60.0, 0.0), draw32(c * w, -60.0, 0.0));
            phi_v[3] = 0.0;
            let (phi_v, phi_u): (Vec<f64>, Vec<f64>) = (
                phi_v.iter().map(|&x| x as f64).collect(),
                phi_u.iter().map(|&x| x as f64).collect(),
            );
            let m: Vec<Vec<f32>> = (0..8).map(|_| draw32(c * w, -80.0, 0.0)).collect();
            let mut tabs = draw32(c * c * w, -30.0, 0.0);
            tabs[w + 5] = 0.0;
            let lz: Vec<f64> = (0..2 * w).map(|i| (i as f64).sin() * 40.0).collect();
            let shift: Vec<f64> = (0..w).map(|i| (i as f64).cos() * 9.0).collect();
            for (len, off) in [(w - 1, 1), (w, 0), (16, 0), (20, 7), (12, 3)] {
                let e = EdgeRow {
                    c,
                    w,
                    len,
                    off,
                    phi_v: &phi_v,
                    phi_u: &phi_u,
                    cav_v: [&m[0], &m[1], &m[2]],
                    cav_u: [&m[3], &m[4], &m[5]],
                    msg_v: &m[6],
                    msg_u: &m[7],
                    tabs: &tabs,
                    lz_v: &lz[..w],
                    lz_u: &lz[w..],
                    shift: &shift,
                };
                // 0: portable, 1: AVX2, 2: AVX-512.
                let run = |path: u8| {
                    let (mut qv, mut qu) = (vec![f32::NAN; c * w], vec![f32::NAN; c * w]);
                    let (mut terms, mut inv) = (vec![f64::NAN; len], vec![f64::NAN; len]);
                    let mut pairs = vec![f32::NAN; if c > 2 { len * c * c } else { 0 }];
                    let mut o = EdgeTerms {
                        qv: &mut qv,
                        qu: &mut qu,
                        terms: &mut terms,
                        inv: &mut inv,
                        pairs: &mut pairs,
                        scale: 0.75,
                    };
                    check(&e, &o);
                    match path {
                        // SAFETY: the CPU has AVX2 (checked above); `check` passed.
                        1 => unsafe { for_c!(c, avx_span, &e, &mut o) },
                        // SAFETY: the CPU has AVX-512 (checked by the caller); `check`
                        // passed.
                        2 => unsafe { for_c!(c, avx512_span, &e, &mut o) },
                        _ => for_c!(c, span, &e, &mut o),
                    }
                    (qv, qu, terms, inv, pairs)
                };
                let b = run(0);
                let wide = crate::kernels::batch::has_avx512();
                for path in [1u8, 2].into_iter().filter(|&p| p == 1 || wide) {
                    let a = run(path);
                    let at = format!("path {path}, C {c}, len {len}, off {off}");
                    let b32 = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    let b64 = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(b32(&a.0), b32(&b.0), "{at}");
                    assert_eq!(b32(&a.1), b32(&b.1), "{at}");
                    assert_eq!(b64(&a.2), b64(&b.2), "{at}");
                    assert_eq!(b64(&a.3), b64(&b.3), "{at}");
                    assert_eq!(b32(&a.4), b32(&b.4), "{at}");
                    assert!(a.4.iter().all(|p| p.is_finite()), "{at}");
                    // Every edge was written, with a finite term.
                    assert!(a.2.iter().all(|t| t.is_finite()), "{at}");
                    assert!(a.3.iter().all(|&v| v > 0.0 && v.is_finite()), "{at}");
                }
            }
        }
    }
}
