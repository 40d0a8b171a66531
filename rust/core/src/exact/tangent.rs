//! Second-order exact inference on forests: the directional derivative (forward mode) of
//! log Z and of the node and pair marginals, for a tangent `(u_n, u_e)` of the scores.
//!
//! Why forward mode: the marginals are the gradient of log Z, so their Jacobian is the
//! Hessian of log Z, which is symmetric. A vector–Jacobian product of the marginals (what
//! reverse-mode autograd asks for when it differentiates them) therefore equals their
//! Jacobian–vector product in the direction of the upstream gradient — one pass here.
//!
//! The pass is sum-product over dual numbers `(value, tangent)` in the log domain:
//! `LSE` of duals is `(LSE(x), Σ softmax(x)_k dx_k)`, exact for any magnitude. Values are
//! normalised as they go (the shift is added to log Z); tangents are carried unnormalised,
//! which is right because softmax weights do not see the shift. Cost: about twice one
//! first-order pass, O(I C²) per item, in f64.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::exact::item_error;
use crate::exact::sumproduct::infeasible;
use crate::kernels::logspace::{exp, max};
use crate::kernels::real::Real;
use crate::model::forest::{Forest, ROOT};
use crate::model::scores::{ItemEdges, Problem};
use crate::simd_dispatch;

/// Directional derivatives of every item, flat in the batch's order.
pub struct Tangents {
    /// log Z `(B,)`.
    pub log_z: Vec<f64>,
    /// Its derivative `(B,)`: `Σ μ · u`.
    pub d_log_z: Vec<f64>,
    /// Derivative of the node marginals `(B, I, C)` (0 at padded nodes).
    pub node: Vec<f64>,
    /// Derivative of the pair marginals `(B, E, C, C)`, `[first, second]` as stored.
    pub edge: Vec<f64>,
}

struct Ws {
    c: usize,
    /// Upward log belief of each position, then (after the downward pass) the full one.
    bel: Vec<f64>,
    dbel: Vec<f64>,
    /// Message from each position to its parent, normalised, and its tangent.
    up: Vec<f64>,
    dup: Vec<f64>,
    /// Edge table above a position, `[child, parent]` and `[parent, child]`, with tangents.
    t: Vec<f64>,
    dt: Vec<f64>,
    tp: Vec<f64>,
    dtp: Vec<f64>,
    x: Vec<f64>,
    dx: Vec<f64>,
    w: Vec<f64>,
    cav: Vec<f64>,
    dcav: Vec<f64>,
    n: Vec<f64>,
    dn: Vec<f64>,
}

impl Ws {
    fn new(n: usize, c: usize) -> Ws {
        let v = |k: usize| vec![0.0; k];
        Ws {
            c,
            bel: v(n * c),
            dbel: v(n * c),
            up: v(n * c),
            dup: v(n * c),
            t: v(c * c),
            dt: v(c * c),
            tp: v(c * c),
            dtp: v(c * c),
            x: v(c * c),
            dx: v(c * c),
            w: v(c * c),
            cav: v(c),
            dcav: v(c),
            n: v(c),
            dn: v(c),
        }
    }
}

/// `(LSE(x), Σ softmax(x) dx)`, with the weights left in `w`; `(-inf, 0)` when every
/// entry is −inf. Tangents are finite, so an impossible entry (weight exactly 0) adds 0.
/// Branch-free inner loops (the crate's vectorisable `exp`).
#[inline(always)]
fn dual_lse(x: &[f64], dx: &[f64], w: &mut [f64]) -> (f64, f64) {
    let m = max(x);
    if m == f64::NEG_INFINITY {
        w.iter_mut().for_each(|v| *v = 0.0);
        return (m, 0.0);
    }
    for (wk, &xk) in w.iter_mut().zip(x) {
        *wk = exp(xk - m);
    }
    let inv = 1.0 / lanes(w);
    w.iter_mut().for_each(|v| *v *= inv);
    let d = lanes2(w, dx);
    (m + (1.0 / inv).ln(), d)
}

/// `Σ a_k` in eight independent partial sums (so the loop vectorises; the order is fixed,
/// so results do not depend on the machine).
#[inline(always)]
fn lanes(a: &[f64]) -> f64 {
    let mut acc = [0.0; 8];
    let full = a.len() / 8 * 8;
    for ch in a[..full].chunks_exact(8) {
        for (s, &v) in acc.iter_mut().zip(ch) {
            *s += v;
        }
    }
    acc.iter().sum::<f64>() + a[full..].iter().sum::<f64>()
}

