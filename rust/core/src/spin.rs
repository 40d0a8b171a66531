//! Keeping a pool's threads awake through a call's serial stretches and between calls.
//!
//! A call is a series of parallel phases (input check, potentials, sweeps, beliefs) with
//! serial stretches between them, and callers often make calls back to back. Rayon puts a
//! thread that finds no work to sleep after a few dozen yields, so each stretch or gap
//! longer than that costs a futex wake-up per thread at the next phase: in a VM tens of µs
//! each, ~90 µs of a 430 µs one-iteration BP call at 64×64, C = 3 on two threads. The
//! caller of a call queues [`keep_awake`]'s jobs beside the work: each holds one thread in
//! a loop that runs the pool's queued jobs as they appear (rayon's own `yield_now`) and
//! yields the CPU between looks, until none has appeared for a while. They run the same
//! jobs the sleeping threads would have run, so no result changes.

use std::cell::Cell;
use std::time::{Duration, Instant};

use rayon::ThreadPool;

thread_local! {
    /// True while this thread runs a call's work or a [`linger`] loop.
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

/// Marks this thread as running a call's work (or lingering) until dropped; `None` if it
/// already was. A linger job that starts on a marked thread returns at once: rayon runs
/// queued jobs on a thread that waits inside a join, and a linger loop started there would
/// hold up the work beneath it on the thread's stack until it timed out.
pub struct Busy(());

impl Busy {
    pub fn enter() -> Option<Busy> {
        (!BUSY.with(|b| b.replace(true))).then_some(Busy(()))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        BUSY.with(|b| b.set(false));
    }
}

/// Queues a [`linger`] job for each of `pool`'s threads but one (the one that takes the
/// call's work, which the caller marks with [`Busy`]). Nothing when `spin` is zero or the
/// pool has one thread.
pub fn keep_awake(pool: &ThreadPool, spin: Duration) {
    if spin.is_zero() {
        return;
    }
    for _ in 1..pool.current_num_threads() {
        pool.spawn(move || linger(spin));
    }
}

/// Runs the pool's queued jobs as they appear, yielding the CPU between looks, until none
/// has appeared for `spin` (then the thread goes back to rayon, which soon puts it to
/// sleep). Returns at once on a thread already marked [`Busy`], or outside any pool.
pub fn linger(spin: Duration) {
    let Some(_busy) = Busy::enter() else {
        return;
    };
    let mut last = Instant::now();
    loop {
        match rayon::yield_now() {
            Some(rayon::Yield::Executed) => last = Instant::now(),
            Some(rayon::Yield::Idle) if last.elapsed() < spin => std::thread::yield_now(),
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;
    use rayon::ThreadPoolBuilder;

    fn pool(n: usize) -> ThreadPool {
        ThreadPoolBuilder::new().num_threads(n).build().unwrap()
    }

    #[test]
    fn busy_marks_nest_once() {
        let a = Busy::enter();
        assert!(a.is_some());
        assert!(Busy::enter().is_none());
        drop(a);
        assert!(Busy::enter().is_some());
    }

    #[test]
    fn a_linger_job_on_a_busy_thread_returns_at_once() {
        // A spin of a minute: the loop must not start at all (the test would take a minute,
        // and the work beneath it would wait that long).
        let t = Instant::now();
        pool(2).install(|| {
            let _busy = Busy::enter();
            linger(Duration::from_secs(60));
        });
        assert!(t.elapsed() < Duration::from_secs(20));
        // Outside any pool there is nothing to run: it returns at once too.
        linger(Duration::from_secs(60));
        assert!(t.elapsed() < Duration::from_secs(20));
    }

    #[test]
    fn lingering_threads_run_later_work_with_the_same_results() {
        let p = pool(3);
        let serial: Vec<f64> = (0..50_000).map(|i| (i as f64).sqrt().sin()).collect();
        for _ in 0..20 {
            // Each round as a call makes it: lingering jobs queued beside the work, the
            // work on a marked thread; earlier rounds' lingering threads are still awake.
            keep_awake(&p, Duration::from_millis(5));
            let got: Vec<f64> = p.install(|| {
                let _busy = Busy::enter();
                (0..50_000)
                    .into_par_iter()
                    .with_min_len(64)
                    .map(|i| (i as f64).sqrt().sin())
                    .collect()
            });
            assert_eq!(got, serial);
        }
    }

    #[test]
    fn a_linger_job_ends_once_no_work_comes() {
        let p = pool(2);
        let (tx, rx) = std::sync::mpsc::channel();
        p.spawn(move || {
            let t = Instant::now();
            linger(Duration::from_millis(20));
            let _ = tx.send(t.elapsed());
        });
        let took = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("linger never ended");
        assert!(took >= Duration::from_millis(20), "{took:?}");
    }
}
