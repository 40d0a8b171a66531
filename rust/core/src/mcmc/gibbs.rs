//! Chromatic Gibbs sampling: marginals with Monte Carlo error bars, and log Z by annealed
//! importance sampling (AIS).
//!
//! Nodes of one colour (greedy colouring; the checkerboard on grids) are conditionally
//! independent given the others, so a sweep updates one colour class at a time, in fixed
//! chunks of nodes that may run in parallel. Every chunk draws from its own random stream
//! keyed by (seed, item, chain, sweep, colour, chunk) — never by thread — so the same seed
//! gives bit-identical samples whatever the number of threads. Chains of one item run in
//! parallel too.
//!
//! Error bars: each chain's kept samples are cut into `BATCHES` consecutive batches; the
//! standard error of a marginal is the standard deviation of the batch means over
//! `sqrt(#batches)` (batch means, which accounts for autocorrelation when batches are
//! long). `rhat` is the Gelman–Rubin ratio over chains, maximised over nodes and labels.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::inference::{
    self, no_lengths, Decoded, EdgeSink, ErrorBars, Family, Inference, Inferred, ItemInfo,
    LossGrad, Marginals,
};
use crate::kernels::alloc;
use crate::kernels::logspace::{exp_shifted, logsumexp, max};
use crate::kernels::real::Real;
use crate::kernels::rng::Rng;
use crate::mcmc::grid::{Counts, GridSweep};
use crate::model::adjacency::Adjacency;
use crate::model::scores::{ItemEdges, Problem};

/// Batches per chain for batch-means error bars.
pub const BATCHES: usize = 5;
const NODE_CHUNK: usize = 1024;
const PARALLEL_NODES: usize = 4096;

#[derive(Debug, Clone, PartialEq)]
pub struct GibbsOptions {
    /// Kept sweeps per chain.
    pub num_samples: usize,
    pub burn_in: usize,
    /// Keep every `thin`-th sweep.
    pub thin: usize,
    pub num_chains: usize,
    pub seed: u64,
    /// Start chains at the gold labelling (needs labels) instead of random labels.
    pub init_gold: bool,
    /// AIS temperatures (0 skips log Z) and runs.
    pub ais_steps: usize,
    pub ais_runs: usize,
}

impl GibbsOptions {
    pub fn check(&self) -> Result<()> {
        if self.num_samples == 0 || self.num_chains == 0 || self.thin == 0 {
            return Err(Error::Value(
                "num_samples, num_chains and thin must be at least 1".into(),
            ));
        }
        if self.ais_steps > 0 && self.ais_runs == 0 {
            return Err(Error::Value("ais_runs must be at least 1".into()));
        }
        Ok(())
    }
}

/// A table shared by every edge, in f64, both orientations, read row by row.
struct SharedTab {
    /// `t[y * c + x] = θ(y, x)`: rows for a neighbour that is the edge's first node.
    t: Vec<f64>,
    /// `tt[y * c + x] = θ(x, y)`: rows for a neighbour that is the edge's second node.
    tt: Vec<f64>,
}

/// Conditional scores of node `v` given the current labels: `a[x] = θ_v[x] + Σ θ_e(x, y_w)`,
/// with edge scores multiplied by `beta` (AIS).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn conditional<T: Real>(
    adj: &Adjacency,
    v: usize,
    node: &[T],
    edges: &ItemEdges<'_, T>,
    shared: Option<&SharedTab>,
    lab: &[u32],
    beta: f64,
    a: &mut [f64],
) {
    let c = a.len();
    for (x, ax) in a.iter_mut().enumerate() {
        *ax = node[v * c + x].to_f64();
    }
    if beta == 0.0 {
        return;
    }
    for k in adj.start[v]..adj.start[v + 1] {
        let (e, w) = (adj.edge[k] as usize, adj.nbr[k] as usize);
        let yw = lab[w] as usize;
        if let Some(st) = shared {
            let row = if adj.first[k] { &st.tt } else { &st.t };
            for (ax, &t) in a.iter_mut().zip(&row[yw * c..(yw + 1) * c]) {
                *ax += if t == f64::NEG_INFINITY { t } else { beta * t };
            }
            continue;
        }
        for (x, ax) in a.iter_mut().enumerate() {
            let t = if adj.first[k] {
                edges.value(e, x, yw)
            } else {
                edges.value(e, yw, x)
            };
            // beta * (-inf) stays -inf for beta > 0.
            *ax += if t == f64::NEG_INFINITY { t } else { beta * t };
        }
    }
}

