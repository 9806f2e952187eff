//! The simulated board: a second bottom under the same board layer, talking
//! to the PCIe shell and the core simulated at the TLP level (Icarus, cocotb,
//! cocotbext-pcie's root complex and UltraScale+ hard-block model; see
//! `rtl/shell/usp/tb/board.py` and the protocol in
//! `bitstream-docs/usp-shell.md`, "Simulated board protocol").
//!
//! - BAR accesses become the root complex's memory requests (TLPs) to the
//!   shell; a bulk device-memory transfer is one request the root complex
//!   splits at its maximum read request / payload size.
//! - A DMA mapping passes the guest memory's file (the memfd the VMM maps) to
//!   the simulator, which maps the same pages as a root-complex memory region
//!   at the IOVA: the device's reads and writes land in guest memory
//!   directly, and an IOVA nobody mapped gets UR on reads and drops writes,
//!   as behind an IOMMU.
//! - MSI-X messages reaching the root complex signal the eventfds the board
//!   layer routed the vectors to.
//! - A function reset is the shell's FLR; hot reset, link down and surprise
//!   removal are [`SimEvent`]s a test injects behind the board layer's back.
//!
//! The simulator is stepped: simulated time passes only while a request is
//! served and on `advance`, so the device does not run by itself (like the
//! Verilated stand-in) and a run is repeatable.
//!
//! A simulator that stops answering behaves as a board that fell off the bus:
//! reads return all ones, writes are dropped, and the board layer reports the
//! device lost.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use nix::sys::eventfd::EventFd;
use vfpga_device::{Bar, Perm, Progress};

use crate::board::Bottom;
use crate::error::HwError;

/// The wire protocol's constants (version 1).
mod proto {
    pub const VERSION: u32 = 1;
    pub const HELLO: u32 = 1;
    pub const CFG_READ: u32 = 2;
    pub const CFG_WRITE: u32 = 3;
    pub const MEM_READ: u32 = 4;
    pub const MEM_WRITE: u32 = 5;
    pub const DMA_MAP: u32 = 6;
    pub const DMA_UNMAP: u32 = 7;
    pub const MSIX_ENABLE: u32 = 8;
    pub const MSIX_DISABLE: u32 = 9;
    pub const RESET: u32 = 10;
    pub const ADVANCE: u32 = 11;
    pub const STATS: u32 = 12;
    pub const BYE: u32 = 13;

    pub const OK: u32 = 0;
    pub const UR: u32 = 1;
    pub const NO_COMPLETION: u32 = 2;
    pub const BAD_REQUEST: u32 = 3;

    /// `ADVANCE`: stop as soon as the core is idle.
    pub const UNTIL_IDLE: u64 = 1 << 63;
    /// Largest payload either side sends.
    pub const MAX_PAYLOAD: usize = 16 << 20;
    /// Largest `MEM_READ` / `MEM_WRITE`.
    pub const MAX_MEM: usize = 1 << 20;
}

/// Something that happens to the board from outside the driver, injected by
/// a test ([`crate::BoardDevice::sim_event`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimEvent {
    /// A function-level reset nobody in this process asked for.
    Flr,
    /// A hot reset of the link (secondary bus reset above the board).
    HotReset,
    /// The link goes down (and stays down).
    LinkDown,
    /// The link trains again after `LinkDown` (the function needs a reset).
    LinkUp,
    /// The board disappears: the simulator process is killed.
    SurpriseRemoval,
}

/// How to start the simulated board.
#[derive(Debug, Clone)]
pub struct SimBoardOptions {
    /// The Python with cocotb (`.venv/bin/python`, made by `scripts/setup`).
    pub python: PathBuf,
    /// `rtl/shell/usp/tb/board.py`.
    pub launcher: PathBuf,
    /// Where the simulator build is cached.
    pub build_dir: PathBuf,
    /// Device memory in pages (BAR2 is this many 4 KiB pages).
    pub devmem_pages: u32,
    /// `DMALOG_MAX_PAGES` of the build.
    pub dmalog_pages: u32,
    /// The shell's `WRITE_CONFIRM` parameter.
    pub write_confirm: bool,
    /// How long the launcher may take to connect (a cold build included).
    pub startup_timeout: Duration,
    /// How long one request may take before the simulator counts as hung.
    pub request_timeout: Duration,
}

