//! Exact inference on forests, batched: log Z and marginals, loss and gradients, MAP
//! labellings and exact samples. Each item is one call of the per-item kernels in
//! `sumproduct`, `maxproduct` and `sampling`; this module only lays items out.

use rayon::prelude::*;

use crate::batch::{chunk_size, run_chunks, Rows};
use crate::error::{Error, Result};
use crate::forest::Forest;
use crate::maxproduct::{map_item, MapWorkspace};
use crate::real::Real;
use crate::rng::Rng;
use crate::sampling::sample_item;
use crate::scores::Problem;
use crate::sumproduct::{downward, upward, EdgeSink, Workspace};

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
    fn slot(&mut self, e: usize) -> &mut [f64] {
        let k = if self.shared { 0 } else { e };
        &mut self.buf[k * self.cc..(k + 1) * self.cc]
    }
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
}

/// Loss `log Z − s(y)` and its gradients with respect to the scores as given.
#[derive(Debug, Clone)]
pub struct LossGrad<T> {
    /// `(B,)`
    pub loss: Vec<T>,
    /// Shaped like the node scores `(B_n, I, C)`: summed over items when `B_n = 1`.
    pub grad_node: Vec<T>,
    /// Shaped like the edge scores `(B_e, E_e, C, C)`: summed over broadcast axes.
    pub grad_edge: Vec<T>,
}

/// Positions of an item's active edges: every non-root position below `active`.
#[inline]
fn active_edges(f: &Forest, active: usize) -> impl Iterator<Item = usize> + '_ {
    (0..active).filter(|&p| f.parent[p] != crate::forest::ROOT)
}

fn item_error(e: Error, b: usize, batch: usize) -> Error {
    if batch == 1 {
        return e;
    }
    match e {
        Error::Infeasible(m) => Error::Infeasible(format!("batch item {b}: {m}")),
        other => other,
    }
}

pub fn marginals<T: Real>(pb: &Problem<'_, T>, want_edges: bool) -> Result<Marginals<T>> {
    let f = pb.graph.forest()?;
    let (n, c, e, bsz) = (
        pb.graph.num_nodes(),
        pb.classes(),
        pb.graph.num_edges(),
        pb.batch,
    );
    let mut log_z = vec![T::from_f64(0.0); bsz];
    let mut node = vec![T::from_f64(0.0); bsz * n * c];
    let mut edge = want_edges.then(|| vec![T::from_f64(0.0); bsz * e * c * c]);
    {
        let lz = Rows::new(&mut log_z, 1);
        let nd = Rows::new(&mut node, n * c);
        let ed = edge.as_mut().map(|v| Rows::new(v, e * c * c));
        run_chunks(
            bsz,
            1,
            || (Workspace::new(n, c), vec![0.0; c * c]),
            || (),
            |(ws, scratch), _, items| {
                for b in items {
                    let (ns, es, act) = (pb.node.item(b), pb.edge.item(b), pb.active(b));
                    let z = upward(f, ns, &es, act, ws).map_err(|er| item_error(er, b, bsz))?;
                    // SAFETY: item b is handled by this task only.
                    let (zrow, nrow) = unsafe { (lz.get(b), nd.get(b)) };
                    zrow[0] = T::from_f64(z);
                    let mut sink = ToRows {
                        scratch,
                        rows: ed.as_ref().map(|r| unsafe { r.get(b) }),
                    };
                    downward(
                        f,
                        &es,
                        act,
                        ws,
                        |v, m| {
                            for (o, &x) in nrow[v * c..(v + 1) * c].iter_mut().zip(m) {
                                *o = T::from_f64(x);
                            }
                        },
                        &mut sink,
                    );
                }
                Ok(())
            },
        )?;
    }
    Ok(Marginals { log_z, node, edge })
}

/// Checks gold labels `(B, I)` on the active positions of each item.
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
        // Only a chain can be padded, and its active nodes are a prefix.
        let act = pb.active(b);
        row[..act]
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

/// Score `s(y)` of labelling `y` (by node id) on the active part of one item.
fn gold_score<T: Real>(f: &Forest, pb: &Problem<'_, T>, b: usize, y: &[i64]) -> f64 {
    let (c, act) = (pb.classes(), pb.active(b));
    let (ns, es) = (pb.node.item(b), pb.edge.item(b));
    let edges = pb.graph.edges();
    let mut s = 0.0;
    for p in 0..act {
        let v = f.node[p] as usize;
        s += ns[v * c + y[v] as usize].to_f64();
    }
    for p in active_edges(f, act) {
        let k = f.edge[p] as usize;
        let [i, j] = edges[k];
        s += es.value(k, y[i as usize] as usize, y[j as usize] as usize);
    }
    s
}