/// One chromatic sweep at inverse temperature `beta` on the edges.
#[allow(clippy::too_many_arguments)]
fn sweep<T: Real>(
    adj: &Adjacency,
    n: usize,
    node: &[T],
    edges: &ItemEdges<'_, T>,
    lab: &mut [u32],
    beta: f64,
    seed: u64,
    key: [u64; 3],
    c: usize,
) -> Result<()> {
    let shared = edges.shared().then(|| {
        let (mut t, mut tt) = (vec![0.0; c * c], vec![0.0; c * c]);
        edges.raw(0, false, &mut t);
        edges.raw(0, true, &mut tt);
        SharedTab { t, tt }
    });
    let shared = shared.as_ref();
    for (cl, class) in adj.colours.iter().enumerate() {
        let chunks = class.len().div_ceil(NODE_CHUNK);
        let draw = |ch: usize, lab: &[u32], out: &mut Vec<(u32, u32)>| -> Result<()> {
            let mut rng = Rng::stream(seed, &[key[0], key[1], key[2], cl as u64, ch as u64]);
            let mut a = vec![0.0; c];
            for &v in &class[ch * NODE_CHUNK..((ch + 1) * NODE_CHUNK).min(class.len())] {
                conditional(adj, v as usize, node, edges, shared, lab, beta, &mut a);
                let m = max(&a);
                if m == f64::NEG_INFINITY {
                    return Err(Error::Infeasible(format!(
                        "Gibbs: every label of node {v} is forbidden given its neighbours' \
                         labels; the scores may forbid every labelling, or the chain started \
                         in a forbidden state"
                    )));
                }
                exp_shifted(&mut a, m);
                out.push((v, rng.categorical(&a) as u32));
            }
            Ok(())
        };
        // Nodes of one colour do not see each other, so drawing them all from the
        // current labels and then writing equals updating them one by one.
        if n >= PARALLEL_NODES {
            let frozen: &[u32] = lab;
            let updates: Vec<Vec<(u32, u32)>> = (0..chunks)
                .into_par_iter()
                .map(|ch| {
                    let mut out = Vec::new();
                    draw(ch, frozen, &mut out).map(|_| out)
                })
                .collect::<Result<_>>()?;
            for (v, x) in updates.into_iter().flatten() {
                lab[v as usize] = x;
            }
        } else {
            let mut out = Vec::new();
            for ch in 0..chunks {
                out.clear();
                draw(ch, lab, &mut out)?;
                for &(v, x) in &out {
                    lab[v as usize] = x;
                }
            }
        }
    }
    Ok(())
}

/// Edge part of the score, `Σ_e θ_e(y_i, y_j)`.
fn edge_energy<T: Real>(pb: &Problem<'_, T>, b: usize, lab: &[u32]) -> f64 {
    let es = pb.edge.item(b);
    pb.graph
        .edges()
        .iter()
        .enumerate()
        .map(|(e, &[i, j])| es.value(e, lab[i as usize] as usize, lab[j as usize] as usize))
        .sum()
}

/// The grid fast path for item `b` at edge temperature `beta > 0`, when the graph is a
/// grid.
fn grid_sweep<'a, T: Real>(pb: &Problem<'a, T>, b: usize, beta: f64) -> Option<GridSweep<'a, T>> {
    let (h, w) = pb.graph.grid_shape()?;
    Some(GridSweep::new(
        h,
        w,
        pb.node.item(b),
        &pb.edge.item(b),
        beta,
    ))
}

