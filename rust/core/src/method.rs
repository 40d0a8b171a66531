//! The one place that knows every method: the [`Method`] enum with its named option
//! structs, the defaults and checks of every option, the "auto" rule, and the four entry
//! points ([`Method::infer`], [`Method::loss_and_grad`], [`Method::decode`],
//! [`Method::sample`]) that hand a [`Problem`] to the method's family.
//!
//! Options arrive by name as loosely typed [`Value`]s (keyword arguments from Python, or
//! built by a Rust caller) and are turned into the enum by [`Method::parse`], so every
//! option error has one text, whatever the caller.
//!
//! Adding a method: a folder (or file) for the family with its options struct and an
//! `impl Family` (the four operations), one variant here with its arm in `with_family!`,
//! and its rows in [`option_names`], [`default_value`] and [`Method::parse`].

use std::hash::{BuildHasher, Hasher};

use crate::error::{Error, Result};
use crate::exact::junction::{self, DEFAULT_MAX_STATES};
use crate::exact::ExactMethod;
use crate::inference::{Decoded, Family, Inferred, LossGrad};
use crate::kernels::alloc;
use crate::kernels::real::Real;
use crate::loopy::{Approx, LoopyOptions as Config, Schedule};
use crate::mcmc::GibbsOptions;
use crate::model::{Graph, Problem};
use crate::option_err;

/// Which public function is asking: each offers some methods and options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    Infer,
    LossAndGrad,
    Decode,
    Sample,
}

impl Entry {
    pub fn name(self) -> &'static str {
        match self {
            Entry::Infer => "infer",
            Entry::LossAndGrad => "loss_and_grad",
            Entry::Decode => "decode",
            Entry::Sample => "sample",
        }
    }
}

/// An option value as a caller gave it, before it is checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Floats(Vec<f64>),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::None => f.write_str("None"),
            Value::Bool(b) => f.write_str(if *b { "True" } else { "False" }),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x:?}"),
            Value::Str(s) => write!(f, "'{s}'"),
            Value::Floats(v) => write!(f, "an array of {} floats", v.len()),
        }
    }
}

/// The options of the message-passing methods (BP, TRW, mean field).
#[derive(Debug, Clone, PartialEq)]
pub struct LoopyOptions {
    /// Most iterations (sweeps over every message).
    pub max_iter: usize,
    /// Converged when the largest change of a message (or mean-field marginal), in the
    /// probability domain, falls below `tol`.
    pub tol: f64,
    /// New value = (1 − damping) · update + damping · old, in `[0, 1)`.
    pub damping: f64,
    pub schedule: Schedule,
}

/// Tree-reweighted BP: the loopy options plus edge appearance probabilities.
#[derive(Debug, Clone, PartialEq)]
pub struct TrwOptions {
    pub loopy: LoopyOptions,
    /// `(E,)` in `(0, 1]`; `None`: the graph's spanning-tree mixture.
    pub edge_appearance: Option<Vec<f64>>,
}

/// An inference method with its options.
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    /// Sum-product / max-product / sampling: on the rooted forest, or on the junction tree
    /// of a graph with cycles whose largest clique table fits `max_states`.
    Exact(ExactMethod),
    /// Loopy belief propagation (Bethe log Z).
    Bp(LoopyOptions),
    /// Tree-reweighted BP (upper bound on log Z).
    Trw(TrwOptions),
    /// Naive mean field (lower bound on log Z).
    MeanField(LoopyOptions),
    /// Chromatic Gibbs sampling (AIS log Z, sampled marginals).
    Gibbs(GibbsOptions),
}

/// Every method name, "auto" first.
pub const METHODS: [&str; 6] = ["auto", "exact", "bp", "trw", "mean_field", "gibbs"];
const LOOPY: [&str; 4] = ["max_iter", "tol", "damping", "schedule"];
/// Bounds that keep a count from asking for unbounded work or memory by mistake.
const MAX_AIS_RUNS: i128 = 1 << 20;
const MAX_COUNT: i128 = u32::MAX as i128;

/// The options `method` accepts in `entry` (a Gibbs option that an entry point would not
/// use is refused there rather than ignored).
pub fn option_names(method: &str, entry: Entry) -> &'static [&'static str] {
    match (method, entry) {
        ("exact", _) => &["max_states"],
        ("bp" | "mean_field", _) => &LOOPY,
        ("trw", _) => &["max_iter", "tol", "damping", "schedule", "edge_appearance"],
        ("gibbs", Entry::Infer | Entry::LossAndGrad) => &[
            "num_samples",
            "burn_in",
            "thin",
            "num_chains",
            "seed",
            "init",
            "ais_steps",
            "ais_runs",
        ],
        ("gibbs", Entry::Decode) => &[
            "num_samples",
            "burn_in",
            "thin",
            "num_chains",
            "seed",
            "init",
        ],
        ("gibbs", Entry::Sample) => &["burn_in", "thin", "num_chains", "init"],
        _ => &[],
    }
}

