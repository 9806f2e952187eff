//! Opening a board that is not there: one clear error naming the PCI
//! address and the missing piece, never a panic.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;

use vfpga_device::{DmaPort, NoIrq};
use vfpga_hw::doctor::Host;
use vfpga_hw::{BoardDevice, HwError, preflight};

fn board(group: Option<u32>) -> vfpga_config::BoardConfig {
    let g = group
        .map(|g| format!("  iommu_group: {g}\n"))
        .unwrap_or_default();
    let text = format!(
        "backend: board\nboard:\n  pci_address: \"0000:01:00.0\"\n{g}  expected: {{vendor_id: 0x1234, device_id: 0x4650, rtl_version: {:#x}}}\n",
        vfpga_regs::consts::RTL_VERSION
    );
    vfpga_config::parse(&text, Path::new("t.yaml"))
        .expect("parses")
        .board
        .expect("board")
}

#[test]
fn each_missing_piece_is_named() {
    let t = tempfile::tempdir().expect("tempdir");
    let root = t.path();
    let host = Host::at(root);
    let e = preflight(&host, &board(None)).expect_err("no device");
    assert_eq!(
        e.to_string(),
        "VFIO device 0000:01:00.0: /sys/bus/pci/devices/0000:01:00.0 does not exist (check board.pci_address against `lspci -D`)"
    );
    let dev = root.join("sys/bus/pci/devices/0000:01:00.0");
    fs::create_dir_all(&dev).expect("mkdir");
    let e = preflight(&host, &board(None)).expect_err("unbound");
    assert!(
        e.to_string()
            .starts_with("VFIO device 0000:01:00.0: not bound to vfio-pci (driver: none)"),
        "{e}"
    );
    let drv = root.join("sys/bus/pci/drivers/vfio-pci");
    fs::create_dir_all(&drv).expect("mkdir");
    symlink(&drv, dev.join("driver")).expect("link");
    assert!(matches!(
        preflight(&host, &board(None)),
        Err(HwError::NoIommuGroup { .. })
    ));
    let g = root.join("sys/kernel/iommu_groups/7");
    fs::create_dir_all(&g).expect("mkdir");
    symlink(&g, dev.join("iommu_group")).expect("link");
    let e = preflight(&host, &board(Some(8))).expect_err("other group");
    assert!(
        e.to_string()
            .contains("in IOMMU group 7, but board.iommu_group is 8"),
        "{e}"
    );
    let e = preflight(&host, &board(Some(7))).expect_err("no node");
    assert_eq!(
        e.to_string(),
        "VFIO device 0000:01:00.0: /dev/vfio/7 missing (run `vfpga doctor`)"
    );
    fs::create_dir_all(root.join("dev/vfio")).expect("mkdir");
    fs::write(root.join("dev/vfio/7"), "").expect("node");
    let (path, group) = preflight(&host, &board(Some(7))).expect("all there");
    assert_eq!((path, group), (dev, 7));
}

/// `BoardDevice::open` on this machine, which has no such device (or no
/// VFIO at all): an error, not a panic, naming the address.
#[test]
fn open_without_the_board_fails_with_one_line() {
    if Path::new("/sys/bus/pci/devices/0000:01:00.0/driver").exists() {
        eprintln!("skipped: this machine has a device at 0000:01:00.0");
        return;
    }
    let e = BoardDevice::open(&board(None), 1 << 20, 1024, DmaPort::new(), Arc::new(NoIrq))
        .expect_err("no board here");
    let s = e.to_string();
    assert!(s.starts_with("VFIO device 0000:01:00.0: "), "{s}");
    assert!(!s.contains('\n'), "{s}");
}
