//! Markov chain Monte Carlo: chromatic Gibbs sampling (marginals with error bars, R-hat),
//! annealed importance sampling for log Z, and the vectorised grid sweep.

pub mod gibbs;
pub mod grid;

pub use gibbs::{Gibbs, GibbsOptions};
