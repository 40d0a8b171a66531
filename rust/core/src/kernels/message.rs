//! Pairwise message kernels shared by the sum-product methods.
//!
//! A message from a `src` node to a `dst` node through a table `t[src label, dst label]` is
//! `m[d] = log Σ_s exp(x[s] + t[s, d])`. Doing that in the log domain costs C² exponentials
//! per message; instead we exponentiate the table once (shifted by its maximum) and the
//! incoming beliefs once (shifted by theirs), and take a product in the probability domain.
//! That is exact up to rounding as long as nothing that matters underflows, which we check:
//! - a table whose finite entries span more than `RANGE` is handled in the log domain;
//! - an output entry whose probability-domain sum falls below `TINY` (it was dominated by
//!   terms that underflowed, or is −inf) is recomputed exactly in the log domain.
//!
//! So scores of any magnitude, and −inf (forbidden) entries, give exact results.

use crate::kernels::logspace::{exp, exp_shifted, ln_pos, max};
use crate::kernels::real::Real;

/// Widest span of finite table entries handled in the probability domain.
const RANGE: f64 = 500.0;
/// Sums below this may have lost terms to underflow; recompute them in the log domain.
const TINY: f64 = 1e-250;
/// Widest table span for float32 multiply-adds (e^-60 is far inside f32's normal range).
const RANGE_F32: f64 = 60.0;
/// `TINY` for float32 sums (f32's normal range ends near 1e-38).
const TINY_F32: f64 = 1e-30;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// `ex = exp(raw - tmax)`.
    Prob { tmax: f64 },
    /// Entries span too much for the probability domain.
    Log,
}

/// A `(C, C)` table oriented `[src, dst]`, in f64, with its exponentials when they are safe.
#[derive(Clone, Debug)]
pub struct Table {
    c: usize,
    pub raw: Vec<f64>,
    ex: Vec<f64>,
    /// `ex` in f32, valid when `f32_ok` (span at most `RANGE_F32`): float32 models run
    /// their multiply-adds at twice the vector width.
    ex32: Vec<f32>,
    f32_ok: bool,
    kind: Kind,
}

impl Table {
    pub fn new(c: usize) -> Table {
        Table {
            c,
            raw: vec![0.0; c * c],
            ex: vec![0.0; c * c],
            ex32: vec![0.0; c * c],
            f32_ok: false,
            kind: Kind::Log,
        }
    }

    /// Loads a table stored `[first, second]`; `transpose` makes `src` the second index.
    #[inline(always)]
    pub fn load<T: Real>(&mut self, t: &[T], transpose: bool) {
        let c = self.c;
        if transpose {
            for s in 0..c {
                for d in 0..c {
                    self.raw[s * c + d] = t[d * c + s].to_f64();
                }
            }
        } else {
            for (r, &v) in self.raw.iter_mut().zip(t) {
                *r = v.to_f64();
            }
        }
        self.prepare();
    }

    /// Loads `w * t`, oriented as in [`Table::load`]; a −inf (forbidden) entry stays −inf
    /// whatever `w` is.
    #[inline(always)]
    pub fn load_scaled<T: Real>(&mut self, t: &[T], w: f64, transpose: bool) {
        oriented(t, w, transpose, self.c, &mut self.raw);
        self.prepare();
    }

    #[inline(always)]
    fn prepare(&mut self) {
        let (mut hi, mut lo) = (f64::NEG_INFINITY, f64::INFINITY);
        for &v in &self.raw {
            hi = hi.max(v);
            if v > f64::NEG_INFINITY {
                lo = lo.min(v);
            }
        }
        if hi == f64::NEG_INFINITY || hi - lo > RANGE {
            // All forbidden (every message entry is −inf) or too wide: the log path is exact.
            self.kind = Kind::Log;
            return;
        }
        self.ex.copy_from_slice(&self.raw);
        exp_shifted(&mut self.ex, hi);
        self.kind = Kind::Prob { tmax: hi };
        self.f32_ok = hi - lo <= RANGE_F32;
        if self.f32_ok {
            for (o, &e) in self.ex32.iter_mut().zip(&self.ex) {
                *o = e as f32;
            }
        }
    }
}

impl Table {
    /// `out += ex ⊙ m` (then `m = 0`): completes pair marginals accumulated without the
    /// table factor by [`joint_and_message`]'s `outer`.
    pub fn finish_outer(&self, m: &mut [f64], out: &mut [f64]) {
        for ((o, x), &e) in out.iter_mut().zip(m.iter_mut()).zip(&self.ex) {
            *o += *x * e;
            *x = 0.0;
        }
    }
}

