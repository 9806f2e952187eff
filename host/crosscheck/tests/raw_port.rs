//! The datasheet's answer to raw MMIO port requests (what the reference
//! side of `Op::RawPort` computes), on the model: the widths and ranges the
//! `Device` seam cannot express, and ordinary accesses through the same path.

use std::sync::Arc;

use vfpga_crosscheck::lockstep::RawAccess;
use vfpga_device::{Bar, Device, DmaPort, IrqLog};
use vfpga_model::{Model, ModelConfig};
use vfpga_regs::offsets;

const PAGES: u32 = 16;
const DEVMEM: u32 = PAGES * 4096;

fn model() -> Model {
    let cfg = ModelConfig {
        devmem_pages: PAGES,
        dmalog_max_pages: 1024,
        batch_bursts: false,
    };
    Model::new(cfg, DmaPort::new(), Arc::new(IrqLog::new())).expect("model")
}

fn raw(bar2: bool, addr: u32, be: u8, write: Option<u64>) -> RawAccess {
    RawAccess {
        bar2,
        addr,
        be,
        write,
    }
}

#[test]
fn bar0_widths_and_offsets() {
    let mut m = model();
    let s = offsets::SCRATCH;
    // A 32-bit write on the lane of SCRATCH's half, then reads of it.
    let (lo, be) = if s.is_multiple_of(8) {
        (0, 0x0f)
    } else {
        (32, 0xf0)
    };
    let w = raw(false, s & !7, be, Some(0x1234_5678u64 << lo));
    assert_eq!(w.datasheet_answer(&mut m).unwrap(), 0);
    let r = raw(false, s & !7, be, None);
    assert_eq!(r.datasheet_answer(&mut m).unwrap(), 0x1234_5678u64 << lo);
    // Other byte enables: all ones, and a write is ignored.
    for be in [0x00u8, 0x01, 0x3c, 0x7f, 0x80] {
        assert_eq!(
            raw(false, s, be, None).datasheet_answer(&mut m).unwrap(),
            u64::MAX
        );
        assert_eq!(
            raw(false, s & !7, be, Some(u64::MAX))
                .datasheet_answer(&mut m)
                .unwrap(),
            0
        );
    }
    assert_eq!(m.read_reg(s).unwrap(), 0x1234_5678);
    // Past the register page: reads 0, writes ignored.
    for addr in [0x1000u32, 0x2000 + (s & 0xff8), 0xffff_fff8] {
        assert_eq!(
            raw(false, addr, 0xff, None)
                .datasheet_answer(&mut m)
                .unwrap(),
            0
        );
        assert_eq!(
            raw(false, addr, be, Some(7 << lo))
                .datasheet_answer(&mut m)
                .unwrap(),
            0
        );
    }
    assert_eq!(m.read_reg(s).unwrap(), 0x1234_5678);
}

#[test]
fn bar2_byte_enables_and_range() {
    let mut m = model();
    let at = DEVMEM - 4096 + 64;
    m.mmio_write(Bar::DevMem, u64::from(at), &[1, 2, 3, 4, 5, 6, 7, 8])
        .unwrap();
    // A contiguous run: the enabled bytes on their lanes, 0 elsewhere.
    assert_eq!(
        raw(true, at, 0x3c, None).datasheet_answer(&mut m).unwrap(),
        u64::from_le_bytes([0, 0, 3, 4, 5, 6, 0, 0])
    );
    // Empty, non-contiguous, or past device memory: all ones, writes ignored.
    for (addr, be) in [
        (at, 0x00u8),
        (at, 0x05),
        (at, 0x81),
        (DEVMEM, 0xff),
        (DEVMEM, 0x01),
    ] {
        assert_eq!(
            raw(true, addr, be, None).datasheet_answer(&mut m).unwrap(),
            u64::MAX
        );
        assert_eq!(
            raw(true, addr, be, Some(0))
                .datasheet_answer(&mut m)
                .unwrap(),
            0
        );
    }
    let mut b = [0u8; 8];
    m.mmio_read(Bar::DevMem, u64::from(at), &mut b).unwrap();
    assert_eq!(b, [1, 2, 3, 4, 5, 6, 7, 8]);
    // A contiguous write: only its bytes change.
    raw(true, at, 0x80, Some(0xaa << 56))
        .datasheet_answer(&mut m)
        .unwrap();
    m.mmio_read(Bar::DevMem, u64::from(at), &mut b).unwrap();
    assert_eq!(b, [1, 2, 3, 4, 5, 6, 7, 0xaa]);
}
