//! The forest methods against enumeration of every labelling on small random forests.

use expsoftmax_core::exact;
use expsoftmax_core::kernels::rng::Rng;
use expsoftmax_core::{EdgeScores, Graph, NodeScores, Problem};

struct Case {
    graph: Graph,
    c: usize,
    sn: Vec<f64>,
    se: Vec<f64>,
}

/// A random forest of `n` nodes: shuffled edge order, random orientation, some components.
fn random_case(rng: &mut Rng, n: usize, c: usize, scale: f64, forbid: f64) -> Case {
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
    let gauss = |r: &mut Rng| {
        let (u, v) = (r.uniform().max(1e-300), r.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos() * scale
    };
    let e = edges.len();
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
    Case {
        graph: Graph::new(n, edges).unwrap(),
        c,
        sn,
        se,
    }
}

/// log Z, node marginals, edge marginals and the best labelling by enumeration.
fn enumerate(case: &Case) -> (f64, Vec<f64>, Vec<f64>, Vec<i64>) {
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

fn problem(case: &Case) -> Problem<'_, f64> {
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

fn close(a: &[f64], b: &[f64], tol: f64) -> bool {
    a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
}

#[test]
fn marginals_and_map_match_enumeration() {
    let mut rng = Rng::stream(42, &[]);
    for trial in 0..300 {
        let n = 1 + trial % 7;
        let c = 1 + trial % 4;
        let forbid = if trial % 3 == 0 { 0.25 } else { 0.0 };
        let case = random_case(&mut rng, n, c, 1.5, forbid);
        let (lz, nm, em, _) = enumerate(&case);
        let pb = problem(&case);
        match exact::marginals(&pb, true) {
            Ok(m) => {
                assert!(
                    (m.log_z[0] - lz).abs() < 1e-10,
                    "trial {trial}: {} vs {lz}",
                    m.log_z[0]
                );
                assert!(close(&m.node, &nm, 1e-10), "trial {trial}: node marginals");
                assert!(
                    close(m.edge.as_ref().unwrap(), &em, 1e-10),
                    "trial {trial}: edges"
                );
                let y = exact::decode(&pb).unwrap();
                // The MAP score equals the brute-force maximum (labellings may tie).
                let score = |y: &[i64]| {
                    let mut s: f64 = (0..n).map(|v| case.sn[v * c + y[v] as usize]).sum();
                    for (e, &[i, j]) in case.graph.edges().iter().enumerate() {
                        s += case.se
                            [e * c * c + y[i as usize] as usize * c + y[j as usize] as usize];
                    }
                    s
                };
                let (_, _, _, best) = enumerate(&case);
                assert!(
                    (score(&y) - score(&best)).abs() < 1e-10,
                    "trial {trial}: MAP"
                );
            }
            Err(e) => {
                assert_eq!(lz, f64::NEG_INFINITY, "trial {trial}: unexpected {e}");
            }
        }
    }
}

#[test]
fn huge_scores_stay_exact() {
    let mut rng = Rng::stream(3, &[]);
    for trial in 0..50 {
        let case = random_case(&mut rng, 6, 3, 1e4, 0.1 * (trial % 2) as f64);
        let (lz, nm, _, _) = enumerate(&case);
        if lz == f64::NEG_INFINITY {
            continue;
        }
        let m = exact::marginals(&problem(&case), false).unwrap();
        assert!(
            (m.log_z[0] - lz).abs() < 1e-9 * lz.abs().max(1.0),
            "trial {trial}"
        );
        assert!(close(&m.node, &nm, 1e-9), "trial {trial}");
    }
}
