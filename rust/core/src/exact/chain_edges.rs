//! Linear-chain forward–backward with one table per edge (and per item): the form a network
//! writes, `s_e (B, T-1, C, C)`.
//!
//! The per-item kernel (`sumproduct`) works in the log domain: per message `2C`
//! exponentials and logarithms besides the `C²` table exponentials. Here, as in the
//! shared-table kernel (`chain`), the products run in the scaled probability domain: one
//! exponential per (item, edge, a, b) — `E_t = exp(θ_t − max θ_t)`, kept for the backward
//! pass — and multiply–adds after that, rows renormalised at every position with the logs
//! of the normalisers summed into log Z in f64. The backward pass keeps one β row (the
//! next position's), and writes node and pair marginals as it goes:
//!
//! ```text
//! g[b]   = φ_{t+1}[b] β_{t+1}[b]          bt[a] = Σ_b E_t[a, b] g[b]
//! d      = Σ_a α_t[a] bt[a]               node_t[a] = α_t[a] bt[a] / d
//! pair_t[a, b] = α_t[a] E_t[a, b] g[b] / d            β_t = bt / Σ bt
//! ```
//!
//! Exactness up to rounding follows the shared-table kernel's argument (see `chain`), per
//! table: the path is taken when no table has a −inf entry and every table's finite span is
//! at most `SPAN`; an item whose tables all span at most `SPAN_F32` runs its products in
//! f32 (for float32 models), any other in f64; otherwise the caller runs the log-domain
//! kernel. Each table's span is measured just before its exponentials are taken (the table
//! is then read from memory once, not in a separate pass over the batch first). Rows are
//! element-wise loops over `C` that vectorise (AVX2 where the CPU has it); items run in
//! parallel, each in a fixed order and precision, so results do not depend on the thread
//! count. Pair rows are written once, straight into the output's spare capacity (no zero
//! fill of the large output first; past `STREAM_BYTES` each row is streamed out with
//! non-temporal stores as it is made). Float32 tables are exponentiated with fused
//! multiply–adds where the CPU has FMA (`logspace::exp_shifted_f32`); above
//! `chain_lanes::MAX_CLASSES` relative to the previous table's largest entry, in the same
//! pass that measures the table's range (`logspace::exp_ranged_f32`; see `item_body`).
//! Batches with small `C` run eight items at once, one per SIMD lane (`chain_lanes`), with
//! the same results bit for bit.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::error::Result;
use crate::exact::chain::{Gemm, SPAN, SPAN_F32};
use crate::exact::chain_lanes::{self, group, GroupWork, Lane, LANES};
use crate::inference::{LossGrad, Marginals};
use crate::kernels::alloc::{assume_init, filled, reserved};
use crate::kernels::batch::chunk_size;
use crate::kernels::logspace::{exp_ranged_f32, exp_shifted_f32, range};
use crate::kernels::real::Real;
use crate::kernels::stream;
use crate::model::scores::Problem;

/// Largest per-worker buffer of exponentiated tables (bytes).
const MAX_ITEM_TABLES: usize = 256 << 20;

/// Whether `pb` is a batch of chains with a table per edge (per item or broadcast over
/// items), per-item node scores: the shape this kernel serves.
fn applies<T: Real>(pb: &Problem<'_, T>) -> bool {
    let n = pb.graph.num_nodes();
    let c = pb.classes();
    // Each worker keeps an item's exponentiated tables; beyond this the per-item kernel,
    // which streams them, runs instead (no unbounded workspace per thread).
    let fits = (n.saturating_sub(1))
        .checked_mul(c * c * 8)
        .is_some_and(|b| b <= MAX_ITEM_TABLES);
    fits && pb.graph.is_chain()
        && n >= 2
        && pb.node.batch == pb.batch
        && pb.edge.weight.is_none()
        && pb.edge.edges == n - 1
}

/// Scores this kernel does not read, checked first when the problem left `s_e` unchecked
/// (see [`Problem::deferring_edge_check`]): with lengths, the tables past an item's last
/// edge. (Every table the kernel reads it checks itself, in the pass that takes its range.)
fn check_unread_tables<T: Real>(pb: &Problem<'_, T>) -> Result<()> {
    let n = pb.graph.num_nodes();
    match pb.lengths {
        Some(l) if l.iter().any(|&len| len < n) => pb.check_edges(),
        _ => Ok(()),
    }
}

/// What an item that left the kernel means for the call: the input error when a table the
/// kernel read holds NaN or +inf (`Some(Err)`: the first bad entry, as the input check
/// names it), else `None` (the log-domain kernel runs, or reports an infeasible item).
fn left<R, T: Real>(pb: &Problem<'_, T>) -> Option<Result<R>> {
    pb.check_edges().err().map(Err)
}

/// How one item's forward–backward ended.
enum Outcome {
    /// Its log Z; marginals written.
    Done(f64),
    /// A table spans more than f32 products hold: run the item again in f64.
    Wider,
    /// A table has a −inf entry or spans more than f64 products hold (the log-domain kernel
    /// must run), or every labelling of the item is forbidden (that kernel reports it), or
    /// a table holds NaN or +inf (the caller reports the input error).
    Leave,
}

/// Per-worker buffers.
struct Ws<F> {
    phi: Vec<F>,
    alpha: Vec<F>,
    e: Vec<F>,
    beta: Vec<F>,
    g: Vec<F>,
    bt: Vec<F>,
    /// `ln` of each forward step's normaliser, added to log Z after the tables' shifts
    /// (the order of the sum the grouped kernel takes: the same bits).
    lns: Vec<f64>,
}

impl<F: Gemm> Ws<F> {
    fn new(n: usize, c: usize) -> Ws<F> {
        let z = F::of(0.0);
        Ws {
            phi: vec![z; n * c],
            alpha: vec![z; n * c],
            e: vec![z; n.saturating_sub(1) * c * c],
            beta: vec![z; c],
            g: vec![z; c],
            bt: vec![z; c],
            lns: vec![0.0; n],
        }
    }
}

/// A worker's buffers, in each product precision its items have needed so far.
#[derive(Default)]
struct Work {
    f32: Option<Ws<f32>>,
    f64: Option<Ws<f64>>,
    /// Stream pair rows out with non-temporal stores (see [`streams`]), staging a few rows
    /// at a time (see [`STAGE`]) in `row`.
    stream: bool,
    row: Vec<u64>,
}

impl Work {
    fn new(stream: bool) -> Work {
        Work {
            stream,
            ..Work::default()
        }
    }

    /// Forward–backward of item `b` (see [`item`]) in the precision its tables allow: f32
    /// products first for float32 models, f64 when a table turns out too wide for them;
    /// `None` when they allow neither (the log-domain kernel must run) or the item is
    /// infeasible.
    #[allow(clippy::too_many_arguments)]
    fn run<T: Real>(
        &mut self,
        node: &[T],
        tabs: &[T],
        len: usize,
        c: usize,
        w: f64,
        node_out: &mut [T],
        edge_out: EdgeOut<'_, T>,
    ) -> Option<f64> {
        let n = node.len() / c;
        let mut edge_out = match edge_out {
            EdgeOut::Rows(rows) if self.stream => {
                EdgeOut::Stream(rows, scratch(&mut self.row, c * (STAGE / c).max(1)))
            }
            out => out,
        };
        let mut outcome = Outcome::Wider;
        if std::mem::size_of::<T>() == 4 {
            let ws = self.f32.get_or_insert_with(|| Ws::new(n, c));
            outcome = item(node, tabs, len, c, w, ws, node_out, edge_out.reborrow());
        }
        if let Outcome::Wider = outcome {
            let ws = self.f64.get_or_insert_with(|| Ws::new(n, c));
            outcome = item(node, tabs, len, c, w, ws, node_out, edge_out);
        }
        if self.stream {
            // The streamed rows are complete before `done` hands the item on.
            stream::fence();
        }
        match outcome {
            Outcome::Done(z) => Some(z),
            _ => None,
        }
    }
}

/// `len` entries of type `T` (f32 or f64) over the words of `buf`, grown as needed.
fn scratch<T>(buf: &mut Vec<u64>, len: usize) -> &mut [MaybeUninit<T>] {
    const { assert!(std::mem::align_of::<T>() <= 8) };
    let words = (len * std::mem::size_of::<T>()).div_ceil(8);
    if buf.len() < words {
        buf.resize(words, 0);
    }
    // SAFETY: the words hold at least `len` entries of `T` and are aligned for it; any
    // bits are a valid `MaybeUninit`.
    unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr() as *mut MaybeUninit<T>, len) }
}

