//! `DeviceState`: the architectural state as plain data, and its validation.
//!
//! The validation rules are those of the datasheet (§9.3), in the same order,
//! so that a backend, the model and the migration layer agree on which word a
//! bad state is rejected for. Device memory is not part of `DeviceState`: it
//! travels as pages.

use serde::{Deserialize, Serialize};
use vfpga_regs::{ArchState, CplStatus, Opcode, StateErr, consts, fields, state};

/// Version of the `DeviceState` structure (not of the state-word layout,
/// which is `identity.state_layout`).
pub const DEVICE_STATE_VERSION: u32 = 1;

/// What a device is: the identity registers plus instance parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// PCI vendor ID.
    pub vendor_id: u16,
    /// PCI device ID.
    pub device_id: u16,
    /// `RTL_VERSION` register.
    pub rtl_version: u32,
    /// `FEATURES` register.
    pub features: u32,
    /// Device memory in 4 KiB pages.
    pub devmem_pages: u32,
    /// Largest DMA-log window in pages.
    pub dmalog_max_pages: u32,
    /// State layout version (`STATE_INFO.LAYOUT`).
    pub state_layout: u16,
    /// Number of state words (`STATE_INFO.WORDS`).
    pub state_words: u16,
}

impl Identity {
    /// The identity this build of vfpga implements, for a device with
    /// `devmem_pages` pages of memory and a `dmalog_max_pages` log window.
    pub fn this_build(devmem_pages: u32, dmalog_max_pages: u32) -> Self {
        Identity {
            vendor_id: consts::PCI_VENDOR_ID as u16,
            device_id: consts::PCI_DEVICE_ID as u16,
            rtl_version: consts::RTL_VERSION,
            features: vfpga_regs::regs::FEATURES.reset_value(),
            devmem_pages,
            dmalog_max_pages,
            state_layout: consts::STATE_LAYOUT_VERSION as u16,
            state_words: state::WORDS as u16,
        }
    }

    /// Device memory size in bytes.
    pub fn devmem_bytes(&self) -> u64 {
        u64::from(self.devmem_pages) * u64::from(consts::PAGE_SIZE)
    }

    /// RTL major version.
    pub fn rtl_major(&self) -> u32 {
        fields::rtl_version::MAJOR.get(self.rtl_version)
    }

    /// RTL minor version.
    pub fn rtl_minor(&self) -> u32 {
        fields::rtl_version::MINOR.get(self.rtl_version)
    }
}

/// A saved device: identity and architectural state. Plain data; serde-able.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceState {
    /// `DEVICE_STATE_VERSION` of the code that made it.
    pub version: u32,
    /// The device it was saved from.
    pub identity: Identity,
    /// The state words.
    pub arch: ArchState,
}

impl DeviceState {
    /// Wraps state words saved from a device with `identity`.
    pub fn new(identity: Identity, arch: ArchState) -> Self {
        DeviceState {
            version: DEVICE_STATE_VERSION,
            identity,
            arch,
        }
    }
}

/// A state rejected by validation: which rule, and the first offending word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("state rejected: {} in word {word} ({})", code.name(), word_name(*word))]
pub struct StateViolation {
    /// The datasheet's `StateErr` code.
    pub code: StateErr,
    /// Index of the offending state word.
    pub word: usize,
}

/// Name of state word `i` (or "?" out of range).
pub fn word_name(i: usize) -> &'static str {
    vfpga_regs::STATE_LAYOUT
        .get(i)
        .map(|d| d.name)
        .unwrap_or("?")
}

fn ring_size_ok(s: u32) -> bool {
    s == 0 || (s.is_power_of_two() && (2..=consts::MAX_RING_ENTRIES).contains(&s))
}

