//! Soak: a `vfpga serve` process (model backend) takes random valid and
//! invalid traffic from many clients in turn, and must end with the fd
//! count it started with, a flat RSS, and a device that still works.
//!
//! `VFPGA_SOAK_SECS` sets the duration (default 20 s, what `./scripts/test`
//! runs); `scripts/soak [SECONDS]` runs the long version (600 s by default).
//! Attacks mixed in: random headers and payloads, sizes that cannot be
//! right, too many fds, fds spread over a message, half-sent messages and
//! disconnects in the middle, stray replies, a second client while one is
//! connected, and guest memory shrunk under a DMA mapping.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vfpga_device::ring::{Desc, RingDriver};
use vfpga_device::{DmaPort, MmapMemory, Perm};
use vfpga_regs::{CplStatus, Opcode, offsets};
use vfpga_vfio_user::session::region;
use vfpga_vfio_user::wire::{self, HEADER_LEN, Header, cmd, flags};
use vfpga_vfio_user::{Client, WireDevice};

use vfpga_device::testkit::Rng;

struct Served {
    child: Child,
    path: PathBuf,
    log: PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Served {
    fn spawn() -> Served {
        Self::spawn_with(&[])
    }

    /// `prefix`: a command (and its arguments) the server runs under.
    fn spawn_with(prefix: &[&str]) -> Served {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let stem = format!("soak-{}-{}", std::process::id(), prefix.len());
        let path = dir.join(format!("{stem}.sock"));
        let log = dir.join(format!("{stem}.log"));
        let _ = std::fs::remove_file(&path);
        let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/model.yaml");
        let mut cmd = match prefix.split_first() {
            Some((p, rest)) => {
                let mut c = Command::new(p);
                c.args(rest).arg(env!("CARGO_BIN_EXE_vfpga"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_vfpga")),
        };
        let level = if prefix.is_empty() { "error" } else { "warn" };
        let child = cmd
            .args(["serve", "--config"])
            .arg(cfg)
            .arg("--socket")
            .arg(&path)
            .env("RUST_LOG", level)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("spawn vfpga serve");
        let s = Served { child, path, log };
        let t0 = Instant::now();
        while !(s.path.exists() && UnixStream::connect(&s.path).is_ok()) {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "serve never listened"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        s
    }

    fn alive(&mut self) {
        if let Some(st) = self.child.try_wait().unwrap() {
            panic!(
                "vfpga serve died ({st}):\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .count()
    }

    fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }

    fn client(&self) -> Client {
        let t0 = Instant::now();
        loop {
            let mut c = Client::connect(&self.path).unwrap();
            c.set_timeout(Duration::from_secs(20));
            match c.negotiate_default() {
                Ok(_) => return c,
                Err(e) => assert!(t0.elapsed() < Duration::from_secs(60), "never free: {e}"),
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn memfd(len: u64) -> OwnedFd {
    let fd =
        nix::sys::memfd::memfd_create(c"soak", nix::sys::memfd::MFdFlags::MFD_CLOEXEC).unwrap();
    nix::unistd::ftruncate(&fd, len as i64).unwrap();
    fd
}

fn send_with_fds(s: &UnixStream, bytes: &[u8], fds: &[i32]) -> bool {
    let iov = [std::io::IoSlice::new(bytes)];
    let cm = [nix::sys::socket::ControlMessage::ScmRights(fds)];
    let cm: &[nix::sys::socket::ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cm };
    nix::sys::socket::sendmsg::<()>(
        s.as_raw_fd(),
        &iov,
        cm,
        nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .is_ok()
}

fn msg(command: u16, fl: u32, payload: &[u8]) -> Vec<u8> {
    let mut m = Header {
        msg_id: 7,
        command,
        msg_size: (HEADER_LEN + payload.len()) as u32,
        flags: fl,
        error: 0,
    }
    .encode()
    .to_vec();
    m.extend_from_slice(payload);
    m
}

/// One hostile raw connection (negotiated or not), then gone.
fn attack(s: &Served, r: &mut Rng) {
    let Ok(mut c) = UnixStream::connect(&s.path) else {
        return;
    };
    c.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let _ = c.write_all(&wire::Version::command(7));
    let (pr, pw) = nix::unistd::pipe().unwrap();
    match r.below(8) {
        0 => {
            // Random header and payload.
            let mut b = vec![0u8; HEADER_LEN + r.below(200) as usize];
            b.iter_mut().for_each(|x| *x = r.next() as u8);
            let _ = c.write_all(&b);
        }
        1 => {
            // A size that cannot be right.
            let size = [0u32, 8, u32::MAX, 0x7fff_ffff][r.below(4) as usize];
            let mut m = msg(cmd::DEVICE_GET_INFO, 0, &[]);
            m[4..8].copy_from_slice(&size.to_le_bytes());
            let _ = c.write_all(&m);
        }
        2 => {
            // Too many fds on one message.
            let fds: Vec<i32> = vec![pw.as_raw_fd(); 9 + r.below(20) as usize];
            let _ = send_with_fds(
                &c,
                &msg(
                    cmd::DEVICE_GET_INFO,
                    0,
                    &[16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                ),
                &fds,
            );
        }
        3 => {
            // fds spread over a message sent a byte at a time.
            let m = msg(cmd::REGION_WRITE, 0, &[0u8; 64]);
            for b in m.iter().take(40) {
                let _ = send_with_fds(&c, &[*b], &[pw.as_raw_fd()]);
            }
        }
        4 => {
            // Half a message, then gone.
            let m = msg(cmd::REGION_READ, 0, &[0u8; 16]);
            let _ = c.write_all(&m[..r.below(m.len() as u64) as usize]);
        }
        5 => {
            // A stray reply, and an unknown command.
            let _ = c.write_all(&msg(cmd::DMA_READ, flags::TYPE_REPLY, &[0u8; 24]));
            let _ = c.write_all(&msg(0x7777, 0, &[1, 2, 3]));
        }
        6 => {
            // DMA_MAP of a memfd smaller than the mapping.
            let fd = memfd(4096);
            let p = wire::DmaMap {
                argsz: wire::DmaMap::LEN as u32,
                flags: wire::DMA_FLAG_READ | wire::DMA_FLAG_WRITE,
                offset: 0,
                address: 0x1000_0000,
                size: 1 << 20,
            }
            .encode();
            let _ = send_with_fds(&c, &msg(cmd::DMA_MAP, 0, &p), &[fd.as_raw_fd()]);
        }
        _ => {
            // Payload lengths other than the command's.
            let _ = c.write_all(&msg(
                cmd::MIG_DATA_WRITE,
                0,
                &[12, 0, 0, 0, 2, 0, 0, 0, 1, 2, 3, 4],
            ));
            let _ = c.write_all(&msg(cmd::REGION_READ, 0, &[0u8; 17]));
        }
    }
    let mut sink = [0u8; 4096];
    let _ = c.read(&mut sink);
    drop((pr, pw));
}

/// A well-behaved session with random valid traffic, checking every answer
/// against the shadow of what it wrote.
fn session(s: &Served, r: &mut Rng, scratch: &mut u32, bar2: &mut [u8]) -> u64 {
    let c = s.client();
    let mut n = 0;
    for _ in 0..50 + r.below(200) {
        n += 1;
        match r.below(6) {
            0 => {
                *scratch = r.next() as u32;
                c.write32(offsets::SCRATCH.into(), *scratch).unwrap();
            }
            1 => assert_eq!(c.read32(offsets::SCRATCH.into()).unwrap(), *scratch),
            2 => {
                let off = r.below(bar2.len() as u64 - 8) as usize & !7;
                let v = r.next().to_le_bytes();
                c.region_write(region::BAR2, off as u64, &v).unwrap();
                bar2[off..off + 8].copy_from_slice(&v);
            }
            3 => {
                let off = r.below(bar2.len() as u64 - 8) as usize;
                let got = c.region_read(region::BAR2, off as u64, 8).unwrap();
                assert_eq!(got, bar2[off..off + 8], "BAR2 at {off:#x}");
            }
            4 => {
                let fd = memfd(64 << 10);
                let iova = 0x2000_0000 + r.below(64) * 0x10_0000;
                c.dma_map_fd(fd.as_fd(), 0, iova, 64 << 10).unwrap();
                if r.below(2) == 0 {
                    // Shrink it under the mapping: the server must not care.
                    nix::unistd::ftruncate(&fd, 4096).unwrap();
                }
                c.dma_unmap(iova, 64 << 10).unwrap();
            }
            _ => {
                // A second client while this one is connected is refused.
                if let Ok(mut x) = UnixStream::connect(&s.path) {
                    x.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut b = [0u8; 1];
                    assert!(matches!(x.read(&mut b), Ok(0) | Err(_)));
                }
                assert_eq!(c.device_info().unwrap().num_regions, region::COUNT);
            }
        }
    }
    n
}

/// The DMA engine still works end to end: a CRC32C over guest memory.
fn engine_works(s: &Served) {
    let c = Arc::new(s.client());
    c.reset().unwrap();
    let base = 0x400_0000u64;
    let fd = memfd(1 << 20);
    c.dma_map_fd(fd.as_fd(), 0, base, 1 << 20).unwrap();
    c.enable_bus_master().unwrap();
    let port = DmaPort::new();
    let m = MmapMemory::map_file(&File::from(fd.try_clone().unwrap()), 0, 1 << 20).unwrap();
    port.map(base, Arc::new(m), Perm::RW).unwrap();
    let mut dev = WireDevice::new(c.clone()).unwrap();
    let mut rd = RingDriver::setup(&mut dev, &port, base, 16, base + 0x1000, 16).unwrap();
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 31 + 7) as u8).collect();
    port.host_write(base + 0x8000, &data).unwrap();
    let cpl = rd
        .run(
            &mut dev,
            &[Desc::new(Opcode::Crc32c, 1, base + 0x8000, 0, 4096, 0)],
            1 << 40,
        )
        .unwrap();
    assert_eq!(cpl[0].status(), Some(CplStatus::Ok));
    assert_eq!(cpl[0].result, crc32c::crc32c(&data));
}

#[test]
fn soak_random_clients() {
    let secs: u64 = std::env::var("VFPGA_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let mut s = Served::spawn();
    let mut r = Rng(0x9e37_79b9_7f4a_7c15 ^ secs);
    let mut scratch = 0u32;
    let mut bar2 = vec![0u8; 1 << 20];
    // Warm up (allocator arenas, thread stacks), then sample.
    for _ in 0..3 {
        session(&s, &mut r, &mut scratch, &mut bar2);
        attack(&s, &mut r);
    }
    std::thread::sleep(Duration::from_millis(300));
    let (fd0, rss0) = (s.fds(), s.rss_kib());
    let t0 = Instant::now();
    let (mut sessions, mut attacks, mut msgs) = (0u64, 0u64, 0u64);
    while t0.elapsed() < Duration::from_secs(secs) {
        if r.below(3) == 0 {
            msgs += session(&s, &mut r, &mut scratch, &mut bar2);
            sessions += 1;
        } else {
            attack(&s, &mut r);
            attacks += 1;
        }
        s.alive();
    }
    // Let the last session's cleanup finish, then sample again.
    let c = s.client();
    assert_eq!(c.read32(offsets::SCRATCH.into()).unwrap(), scratch);
    drop(c);
    std::thread::sleep(Duration::from_millis(300));
    let (fd1, rss1) = (s.fds(), s.rss_kib());
    eprintln!(
        "soak: {secs} s, {sessions} sessions ({msgs} checked commands), {attacks} attacks; \
         server fds {fd0} -> {fd1}, RSS {rss0} KiB -> {rss1} KiB"
    );
    assert_eq!(fd1, fd0, "the server's fd count grew");
    assert!(
        rss1 < rss0 + 16 * 1024,
        "RSS grew from {rss0} to {rss1} KiB"
    );
    engine_works(&s);
    s.alive();
}

/// Out of fds: `accept` fails with EMFILE while the table is full; the
/// server logs, backs off and goes on, and serves the next client once
/// connections are gone.
#[test]
fn accept_survives_running_out_of_fds() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("skipped: prlimit (util-linux) is not installed");
        return;
    }
    // 16 fds: the server's own plus one client's, and almost nothing more.
    let mut s = Served::spawn_with(&["prlimit", "--nofile=16:16", "--"]);
    let c = s.client();
    let fd0 = s.fds();
    // Far more connections than the server has fds left.
    let flood: Vec<UnixStream> = (0..200)
        .filter_map(|_| UnixStream::connect(&s.path).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    s.alive();
    drop(flood);
    // The connected client was never disturbed.
    c.write32(offsets::SCRATCH.into(), 0xfeed).unwrap();
    assert_eq!(c.read32(offsets::SCRATCH.into()).unwrap(), 0xfeed);
    drop(c);
    let c = s.client();
    assert_eq!(c.read32(offsets::SCRATCH.into()).unwrap(), 0xfeed);
    drop(c);
    std::thread::sleep(Duration::from_millis(300));
    s.alive();
    let log = std::fs::read_to_string(&s.log).unwrap_or_default();
    let emfile = log.matches("Too many open files").count();
    eprintln!(
        "fds {fd0} -> {}; accept hit EMFILE {emfile} times and went on",
        s.fds()
    );
}
