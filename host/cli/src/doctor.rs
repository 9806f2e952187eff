//! `vfpga doctor`: prints the host findings of [`vfpga_hw::doctor`].
//!
//! Exit status: 0 when every finding is ok, a warning or skipped; 1 when at
//! least one failed; 2 for a usage or config error (decided before this runs).

use vfpga_config::Config;
use vfpga_hw::doctor::{DoctorInput, Host, run};

/// Runs the checks on this machine for `cfg` and prints them, as text or
/// JSON. Returns the exit status.
pub fn doctor(cfg: Option<&Config>, json: bool) -> u8 {
    let report = run(&Host::system(), &DoctorInput::from_config(cfg));
    if json {
        println!("{:#}", report.to_json());
    } else {
        print!("{report}");
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
