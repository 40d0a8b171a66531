//! Chromatic Gibbs sweeps on 4-neighbour grids, fast path.
//!
//! The general sweep (`gibbs`) walks an adjacency list; on a grid the four neighbours of
//! `(r, col)` sit at fixed offsets, so the conditional scores of a node are five rows read
//! in place from the caller's arrays:
//!
//! `s(x) = θ_v(x) + β (θ_left[y_left, x] + θ_right[x, y_right] + θ_up[y_up, x] + θ_down[x, y_down])`
//!
//! then `p(x) ∝ exp(s(x) − max s)`. Nothing is prepared per call: per-edge tables, one
//! shared table and weight × table are read as stored (a weighted edge is its weight times
//! one small table, so a sweep touches only the weights), and any temperature `β` costs
//! the same, which lets annealing use this path too. The arithmetic is in the scores'
//! precision (f32 scores: eight exponentials per vector instruction) and, being relative
//! to the row maximum, holds for scores of any magnitude; a missing neighbour on the
//! border adds nothing, and forbidden (−inf) entries are exact zeros.
//!
//! Nodes of one colour are updated in place, in fixed chunks of rows that run in
//! parallel; a chunk writes only its own rows' nodes of the colour being drawn and reads
//! only nodes of the other colour, so no label is read and written at the same time, and
//! each chunk draws from its own random stream keyed by (seed, key, colour, chunk): the
//! result does not depend on the number of threads.
//!
//! Counting for marginals is fused into the sweep: a node's count is taken when it is
//! drawn, and an edge's pair count when its colour-1 endpoint is drawn (every grid edge
//! joins the two colours, and colour 1 is drawn last), so each chunk writes only counts
//! that no other chunk writes, while the rows it touched are still in cache.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kernels::real::Real;
use crate::kernels::rng::Rng;
use crate::model::scores::{EdgeLayout, ItemEdges};
use crate::simd_dispatch;

/// Nodes per chunk (a random stream and a unit of parallel work).
const CHUNK_NODES: usize = 2048;
/// Below this many nodes a sweep runs on the calling thread.
const PARALLEL_NODES: usize = 4096;

/// One grid item's scores at one edge temperature, ready to sweep.
pub struct GridSweep<'a, T> {
    h: usize,
    w: usize,
    c: usize,
    /// `(I, C)` node scores.
    node: &'a [T],
    edges: EdgeLayout<'a, T>,
    /// Edge temperature (`> 0`).
    beta: T,
}

/// Where a sweep adds the counts of the labelling it leaves (a kept sweep).
pub struct Counts<'a> {
    /// `(I, C)` node label counts.
    pub node: &'a mut [u32],
    /// `(E, C, C)` pair counts, grid edge order (horizontal edges row by row, then
    /// vertical). One byte each, a quarter of the memory traffic of `u32` counts: the
    /// caller moves them into wider totals at least every 255 counted sweeps.
    pub pair: &'a mut [u8],
}

