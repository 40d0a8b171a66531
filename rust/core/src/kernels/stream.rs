//! Copies into large outputs with non-temporal stores. An ordinary store first reads the
//! cache line it writes (a "read for ownership"), so writing an output that is not cached
//! moves its bytes over the memory bus twice; a streaming store writes whole lines without
//! reading them. Kernels whose output is far larger than the caches stage each block of it
//! in L1 and stream the block out with [`copy`], then call [`fence`] before the output is
//! handed to another thread.

use std::mem::MaybeUninit;

/// Bytes of one cache line: the streamed part of a copy covers whole lines only (a line
/// written partly by ordinary stores would be read anyway).
const LINE: usize = 64;

/// `dst[i] = src[i]` for every `i`, whole destination cache lines written with
/// non-temporal stores (x86-64; a plain copy elsewhere). Call [`fence`] before another
/// thread reads `dst`.
///
/// # Panics
/// When the lengths differ.
#[inline]
pub(crate) fn copy<T: Copy>(dst: &mut [MaybeUninit<T>], src: &[T]) {
    assert_eq!(dst.len(), src.len(), "stream::copy lengths");
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
        let n = std::mem::size_of_val(src);
        let d = dst.as_mut_ptr() as *mut u8;
        let s = src.as_ptr() as *const u8;
        let head = d.align_offset(LINE).min(n);
        let end = head + (n - head) / LINE * LINE;
        // SAFETY: every offset below is within the `n` bytes of both slices, which do not
        // overlap (one is borrowed mutably); the streamed addresses are 16-byte aligned
        // (`head` aligns them to 64); SSE2 is part of x86-64.
        unsafe {
            std::ptr::copy_nonoverlapping(s, d, head);
            let mut k = head;
            while k < end {
                for q in (0..LINE).step_by(16) {
                    let v = _mm_loadu_si128(s.add(k + q) as *const __m128i);
                    _mm_stream_si128(d.add(k + q) as *mut __m128i, v);
                }
                k += LINE;
            }
            std::ptr::copy_nonoverlapping(s.add(end), d.add(end), n - end);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    for (o, &x) in dst.iter_mut().zip(src) {
        o.write(x);
    }
}

/// Orders this thread's streaming stores before its later stores (such as the release of
/// a task's completion to another thread): `sfence` on x86-64, nothing elsewhere.
#[inline]
pub(crate) fn fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of x86-64.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_every_length_and_alignment() {
        let src: Vec<f32> = (0..700).map(|i| i as f32 * 0.5 - 3.0).collect();
        for off in 0..17 {
            for len in [0, 1, 3, 15, 16, 17, 31, 64, 100, 257, 600] {
                let mut dst = vec![MaybeUninit::new(f32::NAN); 700];
                copy(&mut dst[off..off + len], &src[..len]);
                fence();
                for (i, d) in dst.iter().enumerate() {
                    // SAFETY: every entry was initialised.
                    let v = unsafe { d.assume_init() };
                    if (off..off + len).contains(&i) {
                        assert_eq!(v.to_bits(), src[i - off].to_bits(), "off {off} len {len}");
                    } else {
                        assert!(v.is_nan(), "off {off} len {len}: wrote outside at {i}");
                    }
                }
            }
        }
        let wide: Vec<f64> = (0..99).map(|i| i as f64 / 7.0).collect();
        let mut dst = vec![MaybeUninit::new(0.0f64); 100];
        copy(&mut dst[1..], &wide);
        // SAFETY: every entry was initialised.
        let got: Vec<f64> = dst[1..]
            .iter()
            .map(|d| unsafe { d.assume_init() })
            .collect();
        assert_eq!(got, wide);
    }
}
