//! Loopy BP on 4-neighbour grids, fast path.
//!
//! The general kernel (`loopy`) walks an adjacency list node by node; at small C that
//! per-message bookkeeping costs far more than the C² arithmetic. Here messages live in
//! the probability domain in class-major rows — `msg[dir][r][x][c]` for grid row `r`,
//! label `x`, column `c` — so every inner loop runs across the columns of a row for a
//! fixed pair of labels and vectorises. Rows are processed in parallel; each row writes
//! messages into its own row and the rows above and below, into buffers nobody reads in
//! that step, so the result does not depend on the number of threads.
//!
//! The probability domain is exact up to rounding only while nothing underflows, so the
//! path is taken only when every node's finite scores and every table's finite entries
//! span at most `SPAN` (then no product of potentials and messages leaves f64's range);
//! otherwise the general log-domain kernel runs. Narrower spans let float32 models store
//! messages in f32 (`SPAN_F32`) and compute the updates in f32 (`F32_BUDGET`). After the
//! iterations the grid's own belief pass ([`super::grid_beliefs`]) reads the messages;
//! TRW hands them back in the general layout ([`to_general`]) for the general pass.

use std::marker::PhantomData;

use rayon::prelude::*;

use crate::error::Result;
use crate::interrupt::Stop;
use crate::kernels::alloc::{init_with, par_filled, sized};
use crate::kernels::layout::{transpose, transpose_f32};
use crate::kernels::logspace::{exp, exp_nonpos_f32, finite_range, ln_pos, ln_pos_f32};
use crate::kernels::real::Real;
use crate::loopy::grid_fused;
use crate::loopy::options::Schedule;
use crate::model::scores::{EdgeLayout, ItemEdges};
use crate::simd_dispatch;

/// Largest span of finite scores (per node row, per table) the probability domain takes.
const SPAN: f64 = 120.0;
/// Largest node span whose potentials the f32 exponential makes (e^-80 > 2^-126).
const SPAN_EXP_F32: f64 = 80.0;
/// Largest table span for f32 message storage (e^-60 is well inside f32's normal range).
const SPAN_F32: f64 = 60.0;
/// f32 arithmetic in the updates needs `4 (table span + ln C) <= F32_BUDGET`. A message
/// sums `t(x, x') cav(x)` over `x`; it is at least `e^-(table span)` times the largest
/// cavity, and that one (the node's most likely label: potential 1, times three
/// normalised messages, each at least `e^-(table span) / C`) is at least
/// `e^-3 (table span + ln C)`. So the message is at least `e^-80` while f32 rounds every
/// term to within `2^-149 ≈ e^-103` (gradual underflow): improbable labels may underflow,
/// but what they lose is below `e^-23` of any message, far below f32's rounding. The
/// node scores' span does not enter: a label with a tiny potential only adds a tiny term.
const F32_BUDGET: f64 = 80.0;
/// Largest cache of per-edge potentials (bytes) before falling back to the general kernel.
const MAX_CACHE: usize = 1 << 30;

/// Message directions, named by where the message comes from.
pub(crate) const FROM_LEFT: usize = 0;
pub(crate) const FROM_RIGHT: usize = 1;
pub(crate) const FROM_UP: usize = 2;
pub(crate) const FROM_DOWN: usize = 3;

/// Potentials of one item: node `φ[r][x][c]` and edge tables, in the probability domain.
pub struct GridPotentials {
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) c: usize,
    pub(crate) phi: Vec<f64>,
    /// `max θ_v` of each node (`φ = exp(θ − shift)`), for log Z.
    pub(crate) phi_shift: Vec<f64>,
    /// `max θ_e` of each per-edge table (laid out like the edge rows, `[r * w + col]`) or
    /// of the shared one (`[0]`), for log Z.
    pub(crate) hshift: Vec<f64>,
    pub(crate) vshift: Vec<f64>,
    /// Horizontal tables: shared `[x][x']`, or per edge `[r][x][x'][c]` (c < w − 1).
    pub(crate) horiz: Pots,
    /// Vertical tables: shared `[x][x']`, or per edge `[r][x][x'][c]` (r < h − 1).
    pub(crate) vert: Pots,
    pub(crate) shared: bool,
    /// Weighted edge scores `w_e θ`: potentials made row by row when they are needed
    /// instead of cached per edge (which would be `E C²` numbers).
    pub(crate) weighted: Option<Weighted>,
    /// TRW edge appearances laid out like the edge rows: `ρ` of the edge right of
    /// `(r, col)` at `[r * w + col]`, and of the edge below it (1 where there is none).
    pub(crate) rho: Option<(Vec<f64>, Vec<f64>)>,
    /// Messages may be stored in f32: float32 scores, and tables with no forbidden pair
    /// and a span of at most `SPAN_F32`, so no message entry leaves f32's normal range.
    f32_ok: bool,
    /// The updates may compute in f32 too (eight lanes): f32 messages, BP with per-edge or
    /// shared tables, and tables narrow enough that f32's underflow cannot reach a
    /// message's rounding (see `F32_BUDGET`).
    compute32: bool,
    /// `phi` in f32 when `compute32`.
    phi32: Vec<f32>,
    /// Whether the sweeps may take the one-pass kernel ([`super::grid_fused`], see
    /// [`Self::one_pass`]); tests turn it off to compare it with the row passes.
    pub(crate) fused: bool,
    /// Edge rows the belief pass made with its one-pass kernel (tests check which path
    /// ran).
    #[cfg(test)]
    pub(crate) edge_rows_fused: std::sync::atomic::AtomicUsize,
}

/// Edge potentials, in f64 or (a float32 model whose tables all span at most `SPAN_F32`:
/// every potential stays in f32's normal range) in f32, half the bytes each sweep reads.
pub(crate) enum Pots {
    F64(Vec<f64>),
    F32(Vec<f32>),
}

impl Pots {
    /// Entry `i`, as f64.
    #[inline(always)]
    pub(crate) fn get(&self, i: usize) -> f64 {
        match self {
            Pots::F64(v) => v[i],
            Pots::F32(v) => v[i] as f64,
        }
    }
}

/// One table `θ` and per-edge weights laid out like the grid's edge rows.
pub(crate) struct Weighted {
    theta: Vec<f64>,
    /// Exponentials in f32 (eight lanes): messages are stored in f32 anyway.
    low: bool,
    /// Largest and smallest finite entries of `θ`.
    hi: f64,
    lo: f64,
    /// Horizontal weights `[r][col]` (col < w − 1, stride w) and vertical `[r][col]`.
    wh: Vec<f64>,
    wv: Vec<f64>,
    /// When `θ` is a Potts table (one value on the diagonal, another off it, both
    /// finite; messages then cost O(C) per edge): each edge's message coefficients (see
    /// [`potts_messages`]), laid out like `wh` and `wv`: `(α, β)` horizontal, then
    /// vertical. Made once per call, not at every sweep (an exponential per edge).
    coef: Option<[Vec<f64>; 4]>,
}

impl Weighted {
    /// Potts message coefficients `(α, β)` of every edge, those of `z = w Δ`
    /// ([`crate::kernels::message::potts_split`]).
    fn potts_coefficients(wh: &[f64], wv: &[f64], delta: f64, low: bool) -> [Vec<f64>; 4] {
        let split = |ws: &[f64]| -> (Vec<f64>, Vec<f64>) {
            ws.iter()
                .map(|&wi| {
                    let z = wi * delta;
                    let e = if low {
                        exp_nonpos_f32(-(z.abs() as f32)) as f64
                    } else {
                        exp(-z.abs())
                    };
                    crate::kernels::message::potts_split(z, e)
                })
                .unzip()
        };
        let ((ah, bh), (av, bv)) = (split(wh), split(wv));
        [ah, bh, av, bv]
    }

    /// Potentials `exp(w_i θ_k − max_k w_i θ_k)` of edge row `r` (horizontal or vertical)
    /// into `out[k][i]`, `k < C²`, `i < w`; a forbidden entry is 0 whatever the weight.
    #[inline(always)]
    fn fill(&self, vertical: bool, r: usize, w: usize, out: &mut [f64]) {
        let wr = if vertical { &self.wv } else { &self.wh };
        let wr = &wr[r * w..(r + 1) * w];
        for (k, &t) in self.theta.iter().enumerate() {
            let o = &mut out[k * w..(k + 1) * w];
            if t == f64::NEG_INFINITY {
                o.fill(0.0);
                continue;
            }
            // The table's maximum under weight wi is wi·hi (wi >= 0) or wi·lo.
            if self.low {
                for (p, &wi) in o.iter_mut().zip(wr) {
                    let m = (wi * self.hi).max(wi * self.lo);
                    *p = crate::kernels::logspace::exp_nonpos_f32((wi * t - m) as f32) as f64;
                }
            } else {
                for (p, &wi) in o.iter_mut().zip(wr) {
                    let m = (wi * self.hi).max(wi * self.lo);
                    *p = crate::kernels::logspace::exp(wi * t - m);
                }
            }
        }
    }

    /// Edge row `r`'s potentials `[k][col]` (see [`Self::fill`]) and their shifts
    /// (see [`Self::row_shifts`]), for the belief pass.
    #[inline(always)]
    pub(crate) fn row_potentials(
        &self,
        vertical: bool,
        r: usize,
        w: usize,
    ) -> (Vec<f64>, Vec<f64>) {
        let mut pots = vec![0.0; self.theta.len() * w];
        self.fill(vertical, r, w, &mut pots);
        (pots, self.row_shifts(vertical, r, w))
    }

    /// The shifts `max_k w θ_k` of edge row `r`'s potentials, per column (0 for a table
    /// with no finite entry).
    #[inline(always)]
    pub(crate) fn row_shifts(&self, vertical: bool, r: usize, w: usize) -> Vec<f64> {
        let wr = if vertical { &self.wv } else { &self.wh };
        let finite = self.hi > f64::NEG_INFINITY;
        let mut out = vec![0.0; w];
        for (o, &wi) in out.iter_mut().zip(&wr[r * w..(r + 1) * w]) {
            *o = if finite {
                (wi * self.hi).max(wi * self.lo)
            } else {
                0.0
            };
        }
        out
    }

    /// Whether `θ` is a Potts table (messages and gradients in O(C) per edge).
    #[inline(always)]
    pub(crate) fn is_potts(&self) -> bool {
        self.coef.is_some()
    }

    /// The weights of edge row `r` (`[col]`, horizontal or vertical).
    #[inline(always)]
    pub(crate) fn weights(&self, vertical: bool, r: usize, w: usize) -> &[f64] {
        let ws = if vertical { &self.wv } else { &self.wh };
        &ws[r * w..(r + 1) * w]
    }

