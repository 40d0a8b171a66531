//! What a loopy run is configured with: which approximation, the message schedule and the
//! stopping rule. Kept apart from the kernels so the grid fast path and the general kernel
//! share it without depending on each other.

use crate::error::{Error, Result};

/// How messages are scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// Flooding: every message from the previous iteration's messages.
    Parallel,
    /// Colour classes in turn (checkerboard on grids), each from the freshest messages.
    Colour,
}

/// Which approximation.
#[derive(Debug, Clone, PartialEq)]
pub enum Approx {
    /// Loopy BP: Bethe log Z.
    Bp,
    /// Tree-reweighted BP with these edge appearance probabilities: upper bound on log Z.
    Trw(Vec<f64>),
    /// Naive mean field: lower bound on log Z.
    MeanField,
}

/// Options shared by the loopy methods (names as in the Python keyword arguments).
#[derive(Debug, Clone, PartialEq)]
pub struct LoopyOptions {
    pub method: Approx,
    pub max_iter: usize,
    /// Converged when the largest change of a message (or mean-field marginal), in the
    /// probability domain, falls below `tol`.
    pub tol: f64,
    /// New value = (1 − damping) · update + damping · old.
    pub damping: f64,
    pub schedule: Schedule,
}

impl LoopyOptions {
    pub fn check(&self, num_edges: usize) -> Result<()> {
        if !(0.0..1.0).contains(&self.damping) {
            return Err(Error::Value(format!(
                "damping must lie in [0, 1), got {}",
                self.damping
            )));
        }
        if self.tol.is_nan() || self.tol < 0.0 {
            return Err(Error::Value(format!("tol must be >= 0, got {}", self.tol)));
        }
        if let Approx::Trw(rho) = &self.method {
            if rho.len() != num_edges {
                return Err(Error::Shape(format!(
                    "edge_appearance has {} entries; the graph has {num_edges} edges",
                    rho.len()
                )));
            }
            if let Some((e, r)) = rho
                .iter()
                .enumerate()
                .find(|(_, &r)| !(r > 0.0 && r <= 1.0))
            {
                return Err(Error::Value(format!(
                    "edge_appearance[{e}] = {r} must lie in (0, 1]"
                )));
            }
        }
        Ok(())
    }
}
