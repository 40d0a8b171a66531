//! The Python extension `expsoftmax._core`: the only place that knows about PyO3.
//!
//! Every function borrows its numpy arguments (flat, C-contiguous; the Python layer makes
//! them so, copying only when a caller's layout demands it), enters the core through
//! [`enter`], which releases the GIL and turns a panic into a Python exception, and
//! returns flat arrays that the Python layer reshapes (a free view).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use expsoftmax_core::gibbs::{self, Gibbs, GibbsOptions};
use expsoftmax_core::loopy::{self, Loopy, LoopyOptions, Method, Schedule};
use expsoftmax_core::objective::{self, ItemInfo};
use expsoftmax_core::{exact, EdgeScores, Error, Graph, NodeScores, Problem, Real};
use numpy::{Element, PyArray1, PyReadonlyArray1};
use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;

mod pool;

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
    let pool = pool::pool();
    let out = py.detach(|| catch_unwind(AssertUnwindSafe(|| pool.install(work))));
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
/// `(batch, node_batch, edge_batch, edge_tables, classes, weight_batch)`.
type Dims = (usize, usize, usize, usize, usize, usize);

/// Loopy options from Python: `(method, max_iter, tol, damping, schedule, edge_appearance)`.
type LoopyArgs<'py> = (
    String,
    usize,
    f64,
    f64,
    String,
    Option<PyReadonlyArray1<'py, f64>>,
);

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

fn loopy_options(args: &Option<LoopyArgs<'_>>) -> PyResult<Option<LoopyOptions>> {
    let Some((name, max_iter, tol, damping, schedule, rho)) = args else {
        return Ok(None);
    };
    let method = match name.as_str() {
        "bp" => Method::Bp,
        "mean_field" => Method::MeanField,
        "trw" => {
            let r = rho
                .as_ref()
                .ok_or_else(|| PyValueError::new_err("trw needs edge appearance probabilities"))?;
            Method::Trw(slice(r, "edge_appearance")?.to_vec())
        }
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown loopy method {other:?}"
            )))
        }
    };
    let schedule = match schedule.as_str() {
        "parallel" => Schedule::Parallel,
        "checkerboard" | "colour" | "color" => Schedule::Colour,
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown schedule {other:?}; use \"parallel\" or \"checkerboard\""
            )))
        }
    };
    Ok(Some(LoopyOptions {
        method,
        max_iter: *max_iter,
        tol: *tol,
        damping: *damping,
        schedule,
    }))
}

fn problem<'a, T: Real>(
    g: &'a Graph,
    sn: &'a [T],
    se: &'a [T],
    weight: Option<&'a [T]>,
    (batch, nb, eb, ee, c, wb): Dims,
    lengths: Option<&'a [usize]>,
) -> Result<Problem<'a, T>, Error> {
    let edge = match weight {
        Some(w) => EdgeScores::weighted(w, wb, se, eb, c),
        None => EdgeScores::tables(se, eb, ee, c),
    };
    Problem::new(
        g,
        NodeScores {
            data: sn,
            batch: nb,
            nodes: g.num_nodes(),
            classes: c,
        },
        edge,
        batch,
        lengths,
    )
}