/// Scratch buffers (length C, and one C x C).
#[derive(Clone, Debug)]
pub struct Scratch {
    pub q_src: Vec<f64>,
    pub q_dst: Vec<f64>,
    pub acc: Vec<f64>,
    pub pair: Vec<f64>,
    q32: Vec<f32>,
    acc32: Vec<f32>,
}

impl Scratch {
    pub fn new(c: usize) -> Scratch {
        Scratch {
            q_src: vec![0.0; c],
            q_dst: vec![0.0; c],
            acc: vec![0.0; c],
            pair: vec![0.0; c * c],
            q32: vec![0.0; c],
            acc32: vec![0.0; c],
        }
    }
}

/// Exact `log Σ_s exp(x[s] + raw[s, d])` for one `d`.
#[inline(always)]
fn lse_column(x: &[f64], raw: &[f64], c: usize, d: usize) -> f64 {
    let mut m = f64::NEG_INFINITY;
    for s in 0..c {
        m = m.max(x[s] + raw[s * c + d]);
    }
    if m == f64::NEG_INFINITY {
        return m;
    }
    let mut acc = 0.0;
    for s in 0..c {
        acc += exp(x[s] + raw[s * c + d] - m);
    }
    m + acc.ln()
}

/// `acc[d] = Σ_s q[s] ex[s, d]`: the probability-domain message, row by row so the inner
/// loop is a contiguous multiply-add.
#[inline(always)]
fn vecmat(q: &[f64], ex: &[f64], acc: &mut [f64]) {
    let c = acc.len();
    acc.fill(0.0);
    for s in 0..c {
        let w = q[s];
        if w != 0.0 {
            for (a, &r) in acc.iter_mut().zip(&ex[s * c..(s + 1) * c]) {
                *a += w * r;
            }
        }
    }
}

/// `sc.acc = q · t.ex` (see [`vecmat`]), in f32 when `low` (float32 model) and the table
/// allows it; returns the threshold below which a sum is not trusted.
#[inline(always)]
fn table_product(
    q: &[f64],
    t: &Table,
    acc: &mut [f64],
    q32: &mut [f32],
    acc32: &mut [f32],
    low: bool,
) -> f64 {
    if low && t.f32_ok {
        let c = t.c;
        for (o, &x) in q32.iter_mut().zip(q) {
            *o = x as f32;
        }
        acc32.fill(0.0);
        for s in 0..c {
            let w = q32[s];
            if w != 0.0 {
                for (a, &r) in acc32.iter_mut().zip(&t.ex32[s * c..(s + 1) * c]) {
                    *a += w * r;
                }
            }
        }
        for (o, &a) in acc.iter_mut().zip(acc32.iter()) {
            *o = a as f64;
        }
        TINY_F32
    } else {
        vecmat(q, &t.ex, acc);
        TINY
    }
}

/// `out[d] = shift + ln acc[d]`, recomputed exactly where `acc[d]` is below `tiny`.
#[inline(always)]
fn log_message(acc: &[f64], shift: f64, x: &[f64], raw: &[f64], out: &mut [f64], tiny: f64) {
    let c = acc.len();
    let mut suspect = false;
    for (o, &a) in out.iter_mut().zip(acc) {
        suspect |= a < tiny;
        *o = shift + ln_pos(a.max(tiny));
    }
    if suspect {
        for d in 0..c {
            if acc[d] < tiny {
                out[d] = lse_column(x, raw, c, d);
            }
        }
    }
}

/// `out[d] = log Σ_s exp(x[s] + t[s, d])` (not normalised). Also leaves
/// `q = exp(x - max x)` (all zero when every `x` is −inf), which the caller may keep.
#[inline(always)]
pub fn message(x: &[f64], t: &Table, out: &mut [f64], q: &mut [f64], sc: &mut Scratch, low: bool) {
    let c = t.c;
    let mx = max(x);
    q.copy_from_slice(x);
    exp_shifted(q, if mx > f64::NEG_INFINITY { mx } else { 0.0 });
    match t.kind {
        Kind::Prob { tmax } if mx > f64::NEG_INFINITY => {
            let tiny = table_product(q, t, &mut sc.acc, &mut sc.q32, &mut sc.acc32, low);
            log_message(&sc.acc, mx + tmax, x, &t.raw, out, tiny);
        }
        _ => {
            for (d, o) in out.iter_mut().enumerate() {
                *o = lse_column(x, &t.raw, c, d);
            }
        }
    }
}

