//! The graph every method works on: `num_nodes` nodes and a list of directed edges.
//! Edge `e = (i, j)` orients its score table: `s_e[e, a, b]` scores label `a` at `i`
//! and `b` at `j`. Derived structures (the rooted forest, later colourings) are built
//! once, on first use, and shared by every call.

use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::model::adjacency::Adjacency;
use crate::model::forest::Forest;
use crate::model::junction::JunctionTree;

#[derive(Debug)]
pub struct Graph {
    num_nodes: usize,
    edges: Vec<[u32; 2]>,
    is_forest: bool,
    is_chain: bool,
    forest: OnceLock<Forest>,
    adjacency: OnceLock<Adjacency>,
    grid: OnceLock<Option<(usize, usize)>>,
    edge_appearance: OnceLock<Vec<f64>>,
    junction: OnceLock<std::result::Result<JunctionTree, usize>>,
}

impl Graph {
    /// Validates and builds a graph. Nodes are `0..num_nodes`; an edge naming a missing node,
    /// or joining a node to itself, is refused.
    pub fn new(num_nodes: usize, edges: Vec<[u32; 2]>) -> Result<Graph> {
        if num_nodes == 0 {
            return Err(Error::Value("graph has no nodes (num_nodes = 0)".into()));
        }
        check_num_nodes(num_nodes as u128)?;
        // Union-find, adjacency lists and the rooted forest: about 24 bytes a node and 48
        // an edge, refused up front rather than aborting on a huge `num_nodes`.
        crate::kernels::alloc::check_with(
            "the graph's node arrays",
            &[num_nodes],
            24,
            edges.len() as u128 * 48,
        )?;
        for (e, &[i, j]) in edges.iter().enumerate() {
            if i as usize >= num_nodes || j as usize >= num_nodes {
                return Err(Error::Value(format!(
                    "edge {e} = ({i}, {j}) names a node outside [0, {num_nodes})"
                )));
            }
            if i == j {
                return Err(Error::Value(format!(
                    "edge {e} = ({i}, {j}) is a self-loop; a node cannot be joined to itself"
                )));
            }
        }
        let is_forest = acyclic(num_nodes, &edges);
        let is_chain = edges.len() + 1 == num_nodes
            && edges
                .iter()
                .enumerate()
                .all(|(e, &[i, j])| i as usize == e && j as usize == e + 1);
        Ok(Graph {
            num_nodes,
            edges,
            is_forest,
            is_chain,
            forest: OnceLock::new(),
            adjacency: OnceLock::new(),
            grid: OnceLock::new(),
            edge_appearance: OnceLock::new(),
            junction: OnceLock::new(),
        })
    }

    /// The chain 0 - 1 - ... - (n-1), edges (i, i+1).
    pub fn chain(n: usize) -> Result<Graph> {
        let edges = (1..n as u32).map(|j| [j - 1, j]).collect();
        Graph::new(n, edges)
    }

    pub fn num_nodes(&self) -> usize {
        self.num_nodes
    }

    pub fn num_edges(&self) -> usize {
        self.edges.len()
    }

    pub fn edges(&self) -> &[[u32; 2]] {
        &self.edges
    }

    /// True when the graph has no cycle (an undirected forest; parallel edges are a cycle).
    pub fn is_forest(&self) -> bool {
        self.is_forest
    }

    /// True for the canonical chain with edges (e, e+1): the only graph where per-item
    /// lengths (a prefix of the nodes) make sense.
    pub fn is_chain(&self) -> bool {
        self.is_chain
    }

    /// `(height, width)` when the graph is exactly the 4-neighbour grid in the layout of
    /// `Graph.grid` (node `r * width + c`; horizontal edges row-major, then vertical ones).
    pub fn grid_shape(&self) -> Option<(usize, usize)> {
        *self.grid.get_or_init(|| {
            let n = self.num_nodes;
            // The first vertical edge is (0, width); before it come h * (w - 1) horizontal.
            let w = match self.edges.iter().find(|&&[i, j]| j != i + 1) {
                Some(&[0, j]) => j as usize,
                Some(_) => return None,
                None => n, // a single row
            };
            if w == 0 || !n.is_multiple_of(w) {
                return None;
            }
            let h = n / w;
            if h < 2 || w < 2 || self.edges.len() != h * (w - 1) + (h - 1) * w {
                return None;
            }
            let n_h = h * (w - 1);
            let ok = self.edges.iter().enumerate().all(|(e, &[i, j])| {
                let (i, j) = (i as usize, j as usize);
                if e < n_h {
                    let (r, c) = (e / (w - 1), e % (w - 1));
                    i == r * w + c && j == i + 1
                } else {
                    i == e - n_h && j == i + w
                }
            });
            ok.then_some((h, w))
        })
    }

    /// Adjacency lists and colouring for loopy message passing (built on first use).
    pub fn adjacency(&self) -> &Adjacency {
        self.adjacency
            .get_or_init(|| Adjacency::new(self.num_nodes, &self.edges))
    }

