//! The one-off work of a BP call on a 4-neighbour grid: node beliefs, pair marginals and
//! the Bethe log Z, from the grid messages and the grid potentials, vectorised across the
//! columns of a row like the iterations themselves.
//!
//! Why its own pass: the general belief pass walks edges one by one and exponentiates
//! each table again; here the tables' exponentials come from [`GridPotentials`] and every
//! loop runs over a row's columns for a fixed pair of labels. Beliefs and cavities are
//! products of potentials and messages (probability domain, no exponentials); only the
//! messages' logarithms enter log Z, written so that the scores cancel out of it:
//!
//! - node term: `E_b[θ_v] + H(b_v) = shift_v + ln Z_v − Σ_x b(x) Σ_dir ln m_dir(x)`,
//!   with `Z_v = Σ_x φ(x) Π_dir m_dir(x)`;
//! - edge term: `E_p[θ_e] − I(p) = shift_e + ln Z_e − ln Z_v − ln Z_w`
//!   `+ Σ_s p_s· ln m_wv(s) + Σ_d p_·d ln m_vw(d)`, with `p ∝ cav_v ψ cav_w`,
//!   `ψ = exp(θ_e − shift_e)` (`m_wv`: the message from w to v).
//!
//! Every message lies on one edge, so the node terms' logarithms are taken by the edge
//! pass, each once, where the edge's own terms need them: the node pass makes the beliefs
//! and `shift_v + ln Z_v` only, and edge (v, w) adds `−Σ_x b_v(x) ln m_wv(x)` and the same
//! at w, with `b_v ∝ cav_v m_wv` from the cavity the edge already holds. (No grid of logs
//! is stored and read back.)
//!
//! BP with per-edge, shared or weighted tables; TRW keeps the general pass.

use rayon::prelude::*;

use crate::inference::{weighted_dot, DirectRows, Gold, RowsOf, WeightedParts};
use crate::kernels::alloc::{init_with, sized};
use crate::kernels::batch::Rows;
use crate::kernels::layout::{pair_rows_f32, untranspose};
use crate::kernels::logspace::{exp, ln_pos, ln_pos_f32};
use crate::kernels::real::Real;
use crate::loopy::grid::{
    ln0, GridPotentials, Messages, Pots, FROM_DOWN, FROM_LEFT, FROM_RIGHT, FROM_UP,
};
use crate::loopy::grid_edge_fused::{self, EdgeRow, EdgeTerms};
use crate::simd_dispatch;

/// Below this a probability-domain normaliser is recomputed in the log domain.
const TINY: f64 = 1e-280;
/// Pair entries per block of rows in the edge pass (bounds the pair buffers).
const BLOCK_ENTRIES: usize = 1 << 16;

