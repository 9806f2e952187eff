//! Model throughput on a fixed DMA workload, beside a memcpy of the same
//! bytes measured in the same run.
//!
//! Workload (one iteration): 48 descriptors of 64 KiB through the rings,
//! 16 each of `COPY_H2D`, `COPY_D2H` and `COPY_H2H` (3 MiB copied), submitted
//! with the shared [`RingDriver`] and run to their completions. Measured on
//! the model with burst batching (the default) and stepping burst by burst,
//! and as plain `copy_from_slice` of the same 48 × 64 KiB.
//! `scripts/bench.d/30-model` turns the estimates into `target/bench/*.json`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vfpga_device::ring::{Desc, RingDriver};
use vfpga_device::{Device, DmaPort, NoIrq, Perm, VecMemory};
use vfpga_model::{Model, ModelConfig};
use vfpga_regs::Opcode;

const CHUNK: u32 = 64 * 1024;
const PER_OP: u32 = 16;
const GUEST: u64 = 0x1_0000_0000;
const MIB: u64 = 1 << 20;
const RINGS: u64 = GUEST + 3 * MIB;

fn workload() -> Vec<Desc> {
    let mut v = Vec::new();
    for i in 0..PER_OP {
        let off = u64::from(i * CHUNK);
        v.push(Desc::new(Opcode::CopyH2d, i, GUEST + off, off, CHUNK, 0));
        v.push(Desc::new(
            Opcode::CopyD2h,
            i,
            off,
            GUEST + MIB + off,
            CHUNK,
            0,
        ));
        v.push(Desc::new(
            Opcode::CopyH2h,
            i,
            GUEST + off,
            GUEST + 2 * MIB + off,
            CHUNK,
            0,
        ));
    }
    v
}

fn bytes_per_iter() -> u64 {
    u64::from(3 * PER_OP * CHUNK)
}

fn setup(batch: bool) -> (Model, RingDriver) {
    let dma = DmaPort::new();
    let mem = Arc::new(VecMemory::new(4 * MIB as usize));
    dma.map(GUEST, mem, Perm::RW).expect("map guest memory");
    let src: Vec<u8> = (0..MIB).map(|i| (i * 31 + 7) as u8).collect();
    dma.host_write(GUEST, &src).expect("fill");
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