/// Dispatches on the dtype of the score arrays (all float32 or all float64) to a body
/// generic over the float type; `$w` is the optional weight array in the same dtype.
macro_rules! by_dtype {
    ($sn:expr, $se:expr, $weight:expr, |$a:ident, $b:ident, $w:ident| $body:expr) => {{
        if let (Ok($a), Ok($b)) = (
            $sn.extract::<PyReadonlyArray1<'_, f32>>(),
            $se.extract::<PyReadonlyArray1<'_, f32>>(),
        ) {
            let $w = $weight
                .map(|w| w.extract::<PyReadonlyArray1<'_, f32>>())
                .transpose()
                .map_err(|_| PyTypeError::new_err("edge weights must have the scores' dtype"))?;
            $body
        } else if let (Ok($a), Ok($b)) = (
            $sn.extract::<PyReadonlyArray1<'_, f64>>(),
            $se.extract::<PyReadonlyArray1<'_, f64>>(),
        ) {
            let $w = $weight
                .map(|w| w.extract::<PyReadonlyArray1<'_, f64>>())
                .transpose()
                .map_err(|_| PyTypeError::new_err("edge weights must have the scores' dtype"))?;
            $body
        } else {
            Err(PyTypeError::new_err(
                "s_n and s_e must be 1-D arrays of one dtype, float32 or float64",
            ))
        }
    }};
}

fn arr<'py, T: Element>(py: Python<'py>, v: Vec<T>) -> Py<PyAny> {
    PyArray1::from_vec(py, v).into_any().unbind()
}

/// log Z and marginals (exact when `options` is None, else a loopy method).
/// Returns flat `(log_z, node, edge or None, iterations, converged, max_change)`.
#[pyfunction]
#[pyo3(signature = (graph, s_n, s_e, dims, weight=None, lengths=None, want_edges=true, options=None))]
#[allow(clippy::too_many_arguments)]
fn marginals<'py>(
    py: Python<'py>,
    graph: &GraphCore,
    s_n: &Bound<'py, PyAny>,
    s_e: &Bound<'py, PyAny>,
    dims: Dims,
    weight: Option<&Bound<'py, PyAny>>,
    lengths: Option<PyReadonlyArray1<'py, i64>>,
    want_edges: bool,
    options: Option<LoopyArgs<'py>>,
) -> PyResult<Py<PyAny>> {
    let lengths = lengths_vec(lengths)?;
    let opts = loopy_options(&options)?;
    let g = &*graph.inner;
    by_dtype!(s_n, s_e, weight, |sn, se, w| {
        let (sn, se) = (slice(&sn, "s_n")?, slice(&se, "s_e")?);
        let w = w.as_ref().map(|w| slice(w, "weight")).transpose()?;
        let m = enter(py, || {
            let pb = problem(g, sn, se, w, dims, lengths.as_deref())?;
            match opts {
                None => exact::marginals(&pb, want_edges),
                Some(o) => objective::marginals(&pb, &Loopy::new(&pb, o)?, want_edges),
            }
        })?;
        Ok((
            arr(py, m.log_z),
            arr(py, m.node),
            m.edge.map(|v| arr(py, v)),
            arr(py, m.iterations),
            arr(py, m.converged),
            arr(py, m.max_change),
        )
            .into_pyobject(py)?
            .into_any()
            .unbind())
    })
}

/// Loss and gradients for gold labels `y` (flat `(B * I,)` int64). Returns flat
/// `(loss, grad_n, grad_e, grad_weight or None, iterations, converged, max_change)`.
#[pyfunction]
#[pyo3(signature = (graph, s_n, s_e, dims, y, weight=None, lengths=None, item_weights=None, options=None))]
#[allow(clippy::too_many_arguments)]
fn loss_and_grad<'py>(
    py: Python<'py>,
    graph: &GraphCore,
    s_n: &Bound<'py, PyAny>,
    s_e: &Bound<'py, PyAny>,
    dims: Dims,
    y: PyReadonlyArray1<'py, i64>,
    weight: Option<&Bound<'py, PyAny>>,
    lengths: Option<PyReadonlyArray1<'py, i64>>,
    item_weights: Option<PyReadonlyArray1<'py, f64>>,
    options: Option<LoopyArgs<'py>>,
) -> PyResult<Py<PyAny>> {
    let lengths = lengths_vec(lengths)?;
    let opts = loopy_options(&options)?;
    let y = slice(&y, "y")?;
    let iw = item_weights
        .as_ref()
        .map(|w| slice(w, "item_weights"))
        .transpose()?;
    let g = &*graph.inner;
    by_dtype!(s_n, s_e, weight, |sn, se, w| {
        let (sn, se) = (slice(&sn, "s_n")?, slice(&se, "s_e")?);
        let w = w.as_ref().map(|w| slice(w, "weight")).transpose()?;
        let r = enter(py, || {
            let pb = problem(g, sn, se, w, dims, lengths.as_deref())?;
            match opts {
                None => exact::loss_and_grad(&pb, y, iw),
                Some(o) => objective::loss_and_grad(&pb, &Loopy::new(&pb, o)?, y, iw),
            }
        })?;
        Ok((
            arr(py, r.loss),
            arr(py, r.grad_node),
            arr(py, r.grad_edge),
            r.grad_weight.map(|v| arr(py, v)),
            arr(py, r.iterations),
            arr(py, r.converged),
            arr(py, r.max_change),
        )
            .into_pyobject(py)?
            .into_any()
            .unbind())
    })
}

