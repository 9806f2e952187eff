//! Wire conformance against a server on the model: framing and negotiation
//! (§6 A), regions and config space, interrupts, DMA (fd and message),
//! dirty logging (§6 F) and lifecycle (§6 G).

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::os::fd::AsFd;
use std::sync::Arc;

use common::*;
use nix::errno::Errno;
use nix::sys::eventfd::{EfdFlags, EventFd};
use vfpga_device::ring::{Desc, RingDriver};
use vfpga_regs::{CplStatus, Opcode, consts, offsets};
use vfpga_vfio_user::pci;
use vfpga_vfio_user::session::{irq_index, region};
use vfpga_vfio_user::wire::{self, Caps, Header, cmd, flags};

fn errno(r: Result<impl std::fmt::Debug, vfpga_vfio_user::ClientError>) -> Errno {
    match r {
        Err(e) => e
            .errno()
            .unwrap_or_else(|| panic!("not a remote error: {e}")),
        Ok(v) => panic!("expected an error reply, got {v:?}"),
    }
}

fn a1_version_majors_and_minors(b: Backend) {
    let h = start(b);
    for minor in [0u16, 1, 2, 7] {
        let c = h.client_when_free(minor, Caps::default());
        let v = c.version().unwrap();
        assert!(
            v.minor <= minor && v.minor <= 2,
            "minor {minor} -> {}",
            v.minor
        );
        assert!(v.has_json, "the reply always carries JSON");
    }
    let c = h.raw_client_when_free();
    let mut bad = wire::Version {
        major: 1,
        minor: 0,
        caps: Caps::default(),
        has_json: true,
    }
    .encode();
    assert_eq!(errno(c.request(cmd::VERSION, &bad, &[])), Errno::EINVAL);
    // Still unnegotiated after the bad VERSION: commands are refused...
    assert_eq!(errno(c.device_info()), Errno::EINVAL);
    // ...and a good VERSION then succeeds on the same connection.
    bad[0] = 0;
    assert!(c.request(cmd::VERSION, &bad, &[]).is_ok());
    assert!(c.device_info().is_ok());
}