impl SimBoardOptions {
    /// Options for `devmem_pages` / `dmalog_pages`, with every path taken
    /// from the vfpga source tree ([`source_tree`]).
    pub fn new(devmem_pages: u32, dmalog_pages: u32) -> Self {
        let tree = source_tree();
        SimBoardOptions {
            python: tree.join(".venv/bin/python"),
            launcher: tree.join("rtl/shell/usp/tb/board.py"),
            build_dir: tree.join("target/simboard"),
            devmem_pages,
            dmalog_pages,
            write_confirm: true,
            startup_timeout: Duration::from_secs(600),
            request_timeout: Duration::from_secs(600),
        }
    }

    /// Options from a config's `board.simulated` section.
    pub fn from_config(
        sim: &vfpga_config::SimulatedBoard,
        devmem_size: u64,
        dmalog_pages: u32,
    ) -> Self {
        let tree = source_tree();
        let pages = (devmem_size / u64::from(vfpga_regs::consts::PAGE_SIZE)) as u32;
        let mut o = SimBoardOptions::new(pages, dmalog_pages);
        let rel = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                tree.join(p)
            }
        };
        if let Some(p) = &sim.python {
            o.python = rel(p);
        }
        if let Some(p) = &sim.launcher {
            o.launcher = rel(p);
        }
        if let Some(p) = &sim.build_dir {
            o.build_dir = rel(p);
        }
        if let Some(w) = sim.write_confirm {
            o.write_confirm = w;
        }
        o
    }
}

/// The vfpga source tree: `$VFPGA_SOURCE_DIR`, else the tree this binary was
/// built from.
pub fn source_tree() -> PathBuf {
    match std::env::var_os("VFPGA_SOURCE_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."),
    }
}

/// What the simulator says about the board it simulates (`HELLO`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SimHello {
    /// BAR0 length as enumerated.
    pub bar0_len: u64,
    /// BAR2 length as enumerated.
    pub bar2_len: u64,
    /// Configuration space vendor ID.
    pub vendor_id: u16,
    /// Configuration space device ID.
    pub device_id: u16,
    /// Device memory pages of the build.
    pub devmem_pages: u32,
    /// DMA-log pages of the build.
    pub dmalog_pages: u32,
    /// The user clock in kHz (250 MHz for Gen3 x8).
    pub user_clk_khz: u32,
    /// The root complex's maximum read request size in bytes.
    pub max_read_req: u32,
    /// The maximum payload size in bytes.
    pub max_payload: u32,
}

/// Counters the simulator keeps (`STATS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// User-clock cycles simulated so far.
    pub cycles: u64,
    /// TLPs the root complex received.
    pub tlps_rx: u64,
    /// TLPs the root complex sent.
    pub tlps_tx: u64,
    /// MSI-X messages delivered.
    pub msix: u64,
}

/// Largest `ADVANCE` in one request: a few milliseconds of simulation, so the
/// layer above sees progress and can interleave MMIO.
const ADVANCE_CAP: u64 = 20_000;

/// The simulated board's bottom.
#[derive(Debug)]
pub(crate) struct SimBoardBottom {
    sock: Option<UnixStream>,
    child: Option<Child>,
    dir: PathBuf,
    log: PathBuf,
    tag: u32,
    hello: SimHello,
    /// Why the simulator stopped answering, once it did.
    gone: Option<String>,
}

fn sim_err(what: impl Into<String>) -> HwError {
    HwError::SimBoard {
        what: what.into(),
        source: None,
    }
}

fn sim_io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HwError {
    let what = what.into();
    move |source| HwError::SimBoard {
        what,
        source: Some(source),
    }
}

/// The last non-empty line of the launcher's log: the launcher prints one
/// line saying what is missing when it cannot start.
fn last_line(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string())
        .unwrap_or_else(|| "(no output)".into())
}

