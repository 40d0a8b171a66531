//! Borrowed views of the score tensors, shared by every inference method.
//!
//! Both views are flat, C-contiguous slices with a leading batch axis that is either the
//! full batch `B` or 1 (one set of scores shared by every item). The edge view also allows
//! an edge axis of 1: one table shared by every edge (a linear-chain CRF's transition
//! matrix), which is never materialised per edge.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::interrupt::{Stop, NEVER};
use crate::kernels::message::{oriented, scaled, Table};
use crate::kernels::real::Real;
use crate::model::graph::Graph;
use crate::simd_dispatch;

/// Node scores, shape `(batch, nodes, classes)` with `batch` 1 or B.
#[derive(Clone, Copy, Debug)]
pub struct NodeScores<'a, T> {
    pub data: &'a [T],
    pub batch: usize,
    pub nodes: usize,
    pub classes: usize,
}

/// Edge scores: tables `(batch, edges, classes, classes)` with `batch` 1 or B and `edges`
/// 1 or E; or, with `weight` set, edge `e` of item `b` has the table
/// `weight[b, e] * data[b]` (a per-edge weight times one `(C, C)` table, the
/// contrast-sensitive Potts form of segmentation CRFs), never materialised per edge.
#[derive(Clone, Copy, Debug)]
pub struct EdgeScores<'a, T> {
    pub data: &'a [T],
    pub batch: usize,
    pub edges: usize,
    pub classes: usize,
    /// Per-edge weights `(weight_batch, E)` (then `edges` is 1).
    pub weight: Option<&'a [T]>,
    pub weight_batch: usize,
}

impl<'a, T: Real> EdgeScores<'a, T> {
    /// Full or shared tables.
    pub fn tables(data: &'a [T], batch: usize, edges: usize, classes: usize) -> Self {
        EdgeScores {
            data,
            batch,
            edges,
            classes,
            weight: None,
            weight_batch: 1,
        }
    }

    /// `weight (weight_batch, E)` times one table per item `(table_batch, C, C)`.
    pub fn weighted(
        weight: &'a [T],
        weight_batch: usize,
        table: &'a [T],
        table_batch: usize,
        classes: usize,
    ) -> Self {
        EdgeScores {
            data: table,
            batch: table_batch,
            edges: 1,
            classes,
            weight: Some(weight),
            weight_batch,
        }
    }

    /// The edge scores of batch item `b`.
    #[inline]
    pub fn item(&self, b: usize) -> ItemEdges<'a, T> {
        let cc = self.classes * self.classes;
        let n = self.edges * cc;
        let bt = if self.batch == 1 { 0 } else { b };
        let weight = self.weight.map(|w| {
            let ne = w.len() / self.weight_batch.max(1);
            let bw = if self.weight_batch == 1 { 0 } else { b };
            &w[bw * ne..(bw + 1) * ne]
        });
        ItemEdges {
            data: &self.data[bt * n..(bt + 1) * n],
            shared: self.edges == 1,
            c: self.classes,
            cc,
            weight,
        }
    }

    /// The stored tables of item `b` (for weighted scores, the one `(C, C)` table).
    #[inline]
    pub fn stored_item(&self, b: usize) -> &'a [T] {
        let n = self.edges * self.classes * self.classes;
        let bt = if self.batch == 1 { 0 } else { b };
        &self.data[bt * n..(bt + 1) * n]
    }

    /// True when one table serves every edge (no per-edge weights).
    pub fn shared_over_edges(&self) -> bool {
        self.edges == 1 && self.weight.is_none()
    }
}

/// How one item's edge scores are stored.
#[derive(Clone, Copy, Debug)]
pub enum EdgeLayout<'a, T> {
    /// Edge `e`'s `(C, C)` table at `data[e * stride..]` (`stride` 0: one shared table).
    Tables { data: &'a [T], stride: usize },
    /// `weight[e] * table`, a −inf entry of `table` forbidden whatever the weight.
    Weighted { weight: &'a [T], table: &'a [T] },
}

/// The edge scores of one batch item.
#[derive(Clone, Copy, Debug)]
pub struct ItemEdges<'a, T> {
    data: &'a [T],
    shared: bool,
    c: usize,
    cc: usize,
    weight: Option<&'a [T]>,
}

