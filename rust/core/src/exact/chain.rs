//! Linear-chain CRF loss and gradients, batch-major: the shape tagging users train.
//!
//! With one transition table shared by every edge and every item, the forward–backward
//! recursions of a whole batch move in lockstep: at position `t` the messages of all items
//! form a `(B, C)` matrix and one step is a matrix product with the `(C, C)` table. The
//! per-item kernel (`sumproduct`) does those as `B` vector–matrix products, each re-reading
//! the table, plus `2C` exponentials and logarithms per message; here each step is one
//! GEMM (`matrixmultiply`) and one rescaling, and the table gradient
//! `Σ_{b,t} pair marginal = exp(θ) ⊙ (Âᵀ G)` is one more GEMM over all positions.
//!
//! Scaled probability domain (the HMM "scaled forward" algorithm): `α_t = normalise((α_{t-1}
//! E) ⊙ φ_t)` with `E = exp(θ − max θ)` and `φ_t = exp(s_n[t] − max)`, summing the logs of
//! the normalisers into log Z in f64. Why that is exact up to rounding: an entry that
//! underflows weighs less than `e^-708` (f64) or `e^-87` (f32) relative to the largest
//! entry of its row, and with no forbidden transition every label can be reached from that
//! largest entry at a relative cost of at most `e^span(θ)`; so dropping it changes any later
//! quantity by less than `e^{-708 + 2 span}` relatively. The path is therefore taken only
//! for tables without −inf entries and with span at most `SPAN` (f64) or `SPAN_F32` (f32
//! products, for float32 models); −inf node scores are exact zeros. Anything else runs
//! the per-item log-domain kernel.

use rayon::prelude::*;

use crate::error::Result;
use crate::inference::LossGrad;
use crate::kernels::logspace::{exp, exp_nonpos_f32};
use crate::kernels::real::Real;
use crate::model::scores::Problem;

/// Widest finite span of the table for f64 products (`e^{-708 + 600}` is negligible).
pub(crate) const SPAN: f64 = 300.0;
/// Widest span for float32 products (`e^{-87 + 60}` ≈ 2e-12, below f32 rounding).
pub(crate) const SPAN_F32: f64 = 30.0;
/// Items per chunk: a GEMM's row count, and a unit of parallel work (fixed, so results
/// do not depend on the number of threads).
const CHUNK: usize = 32;
/// Smallest batch worth the batch-major kernel (below it the GEMMs are vector products).
pub const MIN_BATCH: usize = 8;

/// The float type of the products: f32 for float32 models when the table allows.
pub(crate) trait Gemm:
    Copy
    + Send
    + Sync
    + Default
    + PartialOrd
    + 'static
    + std::ops::Add<Output = Self>
    + std::ops::Mul<Output = Self>
{
    /// Smallest positive normal value, as f64.
    const MIN_NORMAL: f64;
    fn of(x: f64) -> Self;
    /// `e^x` for `x <= 0` at this type's precision (0 below its normal range).
    fn exp_nonpos(x: f64) -> Self;
    fn f(self) -> f64;
    /// `c = alpha a b + beta c` on strided matrices (see `matrixmultiply`).
    ///
    /// # Safety
    /// The pointers and strides describe valid `m x k`, `k x n` and `m x n` matrices.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    );
}

macro_rules! gemm_impl {
    ($t:ty, $f:path, $exp:expr) => {
        impl Gemm for $t {
            const MIN_NORMAL: f64 = <$t>::MIN_POSITIVE as f64;
            #[inline(always)]
            fn exp_nonpos(x: f64) -> Self {
                $exp(x)
            }
            #[inline(always)]
            fn of(x: f64) -> Self {
                x as $t
            }
            #[inline(always)]
            fn f(self) -> f64 {
                self as f64
            }
            unsafe fn gemm(
                m: usize,
                k: usize,
                n: usize,
                a: *const Self,
                rsa: isize,
                csa: isize,
                b: *const Self,
                rsb: isize,
                csb: isize,
                beta: Self,
                c: *mut Self,
                rsc: isize,
                csc: isize,
            ) {
                // SAFETY: forwarded from the caller.
                unsafe { $f(m, k, n, 1.0, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) }
            }
        }
    };
}
gemm_impl!(f32, matrixmultiply::sgemm, |x: f64| exp_nonpos_f32(
    x as f32
));
gemm_impl!(f64, matrixmultiply::dgemm, exp);

