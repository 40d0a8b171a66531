//! Exact sum-product on a rooted forest for one batch item: an upward pass (leaves to
//! roots) gives log Z and the messages every other answer needs; a downward pass gives
//! node and edge marginals. Messages are kept normalised (maximum 0) and their shifts are
//! summed into log Z in f64, so nothing grows with the length of a chain.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::inference::EdgeSink;
use crate::kernels::logspace::{logsumexp, max, softmax};
use crate::kernels::message::{joint_and_message, message, Scratch, Table};
use crate::kernels::real::Real;
use crate::model::forest::{Forest, ROOT};
use crate::model::scores::ItemEdges;
use crate::simd_dispatch;

/// Per-thread buffers, reused across the items a thread handles.
pub struct Workspace {
    c: usize,
    /// Upward belief of each position (node scores + messages from children); after the
    /// downward pass, the full belief (log, unnormalised).
    pub bel: Vec<f64>,
    /// Normalised message from each position to its parent.
    pub up: Vec<f64>,
    /// `exp(upward belief − its max)` of each position, kept for the downward pass.
    qup: Vec<f64>,
    table: Table,
    /// A table shared by every edge, prepared in both orientations; `shared_at` is the
    /// address it was loaded from, so items sharing it (a batch-wide transition matrix)
    /// reuse it instead of preparing it again.
    shared: [Table; 2],
    shared_at: usize,
    sc: Scratch,
    x: Vec<f64>,
    msg: Vec<f64>,
    marg: Vec<f64>,
    /// Outer-product accumulator for pair marginals of a shared table.
    outer: Vec<f64>,
}

impl Workspace {
    pub fn new(n: usize, c: usize) -> Workspace {
        Workspace {
            c,
            bel: vec![0.0; n * c],
            up: vec![0.0; n * c],
            qup: vec![0.0; n * c],
            table: Table::new(c),
            shared: [Table::new(c), Table::new(c)],
            shared_at: 0,
            sc: Scratch::new(c),
            x: vec![0.0; c],
            msg: vec![0.0; c],
            marg: vec![0.0; c],
            outer: vec![0.0; c * c],
        }
    }
}

/// The table for the edge above position `p`, oriented `[src, dst]`. `to_parent` chooses
/// `src` = child (upward) or `src` = parent (downward).
#[inline(always)]
fn edge_table<'w, T: Real>(
    f: &Forest,
    edges: &ItemEdges<'_, T>,
    table: &'w mut Table,
    shared: &'w [Table; 2],
    p: usize,
    to_parent: bool,
) -> &'w Table {
    // Stored [first, second]; child_first means first = child.
    let transpose = f.child_first[p] != to_parent;
    if edges.shared() {
        &shared[transpose as usize]
    } else {
        edges.load(f.edge[p] as usize, transpose, 1.0, table);
        table
    }
}

/// The error of a model whose scores forbid every labelling.
pub(crate) fn infeasible() -> Error {
    Error::Infeasible(
        "the scores forbid every labelling (all have score -inf), so log Z = -inf".into(),
    )
}

simd_dispatch! {
    /// Upward pass over positions `range` (whole components; the workspace is indexed
    /// relative to `range.start`). Leaves `ws.bel` = upward beliefs and `ws.up` =
    /// normalised messages to parents; returns the range's log Z.
    pub fn upward<T: Real>(
        f: &Forest,
        node: &[T],
        edges: &ItemEdges<'_, T>,
        range: Range<usize>,
        ws: &mut Workspace,
    ) -> Result<f64> => upward_body
}

simd_dispatch! {
    /// Downward pass after [`upward`] on the same `range`: calls `node_sink(node,
    /// marginal)` for every node there and fills `edges_out` with the pair marginal of
    /// every edge there.
    pub fn downward<T: Real, S: EdgeSink>(
        f: &Forest,
        edges: &ItemEdges<'_, T>,
        range: Range<usize>,
        ws: &mut Workspace,
        node_sink: &mut dyn FnMut(usize, &[f64]),
        edges_out: &mut S,
    ) -> () => downward_body
}

