//! The Python extension `expsoftmax._core`: the only place that knows about PyO3.
//!
//! - [`convert`]: numpy arrays into core views (borrowed, no copy) and results into dicts
//!   of named flat arrays;
//! - [`options`]: keyword options into the core's `Method` (checked there, once);
//! - [`errors`]: core errors as the exceptions of `expsoftmax.errors`, and [`errors::enter`],
//!   the one way into the core (GIL released, Ctrl-C honoured, panics caught);
//! - [`pool`]: the thread pool, rebuilt after `fork`.
//!
//! Four entry points (`infer`, `loss_and_grad`, `decode`, `sample`) serve every method;
//! two more are exact on forests only (`marginals_jvp`: second order, `topk`: k-best).

use std::sync::Arc;

use expsoftmax_core::{Entry, Error, Graph};
use numpy::PyReadonlyArray1;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

mod convert;
mod errors;

/// Rust allocations of the extension (scratch buffers, results handed to numpy) go
/// through mimalloc, which keeps freed pages for the next call instead of returning them
/// to the kernel: a training loop's calls then reuse their buffers rather than fault in
/// and zero fresh pages every time.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
mod options;
mod pool;

use convert::{slice, with_scores, Dims};
use errors::{enter, to_py};

/// A validated graph with its derived structures (rooted forest, adjacency) cached.
#[pyclass(frozen, module = "expsoftmax._core")]
struct GraphCore {
    inner: Arc<Graph>,
}

#[pymethods]
impl GraphCore {
    /// `edges`: flat int64 array `(2 E,)`, pairs `(i, j)`.
    #[new]
    fn new(py: Python<'_>, num_nodes: i128, edges: PyReadonlyArray1<'_, i64>) -> PyResult<Self> {
        if num_nodes <= 0 {
            return Err(PyValueError::new_err(format!(
                "a graph needs at least one node, got num_nodes = {num_nodes}"
            )));
        }
        let flat = slice(&edges, "edges")?;
        if flat.len() % 2 != 0 {
            return Err(to_py(Error::Shape("edges must have shape (E, 2)".into())));
        }
        expsoftmax_core::model::graph::check_num_nodes(num_nodes as u128).map_err(to_py)?;
        let n = num_nodes as u64;
        let g = enter(py, |_| {
            let mut pairs = Vec::with_capacity(flat.len() / 2);
            for (e, p) in flat.chunks_exact(2).enumerate() {
                if p.iter().any(|&v| v < 0 || v as u64 >= n) {
                    return Err(Error::Value(format!(
                        "edge {e} = ({}, {}) names a node outside [0, {n})",
                        p[0], p[1]
                    )));
                }
                pairs.push([p[0] as u32, p[1] as u32]);
            }
            Graph::new(n as usize, pairs)
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

    /// The junction tree exact inference would use: `(cliques, parents)`, cliques as lists
    /// of node ids in upward order, parents as clique indices (-1 for roots). Raises
    /// NotForestError when every order tried makes a clique too large to store.
    fn junction_tree(&self) -> PyResult<(Vec<Vec<u32>>, Vec<i64>)> {
        let jt = self.inner.junction_tree().map_err(|size| {
            to_py(Error::NotForest(format!(
                "no junction tree with cliques of at most {} nodes was found (the best order \
                 tried made a clique of {size}): exact inference is out of reach; use a loopy \
                 method",
                expsoftmax_core::model::junction::MAX_CLIQUE
            )))
        });
        let jt = jt?;
        let parents = jt
            .parent
            .iter()
            .map(|p| p.map_or(-1, |p| p as i64))
            .collect();
        Ok((jt.cliques.clone(), parents))
    }

    /// Default TRW edge appearance probabilities `(E,)` float64.
    fn default_edge_appearance(&self, py: Python<'_>) -> Py<PyAny> {
        convert::arr(py, self.inner.default_edge_appearance().to_vec())
    }
}

/// log Z and marginals. Returns a dict of flat arrays: `method`, `log_z`,
/// `node_marginals`, `edge_marginals` (None unless `want_edges`), `iterations`,
/// `converged`, `max_change`, and for Gibbs `node_stderr`, `log_z_stderr`, `rhat`.
#[pyfunction]
#[pyo3(signature = (graph, s_n, s_e, dims, weight=None, lengths=None, method="auto", options=None, want_edges=true))]
#[allow(clippy::too_many_arguments)]
fn infer<'py>(
    py: Python<'py>,
    graph: &GraphCore,
    s_n: &Bound<'py, PyAny>,
    s_e: &Bound<'py, PyAny>,
    dims: Dims,
    weight: Option<&Bound<'py, PyAny>>,
    lengths: Option<PyReadonlyArray1<'py, i64>>,
    method: &str,
    options: Option<&Bound<'py, PyDict>>,
    want_edges: bool,
) -> PyResult<Py<PyDict>> {
    let g = &*graph.inner;
    let m = options::method(g, method, options, Entry::Infer, dims.4)?;
    let lengths = convert::lengths(lengths)?;
    with_scores!(s_n, s_e, weight, dims, lengths.as_deref(), |sc| {
        let r = enter(py, |stop| {
            m.infer(&sc.problem_checked_by_method(g, stop)?, want_edges)
        })?;
        convert::inferred(py, m.name(), r)
    })
}

/// Loss and gradients for gold labels `y` (flat `(B * I,)` int64); `item_weights` `(B,)`
/// scale each item's gradient. Returns a dict: `method`, `loss`, `grad_node`, `grad_edge`,
/// `grad_weight` (None unless weighted), `iterations`, `converged`, `max_change`.
#[pyfunction]
#[pyo3(signature = (graph, s_n, s_e, dims, y, weight=None, lengths=None, item_weights=None, method="auto", options=None))]
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
    method: &str,
    options: Option<&Bound<'py, PyDict>>,
) -> PyResult<Py<PyDict>> {
    let g = &*graph.inner;
    let m = options::method(g, method, options, Entry::LossAndGrad, dims.4)?;
    let lengths = convert::lengths(lengths)?;
    let y = slice(&y, "y")?;
    let iw = item_weights
        .as_ref()
        .map(|w| slice(w, "item_weights"))
        .transpose()?;
    with_scores!(s_n, s_e, weight, dims, lengths.as_deref(), |sc| {
        let r = enter(py, |stop| {
            m.loss_and_grad(&sc.problem_checked_by_method(g, stop)?, y, iw)
        })?;
        convert::loss_grad(py, m.name(), r)
    })
}

/// MAP labelling. Returns a dict: `method`, `labels` (flat `(B * I,)` int64, −1 at padded
/// nodes), `iterations`, `converged`, `max_change`.
#[pyfunction]
#[pyo3(signature = (graph, s_n, s_e, dims, weight=None, lengths=None, method="auto", options=None))]
#[allow(clippy::too_many_arguments)]
fn decode<'py>(
    py: Python<'py>,
    graph: &GraphCore,
    s_n: &Bound<'py, PyAny>,
    s_e: &Bound<'py, PyAny>,
    dims: Dims,
    weight: Option<&Bound<'py, PyAny>>,
    lengths: Option<PyReadonlyArray1<'py, i64>>,
    method: &str,
    options: Option<&Bound<'py, PyDict>>,
) -> PyResult<Py<PyDict>> {
    let g = &*graph.inner;
    let m = options::method(g, method, options, Entry::Decode, dims.4)?;
    let lengths = convert::lengths(lengths)?;
    with_scores!(s_n, s_e, weight, dims, lengths.as_deref(), |sc| {
        let (y, info) = enter(py, |stop| m.decode(&sc.problem(g, stop)?))?;
        convert::decoded(py, m.name(), y, info)
    })
}

