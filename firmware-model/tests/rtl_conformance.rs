//! The shared save/restore conformance suite on the Verilated RTL
//! (`vfpga-sim`, explicit clocking), next to the model's run of it.
//! Built only with `--features rtl` (needs Verilator):
//! `cargo test --release -p vfpga-model --features rtl --test rtl_conformance`.
//! Also a differential check: random descriptor streams on both, and the
//! state moved between them mid-stream, in both directions.
#![cfg(feature = "rtl")]

use vfpga_sim::{SimDevice, SimOptions};

vfpga_device::conformance_tests!(|dma, irq| {
    let o = SimOptions {
        devmem_pages: 16,
        ..SimOptions::default()
    };
    SimDevice::new(o, dma, irq).map_err(Into::into)
});

/// Random descriptor streams on the model and on the RTL: same completions,
/// guest memory, device memory, interrupts and state words (timer aside).
mod differential {
    use std::sync::Arc;

    use vfpga_device::conformance::untimed;
    use vfpga_device::ring::{Desc, RingDriver};
    use vfpga_device::{Device, DmaPort, IrqLog, Perm, VecMemory};
    use vfpga_model::{Model, ModelConfig};
    use vfpga_regs::{consts, offsets};
    use vfpga_sim::{SimDevice, SimOptions};

    const GUEST: u64 = 0x2_0000_0000;
    const LEN: usize = 64 * 1024;
    const PAGES: u32 = 16;

    use vfpga_device::testkit::Rng;

    fn stream(rng: &mut Rng) -> Vec<Desc> {
        (0..1 + rng.below(10))
            .map(|i| {
                let opcode = match rng.below(10) {
                    0 => 0,
                    1 => 9,
                    _ => 1 + rng.below(6) as u8,
                };
                let host = |r: &mut Rng| GUEST + 0x2000 + r.below(LEN as u64 - 0x2000 + 600);
                let dev = |r: &mut Rng| r.below(u64::from(PAGES) * 4096 + 600);
                let (src, dst) = match opcode {
                    1 => (host(rng), dev(rng)),
                    2 => (dev(rng), host(rng)),
                    3 => (host(rng), host(rng)),
                    4 => (host(rng), 0),
                    5 => (0, dev(rng)),
                    6 => (0, host(rng)),
                    _ => (rng.next(), rng.next()),
                };
                let len = match rng.below(20) {
                    0 => consts::MAX_DESC_LEN + 1,
                    1..=3 => rng.below(5000) as u32,
                    _ => rng.below(700) as u32,
                };
                Desc {
                    opcode,
                    irq: rng.below(2) == 0,
                    rsvd: u32::from(rng.below(25) == 0),
                    tag: i as u32,
                    src,
                    dst,
                    len,
                    pattern: rng.next() as u32,
                }
            })
            .collect()
    }

    type Outcome = (
        Vec<vfpga_device::ring::Completion>,
        Vec<u8>,
        Vec<u8>,
        [u32; 38],
        Vec<u16>,
    );

    fn run<D: Device>(
        dev: &mut D,
        dma: &DmaPort,
        mem: &VecMemory,
        irq: &IrqLog,
        d: &[Desc],
    ) -> Outcome {
        let mut ring = RingDriver::setup(dev, dma, GUEST, 16, GUEST + 0x1000, 16).expect("rings");
        dev.write_reg(offsets::IRQ_MASK, 0).expect("unmask");
        let cs = ring.run(dev, d, 50_000_000).expect("run");
        dev.run_until_idle(10_000).expect("idle");
        dev.quiesce().expect("quiesce");
        let s = dev.save_state().expect("save");
        let mut dm = vec![0; PAGES as usize * 4096];
        dev.devmem_read(0, &mut dm).expect("devmem");
        (cs, mem.snapshot(), dm, untimed(&s.arch), irq.raised())
    }

    fn rig(seed: u64) -> (DmaPort, Arc<VecMemory>, Arc<IrqLog>) {
        let dma = DmaPort::new();
        let mem = Arc::new(VecMemory::new(LEN));
        dma.map(GUEST, mem.clone(), Perm::RW).expect("map");
        let mut r = Rng(seed | 1);
        let init: Vec<u8> = (0..LEN).map(|_| r.next() as u8).collect();
        dma.host_write(GUEST, &init).expect("init");
        (dma, mem, Arc::new(IrqLog::new()))
    }

