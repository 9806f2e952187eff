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

#[cfg(test)]
mod tests {
    #[test]
    fn pattern_is_deterministic_and_seeded() {
        assert_eq!(super::pattern(3, 64), super::pattern(3, 64));
        assert_ne!(super::pattern(3, 64), super::pattern(4, 64));
        assert!(super::pattern(1, 64).windows(2).any(|w| w[0] != w[1]));
    }
}