impl<'a, T: Real> ItemEdges<'a, T> {
    /// The stored `(C, C)` table of edge `e` (before any weight).
    #[inline(always)]
    fn stored(&self, e: usize) -> &'a [T] {
        let e = if self.shared { 0 } else { e };
        &self.data[e * self.cc..(e + 1) * self.cc]
    }

    /// True when one unweighted table serves every edge.
    #[inline(always)]
    pub fn shared(&self) -> bool {
        self.shared && self.weight.is_none()
    }

    /// Identifies the shared table (its address), to reuse preparations across items.
    #[inline(always)]
    pub fn shared_key(&self) -> usize {
        self.data.as_ptr() as usize
    }

    /// How the scores are stored, for kernels that read them in place.
    #[inline(always)]
    pub fn layout(&self) -> EdgeLayout<'a, T> {
        match self.weight {
            Some(weight) => EdgeLayout::Weighted {
                weight,
                table: self.data,
            },
            None => EdgeLayout::Tables {
                data: self.data,
                stride: if self.shared { 0 } else { self.cc },
            },
        }
    }

    /// True for weighted edge scores `w_e * table` (one table, a weight per edge).
    #[inline(always)]
    pub fn weighted(&self) -> bool {
        self.weight.is_some()
    }

    /// The stored table of edge `e` before any weight, as f64 `[first, second]`.
    #[inline(always)]
    pub fn unweighted(&self, e: usize, out: &mut [f64]) {
        for (o, x) in out.iter_mut().zip(self.stored(e)) {
            *o = x.to_f64();
        }
    }

    /// The weight of edge `e` (1 without weights).
    #[inline(always)]
    pub fn weight(&self, e: usize) -> f64 {
        self.weight.map_or(1.0, |w| w[e].to_f64())
    }

    /// Score of labels `(a, b)` on edge `e` (a at its first node).
    #[inline(always)]
    pub fn value(&self, e: usize, a: usize, b: usize) -> f64 {
        let t = self.stored(e)[a * self.c + b].to_f64();
        match self.weight {
            Some(w) => scaled(w[e].to_f64(), t),
            None => t,
        }
    }

    /// Loads `scale` times edge `e`'s table into `out`, oriented `[first, second]` or,
    /// with `transpose`, `[second, first]`.
    #[inline(always)]
    pub fn load(&self, e: usize, transpose: bool, scale: f64, out: &mut Table) {
        let t = self.stored(e);
        let w = self.weight(e) * scale;
        if w == 1.0 {
            out.load(t, transpose);
        } else {
            out.load_scaled(t, w, transpose);
        }
    }

    /// Writes edge `e`'s table as f64 into `out` (`C x C`), oriented as in [`Self::load`].
    #[inline(always)]
    pub fn raw(&self, e: usize, transpose: bool, out: &mut [f64]) {
        oriented(self.stored(e), self.weight(e), transpose, self.c, out);
    }
}

impl<'a, T: Real> NodeScores<'a, T> {
    /// The `(nodes, classes)` scores of batch item `b`.
    #[inline]
    pub fn item(&self, b: usize) -> &'a [T] {
        let n = self.nodes * self.classes;
        let b = if self.batch == 1 { 0 } else { b };
        &self.data[b * n..(b + 1) * n]
    }
}

/// A validated problem: a graph, its scores and the batch they describe.
#[derive(Clone, Copy)]
pub struct Problem<'a, T> {
    pub graph: &'a Graph,
    pub node: NodeScores<'a, T>,
    pub edge: EdgeScores<'a, T>,
    /// Number of batch items (the broadcast batch size).
    pub batch: usize,
    /// Per item, how many leading nodes of a chain are real (the rest is padding).
    pub lengths: Option<&'a [usize]>,
    /// Raised to interrupt the call (checked between items, iterations and sweeps).
    pub stop: &'a Stop,
    /// `s_e` has not been checked for NaN and +inf yet (see [`Problem::deferring_edge_check`]):
    /// [`Problem::check_edges`] does it, or a kernel that reads every table anyway.
    edges_unchecked: bool,
}

impl<'a, T: Real> Problem<'a, T> {
    /// Checks that the views fit the graph and each other, that no score is NaN or +inf,
    /// and that lengths (if any) belong to a chain and fit it.
    pub fn new(
        graph: &'a Graph,
        node: NodeScores<'a, T>,
        edge: EdgeScores<'a, T>,
        batch: usize,
        lengths: Option<&'a [usize]>,
    ) -> Result<Self> {
        Self::build(graph, node, edge, batch, lengths, true)
    }

