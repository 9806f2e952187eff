//! CRC32C (Castagnoli) of the stream's checksums, the same function as the
//! `crc32c` crate, computed faster on long buffers.
//!
//! The crate's fastest path runs the SSE 4.2 `crc32` instruction, 8 bytes
//! per instruction in three interleaved lanes. On x86-64 with carry-less
//! multiplication this module folds the buffer instead, 16 bytes per
//! `pclmulqdq` lane (or 64 per `vpclmulqdq` lane where AVX-512 has it), and
//! finishes the last 16 folded bytes with the `crc32` instruction. The
//! folding constants are computed at compile time from the polynomial. Every
//! other case (short buffers, other CPUs) goes to the crate.
//!
//! How the folding works: a CRC is linear, so a 128-bit block `A` that sits
//! `D` bits before the end of the data it is combined with can be replaced
//! by `A · x^D mod P` expressed in 64 + 32 bits: its low half times
//! `x^(D+32) mod P` plus its high half times `x^(D-32) mod P` (bit-reflected,
//! as the CRC is). Folding every block onto the next keeps four (or sixteen)
//! running 128-bit remainders, which are folded into one at the end.

/// CRC32C of `data` continuing from `crc` (the value a previous call
/// returned; 0 to start).
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        if data.len() >= x86::MIN_LEN && x86::has_clmul() {
            if data.len() >= x86::MIN_LEN_512 && x86::has_vpclmul() {
                // SAFETY: the CPU has AVX-512F, VPCLMULQDQ, PCLMULQDQ and
                // SSE 4.2 (checked above), and `data` is at least 256 bytes.
                return unsafe { x86::crc_vpclmul(crc, data) };
            }
            // SAFETY: the CPU has PCLMULQDQ, SSE 4.1 and SSE 4.2 (checked
            // above), and `data` is at least 64 bytes.
            return unsafe { x86::crc_pclmul(crc, data) };
        }
    }
    crc32c::crc32c_append(crc, data)
}

/// CRC32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c_append(0, data)
}

/// The CRC32C polynomial without its x^32 term, in normal bit order.
#[cfg(any(target_arch = "x86_64", test))]
const POLY: u64 = 0x1EDC_6F41;

/// `x^e mod P` for the 33-bit polynomial `x^32 + poly`, in normal bit order
/// (bit i is the coefficient of x^i).
#[cfg(any(target_arch = "x86_64", test))]
const fn xpow_mod(e: u32, poly: u64) -> u64 {
    let mut r: u64 = 1;
    let mut i = 0;
    while i < e {
        r <<= 1;
        if r & (1 << 32) != 0 {
            r ^= (1 << 32) | poly;
        }
        i += 1;
    }
    r
}

