//! `vfpga-guest-test`: run inside the QEMU guest by `/init`; prints exactly
//! one `vfpga-guest: PASS descriptors=N irqs=M` or `vfpga-guest: FAIL
//! <reason>` line and exits 0 on a pass, 1 on a failure.

use std::path::Path;
use std::time::{Duration, Instant};

use vfpga_guest_test::dma::DmaBuf;
use vfpga_guest_test::irq::SysfsIrqs;
use vfpga_guest_test::mmio::Mapping;
use vfpga_guest_test::{Summary, fail_line, pass_line, sysfs, workload};
use vfpga_regs::consts;

const DRIVER: &str = "/sys/bus/pci/drivers/vfpga_irq";

fn info(s: &str) {
    println!("vfpga-guest: {s}");
}

fn run() -> Result<Summary, String> {
    let dev = sysfs::find(
        Path::new("/sys/bus/pci/devices"),
        consts::PCI_VENDOR_ID,
        consts::PCI_DEVICE_ID,
    )?;
    info(&format!(
        "found {:04x}:{:04x} at {}",
        consts::PCI_VENDOR_ID,
        consts::PCI_DEVICE_ID,
        dev.bdf()
    ));
    let class = dev.hex_attr("class")?;
    let rev = dev.hex_attr("revision")?;
    if class != consts::PCI_CLASS_CODE || rev != consts::PCI_REVISION {
        return Err(format!(
            "class {class:#08x} revision {rev:#x}, want {:#08x} {:#x}",
            consts::PCI_CLASS_CODE,
            consts::PCI_REVISION
        ));
    }

    // Bind the MSI-X counting module by ID (it has no built-in ID table).
    let counts = dev.path.join("irq_counts");
    if !counts.exists() {
        std::fs::write(
            format!("{DRIVER}/new_id"),
            format!(
                "{:04x} {:04x}",
                consts::PCI_VENDOR_ID,
                consts::PCI_DEVICE_ID
            ),
        )
        .map_err(|e| format!("binding vfpga_irq: {e}"))?;
        let t = Instant::now();
        while !counts.exists() {
            if t.elapsed() > Duration::from_secs(30) {
                return Err("vfpga_irq did not bind (see the kernel log above)".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let irqs = SysfsIrqs { path: counts };

    let cmd = dev.config()?.enable_bus_master()?;
    info(&format!(
        "command register {cmd:#06x} (memory + bus master)"
    ));

    let bar0_len = dev.resource_len(0)?;
    if bar0_len != u64::from(consts::BAR0_SIZE) {
        return Err(format!(
            "BAR0 is {bar0_len} bytes, want BAR0_SIZE {}",
            consts::BAR0_SIZE
        ));
    }
    let bar0 = Mapping::map(&dev.path.join("resource0"), bar0_len as usize)?;
    let bar2_len = dev.resource_len(2)?;
    let bar2 = Mapping::map(&dev.path.join("resource2"), bar2_len as usize)?;
    let mem = DmaBuf::alloc_huge()?;
    info(&format!(
        "BAR0 {bar0_len} bytes, BAR2 {bar2_len} bytes, DMA buffer {} bytes at guest-physical {:#x}",
        mem.len(),
        mem.iova(0)
    ));
    workload::run(&bar0, &bar2, &irqs, &mem)
}

fn main() {
    let r = std::panic::catch_unwind(run).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into());
        Err(format!("panic: {msg}"))
    });
    match r {
        Ok(s) => println!("{}", pass_line(&s)),
        Err(e) => {
            println!("{}", fail_line(&e));
            std::process::exit(1);
        }
    }
}
