//! The Python extension `expsoftmax._core`: the only place that knows about PyO3.
//!
//! Every function borrows its numpy arguments (flat, C-contiguous; the Python layer makes
//! them so, copying only when a caller's layout demands it), enters the core through
//! [`enter`], which releases the GIL and turns a panic into a Python exception, and
//! returns flat arrays that the Python layer reshapes (a free view).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use expsoftmax_core::{exact, EdgeScores, Error, Graph, NodeScores, Problem, Real};
use numpy::{Element, PyArray1, PyReadonlyArray1};
use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;

create_exception!(
    _core,
    ShapeError,
    PyValueError,
    "Array shapes that do not fit together."
);
create_exception!(
    _core,
    NotForestError,
    PyValueError,
    "An exact method was asked for on a graph with a cycle."
);
create_exception!(
    _core,
    InfeasibleError,
    PyValueError,
    "The scores forbid every labelling (all have score -inf)."
);

fn to_py(e: Error) -> PyErr {
    match e {
        Error::Shape(m) => ShapeError::new_err(m),
        Error::Value(m) => PyValueError::new_err(m),
        Error::NotForest(m) => NotForestError::new_err(m),
        Error::Infeasible(m) => InfeasibleError::new_err(m),
    }
}

/// Runs core work without the GIL; a core error becomes its Python exception and a panic
/// (a bug) becomes a `RuntimeError` instead of reaching the interpreter.
fn enter<R: Send>(py: Python<'_>, work: impl FnOnce() -> Result<R, Error> + Send) -> PyResult<R> {
    let out = py.detach(|| catch_unwind(AssertUnwindSafe(work)));
    match out {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(to_py(e)),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(PyRuntimeError::new_err(format!(
                "internal error in expsoftmax (please report): {msg}"
            )))
        }
    }
}

/// A validated graph with its derived structures (rooted forest) cached.
#[pyclass(frozen, module = "expsoftmax._core")]
struct GraphCore {
    inner: Arc<Graph>,
}

#[pymethods]
impl GraphCore {
    /// `edges`: flat int64 array `(2 E,)`, pairs `(i, j)`.
    #[new]
    fn new(py: Python<'_>, num_nodes: i64, edges: PyReadonlyArray1<'_, i64>) -> PyResult<Self> {
        if num_nodes < 0 {
            return Err(PyValueError::new_err(format!(
                "num_nodes must be non-negative, got {num_nodes}"
            )));
        }
        let flat = edges
            .as_slice()
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        if flat.len() % 2 != 0 {
            return Err(ShapeError::new_err("edges must have shape (E, 2)"));
        }
        let n = num_nodes as usize;
        let g = enter(py, || {
            let mut pairs = Vec::with_capacity(flat.len() / 2);
            for (e, p) in flat.chunks_exact(2).enumerate() {
                if p.iter().any(|&v| v < 0 || v as u64 >= n as u64) {
                    return Err(Error::Value(format!(
                        "edge {e} = ({}, {}) names a node outside [0, {n})",
                        p[0], p[1]
                    )));
                }
                pairs.push([p[0] as u32, p[1] as u32]);
            }
            Graph::new(n, pairs)
        })?;
        Ok(GraphCore { inner: Arc::new(g) })
    }

    #[getter]
    fn is_forest(&self) -> bool {
        self.inner.is_forest()
    }

    #[getter]
    fn is_chain(&self) -> bool {
        self.inner.is_chain()
    }

    #[getter]
    fn num_components(&self) -> PyResult<usize> {
        self.inner
            .forest()
            .map(|f| f.num_components())
            .map_err(to_py)
    }
}

/// Shapes that come with the flat score buffers:
/// `(batch, node_batch, edge_batch, edge_tables, classes)`.
type Dims = (usize, usize, usize, usize, usize);

fn slice<'a, T: Element>(a: &'a PyReadonlyArray1<'_, T>, name: &str) -> PyResult<&'a [T]> {
    a.as_slice()
        .map_err(|_| PyValueError::new_err(format!("{name} must be C-contiguous")))
}

fn lengths_vec(lengths: Option<PyReadonlyArray1<'_, i64>>) -> PyResult<Option<Vec<usize>>> {
    let Some(l) = lengths else { return Ok(None) };
    let s = slice(&l, "lengths")?;
    if let Some((b, v)) = s.iter().enumerate().find(|(_, &v)| v < 0) {
        return Err(PyValueError::new_err(format!(
            "lengths[{b}] = {v} is negative"
        )));
    }
    Ok(Some(s.iter().map(|&v| v as usize).collect()))
}

fn problem<'a, T: Real>(
    g: &'a Graph,
    sn: &'a [T],
    se: &'a [T],
    (batch, nb, eb, ee, c): Dims,
    lengths: Option<&'a [usize]>,
) -> Result<Problem<'a, T>, Error> {
    Problem::new(
        g,
        NodeScores {
            data: sn,
            batch: nb,
            nodes: g.num_nodes(),
            classes: c,
        },
        EdgeScores::tables(se, eb, ee, c),
        batch,
        lengths,
    )
}

/// Dispatches on the dtype of the score arrays (both float32 or both float64) to a
/// function generic over the float type.
macro_rules! by_dtype {
    ($sn:expr, $se:expr, |$a:ident, $b:ident| $body:expr) => {{
        if let (Ok($a), Ok($b)) = (
            $sn.extract::<PyReadonlyArray1<'_, f32>>(),
            $se.extract::<PyReadonlyArray1<'_, f32>>(),
        ) {
            $body
        } else if let (Ok($a), Ok($b)) = (
            $sn.extract::<PyReadonlyArray1<'_, f64>>(),
            $se.extract::<PyReadonlyArray1<'_, f64>>(),
        ) {
            $body
        } else {
            Err(PyTypeError::new_err(
                "s_n and s_e must be 1-D arrays of one dtype, float32 or float64",
            ))
        }
    }};
}

