//! Approximate inference on graphs with cycles: loopy belief propagation (sum-product, its
//! Bethe estimate of log Z), tree-reweighted BP (an upper bound on log Z), naive mean field
//! (a lower bound) and max-product BP for MAP labellings.
//!
//! Messages are stored per directed edge (slot `2e` leaves edge `e`'s first node, `2e + 1`
//! its second), normalised to sum to one, in the log domain. Updates are node-centric: a
//! node reads its incoming messages and writes its outgoing ones. The `Parallel` schedule
//! computes every message from the previous iteration's (flooding); the `Colour` schedule
//! sweeps the colour classes of a greedy colouring (the checkerboard on grids), each class
//! in parallel, each using the freshest messages. Work inside an item is split into fixed
//! chunks of nodes, and the only cross-chunk reduction is a maximum, so results are
//! bit-identical whatever the number of threads.

pub mod grid;
pub mod grid_beliefs;
mod grid_edge_fused;
mod grid_fused;
pub mod options;

pub use options::{Approx, LoopyOptions, Schedule};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::inference::{
    self, no_lengths, Decoded, EdgeSink, Family, Inference, Inferred, ItemInfo, LossGrad,
};
use crate::interrupt::Stop;
use crate::kernels::logspace::{exp, ln_pos, max, softmax};
use crate::kernels::message::{joint_and_message, message, Scratch, Table};
use crate::kernels::real::Real;
use crate::loopy::grid::GridPotentials;
use crate::model::adjacency::{slot, Adjacency};
use crate::model::scores::{ItemEdges, Problem};
use crate::simd_dispatch;

/// Nodes per parallel task inside one item (fixed, so splitting never depends on threads).
const NODE_CHUNK: usize = 512;
/// Below this many nodes an item runs on one thread (items run in parallel instead).
const PARALLEL_NODES: usize = 4096;

/// A message buffer that parallel node updates share. Node `v` writes only its outgoing
/// slots and reads only its incoming ones; within one parallel step no node writes a slot
/// that another reads (`Parallel` reads the previous buffer; `Colour` updates one colour
/// class, and neighbours never share a colour).
pub struct Shared {
    ptr: *mut f64,
    c: usize,
    len: usize,
}

// SAFETY: `Shared` is a `&mut [f64]` whose slots concurrent node updates access under the
// discipline of the type's doc (each slot written by its one owner while nobody reads it,
// or only read), like disjoint `&mut` slices plus shared `&` slices.
unsafe impl Send for Shared {}
// SAFETY: as above; `&Shared` hands out slots only through the unsafe `get`/`get_mut`,
// whose callers keep that discipline.
unsafe impl Sync for Shared {}

impl Shared {
    fn new(buf: &mut [f64], c: usize) -> Shared {
        Shared {
            ptr: buf.as_mut_ptr(),
            c,
            len: buf.len(),
        }
    }
    /// True when both views are of the same buffer (the colour schedule updates in place).
    fn same(&self, other: &Shared) -> bool {
        std::ptr::eq(self.ptr, other.ptr)
    }

    /// # Safety
    /// No other thread may write this slot while the returned slice lives.
    #[inline(always)]
    unsafe fn get(&self, s: usize) -> &[f64] {
        debug_assert!((s + 1) * self.c <= self.len);
        std::slice::from_raw_parts(self.ptr.add(s * self.c), self.c)
    }
    /// # Safety
    /// Only the slot's owner (the node it leaves) may write it, and nobody reads it meanwhile.
    #[allow(clippy::mut_from_ref)]
    #[inline(always)]
    unsafe fn get_mut(&self, s: usize) -> &mut [f64] {
        debug_assert!((s + 1) * self.c <= self.len);
        std::slice::from_raw_parts_mut(self.ptr.add(s * self.c), self.c)
    }
}

/// Per-thread scratch for node updates.
pub struct NodeWs {
    c: usize,
    th: Vec<f64>,
    a: Vec<f64>,
    x: Vec<f64>,
    q: Vec<f64>,
    out: Vec<f64>,
    table: Table,
    /// Cached preparations of a table shared by every edge: (address, scale) per orientation.
    cache: [(Table, usize, u64); 2],
    raw: Vec<f64>,
    sc: Scratch,
}

impl NodeWs {
    fn new(c: usize) -> NodeWs {
        NodeWs {
            c,
            th: vec![0.0; c],
            a: vec![0.0; c],
            x: vec![0.0; c],
            q: vec![0.0; c],
            out: vec![0.0; c],
            table: Table::new(c),
            cache: [(Table::new(c), 0, 0), (Table::new(c), 0, 0)],
            raw: vec![0.0; c * c],
            sc: Scratch::new(c),
        }
    }
}

/// The table of edge `e` scaled by `scale`, oriented `[src, dst]` (`transpose` when the
/// source is the edge's second node); a shared table is prepared once per orientation.
#[inline(always)]
fn table_for<'w, T: Real>(
    edges: &ItemEdges<'_, T>,
    e: usize,
    transpose: bool,
    scale: f64,
    table: &'w mut Table,
    cache: &'w mut [(Table, usize, u64); 2],
) -> &'w Table {
    if edges.shared() {
        let entry = &mut cache[transpose as usize];
        if entry.1 != edges.shared_key() || entry.2 != scale.to_bits() {
            edges.load(e, transpose, scale, &mut entry.0);
            entry.1 = edges.shared_key();
            entry.2 = scale.to_bits();
        }
        &entry.0
    } else {
        edges.load(e, transpose, scale, table);
        table
    }
}

/// `log Σ exp`, used to normalise messages.
#[inline(always)]
fn lse(xs: &[f64]) -> f64 {
    let m = max(xs);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + ln_pos(xs.iter().map(|&x| exp(x - m)).sum::<f64>())
}

/// The cavity belief at `v` excluding neighbour entry `k`:
/// `θ_v + Σ_{j≠k} ρ_j m_j + (ρ_k − 1) m_k`, from `a = θ_v + Σ_j ρ_j m_j`. Where `m_k` is
/// −inf the subtraction is undefined: BP (ρ = 1) recomputes the sum without it; TRW treats
/// the label as impossible.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn cavity(
    adj: &Adjacency,
    v: usize,
    k: usize,
    theta: &[f64],
    a: &[f64],
    msgs: &Shared,
    rho: Option<&[f64]>,
    out: &mut [f64],
) {
    let e = adj.edge[k] as usize;
    // SAFETY: incoming slots are only read during an update.
    let inc = unsafe { msgs.get(slot(e, !adj.first[k])) };
    for x in 0..out.len() {
        out[x] = if inc[x] > f64::NEG_INFINITY {
            a[x] - inc[x]
        } else if rho.is_none() {
            let mut s = theta[x];
            for j in adj.start[v]..adj.start[v + 1] {
                if j != k {
                    let ej = adj.edge[j] as usize;
                    // SAFETY: incoming slots of `v` are written only by updates of `v`'s
                    // neighbours, never concurrently with this read (see `Shared`).
                    s += unsafe { msgs.get(slot(ej, !adj.first[j])) }[x];
                }
            }
            s
        } else {
            f64::NEG_INFINITY
        };
    }
}

