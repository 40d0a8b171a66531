//! Exact inference on forests, batched: log Z and marginals, loss and gradients (through
//! the shared drivers in `inference`), MAP labellings and exact samples. Each item is one
//! call of the per-item kernels in `sumproduct`, `maxproduct` and `sampling`.

pub mod chain;
pub mod chain_edges;
pub(crate) mod chain_lanes;
pub mod junction;
pub mod kbest;
pub mod maxproduct;
pub mod sampling;
pub mod sumproduct;
pub mod tangent;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::exact::junction::Junction;
use crate::exact::maxproduct::{map_item, MapWorkspace};
use crate::exact::sampling::sample_item;
use crate::exact::sumproduct::{downward, upward, Workspace};
use crate::inference::{
    self, Decoded, EdgeSink, Family, Inference, Inferred, ItemInfo, LossGrad, Marginals,
};
use crate::kernels::batch::{run_chunks, Rows};
use crate::kernels::real::Real;
use crate::kernels::rng::Rng;
use crate::model::forest::Forest;
use crate::model::scores::Problem;

/// Exact sum-product on the graph's rooted forest.
pub struct Exact<'g> {
    forest: &'g Forest,
}

impl<'g> Exact<'g> {
    /// Fails with `NotForest` when the graph has a cycle.
    pub fn new(g: &'g crate::model::graph::Graph) -> Result<Self> {
        Ok(Exact {
            forest: g.forest()?,
        })
    }
}

impl<T: Real> Inference<T> for Exact<'_> {
    type Ws = Workspace;

    fn workspace(&self, pb: &Problem<'_, T>) -> Workspace {
        Workspace::new(pb.graph.num_nodes(), pb.classes())
    }

    fn item<S: EdgeSink>(
        &self,
        pb: &Problem<'_, T>,
        ws: &mut Workspace,
        b: usize,
        node_sink: &mut dyn FnMut(usize, &[f64]),
        edges: &mut S,
    ) -> Result<ItemInfo> {
        let (es, act) = (pb.edge.item(b), pb.active(b));
        let groups = component_groups(self.forest, act, pb.batch);
        if groups.len() < 2 {
            let z = upward(self.forest, pb.node.item(b), &es, 0..act, ws)?;
            downward(self.forest, &es, 0..act, ws, node_sink, edges);
            return Ok(ItemInfo::exact(z));
        }
        // Independent components in parallel, each group into its own buffers, then
        // handed to the sinks in position order.
        let c = pb.classes();
        let shared = edges.shared_slot();
        let parts: Vec<(f64, Vec<f64>, LocalEdges)> = groups
            .par_iter()
            .map(|r| {
                let mut ws = Workspace::new(r.len(), c);
                let z = upward(self.forest, pb.node.item(b), &es, r.clone(), &mut ws)?;
                let mut nodes = Vec::with_capacity(r.len() * c);
                let mut local = LocalEdges::new(c * c, shared);
                let mut sink = |_v: usize, m: &[f64]| nodes.extend_from_slice(m);
                downward(self.forest, &es, r.clone(), &mut ws, &mut sink, &mut local);
                Ok((z, nodes, local))
            })
            .collect::<Result<_>>()?;
        let mut z = 0.0;
        for (r, (lz, nodes, local)) in groups.iter().zip(parts) {
            z += lz;
            for (p, m) in r.clone().zip(nodes.chunks_exact(c)) {
                node_sink(self.forest.node[p] as usize, m);
            }
            local.replay(edges);
        }
        Ok(ItemInfo::exact(z))
    }
}

/// Fewest nodes in a group of components worth a parallel task.
const GROUP_NODES: usize = 4096;
/// Largest batch whose items are split into component groups (larger batches are
/// parallel over items already). A function of the batch, never of the thread count, so
/// the summation order — and every bit of the result — does not depend on threads.
const GROUP_BATCH: usize = 4;

/// Position ranges of whole components, each of at least `GROUP_NODES` nodes (the last
/// takes the remainder), for items of a small batch; one range otherwise.
fn component_groups(f: &Forest, active: usize, batch: usize) -> Vec<std::ops::Range<usize>> {
    if batch > GROUP_BATCH || f.num_components() < 2 || active < 2 * GROUP_NODES {
        return std::iter::once(0..active).collect();
    }
    let mut groups = Vec::new();
    let mut start = 0;
    for &end in &f.comp[1..] {
        if end - start >= GROUP_NODES {
            groups.push(start..end);
            start = end;
        }
    }
    match groups.last_mut() {
        Some(last) if start < active => last.end = active,
        None => return std::iter::once(0..active).collect(),
        _ => {}
    }
    groups
}