    /// For a Potts table: edge row `r`'s coefficients `(α, β)`, with which its potentials
    /// are `ψ(a, b) = α + β [a = b]` exactly (relative to the shifts of
    /// [`Self::row_shifts`]): no exponentials.
    #[inline(always)]
    pub(crate) fn potts_row(&self, vertical: bool, r: usize, w: usize) -> Option<(&[f64], &[f64])> {
        let [ah, bh, av, bv] = self.coef.as_ref()?;
        let (a, b) = if vertical { (av, bv) } else { (ah, bh) };
        Some((&a[r * w..(r + 1) * w], &b[r * w..(r + 1) * w]))
    }
}

/// Edge `e`'s scores (θ / ρ for TRW) into `t`, `[first, second]`: `None` when their span
/// leaves the probability domain, else whether f32 messages stay safe with them, the
/// shift `max θ` and the span.
#[inline(always)]
fn table_scores<T: Real>(
    edges: &ItemEdges<'_, T>,
    rho: Option<&[f64]>,
    e: usize,
    t: &mut [f64],
) -> Option<(bool, f64, f64)> {
    edges.raw(e, false, t);
    if let Some(r) = rho {
        // θ / ρ; a forbidden pair stays forbidden.
        t.iter_mut()
            .for_each(|x| *x = crate::kernels::message::scaled(1.0 / r[e], *x));
    }
    let (hi, lo, forbidden) = finite_range(t);
    let span = if hi == f64::NEG_INFINITY {
        0.0
    } else {
        hi - lo
    };
    if span > SPAN {
        return None;
    }
    let shift = if hi == f64::NEG_INFINITY { 0.0 } else { hi };
    Some((!forbidden && span <= SPAN_F32, shift, span))
}

/// `t = exp(t − shift)` entrywise. `single`: a float32 model whose tables all span at most
/// `SPAN_F32`, exponentiated at f32 precision eight lanes at a time (the scores carry no
/// more than that; no entry leaves f32's normal range, and −inf still gives exactly 0).
#[inline(always)]
fn exp_tables(t: &mut [f64], shift: &[f64], single: bool) {
    if single {
        for (x, &s) in t.iter_mut().zip(shift) {
            *x = exp_nonpos_f32((*x - s) as f32) as f64;
        }
    } else {
        for (x, &s) in t.iter_mut().zip(shift) {
            *x = exp(*x - s);
        }
    }
}

/// Edge `e`'s potentials `exp(θ − max θ)` into `t` (see [`table_scores`]): whether f32
/// messages stay safe with them, the shift and the span.
#[inline(always)]
fn load_table<T: Real>(
    edges: &ItemEdges<'_, T>,
    rho: Option<&[f64]>,
    e: usize,
    t: &mut [f64],
) -> Option<(bool, f64, f64)> {
    let (low, shift, span) = table_scores(edges, rho, e, t)?;
    let single = std::mem::size_of::<T>() == 4 && span <= SPAN_F32;
    exp_tables(t, &vec![shift; t.len()], single);
    Some((low, shift, span))
}

simd_dispatch! {
    /// Per-edge potentials of grid row `r` (its horizontal edges and the vertical ones
    /// below it) into `hr`/`vr` (`[k][col]`) and their shifts into `hs`/`vs`; `None` when a
    /// table leaves the probability domain, else whether f32 messages are safe.
    fn potential_row<T: Real, P: Real>(
        edges: &ItemEdges<'_, T>,
        rho: Option<&[f64]>,
        r: usize,
        h: usize,
        w: usize,
        hr: &mut [P],
        vr: &mut [P],
        hs: &mut [f64],
        vs: &mut [f64],
        scratch: &mut PotScratch,
    ) -> Option<(bool, bool, f64)> => potential_row_body
}