/// Writes (or, with `accumulate`, adds) `v` at `[s, d]` of `out`, or at `[d, s]` when
/// `transpose`.
#[inline(always)]
fn put(out: &mut [f64], c: usize, s: usize, d: usize, v: f64, transpose: bool, accumulate: bool) {
    let k = if transpose { d * c + s } else { s * c + d };
    if accumulate {
        out[k] += v;
    } else {
        out[k] = v;
    }
}

/// Below this normaliser the node marginal is recomputed in the log domain.
const SAFE_Z: f64 = 1e-200;

/// For an edge with beliefs `x` at its `src` end (excluding the edge) and `y` at its `dst`
/// end (excluding the edge), with `qy = exp(y - max y)` given:
/// - writes the normalised pair marginal `p[s, d] ∝ exp(x[s] + t[s, d] + y[d])` into `out`
///   (oriented `[d, s]` when `transpose`; added to what is there when `accumulate`);
/// - writes the message into `dst`, `msg[d] = log Σ_s exp(x[s] + t[s, d])`, not normalised;
/// - with `outer` (accumulating into one slot shared by every edge with this table, not
///   transposed), adds the probability-domain pair marginal without the table factor,
///   `(qx/z) ⊗ qy`, to `outer` instead; [`Table::finish_outer`] applies the table once;
/// - writes the marginal of `dst`, `Σ_s p[s, d]`, into `marg` and returns true, or returns
///   false when that is not safe in the probability domain (then the caller computes it
///   from `y + msg`).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn joint_and_message(
    x: &[f64],
    y: &[f64],
    qy: &[f64],
    t: &Table,
    out: &mut [f64],
    transpose: bool,
    accumulate: bool,
    msg: &mut [f64],
    marg: &mut [f64],
    sc: &mut Scratch,
    mut outer: Option<&mut [f64]>,
    low: bool,
) -> bool {
    let c = t.c;
    let (mx, my) = (max(x), max(y));
    if let (Kind::Prob { tmax }, true) = (t.kind, mx > f64::NEG_INFINITY && my > f64::NEG_INFINITY)
    {
        let qx = &mut sc.q_src;
        qx.copy_from_slice(x);
        exp_shifted(qx, mx);
        let tiny = table_product(&sc.q_src, t, &mut sc.acc, &mut sc.q32, &mut sc.acc32, low);
        let qx = &sc.q_src;
        log_message(&sc.acc, mx + tmax, x, &t.raw, msg, tiny);
        let z: f64 = sc.acc.iter().zip(qy.iter()).map(|(a, q)| a * q).sum();
        if z >= TINY {
            let inv = 1.0 / z;
            for s in 0..c {
                let w = qx[s] * inv;
                let row = &t.ex[s * c..(s + 1) * c];
                if let Some(m) = outer.as_deref_mut().filter(|_| !transpose) {
                    // Summed over edges sharing this table: Σ_e w_e ⊗ qy_e now, times the
                    // table once at the end (`Table::finish_outer`).
                    for (o, &q) in m[s * c..(s + 1) * c].iter_mut().zip(qy.iter()) {
                        *o += w * q;
                    }
                } else if transpose {
                    for d in 0..c {
                        put(out, c, s, d, w * row[d] * qy[d], true, accumulate);
                    }
                } else {
                    // Contiguous rows: the loop the compiler vectorises.
                    let orow = &mut out[s * c..(s + 1) * c];
                    for ((o, &r), &q) in orow.iter_mut().zip(row).zip(qy.iter()) {
                        let v = w * r * q;
                        *o = if accumulate { *o + v } else { v };
                    }
                }
            }
            if z >= SAFE_Z {
                // Terms lost to underflow are below 1e-300 each: negligible against z.
                for ((m, &a), &q) in marg.iter_mut().zip(sc.acc.iter()).zip(qy) {
                    *m = a * q * inv;
                }
                return true;
            }
            return false;
        }
    } else {
        for (d, o) in msg.iter_mut().enumerate() {
            *o = lse_column(x, &t.raw, c, d);
        }
    }
    // Exact log-domain pair marginal: the probability-domain product was unsafe.
    let p = &mut sc.pair;
    for s in 0..c {
        for d in 0..c {
            p[s * c + d] = x[s] + t.raw[s * c + d] + y[d];
        }
    }
    let m = max(p);
    exp_shifted(p, m);
    let inv = 1.0 / p.iter().sum::<f64>();
    for s in 0..c {
        for d in 0..c {
            put(out, c, s, d, p[s * c + d] * inv, transpose, accumulate);
        }
    }
    false
}

