//! Every register of the generated map: reset value and access type.

#![cfg(not(vfpga_sim_unavailable))]

mod common;

use vfpga_device::{Bar, Device};
use vfpga_regs::{Access, REGISTERS, Reset, consts, offsets};

/// A register whose value moves by itself.
fn moving(off: u32) -> bool {
    off == offsets::TIMER_LO || off == offsets::TIMER_HI
}

#[test]
fn reset_values_match_the_generated_map() {
    let mut r = common::rig();
    for reg in REGISTERS {
        if moving(reg.offset) {
            continue;
        }
        let want = match reg.reset {
            Reset::Value(v) => v,
            Reset::Param if reg.offset == offsets::DEVMEM_PAGES => common::PAGES,
            Reset::Param => consts::MAX_DMALOG_PAGES,
        };
        assert_eq!(r.rd(reg.offset), want, "reset value of {}", reg.name);
    }
    // After a soft reset, again (with state changed first).
    r.wr(offsets::SCRATCH, 5);
    r.wr(offsets::IRQ_MASK, 0);
    r.wr(offsets::SQ_SIZE, 8);
    r.wr(offsets::SQ_TAIL, 3);
    r.wr(offsets::DMALOG_PAGES, 100);
    r.wr(offsets::DIRTY_SEL, 1);
    r.dev.soft_reset().unwrap();
    for reg in REGISTERS {
        if moving(reg.offset) || matches!(reg.reset, Reset::Param) {
            continue;
        }
        assert_eq!(
            r.rd(reg.offset),
            reg.reset_value(),
            "{} after SOFT_RESET",
            reg.name
        );
    }
}

#[test]
fn timer_runs_and_latches_the_high_half() {
    let mut r = common::rig();
    let a = r.rd(offsets::TIMER_LO);
    r.dev.advance(1000).unwrap();
    let b = r.rd(offsets::TIMER_LO);
    assert!(b.wrapping_sub(a) >= 1000, "timer moved {a} -> {b}");
    assert_eq!(r.rd(offsets::TIMER_HI), 0);
}

/// What reads back after writing `v` to a register (device idle, disabled,
/// not quiesced, rings of size 0).
fn expected_after_write(off: u32, v: u32, before: u32) -> u32 {
    match off {
        offsets::SCRATCH => v,
        offsets::CTRL => v & 1,
        offsets::ERR_CODE => 0,
        offsets::IRQ_STATUS => before & !v,
        offsets::IRQ_MASK => v & 3,
        offsets::SQ_BASE_LO => v & !0x1f,
        offsets::CQ_BASE_LO => v & !0xf,
        offsets::SQ_BASE_HI | offsets::CQ_BASE_HI => v,
        offsets::SQ_SIZE | offsets::CQ_SIZE => {
            if v == 0 || (v.is_power_of_two() && (2..=consts::MAX_RING_ENTRIES).contains(&v)) {
                v
            } else {
                before
            }
        }
        offsets::SQ_TAIL | offsets::CQ_HEAD => 0, // ring size 0
        offsets::DIRTY_SEL => v % (common::PAGES / 32).max(1),
        offsets::DMALOG_CTRL => v & 1,
        offsets::DMALOG_BASE_LO => v & !0xfff,
        offsets::DMALOG_BASE_HI => v,
        offsets::DMALOG_PAGES => v.min(consts::MAX_DMALOG_PAGES),
        offsets::DMALOG_SEL | offsets::STATE_IDX => v,
        offsets::STATE_CTRL => 0,
        offsets::DMA_THROTTLE => vfpga_regs::fields::dma_throttle::IDLE.get(v),
        _ => before,
    }
}

#[test]
fn access_types_match_the_generated_map() {
    let mut r = common::rig();
    for reg in REGISTERS {
        if moving(reg.offset) {
            continue;
        }
        for v in [0x5a5a_5a5au32, 0xa5a5_a5a0, 0x0000_0040, 0] {
            // CTRL pulses would reset or quiesce: only the stored bit here.
            let v = if reg.offset == offsets::CTRL {
                v & 1
            } else {
                v
            };
            // DMALOG_CTRL.ENABLE locks the window registers: leave it clear.
            let v = if reg.offset == offsets::DMALOG_CTRL {
                v & !1
            } else {
                v
            };
            let before = r.rd(reg.offset);
            r.wr(reg.offset, v);
            let after = r.rd(reg.offset);
            let want = match reg.access {
                Access::Ro => before,
                Access::Wo => 0,
                _ => expected_after_write(reg.offset, v, before),
            };
            if reg.offset == offsets::STATUS {
                continue; // BUSY follows CTRL.ENABLE and the rings
            }
            assert_eq!(
                after, want,
                "{} ({:?}) after writing {v:#x}",
                reg.name, reg.access
            );
        }
    }
}

#[test]
fn other_widths_read_ones_and_writes_are_ignored() {
    let mut r = common::rig();
    let mut b = [0u8; 2];
    r.dev
        .mmio_read(Bar::Regs, u64::from(offsets::SCRATCH), &mut b)
        .unwrap();
    assert_eq!(b, [0xff, 0xff]);
    r.dev
        .mmio_write(Bar::Regs, u64::from(offsets::SCRATCH), &[1, 2])
        .unwrap();
    assert_eq!(r.rd(offsets::SCRATCH), 0);
    // 64-bit access: two registers, low half first.
    r.dev
        .mmio_write(
            Bar::Regs,
            u64::from(offsets::SQ_BASE_LO),
            &0x0000_0001_0000_0040u64.to_le_bytes(),
        )
        .unwrap();
    assert_eq!(r.rd(offsets::SQ_BASE_LO), 0x40);
    assert_eq!(r.rd(offsets::SQ_BASE_HI), 1);
    let mut q = [0u8; 8];
    r.dev
        .mmio_read(Bar::Regs, u64::from(offsets::SQ_BASE_LO), &mut q)
        .unwrap();
    assert_eq!(u64::from_le_bytes(q), 0x1_0000_0040);
    // Unassigned offsets read 0; the MSI-X area is the bridge's.
    assert_eq!(r.rd(0x0fc), 0);
    assert_eq!(r.rd(consts::MSIX_TABLE_OFFSET), 0);
    // Outside BAR0 is an error of the access, not a register.
    assert!(r.dev.read_reg(consts::BAR0_SIZE).is_err());
}
