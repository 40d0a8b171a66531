//! Copies into large outputs with non-temporal stores. An ordinary store first reads the
//! cache line it writes (a "read for ownership"), so writing an output that is not cached
//! moves its bytes over the memory bus twice; a streaming store writes whole lines without
//! reading them. Kernels whose output is far larger than the caches stage each block of it
//! in L1 and stream it out with [`Lines`] as its rows are made, then call [`fence`] before
//! the output is handed to another thread.

use std::mem::MaybeUninit;

/// Bytes of one cache line: the streamed part of a copy covers whole lines only (a line
/// written partly by ordinary stores would be read anyway).
const LINE: usize = 64;

/// `dst[i] = src[i]`, whole destination cache lines written with non-temporal stores
/// (x86-64; a plain copy elsewhere), made in parts as the source is produced, so that the streaming stores are spread among the work that makes the source rather
/// than issued in one burst that waits on the memory bus. Only whole destination lines
/// are streamed: each part stops at the last line boundary it reaches, and the entries
/// past it go with the next part (or, in the last, by ordinary stores).
#[derive(Default)]
pub(crate) struct Lines {
    /// Bytes of `dst` written so far.
    done: usize,
}

impl Lines {
    /// Copies `src[..upto]` (the entries produced so far) into `dst` as far as whole
    /// lines allow, all of it when `upto` is `dst.len()`. Each call passes the same
    /// `dst` and a `src` whose first `upto` entries are final.
    ///
    /// # Panics
    /// When `src` is shorter than `upto`, `upto` is past `dst`'s end, or `dst` is not
    /// the slice earlier parts wrote into (its length changed).
    #[inline]
    pub(crate) fn copy<T: Copy>(&mut self, dst: &mut [MaybeUninit<T>], src: &[T], upto: usize) {
        assert!(
            upto <= src.len() && upto <= dst.len(),
            "stream::Lines lengths"
        );
        let n = std::mem::size_of_val(dst);
        let end = upto * std::mem::size_of::<T>();
        assert!(self.done <= n, "stream::Lines destination");
        let d = dst.as_mut_ptr() as *mut u8;
        let s = src.as_ptr() as *const u8;
        let mut k = self.done;
        // The partial line the destination starts in goes by ordinary stores.
        let head = d.align_offset(LINE).min(n);
        if k < head {
            let to = head.min(end);
            // SAFETY: `k..to` lies within the first `end <= n` bytes of both slices,
            // which do not overlap (one is borrowed mutably).
            unsafe { std::ptr::copy_nonoverlapping(s.add(k), d.add(k), to - k) };
            k = to;
        }
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
            // Each line `k..k + LINE` lies within the first `end` bytes of both
            // slices and is 64-byte aligned in `dst` (`k >= head`, in steps of whole
            // lines); SSE2 is part of x86-64.
            while k >= head && k + LINE <= end {
                // SAFETY: see above.
                unsafe {
                    for q in (0..LINE).step_by(16) {
                        let v = _mm_loadu_si128(s.add(k + q) as *const __m128i);
                        _mm_stream_si128(d.add(k + q) as *mut __m128i, v);
                    }
                }
                k += LINE;
            }
        }
        if end == n {
            // The last part: the rest (the partial last line; everything off x86-64).
            // SAFETY: `k..n` lies within both slices.
            unsafe { std::ptr::copy_nonoverlapping(s.add(k), d.add(k), n - k) };
            k = n;
        }
        self.done = k;
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

    /// The whole of `src` in one part.
    fn copy<T: Copy>(dst: &mut [MaybeUninit<T>], src: &[T]) {
        Lines::default().copy(dst, src, src.len());
    }

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
        // In parts of every size, each reading only what has been produced: the same
        // entries.
        for off in 0..17 {
            for step in [1, 5, 16, 23, 100] {
                let mut dst = vec![MaybeUninit::new(f32::NAN); 700];
                let mut lines = Lines::default();
                let len = 600;
                // The source as it is produced: NaN past what each part may read.
                let mut made = vec![f32::NAN; len];
                let mut upto = 0;
                while upto < len {
                    let from = upto;
                    upto = (upto + step).min(len);
                    made[from..upto].copy_from_slice(&src[from..upto]);
                    lines.copy(&mut dst[off..off + len], &made, upto);
                }
                fence();
                for (i, d) in dst.iter().enumerate() {
                    // SAFETY: every entry was initialised.
                    let v = unsafe { d.assume_init() };
                    if (off..off + len).contains(&i) {
                        assert_eq!(v.to_bits(), src[i - off].to_bits(), "off {off} step {step}");
                    } else {
                        assert!(v.is_nan(), "off {off} step {step}: wrote outside at {i}");
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