/// Working rows of the potentials pass, kept by each parallel task across its rows (no
/// allocation or zero fill per row and direction).
#[derive(Default)]
struct PotScratch {
    /// The float32 route: a row's tables transposed (`[k][col]`, padded columns), their
    /// per-column maxima, minima and forbidden flags.
    t32: Vec<f32>,
    hi: Vec<f32>,
    lo: Vec<f32>,
    forbidden: Vec<bool>,
    /// The general route: a row's tables end to end and each entry's shift.
    t: Vec<f64>,
    sh: Vec<f64>,
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn potential_row_body<T: Real, P: Real>(
    edges: &ItemEdges<'_, T>,
    rho: Option<&[f64]>,
    r: usize,
    h: usize,
    w: usize,
    hr: &mut [P],
    vr: &mut [P],
    hs: &mut [f64],
    vs: &mut [f64],
    scratch: &mut PotScratch,
) -> Option<(bool, bool, f64)> {
    let cc = hr.len() / w;
    let n_h = h * (w - 1);
    // The row's tables are laid end to end (`[col][k]`) and exponentiated in one long
    // loop (a 7 x 7 table alone is too short to fill vectors), then the block is
    // transposed into the row layout `[k][col]` with sequential writes.
    let (mut low, mut narrow, mut widest) = (true, true, 0.0f64);
    // A float32 model's own per-edge tables, read in place and kept in f32 throughout.
    let tables32 = match edges.layout() {
        EdgeLayout::Tables { data, stride } if stride == cc && rho.is_none() => {
            (std::mem::size_of::<T>() == 4 && std::mem::size_of::<P>() == 4).then_some(data)
        }
        _ => None,
    };
    for (vertical, out, shifts) in [(false, hr, hs), (true, vr, vs)] {
        let count = if vertical {
            if r + 1 < h {
                w
            } else {
                0
            }
        } else {
            w - 1
        };
        if let Some(data) = tables32 {
            // The row's edges are consecutive in the edge order.
            let e0 = if vertical { n_h + r * w } else { r * (w - 1) };
            let src = &data[e0 * cc..(e0 + count) * cc];
            if let Some((ok, span)) = row_f32(src, cc, w, out, shifts, scratch) {
                (low, widest) = (low & ok, widest.max(span));
                continue;
            }
        }
        let mut single = std::mem::size_of::<T>() == 4;
        let (t, sh) = (
            sized(&mut scratch.t, w * cc),
            sized(&mut scratch.sh, w * cc),
        );
        for col in 0..count {
            let e = if vertical {
                n_h + r * w + col
            } else {
                r * (w - 1) + col
            };
            let (ok, shift, span) = table_scores(edges, rho, e, &mut t[col * cc..(col + 1) * cc])?;
            (low, shifts[col]) = (low & ok, shift);
            single &= span <= SPAN_F32;
            widest = widest.max(span);
            sh[col * cc..(col + 1) * cc].fill(shift);
        }
        exp_tables(&mut t[..count * cc], &sh[..count * cc], single);
        narrow &= single;
        for k in 0..cc {
            let dst = &mut out[k * w..k * w + count];
            for (col, d) in dst.iter_mut().enumerate() {
                *d = P::from_f64(t[col * cc + k]);
            }
        }
    }
    // (f32 messages safe, every span within `SPAN_F32` for a float32 model, widest span)
    Some((low, narrow, widest))
}

/// [`potential_row_body`] for one direction of a row of float32 tables `src` (`count`
/// tables of `cc` entries) into `out[k][col]` and `shifts`, in f32 throughout: the same
/// values as the f64 route (an f32 difference rounds as the f64 one narrowed does).
/// Whether f32 messages are safe and the widest span; `None` when a table spans more than
/// `SPAN_F32` (the caller then takes the general route).
#[inline(always)]
fn row_f32<T: Real, P: Real>(
    src: &[T],
    cc: usize,
    w: usize,
    out: &mut [P],
    shifts: &mut [f64],
    scratch: &mut PotScratch,
) -> Option<(bool, f64)> {
    let count = src.len() / cc;
    if count == 0 {
        return Some((true, 0.0));
    }
    // Transposed into the row layout `[k][col]` first, so that the ranges, the span check
    // and the exponentials all run across the columns (a 3 x 3 table alone is far too
    // short for vectors), in rows padded to whole vectors: the exponentials then have no
    // scalar tail (padding is 0, exp(0 − 0) = 1, never read). (`to_f64() as f32` is the
    // identity on f32 scores.)
    let cs = count.next_multiple_of(8);
    let PotScratch {
        t32,
        hi,
        lo,
        forbidden,
        ..
    } = scratch;
    let t = sized(t32, cc * cs);
    match T::as_f32(src) {
        Some(src) => transpose_f32(src, cc, t, cs),
        None => transpose(src, cc, t, cs, |x| x.to_f64() as f32),
    }
    // The transpose wrote the first `count` columns; the padding (what the last row left
    // there) set to 0.
    for row in t.chunks_exact_mut(cs) {
        row[count..].fill(0.0);
    }
    let (hi, lo) = (sized(hi, cs), sized(lo, cs));
    hi.fill(f32::NEG_INFINITY);
    lo.fill(f32::INFINITY);
    let forbidden = sized(forbidden, cs);
    forbidden.fill(false);
    for row in t.chunks_exact(cs) {
        for (((h, l), f), &x) in hi
            .iter_mut()
            .zip(lo.iter_mut())
            .zip(forbidden.iter_mut())
            .zip(row)
        {
            // `max`/`min` of values, not conditional stores (which become masked stores,
            // microcoded on some cores); −inf is no finite score and leaves `lo` alone.
            *h = h.max(x);
            *l = l.min(if x > f32::NEG_INFINITY {
                x
            } else {
                f32::INFINITY
            });
            *f |= x == f32::NEG_INFINITY;
        }
    }
    // The spans across the columns in eight running maxima, with no exit inside the loop:
    // a scalar loop whose maximum is carried from column to column (and an early return
    // in it) had cost a quarter of the pass. A table of −inf only has span 0 and shift 0.
    let mut lanes = [0.0f64; 8];
    let full = count - count % 8;
    for (hs, ls) in hi[..full].chunks_exact_mut(8).zip(lo.chunks_exact(8)) {
        for j in 0..8 {
            let span = hs[j] as f64 - ls[j] as f64;
            // (`hi` = −inf: −inf − lo is −inf or NaN, neither raises the maximum.)
            lanes[j] = if span > lanes[j] { span } else { lanes[j] };
            hs[j] = if hs[j] == f32::NEG_INFINITY {
                0.0
            } else {
                hs[j]
            };
        }
    }
    let mut widest = lanes.iter().fold(0.0f64, |a, &b| a.max(b));
    for (h, &l) in hi[full..count].iter_mut().zip(&lo[full..]) {
        if *h == f32::NEG_INFINITY {
            *h = 0.0;
        } else {
            widest = widest.max(*h as f64 - l as f64);
        }
    }
    if widest > SPAN_F32 {
        return None;
    }
    let low = !forbidden[..count].contains(&true);
    for (s, &h) in shifts[..count].iter_mut().zip(&*hi) {
        *s = h as f64;
    }
    for (k, row) in t.chunks_exact_mut(cs).enumerate() {
        for (x, &m) in row.iter_mut().zip(&*hi) {
            *x = exp_nonpos_f32(*x - m);
        }
        for (d, &x) in out[k * w..k * w + count].iter_mut().zip(row.iter()) {
            *d = P::from_f64(x as f64);
        }
    }
    Some((low, widest))
}

/// `src` rounded to f32 by the pool's threads, in chunks (a parallel `collect` stores
/// one item at a time).
fn narrowed_par(src: &[f64]) -> Vec<f32> {
    let mut out = Vec::with_capacity(src.len());
    out.spare_capacity_mut()[..src.len()]
        .par_chunks_mut(1 << 14)
        .zip(src.par_chunks(1 << 14))
        .for_each(|(o, s)| {
            for (o, &v) in o.iter_mut().zip(s) {
                o.write(v as f32);
            }
        });
    // SAFETY: the chunks cover the first `src.len()` elements, each written above.
    unsafe { out.set_len(src.len()) };
    out
}

simd_dispatch! {
    /// Node potentials of one grid row: scores `node[col][x]` into `out[x][col] =
    /// exp(θ − max θ)` and the maxima into `shift` (−inf for a node with no allowed label,
    /// whose potentials are all 0). False when a node's finite scores span more than `SPAN`.
    fn node_potentials<T: Real>(node: &[T], out: &mut [f64], shift: &mut [f64]) -> bool
        => node_potentials_body
}

#[inline(always)]
fn node_potentials_body<T: Real>(node: &[T], out: &mut [f64], shift: &mut [f64]) -> bool {
    let w = shift.len();
    let c = out.len() / w;
    // Transposed into the class-major layout first, so that the maxima, the span check
    // and the exponentials all run across the row's columns.
    transpose(node, c, out, w, |v| v.to_f64());
    let mut lo = vec![f64::INFINITY; w];
    shift.fill(f64::NEG_INFINITY);
    for x in 0..c {
        let row = &out[x * w..(x + 1) * w];
        for ((hi, lo), &v) in shift.iter_mut().zip(lo.iter_mut()).zip(row) {
            *hi = hi.max(v);
            // −inf is no finite score: it leaves the minimum alone.
            *lo = lo.min(if v > f64::NEG_INFINITY {
                v
            } else {
                f64::INFINITY
            });
        }
    }
    // Plain comparisons, so the loop vectorises (no node's span is NaN: both ends are
    // finite where the node has an allowed label).
    let widest = shift.iter().zip(&lo).fold(0.0f64, |a, (&hi, &lo)| {
        let span = if hi > f64::NEG_INFINITY { hi - lo } else { 0.0 };
        if span > a {
            span
        } else {
            a
        }
    });
    if widest > SPAN {
        return false;
    }
    // Float32 scores whose spans keep every potential inside f32's normal range take the
    // f32 exponential (eight lanes, a quarter of the f64 one's cost; a few ulp of f32,
    // the precision the results are returned in). The difference of two f32 scores is
    // exact in f64 and rounds to f32 as the f32 table route's does.
    let narrow = std::mem::size_of::<T>() == 4 && widest <= SPAN_EXP_F32;
    // A node with no allowed label: exp(−inf − 0) = 0 everywhere.
    let diff = |v: f64, m: f64| v - if m > f64::NEG_INFINITY { m } else { 0.0 };
    // (One loop per precision: a choice inside the loop kept it from vectorising.)
    for row in out.chunks_exact_mut(w) {
        if narrow {
            for (v, &m) in row.iter_mut().zip(shift.iter()) {
                *v = exp_nonpos_f32(diff(*v, m) as f32) as f64;
            }
        } else {
            for (v, &m) in row.iter_mut().zip(shift.iter()) {
                *v = exp(diff(*v, m));
            }
        }
    }
    true
}

/// Per-edge potentials of every grid row in `P` (shifts into `hshift`/`vshift`): `None`
/// when a table leaves the probability domain; `Some(None)` when `P` is f32 and a table
/// spans more than `SPAN_F32`; else whether f32 messages are safe, the tables and the
/// widest span.
#[allow(clippy::type_complexity)]
fn per_edge<T: Real, P: Real>(
    edges: &ItemEdges<'_, T>,
    rho: Option<&[f64]>,
    h: usize,
    w: usize,
    cc: usize,
    hshift: &mut Vec<f64>,
    vshift: &mut Vec<f64>,
) -> Option<Option<(bool, Vec<P>, Vec<P>, f64)>> {
    // (Each task fills its own rows, which it then overwrites: no separate pass first.)
    let (mut horiz, mut vert) = (
        Vec::with_capacity(h * cc * w),
        Vec::with_capacity(h * cc * w),
    );
    for s in [&mut *hshift, &mut *vshift] {
        s.clear();
        s.reserve_exact(h * w);
    }
    let shifts = hshift.spare_capacity_mut()[..h * w]
        .par_chunks_mut(w)
        .zip(vshift.spare_capacity_mut()[..h * w].par_chunks_mut(w));
    let rows: Vec<(bool, bool, f64)> = horiz.spare_capacity_mut()[..h * cc * w]
        .par_chunks_mut(cc * w)
        .zip(vert.spare_capacity_mut()[..h * cc * w].par_chunks_mut(cc * w))
        .zip(shifts)
        .enumerate()
        .map_init(PotScratch::default, |scratch, (r, ((hr, vr), (hs, vs)))| {
            let (hr, vr) = (init_with(hr, P::ZERO), init_with(vr, P::ZERO));
            let (hs, vs) = (init_with(hs, 0.0), init_with(vs, 0.0));
            potential_row(edges, rho, r, h, w, hr, vr, hs, vs, scratch)
        })
        .collect::<Option<_>>()?;
    // SAFETY: a collected `Some` means every row's task ran (rayon stops early only at a
    // `None`, returned above), and each initialised its chunks of the four vectors.
    unsafe {
        horiz.set_len(h * cc * w);
        vert.set_len(h * cc * w);
        hshift.set_len(h * w);
        vshift.set_len(h * w);
    }
    if std::mem::size_of::<P>() == 4 && !rows.iter().all(|&(_, narrow, _)| narrow) {
        return Some(None);
    }
    let widest = rows.iter().fold(0.0f64, |m, &(_, _, s)| m.max(s));
    Some(Some((
        rows.iter().all(|&(low, _, _)| low),
        horiz,
        vert,
        widest,
    )))
}

impl GridPotentials {
    /// The potentials, or `None` when the fast path does not apply (scores too spread for
    /// the probability domain, or per-edge tables too large to cache).
    pub fn new<T: Real>(
        h: usize,
        w: usize,
        node: &[T],
        edges: &ItemEdges<'_, T>,
        rho: Option<&[f64]>,
    ) -> Option<GridPotentials> {
        Self::with_cache(h, w, node, edges, rho, MAX_CACHE)
    }

