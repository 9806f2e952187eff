//! `vfpga doctor`: checks a host for board use and explains each finding.
//!
//! Every check reads the host through a [`Host`]: a file-system root (`/` on a
//! real host, a temporary directory holding a fake sysfs/dev/proc tree in
//! tests) plus two probes that are not files (the `RLIMIT_MEMLOCK` limit and
//! `verilator --version`), which tests replace. The checks and the kernel
//! rules they follow:
//!
//! | check | reads | fails when |
//! |---|---|---|
//! | `iommu` | `/sys/kernel/iommu_groups` | it is missing or empty (IOMMU off) |
//! | `vfio-pci` | `/sys/bus/pci/drivers/vfio-pci`, `/sys/module/vfio_pci` | neither exists |
//! | `device` | `/sys/bus/pci/devices/<addr>/{vendor,device}` | missing, or other IDs than the config expects |
//! | `driver` | `/sys/bus/pci/devices/<addr>/driver` | not bound to `vfio-pci` |
//! | `iommu-group` | `/sys/bus/pci/devices/<addr>/iommu_group` | no group, or not the config's `iommu_group` |
//! | `group-viable` | `/sys/kernel/iommu_groups/<n>/devices/*` | a member is bound to a driver that is not allowed (below) |
//! | `dev-vfio` | `/dev/vfio/vfio`, `/dev/vfio/<n>` | missing, or not readable and writable by this user |
//! | `memlock` | `RLIMIT_MEMLOCK`, `CapEff` in `/proc/self/status` | the limit is below device memory + guest memory and the process lacks `CAP_IPC_LOCK` |
//! | `hugepages` | `/sys/kernel/mm/hugepages/*/{nr,free}_hugepages` | never (a warning when none are free) |
//! | `verilator` | `verilator --version` | missing or older than 5.x while the config uses the simulator |
//!
//! **Group viability** follows the kernel: VFIO lets a group be used only when
//! every device in it is unbound, bound to a VFIO driver, or bound to a driver
//! that does not do DMA for the kernel (`pci-stub`; `pcieport`, which sets
//! `driver_managed_dma`); PCI bridges (header type other than 0) are allowed
//! whatever their driver.
//!
//! Exit status of `vfpga doctor` ([`Report::exit_status`]): 0 when every
//! finding is ok, a warning or skipped; 1 when at least one failed; 2 (usage
//! or config error) is decided by the command line before any check runs.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use vfpga_config::{Backend, BoardConfig, Config};

/// Guest memory assumed by the memlock check when the caller gives none: the
/// VMM pins (IOMMU-maps) all guest memory the device may reach.
pub const DEFAULT_GUEST_MEMORY: u64 = 1 << 30;

/// `CAP_IPC_LOCK` bit in `CapEff`: with it, VFIO does not apply the memlock limit.
const CAP_IPC_LOCK: u32 = 14;

/// Verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Nothing to do.
    Ok,
    /// Usable, but worth fixing.
    Warn,
    /// The board cannot be used until this is fixed.
    Fail,
    /// Not checked (not applicable, or an earlier check failed).
    Skip,
}

impl Status {
    /// Lower-case name, as printed and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::Skip => "skip",
        }
    }
}

/// One finding: a check, its verdict, one line of explanation, one line of fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Check name (`iommu`, `vfio-pci`, ...; see the module docs).
    pub check: &'static str,
    /// Verdict.
    pub status: Status,
    /// What was found, one line.
    pub explanation: String,
    /// What to do about it, one line.
    pub fix: String,
}

/// All findings of one run, in check order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The findings.
    pub findings: Vec<Finding>,
}

impl Report {
    /// The finding of `check`, if it ran.
    pub fn get(&self, check: &str) -> Option<&Finding> {
        self.findings.iter().find(|f| f.check == check)
    }

    /// Whether any finding failed.
    pub fn failed(&self) -> bool {
        self.findings.iter().any(|f| f.status == Status::Fail)
    }

