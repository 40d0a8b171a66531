//! The forest methods against enumeration of every labelling on small random forests.

mod common;

use common::{close, enumerate, problem, random_case};
use expsoftmax_core::exact;
use expsoftmax_core::kernels::rng::Rng;

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
