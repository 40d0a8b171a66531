//! Exact inference on graphs with cycles, through the graph's junction tree
//! ([`crate::model::junction`]): sum-product on the tree of clique tables for log Z and
//! marginals (the batch drivers then give loss and gradients for every edge-score form),
//! max-product for the MAP labelling, and forward filtering / backward sampling.
//!
//! A clique of `m` nodes holds a table of `C^m` log-domain entries, indexed
//! `Σ_i x_i C^i` over its nodes in ascending order. Each node score and edge table is added
//! to one clique that holds its nodes (its "home"); messages to the parent are indexed by
//! the separator's nodes in ascending order. Everything is in the log domain with max
//! shifts, so scores of any magnitude and −inf constraints are exact (a forbidden
//! labelling gets probability exactly 0). Work per item is sequential and in a fixed
//! order, so results do not depend on the number of threads.

use rayon::prelude::*;

use super::item_error;
use crate::error::{Error, Result};
use crate::inference::{EdgeSink, Inference, ItemInfo};
use crate::kernels::alloc;
use crate::kernels::real::Real;
use crate::kernels::rng::Rng;
use crate::model::graph::Graph;
use crate::model::junction::{JunctionTree, MAX_CLIQUE};
use crate::model::scores::Problem;

/// `graph`'s junction tree when its largest clique table for `c` classes has at most
/// `max_states` entries; otherwise an error that says what it would take and what to do.
pub fn fits(graph: &Graph, c: usize, max_states: u128) -> Result<&JunctionTree> {
    let jt = graph
        .junction_tree()
        .map_err(|size| too_large(size, None, c, max_states))?;
    let states = jt.max_states(c);
    if states > max_states {
        return Err(too_large(jt.width() + 1, Some(states), c, max_states));
    }
    Ok(jt)
}

/// One clique's layout for a given number of classes.
struct Clique {
    /// Offset of its table in the per-item buffer, and its size `C^m`.
    at: usize,
    size: usize,
    /// `C^i` for each position.
    stride: Vec<usize>,
    parent: Option<usize>,
    /// Offset of its message to the parent in the message buffer, and the separator's
    /// table size `C^s` (1 for a root).
    msg_at: usize,
    sep_size: usize,
    /// Entry → separator index (empty for a root).
    up: Vec<u32>,
    /// The parent's entry → this clique's separator index.
    in_parent: Vec<u32>,
    /// Entries grouped by separator index (`size / sep_size` per group, ascending).
    by_sep: Vec<u32>,
    children: Vec<usize>,
    /// Node scores added here: (node, position).
    nodes: Vec<(usize, usize)>,
    /// Edge tables added here: (edge, position of its first node, of its second).
    edges: Vec<(usize, usize, usize)>,
}

/// The junction tree of a graph laid out for `C` classes.
pub struct Junction {
    c: usize,
    cliques: Vec<Clique>,
    /// Per-item buffer sizes: all clique tables, all messages.
    table_len: usize,
    msg_len: usize,
}

/// Largest table (entries per clique) allowed by default.
pub const DEFAULT_MAX_STATES: u128 = 1 << 22;

impl Junction {
    /// Lays out `graph`'s junction tree for `c` classes, refusing trees whose largest
    /// clique table exceeds `max_states` entries with an error that says what to do.
    pub fn new(graph: &Graph, c: usize, max_states: u128) -> Result<Junction> {
        Ok(Self::layout(graph, fits(graph, c, max_states)?, c))
    }