    /// 0 when nothing failed (warnings and skips allowed), 1 otherwise.
    pub fn exit_status(&self) -> u8 {
        u8::from(self.failed())
    }

    /// The report as JSON: `{"findings": [...], "summary": {...}, "exit_status": N}`.
    pub fn to_json(&self) -> serde_json::Value {
        let count = |s| self.findings.iter().filter(|f| f.status == s).count();
        serde_json::json!({
            "findings": self.findings,
            "summary": {
                "ok": count(Status::Ok),
                "warn": count(Status::Warn),
                "fail": count(Status::Fail),
                "skip": count(Status::Skip),
            },
            "exit_status": self.exit_status(),
        })
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for x in &self.findings {
            writeln!(
                f,
                "{:<5} {:<13} {}",
                x.status.name(),
                x.check,
                x.explanation
            )?;
            if matches!(x.status, Status::Warn | Status::Fail) {
                writeln!(f, "{:<5} {:<13} fix: {}", "", "", x.fix)?;
            }
        }
        Ok(())
    }
}

/// What the checks are for: the board, the device size and the backend.
#[derive(Debug, Clone, Default)]
pub struct DoctorInput {
    /// The board to check (none: the device checks are skipped).
    pub board: Option<BoardConfig>,
    /// The configured backend (none: no config was given).
    pub backend: Option<Backend>,
    /// Device memory in bytes.
    pub devmem_bytes: u64,
    /// Guest memory the VMM will map for the device, in bytes.
    pub guest_memory: u64,
}

impl DoctorInput {
    /// The input for a loaded config (or none), assuming [`DEFAULT_GUEST_MEMORY`].
    pub fn from_config(cfg: Option<&Config>) -> Self {
        match cfg {
            None => DoctorInput {
                board: None,
                backend: None,
                devmem_bytes: vfpga_config::DeviceConfig::default().devmem_size.value.0,
                guest_memory: DEFAULT_GUEST_MEMORY,
            },
            Some(c) => DoctorInput {
                board: c.board.clone(),
                backend: Some(c.backend.value),
                devmem_bytes: c.device.devmem_size.value.0,
                guest_memory: DEFAULT_GUEST_MEMORY,
            },
        }
    }

    fn needs_sim(&self) -> bool {
        match self.backend {
            None | Some(Backend::Sim) | Some(Backend::Lockstep) => true,
            Some(Backend::Model) | Some(Backend::Board) => false,
        }
    }
}

/// The memlock limit: soft limit in bytes, `None` for unlimited.
pub type Memlock = Option<u64>;

/// The host as the checks see it. See the module docs.
#[derive(Debug, Clone)]
pub struct Host {
    root: PathBuf,
    memlock: Option<Result<Memlock, String>>,
    verilator: Option<Result<String, String>>,
}

impl Host {
    /// This machine: root `/`, the real memlock limit and `verilator` on `PATH`.
    pub fn system() -> Self {
        Host {
            root: PathBuf::from("/"),
            memlock: None,
            verilator: None,
        }
    }

