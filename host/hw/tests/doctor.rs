//! `vfpga doctor` findings over fake sysfs/dev/proc trees, and on this machine.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use vfpga_hw::doctor::{DoctorInput, Host, Status, parse_verilator_version, run};

const ADDR: &str = "0000:01:00.0";
const OTHER: &str = "0000:01:00.1";
const BRIDGE: &str = "0000:00:01.0";
const GROUP: u32 = 12;

fn board_config(group: Option<u32>) -> vfpga_config::Config {
    let g = group
        .map(|g| format!("  iommu_group: {g}\n"))
        .unwrap_or_default();
    let text = format!(
        "backend: board\nboard:\n  pci_address: \"{ADDR}\"\n{g}  expected: {{vendor_id: 0x1234, device_id: 0x4650, rtl_version: {:#x}}}\ndevice:\n  devmem_size: 1MiB\n",
        vfpga_regs::consts::RTL_VERSION
    );
    vfpga_config::parse(&text, Path::new("test.yaml")).expect("test config parses")
}

fn input(group: Option<u32>) -> DoctorInput {
    let cfg = board_config(group);
    let mut i = DoctorInput::from_config(Some(&cfg));
    i.guest_memory = 64 << 20;
    i
}

/// A fake host root: sysfs, /dev/vfio and /proc/self/status as a board rig has them.
struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    fn new() -> Self {
        Tree {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    fn mkdir(&self, rel: &str) -> PathBuf {
        let p = self.p(rel);
        fs::create_dir_all(&p).expect("mkdir");
        p
    }
    fn write(&self, rel: &str, text: &str) {
        let p = self.p(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(p, text).expect("write");
    }
    fn iommu_on(&self) -> &Self {
        self.mkdir("sys/kernel/iommu_groups/0/devices");
        self.mkdir(&format!("sys/kernel/iommu_groups/{GROUP}/devices"));
        self
    }
    fn vfio_loaded(&self) -> &Self {
        self.mkdir("sys/bus/pci/drivers/vfio-pci");
        self.write("dev/vfio/vfio", "");
        self
    }
    /// A PCI device in GROUP, bound to `driver` (none: unbound).
    fn device(&self, addr: &str, ids: (u16, u16), driver: Option<&str>, header: u8) -> &Self {
        let d = self.mkdir(&format!("sys/bus/pci/devices/{addr}"));
        self.write(
            &format!("sys/bus/pci/devices/{addr}/vendor"),
            &format!("0x{:04x}\n", ids.0),
        );
        self.write(
            &format!("sys/bus/pci/devices/{addr}/device"),
            &format!("0x{:04x}\n", ids.1),
        );
        let mut cfg = vec![0u8; 64];
        cfg[0x0e] = header;
        fs::write(d.join("config"), cfg).expect("config");
        if let Some(drv) = driver {
            let dd = self.mkdir(&format!("sys/bus/pci/drivers/{drv}"));
            symlink(dd, d.join("driver")).expect("driver link");
        }
        let g = self.mkdir(&format!("sys/kernel/iommu_groups/{GROUP}"));
        symlink(&g, d.join("iommu_group")).expect("group link");
        symlink(&d, g.join("devices").join(addr)).expect("member link");
        self
    }
    fn group_node(&self) -> &Self {
        self.write(&format!("dev/vfio/{GROUP}"), "");
        self
    }
    fn hugepages(&self, nr: u64, free: u64) -> &Self {
        self.write(
            "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages",
            &nr.to_string(),
        );
        self.write(
            "sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages",
            &free.to_string(),
        );
        self
    }
    fn host(&self) -> Host {
        Host::at(self.dir.path())
            .with_memlock(Some(1 << 40))
            .with_verilator(Ok("Verilator 5.006 2023-01-22 rev (Debian 5.006-3)".into()))
    }
}

/// A rig where everything is right.
fn good_rig() -> Tree {
    let t = Tree::new();
    t.iommu_on()
        .vfio_loaded()
        .device(ADDR, (0x1234, 0x4650), Some("vfio-pci"), 0)
        .device(BRIDGE, (0x8086, 0x1234), Some("pcieport"), 1)
        .group_node()
        .hugepages(64, 64);
    t
}

fn status_of(r: &vfpga_hw::doctor::Report, check: &str) -> Status {
    r.get(check)
        .unwrap_or_else(|| panic!("no {check} finding"))
        .status
}

#[test]
fn a_good_rig_is_all_ok_and_exits_0() {
    let t = good_rig();
    let r = run(&t.host(), &input(Some(GROUP)));
    for f in &r.findings {
        assert_eq!(f.status, Status::Ok, "{f:?}");
    }
    assert_eq!(r.exit_status(), 0);
    assert_eq!(r.findings.len(), 10);
    let json = r.to_json();
    assert_eq!(json["exit_status"], 0);
    assert_eq!(json["summary"]["ok"], 10);
    assert_eq!(json["findings"][0]["status"], "ok");
}

#[test]
fn iommu_off_fails_and_the_device_has_no_group() {
    let t = Tree::new();
    t.vfio_loaded();
    t.mkdir("sys/kernel/iommu_groups");
    let d = t.mkdir(&format!("sys/bus/pci/devices/{ADDR}"));
    t.write(&format!("sys/bus/pci/devices/{ADDR}/vendor"), "0x1234");
    t.write(&format!("sys/bus/pci/devices/{ADDR}/device"), "0x4650");
    let drv = t.mkdir("sys/bus/pci/drivers/vfio-pci");
    symlink(drv, d.join("driver")).expect("link");
    let r = run(&t.host(), &input(None));
    assert_eq!(status_of(&r, "iommu"), Status::Fail);
    assert!(
        r.get("iommu")
            .is_some_and(|f| f.fix.contains("intel_iommu=on"))
    );
    assert_eq!(status_of(&r, "iommu-group"), Status::Fail);
    assert_eq!(status_of(&r, "group-viable"), Status::Skip);
    assert_eq!(status_of(&r, "dev-vfio"), Status::Skip);
    assert_eq!(r.exit_status(), 1);
}

#[test]
fn a_group_with_a_device_on_a_host_driver_is_not_viable() {
    let t = good_rig();
    t.device(OTHER, (0x1234, 0x0001), Some("xdma"), 0);
    let r = run(&t.host(), &input(Some(GROUP)));
    let f = r.get("group-viable").expect("finding");
    assert_eq!(f.status, Status::Fail, "{f:?}");
    assert!(
        f.explanation.contains(&format!("{OTHER} (driver xdma)")),
        "{f:?}"
    );
    // The bridge on pcieport and the board itself are not named.
    assert!(
        !f.explanation.contains(BRIDGE) && !f.explanation.contains(ADDR),
        "{f:?}"
    );
    assert_eq!(r.exit_status(), 1);
}

#[test]
fn unbound_and_pci_stub_members_and_bridges_keep_a_group_viable() {
    let t = good_rig();
    t.device(OTHER, (0x1234, 0x0001), None, 0);
    t.device("0000:01:00.2", (0x1234, 0x0002), Some("pci-stub"), 0);
    t.device("0000:00:02.0", (0x8086, 0x0002), Some("shpchp"), 0x81);
    let r = run(&t.host(), &input(Some(GROUP)));
    assert_eq!(status_of(&r, "group-viable"), Status::Ok, "{r}");
}

#[test]
fn wrong_driver_is_named_with_the_fix() {
    let t = Tree::new();
    t.iommu_on()
        .vfio_loaded()
        .device(ADDR, (0x1234, 0x4650), Some("xdma"), 0)
        .group_node();
    let r = run(&t.host(), &input(Some(GROUP)));
    let f = r.get("driver").expect("finding");
    assert_eq!(f.status, Status::Fail);
    assert_eq!(
        f.explanation,
        format!("{ADDR} is not bound to vfio-pci (driver: xdma)")
    );
    assert!(f.fix.contains("driver_override"), "{f:?}");
    // The board itself on a host driver also makes its group unusable.
    assert_eq!(status_of(&r, "group-viable"), Status::Fail);
}

#[test]
fn unbound_board_reports_driver_none() {
    let t = Tree::new();
    t.iommu_on()
        .vfio_loaded()
        .device(ADDR, (0x1234, 0x4650), None, 0);
    let r = run(&t.host(), &input(Some(GROUP)));
    assert_eq!(
        r.get("driver").map(|f| f.explanation.as_str()),
        Some("0000:01:00.0 is not bound to vfio-pci (driver: none)")
    );
    // Unbound, so no group node either.
    assert_eq!(status_of(&r, "dev-vfio"), Status::Fail);
}

#[test]
fn missing_dev_vfio_nodes_fail() {
    let t = good_rig();
    fs::remove_file(t.p(&format!("dev/vfio/{GROUP}"))).expect("rm");
    let r = run(&t.host(), &input(Some(GROUP)));
    let f = r.get("dev-vfio").expect("finding");
    assert_eq!(f.status, Status::Fail);
    assert_eq!(f.explanation, format!("/dev/vfio/{GROUP} is missing"));
    fs::remove_file(t.p("dev/vfio/vfio")).expect("rm");
    let r = run(&t.host(), &input(Some(GROUP)));
    assert!(
        r.get("dev-vfio")
            .is_some_and(|f| f.explanation.contains("/dev/vfio/vfio is missing"))
    );
}

#[test]
fn missing_module_missing_device_and_wrong_ids() {
    let t = Tree::new();
    t.iommu_on();
    let r = run(&t.host(), &input(None));
    assert_eq!(status_of(&r, "vfio-pci"), Status::Fail);
    let f = r.get("device").expect("finding");
    assert_eq!(f.status, Status::Fail);
    assert!(
        f.explanation
            .contains("/sys/bus/pci/devices/0000:01:00.0 does not exist"),
        "{f:?}"
    );
    assert_eq!(status_of(&r, "driver"), Status::Skip);

    let t = good_rig();
    let r = run(&t.host(), &input(Some(GROUP + 1)));
    assert_eq!(status_of(&r, "iommu-group"), Status::Fail);
    let t = Tree::new();
    t.iommu_on()
        .vfio_loaded()
        .device(ADDR, (0x10ee, 0x9038), Some("vfio-pci"), 0)
        .group_node();
    let r = run(&t.host(), &input(None));
    let f = r.get("device").expect("finding");
    assert_eq!(f.status, Status::Fail);
    assert!(
        f.explanation
            .contains("10ee:9038, the config expects 1234:4650"),
        "{f:?}"
    );
}

#[test]
fn memlock_hugepages_and_verilator_verdicts() {
    let t = good_rig();
    // Below device memory + guest memory, without CAP_IPC_LOCK: fail.
    let r = run(&t.host().with_memlock(Some(8 << 20)), &input(Some(GROUP)));
    let f = r.get("memlock").expect("finding");
    assert_eq!(f.status, Status::Fail, "{f:?}");
    assert!(
        f.explanation
            .contains("device memory 1 MiB + guest memory 64 MiB"),
        "{f:?}"
    );
    // The same limit with CAP_IPC_LOCK (bit 14) in CapEff: VFIO ignores the limit.
    t.write("proc/self/status", "Name:\tx\nCapEff:\t0000000000004000\n");
    let r = run(&t.host().with_memlock(Some(8 << 20)), &input(Some(GROUP)));
    assert_eq!(status_of(&r, "memlock"), Status::Ok);
    let r = run(&t.host().with_memlock(None), &input(Some(GROUP)));
    assert_eq!(status_of(&r, "memlock"), Status::Ok);

    t.hugepages(64, 1);
    let r = run(&t.host(), &input(Some(GROUP)));
    assert_eq!(status_of(&r, "hugepages"), Status::Warn);
    assert_eq!(r.exit_status(), 0, "warnings alone exit 0");
    t.hugepages(0, 0);
    let r = run(&t.host(), &input(Some(GROUP)));
    assert_eq!(status_of(&r, "hugepages"), Status::Warn);

    // A board config does not need Verilator; a sim config does.
    let r = run(
        &t.host().with_verilator(Err("not found".into())),
        &input(Some(GROUP)),
    );
    assert_eq!(status_of(&r, "verilator"), Status::Skip);
    let r = run(
        &t.host()
            .with_verilator(Ok("Verilator 4.038 2020-07-11".into())),
        &DoctorInput::from_config(None),
    );
    assert_eq!(status_of(&r, "verilator"), Status::Fail);
    assert_eq!(
        parse_verilator_version("Verilator 5.006 2023-01-22 rev"),
        Some((5, 6))
    );
    assert_eq!(parse_verilator_version(" rev vUNKNOWN-built"), None);
}

#[test]
fn without_a_board_the_device_checks_are_skipped() {
    let t = good_rig();
    let r = run(&t.host(), &DoctorInput::from_config(None));
    for c in [
        "device",
        "driver",
        "iommu-group",
        "group-viable",
        "dev-vfio",
    ] {
        assert_eq!(status_of(&r, c), Status::Skip, "{c}");
    }
    assert_eq!(r.exit_status(), 0);
}

/// On this development machine (no IOMMU, no /dev/vfio, no board) the
/// findings for the shipped example config are the expected failures.
#[test]
fn this_machine_without_iommu() {
    let groups = fs::read_dir("/sys/kernel/iommu_groups")
        .map(|d| d.count())
        .unwrap_or(0);
    if groups > 0 || Path::new("/dev/vfio").exists() {
        eprintln!("skipped: this machine has an IOMMU or /dev/vfio");
        return;
    }
    let cfg_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/board.example.yaml");
    let cfg = vfpga_config::load(&cfg_path).expect("example config loads");
    let addr = cfg
        .board
        .as_ref()
        .and_then(|b| b.pci_address.as_ref().map(|a| a.value.clone()))
        .expect("board");
    let r = run(&Host::system(), &DoctorInput::from_config(Some(&cfg)));
    assert_eq!(status_of(&r, "iommu"), Status::Fail, "{r}");
    assert_eq!(status_of(&r, "dev-vfio"), Status::Fail, "{r}");
    let dev = Path::new("/sys/bus/pci/devices").join(&addr);
    if !dev.exists() {
        let f = r.get("device").expect("finding");
        assert_eq!(f.status, Status::Fail);
        assert!(f.explanation.contains(&addr), "{f:?}");
    }
    assert_eq!(r.exit_status(), 1);
}