    fn layout(graph: &Graph, jt: &JunctionTree, c: usize) -> Junction {
        let k = jt.cliques.len();
        let mut cliques: Vec<Clique> = Vec::with_capacity(k);
        let (mut table_len, mut msg_len) = (0, 0);
        for (i, vars) in jt.cliques.iter().enumerate() {
            let m = vars.len();
            let stride: Vec<usize> = (0..m).map(|p| c.pow(p as u32)).collect();
            let size = c.pow(m as u32);
            let parent = jt.parent[i];
            let sep: Vec<(usize, usize)> = match parent {
                // (position here, position in the parent) of each separator node.
                Some(p) => vars
                    .iter()
                    .enumerate()
                    .filter_map(|(a, v)| jt.cliques[p].binary_search(v).ok().map(|b| (a, b)))
                    .collect(),
                None => Vec::new(),
            };
            let sep_size = c.pow(sep.len() as u32);
            let index = |digits: &[usize], pick: &dyn Fn(&(usize, usize)) -> usize| {
                sep.iter()
                    .enumerate()
                    .map(|(j, s)| digits[pick(s)] * c.pow(j as u32))
                    .sum::<usize>() as u32
            };
            let mut up = Vec::new();
            let mut in_parent = Vec::new();
            if let Some(p) = parent {
                up.reserve(size);
                for_each_entry(m, c, |_, d| up.push(index(d, &|s| s.0)));
                in_parent.reserve(c.pow(jt.cliques[p].len() as u32));
                for_each_entry(jt.cliques[p].len(), c, |_, d| {
                    in_parent.push(index(d, &|s| s.1))
                });
            }
            let mut by_sep: Vec<u32> = (0..size as u32).collect();
            if parent.is_some() {
                by_sep.sort_by_key(|&e| (up[e as usize], e));
            }
            cliques.push(Clique {
                at: table_len,
                size,
                stride,
                parent,
                msg_at: msg_len,
                sep_size,
                up,
                in_parent,
                by_sep,
                children: Vec::new(),
                nodes: Vec::new(),
                edges: Vec::new(),
            });
            table_len += size;
            msg_len += sep_size;
        }
        for i in 0..k {
            if let Some(p) = jt.parent[i] {
                cliques[p].children.push(i);
            }
        }
        let position = |kk: usize, v: u32| {
            jt.cliques[kk]
                .binary_search(&v)
                .expect("a home clique holds its node")
        };
        for (v, &h) in jt.node_home.iter().enumerate() {
            cliques[h].nodes.push((v, position(h, v as u32)));
        }
        for (e, (&h, &[a, b])) in jt.edge_home.iter().zip(graph.edges()).enumerate() {
            cliques[h].edges.push((e, position(h, a), position(h, b)));
        }
        Junction {
            c,
            cliques,
            table_len,
            msg_len,
        }
    }

    /// Refuses per-item buffers (`items` at once) that cannot be had.
    fn check_memory(&self, items: usize) -> Result<()> {
        alloc::check(
            "junction-tree clique tables",
            &[items, self.table_len + self.msg_len],
            8,
        )?;
        Ok(())
    }

    /// Clique potentials of item `b`: node scores and edge tables added at their homes.
    fn potentials<T: Real>(&self, pb: &Problem<'_, T>, b: usize, tab: &mut [f64]) {
        let c = self.c;
        let (node, es) = (pb.node.item(b), pb.edge.item(b));
        let mut pair = vec![0.0; c * c];
        for k in &self.cliques {
            let t = &mut tab[k.at..k.at + k.size];
            t.iter_mut().for_each(|x| *x = 0.0);
            for &(v, p) in &k.nodes {
                let th = &node[v * c..(v + 1) * c];
                add_along(t, k.stride[p], c, |x| th[x].to_f64());
            }
            for &(e, pa, pb2) in &k.edges {
                es.raw(e, false, &mut pair);
                let (sa, sb) = (k.stride[pa], k.stride[pb2]);
                for (idx, x) in t.iter_mut().enumerate() {
                    let (a, bb) = ((idx / sa) % c, (idx / sb) % c);
                    *x += pair[a * c + bb];
                }
            }
        }
    }