    /// A host whose files live under `root` (a fake tree in tests). Probes
    /// stay real until replaced with [`Host::with_memlock`] and
    /// [`Host::with_verilator`].
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Host {
            root: root.into(),
            memlock: None,
            verilator: None,
        }
    }

    /// Replaces the memlock probe.
    pub fn with_memlock(mut self, limit: Memlock) -> Self {
        self.memlock = Some(Ok(limit));
        self
    }

    /// Replaces the verilator probe with what `verilator --version` printed
    /// (`Ok`) or why it could not run (`Err`).
    pub fn with_verilator(mut self, out: Result<String, String>) -> Self {
        self.verilator = Some(out);
        self
    }

    /// `rel` (an absolute host path such as `/sys/...`) under the root.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    fn read(&self, p: &Path) -> Option<String> {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    }

    fn link_name(&self, p: &Path) -> Option<String> {
        let t = std::fs::read_link(p).ok()?;
        t.file_name().map(|n| n.to_string_lossy().into_owned())
    }

    fn memlock_limit(&self) -> Result<Memlock, String> {
        if let Some(m) = &self.memlock {
            return m.clone();
        }
        use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit};
        match getrlimit(Resource::RLIMIT_MEMLOCK) {
            Ok((soft, _)) if soft == RLIM_INFINITY => Ok(None),
            Ok((soft, _)) => Ok(Some(soft)),
            Err(e) => Err(format!("getrlimit(RLIMIT_MEMLOCK) failed: {e}")),
        }
    }

    fn verilator_version(&self) -> Result<String, String> {
        if let Some(v) = &self.verilator {
            return v.clone();
        }
        match std::process::Command::new("verilator")
            .arg("--version")
            .output()
        {
            Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).trim().into()),
            Ok(o) => Err(format!("`verilator --version` exited with {}", o.status)),
            Err(e) => Err(format!("cannot run `verilator`: {e}")),
        }
    }

    fn has_cap_ipc_lock(&self) -> bool {
        let Some(status) = self.read(&self.path("/proc/self/status")) else {
            return false;
        };
        status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
    }

    fn accessible_rw(&self, p: &Path) -> bool {
        use nix::unistd::{AccessFlags, access};
        access(p, AccessFlags::R_OK | AccessFlags::W_OK).is_ok()
    }
}

fn finding(check: &'static str, status: Status, explanation: String, fix: &str) -> Finding {
    Finding {
        check,
        status,
        explanation,
        fix: fix.to_string(),
    }
}

fn human_bytes(n: u64) -> String {
    if n >= 1 << 30 && n.is_multiple_of(1 << 30) {
        format!("{} GiB", n >> 30)
    } else if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} bytes")
    }
}

/// Runs every check against `host` for `input`.
pub fn run(host: &Host, input: &DoctorInput) -> Report {
    let mut out = vec![check_iommu(host), check_vfio_module(host)];
    let group = check_board(host, input, &mut out);
    out.push(check_dev_vfio(host, group));
    out.push(check_memlock(host, input));
    out.push(check_hugepages(host, input));
    out.push(check_verilator(host, input));
    Report { findings: out }
}

fn check_iommu(host: &Host) -> Finding {
    let dir = host.path("/sys/kernel/iommu_groups");
    let n = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
    if n > 0 {
        finding(
            "iommu",
            Status::Ok,
            format!("IOMMU is on: {n} groups in /sys/kernel/iommu_groups"),
            "nothing to do",
        )
    } else {
        finding(
            "iommu",
            Status::Fail,
            "IOMMU is off: /sys/kernel/iommu_groups is missing or empty".into(),
            "enable VT-d / AMD-Vi in the firmware and boot with intel_iommu=on iommu=pt (Intel) or amd_iommu=on (AMD)",
        )
    }
}

fn check_vfio_module(host: &Host) -> Finding {
    let drv = host.path("/sys/bus/pci/drivers/vfio-pci");
    let module = host.path("/sys/module/vfio_pci");
    if drv.is_dir() || module.is_dir() {
        finding(
            "vfio-pci",
            Status::Ok,
            "the vfio-pci driver is loaded".into(),
            "nothing to do",
        )
    } else {
        finding(
            "vfio-pci",
            Status::Fail,
            "the vfio-pci driver is not loaded (no /sys/bus/pci/drivers/vfio-pci)".into(),
            "modprobe vfio-pci (and add vfio-pci to /etc/modules-load.d/ to keep it)",
        )
    }
}