    /// [`Self::new`] with a cache limit (bytes) for per-edge potentials. With `rho` (TRW
    /// edge appearances, graph edge order) the potentials are `exp(θ_e / ρ_e)`. Edges that
    /// share one stored table (weighted, or reweighted by TRW) have their potentials made
    /// row by row at each sweep beyond the limit; full per-edge tables beyond it leave
    /// the fast path.
    pub fn with_cache<T: Real>(
        h: usize,
        w: usize,
        node: &[T],
        edges: &ItemEdges<'_, T>,
        rho: Option<&[f64]>,
        max_cache: usize,
    ) -> Option<GridPotentials> {
        let c = node.len() / (h * w);
        let cc = c * c;
        let n_h = h * (w - 1);
        // One potential for every edge only without weights and without TRW scaling.
        let shared = edges.shared() && rho.is_none();
        let one_table = edges.shared() || edges.weighted();
        let scale = |e: usize| edges.weight(e) / rho.map_or(1.0, |r| r[e]);
        let n_tables = if shared { 1 } else { n_h + (h - 1) * w };
        // Weighted Potts tables always take the row-by-row path (it needs no potentials).
        let potts = if one_table && !shared {
            let mut theta = vec![0.0; cc];
            edges.unweighted(0, &mut theta);
            crate::kernels::message::potts(&theta, c).map(|(d, o)| d - o)
        } else {
            None
        };
        let weighted = one_table && !shared && (potts.is_some() || n_tables * cc * 8 > max_cache);
        if !weighted && n_tables * cc * 8 > max_cache {
            return None;
        }
        // Node potentials, one grid row per task (each fills its own rows, which it then
        // overwrites: no separate pass first).
        let mut phi = Vec::with_capacity(h * w * c);
        let mut phi_shift = Vec::with_capacity(h * w);
        let rows_ok = phi.spare_capacity_mut()[..h * w * c]
            .par_chunks_mut(c * w)
            .zip(phi_shift.spare_capacity_mut()[..h * w].par_chunks_mut(w))
            .enumerate()
            .all(|(r, (out, shift))| {
                let (out, shift) = (init_with(out, 0.0), init_with(shift, 0.0));
                node_potentials(&node[r * w * c..(r + 1) * w * c], out, shift)
            });
        if !rows_ok {
            return None;
        }
        // SAFETY: every row's task ran (`all` stops early only on a failed row, returned
        // above) and initialised its chunks.
        unsafe {
            phi.set_len(h * w * c);
            phi_shift.set_len(h * w);
        }
        let mut t = vec![0.0; cc];
        let mut f32_ok = std::mem::size_of::<T>() == 4;
        // Edge e's potentials into `t`: `None` when its span leaves the probability domain,
        // else whether f32 messages stay safe with it.
        let load = |e: usize, t: &mut [f64]| load_table(edges, rho, e, t);
        let (mut hshift, mut vshift) = (Vec::new(), Vec::new());
        let mut wtd = None;
        // The widest table span (for weighted edges: the largest weight times θ's span).
        let table_span;
        let (horiz, vert) = if weighted {
            let mut theta = vec![0.0; cc];
            edges.unweighted(0, &mut theta);
            let (mut hi, mut lo) = (f64::NEG_INFINITY, f64::INFINITY);
            for &x in theta.iter().filter(|&&x| x > f64::NEG_INFINITY) {
                hi = hi.max(x);
                lo = lo.min(x);
            }
            let span = if hi == f64::NEG_INFINITY {
                0.0
            } else {
                hi - lo
            };
            let (mut wh, mut wv) = (vec![0.0; h * w], vec![0.0; h * w]);
            let mut wmax = 0.0f64;
            for r in 0..h {
                for col in 0..w {
                    if col + 1 < w {
                        wh[r * w + col] = scale(r * (w - 1) + col);
                        wmax = wmax.max(wh[r * w + col].abs());
                    }
                    if r + 1 < h {
                        wv[r * w + col] = scale(n_h + r * w + col);
                        wmax = wmax.max(wv[r * w + col].abs());
                    }
                }
            }
            if wmax * span > SPAN {
                return None;
            }
            let forbidden = theta.contains(&f64::NEG_INFINITY);
            f32_ok &= !forbidden && wmax * span <= SPAN_F32;
            table_span = wmax * span;
            let coef = potts.map(|d| Weighted::potts_coefficients(&wh, &wv, d, f32_ok));
            wtd = Some(Weighted {
                theta,
                low: f32_ok,
                hi,
                lo,
                wh,
                wv,
                coef,
            });
            (Pots::F64(Vec::new()), Pots::F64(Vec::new()))
        } else if shared {
            let (low, shift, span) = load(0, &mut t)?;
            (f32_ok, table_span) = (f32_ok & low, span);
            (hshift, vshift) = (vec![shift], vec![shift]);
            (Pots::F64(t.clone()), Pots::F64(t.clone()))
        } else {
            // Per-edge potentials, one grid row (its horizontal and vertical edges) per task:
            // in f32 for a float32 model, redone in f64 if a table turns out too spread.
            let narrow = std::mem::size_of::<T>() == 4;
            let made = if narrow {
                per_edge::<T, f32>(edges, rho, h, w, cc, &mut hshift, &mut vshift)?
            } else {
                None
            };
            match made {
                Some((low, horiz, vert, span)) => {
                    (f32_ok, table_span) = (f32_ok & low, span);
                    (Pots::F32(horiz), Pots::F32(vert))
                }
                None => {
                    let (low, horiz, vert, span) =
                        per_edge::<T, f64>(edges, rho, h, w, cc, &mut hshift, &mut vshift)?
                            .expect("f64 potentials are never too narrow");
                    (f32_ok, table_span) = (f32_ok & low, span);
                    (Pots::F64(horiz), Pots::F64(vert))
                }
            }
        };
        let compute32 =
            f32_ok && rho.is_none() && 4.0 * (table_span + (c as f64).ln()) <= F32_BUDGET;
        let phi32 = match compute32 {
            true => narrowed_par(&phi),
            false => Vec::new(),
        };
        Some(GridPotentials {
            h,
            w,
            c,
            phi,
            phi32,
            compute32,
            fused: true,
            #[cfg(test)]
            edge_rows_fused: Default::default(),
            phi_shift,
            hshift,
            vshift,
            horiz,
            vert,
            shared,
            weighted: wtd,
            rho: rho.map(|r| {
                let (mut rh, mut rv) = (vec![1.0; h * w], vec![1.0; h * w]);
                for row in 0..h {
                    for col in 0..w {
                        if col + 1 < w {
                            rh[row * w + col] = r[row * (w - 1) + col];
                        }
                        if row + 1 < h {
                            rv[row * w + col] = r[n_h + row * w + col];
                        }
                    }
                }
                (rh, rv)
            }),
            f32_ok,
        })
    }

    /// Whether the sweeps take the one-pass kernel ([`super::grid_fused`]): BP (not TRW)
    /// with stored f32 tables, f32 messages and arithmetic (`M`, `A`), small C.
    fn one_pass<M: Real, A: Real>(&self) -> bool {
        self.fused
            && self.rho.is_none()
            && self.weighted.is_none()
            && (2..=grid_fused::MAX_C).contains(&self.c)
            && M::as_f32(&[]).is_some()
            && A::as_f32(&[]).is_some()
            && (self.shared || matches!(self.horiz, Pots::F32(_)))
    }

    /// A float32 model whose messages are held in f32 (see `f32_ok`): its belief pass may
    /// work at f32 precision too.
    pub(crate) fn single(&self) -> bool {
        self.f32_ok
    }
}

/// The previous iterate's four message buffers, read by every row task at once.
/// Messages are stored as `M` (f64, or f32 when that is safe: half the memory traffic,
/// which bounds large grids at small C); arithmetic in f64 or f32 (see [`row_update`]).
#[derive(Clone, Copy)]
pub struct Prev<'a, M> {
    data: &'a [M],
    /// Entries per direction, `h * c * w`.
    n: usize,
}

impl<'a, M> Prev<'a, M> {
    /// Row `r`, label `x` of direction `d` (length w).
    #[inline(always)]
    fn row(&self, d: usize, r: usize, x: usize, c: usize, w: usize) -> &'a [M] {
        let at = d * self.n + (r * c + x) * w;
        &self.data[at..at + w]
    }

    /// Every label of row `r` in direction `d` (`c` rows of `w`).
    #[inline(always)]
    fn block(&self, d: usize, r: usize, c: usize, w: usize) -> &'a [M] {
        let at = d * self.n + r * c * w;
        &self.data[at..at + c * w]
    }
}

/// The next iterate's four message buffers, written by the row tasks concurrently. Row
/// task `r` writes only messages that leave the nodes of row `r`: the blocks
/// `(FROM_LEFT, r)`, `(FROM_RIGHT, r)`, `(FROM_UP, r + 1)` and `(FROM_DOWN, r − 1)` (one
/// block = one direction of one grid row, every label and column). Every block is
/// written by exactly one task, so the `&mut` spans handed out never overlap; nobody
/// reads this buffer during a sweep (reads go to [`Prev`], a different buffer).
pub struct Next<'a, M> {
    ptr: *mut M,
    len: usize,
    n: usize,
    _buf: PhantomData<&'a mut [M]>,
}

// SAFETY: `Next` is a `&mut [M]` split into disjoint per-task blocks (see the type's doc);
// sharing it across threads is like sharing those disjoint `&mut` blocks, which needs `M:
// Send`.
unsafe impl<M: Send> Send for Next<'_, M> {}
// SAFETY: as above: `&Next` only hands out `&mut` spans of blocks owned by the calling task.
unsafe impl<M: Send> Sync for Next<'_, M> {}

impl<'a, M> Next<'a, M> {
    fn new(buf: &'a mut [M], n: usize) -> Self {
        assert_eq!(buf.len(), 4 * n);
        Next {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
            n,
            _buf: PhantomData,
        }
    }

    /// Columns `off..off + len` of row `r`, label `x`, direction `d`.
    ///
    /// # Safety
    /// The span must lie in a block that only the calling task writes (see the type's
    /// doc), and the caller may hold no other reference to it.
    #[allow(clippy::mut_from_ref, clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn span(
        &self,
        d: usize,
        r: usize,
        x: usize,
        c: usize,
        w: usize,
        off: usize,
        len: usize,
    ) -> &mut [M] {
        let at = d * self.n + (r * c + x) * w + off;
        assert!(off + len <= w && at + len <= self.len);
        // SAFETY: in bounds (checked above); exclusive by the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(at), len) }
    }

    /// Every label of row `r` in direction `d` (`c` rows of `w`).
    ///
    /// # Safety
    /// As for [`Self::span`].
    #[allow(clippy::mut_from_ref)]
    #[inline(always)]
    unsafe fn block(&self, d: usize, r: usize, c: usize, w: usize) -> &mut [M] {
        let at = d * self.n + r * c * w;
        assert!(at + c * w <= self.len);
        // SAFETY: in bounds (checked above); exclusive by the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(at), c * w) }
    }
}

/// Per-thread scratch rows, in the update's arithmetic `A` (see [`row_update`]).
pub struct RowWs<A> {
    /// TRW: appearances of the left, right, up and down edges of each column.
    rho_rows: [Vec<f64>; 4],
    /// Weighted potentials of one edge row `[k][col]`, and which row they are.
    pot: Vec<f64>,
    pot_at: Option<(bool, usize)>,
    norm: Vec<A>,
    sums: Vec<A>,
    /// f32 scratch row for damping f32 messages computed in f64.
    damp: Vec<f32>,
    a: Vec<A>,
    b: Vec<A>,
    cav: Vec<A>,
    out: Vec<A>,
}

/// `s = 1 / s`, and 0 for a zero sum (every label forbidden: the column then stays zero
/// when scaled).
#[inline(always)]
fn invert<A: Real>(sums: &mut [A]) {
    for s in sums.iter_mut() {
        *s = if *s > A::ZERO { A::ONE / *s } else { A::ZERO };
    }
}

/// Where one direction's messages of a row read and write (see [`messages`]).
#[derive(Clone, Copy)]
struct Geo {
    c: usize,
    w: usize,
    /// Messages in the row, and the column of the first one's source.
    len: usize,
    src_off: usize,
    /// Table entry of `(x, x')` is `x·kx + x'·kxo`.
    kx: usize,
    kxo: usize,
}

/// `out[x'][i] = Σ_x t_{x x'}[i] · cav[x][i + src_off]` for the row's `len` messages, and
/// their column sums into `sums`. `ROWS`: `tabs` holds rows `[k][col]` (stride `w`, per
/// edge); else one table `[k]` for every column. Sixteen columns at a time held in
/// registers across the sum over `x` (one store per message entry, where a row-by-row
/// accumulation loads and stores it `C` times), summed in the same order as that would.
#[inline(always)]
fn messages<P: Real, A: Real, const ROWS: bool>(
    out: &mut [A],
    sums: &mut [A],
    cav: &[A],
    tabs: &[P],
    g: Geo,
) {
    let mut i0 = 0;
    while i0 + 16 <= g.len {
        message_block::<P, A, ROWS, 16>(out, sums, cav, tabs, g, i0);
        i0 += 16;
    }
    // The tail in narrower blocks (a grid row is often 16k − 1 messages wide).
    if i0 + 8 <= g.len {
        message_block::<P, A, ROWS, 8>(out, sums, cav, tabs, g, i0);
        i0 += 8;
    }
    if i0 + 4 <= g.len {
        message_block::<P, A, ROWS, 4>(out, sums, cav, tabs, g, i0);
        i0 += 4;
    }
    while i0 < g.len {
        message_block::<P, A, ROWS, 1>(out, sums, cav, tabs, g, i0);
        i0 += 1;
    }
}