/// What a chain gathers from its kept sweeps.
#[derive(Clone, Copy, PartialEq)]
enum Collect {
    /// Node counts per batch and pair counts (marginals, error bars).
    Counts,
    /// The best-scoring labelling (decode).
    Best,
    /// Every kept labelling (sample).
    Keep,
}

/// What one chain gathers (empty where its [`Collect`] mode does not ask).
struct ChainStats {
    /// Node label counts per batch `(BATCHES, I, C)`.
    node: Vec<u32>,
    /// Pair counts `(E, C, C)`.
    pair: Vec<u32>,
    /// Best labelling seen and its score.
    best: (f64, Vec<u32>),
    /// Kept labellings, if asked for.
    kept: Vec<Vec<u32>>,
}

/// Runs one chain of item `b` (`fast`: the grid path's prepared factors).
#[allow(clippy::too_many_arguments)]
fn run_chain<T: Real>(
    pb: &Problem<'_, T>,
    adj: &Adjacency,
    b: usize,
    chain: usize,
    opts: &GibbsOptions,
    init: Option<&[i64]>,
    collect: Collect,
    fast: Option<&GridSweep<'_, T>>,
) -> Result<ChainStats> {
    let (n, c) = (pb.graph.num_nodes(), pb.classes());
    let (node, edges) = (pb.node.item(b), pb.edge.item(b));
    let mut lab: Vec<u32> = match init {
        Some(y) => y.iter().map(|&l| l as u32).collect(),
        None => {
            // Random start among each node's allowed labels (node scores > -inf).
            let mut rng = Rng::stream(opts.seed, &[b as u64, chain as u64, u64::MAX]);
            (0..n)
                .map(|v| {
                    let w: Vec<f64> = (0..c)
                        .map(|x| (node[v * c + x].to_f64() > f64::NEG_INFINITY) as u8 as f64)
                        .collect();
                    if w.iter().all(|&x| x == 0.0) {
                        0
                    } else {
                        rng.categorical(&w) as u32
                    }
                })
                .collect()
        }
    };
    let total = opts.burn_in + opts.num_samples * opts.thin;
    let per_batch = opts.num_samples.div_ceil(BATCHES);
    let counts = collect == Collect::Counts;
    let mut st = ChainStats {
        node: vec![0; if counts { BATCHES * n * c } else { 0 }],
        pair: vec![
            0;
            if counts {
                pb.graph.num_edges() * c * c
            } else {
                0
            }
        ],
        best: (f64::NEG_INFINITY, Vec::new()),
        kept: Vec::new(),
    };
    let mut kept = 0;
    // The fast sweep's one-byte pair counts (see `Counts`), moved into `st.pair` before
    // they can overflow and at the end.
    let mut small = vec![
        0u8;
        if counts && fast.is_some() {
            st.pair.len()
        } else {
            0
        }
    ];
    let mut in_small = 0;
    let flush = |total: &mut [u32], small: &mut [u8]| {
        for (t, s) in total.iter_mut().zip(small.iter_mut()) {
            *t += *s as u32;
            *s = 0;
        }
    };
    for s in 0..total {
        pb.stop.check()?;
        let key = [b as u64, chain as u64, s as u64];
        let keep = s >= opts.burn_in && (s - opts.burn_in + 1).is_multiple_of(opts.thin);
        let batch = (kept / per_batch).min(BATCHES - 1);
        match fast {
            // The fast sweep counts the labelling it leaves as it draws it.
            Some(f) if keep && counts => {
                let node = &mut st.node[batch * n * c..(batch + 1) * n * c];
                let pair = &mut small;
                f.sweep(&mut lab, opts.seed, key, Some(Counts { node, pair }))?;
                kept += 1;
                in_small += 1;
                if in_small == u8::MAX as usize {
                    flush(&mut st.pair, &mut small);
                    in_small = 0;
                }
                continue;
            }
            Some(f) => f.sweep(&mut lab, opts.seed, key, None)?,
            None => sweep(adj, n, node, &edges, &mut lab, 1.0, opts.seed, key, c)?,
        }
        if !keep {
            continue;
        }
        match collect {
            Collect::Counts => {
                for v in 0..n {
                    st.node[(batch * n + v) * c + lab[v] as usize] += 1;
                }
                for (e, &[i, j]) in pb.graph.edges().iter().enumerate() {
                    let (a, b) = (lab[i as usize] as usize, lab[j as usize] as usize);
                    st.pair[(e * c + a) * c + b] += 1;
                }
            }
            Collect::Best => {
                let score: f64 = (0..n)
                    .map(|v| node[v * c + lab[v] as usize].to_f64())
                    .sum::<f64>()
                    + edge_energy(pb, b, &lab);
                if st.best.1.is_empty() || score > st.best.0 {
                    st.best = (score, lab.clone());
                }
            }
            Collect::Keep => st.kept.push(lab.clone()),
        }
        kept += 1;
    }
    if in_small > 0 {
        flush(&mut st.pair, &mut small);
    }
    Ok(st)
}

