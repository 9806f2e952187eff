//! Live migration of the Rust model (`vfpga-model`, full DMA engine) in the
//! middle of a DMA workload, guest memory moved by a VMM through DMA logging;
//! the migrated run must equal an unmigrated run of the same workload
//! (catalogue §6 cases 70, 72, 73 and 53 end to end).

use std::sync::Arc;

use vfpga_device::conformance::untimed;
use vfpga_device::ring::{Completion, Desc, RingDriver};
use vfpga_device::{Device, DmaPort, IrqLog, Perm, VecMemory};
use vfpga_migration::dirty::LogSource;
use vfpga_migration::engine::EngineConfig;
use vfpga_migration::{MigState, MigrationEngine};
use vfpga_model::{Model, ModelConfig};
use vfpga_regs::{Opcode, offsets};

const GUEST: u64 = 0x1_0000_0000;
const GUEST_LEN: usize = 256 * 1024;
const SQ: u64 = GUEST;
const CQ: u64 = GUEST + 0x1000;
const DATA: u64 = GUEST + 0x2000;
const PAGES: u32 = 64;
const RING: u32 = 16;
const BUDGET: u64 = 40;

struct Rig {
    dev: Model,
    dma: DmaPort,
    mem: Arc<VecMemory>,
    irq: Arc<IrqLog>,
}

fn rig(contents: Option<&[u8]>) -> Rig {
    let dma = DmaPort::new();
    let mem = Arc::new(VecMemory::new(GUEST_LEN));
    dma.map(GUEST, mem.clone(), Perm::RW).expect("map");
    if let Some(c) = contents {
        dma.host_write(GUEST, c).expect("guest memory");
    }
    let irq = Arc::new(IrqLog::new());
    let dev = Model::new(ModelConfig::with_pages(PAGES), dma.clone(), irq.clone()).expect("model");
    Rig { dev, dma, mem, irq }
}

/// The workload: every opcode, multi-burst lengths, spread over device
/// memory and guest memory, all with the IRQ flag.
fn workload() -> Vec<Desc> {
    let ops = [
        Opcode::CopyH2d,
        Opcode::CopyD2h,
        Opcode::CopyH2h,
        Opcode::Crc32c,
        Opcode::FillDev,
        Opcode::FillHost,
    ];
    let mut x = 0x1234_5678u64;
    let mut r = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    (0..36u32)
        .map(|i| {
            let op = ops[i as usize % ops.len()];
            let len = 1000 + r(8000) as u32;
            let host_src = DATA + r(0x1_8000);
            let host_dst = DATA + 0x1_c000 + r(0x1_8000);
            let dev = r(u64::from(PAGES) * 4096 - u64::from(len));
            let (src, dst) = match op {
                Opcode::CopyH2d => (host_src, dev),
                Opcode::CopyD2h => (dev, host_dst),
                Opcode::CopyH2h => (host_src, host_dst),
                Opcode::Crc32c => (host_src, 0),
                Opcode::FillDev => (0, dev),
                _ => (0, host_dst),
            };
            Desc::new(op, i + 1, src, dst, len, r(u64::from(u32::MAX)) as u32).with_irq()
        })
        .collect()
}

fn setup(r: &mut Rig) -> RingDriver {
    let mut x = 7u32;
    let data: Vec<u8> = (0..0x1_c000)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect();
    r.dma.host_write(DATA, &data).expect("data");
    let ring = RingDriver::setup(&mut r.dev, &r.dma, SQ, RING, CQ, RING).expect("rings");
    r.dev.write_reg(offsets::IRQ_MASK, 0).expect("unmask");
    ring
}

/// One round of the guest driver: let the device run, collect completions,
/// submit what fits (keeping one slot spare: after a migration the driver
/// is rebuilt by `RingDriver::attach`, which can count one descriptor too
/// few in flight when one is mid-transfer and others wait).
fn round(r: &mut Rig, ring: &mut RingDriver, todo: &mut Vec<Desc>, done: &mut Vec<Completion>) {
    r.dev.advance(BUDGET).expect("advance");
    done.extend(ring.poll(&mut r.dev).expect("poll"));
    while ring.free_slots() > 1 && !todo.is_empty() {
        let d = todo.remove(0);
        ring.submit(&mut r.dev, &d).expect("submit");
    }
}

type Outcome = (Vec<Completion>, Vec<u8>, Vec<u8>, [u32; 38], usize);

fn finish(
    r: &mut Rig,
    ring: &mut RingDriver,
    mut todo: Vec<Desc>,
    mut done: Vec<Completion>,
) -> Outcome {
    let total = workload().len();
    for _ in 0..100_000 {
        if todo.is_empty() && done.len() >= total {
            break;
        }
        round(r, ring, &mut todo, &mut done);
    }
    assert!(todo.is_empty() && done.len() == total, "workload finished");
    r.dev.quiesce().expect("quiesce");
    let st = r.dev.save_state().expect("state");
    let mut dm = vec![0u8; PAGES as usize * 4096];
    r.dev.devmem_read(0, &mut dm).expect("devmem");
    (
        done,
        dm,
        r.mem.snapshot(),
        untimed(&st.arch),
        r.irq.raised().len(),
    )
}

fn unmigrated() -> Outcome {
    let mut r = rig(None);
    let mut ring = setup(&mut r);
    finish(&mut r, &mut ring, workload(), Vec::new())
}