/// MAP labelling, flat `(B * I,)` int64 (−1 at padded nodes), by exact max-product on a
/// forest or max-product BP. Returns `(labels, iterations, converged, max_change)`.
#[pyfunction]
#[pyo3(signature = (graph, s_n, s_e, dims, weight=None, lengths=None, options=None))]
#[allow(clippy::too_many_arguments)]
fn decode<'py>(
    py: Python<'py>,
    graph: &GraphCore,
    s_n: &Bound<'py, PyAny>,
    s_e: &Bound<'py, PyAny>,
    dims: Dims,
    weight: Option<&Bound<'py, PyAny>>,
    lengths: Option<PyReadonlyArray1<'py, i64>>,
    options: Option<LoopyArgs<'py>>,
) -> PyResult<Py<PyAny>> {
    let lengths = lengths_vec(lengths)?;
    let opts = loopy_options(&options)?;
    let g = &*graph.inner;
    by_dtype!(s_n, s_e, weight, |sn, se, w| {
        let (sn, se) = (slice(&sn, "s_n")?, slice(&se, "s_e")?);
        let w = w.as_ref().map(|w| slice(w, "weight")).transpose()?;
        let (y, info) = enter(py, || {
            let pb = problem(g, sn, se, w, dims, lengths.as_deref())?;
            match &opts {
                None => Ok((exact::decode(&pb)?, vec![ItemInfo::exact(0.0); pb.batch])),
                Some(o) => loopy::decode(&pb, o),
            }
        })?;
        Ok((
            arr(py, y),
            arr(py, info.iter().map(|i| i.iterations).collect::<Vec<_>>()),
            arr(py, info.iter().map(|i| i.converged).collect::<Vec<_>>()),
            arr(py, info.iter().map(|i| i.max_change).collect::<Vec<_>>()),
        )
            .into_pyobject(py)?
            .into_any()
            .unbind())
    })
}

/// Exact samples, flat `(num_samples * B * I,)` int64 (−1 at padded nodes).
#[pyfunction]
#[pyo3(signature = (graph, s_n, s_e, dims, num_samples, seed, weight=None, lengths=None))]
#[allow(clippy::too_many_arguments)]
fn exact_sample<'py>(
    py: Python<'py>,
    graph: &GraphCore,
    s_n: &Bound<'py, PyAny>,
    s_e: &Bound<'py, PyAny>,
    dims: Dims,
    num_samples: usize,
    seed: u64,
    weight: Option<&Bound<'py, PyAny>>,
    lengths: Option<PyReadonlyArray1<'py, i64>>,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let lengths = lengths_vec(lengths)?;
    let g = &*graph.inner;
    by_dtype!(s_n, s_e, weight, |sn, se, w| {
        let (sn, se) = (slice(&sn, "s_n")?, slice(&se, "s_e")?);
        let w = w.as_ref().map(|w| slice(w, "weight")).transpose()?;
        let y = enter(py, || {
            exact::sample(
                &problem(g, sn, se, w, dims, lengths.as_deref())?,
                num_samples,
                seed,
            )
        })?;
        Ok(PyArray1::from_vec(py, y))
    })
}

/// Sets the number of threads the core uses (0: default, which honours
/// `RAYON_NUM_THREADS`, else one per core).
#[pyfunction]
fn set_num_threads(n: i64) -> PyResult<()> {
    if n < 0 {
        return Err(PyValueError::new_err(format!(
            "number of threads must be >= 0, got {n}"
        )));
    }
    pool::set_threads(n as usize);
    Ok(())
}

/// The number of threads the core uses.
#[pyfunction]
fn get_num_threads() -> usize {
    pool::threads()
}

/// Gibbs options from Python:
/// `(num_samples, burn_in, thin, num_chains, seed, init_gold, ais_steps, ais_runs)`.
type GibbsArgs = (usize, usize, usize, usize, u64, bool, usize, usize);

fn gibbs_options(a: GibbsArgs) -> GibbsOptions {
    let (num_samples, burn_in, thin, num_chains, seed, init_gold, ais_steps, ais_runs) = a;
    GibbsOptions {
        num_samples,
        burn_in,
        thin,
        num_chains,
        seed,
        init_gold,
        ais_steps,
        ais_runs,
    }
}

/// Gibbs estimates. Returns flat `(log_z, log_z_stderr, node, node_stderr, edge, rhat)`.
#[pyfunction]
#[pyo3(signature = (graph, s_n, s_e, dims, options, weight=None))]
fn gibbs_infer<'py>(
    py: Python<'py>,
    graph: &GraphCore,
    s_n: &Bound<'py, PyAny>,
    s_e: &Bound<'py, PyAny>,
    dims: Dims,
    options: GibbsArgs,
    weight: Option<&Bound<'py, PyAny>>,
) -> PyResult<Py<PyAny>> {
    let g = &*graph.inner;
    let o = gibbs_options(options);
    by_dtype!(s_n, s_e, weight, |sn, se, w| {
        let (sn, se) = (slice(&sn, "s_n")?, slice(&se, "s_e")?);
        let w = w.as_ref().map(|w| slice(w, "weight")).transpose()?;
        let r = enter(py, || gibbs::infer(&problem(g, sn, se, w, dims, None)?, &o))?;
        Ok((
            arr(py, r.0),
            arr(py, r.1),
            arr(py, r.2),
            arr(py, r.3),
            arr(py, r.4),
            arr(py, r.5),
        )
            .into_pyobject(py)?
            .into_any()
            .unbind())
    })
}