    /// [`Problem::new`] with every check but the scan of `s_e` for NaN and +inf, which is
    /// left to [`Problem::check_edges`]: the entry points that take such a problem
    /// ([`crate::Method::infer`], [`crate::Method::loss_and_grad`]) call it before any
    /// kernel reads the tables, except the per-edge chain kernel, which finds a bad entry
    /// in the pass that reads each table anyway (the separate scan is a full read of `s_e`,
    /// a tenth of a large per-edge chain call) and then reports it through `check_edges`.
    pub fn deferring_edge_check(
        graph: &'a Graph,
        node: NodeScores<'a, T>,
        edge: EdgeScores<'a, T>,
        batch: usize,
        lengths: Option<&'a [usize]>,
    ) -> Result<Self> {
        Self::build(graph, node, edge, batch, lengths, false)
    }

    /// The scan [`Problem::deferring_edge_check`] left out, if it did: the same error
    /// [`Problem::new`] gives (the first bad flat index of `s_e`).
    pub fn check_edges(&self) -> Result<()> {
        match self.edges_unchecked {
            true => check_scores("s_e", self.edge.data, true),
            false => Ok(()),
        }
    }

    fn build(
        graph: &'a Graph,
        node: NodeScores<'a, T>,
        edge: EdgeScores<'a, T>,
        batch: usize,
        lengths: Option<&'a [usize]>,
        check_edges: bool,
    ) -> Result<Self> {
        let (i, c) = (graph.num_nodes(), node.classes);
        if c == 0 {
            return Err(Error::Shape(
                "number of classes C is 0; need at least one".into(),
            ));
        }
        if node.nodes != i {
            return Err(Error::Shape(format!(
                "s_n has {} nodes but the graph has {i}",
                node.nodes
            )));
        }
        if edge.classes != c {
            return Err(Error::Shape(format!(
                "s_e has {} classes but s_n has {c}",
                edge.classes
            )));
        }
        let e = graph.num_edges();
        if edge.edges != e && edge.edges != 1 {
            return Err(Error::Shape(format!(
                "s_e has {} edge tables; the graph has {e} edges (give {e}, or 1 shared table)",
                edge.edges
            )));
        }
        for (name, nb) in [("s_n", node.batch), ("s_e", edge.batch)] {
            if nb != 1 && nb != batch {
                return Err(Error::Shape(format!(
                    "{name} has batch size {nb}, which does not broadcast to {batch}"
                )));
            }
        }
        if node.data.len() != node.batch * i * c {
            return Err(Error::Shape(
                "s_n buffer size does not match its shape".into(),
            ));
        }
        if edge.data.len() != edge.batch * edge.edges * c * c {
            return Err(Error::Shape(
                "s_e buffer size does not match its shape".into(),
            ));
        }
        check_scores("s_n", node.data, true)?;
        if check_edges {
            check_scores("s_e", edge.data, true)?;
        }
        if let Some(w) = edge.weight {
            if edge.weight_batch != 1 && edge.weight_batch != batch {
                return Err(Error::Shape(format!(
                    "edge weight has batch size {}, which does not broadcast to {batch}",
                    edge.weight_batch
                )));
            }
            if w.len() != edge.weight_batch * e {
                return Err(Error::Shape(
                    "edge weight buffer size does not match its shape".into(),
                ));
            }
            // A weight scales a whole table: NaN or ±inf has no meaning there.
            check_scores("edge weight", w, false)?;
        }
        if let Some(len) = lengths {
            if !graph.is_chain() {
                return Err(Error::Value(
                    "lengths are only supported on chain graphs (Graph.chain(n), edges (i, i+1))"
                        .into(),
                ));
            }
            if len.len() != batch {
                return Err(Error::Shape(format!(
                    "lengths has {} entries but the batch has {batch} items",
                    len.len()
                )));
            }
            if let Some((b, &l)) = len.iter().enumerate().find(|(_, &l)| l > i) {
                return Err(Error::Value(format!(
                    "lengths[{b}] = {l} exceeds the number of nodes {i}"
                )));
            }
        }
        Ok(Problem {
            graph,
            node,
            edge,
            batch,
            lengths,
            stop: &NEVER,
            edges_unchecked: !check_edges,
        })
    }

    /// The same problem, interrupted by `stop`.
    pub fn with_stop(self, stop: &'a Stop) -> Self {
        Problem { stop, ..self }
    }

    pub fn classes(&self) -> usize {
        self.node.classes
    }