/// Where the edge pass's results go.
pub enum EdgeOut<'a> {
    /// Each pair marginal to `edge_sink`, in edge order within each block of rows
    /// (horizontal then vertical per row).
    Sink,
    /// Straight into output rows, from the parallel tasks (see [`DirectRows`]).
    Rows(DirectRows<'a>),
    /// Weighted-edge gradients, made in the parallel tasks (see [`WeightedParts`]).
    Weighted(WeightedParts<'a>),
}

/// Node beliefs handed to `node_sink` (nodes in order), the edges' results to `out`, and
/// the Bethe log Z; or `None` when this pass does not apply or a node has no allowed
/// label (the general pass then runs and reports it; nothing was handed out). `msgs`:
/// grid layout, probability domain.
pub fn bp_beliefs(
    p: &GridPotentials,
    msgs: &mut Messages,
    node_sink: &mut dyn FnMut(usize, &[f64]),
    edge_sink: &mut dyn FnMut(usize, &[f64]),
    direct: EdgeOut<'_>,
) -> Option<f64> {
    // The messages are read in the precision the sweeps stored them in (each value
    // widened to f64 where it is used): no f64 copy of the whole grid.
    match msgs {
        Messages::F32(m) => beliefs_in(p, m, node_sink, edge_sink, direct),
        Messages::F64(m) => beliefs_in(p, m, node_sink, edge_sink, direct),
    }
}

fn beliefs_in<M: Real>(
    p: &GridPotentials,
    msgs: &mut [M],
    node_sink: &mut dyn FnMut(usize, &[f64]),
    edge_sink: &mut dyn FnMut(usize, &[f64]),
    direct: EdgeOut<'_>,
) -> Option<f64> {
    if p.rho.is_some() {
        return None;
    }
    let (h, w, c) = (p.h, p.w, p.c);
    let n = h * w * c;
    // Messages from outside the grid are 1: every product below then takes all four.
    for r in 0..h {
        for x in 0..c {
            msgs[FROM_LEFT * n + (r * c + x) * w] = M::ONE;
            msgs[FROM_RIGHT * n + (r * c + x) * w + w - 1] = M::ONE;
        }
    }
    msgs[FROM_UP * n..FROM_UP * n + c * w].fill(M::ONE);
    msgs[FROM_DOWN * n + (h - 1) * c * w..FROM_DOWN * n + h * c * w].fill(M::ONE);
    let msgs = &*msgs;
    // The node beliefs (node-major) and ln Z_v, one grid row per task. (The messages'
    // logarithms enter log Z through the edges: see [`View::edge_row`].)
    let mut bel = Vec::with_capacity(n);
    let mut lz = Vec::new();
    if !node_pass(p, msgs, &mut bel, &mut lz) {
        return None;
    }
    // The node terms' scores and normalisers, `shift_v + ln Z_v`.
    let mut log_z = 0.0;
    for (&s, &l) in p.phi_shift.iter().zip(&lz) {
        log_z += s + l;
    }
    // Every node's marginals in one call (a call per node costs more than the copy).
    node_sink(0, &bel);
    let view = View {
        p,
        msgs,
        lz: &lz,
        n,
        gold: None,
    };
    let log_z = match direct {
        EdgeOut::Rows(DirectRows {
            rows: RowsOf::F32(out),
            gold,
        }) => edge_pass(&View { gold, ..view }, Some(out), None, edge_sink, log_z),
        EdgeOut::Rows(DirectRows {
            rows: RowsOf::F64(out),
            gold,
        }) => edge_pass(&View { gold, ..view }, Some(out), None, edge_sink, log_z),
        EdgeOut::Weighted(parts) => edge_pass::<f64, M>(&view, None, Some(parts), edge_sink, log_z),
        EdgeOut::Sink => edge_pass::<f64, M>(&view, None, None, edge_sink, log_z),
    };
    Some(log_z)
}

/// The node pass of [`beliefs_in`] into `bel` and `lz`; false when a node has no allowed
/// label left. Each task fills its own rows of both, which it then overwrites: no separate
/// pass over the whole arrays.
fn node_pass<M: Real>(
    p: &GridPotentials,
    msgs: &[M],
    bel: &mut Vec<f64>,
    lz: &mut Vec<f64>,
) -> bool {
    let (w, c) = (p.w, p.c);
    let n = p.h * w * c;
    bel.reserve_exact(n);
    lz.reserve_exact(p.h * w);
    let ok = bel.spare_capacity_mut()[..n]
        .par_chunks_mut(c * w)
        .zip(lz.spare_capacity_mut()[..p.h * w].par_chunks_mut(w))
        .enumerate()
        .map_init(NodeScratch::default, |scr, (r, (b, lzr))| {
            let (b, lzr) = (init_with(b, 0.0), init_with(lzr, 0.0));
            node_row::<M>(p, msgs, r, b, lzr, scr)
        })
        .all(|ok| ok);
    if ok {
        // SAFETY: every row's task ran (`all` stops early only on a failed row) and
        // initialised its chunks of both arrays.
        unsafe {
            bel.set_len(n);
            lz.set_len(p.h * w);
        }
    }
    ok
}

/// The edge pass: pair marginals and the edge terms of log Z (added to `log_z`, row by
/// row), in blocks of rows, one row per task: row r carries its w − 1 horizontal edges
/// and (above the last row) its w vertical edges to row r + 1. With `out` (the output
/// rows, edges in graph order) each task writes its edges' rows itself; with `wgrad` each
/// task writes its edges' weight gradients and sums `w_e p_e` over its row, the rows'
/// sums added into the table's gradient in row order; otherwise `edge_sink` takes the
/// pairs in order.
fn edge_pass<U: Real, M: Real>(
    view: &View<'_, M>,
    out: Option<&mut [U]>,
    wgrad: Option<WeightedParts<'_>>,
    edge_sink: &mut dyn FnMut(usize, &[f64]),
    mut log_z: f64,
) -> f64 {
    let p = view.p;
    let (h, w, c) = (p.h, p.w, p.c);
    let cc = c * c;
    let per_row = (2 * w - 1) * cc;
    // Weighted gradients with a Potts table come from the cavities: no row forms pairs.
    let potts_grads = wgrad.is_some() && p.weighted.as_ref().is_some_and(|wt| wt.is_potts());
    let pair_len = if potts_grads { 0 } else { per_row };
    // The blocks bound the buffer through which pairs reach `edge_sink`; pairs written
    // straight into the output rows need none, and the pass is one parallel loop (each
    // block is a barrier, with its tail's idle thread). (At least two rows per thread:
    // wide rows of large tables would otherwise leave the pass one row, one thread, at a
    // time.)
    let rows_per_block = match out {
        Some(_) => h,
        None if potts_grads => h,
        None => (BLOCK_ENTRIES / per_row.max(1))
            .max(2 * rayon::current_num_threads())
            .clamp(1, h),
    };
    let n_h = h * (w - 1);
    let direct = out.map(|o| {
        let (oh, ov) = o.split_at_mut(n_h * cc);
        (Rows::new(oh, (w - 1) * cc), Rows::new(ov, w * cc))
    });
    let (wgrad, mut grad_table) = match wgrad {
        Some(wp) => {
            let wt = p
                .weighted
                .as_ref()
                .expect("weighted gradients of weighted edges");
            let (gh, gv) = wp.grad_weight.split_at_mut(n_h);
            let rows = (Rows::new(gh, w - 1), Rows::new(gv, w));
            (Some((wp.table, rows.0, rows.1, wt)), Some(wp.grad_table))
        }
        None => (None, None),
    };
    // With direct output rows the pairs go straight there; otherwise through this block
    // buffer (each row's pairs, then with weighted gradients its sum of `w_e p_e`).
    let row_len = pair_len + if wgrad.is_some() { cc } else { 0 };
    let mut pairs = vec![
        0.0;
        if direct.is_some() {
            0
        } else {
            rows_per_block * row_len
        }
    ];
    let mut eterms: Vec<f64> = Vec::with_capacity(rows_per_block * (2 * w - 1));
    for r0 in (0..h).step_by(rows_per_block) {
        let r1 = (r0 + rows_per_block).min(h);
        let k = r1 - r0;
        let run = |scr: &mut EdgeScratch, i: usize, tr: &mut [f64], pr: Option<&mut [f64]>| {
            let r = r0 + i;
            let (th, tv) = tr.split_at_mut(w - 1);
            let (pr, mut partial) = match pr {
                Some(pr) => {
                    let (a, b) = pr.split_at_mut(pair_len);
                    b.fill(0.0);
                    (Some(a), Some(b))
                }
                None => (None, None),
            };
            let (mut ph, mut pv) = match pr {
                Some(pr) if !pr.is_empty() => {
                    let (a, b) = pr.split_at_mut((w - 1) * cc);
                    (Some(a), Some(b))
                }
                _ => (None, None),
            };
            let single = p.single();
            for (vertical, tr) in [(false, &mut *th), (true, &mut *tv)] {
                if vertical && r + 1 == h {
                    continue;
                }
                let scratch = if vertical {
                    pv.as_deref_mut()
                } else {
                    ph.as_deref_mut()
                };
                // Weighted gradients with a Potts table: made by the row from its cavities.
                if let (Some((table, gh, gv, wt)), Some(acc), true) =
                    (&wgrad, partial.as_deref_mut(), potts_grads)
                {
                    // SAFETY: row r's horizontal (vertical) edges are this task's only.
                    let gw = unsafe {
                        if vertical {
                            gv.get(r)
                        } else {
                            gh.get(r)
                        }
                    };
                    let ws = wt.weights(vertical, r, w);
                    let grads = Some(RowGrads { table, ws, gw, acc });
                    match single {
                        true => edge_row::<f32, f64, M>(view, r, vertical, &mut [], tr, grads, scr),
                        false => {
                            edge_row::<f64, f64, M>(view, r, vertical, &mut [], tr, grads, scr)
                        }
                    }
                    continue;
                }
                match (scratch, &direct) {
                    (Some(pr), _) => match single {
                        true => edge_row::<f32, f64, M>(view, r, vertical, pr, tr, None, scr),
                        false => edge_row::<f64, f64, M>(view, r, vertical, pr, tr, None, scr),
                    },
                    (None, Some((oh, ov))) => {
                        // SAFETY: row r's horizontal (vertical) edges are written by this
                        // task only.
                        let o = unsafe {
                            if vertical {
                                ov.get(r)
                            } else {
                                oh.get(r)
                            }
                        };
                        match single {
                            true => edge_row::<f32, U, M>(view, r, vertical, o, tr, None, scr),
                            false => edge_row::<f64, U, M>(view, r, vertical, o, tr, None, scr),
                        }
                    }
                    (None, None) => unreachable!("pairs go to the output rows or the buffer"),
                }
                if let (Some((table, gh, gv, wt)), Some(sum), Some(pr)) = (
                    &wgrad,
                    partial.as_deref_mut(),
                    if vertical {
                        pv.as_deref()
                    } else {
                        ph.as_deref()
                    },
                ) {
                    // SAFETY: row r's horizontal (vertical) edges are this task's only.
                    let gw = unsafe {
                        if vertical {
                            gv.get(r)
                        } else {
                            gh.get(r)
                        }
                    };
                    weighted_row(pr, table, wt.weights(vertical, r, w), gw, sum);
                }
            }
        };
        // (Each task zeroes its row of terms just before writing it: no fill pass first.)
        eterms.clear();
        let terms = eterms.spare_capacity_mut()[..k * (2 * w - 1)].par_chunks_mut(2 * w - 1);
        if direct.is_some() {
            terms
                .enumerate()
                .for_each_init(EdgeScratch::default, |s, (i, tr)| {
                    run(s, i, init_with(tr, 0.0), None)
                });
        } else {
            terms
                .zip(pairs[..k * row_len].par_chunks_mut(row_len))
                .enumerate()
                .for_each_init(EdgeScratch::default, |s, (i, (tr, pr))| {
                    run(s, i, init_with(tr, 0.0), Some(pr))
                });
        }
        // SAFETY: `for_each` ran every row's task, and each initialised its chunk.
        unsafe { eterms.set_len(k * (2 * w - 1)) };
        for i in 0..k {
            let r = r0 + i;
            let tr = &eterms[i * (2 * w - 1)..];
            let live = w - 1 + if r + 1 < h { w } else { 0 };
            for &t in &tr[..live] {
                log_z += t;
            }
            if direct.is_some() {
                continue;
            }
            let pr = &pairs[i * row_len..(i + 1) * row_len];
            if let Some(gt) = grad_table.as_deref_mut() {
                for (g, &x) in gt.iter_mut().zip(&pr[pair_len..]) {
                    *g += x;
                }
                continue;
            }
            for col in 0..w - 1 {
                edge_sink(r * (w - 1) + col, &pr[col * cc..(col + 1) * cc]);
            }
            if r + 1 < h {
                for col in 0..w {
                    let at = ((w - 1) + col) * cc;
                    edge_sink(n_h + r * w + col, &pr[at..at + cc]);
                }
            }
        }
    }
    log_z
}

/// The pass's logarithms and exponentials at the model's precision `F`: f32 (eight lanes,
/// a few f32 ulp) for a float32 model whose messages are held in f32, f64 otherwise.
/// `ln0` of a message or potential (−inf at 0).
#[inline(always)]
fn ln0_at<F: Real>(m: f64) -> f64 {
    if std::mem::size_of::<F>() == 8 {
        return ln0(m);
    }
    // (F is f32 only where the messages are held in f32: `m` is an f32 value.)
    ln0_f32(m as f32) as f64
}

/// `ln0_at::<f32>` in f32: the f32 logarithm of a message or potential (−inf at 0).
#[inline(always)]
pub(super) fn ln0_f32(m: f32) -> f32 {
    let l = ln_pos_f32(m.max(f32::MIN_POSITIVE));
    if m > 0.0 {
        l
    } else {
        f32::NEG_INFINITY
    }
}

/// Working rows of the node pass, kept by each parallel task across its rows.
#[derive(Default)]
struct NodeScratch {
    a: Vec<f64>,
    s: Vec<f64>,
    inv: Vec<f64>,
}

simd_dispatch! {
    /// Grid row `r` of the node pass: the beliefs (node-major) and `ln Z_v`. False when a
    /// node has no allowed label. `msgs` holds 1 for the messages from outside the grid.
    fn node_row<M: Real>(
        p: &GridPotentials,
        msgs: &[M],
        r: usize,
        b: &mut [f64],
        lzr: &mut [f64],
        scratch: &mut NodeScratch,
    ) -> bool => node_row_body
}

#[inline(always)]
fn node_row_body<M: Real>(
    p: &GridPotentials,
    msgs: &[M],
    r: usize,
    b: &mut [f64],
    lzr: &mut [f64],
    scratch: &mut NodeScratch,
) -> bool {
    let (h, w, c) = (p.h, p.w, p.c);
    let NodeScratch { a, s, inv } = scratch;
    let n = h * w * c;
    let row = r * c * w..(r + 1) * c * w;
    let src = |dir: usize| &msgs[dir * n + row.start..dir * n + row.end];
    // Beliefs in the probability domain: φ · L · R · U · D (φ >= e^-120 and messages
    // >= e^-121: at least e^-604, inside f64's range), no exponentials.
    let a = sized(a, c * w);
    let (l, rt, u, d) = (
        src(FROM_LEFT),
        src(FROM_RIGHT),
        src(FROM_UP),
        src(FROM_DOWN),
    );
    for (k, q) in a.iter_mut().enumerate() {
        *q = p.phi[row.start + k] * l[k].to_f64() * rt[k].to_f64() * u[k].to_f64() * d[k].to_f64();
    }
    let s = sized(s, w);
    s.copy_from_slice(&a[..w]);
    for x in 1..c {
        for (sx, &q) in s.iter_mut().zip(&a[x * w..(x + 1) * w]) {
            *sx += q;
        }
    }
    if s.iter().any(|&v| v <= 0.0) {
        return false;
    }
    for (z, &v) in lzr.iter_mut().zip(&*s) {
        *z = ln_pos(v);
    }
    let inv = sized(inv, w);
    for (o, &v) in inv.iter_mut().zip(&*s) {
        *o = 1.0 / v;
    }
    // Into the node-major beliefs eight columns at a time (a per-node loop stores one
    // scalar at a time with a stride of C).
    untranspose(a, w, w, c, b, |col, _, q| q * inv[col]);
    true
}

simd_dispatch! {
    /// Weighted-edge gradients of one edge row from its pairs (edge-major, `C × C` each):
    /// `gw[col] = ⟨table, p_col⟩` and `sum += Σ_col ws[col] p_col`.
    fn weighted_row<>(
        pairs: &[f64],
        table: &[f64],
        ws: &[f64],
        gw: &mut [f64],
        sum: &mut [f64],
    ) -> () => weighted_row_body
}

#[inline(always)]
fn weighted_row_body(pairs: &[f64], table: &[f64], ws: &[f64], gw: &mut [f64], sum: &mut [f64]) {
    let cc = table.len();
    for ((g, pc), &we) in gw.iter_mut().zip(pairs.chunks_exact(cc)).zip(ws) {
        *g = weighted_dot(pc, table);
        for (s, &x) in sum.iter_mut().zip(pc) {
            *s += we * x;
        }
    }
}

simd_dispatch! {
    /// Pair marginals (edge-major `[col][s][d]`) and terms of the horizontal edges of row
    /// `r` (`vertical` false: `(r, col)–(r, col + 1)`) or of its vertical edges
    /// (`(r, col)–(r + 1, col)`).
    fn edge_row<F: Real, U: Real, M: Real>(
        view: &View<'_, M>,
        r: usize,
        vertical: bool,
        pairs: &mut [U],
        terms: &mut [f64],
        grads: Option<RowGrads<'_>>,
        scratch: &mut EdgeScratch,
    ) -> () => edge_row_body
}

#[inline(always)]
fn edge_row_body<F: Real, U: Real, M: Real>(
    view: &View<'_, M>,
    r: usize,
    vertical: bool,
    pairs: &mut [U],
    terms: &mut [f64],
    grads: Option<RowGrads<'_>>,
    scratch: &mut EdgeScratch,
) {
    view.edge_row::<F, U>(r, vertical, pairs, terms, grads, scratch)
}

/// Weighted-edge gradients that an edge row with a Potts table makes itself from the
/// cavities, without its pairs (`pairs` is then left alone): `gw[col] = ⟨table, p_col⟩`
/// and `acc += Σ_col ws[col] p_col`.
struct RowGrads<'a> {
    table: &'a [f64],
    ws: &'a [f64],
    gw: &'a mut [f64],
    acc: &'a mut [f64],
}