/// `a = θ_v + Σ_j ρ_j m_j` (the reweighted belief at `v`, log, unnormalised).
#[inline(always)]
fn gather(
    adj: &Adjacency,
    v: usize,
    theta: &[f64],
    msgs: &Shared,
    rho: Option<&[f64]>,
    a: &mut [f64],
) {
    a.copy_from_slice(theta);
    for k in adj.start[v]..adj.start[v + 1] {
        let e = adj.edge[k] as usize;
        let r = rho.map_or(1.0, |r| r[e]);
        // SAFETY: an incoming slot of `v`, not written while `v` gathers (see `Shared`).
        let inc = unsafe { msgs.get(slot(e, !adj.first[k])) };
        for (ax, &m) in a.iter_mut().zip(inc) {
            *ax += r * m;
        }
    }
}

simd_dispatch! {
    /// Recomputes every message leaving `v`; returns the largest change (probability
    /// domain).
    pub fn update_node<T: Real>(
        adj: &Adjacency,
        v: usize,
        node: &[T],
        edges: &ItemEdges<'_, T>,
        rho: Option<&[f64]>,
        max_product: bool,
        damping: f64,
        read: &Shared,
        write: &Shared,
        ws: &mut NodeWs,
    ) -> f64 => update_node_body
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn update_node_body<T: Real>(
    adj: &Adjacency,
    v: usize,
    node: &[T],
    edges: &ItemEdges<'_, T>,
    rho: Option<&[f64]>,
    max_product: bool,
    damping: f64,
    read: &Shared,
    write: &Shared,
    ws: &mut NodeWs,
) -> f64 {
    let c = ws.c;
    for (t, &s) in ws.th.iter_mut().zip(&node[v * c..(v + 1) * c]) {
        *t = s.to_f64();
    }
    gather(adj, v, &ws.th, read, rho, &mut ws.a);
    let mut change = 0.0f64;
    for k in adj.start[v]..adj.start[v + 1] {
        let e = adj.edge[k] as usize;
        let first = adj.first[k];
        let r = rho.map_or(1.0, |r| r[e]);
        cavity(adj, v, k, &ws.th, &ws.a, read, rho, &mut ws.x);
        // Table oriented [x_v, x_w]: stored [first, second].
        if max_product {
            edges.raw(e, !first, &mut ws.raw);
            for d in 0..c {
                let mut m = f64::NEG_INFINITY;
                for s in 0..c {
                    m = m.max(ws.x[s] + ws.raw[s * c + d] / r);
                }
                ws.out[d] = m;
            }
        } else {
            let t = table_for(edges, e, !first, 1.0 / r, &mut ws.table, &mut ws.cache);
            message(&ws.x, t, &mut ws.out, &mut ws.q, &mut ws.sc, false);
        }
        let out_slot = slot(e, first);
        // SAFETY: slot `out_slot` leaves v: only this update touches it in `write`, and in
        // `read` it is not an incoming slot of any node updated concurrently.
        let old = unsafe { read.get(out_slot) };
        normalise(&mut ws.out, max_product);
        if damping > 0.0 {
            for (o, &p) in ws.out.iter_mut().zip(old) {
                *o = if *o == f64::NEG_INFINITY || p == f64::NEG_INFINITY {
                    f64::NEG_INFINITY.max((1.0 - damping) * *o + damping * p)
                } else {
                    (1.0 - damping) * *o + damping * p
                };
            }
            normalise(&mut ws.out, max_product);
        }
        for (&o, &p) in ws.out.iter().zip(old) {
            change = change.max((exp(o) - exp(p)).abs());
        }
        // SAFETY: `out_slot` leaves `v`: only this update writes it, nobody reads it in
        // this step, and `old` (the same slot when the buffers coincide) is not used again.
        unsafe { write.get_mut(out_slot) }.copy_from_slice(&ws.out);
    }
    change
}

/// Sum-product messages sum to one; max-product messages peak at zero. A message that is
/// −inf everywhere (every label forbidden) is left as it is and caught at belief time.
#[inline(always)]
fn normalise(m: &mut [f64], max_product: bool) {
    let z = if max_product { max(m) } else { lse(m) };
    if z > f64::NEG_INFINITY {
        m.iter_mut().for_each(|x| *x -= z);
    }
}

/// Runs message passing for one item; `msgs` holds the messages on return. Returns
/// (iterations, converged, last largest change).
#[allow(clippy::too_many_arguments)]
fn iterate<T: Real>(
    adj: &Adjacency,
    n: usize,
    node: &[T],
    edges: &ItemEdges<'_, T>,
    opts: &LoopyOptions,
    rho: Option<&[f64]>,
    max_product: bool,
    msgs: &mut Vec<f64>,
    tmp: &mut Vec<f64>,
    ws: &mut NodeWs,
    stop: &Stop,
) -> Result<(u32, bool, f64)> {
    let c = ws.c;
    let init = if max_product { 0.0 } else { -(c as f64).ln() };
    msgs.iter_mut().for_each(|m| *m = init);
    tmp.copy_from_slice(msgs);
    let parallel = n >= PARALLEL_NODES;
    let step = Step {
        adj,
        n,
        node,
        edges,
        rho,
        max_product,
        damping: opts.damping,
        parallel,
        stop,
    };
    let mut last = f64::INFINITY;
    for it in 1..=opts.max_iter {
        stop.check()?;
        let change = match opts.schedule {
            Schedule::Parallel => {
                let (read, write) = (Shared::new(msgs, c), Shared::new(tmp, c));
                let ch = step.sweep(None, &read, &write, ws);
                std::mem::swap(msgs, tmp);
                ch
            }
            Schedule::Colour => {
                let buf = Shared::new(msgs, c);
                let mut ch = 0.0f64;
                for cls in &adj.colours {
                    ch = ch.max(step.sweep(Some(cls), &buf, &buf, ws));
                }
                ch
            }
        };
        stop.check()?;
        last = change;
        if change < opts.tol {
            return Ok((it as u32, true, change));
        }
    }
    Ok((opts.max_iter as u32, false, last))
}

/// One sweep's fixed inputs.
struct Step<'a, 'b, T> {
    adj: &'a Adjacency,
    n: usize,
    node: &'a [T],
    edges: &'a ItemEdges<'b, T>,
    rho: Option<&'a [f64]>,
    max_product: bool,
    damping: f64,
    parallel: bool,
    stop: &'a Stop,
}

impl<T: Real> Step<'_, '_, T> {
    /// Updates the nodes of `class` (all nodes when `None`) in fixed chunks; returns the
    /// largest change.
    fn sweep(
        &self,
        class: Option<&Vec<u32>>,
        read: &Shared,
        write: &Shared,
        ws: &mut NodeWs,
    ) -> f64 {
        let count = class.map_or(self.n, |cl| cl.len());
        let chunk = |ws: &mut NodeWs, k: usize| {
            let mut ch = 0.0f64;
            // A raised stop skips the rest of the sweep; the caller then returns Interrupted.
            if self.stop.is_raised() {
                return ch;
            }
            for i in k * NODE_CHUNK..((k + 1) * NODE_CHUNK).min(count) {
                let v = class.map_or(i, |cl| cl[i] as usize);
                ch = ch.max(update_node(
                    self.adj,
                    v,
                    self.node,
                    self.edges,
                    self.rho,
                    self.max_product,
                    self.damping,
                    read,
                    write,
                    ws,
                ));
            }
            ch
        };
        let chunks = count.div_ceil(NODE_CHUNK);
        let c = ws.c;
        if self.parallel {
            (0..chunks)
                .into_par_iter()
                .map_init(|| NodeWs::new(c), |w, k| chunk(w, k))
                .reduce(|| 0.0, f64::max)
        } else {
            (0..chunks).map(|k| chunk(ws, k)).fold(0.0, f64::max)
        }
    }
}

fn infeasible_node(v: usize) -> Error {
    Error::Infeasible(format!(
        "the scores forbid every labelling: every label of node {v} is ruled out (all have \
         score -inf)"
    ))
}

/// Per-worker buffers for one item. The large ones are allocated on first use
/// (`ItemWs::ready`): the grid path runs without them unless its beliefs fall back to
/// the general pass.
pub struct ItemWs {
    /// `(nodes, edges, classes, mean field)`, for the deferred allocation.
    dims: (usize, usize, usize, bool),
    msgs: Vec<f64>,
    tmp: Vec<f64>,
    /// Reweighted beliefs `θ_v + Σ ρ m` (log) per node.
    a: Vec<f64>,
    /// Normalised node beliefs and their logs (floored at 1e-300).
    nb: Vec<f64>,
    lnb: Vec<f64>,
    node: NodeWs,
    marg: Vec<f64>,
    pair: Vec<f64>,
    /// Scratch of the sequential belief pass (small graphs).
    edge: EdgeWs,
}

impl ItemWs {
    fn new(n: usize, e: usize, c: usize, mean_field: bool) -> ItemWs {
        ItemWs {
            dims: (n, e, c, mean_field),
            msgs: Vec::new(),
            tmp: Vec::new(),
            a: Vec::new(),
            nb: Vec::new(),
            lnb: Vec::new(),
            node: NodeWs::new(c),
            marg: vec![0.0; c],
            pair: vec![0.0; c * c],
            edge: EdgeWs::new(c),
        }
    }
}

impl ItemWs {
    /// The workspace with its message and belief buffers allocated.
    fn ready(&mut self) -> &mut ItemWs {
        let (n, e, c, mean_field) = self.dims;
        if self.a.is_empty() && n * c > 0 {
            let slots = if mean_field { n } else { 2 * e };
            self.msgs = vec![0.0; slots * c];
            self.tmp = vec![0.0; slots * c];
            self.a = vec![0.0; n * c];
            self.nb = vec![0.0; n * c];
            self.lnb = vec![0.0; n * c];
        }
        self
    }
}

/// `Σ p θ` over entries with `p > 0` (a forbidden entry has `p = 0` and adds nothing).
#[inline(always)]
fn expect(p: &[f64], theta: impl Iterator<Item = f64>) -> f64 {
    p.iter()
        .zip(theta)
        .filter(|(&p, _)| p > 0.0)
        .map(|(&p, t)| p * t)
        .sum()
}

/// `−Σ p ln p`.
#[inline(always)]
fn entropy(p: &[f64]) -> f64 {
    -p.iter()
        .filter(|&&p| p > 0.0)
        .map(|&p| p * p.ln())
        .sum::<f64>()
}

/// Node belief `b = softmax(a)` into `b`, its logarithm (floored at ln 1e-300) into `lnb`,
/// and the node's free-energy term `E_b[θ] + H(b)`; None when every label is impossible.
/// `ln b = a − m − ln S` exactly (`m = max a`, `S = Σ e^{a − m}`), so `H(b) = m + ln S −
/// Σ b a` and no logarithm is taken per label.
#[inline(always)]
fn node_belief(a: &[f64], th: &[f64], b: &mut [f64], lnb: &mut [f64]) -> Option<f64> {
    let m = max(a);
    if m == f64::NEG_INFINITY {
        return None;
    }
    let mut s = 0.0;
    for (bx, &x) in b.iter_mut().zip(a) {
        *bx = exp(x - m);
        s += *bx;
    }
    let (inv, ls) = (1.0 / s, ln_pos(s));
    let mut term = m + ls;
    for ((bx, l), (&x, &t)) in b.iter_mut().zip(lnb.iter_mut()).zip(a.iter().zip(th)) {
        *bx *= inv;
        *l = (x - m - ls).max(LN_FLOOR);
        // A label with no mass adds nothing (its θ and a may both be −inf).
        if *bx > 0.0 {
            term += *bx * (t - x);
        }
    }
    Some(term)
}

/// `ln 1e-300`: the floor of logarithms of node beliefs (finite, so `0 · ln b = 0`).
const LN_FLOOR: f64 = -690.775_527_898_213_7;

/// Edges per block of the belief pass, and per parallel task inside a block.
const BELIEF_BLOCK: usize = 8192;
const BELIEF_SUB: usize = 256;
/// Fewest edges for which the belief pass runs in parallel.
const PARALLEL_BELIEF_EDGES: usize = 2048;

/// Scratch for one edge of the belief pass.
pub struct EdgeWs {
    nw: NodeWs,
    xj: Vec<f64>,
    qj: Vec<f64>,
    msg: Vec<f64>,
    marg: Vec<f64>,
}

impl EdgeWs {
    fn new(c: usize) -> EdgeWs {
        EdgeWs {
            nw: NodeWs::new(c),
            xj: vec![0.0; c],
            qj: vec![0.0; c],
            msg: vec![0.0; c],
            marg: vec![0.0; c],
        }
    }
}

/// Pair marginal of the edge at adjacency slot `k` of its first node `v` into `pair`
/// (`C x C`, oriented like the edge's table); returns the edge's free-energy term
/// The two cavity log-beliefs of the edge at adjacency slot `k` of node `v`: node `v`'s
/// into `ew.nw.x`, its neighbour's into `ew.xj`. Returns (edge, neighbour, ρ_e).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn edge_cavities<T: Real>(
    adj: &Adjacency,
    node: &[T],
    msgs: &Shared,
    a: &[f64],
    rho: Option<&[f64]>,
    v: usize,
    k: usize,
    ew: &mut EdgeWs,
) -> (usize, usize, f64) {
    let c = ew.xj.len();
    let (e, w) = (adj.edge[k] as usize, adj.nbr[k] as usize);
    let nw = &mut ew.nw;
    for (t, &s) in nw.th.iter_mut().zip(&node[v * c..(v + 1) * c]) {
        *t = s.to_f64();
    }
    let av = &a[v * c..(v + 1) * c];
    cavity(adj, v, k, &nw.th, av, msgs, rho, &mut nw.x);
    for (t, &s) in nw.th.iter_mut().zip(&node[w * c..(w + 1) * c]) {
        *t = s.to_f64();
    }
    let (aw, twin) = (&a[w * c..(w + 1) * c], adj.twin[k] as usize);
    cavity(adj, w, twin, &nw.th, aw, msgs, rho, &mut ew.xj);
    (e, w, rho.map_or(1.0, |r| r[e]))
}