/// The device checks; returns the IOMMU group when one was found.
fn check_board(host: &Host, input: &DoctorInput, out: &mut Vec<Finding>) -> Option<u32> {
    let names = ["device", "driver", "iommu-group", "group-viable"];
    let Some(board) = &input.board else {
        for n in names {
            out.push(finding(
                n,
                Status::Skip,
                "no board configured".into(),
                "pass --config with a board: section (see config/board.example.yaml)",
            ));
        }
        return None;
    };
    let Some(addr) = board.pci_address.as_ref().map(|a| a.value.as_str()) else {
        for n in names {
            out.push(finding(
                n,
                Status::Skip,
                "the simulated board (board.simulated) has no PCI device on this host".into(),
                "nothing to do: the simulated board needs only scripts/setup (cocotb, Icarus)",
            ));
        }
        return None;
    };
    let dev = host.path(&format!("/sys/bus/pci/devices/{addr}"));
    if !dev.exists() {
        out.push(finding(
            "device",
            Status::Fail,
            format!("no PCI device {addr}: /sys/bus/pci/devices/{addr} does not exist"),
            "check board.pci_address against `lspci -D`, reseat or power the board, then rescan (echo 1 > /sys/bus/pci/rescan)",
        ));
        for n in &names[1..] {
            out.push(finding(
                n,
                Status::Skip,
                format!("skipped: device {addr} is missing"),
                "fix the device finding first",
            ));
        }
        return None;
    }
    let id = |f: &str| {
        host.read(&dev.join(f))
            .and_then(|s| u16::from_str_radix(s.trim_start_matches("0x"), 16).ok())
    };
    let (vendor, device) = (id("vendor"), id("device"));
    let want = &board.expected;
    out.push(match (vendor, device) {
        (Some(v), Some(d)) if v == want.vendor_id && d == want.device_id => finding(
            "device",
            Status::Ok,
            format!("{addr} is {v:04x}:{d:04x} as expected"),
            "nothing to do",
        ),
        (Some(v), Some(d)) => finding(
            "device",
            Status::Fail,
            format!(
                "{addr} is {v:04x}:{d:04x}, the config expects {:04x}:{:04x}",
                want.vendor_id, want.device_id
            ),
            "point board.pci_address at the vfpga board, or load the vfpga bitstream and rescan",
        ),
        _ => finding(
            "device",
            Status::Warn,
            format!("{addr} exists but its vendor/device files are unreadable"),
            "run vfpga doctor as a user that can read sysfs",
        ),
    });
    let driver = host.link_name(&dev.join("driver"));
    out.push(match driver.as_deref() {
        Some("vfio-pci") => finding(
            "driver",
            Status::Ok,
            format!("{addr} is bound to vfio-pci"),
            "nothing to do",
        ),
        other => finding(
            "driver",
            Status::Fail,
            format!(
                "{addr} is not bound to vfio-pci (driver: {})",
                other.unwrap_or("none")
            ),
            &format!(
                "driverctl set-override {addr} vfio-pci (or: echo vfio-pci > /sys/bus/pci/devices/{addr}/driver_override; echo {addr} > /sys/bus/pci/drivers_probe)"
            ),
        ),
    });
    let group = host
        .link_name(&dev.join("iommu_group"))
        .and_then(|g| g.parse::<u32>().ok());
    let Some(group) = group else {
        out.push(finding(
            "iommu-group",
            Status::Fail,
            format!("{addr} has no IOMMU group"),
            "enable the IOMMU (see the iommu finding)",
        ));
        out.push(finding(
            "group-viable",
            Status::Skip,
            "skipped: no IOMMU group".into(),
            "fix the iommu-group finding first",
        ));
        return None;
    };
    out.push(match board.iommu_group {
        Some(g) if g != group => finding(
            "iommu-group",
            Status::Fail,
            format!("{addr} is in IOMMU group {group}, the config says {g}"),
            &format!("set board.iommu_group: {group}"),
        ),
        _ => finding(
            "iommu-group",
            Status::Ok,
            format!("{addr} is in IOMMU group {group}"),
            "nothing to do",
        ),
    });
    out.push(check_viable(host, group));
    Some(group)
}