impl SimBoardBottom {
    /// Starts the launcher, waits for the simulator to connect, says HELLO.
    pub(crate) fn launch(o: &SimBoardOptions) -> Result<Self, HwError> {
        if !o.python.exists() {
            return Err(sim_err(format!(
                "{} not found: run scripts/setup (the simulated board needs cocotb, cocotbext-pcie and Icarus)",
                o.python.display()
            )));
        }
        if !o.launcher.exists() {
            return Err(sim_err(format!(
                "{} not found (set VFPGA_SOURCE_DIR to the vfpga source tree)",
                o.launcher.display()
            )));
        }
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vfpga-simboard-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).map_err(sim_io(format!("creating {}", dir.display())))?;
        let path = dir.join("board.sock");
        let log = dir.join("launcher.log");
        let mut me = SimBoardBottom {
            sock: None,
            child: None,
            dir,
            log: log.clone(),
            tag: 0,
            hello: SimHello::default(),
            gone: None,
        };
        let listener =
            UnixListener::bind(&path).map_err(sim_io(format!("binding {}", path.display())))?;
        listener.set_nonblocking(true).map_err(sim_io("listener"))?;
        let logf = File::create(&log).map_err(sim_io(format!("creating {}", log.display())))?;
        let errf = logf.try_clone().map_err(sim_io("log file"))?;
        tracing::info!(launcher = %o.launcher.display(), "starting the simulated board");
        let child = Command::new(&o.python)
            .arg(&o.launcher)
            .arg("--socket")
            .arg(&path)
            .arg("--devmem-pages")
            .arg(o.devmem_pages.to_string())
            .arg("--dmalog-pages")
            .arg(o.dmalog_pages.to_string())
            .arg("--write-confirm")
            .arg(if o.write_confirm { "1" } else { "0" })
            .arg("--build-dir")
            .arg(&o.build_dir)
            .stdin(Stdio::null())
            // Its own process group: the launcher starts the simulator as a
            // child, and removal or cleanup must stop both.
            .process_group(0)
            .stdout(logf)
            .stderr(errf)
            .spawn()
            .map_err(sim_io(format!("starting {}", o.python.display())))?;
        me.child = Some(child);
        let t0 = Instant::now();
        let sock = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(sim_io("accepting the simulator")(e)),
            }
            if let Some(c) = me.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                me.child = None;
                return Err(sim_err(format!(
                    "the launcher exited ({st}) before connecting: {}",
                    last_line(&log)
                )));
            }
            if t0.elapsed() > o.startup_timeout {
                return Err(sim_err(format!(
                    "the simulator did not connect within {:?} (log: {})",
                    o.startup_timeout,
                    log.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        sock.set_nonblocking(false).map_err(sim_io("socket"))?;
        sock.set_read_timeout(Some(o.request_timeout))
            .map_err(sim_io("socket"))?;
        sock.set_write_timeout(Some(o.request_timeout))
            .map_err(sim_io("socket"))?;
        me.sock = Some(sock);
        let r = me.request(proto::HELLO, &proto::VERSION.to_le_bytes(), &[])?;
        let r = me.ok(proto::HELLO, r)?;
        let mut p = Fields(&r);
        let version = p.u32()?;
        if version != proto::VERSION {
            return Err(sim_err(format!(
                "the simulator speaks protocol version {version}, this build {}",
                proto::VERSION
            )));
        }
        me.hello = SimHello {
            bar0_len: p.u64()?,
            bar2_len: p.u64()?,
            vendor_id: p.u16()?,
            device_id: p.u16()?,
            devmem_pages: {
                p.u16()?;
                p.u16()?;
                p.u32()?
            },
            dmalog_pages: p.u32()?,
            user_clk_khz: p.u32()?,
            max_read_req: p.u32()?,
            max_payload: p.u32()?,
        };
        tracing::info!(hello = ?me.hello, elapsed = ?t0.elapsed(), "simulated board up");
        Ok(me)
    }

    pub(crate) fn hello(&self) -> SimHello {
        self.hello
    }

    /// Sends one request and reads its reply: `(status, payload)`. A
    /// simulator that does not answer is `gone` from then on.
    fn request(
        &mut self,
        op: u32,
        payload: &[u8],
        fds: &[RawFd],
    ) -> Result<(u32, Vec<u8>), HwError> {
        if let Some(g) = &self.gone {
            return Err(HwError::Lost {
                addr: "simulated board".into(),
                what: g.clone(),
            });
        }
        let r = self.exchange(op, payload, fds);
        if let Err(e) = &r {
            let why = format!(
                "the simulator stopped answering ({e}; log: {})",
                self.log.display()
            );
            tracing::error!("{why}");
            self.gone = Some(why);
            self.sock = None;
        }
        r
    }

    fn exchange(
        &mut self,
        op: u32,
        payload: &[u8],
        fds: &[RawFd],
    ) -> Result<(u32, Vec<u8>), HwError> {
        use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
        self.tag = self.tag.wrapping_add(1);
        let tag = self.tag;
        let Some(sock) = self.sock.as_mut() else {
            return Err(sim_err("not connected"));
        };
        let mut head = [0u8; 12];
        head[0..4].copy_from_slice(&op.to_le_bytes());
        head[4..8].copy_from_slice(&tag.to_le_bytes());
        head[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        let cmsg = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
        let iov = [std::io::IoSlice::new(&head)];
        let sent = sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
            .map_err(|e| sim_io("sending a request")(e.into()))?;
        if sent != head.len() {
            sock.write_all(&head[sent..])
                .map_err(sim_io("sending a request"))?;
        }
        sock.write_all(payload)
            .map_err(sim_io("sending a request"))?;
        let mut rh = [0u8; 12];
        sock.read_exact(&mut rh)
            .map_err(sim_io("reading a reply"))?;
        let word = |i: usize| u32::from_le_bytes([rh[i], rh[i + 1], rh[i + 2], rh[i + 3]]);
        let (status, rtag, len) = (word(0), word(4), word(8) as usize);
        if rtag != tag {
            return Err(sim_err(format!("reply tag {rtag} to request {tag}")));
        }
        if len > proto::MAX_PAYLOAD {
            return Err(sim_err(format!("reply of {len} bytes")));
        }
        let mut body = vec![0u8; len];
        sock.read_exact(&mut body)
            .map_err(sim_io("reading a reply"))?;
        Ok((status, body))
    }

    /// The payload of an OK reply; a refused request is an error naming it.
    fn ok(&self, op: u32, (status, body): (u32, Vec<u8>)) -> Result<Vec<u8>, HwError> {
        match status {
            proto::OK => Ok(body),
            _ => {
                let name = match status {
                    proto::UR => "unsupported request",
                    proto::NO_COMPLETION => "no completion",
                    proto::BAD_REQUEST => "bad request",
                    _ => "internal error",
                };
                Err(sim_err(format!(
                    "request {op} refused ({name}): {}",
                    String::from_utf8_lossy(&body)
                )))
            }
        }
    }

    fn bar_no(bar: Bar) -> u8 {
        match bar {
            Bar::Regs => 0,
            Bar::DevMem => 2,
        }
    }

    fn mem_head(bar: Bar, len: usize, offset: u64) -> Vec<u8> {
        let mut p = Vec::with_capacity(16 + len);
        p.extend_from_slice(&[Self::bar_no(bar), 0, 0, 0]);
        p.extend_from_slice(&(len as u32).to_le_bytes());
        p.extend_from_slice(&offset.to_le_bytes());
        p
    }

    /// A memory read; all ones where nothing answered (UR, no completion,
    /// the simulator gone), as a CPU reads a function that does not answer.
    fn mem_read(&mut self, bar: Bar, offset: u64, buf: &mut [u8]) -> Result<(), HwError> {
        for (i, chunk) in buf.chunks_mut(proto::MAX_MEM).enumerate() {
            let at = offset + (i * proto::MAX_MEM) as u64;
            match self.request(proto::MEM_READ, &Self::mem_head(bar, chunk.len(), at), &[]) {
                Ok((proto::OK, body)) if body.len() == chunk.len() => chunk.copy_from_slice(&body),
                Ok((proto::UR | proto::NO_COMPLETION, _)) | Err(HwError::Lost { .. }) => {
                    tracing::debug!(bar = ?bar, at, "no completion: reads all ones");
                    chunk.fill(0xff)
                }
                Ok(r) => {
                    return Err(self
                        .ok(proto::MEM_READ, r)
                        .map(|_| ())
                        .err()
                        .unwrap_or_else(|| {
                            sim_err(format!(
                                "MEM_READ of {} bytes answered with another length",
                                chunk.len()
                            ))
                        }));
                }
                Err(_) => chunk.fill(0xff),
            }
        }
        Ok(())
    }

    /// A posted memory write; dropped when the function does not answer.
    fn mem_write(&mut self, bar: Bar, offset: u64, data: &[u8]) -> Result<(), HwError> {
        for (i, chunk) in data.chunks(proto::MAX_MEM).enumerate() {
            let at = offset + (i * proto::MAX_MEM) as u64;
            let mut p = Self::mem_head(bar, chunk.len(), at);
            p.extend_from_slice(chunk);
            match self.request(proto::MEM_WRITE, &p, &[]) {
                Ok((proto::OK | proto::UR | proto::NO_COMPLETION, _)) => {}
                Ok(r) => return self.ok(proto::MEM_WRITE, r).map(|_| ()),
                // Dropped, as a write to a board that fell off the bus.
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// Injects an event from outside the driver.
    fn event(&mut self, ev: SimEvent) -> Result<(), HwError> {
        let kind: u32 = match ev {
            SimEvent::Flr => 0,
            SimEvent::HotReset => 1,
            SimEvent::LinkDown => 2,
            SimEvent::LinkUp => 3,
            SimEvent::SurpriseRemoval => {
                if let Some(mut c) = self.child.take() {
                    kill_group(&mut c);
                }
                return Ok(());
            }
        };
        let r = self.request(proto::RESET, &kind.to_le_bytes(), &[])?;
        self.ok(proto::RESET, r).map(|_| ())
    }

    /// The simulator's counters.
    fn stats(&mut self) -> Result<SimStats, HwError> {
        let r = self.request(proto::STATS, &[], &[])?;
        let r = self.ok(proto::STATS, r)?;
        let mut p = Fields(&r);
        Ok(SimStats {
            cycles: p.u64()?,
            tlps_rx: p.u64()?,
            tlps_tx: p.u64()?,
            msix: p.u64()?,
        })
    }
}

impl Drop for SimBoardBottom {
    fn drop(&mut self) {
        if self.sock.is_some() {
            let _ = self.request(proto::BYE, &[], &[]);
        }
        self.sock = None;
        if let Some(mut c) = self.child.take() {
            let t0 = Instant::now();
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if t0.elapsed() < Duration::from_secs(10) => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        kill_group(&mut c);
                        break;
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Kills the launcher's process group (the launcher and the simulator it
/// started) and reaps the launcher.
fn kill_group(c: &mut Child) {
    if let Ok(pid) = i32::try_from(c.id()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = c.kill();
    let _ = c.wait();
}

/// Little-endian fields of a reply, each checked against its length.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], HwError> {
        if self.0.len() < N {
            return Err(sim_err("a reply is shorter than its fields"));
        }
        let (a, b) = self.0.split_at(N);
        self.0 = b;
        let mut out = [0u8; N];
        out.copy_from_slice(a);
        Ok(out)
    }
    fn u16(&mut self) -> Result<u16, HwError> {
        self.take().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Result<u32, HwError> {
        self.take().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64, HwError> {
        self.take().map(u64::from_le_bytes)
    }
}

impl Bottom for SimBoardBottom {
    fn bar_len(&self, bar: Bar) -> u64 {
        match bar {
            Bar::Regs => self.hello.bar0_len,
            Bar::DevMem => self.hello.bar2_len,
        }
    }

    fn read(&mut self, bar: Bar, offset: u64, width: usize) -> Result<u64, HwError> {
        let mut b = [0u8; 8];
        self.mem_read(bar, offset, &mut b[..width])?;
        Ok(u64::from_le_bytes(b))
    }

    fn write(&mut self, bar: Bar, offset: u64, width: usize, value: u64) -> Result<(), HwError> {
        self.mem_write(bar, offset, &value.to_le_bytes()[..width])
    }

    /// One request per MiB; the root complex splits it into TLPs.
    fn read_bulk(&mut self, bar: Bar, offset: u64, buf: &mut [u8]) -> Result<(), HwError> {
        self.mem_read(bar, offset, buf)
    }

    fn write_bulk(&mut self, bar: Bar, offset: u64, data: &[u8]) -> Result<(), HwError> {
        self.mem_write(bar, offset, data)
    }

    fn config_read(&mut self, offset: u16, width: usize) -> Result<u32, HwError> {
        let mut p = Vec::with_capacity(8);
        p.extend_from_slice(&u32::from(offset).to_le_bytes());
        p.extend_from_slice(&(width as u32).to_le_bytes());
        match self.request(proto::CFG_READ, &p, &[]) {
            Ok((proto::OK, body)) => Fields(&body).u32(),
            Ok((proto::UR | proto::NO_COMPLETION, _)) | Err(_) => Ok(u32::MAX >> (32 - 8 * width)),
            Ok(r) => self.ok(proto::CFG_READ, r).map(|_| 0),
        }
    }

    fn config_write(&mut self, offset: u16, width: usize, value: u32) -> Result<(), HwError> {
        let mut p = Vec::with_capacity(12);
        p.extend_from_slice(&u32::from(offset).to_le_bytes());
        p.extend_from_slice(&(width as u32).to_le_bytes());
        p.extend_from_slice(&value.to_le_bytes());
        match self.request(proto::CFG_WRITE, &p, &[]) {
            Ok((proto::OK | proto::UR | proto::NO_COMPLETION, _)) | Err(_) => Ok(()),
            Ok(r) => self.ok(proto::CFG_WRITE, r).map(|_| ()),
        }
    }

    /// Passes the memory's file to the simulator, which maps the same pages.
    unsafe fn dma_map(
        &mut self,
        iova: u64,
        len: u64,
        _addr: NonNull<u8>,
        perm: Perm,
        file: Option<(BorrowedFd<'_>, u64)>,
    ) -> Result<(), HwError> {
        let Some((fd, off)) = file else {
            return Err(HwError::Dma {
                addr: "simulated board".into(),
                iova,
                len,
                what: "the simulated board reaches guest memory through its file: map a shared file (memfd), not anonymous memory".into(),
            });
        };
        let mut p = Vec::with_capacity(28);
        p.extend_from_slice(&iova.to_le_bytes());
        p.extend_from_slice(&len.to_le_bytes());
        p.extend_from_slice(&off.to_le_bytes());
        p.extend_from_slice(&(u32::from(perm.read) | (u32::from(perm.write) << 1)).to_le_bytes());
        let r = self.request(proto::DMA_MAP, &p, &[fd.as_raw_fd()])?;
        self.ok(proto::DMA_MAP, r).map(|_| ())
    }

    fn dma_unmap(&mut self, iova: u64, len: u64) -> Result<(), HwError> {
        let mut p = Vec::with_capacity(16);
        p.extend_from_slice(&iova.to_le_bytes());
        p.extend_from_slice(&len.to_le_bytes());
        match self.request(proto::DMA_UNMAP, &p, &[]) {
            // The IOMMU is the host's: a vanished simulator has nothing mapped.
            Err(HwError::Lost { .. }) => Ok(()),
            r => {
                let r = r?;
                self.ok(proto::DMA_UNMAP, r).map(|_| ())
            }
        }
    }

    fn enable_msix(&mut self, fds: &[&EventFd]) -> Result<(), HwError> {
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let r = self.request(proto::MSIX_ENABLE, &(raw.len() as u32).to_le_bytes(), &raw)?;
        self.ok(proto::MSIX_ENABLE, r).map(|_| ())
    }

    fn disable_msix(&mut self) -> Result<(), HwError> {
        match self.request(proto::MSIX_DISABLE, &[], &[]) {
            Err(HwError::Lost { .. }) => Ok(()),
            r => {
                let r = r?;
                self.ok(proto::MSIX_DISABLE, r).map(|_| ())
            }
        }
    }

    /// The shell's FLR.
    fn reset(&mut self) -> Result<(), HwError> {
        let r = self.request(proto::RESET, &0u32.to_le_bytes(), &[])?;
        self.ok(proto::RESET, r).map(|_| ())
    }

    fn self_running(&self) -> bool {
        false
    }

    /// Runs up to `budget` user-clock cycles (at most `ADVANCE_CAP` per
    /// request), stopping once the core is idle.
    fn advance(&mut self, budget: u64) -> Result<Option<Progress>, HwError> {
        let n = budget.clamp(1, ADVANCE_CAP) | proto::UNTIL_IDLE;
        let r = self.request(proto::ADVANCE, &n.to_le_bytes(), &[])?;
        let r = self.ok(proto::ADVANCE, r)?;
        let mut p = Fields(&r);
        let used = p.u64()?;
        let idle = p.u32()? != 0;
        Ok(Some(Progress { used, idle }))
    }

    fn sim_event(&mut self, ev: SimEvent) -> Result<(), HwError> {
        self.event(ev)
    }

    fn sim_stats(&mut self) -> Result<SimStats, HwError> {
        self.stats()
    }
}