/// Checks `arch` against the datasheet's validation rules (§9.3), in their
/// order, for a device with `devmem_bytes` of device memory.
pub fn validate_arch(arch: &ArchState, devmem_bytes: u64) -> Result<(), StateViolation> {
    let fail = |code, word| Err(StateViolation { code, word });
    let w = arch.to_words();
    if arch.header != consts::STATE_HEADER {
        return fail(StateErr::Header, state::HEADER);
    }
    if let Some((i, _)) = arch.first_reserved_violation() {
        return fail(StateErr::ReservedBits, i);
    }
    for (i, size) in [
        (state::SQ_SIZE, arch.sq_size),
        (state::CQ_SIZE, arch.cq_size),
    ] {
        if !ring_size_ok(size) {
            return fail(StateErr::RingSize, i);
        }
    }
    let sq = arch.sq_size.max(1);
    let cq = arch.cq_size.max(1);
    for (i, v, lim) in [
        (state::SQ_HEAD, arch.sq_head, sq),
        (state::SQ_TAIL, arch.sq_tail, sq),
        (state::CQ_HEAD, arch.cq_head, cq),
        (state::CQ_TAIL, fields::cq_tail::INDEX.get(arch.cq_tail), cq),
    ] {
        if v >= lim {
            return fail(StateErr::RingIndex, i);
        }
    }
    if CplStatus::from_raw(arch.err_code).is_none() {
        return fail(StateErr::Value, state::ERR_CODE);
    }
    let valid = arch.cur_flags & 1 != 0;
    if !valid {
        if let Some(i) = (state::CUR_FLAGS..=state::CUR_SLOT).find(|&i| w[i] != 0) {
            return fail(StateErr::Inflight, i);
        }
        return Ok(());
    }
    let status = (arch.cur_flags >> 16) & 0xff;
    if status > CplStatus::DmaWriteFault.raw() {
        return fail(StateErr::Inflight, state::CUR_FLAGS);
    }
    if arch.cur_done > arch.cur_len {
        return fail(StateErr::Inflight, state::CUR_DONE);
    }
    if arch.cur_slot >= sq {
        return fail(StateErr::Inflight, state::CUR_SLOT);
    }
    if status != 0 {
        return Ok(());
    }
    let ctl = arch.cur_ctl;
    let op = Opcode::from_raw(vfpga_regs::desc::ctl::OPCODE.get(ctl));
    let Some(op) = op else {
        return fail(StateErr::Inflight, state::CUR_CTL);
    };
    if vfpga_regs::desc::ctl::RSVD.get(ctl) != 0 {
        return fail(StateErr::Inflight, state::CUR_CTL);
    }
    if arch.cur_len > consts::MAX_DESC_LEN {
        return fail(StateErr::Inflight, state::CUR_LEN);
    }
    let src = u64::from(arch.cur_src_lo) | (u64::from(arch.cur_src_hi) << 32);
    let dst = u64::from(arch.cur_dst_lo) | (u64::from(arch.cur_dst_hi) << 32);
    let len = u64::from(arch.cur_len);
    let beyond = |a: u64| a.checked_add(len).is_none_or(|e| e > devmem_bytes);
    match op {
        Opcode::CopyH2d | Opcode::FillDev if beyond(dst) => {
            return fail(StateErr::Inflight, state::CUR_DST_LO);
        }
        Opcode::CopyD2h if beyond(src) => return fail(StateErr::Inflight, state::CUR_SRC_LO),
        _ => {}
    }
    if op != Opcode::Crc32c && arch.cur_crc != 0 {
        return fail(StateErr::Inflight, state::CUR_CRC);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_state_is_valid() {
        assert_eq!(validate_arch(&ArchState::RESET, 4096), Ok(()));
    }

    #[test]
    fn rules_report_the_datasheet_word() {
        let mut a = ArchState::RESET;
        a.header ^= 1;
        assert_eq!(validate_arch(&a, 4096).unwrap_err().word, state::HEADER);
        let mut a = ArchState::RESET;
        a.sq_base_lo = 0x11;
        assert_eq!(
            validate_arch(&a, 4096).unwrap_err(),
            StateViolation {
                code: StateErr::ReservedBits,
                word: state::SQ_BASE_LO
            }
        );
        let mut a = ArchState::RESET;
        a.sq_size = 6;
        assert_eq!(
            validate_arch(&a, 4096).unwrap_err().code,
            StateErr::RingSize
        );
        let mut a = ArchState::RESET;
        a.sq_size = 8;
        a.sq_tail = 8;
        assert_eq!(validate_arch(&a, 4096).unwrap_err().word, state::SQ_TAIL);
        let mut a = ArchState::RESET;
        a.err_code = 9;
        assert_eq!(validate_arch(&a, 4096).unwrap_err().code, StateErr::Value);
        let mut a = ArchState::RESET;
        a.cur_tag = 1;
        assert_eq!(validate_arch(&a, 4096).unwrap_err().word, state::CUR_TAG);
    }

    #[test]
    fn inflight_devmem_range_is_checked_without_overflow() {
        let mut a = ArchState::RESET;
        a.sq_size = 4;
        a.cur_flags = 1;
        a.cur_ctl = Opcode::CopyH2d.raw();
        a.cur_len = 16;
        a.cur_dst_lo = 4096 - 15;
        assert_eq!(validate_arch(&a, 4096).unwrap_err().word, state::CUR_DST_LO);
        a.cur_dst_lo = 4096 - 16;
        assert_eq!(validate_arch(&a, 4096), Ok(()));
        a.cur_dst_hi = u32::MAX;
        assert!(validate_arch(&a, 4096).is_err());
    }
}
