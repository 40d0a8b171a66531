//! What every inference method delivers, and the batch drivers built on it.
//!
//! A method implements [`Inference`]: for one batch item it returns log Z (exact or an
//! estimate) and hands node and pair marginals (or beliefs) to sinks. The drivers here turn
//! that into batched marginals, or into the loss `log Z − s(y)` with its gradients
//! `marginals − gold` laid out like the scores (summed over broadcast axes), for every
//! edge-score form. So a new method is one `Inference` impl, not a copy of this plumbing.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kernels::alloc::filled;
use crate::kernels::batch::{chunk_size, run_chunks, Rows};
use crate::kernels::real::Real;
use crate::model::scores::{ItemEdges, Problem};

/// Per-item facts besides the marginals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ItemInfo {
    pub log_z: f64,
    pub iterations: u32,
    pub converged: bool,
    pub max_change: f64,
}

impl ItemInfo {
    /// An exact answer: one pass, converged.
    pub fn exact(log_z: f64) -> ItemInfo {
        ItemInfo {
            log_z,
            iterations: 1,
            converged: true,
            max_change: 0.0,
        }
    }
}

/// Where a method puts each edge's pair marginal.
pub trait EdgeSink {
    /// Add to the slot (gradients summed over edges) rather than overwrite it.
    const ACCUMULATE: bool;
    /// The `C x C` slot for edge `e`, oriented like the edge's table.
    fn slot(&mut self, e: usize) -> &mut [f64];
    /// Called once the slot of edge `e` holds its value.
    #[inline(always)]
    fn commit(&mut self, _e: usize) {}
    /// Edge `e`'s finished pair marginal: stored into its slot (added with
    /// `ACCUMULATE`), then committed. A sink may take it more directly.
    #[inline(always)]
    fn put(&mut self, e: usize, pair: &[f64]) {
        let slot = self.slot(e);
        if Self::ACCUMULATE {
            slot.iter_mut().zip(pair).for_each(|(o, &p)| *o += p);
        } else {
            slot.copy_from_slice(pair);
        }
        self.commit(e);
    }
    /// The output rows `(E, C, C)` themselves, when this sink only stores each pair
    /// marginal in the caller's precision (or the gradient made from it, see
    /// [`DirectRows::gold`]): a method may then write them from parallel tasks, each edge's
    /// row by the one task that computed it, instead of through [`Self::put`].
    #[inline(always)]
    fn direct_rows(&mut self) -> Option<DirectRows<'_>> {
        None
    }
    /// True when every edge's slot is the same one (a shared table's gradient), so a
    /// method may sum pair marginals in any factored form it likes before adding them.
    #[inline(always)]
    fn shared_slot(&self) -> bool {
        false
    }
    /// The gradients of weighted edge scores `w_e · table` themselves, when this sink only
    /// makes those from the pair marginals: a method may then compute `∂/∂w_e = ⟨table,
    /// p_e⟩` ([`weighted_dot`]) and partial sums of `∂/∂table = Σ_e w_e p_e` in parallel
    /// tasks, adding the partial sums in an order fixed by the shapes.
    #[inline(always)]
    fn weighted_grad(&mut self) -> Option<WeightedParts<'_>> {
        None
    }
}

/// Where weighted-edge gradients go (see [`EdgeSink::weighted_grad`]); both hold 0 before.
pub struct WeightedParts<'a> {
    /// The stored `(C, C)` table, without weights.
    pub table: &'a [f64],
    /// `(E,)`: edge `e`'s entry is `⟨table, p_e⟩`.
    pub grad_weight: &'a mut [f64],
    /// `(C, C)`: `Σ_e w_e p_e`.
    pub grad_table: &'a mut [f64],
}

/// `⟨table, p⟩` over the pairs with `p ≠ 0` (a forbidden pair, whose table entry is −inf,
/// has marginal 0 and adds nothing), in four partial sums (so that it need not run one
/// entry at a time), combined as `(s0 + s1) + (s2 + s3)`.
#[inline(always)]
pub fn weighted_dot(pair: &[f64], table: &[f64]) -> f64 {
    let mut dot = [0.0f64; 4];
    for (i, (&p, &t)) in pair.iter().zip(table).enumerate() {
        dot[i % 4] += if p != 0.0 { p * t } else { 0.0 };
    }
    (dot[0] + dot[1]) + (dot[2] + dot[3])
}

