//! The graph every method works on: `num_nodes` nodes and a list of directed edges.
//! Edge `e = (i, j)` orients its score table: `s_e[e, a, b]` scores label `a` at `i`
//! and `b` at `j`. Derived structures (the rooted forest, later colourings) are built
//! once, on first use, and shared by every call.

use std::sync::OnceLock;

use crate::adjacency::Adjacency;
use crate::error::{Error, Result};
use crate::forest::Forest;

#[derive(Debug)]
pub struct Graph {
    num_nodes: usize,
    edges: Vec<[u32; 2]>,
    is_forest: bool,
    is_chain: bool,
    forest: OnceLock<Forest>,
    adjacency: OnceLock<Adjacency>,
    grid: OnceLock<Option<(usize, usize)>>,
}

impl Graph {
    /// Validates and builds a graph. Nodes are `0..num_nodes`; an edge naming a missing node,
    /// or joining a node to itself, is refused.
    pub fn new(num_nodes: usize, edges: Vec<[u32; 2]>) -> Result<Graph> {
        if num_nodes == 0 {
            return Err(Error::Value("graph has no nodes (num_nodes = 0)".into()));
        }
        if num_nodes > u32::MAX as usize - 1 {
            return Err(Error::Value(format!(
                "graph has too many nodes ({num_nodes}); at most {} are supported",
                u32::MAX - 1
            )));
        }
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
            if w == 0 || n % w != 0 {
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
        self.adjacency.get_or_init(|| Adjacency::new(self))
    }

    /// The rooted forest, or a `NotForest` error naming the loopy methods.
    pub fn forest(&self) -> Result<&Forest> {
        if !self.is_forest {
            return Err(Error::NotForest(
                "the graph is not a forest (it has a cycle), so exact inference is not \
                 available; use a loopy method: method=\"bp\", \"trw\", \"mean_field\" or \"gibbs\""
                    .into(),
            ));
        }
        Ok(self.forest.get_or_init(|| Forest::new(self)))
    }
}

/// Union-find cycle check: a forest never joins two nodes that are already connected.
fn acyclic(n: usize, edges: &[[u32; 2]]) -> bool {
    let mut parent: Vec<u32> = (0..n as u32).collect();
    fn find(p: &mut [u32], mut x: u32) -> u32 {
        while p[x as usize] != x {
            let up = p[p[x as usize] as usize];
            p[x as usize] = up;
            x = up;
        }
        x
    }
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