    /// Edge appearance probabilities `(E,)` of a mixture of spanning trees, the default of
    /// tree-reweighted BP (built on first use): every entry in `(0, 1]` and the vector inside
    /// the spanning-tree polytope, so TRW's log Z is an upper bound. Forests: all ones.
    /// Grids: the two "combs" (all rows plus the first column; all columns plus the first
    /// row), weight 1/2 each. Other graphs: spanning forests chosen greedily to cover every
    /// edge (Kruskal over the least-covered edges first, ties broken by a fixed random
    /// stream), averaged over at least 8 forests.
    pub fn default_edge_appearance(&self) -> &[f64] {
        self.edge_appearance
            .get_or_init(|| spanning_tree_mixture(self))
    }

    /// The junction tree exact inference on a loopy graph uses (built on first use), or
    /// `Err(size)`: the smallest largest clique the heuristics found exceeds
    /// [`crate::model::junction::MAX_CLIQUE`] nodes.
    pub fn junction_tree(&self) -> std::result::Result<&JunctionTree, usize> {
        self.junction
            .get_or_init(|| JunctionTree::new(self.num_nodes, &self.edges, self.grid_shape()))
            .as_ref()
            .map_err(|&size| size)
    }

    /// The rooted forest, or a `NotForest` error naming the loopy methods.
    pub fn forest(&self) -> Result<&Forest> {
        if !self.is_forest {
            return Err(Error::NotForest(
                "the graph is not a forest (it has a cycle), so exact inference is not available"
                    .into(),
            ));
        }
        Ok(self
            .forest
            .get_or_init(|| Forest::new(self.num_nodes(), self.edges(), self.adjacency())))
    }
}

fn spanning_tree_mixture(g: &Graph) -> Vec<f64> {
    let e = g.num_edges();
    if g.is_forest() {
        return vec![1.0; e];
    }
    if let Some((h, w)) = g.grid_shape() {
        let n_h = h * (w - 1);
        let mut rho = vec![0.5; e];
        rho[..w - 1].iter_mut().for_each(|r| *r = 1.0); // first row: in both combs
        for r in 0..h - 1 {
            rho[n_h + r * w] = 1.0; // first column: in both combs
        }
        return rho;
    }
    let mut rng = crate::kernels::rng::Rng::stream(0, &[]);
    let mut count = vec![0u64; e];
    let mut trees = 0u64;
    let mut order: Vec<usize> = (0..e).collect();
    let mut parent: Vec<u32> = Vec::new();
    while trees < 8 || count.contains(&0) {
        let key: Vec<f64> = (0..e).map(|_| rng.uniform()).collect();
        // Least-covered edges first, random among equals.
        order.sort_by(|&a, &b| count[a].cmp(&count[b]).then(key[a].total_cmp(&key[b])));
        parent.clear();
        parent.extend(0..g.num_nodes() as u32);
        for &k in &order {
            let [i, j] = g.edges[k];
            let (a, b) = (find(&mut parent, i), find(&mut parent, j));
            if a != b {
                parent[a as usize] = b;
                count[k] += 1;
            }
        }
        trees += 1;
        if trees > 10 * e as u64 {
            break; // cannot happen for a graph without self-loops; guards the loop
        }
    }
    count.iter().map(|&k| k as f64 / trees as f64).collect()
}

fn find(p: &mut [u32], mut x: u32) -> u32 {
    while p[x as usize] != x {
        let up = p[p[x as usize] as usize];
        p[x as usize] = up;
        x = up;
    }
    x
}

/// Nodes are numbered in `u32` (edges store two of them), one value kept for "no node".
pub fn check_num_nodes(n: u128) -> Result<()> {
    if n > u32::MAX as u128 - 1 {
        return Err(Error::Value(format!(
            "graph has too many nodes ({n}); at most {} are supported",
            u32::MAX - 1
        )));
    }
    Ok(())
}

/// Union-find cycle check: a forest never joins two nodes that are already connected.
fn acyclic(n: usize, edges: &[[u32; 2]]) -> bool {
    let mut parent: Vec<u32> = (0..n as u32).collect();
    for &[i, j] in edges {
        let (ri, rj) = (find(&mut parent, i), find(&mut parent, j));
        if ri == rj {
            return false;
        }
        parent[ri as usize] = rj;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_missing_nodes_and_self_loops() {
        assert!(matches!(Graph::new(3, vec![[0, 3]]), Err(Error::Value(_))));
        assert!(matches!(Graph::new(3, vec![[1, 1]]), Err(Error::Value(_))));
        assert!(matches!(Graph::new(0, vec![]), Err(Error::Value(_))));
    }

    #[test]
    fn detects_cycles_and_chains() {
        assert!(Graph::chain(5).unwrap().is_forest());
        assert!(Graph::chain(5).unwrap().is_chain());
        assert!(!Graph::new(3, vec![[0, 1], [1, 2], [2, 0]])
            .unwrap()
            .is_forest());
        // Parallel edges form a cycle of length two.
        assert!(!Graph::new(2, vec![[0, 1], [1, 0]]).unwrap().is_forest());
        let g = Graph::new(4, vec![[1, 0], [2, 3]]).unwrap();
        assert!(g.is_forest() && !g.is_chain());
        assert!(matches!(
            Graph::new(3, vec![[0, 1], [1, 2], [2, 0]])
                .unwrap()
                .forest(),
            Err(Error::NotForest(_))
        ));
    }
}
