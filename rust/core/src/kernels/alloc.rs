//! Size checks before large allocations. Rust aborts the process when an allocation fails;
//! a library called from Python must refuse instead. Every output and every working array
//! whose size follows from the caller's arguments is sized here first, with overflow-checked
//! arithmetic, against the memory the machine has available; a refusal is
//! [`Error::Memory`] naming the array and its size (MemoryError in Python).

use crate::error::{Error, Result};

/// Below this many bytes an allocation is not worth a look at `/proc/meminfo`.
const SMALL: u128 = 64 << 20;

/// Bytes of memory this process may still obtain: `MemAvailable + SwapFree` on Linux,
/// unbounded where that is unknown (then only overflow is caught here).
fn available() -> u128 {
    let Ok(info) = std::fs::read_to_string("/proc/meminfo") else {
        return u128::MAX;
    };
    let field = |name: &str| -> Option<u128> {
        let line = info.lines().find(|l| l.starts_with(name))?;
        let kb: u128 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    match field("MemAvailable:") {
        Some(a) => a + field("SwapFree:").unwrap_or(0),
        None => u128::MAX,
    }
}

fn human(bytes: u128) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// The number of elements of an array of shape `dims` holding `elem` bytes each, after
/// checking that it (plus `others` bytes needed at the same time) fits in memory.
pub fn check_with(what: &str, dims: &[usize], elem: usize, others: u128) -> Result<usize> {
    let shape = dims
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(" x ");
    let len = dims
        .iter()
        .try_fold(1u128, |acc, &d| acc.checked_mul(d as u128))
        .filter(|&l| l <= isize::MAX as u128);
    let bytes = len.and_then(|l| l.checked_mul(elem as u128));
    let (Some(len), Some(bytes)) = (len, bytes) else {
        return Err(Error::Memory(format!(
            "cannot allocate {what} of shape ({shape}): its size overflows"
        )));
    };
    let need = bytes.saturating_add(others);
    if need > SMALL {
        let avail = available();
        if need > avail || bytes > isize::MAX as u128 {
            return Err(Error::Memory(format!(
                "cannot allocate {what} of shape ({shape}), {}: only {} of memory is available",
                human(bytes),
                human(avail)
            )));
        }
    }
    Ok(len as usize)
}

/// [`check_with`] for one array on its own.
pub fn check(what: &str, dims: &[usize], elem: usize) -> Result<usize> {
    check_with(what, dims, elem, 0)
}

/// A vector of `dims`' product copies of `value`, refused with [`Error::Memory`] rather
/// than aborting when it cannot be had; filled by the pool's threads ([`par_filled`]).
pub fn filled<T: Copy + Send + Sync>(what: &str, dims: &[usize], value: T) -> Result<Vec<T>> {
    let len = check(what, dims, std::mem::size_of::<T>().max(1))?;
    Ok(par_filled(len, value))
}

/// An empty vector with room for `dims`' product elements (checked as [`check`] does),
/// for an output that parallel tasks write in full through its spare capacity, with no
/// fill pass first; the owner calls `set_len` once every element has been written.
pub fn reserved<T>(what: &str, dims: &[usize]) -> Result<Vec<T>> {
    let len = check(what, dims, std::mem::size_of::<T>().max(1))?;
    Ok(Vec::with_capacity(len))
}

/// `chunk` as a plain slice, once every element has been written.
///
/// # Safety
/// Every element of `chunk` must have been initialised.
#[inline(always)]
pub unsafe fn assume_init<T>(chunk: &mut [std::mem::MaybeUninit<T>]) -> &mut [T] {
    // SAFETY: the caller guarantees every element is initialised, and `MaybeUninit<T>`
    // has `T`'s layout.
    unsafe { &mut *(chunk as *mut [std::mem::MaybeUninit<T>] as *mut [T]) }
}

/// A vector of `len` copies of `value`, written by the pool's threads: `vec![value; len]`
/// fills a large buffer at one core's memory bandwidth before the parallel work that
/// overwrites it starts. (Below 256 KiB, where splitting the fill costs more than it
/// saves, it is `vec!`.)
pub fn par_filled<T: Copy + Send + Sync>(len: usize, value: T) -> Vec<T> {
    use rayon::prelude::*;
    if len.saturating_mul(std::mem::size_of::<T>()) < 1 << 18 {
        return vec![value; len];
    }
    // Whole chunks stored by plain loops (which compile to vector stores), not a
    // parallel `collect` of repeated items (one scalar store and a bounds check each).
    let chunk = (64 << 10) / std::mem::size_of::<T>().max(1);
    let mut v = Vec::with_capacity(len);
    v.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk)
        .for_each(|part| {
            init_with(part, value);
        });
    // SAFETY: the loop above wrote each of the first `len` elements.
    unsafe { v.set_len(len) };
    v
}

/// A chunk of a vector's spare capacity, every element set to `value`, as a plain slice.
/// A parallel task that fills its own chunk just before overwriting it writes the chunk
/// while it is in cache, instead of a separate pass over the whole vector first (which
/// costs a full memory write of large arrays that the task then overwrites entirely).
/// The owner calls `set_len` only once every chunk has been through here.
#[inline(always)]
pub fn init_with<T: Copy>(chunk: &mut [std::mem::MaybeUninit<T>], value: T) -> &mut [T] {
    for x in chunk.iter_mut() {
        x.write(value);
    }
    // SAFETY: every element of `chunk` was written just above.
    unsafe { assume_init(chunk) }
}

/// The first `n` entries of a working vector that a parallel task keeps across the rows
/// it runs (grown with defaults when shorter), holding whatever the last row left there:
/// callers overwrite them or clear them first.
#[inline(always)]
pub fn sized<T: Copy + Default>(v: &mut Vec<T>, n: usize) -> &mut [T] {
    if v.len() < n {
        v.resize(n, T::default());
    }
    &mut v[..n]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_and_huge_sizes_are_refused_by_name() {
        let e = check("samples", &[usize::MAX, 3], 8).unwrap_err();
        assert!(matches!(&e, Error::Memory(m) if m.contains("samples") && m.contains("overflows")));
        let e = filled::<f64>("node marginals", &[1 << 30, 1 << 22], 0.0).unwrap_err();
        assert!(matches!(&e, Error::Memory(m) if m.contains("node marginals")));
        assert_eq!(filled("small", &[3, 4], 1u8).unwrap(), vec![1u8; 12]);
    }

    #[test]
    fn parallel_fills_hold_the_value_everywhere() {
        for len in [0, 1, 1000, (1 << 16) + 3, 1 << 20] {
            let v = par_filled(len, 0.25f32);
            assert_eq!(v.len(), len);
            assert!(v.iter().all(|&x| x == 0.25));
        }
    }
}
