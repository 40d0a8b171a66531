//! Counter-keyed random streams. Every stream is derived from (seed, item, index), never
//! from a thread, so results do not depend on how work is split across threads.

/// SplitMix64 step: a bijective mixer, used to derive independent stream seeds.
#[inline]
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xoshiro256++: small, fast, and statistically strong for Monte Carlo.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// The stream for `keys` (e.g. `[item, sample]`) under `seed`.
    pub fn stream(seed: u64, keys: &[u64]) -> Rng {
        let mut h = splitmix64(seed);
        for &k in keys {
            h = splitmix64(h ^ splitmix64(k.wrapping_add(0x632B_E59B_D9B4_E019)));
        }
        let mut s = [0u64; 4];
        for (i, x) in s.iter_mut().enumerate() {
            h = splitmix64(h.wrapping_add(i as u64));
            *x = h;
        }
        if s == [0; 4] {
            s[0] = 1;
        }
        Rng { s }
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let r = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        r
    }

    /// Uniform in [0, 1) with 53 random bits.
    #[inline]
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Draws an index with probability proportional to `w` (non-negative, not all zero).
    /// A zero weight is never drawn.
    #[inline]
    pub fn categorical(&mut self, w: &[f64]) -> usize {
        let total: f64 = w.iter().sum();
        let target = self.uniform() * total;
        let mut acc = 0.0;
        let mut last = 0;
        for (k, &x) in w.iter().enumerate() {
            if x > 0.0 {
                acc += x;
                last = k;
                if target < acc {
                    return k;
                }
            }
        }
        last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_differ_and_repeat() {
        let a: Vec<u64> = (0..4).map(|_| Rng::stream(7, &[1, 2]).next_u64()).collect();
        assert!(a.iter().all(|&x| x == a[0]));
        assert_ne!(
            Rng::stream(7, &[1, 2]).next_u64(),
            Rng::stream(7, &[2, 1]).next_u64()
        );
    }

    #[test]
    fn categorical_never_draws_zero_weight() {
        let mut r = Rng::stream(1, &[]);
        let mut counts = [0usize; 3];
        for _ in 0..30_000 {
            counts[r.categorical(&[1.0, 0.0, 3.0])] += 1;
        }
        assert_eq!(counts[1], 0);
        // p = 0.25, n = 30000: sd = 75; allow 5 sd.
        assert!((counts[0] as f64 - 7500.0).abs() < 375.0, "{counts:?}");
    }
}
