//! MMIO racing a running burst (`Op::RacingBurst`): the reference model
//! against itself agrees (the union of racing reads and the drain does not
//! depend on when the reads land), a model whose bursts mark no dirty bit
//! is caught at the racing sequence, and accesses whose result would be
//! timing are refused.

use std::sync::Arc;

use vfpga_crosscheck::lockstep::{Factory, GuestLayout, WaitAccess};
use vfpga_crosscheck::scenario::{GUEST_BASE, GUEST_LEN};
use vfpga_crosscheck::{Effect, Lockstep, LockstepOptions, Op, Scenario, Verdict, run_with};
use vfpga_device::ring::Desc;
use vfpga_device::{DmaPort, IrqSink};
use vfpga_model::{Fault, Model, ModelConfig};
use vfpga_regs::offsets;

const PAGES: u32 = 16;

fn model(fault: Option<Fault>) -> Factory<Model> {
    Box::new(move |dma: DmaPort, irq: Arc<dyn IrqSink>| {
        let cfg = ModelConfig {
            devmem_pages: PAGES,
            dmalog_max_pages: 1024,
            batch_bursts: false,
        };
        let mut m = Model::new(cfg, dma, irq)?;
        m.inject_fault(fault);
        Ok(m)
    })
}

fn reg(offset: u32, len: u8, write: Option<u64>) -> WaitAccess {
    WaitAccess {
        bar2: false,
        offset: u64::from(offset),
        len,
        write,
    }
}

/// Rings, the DMA log over guest memory, then a racing sequence around a
/// FILL_DEV of pages 2-3 and a COPY_D2H into guest memory.
fn scenario() -> Scenario {
    let fill = Desc {
        opcode: 5,
        irq: false,
        rsvd: 0,
        tag: 1,
        src: 0,
        dst: 2 * 4096 + 100,
        len: 6000,
        pattern: 0x1234_5678,
    };
    let d2h = Desc {
        opcode: 2,
        tag: 2,
        src: 0,
        dst: GUEST_BASE + 0x4000,
        len: 4096,
        ..fill
    };
    let accesses = vec![
        (reg(offsets::DIRTY_BITS, 4, None), 0),
        (reg(offsets::DIRTY_SEL, 8, None), 3),
        (
            WaitAccess {
                bar2: true,
                offset: u64::from(PAGES - 1) * 4096 + 8,
                len: 8,
                write: Some(0xfeed),
            },
            0,
        ),
        (reg(offsets::DIRTY_SEL, 4, Some(0)), 10),
        (reg(offsets::DIRTY_BITS, 4, None), 40),
        (reg(offsets::DMALOG_SEL, 8, None), 0),
        (reg(offsets::DMALOG_BITS, 4, None), 80),
        (reg(offsets::DIRTY_SEL, 4, None), 0),
    ];
    Scenario {
        version: vfpga_crosscheck::scenario::SCENARIO_VERSION,
        seed: 0,
        devmem_pages: PAGES,
        guest: GuestLayout {
            base: GUEST_BASE,
            len: GUEST_LEN,
            fill_seed: 7,
            slow: None,
        },
        ops: vec![
            Op::SetupRings {
                sq_base: GUEST_BASE,
                sq_size: 8,
                cq_base: GUEST_BASE + 0x1000,
                cq_size: 8,
            },
            Op::DmaLogStart {
                base: GUEST_BASE,
                pages: 16,
            },
            Op::RacingBurst {
                descs: vec![fill, d2h],
                accesses,
            },
        ],
    }
}

#[test]
fn racing_reads_agree_on_the_model_against_itself() {
    let o = run_with(&scenario(), model(None), model(None));
    assert!(o.verdict.passed(), "{:?}", o.verdict);
    assert_eq!(o.stats.racing_bursts, 1);
    assert_eq!(o.stats.racing_accesses, 9, "the doorbell and 8 accesses");
    // Two DIRTY_BITS reads, one DMALOG_BITS read, and the high halves of
    // the 64-bit DIRTY_SEL and DMALOG_SEL reads.
    assert_eq!(o.stats.racing_bitmap_reads, 5);
}

#[test]
fn a_burst_that_marks_nothing_is_caught_by_the_racing_sequence() {
    let o = run_with(&scenario(), model(None), model(Some(Fault::DirtyBitNotSet)));
    let Verdict::Diverged { divergence } = o.verdict else {
        panic!("not caught: {:?}", o.verdict);
    };
    match &divergence.effect {
        Effect::DirtyBitmap { expected, actual } => {
            // Pages 2-3 (the fill) and the last page (the BAR2 write).
            assert_eq!(expected, &vec![2, 3, PAGES - 1]);
            assert_eq!(actual, &vec![PAGES - 1]);
        }
        e => panic!("caught as {e:?}"),
    }
    let racing = std::iter::once(&divergence.op)
        .chain(&divergence.context)
        .any(|l| l.contains("racing burst"));
    assert!(racing, "{divergence}");
}

#[test]
fn accesses_whose_result_is_timing_are_refused() {
    let sc = scenario();
    let mut ls = Lockstep::new(
        sc.guest,
        LockstepOptions::default(),
        model(None),
        model(None),
    )
    .expect("lockstep");
    for bad in [
        reg(offsets::CNT_DESC, 4, None),
        reg(offsets::CTRL, 4, Some(0)),
        // DIRTY_SEL and DIRTY_BITS as one 64-bit write.
        reg(offsets::DIRTY_SEL, 8, Some(0)),
    ] {
        let e = ls.racing_burst(&[(bad.clone(), 0)]).expect_err("refused");
        assert!(e.to_string().contains("timing-independent"), "{bad}: {e}");
    }
    assert!(ls.divergence().is_none());
}
