//! The junction tree of a graph: cliques from a greedy elimination order, joined into a
//! tree (a forest for several components) with the running-intersection property, and for
//! every node and edge the clique that holds it. What exact inference on a loopy graph
//! costs follows from it: a table of `C^|clique|` entries per clique.
//!
//! Several elimination orders are tried and the best (smallest largest clique, then
//! smallest total table size) is kept: min-degree, min-fill (with ties by degree, and with
//! ties to the newest node; on graphs of up to [`MIN_FILL_NODES`] nodes, as its cost grows
//! with the fourth power of the degree), the node order itself, and on `h x w` grids the
//! sweep along the short side (optimal there: the treewidth of a grid is `min(h, w)`). An
//! elimination that creates a clique of more than [`MAX_CLIQUE`] nodes is abandoned at once
//! (no table that large can be stored), so asking about a huge graph stays cheap.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Largest clique an elimination may create before it is abandoned (2^32 entries at C = 2).
pub const MAX_CLIQUE: usize = 32;
/// Largest graph on which min-fill is tried.
pub const MIN_FILL_NODES: usize = 4096;

/// A junction tree over the nodes of a graph.
#[derive(Debug, Clone, PartialEq)]
pub struct JunctionTree {
    /// Nodes of each clique, ascending; cliques in upward order (children before parents).
    pub cliques: Vec<Vec<u32>>,
    /// The parent of each clique (`None` for the root of a component).
    pub parent: Vec<Option<usize>>,
    /// For each node, a clique that holds it.
    pub node_home: Vec<usize>,
    /// For each edge, a clique that holds both its nodes.
    pub edge_home: Vec<usize>,
}

impl JunctionTree {
    /// The best of the orders tried, or `Err(size)` when every one of them makes a clique
    /// of `size > MAX_CLIQUE` nodes. `grid`: the `(h, w)` layout of `Graph::grid_shape`.
    pub fn new(
        n: usize,
        edges: &[[u32; 2]],
        grid: Option<(usize, usize)>,
    ) -> Result<JunctionTree, usize> {
        if let Some((h, w)) = grid {
            // Treewidth min(h, w): no order does better than the sweep.
            if h.min(w) + 1 > MAX_CLIQUE {
                return Err(h.min(w) + 1);
            }
        }
        let mut orders: Vec<Result<Vec<u32>, usize>> = vec![
            Ok((0..n as u32).collect()),
            Ok(sweep(n, edges)),
            eliminate(n, edges, Rule::Degree),
        ];
        if let Some((h, w)) = grid.filter(|&(h, w)| h < w) {
            orders.push(Ok((0..w)
                .flat_map(|c| (0..h).map(move |r| (r * w + c) as u32))
                .collect()));
        }
        if n <= MIN_FILL_NODES {
            orders.push(eliminate(n, edges, Rule::FillThenDegree));
            orders.push(eliminate(n, edges, Rule::FillThenNewest));
        }
        let mut best: Option<(JunctionTree, (usize, f64))> = None;
        let mut too_big = usize::MAX;
        for order in orders {
            match order.and_then(|o| build(n, edges, &o)) {
                Ok(jt) => {
                    let key = (jt.width(), jt.log2_total(2));
                    if best.as_ref().is_none_or(|(_, k)| key < *k) {
                        best = Some((jt, key));
                    }
                }
                Err(size) => too_big = too_big.min(size),
            }
        }
        best.map(|(jt, _)| jt).ok_or(too_big)
    }

    /// Largest clique size minus one (the width of this decomposition).
    pub fn width(&self) -> usize {
        self.cliques.iter().map(|c| c.len()).max().unwrap_or(1) - 1
    }

    /// Entries of the largest clique table for `c` classes (saturating).
    pub fn max_states(&self, c: usize) -> u128 {
        let w = self.width() as u32 + 1;
        (c as u128).checked_pow(w).unwrap_or(u128::MAX)
    }

    /// Entries of all clique tables together for `c` classes (saturating).
    pub fn total_states(&self, c: usize) -> u128 {
        self.cliques
            .iter()
            .map(|k| (c as u128).checked_pow(k.len() as u32).unwrap_or(u128::MAX))
            .fold(0u128, |a, x| a.saturating_add(x))
    }

