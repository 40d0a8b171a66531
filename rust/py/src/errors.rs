//! Core errors as Python exceptions, and the one way into the core ([`enter`]).
//!
//! The exception classes are defined in Python (`expsoftmax.errors`, so their module path is
//! public and they pickle) and looked up here when an error is raised.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::time::Duration;

use expsoftmax_core::interrupt::Stop;
use expsoftmax_core::spin;
use expsoftmax_core::Error;
use pyo3::exceptions::{PyKeyboardInterrupt, PyMemoryError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyType;

use crate::pool;

/// How often a running call looks for Ctrl-C (and other signal handlers that raise).
const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// The class `name` of `expsoftmax.errors`.
fn class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyType>> {
    Ok(py
        .import("expsoftmax.errors")?
        .getattr(name)?
        .cast_into::<PyType>()?)
}

fn typed(name: &str, msg: String) -> PyErr {
    Python::attach(|py| match class(py, name) {
        Ok(cls) => PyErr::from_type(cls, msg),
        Err(e) => e,
    })
}

/// The Python exception for a core error.
pub fn to_py(e: Error) -> PyErr {
    match e {
        Error::Shape(m) => typed("ShapeError", m),
        Error::Option(m) => typed("OptionError", m),
        Error::NotForest(m) => typed("NotForestError", m),
        Error::Infeasible(m) => typed("InfeasibleError", m),
        Error::Value(m) => PyValueError::new_err(m),
        Error::Memory(m) => PyMemoryError::new_err(m),
        Error::Interrupted => PyKeyboardInterrupt::new_err("interrupted"),
    }
}

/// Runs core work in the library's thread pool without the GIL. Meanwhile the calling
/// thread wakes every [`SIGNAL_POLL`] to run Python's signal handlers; when one raises
/// (Ctrl-C: KeyboardInterrupt) the work's [`Stop`] flag is raised, the work winds down at
/// its next check, and that exception is returned. A core error becomes its Python
/// exception; a panic (a bug) becomes a `RuntimeError` instead of reaching the interpreter.
pub fn enter<R: Send>(
    py: Python<'_>,
    work: impl FnOnce(&Stop) -> Result<R, Error> + Send,
) -> PyResult<R> {
    let pool = pool::pool();
    let stop = Stop::new();
    let mut signal: Option<PyErr> = None;
    let out = py.detach(|| {
        let (done, finished) = mpsc::channel();
        // The work is queued into the pool while this thread stays free to watch for
        // signals; the scope returns once the work has finished (no thread outlives it).
        pool.in_place_scope(|s| {
            let stop = &stop;
            s.spawn(move |_| {
                // (Inside a linger job the thread is already marked: nothing to do.)
                let _busy = spin::Busy::enter();
                let _ = done.send(catch_unwind(AssertUnwindSafe(|| work(stop))));
            });
            // The other threads stay awake through the work's serial stretches and for
            // a while after it.
            spin::keep_awake(&pool, pool::spin());
            loop {
                match finished.recv_timeout(SIGNAL_POLL) {
                    Ok(r) => return Some(r),
                    Err(mpsc::RecvTimeoutError::Disconnected) => return None,
                    Err(mpsc::RecvTimeoutError::Timeout) if signal.is_none() => {
                        if let Err(e) = Python::attach(|py| py.check_signals()) {
                            signal = Some(e);
                            stop.raise();
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                }
            }
        })
    });
    if let Some(e) = signal {
        return Err(e);
    }
    match out {
        Some(Ok(Ok(r))) => Ok(r),
        Some(Ok(Err(e))) => Err(to_py(e)),
        Some(Err(panic)) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(PyRuntimeError::new_err(format!(
                "internal error in expsoftmax (please report): {msg}"
            )))
        }
        None => Err(PyRuntimeError::new_err(
            "internal error in expsoftmax (please report): the work ended without a result",
        )),
    }
}
