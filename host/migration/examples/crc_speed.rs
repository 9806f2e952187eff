//! CRC32C throughput of this crate's folding (`vfpga_migration::crc`)
//! beside the `crc32c` crate's fastest path, on the stream's unit (one PAGE
//! chunk, 4,116 bytes, in cache), in interleaved rounds of the same run.
//!
//! `cargo run --release -p vfpga-migration --example crc_speed`

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Instant;

fn main() {
    let chunk: Vec<u8> = (0..4116u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    assert_eq!(vfpga_migration::crc::crc32c(&chunk), crc32c::crc32c(&chunk));
    let n = 50_000usize;
    let gbs = |t: f64| (n * chunk.len()) as f64 / t / 1e9;
    for round in 0..5 {
        let t = Instant::now();
        let mut c = 0u32;
        for _ in 0..n {
            c ^= crc32c::crc32c(black_box(&chunk));
        }
        black_box(c);
        let crate_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut c = 0u32;
        for _ in 0..n {
            c ^= vfpga_migration::crc::crc32c(black_box(&chunk));
        }
        black_box(c);
        let fold_s = t.elapsed().as_secs_f64();
        println!(
            "round {round}: crc32c crate {:.2} GB/s, folding {:.2} GB/s, ratio {:.2}",
            gbs(crate_s),
            gbs(fold_s),
            crate_s / fold_s
        );
    }
}
