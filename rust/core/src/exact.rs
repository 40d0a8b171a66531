//! Exact inference on forests, batched: log Z and marginals, loss and gradients (through
//! the shared drivers in `objective`), MAP labellings and exact samples. Each item is one
//! call of the per-item kernels in `sumproduct`, `maxproduct` and `sampling`.

use rayon::prelude::*;

use crate::batch::{run_chunks, Rows};
use crate::error::{Error, Result};
use crate::forest::Forest;
use crate::maxproduct::{map_item, MapWorkspace};
use crate::objective::{self, EdgeSink, Inference, ItemInfo, LossGrad, Marginals};
use crate::real::Real;
use crate::rng::Rng;
use crate::sampling::sample_item;
use crate::scores::Problem;
use crate::sumproduct::{downward, upward, Workspace};

/// Exact sum-product on the graph's rooted forest.
pub struct Exact<'g> {
    forest: &'g Forest,
}

impl<'g> Exact<'g> {
    /// Fails with `NotForest` when the graph has a cycle.
    pub fn new(g: &'g crate::graph::Graph) -> Result<Self> {
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
        let z = upward(self.forest, pb.node.item(b), &es, act, ws)?;
        downward(self.forest, &es, act, ws, node_sink, edges);
        Ok(ItemInfo::exact(z))
    }
}

fn item_error(e: Error, b: usize, batch: usize) -> Error {
    match e {
        Error::Infeasible(m) if batch > 1 => Error::Infeasible(format!("batch item {b}: {m}")),
        other => other,
    }
}

/// Exact log Z and marginals of every item.
pub fn marginals<T: Real>(pb: &Problem<'_, T>, want_edges: bool) -> Result<Marginals<T>> {
    objective::marginals(pb, &Exact::new(pb.graph)?, want_edges)
}

/// Exact loss and gradients for gold labels `y` `(B, I)`; see [`objective::loss_and_grad`].
pub fn loss_and_grad<T: Real>(
    pb: &Problem<'_, T>,
    y: &[i64],
    weights: Option<&[f64]>,
) -> Result<LossGrad<T>> {
    // Linear-chain CRFs with one transition table: the batch-major kernel, when it applies
    // (input errors are left to the general driver, which reports them).
    if weights.is_none_or(|w| w.len() == pb.batch) && objective::check_labels(pb, y).is_ok() {
        if let Some(r) = crate::chain::loss_and_grad(pb, y, weights) {
            return r;
        }
    }
    objective::loss_and_grad(pb, &Exact::new(pb.graph)?, y, weights)
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
    let mut bels: Vec<Vec<f64>> = (0..bsz).map(|_| Vec::new()).collect();
    bels.par_iter_mut().enumerate().try_for_each_init(
        || Workspace::new(n, c),
        |ws, (b, out)| {
            upward(f, pb.node.item(b), &pb.edge.item(b), pb.active(b), ws)
                .map_err(|er| item_error(er, b, bsz))?;
            *out = ws.bel[..pb.active(b) * c].to_vec();
            Ok::<(), Error>(())
        },
    )?;
    let mut out = vec![-1i64; num_samples * bsz * n];
    out.par_chunks_mut(n).enumerate().for_each_init(
        || (vec![0.0; c], vec![0u32; n]),
        |(w, lab), (k, row)| {
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
        },
    );
    Ok(out)
}
