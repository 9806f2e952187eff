//! Model throughput on a fixed DMA workload, beside a memcpy of the same
//! bytes measured in the same run.
//!
//! Workload (one iteration, `common/mod.rs`): 48 descriptors of 64 KiB
//! through the rings, 16 each of `COPY_H2D`, `COPY_D2H` and `COPY_H2H`
//! (3 MiB copied), submitted
//! with the shared [`RingDriver`] and run to their completions. Measured on
//! the model with burst batching (the default) and stepping burst by burst,
//! and as plain `copy_from_slice` of the same 48 × 64 KiB.
//! `scripts/bench.d/30-model` turns the estimates into `target/bench/*.json`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vfpga_device::ring::RingDriver;
use vfpga_device::{Device, NoIrq};
use vfpga_model::{Model, ModelConfig};

mod common;
use common::{CHUNK, GUEST, MIB, PER_OP, RINGS, bytes_per_iter, guest, workload};

fn setup(batch: bool) -> (Model, RingDriver) {
    let dma = guest();
    let cfg = ModelConfig {
        batch_bursts: batch,
        ..ModelConfig::with_pages(256)
    };
    let mut m = Model::new(cfg, dma.clone(), Arc::new(NoIrq)).expect("model");
    let ring = RingDriver::setup(&mut m, &dma, RINGS, 64, RINGS + 0x1000, 64).expect("rings");
    (m, ring)
}

fn bench(c: &mut Criterion) {
    let w = workload();
    let mut g = c.benchmark_group("model_dma");
    g.throughput(Throughput::Bytes(bytes_per_iter()));
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(4));

    // Same-run baseline: memcpy of the same 48 x 64 KiB.
    let src = vec![0x5au8; MIB as usize];
    let mut dst = vec![0u8; 3 * MIB as usize];
    g.bench_function("memcpy", |b| {
        b.iter(|| {
            for k in 0..3 {
                for i in 0..PER_OP as usize {
                    let o = i * CHUNK as usize;
                    let d = k * MIB as usize + o;
                    dst[d..d + CHUNK as usize].copy_from_slice(&src[o..o + CHUNK as usize]);
                }
            }
            black_box(&mut dst);
        })
    });

    for (name, batch) in [("batched", true), ("per_burst", false)] {
        let (mut m, mut ring) = setup(batch);
        g.bench_function(name, |b| {
            b.iter(|| {
                let cs = ring.run(&mut m, &w, u64::MAX).expect("workload");
                assert_eq!(cs.len(), w.len());
                black_box(cs);
            })
        });
        // The workload really moved the data.
        let mut out = vec![0u8; CHUNK as usize];
        m.dma_port()
            .host_read(GUEST + 2 * MIB + u64::from(CHUNK), &mut out)
            .expect("read back");
        let mut want = vec![0u8; CHUNK as usize];
        m.dma_port()
            .host_read(GUEST + u64::from(CHUNK), &mut want)
            .expect("read source");
        assert!(out == want, "H2H copy did not land");
        let _ = m.info();
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