    /// Number of leading forest positions that are real for item `b`.
    #[inline]
    pub fn active(&self, b: usize) -> usize {
        self.lengths.map_or(self.graph.num_nodes(), |l| l[b])
    }
}

/// NaN, +inf, or −inf where it is not allowed; no branches.
#[inline(always)]
#[allow(clippy::eq_op)]
fn is_bad<T: Real>(x: T, neg_inf: bool) -> bool {
    (x != x) | (x == T::INFINITY) | (!neg_inf & (x == T::NEG_INFINITY))
}

simd_dispatch! {
    /// Whether any entry of `chunk` [`is_bad`].
    fn any_bad<T: Real>(chunk: &[T], neg_inf: bool) -> bool => any_bad_body
}

/// `x − x` is 0 for every finite `x` and NaN for NaN and ±inf, so eight running sums of it
/// stay 0 unless an entry is bad: a subtraction and an addition per entry (and, where −inf
/// is allowed, a compare and a blend that take it to 0 first). Testing each entry and
/// gathering the test results into bytes had cost the scan three times as much.
#[inline(always)]
#[allow(clippy::eq_op)]
fn any_bad_body<T: Real>(chunk: &[T], neg_inf: bool) -> bool {
    let zero = T::from_f64(0.0);
    let mut acc = [zero; 8];
    let mut blocks = chunk.chunks_exact(8);
    // (One loop per case: the choice inside the loop would be made per entry.)
    if neg_inf {
        for b in &mut blocks {
            for j in 0..8 {
                let x = if b[j] == T::NEG_INFINITY { zero } else { b[j] };
                acc[j] = acc[j] + (x - x);
            }
        }
    } else {
        for b in &mut blocks {
            for j in 0..8 {
                acc[j] = acc[j] + (b[j] - b[j]);
            }
        }
    }
    // (NaN is unequal to 0.)
    acc.iter().any(|&a| a != zero) || blocks.remainder().iter().any(|&x| is_bad(x, neg_inf))
}

/// NaN or +inf scores have no meaning (−inf forbids a label; +inf would force it with an
/// infinite Z); weights must be finite (`neg_inf` false). The error names the first bad
/// flat index.
fn check_scores<T: Real>(name: &str, data: &[T], neg_inf: bool) -> Result<()> {
    const CHUNK: usize = 1 << 16;
    let bad = data
        .par_chunks(CHUNK)
        .enumerate()
        .find_map_first(|(k, chunk)| {
            // A branch-free sweep (vectorised) first; the position only where it found one.
            if !any_bad(chunk, neg_inf) {
                return None;
            }
            chunk
                .iter()
                .position(|&x| is_bad(x, neg_inf))
                .map(|p| k * CHUNK + p)
        });
    match bad {
        Some(idx) => {
            let v = data[idx].to_f64();
            let what = if v.is_nan() {
                "NaN"
            } else if v > 0.0 {
                "+inf"
            } else {
                "-inf"
            };
            let allowed = if neg_inf { "finite or -inf" } else { "finite" };
            Err(Error::Value(format!(
                "{name} contains {what} at flat index {idx}; it must be {allowed}"
            )))
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scan finds NaN and +inf (and −inf where it is not allowed) at every position,
    /// inside the eight-entry blocks and in the tail, in both precisions, and passes every
    /// finite value, however large or small.
    #[test]
    fn any_bad_finds_each_bad_entry_wherever_it_lies() {
        fn case<T: Real>() {
            let good = [0.0, -0.0, 1.0, -3.5, 1e-40, -1e-44, 3e38, -3e38, 1e-30, 7.0];
            for n in [1, 7, 8, 9, 16, 19] {
                let base: Vec<T> = (0..n).map(|i| T::from_f64(good[i % good.len()])).collect();
                assert!(!any_bad(&base, true) && !any_bad(&base, false), "n {n}");
                for at in 0..n {
                    for (bad, allowed) in [
                        (f64::NAN, false),
                        (f64::INFINITY, false),
                        (f64::NEG_INFINITY, true),
                    ] {
                        let mut v = base.clone();
                        v[at] = T::from_f64(bad);
                        assert_eq!(any_bad(&v, true), !allowed, "n {n}, at {at}, {bad}");
                        assert!(any_bad(&v, false), "n {n}, at {at}, {bad}");
                    }
                }
            }
        }
        case::<f32>();
        case::<f64>();
    }
}
