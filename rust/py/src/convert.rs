//! Numpy arrays into core views, and core results into numpy arrays.
//!
//! Scores arrive flat and C-contiguous (the Python layer lays them out, copying only when a
//! caller's layout demands it) and are borrowed here without a copy; `dims` gives their
//! shapes. Results go back as flat arrays in a dict of named fields, reshaped in Python.

use expsoftmax_core::inference::{Inferred, ItemInfo, LossGrad};
use expsoftmax_core::interrupt::Stop;
use expsoftmax_core::{EdgeScores, Error, Graph, NodeScores, Problem, Real};
use numpy::{Element, PyArray1, PyReadonlyArray1};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Shapes that come with the flat score buffers:
/// `(batch, node_batch, edge_batch, edge_tables, classes, weight_batch)`.
pub type Dims = (usize, usize, usize, usize, usize, usize);

pub fn slice<'a, T: Element>(a: &'a PyReadonlyArray1<'_, T>, name: &str) -> PyResult<&'a [T]> {
    a.as_slice()
        .map_err(|_| PyValueError::new_err(format!("{name} must be C-contiguous")))
}

/// Borrowed score buffers of one dtype.
pub struct Scores<'a, T> {
    pub s_n: &'a [T],
    pub s_e: &'a [T],
    pub weight: Option<&'a [T]>,
    pub dims: Dims,
    pub lengths: Option<&'a [usize]>,
}

impl<'a, T: Real> Scores<'a, T> {
    /// The validated problem, interrupted by `stop`.
    pub fn problem(&self, g: &'a Graph, stop: &'a Stop) -> Result<Problem<'a, T>, Error> {
        self.build(g, stop, true)
    }

    /// [`Scores::problem`] with the scan of `s_e` for NaN and +inf left to the method
    /// (`Problem::deferring_edge_check`): for `Method::infer` and `Method::loss_and_grad`,
    /// which check before any kernel that does not check the tables it reads.
    pub fn problem_checked_by_method(
        &self,
        g: &'a Graph,
        stop: &'a Stop,
    ) -> Result<Problem<'a, T>, Error> {
        self.build(g, stop, false)
    }

    fn build(&self, g: &'a Graph, stop: &'a Stop, check: bool) -> Result<Problem<'a, T>, Error> {
        let (batch, nb, eb, ee, c, wb) = self.dims;
        let edge = match self.weight {
            Some(w) => EdgeScores::weighted(w, wb, self.s_e, eb, c),
            None => EdgeScores::tables(self.s_e, eb, ee, c),
        };
        let node = NodeScores {
            data: self.s_n,
            batch: nb,
            nodes: g.num_nodes(),
            classes: c,
        };
        let pb = match check {
            true => Problem::new(g, node, edge, batch, self.lengths)?,
            false => Problem::deferring_edge_check(g, node, edge, batch, self.lengths)?,
        };
        Ok(pb.with_stop(stop))
    }
}

/// Lengths as the core takes them (the core checks them against the graph).
pub fn lengths(lengths: Option<PyReadonlyArray1<'_, i64>>) -> PyResult<Option<Vec<usize>>> {
    let Some(l) = lengths else { return Ok(None) };
    let s = slice(&l, "lengths")?;
    if let Some((b, v)) = s.iter().enumerate().find(|(_, &v)| v < 0) {
        return Err(PyValueError::new_err(format!(
            "lengths[{b}] = {v} is negative"
        )));
    }
    Ok(Some(s.iter().map(|&v| v as usize).collect()))
}