/// `E_p[θ] − ρ I(p)` (mutual information against the node beliefs, logs in `lnb`).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn edge_belief<T: Real>(
    adj: &Adjacency,
    node: &[T],
    edges: &ItemEdges<'_, T>,
    msgs: &Shared,
    a: &[f64],
    lnb: &[f64],
    rho: Option<&[f64]>,
    v: usize,
    k: usize,
    ew: &mut EdgeWs,
    pair: &mut [f64],
) -> f64 {
    let (e, w, r) = edge_cavities(adj, node, msgs, a, rho, v, k, ew);
    let nw = &mut ew.nw;
    let my = max(&ew.xj);
    for (q, &x) in ew.qj.iter_mut().zip(&ew.xj) {
        *q = if my > f64::NEG_INFINITY {
            exp(x - my)
        } else {
            0.0
        };
    }
    let t = table_for(edges, e, false, 1.0 / r, &mut nw.table, &mut nw.cache);
    joint_and_message(
        &nw.x,
        &ew.xj,
        &ew.qj,
        t,
        pair,
        false,
        false,
        &mut ew.msg,
        &mut ew.marg,
        &mut nw.sc,
        None,
        false,
    );
    // Energy with the unscaled table; mutual information against the node beliefs.
    let term = expect(pair, t.raw.iter().map(|&x| x * r));
    let cols = &mut ew.msg;
    term - r * mutual_information(pair, &nw.x, &ew.xj, &t.raw, term / r, lnb, v, w, cols)
}