/// Output rows `(E, C, C)` in the caller's precision (see [`EdgeSink::direct_rows`]).
pub struct DirectRows<'a> {
    pub rows: RowsOf<'a>,
    /// For gradient rows: edge `e = (i, j)`'s row is `(p − [k = y_i C + y_j]) · scale`
    /// (computed in f64, then stored), not the pair marginal `p` itself.
    pub gold: Option<Gold<'a>>,
}

/// Rows of either float type.
pub enum RowsOf<'a> {
    F32(&'a mut [f32]),
    F64(&'a mut [f64]),
}

/// The gold labelling `(I,)` whose indicators a gradient row subtracts, and the factor
/// (the item's weight, 1 without) applied after.
#[derive(Clone, Copy)]
pub struct Gold<'a> {
    pub labels: &'a [i64],
    pub scale: f64,
}

impl Gold<'_> {
    /// Entry `k` of a gradient row from its pair marginal `p`, `gold` being the row's gold
    /// entry: `(p − [k = gold]) · scale`, exactly as the gradient is made entry by entry.
    #[inline(always)]
    pub fn entry(&self, k: usize, gold: usize, p: f64) -> f64 {
        (if k == gold { p - 1.0 } else { p }) * self.scale
    }
}

/// `rows` as [`RowsOf`] when `T` is f32 or f64.
fn rows_of<T: Real>(rows: &mut [T]) -> Option<RowsOf<'_>> {
    let (ptr, len) = (rows.as_mut_ptr(), rows.len());
    let id = std::any::TypeId::of::<T>();
    // SAFETY: `T` is the type named by the `TypeId` just compared, so the slice is
    // reinterpreted as itself; it keeps the borrow of `rows`.
    unsafe {
        if id == std::any::TypeId::of::<f32>() {
            Some(RowsOf::F32(std::slice::from_raw_parts_mut(
                ptr as *mut f32,
                len,
            )))
        } else if id == std::any::TypeId::of::<f64>() {
            Some(RowsOf::F64(std::slice::from_raw_parts_mut(
                ptr as *mut f64,
                len,
            )))
        } else {
            None
        }
    }
}