/// AIS estimate of log Z and its standard error for item `b`: anneal the edge scores from
/// 0 to 1 over `ais_steps` temperatures, starting from exact samples of the node-only
/// model (whose log Z is `Σ_v logsumexp θ_v`), one Gibbs sweep per temperature.
fn ais<T: Real>(
    pb: &Problem<'_, T>,
    adj: &Adjacency,
    b: usize,
    opts: &GibbsOptions,
) -> Result<(f64, f64)> {
    let (n, c) = (pb.graph.num_nodes(), pb.classes());
    let node = pb.node.item(b);
    let mut tmp = vec![0.0; c];
    let mut log_z0 = 0.0;
    for v in 0..n {
        let row: Vec<f64> = node[v * c..(v + 1) * c]
            .iter()
            .map(|x| x.to_f64())
            .collect();
        log_z0 += logsumexp(&row, &mut tmp);
    }
    if log_z0 == f64::NEG_INFINITY {
        return Err(Error::Infeasible(
            "every label of some node is forbidden".into(),
        ));
    }
    let k = opts.ais_steps;
    let logw: Vec<f64> = (0..opts.ais_runs)
        .into_par_iter()
        .map(|run| -> Result<f64> {
            let key = (1u64 << 40) + run as u64;
            let mut rng = Rng::stream(opts.seed, &[b as u64, key, u64::MAX]);
            let mut lab: Vec<u32> = (0..n)
                .map(|v| {
                    let mut w: Vec<f64> = node[v * c..(v + 1) * c]
                        .iter()
                        .map(|x| x.to_f64())
                        .collect();
                    let m = max(&w);
                    exp_shifted(&mut w, m);
                    rng.categorical(&w) as u32
                })
                .collect();
            let mut lw = 0.0;
            for step in 1..=k {
                pb.stop.check()?;
                let (b0, b1) = ((step - 1) as f64 / k as f64, step as f64 / k as f64);
                let en = edge_energy(pb, b, &lab);
                if en == f64::NEG_INFINITY {
                    return Ok(f64::NEG_INFINITY); // this run's weight is zero
                }
                lw += (b1 - b0) * en;
                if step < k {
                    let key = [b as u64, key, step as u64];
                    let edges = pb.edge.item(b);
                    match grid_sweep(pb, b, b1) {
                        Some(f) => f.sweep(&mut lab, opts.seed, key, None)?,
                        None => sweep(adj, n, node, &edges, &mut lab, b1, opts.seed, key, c)?,
                    }
                }
            }
            Ok(lw)
        })
        .collect::<Result<_>>()?;
    let m = max(&logw);
    if m == f64::NEG_INFINITY {
        return Err(Error::Infeasible(
            "AIS: every annealing run ended in a forbidden labelling; the scores may forbid \
             every labelling (or raise ais_steps)"
                .into(),
        ));
    }
    let w: Vec<f64> = logw.iter().map(|&l| (l - m).exp()).collect();
    let r = w.len() as f64;
    let mean = w.iter().sum::<f64>() / r;
    let var = if w.len() > 1 {
        w.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (r - 1.0)
    } else {
        0.0
    };
    // Delta method: se(log mean w) = se(mean w) / mean w.
    let se = (var / r).sqrt() / mean;
    Ok((log_z0 + m + mean.ln(), se))
}

