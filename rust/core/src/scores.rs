//! Borrowed views of the score tensors, shared by every inference method.
//!
//! Both views are flat, C-contiguous slices with a leading batch axis that is either the
//! full batch `B` or 1 (one set of scores shared by every item). The edge view also allows
//! an edge axis of 1: one table shared by every edge (a linear-chain CRF's transition
//! matrix), which is never materialised per edge.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::real::Real;

/// Node scores, shape `(batch, nodes, classes)` with `batch` 1 or B.
#[derive(Clone, Copy, Debug)]
pub struct NodeScores<'a, T> {
    pub data: &'a [T],
    pub batch: usize,
    pub nodes: usize,
    pub classes: usize,
}

/// Edge scores, shape `(batch, edges, classes, classes)` with `batch` 1 or B and `edges`
/// 1 or E.
#[derive(Clone, Copy, Debug)]
pub struct EdgeScores<'a, T> {
    pub data: &'a [T],
    pub batch: usize,
    pub edges: usize,
    pub classes: usize,
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

impl<'a, T: Real> EdgeScores<'a, T> {
    /// The `(edges, classes, classes)` block of batch item `b` (`edges` may be 1).
    #[inline]
    pub fn item(&self, b: usize) -> ItemEdges<'a, T> {
        let cc = self.classes * self.classes;
        let n = self.edges * cc;
        let b = if self.batch == 1 { 0 } else { b };
        ItemEdges {
            data: &self.data[b * n..(b + 1) * n],
            shared: self.edges == 1,
            cc,
        }
    }

    /// True when one table serves every edge.
    pub fn shared_over_edges(&self) -> bool {
        self.edges == 1
    }
}

/// The edge tables of one batch item.
#[derive(Clone, Copy, Debug)]
pub struct ItemEdges<'a, T> {
    data: &'a [T],
    shared: bool,
    cc: usize,
}

impl<'a, T: Real> ItemEdges<'a, T> {
    /// The `(classes, classes)` table of edge `e`, row = label of the edge's first node.
    #[inline]
    pub fn table(&self, e: usize) -> &'a [T] {
        let e = if self.shared { 0 } else { e };
        &self.data[e * self.cc..(e + 1) * self.cc]
    }

    pub fn shared(&self) -> bool {
        self.shared
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
        check_scores("s_n", node.data)?;
        check_scores("s_e", edge.data)?;
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
        })
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

/// NaN or +inf scores have no meaning (−inf forbids a label; +inf would force it with an
/// infinite Z). The error names the first bad flat index.
fn check_scores<T: Real>(name: &str, data: &[T]) -> Result<()> {
    const CHUNK: usize = 1 << 16;
    let bad = data
        .par_chunks(CHUNK)
        .enumerate()
        .find_map_first(|(k, chunk)| {
            chunk
                .iter()
                .position(|x| {
                    let x = x.to_f64();
                    x.is_nan() || x == f64::INFINITY
                })
                .map(|p| k * CHUNK + p)
        });
    match bad {
        Some(idx) => {
            let v = data[idx].to_f64();
            let what = if v.is_nan() { "NaN" } else { "+inf" };
            Err(Error::Value(format!(
                "{name} contains {what} at flat index {idx}; scores must be finite or -inf"
            )))
        }
        None => Ok(()),
    }
}
