//! Chromatic Gibbs sweeps on 4-neighbour grids, fast path.
//!
//! The general sweep (`gibbs`) walks an adjacency list and exponentiates `C` conditional
//! scores per node update; at small `C` that costs far more than the arithmetic. On a
//! grid the four neighbours of `(r, col)` sit at fixed offsets, and the conditional
//! distribution of a node is, in the probability domain, a product of five rows:
//!
//! `p(x) ∝ φ_v(x) · L[y_left](x) · R[y_right](x) · U[y_up](x) · D[y_down](x)`
//!
//! with `φ_v = exp(θ_v − max θ_v)` and the edge factors `exp(β θ_e − max)` prepared once
//! per item (and temperature), so an update is `4C` multiplications and one uniform draw.
//! A missing neighbour on the border reads an all-ones table.
//!
//! Like the BP fast path this is exact only while nothing underflows, so it is taken only
//! when every node row and every table spans at most `SPAN` (finite entries): a product
//! of five factors then stays above `e^-600`, inside f64's normal range. Forbidden
//! (−inf) entries are exact zeros.
//!
//! Nodes of one colour are updated in place, in fixed chunks of rows that run in
//! parallel; a chunk writes only its own rows' nodes of the colour being drawn and reads
//! only nodes of the other colour, so no label is read and written at the same time, and
//! each chunk draws from its own random stream keyed by (seed, key, colour, chunk): the
//! result does not depend on the number of threads.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kernels::logspace::{exp_rel, finite_span};
use crate::kernels::real::Real;
use crate::kernels::rng::Rng;
use crate::model::scores::ItemEdges;

/// Largest span of finite scores per node row and per (tempered) table.
const SPAN: f64 = 120.0;
/// Largest prepared per-edge factor cache (bytes) before the general sweep is used.
const MAX_CACHE: usize = 1 << 29;
/// Nodes per chunk (a random stream and a unit of parallel work).
const CHUNK_NODES: usize = 2048;
/// Below this many nodes a sweep runs on the calling thread.
const PARALLEL_NODES: usize = 4096;

/// Prepared probability-domain factors of one item at one edge temperature.
pub struct GridFactors {
    h: usize,
    w: usize,
    c: usize,
    /// `φ[v * c + x] = exp(θ_v(x) − max θ_v)`.
    phi: Vec<f64>,
    /// Tables read by an edge's second node: `fwd[(id * c + y_first) * c + x]`.
    fwd: Vec<f64>,
    /// Tables read by an edge's first node: `bwd[(id * c + y_second) * c + x]`.
    bwd: Vec<f64>,
    /// One table for every edge (ids are then 0, or `ones` on the border).
    shared: bool,
    /// Id of the all-ones table that stands in for a missing border neighbour.
    ones: usize,
}

impl GridFactors {
    /// The factors of an `h x w` grid item at edge temperature `beta`, or `None` when the
    /// fast path does not apply (scores too spread, or per-edge factors too large).
    pub fn new<T: Real>(
        h: usize,
        w: usize,
        node: &[T],
        edges: &ItemEdges<'_, T>,
        beta: f64,
    ) -> Option<GridFactors> {
        let n = h * w;
        let c = node.len() / n;
        let cc = c * c;
        let shared = edges.shared();
        let n_edges = h * (w - 1) + (h - 1) * w;
        let tables = if shared { 1 } else { n_edges };
        if 2 * (tables + 1) * cc * 8 > MAX_CACHE {
            return None;
        }
        let mut phi: Vec<f64> = node.iter().map(|x| x.to_f64()).collect();
        for row in phi.chunks_exact_mut(c) {
            if finite_span(row) > SPAN {
                return None;
            }
            exp_rel(row);
        }
        let (mut fwd, mut bwd) = (vec![1.0; (tables + 1) * cc], vec![1.0; (tables + 1) * cc]);
        // Per-edge factors in parallel (each edge's two tables are its own slots; the
        // values do not depend on the split).
        let ok = fwd[..tables * cc]
            .par_chunks_mut(cc)
            .zip(bwd[..tables * cc].par_chunks_mut(cc))
            .enumerate()
            .all(|(e, (f, b))| {
                [(false, f), (true, b)].into_iter().all(|(transpose, out)| {
                    edges.raw(e, transpose, out);
                    // β · (−inf) stays −inf; β = 0 leaves only the forbidden pairs.
                    for x in out.iter_mut() {
                        if *x > f64::NEG_INFINITY {
                            *x *= beta;
                        }
                    }
                    if finite_span(out) > SPAN {
                        return false;
                    }
                    exp_rel(out);
                    true
                })
            });
        if !ok {
            return None;
        }
        Some(GridFactors {
            h,
            w,
            c,
            phi,
            fwd,
            bwd,
            shared,
            ones: tables,
        })
    }

    /// One chromatic sweep over both colours, labels `lab` (row-major, `h * w`) updated
    /// in place; random streams keyed by `(seed, key, colour, chunk)`.
    pub fn sweep(&self, lab: &mut [u32], seed: u64, key: [u64; 3]) -> Result<()> {
        assert_eq!(lab.len(), self.h * self.w);
        match self.c {
            2 => self.sweep_c::<2>(lab, seed, key),
            3 => self.sweep_c::<3>(lab, seed, key),
            4 => self.sweep_c::<4>(lab, seed, key),
            5 => self.sweep_c::<5>(lab, seed, key),
            6 => self.sweep_c::<6>(lab, seed, key),
            8 => self.sweep_c::<8>(lab, seed, key),
            _ => self.sweep_c::<0>(lab, seed, key),
        }
    }