/// Per-item extra outputs of `infer`.
/// What the chains of one item estimate.
struct Estimates {
    /// AIS log Z (NaN when `ais_steps = 0`) and its standard error.
    log_z: f64,
    log_z_stderr: f64,
    /// `(I, C)` node marginals and their batch-means standard errors.
    node: Vec<f64>,
    node_stderr: Vec<f64>,
    /// Gelman–Rubin ratio, max over nodes and labels (1 for one chain).
    rhat: f64,
    /// The chains' `(E, C, C)` pair counts, kept as counts: the pair marginals are read
    /// from them straight into their destination ([`Estimates::pairs`]).
    chains: Vec<ChainStats>,
    /// Kept sweeps over all chains.
    total: f64,
}

impl Estimates {
    /// Pair marginals of the entries `range` of the `(E, C, C)` table.
    fn pairs(&self, range: std::ops::Range<usize>) -> impl Iterator<Item = f64> + '_ {
        let inv = 1.0 / self.total;
        range.map(move |i| self.chains.iter().map(|ch| ch.pair[i] as u64).sum::<u64>() as f64 * inv)
    }
}

/// Nodes-times-labels entries per parallel task of the error-bar statistics.
const STAT_CHUNK: usize = 4096;

/// Gibbs marginals (and AIS log Z) for item `b`, with error bars and R-hat. `init` gives
/// start labels for `init_gold`.
fn item_estimates<T: Real>(
    pb: &Problem<'_, T>,
    adj: &Adjacency,
    b: usize,
    opts: &GibbsOptions,
    init: Option<&[i64]>,
) -> Result<Estimates> {
    let (n, c) = (pb.graph.num_nodes(), pb.classes());
    let fast = grid_sweep(pb, b, 1.0);
    let chains: Vec<ChainStats> = (0..opts.num_chains)
        .into_par_iter()
        .map(|k| run_chain(pb, adj, b, k, opts, init, Collect::Counts, fast.as_ref()))
        .collect::<Result<_>>()?;
    let total = (opts.num_samples * opts.num_chains) as f64;
    let per_batch = opts.num_samples.div_ceil(BATCHES);
    // Batch sizes (the last batch may be short).
    let sizes: Vec<f64> = (0..BATCHES)
        .map(|k| (opts.num_samples.saturating_sub(k * per_batch)).min(per_batch) as f64)
        .collect();
    let nb: usize = sizes.iter().filter(|&&s| s > 0.0).count() * chains.len();
    let m = chains.len() as f64;
    let len = opts.num_samples as f64;
    let (mut node, mut stderr) = (vec![0.0; n * c], vec![0.0; n * c]);
    // Each entry's statistics read only its own counts: entries in parallel chunks, R-hat
    // their maximum (order-free, so thread-count independent).
    let rhat = node
        .par_chunks_mut(STAT_CHUNK)
        .zip(stderr.par_chunks_mut(STAT_CHUNK))
        .enumerate()
        .map(|(k, (node, stderr))| {
            let mut rhat: f64 = 1.0;
            let mut chain_means = vec![0.0; chains.len()];
            for (j, (mean, se)) in node.iter_mut().zip(stderr.iter_mut()).enumerate() {
                let i = k * STAT_CHUNK + j;
                let count = |ch: &ChainStats, k: usize| ch.node[k * n * c + i] as f64;
                let sum: f64 = chains
                    .iter()
                    .map(|ch| (0..BATCHES).map(|k| count(ch, k)).sum::<f64>())
                    .sum();
                *mean = sum / total;
                // Batch means over all chains' non-empty batches.
                let mut ss = 0.0;
                let mut within = 0.0;
                for (ch, cm) in chains.iter().zip(chain_means.iter_mut()) {
                    let mut cnt_sum = 0.0;
                    for (k, &size) in sizes.iter().enumerate() {
                        if size == 0.0 {
                            continue;
                        }
                        let cnt = count(ch, k);
                        ss += (cnt / size - *mean).powi(2);
                        cnt_sum += cnt;
                    }
                    let p = cnt_sum / len;
                    *cm = p;
                    within += p * (1.0 - p) * len / (len - 1.0).max(1.0);
                }
                *se = if nb > 1 {
                    (ss / (nb as f64 - 1.0)).sqrt() / (nb as f64).sqrt()
                } else {
                    0.0
                };
                if chains.len() > 1 {
                    let w = within / m;
                    let cm = chain_means.iter().sum::<f64>() / m;
                    let bvar =
                        chain_means.iter().map(|x| (x - cm).powi(2)).sum::<f64>() / (m - 1.0);
                    if w > 0.0 {
                        let v = (len - 1.0) / len * w + bvar;
                        rhat = rhat.max((v / w).sqrt());
                    } else if bvar > 0.0 {
                        rhat = f64::INFINITY; // chains stuck on different labels
                    }
                }
            }
            rhat
        })
        .reduce(|| 1.0, f64::max);
    let (log_z, log_z_stderr) = if opts.ais_steps > 0 {
        ais(pb, adj, b, opts)?
    } else {
        (f64::NAN, f64::NAN)
    };
    Ok(Estimates {
        log_z,
        log_z_stderr,
        node,
        node_stderr: stderr,
        rhat,
        chains,
        total,
    })
}

