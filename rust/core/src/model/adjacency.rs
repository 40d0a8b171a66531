//! Node-centric views of a graph for message passing on loopy graphs: a compressed
//! adjacency list and a greedy colouring (no two neighbours share a colour, so all nodes of
//! one colour can be updated in parallel; a grid gets the two checkerboard colours).

/// Message slot of the directed edge leaving `e`'s first node (`first = true`) or its
/// second node.
#[inline(always)]
pub fn slot(e: usize, from_first: bool) -> usize {
    2 * e + (!from_first) as usize
}

#[derive(Debug, Clone)]
pub struct Adjacency {
    /// Node `v`'s entries are `start[v]..start[v + 1]`.
    pub start: Vec<usize>,
    /// Neighbour at each entry.
    pub nbr: Vec<u32>,
    /// Edge at each entry.
    pub edge: Vec<u32>,
    /// True when `v` is the edge's first node (its table is indexed `[x_v, x_nbr]`).
    pub first: Vec<bool>,
    /// The entry of the same edge seen from the neighbour.
    pub twin: Vec<u32>,
    /// Nodes of each colour, ascending.
    pub colours: Vec<Vec<u32>>,
}

impl Adjacency {
    pub fn new(n: usize, edges: &[[u32; 2]]) -> Adjacency {
        let mut start = vec![0usize; n + 1];
        for &[i, j] in edges {
            start[i as usize + 1] += 1;
            start[j as usize + 1] += 1;
        }
        for v in 0..n {
            start[v + 1] += start[v];
        }
        let mut fill = start.clone();
        let m = 2 * edges.len();
        let (mut nbr, mut edge, mut first) = (vec![0u32; m], vec![0u32; m], vec![false; m]);
        let mut twin = vec![0u32; m];
        for (e, &[i, j]) in edges.iter().enumerate() {
            let (ki, kj) = (fill[i as usize], fill[j as usize]);
            for (k, w, f) in [(ki, j, true), (kj, i, false)] {
                nbr[k] = w;
                edge[k] = e as u32;
                first[k] = f;
            }
            twin[ki] = kj as u32;
            twin[kj] = ki as u32;
            fill[i as usize] += 1;
            fill[j as usize] += 1;
        }
        // Greedy colouring in node order: smallest colour unused by earlier neighbours.
        let mut colour = vec![u32::MAX; n];
        let mut used: Vec<bool> = Vec::new();
        let mut colours: Vec<Vec<u32>> = Vec::new();
        for v in 0..n {
            used.iter_mut().for_each(|u| *u = false);
            for &w in &nbr[start[v]..start[v + 1]] {
                let cw = colour[w as usize];
                if cw != u32::MAX {
                    if cw as usize >= used.len() {
                        used.resize(cw as usize + 1, false);
                    }
                    used[cw as usize] = true;
                }
            }
            let cv = used.iter().position(|&u| !u).unwrap_or(used.len());
            colour[v] = cv as u32;
            if cv >= colours.len() {
                colours.resize(cv + 1, Vec::new());
            }
            colours[cv].push(v as u32);
        }
        Adjacency {
            start,
            nbr,
            edge,
            first,
            twin,
            colours,
        }
    }

    #[inline(always)]
    pub fn degree(&self, v: usize) -> usize {
        self.start[v + 1] - self.start[v]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::graph::Graph;

    #[test]
    fn grid_gets_two_colours_and_no_neighbours_share_one() {
        let (h, w) = (5u32, 7u32);
        let mut edges = Vec::new();
        for r in 0..h {
            for c in 0..w {
                let v = r * w + c;
                if c + 1 < w {
                    edges.push([v, v + 1]);
                }
                if r + 1 < h {
                    edges.push([v, v + w]);
                }
            }
        }
        let g = Graph::new((h * w) as usize, edges).unwrap();
        let a = Adjacency::new(g.num_nodes(), g.edges());
        assert_eq!(a.colours.len(), 2);
        let mut colour = vec![0; g.num_nodes()];
        for (k, cls) in a.colours.iter().enumerate() {
            for &v in cls {
                colour[v as usize] = k;
            }
        }
        for &[i, j] in g.edges() {
            assert_ne!(colour[i as usize], colour[j as usize]);
        }
        assert_eq!(a.degree(0), 2);
        assert_eq!(a.degree((w + 1) as usize), 4);
    }
}