    /// Upward pass with `reduce` (log-sum-exp for sum-product, max for max-product):
    /// leaves each clique's table plus its children's messages in `tab` and the messages in
    /// `msg`; returns log Z (or the best score), summed over components.
    fn upward(&self, tab: &mut [f64], msg: &mut [f64], max_product: bool) -> Result<f64> {
        let mut total = 0.0;
        for k in &self.cliques {
            let t = &mut tab[k.at..k.at + k.size];
            for &ch in &k.children {
                let child = &self.cliques[ch];
                let m = &msg[child.msg_at..child.msg_at + child.sep_size];
                for (x, &s) in t.iter_mut().zip(&child.in_parent) {
                    *x += m[s as usize];
                }
            }
            match k.parent {
                Some(_) => {
                    let g = k.size / k.sep_size;
                    for (s, group) in k.by_sep.chunks_exact(g).enumerate() {
                        msg[k.msg_at + s] =
                            reduce(group.iter().map(|&e| t[e as usize]), max_product);
                    }
                }
                None => {
                    let z = reduce(t.iter().copied(), max_product);
                    if z == f64::NEG_INFINITY {
                        return Err(infeasible());
                    }
                    total += z;
                }
            }
        }
        Ok(total)
    }

    /// After [`Self::upward`], turns `tab` into clique marginals (probabilities).
    fn downward(&self, tab: &mut [f64], msg: &[f64], down: &mut Vec<f64>) {
        let mut root_z = vec![0.0; self.cliques.len()];
        for (i, k) in self.cliques.iter().enumerate().rev() {
            match k.parent {
                None => root_z[i] = reduce(tab[k.at..k.at + k.size].iter().copied(), false),
                Some(p) => {
                    root_z[i] = root_z[p];
                    let par = &self.cliques[p];
                    // The parent's message to k: its full belief summed within each
                    // separator state, with k's own message divided out.
                    down.clear();
                    down.resize(k.sep_size, f64::NEG_INFINITY);
                    let pt = &tab[par.at..par.at + par.size];
                    let mut mx = vec![f64::NEG_INFINITY; k.sep_size];
                    for (&x, &s) in pt.iter().zip(&k.in_parent) {
                        mx[s as usize] = mx[s as usize].max(x);
                    }
                    let mut sum = vec![0.0; k.sep_size];
                    for (&x, &s) in pt.iter().zip(&k.in_parent) {
                        let m = mx[s as usize];
                        if m > f64::NEG_INFINITY {
                            sum[s as usize] += (x - m).exp();
                        }
                    }
                    for s in 0..k.sep_size {
                        let own = msg[k.msg_at + s];
                        if mx[s] > f64::NEG_INFINITY && own > f64::NEG_INFINITY {
                            down[s] = mx[s] + sum[s].ln() - own;
                        }
                    }
                    let t = &mut tab[k.at..k.at + k.size];
                    for (x, &s) in t.iter_mut().zip(&k.up) {
                        *x += down[s as usize];
                    }
                }
            }
        }
        // Probabilities, normalised per component (every clique of a component shares
        // its root's log Z).
        for (i, k) in self.cliques.iter().enumerate() {
            let z = root_z[i];
            for x in &mut tab[k.at..k.at + k.size] {
                *x = if *x == f64::NEG_INFINITY {
                    0.0
                } else {
                    (*x - z).exp()
                };
            }
        }
    }
}

/// Adds `f(x)` to every entry of `t` whose digit at stride `stride` is `x`.
#[inline]
fn add_along(t: &mut [f64], stride: usize, c: usize, f: impl Fn(usize) -> f64) {
    let block = stride * c;
    let vals: Vec<f64> = (0..c).map(f).collect();
    for chunk in t.chunks_exact_mut(block) {
        for (x, run) in chunk.chunks_exact_mut(stride).enumerate() {
            run.iter_mut().for_each(|y| *y += vals[x]);
        }
    }
}

/// Sums of `p` grouped by the digit at `stride`: the marginal of that position.
fn marginal_along(p: &[f64], stride: usize, c: usize, out: &mut [f64]) {
    out.iter_mut().for_each(|o| *o = 0.0);
    for chunk in p.chunks_exact(stride * c) {
        for (x, run) in chunk.chunks_exact(stride).enumerate() {
            out[x] += run.iter().sum::<f64>();
        }
    }
}

/// log-sum-exp (or max) of `xs`, −inf for none or all −inf.
fn reduce(xs: impl Iterator<Item = f64> + Clone, max_product: bool) -> f64 {
    let m = xs.clone().fold(f64::NEG_INFINITY, f64::max);
    if max_product || m == f64::NEG_INFINITY {
        return m;
    }
    m + xs.map(|x| (x - m).exp()).sum::<f64>().ln()
}

