//! expsoftmax-core: log Z, marginals, MAP labellings and samples of the exponential
//! softmax `P(y) ∝ exp(Σ_i s_n[i, y_i] + Σ_(i,j) s_e[(i,j), y_i, y_j])` over every
//! labelling `y` of a graph. No Python here: the bindings live in a separate crate.
//!
//! Layout: shared types (`graph`, `scores`, `error`, `real`), numerical primitives
//! (`logspace`, `message`, `rng`), one module per algorithm (`sumproduct`, `maxproduct`,
//! `sampling` on forests) and batch drivers per method (`exact`).

// Numeric kernels index several arrays in lockstep; iterator chains would hide that.
#![allow(clippy::needless_range_loop)]

pub mod adjacency;
pub mod batch;
pub mod chain;
pub mod error;
pub mod exact;
pub mod forest;
pub mod gibbs;
pub mod graph;
pub mod grid;
pub mod gridgibbs;
pub mod logspace;
pub mod loopy;
pub mod maxproduct;
pub mod message;
pub mod objective;
pub mod real;
pub mod rng;
pub mod sampling;
pub mod scores;
pub mod sumproduct;

pub use error::{Error, Result};
pub use graph::Graph;
pub use real::Real;
pub use scores::{EdgeScores, NodeScores, Problem};