/// Gibbs as an [`Inference`] method (loss and gradients: AIS log Z, sampled marginals).
pub struct Gibbs<'g> {
    adj: &'g Adjacency,
    opts: GibbsOptions,
    /// Gold labels `(B, I)` for chains started at the gold labelling.
    init: Option<&'g [i64]>,
}

impl<'g> Gibbs<'g> {
    pub fn new<T: Real>(
        pb: &Problem<'g, T>,
        opts: GibbsOptions,
        gold: Option<&'g [i64]>,
    ) -> Result<Self> {
        opts.check()?;
        if pb.lengths.is_some() {
            return Err(Error::Value(
                "lengths are only supported by exact inference on chains".into(),
            ));
        }
        if opts.init_gold && gold.is_none() {
            return Err(Error::Value(
                "init=\"gold\" needs gold labels (use it with loss_and_grad)".into(),
            ));
        }
        chains_fit(pb, &opts)?;
        let init = if opts.init_gold { gold } else { None };
        Ok(Gibbs {
            adj: pb.graph.adjacency(),
            opts,
            init,
        })
    }
}

impl<T: Real> Inference<T> for Gibbs<'_> {
    type Ws = ();

    fn workspace(&self, _pb: &Problem<'_, T>) {}

    fn item<S: EdgeSink>(
        &self,
        pb: &Problem<'_, T>,
        _ws: &mut (),
        b: usize,
        node_sink: &mut dyn FnMut(usize, &[f64]),
        edges: &mut S,
    ) -> Result<ItemInfo> {
        let (n, c) = (pb.graph.num_nodes(), pb.classes());
        let init = self.init.map(|y| &y[b * n..(b + 1) * n]);
        let est = item_estimates(pb, self.adj, b, &self.opts, init)?;
        for v in 0..n {
            node_sink(v, &est.node[v * c..(v + 1) * c]);
        }
        let cc = c * c;
        for e in 0..pb.graph.num_edges() {
            let slot = edges.slot(e);
            let p = est.pairs(e * cc..(e + 1) * cc);
            if S::ACCUMULATE {
                slot.iter_mut().zip(p).for_each(|(o, x)| *o += x);
            } else {
                slot.iter_mut().zip(p).for_each(|(o, x)| *o = x);
            }
            edges.commit(e);
        }
        Ok(ItemInfo {
            log_z: est.log_z,
            iterations: (self.opts.burn_in + self.opts.num_samples * self.opts.thin) as u32,
            converged: est.rhat < 1.1,
            max_change: est.rhat,
        })
    }
}