/// An inference method, as the drivers see it.
pub trait Inference<T: Real>: Sync {
    type Ws: Send;
    /// Per-thread scratch.
    fn workspace(&self, pb: &Problem<'_, T>) -> Self::Ws;
    /// log Z of item `b`; node marginals go to `node_sink(v, m)` (`m` holds the marginals
    /// of nodes `v, v + 1, …`, `C` entries each: one node, or a block of consecutive nodes
    /// at once) and pair marginals to `edges` (only for the item's active nodes and edges).
    fn item<S: EdgeSink>(
        &self,
        pb: &Problem<'_, T>,
        ws: &mut Self::Ws,
        b: usize,
        node_sink: &mut dyn FnMut(usize, &[f64]),
        edges: &mut S,
    ) -> Result<ItemInfo>;
}

/// Error bars of sampled estimates (Gibbs), per item.
#[derive(Debug, Clone)]
pub struct ErrorBars {
    /// `(B, I, C)` standard errors of the node marginals (batch means).
    pub node_stderr: Vec<f64>,
    /// `(B,)` standard error of log Z (NaN when it was not estimated).
    pub log_z_stderr: Vec<f64>,
    /// `(B,)` Gelman–Rubin R-hat, the largest over nodes and labels.
    pub rhat: Vec<f64>,
}

/// What a method's `infer` returns: marginals, plus error bars for sampling methods.
#[derive(Debug, Clone)]
pub struct Inferred<T> {
    pub marginals: Marginals<T>,
    pub error_bars: Option<ErrorBars>,
}

/// A MAP labelling `(B, I)` (−1 at padded nodes) and each item's run facts.
pub type Decoded = (Vec<i64>, Vec<ItemInfo>);

/// A method family with its options: the four operations every entry point dispatches to
/// (see `method::Method`). A family that cannot do one refuses it with an error naming
/// the method; none ignores an argument.
pub trait Family {
    /// The method's name as users spell it.
    fn name(&self) -> &'static str;
    /// log Z and marginals of every item (pair marginals when `want_edges`).
    fn infer<T: Real>(&self, pb: &Problem<'_, T>, want_edges: bool) -> Result<Inferred<T>>;
    /// Loss `log Z − s(y)` per item and its gradients; `weights` scale each item's.
    fn loss_and_grad<T: Real>(
        &self,
        pb: &Problem<'_, T>,
        y: &[i64],
        weights: Option<&[f64]>,
    ) -> Result<LossGrad<T>>;
    /// The MAP labelling (or the method's best guess at it).
    fn decode<T: Real>(&self, pb: &Problem<'_, T>) -> Result<Decoded>;
    /// `num_samples` labellings per item `(num_samples, B, I)`; sample `s` of item `b`
    /// depends only on `(seed, b, s)`.
    fn sample<T: Real>(
        &self,
        pb: &Problem<'_, T>,
        num_samples: usize,
        seed: u64,
    ) -> Result<Vec<i64>>;
}

/// Refuses lengths (padded chains), which only the exact kernels honour.
pub fn no_lengths<T: Real>(pb: &Problem<'_, T>, method: &str) -> Result<()> {
    if pb.lengths.is_some() {
        return Err(Error::Value(format!(
            "lengths/mask are supported by method='exact' only (padded chains), not by \
             method='{method}'"
        )));
    }
    Ok(())
}

/// log Z and marginals of every batch item.
#[derive(Debug, Clone)]
pub struct Marginals<T> {
    /// `(B,)`
    pub log_z: Vec<T>,
    /// `(B, I, C)`; zero at padded nodes.
    pub node: Vec<T>,
    /// `(B, E, C, C)` when asked for; zero at padded edges.
    pub edge: Option<Vec<T>>,
    pub iterations: Vec<u32>,
    pub converged: Vec<bool>,
    pub max_change: Vec<f64>,
}

/// Loss `log Z − s(y)` and its gradients with respect to the scores as given.
#[derive(Debug, Clone)]
pub struct LossGrad<T> {
    /// `(B,)`
    pub loss: Vec<T>,
    /// Shaped like the node scores `(B_n, I, C)`: summed over items when `B_n = 1`.
    pub grad_node: Vec<T>,
    /// Shaped like the edge tables `(B_e, E_e, C, C)`: summed over broadcast axes. For
    /// weighted edge scores, the gradient of the shared table `(B_e, C, C)`.
    pub grad_edge: Vec<T>,
    /// For weighted edge scores, the gradient of the weights `(B_w, E)`.
    pub grad_weight: Option<Vec<T>>,
    pub iterations: Vec<u32>,
    pub converged: Vec<bool>,
    pub max_change: Vec<f64>,
}

/// Pair marginals converted to the output precision, one row per edge (or dropped).
struct ToRows<'a, T> {
    scratch: &'a mut [f64],
    rows: Option<&'a mut [T]>,
}

impl<T: Real> EdgeSink for ToRows<'_, T> {
    const ACCUMULATE: bool = false;
    #[inline(always)]
    fn slot(&mut self, _e: usize) -> &mut [f64] {
        self.scratch
    }
    #[inline(always)]
    fn commit(&mut self, e: usize) {
        if let Some(rows) = self.rows.as_deref_mut() {
            let cc = self.scratch.len();
            for (o, &x) in rows[e * cc..(e + 1) * cc]
                .iter_mut()
                .zip(self.scratch.iter())
            {
                *o = T::from_f64(x);
            }
        }
    }
    /// Converted straight into the edge's row (no copy through the scratch slot).
    #[inline(always)]
    fn put(&mut self, e: usize, pair: &[f64]) {
        if let Some(rows) = self.rows.as_deref_mut() {
            let cc = pair.len();
            for (o, &x) in rows[e * cc..(e + 1) * cc].iter_mut().zip(pair) {
                *o = T::from_f64(x);
            }
        }
    }
    #[inline(always)]
    fn direct_rows(&mut self) -> Option<DirectRows<'_>> {
        Some(DirectRows {
            rows: rows_of(self.rows.as_deref_mut()?)?,
            gold: None,
        })
    }
}