/// `I = Σ p ln p − Σ_s p_s· ln b_v[s] − Σ_d p_·d ln b_w[d]` for the pair marginal
/// `p(s, d) ∝ exp(x[s] + t[s, d] + y[d])` (`pt` = `Σ p t`), with no logarithm per entry:
/// `ln p(s, d) = x[s] + t[s, d] + y[d] − L`, so `Σ p ln p = Σ_s p_s· x[s] + pt +
/// Σ_d p_·d y[d] − L`, and `L` is read off the largest entry of `p` (at least `1/C²`, so
/// its logarithm is exact to rounding). A label with zero mass adds nothing.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn mutual_information(
    pair: &[f64],
    x: &[f64],
    y: &[f64],
    t: &[f64],
    pt: f64,
    lnb: &[f64],
    v: usize,
    w: usize,
    cols: &mut [f64],
) -> f64 {
    let c = x.len();
    let (lv, lw) = (&lnb[v * c..(v + 1) * c], &lnb[w * c..(w + 1) * c]);
    cols.fill(0.0);
    let (mut best, mut at) = (f64::NEG_INFINITY, 0);
    let mut mi = pt;
    for s in 0..c {
        let row = &pair[s * c..(s + 1) * c];
        let mut rs = 0.0;
        for (cd, &p) in cols.iter_mut().zip(row) {
            *cd += p;
            rs += p;
        }
        for (d, &p) in row.iter().enumerate() {
            if p > best {
                (best, at) = (p, s * c + d);
            }
        }
        if rs > 0.0 {
            mi += rs * (x[s] - lv[s]);
        }
    }
    for d in 0..c {
        if cols[d] > 0.0 {
            mi += cols[d] * (y[d] - lw[d]);
        }
    }
    let (s, d) = (at / c, at % c);
    mi - (x[s] + t[at] + y[d] - ln_pos(best))
}

