//! `vfpga doctor`: prints the host findings of [`vfpga_hw::doctor`] and what
//! this build speaks beside what the config says the board reports.
//!
//! Exit status: 0 when every finding is ok, a warning or skipped; 1 when at
//! least one failed; 2 for a usage or config error (decided before this runs).

use vfpga_config::Config;
use vfpga_hw::doctor::{DoctorInput, Host, run};

use crate::version;

/// Version of the JSON document `vfpga doctor --json` prints.
pub const SCHEMA_VERSION: u32 = 1;

/// The board's RTL version as the config expects it (`board.expected.rtl_version`).
fn board_rtl(cfg: Option<&Config>) -> Option<u32> {
    cfg.and_then(|c| c.board.as_ref())
        .map(|b| b.expected.rtl_version)
}

/// Runs the checks on this machine for `cfg` and prints them, as text or
/// JSON. Returns the exit status.
pub fn doctor(cfg: Option<&Config>, json: bool) -> u8 {
    let report = run(&Host::system(), &DoctorInput::from_config(cfg));
    let board = board_rtl(cfg);
    let rtl_matches = board.map(|b| b == vfpga_regs::consts::RTL_VERSION);
    if json {
        let mut v = report.to_json();
        if let Some(o) = v.as_object_mut() {
            o.insert("schema_version".into(), SCHEMA_VERSION.into());
            o.insert("vfpga".into(), version::json());
            o.insert(
                "board".into(),
                serde_json::json!({
                    "expected_rtl": board.map(version::rtl_version_text),
                    "rtl_matches": rtl_matches,
                }),
            );
        }
        println!("{v:#}");
    } else {
        print!("{report}");
        println!("\nthis vfpga speaks:");
        for (k, v) in version::lines() {
            let beside = match (k, board) {
                ("rtl", Some(b)) if Some(true) == rtl_matches => {
                    format!("   board (config): {} ok", version::rtl_version_text(b))
                }
                ("rtl", Some(b)) => format!(
                    "   board (config): {} MISMATCH: this build expects {v}",
                    version::rtl_version_text(b)
                ),
                ("rtl", None) => "   board: none configured (--config with a board section)".into(),
                _ => String::new(),
            };
            println!("  {k:<14} {v}{beside}");
        }
        let fails = report
            .findings
            .iter()
            .filter(|f| f.status == vfpga_hw::doctor::Status::Fail)
            .count();
        if fails == 0 {
            println!("vfpga doctor: no failures");
        } else {
            println!("vfpga doctor: {fails} failure(s)");
        }
    }
    report.exit_status()
}