fn a2_a3_a4_version_json(b: Backend) {
    let h = start(b);
    for bad in [
        &b"{\"capabilities\":{}}"[..],
        &b"{\"capabilities\":{\"max_msg_fds\":\"8\"}}\0"[..],
        &b"{\"capabilities\":{\"migration\":1}}\0"[..],
        &b"{oops\0"[..],
    ] {
        let c = h.raw_client_when_free();
        let mut p = vec![0, 0, 0, 0];
        p.extend_from_slice(bad);
        assert_eq!(errno(c.request(cmd::VERSION, &p, &[])), Errno::EINVAL);
        assert_eq!(
            errno(c.device_info()),
            Errno::EINVAL,
            "no session after a bad VERSION"
        );
    }
    // QEMU's exact request: reply minor 0, fits QEMU's buffer (its own
    // request size), names only capabilities QEMU offered.
    let qemu = br#"{"capabilities":{"migration":{"pgsize":4096,"max_bitmap_size":268435456},"max_msg_fds":16,"max_data_xfer_size":1048576,"pgsizes":4096,"max_dma_maps":65535,"write_multiple":true}}"#;
    let mut p = vec![0, 0, 0, 0];
    p.extend_from_slice(qemu);
    p.push(0);
    let c = h.raw_client_when_free();
    let r = c.request(cmd::VERSION, &p, &[]).unwrap();
    assert!(
        r.len() <= p.len(),
        "reply {} > request {}",
        r.len(),
        p.len()
    );
    let v = wire::Version::decode(&r).unwrap();
    assert_eq!((v.major, v.minor), (0, 0));
    assert!(v.caps.max_msg_fds >= 1 && v.caps.max_msg_fds <= 16);
    assert!(v.caps.write_multiple);
    // The reply's capabilities are a subset of those proposed (rust-vmm's
    // vfio_user client proposes only these three), with the migration
    // object's sub-keys too; it still fits the request's size.
    drop(c);
    for (req, offered) in [
        (&qemu[..], &["migration", "max_msg_fds", "max_data_xfer_size", "pgsizes", "max_dma_maps", "write_multiple"][..]),
        (
            &br#"{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":1048576,"migration":{"pgsize":4096}}}"#[..],
            &["max_msg_fds", "max_data_xfer_size", "migration"][..],
        ),
        (&br#"{"capabilities":{}}"#[..], &[][..]),
    ] {
        let mut p = vec![0, 0, 0, 0];
        p.extend_from_slice(req);
        p.push(0);
        let c = h.raw_client_when_free();
        let r = c.request(cmd::VERSION, &p, &[]).unwrap();
        assert!(r.len() <= p.len(), "reply {} > request {}", r.len(), p.len());
        let (Some((&0, text)), Ok(asked)) = (
            r[4..].split_last(),
            serde_json::from_slice::<serde_json::Value>(req),
        ) else {
            panic!("reply JSON not NUL-terminated");
        };
        let got: serde_json::Value = serde_json::from_slice(text).unwrap();
        let caps = got["capabilities"].as_object().unwrap();
        for k in caps.keys() {
            assert!(offered.contains(&k.as_str()), "reply names {k}, not proposed");
        }
        if let Some(m) = caps.get("migration").and_then(|m| m.as_object()) {
            let proposed = asked["capabilities"]["migration"].as_object().unwrap();
            for k in m.keys() {
                assert!(proposed.contains_key(k), "reply names migration.{k}, not proposed");
            }
        }
        drop(c);
    }
    let c = h.raw_client_when_free();
    // No JSON at all: defaults apply, the reply still carries JSON.
    drop(c);
    let c = h.raw_client_when_free();
    let r = c.request(cmd::VERSION, &[0, 0, 2, 0], &[]).unwrap();
    let v = wire::Version::decode(&r).unwrap();
    assert_eq!(
        v.caps.max_data_xfer_size,
        Caps::default().max_data_xfer_size
    );
}

fn a5_a6_a7_framing_errors_keep_the_session(b: Backend) {
    let h = start(b);
    // A msg_size that cannot be right (below the header, above our limit)
    // is answered and ends the connection: covered by `hostile.rs`. Errors
    // inside well-framed messages keep the session:
    let c = h.client();
    // Unknown commands.
    for command in [0u16, 14, 19, 0xffff] {
        assert_eq!(
            errno(c.request(command, &[0; 16], &[])),
            Errno::ENOSYS,
            "cmd {command}"
        );
    }
    // Truncated payloads of known commands.
    assert_eq!(errno(c.request(cmd::DMA_MAP, &[0; 31], &[])), Errno::EINVAL);
    assert_eq!(
        errno(c.request(cmd::REGION_READ, &[0; 15], &[])),
        Errno::EINVAL
    );
    // A REGION_READ beyond max_data_xfer_size.
    let a = wire::RegionAccess {
        offset: 0,
        region: region::BAR2,
        count: (1 << 20) + 1,
    };
    assert_eq!(
        errno(c.request(cmd::REGION_READ, &a.encode(&[]), &[])),
        Errno::E2BIG
    );
    // The reply echoes id and command, type reply.
    let r = c
        .transact(
            cmd::DEVICE_GET_INFO,
            0,
            &[16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &[],
        )
        .unwrap()
        .unwrap();
    assert_eq!(r.hdr.command, cmd::DEVICE_GET_INFO);
    assert_eq!(r.hdr.flags & flags::TYPE_MASK, flags::TYPE_REPLY);
    // Posted writes get no reply and are applied in order.
    for v in 1..=50u32 {
        c.region_write_posted(region::BAR0, offsets::SCRATCH.into(), &v.to_le_bytes())
            .unwrap();
    }
    assert_eq!(c.read32(offsets::SCRATCH.into()).unwrap(), 50);
    // REGION_WRITE_MULTI (posted).
    let e = |o: u32, v: u32| wire::MultiEntry {
        offset: o.into(),
        region: region::BAR0,
        count: 4,
        data: (u64::from(v)).to_le_bytes(),
    };
    c.region_write_multi(&[e(offsets::SCRATCH, 7), e(offsets::SCRATCH, 9)])
        .unwrap();
    assert_eq!(c.read32(offsets::SCRATCH.into()).unwrap(), 9);
}

fn a8_unsolicited_reply_is_not_executed(b: Backend) {
    let h = start(b);
    let c = h.client();
    c.write32(offsets::SCRATCH.into(), 1).unwrap();
    let a = wire::RegionAccess {
        offset: offsets::SCRATCH.into(),
        region: region::BAR0,
        count: 4,
    };
    let p = a.encode(&2u32.to_le_bytes());
    let hd = Header {
        msg_id: 999,
        command: cmd::REGION_WRITE,
        msg_size: (16 + p.len()) as u32,
        flags: flags::TYPE_REPLY,
        error: 0,
    };
    let mut m = hd.encode().to_vec();
    m.extend_from_slice(&p);
    c.send_raw(&m, &[]).unwrap();
    assert_eq!(c.read32(offsets::SCRATCH.into()).unwrap(), 1);
}

fn a9_fds_on_commands_that_take_none_are_closed(b: Backend) {
    let h = start(b);
    let c = h.client();
    let (rd, wr) = nix::unistd::pipe().unwrap();
    let r = c.request(
        cmd::DEVICE_GET_INFO,
        &[16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        &[wr.as_fd()],
    );
    assert_eq!(errno(r), Errno::EINVAL);
    drop(wr);
    // EOF only once the server closed its copy of the write end.
    let mut b = [0u8; 1];
    assert_eq!(nix::unistd::read(&rd, &mut b).unwrap(), 0);
    assert!(c.device_info().is_ok(), "session goes on");
}

fn device_region_and_irq_info(b: Backend) {
    let h = start(b);
    let c = h.client();
    let i = c.device_info().unwrap();
    assert_eq!(i.flags, wire::DEVICE_FLAGS_RESET | wire::DEVICE_FLAGS_PCI);
    assert!((8..=100).contains(&i.num_regions) && (3..=50).contains(&i.num_irqs));
    let (b0, _) = c.region_info(region::BAR0).unwrap();
    assert_eq!(b0.size, u64::from(consts::BAR0_SIZE));
    assert_eq!(b0.flags & wire::REGION_FLAG_MMAP, 0);
    let (b2, _) = c.region_info(region::BAR2).unwrap();
    assert_eq!(b2.size, u64::from(PAGES) * 4096);
    assert_eq!(
        b2.flags & wire::REGION_FLAG_MMAP,
        0,
        "BAR2 is never mmapped"
    );
    let (cfg, _) = c.region_info(region::CONFIG).unwrap();
    assert_eq!(cfg.size, 256);
    assert_eq!(c.region_info(region::ROM).unwrap().0.size, 0);
    // The v1 region: a 32-byte argsz gets the fixed part and the size needed.
    let (m, bytes) = c.region_info_argsz(region::MIGRATION, 32).unwrap();
    assert_eq!(bytes.len(), 32);
    assert_eq!((m.argsz, m.cap_offset), (48, 0));
    let (m, bytes) = c.region_info(region::MIGRATION).unwrap();
    assert_eq!(m.cap_offset, 32);
    let r = wire::Reader::new(&bytes, "cap");
    assert_eq!(r.u16(32).unwrap(), wire::REGION_CAP_TYPE);
    assert_eq!((r.u32(40).unwrap(), r.u32(44).unwrap()), (3, 1));
    assert_eq!(errno(c.region_info(99)), Errno::EINVAL);
    let msix = c.irq_info(irq_index::MSIX).unwrap();
    assert_eq!(msix.count, consts::NUM_VECTORS);
    let intx = c.irq_info(irq_index::INTX).unwrap();
    assert_eq!(intx.count, 1);
    assert_ne!(intx.flags & wire::IRQ_INFO_AUTOMASKED, 0);
    assert_eq!(c.irq_info(irq_index::ERR).unwrap().count, 0);
    assert_eq!(errno(c.irq_info(5)), Errno::EINVAL);
}

fn config_space_ids_bars_and_command(b: Backend) {
    let h = start(b);
    let c = h.client();
    let cfg = c.config_read(0, 256).unwrap();
    let r = wire::Reader::new(&cfg, "cfg");
    assert_eq!(u32::from(r.u16(0).unwrap()), consts::PCI_VENDOR_ID);
    assert_eq!(u32::from(r.u16(2).unwrap()), consts::PCI_DEVICE_ID);
    assert_eq!(r.u32(8).unwrap() >> 8, consts::PCI_CLASS_CODE);
    c.config_write(0x10, &u32::MAX.to_le_bytes()).unwrap();
    let bar0 = u32::from_le_bytes(c.config_read(0x10, 4).unwrap().try_into().unwrap());
    assert_eq!(!(bar0 & !0xf) + 1, consts::BAR0_SIZE);
    c.config_write(0x18, &u32::MAX.to_le_bytes()).unwrap();
    c.config_write(0x1c, &u32::MAX.to_le_bytes()).unwrap();
    let lo = u32::from_le_bytes(c.config_read(0x18, 4).unwrap().try_into().unwrap());
    let hi = u32::from_le_bytes(c.config_read(0x1c, 4).unwrap().try_into().unwrap());
    let size = !((u64::from(hi) << 32) | u64::from(lo & !0xf)) + 1;
    assert_eq!(size, u64::from(PAGES) * 4096);
    assert_eq!(lo & 0xf, 0b1100, "64-bit prefetchable");
    assert_eq!(errno(c.config_read(250, 8)), Errno::EINVAL);
    // BAR2 device memory round trip through the device.
    c.region_write(region::BAR2, 4096 + 3, b"hello").unwrap();
    assert_eq!(c.region_read(region::BAR2, 4096 + 3, 5).unwrap(), b"hello");
    assert_eq!(
        errno(c.region_read(region::BAR2, u64::from(PAGES) * 4096 - 2, 4)),
        Errno::EINVAL
    );
}

fn efd() -> EventFd {
    EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK).unwrap()
}

fn msix_eventfds_masks_and_pba(b: Backend) {
    let h = start(b);
    let c = h.client();
    let (e0, e1) = (efd(), efd());
    c.msix_eventfds(0, &[e0.as_fd(), e1.as_fd()]).unwrap();
    // Trigger by SET_IRQS DATA_NONE: the eventfd fires.
    let trig = wire::IRQ_SET_DATA_NONE | wire::IRQ_SET_ACTION_TRIGGER;
    c.set_irqs(trig, irq_index::MSIX, 1, 1, &[], &[]).unwrap();
    assert_eq!(e1.read().unwrap(), 1);
    // Masked: pending in the PBA, delivered on unmask.
    c.set_irqs(
        wire::IRQ_SET_DATA_NONE | wire::IRQ_SET_ACTION_MASK,
        irq_index::MSIX,
        0,
        1,
        &[],
        &[],
    )
    .unwrap();
    c.set_irqs(trig, irq_index::MSIX, 0, 1, &[], &[]).unwrap();
    assert!(e0.read().is_err());
    let pba = c
        .region_read(region::BAR0, consts::MSIX_PBA_OFFSET.into(), 8)
        .unwrap();
    assert_eq!(pba[0] & 1, 1);
    c.set_irqs(
        wire::IRQ_SET_DATA_BOOL | wire::IRQ_SET_ACTION_UNMASK,
        irq_index::MSIX,
        0,
        1,
        &[true],
        &[],
    )
    .unwrap();
    assert_eq!(e0.read().unwrap(), 1);
    // Range and fd-count checks.
    assert_eq!(
        errno(c.set_irqs(trig, irq_index::MSIX, 1, 2, &[], &[])),
        Errno::EINVAL
    );
    let evt = wire::IRQ_SET_DATA_EVENTFD | wire::IRQ_SET_ACTION_TRIGGER;
    assert_eq!(
        errno(c.set_irqs(evt, irq_index::MSIX, 0, 2, &[], &[e0.as_fd()])),
        Errno::EINVAL
    );
    // The MSI-X table is served by the server.
    c.region_write(
        region::BAR0,
        u64::from(consts::MSIX_TABLE_OFFSET) + 8,
        &0xabcdu32.to_le_bytes(),
    )
    .unwrap();
    assert_eq!(
        c.read32(u64::from(consts::MSIX_TABLE_OFFSET) + 8).unwrap(),
        0xabcd
    );
    // Disable: count 0.
    c.set_irqs(trig, irq_index::MSIX, 0, 0, &[], &[]).unwrap();
}

fn run_copy(c: &Arc<vfpga_vfio_user::Client>, g: &GuestMem) -> Vec<vfpga_device::ring::Completion> {
    let mut dev = wire_device(c);
    let mut rd = RingDriver::setup(&mut dev, &g.port, g.base, 8, g.base + 0x1000, 8).unwrap();
    let d = Desc::new(
        Opcode::CopyH2h,
        1,
        g.base + 0x4000,
        g.base + 0x8000,
        4096,
        0,
    );
    rd.run(&mut dev, &[d], 200_000).unwrap()
}

fn dma_through_an_fd_is_gated_by_bus_master_and_logged(b: Backend) {
    let h = start(b);
    let c = Arc::new(h.client());
    let g = GuestMem::new(0x10_0000, 0x2_0000);
    g.map_into(&c);
    g.write(g.base + 0x4000, &[0x5a; 4096]);
    // Bus master off: the device's DMA is refused (the fetch faults).
    let mut dev = wire_device(&c);
    let mut rd = RingDriver::setup(&mut dev, &g.port, g.base, 8, g.base + 0x1000, 8).unwrap();
    let d = Desc::new(
        Opcode::CopyH2h,
        1,
        g.base + 0x4000,
        g.base + 0x8000,
        4096,
        0,
    );
    rd.submit(&mut dev, &d).unwrap();
    // The descriptor fetch is refused: the engine halts with an error.
    let mut halted = false;
    for _ in 0..2000 {
        let st = c.read32(offsets::STATUS.into()).unwrap();
        if st & vfpga_regs::Status::HALTED.bits() != 0 {
            halted = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(halted, "DMA without bus mastering must fault");
    assert_ne!(c.read32(offsets::ERR_CODE.into()).unwrap(), 0);
    assert_eq!(
        g.read(g.base + 0x8000, 4),
        [0; 4],
        "no DMA without bus mastering"
    );
    c.reset().unwrap();
    // Bus master on, dirty logging on: the copy lands and is reported.
    c.enable_bus_master().unwrap();
    c.dma_logging_start(4096, &[(g.base, g.len)]).unwrap();
    assert_eq!(
        errno(c.dma_logging_start(4096, &[(g.base, g.len)])),
        Errno::EBUSY
    );
    let cpl = run_copy(&c, &g);
    assert_eq!(cpl[0].status(), Some(CplStatus::Ok));
    assert_eq!(g.read(g.base + 0x8000, 4096), vec![0x5a; 4096]);
    let bm = c.dma_logging_report(g.base, g.len, 4096).unwrap();
    let pages: Vec<u64> = (0..32).filter(|p| bm[0] & (1 << p) != 0).collect();
    assert!(pages.contains(&8), "destination page logged: {pages:?}");
    assert!(pages.contains(&1), "completion ring page logged: {pages:?}");
    assert!(!pages.contains(&4), "a page only read is not logged");
    assert_eq!(
        c.dma_logging_report(g.base, g.len, 4096).unwrap(),
        vec![0],
        "read-and-clear"
    );
    // Bad REPORTs.
    let d = wire::LoggingReport {
        iova: g.base,
        length: g.len,
        page_size: 4096,
    }
    .encode();
    let get = wire::FEATURE_GET | wire::FEATURE_DMA_LOGGING_REPORT;
    assert_eq!(
        errno(c.feature(8 + 24 + 7, get, &d)),
        Errno::EINVAL,
        "argsz too small"
    );
    let d2 = wire::LoggingReport {
        iova: g.base,
        length: g.len,
        page_size: 2048,
    }
    .encode();
    assert_eq!(errno(c.feature(4096, get, &d2)), Errno::EINVAL);
    // STOP, then REPORT is refused; unmap while logging never crashes.
    c.dma_logging_start(4096, &[]).unwrap_err();
    c.dma_logging_stop().unwrap();
    assert_eq!(
        errno(c.dma_logging_report(g.base, g.len, 4096)),
        Errno::EINVAL
    );
    c.dma_logging_start(4096, &[(g.base, g.len)]).unwrap();
    c.dma_unmap_all().unwrap();
    c.dma_logging_stop().unwrap();
}

fn dma_without_fd_uses_messages_for_minor_0_and_2(b: Backend) {
    for minor in [2u16, 0] {
        let h = start(b);
        let mut c = h.raw_client();
        c.negotiate(
            minor,
            Caps {
                max_msg_fds: 16,
                ..Caps::default()
            },
        )
        .unwrap();
        let c = Arc::new(c);
        c.enable_bus_master().unwrap();
        let base = 0x20_0000u64;
        let mem = c.dma_map_message(base, 0x1_0000).unwrap();
        // The test's view of the same memory for the ring driver.
        let port = vfpga_device::DmaPort::new();
        port.map(
            base,
            Arc::new(MessageMemory(mem.clone())),
            vfpga_device::Perm::RW,
        )
        .unwrap();
        mem.lock().unwrap()[0x4000..0x5000].fill(0xc3);
        let mut dev = wire_device(&c);
        let mut rd = RingDriver::setup(&mut dev, &port, base, 8, base + 0x1000, 8).unwrap();
        let d = Desc::new(Opcode::CopyH2h, 1, base + 0x4000, base + 0x8000, 4096, 0);
        let cpl = rd.run(&mut dev, &[d], 200_000).unwrap();
        assert_eq!(cpl[0].status(), Some(CplStatus::Ok), "minor {minor}");
        assert!(
            mem.lock().unwrap()[0x8000..0x9000]
                .iter()
                .all(|b| *b == 0xc3),
            "minor {minor}"
        );
        assert!(c.dma_requests() > 0);
    }
}

fn g56_g58_disconnect_keeps_device_state_and_one_client_at_a_time(b: Backend) {
    let h = start(b);
    let c = h.client();
    c.write32(offsets::SCRATCH.into(), 0x1234).unwrap();
    let g = GuestMem::new(0x10_0000, 0x1_0000);
    g.map_into(&c);
    let e = efd();
    c.msix_eventfds(0, &[e.as_fd()]).unwrap();
    // A second client is refused while the first is connected.
    let mut second = h.raw_client();
    second.set_timeout(std::time::Duration::from_secs(2));
    assert!(second.negotiate(2, Caps::default()).is_err());
    drop(c);
    drop(second);
    let c2 = h.client_when_free(2, Caps::default());
    assert_eq!(
        c2.read32(offsets::SCRATCH.into()).unwrap(),
        0x1234,
        "device state kept"
    );
    assert!(
        h.server.shared().dma.mappings().is_empty(),
        "DMA unmapped on disconnect"
    );
    assert_eq!(c2.mig_state().unwrap(), 2, "RUNNING");
}

/// Waits (hang guard: 60 s) until eventfd `e` has been signalled; returns
/// its counter (the number of signals since the last read).
fn wait_eventfd(e: &EventFd, what: &str) -> u64 {
    let t0 = std::time::Instant::now();
    loop {
        match e.read() {
            Ok(n) => return n,
            Err(Errno::EAGAIN) => {}
            Err(err) => panic!("reading the {what} eventfd: {err}"),
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "hang guard: the {what} eventfd was never signalled in 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Waits (hang guard: 60 s) until the device latched its completion cause
/// (IRQ_STATUS.CPL): the device's interrupt line is then high.
fn wait_cpl_cause(c: &vfpga_vfio_user::Client) {
    let t0 = std::time::Instant::now();
    while c.read32(offsets::IRQ_STATUS.into()).unwrap() & 1 == 0 {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "hang guard: IRQ_STATUS.CPL never set in 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// A ring that runs one small FILL_HOST per call with its completion
/// interrupt requested (tags count up).
struct IrqRing {
    dev: vfpga_vfio_user::WireDevice,
    rd: RingDriver,
    base: u64,
    tag: u32,
}

impl IrqRing {
    fn new(c: &Arc<vfpga_vfio_user::Client>, g: &GuestMem) -> Self {
        let mut dev = wire_device(c);
        let rd = RingDriver::setup(&mut dev, &g.port, g.base, 8, g.base + 0x1000, 8).unwrap();
        IrqRing {
            dev,
            rd,
            base: g.base,
            tag: 0,
        }
    }

    fn run(&mut self) {
        self.tag += 1;
        let (t, dst) = (self.tag, self.base + 0x4000);
        let d = Desc::new(Opcode::FillHost, t, 0, dst, 64, t).with_irq();
        let cpl = self.rd.run(&mut self.dev, &[d], u64::MAX).unwrap();
        assert_eq!(cpl[0].status(), Some(CplStatus::Ok));
    }
}

/// INTx over the wire (SET_IRQS index 0 with an eventfd): with MSI-X off, a
/// completion interrupt of the device fires the eventfd; the line is
/// level-triggered and auto-masked; UNMASK (SET_IRQS or the resample
/// eventfd) re-asserts while the device's line is still high; MASK holds
/// delivery back; with MSI-X on, INTx stays quiet.
fn intx_eventfd_automask_unmask_and_resample(b: Backend) {
    let h = start(b);
    let c = Arc::new(h.client());
    let info = c.irq_info(irq_index::INTX).unwrap();
    assert_eq!(info.count, 1);
    assert_eq!(
        info.flags,
        wire::IRQ_INFO_EVENTFD | wire::IRQ_INFO_MASKABLE | wire::IRQ_INFO_AUTOMASKED
    );
    let g = GuestMem::new(0x10_0000, 0x2_0000);
    g.map_into(&c);
    c.enable_bus_master().unwrap();
    let e = efd();
    let intx = |action: u32, data: u32, count: u32, fds: &[std::os::fd::BorrowedFd<'_>]| {
        c.set_irqs(action | data, irq_index::INTX, 0, count, &[], fds)
    };
    let (trigger, mask, unmask) = (
        wire::IRQ_SET_ACTION_TRIGGER,
        wire::IRQ_SET_ACTION_MASK,
        wire::IRQ_SET_ACTION_UNMASK,
    );
    let (none, evt) = (wire::IRQ_SET_DATA_NONE, wire::IRQ_SET_DATA_EVENTFD);
    // INTx has one vector.
    assert_eq!(
        errno(intx(trigger, evt, 2, &[e.as_fd(), e.as_fd()])),
        Errno::EINVAL
    );
    intx(trigger, evt, 1, &[e.as_fd()]).unwrap();
    // Unmask the device's completion cause (IRQ_MASK resets to all masked).
    c.write32(offsets::IRQ_MASK.into(), 0b10).unwrap();
    let mut ring = IrqRing::new(&c, &g);

    // 1. The device raises its completion interrupt: the eventfd fires once
    //    and the line auto-masks.
    ring.run();
    assert_eq!(wait_eventfd(&e, "INTx"), 1);
    wait_cpl_cause(&c);
    // 2. Auto-masked: the next interrupt is held back...
    c.write32(offsets::IRQ_STATUS.into(), 1).unwrap();
    ring.run();
    wait_cpl_cause(&c);
    assert_eq!(e.read(), Err(Errno::EAGAIN), "auto-masked INTx fired");
    //    ...until UNMASK, which finds the device's line still high and
    //    re-asserts at once (the reply comes after the re-check).
    intx(unmask, none, 1, &[]).unwrap();
    assert_eq!(e.read().unwrap(), 1, "UNMASK with the line high re-asserts");
    // 3. The guest clears the cause (W1C); UNMASK then finds the line low.
    c.write32(offsets::IRQ_STATUS.into(), 1).unwrap();
    intx(unmask, none, 1, &[]).unwrap();
    assert_eq!(e.read(), Err(Errno::EAGAIN), "line low: no interrupt");
    // 4. MASK holds an interrupt back; UNMASK delivers it (level: the cause
    //    is still latched).
    intx(mask, none, 1, &[]).unwrap();
    ring.run();
    wait_cpl_cause(&c);
    assert_eq!(e.read(), Err(Errno::EAGAIN), "masked INTx fired");
    intx(unmask, none, 1, &[]).unwrap();
    assert_eq!(
        e.read().unwrap(),
        1,
        "held-back interrupt delivered on UNMASK"
    );
    // 5. A resample eventfd (QEMU's irqfd resampler): a write to it is an
    //    UNMASK; with the line still high the interrupt comes again.
    let resample = efd();
    intx(unmask, evt, 1, &[resample.as_fd()]).unwrap();
    resample.write(1).unwrap();
    assert_eq!(wait_eventfd(&e, "INTx after resample"), 1);
    // 6. MSI-X on: the device's interrupts go to MSI-X, never to INTx.
    //    INTx is left unmasked with the line low, so a stray INTx would show.
    c.write32(offsets::IRQ_STATUS.into(), 1).unwrap();
    intx(unmask, none, 1, &[]).unwrap();
    assert_eq!(e.read(), Err(Errno::EAGAIN), "line low: no interrupt");
    let m = efd();
    c.msix_eventfds(0, &[m.as_fd()]).unwrap();
    ring.run();
    assert_eq!(wait_eventfd(&m, "MSI-X vector 0"), 1);
    assert_eq!(e.read(), Err(Errno::EAGAIN), "INTx fired with MSI-X on");
    // 7. De-assign (DATA_NONE, count 0) for both.
    c.set_irqs(trigger | none, irq_index::MSIX, 0, 0, &[], &[])
        .unwrap();
    intx(trigger, none, 0, &[]).unwrap();
}

/// The config-space status register's Interrupt Status bit (bit 3 of the
/// word at 0x06).
fn intx_status(c: &vfpga_vfio_user::Client) -> bool {
    let s = c.config_read(pci::STATUS_OFFSET as u64, 2).unwrap();
    u16::from_le_bytes([s[0], s[1]]) & pci::STATUS_INTX != 0
}

/// Sets or clears the command register's INTx disable bit (bit 10), other
/// bits kept.
fn set_intx_disable(c: &vfpga_vfio_user::Client, on: bool) {
    let v = c.config_read(4, 2).unwrap();
    let cmd = u16::from_le_bytes([v[0], v[1]]);
    let cmd = if on {
        cmd | pci::CMD_INTX_DISABLE
    } else {
        cmd & !pci::CMD_INTX_DISABLE
    };
    c.config_write(4, &cmd.to_le_bytes()).unwrap();
}

/// INTx in config space: the status register's Interrupt Status bit follows
/// the device's line (whatever the command register's INTx disable bit
/// says); INTx disable holds delivery back, and clearing it with the line
/// still high asserts INTx at once.
fn intx_status_bit_and_command_disable(b: Backend) {
    let h = start(b);
    let c = Arc::new(h.client());
    let g = GuestMem::new(0x10_0000, 0x2_0000);
    g.map_into(&c);
    c.enable_bus_master().unwrap();
    let e = efd();
    let intx = |action: u32, data: u32, fds: &[std::os::fd::BorrowedFd<'_>]| {
        c.set_irqs(action | data, irq_index::INTX, 0, 1, &[], fds)
    };
    let (trigger, mask, unmask) = (
        wire::IRQ_SET_ACTION_TRIGGER,
        wire::IRQ_SET_ACTION_MASK,
        wire::IRQ_SET_ACTION_UNMASK,
    );
    let (none, evt) = (wire::IRQ_SET_DATA_NONE, wire::IRQ_SET_DATA_EVENTFD);
    intx(trigger, evt, &[e.as_fd()]).unwrap();
    c.write32(offsets::IRQ_MASK.into(), 0b10).unwrap();
    let mut ring = IrqRing::new(&c, &g);
    let clear_cause = || c.write32(offsets::IRQ_STATUS.into(), 1).unwrap();

    // 1. The line is low: the bit is clear. A completion interrupt (MSI-X
    //    off) raises the line: INTx fires and the bit is set.
    assert!(!intx_status(&c), "Interrupt Status set with the line low");
    ring.run();
    assert_eq!(wait_eventfd(&e, "INTx"), 1);
    wait_cpl_cause(&c);
    assert!(intx_status(&c), "Interrupt Status clear with the line high");
    // 2. The guest clears the cause: the line drops and the bit with it.
    clear_cause();
    assert!(
        !intx_status(&c),
        "Interrupt Status set after the line dropped"
    );
    intx(unmask, none, &[]).unwrap();
    assert_eq!(e.read(), Err(Errno::EAGAIN), "line low: no interrupt");

    // 3. INTx disabled in the command register: a completion raises the
    //    line (the bit is set regardless) but nothing is signalled...
    set_intx_disable(&c, true);
    ring.run();
    wait_cpl_cause(&c);
    assert!(intx_status(&c), "Interrupt Status must ignore INTx disable");
    assert_eq!(e.read(), Err(Errno::EAGAIN), "INTx fired while disabled");
    //    ...until the bit is cleared with the line still high: INTx is
    //    asserted at once (the write's reply comes after the re-check).
    set_intx_disable(&c, false);
    assert_eq!(e.read().unwrap(), 1, "re-enabled with the line high");
    assert!(intx_status(&c));
    // 4. Disabled again while auto-masked and the line high: UNMASK finds
    //    the line high but INTx disabled, and stays quiet; re-enabling
    //    asserts.
    set_intx_disable(&c, true);
    intx(unmask, none, &[]).unwrap();
    assert_eq!(e.read(), Err(Errno::EAGAIN), "UNMASK fired while disabled");
    set_intx_disable(&c, false);
    assert_eq!(e.read().unwrap(), 1, "re-enabled with the line high");
    // 5. Re-enabling while masked (SET_IRQS MASK) delivers nothing; the
    //    cause cleared while disabled: re-enabling finds the line low.
    intx(mask, none, &[]).unwrap();
    set_intx_disable(&c, true);
    set_intx_disable(&c, false);
    assert_eq!(e.read(), Err(Errno::EAGAIN), "masked INTx fired");
    set_intx_disable(&c, true);
    clear_cause();
    intx(unmask, none, &[]).unwrap();
    set_intx_disable(&c, false);
    assert_eq!(e.read(), Err(Errno::EAGAIN), "line low: no interrupt");
    assert!(!intx_status(&c));
    // 6. MSI-X on: the function does not use INTx, the bit stays clear.
    let m = efd();
    c.msix_eventfds(0, &[m.as_fd()]).unwrap();
    ring.run();
    assert_eq!(wait_eventfd(&m, "MSI-X vector 0"), 1);
    wait_cpl_cause(&c);
    assert!(!intx_status(&c), "Interrupt Status set with MSI-X on");
    assert_eq!(e.read(), Err(Errno::EAGAIN), "INTx fired with MSI-X on");
}

const RUNNING: u32 = 2;
const STOP: u32 = 1;
const STOP_COPY: u32 = 3;
const RESUMING: u32 = 4;
const PRE_COPY: u32 = 6;

/// A SET MIG_DEVICE_STATE command as raw bytes (sent without waiting).
fn set_state_message(id: u16, state: u32) -> Vec<u8> {
    let mut d = state.to_le_bytes().to_vec();
    d.extend_from_slice(&u32::MAX.to_le_bytes());
    let p = wire::Feature::encode(16, wire::FEATURE_SET | wire::FEATURE_MIG_DEVICE_STATE, &d);
    let h = Header {
        msg_id: id,
        command: cmd::DEVICE_FEATURE,
        msg_size: (wire::HEADER_LEN + p.len()) as u32,
        flags: flags::TYPE_COMMAND,
        error: 0,
    };
    let mut m = h.encode().to_vec();
    m.extend_from_slice(&p);
    m
}

fn quiesced(c: &vfpga_vfio_user::Client) -> bool {
    c.read32(offsets::STATUS.into()).unwrap() & vfpga_regs::Status::QUIESCED.bits() != 0
}

/// §6 57: the client closes its socket while the server is applying a
/// state change, so the reply cannot be sent. The server holds the device
/// lock out of the way (`with_core`) while the client sends the command and
/// closes, so the transition runs only after the peer is gone and its reply
/// always fails (EPIPE). The next client finds the transition applied in
/// full (a refused one not at all), the device consistent with it, and the
/// session reset (no DMA mapping left).
fn g57_socket_closed_during_a_state_change_reply(b: Backend) {
    let h = start(b);
    let other = start(b);
    // A valid stream to resume from, saved by another device.
    let stream = {
        let c = other.client();
        c.write32(offsets::SCRATCH.into(), 0x57).unwrap();
        c.set_mig_state(STOP_COPY).unwrap();
        let s = c.mig_read_all(65536).unwrap();
        c.set_mig_state(STOP).unwrap();
        c.set_mig_state(RUNNING).unwrap();
        s
    };
    // (path from RUNNING, target, state expected afterwards)
    let cases: &[(&[u32], u32, u32)] = &[
        (&[], STOP, STOP),
        (&[STOP], RUNNING, RUNNING),
        (&[], PRE_COPY, PRE_COPY),
        (&[PRE_COPY], STOP_COPY, STOP_COPY),
        (&[STOP], STOP_COPY, STOP_COPY),
        (&[STOP_COPY], STOP, STOP),
        (&[STOP], RESUMING, RESUMING),
        (&[RESUMING], 9, RESUMING),
        (&[STOP_COPY], PRE_COPY, STOP_COPY),
    ];
    let mut first = true;
    for &(path, target, want) in cases {
        let c = if first {
            h.client()
        } else {
            h.client_when_free(2, Caps::default())
        };
        first = false;
        c.reset().unwrap();
        assert_eq!(c.mig_state().unwrap(), RUNNING);
        for &s in path {
            c.set_mig_state(s).unwrap();
        }
        let g = GuestMem::new(0x10_0000, 0x1_0000);
        g.map_into(&c);
        let msg = set_state_message(0x5757, target);
        h.server.with_core(|_| {
            c.send_raw(&msg, &[]).unwrap();
            drop(c);
        });
        let c = Arc::new(h.client_when_free(2, Caps::default()));
        let why = format!("{path:?} -> {target}");
        assert_eq!(
            c.mig_state().unwrap(),
            want,
            "{why}: state after the lost reply"
        );
        assert!(
            h.server.shared().dma.mappings().is_empty(),
            "{why}: DMA unmapped with the session"
        );
        // The device agrees with the reported state.
        match want {
            RUNNING => {
                assert!(!quiesced(&c), "{why}: RUNNING but quiesced");
                let g = GuestMem::new(0x10_0000, 0x1_0000);
                g.map_into(&c);
                c.enable_bus_master().unwrap();
                let mut dev = wire_device(&c);
                let mut rd =
                    RingDriver::setup(&mut dev, &g.port, g.base, 8, g.base + 0x1000, 8).unwrap();
                let d = Desc::new(Opcode::FillHost, 1, 0, g.base + 0x4000, 64, 0xabcd);
                let cpl = rd.run(&mut dev, &[d], u64::MAX).unwrap();
                assert_eq!(cpl[0].status(), Some(CplStatus::Ok), "{why}");
                assert_eq!(g.read(g.base + 0x4000, 4), 0xabcdu32.to_le_bytes());
            }
            STOP => {
                assert!(quiesced(&c), "{why}: STOP but running");
                c.set_mig_state(RUNNING).unwrap();
                assert!(!quiesced(&c), "{why}: RUNNING after STOP");
            }
            PRE_COPY | STOP_COPY => {
                // A whole saving session: its stream loads elsewhere.
                let mut s = Vec::new();
                if want == PRE_COPY {
                    assert!(!quiesced(&c), "{why}: PRE_COPY runs");
                    s = c.mig_read_all(65536).unwrap();
                    c.set_mig_state(STOP_COPY).unwrap();
                }
                assert!(quiesced(&c), "{why}: STOP_COPY is stopped");
                s.extend_from_slice(&c.mig_read_all(65536).unwrap());
                c.set_mig_state(STOP).unwrap();
                let d = other.client_when_free(2, Caps::default());
                d.reset().unwrap();
                d.set_mig_state(RESUMING).unwrap();
                d.mig_data_write(&s).unwrap();
                d.set_mig_state(STOP).unwrap();
                d.set_mig_state(RUNNING).unwrap();
            }
            RESUMING => {
                assert!(quiesced(&c), "{why}: RESUMING is stopped");
                c.mig_data_write(&stream).unwrap();
                c.set_mig_state(STOP).unwrap();
                c.set_mig_state(RUNNING).unwrap();
                assert_eq!(c.read32(offsets::SCRATCH.into()).unwrap(), 0x57, "{why}");
            }
            _ => unreachable!(),
        }
    }
}

backend_tests!(
    a1_version_majors_and_minors,
    a2_a3_a4_version_json,
    a5_a6_a7_framing_errors_keep_the_session,
    a8_unsolicited_reply_is_not_executed,
    a9_fds_on_commands_that_take_none_are_closed,
    device_region_and_irq_info,
    config_space_ids_bars_and_command,
    msix_eventfds_masks_and_pba,
    dma_through_an_fd_is_gated_by_bus_master_and_logged,
    dma_without_fd_uses_messages_for_minor_0_and_2,
    g56_g58_disconnect_keeps_device_state_and_one_client_at_a_time,
    g57_socket_closed_during_a_state_change_reply,
    intx_eventfd_automask_unmask_and_resample,
    intx_status_bit_and_command_disable,
);