/// Batched Gibbs estimates: marginals (AIS log Z) and their error bars. Iterations are the
/// sweeps per chain; `converged` is R-hat < 1.1 and `max_change` holds R-hat.
pub fn infer<T: Real>(
    pb: &Problem<'_, T>,
    opts: &GibbsOptions,
    want_edges: bool,
) -> Result<(Marginals<T>, ErrorBars)> {
    opts.check()?;
    if opts.init_gold {
        return Err(Error::Value(
            "init=\"gold\" needs gold labels (use it with loss_and_grad)".into(),
        ));
    }
    let (n, c, ne, bsz) = (
        pb.graph.num_nodes(),
        pb.classes(),
        pb.graph.num_edges(),
        pb.batch,
    );
    chains_fit(pb, opts)?;
    alloc::check_with("Gibbs node marginals and error bars", &[bsz, n, c], 16, 0)?;
    if want_edges {
        alloc::check("Gibbs edge marginals", &[bsz, ne, c, c], 16)?;
    }
    let adj = pb.graph.adjacency();
    let mut m = Marginals {
        log_z: Vec::with_capacity(bsz),
        node: Vec::with_capacity(bsz * n * c),
        edge: want_edges.then(|| Vec::with_capacity(bsz * ne * c * c)),
        iterations: Vec::with_capacity(bsz),
        converged: Vec::with_capacity(bsz),
        max_change: Vec::with_capacity(bsz),
    };
    let mut ex = ErrorBars {
        node_stderr: Vec::with_capacity(bsz * n * c),
        log_z_stderr: Vec::with_capacity(bsz),
        rhat: Vec::with_capacity(bsz),
    };
    let sweeps = (opts.burn_in + opts.num_samples * opts.thin) as u32;
    for b in 0..pb.batch {
        let est = item_estimates(pb, adj, b, opts, None)?;
        m.log_z.push(T::from_f64(est.log_z));
        m.node.extend(est.node.iter().map(|&x| T::from_f64(x)));
        if let Some(edge) = m.edge.as_mut() {
            edge.extend(est.pairs(0..ne * c * c).map(T::from_f64));
        }
        m.iterations.push(sweeps);
        m.converged.push(est.rhat < 1.1);
        m.max_change.push(est.rhat);
        ex.node_stderr.extend(est.node_stderr);
        ex.log_z_stderr.push(est.log_z_stderr);
        ex.rhat.push(est.rhat);
    }
    Ok((m, ex))
}

/// The chains of one item run at once: refuse up front what their statistics (counts per
/// node, label and batch; pair counts; kept labellings) cannot fit in memory.
fn chains_fit<T: Real>(pb: &Problem<'_, T>, opts: &GibbsOptions) -> Result<()> {
    let (n, c, ne) = (pb.graph.num_nodes(), pb.classes(), pb.graph.num_edges());
    let per_chain = (BATCHES * n * c + ne * c * c) as u128 * 4 + n as u128 * 8;
    alloc::check_with(
        "Gibbs chain statistics",
        &[opts.num_chains, per_chain.min(usize::MAX as u128) as usize],
        1,
        0,
    )?;
    Ok(())
}

