//! CRC-32C (Castagnoli) as the device computes it (datasheet §5.2).
//!
//! The engine keeps the CRC *register* (`CUR_CRC`): it starts at `!PATTERN`,
//! absorbs every burst with [`update`], and the completion's `RESULT` is the
//! register inverted. This file is the model's own slice-by-8 implementation;
//! the tests check it against the `crc32c` crate.

use vfpga_regs::consts::CRC32C_POLY_REFLECTED;

const fn make_tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ CRC32C_POLY_REFLECTED
            } else {
                c >> 1
            };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut i = 0;
    while i < 256 {
        let mut j = 1;
        while j < 8 {
            let prev = t[j - 1][i];
            t[j][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            j += 1;
        }
        i += 1;
    }
    t
}

static TABLES: [[u32; 256]; 8] = make_tables();

/// Absorbs `data` into the CRC register `reg` (reflected, no inversions).
pub fn update(mut reg: u32, data: &[u8]) -> u32 {
    let t = &TABLES;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let lo = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) ^ reg;
        let hi = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        reg = t[7][(lo & 0xff) as usize]
            ^ t[6][((lo >> 8) & 0xff) as usize]
            ^ t[5][((lo >> 16) & 0xff) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][(hi & 0xff) as usize]
            ^ t[2][((hi >> 8) & 0xff) as usize]
            ^ t[1][((hi >> 16) & 0xff) as usize]
            ^ t[0][(hi >> 24) as usize];
    }
    for &b in chunks.remainder() {
        reg = (reg >> 8) ^ t[0][((reg ^ u32::from(b)) & 0xff) as usize];
    }
    reg
}

/// The CRC-32C of `data` continued from `seed` (a previous result, or 0 for
/// the standard CRC-32C): what a `CRC32C` descriptor with `PATTERN = seed`
/// returns.
pub fn crc32c(seed: u32, data: &[u8]) -> u32 {
    !update(!seed, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_crate_and_the_check_value() {
        assert_eq!(crc32c(0, b"123456789"), 0xe306_9283);
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in [0, 1, 7, 8, 9, 63, 64, 65, 999, 1000] {
            for seed in [0, 1, 0xdead_beef] {
                assert_eq!(
                    crc32c(seed, &data[..len]),
                    ::crc32c::crc32c_append(seed, &data[..len]),
                    "len {len} seed {seed:#x}"
                );
            }
        }
    }

    #[test]
    fn split_buffers_continue() {
        let data = [0x5au8; 300];
        let whole = crc32c(0, &data);
        let r = update(!0, &data[..17]);
        let r = update(r, &data[17..]);
        assert_eq!(!r, whole);
    }
}
