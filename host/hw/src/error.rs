//! Errors of the board backend. Each names the PCI address and what is wrong,
//! in one line.

use std::path::PathBuf;

use vfpga_device::DeviceError;

/// Errors opening or driving a board.
#[derive(Debug, thiserror::Error)]
pub enum HwError {
    /// No such PCI device in sysfs.
    #[error("VFIO device {addr}: {} does not exist (check board.pci_address against `lspci -D`)", path.display())]
    NoDevice {
        /// PCI address.
        addr: String,
        /// The sysfs path that is missing.
        path: PathBuf,
    },
    /// The device is bound to another driver, or to none.
    #[error("VFIO device {addr}: not bound to vfio-pci (driver: {driver}); run `vfpga doctor`")]
    NotVfio {
        /// PCI address.
        addr: String,
        /// The bound driver, or `none`.
        driver: String,
    },
    /// The device has no IOMMU group (IOMMU off).
    #[error("VFIO device {addr}: no IOMMU group (is the IOMMU enabled? run `vfpga doctor`)")]
    NoIommuGroup {
        /// PCI address.
        addr: String,
    },
    /// The device is in another IOMMU group than the config says.
    #[error("VFIO device {addr}: in IOMMU group {found}, but board.iommu_group is {configured}")]
    GroupMismatch {
        /// PCI address.
        addr: String,
        /// Group in sysfs.
        found: u32,
        /// Group in the config.
        configured: u32,
    },
    /// The VFIO group node is missing.
    #[error("VFIO device {addr}: {} missing (run `vfpga doctor`)", path.display())]
    NoGroupNode {
        /// PCI address.
        addr: String,
        /// `/dev/vfio/<group>`.
        path: PathBuf,
    },
    /// A VFIO operation failed.
    #[error("VFIO device {addr}: {what}: {source}")]
    Vfio {
        /// PCI address.
        addr: String,
        /// What was being done.
        what: String,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },
    /// A BAR is missing or has the wrong size.
    #[error("VFIO device {addr}: {what}")]
    Bar {
        /// PCI address.
        addr: String,
        /// What is wrong.
        what: String,
    },
    /// The device does not identify as a vfpga device.
    #[error(
        "VFIO device {addr}: not a vfpga device (ID register reads {found:#010x}, expected {expected:#010x})"
    )]
    NotVfpga {
        /// PCI address.
        addr: String,
        /// `ID` register.
        found: u32,
        /// `DEVICE_MAGIC`.
        expected: u32,
    },
    /// The bitstream's RTL version is one this host does not understand.
    #[error(
        "VFIO device {addr}: bitstream RTL version {found} refused: {whose} {wanted} (major.minor must match)"
    )]
    RtlVersion {
        /// PCI address.
        addr: String,
        /// What the bitstream reports (`major.minor.patch`).
        found: String,
        /// Who wants what: `this host understands` or `the config expects`.
        whose: &'static str,
        /// That version (`major.minor.patch`).
        wanted: String,
    },
    /// Another identity register differs from what the config and this build expect.
    #[error("VFIO device {addr}: identity check failed")]
    Identity {
        /// PCI address.
        addr: String,
        /// The mismatch.
        #[source]
        source: DeviceError,
    },
    /// Guest memory cannot be mapped into the IOMMU.
    #[error("VFIO device {addr}: guest memory [{iova:#x}, +{len:#x}): {what}")]
    Dma {
        /// PCI address.
        addr: String,
        /// IOVA of the mapping.
        iova: u64,
        /// Its length.
        len: u64,
        /// What is wrong.
        what: String,
    },
    /// Interrupt routing failed.
    #[error("VFIO device {addr}: interrupts: {what}")]
    Irq {
        /// PCI address.
        addr: String,
        /// What failed.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// PCI configuration space does not describe a vfpga function as the
    /// datasheet and the config say.
    #[error("VFIO device {addr}: configuration space: {what}")]
    ConfigSpace {
        /// PCI address.
        addr: String,
        /// What differs.
        what: String,
    },
    /// The device stopped answering (link down, surprise removal) or was
    /// reset behind vfpga's back (FLR, hot reset): its state is gone.
    #[error("{addr}: device lost: {what}")]
    Lost {
        /// PCI address.
        addr: String,
        /// What was seen, and what had been saved.
        what: String,
    },
    /// The simulated board could not be started or stopped answering.
    #[error("simulated board: {what}")]
    SimBoard {
        /// What failed.
        what: String,
        /// Why, when an OS error says more.
        #[source]
        source: Option<std::io::Error>,
    },
    /// A path that is not built.
    #[error("not built: {0}")]
    NotBuilt(&'static str),
    /// A register access through the seam failed.
    #[error("VFIO device {addr}: register access failed")]
    Device {
        /// PCI address.
        addr: String,
        /// The access error.
        #[source]
        source: DeviceError,
    },
}

impl From<HwError> for DeviceError {
    fn from(e: HwError) -> Self {
        if let HwError::Lost { .. } = e {
            return DeviceError::Lost(e.to_string());
        }
        if let HwError::Device { source, .. } = e {
            return source;
        }
        DeviceError::Backend {
            msg: e.to_string(),
            source: Some(Box::new(e)),
        }
    }
}

/// `major.minor.patch` of an `RTL_VERSION` value.
pub fn version_string(v: u32) -> String {
    use vfpga_regs::fields::rtl_version::{MAJOR, MINOR, PATCH};
    format!("{}.{}.{}", MAJOR.get(v), MINOR.get(v), PATCH.get(v))
}