impl<'a, T: Real> GridSweep<'a, T> {
    /// The sweeper of an `h x w` grid item (edges in grid order: horizontal edges row by
    /// row, then vertical ones) at edge temperature `beta > 0`.
    pub fn new(
        h: usize,
        w: usize,
        node: &'a [T],
        edges: &ItemEdges<'a, T>,
        beta: f64,
    ) -> GridSweep<'a, T> {
        assert!(beta > 0.0, "edge temperature must be positive");
        GridSweep {
            h,
            w,
            c: node.len() / (h * w),
            node,
            edges: edges.layout(),
            beta: T::from_f64(beta),
        }
    }

    /// One chromatic sweep over both colours, labels `lab` (row-major, `h * w`) updated
    /// in place; random streams keyed by `(seed, key, colour, chunk)`. With `counts`, the
    /// labelling the sweep leaves is added to them.
    pub fn sweep(
        &self,
        lab: &mut [u32],
        seed: u64,
        key: [u64; 3],
        counts: Option<Counts<'_>>,
    ) -> Result<()> {
        let (h, w, c) = (self.h, self.w, self.c);
        assert_eq!(lab.len(), h * w);
        if let Some(k) = &counts {
            assert_eq!(k.node.len(), h * w * c);
            assert_eq!(k.pair.len(), (h * (w - 1) + (h - 1) * w) * c * c);
        }
        let rows = (CHUNK_NODES / w).max(1);
        let chunks = h.div_ceil(rows);
        let lab = Shared(lab.as_mut_ptr());
        let counts = counts.map(|k| (Shared(k.node.as_mut_ptr()), Shared(k.pair.as_mut_ptr())));
        for colour in 0..2 {
            let run = |ch: usize| -> Result<()> {
                let key = [key[0], key[1], key[2], colour as u64, ch as u64];
                let mut rng = Rng::stream(seed, &key);
                let mut p = vec![T::ZERO; w.div_ceil(2) * c];
                let rows = ch * rows..((ch + 1) * rows).min(h);
                // SAFETY: see the module doc — this task writes only colour-`colour`
                // labels of its own rows (and their counts, and in colour 1 the pair
                // counts of their edges) and reads only other-colour labels.
                unsafe { rows_dispatch(self, lab, rows, colour, &mut rng, &mut p, counts) }
            };
            if h * w >= PARALLEL_NODES {
                (0..chunks).into_par_iter().try_for_each(run)?;
            } else {
                (0..chunks).try_for_each(run)?;
            }
        }
        Ok(())
    }
}

/// Adds an edge's scores to a node's conditional scores `p`, as the scores are stored.
trait Read<T>: Copy {
    /// `p[x] += θ_e[y, x]` (the node is the edge's second end).
    fn add_row(self, e: usize, y: usize, p: &mut [T]);
    /// `p[x] += θ_e[x, y]` (the node is the edge's first end).
    fn add_col(self, e: usize, y: usize, p: &mut [T]);
}

#[derive(Clone, Copy)]
struct Tables<'a, T> {
    data: &'a [T],
    stride: usize,
}

impl<T: Real> Read<T> for Tables<'_, T> {
    #[inline(always)]
    fn add_row(self, e: usize, y: usize, p: &mut [T]) {
        let c = p.len();
        let row = &self.data[e * self.stride + y * c..][..c];
        for (q, &t) in p.iter_mut().zip(row) {
            *q = *q + t;
        }
    }
    #[inline(always)]
    fn add_col(self, e: usize, y: usize, p: &mut [T]) {
        let c = p.len();
        let tab = &self.data[e * self.stride..][..c * c];
        for (x, q) in p.iter_mut().enumerate() {
            *q = *q + tab[x * c + y];
        }
    }
}

#[derive(Clone, Copy)]
struct Weighted<'a, T> {
    weight: &'a [T],
    table: &'a [T],
}

/// `w · t`, a forbidden pair staying forbidden whatever the weight (0 · −inf is NaN).
#[inline(always)]
fn weighted<T: Real>(w: T, t: T) -> T {
    if t > T::NEG_INFINITY {
        w * t
    } else {
        t
    }
}

impl<T: Real> Read<T> for Weighted<'_, T> {
    #[inline(always)]
    fn add_row(self, e: usize, y: usize, p: &mut [T]) {
        let (c, w) = (p.len(), self.weight[e]);
        let row = &self.table[y * c..][..c];
        for (q, &t) in p.iter_mut().zip(row) {
            *q = *q + weighted(w, t);
        }
    }
    #[inline(always)]
    fn add_col(self, e: usize, y: usize, p: &mut [T]) {
        let (c, w) = (p.len(), self.weight[e]);
        let tab = &self.table[..c * c];
        for (x, q) in p.iter_mut().enumerate() {
            *q = *q + weighted(w, tab[x * c + y]);
        }
    }
}