/// One item's edge-score gradient rows (per-edge tables, not summed over items), each
/// active edge's row written once in the caller's precision: `(p − [gold]) · scale`, the
/// gold indicator and the item's weight applied as the row is stored (no f64 copy of the
/// item's gradient to clear, adjust and convert afterwards).
struct GradRows<'a, T> {
    scratch: &'a mut [f64],
    rows: &'a mut [T],
    edges: &'a [[u32; 2]],
    gold: Gold<'a>,
    c: usize,
}

impl<T: Real> GradRows<'_, T> {
    #[inline(always)]
    fn store(&mut self, e: usize, pair: &[f64]) {
        let cc = pair.len();
        let [i, j] = self.edges[e];
        let labels = self.gold.labels;
        let gold = labels[i as usize] as usize * self.c + labels[j as usize] as usize;
        for (k, (o, &p)) in self.rows[e * cc..(e + 1) * cc]
            .iter_mut()
            .zip(pair)
            .enumerate()
        {
            *o = T::from_f64(self.gold.entry(k, gold, p));
        }
    }
}

impl<T: Real> EdgeSink for GradRows<'_, T> {
    const ACCUMULATE: bool = false;
    #[inline(always)]
    fn slot(&mut self, _e: usize) -> &mut [f64] {
        self.scratch
    }
    #[inline(always)]
    fn commit(&mut self, e: usize) {
        let pair = std::mem::take(&mut self.scratch);
        self.store(e, pair);
        self.scratch = pair;
    }
    #[inline(always)]
    fn put(&mut self, e: usize, pair: &[f64]) {
        self.store(e, pair);
    }
    #[inline(always)]
    fn direct_rows(&mut self) -> Option<DirectRows<'_>> {
        Some(DirectRows {
            rows: rows_of(self.rows)?,
            gold: Some(self.gold),
        })
    }
}

/// Pair marginals summed into per-edge slots, or into one slot for a shared table.
struct Accumulate<'a> {
    buf: &'a mut [f64],
    shared: bool,
    cc: usize,
}

impl EdgeSink for Accumulate<'_> {
    const ACCUMULATE: bool = true;
    #[inline(always)]
    fn shared_slot(&self) -> bool {
        self.shared
    }
    #[inline(always)]
    fn slot(&mut self, e: usize) -> &mut [f64] {
        let k = if self.shared { 0 } else { e };
        &mut self.buf[k * self.cc..(k + 1) * self.cc]
    }
}

/// Gradients of weighted edge scores `w_e * table`: `∂/∂w_e = <table, p_e>` and
/// `∂/∂table = Σ_e w_e p_e` (gold indicators are subtracted afterwards).
struct WeightedGrad<'a, 'b, T> {
    scratch: &'a mut [f64],
    table: &'a [f64],
    edges: ItemEdges<'b, T>,
    grad_weight: &'a mut [f64],
    grad_table: &'a mut [f64],
}

impl<T: Real> WeightedGrad<'_, '_, T> {
    /// Edge `e`'s pair marginal into both gradients.
    #[inline(always)]
    fn add(
        grad_table: &mut [f64],
        grad_weight: &mut [f64],
        table: &[f64],
        w: f64,
        e: usize,
        pair: &[f64],
    ) {
        for (g, &p) in grad_table.iter_mut().zip(pair) {
            *g += w * p;
        }
        grad_weight[e] += weighted_dot(pair, table);
    }
}

impl<T: Real> EdgeSink for WeightedGrad<'_, '_, T> {
    const ACCUMULATE: bool = false;
    #[inline(always)]
    fn slot(&mut self, _e: usize) -> &mut [f64] {
        self.scratch
    }
    #[inline(always)]
    fn commit(&mut self, e: usize) {
        let w = self.edges.weight(e);
        Self::add(
            self.grad_table,
            self.grad_weight,
            self.table,
            w,
            e,
            self.scratch,
        );
    }
    /// Straight from the pair (no copy through the scratch slot).
    #[inline(always)]
    fn put(&mut self, e: usize, pair: &[f64]) {
        let w = self.edges.weight(e);
        Self::add(self.grad_table, self.grad_weight, self.table, w, e, pair);
    }
    #[inline(always)]
    fn weighted_grad(&mut self) -> Option<WeightedParts<'_>> {
        Some(WeightedParts {
            table: self.table,
            grad_weight: self.grad_weight,
            grad_table: self.grad_table,
        })
    }
}

