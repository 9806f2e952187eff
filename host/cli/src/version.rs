//! What this build speaks: the versions `vfpga --version` prints, `vfpga serve`
//! logs at start and `vfpga doctor` shows beside what the config expects of a
//! board. Every number comes from the crate that owns it; none is typed here.

use std::sync::LazyLock;

use vfpga_migration::stream::{FORMAT_MAJOR, FORMAT_MINOR};
use vfpga_regs::{REGMAP_SHA256, consts};
use vfpga_vfio_user::wire::{VERSION_MAJOR, VERSION_MINOR};

/// `0x00MMmmpp` as `MM.mm.pp` (the RTL_VERSION register's layout).
pub fn rtl_version_text(v: u32) -> String {
    format!("{}.{}.{}", (v >> 16) & 0xff, (v >> 8) & 0xff, v & 0xff)
}

/// The RTL version this build expects, as `MM.mm.pp`.
pub fn rtl() -> String {
    rtl_version_text(consts::RTL_VERSION)
}

/// The migration stream format, `major.minor`.
pub fn stream_format() -> String {
    format!("{FORMAT_MAJOR}.{FORMAT_MINOR}")
}

/// The vfio-user protocol version spoken, `major.minor`.
pub fn vfio_user() -> String {
    format!("{VERSION_MAJOR}.{VERSION_MINOR}")
}

/// The state-word layout version.
pub fn state_layout() -> u32 {
    consts::STATE_LAYOUT_VERSION
}

/// The register map's SHA-256 (of `bitstream-docs/regmap.yaml`).
pub fn regmap_sha256() -> &'static str {
    REGMAP_SHA256
}

/// `name: value` lines, in the order `--version` prints them.
pub fn lines() -> Vec<(&'static str, String)> {
    vec![
        ("rtl", rtl()),
        ("regmap-sha256", regmap_sha256().to_string()),
        ("stream-format", stream_format()),
        ("state-layout", state_layout().to_string()),
        ("vfio-user", vfio_user()),
    ]
}

/// The same as a JSON object (numbers as numbers), for JSON reports.
pub fn json() -> serde_json::Value {
    serde_json::json!({
        "vfpga": env!("CARGO_PKG_VERSION"),
        "rtl": rtl(),
        "regmap_sha256": regmap_sha256(),
        "stream_format": stream_format(),
        "state_layout": state_layout(),
        "vfio_user": vfio_user(),
    })
}

/// The text after `vfpga ` in `vfpga --version`.
pub static LONG: LazyLock<String> = LazyLock::new(|| {
    let mut s = env!("CARGO_PKG_VERSION").to_string();
    for (k, v) in lines() {
        s.push_str(&format!("\n{k:<14} {v}"));
    }
    s
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtl_version_is_major_minor_patch() {
        assert_eq!(rtl_version_text(0x0001_0203), "1.2.3");
        assert_eq!(rtl_version_text(consts::RTL_VERSION), rtl());
    }
}