/// Columns `i0..i0 + N` of [`messages`].
#[inline(always)]
fn message_block<P: Real, A: Real, const ROWS: bool, const N: usize>(
    out: &mut [A],
    sums: &mut [A],
    cav: &[A],
    tabs: &[P],
    g: Geo,
    i0: usize,
) {
    let mut s = [A::ZERO; N];
    for xo in 0..g.c {
        let mut acc = [A::ZERO; N];
        for x in 0..g.c {
            let k = x * g.kx + xo * g.kxo;
            let q: &[A; N] = cav[x * g.w + g.src_off + i0..][..N].try_into().unwrap();
            if ROWS {
                let t: &[P; N] = tabs[k * g.w + i0..][..N].try_into().unwrap();
                for l in 0..N {
                    acc[l] = acc[l] + A::from_f64(t[l].to_f64()) * q[l];
                }
            } else {
                let t = A::from_f64(tabs[k].to_f64());
                for l in 0..N {
                    acc[l] = acc[l] + t * q[l];
                }
            }
        }
        out[xo * g.w + i0..][..N].copy_from_slice(&acc);
        for l in 0..N {
            s[l] = s[l] + acc[l];
        }
    }
    sums[i0..i0 + N].copy_from_slice(&s);
}

/// `ln m`, −inf for `m = 0` (a forbidden label); branch-free so loops vectorise.
#[inline(always)]
pub(crate) fn ln0(m: f64) -> f64 {
    let l = crate::kernels::logspace::ln_pos(m.max(f64::MIN_POSITIVE));
    if m > 0.0 {
        l
    } else {
        f64::NEG_INFINITY
    }
}

/// TRW reweighted beliefs of row `r` into `ws.a` (class-major): `φ Π_j M_j^{ρ_j}`, with
/// `ρ = 1` for the constant messages from outside the grid.
#[inline(always)]
fn trw_beliefs<M: Real, A: Real>(
    p: &GridPotentials,
    r: usize,
    old: &Prev<'_, M>,
    rh: &[f64],
    rv: &[f64],
    ws: &mut RowWs<A>,
) {
    let (h, w, c) = (p.h, p.w, p.c);
    // Appearances of the four edges around each column of the row.
    let [rl, rr, ru, rd] = &mut ws.rho_rows;
    for i in 0..w {
        rl[i] = if i > 0 { rh[r * w + i - 1] } else { 1.0 };
        rr[i] = rh[r * w + i];
        ru[i] = if r > 0 { rv[(r - 1) * w + i] } else { 1.0 };
        rd[i] = if r + 1 < h { rv[r * w + i] } else { 1.0 };
    }
    for x in 0..c {
        let get = |d: usize| old.row(d, r, x, c, w);
        let (u, d, l, rt) = (
            get(FROM_UP),
            get(FROM_DOWN),
            get(FROM_LEFT),
            get(FROM_RIGHT),
        );
        let phi = &p.phi[(r * c + x) * w..(r * c + x + 1) * w];
        let a = &mut ws.a[x * w..(x + 1) * w];
        // In the log domain: five logarithms and one exponential per entry (ρ > 0, so
        // ρ · (−inf) = −inf and a zero stays zero).
        for i in 0..w {
            let s = ln0(phi[i])
                + rl[i] * ln0(l[i].to_f64())
                + rr[i] * ln0(rt[i].to_f64())
                + ru[i] * ln0(u[i].to_f64())
                + rd[i] * ln0(d[i].to_f64());
            a[i] = A::from_f64(crate::kernels::logspace::exp(s));
        }
    }
}

/// Where the messages that row `r`'s nodes send in direction `dir` (as their targets see
/// it) go: `(columns, source column offset, target column offset, target row)`, or
/// `None` when there are none (the grid's border).
#[inline(always)]
fn geometry(dir: usize, r: usize, h: usize, w: usize) -> Option<(usize, usize, usize, usize)> {
    let (len, src_off, dst_off, dst_row) = match dir {
        FROM_LEFT => (w.saturating_sub(1), 0, 1, Some(r)),
        FROM_RIGHT => (w.saturating_sub(1), 1, 0, Some(r)),
        FROM_UP => (w, 0, 0, (r + 1 < h).then_some(r + 1)),
        _ => (w, 0, 0, r.checked_sub(1)),
    };
    let tr = dst_row?;
    (len > 0).then_some((len, src_off, dst_off, tr))
}

/// The first column, among `0..len` of a message span, whose source node has colour
/// `colour` (the others of that colour follow every second column).
#[inline(always)]
fn first_of_colour(colour: usize, r: usize, src_off: usize) -> usize {
    (colour + 2 - (r + src_off) % 2) % 2
}