/// Samples, flat `(num_samples * B * I,)` int64 (−1 at padded nodes). Returns a dict:
/// `method`, `samples`.
#[pyfunction]
#[pyo3(signature = (graph, s_n, s_e, dims, num_samples, seed=None, weight=None, lengths=None, method="auto", options=None))]
#[allow(clippy::too_many_arguments)]
fn sample<'py>(
    py: Python<'py>,
    graph: &GraphCore,
    s_n: &Bound<'py, PyAny>,
    s_e: &Bound<'py, PyAny>,
    dims: Dims,
    num_samples: usize,
    seed: Option<u64>,
    weight: Option<&Bound<'py, PyAny>>,
    lengths: Option<PyReadonlyArray1<'py, i64>>,
    method: &str,
    options: Option<&Bound<'py, PyDict>>,
) -> PyResult<Py<PyDict>> {
    let g = &*graph.inner;
    let m = options::method(g, method, options, Entry::Sample, dims.4)?;
    let lengths = convert::lengths(lengths)?;
    with_scores!(s_n, s_e, weight, dims, lengths.as_deref(), |sc| {
        let y = enter(py, |stop| {
            m.sample(&sc.problem(g, stop)?, num_samples, seed)
        })?;
        let d = PyDict::new(py);
        d.set_item("method", m.name())?;
        d.set_item("samples", convert::arr(py, y))?;
        Ok(d.unbind())
    })
}

