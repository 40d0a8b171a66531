//! Times the core alone (no Python) on chain CRF shapes:
//! `cargo run --release --example chain_bench -p expsoftmax-core [B T C [shared|edge] [reps]]`.

use std::time::Instant;

use expsoftmax_core::exact;
use expsoftmax_core::kernels::rng::Rng;
use expsoftmax_core::{EdgeScores, Graph, NodeScores, Problem};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let arg = |i: usize, d: usize| a.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (b, t, c) = (arg(1, 128), arg(2, 32), arg(3, 50));
    let shared = a.get(4).is_none_or(|s| s != "edge");
    let reps = arg(5, 20);
    let g = Graph::chain(t).unwrap();
    let mut rng = Rng::stream(0, &[]);
    let sn: Vec<f32> = (0..b * t * c)
        .map(|_| rng.uniform() as f32 * 2.0 - 1.0)
        .collect();
    let ee = if shared { 1 } else { t - 1 };
    let eb = if shared { 1 } else { b };
    let se: Vec<f32> = (0..eb * ee * c * c)
        .map(|_| rng.uniform() as f32 - 0.5)
        .collect();
    let y: Vec<i64> = (0..b * t)
        .map(|_| (rng.uniform() * c as f64) as i64)
        .collect();
    let pb = Problem::new(
        &g,
        NodeScores {
            data: &sn,
            batch: b,
            nodes: t,
            classes: c,
        },
        EdgeScores::tables(&se, eb, ee, c),
        b,
        None,
    )
    .unwrap();
    let mut times = Vec::new();
    for _ in 0..reps {
        let t0 = Instant::now();
        let r = exact::loss_and_grad(&pb, &y, None).unwrap();
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box(r);
    }
    times.sort_by(|x, y| x.partial_cmp(y).unwrap());
    println!(
        "loss_and_grad (B, T, C) = ({b}, {t}, {c}), {}: median {:.3} ms",
        if shared {
            "shared table"
        } else {
            "per-edge tables"
        },
        times[times.len() / 2]
    );
}
