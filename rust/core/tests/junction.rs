//! Exact inference on graphs with cycles (junction tree) against enumeration of every
//! labelling: cycles, chords, grids, random graphs, −inf constraints.

mod common;

use common::{close, enumerate, grid, problem, scored, Case};
use expsoftmax_core::kernels::rng::Rng;
use expsoftmax_core::{Entry, Error, Graph, Method};

fn exact(g: &Graph, c: usize) -> Method {
    Method::parse("exact", &[], g, Entry::Infer, c).unwrap()
}

/// Small loopy graphs: a 5-cycle, a 4-cycle with a chord, two triangles sharing a node, a
/// 3x4 grid, K4, and random graphs of 3..7 nodes with extra edges (both orientations).
fn graphs(rng: &mut Rng) -> Vec<Graph> {
    let mut out = vec![
        Graph::new(5, (0..5).map(|i| [i, (i + 1) % 5]).collect()).unwrap(),
        Graph::new(4, vec![[0, 1], [1, 2], [2, 3], [3, 0], [2, 0]]).unwrap(),
        Graph::new(5, vec![[0, 1], [1, 2], [2, 0], [2, 3], [3, 4], [4, 2]]).unwrap(),
        grid(3, 4),
        Graph::new(4, vec![[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]).unwrap(),
    ];
    for t in 0..12 {
        let n = 3 + t % 5;
        let mut edges = Vec::new();
        for a in 0..n as u32 {
            for b in a + 1..n as u32 {
                if rng.uniform() < 0.5 {
                    edges.push(if rng.uniform() < 0.5 { [a, b] } else { [b, a] });
                }
            }
        }
        out.push(Graph::new(n, edges).unwrap());
    }
    out
}

fn cases(seed: u64) -> Vec<Case> {
    let mut rng = Rng::stream(seed, &[]);
    let mut out = Vec::new();
    for (k, g) in graphs(&mut rng).into_iter().enumerate() {
        let c = if g.num_nodes() > 10 { 2 } else { 2 + k % 2 };
        let (scale, forbid) = [(1.0, 0.0), (3.0, 0.0), (1.0, 0.15)][k % 3];
        out.push(scored(&mut rng, g, c, scale, forbid));
    }
    out
}

#[test]
fn log_z_and_marginals_match_enumeration_on_loopy_graphs() {
    for (k, case) in cases(21).iter().enumerate() {
        let (log_z, nm, em, _) = enumerate(case);
        let m = exact(&case.graph, case.c);
        match m.infer(&problem(case), true) {
            Ok(r) => {
                let r = r.marginals;
                assert!((r.log_z[0] - log_z).abs() < 1e-10, "case {k}");
                assert!(close(&r.node, &nm, 1e-10), "case {k}: node marginals");
                assert!(
                    close(r.edge.as_ref().unwrap(), &em, 1e-10),
                    "case {k}: pairs"
                );
                // Forbidden states carry exactly zero mass.
                for (e, &s) in case.se.iter().enumerate() {
                    if s == f64::NEG_INFINITY {
                        assert_eq!(r.edge.as_ref().unwrap()[e], 0.0);
                    }
                }
            }
            Err(Error::Infeasible(_)) => assert_eq!(log_z, f64::NEG_INFINITY, "case {k}"),
            Err(e) => panic!("case {k}: {e}"),
        }
    }
}

#[test]
fn map_and_loss_match_enumeration_on_loopy_graphs() {
    for (k, case) in cases(22).iter().enumerate() {
        let (log_z, _, _, map) = enumerate(case);
        if log_z == f64::NEG_INFINITY {
            continue;
        }
        let m = exact(&case.graph, case.c);
        let (y, _) = m.decode(&problem(case)).unwrap();
        let score = |y: &[i64]| {
            let c = case.c;
            let mut s: f64 = (0..y.len()).map(|v| case.sn[v * c + y[v] as usize]).sum();
            for (e, &[i, j]) in case.graph.edges().iter().enumerate() {
                s += case.se[e * c * c + y[i as usize] as usize * c + y[j as usize] as usize];
            }
            s
        };
        assert!(
            (score(&y) - score(&map)).abs() < 1e-9,
            "case {k}: not a MAP labelling"
        );
        let lg = m.loss_and_grad(&problem(case), &map, None).unwrap();
        assert!(
            (lg.loss[0] - (log_z - score(&map))).abs() < 1e-9,
            "case {k}: loss"
        );
    }
}

/// Sample frequencies lie within 5 standard errors of the exact marginals.
#[test]
fn samples_follow_the_exact_distribution() {
    let mut rng = Rng::stream(5, &[]);
    let case = scored(&mut rng, grid(3, 3), 2, 0.8, 0.1);
    let (_, nm, _, _) = enumerate(&case);
    let m = exact(&case.graph, case.c);
    let ns = 20_000;
    let y = m.sample(&problem(&case), ns, Some(3)).unwrap();
    let n = case.graph.num_nodes();
    for v in 0..n {
        for x in 0..2 {
            let f = (0..ns).filter(|&s| y[s * n + v] == x as i64).count() as f64 / ns as f64;
            let p = nm[v * 2 + x];
            let se = (p * (1.0 - p) / ns as f64).sqrt();
            assert!(
                (f - p).abs() <= 5.0 * se + 1e-12,
                "node {v} label {x}: {f} vs {p}"
            );
        }
    }
}