/// Whether `bytes` of pair rows are streamed out with non-temporal stores: past this size
/// the output cannot stay cached until it is read, and ordinary stores would read each of
/// its lines from memory before writing it.
fn streams(bytes: usize) -> bool {
    bytes >= STREAM_BYTES
}

/// See [`streams`].
const STREAM_BYTES: usize = 8 << 20;

/// Entries of pair rows staged before they are streamed out (whole rows; at least one):
/// about 1 KiB in f32, few enough to leave the table in L1, enough that each part's
/// streaming costs little beside the products.
const STAGE: usize = 256;

/// Where an item's pair marginals go.
enum EdgeOut<'x, T> {
    /// `(E, C, C)` rows of the item, every entry written (zero beyond its last edge).
    Rows(&'x mut [MaybeUninit<T>]),
    /// The same rows, a few at a time staged in the scratch (whole rows) and streamed out.
    Stream(&'x mut [MaybeUninit<T>], &'x mut [MaybeUninit<T>]),
    /// Added (times the item's weight) into a shared `(E, C, C)` accumulator.
    Sum(&'x mut [f64]),
    Skip,
}

impl<T> EdgeOut<'_, T> {
    fn reborrow(&mut self) -> EdgeOut<'_, T> {
        match self {
            EdgeOut::Rows(r) => EdgeOut::Rows(r),
            EdgeOut::Stream(r, b) => EdgeOut::Stream(r, b),
            EdgeOut::Sum(a) => EdgeOut::Sum(a),
            EdgeOut::Skip => EdgeOut::Skip,
        }
    }
}

