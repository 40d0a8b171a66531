//! A forest rooted for message passing: nodes laid out in breadth-first order, so that a
//! parent always comes before its children and each connected component occupies one
//! contiguous range. Every per-node buffer of the forest algorithms is indexed by this
//! position, which keeps a chain's passes sequential in memory.

use crate::model::adjacency::Adjacency;

/// Marks a root in [`Forest::parent`].
pub const ROOT: u32 = u32::MAX;

#[derive(Debug, Clone)]
pub struct Forest {
    /// Node id at each position.
    pub node: Vec<u32>,
    /// Position of the parent, or [`ROOT`].
    pub parent: Vec<u32>,
    /// Edge joining the node at this position to its parent (unused for roots).
    pub edge: Vec<u32>,
    /// True when that edge is stored as (child, parent), so its table is indexed
    /// `[child label, parent label]`; false for (parent, child).
    pub child_first: Vec<bool>,
    /// Component `k` occupies positions `comp[k]..comp[k + 1]`; its root is at `comp[k]`.
    pub comp: Vec<usize>,
}

impl Forest {
    /// Roots each component at its smallest node id and orders it breadth first.
    /// Panics if the graph has a cycle; callers go through `Graph::forest`.
    pub fn new(n: usize, edges: &[[u32; 2]], adj: &Adjacency) -> Forest {
        // The graph's cached adjacency lists: neighbours and edges of each node.

        let mut pos = vec![ROOT; n];
        let mut f = Forest {
            node: Vec::with_capacity(n),
            parent: Vec::with_capacity(n),
            edge: Vec::with_capacity(n),
            child_first: Vec::with_capacity(n),
            comp: vec![0],
        };
        for root in 0..n {
            if pos[root] != ROOT {
                continue;
            }
            let start = f.node.len();
            pos[root] = start as u32;
            f.node.push(root as u32);
            f.parent.push(ROOT);
            f.edge.push(0);
            f.child_first.push(false);
            let mut head = start;
            while head < f.node.len() {
                let v = f.node[head] as usize;
                for k in adj.start[v]..adj.start[v + 1] {
                    let (w, e) = (adj.nbr[k], adj.edge[k]);
                    if pos[w as usize] != ROOT {
                        continue;
                    }
                    pos[w as usize] = f.node.len() as u32;
                    f.node.push(w);
                    f.parent.push(head as u32);
                    f.edge.push(e);
                    f.child_first.push(edges[e as usize][0] == w);
                }
                head += 1;
            }
            f.comp.push(f.node.len());
        }
        f
    }

    pub fn len(&self) -> usize {
        self.node.len()
    }

    pub fn is_empty(&self) -> bool {
        self.node.is_empty()
    }

    pub fn num_components(&self) -> usize {
        self.comp.len() - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::graph::Graph;

    #[test]
    fn parents_precede_children_and_orientation_is_recorded() {
        // 3 <- 1 -> 0, 1 - 2 stored as (2, 1), separate component 4 - 5.
        let g = Graph::new(6, vec![[1, 0], [2, 1], [1, 3], [5, 4]]).unwrap();
        let f = g.forest().unwrap();
        assert_eq!(f.num_components(), 2);
        assert_eq!(f.node[0], 0);
        for p in 0..f.len() {
            if f.parent[p] != ROOT {
                assert!((f.parent[p] as usize) < p);
                let [a, b] = g.edges()[f.edge[p] as usize];
                let (v, par) = (f.node[p], f.node[f.parent[p] as usize]);
                if f.child_first[p] {
                    assert_eq!((a, b), (v, par));
                } else {
                    assert_eq!((a, b), (par, v));
                }
            }
        }
        let roots: Vec<_> = (0..f.len()).filter(|&p| f.parent[p] == ROOT).collect();
        assert_eq!(roots, vec![f.comp[0], f.comp[1]]);
    }

    #[test]
    fn chain_is_laid_out_in_node_order() {
        let g = Graph::chain(7).unwrap();
        let f = g.forest().unwrap();
        assert_eq!(f.node, (0..7).collect::<Vec<u32>>());
        assert!(f.child_first.iter().all(|&c| !c));
    }
}