/// The joint of an edge row: class-pair-major products in f64, or in f32 what forms
/// them (the endpoints' cavities `[x][col]` and the row's tables `[k][col]`, stride w).
enum Joint<'a> {
    F64(Vec<f64>),
    F32 {
        qv: &'a [f32],
        qu: &'a [f32],
        t: &'a [f32],
    },
}

/// Working rows of the edge pass, kept by each parallel task across the rows it runs: no
/// allocation per row, and no zero fill of what each row overwrites (at C = 3 a row's
/// dozen short vectors had cost as much as its arithmetic).
#[derive(Default)]
struct EdgeScratch {
    xv: Vec<f64>,
    xu: Vec<f64>,
    mv: Vec<f64>,
    mu: Vec<f64>,
    z: Vec<f64>,
    rows: Vec<f64>,
    cols: Vec<f64>,
    qv32: Vec<f32>,
    qu32: Vec<f32>,
    rows32: Vec<f32>,
    cols32: Vec<f32>,
    lnz: Vec<f64>,
    inv: Vec<f64>,
    acc: Vec<f64>,
    shift: Vec<f64>,
    inv32: Vec<f32>,
    gold_at: Vec<usize>,
    lg: Vec<f64>,
    lg32: Vec<f32>,
    nb: Vec<f64>,
}

