//! Server-initiated DMA must never hold up the client's MMIO (errata, "DMA
//! paths"): QEMU's vCPU keeps the big lock while it waits for a REGION_READ
//! reply, and QEMU serves the server's DMA_READ/DMA_WRITE only under that
//! lock. The client here behaves the same way
//! ([`Client::emulate_qemu_lock`]) with QEMU's 5-second reply timeout, and
//! guest memory is mapped without an fd, so every device access is a
//! message. A server that answered MMIO only after its own DMA had been
//! answered would time out here.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use vfpga_device::ring::{Desc, RingDriver};
use vfpga_device::{DmaPort, Perm};
use vfpga_regs::{CplStatus, Opcode, offsets};
use vfpga_vfio_user::Client;
use vfpga_vfio_user::session::region;

const BASE: u64 = 0x200_0000;
const LEN: usize = 0x8_0000;

fn qemu_like_client(h: &Harness) -> Arc<Client> {
    let mut c = h.client();
    c.set_timeout(Duration::from_secs(5));
    c.emulate_qemu_lock(true);
    Arc::new(c)
}

fn mmio_answers_while_dma_waits(b: Backend) {
    let h = start(b);
    let c = qemu_like_client(&h);
    let mem = c.dma_map_message(BASE, LEN).unwrap();
    c.enable_bus_master().unwrap();
    let port = DmaPort::new();
    port.map(BASE, Arc::new(MessageMemory(mem.clone())), Perm::RW)
        .unwrap();
    let mut dev = wire_device(&c);
    let mut rd = RingDriver::setup(&mut dev, &port, BASE, 16, BASE + 0x1000, 16).unwrap();

    let (src, mid, dst) = (BASE + 0x1_0000, BASE + 0x3_0000, BASE + 0x5_0000);
    let n = 0x1_0000usize;
    let data = vfpga_hil::pattern(7, n);
    mem.lock().unwrap()[0x1_0000..0x1_0000 + n].copy_from_slice(&data);
    let descs = [
        Desc::new(Opcode::CopyH2d, 1, src, 0, n as u32, 0).with_irq(),
        Desc::new(Opcode::CopyD2h, 2, 0, mid, n as u32, 0).with_irq(),
        Desc::new(Opcode::CopyH2h, 3, mid, dst, n as u32, 0).with_irq(),
        Desc::new(Opcode::Crc32c, 4, dst, 0, n as u32, 0).with_irq(),
    ];
    // Each descriptor alone, then all four at once: the ring driver polls
    // CQ_TAIL and IRQ_STATUS over the wire while the device's DMA is out.
    for d in &descs {
        let cpl = rd.run(&mut dev, std::slice::from_ref(d), 1 << 40).unwrap();
        assert_eq!(cpl.len(), 1);
        assert_eq!(cpl[0].status(), Some(CplStatus::Ok), "{d:?}");
    }
    // Device memory through BAR2, and a register pair as one 64-bit read,
    // while a host-to-host copy's DMA is out: each read must be answered
    // without waiting for that DMA (QEMU holds its lock for it). COPY_H2D
    // above left `data` at device offset 0.
    rd.submit(&mut dev, &descs[2]).unwrap();
    let mut reads = 0;
    while rd.in_flight() > 0 {
        let off = (reads * 0x1238) % (n - 8);
        let got = c.region_read(region::BAR2, off as u64, 8).unwrap();
        assert_eq!(got, data[off..off + 8], "BAR2 read at {off:#x} during DMA");
        // A 64-bit BAR0 read (two 32-bit accesses, datasheet §1).
        let sq = c
            .region_read(region::BAR0, u64::from(offsets::SQ_BASE_LO), 8)
            .unwrap();
        assert_eq!(
            sq,
            rd.sq_base().to_le_bytes(),
            "64-bit SQ_BASE read during DMA"
        );
        reads += 1;
        rd.poll(&mut dev).unwrap();
        assert!(reads < 1_000_000, "the copy never completed");
    }
    assert!(
        reads > 1,
        "the copy finished before any BAR2 read overlapped it"
    );
    let cpl = rd.run(&mut dev, &descs, 1 << 40).unwrap();
    assert_eq!(cpl.len(), 4);
    for c in &cpl {
        assert_eq!(c.status(), Some(CplStatus::Ok), "{c:?}");
    }
    let m = mem.lock().unwrap();
    assert!(m[0x3_0000..0x3_0000 + n] == data[..], "COPY_D2H result");
    assert!(m[0x5_0000..0x5_0000 + n] == data[..], "COPY_H2H result");
    let want = crc32c::crc32c(&data);
    assert_eq!(cpl[3].result, want, "CRC32C over the wire");
    drop(m);
    assert!(c.dma_requests() > 0, "no DMA by message happened");
}

backend_tests!(mmio_answers_while_dma_waits);
