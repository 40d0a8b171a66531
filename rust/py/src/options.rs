//! Keyword options from Python into the core's [`Method`]: each value becomes a [`Value`]
//! by its Python type (no coercion: `1.5` is not an integer, `True` is not a number), and
//! the core checks names, types and ranges in one place, with one error text.

use expsoftmax_core::method::{self, default_value, option_names, Entry, Method, Value};
use expsoftmax_core::Graph;
use numpy::PyReadonlyArray1;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyString};

use crate::errors::to_py;

fn value(name: &str, v: &Bound<'_, PyAny>) -> PyResult<Value> {
    let has = |attr: &str| v.hasattr(attr).unwrap_or(false);
    let type_name = v.get_type().name()?.to_string();
    Ok(if v.is_none() {
        Value::None
    } else if v.is_instance_of::<PyBool>() || type_name == "bool" || type_name == "bool_" {
        Value::Bool(v.is_truthy()?)
    } else if v.is_instance_of::<PyFloat>() {
        Value::Float(v.extract::<f64>()?)
    } else if v.is_instance_of::<PyString>() {
        Value::Str(v.extract()?)
    } else if v.is_instance_of::<PyInt>()
        || (has("__index__") && !has("shape"))
        || type_name.starts_with("int")
        || type_name.starts_with("uint")
    {
        match v.call_method0("__index__")?.extract::<i128>() {
            Ok(i) => Value::Int(i),
            // Beyond 128 bits: certainly out of any option's range.
            Err(_) => Value::Int(if v.gt(0)? { i128::MAX } else { i128::MIN }),
        }
    } else if has("__float__")
        && v.extract::<PyReadonlyArray1<'_, f64>>().is_err()
        && !has("__len__")
    {
        Value::Float(v.extract::<f64>()?)
    } else if let Ok(a) = v.extract::<PyReadonlyArray1<'_, f64>>() {
        Value::Floats(a.as_array().to_vec())
    } else if let Ok(a) = v.extract::<Vec<f64>>() {
        Value::Floats(a)
    } else {
        return Err(to_py(expsoftmax_core::Error::Option(format!(
            "option {name} cannot be a {type_name}"
        ))));
    })
}

/// The method `name` with `options` (keyword arguments), checked for `entry` on `graph`
/// with `classes` labels.
pub fn method(
    graph: &Graph,
    name: &str,
    options: Option<&Bound<'_, PyDict>>,
    entry: Entry,
    classes: usize,
) -> PyResult<Method> {
    let mut opts = Vec::new();
    if let Some(d) = options {
        for (k, v) in d.iter() {
            let k: String = k.extract()?;
            let val = value(&k, &v)?;
            opts.push((k, val));
        }
    }
    Method::parse(name, &opts, graph, entry, classes).map_err(to_py)
}

fn to_object(py: Python<'_>, v: Value) -> PyResult<Py<PyAny>> {
    Ok(match v {
        Value::None => py.None(),
        Value::Bool(b) => b.into_pyobject(py)?.to_owned().into_any().unbind(),
        Value::Int(i) => i.into_pyobject(py)?.into_any().unbind(),
        Value::Float(x) => x.into_pyobject(py)?.into_any().unbind(),
        Value::Str(s) => s.into_pyobject(py)?.into_any().unbind(),
        Value::Floats(v) => v.into_pyobject(py)?.into_any().unbind(),
    })
}

/// `{method: {option: default}}` for `entry` ("infer" by default): the core's table,
/// exposed so Python documents exactly what the core accepts.
#[pyfunction]
#[pyo3(signature = (entry="infer"))]
pub fn method_options(py: Python<'_>, entry: &str) -> PyResult<Py<PyDict>> {
    let entry = match entry {
        "infer" => Entry::Infer,
        "loss_and_grad" => Entry::LossAndGrad,
        "decode" => Entry::Decode,
        "sample" => Entry::Sample,
        other => {
            return Err(to_py(expsoftmax_core::Error::Option(format!(
                "unknown entry point {other:?}"
            ))))
        }
    };
    let out = PyDict::new(py);
    for m in &method::METHODS[1..] {
        if entry == Entry::Sample && !matches!(*m, "exact" | "gibbs") {
            continue;
        }
        let d = PyDict::new(py);
        for o in option_names(m, entry) {
            d.set_item(o, to_object(py, default_value(o))?)?;
        }
        out.set_item(m, d)?;
    }
    Ok(out.unbind())
}
