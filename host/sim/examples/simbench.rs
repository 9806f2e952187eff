//! Simulator benchmark (run by `scripts/bench.d/20-sim`): simulated cycles
//! per second with the DMA engine busy, through the full harness (Rust
//! harness on the calling thread, DMA port, IRQ sink), beside the same model clocked by the shim's
//! bare C++ loop that serves DMA from one flat buffer, in the same run.
//!
//! `simbench [OUT_DIR] [CYCLES]` writes `OUT_DIR/sim_busy_cycles.json`.

use std::sync::Arc;

use vfpga_device::ring::{Desc, RingDriver};
use vfpga_device::{Device, DmaPort, NoIrq, Perm, VecMemory};
use vfpga_regs::{Opcode, Status, offsets};
use vfpga_sim::{SimDevice, SimOptions};

const GUEST: u64 = 0x1_0000_0000;
const GUEST_LEN: usize = 4 << 20;
const CHUNK: u32 = 1 << 20;
/// Interleaved rounds of harness and bare loop.
const ROUNDS: u64 = 4;

fn busy_device() -> (SimDevice, Arc<VecMemory>) {
    let dma = DmaPort::new();
    let mem = Arc::new(VecMemory::new(GUEST_LEN));
    dma.map(GUEST, mem.clone(), Perm::RW).expect("map");
    let mut dev =
        SimDevice::new(SimOptions::default(), dma.clone(), Arc::new(NoIrq)).expect("simulator");
    let mut drv = RingDriver::setup(&mut dev, &dma, GUEST, 64, GUEST + 0x1000, 64).expect("rings");
    dma.host_write(GUEST + 0x10_0000, &vec![0x5a; CHUNK as usize])
        .expect("fill");
    for i in 0..63 {
        // Host-to-host copies: a read and a write burst per 64 bytes.
        let d = Desc::new(
            Opcode::CopyH2h,
            i,
            GUEST + 0x10_0000,
            GUEST + 0x20_0000,
            CHUNK,
            0,
        );
        drv.submit(&mut dev, &d).expect("submit");
    }
    (dev, mem)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let out = args.next().unwrap_or_else(|| "target/bench".into());
    let cycles: u64 = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4_000_000);

    // The full harness and the bare loop over the same model and the same
    // guest memory contents, in interleaved rounds (both see the same
    // machine load); each figure is its best round.
    let (mut dev, _mem) = busy_device();
    let (mut bare, mem) = busy_device();
    let snapshot = mem.snapshot();
    dev.bench_run(100_000, None).expect("warm-up");
    bare.bench_run(100_000, Some((GUEST, snapshot.clone())))
        .expect("warm-up");
    // CPU time of the thread that ran the model: robust against other load
    // on the machine (wall time is printed too).
    let secs = |t: vfpga_sim::BenchTime| t.cpu.unwrap_or(t.wall).as_secs_f64();
    let per = (cycles / ROUNDS).max(1);
    let (mut best_h, mut best_b) = (f64::MAX, f64::MAX);
    let (mut wall_h, mut wall_b) = (0.0, 0.0);
    for _ in 0..ROUNDS {
        let t = dev.bench_run(per, None).expect("run");
        best_h = best_h.min(secs(t));
        wall_h += t.wall.as_secs_f64();
        let t = bare
            .bench_run(per, Some((GUEST, snapshot.clone())))
            .expect("run");
        best_b = best_b.min(secs(t));
        wall_b += t.wall.as_secs_f64();
    }
    let bytes_h = dev.read_reg(offsets::CNT_BYTES_LO).expect("simulator");
    assert!(
        dev.status().expect("simulator").contains(Status::BUSY),
        "the engine stayed busy"
    );
    let stats = dev.stats().expect("simulator");
    let bytes_b = bare.read_reg(offsets::CNT_BYTES_LO).expect("simulator");
    println!(
        "wall: harness {wall_h:.3} s, bare {wall_b:.3} s; best round of model-thread CPU: harness {best_h:.3} s, bare {best_b:.3} s ({ROUNDS} interleaved rounds of {per} cycles)"
    );
    let rate_h = per as f64 / best_h;
    let rate_b = per as f64 / best_b;
    let overhead = rate_b / rate_h;
    println!(
        "sim busy: harness {:.3} M cycles/s, bare loop {:.3} M cycles/s, harness overhead {:.3}x \
         ({} DMA requests, completed bytes {bytes_h} / {bytes_b})",
        rate_h / 1e6,
        rate_b / 1e6,
        overhead,
        stats.dma_reads + stats.dma_writes
    );
    let json = format!(
        "{{\n  \"name\": \"sim_busy_cycles_per_s\",\n  \"value\": {:.4},\n  \"unit\": \"Mcycle/s\",\n  \
         \"baseline_name\": \"sim_bare_cpp_loop_same_model\",\n  \"baseline_value\": {:.4},\n  \
         \"ratio\": {:.4},\n  \"notes\": \"RTL under Verilator with the DMA engine busy (COPY_H2H, 64-byte bursts), best of {} interleaved rounds of {} cycles, through SimDevice's harness (on the calling thread), DmaPort and IRQ sink, per second of that thread's CPU time; baseline: the same model clocked by a minimal C++ loop serving DMA from a flat buffer. Harness overhead = baseline/value = {:.3}x\"\n}}\n",
        rate_h / 1e6,
        rate_b / 1e6,
        rate_h / rate_b,
        ROUNDS,
        per,
        overhead
    );
    std::fs::create_dir_all(&out).expect("out dir");
    std::fs::write(format!("{out}/sim_busy_cycles_per_s.json"), json).expect("write");
}