simd_dispatch! {
    /// `edge_belief` for the edges at `slots` (`(first node, adjacency slot)`): pair
    /// marginals into consecutive `C x C` blocks of `pairs`, free-energy terms into `terms`.
    pub fn edge_beliefs<T: Real>(
        adj: &Adjacency,
        node: &[T],
        edges: &ItemEdges<'_, T>,
        msgs: &Shared,
        a: &[f64],
        lnb: &[f64],
        rho: Option<&[f64]>,
        slots: &[(u32, u32)],
        ew: &mut EdgeWs,
        pairs: &mut [f64],
        terms: &mut [f64],
    ) -> () => edge_beliefs_body
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn edge_beliefs_body<T: Real>(
    adj: &Adjacency,
    node: &[T],
    edges: &ItemEdges<'_, T>,
    msgs: &Shared,
    a: &[f64],
    lnb: &[f64],
    rho: Option<&[f64]>,
    slots: &[(u32, u32)],
    ew: &mut EdgeWs,
    pairs: &mut [f64],
    terms: &mut [f64],
) {
    let c = ew.xj.len();
    let cc = c * c;
    // One Potts table for every edge (shared, or weighted): the O(C) belief.
    let potts = (edges.shared() || edges.weighted())
        .then(|| {
            let mut t = vec![0.0; cc];
            edges.unweighted(0, &mut t);
            crate::kernels::message::potts(&t, c)
        })
        .flatten();
    for ((p, t), &(v, k)) in pairs.chunks_exact_mut(cc).zip(terms.iter_mut()).zip(slots) {
        let (v, k) = (v as usize, k as usize);
        let fast = potts
            .and_then(|pd| potts_edge_belief(adj, node, edges, msgs, a, lnb, rho, v, k, pd, ew, p));
        *t = fast.unwrap_or_else(|| edge_belief(adj, node, edges, msgs, a, lnb, rho, v, k, ew, p));
    }
}

/// [`edge_belief`] for a Potts table `(diagonal, off)` times the edge's weight: with
/// `s = w Δ / ρ`, `p(a, b) = q_v(a) q_w(b) (A + B [a = b]) / Z` where `(A, B)` is
/// `(e^{-s}, 1 − e^{-s})` for `s >= 0` and `(1, e^s − 1)` otherwise (no factor above 1),
/// and the free-energy term needs only the row and column sums and the diagonal, since
/// `ln p(a, b) = ln q_v(a) + ln q_w(b) + ln(A + B [a = b]) − ln Z`. O(C) exponentials and
/// logarithms instead of O(C²). `None` when `Z` is too small for the probability domain
/// (the caller then runs the general belief).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn potts_edge_belief<T: Real>(
    adj: &Adjacency,
    node: &[T],
    edges: &ItemEdges<'_, T>,
    msgs: &Shared,
    a: &[f64],
    lnb: &[f64],
    rho: Option<&[f64]>,
    v: usize,
    k: usize,
    (diag, off): (f64, f64),
    ew: &mut EdgeWs,
    pair: &mut [f64],
) -> Option<f64> {
    let c = ew.xj.len();
    let (e, w, r) = edge_cavities(adj, node, msgs, a, rho, v, k, ew);
    let we = edges.weight(e);
    let s = we * (diag - off) / r;
    let nw = &ew.nw;
    let (xv, xw) = (&nw.x, &ew.xj);
    let (mv, mw) = (max(xv), max(xw));
    if mv == f64::NEG_INFINITY || mw == f64::NEG_INFINITY {
        return None;
    }
    let (qv, qw) = (&mut ew.msg, &mut ew.qj);
    for (q, &x) in qv.iter_mut().zip(xv) {
        *q = exp(x - mv);
    }
    for (q, &x) in qw.iter_mut().zip(xw) {
        *q = exp(x - mw);
    }
    let (big_a, big_b) = crate::kernels::message::potts_split(s, exp(-s.abs()));
    let (sv, sw): (f64, f64) = (qv.iter().sum(), qw.iter().sum());
    let dot: f64 = qv.iter().zip(qw.iter()).map(|(x, y)| x * y).sum();
    let z = big_a * sv * sw + big_b * dot;
    // (Also catches a NaN z.)
    if z.is_nan() || z < 1e-200 {
        return None;
    }
    let inv = 1.0 / z;
    let (mut ent, mut diag_mass) = (0.0, 0.0);
    for i in 0..c {
        let row = &mut pair[i * c..(i + 1) * c];
        let f = qv[i] * inv;
        for (o, &q) in row.iter_mut().zip(qw.iter()) {
            *o = f * big_a * q;
        }
        row[i] += f * big_b * qw[i];
        // Row i's sum, and its share of Σ p (ln q_v − ln b_v).
        let ri = f * (big_a * sw + big_b * qw[i]);
        if ri > 0.0 {
            ent += ri * (xv[i] - mv - lnb[v * c + i]);
        }
        let ci = qw[i] * inv * (big_a * sv + big_b * qv[i]);
        if ci > 0.0 {
            ent += ci * (xw[i] - mw - lnb[w * c + i]);
        }
        diag_mass += row[i];
    }
    // Σ p ln(A + B[a = b]) = ln A (1 − D) + ln(A + B) D, with ln A = −s, ln(A + B) = 0 for
    // s >= 0 and ln A = 0, ln(A + B) = s otherwise.
    let shape = if s >= 0.0 {
        -s * (1.0 - diag_mass)
    } else {
        s * diag_mass
    };
    let mi = ent + shape - z.ln();
    // Energy E_p[w θ] = w (off + Δ D).
    let energy = we * (off + (diag - off) * diag_mass);
    Some(energy - r * mi)
}