/// Calls `f(index, digits)` for every entry of a table of `m` positions, in index order.
fn for_each_entry(m: usize, c: usize, mut f: impl FnMut(usize, &[usize])) {
    let mut d = vec![0usize; m];
    let size = c.pow(m as u32);
    for idx in 0..size {
        f(idx, &d);
        for digit in d.iter_mut() {
            *digit += 1;
            if *digit < c {
                break;
            }
            *digit = 0;
        }
    }
}

fn infeasible() -> Error {
    Error::Infeasible(
        "the scores forbid every labelling (all have score -inf), so log Z = -inf".into(),
    )
}

fn too_large(clique: usize, states: Option<u128>, c: usize, max_states: u128) -> Error {
    let table = match states {
        Some(s) => format!("a table of C^{clique} = {s} entries per item"),
        None => format!("more than {MAX_CLIQUE} nodes: no table that large can be stored"),
    };
    Error::NotForest(format!(
        "exact inference on this graph (it has cycles) needs a junction tree whose largest \
         clique has {clique} nodes: {table} with C = {c}, over max_states = {max_states}. \
         Raise max_states (8 bytes an entry, per thread) if the memory is there, or use a \
         loopy method: method='bp', method='trw', method='mean_field' or method='gibbs'"
    ))
}

/// Per-thread scratch: the clique tables and messages of one item.
pub struct JunctionWs {
    tab: Vec<f64>,
    msg: Vec<f64>,
    down: Vec<f64>,
    marg: Vec<f64>,
    pair: Vec<f64>,
}

impl<T: Real> Inference<T> for Junction {
    type Ws = JunctionWs;

    fn workspace(&self, _pb: &Problem<'_, T>) -> JunctionWs {
        JunctionWs {
            tab: vec![0.0; self.table_len],
            msg: vec![0.0; self.msg_len],
            down: Vec::new(),
            marg: vec![0.0; self.c],
            pair: vec![0.0; self.c * self.c],
        }
    }

    fn item<S: EdgeSink>(
        &self,
        pb: &Problem<'_, T>,
        ws: &mut JunctionWs,
        b: usize,
        node_sink: &mut dyn FnMut(usize, &[f64]),
        edges: &mut S,
    ) -> Result<ItemInfo> {
        let c = self.c;
        self.potentials(pb, b, &mut ws.tab);
        let log_z = self.upward(&mut ws.tab, &mut ws.msg, false)?;
        self.downward(&mut ws.tab, &ws.msg, &mut ws.down);
        for k in &self.cliques {
            let p = &ws.tab[k.at..k.at + k.size];
            for &(v, pos) in &k.nodes {
                marginal_along(p, k.stride[pos], c, &mut ws.marg);
                node_sink(v, &ws.marg);
            }
            for &(e, pa, pb2) in &k.edges {
                ws.pair.iter_mut().for_each(|x| *x = 0.0);
                let (sa, sb) = (k.stride[pa], k.stride[pb2]);
                for (idx, &x) in p.iter().enumerate() {
                    ws.pair[((idx / sa) % c) * c + (idx / sb) % c] += x;
                }
                let slot = edges.slot(e);
                if S::ACCUMULATE {
                    slot.iter_mut().zip(&ws.pair).for_each(|(o, &x)| *o += x);
                } else {
                    slot.copy_from_slice(&ws.pair);
                }
                edges.commit(e);
            }
        }
        Ok(ItemInfo::exact(log_z))
    }
}

impl Junction {
    /// The labels of every node from one chosen entry per clique (consistent on
    /// separators by construction).
    fn labels(&self, chosen: &[usize], out: &mut [i64]) {
        for (k, &idx) in self.cliques.iter().zip(chosen) {
            for &(v, pos) in &k.nodes {
                out[v] = ((idx / k.stride[pos]) % self.c) as i64;
            }
        }
    }