crate::simd_dispatch! {
    /// Computes every message leaving the nodes of row `r` from `old`, writes those of
    /// nodes with colour `colour` (all nodes for `None`) into `new`; returns the largest
    /// change. Arithmetic in `A`: f64, or f32 where `GridPotentials::compute32` says
    /// every intermediate stays in f32's normal range.
    pub fn row_update<M: Real, A: Real>(
        p: &GridPotentials,
        r: usize,
        old: Prev<'_, M>,
        new: &Next<'_, M>,
        colour: Option<usize>,
        damping: f64,
        need_change: bool,
        ws: &mut RowWs<A>,
    ) -> f64 => row_update_body
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn row_update_body<M: Real, A: Real>(
    p: &GridPotentials,
    r: usize,
    old: Prev<'_, M>,
    new: &Next<'_, M>,
    colour: Option<usize>,
    damping: f64,
    need_change: bool,
    ws: &mut RowWs<A>,
) -> f64 {
    let (h, w, c) = (p.h, p.w, p.c);
    let get = |d: usize, x: usize| old.row(d, r, x, c, w);
    // A message entry in the arithmetic's precision (the identity when they agree).
    let m2a = |m: M| A::from_f64(m.to_f64());
    // TRW: a = φ Π_j M_j^{ρ_j} (the reweighted belief), and a cavity is a / M_k (which
    // leaves M_k^{ρ_k − 1}), 0 where M_k = 0 (the label is impossible through that edge).
    if let Some((rh, rv)) = &p.rho {
        trw_beliefs(p, r, &old, rh, rv, ws);
    }
    // BP: a = φ·U·D (for left/right messages), b = φ·L·R (for up/down), class-major.
    for x in 0..c {
        if p.rho.is_some() {
            break;
        }
        let phi = &A::pick(&p.phi, &p.phi32)[(r * c + x) * w..(r * c + x + 1) * w];
        let (u, d, l, rr) = (
            get(FROM_UP, x),
            get(FROM_DOWN, x),
            get(FROM_LEFT, x),
            get(FROM_RIGHT, x),
        );
        let a = &mut ws.a[x * w..(x + 1) * w];
        let b = &mut ws.b[x * w..(x + 1) * w];
        for i in 0..w {
            a[i] = phi[i] * m2a(u[i]) * m2a(d[i]);
            b[i] = phi[i] * m2a(l[i]) * m2a(rr[i]);
        }
    }
    let mut change = 0.0f64;
    let fused = p.one_pass::<M, A>();
    // (direction written, source of the cavity's extra factor, vertical?, target row)
    let jobs: [(usize, usize, bool); 4] = [
        (FROM_LEFT, FROM_LEFT, false),
        (FROM_RIGHT, FROM_RIGHT, false),
        (FROM_UP, FROM_UP, true),
        (FROM_DOWN, FROM_DOWN, true),
    ];
    for &(dir, extra, vertical) in &jobs {
        let Some((len, src_off, dst_off, tr)) = geometry(dir, r, h, w) else {
            continue;
        };
        // out[x'][i] = Σ_x t[x, x'] cav[x][i]: the table row is the edge's, oriented
        // [first node, second node]; messages going left/up use it transposed.
        let tab_row = match dir {
            FROM_LEFT | FROM_UP => r,
            FROM_RIGHT => r,
            _ => r - 1,
        };
        if fused {
            // One colour at a time, the previous messages are those being overwritten (in
            // `new`, see `iterate_in`); in flooding, those in `old`.
            let (Some(base), Some(other), Some(prev)) = (
                A::as_f32(if vertical { &ws.b } else { &ws.a }),
                M::as_f32(old.block(dir, r, c, w)),
                M::as_f32(match colour {
                    Some(_) => &[],
                    None => old.block(dir, tr, c, w),
                }),
            ) else {
                unreachable!("the one-pass kernel runs on f32 messages and arithmetic")
            };
            // A shared table in f32, as the row passes round each entry they use.
            let mut one = [0.0f32; grid_fused::MAX_C * grid_fused::MAX_C];
            let (tabs, rows) = match (if vertical { &p.vert } else { &p.horiz }, p.shared) {
                (Pots::F32(t), true) => (&t[..], false),
                (Pots::F64(t), true) => {
                    one.iter_mut().zip(t).for_each(|(o, &x)| *o = x as f32);
                    (&one[..c * c], false)
                }
                (Pots::F32(t), false) => (&t[tab_row * c * c * w..], true),
                (Pots::F64(_), false) => unreachable!("f32 arithmetic comes with f32 tables"),
            };
            let d = grid_fused::Direction {
                c,
                w,
                len,
                src_off,
                dst_off,
                base,
                other,
                tabs,
                rows,
                transposed: matches!(dir, FROM_LEFT | FROM_UP),
                prev,
                colour: colour.map(|col| first_of_colour(col, r, src_off)),
            };
            // SAFETY: block `(dir, tr)` carries messages leaving row `r`'s nodes, which
            // only this task writes (see `Next`), and no other reference to it is live.
            let dst = M::as_f32_mut(unsafe { new.block(dir, tr, c, w) }).unwrap();
            change = change.max(grid_fused::messages(d, dst, damping, need_change));
            continue;
        }
        // Cavity: everything at the source except the message from the target.
        let base = if vertical { &ws.b } else { &ws.a };
        let skip = match extra {
            FROM_LEFT => FROM_RIGHT,
            FROM_RIGHT => FROM_LEFT,
            FROM_UP => FROM_DOWN,
            _ => FROM_UP,
        };
        for x in 0..c {
            let other = get(
                match skip {
                    FROM_RIGHT => FROM_LEFT,
                    FROM_LEFT => FROM_RIGHT,
                    FROM_DOWN => FROM_UP,
                    _ => FROM_DOWN,
                },
                x,
            );
            let cav = &mut ws.cav[x * w..(x + 1) * w];
            if p.rho.is_some() {
                let ax = &ws.a[x * w..(x + 1) * w];
                let mk = get(skip, x);
                for i in 0..w {
                    let m = m2a(mk[i]);
                    cav[i] = if m > A::ZERO { ax[i] / m } else { A::ZERO };
                }
                continue;
            }
            let bx = &base[x * w..(x + 1) * w];
            for i in 0..w {
                cav[i] = bx[i] * m2a(other[i]);
            }
        }
        if let Some([ah, bh, av, bv]) = p.weighted.as_ref().and_then(|wt| wt.coef.as_ref()) {
            let (a, b) = if vertical { (av, bv) } else { (ah, bh) };
            let row = tab_row * w..tab_row * w + len;
            let geo = (c, w, len, src_off);
            let (out, sums) = (&mut ws.out[..], &mut ws.norm[..len]);
            potts_messages(&ws.cav, out, sums, &a[row.clone()], &b[row], geo);
        } else {
            if let Some(wt) = &p.weighted {
                // Made once per edge row and reused by the two directions that share it.
                if ws.pot_at != Some((vertical, tab_row)) {
                    wt.fill(vertical, tab_row, w, &mut ws.pot);
                    ws.pot_at = Some((vertical, tab_row));
                }
            }
            // Entry k = x·kx + xo·kxo of the tables: `[x][x']` as stored, transposed for
            // messages going left/up.
            let (kx, kxo) = match dir {
                FROM_LEFT | FROM_UP => (c, 1),
                _ => (1, c),
            };
            let geo = Geo {
                c,
                w,
                len,
                src_off,
                kx,
                kxo,
            };
            let (out, sums) = (&mut ws.out[..], &mut ws.norm[..len]);
            // Horizontal per-edge rows are indexed by the edge's left column.
            let rows = (tab_row * c * c) * w;
            match (&p.weighted, if vertical { &p.vert } else { &p.horiz }) {
                (Some(_), _) => messages::<f64, A, true>(out, sums, &ws.cav, &ws.pot, geo),
                (None, pots) if p.shared => match pots {
                    Pots::F64(t) => messages::<f64, A, false>(out, sums, &ws.cav, t, geo),
                    Pots::F32(t) => messages::<f32, A, false>(out, sums, &ws.cav, t, geo),
                },
                (None, Pots::F64(t)) => {
                    messages::<f64, A, true>(out, sums, &ws.cav, &t[rows..], geo)
                }
                (None, Pots::F32(t)) => {
                    messages::<f32, A, true>(out, sums, &ws.cav, &t[rows..], geo)
                }
            }
        }
        // Normalise, damp, normalise again, measure, write: loops across the columns of
        // the row, each normalisation's scaling folded into the pass that follows it.
        let (norm, sums) = (&mut ws.norm[..len], &mut ws.sums[..len]);
        if damping > 0.0 {
            // Before damping, messages need only be brought near sum 1 (the exact
            // normalisation follows it): a power of two from the sum's exponent, no division.
            norm.iter_mut().for_each(|s| *s = s.recip_pow2());
            sums.fill(A::ZERO);
            for xo in 0..c {
                let out = &mut ws.out[xo * w..xo * w + len];
                // One colour at a time, the latest messages of the colour being drawn are
                // those in `new` (see `iterate_in`); in flooding, those in `old`.
                let prev: &[M] = match colour {
                    // SAFETY: as for the write below; this shared view ends before it.
                    Some(_) => unsafe { new.span(dir, tr, xo, c, w, dst_off, len) },
                    None => &old.row(dir, tr, xo, c, w)[dst_off..dst_off + len],
                };
                damp_row(out, norm, sums, prev, &mut ws.damp[..len], damping);
            }
            // The damped messages' sums, taken as they were written.
            norm.copy_from_slice(sums);
        }
        invert(norm);
        let norm = &ws.norm[..len];
        for xo in 0..c {
            let out = &ws.out[xo * w..xo * w + len];
            let prev = &old.row(dir, tr, xo, c, w)[dst_off..dst_off + len];
            // SAFETY: block `(dir, tr)` carries messages leaving row `r`'s nodes, which only
            // this task writes (see `Next`), and no other reference to it is live here.
            let dst = unsafe { new.span(dir, tr, xo, c, w, dst_off, len) };
            match colour {
                None if !need_change => {
                    // Nobody will look at the change: skip reading the old messages.
                    for ((d, &o), &s) in dst.iter_mut().zip(out).zip(norm) {
                        *d = M::from_f64((o * s).to_f64());
                    }
                }
                None => {
                    // Four running maxima so the reduction vectorises.
                    let mut m = [0.0f64; 4];
                    let mut k = 0;
                    while k + 4 <= len {
                        for l in 0..4 {
                            let o = (out[k + l] * norm[k + l]).to_f64();
                            m[l] = m[l].max((o - prev[k + l].to_f64()).abs());
                        }
                        k += 4;
                    }
                    while k < len {
                        let o = (out[k] * norm[k]).to_f64();
                        m[0] = m[0].max((o - prev[k].to_f64()).abs());
                        k += 1;
                    }
                    change = change.max(m[0].max(m[1]).max(m[2].max(m[3])));
                    for ((d, &o), &s) in dst.iter_mut().zip(out).zip(norm) {
                        *d = M::from_f64((o * s).to_f64());
                    }
                }
                Some(col) => {
                    // This colour's columns: every other one, from the first of its parity;
                    // the previous values are the ones being overwritten.
                    let first = first_of_colour(col, r, src_off);
                    if need_change {
                        for i in (first..len).step_by(2) {
                            let o = (out[i] * norm[i]).to_f64();
                            change = change.max((o - dst[i].to_f64()).abs());
                            dst[i] = M::from_f64(o);
                        }
                    } else {
                        for i in (first..len).step_by(2) {
                            dst[i] = M::from_f64((out[i] * norm[i]).to_f64());
                        }
                    }
                }
            }
        }
    }
    change
}

crate::simd_dispatch! {
    /// Damps the fresh messages `out · scale` (`scale` brings each column's sum into
    /// `[1/2, 1)`) towards the previous ones `prev` by the geometric mixture
    /// `(out · scale)^(1 − d) · prev^d`, each result also added into its column's `sums`
    /// (damping in the log domain; the caller normalises afterwards, which removes the
    /// scale's leftover factor). Branch-free ln/exp
    /// (subnormals clamped to the smallest normal) keep the loops vectorised; f32
    /// messages are mixed at f32 precision (eight lanes; through the f32 scratch `tmp`
    /// when the update's arithmetic `A` is f64). Its own dispatch, so the update's code
    /// is not disturbed by it.
    fn damp_row<M: Real, A: Real>(
        out: &mut [A],
        scale: &[A],
        sums: &mut [A],
        prev: &[M],
        tmp: &mut [f32],
        damping: f64,
    ) -> () => damp_row_body
}

#[inline(always)]
fn damp_row_body<M: Real, A: Real>(
    out: &mut [A],
    scale: &[A],
    sums: &mut [A],
    prev: &[M],
    tmp: &mut [f32],
    damping: f64,
) {
    let keep = 1.0 - damping;
    // Each damped entry is also added into its column's sum (the normalisation that
    // follows needs them; no second pass over the row).
    let put = |o: &mut A, sum: &mut A, v: f64| {
        *o = A::from_f64(v);
        *sum = *sum + *o;
    };
    if std::mem::size_of::<M>() == 4 {
        // Scaled first (entries then lie between half a normalised message and 1: in f32's
        // range wherever f32 messages are used), then mixed at f32 precision, eight lanes.
        // (Every conversion below is the identity when `A` is f32.)
        let (k32, d32) = (keep as f32, damping as f32);
        if std::mem::size_of::<A>() == 4 {
            let rows = out
                .iter_mut()
                .zip(sums.iter_mut())
                .zip(scale.iter().zip(prev));
            if damping == 0.5 {
                // √(t·p): one root. f32 arithmetic runs only where every message entry is
                // at least e^-20 (see `F32_BUDGET`), so the product is a normal number.
                for ((o, sum), (&s, &p)) in rows {
                    let t = ((*o * s).to_f64() as f32 * p.to_f64() as f32).sqrt();
                    put(o, sum, t as f64);
                }
            } else {
                for ((o, sum), (&s, &p)) in rows {
                    let t = mix_f32((*o * s).to_f64() as f32, p.to_f64() as f32, k32, d32);
                    put(o, sum, t as f64);
                }
            }
            return;
        }
        for ((t, &o), &s) in tmp.iter_mut().zip(out.iter()).zip(scale) {
            *t = (o * s).to_f64() as f32;
        }
        if damping == 0.5 {
            for (t, &p) in tmp.iter_mut().zip(prev) {
                *t = mix_half(*t, p.to_f64() as f32);
            }
        } else {
            for (t, &p) in tmp.iter_mut().zip(prev) {
                *t = mix_f32(*t, p.to_f64() as f32, k32, d32);
            }
        }
        for ((o, sum), &t) in out.iter_mut().zip(sums.iter_mut()).zip(tmp.iter()) {
            put(o, sum, t as f64);
        }
    } else if damping == 0.5 {
        for ((o, sum), (&s, &p)) in out
            .iter_mut()
            .zip(sums.iter_mut())
            .zip(scale.iter().zip(prev))
        {
            put(o, sum, (*o * s).to_f64().sqrt() * p.to_f64().sqrt());
        }
    } else {
        for ((o, sum), (&s, &p)) in out
            .iter_mut()
            .zip(sums.iter_mut())
            .zip(scale.iter().zip(prev))
        {
            let (o1, p) = ((*o * s).to_f64(), p.to_f64());
            let lo = ln_pos(o1.max(f64::MIN_POSITIVE));
            let lp = ln_pos(p.max(f64::MIN_POSITIVE));
            let v = exp(lo * keep + lp * damping);
            put(o, sum, if o1 > 0.0 && p > 0.0 { v } else { 0.0 });
        }
    }
}

/// Damping 0.5 (PGMax's default, and the usual choice): the geometric mean √t · √p, two
/// square roots instead of two logarithms and an exponential (each root taken alone, so
/// nothing underflows that the mixture itself would not).
#[inline(always)]
fn mix_half(t: f32, p: f32) -> f32 {
    t.sqrt() * p.sqrt()
}

/// `t^keep · p^damping` of two messages with entries at most 1 (both logs and the
/// mixture are <= 0), 0 where either is.
#[inline(always)]
pub(super) fn mix_f32(t: f32, p: f32, keep: f32, damping: f32) -> f32 {
    let lo = ln_pos_f32(t.max(f32::MIN_POSITIVE));
    let lp = ln_pos_f32(p.max(f32::MIN_POSITIVE));
    let v = exp_nonpos_f32(lo * keep + lp * damping);
    if t > 0.0 && p > 0.0 {
        v
    } else {
        0.0
    }
}

crate::simd_dispatch! {
    /// Messages across one edge row with Potts tables (a constant plus Δ on the diagonal,
    /// edge weight `w`): `m(x') ∝ Σ_x cav(x) + (e^{wΔ} − 1) cav(x')`, so O(C) work per edge
    /// instead of C². Scaled so that no factor exceeds 1: `m = α S + β cav` with the
    /// edges' coefficients `alpha`, `beta` ([`Weighted::potts_coefficients`]); the
    /// messages' column sums into `sums`. Its own dispatch, so the general update's code is
    /// not disturbed by it.
    fn potts_messages<A: Real>(
        cav: &[A],
        out: &mut [A],
        sums: &mut [A],
        alpha: &[f64],
        beta: &[f64],
        geo: (usize, usize, usize, usize),
    ) -> () => potts_messages_body
}

#[inline(always)]
fn potts_messages_body<A: Real>(
    cav: &[A],
    out: &mut [A],
    sums: &mut [A],
    alpha: &[f64],
    beta: &[f64],
    (c, w, len, src_off): (usize, usize, usize, usize),
) {
    let mut total = vec![A::ZERO; len];
    for x in 0..c {
        let cv = &cav[x * w + src_off..x * w + src_off + len];
        total.iter_mut().zip(cv).for_each(|(s, &q)| *s = *s + q);
    }
    sums.fill(A::ZERO);
    for xo in 0..c {
        let cv = &cav[xo * w + src_off..xo * w + src_off + len];
        let o = &mut out[xo * w..xo * w + len];
        for i in 0..len {
            let (a, b) = (A::from_f64(alpha[i]), A::from_f64(beta[i]));
            // max(0): S − cav(x') may round below zero when Δ is very negative.
            o[i] = (a * total[i] + b * cv[i]).max(A::ZERO);
            sums[i] = sums[i] + o[i];
        }
    }
}

impl<A: Real> RowWs<A> {
    fn new(c: usize, w: usize, weighted: bool) -> RowWs<A> {
        RowWs {
            rho_rows: std::array::from_fn(|_| vec![1.0; w]),
            pot: if weighted {
                vec![0.0; c * c * w]
            } else {
                Vec::new()
            },
            pot_at: None,
            norm: vec![A::ZERO; w],
            sums: vec![A::ZERO; w],
            damp: vec![0.0; w],
            a: vec![A::ZERO; c * w],
            b: vec![A::ZERO; c * w],
            cav: vec![A::ZERO; c * w],
            out: vec![A::ZERO; c * w],
        }
    }
}

/// One sweep over all rows from `old` into `new`; returns the largest change.
fn sweep<M: Real, A: Real>(
    p: &GridPotentials,
    old: &[M],
    new: &mut [M],
    colour: Option<usize>,
    damping: f64,
    need_change: bool,
    stop: &Stop,
) -> f64 {
    let n = p.h * p.w * p.c;
    let o = Prev { data: old, n };
    let nw = &Next::new(new, n);
    let (c, w) = (p.c, p.w);
    (0..p.h)
        .into_par_iter()
        .with_min_len(4)
        .map_init(
            || RowWs::<A>::new(c, w, p.weighted.is_some()),
            // A raised stop skips the rest of the sweep; the caller returns Interrupted.
            |ws, r| match stop.is_raised() {
                true => 0.0,
                false => row_update(p, r, o, nw, colour, damping, need_change, ws),
            },
        )
        .reduce(|| 0.0, f64::max)
}

/// Runs BP on the grid; returns the iterations, convergence, last change and the
/// messages, normalised, in the grid layout (probability domain, `[dir][r][x][col]`) for
/// [`super::grid_beliefs`] (or [`to_general`] for the general belief pass).
pub fn iterate(
    p: &GridPotentials,
    max_iter: usize,
    tol: f64,
    damping: f64,
    schedule: Schedule,
    stop: &Stop,
) -> Result<(u32, bool, f64, Messages)> {
    let run = |f32_ok, compute32| match (f32_ok, compute32) {
        (true, true) => iterate_in::<f32, f32>(p, max_iter, tol, damping, schedule, stop)
            .map(|(i, c, ch, m)| (i, c, ch, Messages::F32(m))),
        (true, false) => iterate_in::<f32, f64>(p, max_iter, tol, damping, schedule, stop)
            .map(|(i, c, ch, m)| (i, c, ch, Messages::F32(m))),
        _ => iterate_in::<f64, f64>(p, max_iter, tol, damping, schedule, stop)
            .map(|(i, c, ch, m)| (i, c, ch, Messages::F64(m))),
    };
    run(p.f32_ok, p.compute32)
}

/// The grid messages as the sweeps left them (grid layout, probability domain), in the
/// precision they were stored in: f32 for float32 models whose tables allow it.
pub enum Messages {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

fn iterate_in<M: Real, A: Real>(
    p: &GridPotentials,
    max_iter: usize,
    tol: f64,
    damping: f64,
    schedule: Schedule,
    stop: &Stop,
) -> Result<(u32, bool, f64, Vec<M>)> {
    let (h, w, c) = (p.h, p.w, p.c);
    let n = h * w * c;
    let mut cur = par_filled(4 * n, M::from_f64(1.0 / c as f64));
    let mut nxt = par_filled(4 * n, M::from_f64(1.0 / c as f64));
    let mut result = (max_iter as u32, false, f64::INFINITY);
    for it in 1..=max_iter {
        stop.check()?;
        // With tol = 0 no iteration can converge: the change matters only at the end.
        let need = tol > 0.0 || it == max_iter;
        let change = match schedule {
            Schedule::Parallel => {
                let ch = sweep::<M, A>(p, &cur, &mut nxt, None, damping, need, stop);
                std::mem::swap(&mut cur, &mut nxt);
                ch
            }
            Schedule::Colour => {
                // Colour 0 reads `cur` and writes its messages into `nxt`; colour 1 reads
                // `nxt` and writes into `cur`. Each colour's nodes read only messages sent
                // by the other colour, which the buffer read holds fresh, and each buffer
                // keeps the latest messages of the colour written into it (no copies).
                let ch = sweep::<M, A>(p, &cur, &mut nxt, Some(0), damping, need, stop);
                ch.max(sweep::<M, A>(
                    p,
                    &nxt,
                    &mut cur,
                    Some(1),
                    damping,
                    need,
                    stop,
                ))
            }
        };
        stop.check()?;
        result = (it as u32, false, change);
        if change < tol {
            result.1 = true;
            break;
        }
    }
    if schedule == Schedule::Colour {
        merge_colour(p, &nxt, &mut cur, 0);
    }
    Ok((result.0, result.1, result.2, cur))
}

/// Copies the messages sent by nodes of colour `colour` from `from` into `into`.
fn merge_colour<M: Real>(p: &GridPotentials, from: &[M], into: &mut [M], colour: usize) {
    let (h, w, c) = (p.h, p.w, p.c);
    let n = h * w * c;
    let (src, dst) = (Prev { data: from, n }, &Next::new(into, n));
    (0..h).into_par_iter().for_each(|r| {
        for dir in [FROM_LEFT, FROM_RIGHT, FROM_UP, FROM_DOWN] {
            let Some((len, src_off, dst_off, tr)) = geometry(dir, r, h, w) else {
                continue;
            };
            let first = first_of_colour(colour, r, src_off);
            for x in 0..c {
                let s = &src.row(dir, tr, x, c, w)[dst_off..dst_off + len];
                // SAFETY: block `(dir, tr)` carries messages leaving row `r`'s nodes, which
                // only this task writes (see `Next`).
                let d = unsafe { dst.span(dir, tr, x, c, w, dst_off, len) };
                for i in (first..len).step_by(2) {
                    d[i] = s[i];
                }
            }
        }
    });
}

/// The grid messages (as [`iterate`] returns them) in the general layout of `loopy` (log
/// domain, slot `2e` from the edge's first node) in `msgs`: what the general belief pass
/// reads when the grid's own does not apply.
pub fn to_general(p: &GridPotentials, grid: &Messages, msgs: &mut [f64]) {
    match grid {
        Messages::F32(g) => general_in(p, g, msgs),
        Messages::F64(g) => general_in(p, g, msgs),
    }
}

fn general_in<M: Real>(p: &GridPotentials, grid: &[M], msgs: &mut [f64]) {
    let (h, w, c) = (p.h, p.w, p.c);
    let n = h * w * c;
    // One edge row per task: edge e's two slots are msgs[2e c..(2e + 2) c], so horizontal
    // row r owns the block of its w − 1 edges and vertical row r the block of its w edges.
    let at =
        |d: usize, r: usize, x: usize, col: usize| grid[d * n + (r * c + x) * w + col].to_f64();
    let n_h = h * (w - 1);
    let (horiz, vert) = msgs[..2 * (n_h + (h - 1) * w) * c].split_at_mut(2 * n_h * c);
    if w > 1 {
        horiz
            .par_chunks_mut(2 * (w - 1) * c)
            .enumerate()
            .for_each(|(r, out)| {
                for col in 0..w - 1 {
                    for x in 0..c {
                        out[(2 * col) * c + x] = ln0(at(FROM_LEFT, r, x, col + 1));
                        out[(2 * col + 1) * c + x] = ln0(at(FROM_RIGHT, r, x, col));
                    }
                }
            });
    }
    vert.par_chunks_mut(2 * w * c)
        .enumerate()
        .for_each(|(r, out)| {
            for col in 0..w {
                for x in 0..c {
                    out[(2 * col) * c + x] = ln0(at(FROM_UP, r + 1, x, col));
                    out[(2 * col + 1) * c + x] = ln0(at(FROM_DOWN, r, x, col));
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::NEVER;
    use crate::kernels::rng::Rng;
    use crate::model::scores::EdgeScores;

    /// Weighted edge scores give the same messages whether their potentials are cached
    /// per edge or made row by row (the path for grids too large to cache), in f64 and
    /// f32 storage, with negative weights and a forbidden pair.
    fn weighted_paths_agree<T: Real>(tol: f64) {
        let (h, w, c) = (5, 7, 3);
        let ne = h * (w - 1) + (h - 1) * w;
        let mut rng = Rng::stream(9, &[]);
        let mut u = |a: f64, b: f64| T::from_f64(a + (b - a) * rng.uniform());
        let node: Vec<T> = (0..h * w * c).map(|_| u(-2.0, 2.0)).collect();
        let wt: Vec<T> = (0..ne).map(|_| u(-1.0, 2.0)).collect();
        let mut tab: Vec<T> = (0..c * c).map(|_| u(-1.5, 1.5)).collect();
        let finite = tab.clone();
        tab[1] = T::from_f64(f64::NEG_INFINITY);
        for table in [&finite, &tab] {
            let es = EdgeScores::weighted(&wt, 1, table, 1, c).item(0);
            let cached = GridPotentials::with_cache(h, w, &node, &es, None, MAX_CACHE).unwrap();
            let rows = GridPotentials::with_cache(h, w, &node, &es, None, 0).unwrap();
            assert!(cached.weighted.is_none() && rows.weighted.is_some());
            assert_eq!(cached.f32_ok, rows.f32_ok);
            for schedule in [Schedule::Parallel, Schedule::Colour] {
                let (mut m1, mut m2) = (vec![0.0; 2 * ne * c], vec![0.0; 2 * ne * c]);
                let r1 = iterate(&cached, 15, 0.0, 0.3, schedule, &NEVER).unwrap();
                let r2 = iterate(&rows, 15, 0.0, 0.3, schedule, &NEVER).unwrap();
                to_general(&cached, &r1.3, &mut m1);
                to_general(&rows, &r2.3, &mut m2);
                assert_eq!(r1.0, r2.0);
                for (a, b) in m1.iter().zip(&m2) {
                    assert!(a == b || (a - b).abs() <= tol, "{a} vs {b} ({schedule:?})");
                }
            }
        }
    }

    /// The float32 route's spans, taken eight columns at a time: a table wider than
    /// `SPAN_F32` sends the grid to f64 potentials wherever its column falls (in the
    /// eight-column part or in the tail, horizontal or vertical), and every shift is its
    /// table's maximum (0 for a table of −inf only, whose potentials are all 0).
    #[test]
    fn float32_spans_are_found_in_every_column() {
        let (h, w, c) = (3, 21, 3);
        let (cc, n_h) = (c * c, h * (w - 1));
        let ne = n_h + (h - 1) * w;
        let mut rng = Rng::stream(7, &[]);
        let base: Vec<f32> = (0..ne * cc)
            .map(|_| (4.0 * rng.uniform() - 2.0) as f32)
            .collect();
        let node = vec![0.0f32; h * w * c];
        let max_of = |t: &[f32]| t.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // Horizontal edges of row 1 at columns 3 and 18 (vector part, tail), vertical
        // edges of row 0 at columns 5 and 20.
        let at = [w - 1 + 3, w - 1 + 18, n_h + 5, n_h + 20];
        for &e in &at {
            for (span, wide) in [(50.0f32, false), (70.0, true)] {
                let mut t = base.clone();
                t[e * cc + 4] = -span;
                let es = EdgeScores::tables(&t, 1, ne, c).item(0);
                let p = GridPotentials::new(h, w, &node, &es, None).unwrap();
                assert_eq!(
                    matches!(p.horiz, Pots::F64(_)),
                    wide,
                    "edge {e}, span {span}"
                );
                assert_eq!(
                    matches!(p.vert, Pots::F64(_)),
                    wide,
                    "edge {e}, span {span}"
                );
                for r in 0..h {
                    for col in 0..w {
                        for (vertical, shifts) in [(false, &p.hshift), (true, &p.vshift)] {
                            let e = match vertical {
                                false if col + 1 < w => r * (w - 1) + col,
                                true if r + 1 < h => n_h + r * w + col,
                                _ => continue,
                            };
                            let m = max_of(&t[e * cc..(e + 1) * cc]) as f64;
                            assert_eq!(shifts[r * w + col], m, "edge {e}");
                        }
                    }
                }
            }
        }
        // A table of −inf only among finite ones, in the tail of a row.
        let mut t = base.clone();
        let e = w - 1 + 18;
        t[e * cc..(e + 1) * cc].fill(f32::NEG_INFINITY);
        let es = EdgeScores::tables(&t, 1, ne, c).item(0);
        let p = GridPotentials::new(h, w, &node, &es, None).unwrap();
        assert_eq!(p.hshift[w + 18], 0.0);
        let Pots::F32(hp) = &p.horiz else {
            panic!("narrow tables stay in f32")
        };
        for k in 0..cc {
            assert_eq!(hp[(cc + k) * w + 18], 0.0);
            assert!(hp[(cc + k) * w + 17] > 0.0);
        }
    }

    #[test]
    fn weighted_potentials_cached_or_made_per_row_agree() {
        weighted_paths_agree::<f64>(1e-12);
        weighted_paths_agree::<f32>(1e-5);
    }

    /// f32 arithmetic exactly where `4 (table span + ln C) <= F32_BUDGET` for a float32
    /// model (node spans do not matter), never for float64 models or TRW.
    #[test]
    fn f32_arithmetic_follows_the_table_span_budget() {
        let (h, w, c) = (3, 4, 3);
        let ne = h * (w - 1) + (h - 1) * w;
        // Table spans on both sides of the budget: 80 / 4 − ln 3 ≈ 18.9.
        let tables = |span: f64| -> Vec<f32> {
            (0..ne * c * c)
                .map(|i| if i % (c * c) == 1 { span as f32 } else { 0.0 })
                .collect()
        };
        // Node scores spanning 100 (potentials far below f32's range).
        let node: Vec<f32> = (0..h * w * c)
            .map(|i| if i % c == 0 { 0.0 } else { -100.0 })
            .collect();
        let node64: Vec<f64> = node.iter().map(|&x| x as f64).collect();
        for (span, f32_arith) in [(3.0, true), (18.0, true), (19.5, false), (40.0, false)] {
            let t = tables(span);
            let es = EdgeScores::tables(&t, 1, ne, c).item(0);
            let p = GridPotentials::new(h, w, &node, &es, None).unwrap();
            assert!(p.f32_ok, "span {span}: f32 messages");
            assert_eq!(p.compute32, f32_arith, "span {span}");
            assert_eq!(p.phi32.len(), if f32_arith { h * w * c } else { 0 });
            let t64: Vec<f64> = t.iter().map(|&x| x as f64).collect();
            let es64 = EdgeScores::tables(&t64, 1, ne, c).item(0);
            let p64 = GridPotentials::new(h, w, &node64, &es64, None).unwrap();
            assert!(!p64.f32_ok && !p64.compute32);
            let rho = vec![0.5; ne];
            let trw = GridPotentials::new(h, w, &node, &es, Some(&rho)).unwrap();
            assert!(!trw.compute32);
        }
        // Weighted edges: the largest |weight| times the table's span.
        let tab: Vec<f32> = vec![0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        for (wmax, f32_arith) in [(5.0f32, true), (-9.0, true), (9.6, false)] {
            let mut wt = vec![1.0f32; ne];
            wt[ne / 2] = wmax;
            let es = EdgeScores::weighted(&wt, 1, &tab, 1, c).item(0);
            let p = GridPotentials::new(h, w, &node, &es, None).unwrap();
            assert_eq!(p.compute32, f32_arith, "weight {wmax}");
        }
    }

    /// The one-pass kernel's messages and changes are the row passes' bit for bit, for
    /// every C it is built for, shared and per-edge tables, every damping rule, both
    /// schedules, rows whose spans end in a whole block of eight or in a tail, the change
    /// measured at every iteration or only at the last, and a forbidden label (zero
    /// potential).
    #[test]
    fn one_pass_messages_equal_the_row_passes_bit_for_bit() {
        let mut rng = Rng::stream(11, &[]);
        for (h, w) in [(4, 21), (3, 9), (2, 3)] {
            let ne = h * (w - 1) + (h - 1) * w;
            for c in 2..=grid_fused::MAX_C {
                let mut node: Vec<f32> = (0..h * w * c)
                    .map(|_| (4.0 * rng.uniform() - 2.0) as f32)
                    .collect();
                node[c + 1] = f32::NEG_INFINITY;
                let tables: Vec<f32> = (0..ne * c * c)
                    .map(|_| (3.0 * rng.uniform() - 1.5) as f32)
                    .collect();
                for shared in [false, true] {
                    let n_tab = if shared { 1 } else { ne };
                    let es = EdgeScores::tables(&tables[..n_tab * c * c], 1, n_tab, c).item(0);
                    let mut p = GridPotentials::new(h, w, &node, &es, None).unwrap();
                    assert!(p.one_pass::<f32, f32>() && !p.one_pass::<f32, f64>());
                    for (damping, tol, schedule) in [
                        (0.0, 0.0, Schedule::Parallel),
                        (0.5, 0.0, Schedule::Parallel),
                        (0.3, 1e-30, Schedule::Parallel),
                        (0.5, 1e-30, Schedule::Parallel),
                        (0.0, 1e-30, Schedule::Colour),
                        (0.5, 0.0, Schedule::Colour),
                        (0.3, 1e-30, Schedule::Colour),
                    ] {
                        let runs = [true, false].map(|fused| {
                            p.fused = fused;
                            assert_eq!(p.one_pass::<f32, f32>(), fused);
                            iterate(&p, 7, tol, damping, schedule, &NEVER).unwrap()
                        });
                        let [(i1, _, ch1, m1), (i2, _, ch2, m2)] = &runs;
                        let (Messages::F32(m1), Messages::F32(m2)) = (m1, m2) else {
                            panic!("f32 messages expected")
                        };
                        let at = format!(
                            "{h}x{w}, C {c}, shared {shared}, damping {damping}, {schedule:?}"
                        );
                        assert_eq!((i1, ch1.to_bits()), (i2, ch2.to_bits()), "{at}");
                        // (The 2 × 3 grid can reach its fixed point to f32's rounding
                        // within the 7 iterations; the larger ones cannot.)
                        assert!(ch1.is_finite() && (*ch1 > 0.0 || h == 2), "{at}");
                        let bits = |m: &[f32]| m.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(m1), bits(m2), "{at}");
                    }
                }
            }
        }
    }

    /// `recip_pow2` brings any positive normal number's scale into `[1/2, 1)` exactly.
    #[test]
    fn recip_pow2_scales_into_half_open_unit() {
        for x in [
            1e-300, 3.7e-200, 0.2, 0.5, 1.0, 1.999, 2.0, 3.0, 1e10, 1e300,
        ] {
            let y = x * x.recip_pow2();
            assert!((0.5..1.0).contains(&y), "{x} -> {y}");
        }
        for x in [1e-37f32, 0.2, 0.5, 1.0, 1.5, 2.0, 3.0e20] {
            let y = x * x.recip_pow2();
            assert!((0.5..1.0).contains(&y), "{x} -> {y}");
        }
        assert_eq!(0.0f64.recip_pow2(), 0.0);
        assert_eq!((-2.0f32).recip_pow2(), 0.0);
    }
}