/// Whether the kernel lets VFIO use a group that contains `member`; `Err`
/// names the driver that blocks it.
fn member_allowed(host: &Host, member_dir: &Path) -> Result<(), String> {
    let Some(driver) = host.link_name(&member_dir.join("driver")) else {
        return Ok(());
    };
    if driver.contains("vfio") || driver == "pci-stub" || driver == "pcieport" {
        return Ok(());
    }
    // Bridges (config header type != 0) are allowed whatever their driver.
    if let Ok(cfg) = std::fs::read(member_dir.join("config"))
        && cfg.get(0x0e).is_some_and(|h| h & 0x7f != 0)
    {
        return Ok(());
    }
    Err(driver)
}

fn check_viable(host: &Host, group: u32) -> Finding {
    let dir = host.path(&format!("/sys/kernel/iommu_groups/{group}/devices"));
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return finding(
            "group-viable",
            Status::Fail,
            format!("cannot list /sys/kernel/iommu_groups/{group}/devices"),
            "run vfpga doctor as a user that can read sysfs",
        );
    };
    let mut members: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    members.sort();
    let blockers: Vec<String> = members
        .iter()
        .filter_map(|m| {
            member_allowed(host, &dir.join(m))
                .err()
                .map(|d| format!("{m} (driver {d})"))
        })
        .collect();
    if blockers.is_empty() {
        finding(
            "group-viable",
            Status::Ok,
            format!(
                "IOMMU group {group} is viable: {} device(s), none bound to a host driver",
                members.len()
            ),
            "nothing to do",
        )
    } else {
        finding(
            "group-viable",
            Status::Fail,
            format!(
                "IOMMU group {group} is not viable: {} bound to a host driver",
                blockers.join(", ")
            ),
            "bind every device of the group to vfio-pci (or unbind it), or move the board to a slot with its own group",
        )
    }
}

fn check_dev_vfio(host: &Host, group: Option<u32>) -> Finding {
    let container = host.path("/dev/vfio/vfio");
    if !container.exists() {
        return finding(
            "dev-vfio",
            Status::Fail,
            "/dev/vfio/vfio is missing (the vfio module is not loaded)".into(),
            "modprobe vfio-pci",
        );
    }
    let Some(g) = group else {
        return finding(
            "dev-vfio",
            Status::Skip,
            "/dev/vfio/vfio exists; no IOMMU group to check".into(),
            "fix the device findings first",
        );
    };
    let node = host.path(&format!("/dev/vfio/{g}"));
    if !node.exists() {
        finding(
            "dev-vfio",
            Status::Fail,
            format!("/dev/vfio/{g} is missing"),
            "bind the board to vfio-pci: the group node appears when a group member is bound",
        )
    } else if !host.accessible_rw(&node) || !host.accessible_rw(&container) {
        finding(
            "dev-vfio",
            Status::Fail,
            format!("/dev/vfio/{g} is not readable and writable by this user"),
            &format!(
                "chown $USER /dev/vfio/{g} (or add a udev rule: SUBSYSTEM==\"vfio\", OWNER=\"$USER\")"
            ),
        )
    } else {
        finding(
            "dev-vfio",
            Status::Ok,
            format!("/dev/vfio/{g} is present and accessible"),
            "nothing to do",
        )
    }
}