/// Whether `pb` is a batch of chains (Graph.chain) with one table shared by every edge and
/// item, per-item node scores and gold labels: the shape this kernel serves.
fn applies<T: Real>(pb: &Problem<'_, T>) -> bool {
    pb.graph.is_chain()
        && pb.graph.num_nodes() >= 2
        && pb.batch >= MIN_BATCH
        && pb.node.batch == pb.batch
        && pb.edge.edges == 1
        && pb.edge.batch == 1
        && pb.edge.weight.is_none()
}

/// Loss and gradients of a batch of chains sharing one transition table (see the module
/// doc), or `None` when this kernel does not apply (the caller runs the per-item one).
/// Labels must be checked already.
pub fn loss_and_grad<T: Real>(
    pb: &Problem<'_, T>,
    y: &[i64],
    weights: Option<&[f64]>,
) -> Option<Result<LossGrad<T>>> {
    if !applies(pb) {
        return None;
    }
    let raw: Vec<f64> = pb.edge.stored_item(0).iter().map(|x| x.to_f64()).collect();
    let (mut hi, mut lo) = (f64::NEG_INFINITY, f64::INFINITY);
    for &x in &raw {
        hi = hi.max(x);
        lo = lo.min(x);
    }
    // A forbidden transition (lo = −inf) or a wide table: the log-domain kernel is exact.
    if lo == f64::NEG_INFINITY || hi - lo > SPAN {
        return None;
    }
    let tab: Vec<f64> = raw.iter().map(|&x| exp(x - hi)).collect();
    let low = std::mem::size_of::<T>() == 4 && hi - lo <= SPAN_F32;
    if low {
        run::<T, f32>(pb, y, weights, &raw, &tab, hi)
    } else {
        run::<T, f64>(pb, y, weights, &raw, &tab, hi)
    }
}

/// What one chunk of items produces.
struct Part {
    /// Σ over the chunk's edges of the weighted `Â ⊗ G` (`C x C`, before the table factor).
    outer: Vec<f64>,
    /// Weighted gold pair counts (`C x C`).
    gold: Vec<f64>,
}

fn run<T: Real, F: Gemm>(
    pb: &Problem<'_, T>,
    y: &[i64],
    weights: Option<&[f64]>,
    raw: &[f64],
    tab: &[f64],
    tmax: f64,
) -> Option<Result<LossGrad<T>>> {
    let (n, c, bsz) = (pb.graph.num_nodes(), pb.classes(), pb.batch);
    let cc = c * c;
    let e_tab: Vec<F> = tab.iter().map(|&x| F::of(x)).collect();
    let mut loss = vec![T::from_f64(0.0); bsz];
    let mut gn = vec![T::from_f64(0.0); bsz * n * c];
    let parts: Vec<Option<Part>> = loss
        .par_chunks_mut(CHUNK)
        .zip(gn.par_chunks_mut(CHUNK * n * c))
        .enumerate()
        .map(|(k, (loss, gn))| {
            let items = k * CHUNK..(k * CHUNK + loss.len());
            chunk::<T, F>(pb, y, weights, raw, &e_tab, tmax, items, loss, gn)
        })
        .collect();
    // An infeasible item (every labelling forbidden): the per-item kernel reports it.
    let parts: Vec<Part> = parts.into_iter().collect::<Option<_>>()?;
    let mut outer = vec![0.0; cc];
    let mut gold = vec![0.0; cc];
    for p in &parts {
        outer.iter_mut().zip(&p.outer).for_each(|(o, x)| *o += x);
        gold.iter_mut().zip(&p.gold).for_each(|(o, x)| *o += x);
    }
    let grad_edge = (0..cc)
        .map(|k| T::from_f64(tab[k] * outer[k] - gold[k]))
        .collect();
    Some(Ok(LossGrad {
        loss,
        grad_node: gn,
        grad_edge,
        grad_weight: None,
        iterations: vec![1; bsz],
        converged: vec![true; bsz],
        max_change: vec![0.0; bsz],
    }))
}