/// Loss and gradients for gold labels `y` `(B, I)`. The gradients are those of
/// `Σ_b w_b loss_b` with `w = weights` (all ones when `None`): a backward pass with an
/// arbitrary upstream gradient needs the weights inside the sum over a broadcast batch.
pub fn loss_and_grad<T: Real>(
    pb: &Problem<'_, T>,
    y: &[i64],
    weights: Option<&[f64]>,
) -> Result<LossGrad<T>> {
    let f = pb.graph.forest()?;
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
    let (n, c, bsz) = (pb.graph.num_nodes(), pb.classes(), pb.batch);
    let cc = c * c;
    let edges = pb.graph.edges();
    let ee = pb.edge.edges;
    let node_shared = pb.node.batch == 1 && bsz > 1;
    let edge_shared = pb.edge.batch == 1 && bsz > 1;
    let nacc = if node_shared { n * c } else { 0 };
    let eacc = if edge_shared { ee * cc } else { 0 };
    let chunk = chunk_size(bsz, nacc + eacc);

    let mut loss = vec![T::from_f64(0.0); bsz];
    let mut gn = vec![T::from_f64(0.0); pb.node.batch * n * c];
    let mut ge = vec![T::from_f64(0.0); pb.edge.batch * ee * cc];
    let accs = {
        let lr = Rows::new(&mut loss, 1);
        let nr = Rows::new(&mut gn, n * c);
        let er = Rows::new(&mut ge, ee * cc);
        run_chunks(
            bsz,
            chunk,
            || (Workspace::new(n, c), vec![0.0; n * c], vec![0.0; ee * cc]),
            || (vec![0.0f64; nacc], vec![0.0f64; eacc]),
            |(ws, gnode, gedge), (an, ae), items| {
                for b in items {
                    let (ns, es, act) = (pb.node.item(b), pb.edge.item(b), pb.active(b));
                    let yb = &y[b * n..(b + 1) * n];
                    let z = upward(f, ns, &es, act, ws).map_err(|er| item_error(er, b, bsz))?;
                    // Per-item gradients in f64, then added to the right place.
                    gnode.fill(0.0);
                    gedge.fill(0.0);
                    let mut sink = Accumulate {
                        buf: gedge,
                        shared: ee == 1,
                        cc,
                    };
                    downward(
                        f,
                        &es,
                        act,
                        ws,
                        |v, m| {
                            let g = &mut gnode[v * c..(v + 1) * c];
                            g.copy_from_slice(m);
                            g[yb[v] as usize] -= 1.0;
                        },
                        &mut sink,
                    );
                    for p in active_edges(f, act) {
                        let k = f.edge[p] as usize;
                        let slot = if ee == 1 { 0 } else { k };
                        let [i, j] = edges[k];
                        gedge[slot * cc + yb[i as usize] as usize * c + yb[j as usize] as usize] -=
                            1.0;
                    }
                    let s = gold_score(f, pb, b, yb);
                    // SAFETY: item b is handled by this task only.
                    let lrow = unsafe { lr.get(b) };
                    lrow[0] = T::from_f64(z - s);
                    if let Some(w) = weights {
                        let wb = w[b];
                        gnode.iter_mut().for_each(|g| *g *= wb);
                        gedge.iter_mut().for_each(|g| *g *= wb);
                    }
                    if node_shared {
                        an.iter_mut().zip(gnode.iter()).for_each(|(a, &g)| *a += g);
                    } else {
                        let row = unsafe { nr.get(b) };
                        row.iter_mut()
                            .zip(gnode.iter())
                            .for_each(|(o, &g)| *o = T::from_f64(g));
                    }
                    if edge_shared {
                        ae.iter_mut().zip(gedge.iter()).for_each(|(a, &g)| *a += g);
                    } else {
                        let row = unsafe { er.get(b) };
                        row.iter_mut()
                            .zip(gedge.iter())
                            .for_each(|(o, &g)| *o = T::from_f64(g));
                    }
                }
                Ok(())
            },
        )?
    };
    if node_shared || edge_shared {
        let mut tn = vec![0.0f64; nacc];
        let mut te = vec![0.0f64; eacc];
        for (an, ae) in &accs {
            tn.iter_mut().zip(an).for_each(|(t, &a)| *t += a);
            te.iter_mut().zip(ae).for_each(|(t, &a)| *t += a);
        }
        if node_shared {
            gn.iter_mut()
                .zip(&tn)
                .for_each(|(o, &t)| *o = T::from_f64(t));
        }
        if edge_shared {
            ge.iter_mut()
                .zip(&te)
                .for_each(|(o, &t)| *o = T::from_f64(t));
        }
    }
    Ok(LossGrad {
        loss,
        grad_node: gn,
        grad_edge: ge,
    })
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