/// `f(out, m, first)` over blocks of whole nodes of a node sink's rows (`first`: the
/// block's first node, counted from the sink's `v`): on the pool's threads when the run is
/// long (a grid hands over all its nodes in one call, which would otherwise be a serial
/// tail of the call), in one piece otherwise. Elementwise, so the same for any thread count.
fn node_blocks<T: Send>(
    out: &mut [T],
    m: &[f64],
    c: usize,
    f: impl Fn(&mut [T], &[f64], usize) + Sync,
) {
    const BLOCK_NODES: usize = 2048;
    let block = BLOCK_NODES * c.max(1);
    if m.len() <= block {
        return f(out, m, 0);
    }
    out.par_chunks_mut(block)
        .zip(m.par_chunks(block))
        .enumerate()
        .for_each(|(i, (o, m))| f(o, m, i * BLOCK_NODES));
}

crate::simd_dispatch! {
    /// Node gradient rows from node marginals `m` (rows of `c`) and gold labels `y`:
    /// `(p − [k = y]) · w` in the output's precision, `w` absent: no product. (AVX2 where
    /// the CPU has it: the pool's tasks that call it are compiled for the baseline.)
    fn gold_rows_as<T: Real>(out: &mut [T], m: &[f64], y: &[i64], c: usize, w: Option<f64>)
        -> () => gold_rows_as_body
}

#[inline(always)]
fn gold_rows_as_body<T: Real>(out: &mut [T], m: &[f64], y: &[i64], c: usize, w: Option<f64>) {
    // Every entry as a marginal first (a loop the compiler vectorises), then each row's
    // gold entry redone: the values the entry-by-entry rule gives.
    match w {
        Some(w) => {
            for (o, &p) in out.iter_mut().zip(m) {
                *o = T::from_f64(p * w);
            }
        }
        None => {
            for (o, &p) in out.iter_mut().zip(m) {
                *o = T::from_f64(p);
            }
        }
    }
    for ((row, p), &y) in out.chunks_exact_mut(c).zip(m.chunks_exact(c)).zip(y) {
        // (A label outside the classes, such as a padded node's, has no gold entry.)
        if let (Some(o), Some(&p)) = (row.get_mut(y as usize), p.get(y as usize)) {
            let g = p - 1.0;
            *o = T::from_f64(w.map_or(g, |w| g * w));
        }
    }
}

fn item_error(e: Error, b: usize, batch: usize) -> Error {
    match e {
        Error::Infeasible(m) if batch > 1 => Error::Infeasible(format!("batch item {b}: {m}")),
        other => other,
    }
}

/// Batched log Z and marginals by `method`.
pub fn marginals<T: Real, M: Inference<T>>(
    pb: &Problem<'_, T>,
    method: &M,
    want_edges: bool,
) -> Result<Marginals<T>> {
    let (n, c, e, bsz) = (
        pb.graph.num_nodes(),
        pb.classes(),
        pb.graph.num_edges(),
        pb.batch,
    );
    let mut log_z = filled("log Z", &[bsz], T::from_f64(0.0))?;
    let mut node = filled("node marginals", &[bsz, n, c], T::from_f64(0.0))?;
    let mut edge = match want_edges {
        true => Some(filled("edge marginals", &[bsz, e, c, c], T::from_f64(0.0))?),
        false => None,
    };
    let mut info = vec![ItemInfo::exact(0.0); bsz];
    {
        let lz = Rows::new(&mut log_z, 1);
        let nd = Rows::new(&mut node, n * c);
        let ed = edge.as_mut().map(|v| Rows::new(v, e * c * c));
        let inf = Rows::new(&mut info, 1);
        run_chunks(
            bsz,
            1,
            || (method.workspace(pb), vec![0.0; c * c]),
            || (),
            |(ws, scratch), _, items| {
                for b in items {
                    pb.stop.check()?;
                    // SAFETY: item b is handled by this task only.
                    let (zrow, nrow, irow) = unsafe { (lz.get(b), nd.get(b), inf.get(b)) };
                    let mut sink = ToRows {
                        scratch,
                        // SAFETY: item b is handled by this task only.
                        rows: ed.as_ref().map(|r| unsafe { r.get(b) }),
                    };
                    let mut node_sink = |v: usize, m: &[f64]| {
                        node_blocks(&mut nrow[v * c..v * c + m.len()], m, c, |out, m, _| {
                            for (o, &x) in out.iter_mut().zip(m) {
                                *o = T::from_f64(x);
                            }
                        })
                    };
                    let it = method
                        .item(pb, ws, b, &mut node_sink, &mut sink)
                        .map_err(|er| item_error(er, b, bsz))?;
                    zrow[0] = T::from_f64(it.log_z);
                    irow[0] = it;
                }
                Ok(())
            },
        )?;
    }
    Ok(Marginals {
        log_z,
        node,
        edge,
        iterations: info.iter().map(|i| i.iterations).collect(),
        converged: info.iter().map(|i| i.converged).collect(),
        max_change: info.iter().map(|i| i.max_change).collect(),
    })
}

