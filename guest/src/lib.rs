//! The vfpga guest test: a static program run as part of `/init` inside a QEMU
//! guest whose vfpga device is served over vfio-user by `vfpga serve`.
//!
//! It does what a minimal user-space driver does, with nothing but the guest
//! kernel's sysfs and the `vfpga_irq` module (`guest/kmod`, which only counts
//! MSI-X interrupts):
//!
//! 1. [`sysfs`]: finds the device by its IDs, checks class and revision, and
//!    enables bus mastering in the command register;
//! 2. [`mmio`]: maps BAR0 (registers) and BAR2 (device memory) through the
//!    sysfs `resource0`/`resource2` files;
//! 3. [`dma`]: allocates a locked huge page and learns its guest-physical
//!    address from `/proc/self/pagemap` (with no vIOMMU, the IOVA the device
//!    uses is the guest-physical address);
//! 4. [`ring`]: builds the submission and completion rings there;
//! 5. [`workload`]: runs copy, CRC32C and fill descriptors between guest
//!    memory and device memory, checks every byte and every completion, and
//!    counts the interrupts of each vector through [`irq`].
//!
//! The parts that do not touch hardware (parsing, address arithmetic, the
//! checks) are unit-tested on the host; [`workload`] is written against the
//! [`mmio::Regs`], [`mmio::DevMem`] and [`irq::Irqs`] traits.

pub mod dma;
pub mod irq;
pub mod mmio;
pub mod ring;
pub mod sysfs;
pub mod workload;

/// What a passing run did, printed in the PASS line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    /// Descriptors completed and checked.
    pub descriptors: u32,
    /// Interrupts received (all vectors).
    pub irqs: u64,
}

/// The one line the test prints for a pass.
pub fn pass_line(s: &Summary) -> String {
    format!(
        "vfpga-guest: PASS descriptors={} irqs={}",
        s.descriptors, s.irqs
    )
}

/// The one line the test prints for a failure (the reason on one line).
pub fn fail_line(reason: &str) -> String {
    format!("vfpga-guest: FAIL {}", reason.replace('\n', " | "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_the_shape_qemu_test_greps_for() {
        let s = Summary {
            descriptors: 12,
            irqs: 9,
        };
        assert_eq!(pass_line(&s), "vfpga-guest: PASS descriptors=12 irqs=9");
        assert_eq!(fail_line("a\nb"), "vfpga-guest: FAIL a | b");
    }
}
