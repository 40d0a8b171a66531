//! The k best labellings of a forest, best first, exactly (Lawler–Murty partitioning).
//!
//! Why this scheme: after the best labelling y of a subset of labellings is found, the rest
//! of that subset splits into disjoint parts "positions before t as in y, position t not
//! y_t" (t from the subset's first free position on), and the best of each part is one
//! max-product pass with those labels clamped. A heap of parts yields the labellings in
//! score order, each exactly once: at most `k · I` max-product passes of O(I C²) per item.
//! Items run in parallel.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kernels::real::Real;
use crate::model::forest::{Forest, ROOT};
use crate::model::scores::Problem;

/// A part of the labelling space: positions `< fixed` take `lab`'s labels, position
/// `fixed` avoids `forbidden`; `lab` and `score` are its best labelling.
struct Part {
    score: f64,
    seq: usize,
    fixed: usize,
    forbidden: Vec<u32>,
    lab: Vec<u32>,
}

impl PartialEq for Part {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Part {}
impl PartialOrd for Part {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Part {
    // Max-heap: higher score first; among equal scores the part found first.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

/// One item's forest with f64 scores by position: node scores and, for every non-root
/// position, its edge table `[label here, parent label]`.
struct Item<'f> {
    f: &'f Forest,
    c: usize,
    active: usize,
    node: Vec<f64>,
    tab: Vec<f64>,
    bel: Vec<f64>,
    back: Vec<u32>,
    best: Vec<f64>,
}

impl Item<'_> {
    /// Best labelling (by position) under `node` scores; None when all are forbidden.
    fn viterbi(&mut self, node: &[f64]) -> Option<(f64, Vec<u32>)> {
        let (c, f) = (self.c, self.f);
        self.bel[..self.active * c].copy_from_slice(&node[..self.active * c]);
        let mut total = 0.0;
        for p in (0..self.active).rev() {
            let row = &self.bel[p * c..(p + 1) * c];
            if f.parent[p] == ROOT {
                let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                if m == f64::NEG_INFINITY {
                    return None;
                }
                total += m;
                continue;
            }
            self.best.fill(f64::NEG_INFINITY);
            let back = &mut self.back[p * c..(p + 1) * c];
            back.fill(0);
            let tab = &self.tab[p * c * c..(p + 1) * c * c];
            for s in 0..c {
                let b = row[s];
                for d in 0..c {
                    let v = b + tab[s * c + d];
                    if v > self.best[d] {
                        self.best[d] = v;
                        back[d] = s as u32;
                    }
                }
            }
            let par = f.parent[p] as usize;
            for d in 0..c {
                self.bel[par * c + d] += self.best[d];
            }
        }
        let mut lab = vec![0u32; self.active];
        for p in 0..self.active {
            lab[p] = if f.parent[p] == ROOT {
                let row = &self.bel[p * c..(p + 1) * c];
                let mut k = 0;
                for (j, &x) in row.iter().enumerate() {
                    if x > row[k] {
                        k = j;
                    }
                }
                k as u32
            } else {
                self.back[p * c + lab[f.parent[p] as usize] as usize]
            };
        }
        Some((total, lab))
    }

    /// Exact score of a labelling (by position), summed in position order.
    fn score(&self, lab: &[u32]) -> f64 {
        let c = self.c;
        let mut s = 0.0;
        for p in 0..self.active {
            s += self.node[p * c + lab[p] as usize];
            if self.f.parent[p] != ROOT {
                let d = lab[self.f.parent[p] as usize] as usize;
                s += self.tab[p * c * c + lab[p] as usize * c + d];
            }
        }
        s
    }

