//! PCI enumeration and config-space access through sysfs.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Offset of the command register in PCI config space (PCI Local Bus spec).
pub const PCI_COMMAND: u64 = 0x04;
/// Command register: memory space enable.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command register: bus master enable.
pub const COMMAND_MASTER: u16 = 1 << 2;

/// A PCI function found in sysfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciDev {
    /// Its sysfs directory (`/sys/bus/pci/devices/0000:00:03.0`).
    pub path: PathBuf,
}

impl PciDev {
    /// The bus/device/function name (`0000:00:03.0`).
    pub fn bdf(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Reads a sysfs attribute holding one hexadecimal number (`vendor`, `class`...).
    pub fn hex_attr(&self, name: &str) -> Result<u32, String> {
        let p = self.path.join(name);
        let s = fs::read_to_string(&p).map_err(|e| format!("read {}: {e}", p.display()))?;
        parse_hex(&s).ok_or_else(|| format!("{}: not a hex number: {s:?}", p.display()))
    }

    /// The size of a sysfs resource file (`resource0`), i.e. of the BAR.
    pub fn resource_len(&self, bar: u32) -> Result<u64, String> {
        let p = self.path.join(format!("resource{bar}"));
        fs::metadata(&p)
            .map(|m| m.len())
            .map_err(|e| format!("stat {}: {e}", p.display()))
    }

    /// Opens the config-space file for reading and writing.
    pub fn config(&self) -> Result<Config, String> {
        let p = self.path.join("config");
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .map(|file| Config { file })
            .map_err(|e| format!("open {}: {e}", p.display()))
    }
}

/// Parses `0x1234\n` (sysfs style; the prefix is optional).
pub fn parse_hex(s: &str) -> Option<u32> {
    let t = s.trim();
    let t = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    u32::from_str_radix(t, 16).ok()
}

/// Finds the first function (in name order) under `root` (normally
/// `/sys/bus/pci/devices`) with this vendor and device ID.
pub fn find(root: &Path, vendor: u32, device: u32) -> Result<PciDev, String> {
    let mut names: Vec<PathBuf> = fs::read_dir(root)
        .map_err(|e| format!("read {}: {e}", root.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    names.sort();
    let mut seen = Vec::new();
    for path in names {
        let d = PciDev { path };
        let (Ok(v), Ok(dv)) = (d.hex_attr("vendor"), d.hex_attr("device")) else {
            continue;
        };
        if v == vendor && dv == device {
            return Ok(d);
        }
        seen.push(format!("{} {v:04x}:{dv:04x}", d.bdf()));
    }
    Err(format!(
        "no PCI function {vendor:04x}:{device:04x} (found: {})",
        if seen.is_empty() {
            "none".to_string()
        } else {
            seen.join(", ")
        }
    ))
}

/// The sysfs `config` file of a function.
#[derive(Debug)]
pub struct Config {
    file: File,
}

impl Config {
    /// Reads a 16-bit config register.
    pub fn read16(&self, off: u64) -> Result<u16, String> {
        let mut b = [0u8; 2];
        self.file
            .read_exact_at(&mut b, off)
            .map_err(|e| format!("config read at {off:#x}: {e}"))?;
        Ok(u16::from_le_bytes(b))
    }

    /// Writes a 16-bit config register.
    pub fn write16(&self, off: u64, v: u16) -> Result<(), String> {
        self.file
            .write_all_at(&v.to_le_bytes(), off)
            .map_err(|e| format!("config write at {off:#x}: {e}"))
    }

    /// Sets memory-space and bus-master enable; returns the command register
    /// as read back afterwards.
    pub fn enable_bus_master(&self) -> Result<u16, String> {
        let cmd = self.read16(PCI_COMMAND)?;
        self.write16(PCI_COMMAND, cmd | COMMAND_MEMORY | COMMAND_MASTER)?;
        let after = self.read16(PCI_COMMAND)?;
        if after & (COMMAND_MEMORY | COMMAND_MASTER) != COMMAND_MEMORY | COMMAND_MASTER {
            return Err(format!(
                "command register reads {after:#06x} after enabling memory and bus master"
            ));
        }
        Ok(after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_fn(root: &Path, bdf: &str, vendor: &str, device: &str) -> PathBuf {
        let d = root.join(bdf);
        fs::create_dir_all(&d).expect("mkdir");
        fs::write(d.join("vendor"), vendor).expect("write");
        fs::write(d.join("device"), device).expect("write");
        d
    }

    #[test]
    fn parses_sysfs_hex() {
        assert_eq!(parse_hex("0x1234\n"), Some(0x1234));
        assert_eq!(parse_hex("0x120000\n"), Some(0x120000));
        assert_eq!(parse_hex("ff"), Some(0xff));
        assert_eq!(parse_hex("0xzz"), None);
        assert_eq!(parse_hex(""), None);
    }

    #[test]
    fn finds_the_function_by_ids_and_says_what_it_saw_otherwise() {
        let t = tempfile::tempdir().expect("tempdir");
        fake_fn(t.path(), "0000:00:01.0", "0x8086\n", "0x29c0\n");
        let want = fake_fn(t.path(), "0000:00:03.0", "0x1234\n", "0x4650\n");
        fake_fn(t.path(), "0000:00:04.0", "0x1234\n", "0x1111\n");
        let d = find(t.path(), 0x1234, 0x4650).expect("found");
        assert_eq!(d.path, want);
        assert_eq!(d.bdf(), "0000:00:03.0");
        let e = find(t.path(), 0x1234, 0x9999).expect_err("absent");
        assert!(e.contains("no PCI function 1234:9999"), "{e}");
        assert!(e.contains("0000:00:01.0 8086:29c0"), "{e}");
    }

    #[test]
    fn bus_master_enable_sets_both_bits_and_keeps_the_others() {
        let t = tempfile::tempdir().expect("tempdir");
        let d = fake_fn(t.path(), "0000:00:03.0", "0x1234", "0x4650");
        let mut cfg = vec![0u8; 64];
        cfg[PCI_COMMAND as usize] = 0x40; // parity error response, say
        fs::write(d.join("config"), &cfg).expect("write");
        let dev = PciDev { path: d.clone() };
        let c = dev.config().expect("open");
        assert_eq!(c.enable_bus_master().expect("enable"), 0x46);
        let back = fs::read(d.join("config")).expect("read");
        assert_eq!(u16::from_le_bytes([back[4], back[5]]), 0x46);
    }
}
