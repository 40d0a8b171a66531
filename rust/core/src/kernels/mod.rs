//! Numerical primitives shared by every method: the float trait, log-domain arithmetic,
//! message kernels, counter-based random streams, and the batch/SIMD plumbing.

pub mod alloc;
pub mod batch;
pub mod layout;
pub mod logspace;
pub mod message;
pub mod real;
pub mod rng;
pub(crate) mod stream;