simd_dispatch! {
    /// Draws the colour-`colour` nodes of rows `rows` (see [`draw_rows`]).
    ///
    /// # Safety
    /// As [`draw_rows`].
    unsafe fn rows_dispatch<T: Real>(
        g: &GridSweep<'_, T>,
        lab: Shared<u32>,
        rows: std::ops::Range<usize>,
        colour: usize,
        rng: &mut Rng,
        p: &mut [T],
        counts: Option<(Shared<u32>, Shared<u8>)>,
    ) -> Result<()> => rows_by_layout
}

/// [`draw_rows`] for the scores' layout and class count (`K = 0`: any).
///
/// # Safety
/// As [`draw_rows`].
#[inline(always)]
unsafe fn rows_by_layout<T: Real>(
    g: &GridSweep<'_, T>,
    lab: Shared<u32>,
    rows: std::ops::Range<usize>,
    colour: usize,
    rng: &mut Rng,
    p: &mut [T],
    counts: Option<(Shared<u32>, Shared<u8>)>,
) -> Result<()> {
    macro_rules! by_k {
        ($read:expr) => {
            match g.c {
                2 => draw_rows::<T, _, 2>(g, $read, lab, rows, colour, rng, p, counts),
                3 => draw_rows::<T, _, 3>(g, $read, lab, rows, colour, rng, p, counts),
                4 => draw_rows::<T, _, 4>(g, $read, lab, rows, colour, rng, p, counts),
                5 => draw_rows::<T, _, 5>(g, $read, lab, rows, colour, rng, p, counts),
                6 => draw_rows::<T, _, 6>(g, $read, lab, rows, colour, rng, p, counts),
                8 => draw_rows::<T, _, 8>(g, $read, lab, rows, colour, rng, p, counts),
                _ => draw_rows::<T, _, 0>(g, $read, lab, rows, colour, rng, p, counts),
            }
        };
    }
    // SAFETY: every arm calls `draw_rows`, whose contract the caller upholds.
    unsafe {
        match g.edges {
            EdgeLayout::Tables { data, stride } => by_k!(Tables { data, stride }),
            EdgeLayout::Weighted { weight, table } => by_k!(Weighted { weight, table }),
        }
    }
}

