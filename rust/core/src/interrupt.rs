//! Cooperative cancellation. A caller (the Python glue, on Ctrl-C) raises a [`Stop`] flag;
//! long loops call [`Stop::check`] between iterations, sweeps and batch items and return
//! [`Error::Interrupted`], so parallel work winds down without killing a thread and the
//! library stays usable. Checking is one relaxed atomic load: cheap enough for every
//! iteration of every item.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

/// A per-call cancellation flag.
#[derive(Debug, Default)]
pub struct Stop {
    flag: AtomicBool,
}

/// A flag nobody raises: for calls that cannot be interrupted (tests, Rust callers).
pub static NEVER: Stop = Stop::new();

impl Stop {
    pub const fn new() -> Stop {
        Stop {
            flag: AtomicBool::new(false),
        }
    }

    /// Asks the work to stop at its next check.
    pub fn raise(&self) {
        self.flag.store(true, Ordering::Relaxed);
    }

    pub fn is_raised(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// `Err(Interrupted)` once the flag is raised.
    #[inline]
    pub fn check(&self) -> Result<()> {
        if self.is_raised() {
            Err(Error::Interrupted)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raised_flag_interrupts() {
        let s = Stop::new();
        assert!(s.check().is_ok());
        s.raise();
        assert_eq!(s.check(), Err(Error::Interrupted));
        assert!(NEVER.check().is_ok());
    }
}
