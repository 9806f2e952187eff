//! A hostile client cannot kill, leak or wedge the server. One test per class
//! of attack; each ends by checking that the server still serves the device
//! and that the device still holds its state.
//!
//! 1. guest memory smaller than its mapping, or shrunk after DMA_MAP;
//! 2. more fds in a message than allowed;
//! 3. more DMA mappings than the host can map;
//! 4. a client reconnecting while the previous session is cleaned up;
//! 5. a `msg_size` that cannot be right, for a command and for a reply;
//! 6. fds spread over the pieces of one unfinished message;
//! 7. a message that stalls half-way;
//! 8. payloads and replies whose length is not what the command defines.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use nix::errno::Errno;
use vfpga_device::ring::{Desc, RingDriver};
use vfpga_regs::{CplStatus, Opcode, offsets};
use vfpga_vfio_user::Client;
use vfpga_vfio_user::remote::{DmaLink, RemoteMemory};
use vfpga_vfio_user::session::{Limits, region};
use vfpga_vfio_user::wire::{self, HEADER_LEN, Header, cmd, flags};

fn errno<T: std::fmt::Debug>(r: Result<T, vfpga_vfio_user::ClientError>) -> Errno {
    r.unwrap_err().errno().expect("an error reply")
}

/// The server still serves, and the device still holds `SCRATCH`.
fn still_serving(h: &Harness) {
    let c = h.client();
    c.write32(offsets::SCRATCH.into(), 0x5a5a_0001).unwrap();
    assert_eq!(c.read32(offsets::SCRATCH.into()).unwrap(), 0x5a5a_0001);
}

fn memfd(len: u64) -> OwnedFd {
    let fd =
        nix::sys::memfd::memfd_create(c"hostile", nix::sys::memfd::MFdFlags::MFD_CLOEXEC).unwrap();
    nix::unistd::ftruncate(&fd, len as i64).unwrap();
    fd
}

/// How many of this process's fds are `fd`'s open file (the test holds
/// the server in-process, so this counts the server's copies too).
fn copies_of(fd: BorrowedFd<'_>) -> usize {
    let me = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| *l == me)
        .count()
}

fn header(command: u16, msg_size: u32, fl: u32) -> Header {
    Header {
        msg_id: 0x4242,
        command,
        msg_size,
        flags: fl,
        error: 0,
    }
}

fn read_reply(s: &mut UnixStream) -> Header {
    let mut b = [0u8; HEADER_LEN];
    s.read_exact(&mut b).unwrap();
    let h = Header::parse(&b);
    let mut rest = vec![0u8; h.payload_len()];
    s.read_exact(&mut rest).unwrap();
    h
}