crate::simd_dispatch! {
    /// Forward–backward of one item of `len` active nodes in products of type `F`: node
    /// marginals times `w` into `node_out` (`(n, C)`, zero past `len`), pair marginals
    /// times `w` into `edge_out`. Each table's span is measured as its exponentials are
    /// taken (the table read from memory once), and the forward step through it follows
    /// while it is in L1; the outcome says when the tables need
    /// wider products or the log domain (then the outputs are partly written).
    fn item<T: Real, F: Gemm>(
        node: &[T],
        tabs: &[T],
        len: usize,
        c: usize,
        w: f64,
        ws: &mut Ws<F>,
        node_out: &mut [T],
        edge_out: EdgeOut<'_, T>,
    ) -> Outcome => item_body
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn item_body<T: Real, F: Gemm>(
    node: &[T],
    tabs: &[T],
    len: usize,
    c: usize,
    w: f64,
    ws: &mut Ws<F>,
    node_out: &mut [T],
    mut edge_out: EdgeOut<'_, T>,
) -> Outcome {
    let cc = c * c;
    let zero = F::of(0.0);
    node_out.fill(T::from_f64(0.0));
    if let EdgeOut::Rows(r) | EdgeOut::Stream(r, _) = &mut edge_out {
        // Rows past the item's last edge; the others are written by the backward pass.
        for x in &mut r[len.saturating_sub(1) * cc..] {
            x.write(T::from_f64(0.0));
        }
    }
    if len == 0 {
        return Outcome::Done(0.0);
    }
    let mut log_z = 0.0f64;
    for t in 0..len {
        let s = &node[t * c..(t + 1) * c];
        let m = s.iter().fold(T::NEG_INFINITY, |a, &x| a.max(x));
        if m == T::NEG_INFINITY {
            return Outcome::Leave;
        }
        log_z += m.to_f64();
        for (p, &x) in ws.phi[t * c..(t + 1) * c].iter_mut().zip(s) {
            // Flushed to zero below the normal range (no slow subnormals): such a label
            // weighs less than e^-87 (f32) relative to the node's best.
            let v = F::exp_nonpos(diff::<T, F>(x, m));
            *p = if v.f() < F::MIN_NORMAL { zero } else { v };
        }
    }
    // Normalises `v` by its sum; returns the sum (0: nothing reachable).
    fn normalise<F: Gemm>(v: &mut [F]) -> f64 {
        let s: f64 = v.iter().map(|x| x.f()).sum();
        if s > 0.0 {
            let inv = F::of(1.0 / s);
            v.iter_mut().for_each(|x| *x = F::of(x.f() * inv.f()));
        }
        s
    }
    // Forward, step by step as each table's exponentials are taken: α_0 = φ_0,
    // α_t = (α_{t-1} E_{t-1}) ⊙ φ_t, normalised.
    ws.alpha[..c].copy_from_slice(&ws.phi[..c]);
    let s = normalise(&mut ws.alpha[..c]);
    if s <= 0.0 {
        return Outcome::Leave;
    }
    ws.lns[0] = s.ln();
    // Above `MAX_CLASSES` (where no group runs, so no grouped kernel's bits need matching)
    // float32 tables are exponentiated relative to a guess, the previous table's largest
    // entry, in the pass that measures their range: each table is read from memory once,
    // its exponentials overlapping the read. The guess stands when the table's largest
    // entry lies within `GUESS_SLACK` of it (then every entry is at most e^GUESS_SLACK,
    // none that `SPAN_F32` keeps underflows, and the common factor cancels in every
    // marginal: the normalisers absorb it into log Z); otherwise the exponentials are taken
    // again, from L1, relative to the largest entry.
    let guess = c > chain_lanes::MAX_CLASSES;
    let mut prev_max: Option<f32> = None;
    for t in 0..len - 1 {
        let tab = &tabs[t * cc..(t + 1) * cc];
        let dst = &mut ws.e[t * cc..(t + 1) * cc];
        let mut shifted = None;
        let (m, lo, nan) = match (T::as_f32(tab), f32_view(dst), prev_max) {
            (Some(src), Some(dst), Some(sh)) if guess => {
                match exp_ranged_f32(src, sh, GUESS_SLACK as f32, dst) {
                    Some((hi, lo, nan)) => {
                        shifted = Some(sh);
                        (T::from_f64(hi as f64), T::from_f64(lo as f64), nan)
                    }
                    None => range(tab),
                }
            }
            // One vectorised pass for the span (the exponentials below then read the
            // table from L1); a −inf entry makes it infinite.
            _ => range(tab),
        };
        // NaN or +inf (scores the input check may have left to this pass): the caller
        // reports it (see `unread_or_bad`).
        if nan || m == T::INFINITY {
            return Outcome::Leave;
        }
        let span = if lo == T::NEG_INFINITY {
            f64::INFINITY
        } else {
            m.to_f64() - lo.to_f64()
        };
        if span > SPAN {
            return Outcome::Leave;
        }
        if std::mem::size_of::<F>() == 4 && span > SPAN_F32 {
            return Outcome::Wider;
        }
        prev_max = Some(m.to_f64() as f32);
        if let Some(sh) = shifted.filter(|&sh| (m.to_f64() - sh as f64).abs() <= GUESS_SLACK) {
            log_z += sh as f64;
        } else {
            log_z += m.to_f64();
            match (T::as_f32(tab), f32_view(dst)) {
                // (The grouped kernel's tables take the same function: the same bits.)
                (Some(src), Some(dst)) => exp_shifted_f32(src, m.to_f64() as f32, dst),
                _ => {
                    for (e, &x) in dst.iter_mut().zip(tab) {
                        *e = F::exp_nonpos(diff::<T, F>(x, m));
                    }
                }
            }
        }
        // The forward step through this table while it is in L1 (the same products, in
        // the same order, as a separate pass over the tables).
        let t = t + 1;
        let (done, rest) = ws.alpha.split_at_mut(t * c);
        let cur = &mut rest[..c];
        // Products in the product type (eight f32 lanes for float32 models).
        forward_products(&done[(t - 1) * c..], &ws.e[(t - 1) * cc..t * cc], cur);
        for (o, &p) in cur.iter_mut().zip(&ws.phi[t * c..(t + 1) * c]) {
            *o = *o * p;
        }
        let s = normalise(cur);
        if s <= 0.0 {
            return Outcome::Leave;
        }
        ws.lns[t] = s.ln();
    }
    log_z = ws.lns[..len].iter().fold(log_z, |z, &l| z + l);
    // Backward, writing marginals: the last node's is α itself (β = 1).
    let last = (len - 1) * c;
    for (o, &a) in node_out[last..last + c]
        .iter_mut()
        .zip(&ws.alpha[last..last + c])
    {
        *o = T::from_f64(a.f() * w);
    }
    ws.beta.fill(F::of(1.0));
    for t in (0..len - 1).rev() {
        let e = &ws.e[t * cc..(t + 1) * cc];
        for ((g, &p), &b) in ws.g.iter_mut().zip(&ws.phi[(t + 1) * c..]).zip(&ws.beta) {
            *g = p * b;
        }
        // Row dot products in the product type (all terms are non-negative: no
        // cancellation to fear at f32).
        row_dots(e, &ws.g, &mut ws.bt);
        let alpha = &ws.alpha[t * c..(t + 1) * c];
        let d: f64 = alpha.iter().zip(&ws.bt).map(|(a, b)| a.f() * b.f()).sum();
        let scale = w / d;
        for ((o, &a), &b) in node_out[t * c..(t + 1) * c]
            .iter_mut()
            .zip(alpha)
            .zip(&ws.bt)
        {
            *o = T::from_f64(a.f() * b.f() * scale);
        }
        match &mut edge_out {
            EdgeOut::Rows(rows) => pair_rows(alpha, e, &ws.g, scale, &mut rows[t * cc..][..cc]),
            EdgeOut::Stream(rows, stage) => {
                // Rows streamed out a few at a time as they are made: the stores drain
                // among the products instead of in one burst, and only those rows are
                // staged (the table stays in L1 for the next rows' products).
                let dst = &mut rows[t * cc..][..cc];
                let per = stage.len() / c;
                let mut lines = stream::Lines::default();
                for (alphas, e) in alpha.chunks(per).zip(e.chunks(per * c)) {
                    let part = &mut stage[..alphas.len() * c];
                    for ((&av, row), e) in alphas
                        .iter()
                        .zip(part.chunks_exact_mut(c))
                        .zip(e.chunks_exact(c))
                    {
                        pair_row(av, scale, e, &ws.g, row);
                    }
                    // SAFETY: `pair_row` wrote every entry of the part's rows.
                    lines.push(dst, unsafe { assume_init(part) });
                }
            }
            EdgeOut::Sum(acc) => {
                let out = &mut acc[t * cc..(t + 1) * cc];
                for (a, &av) in alpha.iter().enumerate() {
                    let k = av.f() * scale;
                    for ((o, &x), &g) in out[a * c..(a + 1) * c]
                        .iter_mut()
                        .zip(&e[a * c..(a + 1) * c])
                        .zip(&ws.g)
                    {
                        *o += k * x.f() * g.f();
                    }
                }
            }
            EdgeOut::Skip => {}
        }
        ws.beta.copy_from_slice(&ws.bt);
        normalise(&mut ws.beta);
    }
    Outcome::Done(log_z)
}

/// How far (in log units) a table's largest entry may lie from the guess its exponentials
/// were taken relative to (see `item_body`): entries up to e^16, and the marginals' common
/// factor within e^±16 (well inside f32's range).
const GUESS_SLACK: f64 = 16.0;

/// `v` as f32 when the product type is f32.
#[inline(always)]
fn f32_view<F: Gemm>(v: &mut [F]) -> Option<&mut [f32]> {
    // SAFETY: `Gemm` is implemented for f32 and f64 only, so a 4-byte `F` is f32.
    (std::mem::size_of::<F>() == 4).then(|| unsafe { &mut *(v as *mut [F] as *mut [f32]) })
}

/// `out[a, b] = α[a] · scale · e[a, b] · g[b]` (rounded to the product type, then to `T`):
/// one edge's pair marginals, `out` row-major `C × C`.
#[inline(always)]
fn pair_rows<T: Real, F: Gemm>(
    alpha: &[F],
    e: &[F],
    g: &[F],
    scale: f64,
    out: &mut [MaybeUninit<T>],
) {
    let c = g.len();
    for (a, &av) in alpha.iter().enumerate() {
        pair_row(
            av,
            scale,
            &e[a * c..(a + 1) * c],
            g,
            &mut out[a * c..(a + 1) * c],
        );
    }
}

/// Row `a` of [`pair_rows`]: `out[b] = α[a] · scale · e[a, b] · g[b]`.
#[inline(always)]
fn pair_row<T: Real, F: Gemm>(av: F, scale: f64, e: &[F], g: &[F], out: &mut [MaybeUninit<T>]) {
    let k = F::of(av.f() * scale);
    for ((o, &x), &g) in out.iter_mut().zip(e).zip(g) {
        o.write(T::from_f64((k * x * g).f()));
    }
}

/// `cur[j] = Σ_a prev[a] e[a, j]` (`e` row-major `C × C`), each sum taken over `a` in
/// order from 0. Columns in blocks of up to 32 held in registers across the sum (one store
/// per entry, where a row-by-row accumulation loads and stores each entry `C` times).
#[inline(always)]
fn forward_products<F: Gemm>(prev: &[F], e: &[F], cur: &mut [F]) {
    #[inline(always)]
    fn block<F: Gemm, const N: usize>(prev: &[F], e: &[F], cur: &mut [F], j0: usize) {
        let c = cur.len();
        let mut acc = [F::of(0.0); N];
        for (a, &av) in prev.iter().enumerate() {
            let row: &[F; N] = e[a * c + j0..][..N].try_into().expect("N entries");
            for l in 0..N {
                acc[l] = acc[l] + av * row[l];
            }
        }
        cur[j0..j0 + N].copy_from_slice(&acc);
    }
    let c = cur.len();
    let mut j0 = 0;
    while j0 + 32 <= c {
        block::<F, 32>(prev, e, cur, j0);
        j0 += 32;
    }
    if j0 + 16 <= c {
        block::<F, 16>(prev, e, cur, j0);
        j0 += 16;
    }
    if j0 + 8 <= c {
        block::<F, 8>(prev, e, cur, j0);
        j0 += 8;
    }
    if j0 + 4 <= c {
        block::<F, 4>(prev, e, cur, j0);
        j0 += 4;
    }
    while j0 < c {
        block::<F, 1>(prev, e, cur, j0);
        j0 += 1;
    }
}

/// `x − m` as the exponential of product type `F` takes it. For f32 products the
/// difference is rounded to f32 anyway, and one f32 subtraction of the two f32 scores
/// rounds it identically: the widening and narrowing then cancel and the exponentials run
/// on eight f32 lanes. f64 products take the exact f64 difference.
#[inline(always)]
fn diff<T: Real, F: Gemm>(x: T, m: T) -> f64 {
    if std::mem::size_of::<F>() == 4 {
        (x - m).to_f64()
    } else {
        x.to_f64() - m.to_f64()
    }
}

/// `Σ_k a[k] b[k]` in the product type with eight partial sums (a fixed order, so
/// deterministic; independent sums so the loop vectorises): `acc[j]` sums the terms with
/// `k ≡ j (mod 8)` in order, then `((acc0 + acc1) + (acc2 + acc3)) + ((acc4 + acc5) +
/// (acc6 + acc7))`, then the tail past the last multiple of 8, in order.
#[inline(always)]
fn dot<F: Gemm>(a: &[F], b: &[F]) -> F {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::batch::has_avx2() {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { avx::dot(a, b) };
    }
    let mut acc = [F::of(0.0); 8];
    let full = a.len() / 8 * 8;
    for (x, y) in a[..full].chunks_exact(8).zip(b[..full].chunks_exact(8)) {
        for j in 0..8 {
            acc[j] = acc[j] + x[j] * y[j];
        }
    }
    let sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    tail_dot(sum, &a[full..], &b[full..])
}

/// `out[a] = dot(e[a*C..(a+1)*C], g)` for every row `a` of the row-major `C × C` table
/// `e` (`C = g.len() = out.len()`), each row's sum exactly as [`dot`] takes it.
#[inline(always)]
fn row_dots<F: Gemm>(e: &[F], g: &[F], out: &mut [F]) {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::batch::has_avx2() {
        // SAFETY: the CPU has AVX2, checked just above; `e` holds `C × C` entries.
        return unsafe { avx::dots(e, g, out) };
    }
    let c = g.len();
    for (a, o) in out.iter_mut().enumerate() {
        *o = dot(&e[a * c..(a + 1) * c], g);
    }
}

/// `sum + Σ_k a[k] b[k]`, the terms added in order.
#[inline(always)]
fn tail_dot<F: Gemm>(sum: F, a: &[F], b: &[F]) -> F {
    let mut tail = F::of(0.0);
    for (&x, &y) in a.iter().zip(b) {
        tail = tail + x * y;
    }
    sum + tail
}

/// [`dot`] on AVX registers, operation for operation (the same bits). Written out because
/// LLVM's SLP pass turns the portable loop's eight partial sums into 128-bit pairs
/// shuffled every iteration (four times the work).
#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;

    use super::{tail_dot, Gemm};

    /// # Safety
    /// The CPU has AVX2; `F` is f32 or f64 and `b` is at least as long as `a`.
    #[target_feature(enable = "avx2")]
    #[inline]
    pub(super) unsafe fn dot<F: Gemm>(a: &[F], b: &[F]) -> F {
        let full = a.len() / 8 * 8;
        assert!(b.len() >= a.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        // SAFETY: (both arms) the loads read entries `k..k + 8` with `k + 8 <= full`, in
        // bounds of both slices; `F` is the type the pointers are cast to.
        let sum: f64 = unsafe {
            if std::mem::size_of::<F>() == 4 {
                let (pa, pb) = (pa as *const f32, pb as *const f32);
                let mut acc = _mm256_setzero_ps();
                for k in (0..full).step_by(8) {
                    acc = add_ps(acc, pa.add(k), pb.add(k));
                }
                sum_ps(acc) as f64
            } else {
                let (pa, pb) = (pa as *const f64, pb as *const f64);
                let mut acc = (_mm256_setzero_pd(), _mm256_setzero_pd());
                for k in (0..full).step_by(8) {
                    acc = add_pd(acc, pa.add(k), pb.add(k));
                }
                sum_pd(acc)
            }
        };
        // Exact: `sum` holds a value of type `F`.
        tail_dot(F::of(sum), &a[full..], &b[full..])
    }

    /// `out[a] = dot(e[a*C..(a+1)*C], g)` for every row `a` of the row-major `C × C`
    /// table `e` (`C = g.len() = out.len()`), each exactly as [`dot`] takes it: four rows
    /// at a time, so that four independent sums hide the additions' latency where one
    /// row's single chain of additions waits on each.
    ///
    /// # Safety
    /// The CPU has AVX2; `F` is f32 or f64; `e` holds `C × C` entries.
    #[target_feature(enable = "avx2")]
    #[inline]
    pub(super) unsafe fn dots<F: Gemm>(e: &[F], g: &[F], out: &mut [F]) {
        let c = g.len();
        assert!(out.len() == c && e.len() >= c * c);
        let full = c / 8 * 8;
        let rows = c / 4 * 4;
        for a in (0..rows).step_by(4) {
            let pe = e[a * c..].as_ptr();
            // SAFETY: (both arms) rows `a..a + 4` lie within `e` (`a + 4 <= C`), and the
            // loads read entries `k..k + 8` of a row and of `g` with `k + 8 <= full <= C`;
            // `F` is the type the pointers are cast to.
            let sums: [f64; 4] = unsafe {
                if std::mem::size_of::<F>() == 4 {
                    let (pe, pg) = (pe as *const f32, g.as_ptr() as *const f32);
                    let mut acc = [_mm256_setzero_ps(); 4];
                    for k in (0..full).step_by(8) {
                        for (r, x) in acc.iter_mut().enumerate() {
                            *x = add_ps(*x, pe.add(r * c + k), pg.add(k));
                        }
                    }
                    acc.map(|x| sum_ps(x) as f64)
                } else {
                    let (pe, pg) = (pe as *const f64, g.as_ptr() as *const f64);
                    let mut acc = [(_mm256_setzero_pd(), _mm256_setzero_pd()); 4];
                    for k in (0..full).step_by(8) {
                        for (r, x) in acc.iter_mut().enumerate() {
                            *x = add_pd(*x, pe.add(r * c + k), pg.add(k));
                        }
                    }
                    acc.map(|x| sum_pd(x))
                }
            };
            for (r, &sum) in sums.iter().enumerate() {
                let row = &e[(a + r) * c..(a + r + 1) * c];
                // Exact: `sum` holds a value of type `F`.
                out[a + r] = tail_dot(F::of(sum), &row[full..], &g[full..]);
            }
        }
        for a in rows..c {
            // SAFETY: the CPU has AVX2; `g` is as long as the row.
            out[a] = unsafe { dot(&e[a * c..(a + 1) * c], g) };
        }
    }

    /// `acc + a[..8] · b[..8]` lane by lane (f32).
    ///
    /// # Safety
    /// AVX2; eight f32 readable at `a` and at `b`.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn add_ps(acc: __m256, a: *const f32, b: *const f32) -> __m256 {
        // SAFETY: the caller's contract.
        unsafe { _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(a), _mm256_loadu_ps(b))) }
    }

    /// The portable [`super::dot`]'s reduction of its eight partial sums:
    /// `((a0+a1)+(a2+a3)) + ((a4+a5)+(a6+a7))`.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn sum_ps(acc: __m256) -> f32 {
        // [a0+a1, a2+a3, a4+a5, a6+a7], then [(a0+a1)+(a2+a3), (a4+a5)+(a6+a7)].
        let h = _mm_hadd_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        let h = _mm_hadd_ps(h, h);
        _mm_cvtss_f32(h) + _mm_cvtss_f32(_mm_movehdup_ps(h))
    }

    /// `acc + a[..8] · b[..8]` lane by lane (f64, the eight partial sums in two registers).
    ///
    /// # Safety
    /// AVX2; eight f64 readable at `a` and at `b`.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn add_pd(acc: (__m256d, __m256d), a: *const f64, b: *const f64) -> (__m256d, __m256d) {
        // SAFETY: the caller's contract.
        unsafe {
            let lo = _mm256_mul_pd(_mm256_loadu_pd(a), _mm256_loadu_pd(b));
            let hi = _mm256_mul_pd(_mm256_loadu_pd(a.add(4)), _mm256_loadu_pd(b.add(4)));
            (_mm256_add_pd(acc.0, lo), _mm256_add_pd(acc.1, hi))
        }
    }

    /// [`sum_ps`] for f64.
    #[target_feature(enable = "avx2")]
    #[inline]
    fn sum_pd((lo, hi): (__m256d, __m256d)) -> f64 {
        // [a0+a1, a4+a5, a2+a3, a6+a7]; its halves added: [(a0+a1)+(a2+a3),
        // (a4+a5)+(a6+a7)].
        let h = _mm256_hadd_pd(lo, hi);
        let h = _mm_add_pd(_mm256_castpd256_pd128(h), _mm256_extractf128_pd(h, 1));
        _mm_cvtsd_f64(h) + _mm_cvtsd_f64(_mm_unpackhi_pd(h, h))
    }
}

