//! The one error type of the core. Each kind maps to its own Python exception in the glue.

use std::fmt;

/// Everything the core can refuse. Messages name the offending array and index, because
/// they are shown to Python users as they are.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// Array shapes that do not fit together (becomes `expsoftmax.ShapeError`).
    Shape(String),
    /// A value that is not allowed: NaN or +inf scores, labels out of range, bad edges.
    Value(String),
    /// An exact method was asked for on a graph with a cycle.
    NotForest(String),
    /// The scores forbid every labelling (all have score −inf), so Z = 0.
    Infeasible(String),
    /// An unknown method or option name, or an option value out of range.
    Option(String),
    /// An output or working array that cannot be allocated; names the array and its size.
    Memory(String),
    /// The caller raised the call's [`crate::interrupt::Stop`] flag (Ctrl-C).
    Interrupted,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Shape(m)
            | Error::Value(m)
            | Error::NotForest(m)
            | Error::Infeasible(m)
            | Error::Option(m)
            | Error::Memory(m) => f.write_str(m),
            Error::Interrupted => f.write_str("interrupted"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// Shorthand for `Err(Error::Shape(format!(...)))`.
#[macro_export]
macro_rules! shape_err {
    ($($arg:tt)*) => { Err($crate::error::Error::Shape(format!($($arg)*))) };
}

/// Shorthand for `Err(Error::Value(format!(...)))`.
#[macro_export]
macro_rules! value_err {
    ($($arg:tt)*) => { Err($crate::error::Error::Value(format!($($arg)*))) };
}

/// Shorthand for `Err(Error::Option(format!(...)))`.
#[macro_export]
macro_rules! option_err {
    ($($arg:tt)*) => { Err($crate::error::Error::Option(format!($($arg)*))) };
}