/// Gibbs loss (AIS log Z − s(y)) and gradients (sampled marginals − gold). Returns flat
/// `(loss, grad_n, grad_e, grad_weight or None, rhat)`.
#[pyfunction]
#[pyo3(signature = (graph, s_n, s_e, dims, y, options, weight=None, item_weights=None))]
#[allow(clippy::too_many_arguments)]
fn gibbs_loss_and_grad<'py>(
    py: Python<'py>,
    graph: &GraphCore,
    s_n: &Bound<'py, PyAny>,
    s_e: &Bound<'py, PyAny>,
    dims: Dims,
    y: PyReadonlyArray1<'py, i64>,
    options: GibbsArgs,
    weight: Option<&Bound<'py, PyAny>>,
    item_weights: Option<PyReadonlyArray1<'py, f64>>,
) -> PyResult<Py<PyAny>> {
    let g = &*graph.inner;
    let o = gibbs_options(options);
    let y = slice(&y, "y")?;
    let iw = item_weights
        .as_ref()
        .map(|w| slice(w, "item_weights"))
        .transpose()?;
    by_dtype!(s_n, s_e, weight, |sn, se, w| {
        let (sn, se) = (slice(&sn, "s_n")?, slice(&se, "s_e")?);
        let w = w.as_ref().map(|w| slice(w, "weight")).transpose()?;
        let r = enter(py, || {
            let pb = problem(g, sn, se, w, dims, None)?;
            objective::loss_and_grad(&pb, &Gibbs::new(&pb, o, Some(y))?, y, iw)
        })?;
        Ok((
            arr(py, r.loss),
            arr(py, r.grad_node),
            arr(py, r.grad_edge),
            r.grad_weight.map(|v| arr(py, v)),
            arr(py, r.max_change),
        )
            .into_pyobject(py)?
            .into_any()
            .unbind())
    })
}

/// Gibbs decode (best sample) or samples. `num_samples = 0` decodes; otherwise returns
/// flat `(num_samples * B * I,)` samples.
#[pyfunction]
#[pyo3(signature = (graph, s_n, s_e, dims, options, num_samples, weight=None))]
#[allow(clippy::too_many_arguments)]
fn gibbs_labels<'py>(
    py: Python<'py>,
    graph: &GraphCore,
    s_n: &Bound<'py, PyAny>,
    s_e: &Bound<'py, PyAny>,
    dims: Dims,
    options: GibbsArgs,
    num_samples: usize,
    weight: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let g = &*graph.inner;
    let o = gibbs_options(options);
    by_dtype!(s_n, s_e, weight, |sn, se, w| {
        let (sn, se) = (slice(&sn, "s_n")?, slice(&se, "s_e")?);
        let w = w.as_ref().map(|w| slice(w, "weight")).transpose()?;
        let y = enter(py, || {
            let pb = problem(g, sn, se, w, dims, None)?;
            o.check()?;
            if num_samples == 0 {
                gibbs::decode(&pb, &o)
            } else {
                gibbs::sample(&pb, &o, num_samples)
            }
        })?;
        Ok(PyArray1::from_vec(py, y))
    })
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<GraphCore>()?;
    m.add_function(wrap_pyfunction!(marginals, m)?)?;
    m.add_function(wrap_pyfunction!(gibbs_infer, m)?)?;
    m.add_function(wrap_pyfunction!(gibbs_loss_and_grad, m)?)?;
    m.add_function(wrap_pyfunction!(gibbs_labels, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(loss_and_grad, m)?)?;
    m.add_function(wrap_pyfunction!(decode, m)?)?;
    m.add_function(wrap_pyfunction!(exact_sample, m)?)?;
    m.add("ShapeError", py.get_type::<ShapeError>())?;
    m.add("NotForestError", py.get_type::<NotForestError>())?;
    m.add("InfeasibleError", py.get_type::<InfeasibleError>())?;
    Ok(())
}
