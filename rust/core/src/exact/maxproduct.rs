//! Exact MAP labelling on a rooted forest for one batch item (max-product / Viterbi).
//! Works on scores directly: only additions and comparisons, so it is exact for any
//! magnitude. Ties go to the smallest label.

use crate::error::{Error, Result};
use crate::kernels::real::Real;
use crate::model::forest::{Forest, ROOT};
use crate::model::scores::ItemEdges;
use crate::simd_dispatch;

pub struct MapWorkspace {
    c: usize,
    bel: Vec<f64>,
    /// For each position and parent label, the best label of this position.
    back: Vec<u32>,
    best: Vec<f64>,
    raw: Vec<f64>,
    /// Which table `raw` holds (address, orientation), to reuse a shared table.
    loaded: Option<(usize, bool)>,
}

impl MapWorkspace {
    pub fn new(n: usize, c: usize) -> MapWorkspace {
        MapWorkspace {
            c,
            bel: vec![0.0; n * c],
            back: vec![0; n * c],
            best: vec![0.0; c],
            raw: vec![0.0; c * c],
            loaded: None,
        }
    }
}

#[inline(always)]
fn argmax(xs: &[f64]) -> (usize, f64) {
    let mut best = (0, f64::NEG_INFINITY);
    for (k, &x) in xs.iter().enumerate() {
        if x > best.1 {
            best = (k, x);
        }
    }
    best
}

simd_dispatch! {
    /// Writes the MAP labels of positions `0..active` into `labels` (indexed by node id)
    /// and returns the MAP score.
    pub fn map_item<T: Real>(
        f: &Forest,
        node: &[T],
        edges: &ItemEdges<'_, T>,
        active: usize,
        ws: &mut MapWorkspace,
        labels: &mut [i64],
    ) -> Result<f64> => map_item_body
}

#[inline(always)]
fn map_item_body<T: Real>(
    f: &Forest,
    node: &[T],
    edges: &ItemEdges<'_, T>,
    active: usize,
    ws: &mut MapWorkspace,
    labels: &mut [i64],
) -> Result<f64> {
    let c = ws.c;
    for p in 0..active {
        let v = f.node[p] as usize;
        for (b, &s) in ws.bel[p * c..(p + 1) * c]
            .iter_mut()
            .zip(&node[v * c..(v + 1) * c])
        {
            *b = s.to_f64();
        }
    }
    let mut total = 0.0;
    for p in (0..active).rev() {
        let par = f.parent[p];
        if par == ROOT {
            let (_, m) = argmax(&ws.bel[p * c..(p + 1) * c]);
            if m == f64::NEG_INFINITY {
                return Err(Error::Infeasible(
                    "the scores forbid every labelling (all have score -inf); there is no MAP"
                        .into(),
                ));
            }
            total += m;
            continue;
        }
        // raw[s, d]: s = label here, d = parent label. A table shared by every edge is
        // loaded once per orientation.
        let key = (edges.shared_key(), f.child_first[p]);
        if !edges.shared() || ws.loaded != Some(key) {
            edges.raw(f.edge[p] as usize, !f.child_first[p], &mut ws.raw);
            ws.loaded = Some(key);
        }
        ws.best.fill(f64::NEG_INFINITY);
        let back = &mut ws.back[p * c..(p + 1) * c];
        back.fill(0);
        for s in 0..c {
            let b = ws.bel[p * c + s];
            let row = &ws.raw[s * c..(s + 1) * c];
            // Branch-free select so the loop vectorises; strict > keeps the smallest label.
            for ((best, bk), &r) in ws.best.iter_mut().zip(back.iter_mut()).zip(row) {
                let v = b + r;
                let gt = v > *best;
                *best = if gt { v } else { *best };
                *bk = if gt { s as u32 } else { *bk };
            }
        }
        // Normalise so beliefs stay O(score range) on long chains.
        let (_, shift) = argmax(&ws.best);
        if shift == f64::NEG_INFINITY {
            return Err(Error::Infeasible(
                "the scores forbid every labelling (all have score -inf); there is no MAP".into(),
            ));
        }
        total += shift;
        let par = par as usize;
        for d in 0..c {
            ws.bel[par * c + d] += ws.best[d] - shift;
        }
    }
    // Top-down: roots take their argmax, children their back-pointer.
    let mut lab = vec![0u32; active];
    for p in 0..active {
        let par = f.parent[p];
        lab[p] = if par == ROOT {
            argmax(&ws.bel[p * c..(p + 1) * c]).0 as u32
        } else {
            ws.back[p * c + lab[par as usize] as usize]
        };
        labels[f.node[p] as usize] = lab[p] as i64;
    }
    Ok(total)
}
