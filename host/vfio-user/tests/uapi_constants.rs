//! Every VFIO value the vfio-user wire code and session type by hand,
//! against the kernel uAPI as rust-vmm's `vfio-bindings` generates it from
//! `linux/vfio.h` (vfio-user reuses VFIO's numbers and fixed structures):
//! DMA map/unmap flags, device/region/IRQ info flags, SET_IRQS flags, the
//! DEVICE_FEATURE encoding and feature numbers, the v1 migration region's
//! type, the vfio-pci region and IRQ indexes, and the sizes of the fixed
//! structures vfio-user shares with VFIO.

use std::mem::{offset_of, size_of};

use vfio_bindings::bindings::vfio as uapi;
use vfpga_vfio_user::session::{irq_index, region};
use vfpga_vfio_user::wire;

#[test]
fn dma_flags() {
    assert_eq!(wire::DMA_FLAG_READ, uapi::VFIO_DMA_MAP_FLAG_READ);
    assert_eq!(wire::DMA_FLAG_WRITE, uapi::VFIO_DMA_MAP_FLAG_WRITE);
    assert_eq!(wire::DMA_UNMAP_ALL, uapi::VFIO_DMA_UNMAP_FLAG_ALL);
}

#[test]
fn device_region_and_irq_info_flags() {
    assert_eq!(wire::DEVICE_FLAGS_RESET, uapi::VFIO_DEVICE_FLAGS_RESET);
    assert_eq!(wire::DEVICE_FLAGS_PCI, uapi::VFIO_DEVICE_FLAGS_PCI);
    assert_eq!(wire::REGION_FLAG_READ, uapi::VFIO_REGION_INFO_FLAG_READ);
    assert_eq!(wire::REGION_FLAG_WRITE, uapi::VFIO_REGION_INFO_FLAG_WRITE);
    assert_eq!(wire::REGION_FLAG_MMAP, uapi::VFIO_REGION_INFO_FLAG_MMAP);
    assert_eq!(wire::REGION_FLAG_CAPS, uapi::VFIO_REGION_INFO_FLAG_CAPS);
    assert_eq!(
        u32::from(wire::REGION_CAP_TYPE),
        uapi::VFIO_REGION_INFO_CAP_TYPE
    );
    assert_eq!(
        wire::REGION_TYPE_MIGRATION,
        uapi::VFIO_REGION_TYPE_MIGRATION_DEPRECATED
    );
    assert_eq!(
        wire::REGION_SUBTYPE_MIGRATION,
        uapi::VFIO_REGION_SUBTYPE_MIGRATION_DEPRECATED
    );
    assert_eq!(wire::IRQ_INFO_EVENTFD, uapi::VFIO_IRQ_INFO_EVENTFD);
    assert_eq!(wire::IRQ_INFO_MASKABLE, uapi::VFIO_IRQ_INFO_MASKABLE);
    assert_eq!(wire::IRQ_INFO_AUTOMASKED, uapi::VFIO_IRQ_INFO_AUTOMASKED);
    assert_eq!(wire::IRQ_INFO_NORESIZE, uapi::VFIO_IRQ_INFO_NORESIZE);
}

#[test]
fn set_irqs_flags() {
    assert_eq!(wire::IRQ_SET_DATA_NONE, uapi::VFIO_IRQ_SET_DATA_NONE);
    assert_eq!(wire::IRQ_SET_DATA_BOOL, uapi::VFIO_IRQ_SET_DATA_BOOL);
    assert_eq!(wire::IRQ_SET_DATA_EVENTFD, uapi::VFIO_IRQ_SET_DATA_EVENTFD);
    assert_eq!(wire::IRQ_SET_ACTION_MASK, uapi::VFIO_IRQ_SET_ACTION_MASK);
    assert_eq!(
        wire::IRQ_SET_ACTION_UNMASK,
        uapi::VFIO_IRQ_SET_ACTION_UNMASK
    );
    assert_eq!(
        wire::IRQ_SET_ACTION_TRIGGER,
        uapi::VFIO_IRQ_SET_ACTION_TRIGGER
    );
}

#[test]
fn device_feature_encoding_and_numbers() {
    assert_eq!(wire::FEATURE_MASK, uapi::VFIO_DEVICE_FEATURE_MASK);
    assert_eq!(wire::FEATURE_GET, uapi::VFIO_DEVICE_FEATURE_GET);
    assert_eq!(wire::FEATURE_SET, uapi::VFIO_DEVICE_FEATURE_SET);
    assert_eq!(wire::FEATURE_PROBE, uapi::VFIO_DEVICE_FEATURE_PROBE);
    assert_eq!(wire::FEATURE_MIGRATION, uapi::VFIO_DEVICE_FEATURE_MIGRATION);
    assert_eq!(
        wire::FEATURE_MIG_DEVICE_STATE,
        uapi::VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE
    );
    assert_eq!(
        wire::FEATURE_DMA_LOGGING_START,
        uapi::VFIO_DEVICE_FEATURE_DMA_LOGGING_START
    );
    assert_eq!(
        wire::FEATURE_DMA_LOGGING_STOP,
        uapi::VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP
    );
    assert_eq!(
        wire::FEATURE_DMA_LOGGING_REPORT,
        uapi::VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT
    );
    assert_eq!(
        wire::FEATURE_MIG_DATA_SIZE,
        uapi::VFIO_DEVICE_FEATURE_MIG_DATA_SIZE
    );
}

#[test]
fn vfio_pci_region_and_irq_indexes() {
    assert_eq!(region::BAR0, uapi::VFIO_PCI_BAR0_REGION_INDEX);
    assert_eq!(region::BAR2, uapi::VFIO_PCI_BAR2_REGION_INDEX);
    assert_eq!(region::ROM, uapi::VFIO_PCI_ROM_REGION_INDEX);
    assert_eq!(region::CONFIG, uapi::VFIO_PCI_CONFIG_REGION_INDEX);
    assert_eq!(region::VGA, uapi::VFIO_PCI_VGA_REGION_INDEX);
    // The v1 migration region is the first device-specific index.
    assert_eq!(region::MIGRATION, uapi::VFIO_PCI_NUM_REGIONS);
    assert_eq!(irq_index::INTX, uapi::VFIO_PCI_INTX_IRQ_INDEX);
    assert_eq!(irq_index::MSI, uapi::VFIO_PCI_MSI_IRQ_INDEX);
    assert_eq!(irq_index::MSIX, uapi::VFIO_PCI_MSIX_IRQ_INDEX);
    assert_eq!(irq_index::ERR, uapi::VFIO_PCI_ERR_IRQ_INDEX);
    assert_eq!(irq_index::REQ, uapi::VFIO_PCI_REQ_IRQ_INDEX);
    assert_eq!(irq_index::COUNT, uapi::VFIO_PCI_NUM_IRQS);
}

#[test]
fn fixed_structures_vfio_user_shares_with_vfio() {
    assert_eq!(wire::RegionInfo::LEN, size_of::<uapi::vfio_region_info>());
    assert_eq!(wire::IrqInfo::LEN, size_of::<uapi::vfio_irq_info>());
    assert_eq!(wire::SetIrqs::LEN, size_of::<uapi::vfio_irq_set>());
    // vfio-user's device info is the kernel's first four fields (the kernel
    // added cap_offset later).
    assert_eq!(
        wire::DeviceInfoReply::LEN,
        offset_of!(uapi::vfio_device_info, cap_offset)
    );
}
