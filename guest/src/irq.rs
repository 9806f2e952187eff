//! Interrupt counts per MSI-X vector, as the `vfpga_irq` guest module shows
//! them in the device's sysfs attribute `irq_counts`.

use std::path::PathBuf;

/// Source of per-vector interrupt counts.
pub trait Irqs {
    /// The number of interrupts received so far, one entry per vector.
    fn counts(&self) -> Result<Vec<u64>, String>;
}

/// The `irq_counts` attribute of a PCI device bound to `vfpga_irq`.
#[derive(Debug, Clone)]
pub struct SysfsIrqs {
    /// Path of the attribute.
    pub path: PathBuf,
}

impl Irqs for SysfsIrqs {
    fn counts(&self) -> Result<Vec<u64>, String> {
        let s = std::fs::read_to_string(&self.path)
            .map_err(|e| format!("read {}: {e}", self.path.display()))?;
        parse_counts(&s)
    }
}

/// Parses `"3 1\n"` into `[3, 1]`.
pub fn parse_counts(s: &str) -> Result<Vec<u64>, String> {
    let v = s
        .split_whitespace()
        .map(|w| {
            w.parse::<u64>()
                .map_err(|e| format!("irq_counts {s:?}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if v.is_empty() {
        return Err("irq_counts is empty (no MSI-X vectors)".into());
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_module_format() {
        assert_eq!(parse_counts("3 1\n"), Ok(vec![3, 1]));
        assert_eq!(parse_counts("0\n"), Ok(vec![0]));
        assert!(parse_counts("\n").is_err());
        assert!(parse_counts("3 x\n").is_err());
    }
}
