//! Shared by the integration tests: random models and the enumeration oracle.
#![allow(dead_code)]

use expsoftmax_core::kernels::rng::Rng;
use expsoftmax_core::{EdgeScores, Graph, NodeScores, Problem};

pub struct Case {
    pub graph: Graph,
    pub c: usize,
    pub sn: Vec<f64>,
    pub se: Vec<f64>,
}

/// A random forest of `n` nodes: shuffled edge order, random orientation, some components.
pub fn random_case(rng: &mut Rng, n: usize, c: usize, scale: f64, forbid: f64) -> Case {
    let mut edges = Vec::new();
    for v in 1..n {
        if rng.uniform() < 0.8 {
            let p = (rng.uniform() * v as f64) as u32;
            edges.push(if rng.uniform() < 0.5 {
                [p, v as u32]
            } else {
                [v as u32, p]
            });
        }
    }
    for k in (1..edges.len()).rev() {
        let j = (rng.uniform() * (k + 1) as f64) as usize;
        edges.swap(k, j);
    }
    scored(rng, Graph::new(n, edges).unwrap(), c, scale, forbid)
}

/// Gaussian scores of standard deviation `scale` on `graph`; each pair forbidden (−inf)
/// with probability `forbid`.
pub fn scored(rng: &mut Rng, graph: Graph, c: usize, scale: f64, forbid: f64) -> Case {
    let gauss = |r: &mut Rng| {
        let (u, v) = (r.uniform().max(1e-300), r.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos() * scale
    };
    let (n, e) = (graph.num_nodes(), graph.num_edges());
    let sn = (0..n * c).map(|_| gauss(rng)).collect();
    let se = (0..e * c * c)
        .map(|_| {
            if rng.uniform() < forbid {
                f64::NEG_INFINITY
            } else {
                gauss(rng)
            }
        })
        .collect();
    Case { graph, c, sn, se }
}

/// The `h x w` 4-neighbour grid, edges as `Graph.grid` orders them.
pub fn grid(h: usize, w: usize) -> Graph {
    let mut edges = Vec::new();
    for r in 0..h {
        for col in 0..w - 1 {
            edges.push([(r * w + col) as u32, (r * w + col + 1) as u32]);
        }
    }
    for r in 0..h - 1 {
        for col in 0..w {
            edges.push([(r * w + col) as u32, ((r + 1) * w + col) as u32]);
        }
    }
    Graph::new(h * w, edges).unwrap()
}

/// log Z, node marginals, edge marginals and the best labelling by enumeration.
pub fn enumerate(case: &Case) -> (f64, Vec<f64>, Vec<f64>, Vec<i64>) {
    let (n, c) = (case.graph.num_nodes(), case.c);
    let edges = case.graph.edges();
    let total = c.pow(n as u32);
    let mut scores = Vec::with_capacity(total);
    let mut y = vec![0usize; n];
    for mut k in 0..total {
        for v in y.iter_mut() {
            *v = k % c;
            k /= c;
        }
        let mut s: f64 = (0..n).map(|v| case.sn[v * c + y[v]]).sum();
        for (e, &[i, j]) in edges.iter().enumerate() {
            s += case.se[e * c * c + y[i as usize] * c + y[j as usize]];
        }
        scores.push(s);
    }
    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return (m, vec![], vec![], vec![]);
    }
    let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
    let log_z = m + z.ln();
    let mut nm = vec![0.0; n * c];
    let mut em = vec![0.0; edges.len() * c * c];
    let mut best = (f64::NEG_INFINITY, 0);
    for (k, &s) in scores.iter().enumerate() {
        let p = (s - log_z).exp();
        let mut kk = k;
        for v in y.iter_mut() {
            *v = kk % c;
            kk /= c;
        }
        for v in 0..n {
            nm[v * c + y[v]] += p;
        }
        for (e, &[i, j]) in edges.iter().enumerate() {
            em[e * c * c + y[i as usize] * c + y[j as usize]] += p;
        }
        if s > best.0 {
            best = (s, k);
        }
    }
    let mut kk = best.1;
    let map = (0..n)
        .map(|_| {
            let l = kk % c;
            kk /= c;
            l as i64
        })
        .collect();
    (log_z, nm, em, map)
}

pub fn problem(case: &Case) -> Problem<'_, f64> {
    let (n, c, e) = (case.graph.num_nodes(), case.c, case.graph.num_edges());
    Problem::new(
        &case.graph,
        NodeScores {
            data: &case.sn,
            batch: 1,
            nodes: n,
            classes: c,
        },
        EdgeScores::tables(&case.se, 1, e, c),
        1,
        None,
    )
    .unwrap()
}

pub fn close(a: &[f64], b: &[f64], tol: f64) -> bool {
    a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
}