/// Checks gold labels `(B, I)` on the active nodes of each item.
pub fn check_labels<T: Real>(pb: &Problem<'_, T>, y: &[i64]) -> Result<()> {
    let (n, c) = (pb.graph.num_nodes(), pb.classes() as i64);
    if y.len() != pb.batch * n {
        return Err(Error::Shape(format!(
            "y has {} entries; expected batch {} x {n} nodes",
            y.len(),
            pb.batch
        )));
    }
    let bad = (0..pb.batch).into_par_iter().find_map_first(|b| {
        let row = &y[b * n..(b + 1) * n];
        row[..pb.active(b)]
            .iter()
            .position(|&l| l < 0 || l >= c)
            .map(|i| (b, i, row[i]))
    });
    match bad {
        Some((b, i, l)) => Err(Error::Value(format!(
            "label y[{b}, {i}] = {l} is outside [0, {c})"
        ))),
        None => Ok(()),
    }
}

/// Whether edge `(i, j)` is among item `b`'s active edges (both ends active).
#[inline]
fn edge_active(pb_active: usize, i: u32, j: u32) -> bool {
    (i as usize) < pb_active && (j as usize) < pb_active
}

/// Score `s(y)` of labelling `y` on the active part of item `b`.
///
/// Summed in fixed blocks of nodes and of edges by the pool's threads, the blocks' sums
/// added in order: the same value for any thread count (a large grid's gold entries are
/// scattered reads, a serial tail of the training step otherwise).
fn gold_score<T: Real>(pb: &Problem<'_, T>, b: usize, y: &[i64]) -> f64 {
    const BLOCK: usize = 1 << 12;
    let (c, act) = (pb.classes(), pb.active(b));
    let (ns, es) = (pb.node.item(b), pb.edge.item(b));
    let nodes: Vec<f64> = y[..act]
        .par_chunks(BLOCK)
        .enumerate()
        .map(|(blk, ys)| {
            let v0 = blk * BLOCK;
            ys.iter()
                .enumerate()
                .map(|(j, &l)| ns[(v0 + j) * c + l as usize].to_f64())
                .sum()
        })
        .collect();
    let edges: Vec<f64> = pb
        .graph
        .edges()
        .par_chunks(BLOCK)
        .enumerate()
        .map(|(blk, ends)| {
            let mut s = 0.0;
            for (j, &[i, jj]) in ends.iter().enumerate() {
                if edge_active(act, i, jj) {
                    let (a, d) = (y[i as usize] as usize, y[jj as usize] as usize);
                    s += es.value(blk * BLOCK + j, a, d);
                }
            }
            s
        })
        .collect();
    nodes.iter().chain(&edges).sum()
}

/// Adds `src` (f64) into `dst` as a per-item row, or into the chunk accumulator.
#[inline]
fn emit<T: Real>(src: &[f64], per_item: Option<&mut [T]>, acc: &mut [f64]) {
    match per_item {
        Some(row) => row
            .iter_mut()
            .zip(src)
            .for_each(|(o, &g)| *o = T::from_f64(g)),
        None => acc.iter_mut().zip(src).for_each(|(a, &g)| *a += g),
    }
}