/// Runs `$body` with `$sc: Scores<T>` for the dtype of the score arrays (all float32 or all
/// float64; the Python layer casts them to one).
macro_rules! with_scores {
    ($s_n:expr, $s_e:expr, $weight:expr, $dims:expr, $lengths:expr, |$sc:ident| $body:expr) => {{
        macro_rules! arm {
            ($t:ty) => {{
                let sn = $s_n.extract::<numpy::PyReadonlyArray1<'_, $t>>();
                let se = $s_e.extract::<numpy::PyReadonlyArray1<'_, $t>>();
                if let (Ok(sn), Ok(se)) = (sn, se) {
                    let w = $weight
                        .map(|w| w.extract::<numpy::PyReadonlyArray1<'_, $t>>())
                        .transpose()
                        .map_err(|_| {
                            pyo3::exceptions::PyTypeError::new_err(
                                "edge weights must have the scores' dtype",
                            )
                        })?;
                    let $sc = $crate::convert::Scores::<$t> {
                        s_n: $crate::convert::slice(&sn, "s_n")?,
                        s_e: $crate::convert::slice(&se, "s_e")?,
                        weight: w
                            .as_ref()
                            .map(|w| $crate::convert::slice(w, "weight"))
                            .transpose()?,
                        dims: $dims,
                        lengths: $lengths,
                    };
                    return $body;
                }
            }};
        }
        arm!(f32);
        arm!(f64);
        Err(pyo3::exceptions::PyTypeError::new_err(
            "s_n and s_e must be 1-D arrays of one dtype, float32 or float64",
        ))
    }};
}
pub(crate) use with_scores;

pub fn arr<T: Element>(py: Python<'_>, v: Vec<T>) -> Py<PyAny> {
    PyArray1::from_vec(py, v).into_any().unbind()
}

fn info_fields(py: Python<'_>, d: &Bound<'_, PyDict>, info: &[ItemInfo]) -> PyResult<()> {
    d.set_item(
        "iterations",
        arr(py, info.iter().map(|i| i.iterations).collect()),
    )?;
    d.set_item(
        "converged",
        arr(py, info.iter().map(|i| i.converged).collect()),
    )?;
    d.set_item(
        "max_change",
        arr(py, info.iter().map(|i| i.max_change).collect()),
    )?;
    Ok(())
}

pub fn inferred<T: Real + Element>(
    py: Python<'_>,
    method: &str,
    r: Inferred<T>,
) -> PyResult<Py<PyDict>> {
    let d = PyDict::new(py);
    let m = r.marginals;
    d.set_item("method", method)?;
    d.set_item("log_z", arr(py, m.log_z))?;
    d.set_item("node_marginals", arr(py, m.node))?;
    d.set_item("edge_marginals", m.edge.map(|v| arr(py, v)))?;
    d.set_item("iterations", arr(py, m.iterations))?;
    d.set_item("converged", arr(py, m.converged))?;
    d.set_item("max_change", arr(py, m.max_change))?;
    if let Some(g) = r.error_bars {
        d.set_item("node_stderr", arr(py, g.node_stderr))?;
        d.set_item("log_z_stderr", arr(py, g.log_z_stderr))?;
        d.set_item("rhat", arr(py, g.rhat))?;
    }
    Ok(d.unbind())
}

pub fn loss_grad<T: Real + Element>(
    py: Python<'_>,
    method: &str,
    r: LossGrad<T>,
) -> PyResult<Py<PyDict>> {
    let d = PyDict::new(py);
    d.set_item("method", method)?;
    d.set_item("loss", arr(py, r.loss))?;
    d.set_item("grad_node", arr(py, r.grad_node))?;
    d.set_item("grad_edge", arr(py, r.grad_edge))?;
    d.set_item("grad_weight", r.grad_weight.map(|v| arr(py, v)))?;
    d.set_item("iterations", arr(py, r.iterations))?;
    d.set_item("converged", arr(py, r.converged))?;
    d.set_item("max_change", arr(py, r.max_change))?;
    Ok(d.unbind())
}

pub fn decoded(
    py: Python<'_>,
    method: &str,
    labels: Vec<i64>,
    info: Vec<ItemInfo>,
) -> PyResult<Py<PyDict>> {
    let d = PyDict::new(py);
    d.set_item("method", method)?;
    d.set_item("labels", arr(py, labels))?;
    info_fields(py, &d, &info)?;
    Ok(d.unbind())
}
