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
use super::sumproduct::infeasible;
use crate::error::{Error, Result};
use crate::inference::{EdgeSink, Inference, ItemInfo};
use crate::interrupt::Stop;
use crate::kernels::alloc;
use crate::kernels::logspace::{exp, ln_pos};
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
    /// The separator index of an entry is linear in its digits: `Σ_p digit_p · up[p]`
    /// over this clique's positions (`up[p] = C^j` for the separator's `j`-th node, else
    /// 0), and `Σ_q digit_q · in_parent[q]` over the parent's positions. Walking a table in
    /// index order keeps that sum with O(1) work per entry (no stored maps: at 10 x 100,
    /// C = 3, they would take 2 GB).
    up: Vec<usize>,
    in_parent: Vec<usize>,
    /// This table's entries grouped by its separator state (upward messages, choices).
    groups: Groups,
    /// The parent's entries grouped by this clique's separator state (downward message).
    parent_groups: Groups,
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
        let jt = fits(graph, c, max_states)?;
        // One set of tables per worker thread, plus the layout's offsets: refused up front
        // (MemoryError) rather than aborting in an allocation.
        let total = usize::try_from(jt.total_states(c)).unwrap_or(usize::MAX);
        alloc::check(
            "junction-tree clique tables",
            &[rayon::current_num_threads() + 1, total],
            8,
        )?;
        Ok(Self::layout(graph, jt, c))
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
            let mut up = vec![0usize; m];
            let mut in_parent = vec![0usize; parent.map_or(0, |p| jt.cliques[p].len())];
            for (j, &(a, b)) in sep.iter().enumerate() {
                up[a] = c.pow(j as u32);
                in_parent[b] = c.pow(j as u32);
            }
            let (groups, parent_groups) = match parent {
                Some(p) => (
                    Groups::new(&sep.iter().map(|&(a, _)| a).collect::<Vec<_>>(), m, c),
                    Groups::new(
                        &sep.iter().map(|&(_, b)| b).collect::<Vec<_>>(),
                        jt.cliques[p].len(),
                        c,
                    ),
                ),
                // A root is never grouped: its entries are all taken together.
                None => (Groups::new(&[], 0, c), Groups::new(&[], 0, c)),
            };
            cliques.push(Clique {
                at: table_len,
                size,
                stride,
                parent,
                msg_at: msg_len,
                sep_size,
                up,
                in_parent,
                groups,
                parent_groups,
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
    fn potentials<T: Real>(&self, pb: &Problem<'_, T>, b: usize, tab: &mut [f64]) -> Result<()> {
        let c = self.c;
        let (node, es) = (pb.node.item(b), pb.edge.item(b));
        let mut pair = vec![0.0; c * c];
        for k in &self.cliques {
            pb.stop.check()?;
            let t = &mut tab[k.at..k.at + k.size];
            t.iter_mut().for_each(|x| *x = 0.0);
            for &(v, p) in &k.nodes {
                let th = &node[v * c..(v + 1) * c];
                add_along(t, k.stride[p], c, |x| th[x].to_f64());
            }
            for &(e, pa, pb2) in &k.edges {
                es.raw(e, false, &mut pair);
                for_each_pair_run(k.size, k.stride[pa], k.stride[pb2], c, |run, a, bb| {
                    let v = pair[a * c + bb];
                    t[run].iter_mut().for_each(|x| *x += v);
                });
            }
        }
        Ok(())
    }

    /// Upward pass, sum-product (log-sum-exp) or max-product: leaves each clique's table
    /// plus its children's messages in `tab` and the messages in `msg`; returns log Z (or
    /// the best score), summed over components.
    fn upward(
        &self,
        tab: &mut [f64],
        msg: &mut [f64],
        max_product: bool,
        stop: &Stop,
    ) -> Result<f64> {
        let c = self.c;
        let mut total = 0.0;
        for k in &self.cliques {
            // A large tree takes seconds per item: stay interruptible.
            stop.check()?;
            let t = &mut tab[k.at..k.at + k.size];
            for &ch in &k.children {
                let child = &self.cliques[ch];
                let m = &msg[child.msg_at..child.msg_at + child.sep_size];
                walk(t.len(), c, &child.in_parent, |idx, s| t[idx] += m[s]);
            }
            match k.parent {
                Some(_) => {
                    let m = &mut msg[k.msg_at..k.msg_at + k.sep_size];
                    k.groups.reduce(t, m, max_product);
                }
                None => {
                    let z = reduce(t, max_product);
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
    fn downward(
        &self,
        tab: &mut [f64],
        msg: &[f64],
        down: &mut Vec<f64>,
        stop: &Stop,
    ) -> Result<()> {
        let c = self.c;
        let mut root_z = vec![0.0; self.cliques.len()];
        for (i, k) in self.cliques.iter().enumerate().rev() {
            stop.check()?;
            match k.parent {
                None => root_z[i] = reduce(&tab[k.at..k.at + k.size], false),
                Some(p) => {
                    root_z[i] = root_z[p];
                    let par = &self.cliques[p];
                    // The parent's message to k: its full belief summed within each
                    // separator state, with k's own message divided out.
                    down.clear();
                    down.resize(k.sep_size, f64::NEG_INFINITY);
                    k.parent_groups
                        .reduce(&tab[par.at..par.at + par.size], down, false);
                    for (d, &own) in down.iter_mut().zip(&msg[k.msg_at..k.msg_at + k.sep_size]) {
                        *d = if *d > f64::NEG_INFINITY && own > f64::NEG_INFINITY {
                            *d - own
                        } else {
                            f64::NEG_INFINITY
                        };
                    }
                    let t = &mut tab[k.at..k.at + k.size];
                    walk(t.len(), c, &k.up, |idx, s| t[idx] += down[s]);
                }
            }
        }
        // Probabilities, normalised per component (every clique of a component shares
        // its root's log Z).
        for (i, k) in self.cliques.iter().enumerate() {
            let z = root_z[i];
            for x in &mut tab[k.at..k.at + k.size] {
                *x = exp(*x - z);
            }
        }
        Ok(())
    }
}

/// A table's entries grouped by the state of some of its positions (a separator): group
/// `s` is `{base(s) + o : o in offsets}`, where `base(s)` places the separator's digits of
/// `s` at their strides and `offsets` ranges over every value of the other positions.
struct Groups {
    /// Stride in the table of the separator's `j`-th node.
    strides: Vec<usize>,
    offsets: Vec<usize>,
    c: usize,
}

impl Groups {
    /// Groups of a table of `m` positions by the digits at positions `sep` (in the
    /// separator's order).
    fn new(sep: &[usize], m: usize, c: usize) -> Groups {
        let strides: Vec<usize> = sep.iter().map(|&p| c.pow(p as u32)).collect();
        let mut offsets = vec![0usize];
        for p in (0..m).filter(|p| !sep.contains(p)) {
            let st = c.pow(p as u32);
            offsets = (0..c)
                .flat_map(|x| offsets.iter().map(move |&o| o + x * st))
                .collect();
        }
        Groups {
            strides,
            offsets,
            c,
        }
    }

    /// The first entry of group `s`.
    fn base(&self, mut s: usize) -> usize {
        let mut b = 0;
        for &st in &self.strides {
            b += (s % self.c) * st;
            s /= self.c;
        }
        b
    }

    /// Calls `f(s, base(s))` for every separator state in order (bases by an odometer).
    #[inline(always)]
    fn for_each_base(&self, mut f: impl FnMut(usize, usize)) {
        let (c, n) = (self.c, self.strides.len());
        let mut d = [0usize; MAX_CLIQUE];
        let mut base = 0;
        for s in 0..c.pow(n as u32) {
            f(s, base);
            for j in 0..n {
                d[j] += 1;
                base += self.strides[j];
                if d[j] < c {
                    break;
                }
                d[j] = 0;
                base -= c * self.strides[j];
            }
        }
    }

    /// `out[s]` = log-sum-exp (or max) of group `s` of `t`; −inf when all are −inf.
    fn reduce(&self, t: &[f64], out: &mut [f64], max_product: bool) {
        let off = &self.offsets;
        self.for_each_base(|s, base| {
            let m = off
                .iter()
                .fold(f64::NEG_INFINITY, |m, &o| m.max(t[base + o]));
            out[s] = if max_product || m == f64::NEG_INFINITY {
                m
            } else {
                // The sum is at least 1 (the largest term is exp(0)).
                m + ln_pos(off.iter().map(|&o| exp(t[base + o] - m)).sum::<f64>())
            };
        });
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

/// Calls `f(run, a, b)` for every run of consecutive entries of a table of `size` entries
/// whose digits at strides `sa` and `sb` (two different positions) are `a` and `b`: the
/// entries a pairwise factor touches with one value, without a division per entry.
#[inline]
fn for_each_pair_run(
    size: usize,
    sa: usize,
    sb: usize,
    c: usize,
    mut f: impl FnMut(std::ops::Range<usize>, usize, usize),
) {
    let (lo, hi, swap) = if sa < sb {
        (sa, sb, false)
    } else {
        (sb, sa, true)
    };
    for top in (0..size).step_by(hi * c) {
        for xh in 0..c {
            let base_h = top + xh * hi;
            for mid in (0..hi).step_by(lo * c) {
                for xl in 0..c {
                    let start = base_h + mid + xl * lo;
                    let (a, b) = if swap { (xh, xl) } else { (xl, xh) };
                    f(start..start + lo, a, b);
                }
            }
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
fn reduce(xs: &[f64], max_product: bool) -> f64 {
    let m = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max_product || m == f64::NEG_INFINITY {
        return m;
    }
    m + xs.iter().map(|&x| exp(x - m)).sum::<f64>().ln()
}

/// `Σ_p digit_p(idx) · weights[p]` for one entry.
fn walk_one(mut idx: usize, c: usize, weights: &[usize]) -> usize {
    let mut v = 0;
    for &w in weights {
        v += (idx % c) * w;
        idx /= c;
    }
    v
}

/// Calls `f(index, Σ_p digit_p · weights[p])` for every entry of a table of `size` entries
/// (`weights.len()` positions), in index order, updating the sum as the digits count up.
#[inline(always)]
fn walk(size: usize, c: usize, weights: &[usize], mut f: impl FnMut(usize, usize)) {
    let m = weights.len();
    let mut d = [0usize; MAX_CLIQUE];
    let mut v = 0usize;
    // The lowest position changes fastest: handle it as an inner run.
    let (w0, rest) = match weights.split_first() {
        Some((&w0, rest)) => (w0, rest),
        None => {
            f(0, 0);
            return;
        }
    };
    let mut idx = 0;
    while idx < size {
        for x in 0..c {
            f(idx + x, v + x * w0);
        }
        idx += c;
        for p in 0..m - 1 {
            d[p] += 1;
            v += rest[p];
            if d[p] < c {
                break;
            }
            d[p] = 0;
            v -= c * rest[p];
        }
    }
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
        self.potentials(pb, b, &mut ws.tab)?;
        let log_z = self.upward(&mut ws.tab, &mut ws.msg, false, pb.stop)?;
        self.downward(&mut ws.tab, &ws.msg, &mut ws.down, pb.stop)?;
        for k in &self.cliques {
            let p = &ws.tab[k.at..k.at + k.size];
            for &(v, pos) in &k.nodes {
                marginal_along(p, k.stride[pos], c, &mut ws.marg);
                node_sink(v, &ws.marg);
            }
            for &(e, pa, pb2) in &k.edges {
                ws.pair.iter_mut().for_each(|x| *x = 0.0);
                let pair = &mut ws.pair;
                for_each_pair_run(k.size, k.stride[pa], k.stride[pb2], c, |run, a, bb| {
                    pair[a * c + bb] += p[run].iter().sum::<f64>();
                });
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

    /// Top-down choice of one entry per clique: the root's by `pick(table, entries)` over
    /// all entries, each child's among the entries that agree with its parent's choice on
    /// the separator.
    fn choose(
        &self,
        tab: &[f64],
        mut pick: impl FnMut(&[f64], &mut dyn Iterator<Item = usize>) -> usize,
    ) -> Vec<usize> {
        let c = self.c;
        let mut chosen = vec![0usize; self.cliques.len()];
        for (i, k) in self.cliques.iter().enumerate().rev() {
            let t = &tab[k.at..k.at + k.size];
            chosen[i] = match k.parent {
                None => pick(t, &mut (0..k.size)),
                Some(p) => {
                    // The separator state chosen in the parent, then every entry of this
                    // clique that agrees with it.
                    let st = walk_one(chosen[p], c, &k.in_parent);
                    let base = k.groups.base(st);
                    pick(t, &mut k.groups.offsets.iter().map(|&o| base + o))
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
                self.potentials(pb, b, tab)?;
                self.upward(tab, msg, true, pb.stop)
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
            self.potentials(pb, b, tab)?;
            self.upward(tab, &mut msg, false, pb.stop)
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
                            exp(t[e] - m)
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