fn closed(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 1];
    // A close with our bytes still unread reaches us as a reset.
    match s.read(&mut b) {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

/// A connection that negotiated, as a raw socket.
fn raw(h: &Harness) -> UnixStream {
    let c = h.client();
    // The client's reader thread owns a clone; take the socket over by
    // negotiating on a fresh one instead.
    drop(c);
    let mut s = connect_when_free(h);
    s.write_all(&wire::Version::command(1)).unwrap();
    let r = read_reply(&mut s);
    assert_eq!(r.flags & flags::ERROR, 0, "VERSION refused");
    s
}

/// Connects once the previous client's session is gone.
fn connect_when_free(h: &Harness) -> UnixStream {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = UnixStream::connect(&h.path).unwrap();
        let mut probe = [0u8; 1];
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        // A refused connection is closed at once; a served one stays open.
        match (&s).read(&mut probe) {
            Ok(0) => {}
            _ => {
                s.set_read_timeout(None).unwrap();
                return s;
            }
        }
        assert!(Instant::now() < deadline, "server never became free");
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ------------------------------------------------------------------ 1

fn c1_memory_smaller_than_its_mapping(b: Backend) {
    let h = start(b);
    let c = h.client();
    let fd = memfd(4096);
    assert_eq!(
        errno(c.dma_map_fd(fd.as_fd(), 0, 0x100_0000, 1 << 20)),
        Errno::EINVAL,
        "a 4 KiB memfd mapped as 1 MiB"
    );
    assert_eq!(
        errno(c.dma_map_fd(fd.as_fd(), 4096, 0x100_0000, 4096)),
        Errno::EINVAL,
        "an offset past the end of the file"
    );
    drop(c);
    still_serving(&h);
}

fn c1_memory_shrunk_after_mapping_is_a_dma_fault(b: Backend) {
    let h = start(b);
    let c = Arc::new(h.client());
    let base = 0x400_0000u64;
    let gm = GuestMem::new(base, 1 << 20);
    gm.map_into(&c);
    c.enable_bus_master().unwrap();
    let mut dev = wire_device(&c);
    let mut rd = RingDriver::setup(&mut dev, &gm.port, base, 16, base + 0x1000, 16).unwrap();
    let src = base + 0x8_0000;
    gm.write(src, &[0xa5; 256]);
    let ok = rd
        .run(
            &mut dev,
            &[Desc::new(Opcode::CopyH2d, 1, src, 0, 256, 0)],
            1 << 40,
        )
        .unwrap();
    assert_eq!(ok[0].status(), Some(CplStatus::Ok));
    // The client shrinks its memory under the mapping: the rings (first
    // pages) stay, the source is gone.
    nix::unistd::ftruncate(&gm.fd, 0x2000).unwrap();
    let cpl = rd
        .run(
            &mut dev,
            &[Desc::new(Opcode::CopyH2d, 2, src, 0, 256, 0)],
            1 << 40,
        )
        .unwrap();
    assert_eq!(cpl[0].status(), Some(CplStatus::DmaReadFault), "{cpl:?}");
    assert_eq!(
        c.read32(offsets::ERR_CODE.into()).unwrap(),
        CplStatus::DmaReadFault as u32
    );
    drop(dev);
    drop(c);
    still_serving(&h);
}

// ------------------------------------------------------------------ 2

fn c2_too_many_fds_are_closed_and_answered(b: Backend) {
    let h = start(b);
    let c = h.client();
    let (rd, wr) = nix::unistd::pipe().unwrap();
    let dups: Vec<OwnedFd> = (0..20).map(|_| wr.try_clone().unwrap()).collect();
    let borrowed: Vec<BorrowedFd<'_>> = dups.iter().map(|f| f.as_fd()).collect();
    let info = [16u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(
        errno(c.request(cmd::DEVICE_GET_INFO, &info, &borrowed)),
        Errno::EINVAL
    );
    let m = wire::DmaMap {
        argsz: wire::DmaMap::LEN as u32,
        flags: wire::DMA_FLAG_READ | wire::DMA_FLAG_WRITE,
        offset: 0,
        address: 0x10_0000,
        size: 4096,
    };
    assert_eq!(
        errno(c.request(cmd::DMA_MAP, &m.encode(), &borrowed[..9])),
        Errno::EINVAL
    );
    drop((dups, wr));
    // EOF only once the server closed every copy it was given.
    let mut one = [0u8; 1];
    assert_eq!(nix::unistd::read(&rd, &mut one).unwrap(), 0, "fds leaked");
    assert!(c.device_info().is_ok(), "the session goes on");
    drop(c);
    still_serving(&h);
}

// ------------------------------------------------------------------ 3

/// Runs on both backends in turn (not in parallel with itself: each fills
/// the process's memory-map budget).
#[test]
fn c3_dma_maps_past_the_hosts_limit_get_enospc() {
    for b in [Some(Backend::Model), sim_backend()].into_iter().flatten() {
        let h = start(b);
        let limit = h.server.limits().max_dma_maps;
        let host = std::fs::read_to_string("/proc/sys/vm/max_map_count").unwrap();
        let host: usize = host.trim().parse().unwrap();
        assert!(
            limit < host / 2 + 1,
            "limit {limit} not below the host's {host}"
        );
        let c = h.client();
        let fd = memfd(1 << 20);
        let t = Instant::now();
        for i in 0..limit as u64 {
            // Non-contiguous IOVAs and file offsets: one mapping each.
            c.dma_map_fd(
                fd.as_fd(),
                (i % 128) * 8192,
                0x1_0000_0000 + i * 0x2000,
                4096,
            )
            .unwrap_or_else(|e| panic!("map {i} of {limit}: {e}"));
        }
        let filled = t.elapsed();
        assert_eq!(
            errno(c.dma_map_fd(fd.as_fd(), 0, 0x10_0000, 4096)),
            Errno::ENOSPC
        );
        // The process can still start threads and map memory.
        assert!(std::thread::spawn(|| 7).join().unwrap() == 7);
        c.dma_unmap_all().unwrap();
        eprintln!("{b:?}: {limit} DMA mappings in {filled:?}");
        drop(c);
        still_serving(&h);
    }
}

// ------------------------------------------------------------------ 4

fn c4_reconnect_at_once_is_served(b: Backend) {
    let h = start(b);
    for i in 0..100 {
        let mut c = Client::connect(&h.path).unwrap();
        c.set_timeout(Duration::from_secs(40));
        c.negotiate_default()
            .unwrap_or_else(|e| panic!("attempt {i}: refused: {e}"));
        c.write32(offsets::SCRATCH.into(), i).unwrap();
        drop(c);
    }
    still_serving(&h);
}

// ------------------------------------------------------------------ 5

fn c5_absurd_msg_size_is_answered_and_closes(b: Backend) {
    let h = start(b);
    for size in [0x7fff_ffffu32, u32::MAX, 8, 0] {
        let mut s = raw(&h);
        s.write_all(&header(cmd::DEVICE_GET_INFO, size, 0).encode())
            .unwrap();
        // Whatever follows is not read as a message (the server may have
        // closed already).
        let _ = s.write_all(&[0xee; 4096]);
        let r = read_reply(&mut s);
        assert_ne!(r.flags & flags::ERROR, 0, "size {size}");
        assert!(matches!(r.error, x if x == Errno::E2BIG as u32 || x == Errno::EINVAL as u32));
        assert!(closed(&mut s), "size {size}: connection left open");
    }
    // A reply (to a DMA request the server never sent, or did) with an
    // absurd size: no answer, the connection ends.
    let mut s = raw(&h);
    s.write_all(&header(cmd::DMA_READ, 0x7fff_0000, flags::TYPE_REPLY).encode())
        .unwrap();
    assert!(closed(&mut s), "reply with a bogus size left open");
    still_serving(&h);
}

// ------------------------------------------------------------------ 6

fn c6_fds_spread_over_a_message_are_not_hoarded(b: Backend) {
    let h = start(b);
    let mut s = raw(&h);
    let (rd, wr) = nix::unistd::pipe().unwrap();
    assert_eq!(copies_of(rd.as_fd()), 2);
    let payload_len = 16 + 4096;
    let hd = header(cmd::REGION_WRITE, (HEADER_LEN + payload_len) as u32, 0);
    s.write_all(&hd.encode()).unwrap();
    let max = h.server.limits().max_fds;
    let mut most = 0;
    for i in 0..300 {
        let iov = [std::io::IoSlice::new(&[0u8])];
        let fds = [wr.as_raw_fd()];
        let cm = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
        nix::sys::socket::sendmsg::<()>(
            s.as_raw_fd(),
            &iov,
            &cm,
            nix::sys::socket::MsgFlags::empty(),
            None,
        )
        .unwrap();
        if i % 20 == 19 {
            std::thread::sleep(Duration::from_millis(5));
            // Ours: the read end and the write end (one open pipe).
            most = most.max(copies_of(wr.as_fd()) - 2);
        }
    }
    assert!(most <= max + 1, "the server held {most} fds of one message");
    let rest = vec![0u8; payload_len - 300];
    s.write_all(&rest).unwrap();
    let r = read_reply(&mut s);
    assert_eq!(r.error, Errno::EINVAL as u32, "too many fds: refused");
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(copies_of(wr.as_fd()), 2, "fds of the refused message kept");
    drop(s);
    still_serving(&h);
}

// ------------------------------------------------------------------ 7

fn c7_a_stalled_message_ends_its_connection(b: Backend) {
    let limits = Limits {
        message_timeout: Duration::from_millis(800),
        ..Limits::default()
    };
    let h = start_with_limits(b, limits);
    // Idle between messages is fine.
    let c = h.client();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(c.device_info().is_ok(), "an idle session was dropped");
    drop(c);
    // A header that never completes, one byte a while.
    let mut s = raw(&h);
    let t = Instant::now();
    let hd = header(cmd::DEVICE_GET_INFO, 32, 0).encode();
    for byte in &hd[..10] {
        if s.write_all(&[*byte]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(closed(&mut s), "a stalled message kept the connection");
    assert!(t.elapsed() < Duration::from_secs(8));
    // A payload that never completes.
    let mut s = raw(&h);
    s.write_all(&header(cmd::DEVICE_GET_INFO, 32, 0).encode())
        .unwrap();
    s.write_all(&[16, 0, 0]).unwrap();
    assert!(closed(&mut s), "a stalled payload kept the connection");
    still_serving(&h);
}

// ------------------------------------------------------------------ 8

fn c8_lengths_are_exact(b: Backend) {
    let h = start(b);
    let c = h.client();
    // MIG_DATA_WRITE whose size is not its data.
    let mut p = wire::MigData {
        argsz: 8 + 50,
        size: 10,
    }
    .encode(&[0u8; 50]);
    assert_eq!(
        errno(c.request(cmd::MIG_DATA_WRITE, &p, &[])),
        Errno::EINVAL
    );
    p.truncate(8 + 5);
    assert_eq!(
        errno(c.request(cmd::MIG_DATA_WRITE, &p, &[])),
        Errno::EINVAL
    );
    // Trailing bytes on fixed-size requests.
    let mut rr = wire::RegionAccess {
        offset: offsets::SCRATCH.into(),
        region: region::BAR0,
        count: 4,
    }
    .encode(&[]);
    rr.push(0);
    assert_eq!(errno(c.request(cmd::REGION_READ, &rr, &[])), Errno::EINVAL);
    let mut m = wire::DmaMap {
        argsz: wire::DmaMap::LEN as u32,
        flags: wire::DMA_FLAG_READ,
        offset: 0,
        address: 0x10_0000,
        size: 4096,
    }
    .encode();
    m.extend_from_slice(&[0; 8]);
    assert_eq!(errno(c.request(cmd::DMA_MAP, &m, &[])), Errno::EINVAL);
    let mut info = vec![16u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    info.push(0);
    assert_eq!(
        errno(c.request(cmd::DEVICE_GET_INFO, &info, &[])),
        Errno::EINVAL
    );
    // DEVICE_FEATURE: a payload beyond its argsz, and a state SET whose
    // data is longer than the feature defines.
    let f = wire::Feature::encode(8, wire::FEATURE_GET | wire::FEATURE_MIGRATION, &[0; 8]);
    assert_eq!(
        errno(c.request(cmd::DEVICE_FEATURE, &f, &[])),
        Errno::EINVAL
    );
    let mut d = 2u32.to_le_bytes().to_vec();
    d.extend_from_slice(&[0xff; 8]);
    let f = wire::Feature::encode(20, wire::FEATURE_SET | wire::FEATURE_MIG_DEVICE_STATE, &d);
    assert_eq!(
        errno(c.request(cmd::DEVICE_FEATURE, &f, &[])),
        Errno::EINVAL
    );
    drop(c);
    still_serving(&h);
}

backend_tests!(
    c1_memory_smaller_than_its_mapping,
    c1_memory_shrunk_after_mapping_is_a_dma_fault,
    c2_too_many_fds_are_closed_and_answered,
    c4_reconnect_at_once_is_served,
    c5_absurd_msg_size_is_answered_and_closes,
    c6_fds_spread_over_a_message_are_not_hoarded,
    c7_a_stalled_message_ends_its_connection,
    c8_lengths_are_exact,
);

/// Replies to the server's DMA requests must be exactly what the request
/// defines: a longer or shorter DMA_READ reply is refused (the access then
/// times out as unanswered), the right one completes it.
#[test]
fn c8_dma_replies_are_exact() {
    let (tx, rx) = std::sync::mpsc::channel();
    let link = Arc::new(DmaLink::new(tx));
    let mem = RemoteMemory::new(link.clone(), 0x1000, 0x1000);
    use vfpga_device::GuestMemory;
    let mut buf = [0u8; 64];
    assert!(matches!(
        mem.read(0x10, &mut buf),
        Err(vfpga_device::DmaFault::Pending { .. })
    ));
    let req = rx.recv().unwrap();
    let hd = Header::parse(req[..HEADER_LEN].try_into().unwrap());
    assert_eq!(hd.command, cmd::DMA_READ);
    let layout = wire::DmaLayout::Spec;
    let reply_hdr = |n: usize| Header {
        msg_id: hd.msg_id,
        command: cmd::DMA_READ,
        msg_size: (HEADER_LEN + n) as u32,
        flags: flags::TYPE_REPLY,
        error: 0,
    };
    let good = layout.encode(0x1010, 64, &[0x3c; 64]);
    let mut long = good.clone();
    long.extend_from_slice(&[0; 8]);
    assert!(
        link.deliver(&reply_hdr(long.len()), long).is_err(),
        "longer reply"
    );
    let short = good[..good.len() - 1].to_vec();
    assert!(
        link.deliver(&reply_hdr(short.len()), short).is_err(),
        "shorter reply"
    );
    let mut wrong = reply_hdr(good.len());
    wrong.command = cmd::DMA_WRITE;
    assert!(
        link.deliver(&wrong, good.clone()).is_err(),
        "another command"
    );
    assert!(link.deliver(&reply_hdr(good.len()), good).is_ok());
    mem.read(0x10, &mut buf).unwrap();
    assert_eq!(buf, [0x3c; 64]);
}