/// `Σ a_k b_k` in eight independent partial sums.
#[inline(always)]
fn lanes2(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0; 8];
    let full = a.len() / 8 * 8;
    for (ca, cb) in a[..full].chunks_exact(8).zip(b[..full].chunks_exact(8)) {
        for k in 0..8 {
            acc[k] += ca[k] * cb[k];
        }
    }
    let tail: f64 = a[full..].iter().zip(&b[full..]).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f64>() + tail
}

/// Loads the table above position `p` as `[parent, child]` (`parent_major`) or `[child,
/// parent]`, with its tangent (`ue` is the item's `(E, C, C)` tangent, `[first, second]`).
#[inline(always)]
fn load(
    f: &Forest,
    es: &ItemEdges<'_, impl Real>,
    ue: &[f64],
    p: usize,
    parent_major: bool,
    ws: &mut Ws,
) {
    let (e, c) = (f.edge[p] as usize, ws.c);
    // Stored [first, second]; child_first means first = child. The upward pass reads
    // `[parent, child]`, the downward pass `[child, parent]`.
    let transpose = f.child_first[p] == parent_major;
    let (t, dt) = if parent_major {
        (&mut ws.tp, &mut ws.dtp)
    } else {
        (&mut ws.t, &mut ws.dt)
    };
    es.raw(e, transpose, t);
    let src = &ue[e * c * c..(e + 1) * c * c];
    if transpose {
        for a in 0..c {
            for b in 0..c {
                dt[b * c + a] = src[a * c + b];
            }
        }
    } else {
        dt.copy_from_slice(src);
    }
}

