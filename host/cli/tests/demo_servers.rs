//! The demo as `vfpga demo` runs it: every device behind its own
//! `vfpga serve` child process (this package's binary), guest memory in a
//! memfd mapped with DMA_MAP, migration through the vfio-user client.

#![allow(clippy::unwrap_used)] // test code: a failure is a test failure

use std::path::PathBuf;

use vfpga_vmm::backend::Kind;
use vfpga_vmm::demo::{self, DemoOptions};
use vfpga_vmm::server::{DeviceServer, Launch};
use vfpga_vmm::vm::Placement;

fn vfpga() -> Launch {
    Launch::Process(PathBuf::from(env!("CARGO_BIN_EXE_vfpga")))
}

fn demo_through_server_processes(kind: Kind, descriptors: u64) {
    let mut o = DemoOptions::new(kind, 256 << 10);
    o.placement = Placement::Server(vfpga());
    o.descriptors = descriptors;
    let r = demo::run(&o).unwrap();
    assert!(r.pass, "{r:?}");
    assert!(
        r.devices.contains("source `vfpga serve` process")
            && r.devices.contains("destination `vfpga serve` process"),
        "{}",
        r.devices
    );
    assert!(
        r.verified_on_source > 0 && r.verified_on_destination > 0,
        "the migration happened mid-workload:\n{r:?}"
    );
    assert_eq!(
        r.verified_on_source + r.verified_on_destination,
        descriptors
    );
    assert!(r.stop_copy_device_bytes > 0, "{r:?}");
}

#[test]
fn model_demo_through_two_server_processes_is_bit_exact() {
    demo_through_server_processes(Kind::Model, 2000);
}

#[test]
fn sim_demo_through_two_server_processes_is_bit_exact() {
    if !vfpga_sim::AVAILABLE {
        eprintln!("skipping: vfpga-sim was built without Verilator");
        return;
    }
    demo_through_server_processes(Kind::Sim, 1200);
}

#[test]
fn a_dropped_server_process_is_killed_and_reaped() {
    let s = DeviceServer::start(&vfpga(), Kind::Model, 64 << 10).unwrap();
    let pid = s.pid().unwrap();
    let proc = PathBuf::from(format!("/proc/{pid}"));
    assert!(proc.exists());
    let sock = s.socket().to_path_buf();
    drop(s);
    // Reaped (no zombie left) and its socket directory removed.
    assert!(!proc.exists(), "process {pid} still present after drop");
    assert!(!sock.exists());
}

#[test]
fn a_server_that_cannot_start_reports_why() {
    // 3 KiB of device memory is refused by the config loader in the child.
    let e = DeviceServer::start(&vfpga(), Kind::Model, 3 << 10).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("exited"), "{msg}");
    assert!(msg.contains("power of two"), "the child's stderr: {msg}");
}
