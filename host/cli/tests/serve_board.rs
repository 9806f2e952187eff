//! `vfpga serve` on the simulated board (`config/board-sim.yaml`: the PCIe
//! shell and the core at the TLP level under the board layer), reached by
//! the vfio-user client as a VMM reaches it: guest memory in a memfd mapped
//! with DMA_MAP (the server hands the same file to the simulator, which
//! serves the device's DMA from it), bus mastering through config space,
//! MSI-X routed to eventfds, a descriptor run through the rings in guest
//! memory with BAR0 REGION_WRITEs, and the result read back from the memfd.

#![allow(clippy::unwrap_used)] // test code: a failure is a test failure

use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::eventfd::{EfdFlags, EventFd};
use vfpga_device::ring::{Desc, RingDriver};
use vfpga_device::{Device, DmaPort, MmapMemory, Perm};
use vfpga_regs::{CplStatus, Opcode, consts, offsets};
use vfpga_vfio_user::client::Client;
use vfpga_vfio_user::wire_device::WireDevice;

const BASE: u64 = 0x1_0000_0000;
const LEN: u64 = 1 << 20;

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(dir: &Path) -> (Serve, std::path::PathBuf) {
    let sock = dir.join("board.sock");
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/board-sim.yaml");
    let child = Command::new(env!("CARGO_BIN_EXE_vfpga"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .arg("--socket")
        .arg(&sock)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let s = Serve(child);
    let t0 = Instant::now();
    while !sock.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "vfpga serve did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (s, sock)
}

#[test]
fn a_vfio_user_client_runs_a_descriptor_on_the_simulated_board() {
    let dir = tempfile::tempdir().unwrap();
    let (_serve, sock) = serve(dir.path());
    let mut client = Client::connect(&sock).unwrap();
    client.set_timeout(Duration::from_secs(120));
    client.negotiate_default().unwrap();
    let client = Arc::new(client);
    let file = tempfile::tempfile().unwrap();
    file.set_len(LEN).unwrap();
    client.dma_map_fd(file.as_fd(), 0, BASE, LEN).unwrap();
    client.enable_bus_master().unwrap();
    let efds: Vec<EventFd> = (0..consts::NUM_VECTORS)
        .map(|_| EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK).unwrap())
        .collect();
    let fds: Vec<_> = efds.iter().map(|e| e.as_fd()).collect();
    client.msix_eventfds(0, &fds).unwrap();
    let mut dev = WireDevice::new(client.clone()).unwrap();
    assert_eq!(dev.read_reg(offsets::ID).unwrap(), consts::DEVICE_MAGIC);
    // The client's view of guest memory: the same memfd.
    let mem = Arc::new(MmapMemory::map_file(&file, 0, LEN as usize).unwrap());
    let dma = DmaPort::new();
    dma.map(BASE, mem, Perm::RW).unwrap();
    let data: Vec<u8> = (0..2000u32).map(|i| (i * 13 + 5) as u8).collect();
    dma.host_write(BASE + 0x10000, &data).unwrap();
    let mut r = RingDriver::setup(&mut dev, &dma, BASE, 8, BASE + 0x1000, 8).unwrap();
    dev.write_reg(offsets::IRQ_MASK, 0).unwrap();
    let descs = [
        Desc::new(Opcode::CopyH2d, 1, BASE + 0x10000, 0x40, 2000, 0),
        Desc::new(Opcode::CopyD2h, 2, 0x40, BASE + 0x20000 + 3, 2000, 0).with_irq(),
    ];
    let c = r.run(&mut dev, &descs, 1_000_000).unwrap();
    assert_eq!(c.len(), 2, "{c:?}");
    assert!(c.iter().all(|c| c.status() == Some(CplStatus::Ok)), "{c:?}");
    let mut back = vec![0u8; 2000];
    dma.host_read(BASE + 0x20000 + 3, &mut back).unwrap();
    assert_eq!(back, data, "the device's DMA landed in the client's memfd");
    // BAR2 through REGION_READ: the board layer's bulk path.
    let mut dm = vec![0u8; 2000];
    dev.devmem_read(0x40, &mut dm).unwrap();
    assert_eq!(dm, data);
    // The completion interrupt reached the client's eventfd.
    let t0 = Instant::now();
    loop {
        if efds[consts::VECTOR_CPL as usize].read().is_ok() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no MSI-X on the eventfd"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `vfpga migrate` with a board config: each side's `vfpga serve` child
/// gets the user's config file (here the simulated board, 16 KiB of device
/// memory), and the destination verifies the workload.
#[test]
fn vfpga_migrate_serves_each_side_from_the_board_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("board.yaml");
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/board-sim.yaml"),
    )
    .unwrap()
    .replace("devmem_size: 256KiB", "devmem_size: 16KiB");
    std::fs::write(&cfg, text).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("tcp:127.0.0.1:{port}");
    let (c2, a2) = (cfg.clone(), addr.clone());
    let run = move |side: &str| {
        Command::new(env!("CARGO_BIN_EXE_vfpga"))
            .args(["migrate", "--config"])
            .arg(&c2)
            .args([side, &a2])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let dest = std::thread::spawn(move || run("--incoming"));
    std::thread::sleep(Duration::from_secs(2));
    let src = Command::new(env!("CARGO_BIN_EXE_vfpga"))
        .args(["migrate", "--config"])
        .arg(dir.path().join("board.yaml"))
        .args(["--to", &format!("tcp:127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let dest = dest.join().unwrap();
    let out = String::from_utf8_lossy(&dest.stdout);
    assert!(
        src.status.success(),
        "source: {}",
        String::from_utf8_lossy(&src.stderr)
    );
    assert!(
        dest.status.success() && out.contains("PASS"),
        "destination: {out}"
    );
    assert!(out.contains("board backend"), "{out}");
}
