//! Running a per-item kernel over a batch in parallel, deterministically.
//!
//! Items are grouped into chunks whose size depends only on the shapes, never on the
//! number of threads; each chunk may own an accumulator (for gradients summed over a
//! broadcast batch), and accumulators are combined in chunk order. So every result is
//! bit-identical whatever `RAYON_NUM_THREADS` is.

use std::marker::PhantomData;
use std::ops::Range;

use rayon::prelude::*;

use crate::error::Result;

/// A buffer of `rows` equal rows that parallel tasks write into, each row by one task.
pub struct Rows<'a, T> {
    ptr: *mut T,
    rows: usize,
    row: usize,
    _buf: PhantomData<&'a mut [T]>,
}

// SAFETY: `Rows` hands out disjoint rows only (see `get`), so sharing it across threads
// is like sharing disjoint `&mut` slices.
unsafe impl<T: Send> Send for Rows<'_, T> {}
// SAFETY: as above: `&Rows` gives out rows only through the unsafe `get`, whose callers
// own the row they ask for.
unsafe impl<T: Send> Sync for Rows<'_, T> {}

impl<'a, T> Rows<'a, T> {
    pub fn new(buf: &'a mut [T], row: usize) -> Self {
        let rows = buf.len().checked_div(row).unwrap_or(0);
        Rows {
            ptr: buf.as_mut_ptr(),
            rows,
            row,
            _buf: PhantomData,
        }
    }

    /// Row `b`.
    ///
    /// # Safety
    /// No two live references to the same row may exist: each row is accessed by the one
    /// task that owns item `b`.
    #[allow(clippy::mut_from_ref)]
    #[inline]
    pub unsafe fn get(&self, b: usize) -> &'a mut [T] {
        assert!(
            self.row == 0 || b < self.rows,
            "row {b} out of {}",
            self.rows
        );
        std::slice::from_raw_parts_mut(self.ptr.add(b * self.row), self.row)
    }
}

/// The environment variable that picks the kernels' path: `EXPSOFTMAX_SIMD=baseline` forces
/// the portable kernels, `avx2` stops at AVX2 (no AVX-512 kernels), `auto` or unset takes the
/// best path the CPU supports.
pub const SIMD_ENV: &str = "EXPSOFTMAX_SIMD";

/// True when the AVX2 kernels run: the CPU has AVX2 and `EXPSOFTMAX_SIMD` does not ask for
/// the baseline (read once per process).
#[inline(always)]
pub fn has_avx2() -> bool {
    static USE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *USE.get_or_init(|| cpu_has_avx2() && !baseline_forced())
}