    /// The sweep with the class count `K` known at compile time (`K = 0`: any `c`).
    #[inline(always)]
    fn sweep_c<const K: usize>(&self, lab: &mut [u32], seed: u64, key: [u64; 3]) -> Result<()> {
        let (h, w) = (self.h, self.w);
        let rows = (CHUNK_NODES / w).max(1);
        let chunks = h.div_ceil(rows);
        let ptr = LabPtr(lab.as_mut_ptr());
        for colour in 0..2u64 {
            let run = |ch: usize| -> Result<()> {
                let mut rng = Rng::stream(seed, &[key[0], key[1], key[2], colour, ch as u64]);
                let mut p = vec![0.0; self.c];
                for r in ch * rows..((ch + 1) * rows).min(h) {
                    // SAFETY: see the module doc — this task writes only colour-`colour`
                    // labels of its own rows and reads only other-colour labels.
                    unsafe { self.row::<K>(ptr, r, colour as usize, &mut rng, &mut p)? };
                }
                Ok(())
            };
            if h * w >= PARALLEL_NODES {
                (0..chunks).into_par_iter().try_for_each(run)?;
            } else {
                (0..chunks).try_for_each(run)?;
            }
        }
        Ok(())
    }

    /// Draws the colour-`colour` nodes of row `r`.
    ///
    /// # Safety
    /// `lab` points to `h * w` labels below `c`; no other thread writes the labels this
    /// row reads or touches the labels it writes.
    #[inline(always)]
    unsafe fn row<const K: usize>(
        &self,
        lab: LabPtr,
        r: usize,
        colour: usize,
        rng: &mut Rng,
        p: &mut [f64],
    ) -> Result<()> {
        let (h, w) = (self.h, self.w);
        let c = if K == 0 { self.c } else { K };
        let cc = c * c;
        let n_h = h * (w - 1);
        let lab = lab.0;
        let first = (r + colour) % 2;
        for col in (first..w).step_by(2) {
            let v = r * w + col;
            // Table id and neighbour label per side; the all-ones table on the border.
            let side = |exists: bool, id: usize, nb: usize| -> usize {
                if exists {
                    let id = if self.shared { 0 } else { id };
                    // SAFETY: `nb` is a neighbour inside the grid (`exists`).
                    (id * c + unsafe { *lab.add(nb) } as usize) * c
                } else {
                    self.ones * cc
                }
            };
            let left = side(
                col > 0,
                (r * (w - 1) + col).wrapping_sub(1),
                v.wrapping_sub(1),
            );
            let right = side(col + 1 < w, r * (w - 1) + col, v + 1);
            let up = side(r > 0, (n_h + v).wrapping_sub(w), v.wrapping_sub(w));
            let down = side(r + 1 < h, n_h + v, v + w);
            let (l, rt) = (&self.fwd[left..left + c], &self.bwd[right..right + c]);
            let (u, d) = (&self.fwd[up..up + c], &self.bwd[down..down + c]);
            let phi = &self.phi[v * c..(v + 1) * c];
            // Running sums: one dependent chain of additions per update (kept in a
            // register), and the label is then a count that vectorises.
            let mut total = 0.0;
            for x in 0..c {
                total += phi[x] * l[x] * rt[x] * u[x] * d[x];
                p[x] = total;
            }
            if total <= 0.0 {
                return Err(Error::Infeasible(format!(
                    "Gibbs: every label of node {v} is forbidden given its neighbours' \
                     labels; the scores may forbid every labelling, or the chain started \
                     in a forbidden state"
                )));
            }
            let x = draw_cumulative(&p[..c], rng.uniform() * total);
            // SAFETY: `v < h * w`, a node of the colour this task draws.
            unsafe { *lab.add(v) = x as u32 };
        }
        Ok(())
    }
}

/// The label drawn by `target` (uniform in `[0, total)`) from running sums `cum`: the
/// first index whose running sum exceeds `target`, so a zero-weight label (whose running
/// sum equals its predecessor's) is never drawn.
#[inline(always)]
fn draw_cumulative(cum: &[f64], target: f64) -> usize {
    let k = cum.iter().map(|&s| (s <= target) as usize).sum::<usize>();
    if k < cum.len() {
        k
    } else {
        // `target` rounded up to the total: the last label with weight.
        (1..cum.len())
            .rev()
            .find(|&x| cum[x] > cum[x - 1])
            .unwrap_or(0)
    }
}

/// The labels, shared across the row tasks of one colour (see [`GridFactors::row`]).
#[derive(Clone, Copy)]
struct LabPtr(*mut u32);
// SAFETY: a raw pointer into the labels of one item, used only through raw reads and
// writes (no references): the tasks of one colour write the labels of their own rows'
// nodes of that colour and read only neighbours, which have the other colour (see the
// module doc), so no label is written while another task reads or writes it.
unsafe impl Send for LabPtr {}
// SAFETY: as above.
unsafe impl Sync for LabPtr {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draw_skips_zero_weights() {
        // Weights [0, 1, 0, 2, 0] as running sums.
        let cum = [0.0, 1.0, 1.0, 3.0, 3.0];
        assert_eq!(draw_cumulative(&cum, 0.0), 1);
        assert_eq!(draw_cumulative(&cum, 0.999), 1);
        assert_eq!(draw_cumulative(&cum, 1.0), 3);
        assert_eq!(draw_cumulative(&cum, 2.999), 3);
        assert_eq!(draw_cumulative(&cum, 3.0), 3);
    }
}
