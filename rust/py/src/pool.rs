//! The thread pool the core runs in.
//!
//! A pool of our own (not rayon's global one) so that `set_num_threads` can resize it, and
//! so that a process forked after using it (PyTorch DataLoader workers) gets a fresh pool:
//! the parent's worker threads do not exist in the child, and waiting on them would hang.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rayon::{ThreadPool, ThreadPoolBuilder};

/// The environment variable that sets how long the pool's threads stay awake looking for
/// work after they last found some (microseconds; `0`: rayon's own brief spin only).
pub const SPIN_ENV: &str = "EXPSOFTMAX_SPIN_US";

/// [`SPIN_ENV`]'s default: a few small calls' length, so that back-to-back calls (a loop
/// over images, a benchmark) find the threads awake ([`expsoftmax_core::spin`]).
const DEFAULT_SPIN_US: u64 = 1000;

struct State {
    pool: Arc<ThreadPool>,
    /// Process that built the pool.
    pid: u32,
    /// Requested size (0: rayon's default, which honours `RAYON_NUM_THREADS`).
    requested: usize,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn build(threads: usize) -> Arc<ThreadPool> {
    Arc::new(
        ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("expsoftmax-{i}"))
            .build()
            .expect("cannot start the expsoftmax thread pool"),
    )
}

/// The current pool, rebuilt if this process is a fork of the one that built it.
pub fn pool() -> Arc<ThreadPool> {
    let mut st = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let pid = std::process::id();
    match st.as_mut() {
        Some(s) if s.pid == pid => s.pool.clone(),
        Some(s) => {
            // Forked: the old pool's threads are gone; never touch (or drop) it.
            let old = std::mem::replace(&mut s.pool, build(s.requested));
            std::mem::forget(old);
            s.pid = pid;
            s.pool.clone()
        }
        None => {
            let pool = build(0);
            *st = Some(State {
                pool: pool.clone(),
                pid,
                requested: 0,
            });
            pool
        }
    }
}

/// Resizes the pool (`0`: default size).
pub fn set_threads(n: usize) {
    let mut st = STATE.lock().unwrap_or_else(|e| e.into_inner());
    *st = Some(State {
        pool: build(n),
        pid: std::process::id(),
        requested: n,
    });
}

pub fn threads() -> usize {
    pool().current_num_threads()
}

/// Where the thread count comes from: `set_num_threads`, `RAYON_NUM_THREADS`, or the cores
/// this process may run on (rayon's default: `available_parallelism`, which follows the
/// CPU affinity mask and cgroup quotas).
pub fn thread_source() -> &'static str {
    let requested = STATE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map_or(0, |s| s.requested);
    if requested > 0 {
        "set_num_threads"
    } else if std::env::var("RAYON_NUM_THREADS")
        .is_ok_and(|v| v.trim().parse::<usize>().is_ok_and(|n| n > 0))
    {
        "RAYON_NUM_THREADS"
    } else {
        "available cores"
    }
}

/// The largest [`SPIN_ENV`] value (one second; the Python package's `SPIN_MAX_US`).
const MAX_SPIN_US: u64 = 1_000_000;

/// How long a pool thread stays awake after it last ran work ([`SPIN_ENV`], read once per
/// process, at the first call). The Python package refuses at import a value that is not
/// an integer from 0 to [`MAX_SPIN_US`]; one set after that is clamped to the maximum, or
/// (unreadable) left at the default.
pub fn spin() -> Duration {
    static SPIN: OnceLock<Duration> = OnceLock::new();
    *SPIN.get_or_init(|| {
        let us = std::env::var(SPIN_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(DEFAULT_SPIN_US);
        Duration::from_micros(us.min(MAX_SPIN_US))
    })
}