/// `Σ_k f(k)` over `0..len` with four partial sums (a fixed order, so deterministic):
/// the rows here are short and a single running sum is a chain of dependent additions.
#[inline(always)]
fn sum4(len: usize, f: impl Fn(usize) -> f64) -> f64 {
    let mut acc = [0.0f64; 4];
    let full = len / 4 * 4;
    for k in (0..full).step_by(4) {
        for (j, a) in acc.iter_mut().enumerate() {
            *a += f(k + j);
        }
    }
    let tail: f64 = (full..len).map(&f).sum();
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

crate::simd_dispatch! {
    /// Forward–backward for items `items` (at most `CHUNK`); writes their losses and node
    /// gradients and returns the chunk's table statistics, or `None` if an item is
    /// infeasible. The element-wise work (exponentials, rescaling) runs with AVX2 where the
    /// CPU has it.
    fn chunk<T: Real, F: Gemm>(
        pb: &Problem<'_, T>,
        y: &[i64],
        weights: Option<&[f64]>,
        raw: &[f64],
        e_tab: &[F],
        tmax: f64,
        items: std::ops::Range<usize>,
        loss: &mut [T],
        gn: &mut [T],
    ) -> Option<Part> => chunk_body
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn chunk_body<T: Real, F: Gemm>(
    pb: &Problem<'_, T>,
    y: &[i64],
    weights: Option<&[f64]>,
    raw: &[f64],
    e_tab: &[F],
    tmax: f64,
    items: std::ops::Range<usize>,
    loss: &mut [T],
    gn: &mut [T],
) -> Option<Part> {
    let (n, c) = (pb.graph.num_nodes(), pb.classes());
    let (nb, nc, cc) = (items.len(), n * c, c * c);
    let zero = F::of(0.0);
    // Item-major (nb, n, c) buffers, so position t of every item is a strided (nb, c)
    // matrix with row stride n * c.
    let mut phi = vec![zero; nb * nc];
    let mut alpha = vec![zero; nb * nc];
    let mut beta = vec![zero; nb * nc];
    // g[t] = φ_{t+1} ⊙ β_{t+1} (zero at and beyond an item's last node).
    let mut g = vec![zero; nb * nc];
    let mut log_z = vec![0.0f64; nb];
    // Normaliser of each β row, `s_t = Σ_a (E g_t)[a]`.
    let mut bsum = vec![0.0f64; nb * n];
    let mut row = vec![0.0f64; c];
    let act: Vec<usize> = items.clone().map(|b| pb.active(b)).collect();
    for (i, b) in items.clone().enumerate() {
        let node = pb.node.item(b);
        for t in 0..act[i] {
            for (r, s) in row.iter_mut().zip(&node[t * c..(t + 1) * c]) {
                *r = s.to_f64();
            }
            let m = row.iter().fold(f64::NEG_INFINITY, |a, &x| a.max(x));
            if m == f64::NEG_INFINITY {
                return None;
            }
            log_z[i] += m;
            let o = &mut phi[i * nc + t * c..i * nc + (t + 1) * c];
            for (p, &r) in o.iter_mut().zip(&row) {
                // Flushed to zero below the type's normal range (no slow subnormals);
                // such a label weighs less than e^-87 relative to the node's best.
                let v = F::exp_nonpos(r - m);
                *p = if v.f() < F::MIN_NORMAL { zero } else { v };
            }
        }
    }
    // Normalises row `v` in place by its sum; returns the sum (0: infeasible).
    let normalise = |v: &mut [F]| -> f64 {
        let s = sum4(v.len(), |k| v[k].f());
        if s > 0.0 {
            let inv = 1.0 / s;
            v.iter_mut().for_each(|x| *x = F::of(x.f() * inv));
        }
        s
    };
    let stride = nc as isize;
    // Forward: α_0 = φ_0, α_t = (α_{t-1} E) ⊙ φ_t, each normalised.
    for i in 0..nb {
        if act[i] > 0 {
            alpha[i * nc..i * nc + c].copy_from_slice(&phi[i * nc..i * nc + c]);
            let s = normalise(&mut alpha[i * nc..i * nc + c]);
            if s <= 0.0 {
                return None;
            }
            log_z[i] += s.ln();
        }
    }
    for t in 1..n {
        // SAFETY: rows i*nc + (t-1)*c and i*nc + t*c (i < nb) lie inside `alpha`.
        unsafe {
            F::gemm(
                nb,
                c,
                c,
                alpha.as_ptr().add((t - 1) * c),
                stride,
                1,
                e_tab.as_ptr(),
                c as isize,
                1,
                zero,
                alpha.as_mut_ptr().add(t * c),
                stride,
                1,
            );
        }
        for i in 0..nb {
            let o = i * nc + t * c;
            if t >= act[i] {
                // Padding: zero rows stay zero through later products.
                alpha[o..o + c].fill(zero);
                continue;
            }
            for (a, &p) in alpha[o..o + c].iter_mut().zip(&phi[o..o + c]) {
                *a = F::of(a.f() * p.f());
            }
            let s = normalise(&mut alpha[o..o + c]);
            if s <= 0.0 {
                return None;
            }
            log_z[i] += s.ln() + tmax;
        }
    }
    // Backward: β_last = 1, β_t = E (φ_{t+1} ⊙ β_{t+1}), normalised (scale is irrelevant:
    // marginals are normalised per position and per edge).
    for i in 0..nb {
        if act[i] > 0 {
            let o = i * nc + (act[i] - 1) * c;
            beta[o..o + c].fill(F::of(1.0));
        }
    }
    for t in (0..n - 1).rev() {
        for i in 0..nb {
            let o = i * nc + t * c;
            if t + 1 < act[i] {
                for ((gv, &p), &bv) in g[o..o + c]
                    .iter_mut()
                    .zip(&phi[o + c..o + 2 * c])
                    .zip(&beta[o + c..o + 2 * c])
                {
                    *gv = F::of(p.f() * bv.f());
                }
            }
        }
        // SAFETY: rows of position t of `g` and `beta`, transposed table.
        unsafe {
            F::gemm(
                nb,
                c,
                c,
                g.as_ptr().add(t * c),
                stride,
                1,
                e_tab.as_ptr(),
                1,
                c as isize,
                zero,
                beta.as_mut_ptr().add(t * c),
                stride,
                1,
            );
        }
        for i in 0..nb {
            let o = i * nc + t * c;
            if t + 1 >= act[i] {
                // The item's last node (or padding): β = 1 there, nothing after it.
                beta[o..o + c].fill(F::of(if t + 1 == act[i] { 1.0 } else { 0.0 }));
                continue;
            }
            let s = normalise(&mut beta[o..o + c]);
            if s <= 0.0 {
                return None;
            }
            bsum[i * n + t] = s;
        }
    }
    // Node marginals α_t ⊙ β_t / d_t with d_t = Σ_a α_t[a] β_t[a]; the pair marginal of
    // edge (t, t+1) is α_t[a] E[a, b] g_t[b] / (s_t d_t), since E g_t = s_t β_t. Rows of α
    // are rescaled by w_b / (s_t d_t) in place (Â) for the table statistics.
    let mut part = Part {
        outer: vec![0.0; cc],
        gold: vec![0.0; cc],
    };
    for (i, b) in items.clone().enumerate() {
        let w = weights.map_or(1.0, |w| w[b]);
        let yb = &y[b * n..(b + 1) * n];
        let node = pb.node.item(b);
        let mut gold = 0.0;
        for t in 0..act[i] {
            let o = i * nc + t * c;
            let (a, bt) = (&alpha[o..o + c], &beta[o..o + c]);
            let d = sum4(c, |k| a[k].f() * bt[k].f());
            let inv = w / d;
            let out = &mut gn[o..o + c];
            for ((gv, a), bv) in out.iter_mut().zip(&alpha[o..o + c]).zip(&beta[o..o + c]) {
                *gv = T::from_f64(a.f() * bv.f() * inv);
            }
            let yt = yb[t] as usize;
            out[yt] = T::from_f64(out[yt].to_f64() - w);
            gold += node[t * c + yt].to_f64();
            if t + 1 < act[i] {
                let yn = yb[t + 1] as usize;
                gold += raw[yt * c + yn];
                part.gold[yt * c + yn] += w;
                let scale = w / (bsum[i * n + t] * d);
                alpha[o..o + c]
                    .iter_mut()
                    .for_each(|a| *a = F::of(a.f() * scale));
            } else {
                alpha[o..o + c].fill(zero);
            }
        }
        loss[i] = T::from_f64(log_z[i] - gold);
        // Padded positions: no loss, zero gradient (already zero-initialised).
    }
    // Σ_{b,t} Â_t ⊗ g_t over every (item, position) row: one GEMM with k = nb * n.
    let mut outer = vec![zero; cc];
    // SAFETY: Âᵀ is c x (nb n) (column stride c), g is (nb n) x c, outer is c x c.
    unsafe {
        F::gemm(
            c,
            nb * n,
            c,
            alpha.as_ptr(),
            1,
            c as isize,
            g.as_ptr(),
            c as isize,
            1,
            zero,
            outer.as_mut_ptr(),
            c as isize,
            1,
        );
    }
    part.outer
        .iter_mut()
        .zip(&outer)
        .for_each(|(o, x)| *o = x.f());
    Some(part)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exact::Exact;
    use crate::kernels::rng::Rng;
    use crate::model::graph::Graph;
    use crate::model::scores::{EdgeScores, NodeScores};

    /// The batch-major kernel against the per-item log-domain kernel: random lengths
    /// (incl. 0 and 1), forbidden node labels, item weights, f64 and f32.
    fn check<T: Real>(tol: f64) {
        let (b, n, c) = (19, 7, 4);
        let mut rng = Rng::stream(5, &[]);
        let mut u = |s: f64| (rng.uniform() * 2.0 - 1.0) * s;
        let mut sn: Vec<T> = (0..b * n * c).map(|_| T::from_f64(u(2.0))).collect();
        sn[3 * n * c + 2 * c] = T::from_f64(f64::NEG_INFINITY);
        let se: Vec<T> = (0..c * c).map(|_| T::from_f64(u(1.5))).collect();
        let mut r2 = Rng::stream(6, &[]);
        let mut y: Vec<i64> = (0..b * n)
            .map(|_| (r2.uniform() * c as f64) as i64)
            .collect();
        y[3 * n + 2] = 1; // allowed where label 0 is forbidden
        let lengths: Vec<usize> = (0..b).map(|i| [n, 0, 1, 4, n, 6][i % 6]).collect();
        let w: Vec<f64> = (0..b).map(|i| 0.5 + i as f64 / b as f64).collect();
        let g = Graph::chain(n).unwrap();
        let pb = Problem::new(
            &g,
            NodeScores {
                data: &sn,
                batch: b,
                nodes: n,
                classes: c,
            },
            EdgeScores::tables(&se, 1, 1, c),
            b,
            Some(&lengths),
        )
        .unwrap();
        let fast = loss_and_grad(&pb, &y, Some(&w)).expect("applies").unwrap();
        let slow =
            crate::inference::loss_and_grad(&pb, &Exact::new(&g).unwrap(), &y, Some(&w)).unwrap();
        let close = |a: &[T], b: &[T]| {
            a.iter()
                .zip(b)
                .all(|(x, y)| (x.to_f64() - y.to_f64()).abs() <= tol * (1.0 + y.to_f64().abs()))
        };
        assert!(
            close(&fast.loss, &slow.loss),
            "{:?} {:?}",
            fast.loss,
            slow.loss
        );
        assert!(close(&fast.grad_node, &slow.grad_node));
        assert!(close(&fast.grad_edge, &slow.grad_edge));
    }

    #[test]
    fn matches_the_per_item_kernel() {
        check::<f64>(1e-12);
        check::<f32>(2e-5);
    }
}
