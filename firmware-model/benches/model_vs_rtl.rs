//! The model's workload (`common/mod.rs`, as in `throughput.rs`) on the model and on the
//! Verilated RTL (`vfpga-sim`, explicit clocking), for the model/RTL speed
//! ratio. Built only with `--features rtl`; without Verilator the RTL
//! half is skipped with a message.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vfpga_device::ring::RingDriver;
use vfpga_device::{Device, DmaPort, NoIrq};
use vfpga_model::{Model, ModelConfig};
use vfpga_sim::{SimDevice, SimOptions};

mod common;
use common::{RINGS, bytes_per_iter, guest, workload};

fn run_on<D: Device>(
    c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    mut dev: D,
    dma: &DmaPort,
) {
    let w = workload();
    let mut ring = RingDriver::setup(&mut dev, dma, RINGS, 64, RINGS + 0x1000, 64).expect("rings");
    c.bench_function(name, |b| {
        b.iter(|| {
            let cs = ring.run(&mut dev, &w, u64::MAX).expect("workload");
            assert_eq!(cs.len(), w.len());
            black_box(cs);
        })
    });
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("model_vs_rtl");
    g.throughput(Throughput::Bytes(bytes_per_iter()));
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(5));
    let dma = guest();
    let m = Model::new(ModelConfig::with_pages(256), dma.clone(), Arc::new(NoIrq)).expect("model");
    run_on(&mut g, "model", m, &dma);
    if vfpga_sim::AVAILABLE {
        let dma = guest();
        let opts = SimOptions {
            devmem_pages: 256,
            ..SimOptions::default()
        };
        let s = SimDevice::new(opts, dma.clone(), Arc::new(NoIrq)).expect("simulator");
        run_on(&mut g, "rtl", s, &dma);
    } else {
        eprintln!("model_vs_rtl: vfpga-sim was built without Verilator; RTL half skipped");
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
