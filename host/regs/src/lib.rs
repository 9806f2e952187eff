//! The vfpga register map, generated from `bitstream-docs/regmap.yaml`.
//!
//! Everything in [`consts`], [`offsets`], [`regs`], [`fields`], the flag types,
//! the enums, the in-memory structure layouts ([`desc`], [`cpl`]) and the
//! state layout ([`state`], [`STATE_LAYOUT`], [`ArchState`]) comes from the
//! generated file; this file only holds the types the generated code uses.
//! Never write an offset by hand: change `regmap.yaml` and run `scripts/regen`.

#![forbid(unsafe_code)]

#[rustfmt::skip]
#[allow(clippy::all, clippy::unreadable_literal)]
mod generated;
pub use generated::*;

/// How software may access a register or field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// Read-only; writes are ignored.
    Ro,
    /// Read/write.
    Rw,
    /// Write-only pulse; reads as 0.
    Wo,
    /// Write 1 to clear.
    W1c,
    /// A read returns the value and clears the returned bits.
    Rc,
    /// Any write clears the register.
    Wc,
}

/// Reset value of a register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reset {
    /// A fixed value.
    Value(u32),
    /// Set per instance by a build parameter (for example the device-memory size).
    Param,
}

/// A bit field inside a 32-bit register or word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Field {
    /// Name in the datasheet.
    pub name: &'static str,
    /// Lowest bit.
    pub lsb: u32,
    /// Width in bits (1..=32).
    pub width: u32,
    /// Access type of the field.
    pub access: Access,
}

impl Field {
    /// The field's bits in place.
    pub const fn mask(self) -> u32 {
        if self.width >= 32 {
            u32::MAX
        } else {
            ((1u32 << self.width) - 1) << self.lsb
        }
    }

    /// Extracts the field from a word.
    pub const fn get(self, word: u32) -> u32 {
        (word & self.mask()) >> self.lsb
    }

    /// Returns `word` with the field replaced by `value` (truncated to the width).
    pub const fn set(self, word: u32, value: u32) -> u32 {
        (word & !self.mask()) | ((value << self.lsb) & self.mask())
    }
}

/// A BAR0 register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RegDef {
    /// Name in the datasheet.
    pub name: &'static str,
    /// Byte offset in BAR0.
    pub offset: u32,
    /// Access type of the register as a whole.
    pub access: Access,
    /// Value after reset.
    pub reset: Reset,
    /// Fields, empty for a plain 32-bit value.
    pub fields: &'static [Field],
}

impl RegDef {
    /// The reset value, or 0 for an instance parameter.
    pub const fn reset_value(&self) -> u32 {
        match self.reset {
            Reset::Value(v) => v,
            Reset::Param => 0,
        }
    }
}

/// One architectural state word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StateWordDef {
    /// Name in the datasheet.
    pub name: &'static str,
    /// Offset of the register whose value the word holds, if any.
    pub reg: Option<u32>,
    /// Bits that may be set; the others are reserved and must be 0.
    pub mask: u32,
    /// The value depends on timing (excluded from cross-implementation compares).
    pub timing: bool,
    /// Value after reset.
    pub reset: u32,
}

/// Looks a register up by its byte offset.
pub fn register_at(offset: u32) -> Option<&'static RegDef> {
    REGISTERS.iter().find(|r| r.offset == offset)
}

impl ArchState {
    /// Index and name of the first word with a reserved bit set, if any.
    pub fn first_reserved_violation(&self) -> Option<(usize, &'static str)> {
        self.to_words()
            .iter()
            .zip(STATE_LAYOUT.iter())
            .enumerate()
            .find(|(_, (w, d))| **w & !d.mask != 0)
            .map(|(i, (_, d))| (i, d.name))
    }
}

impl Default for ArchState {
    fn default() -> Self {
        ArchState::RESET
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_unique_aligned_and_inside_the_register_page() {
        let mut seen = std::collections::BTreeSet::new();
        for r in REGISTERS {
            assert_eq!(r.offset % 4, 0, "{}", r.name);
            assert!(r.offset < consts::MSIX_TABLE_OFFSET, "{}", r.name);
            assert!(seen.insert(r.offset), "{} reuses an offset", r.name);
        }
    }

    #[test]
    fn state_words_round_trip_and_reset_is_valid() {
        let mut w = [0u32; state::WORDS];
        for (i, x) in w.iter_mut().enumerate() {
            *x = (i as u32).wrapping_mul(0x9e37_79b9);
        }
        assert_eq!(ArchState::from_words(&w).to_words(), w);
        assert_eq!(ArchState::RESET.header, consts::STATE_HEADER);
        assert_eq!(ArchState::RESET.first_reserved_violation(), None);
        assert_eq!(consts::STATE_BYTES as usize, state::WORDS * 4);
    }

    #[test]
    fn derived_constants_agree() {
        assert_eq!(
            consts::PCI_ID_VALUE,
            (consts::PCI_DEVICE_ID << 16) | consts::PCI_VENDOR_ID
        );
        assert_eq!(
            fields::pci_id::VENDOR.get(consts::PCI_ID_VALUE),
            consts::PCI_VENDOR_ID
        );
        assert_eq!(
            fields::state_info::WORDS.get(consts::STATE_INFO_VALUE) as usize,
            state::WORDS
        );
    }

    #[test]
    fn enums_round_trip() {
        for op in Opcode::ALL {
            assert_eq!(Opcode::from_raw(op.raw()), Some(op));
        }
        assert_eq!(Opcode::from_raw(0xff), None);
        assert_eq!(CplStatus::Ok.raw(), 0);
    }

    #[test]
    fn field_helpers() {
        let f = fields::cq_tail::PHASE;
        assert_eq!(f.mask(), 0x8000_0000);
        assert_eq!(f.set(0, 1), 0x8000_0000);
        assert_eq!(f.get(0x8000_0005), 1);
        assert_eq!(fields::cq_tail::INDEX.get(0x8000_0005), 5);
    }
}