fn check_memlock(host: &Host, input: &DoctorInput) -> Finding {
    let need = input.devmem_bytes.saturating_add(input.guest_memory);
    let what = format!(
        "device memory {} + guest memory {}",
        human_bytes(input.devmem_bytes),
        human_bytes(input.guest_memory)
    );
    let fix = format!(
        "raise it: ulimit -l {} (or `* hard memlock unlimited` in /etc/security/limits.conf, LimitMEMLOCK=infinity for a systemd unit)",
        need.div_ceil(1024)
    );
    match host.memlock_limit() {
        Err(e) => finding("memlock", Status::Warn, e, "check `ulimit -l`"),
        Ok(None) => finding(
            "memlock",
            Status::Ok,
            "RLIMIT_MEMLOCK is unlimited".into(),
            "nothing to do",
        ),
        Ok(Some(l)) if l >= need => finding(
            "memlock",
            Status::Ok,
            format!("RLIMIT_MEMLOCK {} covers {what}", human_bytes(l)),
            "nothing to do",
        ),
        Ok(Some(l)) if host.has_cap_ipc_lock() => finding(
            "memlock",
            Status::Ok,
            format!(
                "RLIMIT_MEMLOCK {} is below {what}, but this process has CAP_IPC_LOCK, which VFIO honours instead",
                human_bytes(l)
            ),
            &fix,
        ),
        Ok(Some(l)) => finding(
            "memlock",
            Status::Fail,
            format!(
                "RLIMIT_MEMLOCK {} is below {what}: IOMMU mapping guest memory will fail",
                human_bytes(l)
            ),
            &fix,
        ),
    }
}

fn check_hugepages(host: &Host, input: &DoctorInput) -> Finding {
    let dir = host.path("/sys/kernel/mm/hugepages");
    let mut free_bytes = 0u64;
    let mut total_bytes = 0u64;
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(kb) = name
                .strip_prefix("hugepages-")
                .and_then(|s| s.strip_suffix("kB"))
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            let num = |f: &str| {
                host.read(&e.path().join(f))
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            total_bytes += num("nr_hugepages") * kb * 1024;
            free_bytes += num("free_hugepages") * kb * 1024;
        }
    }
    let fix = format!(
        "reserve them: echo {} > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages (or hugepages= on the kernel command line)",
        input.guest_memory.div_ceil(2 << 20)
    );
    if total_bytes == 0 {
        finding(
            "hugepages",
            Status::Warn,
            "no huge pages reserved: guest memory uses 4 KiB pages (more IOMMU entries, slower mapping)".into(),
            &fix,
        )
    } else if free_bytes < input.guest_memory {
        finding(
            "hugepages",
            Status::Warn,
            format!(
                "{} of huge pages free ({} reserved), less than the guest memory {}",
                human_bytes(free_bytes),
                human_bytes(total_bytes),
                human_bytes(input.guest_memory)
            ),
            &fix,
        )
    } else {
        finding(
            "hugepages",
            Status::Ok,
            format!("{} of huge pages free", human_bytes(free_bytes)),
            "nothing to do",
        )
    }
}

/// Parses `Verilator 5.006 2023-01-22 ...` into (major, minor).
pub fn parse_verilator_version(out: &str) -> Option<(u32, u32)> {
    let rest = out.trim().strip_prefix("Verilator ")?;
    let v = rest.split_whitespace().next()?;
    let (maj, min) = v.split_once('.')?;
    Some((maj.parse().ok()?, min.parse().ok()?))
}

fn check_verilator(host: &Host, input: &DoctorInput) -> Finding {
    let needed = input.needs_sim();
    let missing = if needed { Status::Fail } else { Status::Skip };
    let fix = "apt-get install verilator (Debian bookworm ships 5.006), or build 5.x from source";
    match host.verilator_version() {
        Err(e) => finding(
            "verilator",
            missing,
            if needed {
                format!("{e}: the sim backend cannot be built")
            } else {
                format!("{e} (only the sim backend needs it)")
            },
            fix,
        ),
        Ok(out) => match parse_verilator_version(&out) {
            Some((maj, min)) if maj >= 5 => finding(
                "verilator",
                Status::Ok,
                format!("Verilator {maj}.{min:03} (the sim backend needs 5.x)"),
                "nothing to do",
            ),
            Some((maj, min)) => finding(
                "verilator",
                missing,
                format!("Verilator {maj}.{min:03} is too old: the sim backend needs 5.x"),
                fix,
            ),
            None => finding(
                "verilator",
                Status::Warn,
                format!(
                    "cannot tell the version from `{}`",
                    out.lines().next().unwrap_or("")
                ),
                fix,
            ),
        },
    }
}