/// Exact log Z and marginals on a forest. Returns flat `(log_z, node, edge or None)`.
#[pyfunction]
#[pyo3(signature = (graph, s_n, s_e, dims, lengths=None, want_edges=true))]
fn exact_marginals<'py>(
    py: Python<'py>,
    graph: &GraphCore,
    s_n: &Bound<'py, PyAny>,
    s_e: &Bound<'py, PyAny>,
    dims: Dims,
    lengths: Option<PyReadonlyArray1<'py, i64>>,
    want_edges: bool,
) -> PyResult<Py<PyAny>> {
    let lengths = lengths_vec(lengths)?;
    let g = &*graph.inner;
    by_dtype!(s_n, s_e, |sn, se| {
        let (sn, se) = (slice(&sn, "s_n")?, slice(&se, "s_e")?);
        let m = enter(py, || {
            exact::marginals(&problem(g, sn, se, dims, lengths.as_deref())?, want_edges)
        })?;
        let edge = m
            .edge
            .map(|v| PyArray1::from_vec(py, v).into_any().unbind());
        Ok((
            PyArray1::from_vec(py, m.log_z),
            PyArray1::from_vec(py, m.node),
            edge,
        )
            .into_pyobject(py)?
            .into_any()
            .unbind())
    })
}

/// Exact loss and gradients for gold labels `y` (flat `(B * I,)` int64).
/// Returns flat `(loss, grad_n, grad_e)`.
#[pyfunction]
#[pyo3(signature = (graph, s_n, s_e, dims, y, lengths=None, weights=None))]
#[allow(clippy::too_many_arguments)]
fn exact_loss_and_grad<'py>(
    py: Python<'py>,
    graph: &GraphCore,
    s_n: &Bound<'py, PyAny>,
    s_e: &Bound<'py, PyAny>,
    dims: Dims,
    y: PyReadonlyArray1<'py, i64>,
    lengths: Option<PyReadonlyArray1<'py, i64>>,
    weights: Option<PyReadonlyArray1<'py, f64>>,
) -> PyResult<Py<PyAny>> {
    let lengths = lengths_vec(lengths)?;
    let y = slice(&y, "y")?;
    let weights = weights.as_ref().map(|w| slice(w, "weights")).transpose()?;
    let g = &*graph.inner;
    by_dtype!(s_n, s_e, |sn, se| {
        let (sn, se) = (slice(&sn, "s_n")?, slice(&se, "s_e")?);
        let r = enter(py, || {
            exact::loss_and_grad(&problem(g, sn, se, dims, lengths.as_deref())?, y, weights)
        })?;
        Ok((
            PyArray1::from_vec(py, r.loss),
            PyArray1::from_vec(py, r.grad_node),
            PyArray1::from_vec(py, r.grad_edge),
        )
            .into_pyobject(py)?
            .into_any()
            .unbind())
    })
}

/// Exact MAP labelling, flat `(B * I,)` int64 (−1 at padded nodes).
#[pyfunction]
#[pyo3(signature = (graph, s_n, s_e, dims, lengths=None))]
fn exact_decode<'py>(
    py: Python<'py>,
    graph: &GraphCore,
    s_n: &Bound<'py, PyAny>,
    s_e: &Bound<'py, PyAny>,
    dims: Dims,
    lengths: Option<PyReadonlyArray1<'py, i64>>,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let lengths = lengths_vec(lengths)?;
    let g = &*graph.inner;
    by_dtype!(s_n, s_e, |sn, se| {
        let (sn, se) = (slice(&sn, "s_n")?, slice(&se, "s_e")?);
        let y = enter(py, || {
            exact::decode(&problem(g, sn, se, dims, lengths.as_deref())?)
        })?;
        Ok(PyArray1::from_vec(py, y))
    })
}

/// Exact samples, flat `(num_samples * B * I,)` int64 (−1 at padded nodes).
#[pyfunction]
#[pyo3(signature = (graph, s_n, s_e, dims, num_samples, seed, lengths=None))]
#[allow(clippy::too_many_arguments)]
fn exact_sample<'py>(
    py: Python<'py>,
    graph: &GraphCore,
    s_n: &Bound<'py, PyAny>,
    s_e: &Bound<'py, PyAny>,
    dims: Dims,
    num_samples: usize,
    seed: u64,
    lengths: Option<PyReadonlyArray1<'py, i64>>,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let lengths = lengths_vec(lengths)?;
    let g = &*graph.inner;
    by_dtype!(s_n, s_e, |sn, se| {
        let (sn, se) = (slice(&sn, "s_n")?, slice(&se, "s_e")?);
        let y = enter(py, || {
            exact::sample(
                &problem(g, sn, se, dims, lengths.as_deref())?,
                num_samples,
                seed,
            )
        })?;
        Ok(PyArray1::from_vec(py, y))
    })
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<GraphCore>()?;
    m.add_function(wrap_pyfunction!(exact_marginals, m)?)?;
    m.add_function(wrap_pyfunction!(exact_loss_and_grad, m)?)?;
    m.add_function(wrap_pyfunction!(exact_decode, m)?)?;
    m.add_function(wrap_pyfunction!(exact_sample, m)?)?;
    m.add("ShapeError", py.get_type::<ShapeError>())?;
    m.add("NotForestError", py.get_type::<NotForestError>())?;
    m.add("InfeasibleError", py.get_type::<InfeasibleError>())?;
    Ok(())
}