/// Migrates after `before` rounds, with `precopy_rounds` rounds of pre-copy
/// under the workload, guest memory moved by DMA logging from `log`.
fn migrated(before: usize, precopy_rounds: usize, device_log: bool, seg: usize) -> Outcome {
    let mut src = rig(None);
    let mut ring = setup(&mut src);
    let mut todo = workload();
    let mut done = Vec::new();
    for _ in 0..before {
        round(&mut src, &mut ring, &mut todo, &mut done);
    }
    // The VMM: initial copy of guest memory, then the pages the device
    // wrote (DMA logging) and the pages the CPU wrote (the SQ ring).
    let mut e = MigrationEngine::default();
    let source = if device_log {
        LogSource::Device
    } else {
        LogSource::Port(src.dma.clone())
    };
    e.dma_logging()
        .start(&mut src.dev, source, 4096, &[(GUEST, GUEST_LEN as u64)])
        .expect("DMA logging");
    let mut guest = src.mem.snapshot();
    let copy_dirty = |e: &mut MigrationEngine, src: &mut Rig, guest: &mut Vec<u8>| {
        let mut bm = [0u64; 1];
        e.dma_logging()
            .report(&mut src.dev, GUEST, GUEST_LEN as u64, 4096, &mut bm)
            .expect("report");
        let now = src.mem.snapshot();
        let sq_page = 0u64;
        for p in 0..(GUEST_LEN / 4096) as u64 {
            if bm[0] & (1 << p) != 0 || p == sq_page {
                let o = p as usize * 4096;
                guest[o..o + 4096].copy_from_slice(&now[o..o + 4096]);
            }
        }
    };
    e.set_state(&mut src.dev, MigState::PreCopy.raw())
        .expect("pre-copy");
    let mut stream = Vec::new();
    let mut buf = vec![0u8; seg];
    for _ in 0..precopy_rounds {
        round(&mut src, &mut ring, &mut todo, &mut done);
        let n = e.read_data(&mut src.dev, &mut buf).expect("pre-copy read");
        stream.extend_from_slice(&buf[..n]);
        copy_dirty(&mut e, &mut src, &mut guest);
    }
    e.set_state(&mut src.dev, MigState::StopCopy.raw())
        .expect("stop-copy");
    loop {
        let n = e.read_data(&mut src.dev, &mut buf).expect("read");
        stream.extend_from_slice(&buf[..n]);
        if n < buf.len() {
            break;
        }
    }
    copy_dirty(&mut e, &mut src, &mut guest);
    let source_irqs = src.irq.raised().len();
    e.set_state(&mut src.dev, MigState::Stop.raw())
        .expect("stop");

    // Destination: the migrated guest memory, a fresh model.
    let mut dst = rig(Some(&guest));
    let mut de = MigrationEngine::new(EngineConfig {
        dma: Some(dst.dma.clone()),
    });
    de.set_state(&mut dst.dev, MigState::Resuming.raw())
        .expect("resuming");
    for part in stream.chunks(seg / 3 + 1) {
        de.write_data(&mut dst.dev, part).expect("write");
    }
    de.set_state(&mut dst.dev, MigState::Running.raw())
        .expect("resume");
    let mut ring = RingDriver::attach(&mut dst.dev, &dst.dma).expect("attach");
    let mut out = finish(&mut dst, &mut ring, todo, done);
    out.4 += source_irqs;
    out
}

#[test]
fn model_migrated_mid_workload_continues_identically() {
    let want = unmigrated();
    assert_eq!(want.0.len(), 36);
    for (before, pre, dev_log, seg) in [
        (3, 6, false, 4096),
        (10, 2, true, 1 << 20),
        (0, 0, false, 777),
        (25, 9, true, 65536),
    ] {
        let got = migrated(before, pre, dev_log, seg);
        let case = format!("before {before}, pre-copy {pre}, device log {dev_log}, seg {seg}");
        assert_eq!(got.0, want.0, "completions: {case}");
        assert!(got.1 == want.1, "device memory: {case}");
        assert!(got.2 == want.2, "guest memory: {case}");
        assert_eq!(got.3, want.3, "state words: {case}");
        assert_eq!(got.4, want.4, "interrupts (none lost, none twice): {case}");
    }
}

/// Cancel mid-workload at each phase: the source keeps running the same
/// workload to the same result as an unmigrated run.
#[test]
fn model_cancel_at_each_phase_leaves_the_workload_intact() {
    let want = unmigrated();
    for phase in 0..3 {
        let mut src = rig(None);
        let mut ring = setup(&mut src);
        let mut todo = workload();
        let mut done = Vec::new();
        for _ in 0..5 {
            round(&mut src, &mut ring, &mut todo, &mut done);
        }
        let mut e = MigrationEngine::default();
        let mut buf = vec![0u8; 100_000];
        e.set_state(&mut src.dev, MigState::PreCopy.raw())
            .expect("pre-copy");
        round(&mut src, &mut ring, &mut todo, &mut done);
        e.read_data(&mut src.dev, &mut buf).expect("read");
        if phase >= 1 {
            e.set_state(&mut src.dev, MigState::StopCopy.raw())
                .expect("stop-copy");
            e.read_data(&mut src.dev, &mut buf[..5000]).expect("read");
        }
        if phase >= 2 {
            while e.read_data(&mut src.dev, &mut buf).expect("read") == buf.len() {}
        }
        e.set_state(&mut src.dev, MigState::Running.raw())
            .expect("cancel");
        let got = finish(&mut src, &mut ring, todo, done);
        assert_eq!(got.0, want.0, "phase {phase}");
        assert!(got.1 == want.1 && got.2 == want.2, "phase {phase}");
        assert_eq!(got.3, want.3, "phase {phase}");
        assert_eq!(got.4, want.4, "phase {phase}");
    }
}