    /// The best labelling of a part, or None when it is empty.
    fn solve(&mut self, fixed: usize, forbidden: &[u32], prefix: &[u32]) -> Option<Part> {
        let c = self.c;
        let mut node = self.node.clone();
        for (p, &l) in prefix[..fixed].iter().enumerate() {
            for (k, x) in node[p * c..(p + 1) * c].iter_mut().enumerate() {
                if k != l as usize {
                    *x = f64::NEG_INFINITY;
                }
            }
        }
        for &l in forbidden {
            node[fixed * c + l as usize] = f64::NEG_INFINITY;
        }
        let (_, lab) = self.viterbi(&node)?;
        let score = self.score(&lab);
        (score > f64::NEG_INFINITY).then(|| Part {
            score,
            seq: 0,
            fixed,
            forbidden: forbidden.to_vec(),
            lab,
        })
    }
}

/// The `k` best labellings of every item, best first: labels `(k, B, I)` (−1 at padded
/// nodes, and everywhere in rows beyond the number of labellings that exist) and scores
/// `(k, B)` (−inf in those rows). Forests only.
pub fn topk<T: Real>(pb: &Problem<'_, T>, k: usize) -> Result<(Vec<i64>, Vec<f64>)> {
    let f = pb.graph.forest()?;
    let (n, c, bsz) = (pb.graph.num_nodes(), pb.classes(), pb.batch);
    crate::kernels::alloc::check("top-k labellings", &[k, bsz, n], 8)?;
    crate::kernels::alloc::check("top-k tables", &[rayon::current_num_threads(), n, c, c], 8)?;
    let per_item: Vec<(Vec<Vec<u32>>, Vec<f64>)> = (0..bsz)
        .into_par_iter()
        .map(|b| {
            pb.stop.check()?;
            let active = pb.active(b);
            let (sn, es) = (pb.node.item(b), pb.edge.item(b));
            let mut it = Item {
                f,
                c,
                active,
                node: vec![0.0; active * c],
                tab: vec![0.0; active * c * c],
                bel: vec![0.0; active * c],
                back: vec![0; active * c],
                best: vec![0.0; c],
            };
            for p in 0..active {
                let v = f.node[p] as usize;
                for s in 0..c {
                    it.node[p * c + s] = sn[v * c + s].to_f64();
                }
                if f.parent[p] != ROOT {
                    let e = f.edge[p] as usize;
                    es.raw(
                        e,
                        !f.child_first[p],
                        &mut it.tab[p * c * c..(p + 1) * c * c],
                    );
                }
            }
            let mut heap = BinaryHeap::new();
            let mut seq = 0;
            if let Some(part) = it.solve(0, &[], &[]) {
                heap.push(part);
            }
            let (mut labs, mut scores) = (Vec::new(), Vec::new());
            while labs.len() < k {
                let Some(part) = heap.pop() else { break };
                pb.stop.check()?;
                if labs.len() + 1 < k {
                    for t in part.fixed..active {
                        let forbidden = if t == part.fixed {
                            let mut v = part.forbidden.clone();
                            v.push(part.lab[t]);
                            v
                        } else {
                            vec![part.lab[t]]
                        };
                        if let Some(mut child) = it.solve(t, &forbidden, &part.lab) {
                            seq += 1;
                            child.seq = seq;
                            heap.push(child);
                        }
                    }
                }
                scores.push(part.score);
                labs.push(part.lab);
            }
            Ok::<_, Error>((labs, scores))
        })
        .collect::<Result<_>>()?;
    let mut labels = vec![-1i64; k * bsz * n];
    let mut scores = vec![f64::NEG_INFINITY; k * bsz];
    for (b, (labs, sc)) in per_item.into_iter().enumerate() {
        for (r, (lab, s)) in labs.iter().zip(sc).enumerate() {
            scores[r * bsz + b] = s;
            let row = &mut labels[(r * bsz + b) * n..(r * bsz + b + 1) * n];
            for (p, &l) in lab.iter().enumerate() {
                row[f.node[p] as usize] = l as i64;
            }
        }
    }
    Ok((labels, scores))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EdgeScores, Graph, NodeScores};

    #[test]
    fn labellings_come_in_score_order_each_once() {
        let g = Graph::new(5, vec![[1, 0], [1, 2], [3, 1]]).unwrap();
        let (n, c) = (5, 3);
        let mut s = 7u64;
        let mut rnd = |k: usize| -> Vec<f64> {
            (0..k)
                .map(|_| {
                    s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (s >> 11) as f64 / (1u64 << 53) as f64
                })
                .collect()
        };
        let (sn, se) = (rnd(n * c), rnd(3 * c * c));
        let node = NodeScores {
            data: &sn[..],
            batch: 1,
            nodes: n,
            classes: c,
        };
        let pb = Problem::new(&g, node, EdgeScores::tables(&se[..], 1, 3, c), 1, None).unwrap();
        let total = c.pow(n as u32);
        let (labels, scores) = topk(&pb, total + 2).unwrap();
        let mut brute: Vec<f64> = (0..total)
            .map(|mut k| {
                let y: Vec<usize> = (0..n)
                    .map(|_| {
                        let l = k % c;
                        k /= c;
                        l
                    })
                    .collect();
                let mut v: f64 = (0..n).map(|i| sn[i * c + y[i]]).sum();
                for (e, &[a, b]) in g.edges().iter().enumerate() {
                    v += se[e * c * c + y[a as usize] * c + y[b as usize]];
                }
                v
            })
            .collect();
        brute.sort_by(|a, b| b.total_cmp(a));
        for r in 0..total {
            assert!((scores[r] - brute[r]).abs() < 1e-12, "rank {r}");
        }
        assert_eq!(scores[total], f64::NEG_INFINITY);
        assert!(labels[total * n..].iter().all(|&l| l == -1));
        let mut seen: Vec<&[i64]> = labels[..total * n].chunks(n).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), total);
    }
}
