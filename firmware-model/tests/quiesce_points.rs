//! Quiesce (and resume, or migrate into a fresh model) at every step
//! boundary of a stream of multi-burst descriptors: the final memory,
//! completions, interrupts and state equal those of an uninterrupted run.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use vfpga_device::Device;
use vfpga_device::conformance::untimed;
use vfpga_device::ring::{Completion, Desc};
use vfpga_model::{Model, Step, StepKind};
use vfpga_regs::{Opcode, state as sw};

fn stream() -> Vec<Desc> {
    vec![
        Desc::new(
            Opcode::CopyH2h,
            1,
            DATA + 0xfc1,
            DATA + 0x9000 + 0x13,
            700,
            0,
        )
        .with_irq(),
        Desc::new(Opcode::Crc32c, 2, DATA + 0x7, 0, 333, 0xffff_0000),
        Desc::new(Opcode::CopyH2d, 3, DATA + 0x1ff0, 4096 - 40, 300, 0).with_irq(),
        Desc::new(
            Opcode::CopyD2h,
            4,
            4096 - 100,
            DATA + 0xa000 + 0xfe0,
            260,
            0,
        ),
        Desc::new(Opcode::FillHost, 5, 0, DATA + 0xb000 + 3, 200, 0x1122_3344),
        Desc::new(Opcode::FillDev, 6, 0, 8190, 130, 0x5566_7788).with_irq(),
        // Overlapping host-to-host copy: order of bursts matters.
        Desc::new(Opcode::CopyH2h, 7, DATA + 0x100, DATA + 0x120, 400, 0),
    ]
}

type Outcome = (
    Vec<u8>,
    Vec<u8>,
    [u32; sw::WORDS],
    Vec<Completion>,
    Vec<u16>,
);

#[derive(Clone, Copy, Debug)]
enum Cut {
    None,
    /// Quiesce, save, resume on the same model.
    Pause(usize),
    /// Quiesce, save, restore into a fresh model (state port), resume.
    Migrate(usize),
}

fn run(cut: Cut) -> (Outcome, Vec<StepKind>) {
    let mut r = Rig::new();
    r.put(DATA, &pattern(0xc000, 11));
    let mut ring = r.rings(16);
    for d in stream() {
        ring.submit(&mut r.dev, &d).unwrap();
    }
    let mut kinds = Vec::new();
    let mut dev = r.dev;
    let mut irqs = Vec::new();
    let mut irq = r.irq.clone();
    let k = match cut {
        Cut::None => usize::MAX,
        Cut::Pause(k) | Cut::Migrate(k) => k,
    };
    for _ in 0..k {
        let s = dev.step();
        if s == Step::Idle {
            break;
        }
        kinds.push(s.kind());
    }
    match cut {
        Cut::None => {}
        Cut::Pause(_) => {
            dev.quiesce().unwrap();
            let s = dev.save_state().unwrap();
            dev.restore_state(&s).unwrap();
            dev.resume().unwrap();
        }
        Cut::Migrate(_) => {
            dev.quiesce().unwrap();
            let s = dev.save_state().unwrap();
            let dm = dev.devmem().to_vec();
            irqs = irq.take();
            let fresh = std::sync::Arc::new(vfpga_device::IrqLog::new());
            irq = fresh.clone();
            let mut d = Model::new(dev.config(), r.dma.clone(), fresh).unwrap();
            d.quiesce().unwrap();
            d.devmem_write(0, &dm).unwrap();
            d.restore_state(&s).unwrap();
            d.resume().unwrap();
            dev = d;
        }
    }
    loop {
        let s = dev.step();
        if s == Step::Idle {
            break;
        }
        kinds.push(s.kind());
    }
    let cs = ring.poll(&mut dev).unwrap();
    irqs.extend(irq.take());
    dev.quiesce().unwrap();
    let st = untimed(&dev.save_state().unwrap().arch);
    (
        (r.mem.snapshot(), dev.devmem().to_vec(), st, cs, irqs),
        kinds,
    )
}

#[test]
fn every_step_boundary_is_a_safe_quiesce_point() {
    let (want, kinds) = run(Cut::None);
    assert_eq!(want.3.len(), 7);
    assert!(
        want.3
            .iter()
            .all(|c| c.status() == Some(vfpga_regs::CplStatus::Ok))
    );
    assert_eq!(want.4, vec![0, 0, 0]);
    let bursts = kinds.iter().filter(|k| **k == StepKind::Burst).count();
    assert!(
        bursts > 40,
        "a stream of multi-burst descriptors ({bursts} bursts)"
    );
    for k in 0..=kinds.len() {
        for cut in [Cut::Pause(k), Cut::Migrate(k)] {
            let (got, got_kinds) = run(cut);
            assert_eq!(got_kinds, kinds, "{cut:?}: step sequence");
            assert_eq!(got.3, want.3, "{cut:?}: completions");
            assert_eq!(got.4, want.4, "{cut:?}: interrupts");
            assert_eq!(got.2, want.2, "{cut:?}: state words");
            assert!(got.0 == want.0, "{cut:?}: guest memory");
            assert!(got.1 == want.1, "{cut:?}: device memory");
        }
    }
}