simd_dispatch! {
    /// BP/TRW beliefs from converged messages, delivered to the sinks; returns the Bethe
    /// (TRW) estimate `Σ E_b[θ] + Σ_i H(b_i) − Σ_e ρ_e I_e(b_e)`.
    pub fn bp_beliefs<T: Real, S: EdgeSink>(
        pb: &Problem<'_, T>,
        adj: &Adjacency,
        b: usize,
        rho: Option<&[f64]>,
        ws: &mut ItemWs,
        node_sink: &mut dyn FnMut(usize, &[f64]),
        sink: &mut S,
    ) -> Result<f64> => bp_beliefs_body
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn bp_beliefs_body<T: Real, S: EdgeSink>(
    pb: &Problem<'_, T>,
    adj: &Adjacency,
    b: usize,
    rho: Option<&[f64]>,
    ws: &mut ItemWs,
    node_sink: &mut dyn FnMut(usize, &[f64]),
    sink: &mut S,
) -> Result<f64> {
    let (n, c) = (pb.graph.num_nodes(), pb.classes());
    let (node, edges) = (pb.node.item(b), pb.edge.item(b));
    let msgs = Shared::new(&mut ws.msgs, c);
    // Node beliefs, in parallel over fixed chunks of nodes (each writes its own rows); the
    // free-energy terms are summed in node order afterwards, so log Z does not depend on
    // the number of threads.
    let mut node_terms = vec![0.0; n];
    let chunk = NODE_CHUNK * c;
    let bad =
        ws.a.par_chunks_mut(chunk)
            .zip(ws.nb.par_chunks_mut(chunk))
            .zip(ws.lnb.par_chunks_mut(chunk))
            .zip(node_terms.par_chunks_mut(NODE_CHUNK))
            .enumerate()
            // Small items stay on their thread (items run in parallel instead).
            .with_min_len(if n >= PARALLEL_NODES { 1 } else { usize::MAX })
            .map(|(k, (((a, nb), lnb), terms))| {
                let mut th = vec![0.0; c];
                for (j, term) in terms.iter_mut().enumerate() {
                    let v = k * NODE_CHUNK + j;
                    for (t, &s) in th.iter_mut().zip(&node[v * c..(v + 1) * c]) {
                        *t = s.to_f64();
                    }
                    let rows = j * c..(j + 1) * c;
                    let a = &mut a[rows.clone()];
                    gather(adj, v, &th, &msgs, rho, a);
                    match node_belief(a, &th, &mut nb[rows.clone()], &mut lnb[rows]) {
                        Some(t) => *term = t,
                        None => return Some(v),
                    }
                }
                None
            })
            .collect::<Vec<Option<usize>>>();
    if let Some(v) = bad.into_iter().flatten().next() {
        return Err(infeasible_node(v));
    }
    let mut log_z = 0.0;
    for (v, &t) in node_terms.iter().enumerate() {
        log_z += t;
        node_sink(v, &ws.nb[v * c..(v + 1) * c]);
    }
    // Edges in blocks: pair marginals of a block in parallel (fixed sub-chunks, each
    // with its own scratch), then handed to the sink and summed into log Z in edge order,
    // so memory stays bounded and the result does not depend on the number of threads.
    let cc = c * c;
    let slots: Vec<(u32, u32)> = (0..n)
        .flat_map(|v| {
            (adj.start[v]..adj.start[v + 1])
                .filter(|&k| adj.first[k])
                .map(move |k| (v as u32, k as u32))
        })
        .collect();
    let block_len = BELIEF_BLOCK.min(slots.len());
    let mut pairs = vec![0.0; block_len * cc];
    let mut terms = vec![0.0; block_len];
    let (a, lnb) = (&ws.a[..], &ws.lnb[..]);
    for block in slots.chunks(BELIEF_BLOCK.max(1)) {
        let (pb, tb) = (&mut pairs[..block.len() * cc], &mut terms[..block.len()]);
        if slots.len() >= PARALLEL_BELIEF_EDGES {
            pb.par_chunks_mut(BELIEF_SUB * cc)
                .zip(tb.par_chunks_mut(BELIEF_SUB))
                .zip(block.par_chunks(BELIEF_SUB))
                .for_each_init(
                    || EdgeWs::new(c),
                    |ew, ((pp, tt), sl)| {
                        edge_beliefs(adj, node, &edges, &msgs, a, lnb, rho, sl, ew, pp, tt)
                    },
                );
        } else {
            edge_beliefs(
                adj,
                node,
                &edges,
                &msgs,
                a,
                lnb,
                rho,
                block,
                &mut ws.edge,
                pb,
                tb,
            );
        }
        for ((p, &t), &(_, k)) in pb.chunks_exact(cc).zip(tb.iter()).zip(block) {
            log_z += t;
            sink.put(adj.edge[k as usize] as usize, p);
        }
    }
    Ok(log_z)
}

/// Mean-field update of node `v`: `q_v ∝ exp(θ_v + Σ_w E_{q_w}[θ_vw(x_v, ·)])`; returns the
/// largest change of `q_v`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn mf_update<T: Real>(
    adj: &Adjacency,
    v: usize,
    node: &[T],
    edges: &ItemEdges<'_, T>,
    damping: f64,
    read: &Shared,
    write: &Shared,
    ws: &mut NodeWs,
) -> f64 {
    let c = ws.c;
    for (a, &s) in ws.a.iter_mut().zip(&node[v * c..(v + 1) * c]) {
        *a = s.to_f64();
    }
    for k in adj.start[v]..adj.start[v + 1] {
        let (e, w) = (adj.edge[k] as usize, adj.nbr[k] as usize);
        // SAFETY: neighbours have another colour (or `read` is the previous iterate).
        let qw = unsafe { read.get(w) };
        edges.raw(e, !adj.first[k], &mut ws.raw);
        for x in 0..c {
            let row = &ws.raw[x * c..(x + 1) * c];
            // 0 · (−inf) = 0: a neighbour label with no mass forbids nothing.
            ws.a[x] += row
                .iter()
                .zip(qw)
                .filter(|(_, &q)| q > 0.0)
                .map(|(&t, &q)| t * q)
                .sum::<f64>();
        }
    }
    if max(&ws.a) == f64::NEG_INFINITY {
        // Every label ruled out given the neighbours: keep the old marginal; the final
        // belief pass reports infeasibility if it persists. With one buffer (colour
        // schedule) it is already in place.
        if !read.same(write) {
            // SAFETY: slot `v` is read in `read`, a different buffer, which nobody writes
            // during this step; in `write` only `v`'s own update touches slot `v`.
            unsafe { write.get_mut(v) }.copy_from_slice(unsafe { read.get(v) });
        }
        return 0.0;
    }
    // SAFETY: slot `v` is written only by this update (below, after the last use of `old`);
    // neighbours read it only in steps where `v` is not updated.
    let old = unsafe { read.get(v) };
    softmax(&ws.a, &mut ws.out);
    // Damping mixes in the old marginal, except on labels the neighbours now rule out
    // (−inf): those must carry no mass, or a forbidden pair would get some.
    let mut total = 0.0;
    for ((o, &p), &a) in ws.out.iter_mut().zip(old).zip(&ws.a) {
        if a > f64::NEG_INFINITY {
            *o = (1.0 - damping) * *o + damping * p;
        }
        total += *o;
    }
    let mut change = 0.0f64;
    for (o, &p) in ws.out.iter_mut().zip(old) {
        *o /= total;
        change = change.max((*o - p).abs());
    }
    // SAFETY: as for `old` above; `old` is not used again.
    unsafe { write.get_mut(v) }.copy_from_slice(&ws.out);
    change
}