    fn log2_total(&self, c: usize) -> f64 {
        (self.total_states(c) as f64).log2()
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Rule {
    Degree,
    FillThenDegree,
    FillThenNewest,
}

/// Sorted adjacency sets that elimination mutates.
struct Work {
    nbr: Vec<Vec<u32>>,
    gone: Vec<bool>,
}

impl Work {
    fn adjacent(&self, a: u32, b: u32) -> bool {
        self.nbr[a as usize].binary_search(&b).is_ok()
    }

    fn link(&mut self, a: u32, b: u32) {
        if let Err(p) = self.nbr[a as usize].binary_search(&b) {
            self.nbr[a as usize].insert(p, b);
        }
    }

    /// Pairs of `v`'s neighbours that are not adjacent (edges elimination would add).
    fn fill(&self, v: u32) -> usize {
        let nb = &self.nbr[v as usize];
        let mut missing = 0;
        for (i, &a) in nb.iter().enumerate() {
            for &b in &nb[i + 1..] {
                missing += !self.adjacent(a, b) as usize;
            }
        }
        missing
    }
}

/// A breadth-first sweep of each component from a far end (two BFS passes find a
/// pseudo-peripheral node): on long thin graphs the BFS layers are narrow, and eliminating
/// layer by layer keeps the cliques near the layer width.
fn sweep(n: usize, edges: &[[u32; 2]]) -> Vec<u32> {
    let mut nbr: Vec<Vec<u32>> = vec![Vec::new(); n];
    for &[a, b] in edges {
        nbr[a as usize].push(b);
        nbr[b as usize].push(a);
    }
    let mut seen = vec![false; n];
    let mut order = Vec::with_capacity(n);
    let mut mark = vec![usize::MAX; n];
    let bfs = |start: u32, tag: usize, mark: &mut Vec<usize>, out: &mut Vec<u32>| {
        let begin = out.len();
        mark[start as usize] = tag;
        out.push(start);
        let mut head = begin;
        while head < out.len() {
            let v = out[head];
            head += 1;
            for &u in &nbr[v as usize] {
                if mark[u as usize] != tag {
                    mark[u as usize] = tag;
                    out.push(u);
                }
            }
        }
        *out.last().expect("the start is in it")
    };
    let mut scratch = Vec::new();
    for s in 0..n {
        if seen[s] {
            continue;
        }
        scratch.clear();
        let far = bfs(s as u32, 2 * s, &mut mark, &mut scratch);
        let start = order.len();
        bfs(far, 2 * s + 1, &mut mark, &mut order);
        for &v in &order[start..] {
            seen[v as usize] = true;
        }
    }
    order
}

/// A greedy elimination order, or `Err(size)` once a clique of `size > MAX_CLIQUE` forms.
fn eliminate(n: usize, edges: &[[u32; 2]], rule: Rule) -> Result<Vec<u32>, usize> {
    let mut w = Work {
        nbr: vec![Vec::new(); n],
        gone: vec![false; n],
    };
    for &[a, b] in edges {
        w.link(a, b);
        w.link(b, a);
    }
    // Keys are recomputed when a node's neighbourhood changes; stale heap entries are
    // recognised by their stamp and skipped.
    let key = |w: &Work, v: u32, t: usize| -> (usize, usize, Reverse<usize>) {
        let d = w.nbr[v as usize].len();
        match rule {
            Rule::Degree => (d, 0, Reverse(0)),
            Rule::FillThenDegree => (w.fill(v), d, Reverse(0)),
            Rule::FillThenNewest => (w.fill(v), 0, Reverse(t)),
        }
    };
    let mut stamp = vec![0usize; n];
    let mut heap = BinaryHeap::new();
    for v in 0..n as u32 {
        heap.push(Reverse((key(&w, v, 0), v, 0usize)));
    }
    let mut order = Vec::with_capacity(n);
    let mut t = 0;
    while let Some(Reverse((_, v, s))) = heap.pop() {
        if w.gone[v as usize] || s != stamp[v as usize] {
            continue;
        }
        let nb = std::mem::take(&mut w.nbr[v as usize]);
        if nb.len() + 1 > MAX_CLIQUE {
            return Err(nb.len() + 1);
        }
        w.gone[v as usize] = true;
        order.push(v);
        t += 1;
        for (i, &a) in nb.iter().enumerate() {
            let list = &mut w.nbr[a as usize];
            if let Ok(p) = list.binary_search(&v) {
                list.remove(p);
            }
            for &b in &nb[i + 1..] {
                w.link(a, b);
                w.link(b, a);
            }
        }
        // Degrees change for the neighbours, fill counts also for their neighbours.
        let mut touched: Vec<u32> = nb.clone();
        if rule != Rule::Degree {
            for &a in &nb {
                touched.extend_from_slice(&w.nbr[a as usize]);
            }
        }
        touched.sort_unstable();
        touched.dedup();
        for u in touched {
            if !w.gone[u as usize] {
                stamp[u as usize] += 1;
                heap.push(Reverse((key(&w, u, t), u, stamp[u as usize])));
            }
        }
        // Put back v's (final) neighbour list: its clique is v plus these.
        w.nbr[v as usize] = nb;
    }
    Ok(order)
}

/// Cliques and tree of an elimination order (Koller & Friedman, ch. 10): the clique of `v`
/// is `v` and its neighbours when eliminated, and its parent is the clique of the first of
/// those neighbours to be eliminated. A clique contained in a child's absorbs that child.
fn build(n: usize, edges: &[[u32; 2]], order: &[u32]) -> Result<JunctionTree, usize> {
    let mut pos = vec![0usize; n];
    for (k, &v) in order.iter().enumerate() {
        pos[v as usize] = k;
    }
    // Replay the elimination to get each clique (neighbour lists with fill-in).
    let mut nbr: Vec<Vec<u32>> = vec![Vec::new(); n];
    for &[a, b] in edges {
        nbr[a as usize].push(b);
        nbr[b as usize].push(a);
    }
    nbr.iter_mut().for_each(|l| {
        l.sort_unstable();
        l.dedup();
    });
    let mut cliques: Vec<Vec<u32>> = Vec::with_capacity(n);
    let mut parent: Vec<Option<usize>> = Vec::with_capacity(n);
    for (k, &v) in order.iter().enumerate() {
        let later: Vec<u32> = nbr[v as usize]
            .iter()
            .copied()
            .filter(|&u| pos[u as usize] > k)
            .collect();
        if later.len() + 1 > MAX_CLIQUE {
            return Err(later.len() + 1);
        }
        for (i, &a) in later.iter().enumerate() {
            for &b in &later[i + 1..] {
                for (x, y) in [(a, b), (b, a)] {
                    if let Err(p) = nbr[x as usize].binary_search(&y) {
                        nbr[x as usize].insert(p, y);
                    }
                }
            }
        }
        parent.push(later.iter().map(|&u| pos[u as usize]).min());
        let mut clique = later;
        clique.push(v);
        clique.sort_unstable();
        cliques.push(clique);
    }
    // A clique contained in a child's takes the child's place (and nodes): the child's
    // children move up to it, so parents still come after children.
    let mut alias: Vec<usize> = (0..n).collect();
    let mut alive = vec![true; n];
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
    for k in 0..n {
        if let Some(p) = parent[k] {
            children[p].push(k);
        }
    }
    for k in 0..n {
        while let Some(c) = children[k]
            .iter()
            .copied()
            .find(|&c| alive[c] && is_subset(&cliques[k], &cliques[c]))
        {
            cliques[k] = std::mem::take(&mut cliques[c]);
            alive[c] = false;
            alias[c] = k;
            for o in std::mem::take(&mut children[c]) {
                if alive[o] {
                    parent[o] = Some(k);
                    children[k].push(o);
                }
            }
        }
    }
    let resolve = |mut k: usize| {
        while alias[k] != k {
            k = alias[k];
        }
        k
    };
    // Renumber the surviving cliques in upward order.
    let mut index = vec![usize::MAX; n];
    let mut out = JunctionTree {
        cliques: Vec::new(),
        parent: Vec::new(),
        node_home: Vec::with_capacity(n),
        edge_home: Vec::with_capacity(edges.len()),
    };
    for k in 0..n {
        if alive[k] {
            index[k] = out.cliques.len();
            out.cliques.push(std::mem::take(&mut cliques[k]));
        }
    }
    for k in 0..n {
        if alive[k] {
            out.parent.push(parent[k].map(|p| index[resolve(p)]));
        }
    }
    for v in 0..n {
        out.node_home.push(index[resolve(pos[v])]);
    }
    for &[a, b] in edges {
        let first = pos[a as usize].min(pos[b as usize]);
        out.edge_home.push(index[resolve(first)]);
    }
    Ok(out)
}

fn is_subset(a: &[u32], b: &[u32]) -> bool {
    a.len() <= b.len() && a.iter().all(|x| b.binary_search(x).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(h: u32, w: u32) -> Vec<[u32; 2]> {
        let mut e = Vec::new();
        for r in 0..h {
            for c in 0..w {
                if c + 1 < w {
                    e.push([r * w + c, r * w + c + 1]);
                }
                if r + 1 < h {
                    e.push([r * w + c, (r + 1) * w + c]);
                }
            }
        }
        e
    }

    /// The defining properties: every node and edge sits in its home clique, parents come
    /// after children, and the cliques holding a node form a connected subtree.
    fn check(n: usize, edges: &[[u32; 2]], jt: &JunctionTree) {
        let k = jt.cliques.len();
        for (v, &h) in jt.node_home.iter().enumerate() {
            assert!(jt.cliques[h].contains(&(v as u32)));
        }
        for (e, &[a, b]) in edges.iter().enumerate() {
            let c = &jt.cliques[jt.edge_home[e]];
            assert!(c.contains(&a) && c.contains(&b));
        }
        for (i, p) in jt.parent.iter().enumerate() {
            assert!(p.is_none_or(|p| p > i && p < k));
        }
        for v in 0..n as u32 {
            let holding: Vec<usize> = (0..k).filter(|&i| jt.cliques[i].contains(&v)).collect();
            // Connected: exactly one holding clique has a parent outside the set.
            let tops = holding
                .iter()
                .filter(|&&i| jt.parent[i].is_none_or(|p| !jt.cliques[p].contains(&v)))
                .count();
            assert_eq!(tops, 1, "node {v}: cliques holding it are not connected");
        }
    }

    #[test]
    fn grids_cycles_and_forests_get_valid_trees_of_the_expected_width() {
        for (h, w, width) in [(1, 6, 1), (2, 5, 2), (3, 4, 3), (4, 4, 4), (6, 20, 6)] {
            let e = grid(h, w);
            let jt =
                JunctionTree::new((h * w) as usize, &e, Some((h as usize, w as usize))).unwrap();
            check((h * w) as usize, &e, &jt);
            assert_eq!(jt.width(), width as usize, "{h}x{w}");
        }
        let cycle: Vec<[u32; 2]> = (0..7).map(|i| [i, (i + 1) % 7]).collect();
        let jt = JunctionTree::new(7, &cycle, None).unwrap();
        check(7, &cycle, &jt);
        assert_eq!((jt.width(), jt.max_states(3)), (2, 27));
        // Two components and an isolated node: a forest of trees.
        let e = [[0, 1], [1, 2], [2, 0], [3, 4]];
        let jt = JunctionTree::new(6, &e, None).unwrap();
        check(6, &e, &jt);
        assert_eq!(jt.parent.iter().filter(|p| p.is_none()).count(), 3);
    }

    #[test]
    fn huge_or_wide_graphs_are_abandoned_quickly() {
        let e = grid(300, 300);
        let t = std::time::Instant::now();
        // As a grid (known width) and as an anonymous graph (heuristics abandoned).
        assert!(JunctionTree::new(90_000, &e, Some((300, 300))).unwrap_err() > MAX_CLIQUE);
        assert!(JunctionTree::new(90_000, &e, None).unwrap_err() > MAX_CLIQUE);
        assert!(t.elapsed().as_secs_f64() < 10.0);
        // A long thin strip is cheap and gets (about) its width, named a grid or not.
        let e = grid(8, 2000);
        let jt = JunctionTree::new(16_000, &e, Some((8, 2000))).unwrap();
        assert_eq!(jt.width(), 8);
        check(16_000, &e, &jt);
        let jt = JunctionTree::new(16_000, &e, None).unwrap();
        assert!(jt.width() <= 9, "width {}", jt.width());
    }
}