/// True when the AVX2 kernels run ([`has_avx2`]) and the CPU also has FMA (every AVX2 CPU
/// but a few early ones): the kernels that use fused multiply–adds run then.
#[inline(always)]
pub fn has_fma() -> bool {
    static USE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *USE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            has_avx2() && std::is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// True when the AVX-512 kernels run: [`has_fma`], the CPU (and OS) has AVX-512 F, BW, DQ
/// and VL (what [`crate::simd_dispatch!`]'s AVX-512 copy is compiled for), and
/// `EXPSOFTMAX_SIMD` asks for neither the baseline nor `avx2` (read once per process). They
/// are the AVX2 kernels' operations on sixteen lanes instead of eight: the same results,
/// bit for bit.
#[inline(always)]
pub fn has_avx512() -> bool {
    static USE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *USE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            has_fma()
                && std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512dq")
                && std::is_x86_feature_detected!("avx512vl")
                && !simd_env_is("avx2")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// True when the CPU supports AVX2, whatever the environment says.
pub fn cpu_has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn simd_env_is(value: &str) -> bool {
    std::env::var(SIMD_ENV).is_ok_and(|v| v.trim().eq_ignore_ascii_case(value))
}

fn baseline_forced() -> bool {
    simd_env_is("baseline")
}

/// The kernels' SIMD path as reported to users: `"avx512"`, `"avx2"` or `"baseline"`.
pub fn simd_path() -> &'static str {
    if has_avx512() {
        "avx512"
    } else if has_avx2() {
        "avx2"
    } else {
        "baseline"
    }
}

/// Defines `fn $name` (with the visibility given) that runs the `#[inline(always)]`
/// function `$body` compiled for AVX-512 (F, BW, DQ, VL, with AVX2 and FMA) when the CPU
/// has it ([`has_avx512`]), for AVX2 when it has that, and for baseline x86-64 otherwise.
/// Wheels target baseline x86-64, whose SSE2 vectors are half as wide; runtime dispatch
/// keeps one wheel fast. The copies compute the same values bit for bit: the compiler
/// vectorises loops wider but never reorders or fuses floating-point operations, and the
/// intrinsic helpers the bodies call are the same in each copy.
/// Every kernel `$body` reaches must be `#[inline(always)]` to land in the wider copies.
#[macro_export]
macro_rules! simd_dispatch {
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident < $($g:ident : $bound:path),* > ( $($arg:ident : $ty:ty),* $(,)? ) -> $ret:ty
        => $body:ident
    ) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name<$($g: $bound),*>($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512<$($g: $bound),*>($($arg: $ty),*) -> $ret {
                    $body::<$($g),*>($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2<$($g: $bound),*>($($arg: $ty),*) -> $ret {
                    $body::<$($g),*>($($arg),*)
                }
                if $crate::kernels::batch::has_avx512() {
                    // SAFETY: the CPU supports AVX-512F/BW/DQ/VL, AVX2 and FMA, checked
                    // just above.
                    return unsafe { avx512::<$($g),*>($($arg),*) };
                }
                if $crate::kernels::batch::has_avx2() {
                    // SAFETY: the CPU supports AVX2, checked just above.
                    return unsafe { avx2::<$($g),*>($($arg),*) };
                }
            }
            $body::<$($g),*>($($arg),*)
        }
    };
    // An `unsafe fn` body: the dispatcher is `unsafe` with the body's contract.
    (
        $(#[$meta:meta])*
        $vis:vis unsafe fn $name:ident < $($g:ident : $bound:path),* > ( $($arg:ident : $ty:ty),* $(,)? ) -> $ret:ty
        => $body:ident
    ) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis unsafe fn $name<$($g: $bound),*>($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512<$($g: $bound),*>($($arg: $ty),*) -> $ret {
                    // SAFETY: the body's contract, forwarded from the caller.
                    unsafe { $body::<$($g),*>($($arg),*) }
                }
                #[target_feature(enable = "avx2")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2<$($g: $bound),*>($($arg: $ty),*) -> $ret {
                    // SAFETY: the body's contract, forwarded from the caller.
                    unsafe { $body::<$($g),*>($($arg),*) }
                }
                if $crate::kernels::batch::has_avx512() {
                    // SAFETY: the CPU supports AVX-512F/BW/DQ/VL, AVX2 and FMA, checked
                    // just above; the body's contract is the caller's.
                    return unsafe { avx512::<$($g),*>($($arg),*) };
                }
                if $crate::kernels::batch::has_avx2() {
                    // SAFETY: the CPU supports AVX2, checked just above; the body's
                    // contract is the caller's.
                    return unsafe { avx2::<$($g),*>($($arg),*) };
                }
            }
            // SAFETY: the body's contract is the caller's.
            unsafe { $body::<$($g),*>($($arg),*) }
        }
    };
}

/// Number of items per chunk for a batch of `batch` items whose chunks each carry an
/// accumulator of `acc_len` f64: at most 64 chunks and 256 MiB of accumulators.
pub fn chunk_size(batch: usize, acc_len: usize) -> usize {
    let max_chunks = if acc_len == 0 {
        batch
    } else {
        (32usize << 20).div_ceil(acc_len).clamp(1, 64)
    };
    batch.div_ceil(max_chunks.clamp(1, batch.max(1))).max(1)
}

/// Runs `work(workspace, accumulator, items)` on every chunk of `0..batch` in parallel and
/// returns the accumulators in chunk order. A workspace is made per worker by `ws`.
pub fn run_chunks<W, A, FW, FA, F>(
    batch: usize,
    chunk: usize,
    ws: FW,
    acc: FA,
    work: F,
) -> Result<Vec<A>>
where
    A: Send,
    FW: Fn() -> W + Sync + Send,
    FA: Fn() -> A + Sync + Send,
    F: Fn(&mut W, &mut A, Range<usize>) -> Result<()> + Sync + Send,
{
    let n = batch.div_ceil(chunk.max(1));
    (0..n)
        .into_par_iter()
        .map_init(ws, |w, k| {
            let mut a = acc();
            work(w, &mut a, k * chunk..((k + 1) * chunk).min(batch))?;
            Ok(a)
        })
        .collect()
}