/// Draws the colour-`colour` nodes of rows `rows` (and counts them, with `counts`).
///
/// # Safety
/// `lab` points to `h * w` labels below `c`, `counts` to `(I, C)` node and `(E, C, C)`
/// pair counts; no other thread writes the labels these rows read or touches the labels
/// and counts they write.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn draw_rows<T: Real, R: Read<T>, const K: usize>(
    g: &GridSweep<'_, T>,
    read: R,
    lab: Shared<u32>,
    rows: std::ops::Range<usize>,
    colour: usize,
    rng: &mut Rng,
    buf: &mut [T],
    counts: Option<(Shared<u32>, Shared<u8>)>,
) -> Result<()> {
    let (h, w) = (g.h, g.w);
    let c = if K == 0 { g.c } else { K };
    let n_h = h * (w - 1);
    let lab = lab.0;
    // SAFETY: `u` is a node of the grid (callers check the neighbour exists).
    let nb = |u: usize| unsafe { *lab.add(u) } as usize;
    for r in rows {
        // A row's nodes of one colour read only labels of the other colour, which stay
        // fixed while the row is drawn: all their conditional scores are formed first,
        // then exponentiated in one long loop that fills whole vectors, then drawn.
        let first = (r + colour) % 2;
        let m = (w - first).div_ceil(2);
        let s = &mut buf[..m * c];
        for (k, q) in s.chunks_exact_mut(c).enumerate() {
            let q = &mut q[..c];
            let col = first + 2 * k;
            let v = r * w + col;
            let (e_l, e_r) = ((r * (w - 1) + col).wrapping_sub(1), r * (w - 1) + col);
            let (e_u, e_d) = ((n_h + v).wrapping_sub(w), n_h + v);
            // The edges' rows for this node's labels x: θ_e[y_nb, x] where the node is the
            // edge's second end, θ_e[x, y_nb] where it is the first.
            q.fill(T::ZERO);
            if col > 0 {
                read.add_row(e_l, nb(v - 1), q);
            }
            if col + 1 < w {
                read.add_col(e_r, nb(v + 1), q);
            }
            if r > 0 {
                read.add_row(e_u, nb(v - w), q);
            }
            if r + 1 < h {
                read.add_col(e_d, nb(v + w), q);
            }
            let th = &g.node[v * c..(v + 1) * c];
            let mut top = T::NEG_INFINITY;
            for (q, &t) in q.iter_mut().zip(th) {
                *q = t + g.beta * *q;
                top = top.max(*q);
            }
            if top == T::NEG_INFINITY {
                return Err(Error::Infeasible(format!(
                    "Gibbs: every label of node {v} is forbidden given its neighbours' \
                     labels; the scores may forbid every labelling, or the chain started \
                     in a forbidden state"
                )));
            }
            q.iter_mut().for_each(|q| *q = *q - top);
        }
        for q in s.iter_mut() {
            *q = q.exp_nonpos();
        }
        for (k, q) in s.chunks_exact_mut(c).enumerate() {
            let q = &mut q[..c];
            let col = first + 2 * k;
            let v = r * w + col;
            // Running sums: the label is then a count that vectorises.
            let mut total = T::ZERO;
            for q in q.iter_mut() {
                total = total + *q;
                *q = total;
            }
            let target = T::from_f64(rng.uniform() * total.to_f64());
            let x = draw_cumulative(q, target);
            // SAFETY: `v < h * w`, a node of the colour this task draws.
            unsafe { *lab.add(v) = x as u32 };
            if let Some((node, pair)) = counts {
                // SAFETY: node `v`'s counts are this task's; in colour 1 so are the pair
                // counts of `v`'s edges (their other endpoints have colour 0).
                unsafe {
                    *node.0.add(v * c + x) += 1;
                    if colour == 1 {
                        let add =
                            |e: usize, a: usize, b: usize| *pair.0.add((e * c + a) * c + b) += 1;
                        let (e_l, e_r) = ((r * (w - 1) + col).wrapping_sub(1), r * (w - 1) + col);
                        let (e_u, e_d) = ((n_h + v).wrapping_sub(w), n_h + v);
                        if col > 0 {
                            add(e_l, nb(v - 1), x);
                        }
                        if col + 1 < w {
                            add(e_r, x, nb(v + 1));
                        }
                        if r > 0 {
                            add(e_u, nb(v - w), x);
                        }
                        if r + 1 < h {
                            add(e_d, x, nb(v + w));
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// The label drawn by `target` (uniform in `[0, total)`) from running sums `cum`: the
/// first index whose running sum exceeds `target`, so a zero-weight label (whose running
/// sum equals its predecessor's) is never drawn.
#[inline(always)]
fn draw_cumulative<T: Real>(cum: &[T], target: T) -> usize {
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

/// Labels or counts shared across the row tasks of one colour (see [`draw_rows`]).
pub(crate) struct Shared<T>(*mut T);
impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Shared<T> {}
// SAFETY: a raw pointer into one item's labels or counts, used only through raw reads and
// writes (no references): the tasks of one colour write the labels and counts of their
// own rows' nodes of that colour (and, in colour 1, the pair counts of those nodes'
// edges) and read only neighbours, which have the other colour (see the module doc), so
// nothing is written while another task reads or writes it.
unsafe impl<T> Send for Shared<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for Shared<T> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draw_skips_zero_weights() {
        // Weights [0, 1, 0, 2, 0] as running sums.
        let cum = [0.0f64, 1.0, 1.0, 3.0, 3.0];
        assert_eq!(draw_cumulative(&cum, 0.0), 1);
        assert_eq!(draw_cumulative(&cum, 0.999), 1);
        assert_eq!(draw_cumulative(&cum, 1.0), 3);
        assert_eq!(draw_cumulative(&cum, 2.999), 3);
        assert_eq!(draw_cumulative(&cum, 3.0), 3);
    }
}