/// Pair marginals of one component group, kept until they are handed to the real sink
/// in order: one `C x C` slot per edge, or a single slot when the real sink sums every
/// edge into one (a shared table's gradient).
struct LocalEdges {
    cc: usize,
    shared: bool,
    ids: Vec<u32>,
    buf: Vec<f64>,
}

impl LocalEdges {
    fn new(cc: usize, shared: bool) -> LocalEdges {
        LocalEdges {
            cc,
            shared,
            ids: Vec::new(),
            buf: if shared { vec![0.0; cc] } else { Vec::new() },
        }
    }

    /// Adds (or writes) every kept slot into `out` and commits it.
    fn replay<S: EdgeSink>(&self, out: &mut S) {
        if self.shared {
            if let Some(&e) = self.ids.first() {
                let slot = out.slot(e as usize);
                slot.iter_mut().zip(&self.buf).for_each(|(o, x)| *o += x);
                out.commit(e as usize);
            }
            return;
        }
        for (&e, v) in self.ids.iter().zip(self.buf.chunks_exact(self.cc)) {
            let slot = out.slot(e as usize);
            if S::ACCUMULATE {
                slot.iter_mut().zip(v).for_each(|(o, x)| *o += x);
            } else {
                slot.copy_from_slice(v);
            }
            out.commit(e as usize);
        }
    }
}

impl EdgeSink for LocalEdges {
    // Slots start at zero, so adding into them equals writing them.
    const ACCUMULATE: bool = true;

    fn slot(&mut self, e: usize) -> &mut [f64] {
        if self.shared {
            if self.ids.is_empty() {
                self.ids.push(e as u32);
            }
            return &mut self.buf;
        }
        if self.ids.last() != Some(&(e as u32)) {
            self.ids.push(e as u32);
            self.buf.resize(self.buf.len() + self.cc, 0.0);
        }
        let k = self.buf.len() - self.cc;
        &mut self.buf[k..]
    }

    fn shared_slot(&self) -> bool {
        self.shared
    }
}

pub(crate) fn item_error(e: Error, b: usize, batch: usize) -> Error {
    match e {
        Error::Infeasible(m) if batch > 1 => Error::Infeasible(format!("batch item {b}: {m}")),
        other => other,
    }
}

/// Exact log Z and marginals of every item.
pub fn marginals<T: Real>(pb: &Problem<'_, T>, want_edges: bool) -> Result<Marginals<T>> {
    // Linear chains with a table per edge: the scaled-domain kernel, when it applies (it
    // checks the tables it reads; see `Problem::deferring_edge_check`).
    if let Some(r) = crate::exact::chain_edges::marginals(pb, want_edges) {
        return r;
    }
    pb.check_edges()?;
    inference::marginals(pb, &Exact::new(pb.graph)?, want_edges)
}

/// Exact loss and gradients for gold labels `y` `(B, I)`; see [`inference::loss_and_grad`].
pub fn loss_and_grad<T: Real>(
    pb: &Problem<'_, T>,
    y: &[i64],
    weights: Option<&[f64]>,
) -> Result<LossGrad<T>> {
    // Linear-chain CRFs with one transition table: the batch-major kernel, when it applies
    // (input errors are left to the general driver, which reports them).
    if weights.is_none_or(|w| w.len() == pb.batch) && inference::check_labels(pb, y).is_ok() {
        // (The shared-table kernel's one C x C table is checked first; the per-edge kernel
        // checks the tables it reads.)
        if pb.edge.edges == 1 && pb.edge.batch == 1 {
            pb.check_edges()?;
        }
        if let Some(r) = crate::exact::chain::loss_and_grad(pb, y, weights) {
            return r;
        }
        if let Some(r) = crate::exact::chain_edges::loss_and_grad(pb, y, weights) {
            return r;
        }
    }
    pb.check_edges()?;
    inference::loss_and_grad(pb, &Exact::new(pb.graph)?, y, weights)
}