/// Forward-mode second order on forests: the derivatives of log Z and of the marginals in
/// the direction `(t_n (B * I * C,), t_e (B * E * C * C,))` float64 (dense, per item).
/// Returns a dict: `log_z`, `d_log_z` `(B,)`, `d_node`, `d_edge` (flat, float64).
#[pyfunction]
#[pyo3(signature = (graph, s_n, s_e, dims, t_n, t_e, weight=None, lengths=None))]
#[allow(clippy::too_many_arguments)]
fn marginals_jvp<'py>(
    py: Python<'py>,
    graph: &GraphCore,
    s_n: &Bound<'py, PyAny>,
    s_e: &Bound<'py, PyAny>,
    dims: Dims,
    t_n: PyReadonlyArray1<'py, f64>,
    t_e: PyReadonlyArray1<'py, f64>,
    weight: Option<&Bound<'py, PyAny>>,
    lengths: Option<PyReadonlyArray1<'py, i64>>,
) -> PyResult<Py<PyDict>> {
    let g = &*graph.inner;
    let lengths = convert::lengths(lengths)?;
    let (tn, te) = (slice(&t_n, "t_n")?, slice(&t_e, "t_e")?);
    with_scores!(s_n, s_e, weight, dims, lengths.as_deref(), |sc| {
        let t = enter(py, |stop| {
            expsoftmax_core::exact::tangent::marginals_jvp(&sc.problem(g, stop)?, tn, te)
        })?;
        let d = PyDict::new(py);
        d.set_item("log_z", convert::arr(py, t.log_z))?;
        d.set_item("d_log_z", convert::arr(py, t.d_log_z))?;
        d.set_item("d_node", convert::arr(py, t.node))?;
        d.set_item("d_edge", convert::arr(py, t.edge))?;
        Ok(d.unbind())
    })
}

/// The `k` best labellings on a forest, best first. Returns a dict: `labels` (flat
/// `(k * B * I,)` int64, −1 at padded nodes and in rows past the last labelling) and
/// `scores` (flat `(k * B,)` float64, −inf in those rows).
#[pyfunction]
#[pyo3(signature = (graph, s_n, s_e, dims, k, weight=None, lengths=None))]
#[allow(clippy::too_many_arguments)]
fn topk<'py>(
    py: Python<'py>,
    graph: &GraphCore,
    s_n: &Bound<'py, PyAny>,
    s_e: &Bound<'py, PyAny>,
    dims: Dims,
    k: usize,
    weight: Option<&Bound<'py, PyAny>>,
    lengths: Option<PyReadonlyArray1<'py, i64>>,
) -> PyResult<Py<PyDict>> {
    let g = &*graph.inner;
    let lengths = convert::lengths(lengths)?;
    with_scores!(s_n, s_e, weight, dims, lengths.as_deref(), |sc| {
        let (labels, scores) = enter(py, |stop| {
            expsoftmax_core::exact::kbest::topk(&sc.problem(g, stop)?, k)
        })?;
        let d = PyDict::new(py);
        d.set_item("labels", convert::arr(py, labels))?;
        d.set_item("scores", convert::arr(py, scores))?;
        Ok(d.unbind())
    })
}

/// Threads above this are refused: more than any machine's cores, and each costs a stack.
const MAX_THREADS: i64 = 1024;

/// Sets the number of threads the core uses (0: default, which honours
/// `RAYON_NUM_THREADS`, else one per core).
#[pyfunction]
fn set_num_threads(n: i64) -> PyResult<()> {
    if !(0..=MAX_THREADS).contains(&n) {
        return Err(PyValueError::new_err(format!(
            "number of threads must lie in [0, {MAX_THREADS}] (0: one per core), got {n}"
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

/// What this build is and what it runs: version, build profile, SIMD path, threads.
#[pyfunction]
fn build_info(py: Python<'_>) -> PyResult<Py<PyDict>> {
    use expsoftmax_core::kernels::batch;
    let d = PyDict::new(py);
    d.set_item("version", env!("CARGO_PKG_VERSION"))?;
    d.set_item(
        "build_profile",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    )?;
    d.set_item(
        "target",
        format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS),
    )?;
    d.set_item("simd", batch::simd_path())?;
    d.set_item("cpu_avx2", batch::cpu_has_avx2())?;
    d.set_item("simd_env", std::env::var(batch::SIMD_ENV).ok())?;
    d.set_item("threads", pool::threads())?;
    d.set_item("thread_source", pool::thread_source())?;
    d.set_item("spin_us", pool::spin().as_micros() as u64)?;
    d.set_item(
        "available_cores",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    )?;
    Ok(d.unbind())
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(build_info, m)?)?;
    m.add_class::<GraphCore>()?;
    m.add_function(wrap_pyfunction!(infer, m)?)?;
    m.add_function(wrap_pyfunction!(loss_and_grad, m)?)?;
    m.add_function(wrap_pyfunction!(decode, m)?)?;
    m.add_function(wrap_pyfunction!(sample, m)?)?;
    m.add_function(wrap_pyfunction!(marginals_jvp, m)?)?;
    m.add_function(wrap_pyfunction!(topk, m)?)?;
    m.add_function(wrap_pyfunction!(options::method_options, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    Ok(())
}
