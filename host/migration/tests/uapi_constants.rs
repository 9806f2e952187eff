//! Every VFIO value the migration code types by hand, against the kernel
//! uAPI as rust-vmm's `vfio-bindings` generates it from `linux/vfio.h`: the
//! v2 state numbers and migration flags, the v1 `device_state` bits and the
//! v1 `vfio_device_migration_info` layout.

use std::mem::{offset_of, size_of};

use vfio_bindings::bindings::vfio as uapi;
use vfpga_migration::fsm::NUM_STATES;
use vfpga_migration::v1;
use vfpga_migration::{MigState, MigrationFlags};

#[test]
fn v2_states_are_the_kernel_numbers() {
    let pairs = [
        (
            MigState::Error,
            uapi::vfio_device_mig_state_VFIO_DEVICE_STATE_ERROR,
        ),
        (
            MigState::Stop,
            uapi::vfio_device_mig_state_VFIO_DEVICE_STATE_STOP,
        ),
        (
            MigState::Running,
            uapi::vfio_device_mig_state_VFIO_DEVICE_STATE_RUNNING,
        ),
        (
            MigState::StopCopy,
            uapi::vfio_device_mig_state_VFIO_DEVICE_STATE_STOP_COPY,
        ),
        (
            MigState::Resuming,
            uapi::vfio_device_mig_state_VFIO_DEVICE_STATE_RESUMING,
        ),
        (
            MigState::RunningP2p,
            uapi::vfio_device_mig_state_VFIO_DEVICE_STATE_RUNNING_P2P,
        ),
        (
            MigState::PreCopy,
            uapi::vfio_device_mig_state_VFIO_DEVICE_STATE_PRE_COPY,
        ),
        (
            MigState::PreCopyP2p,
            uapi::vfio_device_mig_state_VFIO_DEVICE_STATE_PRE_COPY_P2P,
        ),
    ];
    for (ours, kernel) in pairs {
        assert_eq!(ours as u32, kernel, "{ours:?}");
    }
    assert_eq!(
        NUM_STATES as u32,
        uapi::vfio_device_mig_state_VFIO_DEVICE_STATE_NR
    );
    assert_eq!(pairs.len(), NUM_STATES);
}

#[test]
fn migration_flags_are_the_kernel_bits() {
    assert_eq!(
        MigrationFlags::STOP_COPY.0,
        u64::from(uapi::VFIO_MIGRATION_STOP_COPY)
    );
    assert_eq!(MigrationFlags::P2P.0, u64::from(uapi::VFIO_MIGRATION_P2P));
    assert_eq!(
        MigrationFlags::PRE_COPY.0,
        u64::from(uapi::VFIO_MIGRATION_PRE_COPY)
    );
}

#[test]
fn v1_device_state_bits_are_the_kernel_bits() {
    assert_eq!(v1::bits::STOP, uapi::VFIO_DEVICE_STATE_V1_STOP);
    assert_eq!(v1::bits::RUNNING, uapi::VFIO_DEVICE_STATE_V1_RUNNING);
    assert_eq!(v1::bits::SAVING, uapi::VFIO_DEVICE_STATE_V1_SAVING);
    assert_eq!(v1::bits::RESUMING, uapi::VFIO_DEVICE_STATE_V1_RESUMING);
    assert_eq!(v1::bits::MASK, uapi::VFIO_DEVICE_STATE_MASK);
}

#[test]
fn v1_region_layout_is_vfio_device_migration_info() {
    type Info = uapi::vfio_device_migration_info;
    assert_eq!(v1::DEVICE_STATE, offset_of!(Info, device_state) as u64);
    assert_eq!(v1::RESERVED, offset_of!(Info, reserved) as u64);
    assert_eq!(v1::PENDING_BYTES, offset_of!(Info, pending_bytes) as u64);
    assert_eq!(v1::DATA_OFFSET_REG, offset_of!(Info, data_offset) as u64);
    assert_eq!(v1::DATA_SIZE, offset_of!(Info, data_size) as u64);
    assert_eq!(v1::INFO_LEN, size_of::<Info>() as u64);
}