#[inline(always)]
fn upward_body<T: Real>(
    f: &Forest,
    node: &[T],
    edges: &ItemEdges<'_, T>,
    range: Range<usize>,
    ws: &mut Workspace,
) -> Result<f64> {
    let c = ws.c;
    let lo = range.start;
    if edges.shared() && range.len() > 1 && ws.shared_at != edges.shared_key() {
        edges.load(0, false, 1.0, &mut ws.shared[0]);
        edges.load(0, true, 1.0, &mut ws.shared[1]);
        ws.shared_at = edges.shared_key();
    }
    for p in range.clone() {
        let (v, q) = (f.node[p] as usize, p - lo);
        for (b, &s) in ws.bel[q * c..(q + 1) * c]
            .iter_mut()
            .zip(&node[v * c..(v + 1) * c])
        {
            *b = s.to_f64();
        }
    }
    let mut log_z = 0.0;
    for p in range.rev() {
        let (par, q) = (f.parent[p], p - lo);
        if par == ROOT {
            let lz = logsumexp(&ws.bel[q * c..(q + 1) * c], &mut ws.x);
            if lz == f64::NEG_INFINITY {
                return Err(infeasible());
            }
            log_z += lz;
            continue;
        }
        let t = edge_table(f, edges, &mut ws.table, &ws.shared, p, true);
        let (head, tail) = ws.bel.split_at_mut(q * c);
        let out = &mut ws.up[q * c..(q + 1) * c];
        message(
            &tail[..c],
            t,
            out,
            &mut ws.qup[q * c..(q + 1) * c],
            &mut ws.sc,
            std::mem::size_of::<T>() == 4,
        );
        let shift = max(out);
        if shift == f64::NEG_INFINITY {
            return Err(infeasible());
        }
        log_z += shift;
        let pq = par as usize - lo;
        let pb = &mut head[pq * c..(pq + 1) * c];
        for (b, o) in pb.iter_mut().zip(out.iter_mut()) {
            *o -= shift;
            *b += *o;
        }
    }
    Ok(log_z)
}

#[inline(always)]
fn downward_body<T: Real, S: EdgeSink>(
    f: &Forest,
    edges: &ItemEdges<'_, T>,
    range: Range<usize>,
    ws: &mut Workspace,
    node_sink: &mut dyn FnMut(usize, &[f64]),
    edges_out: &mut S,
) {
    let c = ws.c;
    let lo = range.start;
    let (mut outer_used, mut last_edge) = (false, 0);
    for p in range {
        let (par, q) = (f.parent[p], p - lo);
        if par != ROOT {
            let par = par as usize - lo;
            // Belief at the parent without this edge's own message. Where that message is
            // −inf the parent label is impossible through this edge whatever else holds.
            for k in 0..c {
                let u = ws.up[q * c + k];
                ws.x[k] = if u == f64::NEG_INFINITY {
                    u
                } else {
                    ws.bel[par * c + k] - u
                };
            }
            let t = edge_table(f, edges, &mut ws.table, &ws.shared, p, false);
            let y = &ws.bel[q * c..(q + 1) * c];
            let e = f.edge[p] as usize;
            // A shared table summed into one slot: accumulate outer products and apply
            // the table once per item.
            let use_outer = S::ACCUMULATE && edges_out.shared_slot() && edges.shared();
            let transpose = f.child_first[p];
            let have_marg = joint_and_message(
                &ws.x,
                y,
                &ws.qup[q * c..(q + 1) * c],
                t,
                edges_out.slot(e),
                transpose,
                S::ACCUMULATE,
                &mut ws.msg,
                &mut ws.marg,
                &mut ws.sc,
                use_outer.then_some(&mut ws.outer[..]),
                std::mem::size_of::<T>() == 4,
            );
            outer_used |= use_outer && !transpose;
            last_edge = e;
            edges_out.commit(e);
            let shift = max(&ws.msg);
            for (b, m) in ws.bel[q * c..(q + 1) * c].iter_mut().zip(&ws.msg) {
                *b += m - shift;
            }
            if !have_marg {
                softmax(&ws.bel[q * c..(q + 1) * c], &mut ws.marg);
            }
        } else {
            softmax(&ws.bel[q * c..(q + 1) * c], &mut ws.marg);
        }
        node_sink(f.node[p] as usize, &ws.marg);
    }
    if outer_used {
        // The downward table of a shared, non-transposed edge is `shared[0]`.
        ws.shared[0].finish_outer(&mut ws.outer, edges_out.slot(last_edge));
    }
}