/// Mean-field iterations for one item; `ws.msgs` holds the marginals `q` `(I, C)`.
fn mf_iterate<T: Real>(
    pb: &Problem<'_, T>,
    adj: &Adjacency,
    b: usize,
    opts: &LoopyOptions,
    ws: &mut ItemWs,
) -> Result<(u32, bool, f64)> {
    let (n, c) = (pb.graph.num_nodes(), pb.classes());
    let (node, edges) = (pb.node.item(b), pb.edge.item(b));
    // Start from the node-only model.
    for v in 0..n {
        let th: Vec<f64> = node[v * c..(v + 1) * c]
            .iter()
            .map(|x| x.to_f64())
            .collect();
        if max(&th) > f64::NEG_INFINITY {
            softmax(&th, &mut ws.msgs[v * c..(v + 1) * c]);
        } else {
            ws.msgs[v * c..(v + 1) * c].fill(1.0 / c as f64);
        }
    }
    ws.tmp.copy_from_slice(&ws.msgs);
    let parallel = n >= PARALLEL_NODES;
    let run = |class: Option<&Vec<u32>>, read: &Shared, write: &Shared, nws: &mut NodeWs| {
        let count = class.map_or(n, |cl| cl.len());
        let chunk = |w: &mut NodeWs, k: usize| {
            let mut ch = 0.0f64;
            if pb.stop.is_raised() {
                return ch;
            }
            for i in k * NODE_CHUNK..((k + 1) * NODE_CHUNK).min(count) {
                let v = class.map_or(i, |cl| cl[i] as usize);
                ch = ch.max(mf_update(
                    adj,
                    v,
                    node,
                    &edges,
                    opts.damping,
                    read,
                    write,
                    w,
                ));
            }
            ch
        };
        let chunks = count.div_ceil(NODE_CHUNK);
        if parallel {
            (0..chunks)
                .into_par_iter()
                .map_init(|| NodeWs::new(c), |w, k| chunk(w, k))
                .reduce(|| 0.0, f64::max)
        } else {
            (0..chunks).map(|k| chunk(nws, k)).fold(0.0, f64::max)
        }
    };
    let mut last = f64::INFINITY;
    for it in 1..=opts.max_iter {
        pb.stop.check()?;
        let change = match opts.schedule {
            Schedule::Parallel => {
                let (r, w) = (Shared::new(&mut ws.msgs, c), Shared::new(&mut ws.tmp, c));
                let ch = run(None, &r, &w, &mut ws.node);
                std::mem::swap(&mut ws.msgs, &mut ws.tmp);
                ch
            }
            Schedule::Colour => {
                let buf = Shared::new(&mut ws.msgs, c);
                let mut ch = 0.0f64;
                for cls in &adj.colours {
                    ch = ch.max(run(Some(cls), &buf, &buf, &mut ws.node));
                }
                ch
            }
        };
        pb.stop.check()?;
        last = change;
        if change < opts.tol {
            return Ok((it as u32, true, change));
        }
    }
    Ok((opts.max_iter as u32, false, last))
}

/// Mean-field beliefs (node `q`, pairs `q_i q_jᵀ`) and the bound
/// `Σ E_q[θ] + Σ_i H(q_i) <= log Z`.
fn mf_beliefs<T: Real, S: EdgeSink>(
    pb: &Problem<'_, T>,
    b: usize,
    ws: &mut ItemWs,
    node_sink: &mut dyn FnMut(usize, &[f64]),
    sink: &mut S,
) -> Result<f64> {
    let (n, c) = (pb.graph.num_nodes(), pb.classes());
    let (node, edges) = (pb.node.item(b), pb.edge.item(b));
    let mut log_z = 0.0;
    for v in 0..n {
        let q = &ws.msgs[v * c..(v + 1) * c];
        let th = node[v * c..(v + 1) * c].iter().map(|x| x.to_f64());
        let e = expect(q, th.clone());
        // Mass on a forbidden label means the fixed point was not reached.
        if q.iter()
            .zip(th)
            .any(|(&p, t)| p > 0.0 && t == f64::NEG_INFINITY)
        {
            return Err(infeasible_node(v));
        }
        log_z += e + entropy(q);
        node_sink(v, q);
    }
    for (e, &[i, j]) in pb.graph.edges().iter().enumerate() {
        let (qi, qj) = (
            &ws.msgs[i as usize * c..(i as usize + 1) * c],
            &ws.msgs[j as usize * c..(j as usize + 1) * c],
        );
        for s in 0..c {
            for d in 0..c {
                ws.pair[s * c + d] = qi[s] * qj[d];
            }
        }
        edges.raw(e, false, &mut ws.node.raw);
        let en = expect(&ws.pair, ws.node.raw.iter().copied());
        if en == f64::NEG_INFINITY {
            return Err(Error::Infeasible(format!(
                "mean field put mass on a forbidden label pair of edge {e}; the scores may \
                 forbid every labelling, or the iterations did not converge"
            )));
        }
        log_z += en;
        sink.put(e, &ws.pair);
    }
    Ok(log_z)
}

/// A loopy method with its options, as the batch drivers see it.
pub struct Loopy<'g> {
    adj: &'g Adjacency,
    opts: LoopyOptions,
}

impl<'g> Loopy<'g> {
    pub fn new<T: Real>(pb: &Problem<'g, T>, opts: LoopyOptions) -> Result<Self> {
        opts.check(pb.graph.num_edges())?;
        if pb.lengths.is_some() {
            return Err(Error::Value(
                "lengths are only supported by exact inference on chains".into(),
            ));
        }
        Ok(Loopy {
            adj: pb.graph.adjacency(),
            opts,
        })
    }

    /// Grid potentials when the grid kernel applies: BP or TRW on a `Graph.grid` layout
    /// with scores whose spans the probability domain can hold.
    fn grid_fast_path<T: Real>(&self, pb: &Problem<'_, T>, b: usize) -> Option<GridPotentials> {
        if !matches!(self.opts.method, Approx::Bp | Approx::Trw(_)) {
            return None;
        }
        let (h, w) = pb.graph.grid_shape()?;
        GridPotentials::new(h, w, pb.node.item(b), &pb.edge.item(b), self.rho())
    }

    fn rho(&self) -> Option<&[f64]> {
        match &self.opts.method {
            Approx::Trw(r) => Some(r),
            _ => None,
        }
    }
}