/// The best-scoring labelling among the kept samples of every chain `(B, I)`.
pub fn decode<T: Real>(pb: &Problem<'_, T>, opts: &GibbsOptions) -> Result<Vec<i64>> {
    opts.check()?;
    alloc::check(
        "Gibbs chain labellings",
        &[opts.num_chains, 2, pb.graph.num_nodes()],
        4,
    )?;
    let adj = pb.graph.adjacency();
    let mut out = Vec::with_capacity(pb.batch * pb.graph.num_nodes());
    for b in 0..pb.batch {
        let fast = grid_sweep(pb, b, 1.0);
        let chains: Vec<ChainStats> = (0..opts.num_chains)
            .into_par_iter()
            .map(|k| run_chain(pb, adj, b, k, opts, None, Collect::Best, fast.as_ref()))
            .collect::<Result<_>>()?;
        // Ties go to the lowest chain, so the answer does not depend on scheduling.
        let best = chains
            .iter()
            .map(|ch| &ch.best)
            .reduce(|a, x| if x.0 > a.0 { x } else { a })
            .expect("num_chains >= 1");
        out.extend(best.1.iter().map(|&x| x as i64));
    }
    Ok(out)
}

/// `num_samples` labellings per item `(num_samples, B, I)`: chains run in parallel and
/// their kept samples are interleaved (sample `s` is chain `s % num_chains`).
pub fn sample<T: Real>(
    pb: &Problem<'_, T>,
    opts: &GibbsOptions,
    num_samples: usize,
) -> Result<Vec<i64>> {
    let (n, bsz) = (pb.graph.num_nodes(), pb.batch);
    let per_chain = num_samples.div_ceil(opts.num_chains);
    let o = GibbsOptions {
        num_samples: per_chain.max(1),
        ..opts.clone()
    };
    // Every chain keeps its samples until they are interleaved.
    alloc::check_with(
        "Gibbs kept samples",
        &[o.num_chains, o.num_samples, n],
        4,
        (num_samples * bsz * n) as u128 * 8,
    )?;
    let adj = pb.graph.adjacency();
    let mut out = vec![0i64; num_samples * bsz * n];
    for b in 0..bsz {
        let fast = grid_sweep(pb, b, 1.0);
        let chains: Vec<ChainStats> = (0..o.num_chains)
            .into_par_iter()
            .map(|k| run_chain(pb, adj, b, k, &o, None, Collect::Keep, fast.as_ref()))
            .collect::<Result<_>>()?;
        for s in 0..num_samples {
            let lab = &chains[s % o.num_chains].kept[s / o.num_chains];
            for v in 0..n {
                out[(s * bsz + b) * n + v] = lab[v] as i64;
            }
        }
    }
    Ok(out)
}

/// Gibbs sampling as a [`Family`].
impl Family for GibbsOptions {
    fn name(&self) -> &'static str {
        "gibbs"
    }

    fn infer<T: Real>(&self, pb: &Problem<'_, T>, want_edges: bool) -> Result<Inferred<T>> {
        no_lengths(pb, self.name())?;
        let (marginals, bars) = infer(pb, self, want_edges)?;
        Ok(Inferred {
            marginals,
            error_bars: Some(bars),
        })
    }

    fn loss_and_grad<T: Real>(
        &self,
        pb: &Problem<'_, T>,
        y: &[i64],
        weights: Option<&[f64]>,
    ) -> Result<LossGrad<T>> {
        no_lengths(pb, self.name())?;
        inference::check_labels(pb, y)?;
        inference::loss_and_grad(pb, &Gibbs::new(pb, self.clone(), Some(y))?, y, weights)
    }

    fn decode<T: Real>(&self, pb: &Problem<'_, T>) -> Result<Decoded> {
        no_lengths(pb, self.name())?;
        Ok((decode(pb, self)?, vec![ItemInfo::exact(f64::NAN); pb.batch]))
    }

    fn sample<T: Real>(
        &self,
        pb: &Problem<'_, T>,
        num_samples: usize,
        seed: u64,
    ) -> Result<Vec<i64>> {
        no_lengths(pb, self.name())?;
        sample(
            pb,
            &GibbsOptions {
                seed,
                ..self.clone()
            },
            num_samples,
        )
    }
}