/// MAP labelling `(B, I)`; padded nodes get −1.
pub fn decode<T: Real>(pb: &Problem<'_, T>) -> Result<Vec<i64>> {
    let f = pb.graph.forest()?;
    let (n, c, bsz) = (pb.graph.num_nodes(), pb.classes(), pb.batch);
    let mut out = vec![-1i64; bsz * n];
    {
        let rows = Rows::new(&mut out, n);
        run_chunks(
            bsz,
            1,
            || MapWorkspace::new(n, c),
            || (),
            |ws, _, items| {
                for b in items {
                    pb.stop.check()?;
                    // SAFETY: item b is handled by this task only.
                    let row = unsafe { rows.get(b) };
                    map_item(f, pb.node.item(b), &pb.edge.item(b), pb.active(b), ws, row)
                        .map_err(|er| item_error(er, b, bsz))?;
                }
                Ok(())
            },
        )?;
    }
    Ok(out)
}

/// `num_samples` exact samples per item, laid out `(num_samples, B, I)`; padded nodes −1.
/// Sample `s` of item `b` uses the random stream keyed by `(seed, b, s)`.
pub fn sample<T: Real>(pb: &Problem<'_, T>, num_samples: usize, seed: u64) -> Result<Vec<i64>> {
    let f = pb.graph.forest()?;
    let (n, c, bsz) = (pb.graph.num_nodes(), pb.classes(), pb.batch);
    // Filtering once per item, kept for all its samples.
    crate::kernels::alloc::check("filtering beliefs", &[bsz, n, c], 8)?;
    let mut bels: Vec<Vec<f64>> = (0..bsz).map(|_| Vec::new()).collect();
    bels.par_iter_mut().enumerate().try_for_each_init(
        || Workspace::new(n, c),
        |ws, (b, out)| {
            pb.stop.check()?;
            upward(f, pb.node.item(b), &pb.edge.item(b), 0..pb.active(b), ws)
                .map_err(|er| item_error(er, b, bsz))?;
            *out = ws.bel[..pb.active(b) * c].to_vec();
            Ok::<(), Error>(())
        },
    )?;
    let mut out = vec![-1i64; num_samples * bsz * n];
    out.par_chunks_mut(n).enumerate().try_for_each_init(
        || (vec![0.0; c], vec![0u32; n]),
        |(w, lab), (k, row)| {
            pb.stop.check()?;
            let (s, b) = (k / bsz, k % bsz);
            let mut rng = Rng::stream(seed, &[b as u64, s as u64]);
            sample_item(
                f,
                &pb.edge.item(b),
                pb.active(b),
                &bels[b],
                c,
                &mut rng,
                w,
                lab,
                row,
            );
            Ok::<(), Error>(())
        },
    )?;
    Ok(out)
}

/// Exact inference as a [`Family`]: the forest kernels on forests, the junction tree on
/// other graphs whose largest clique table fits `max_states` entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExactMethod {
    /// Largest clique table (entries per item) a junction tree may use.
    pub max_states: u128,
}

impl ExactMethod {
    /// The junction tree for `pb`'s graph and classes (None on forests).
    fn junction<T: Real>(&self, pb: &Problem<'_, T>) -> Result<Option<Junction>> {
        if pb.graph.is_forest() {
            return Ok(None);
        }
        Junction::new(pb.graph, pb.classes(), self.max_states).map(Some)
    }
}

impl Family for ExactMethod {
    fn name(&self) -> &'static str {
        "exact"
    }

    fn infer<T: Real>(&self, pb: &Problem<'_, T>, want_edges: bool) -> Result<Inferred<T>> {
        let marginals = match self.junction(pb)? {
            None => marginals(pb, want_edges)?,
            Some(j) => inference::marginals(pb, &j, want_edges)?,
        };
        Ok(Inferred {
            marginals,
            error_bars: None,
        })
    }

    fn loss_and_grad<T: Real>(
        &self,
        pb: &Problem<'_, T>,
        y: &[i64],
        weights: Option<&[f64]>,
    ) -> Result<LossGrad<T>> {
        match self.junction(pb)? {
            None => loss_and_grad(pb, y, weights),
            Some(j) => inference::loss_and_grad(pb, &j, y, weights),
        }
    }

    fn decode<T: Real>(&self, pb: &Problem<'_, T>) -> Result<Decoded> {
        let y = match self.junction(pb)? {
            None => decode(pb)?,
            Some(j) => j.decode(pb)?,
        };
        Ok((y, vec![ItemInfo::exact(0.0); pb.batch]))
    }

    fn sample<T: Real>(
        &self,
        pb: &Problem<'_, T>,
        num_samples: usize,
        seed: u64,
    ) -> Result<Vec<i64>> {
        match self.junction(pb)? {
            None => sample(pb, num_samples, seed),
            Some(j) => j.sample(pb, num_samples, seed),
        }
    }
}