/// Loss and gradients for gold labels `y` `(B, I)` by `method`. The gradients are those of
/// `Σ_b w_b loss_b` with `w = weights` (all ones when `None`): a backward pass with an
/// arbitrary upstream gradient needs the weights inside the sum over a broadcast batch.
pub fn loss_and_grad<T: Real, M: Inference<T>>(
    pb: &Problem<'_, T>,
    method: &M,
    y: &[i64],
    weights: Option<&[f64]>,
) -> Result<LossGrad<T>> {
    check_labels(pb, y)?;
    if let Some(w) = weights {
        if w.len() != pb.batch {
            return Err(Error::Shape(format!(
                "weights have {} entries but the batch has {} items",
                w.len(),
                pb.batch
            )));
        }
    }
    let (n, c, ne, bsz) = (
        pb.graph.num_nodes(),
        pb.classes(),
        pb.graph.num_edges(),
        pb.batch,
    );
    let cc = c * c;
    let edges = pb.graph.edges();
    let weighted = pb.edge.weight.is_some();
    // Per-item gradient sizes, and whether each input is shared across the batch.
    let ge_len = if weighted { cc } else { pb.edge.edges * cc };
    let gw_len = if weighted { ne } else { 0 };
    let node_shared = pb.node.batch == 1 && bsz > 1;
    let edge_shared = pb.edge.batch == 1 && bsz > 1;
    let weight_shared = weighted && pb.edge.weight_batch == 1 && bsz > 1;
    let acc_n = if node_shared { n * c } else { 0 };
    let acc_e = if edge_shared { ge_len } else { 0 };
    let acc_w = if weight_shared { gw_len } else { 0 };
    let chunk = chunk_size(bsz, acc_n + acc_e + acc_w);
    // Per-edge tables of each item's own: the method writes the item's gradient rows
    // itself (`GradRows`), gold indicators and weight included.
    let grad_rows = !weighted && pb.edge.edges != 1 && !edge_shared;

    let mut loss = vec![T::from_f64(0.0); bsz];
    let mut gn = filled(
        "node-score gradient",
        &[pb.node.batch, n, c],
        T::from_f64(0.0),
    )?;
    let mut ge = filled(
        "edge-score gradient",
        &[pb.edge.batch, ge_len],
        T::from_f64(0.0),
    )?;
    let mut gw = vec![
        T::from_f64(0.0);
        if weighted {
            pb.edge.weight_batch * ne
        } else {
            0
        }
    ];
    let mut info = vec![ItemInfo::exact(0.0); bsz];
    let accs = {
        let lr = Rows::new(&mut loss, 1);
        let ir = Rows::new(&mut info, 1);
        let nr = Rows::new(&mut gn, n * c);
        let er = Rows::new(&mut ge, ge_len);
        let wr = Rows::new(&mut gw, gw_len);
        run_chunks(
            bsz,
            chunk,
            || {
                (
                    method.workspace(pb),
                    vec![0.0; if node_shared { n * c } else { 0 }],
                    vec![0.0; if grad_rows { 0 } else { ge_len }],
                    vec![0.0; gw_len],
                    vec![0.0; cc],
                    vec![0.0; cc],
                )
            },
            || {
                (
                    vec![0.0f64; acc_n],
                    vec![0.0f64; acc_e],
                    vec![0.0f64; acc_w],
                )
            },
            |(ws, gnode, gedge, gweight, scratch, table), (an, ae, aw), items| {
                for b in items {
                    pb.stop.check()?;
                    let yb = &y[b * n..(b + 1) * n];
                    let es = pb.edge.item(b);
                    let act = pb.active(b);
                    gnode.fill(0.0);
                    gedge.fill(0.0);
                    gweight.fill(0.0);
                    // An item's own node scores: its gradient rows `(p − [gold]) · w_b`
                    // written by the sink straight into the output (untouched rows, the
                    // inactive nodes', stay 0); shared scores accumulate through `gnode`.
                    // SAFETY: item b is handled by this task only.
                    let mut own = (!node_shared).then(|| unsafe { nr.get(b) });
                    let wb = weights.map(|w| w[b]);
                    let mut node_sink = |v: usize, m: &[f64]| match own.as_deref_mut() {
                        Some(row) => {
                            let out = &mut row[v * c..v * c + m.len()];
                            node_blocks(out, m, c, |out, m, first| {
                                gold_rows_as(out, m, &yb[v + first..], c, wb)
                            })
                        }
                        None => {
                            let g = &mut gnode[v * c..v * c + m.len()];
                            g.copy_from_slice(m);
                            for (g, &y) in g.chunks_exact_mut(c).zip(&yb[v..]) {
                                g[y as usize] -= 1.0;
                            }
                        }
                    };
                    let it = if weighted {
                        // The stored table without its weight.
                        for (t, &s) in table.iter_mut().zip(pb.edge.stored_item(b)) {
                            *t = s.to_f64();
                        }
                        let mut sink = WeightedGrad {
                            scratch,
                            table,
                            edges: es,
                            grad_weight: gweight,
                            grad_table: gedge,
                        };
                        method.item(pb, ws, b, &mut node_sink, &mut sink)
                    } else if grad_rows {
                        let mut sink = GradRows {
                            scratch,
                            // SAFETY: item b is handled by this task only.
                            rows: unsafe { er.get(b) },
                            edges,
                            gold: Gold {
                                labels: yb,
                                scale: weights.map_or(1.0, |w| w[b]),
                            },
                            c,
                        };
                        method.item(pb, ws, b, &mut node_sink, &mut sink)
                    } else {
                        let mut sink = Accumulate {
                            buf: gedge,
                            shared: pb.edge.edges == 1,
                            cc,
                        };
                        method.item(pb, ws, b, &mut node_sink, &mut sink)
                    }
                    .map_err(|er| item_error(er, b, bsz))?;
                    // Gold indicators of the edges (`GradRows` applied them as it stored).
                    for (k, &[i, j]) in edges.iter().enumerate().filter(|_| !grad_rows) {
                        if !edge_active(act, i, j) {
                            continue;
                        }
                        let (a, bb) = (yb[i as usize] as usize, yb[j as usize] as usize);
                        if weighted {
                            gedge[a * c + bb] -= es.weight(k);
                            let t = table[a * c + bb];
                            if t > f64::NEG_INFINITY {
                                gweight[k] -= t;
                            }
                        } else {
                            let slot = if pb.edge.edges == 1 { 0 } else { k };
                            gedge[slot * cc + a * c + bb] -= 1.0;
                        }
                    }
                    let s = gold_score(pb, b, yb);
                    // SAFETY: item b is handled by this task only.
                    unsafe {
                        lr.get(b)[0] = T::from_f64(it.log_z - s);
                        ir.get(b)[0] = it;
                    }
                    if let Some(w) = weights {
                        let wb = w[b];
                        for g in gnode
                            .iter_mut()
                            .chain(gedge.iter_mut())
                            .chain(gweight.iter_mut())
                        {
                            *g *= wb;
                        }
                    }
                    // SAFETY: item b is handled by this task only.
                    unsafe {
                        if node_shared {
                            emit::<T>(gnode, None, an);
                        }
                        if !grad_rows {
                            emit(gedge, (!edge_shared).then(|| er.get(b)), ae);
                        }
                        if weighted {
                            emit(gweight, (!weight_shared).then(|| wr.get(b)), aw);
                        }
                    }
                }
                Ok(())
            },
        )?
    };
    // Combine the chunk accumulators in chunk order (deterministic).
    let fold = |k: usize, out: &mut [T]| {
        let mut total = vec![0.0f64; out.len()];
        for a in &accs {
            let part = [&a.0, &a.1, &a.2][k];
            total.iter_mut().zip(part).for_each(|(t, &x)| *t += x);
        }
        out.iter_mut()
            .zip(&total)
            .for_each(|(o, &t)| *o = T::from_f64(t));
    };
    if node_shared {
        fold(0, &mut gn);
    }
    if edge_shared {
        fold(1, &mut ge);
    }
    if weight_shared {
        fold(2, &mut gw);
    }
    Ok(LossGrad {
        loss,
        grad_node: gn,
        grad_edge: ge,
        grad_weight: weighted.then_some(gw),
        iterations: info.iter().map(|i| i.iterations).collect(),
        converged: info.iter().map(|i| i.converged).collect(),
        max_change: info.iter().map(|i| i.max_change).collect(),
    })
}