/// `Σ_i a_i b_i c_i` in eight partial sums (a loop the compiler vectorises).
#[inline(always)]
fn dot3(a: &[f64], b: &[f64], c: &[f64]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let n = a.len().min(b.len()).min(c.len());
    let full = n - n % 8;
    for ((x, y), z) in a[..full]
        .chunks_exact(8)
        .zip(b[..full].chunks_exact(8))
        .zip(c[..full].chunks_exact(8))
    {
        for j in 0..8 {
            lanes[j] += x[j] * y[j] * z[j];
        }
    }
    let mut tail = 0.0;
    for i in full..n {
        tail += a[i] * b[i] * c[i];
    }
    ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]))
        + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))
        + tail
}

/// `(2^-e, e ln 2)` for `m` in `[2^e, 2^(e+1))` (`e` clamped to f64's normal exponents,
/// so the pair stays consistent: `m · 2^-e` in [1, 2) for every normal `m`); `(0, −inf)`
/// for `m <= 0`. Bit operations only, so loops over it vectorise.
#[inline(always)]
pub(super) fn pow2_scale(m: f64) -> (f64, f64) {
    let e = ((m.to_bits() >> 52) & 0x7ff).clamp(1, 2045);
    let inv = f64::from_bits((2046 - e) << 52);
    if m > 0.0 {
        (inv, (e as i64 - 1023) as f64 * std::f64::consts::LN_2)
    } else {
        (0.0, f64::NEG_INFINITY)
    }
}

/// Edge row `r`'s shape: edge `col` joins node `(r, col)` to node `(ru, col + off)`, for
/// `col < len`; the message into the first from the second comes from side `skip_v`, the
/// one into the second from side `skip_u`. `(ru, off, len, skip_v, skip_u)`.
#[inline(always)]
fn edge_row_shape(r: usize, vertical: bool, w: usize) -> (usize, usize, usize, usize, usize) {
    match vertical {
        true => (r + 1, 0, w, FROM_DOWN, FROM_UP),
        false => (r, 1, w - 1, FROM_RIGHT, FROM_LEFT),
    }
}

/// The three directions whose messages, with the potential, make a node's cavity leaving
/// out `skip`, in the order the cavity multiplies them.
#[inline(always)]
fn cavity_dirs(skip: usize) -> [usize; 3] {
    match skip {
        FROM_LEFT => [FROM_RIGHT, FROM_UP, FROM_DOWN],
        FROM_RIGHT => [FROM_LEFT, FROM_UP, FROM_DOWN],
        FROM_UP => [FROM_LEFT, FROM_RIGHT, FROM_DOWN],
        _ => [FROM_LEFT, FROM_RIGHT, FROM_UP],
    }
}

/// What the edge pass reads.
struct View<'a, M> {
    p: &'a GridPotentials,
    /// Messages, probability domain (1 from outside the grid).
    msgs: &'a [M],
    lz: &'a [f64],
    n: usize,
    /// Gradient rows instead of pair marginals (see [`DirectRows::gold`]).
    gold: Option<Gold<'a>>,
}

