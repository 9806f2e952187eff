//! Helpers for tests of the device and of everything above it (feature
//! `test-support`; never in a production build).

/// Deterministic pseudo-random test bytes (xorshift32 seeded from `seed`):
/// the one pattern every test suite uses.
pub fn pattern(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A seeded xorshift64 generator for test scenarios.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 pseudo-random bits.
    #[allow(clippy::should_implement_trait)] // an endless generator, not an iterator
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pattern_is_deterministic_and_seeded() {
        assert_eq!(super::pattern(3, 64), super::pattern(3, 64));
        assert_ne!(super::pattern(3, 64), super::pattern(4, 64));
        assert!(super::pattern(1, 64).windows(2).any(|w| w[0] != w[1]));
    }
}
