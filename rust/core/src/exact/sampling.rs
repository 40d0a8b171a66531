//! Exact samples on a rooted forest: forward filtering (the sum-product upward pass),
//! backward sampling (roots from their belief, then each child given its parent's label).

use crate::kernels::logspace::exp_shifted;
use crate::kernels::real::Real;
use crate::kernels::rng::Rng;
use crate::model::forest::{Forest, ROOT};
use crate::model::scores::ItemEdges;

/// Draws one labelling of positions `0..active` given the upward beliefs `bel` left by
/// [`crate::exact::sumproduct::upward`], writing labels by node id. `w` is scratch of length C.
#[allow(clippy::too_many_arguments)]
pub fn sample_item<T: Real>(
    f: &Forest,
    edges: &ItemEdges<'_, T>,
    active: usize,
    bel: &[f64],
    c: usize,
    rng: &mut Rng,
    w: &mut [f64],
    lab: &mut [u32],
    labels: &mut [i64],
) {
    for p in 0..active {
        let b = &bel[p * c..(p + 1) * c];
        let par = f.parent[p];
        if par == ROOT {
            w.copy_from_slice(b);
        } else {
            let e = f.edge[p] as usize;
            let yp = lab[par as usize] as usize;
            for a in 0..c {
                let s = if f.child_first[p] {
                    edges.value(e, a, yp)
                } else {
                    edges.value(e, yp, a)
                };
                w[a] = b[a] + s;
            }
        }
        let m = w.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
        exp_shifted(w, m);
        lab[p] = rng.categorical(w) as u32;
        labels[f.node[p] as usize] = lab[p] as i64;
    }
}