simd_dispatch! {
    /// One item: returns `(log Z, d log Z)` and writes the marginals' tangents.
    fn item<T: Real>(
        f: &Forest,
        node: &[T],
        es: &ItemEdges<'_, T>,
        active: usize,
        un: &[f64],
        ue: &[f64],
        out_n: &mut [f64],
        out_e: &mut [f64],
        ws: &mut Ws,
    ) -> Result<(f64, f64)> => item_body
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn item_body<T: Real>(
    f: &Forest,
    node: &[T],
    es: &ItemEdges<'_, T>,
    active: usize,
    un: &[f64],
    ue: &[f64],
    out_n: &mut [f64],
    out_e: &mut [f64],
    ws: &mut Ws,
) -> Result<(f64, f64)> {
    let c = ws.c;
    for p in 0..active {
        let v = f.node[p] as usize;
        for k in 0..c {
            ws.bel[p * c + k] = node[v * c + k].to_f64();
            ws.dbel[p * c + k] = un[v * c + k];
        }
    }
    let (mut log_z, mut d_log_z) = (0.0, 0.0);
    for p in (0..active).rev() {
        let par = f.parent[p];
        let (bel, dbel) = (&ws.bel[p * c..(p + 1) * c], &ws.dbel[p * c..(p + 1) * c]);
        if par == ROOT {
            let (lz, d) = dual_lse(bel, dbel, &mut ws.w[..c]);
            if lz == f64::NEG_INFINITY {
                return Err(infeasible());
            }
            log_z += lz;
            d_log_z += d;
            continue;
        }
        load(f, es, ue, p, true, ws);
        let (bel, dbel) = (&ws.bel[p * c..(p + 1) * c], &ws.dbel[p * c..(p + 1) * c]);
        // m(d) = LSE_s [bel(s) + t(s, d)], as duals (rows of the [parent, child] table).
        let mut shift = f64::NEG_INFINITY;
        for d in 0..c {
            let (row, drow) = (&ws.tp[d * c..(d + 1) * c], &ws.dtp[d * c..(d + 1) * c]);
            for s in 0..c {
                ws.x[s] = bel[s] + row[s];
                ws.dx[s] = dbel[s] + drow[s];
            }
            let (m, dm) = dual_lse(&ws.x[..c], &ws.dx[..c], &mut ws.w[..c]);
            ws.up[p * c + d] = m;
            ws.dup[p * c + d] = dm;
            shift = shift.max(m);
        }
        if shift == f64::NEG_INFINITY {
            return Err(infeasible());
        }
        log_z += shift;
        let par = par as usize;
        for d in 0..c {
            ws.up[p * c + d] -= shift;
            ws.bel[par * c + d] += ws.up[p * c + d];
            ws.dbel[par * c + d] += ws.dup[p * c + d];
        }
    }
    // Downward: a parent's belief is complete before its children's (breadth-first order).
    for p in 0..active {
        let par = f.parent[p];
        if par != ROOT {
            let par = par as usize;
            load(f, es, ue, p, false, ws);
            // Cavity of the parent (its belief without this edge's message), as duals.
            for d in 0..c {
                let u = ws.up[p * c + d];
                (ws.cav[d], ws.dcav[d]) = if u == f64::NEG_INFINITY {
                    (u, 0.0)
                } else {
                    (
                        ws.bel[par * c + d] - u,
                        ws.dbel[par * c + d] - ws.dup[p * c + d],
                    )
                };
            }
            // Pair marginal over (s, d) = softmax of bel(s) + t(s, d) + cav(d).
            for s in 0..c {
                let (b, db) = (ws.bel[p * c + s], ws.dbel[p * c + s]);
                let (row, drow) = (&ws.t[s * c..(s + 1) * c], &ws.dt[s * c..(s + 1) * c]);
                let (x, dx) = (
                    &mut ws.x[s * c..(s + 1) * c],
                    &mut ws.dx[s * c..(s + 1) * c],
                );
                for d in 0..c {
                    x[d] = b + row[d] + ws.cav[d];
                    dx[d] = db + drow[d] + ws.dcav[d];
                }
            }
            let (_, mean) = dual_lse(&ws.x, &ws.dx, &mut ws.w);
            let e = f.edge[p] as usize;
            let slot = &mut out_e[e * c * c..(e + 1) * c * c];
            for k in 0..c * c {
                ws.x[k] = ws.w[k] * (ws.dx[k] - mean);
            }
            // Stored [first, second]: [child, parent] when child_first.
            if f.child_first[p] {
                slot.copy_from_slice(&ws.x);
            } else {
                for s in 0..c {
                    for d in 0..c {
                        slot[d * c + s] = ws.x[s * c + d];
                    }
                }
            }
            // Downward message into p: n(s) = LSE_d [t(s, d) + cav(d)].
            let mut shift = f64::NEG_INFINITY;
            for s in 0..c {
                let (row, drow) = (&ws.t[s * c..(s + 1) * c], &ws.dt[s * c..(s + 1) * c]);
                let (xs, dxs) = (&mut ws.x[..c], &mut ws.dx[..c]);
                for d in 0..c {
                    xs[d] = row[d] + ws.cav[d];
                    dxs[d] = drow[d] + ws.dcav[d];
                }
                (ws.n[s], ws.dn[s]) = dual_lse(&ws.x[..c], &ws.dx[..c], &mut ws.w[..c]);
                shift = shift.max(ws.n[s]);
            }
            for s in 0..c {
                ws.bel[p * c + s] += ws.n[s] - shift;
                ws.dbel[p * c + s] += ws.dn[s];
            }
        }
        let (_, mean) = dual_lse(
            &ws.bel[p * c..(p + 1) * c],
            &ws.dbel[p * c..(p + 1) * c],
            &mut ws.w[..c],
        );
        let v = f.node[p] as usize;
        for k in 0..c {
            out_n[v * c + k] = ws.w[k] * (ws.dbel[p * c + k] - mean);
        }
    }
    Ok((log_z, d_log_z))
}

/// Directional derivatives of log Z and the marginals of every item in the direction
/// `(u_n (B, I, C), u_e (B, E, C, C))` (dense, per item, f64). Forests only.
pub fn marginals_jvp<T: Real>(pb: &Problem<'_, T>, un: &[f64], ue: &[f64]) -> Result<Tangents> {
    let f = pb.graph.forest()?;
    let (n, ne, c, bsz) = (
        pb.graph.num_nodes(),
        pb.graph.num_edges(),
        pb.classes(),
        pb.batch,
    );
    if un.len() != bsz * n * c || ue.len() != bsz * ne * c * c {
        return Err(Error::Shape(format!(
            "tangents must be (B, I, C) = ({bsz}, {n}, {c}) and (B, E, C, C) = \
             ({bsz}, {ne}, {c}, {c}); got {} and {} values",
            un.len(),
            ue.len()
        )));
    }
    crate::kernels::alloc::check("marginal tangents", &[bsz, n + ne * c, c], 8)?;
    let mut out = Tangents {
        log_z: vec![0.0; bsz],
        d_log_z: vec![0.0; bsz],
        node: vec![0.0; bsz * n * c],
        edge: vec![0.0; bsz * ne * c * c],
    };
    let (nc, ecc) = ((n * c).max(1), (ne * c * c).max(1));
    out.node
        .par_chunks_mut(nc)
        .zip(out.edge.par_chunks_mut(ecc))
        .zip(out.log_z.par_iter_mut().zip(out.d_log_z.par_iter_mut()))
        .enumerate()
        .try_for_each_init(
            || Ws::new(n, c),
            |ws, (b, ((on, oe), (lz, dlz)))| {
                pb.stop.check()?;
                let (un, ue) = (
                    &un[b * n * c..(b + 1) * n * c],
                    &ue[b * ne * c * c..(b + 1) * ne * c * c],
                );
                let es = pb.edge.item(b);
                (*lz, *dlz) = item(f, pb.node.item(b), &es, pb.active(b), un, ue, on, oe, ws)
                    .map_err(|er| item_error(er, b, bsz))?;
                Ok::<(), Error>(())
            },
        )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EdgeScores, Graph, NodeScores};

    /// Exact marginals by enumeration, as `(log Z, node (I, C), edge (E, C, C))`.
    fn brute(g: &Graph, sn: &[f64], se: &[f64], c: usize) -> (f64, Vec<f64>, Vec<f64>) {
        let (n, edges) = (g.num_nodes(), g.edges());
        let total = c.pow(n as u32);
        let mut scores = vec![0.0; total];
        let lab = |mut k: usize| {
            let mut y = vec![0; n];
            for v in y.iter_mut() {
                *v = k % c;
                k /= c;
            }
            y
        };
        for (k, s) in scores.iter_mut().enumerate() {
            let y = lab(k);
            *s = (0..n).map(|i| sn[i * c + y[i]]).sum::<f64>()
                + edges
                    .iter()
                    .enumerate()
                    .map(|(e, &[a, b])| se[e * c * c + y[a as usize] * c + y[b as usize]])
                    .sum::<f64>();
        }
        let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
        let (mut node, mut edge) = (vec![0.0; n * c], vec![0.0; edges.len() * c * c]);
        for (k, s) in scores.iter().enumerate() {
            let p = (s - m).exp() / z;
            let y = lab(k);
            for i in 0..n {
                node[i * c + y[i]] += p;
            }
            for (e, &[a, b]) in edges.iter().enumerate() {
                edge[e * c * c + y[a as usize] * c + y[b as usize]] += p;
            }
        }
        (m + z.ln(), node, edge)
    }

    fn pseudo(k: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        (0..k)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 11) as f64 / (1u64 << 53) as f64) * 4.0 - 2.0
            })
            .collect()
    }

    #[test]
    fn tangents_match_central_differences_of_enumeration() {
        // A tree with both edge orientations, and a second component.
        let g = Graph::new(6, vec![[1, 0], [1, 2], [3, 1], [5, 4]]).unwrap();
        let (n, ne, c) = (6, 4, 3);
        let (sn, se) = (pseudo(n * c, 1), pseudo(ne * c * c, 2));
        let (un, ue) = (pseudo(n * c, 3), pseudo(ne * c * c, 4));
        let node = NodeScores {
            data: &sn[..],
            batch: 1,
            nodes: n,
            classes: c,
        };
        let edge = EdgeScores::tables(&se[..], 1, ne, c);
        let pb = Problem::new(&g, node, edge, 1, None).unwrap();
        let t = marginals_jvp(&pb, &un, &ue).unwrap();
        let h = 1e-5;
        let shift = |s: f64| {
            let a: Vec<f64> = sn.iter().zip(&un).map(|(x, u)| x + s * u).collect();
            let b: Vec<f64> = se.iter().zip(&ue).map(|(x, u)| x + s * u).collect();
            brute(&g, &a, &b, c)
        };
        let (lz, _, _) = shift(0.0);
        let (p, m) = (shift(h), shift(-h));
        assert!((t.log_z[0] - lz).abs() < 1e-12);
        assert!((t.d_log_z[0] - (p.0 - m.0) / (2.0 * h)).abs() < 1e-7);
        for (k, x) in t.node.iter().enumerate() {
            assert!((x - (p.1[k] - m.1[k]) / (2.0 * h)).abs() < 1e-7, "node {k}");
        }
        for (k, x) in t.edge.iter().enumerate() {
            assert!((x - (p.2[k] - m.2[k]) / (2.0 * h)).abs() < 1e-7, "edge {k}");
        }
        // The tangent of the node marginals sums to 0 over labels.
        for row in t.node.chunks(c) {
            assert!(row.iter().sum::<f64>().abs() < 1e-12);
        }
    }
}