/// The default of an option (what a caller who leaves it out gets).
pub fn default_value(option: &str) -> Value {
    match option {
        "max_iter" => Value::Int(100),
        "tol" => Value::Float(1e-6),
        "damping" => Value::Float(0.0),
        "schedule" => Value::Str("checkerboard".into()),
        "num_samples" => Value::Int(1000),
        "burn_in" => Value::Int(100),
        "thin" => Value::Int(1),
        "num_chains" => Value::Int(4),
        "init" => Value::Str("random".into()),
        "ais_steps" => Value::Int(100),
        "ais_runs" => Value::Int(16),
        "max_states" => Value::Int(DEFAULT_MAX_STATES as i128),
        _ => Value::None, // seed, edge_appearance
    }
}

/// Options given by name, each taken at most once.
struct Given<'a> {
    method: &'a str,
    opts: &'a [(String, Value)],
}

impl Given<'_> {
    fn get(&self, name: &str) -> Value {
        self.opts
            .iter()
            .find(|(k, _)| k == name)
            .map_or_else(|| default_value(name), |(_, v)| v.clone())
    }

    fn int(&self, name: &str, least: i128, most: i128) -> Result<usize> {
        Ok(self.wide_int(name, least, most.min(usize::MAX as i128))? as usize)
    }

    fn wide_int(&self, name: &str, least: i128, most: i128) -> Result<i128> {
        match self.get(name) {
            Value::Int(i) if (least..=most).contains(&i) => Ok(i),
            Value::Int(i) => option_err!(
                "{name} must be an integer in [{least}, {most}] for method '{}', got {i}",
                self.method
            ),
            v => option_err!("{name} must be an integer, got {v}"),
        }
    }

    fn float(&self, name: &str, lo: f64, hi: f64) -> Result<f64> {
        let x = match self.get(name) {
            Value::Float(x) => x,
            Value::Int(i) => i as f64,
            v => return option_err!("{name} must be a number, got {v}"),
        };
        if !(lo..hi).contains(&x) {
            return option_err!("{name} must lie in [{lo}, {hi}), got {x}");
        }
        Ok(x)
    }

    fn choice<'c>(&self, name: &str, known: &[(&str, &'c str)]) -> Result<&'c str> {
        let v = self.get(name);
        if let Value::Str(s) = &v {
            if let Some((_, canon)) = known.iter().find(|(k, _)| k == s) {
                return Ok(canon);
            }
        }
        let names: Vec<&str> = known.iter().map(|(k, _)| *k).collect();
        option_err!(
            "{name} must be one of {}, got {v}",
            names
                .iter()
                .map(|n| format!("'{n}'"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// Message schedules by name; flooding is the parallel update, and a colour-by-colour sweep
/// is the checkerboard on grids (its greedy-colouring generalisation elsewhere).
const SCHEDULES: [(&str, &str); 6] = [
    ("checkerboard", "checkerboard"),
    ("parallel", "parallel"),
    ("flooding", "parallel"),
    ("colour", "checkerboard"),
    ("color", "checkerboard"),
    ("sequential", "checkerboard"),
];

/// A seed from the operating system's entropy (std's randomly keyed hasher) for callers
/// who give none.
fn fresh_seed() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    h.finish()
}

/// Runs `$body` with `$f` bound to the family (and its options) that carries out `$m`.
macro_rules! with_family {
    ($m:expr, $graph:expr, |$f:ident| $body:expr) => {
        match $m {
            Method::Exact(e) => {
                let $f = e;
                $body
            }
            Method::Gibbs(o) => {
                let $f = o;
                $body
            }
            loopy => {
                let cfg = loopy
                    .loopy_config($graph)
                    .expect("a message-passing method");
                let $f = &cfg;
                $body
            }
        }
    };
}

impl Method {
    /// The method `name` (or "auto") with `options` checked and defaults filled in, for
    /// `entry` on `graph` with `classes` labels. "auto" is exact on forests and on graphs
    /// whose junction tree's largest clique table fits `max_states` (an option "auto" also
    /// takes); otherwise loopy BP, and Gibbs for `sample`.
    pub fn parse(
        name: &str,
        options: &[(String, Value)],
        graph: &Graph,
        entry: Entry,
        classes: usize,
    ) -> Result<Method> {
        let max_states = || {
            Given {
                method: "exact",
                opts: options,
            }
            .wide_int("max_states", 1, i128::MAX)
            .map(|m| m as u128)
        };
        let mut options = options;
        let dropped: Vec<(String, Value)>;
        let by_auto = name == "auto";
        let name = match name {
            "auto" if graph.is_forest() => "exact",
            "auto" if junction::fits(graph, classes, max_states()?).is_ok() => "exact",
            "auto" => {
                // `max_states` only steers the choice here.
                dropped = options
                    .iter()
                    .filter(|(k, _)| k != "max_states")
                    .cloned()
                    .collect();
                options = &dropped;
                if entry == Entry::Sample {
                    "gibbs"
                } else {
                    "bp"
                }
            }
            n => n,
        };
        let offered: &[&str] = match entry {
            Entry::Sample => &["exact", "gibbs"],
            _ => &METHODS[1..],
        };
        if !offered.contains(&name) {
            let mut known = vec!["auto"];
            known.extend(offered);
            return option_err!(
                "unknown method '{name}' for {}; known methods: {}",
                entry.name(),
                known.join(", ")
            );
        }
        let accepted = option_names(name, entry);
        let mut unknown: Vec<&str> = options
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| !accepted.contains(k))
            .collect();
        if !unknown.is_empty() {
            unknown.sort_unstable();
            let acc = if accepted.is_empty() {
                "none".to_string()
            } else {
                accepted.join(", ")
            };
            let why = match (by_auto, name) {
                (true, "exact") => {
                    " (chosen by method='auto': the graph is a forest or its \
                                   junction tree fits max_states; name a method to use others)"
                }
                (true, _) => " (chosen by method='auto')",
                _ => "",
            };
            return option_err!(
                "unknown option(s) {} for method '{name}'{why} in {} (accepted: {acc})",
                unknown.join(", "),
                entry.name()
            );
        }
        if let Some(pos) =
            (1..options.len()).find(|&i| options[..i].iter().any(|(k, _)| *k == options[i].0))
        {
            return option_err!("option {} given twice", options[pos].0);
        }
        let g = Given {
            method: name,
            opts: options,
        };
        let loopy = || -> Result<LoopyOptions> {
            Ok(LoopyOptions {
                max_iter: g.int("max_iter", 0, MAX_COUNT)?,
                tol: g.float("tol", 0.0, f64::INFINITY)?,
                damping: g.float("damping", 0.0, 1.0)?,
                schedule: match g.choice("schedule", &SCHEDULES)? {
                    "parallel" => Schedule::Parallel,
                    _ => Schedule::Colour,
                },
            })
        };
        Ok(match name {
            "exact" => {
                let max_states = g.wide_int("max_states", 1, i128::MAX)? as u128;
                if !graph.is_forest() {
                    junction::fits(graph, classes, max_states)?;
                }
                Method::Exact(ExactMethod { max_states })
            }
            "bp" => Method::Bp(loopy()?),
            "mean_field" => Method::MeanField(loopy()?),
            "trw" => {
                let ne = graph.num_edges();
                let rho = match g.get("edge_appearance") {
                    Value::None => None,
                    Value::Float(r) => Some(vec![r; ne]),
                    Value::Int(r) => Some(vec![r as f64; ne]),
                    Value::Floats(r) if r.len() == ne => Some(r),
                    Value::Floats(r) => {
                        return Err(Error::Shape(format!(
                            "edge_appearance has {} entries; the graph has {ne} edges",
                            r.len()
                        )))
                    }
                    v => {
                        return option_err!(
                            "edge_appearance must be a number or (E,) array, got {v}"
                        )
                    }
                };
                if let Some((e, r)) = rho
                    .iter()
                    .flatten()
                    .enumerate()
                    .find(|(_, &r)| !(r > 0.0 && r <= 1.0))
                {
                    return option_err!("edge_appearance must lie in (0, 1]; entry {e} is {r}");
                }
                Method::Trw(TrwOptions {
                    loopy: loopy()?,
                    edge_appearance: rho,
                })
            }
            _ => {
                let (num_samples, ais_steps, ais_runs) = match entry {
                    // `sample` sets the kept samples itself; it never estimates log Z.
                    Entry::Sample => (1, 0, 1),
                    _ => (
                        g.int("num_samples", 1, MAX_COUNT)?,
                        g.int("ais_steps", 0, MAX_COUNT)?,
                        g.int("ais_runs", 1, MAX_AIS_RUNS)?,
                    ),
                };
                let init_gold = match g.choice("init", &[("random", "random"), ("gold", "gold")])? {
                    "gold" if entry != Entry::LossAndGrad => {
                        return option_err!(
                            "init='gold' starts chains at the gold labels: loss_and_grad only"
                        )
                    }
                    k => k == "gold",
                };
                let seed = match g.get("seed") {
                    Value::None => fresh_seed(),
                    Value::Int(s) if (0..=u64::MAX as i128).contains(&s) => s as u64,
                    v => {
                        return option_err!(
                            "seed must be an integer in [0, 2**64) or None, got {v}"
                        )
                    }
                };
                let o = GibbsOptions {
                    num_samples,
                    burn_in: g.int("burn_in", 0, MAX_COUNT)?,
                    thin: g.int("thin", 1, MAX_COUNT)?,
                    // How many chains fit is a memory question, answered when they are sized.
                    num_chains: g.int("num_chains", 1, MAX_COUNT)?,
                    seed,
                    init_gold,
                    ais_steps,
                    ais_runs,
                };
                if o.burn_in as u128 + o.num_samples as u128 * o.thin as u128 > MAX_COUNT as u128 {
                    return option_err!(
                        "burn_in + num_samples * thin must be at most {MAX_COUNT} sweeps"
                    );
                }
                Method::Gibbs(o)
            }
        })
    }

    /// The method's name as users spell it.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Exact(_) => "exact",
            Method::Bp(_) => "bp",
            Method::Trw(_) => "trw",
            Method::MeanField(_) => "mean_field",
            Method::Gibbs(_) => "gibbs",
        }
    }

    /// The loopy kernel's configuration, for the message-passing methods.
    fn loopy_config(&self, graph: &Graph) -> Option<Config> {
        let (approx, o) = match self {
            Method::Bp(o) => (Approx::Bp, o),
            Method::MeanField(o) => (Approx::MeanField, o),
            Method::Trw(t) => (
                Approx::Trw(
                    t.edge_appearance
                        .clone()
                        .unwrap_or_else(|| graph.default_edge_appearance().to_vec()),
                ),
                &t.loopy,
            ),
            _ => return None,
        };
        Some(Config {
            method: approx,
            max_iter: o.max_iter,
            tol: o.tol,
            damping: o.damping,
            schedule: o.schedule,
        })
    }

    /// log Z and marginals of every item (pair marginals when `want_edges`).
    pub fn infer<T: Real>(&self, pb: &Problem<'_, T>, want_edges: bool) -> Result<Inferred<T>> {
        self.check_edges_unless_fused(pb)?;
        with_family!(self, pb.graph, |f| f.infer(pb, want_edges))
    }

    /// [`Problem::check_edges`] first, except where the exact chain kernels run: they
    /// check the tables they read (see [`crate::exact::marginals`]).
    fn check_edges_unless_fused<T: Real>(&self, pb: &Problem<'_, T>) -> Result<()> {
        match self {
            Method::Exact(_) if pb.graph.is_chain() => Ok(()),
            _ => pb.check_edges(),
        }
    }

    /// Loss `log Z − s(y)` per item and its gradients; `weights` scale each item's gradient.
    pub fn loss_and_grad<T: Real>(
        &self,
        pb: &Problem<'_, T>,
        y: &[i64],
        weights: Option<&[f64]>,
    ) -> Result<LossGrad<T>> {
        self.check_edges_unless_fused(pb)?;
        with_family!(self, pb.graph, |f| f.loss_and_grad(pb, y, weights))
    }

    /// The MAP labelling `(B, I)` (−1 at padded nodes) and each item's run facts: exact
    /// max-product on forests, max-product BP for "bp", the argmax of the beliefs for
    /// "trw" and "mean_field", the best visited labelling for "gibbs".
    pub fn decode<T: Real>(&self, pb: &Problem<'_, T>) -> Result<Decoded> {
        pb.check_edges()?;
        alloc::check("labels", &[pb.batch, pb.graph.num_nodes()], 8)?;
        with_family!(self, pb.graph, |f| f.decode(pb))
    }

    /// `num_samples` labellings per item, `(num_samples, B, I)` (−1 at padded nodes): exact
    /// on forests, the kept sweeps of the chains for "gibbs". Sample `s` of item `b`
    /// depends only on `(seed, b, s)` (a fresh seed when `None`).
    pub fn sample<T: Real>(
        &self,
        pb: &Problem<'_, T>,
        num_samples: usize,
        seed: Option<u64>,
    ) -> Result<Vec<i64>> {
        pb.check_edges()?;
        alloc::check("samples", &[num_samples, pb.batch, pb.graph.num_nodes()], 8)?;
        let seed = seed.unwrap_or_else(fresh_seed);
        with_family!(self, pb.graph, |f| f.sample(pb, num_samples, seed))
    }
}