    #[test]
    fn model_and_rtl_agree_on_random_streams() {
        let mut rng = Rng(0x5eed_1234_5678_9abc);
        for case in 0..500 {
            let descs = stream(&mut rng);
            let seed = rng.next();
            let (dma, mem, irq) = rig(seed);
            let mut m = Model::new(ModelConfig::with_pages(PAGES), dma.clone(), irq.clone())
                .expect("model");
            let a = run(&mut m, &dma, &mem, &irq, &descs);
            let (dma, mem, irq) = rig(seed);
            let o = SimDevice::new(
                SimOptions {
                    devmem_pages: PAGES,
                    ..SimOptions::default()
                },
                dma.clone(),
                irq.clone(),
            )
            .expect("sim");
            let mut s = o;
            let b = run(&mut s, &dma, &mem, &irq, &descs);
            assert_eq!(a.0, b.0, "case {case}: completions; {descs:?}");
            assert_eq!(a.3, b.3, "case {case}: state words; {descs:?}");
            assert_eq!(a.4, b.4, "case {case}: interrupts; {descs:?}");
            assert!(a.1 == b.1, "case {case}: guest memory; {descs:?}");
            assert!(a.2 == b.2, "case {case}: device memory; {descs:?}");
        }
    }

    #[allow(clippy::too_many_arguments)]
    /// Finish on `to` what `from` started: quiesce after `cut` units, move
    /// state and device memory, resume. Returns the outcome like `run`.
    fn transplant<A: Device, B: Device>(
        from: &mut A,
        to: &mut B,
        cut: u64,
        dma: &DmaPort,
        mem: &VecMemory,
        irq_from: &IrqLog,
        irq_to: &IrqLog,
        d: &[Desc],
    ) -> Outcome {
        let mut ring = RingDriver::setup(from, dma, GUEST, 16, GUEST + 0x1000, 16).expect("rings");
        from.write_reg(offsets::IRQ_MASK, 0).expect("unmask");
        for x in d {
            ring.submit(from, x).expect("submit");
        }
        let mut used = 0;
        while used < cut {
            let p = from.advance(1).expect("advance");
            used += 1;
            if p.idle && p.used == 0 {
                break;
            }
        }
        from.quiesce().expect("quiesce");
        let st = from.save_state().expect("save");
        let mut dm = vec![0; PAGES as usize * 4096];
        from.devmem_read(0, &mut dm).expect("devmem");
        to.quiesce().expect("quiesce dst");
        to.devmem_write(0, &dm).expect("devmem dst");
        to.restore_state(&st).expect("restore");
        to.resume().expect("resume");
        let cs = ring.wait_all(to, 50_000_000).expect("wait");
        to.run_until_idle(10_000).expect("idle");
        to.quiesce().expect("quiesce");
        let s = to.save_state().expect("save");
        let mut dm = vec![0; PAGES as usize * 4096];
        to.devmem_read(0, &mut dm).expect("devmem");
        let mut irqs = irq_from.raised();
        irqs.extend(irq_to.raised());
        (cs, mem.snapshot(), dm, untimed(&s.arch), irqs)
    }

    #[test]
    fn state_moves_between_model_and_rtl_mid_stream() {
        let mut rng = Rng(0xfeed_0000_1111_2222);
        let sim = |dma: &DmaPort, irq: &Arc<IrqLog>| {
            SimDevice::new(
                SimOptions {
                    devmem_pages: PAGES,
                    ..SimOptions::default()
                },
                dma.clone(),
                irq.clone(),
            )
            .expect("sim")
        };
        let model = |dma: &DmaPort, irq: &Arc<IrqLog>| {
            Model::new(ModelConfig::with_pages(PAGES), dma.clone(), irq.clone()).expect("model")
        };
        for case in 0..200 {
            let descs = stream(&mut rng);
            let seed = rng.next();
            let (dma, mem, irq) = rig(seed);
            let want = run(&mut model(&dma, &irq), &dma, &mem, &irq, &descs);
            // The completions collected on the destination include those
            // written before the cut (they are still in the CQ).
            let (dma, mem, irq) = rig(seed);
            let irq2 = Arc::new(IrqLog::new());
            let cut = rng.below(60);
            let got = transplant(
                &mut model(&dma, &irq),
                &mut sim(&dma, &irq2),
                cut,
                &dma,
                &mem,
                &irq,
                &irq2,
                &descs,
            );
            assert_eq!(
                got.0, want.0,
                "case {case} model->rtl at step {cut}: completions; {descs:?}"
            );
            assert_eq!(got.3, want.3, "case {case} model->rtl at step {cut}: state");
            assert_eq!(got.4, want.4, "case {case} model->rtl: interrupts");
            assert!(
                got.1 == want.1 && got.2 == want.2,
                "case {case} model->rtl: memory"
            );
            let (dma, mem, irq) = rig(seed);
            let irq2 = Arc::new(IrqLog::new());
            let cut = rng.below(3000);
            let got = transplant(
                &mut sim(&dma, &irq),
                &mut model(&dma, &irq2),
                cut,
                &dma,
                &mem,
                &irq,
                &irq2,
                &descs,
            );
            assert_eq!(
                got.0, want.0,
                "case {case} rtl->model at cycle {cut}: completions; {descs:?}"
            );
            assert_eq!(
                got.3, want.3,
                "case {case} rtl->model at cycle {cut}: state"
            );
            assert_eq!(got.4, want.4, "case {case} rtl->model: interrupts");
            assert!(
                got.1 == want.1 && got.2 == want.2,
                "case {case} rtl->model: memory"
            );
        }
    }
}