    /// Top-down choice of one entry per clique: the root's by `pick(all entries)`, each
    /// child's among the entries that agree with its parent's choice.
    fn choose(
        &self,
        tab: &[f64],
        mut pick: impl FnMut(&[f64], &mut dyn Iterator<Item = usize>) -> usize,
    ) -> Vec<usize> {
        let mut chosen = vec![0usize; self.cliques.len()];
        for (i, k) in self.cliques.iter().enumerate().rev() {
            let t = &tab[k.at..k.at + k.size];
            chosen[i] = match k.parent {
                None => pick(t, &mut (0..k.size)),
                Some(p) => {
                    let s = self.cliques[i].in_parent[chosen[p]] as usize;
                    let g = k.size / k.sep_size;
                    let group = &k.by_sep[s * g..(s + 1) * g];
                    pick(t, &mut group.iter().map(|&e| e as usize))
                }
            };
        }
        chosen
    }

    /// MAP labellings `(B, I)` by max-product on the tree (ties to the first entry).
    pub fn decode<T: Real>(&self, pb: &Problem<'_, T>) -> Result<Vec<i64>> {
        let n = pb.graph.num_nodes();
        self.check_memory(rayon::current_num_threads())?;
        let mut out = vec![0i64; pb.batch * n];
        out.par_chunks_mut(n.max(1)).enumerate().try_for_each_init(
            || (vec![0.0; self.table_len], vec![0.0; self.msg_len]),
            |(tab, msg), (b, row)| {
                pb.stop.check()?;
                self.potentials(pb, b, tab);
                self.upward(tab, msg, true)
                    .map_err(|e| item_error(e, b, pb.batch))?;
                let chosen = self.choose(tab, |t, entries| {
                    let mut best = (f64::NEG_INFINITY, usize::MAX);
                    for e in entries {
                        if t[e] > best.0 || best.1 == usize::MAX {
                            best = (t[e], e);
                        }
                    }
                    best.1
                });
                self.labels(&chosen, row);
                Ok(())
            },
        )?;
        Ok(out)
    }

    /// `num_samples` exact samples per item `(num_samples, B, I)`: forward filtering (the
    /// sum-product upward pass), then each root entry from its belief and each child's
    /// given its parent's, with the stream keyed by `(seed, b, s)`.
    pub fn sample<T: Real>(
        &self,
        pb: &Problem<'_, T>,
        num_samples: usize,
        seed: u64,
    ) -> Result<Vec<i64>> {
        let (n, bsz) = (pb.graph.num_nodes(), pb.batch);
        self.check_memory(bsz)?;
        let mut bels: Vec<Vec<f64>> = (0..bsz).map(|_| Vec::new()).collect();
        bels.par_iter_mut().enumerate().try_for_each(|(b, tab)| {
            pb.stop.check()?;
            tab.resize(self.table_len, 0.0);
            let mut msg = vec![0.0; self.msg_len];
            self.potentials(pb, b, tab);
            self.upward(tab, &mut msg, false)
                .map_err(|e| item_error(e, b, bsz))?;
            Ok::<(), Error>(())
        })?;
        let mut out = vec![0i64; num_samples * bsz * n];
        out.par_chunks_mut(n.max(1)).enumerate().try_for_each_init(
            Vec::new,
            |w: &mut Vec<f64>, (k, row)| {
                pb.stop.check()?;
                let (s, b) = (k / bsz, k % bsz);
                let mut rng = Rng::stream(seed, &[b as u64, s as u64]);
                let chosen = self.choose(&bels[b], |t, entries| {
                    let idx: Vec<usize> = entries.collect();
                    let m = idx.iter().map(|&e| t[e]).fold(f64::NEG_INFINITY, f64::max);
                    w.clear();
                    w.extend(idx.iter().map(|&e| {
                        if t[e] == f64::NEG_INFINITY {
                            0.0
                        } else {
                            (t[e] - m).exp()
                        }
                    }));
                    idx[rng.categorical(w)]
                });
                self.labels(&chosen, row);
                Ok::<(), Error>(())
            },
        )?;
        Ok(out)
    }
}