/// One item's outputs, as the driver runs it.
struct Unit<'x, T> {
    b: usize,
    /// `(n, C)` node marginals (or gradient) times the item's weight.
    node_out: &'x mut [T],
    /// `(n-1, C, C)` pair marginals times the weight, written in full; `None`: skipped.
    rows: Option<&'x mut [MaybeUninit<T>]>,
    /// What `done` returned for it.
    z: f64,
}

/// Runs every unit's forward–backward in parallel, weighted by `weights` — in groups of
/// [`LANES`] items of one length where `chain_lanes` applies (units sorted by length for
/// that), one by one otherwise (see [`run_group`]) — and sets each unit's `z` to
/// `done(unit, log Z)` once its marginals are written. `None` when an item left the
/// kernel (see [`Outcome::Leave`]) or the call was stopped.
fn run_units<'x, T: Real>(
    pb: &Problem<'_, T>,
    weights: Option<&[f64]>,
    mut units: Vec<Unit<'x, T>>,
    done: &(dyn Fn(&mut Unit<'x, T>, f64) -> f64 + Sync),
) -> Option<Vec<Unit<'x, T>>> {
    let (n, c) = (pb.graph.num_nodes(), pb.classes());
    let grouped = chain_lanes::applies::<T>(n, c, units.len());
    if grouped && pb.lengths.is_some() {
        units.sort_by_key(|u| pb.active(u.b));
    }
    let per = if grouped { LANES } else { 1 };
    let rows: usize = units
        .iter()
        .filter_map(|u| u.rows.as_ref())
        .map(|r| r.len())
        .sum();
    let stream = streams(rows.saturating_mul(std::mem::size_of::<T>()));
    let ok = units
        .par_chunks_mut(per)
        .map_init(
            || (Work::new(stream), GroupWork::default()),
            |(work, lane_ws), grp| {
                !pb.stop.is_raised() && run_group(pb, weights, work, lane_ws, grp, done)
            },
        )
        .all(|x| x);
    (ok && !pb.stop.is_raised()).then_some(units)
}