impl<M: Real> View<'_, M> {
    /// Log cavity of the nodes of row `r` (`[x][col]`), leaving out direction `skip`.
    fn cavity<F: Real>(&self, r: usize, skip: usize, out: &mut [f64]) {
        let (c, w) = (self.p.c, self.p.w);
        let row = r * c * w..(r + 1) * c * w;
        for (o, &f) in out.iter_mut().zip(&self.p.phi[row.clone()]) {
            *o = ln0(f);
        }
        for dir in [FROM_LEFT, FROM_RIGHT, FROM_UP, FROM_DOWN] {
            if dir != skip {
                let m = &self.msgs[dir * self.n + row.start..dir * self.n + row.end];
                out.iter_mut()
                    .zip(m)
                    .for_each(|(o, &v)| *o += ln0_at::<F>(v.to_f64()));
            }
        }
    }

    /// Cavity of the nodes of row `r` (`[x][col]`, leaving out direction `skip`) in the
    /// probability domain, each column scaled by a power of two to a maximum in [1, 2);
    /// the log of each column's scale into `ln_scale` (−inf for an all-zero column, left
    /// all zero). A product of `φ` and three messages: no exponentials, and inside f64's
    /// range (see `node_row`). (A power of two, not the maximum itself: the scaling is
    /// exact and its log is the exponent times ln 2, no division and no logarithm.)
    #[inline(always)]
    fn prob_cavity(&self, r: usize, skip: usize, out: &mut [f64], ln_scale: &mut [f64]) {
        let (c, w) = (self.p.c, self.p.w);
        let row = r * c * w..(r + 1) * c * w;
        // φ times the three messages in one pass (a copy of φ first, then a pass per
        // message, had moved the row through memory four times).
        let [m1, m2, m3] = cavity_dirs(skip)
            .map(|dir| &self.msgs[dir * self.n + row.start..dir * self.n + row.end]);
        for ((o, &f), ((&a, &b), &d)) in out
            .iter_mut()
            .zip(&self.p.phi[row.clone()])
            .zip(m1.iter().zip(m2).zip(m3))
        {
            *o = f * a.to_f64() * b.to_f64() * d.to_f64();
        }
        // Each column's maximum first (into `ln_scale`), then its biased exponent.
        let mx = &mut ln_scale[..w];
        mx.copy_from_slice(&out[..w]);
        for x in 1..c {
            for (m, &v) in mx.iter_mut().zip(&out[x * w..(x + 1) * w]) {
                *m = m.max(v);
            }
        }
        for x in 0..c {
            for (v, &m) in out[x * w..(x + 1) * w].iter_mut().zip(mx.iter()) {
                *v *= pow2_scale(m).0;
            }
        }
        for m in mx.iter_mut() {
            *m = pow2_scale(*m).1;
        }
    }

    /// See [`edge_row`]; the pairs are computed in f64 and stored as `U`.
    #[inline(always)]
    fn edge_row<F: Real, U: Real>(
        &self,
        r: usize,
        vertical: bool,
        pairs: &mut [U],
        terms: &mut [f64],
        mut grads: Option<RowGrads<'_>>,
        scratch: &mut EdgeScratch,
    ) {
        let p = self.p;
        let (c, w) = (p.c, p.w);
        let cc = c * c;
        // Edge `col` joins node (r, col) (labels s) to node (ru, col + off) (labels d).
        let (ru, off, len, skip_v, skip_u) = edge_row_shape(r, vertical, w);
        // (A grid one column wide has no horizontal edges.)
        if len == 0 {
            return;
        }
        // A float32 model's per-edge f32 tables with f32 messages and rows, at small C:
        // the one-pass kernel.
        if let (Some(msgs), Pots::F32(tabs), true) = (
            M::as_f32(self.msgs),
            if vertical { &p.vert } else { &p.horiz },
            p.fused
                && grads.is_none()
                && std::mem::size_of::<F>() == 4
                && U::as_f32(pairs).is_some()
                && !p.shared
                && p.weighted.is_none()
                && (2..=grid_edge_fused::MAX_C).contains(&c),
        ) {
            return self.edge_row_fused(r, vertical, msgs, tabs, pairs, terms, scratch);
        }
        let EdgeScratch {
            xv,
            xu,
            mv,
            mu,
            z,
            rows,
            cols,
            qv32,
            qu32,
            rows32,
            cols32,
            lnz,
            inv,
            acc,
            shift,
            inv32,
            gold_at,
            lg,
            lg32,
            nb,
        } = scratch;
        let (xv, xu) = (sized(xv, c * w), sized(xu, c * w));
        let (mv, mu) = (sized(mv, w), sized(mu, w));
        self.prob_cavity(r, skip_v, xv, mv);
        self.prob_cavity(ru, skip_u, xu, mu);
        let (xv, xu) = (&*xv, &*xu);
        // Log cavities, only if an edge needs the log-domain fallback.
        let mut logs: Option<(Vec<f64>, Vec<f64>)> = None;
        let (tabs, shifts) = if vertical {
            (&p.vert, &p.vshift)
        } else {
            (&p.horiz, &p.hshift)
        };
        // Weighted edges: a Potts table's potentials are α + β [a = b] per edge (no
        // exponentials); a general table's row is made here, as the sweeps make it.
        let potts = p
            .weighted
            .as_ref()
            .and_then(|wt| wt.potts_row(vertical, r, w));
        let wrow = match (&p.weighted, potts) {
            (Some(wt), None) => Some(wt.row_potentials(vertical, r, w)),
            _ => None,
        };
        let wshift = match (&p.weighted, &wrow) {
            (Some(wt), None) => Some(wt.row_shifts(vertical, r, w)),
            _ => None,
        };
        let psi = |k: usize, col: usize| -> f64 {
            match (&wrow, potts) {
                (_, Some((a, b))) => a[col] + if k.is_multiple_of(c + 1) { b[col] } else { 0.0 },
                (Some((pots, _)), _) => pots[k * w + col],
                _ if p.shared => tabs.get(k),
                _ => tabs.get((r * cc + k) * w + col),
            }
        };
        let shift_e = |col: usize| match (&wrow, &wshift) {
            (Some((_, sh)), _) | (_, Some(sh)) => sh[col],
            _ if p.shared => shifts[0],
            _ => shifts[r * w + col],
        };
        // The joint's normaliser z and its row and column sums (`[s][col]`, `[d][col]`),
        // unnormalised; the joint itself, class-pair-major, unless the table is Potts.
        let z = sized(z, len);
        z.fill(0.0);
        let (rows, cols) = (sized(rows, c * len), sized(cols, c * len));
        // (Potts tables: Σ_s qv(s) qu(s) per edge.)
        let mut potts_dot = Vec::new();
        let joint = if let Some((a, b)) = potts {
            // p(s, d) ∝ qv(s) qu(d) (α + β [s = d]): every sum in O(C) per edge.
            let (mut sv, mut su, mut dot) = (vec![0.0; len], vec![0.0; len], vec![0.0; len]);
            for x in 0..c {
                let (qv, qu) = (&xv[x * w..x * w + len], &xu[x * w + off..x * w + off + len]);
                for col in 0..len {
                    sv[col] += qv[col];
                    su[col] += qu[col];
                    dot[col] += qv[col] * qu[col];
                }
            }
            for col in 0..len {
                z[col] = a[col] * sv[col] * su[col] + b[col] * dot[col];
            }
            for x in 0..c {
                let (qv, qu) = (&xv[x * w..x * w + len], &xu[x * w + off..x * w + off + len]);
                let (rs, cs) = (
                    &mut rows[x * len..(x + 1) * len],
                    &mut cols[x * len..(x + 1) * len],
                );
                for col in 0..len {
                    rs[col] = qv[col] * (a[col] * su[col] + b[col] * qu[col]);
                    cs[col] = qu[col] * (a[col] * sv[col] + b[col] * qv[col]);
                }
            }
            potts_dot = dot;
            None
        } else if let (true, Pots::F32(v), None) = (
            std::mem::size_of::<F>() == 4 && std::mem::size_of::<U>() == 4 && !p.shared,
            tabs,
            &wrow,
        ) {
            // A float32 model's per-edge tables, in f32 (eight lanes; what is stored is
            // f32): the joint's row and column sums here from f32 accumulators (c terms
            // each: relative error ~1e-7, far inside the output's rounding budget), its
            // entries formed again, normalised, as they are written (no class-pair-major
            // buffer).
            let (qv32, qu32) = (sized(qv32, c * w), sized(qu32, c * w));
            for (o, &v) in qv32.iter_mut().zip(xv) {
                *o = v as f32;
            }
            for (o, &v) in qu32.iter_mut().zip(xu) {
                *o = v as f32;
            }
            let (rows32, cols32) = (sized(rows32, c * len), sized(cols32, c * len));
            rows32.fill(0.0);
            cols32.fill(0.0);
            for (s, rs) in rows32.chunks_exact_mut(len).enumerate() {
                let qv = &qv32[s * w..s * w + len];
                for (d, cs) in cols32.chunks_exact_mut(len).enumerate() {
                    let k = s * c + d;
                    let qu = &qu32[d * w + off..d * w + off + len];
                    let t = &v[(r * cc + k) * w..(r * cc + k) * w + len];
                    for ((rs, cs), ((&a, &t), &b)) in rs
                        .iter_mut()
                        .zip(cs.iter_mut())
                        .zip(qv.iter().zip(t).zip(qu))
                    {
                        let o = a * t * b;
                        *rs += o;
                        *cs += o;
                    }
                }
            }
            for (x, rs) in rows32.chunks_exact(len).enumerate() {
                for ((zz, r64), &v) in z.iter_mut().zip(&mut rows[x * len..]).zip(rs) {
                    *zz += v as f64;
                    *r64 = v as f64;
                }
            }
            for (c64, &v) in cols.iter_mut().zip(&*cols32) {
                *c64 = v as f64;
            }
            Some(Joint::F32 {
                qv: &*qv32,
                qu: &*qu32,
                t: &v[r * cc * w..],
            })
        } else {
            rows.fill(0.0);
            cols.fill(0.0);
            let mut joint = vec![0.0; cc * len];
            for s in 0..c {
                let qv = &xv[s * w..s * w + len];
                for d in 0..c {
                    let k = s * c + d;
                    let qu = &xu[d * w + off..d * w + off + len];
                    let out = &mut joint[k * len..(k + 1) * len];
                    let row = (r * cc + k) * w..(r * cc + k) * w + len;
                    match tabs {
                        _ if wrow.is_some() => {
                            let pots = &wrow.as_ref().expect("weighted").0[k * w..k * w + len];
                            for ((o, &t), (&a, &b)) in
                                out.iter_mut().zip(pots).zip(qv.iter().zip(qu))
                            {
                                *o = a * t * b;
                            }
                        }
                        _ if p.shared => {
                            let t = tabs.get(k);
                            for col in 0..len {
                                out[col] = qv[col] * t * qu[col];
                            }
                        }
                        Pots::F64(v) => {
                            for ((o, &t), (&a, &b)) in
                                out.iter_mut().zip(&v[row]).zip(qv.iter().zip(qu))
                            {
                                *o = a * t * b;
                            }
                        }
                        Pots::F32(v) => {
                            for ((o, &t), (&a, &b)) in
                                out.iter_mut().zip(&v[row]).zip(qv.iter().zip(qu))
                            {
                                *o = a * t as f64 * b;
                            }
                        }
                    }
                    for (((zz, rs), cs), &o) in z
                        .iter_mut()
                        .zip(rows[s * len..(s + 1) * len].iter_mut())
                        .zip(cols[d * len..(d + 1) * len].iter_mut())
                        .zip(out.iter())
                    {
                        *zz += o;
                        *rs += o;
                        *cs += o;
                    }
                }
            }
            Some(Joint::F64(joint))
        };
        // The logs of the two messages along each edge (`[x][col]`, stride `len`): into v
        // from u and into u from v. Each message lies on one edge, so each log is taken
        // once, here, where it is used (no grid of logs stored by the node pass).
        let (mg_v, mg_u) = (
            &self.msgs[skip_v * self.n + r * c * w..],
            &self.msgs[skip_u * self.n + ru * c * w..],
        );
        let lg = sized(lg, 2 * c * len);
        let (lm_v, lm_u) = lg.split_at_mut(c * len);
        if std::mem::size_of::<F>() == 4 {
            // f32 logarithms taken eight lanes at a time into f32, then widened (taken
            // straight into f64 rows they ran four lanes at a time).
            let lg32 = sized(lg32, 2 * c * len);
            let (l32_v, l32_u) = lg32.split_at_mut(c * len);
            for x in 0..c {
                let (m1, m2) = (
                    &mg_v[x * w..x * w + len],
                    &mg_u[x * w + off..x * w + off + len],
                );
                let (o1, o2) = (
                    &mut l32_v[x * len..(x + 1) * len],
                    &mut l32_u[x * len..(x + 1) * len],
                );
                for ((o, &m), (o2, &m2)) in o1.iter_mut().zip(m1).zip(o2.iter_mut().zip(m2)) {
                    *o = ln0_f32(m.to_f64() as f32);
                    *o2 = ln0_f32(m2.to_f64() as f32);
                }
            }
            for (o, &l) in lm_v.iter_mut().zip(&*l32_v) {
                *o = l as f64;
            }
            for (o, &l) in lm_u.iter_mut().zip(&*l32_u) {
                *o = l as f64;
            }
        } else {
            for x in 0..c {
                let (m1, m2) = (
                    &mg_v[x * w..x * w + len],
                    &mg_u[x * w + off..x * w + off + len],
                );
                for ((o, &m), (o2, &m2)) in lm_v[x * len..(x + 1) * len]
                    .iter_mut()
                    .zip(m1)
                    .zip(lm_u[x * len..(x + 1) * len].iter_mut().zip(m2))
                {
                    *o = ln0(m.to_f64());
                    *o2 = ln0(m2.to_f64());
                }
            }
        }
        let (lm_v, lm_u) = (&*lm_v, &*lm_u);
        // ln z in one vectorised loop; below `tiny` (rare) the exact fallback below runs.
        let tiny = if std::mem::size_of::<F>() == 8 {
            TINY
        } else {
            1e-30
        };
        let lnz = sized(lnz, len);
        if std::mem::size_of::<F>() == 8 {
            for (o, &v) in lnz.iter_mut().zip(&*z) {
                *o = ln_pos(v.max(TINY));
            }
        } else {
            for (o, &v) in lnz.iter_mut().zip(&*z) {
                *o = ln_pos_f32(v.max(1e-30) as f32) as f64;
            }
        }
        // 1/z where the probability-domain joint holds the edge (0 elsewhere: those
        // columns are redone in the log domain below).
        let inv = sized(inv, len);
        for (o, &v) in inv.iter_mut().zip(&*z) {
            *o = if v >= tiny && v.is_finite() {
                1.0 / v
            } else {
                0.0
            };
        }
        let inv = &*inv;
        // The terms across the columns: `Σ_s p_s· ln m_{w→v}(s) + Σ_d p_·d ln m_{v→w}(d)`
        // from the unnormalised joint's row and column sums (a forbidden label has sum 0
        // and adds nothing, whatever its log message).
        //
        // With them the endpoints' share of their node terms, `−Σ_x b_v(x) ln m_{w→v}(x)`
        // (and the same at w), from `b_v ∝ cav_v · m_{w→v}`: sums `bs` of `cav · m` and
        // `bl` of `cav · m · ln m` per column, `[v, w]`.
        let acc = sized(acc, len);
        acc.fill(0.0);
        let nb = sized(nb, 4 * len);
        nb.fill(0.0);
        let (bs, bl) = nb.split_at_mut(2 * len);
        let (bs_v, bs_u) = bs.split_at_mut(len);
        let (bl_v, bl_u) = bl.split_at_mut(len);
        for x in 0..c {
            let (rs, cs) = (&rows[x * len..(x + 1) * len], &cols[x * len..(x + 1) * len]);
            let (lv, lu) = (&lm_v[x * len..(x + 1) * len], &lm_u[x * len..(x + 1) * len]);
            let (qv, qu) = (&xv[x * w..x * w + len], &xu[x * w + off..x * w + off + len]);
            let (m1, m2) = (
                &mg_v[x * w..x * w + len],
                &mg_u[x * w + off..x * w + off + len],
            );
            for col in 0..len {
                // Every value is read before the tests: a read inside one compiles to a
                // masked load, which had cost a fifth of the row.
                let (l1, l2) = (lv[col], lu[col]);
                let (t1, t2) = (rs[col] * l1, cs[col] * l2);
                acc[col] += if rs[col] > 0.0 { t1 } else { 0.0 };
                acc[col] += if cs[col] > 0.0 { t2 } else { 0.0 };
                let (b1, b2) = (qv[col] * m1[col].to_f64(), qu[col] * m2[col].to_f64());
                let (u1, u2) = (b1 * l1, b2 * l2);
                bs_v[col] += b1;
                bs_u[col] += b2;
                bl_v[col] += if b1 > 0.0 { u1 } else { 0.0 };
                bl_u[col] += if b2 > 0.0 { u2 } else { 0.0 };
            }
        }
        // (Both sums are positive: the node pass found every node some allowed label.)
        let node_share = &mut bl_v[..];
        for (((o, &s1), &u2), &s2) in node_share.iter_mut().zip(&*bs_v).zip(&*bl_u).zip(&*bs_u) {
            *o = *o / s1 + u2 / s2;
        }
        let node_share = &*node_share;
        let (lz_v, lz_u) = (&self.lz[r * w..r * w + len], &self.lz[ru * w + off..]);
        // The shifts as one row first, so the terms' loop vectorises (copied, not
        // collected: an iterator's `collect` is compiled outside the SIMD copy).
        let shift_row = sized(shift, len);
        match (&wrow, &wshift) {
            (Some((_, sh)), _) | (_, Some(sh)) => shift_row.copy_from_slice(&sh[..len]),
            _ if p.shared => shift_row.fill(shifts[0]),
            _ => shift_row.copy_from_slice(&shifts[r * w..r * w + len]),
        }
        for col in 0..len {
            terms[col] =
                shift_row[col] + mv[col] + mu[col + off] + lnz[col] - lz_v[col] - lz_u[col]
                    + acc[col] * inv[col]
                    - node_share[col];
        }
        // Gradient rows: each edge's gold entry `y_v C + y_u`.
        let gold_at: &[usize] = match self.gold {
            Some(g) => {
                let at = sized(gold_at, len);
                let (yv, yu) = (&g.labels[r * w..r * w + len], &g.labels[ru * w + off..]);
                for ((k, &a), &b) in at.iter_mut().zip(yv).zip(yu) {
                    *k = a as usize * c + b as usize;
                }
                at
            }
            None => &[],
        };
        // Entry `k` of edge `col`'s row from its pair marginal `p`.
        let fin = |col: usize, k: usize, p: f64| -> U {
            match self.gold {
                Some(g) => U::from_f64(g.entry(k, gold_at[col], p)),
                None => U::from_f64(p),
            }
        };
        match (&joint, potts) {
            (Some(Joint::F32 { qv, qu, t }), _) => {
                // Normalised (and scaled by the item's weight for gradient rows) as they
                // are written into the edge-major output, then the gold entries redone.
                let scale = self.gold.map_or(1.0, |g| g.scale);
                let inv32 = sized(inv32, len);
                for (o, &v) in inv32.iter_mut().zip(inv) {
                    *o = (v * scale) as f32;
                }
                let out = U::as_f32_mut(pairs).expect("f32 rows");
                pair_rows_f32(t, w, qv, w, &qu[off..], w, c, len, inv32, out);
                if let Some(g) = self.gold {
                    // (The labels themselves, not `k / c` and `k % c`: no integer division.)
                    let (yv, yu) = (&g.labels[r * w..r * w + len], &g.labels[ru * w + off..]);
                    for (col, ((&k, &s), &d)) in gold_at.iter().zip(yv).zip(yu).enumerate() {
                        let (s, d) = (s as usize, d as usize);
                        let joint = qv[s * w + col] * t[k * w + col] * qu[d * w + off + col];
                        pairs[col * cc + k] = fin(col, k, joint as f64 * inv[col]);
                    }
                }
            }
            // The class-pair-major joint into the edge-major output, normalised.
            (Some(Joint::F64(joint)), _) => match self.gold {
                None => untranspose(joint, len, len, cc, pairs, |col, _, x| {
                    U::from_f64(x * inv[col])
                }),
                Some(g) => {
                    // Every entry times the scale, then each row's gold entry redone from
                    // the same pair marginal (a compare per entry costs the loop its
                    // speed): the values `Gold::entry` gives.
                    untranspose(joint, len, len, cc, pairs, |col, _, x| {
                        U::from_f64(x * inv[col] * g.scale)
                    });
                    for (col, &k) in gold_at.iter().enumerate() {
                        pairs[col * cc + k] = fin(col, k, joint[k * len + col] * inv[col]);
                    }
                }
            },
            (None, Some((a, b))) if grads.is_some() => {
                let g = grads.as_mut().expect("checked");
                // θ = off + (diag − off) I: ⟨θ, p⟩ = off Σp + (diag − off) Σ_s p(s, s).
                let diag = g.table[0];
                let offd = if c > 1 { g.table[1] } else { diag };
                for col in (0..len).filter(|&col| inv[col] != 0.0) {
                    let same = (a[col] + b[col]) * potts_dot[col] * inv[col];
                    g.gw[col] = offd * (z[col] * inv[col]) + (diag - offd) * same;
                }
                // Σ_col w p_col: rank-one terms u α qv qu^T, plus u β qv(s) qu(s) on the
                // diagonal, with u = w / z (0 for the columns the exact path redoes).
                let (mut ua, mut ub) = (vec![0.0; len], vec![0.0; len]);
                for col in 0..len {
                    let u = g.ws[col] * inv[col];
                    ua[col] = u * a[col];
                    ub[col] = u * b[col];
                }
                for s in 0..c {
                    let qv = &xv[s * w..s * w + len];
                    for d in 0..c {
                        let qu = &xu[d * w + off..d * w + off + len];
                        g.acc[s * c + d] += dot3(&ua, qv, qu);
                    }
                    let qu = &xu[s * w + off..s * w + off + len];
                    g.acc[s * c + s] += dot3(&ub, qv, qu);
                }
            }
            (None, Some((a, b))) => {
                let mut quc = vec![0.0; c];
                for (col, pc) in pairs.chunks_exact_mut(cc).take(len).enumerate() {
                    for (d, q) in quc.iter_mut().enumerate() {
                        *q = xu[d * w + off + col];
                    }
                    for (s, prow) in pc.chunks_exact_mut(c).enumerate() {
                        let f = xv[s * w + col] * inv[col];
                        for (d, (o, &q)) in prow.iter_mut().zip(&quc).enumerate() {
                            let diag = if d == s { b[col] } else { 0.0 };
                            *o = fin(col, s * c + d, f * q * a[col] + f * q * diag);
                        }
                    }
                }
            }
            (None, None) => unreachable!("the joint is made unless the table is Potts"),
        }
        // (Counted first in a loop that vectorises: the scan below is scalar, and rarely
        // finds anything.)
        let redo = inv.iter().fold(0usize, |a, &v| a + (v == 0.0) as usize);
        let mut exact = Vec::new();
        for col in (0..len).filter(|&col| redo > 0 && inv[col] == 0.0) {
            // Exact log-domain joint for this edge (rare: a tiny normaliser), in f64.
            exact.resize(cc, 0.0);
            let pc = &mut exact[..];
            let (lxv, lxu) = logs.get_or_insert_with(|| {
                let (mut a, mut b) = (vec![0.0; c * w], vec![0.0; c * w]);
                self.cavity::<F>(r, skip_v, &mut a);
                self.cavity::<F>(ru, skip_u, &mut b);
                (a, b)
            });
            for s in 0..c {
                for d in 0..c {
                    pc[s * c + d] =
                        lxv[s * w + col] + ln0(psi(s * c + d, col)) + lxu[d * w + col + off];
                }
            }
            let m = pc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if m == f64::NEG_INFINITY {
                match grads.as_mut() {
                    Some(g) => g.gw[col] = 0.0,
                    None => pairs[col * cc..(col + 1) * cc].fill(U::ZERO),
                }
                terms[col] = f64::NEG_INFINITY;
                continue;
            }
            let mut sum = 0.0;
            for v in pc.iter_mut() {
                *v = exp(*v - m);
                sum += *v;
            }
            pc.iter_mut().for_each(|v| *v /= sum);
            match grads.as_mut() {
                Some(g) => {
                    g.gw[col] = weighted_dot(pc, g.table);
                    for (a, &v) in g.acc.iter_mut().zip(pc.iter()) {
                        *a += g.ws[col] * v;
                    }
                }
                None => {
                    let out = &mut pairs[col * cc..(col + 1) * cc];
                    for (k, (o, &v)) in out.iter_mut().zip(pc.iter()).enumerate() {
                        *o = fin(col, k, v);
                    }
                }
            }
            let lze = m + ln_pos(sum);
            let (v, u) = (r * w + col, ru * w + col + off);
            let mut t = shift_e(col) + lze - self.lz[v] - self.lz[u] - node_share[col];
            for s in 0..c {
                let ps: f64 = pc[s * c..(s + 1) * c].iter().sum();
                if ps > 0.0 {
                    t += ps * lm_v[s * len + col];
                }
            }
            for d in 0..c {
                let pd: f64 = (0..c).map(|s| pc[s * c + d]).sum();
                if pd > 0.0 {
                    t += pd * lm_u[d * len + col];
                }
            }
            terms[col] = t;
        }
    }

    /// [`Self::edge_row`] through the one-pass kernel ([`grid_edge_fused`]): per-edge f32
    /// tables `tabs`, f32 messages `msgs`, f32 output rows `pairs`.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn edge_row_fused<U: Real>(
        &self,
        r: usize,
        vertical: bool,
        msgs: &[f32],
        tabs: &[f32],
        pairs: &mut [U],
        terms: &mut [f64],
        scratch: &mut EdgeScratch,
    ) {
        #[cfg(test)]
        self.p
            .edge_rows_fused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = self.p;
        let (c, w, n) = (p.c, p.w, self.n);
        let cc = c * c;
        let (ru, off, len, skip_v, skip_u) = edge_row_shape(r, vertical, w);
        let at = |dir: usize, row: usize| &msgs[dir * n + row * c * w..dir * n + (row + 1) * c * w];
        let shifts = if vertical { &p.vshift } else { &p.hshift };
        let t = &tabs[r * cc * w..];
        let EdgeScratch {
            qv32,
            qu32,
            inv,
            inv32,
            ..
        } = scratch;
        let (qv, qu) = (sized(qv32, c * w), sized(qu32, c * w));
        let inv = sized(inv, len);
        // The pair rows normalised (and scaled by the item's weight for gradient rows) as
        // the kernel writes them into the edge-major output (at C = 2 a row's four entries
        // are too few for its 8 × 8 blocks: after it, here), then the gold entries redone.
        let scale = self.gold.map_or(1.0, |g| g.scale);
        let out = U::as_f32_mut(pairs).expect("f32 rows");
        grid_edge_fused::edge_row(
            &EdgeRow {
                c,
                w,
                len,
                off,
                phi_v: &p.phi[r * c * w..(r + 1) * c * w],
                phi_u: &p.phi[ru * c * w..(ru + 1) * c * w],
                cav_v: cavity_dirs(skip_v).map(|d| at(d, r)),
                cav_u: cavity_dirs(skip_u).map(|d| at(d, ru)),
                msg_v: at(skip_v, r),
                msg_u: at(skip_u, ru),
                tabs: t,
                lz_v: &self.lz[r * w..(r + 1) * w],
                lz_u: &self.lz[ru * w..(ru + 1) * w],
                shift: &shifts[r * w..r * w + len],
            },
            &mut EdgeTerms {
                qv,
                qu,
                terms,
                inv,
                pairs: if c > 2 { &mut *out } else { &mut [] },
                scale,
            },
        );
        let (qv, qu, inv) = (&*qv, &*qu, &*inv);
        if c == 2 {
            let inv32 = sized(inv32, len);
            for (o, &v) in inv32.iter_mut().zip(inv) {
                *o = (v * scale) as f32;
            }
            pair_rows_f32(t, w, qv, w, qu, w, c, len, inv32, out);
        }
        if let Some(g) = self.gold {
            let (yv, yu) = (&g.labels[r * w..r * w + len], &g.labels[ru * w + off..]);
            for (col, (&s, &d)) in yv.iter().zip(yu).enumerate() {
                let (s, d) = (s as usize, d as usize);
                let k = s * c + d;
                let joint = qv[s * w + col] * t[k * w + col] * qu[d * w + col];
                out[col * cc + k] = g.entry(k, k, joint as f64 * inv[col]) as f32;
            }
        }
        // (Tables stored in f32 span at most `SPAN_F32` = 30: each edge's joint holds
        // `ψ ≥ e^-30` at its cavities' largest labels, each at least 1, so no `z` falls
        // below the f32 floor where the row passes redo an edge in the log domain.)
        assert!(
            inv.iter().all(|&v| v > 0.0),
            "an edge's joint underflowed f32"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::NEVER;
    use crate::kernels::rng::Rng;
    use crate::loopy::grid::iterate;
    use crate::loopy::options::Schedule;
    use crate::model::scores::EdgeScores;
    use std::sync::atomic::Ordering;

    /// The one-pass edge rows ([`grid_edge_fused`]) give the row passes' node beliefs,
    /// pair rows, gradient rows and log Z to the bit, at every C they are built for, on
    /// grids whose rows have whole blocks of eight and tails, are shorter than eight, or
    /// have no horizontal (or no vertical) edges.
    #[test]
    fn one_pass_edge_rows_equal_the_row_passes_bit_for_bit() {
        let mut rng = Rng::stream(23, &[]);
        for (h, w) in [(4, 21), (3, 9), (2, 3), (1, 12), (9, 1)] {
            let ne = h * (w - 1) + (h - 1) * w;
            let cs = 2..=grid_edge_fused::MAX_C;
            for c in cs.chain([13]) {
                let mut node: Vec<f32> = (0..h * w * c)
                    .map(|_| (6.0 * rng.uniform() - 3.0) as f32)
                    .collect();
                node[c + 1] = f32::NEG_INFINITY;
                let tables: Vec<f32> = (0..ne * c * c)
                    .map(|_| (8.0 * rng.uniform() - 4.0) as f32)
                    .collect();
                let labels: Vec<i64> = (0..h * w).map(|i| ((i * 7 + 3) % c) as i64).collect();
                let es = EdgeScores::tables(&tables, 1, ne, c).item(0);
                let mut p = GridPotentials::new(h, w, &node, &es, None).unwrap();
                let (_, _, _, msgs) = iterate(&p, 4, 0.0, 0.5, Schedule::Parallel, &NEVER).unwrap();
                let Messages::F32(msgs) = msgs else {
                    panic!("f32 messages expected")
                };
                for gold in [None, Some(0.75)] {
                    let runs = [true, false].map(|fused| {
                        p.fused = fused;
                        let mut m = Messages::F32(msgs.clone());
                        let mut bel = Vec::new();
                        let mut rows = vec![f32::NAN; ne * c * c];
                        let gold = gold.map(|scale| Gold {
                            labels: &labels,
                            scale,
                        });
                        let before = p.edge_rows_fused.load(Ordering::Relaxed);
                        let log_z = bp_beliefs(
                            &p,
                            &mut m,
                            &mut |_, b| bel.extend_from_slice(b),
                            &mut |_, _| panic!("pairs go to the rows"),
                            EdgeOut::Rows(DirectRows {
                                rows: RowsOf::F32(&mut rows),
                                gold,
                            }),
                        )
                        .unwrap();
                        let used = p.edge_rows_fused.load(Ordering::Relaxed) - before;
                        (log_z, bel, rows, used)
                    });
                    let [(z1, b1, r1, used1), (z2, b2, r2, used2)] = &runs;
                    let at = format!("{h}x{w}, C {c}, gold {gold:?}");
                    // The one-pass rows ran exactly where they apply (every edge row on
                    // the first run, none on the second).
                    let edge_rows = if w > 1 { h } else { 0 } + h.saturating_sub(1);
                    let want = if c <= grid_edge_fused::MAX_C {
                        edge_rows
                    } else {
                        0
                    };
                    assert_eq!((*used1, *used2), (want, 0), "{at}");
                    assert!(z1.is_finite(), "{at}");
                    assert_eq!(z1.to_bits(), z2.to_bits(), "{at}: {z1} vs {z2}");
                    let bits64 = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    let bits32 = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits64(b1), bits64(b2), "{at}");
                    assert!(r1.iter().all(|x| x.is_finite()), "{at}");
                    assert_eq!(bits32(r1), bits32(r2), "{at}");
                }
            }
        }
    }
}