/// A folding constant: `x^e mod P` bit-reflected into 33 bits (bit j is the
/// coefficient of x^(32-j)), as a carry-less product of reflected operands
/// needs it.
#[cfg(any(target_arch = "x86_64", test))]
const fn fold_k(e: u32, poly: u64) -> u64 {
    ((xpow_mod(e, poly) as u32).reverse_bits() as u64) << 1
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m128i, __m512i, _mm_clmulepi64_si128, _mm_crc32_u8, _mm_crc32_u64, _mm_cvtsi32_si128,
        _mm_extract_epi64, _mm_loadu_si128, _mm_set_epi64x, _mm_xor_si128, _mm512_castsi512_si128,
        _mm512_clmulepi64_epi128, _mm512_extracti32x4_epi32, _mm512_loadu_si512, _mm512_set_epi64,
        _mm512_xor_si512, _mm512_zextsi128_si512,
    };

    use super::{POLY, fold_k};

    /// Shortest buffer the 128-bit path takes (one round of four lanes).
    pub(super) const MIN_LEN: usize = 64;
    /// Shortest buffer the 512-bit path takes (one round of four lanes).
    pub(super) const MIN_LEN_512: usize = 256;

    pub(super) fn has_clmul() -> bool {
        is_x86_feature_detected!("pclmulqdq")
            && is_x86_feature_detected!("sse4.1")
            && is_x86_feature_detected!("sse4.2")
    }

    pub(super) fn has_vpclmul() -> bool {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("vpclmulqdq")
    }

    /// (low-half constant, high-half constant) folding a 128-bit block
    /// forward by `d` bits.
    const fn pair(d: u32) -> (i64, i64) {
        (fold_k(d + 32, POLY) as i64, fold_k(d - 32, POLY) as i64)
    }
    const K128: (i64, i64) = pair(128);
    const K512: (i64, i64) = pair(512);
    const K384: (i64, i64) = pair(384);
    const K256: (i64, i64) = pair(256);
    const K2048: (i64, i64) = pair(2048);

    #[inline]
    #[target_feature(enable = "pclmulqdq,sse4.1,sse4.2")]
    fn fold(x: __m128i, k: __m128i) -> __m128i {
        _mm_xor_si128(
            _mm_clmulepi64_si128::<0x00>(x, k),
            _mm_clmulepi64_si128::<0x11>(x, k),
        )
    }

    #[inline]
    #[target_feature(enable = "pclmulqdq,sse4.1,sse4.2")]
    fn kv(k: (i64, i64)) -> __m128i {
        _mm_set_epi64x(k.1, k.0)
    }

    #[inline]
    #[target_feature(enable = "sse4.1")]
    fn load(data: &[u8], at: usize) -> __m128i {
        let b: &[u8; 16] = data[at..at + 16]
            .try_into()
            .unwrap_or_else(|_| unreachable!("a 16-byte slice"));
        // SAFETY: `b` is 16 readable bytes; the load is unaligned.
        unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
    }

    /// Folds the 128-bit remainder `r` over `data[at..]` 16 bytes at a time
    /// and finishes with the `crc32` instruction; returns the CRC register
    /// (not inverted).
    #[target_feature(enable = "pclmulqdq,sse4.1,sse4.2")]
    fn finish(mut r: __m128i, data: &[u8], mut at: usize) -> u32 {
        let k = kv(K128);
        while at + 16 <= data.len() {
            r = _mm_xor_si128(fold(r, k), load(data, at));
            at += 16;
        }
        let lo = _mm_extract_epi64::<0>(r) as u64;
        let hi = _mm_extract_epi64::<1>(r) as u64;
        let mut c = _mm_crc32_u64(_mm_crc32_u64(0, lo), hi) as u32;
        for &b in &data[at..] {
            c = _mm_crc32_u8(c, b);
        }
        c
    }

    /// 128-bit folding; `data.len() >= MIN_LEN`.
    #[target_feature(enable = "pclmulqdq,sse4.1,sse4.2")]
    pub(super) fn crc_pclmul(crc: u32, data: &[u8]) -> u32 {
        let mut x0 = _mm_xor_si128(load(data, 0), _mm_cvtsi32_si128(!crc as i32));
        let mut x1 = load(data, 16);
        let mut x2 = load(data, 32);
        let mut x3 = load(data, 48);
        let mut at = 64;
        let k = kv(K512);
        while at + 64 <= data.len() {
            x0 = _mm_xor_si128(fold(x0, k), load(data, at));
            x1 = _mm_xor_si128(fold(x1, k), load(data, at + 16));
            x2 = _mm_xor_si128(fold(x2, k), load(data, at + 32));
            x3 = _mm_xor_si128(fold(x3, k), load(data, at + 48));
            at += 64;
        }
        let k = kv(K128);
        let mut r = _mm_xor_si128(fold(x0, k), x1);
        r = _mm_xor_si128(fold(r, k), x2);
        r = _mm_xor_si128(fold(r, k), x3);
        !finish(r, data, at)
    }

    #[inline]
    #[target_feature(enable = "avx512f,vpclmulqdq")]
    fn load512(data: &[u8], at: usize) -> __m512i {
        let b: &[u8; 64] = data[at..at + 64]
            .try_into()
            .unwrap_or_else(|_| unreachable!("a 64-byte slice"));
        // SAFETY: `b` is 64 readable bytes; the load is unaligned.
        unsafe { _mm512_loadu_si512(b.as_ptr().cast()) }
    }

    #[inline]
    #[target_feature(enable = "avx512f,vpclmulqdq")]
    fn fold512(x: __m512i, k: __m512i) -> __m512i {
        _mm512_xor_si512(
            _mm512_clmulepi64_epi128::<0x00>(x, k),
            _mm512_clmulepi64_epi128::<0x11>(x, k),
        )
    }

    /// 512-bit folding (four 128-bit lanes per register); `data.len() >=
    /// MIN_LEN_512`.
    #[target_feature(enable = "avx512f,vpclmulqdq,pclmulqdq,sse4.1,sse4.2")]
    pub(super) fn crc_vpclmul(crc: u32, data: &[u8]) -> u32 {
        let init = _mm512_zextsi128_si512(_mm_cvtsi32_si128(!crc as i32));
        let mut z0 = _mm512_xor_si512(load512(data, 0), init);
        let mut z1 = load512(data, 64);
        let mut z2 = load512(data, 128);
        let mut z3 = load512(data, 192);
        let mut at = 256;
        let k = _mm512_set_epi64(
            K2048.1, K2048.0, K2048.1, K2048.0, K2048.1, K2048.0, K2048.1, K2048.0,
        );
        while at + 256 <= data.len() {
            z0 = _mm512_xor_si512(fold512(z0, k), load512(data, at));
            z1 = _mm512_xor_si512(fold512(z1, k), load512(data, at + 64));
            z2 = _mm512_xor_si512(fold512(z2, k), load512(data, at + 128));
            z3 = _mm512_xor_si512(fold512(z3, k), load512(data, at + 192));
            at += 256;
        }
        let k = _mm512_set_epi64(
            K512.1, K512.0, K512.1, K512.0, K512.1, K512.0, K512.1, K512.0,
        );
        let mut z = _mm512_xor_si512(fold512(z0, k), z1);
        z = _mm512_xor_si512(fold512(z, k), z2);
        z = _mm512_xor_si512(fold512(z, k), z3);
        while at + 64 <= data.len() {
            z = _mm512_xor_si512(fold512(z, k), load512(data, at));
            at += 64;
        }
        // The four lanes of `z` sit 384, 256, 128 and 0 bits before the end
        // of the 64 bytes they stand for.
        let l0 = _mm512_castsi512_si128(z);
        let l1 = _mm512_extracti32x4_epi32::<1>(z);
        let l2 = _mm512_extracti32x4_epi32::<2>(z);
        let l3 = _mm512_extracti32x4_epi32::<3>(z);
        let r = _mm_xor_si128(
            _mm_xor_si128(fold(l0, kv(K384)), fold(l1, kv(K256))),
            _mm_xor_si128(fold(l2, kv(K128)), l3),
        );
        !finish(r, data, at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_128_bit_path_equals_the_crate_on_long_buffers() {
        if !x86::has_clmul() {
            return; // nothing to compare on this CPU
        }
        let data: Vec<u8> = (0..9000u32)
            .map(|i| (i.wrapping_mul(40_503) >> 5) as u8)
            .collect();
        for len in [64usize, 65, 255, 256, 257, 1000, 4100, 4116, 9000] {
            // SAFETY: the CPU has what the path needs (checked above) and
            // every length is at least 64.
            let got = unsafe { x86::crc_pclmul(7, &data[..len]) };
            assert_eq!(got, crc32c::crc32c_append(7, &data[..len]), "len {len}");
        }
    }

    #[test]
    fn folding_constant_matches_the_published_gzip_one() {
        // The 512-bit folding constants of the gzip CRC-32 polynomial as
        // given in Intel's PCLMULQDQ CRC paper: the same construction.
        assert_eq!(fold_k(4 * 128 + 32, 0x04C1_1DB7), 0x1_5444_2bd4);
        assert_eq!(fold_k(4 * 128 - 32, 0x04C1_1DB7), 0x1_c6e4_1596);
    }

    #[test]
    fn equals_the_crate_at_every_length_and_offset() {
        let data: Vec<u8> = (0..5000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in (0..600).chain([1023, 1024, 4096, 4100, 4116, 4999]) {
            for off in [0usize, 1, 7] {
                let d = &data[off..(off + len).min(data.len())];
                for init in [0u32, 0xdead_beef] {
                    assert_eq!(
                        crc32c_append(init, d),
                        crc32c::crc32c_append(init, d),
                        "len {} off {off} init {init:#x}",
                        d.len()
                    );
                }
            }
        }
    }
}