impl<T: Real> Inference<T> for Loopy<'_> {
    type Ws = ItemWs;

    fn workspace(&self, pb: &Problem<'_, T>) -> ItemWs {
        ItemWs::new(
            pb.graph.num_nodes(),
            pb.graph.num_edges(),
            pb.classes(),
            self.opts.method == Approx::MeanField,
        )
    }

    fn item<S: EdgeSink>(
        &self,
        pb: &Problem<'_, T>,
        ws: &mut ItemWs,
        b: usize,
        node_sink: &mut dyn FnMut(usize, &[f64]),
        edges: &mut S,
    ) -> Result<ItemInfo> {
        let (it, conv, change, log_z) = if self.opts.method == Approx::MeanField {
            let ws = ws.ready();
            let (it, conv, ch) = mf_iterate(pb, self.adj, b, &self.opts, ws)?;
            (it, conv, ch, mf_beliefs(pb, b, ws, node_sink, edges)?)
        } else if let Some(gp) = self.grid_fast_path(pb, b) {
            let (it, conv, ch, mut grid_msgs) = crate::loopy::grid::iterate(
                &gp,
                self.opts.max_iter,
                self.opts.tol,
                self.opts.damping,
                self.opts.schedule,
                pb.stop,
            )?;
            pb.stop.check()?;
            use crate::loopy::grid_beliefs::{bp_beliefs as grid_beliefs, EdgeOut};
            let msgs = &mut grid_msgs;
            let fast = match edges.direct_rows() {
                // Pair marginals (or gradient rows) written into the output rows by the
                // parallel tasks.
                Some(rows) => {
                    grid_beliefs(&gp, msgs, node_sink, &mut |_, _| {}, EdgeOut::Rows(rows))
                }
                // (Weighted edges folded into per-edge potentials go through the sink.)
                None => match gp.weighted.as_ref().and(edges.weighted_grad()) {
                    // Weighted-edge gradients made by the parallel tasks.
                    Some(parts) => grid_beliefs(
                        &gp,
                        msgs,
                        node_sink,
                        &mut |_, _| {},
                        EdgeOut::Weighted(parts),
                    ),
                    None => {
                        let mut emit = |e: usize, p: &[f64]| edges.put(e, p);
                        grid_beliefs(&gp, msgs, node_sink, &mut emit, EdgeOut::Sink)
                    }
                },
            };
            let log_z = match fast {
                Some(z) => z,
                None => {
                    let ws = ws.ready();
                    crate::loopy::grid::to_general(&gp, &grid_msgs, &mut ws.msgs);
                    bp_beliefs(pb, self.adj, b, self.rho(), ws, node_sink, edges)?
                }
            };
            (it, conv, ch, log_z)
        } else {
            let ws = ws.ready();
            let es = pb.edge.item(b);
            let (it, conv, ch) = iterate(
                self.adj,
                pb.graph.num_nodes(),
                pb.node.item(b),
                &es,
                &self.opts,
                self.rho(),
                false,
                &mut ws.msgs,
                &mut ws.tmp,
                &mut ws.node,
                pb.stop,
            )?;
            (
                it,
                conv,
                ch,
                bp_beliefs(pb, self.adj, b, self.rho(), ws, node_sink, edges)?,
            )
        };
        Ok(ItemInfo {
            log_z,
            iterations: it,
            converged: conv,
            max_change: change,
        })
    }
}

/// MAP labellings by max-product BP `(B, I)`, with each item's convergence.
pub fn decode<T: Real>(
    pb: &Problem<'_, T>,
    opts: &LoopyOptions,
) -> Result<(Vec<i64>, Vec<ItemInfo>)> {
    let lp = Loopy::new(pb, opts.clone())?;
    let (n, c, ne) = (pb.graph.num_nodes(), pb.classes(), pb.graph.num_edges());
    let adj = lp.adj;
    let mut labels = vec![0i64; pb.batch * n];
    let info: Vec<ItemInfo> = labels
        .par_chunks_mut(n.max(1))
        .enumerate()
        .map_init(
            || ItemWs::new(n, ne, c, false),
            |ws, (b, row)| {
                let ws = ws.ready();
                let es = pb.edge.item(b);
                let node = pb.node.item(b);
                let (it, conv, ch) = iterate(
                    adj,
                    n,
                    node,
                    &es,
                    opts,
                    None,
                    true,
                    &mut ws.msgs,
                    &mut ws.tmp,
                    &mut ws.node,
                    pb.stop,
                )?;
                let msgs = Shared::new(&mut ws.msgs, c);
                for v in 0..n {
                    let th: Vec<f64> = node[v * c..(v + 1) * c]
                        .iter()
                        .map(|x| x.to_f64())
                        .collect();
                    gather(adj, v, &th, &msgs, None, &mut ws.marg);
                    let mut best = (0usize, f64::NEG_INFINITY);
                    for (k, &x) in ws.marg.iter().enumerate() {
                        if x > best.1 {
                            best = (k, x);
                        }
                    }
                    if best.1 == f64::NEG_INFINITY {
                        return Err(infeasible_node(v));
                    }
                    row[v] = best.0 as i64;
                }
                Ok(ItemInfo {
                    log_z: f64::NAN,
                    iterations: it,
                    converged: conv,
                    max_change: ch,
                })
            },
        )
        .collect::<Result<_>>()?;
    Ok((labels, info))
}

/// BP, TRW and mean field as a [`Family`] (the configuration names which one).
impl Family for LoopyOptions {
    fn name(&self) -> &'static str {
        match self.method {
            Approx::Bp => "bp",
            Approx::Trw(_) => "trw",
            Approx::MeanField => "mean_field",
        }
    }

    fn infer<T: Real>(&self, pb: &Problem<'_, T>, want_edges: bool) -> Result<Inferred<T>> {
        let lp = Loopy::new(pb, self.clone())?;
        Ok(Inferred {
            marginals: inference::marginals(pb, &lp, want_edges)?,
            error_bars: None,
        })
    }

    fn loss_and_grad<T: Real>(
        &self,
        pb: &Problem<'_, T>,
        y: &[i64],
        weights: Option<&[f64]>,
    ) -> Result<LossGrad<T>> {
        inference::loss_and_grad(pb, &Loopy::new(pb, self.clone())?, y, weights)
    }

    /// BP: max-product BP. TRW and mean field: the argmax of their beliefs (ties to the
    /// smallest label, as in max-product).
    fn decode<T: Real>(&self, pb: &Problem<'_, T>) -> Result<Decoded> {
        if self.method == Approx::Bp {
            return decode(pb, self);
        }
        let c = pb.classes();
        let m = inference::marginals(pb, &Loopy::new(pb, self.clone())?, false)?;
        let y = m
            .node
            .chunks_exact(c)
            .map(|row| {
                let mut best = 0;
                for (k, x) in row.iter().enumerate() {
                    if x.to_f64() > row[best].to_f64() {
                        best = k;
                    }
                }
                best as i64
            })
            .collect();
        let info = (0..pb.batch)
            .map(|b| ItemInfo {
                log_z: m.log_z[b].to_f64(),
                iterations: m.iterations[b],
                converged: m.converged[b],
                max_change: m.max_change[b],
            })
            .collect();
        Ok((y, info))
    }

    fn sample<T: Real>(&self, pb: &Problem<'_, T>, _: usize, _: u64) -> Result<Vec<i64>> {
        no_lengths(pb, self.name())?;
        Err(Error::Option(format!(
            "method '{}' cannot sample; use 'exact' or 'gibbs'",
            self.name()
        )))
    }
}