/// `out[s, d] = w * t[s, d]` (or `w * t[d, s]` with `transpose`) in f64, `C x C`.
#[inline(always)]
pub fn oriented<T: Real>(t: &[T], w: f64, transpose: bool, c: usize, out: &mut [f64]) {
    for s in 0..c {
        for d in 0..c {
            let v = if transpose {
                t[d * c + s]
            } else {
                t[s * c + d]
            };
            out[s * c + d] = scaled(w, v.to_f64());
        }
    }
}

/// `w * t` where a forbidden (−inf) pair stays forbidden whatever the weight.
#[inline(always)]
pub fn scaled(w: f64, t: f64) -> f64 {
    if t == f64::NEG_INFINITY {
        t
    } else {
        w * t
    }
}

/// `Some((diagonal, off-diagonal))` when the `c x c` table `t` is finite and takes one value
/// on its diagonal and one off it (a Potts table): kernels then need O(C) work per edge.
pub fn potts(t: &[f64], c: usize) -> Option<(f64, f64)> {
    if c < 2 || t.len() != c * c || t.iter().any(|x| !x.is_finite()) {
        return None;
    }
    let (d, o) = (t[0], t[1]);
    (0..c * c)
        .all(|k| t[k] == if k % (c + 1) == 0 { d } else { o })
        .then_some((d, o))
}

/// The Potts pair factor `e^{s [a = b]}` as `K (A + B [a = b])` with no factor above 1:
/// `(A, B) = (e^{−s}, 1 − e^{−s})` for `s >= 0`, `(1, e^{s} − 1)` otherwise. `e` is
/// `e^{−|s|}` as the caller computes it (its precision is the caller's choice).
#[inline(always)]
pub fn potts_split(s: f64, e: f64) -> (f64, f64) {
    if s >= 0.0 {
        (e, 1.0 - e)
    } else {
        (1.0, e - 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f64], t: &[f64], c: usize) -> Vec<f64> {
        (0..c)
            .map(|d| {
                let terms: Vec<f64> = (0..c).map(|s| x[s] + t[s * c + d]).collect();
                let m = terms.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                if m == f64::NEG_INFINITY {
                    m
                } else {
                    m + terms.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
                }
            })
            .collect()
    }

    #[test]
    fn message_is_exact_for_wide_and_forbidden_tables() {
        let c = 3;
        let cases: Vec<(Vec<f64>, Vec<f64>)> = vec![
            (
                vec![0.1, -0.3, 2.0],
                vec![0.5, -1.0, 0.2, 0.0, 1.5, -0.7, 0.3, 0.3, -2.0],
            ),
            // Huge spread in the table: log path.
            (
                vec![0.0, 1.0, 2.0],
                vec![1e4, -1e4, 0.0, 3.0, 2.0, -5e3, 0.0, 0.0, 7.0],
            ),
            // The best source label can only reach label 0; label 2 is reachable only from
            // a source label 1e3 below: the probability-domain sum underflows there.
            (
                vec![0.0, -1e3, f64::NEG_INFINITY],
                vec![
                    0.0,
                    f64::NEG_INFINITY,
                    f64::NEG_INFINITY,
                    0.0,
                    0.0,
                    0.0,
                    0.0,
                    0.0,
                    0.0,
                ],
            ),
        ];
        let mut t = Table::new(c);
        let mut sc = Scratch::new(c);
        let mut out = vec![0.0; c];
        let mut q = vec![0.0; c];
        for (x, raw) in cases {
            t.load(&raw, false);
            message(&x, &t, &mut out, &mut q, &mut sc, false);
            let want = naive(&x, &raw, c);
            for d in 0..c {
                if want[d] == f64::NEG_INFINITY {
                    assert_eq!(out[d], want[d]);
                } else {
                    assert!((out[d] - want[d]).abs() < 1e-9 * (1.0 + want[d].abs()));
                }
            }
        }
    }

    #[test]
    fn potts_tables_are_recognised() {
        assert_eq!(potts(&[2.0, 0.5, 0.5, 2.0], 2), Some((2.0, 0.5)));
        let mut t = vec![-1.0; 9];
        for k in [0, 4, 8] {
            t[k] = 1.0;
        }
        assert_eq!(potts(&t, 3), Some((1.0, -1.0)));
        t[5] = -0.9;
        assert_eq!(potts(&t, 3), None);
        assert_eq!(
            potts(&[1.0, f64::NEG_INFINITY, f64::NEG_INFINITY, 1.0], 2),
            None
        );
        assert_eq!(potts(&[1.0], 1), None);
    }
}
