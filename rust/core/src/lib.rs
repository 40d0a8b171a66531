//! expsoftmax-core: log Z, marginals, MAP labellings and samples of the exponential
//! softmax `P(y) ∝ exp(Σ_i s_n[i, y_i] + Σ_(i,j) s_e[(i,j), y_i, y_j])` over every
//! labelling `y` of a graph. No Python here: the bindings live in a separate crate.
//!
//! Layout (each layer uses only those above it):
//! - [`error`]: the one error type.
//! - [`kernels`]: numerical primitives (`real`, `logspace`, `message`, `rng`, `batch`
//!   with the SIMD dispatch and parallel row buffers).
//! - [`model`]: the graph (with its cached adjacency and rooted forest) and the score
//!   views, validated together as a [`Problem`].
//! - [`inference`]: the [`inference::Inference`] trait every method implements per batch
//!   item, and the batch drivers that turn it into marginals or loss and gradients.
//! - Method families, one folder each: [`exact`] (sum-product, max-product and sampling on
//!   forests, the batch-major chain kernel), [`loopy`] (BP, TRW, mean field, the grid fast
//!   path), [`mcmc`] (Gibbs, AIS, the grid sweep).
//! - [`method`]: the one [`Method`] enum with its named option structs, the "auto" rule,
//!   every option check, and the four entry points (`infer`, `loss_and_grad`, `decode`,
//!   `sample`) that dispatch to a family. Adding a method = one folder plus one arm there
//!   (see CONTRIBUTING.md).
//! - [`interrupt`]: cooperative cancellation, checked between iterations and sweeps.
//! - [`spin`]: keeping the pool's threads awake through a call and between calls.

// Numeric kernels index several arrays in lockstep; iterator chains would hide that.
#![allow(clippy::needless_range_loop)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod error;
pub mod exact;
pub mod inference;
pub mod interrupt;
pub mod kernels;
pub mod loopy;
pub mod mcmc;
pub mod method;
pub mod model;
pub mod spin;

pub use error::{Error, Result};
pub use kernels::real::Real;
pub use method::{Entry, Method, Value};
pub use model::{EdgeScores, Graph, NodeScores, Problem};