/// Runs the units of `grp` (then `done` on each, as [`run_units`] says): as one group of
/// [`LANES`] items when there are that many, of one length, and the CPU runs
/// `chain_lanes` (bit-identical to one by one), else one by one (also when the group
/// reports an item it does not hold). False when an item left the kernel.
fn run_group<'x, T: Real>(
    pb: &Problem<'_, T>,
    weights: Option<&[f64]>,
    work: &mut Work,
    lane_ws: &mut GroupWork,
    grp: &mut [Unit<'x, T>],
    done: &(dyn Fn(&mut Unit<'x, T>, f64) -> f64 + Sync),
) -> bool {
    let (n, c) = (pb.graph.num_nodes(), pb.classes());
    let weight = |b: usize| weights.map_or(1.0, |w| w[b]);
    let len = pb.active(grp[0].b);
    if grp.len() == LANES
        && chain_lanes::applies::<T>(n, c, LANES)
        && grp.iter().all(|u| pb.active(u.b) == len)
    {
        let mut lanes: Vec<Lane<'_, T>> = grp
            .iter_mut()
            .map(|u| Lane {
                node: pb.node.item(u.b),
                tabs: pb.edge.stored_item(u.b),
                w: weight(u.b),
                node_out: &mut *u.node_out,
                rows: u.rows.as_deref_mut(),
            })
            .collect();
        let z = group(&mut lanes, len, c, lane_ws);
        drop(lanes);
        if let Some(z) = z {
            for (u, z) in grp.iter_mut().zip(z) {
                u.z = done(u, z);
            }
            return true;
        }
    }
    for u in grp.iter_mut() {
        let out = match u.rows.as_deref_mut() {
            Some(r) => EdgeOut::Rows(r),
            None => EdgeOut::Skip,
        };
        let (node, tabs) = (pb.node.item(u.b), pb.edge.stored_item(u.b));
        let Some(z) = work.run(node, tabs, pb.active(u.b), c, weight(u.b), u.node_out, out) else {
            return false;
        };
        u.z = done(u, z);
    }
    true
}

/// Exact log Z and marginals of a batch of chains with per-edge tables, or `None` when
/// this kernel does not apply (or an item is infeasible: the caller's kernel reports it).
pub fn marginals<T: Real>(pb: &Problem<'_, T>, want_edges: bool) -> Option<Result<Marginals<T>>> {
    if !applies(pb) {
        return None;
    }
    if let Err(e) = check_unread_tables(pb) {
        return Some(Err(e));
    }
    let (n, c, bsz) = (pb.graph.num_nodes(), pb.classes(), pb.batch);
    let ecc = (n - 1) * c * c;
    let mut node = match filled("node marginals", &[bsz, n, c], T::from_f64(0.0)) {
        Ok(v) => v,
        Err(e) => return Some(Err(e)),
    };
    // Written in full by the items (no fill first); its length is set once they all ran.
    let mut edge = match reserved::<T>("edge marginals", &[bsz, n - 1, c, c]) {
        Ok(v) => v,
        Err(e) => return Some(Err(e)),
    };
    let mut log_z = vec![T::from_f64(0.0); bsz];
    let mut rows = edge.spare_capacity_mut()[..bsz * ecc].chunks_mut(ecc);
    let units = node
        .chunks_mut(n * c)
        .enumerate()
        .map(|(b, node_out)| Unit {
            b,
            node_out,
            rows: if want_edges { rows.next() } else { None },
            z: 0.0,
        })
        .collect();
    let Some(units) = run_units(pb, None, units, &|_, z| z) else {
        return pb.stop.check().err().map(Err).or_else(|| left(pb));
    };
    for u in &units {
        log_z[u.b] = T::from_f64(u.z);
    }
    drop(units);
    let edge = want_edges.then(|| {
        // SAFETY: every item ran and wrote all of its `ecc` entries (`EdgeOut::Rows`).
        unsafe { edge.set_len(bsz * ecc) };
        edge
    });
    Some(Ok(Marginals {
        log_z,
        node,
        edge,
        iterations: vec![1; bsz],
        converged: vec![true; bsz],
        max_change: vec![0.0; bsz],
    }))
}

/// Loss and gradients of a batch of chains with per-edge tables, or `None` when this kernel
/// does not apply. Labels must be checked already.
pub fn loss_and_grad<T: Real>(
    pb: &Problem<'_, T>,
    y: &[i64],
    weights: Option<&[f64]>,
) -> Option<Result<LossGrad<T>>> {
    if !applies(pb) {
        return None;
    }
    if let Err(e) = check_unread_tables(pb) {
        return Some(Err(e));
    }
    let (n, c, bsz) = (pb.graph.num_nodes(), pb.classes(), pb.batch);
    let (cc, ecc) = (c * c, (n - 1) * c * c);
    let per_item = pb.edge.batch == bsz && bsz > 1;
    let mut gn = match filled("node gradient", &[bsz, n, c], T::from_f64(0.0)) {
        Ok(v) => v,
        Err(e) => return Some(Err(e)),
    };
    let mut loss = vec![T::from_f64(0.0); bsz];
    // Gold score of item b, and the weighted gold one-hots subtracted from the gradients.
    let gold = |b: usize, gn: &mut [T], ge: Option<&mut [T]>, acc: Option<&mut [f64]>| {
        let (len, w) = (pb.active(b), weights.map_or(1.0, |w| w[b]));
        let (node, tabs, yb) = (
            pb.node.item(b),
            pb.edge.stored_item(b),
            &y[b * n..(b + 1) * n],
        );
        let mut s = 0.0;
        for t in 0..len {
            let yt = yb[t] as usize;
            s += node[t * c + yt].to_f64();
            gn[t * c + yt] = T::from_f64(gn[t * c + yt].to_f64() - w);
        }
        let (mut ge, mut acc) = (ge, acc);
        for t in 0..len.saturating_sub(1) {
            let k = t * cc + yb[t] as usize * c + yb[t + 1] as usize;
            s += tabs[k].to_f64();
            if let Some(ge) = ge.as_deref_mut() {
                ge[k] = T::from_f64(ge[k].to_f64() - w);
            }
            if let Some(acc) = acc.as_deref_mut() {
                acc[k] -= w;
            }
        }
        s
    };
    if per_item {
        // Written in full by the items (no fill first); its length is set once they all ran.
        let mut ge = match reserved::<T>("edge gradient", &[bsz, n - 1, c, c]) {
            Ok(v) => v,
            Err(e) => return Some(Err(e)),
        };
        let units = gn
            .chunks_mut(n * c)
            .zip(ge.spare_capacity_mut()[..bsz * ecc].chunks_mut(ecc))
            .enumerate()
            .map(|(b, (node_out, rows))| Unit {
                b,
                node_out,
                rows: Some(rows),
                z: 0.0,
            })
            .collect();
        let done = |u: &mut Unit<'_, T>, z: f64| {
            // SAFETY: the item wrote every entry of its rows (`EdgeOut::Rows`).
            let ge = unsafe { assume_init(u.rows.as_deref_mut().expect("rows")) };
            z - gold(u.b, u.node_out, Some(ge), None)
        };
        let Some(units) = run_units(pb, weights, units, &done) else {
            return pb.stop.check().err().map(Err).or_else(|| left(pb));
        };
        for u in &units {
            loss[u.b] = T::from_f64(u.z);
        }
        drop(units);
        // SAFETY: every item ran and wrote all of its `ecc` entries.
        unsafe { ge.set_len(bsz * ecc) };
        return Some(Ok(lossgrad(loss, gn, ge)));
    }
    // Tables broadcast over items: per-chunk f64 accumulators (chunks fixed by the batch
    // size, not the thread count), summed in chunk order.
    if chain_lanes::shape_fits::<T>(n, c, bsz) {
        return broadcast_in_groups(pb, weights, &gold, loss, gn);
    }
    let chunk = chunk_size(bsz, ecc);
    let parts: Vec<Option<Vec<f64>>> = loss
        .par_chunks_mut(chunk)
        .zip(gn.par_chunks_mut(chunk * n * c))
        .enumerate()
        .map_init(Work::default, |work, (k, (loss, gn))| {
            let mut acc = vec![0.0f64; ecc];
            for (i, (l, gn)) in loss.iter_mut().zip(gn.chunks_mut(n * c)).enumerate() {
                let b = k * chunk + i;
                if pb.stop.is_raised() {
                    return None;
                }
                let w = weights.map_or(1.0, |w| w[b]);
                let (node, tabs) = (pb.node.item(b), pb.edge.stored_item(b));
                let z = work.run(node, tabs, pb.active(b), c, w, gn, EdgeOut::Sum(&mut acc))?;
                *l = T::from_f64(z - gold(b, gn, None, Some(&mut acc)));
            }
            Some(acc)
        })
        .collect();
    summed(pb, parts, loss, gn)
}

/// Gold score of item `b`, with its weighted gold one-hots subtracted from the node
/// gradient and (per-item rows) the edge gradient or (broadcast tables) the accumulator.
type Gold<'g, T> = dyn Fn(usize, &mut [T], Option<&mut [T]>, Option<&mut [f64]>) -> f64 + Sync + 'g;

/// Loss and gradients for tables broadcast over a batch whose shape `chain_lanes` serves:
/// chunks of whole groups (fixed by the batch, not the thread count), each group's pair
/// marginals written as rows in the scores' type (eight items at once where the CPU has
/// AVX2, one by one otherwise: the same rows) into a scratch, then added to the chunk's
/// f64 accumulator item by item, each item's gold subtracted after its rows.
fn broadcast_in_groups<T: Real>(
    pb: &Problem<'_, T>,
    weights: Option<&[f64]>,
    gold: &Gold<'_, T>,
    mut loss: Vec<T>,
    mut gn: Vec<T>,
) -> Option<Result<LossGrad<T>>> {
    let (n, c, bsz) = (pb.graph.num_nodes(), pb.classes(), pb.batch);
    let ecc = (n - 1) * c * c;
    let chunk = chunk_size(bsz, ecc).next_multiple_of(LANES);
    let parts: Vec<Option<Vec<f64>>> = loss
        .par_chunks_mut(chunk)
        .zip(gn.par_chunks_mut(chunk * n * c))
        .enumerate()
        .map_init(
            || {
                (
                    Work::default(),
                    GroupWork::default(),
                    Vec::<MaybeUninit<T>>::new(),
                )
            },
            |(work, lane_ws, scratch), (k, (loss, gn))| {
                let mut acc = vec![0.0f64; ecc];
                scratch.resize_with(LANES * ecc, MaybeUninit::uninit);
                for (j, (loss, gn)) in loss
                    .chunks_mut(LANES)
                    .zip(gn.chunks_mut(LANES * n * c))
                    .enumerate()
                {
                    if pb.stop.is_raised() {
                        return None;
                    }
                    let b0 = k * chunk + j * LANES;
                    let mut units: Vec<Unit<'_, T>> = gn
                        .chunks_mut(n * c)
                        .zip(scratch.chunks_mut(ecc))
                        .enumerate()
                        .map(|(i, (node_out, rows))| Unit {
                            b: b0 + i,
                            node_out,
                            rows: Some(rows),
                            z: 0.0,
                        })
                        .collect();
                    if !run_group(pb, weights, work, lane_ws, &mut units, &|_, z| z) {
                        return None;
                    }
                    for (u, l) in units.iter_mut().zip(loss.iter_mut()) {
                        // SAFETY: the item wrote every entry of its rows.
                        let rows = unsafe { assume_init(u.rows.as_deref_mut().expect("rows")) };
                        for (a, r) in acc.iter_mut().zip(rows.iter()) {
                            *a += r.to_f64();
                        }
                        *l = T::from_f64(u.z - gold(u.b, u.node_out, None, Some(&mut acc)));
                    }
                }
                Some(acc)
            },
        )
        .collect();
    summed(pb, parts, loss, gn)
}

/// The broadcast tables' gradient: the chunks' f64 accumulators summed in chunk order
/// (`None` for a chunk whose item left the kernel: the caller's fallback, or its error).
fn summed<T: Real>(
    pb: &Problem<'_, T>,
    parts: Vec<Option<Vec<f64>>>,
    loss: Vec<T>,
    gn: Vec<T>,
) -> Option<Result<LossGrad<T>>> {
    if let Err(e) = pb.stop.check() {
        return Some(Err(e));
    }
    let (n, c) = (pb.graph.num_nodes(), pb.classes());
    let mut total = vec![0.0f64; (n - 1) * c * c];
    for p in parts {
        let Some(p) = p else { return left(pb) };
        total.iter_mut().zip(&p).for_each(|(t, x)| *t += x);
    }
    let ge = total.into_iter().map(T::from_f64).collect();
    Some(Ok(lossgrad(loss, gn, ge)))
}

fn lossgrad<T: Real>(loss: Vec<T>, gn: Vec<T>, ge: Vec<T>) -> LossGrad<T> {
    let bsz = loss.len();
    LossGrad {
        loss,
        grad_node: gn,
        grad_edge: ge,
        grad_weight: None,
        iterations: vec![1; bsz],
        converged: vec![true; bsz],
        max_change: vec![0.0; bsz],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exact::Exact;
    use crate::kernels::rng::Rng;
    use crate::model::graph::Graph;
    use crate::model::scores::{EdgeScores, NodeScores};

    /// This kernel against the per-item log-domain kernel: per-item and broadcast tables,
    /// random lengths (incl. 0 and 1), forbidden node labels, item weights, f64 and f32;
    /// loss, gradients and marginals (node and pair).
    /// `wide`: one table of the last item spans 50 (beyond f32 products: that item runs in
    /// f64, the others in f32 for float32 models).
    fn check<T: Real>(edge_batch: usize, tol: f64, wide: bool) {
        check_batch::<T>(13, edge_batch.min(13), tol, wide, true);
    }

    /// [`check`] for a batch of `b` items (`edge_batch` 1 or `b`), lengths that vary
    /// (`ragged`) or all full (groups of eight then form in order).
    fn check_batch<T: Real>(b: usize, edge_batch: usize, tol: f64, wide: bool, ragged: bool) {
        let (n, c) = (7, 5);
        let mut rng = Rng::stream(7, &[edge_batch as u64]);
        let mut u = |s: f64| (rng.uniform() * 2.0 - 1.0) * s;
        let mut sn: Vec<T> = (0..b * n * c).map(|_| T::from_f64(u(2.0))).collect();
        sn[3 * n * c + 2 * c] = T::from_f64(f64::NEG_INFINITY);
        let mut se: Vec<T> = (0..edge_batch * (n - 1) * c * c)
            .map(|_| T::from_f64(u(3.0)))
            .collect();
        if wide {
            let last = se.len() - 2 * c * c;
            se[last + 3] = T::from_f64(50.0);
        }
        let mut r2 = Rng::stream(8, &[]);
        let mut y: Vec<i64> = (0..b * n)
            .map(|_| (r2.uniform() * c as f64) as i64)
            .collect();
        y[3 * n + 2] = 1; // allowed where label 0 is forbidden
        let lengths: Vec<usize> = (0..b)
            .map(|i| if ragged { [n, 0, 1, 4, n, 2][i % 6] } else { n })
            .collect();
        let w: Vec<f64> = (0..b).map(|i| 0.5 + i as f64 / b as f64).collect();
        let g = Graph::chain(n).unwrap();
        let node = NodeScores {
            data: &sn,
            batch: b,
            nodes: n,
            classes: c,
        };
        let edges = EdgeScores::tables(&se, edge_batch, n - 1, c);
        let pb = Problem::new(&g, node, edges, b, Some(&lengths)).unwrap();
        let exact = Exact::new(&g).unwrap();
        let close = |a: &[T], b: &[T]| {
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(b) {
                let (x, y) = (x.to_f64(), y.to_f64());
                assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{x} vs {y}");
            }
        };
        let fast = loss_and_grad(&pb, &y, Some(&w)).expect("applies").unwrap();
        let slow = crate::inference::loss_and_grad(&pb, &exact, &y, Some(&w)).unwrap();
        close(&fast.loss, &slow.loss);
        close(&fast.grad_node, &slow.grad_node);
        close(&fast.grad_edge, &slow.grad_edge);
        let fast = marginals(&pb, true).expect("applies").unwrap();
        let slow = crate::inference::marginals(&pb, &exact, true).unwrap();
        close(&fast.log_z, &slow.log_z);
        close(&fast.node, &slow.node);
        close(fast.edge.as_ref().unwrap(), slow.edge.as_ref().unwrap());
    }

    #[test]
    fn matches_the_per_item_kernel() {
        for eb in [1, 13] {
            for wide in [false, true] {
                check::<f64>(eb, 1e-12, wide);
                check::<f32>(eb, 3e-5, wide);
            }
        }
        // Batches that form groups of eight (float32: eight at once; broadcast tables:
        // rows summed item by item), with and without a wide table in the last group.
        for b in [8, 20, 35] {
            for eb in [1, b] {
                for wide in [false, true] {
                    check_batch::<f32>(b, eb, 3e-5, wide, false);
                    check_batch::<f64>(b, eb, 1e-12, wide, false);
                }
            }
        }
    }

    /// A group of eight items against the same items run one by one: bit-identical log Z,
    /// node and pair marginals, every lane, f32 and f64; class counts with and without
    /// whole chunks of eight (in the dot products) and of the transposes' blocks; lengths
    /// 1, 2 and 6; per-lane weights; forbidden node labels. A lane whose table needs wider
    /// products (f32) or the log domain, or holds NaN, makes the group report it.
    #[test]
    fn groups_match_items_bit_for_bit() {
        // (Groups need AVX2: elsewhere there is nothing to compare.)
        if !chain_lanes::applies::<f32>(6, 16, LANES) {
            return;
        }
        fn run<T: Real>() {
            for c in [2, 3, 5, 7, 8, 9, 13, 16, 20] {
                for n in [1, 2, 6] {
                    let mut rng = Rng::stream(3, &[c as u64, n as u64]);
                    let mut u = |s: f64| T::from_f64((rng.uniform() * 2.0 - 1.0) * s);
                    let mut node: Vec<Vec<T>> = (0..LANES)
                        .map(|_| (0..n * c).map(|_| u(3.0)).collect())
                        .collect();
                    node[2][c - 1] = T::from_f64(f64::NEG_INFINITY);
                    let mut tabs: Vec<Vec<T>> = (0..LANES)
                        .map(|_| (0..(n - 1) * c * c).map(|_| u(4.0)).collect())
                        .collect();
                    let w: Vec<f64> = (0..LANES).map(|l| 0.25 + l as f64 / 3.0).collect();
                    let ecc = (n - 1) * c * c;
                    let solo = |node: &[Vec<T>], tabs: &[Vec<T>]| {
                        let mut out = Vec::new();
                        for l in 0..LANES {
                            let mut no = vec![T::from_f64(7.0); n * c];
                            let mut ro = vec![MaybeUninit::new(T::from_f64(7.0)); ecc];
                            let z = Work::default().run(
                                &node[l],
                                &tabs[l],
                                n,
                                c,
                                w[l],
                                &mut no,
                                EdgeOut::Rows(&mut ro),
                            );
                            // SAFETY: made initialised (7.0) above.
                            out.push((z, no, unsafe { assume_init(&mut ro) }.to_vec()));
                        }
                        out
                    };
                    let grouped = |node: &[Vec<T>], tabs: &[Vec<T>]| {
                        let mut no = vec![vec![T::from_f64(7.0); n * c]; LANES];
                        let mut ro = vec![vec![MaybeUninit::new(T::from_f64(7.0)); ecc]; LANES];
                        let mut lanes: Vec<Lane<'_, T>> = no
                            .iter_mut()
                            .zip(ro.iter_mut())
                            .enumerate()
                            .map(|(l, (no, ro))| Lane {
                                node: &node[l],
                                tabs: &tabs[l],
                                w: w[l],
                                node_out: no,
                                rows: Some(ro),
                            })
                            .collect();
                        let z = group(&mut lanes, n, c, &mut GroupWork::default());
                        drop(lanes);
                        z.map(|z| {
                            (0..LANES)
                                .map(|l| {
                                    // SAFETY: made initialised (7.0) above.
                                    let r = unsafe { assume_init(&mut ro[l]) }.to_vec();
                                    (Some(z[l]), no[l].clone(), r)
                                })
                                .collect::<Vec<_>>()
                        })
                    };
                    let bits = |v: &[T]| v.iter().map(|x| x.to_f64().to_bits()).collect::<Vec<_>>();
                    let want = solo(&node, &tabs);
                    let got = grouped(&node, &tabs).expect("the group holds these items");
                    for (l, (a, b)) in got.iter().zip(&want).enumerate() {
                        let at = format!("{} c={c} n={n} lane {l}", T::NAME);
                        assert_eq!(a.0.map(f64::to_bits), b.0.map(f64::to_bits), "log Z, {at}");
                        assert_eq!(bits(&a.1), bits(&b.1), "node marginals, {at}");
                        assert_eq!(bits(&a.2), bits(&b.2), "pair marginals, {at}");
                    }
                    if n < 2 {
                        continue;
                    }
                    // One lane's table too wide for f32 products, or forbidden, or NaN.
                    let bad: &[f64] = if std::mem::size_of::<T>() == 4 {
                        &[40.0, 400.0, f64::NEG_INFINITY, f64::NAN]
                    } else {
                        &[400.0, f64::NEG_INFINITY, f64::NAN]
                    };
                    for &v in bad {
                        let saved = tabs[5][c + 1];
                        tabs[5][c + 1] = T::from_f64(v);
                        assert!(grouped(&node, &tabs).is_none(), "{} c={c} bad {v}", T::NAME);
                        tabs[5][c + 1] = saved;
                    }
                    let saved = node[4].clone();
                    node[4][c..2 * c].fill(T::from_f64(f64::NEG_INFINITY));
                    assert!(grouped(&node, &tabs).is_none(), "forbidden node");
                    node[4] = saved;
                }
            }
        }
        run::<f32>();
        run::<f64>();
    }

    /// The driver with groups (batches of at least eight, lengths that differ, so items are
    /// reordered into groups of one length and some groups mix them) against each item
    /// run alone in a batch of one: bit-identical results, in the items' own places.
    #[test]
    fn grouped_batches_match_items_alone() {
        fn run<T: Real>() {
            let (b, n, c) = (27, 6, 5);
            let mut rng = Rng::stream(11, &[]);
            let mut u = |s: f64| T::from_f64((rng.uniform() * 2.0 - 1.0) * s);
            let sn: Vec<T> = (0..b * n * c).map(|_| u(2.0)).collect();
            let mut se: Vec<T> = (0..b * (n - 1) * c * c).map(|_| u(3.0)).collect();
            // Item 18's first table spans more than f32 products hold: its group (items
            // 16..24, of length n - 2) runs one by one for float32.
            se[18 * (n - 1) * c * c + 3] = T::from_f64(40.0);
            let y: Vec<i64> = (0..b * n).map(|i| (i * 7 % c) as i64).collect();
            // Sorted by length: eight of length 1, eight of n - 2, a group mixing n - 2 and
            // n, and three left over.
            let lengths: Vec<usize> = (0..b)
                .map(|i| if i < 16 { [n, 1][i % 2] } else { n - 2 })
                .collect();
            let g = Graph::chain(n).unwrap();
            let problem = |lo, hi| items(&g, &sn, &se, &lengths, c, lo..hi);
            let bits = |v: &[T]| v.iter().map(|x| x.to_f64().to_bits()).collect::<Vec<_>>();
            let all = problem(0, b);
            let m = marginals(&all, true).unwrap().unwrap();
            let lg = loss_and_grad(&all, &y, None).unwrap().unwrap();
            let (nc, ecc) = (n * c, (n - 1) * c * c);
            for i in 0..b {
                let one = problem(i, i + 1);
                let m1 = marginals(&one, true).unwrap().unwrap();
                assert_eq!(bits(&m.log_z[i..i + 1]), bits(&m1.log_z), "log Z {i}");
                assert_eq!(
                    bits(&m.node[i * nc..(i + 1) * nc]),
                    bits(&m1.node),
                    "node {i}"
                );
                let e = m.edge.as_ref().unwrap();
                assert_eq!(
                    bits(&e[i * ecc..(i + 1) * ecc]),
                    bits(m1.edge.as_ref().unwrap())
                );
                // Loss: a batch of two (per-item tables, one by one; a batch of one sums
                // its gradient in f64 as broadcast tables do).
                let lo = i.min(b - 2);
                let two = problem(lo, lo + 2);
                let l2 = loss_and_grad(&two, &y[lo * n..(lo + 2) * n], None)
                    .unwrap()
                    .unwrap();
                let j = i - lo;
                assert_eq!(
                    bits(&lg.loss[i..i + 1]),
                    bits(&l2.loss[j..j + 1]),
                    "loss {i}"
                );
                let gn = &l2.grad_node[j * nc..(j + 1) * nc];
                assert_eq!(bits(&lg.grad_node[i * nc..(i + 1) * nc]), bits(gn));
                let ge = &l2.grad_edge[j * ecc..(j + 1) * ecc];
                assert_eq!(bits(&lg.grad_edge[i * ecc..(i + 1) * ecc]), bits(ge));
            }
        }
        run::<f32>();
        run::<f64>();
    }

    /// Items `range` of a batch of chains on `g` with per-item tables and lengths.
    fn items<'a, T: Real>(
        g: &'a Graph,
        sn: &'a [T],
        se: &'a [T],
        lengths: &'a [usize],
        c: usize,
        range: std::ops::Range<usize>,
    ) -> Problem<'a, T> {
        let n = g.num_nodes();
        let (lo, hi) = (range.start, range.end);
        let ecc = (n - 1) * c * c;
        let node = NodeScores {
            data: &sn[lo * n * c..hi * n * c],
            batch: hi - lo,
            nodes: n,
            classes: c,
        };
        let edges = EdgeScores::tables(&se[lo * ecc..hi * ecc], hi - lo, n - 1, c);
        Problem::new(g, node, edges, hi - lo, Some(&lengths[lo..hi])).unwrap()
    }

    /// Pair rows past `STREAM_BYTES` are streamed out (non-temporal stores from a staged
    /// block): the same bits as one item's stored rows, zeros past a shorter item's last
    /// edge, and an item retried in f64 products (a wide table) rewritten in full.
    #[test]
    fn streamed_rows_match_stored_rows() {
        fn run<T: Real>(b: usize) {
            let (n, c) = (40, 50);
            let ecc = (n - 1) * c * c;
            assert!(streams(b * ecc * std::mem::size_of::<T>()));
            assert!(!streams(ecc * std::mem::size_of::<T>()));
            let mut rng = Rng::stream(5, &[]);
            let mut u = |s: f64| T::from_f64((rng.uniform() * 2.0 - 1.0) * s);
            let sn: Vec<T> = (0..b * n * c).map(|_| u(2.0)).collect();
            let mut se: Vec<T> = (0..b * ecc).map(|_| u(3.0)).collect();
            se[3 * ecc + 5 * c * c + 7] = T::from_f64(40.0);
            let lengths: Vec<usize> = (0..b).map(|i| [n, n - 3, 1][i % 3]).collect();
            let g = Graph::chain(n).unwrap();
            let problem = |lo, hi| items(&g, &sn, &se, &lengths, c, lo..hi);
            let bits = |v: &[T]| v.iter().map(|x| x.to_f64().to_bits()).collect::<Vec<_>>();
            let m = marginals(&problem(0, b), true).unwrap().unwrap();
            let e = m.edge.as_ref().unwrap();
            for i in 0..b {
                let m1 = marginals(&problem(i, i + 1), true).unwrap().unwrap();
                let rows = &e[i * ecc..(i + 1) * ecc];
                assert_eq!(bits(rows), bits(m1.edge.as_ref().unwrap()), "rows of {i}");
                let last = lengths[i].saturating_sub(1) * c * c;
                assert!(rows[last..].iter().all(|x| x.to_f64() == 0.0));
                // Each edge's pair marginals sum to 1.
                for blk in rows[..last].chunks(c * c) {
                    let sum: f64 = blk.iter().map(|x| x.to_f64()).sum();
                    assert!((sum - 1.0).abs() < 1e-4, "item {i}: {sum}");
                }
            }
        }
        run::<f32>(24);
        run::<f64>(12);
    }

    #[test]
    fn wide_or_forbidden_tables_are_left_to_the_log_domain_kernel() {
        let g = Graph::chain(3).unwrap();
        let sn = vec![0.0f64; 2 * 3 * 2];
        for bad in [f64::NEG_INFINITY, 400.0] {
            let mut se = vec![0.0f64; 2 * 2 * 2];
            se[1] = bad;
            let node = NodeScores {
                data: &sn,
                batch: 2,
                nodes: 3,
                classes: 2,
            };
            let pb = Problem::new(&g, node, EdgeScores::tables(&se, 1, 2, 2), 2, None).unwrap();
            assert!(marginals(&pb, true).is_none());
            // Per-item tables where only the second item's last table is bad (for −inf:
            // the whole table, whose span is then −inf − −inf).
            let mut se = vec![0.0f64; 2 * 2 * 2 * 2];
            if bad == f64::NEG_INFINITY {
                se[2 * 4 + 4..].fill(bad);
            } else {
                se[2 * 4 + 4 + 1] = bad;
            }
            let pb = Problem::new(&g, node, EdgeScores::tables(&se, 2, 2, 2), 2, None).unwrap();
            assert!(marginals(&pb, true).is_none());
            assert!(loss_and_grad(&pb, &[0; 6], None).is_none());
        }
    }

    /// A problem whose `s_e` was left unchecked: the kernel reports a NaN or +inf in a
    /// table it reads with the error `Problem::new` gives, f32 and f64, per-item and
    /// broadcast tables; a good problem runs; and with lengths the tables past an item's
    /// end (which the kernel does not read) are checked first.
    #[test]
    fn unchecked_tables_are_checked_where_they_are_read() {
        fn run<T: Real>() {
            let (b, n, c) = (2, 4, 3);
            let g = Graph::chain(n).unwrap();
            let sn = vec![T::from_f64(0.0); b * n * c];
            let node = NodeScores {
                data: &sn,
                batch: b,
                nodes: n,
                classes: c,
            };
            for (eb, at) in [(b, 2 * (n - 1) * c * c - 1), (b, 13), (1, 22)] {
                for bad in [f64::NAN, f64::INFINITY] {
                    let mut se = vec![T::from_f64(0.5); eb * (n - 1) * c * c];
                    let good = Problem::deferring_edge_check(
                        &g,
                        node,
                        EdgeScores::tables(&se, eb, n - 1, c),
                        b,
                        None,
                    );
                    assert!(marginals(&good.unwrap(), true).unwrap().is_ok());
                    se[at] = T::from_f64(bad);
                    let want = match Problem::new(
                        &g,
                        node,
                        EdgeScores::tables(&se, eb, n - 1, c),
                        b,
                        None,
                    ) {
                        Err(e) => e.to_string(),
                        Ok(_) => panic!("the input check finds entry {at}"),
                    };
                    let pb = Problem::deferring_edge_check(
                        &g,
                        node,
                        EdgeScores::tables(&se, eb, n - 1, c),
                        b,
                        None,
                    );
                    let pb = pb.unwrap();
                    let got = marginals(&pb, true).unwrap().err().unwrap();
                    assert_eq!(got.to_string(), want, "marginals, entry {at}");
                    let got = loss_and_grad(&pb, &[0; 8], None).unwrap().err().unwrap();
                    assert_eq!(got.to_string(), want, "loss, entry {at}");
                    // In padding: item 1 ends at node 2, so its last table is never read.
                    let lengths = [n, 2];
                    let pad = (n - 1) * c * c + 2 * c * c + 4;
                    if eb == b {
                        let mut se = vec![T::from_f64(0.5); eb * (n - 1) * c * c];
                        se[pad] = T::from_f64(bad);
                        let pb = Problem::deferring_edge_check(
                            &g,
                            node,
                            EdgeScores::tables(&se, eb, n - 1, c),
                            b,
                            Some(&lengths),
                        );
                        assert!(marginals(&pb.unwrap(), true).unwrap().is_err());
                    }
                }
            }
        }
        run::<f32>();
        run::<f64>();
    }
}
