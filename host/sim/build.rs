//! Verilates `rtl/` and compiles the model, the Verilator runtime and the C
//! ABI shim (`csrc/shim.cpp`) with the `cc` crate.
//!
//! Without `verilator` on PATH (or in `$VERILATOR`) the crate still builds:
//! it sets `cfg(vfpga_sim_unavailable)` and `SimDevice::new` returns an error
//! that says what to install. Any other failure (the RTL does not verilate,
//! the C++ does not compile) fails the build.

use std::path::{Path, PathBuf};
use std::process::Command;

const RTL_FILES: &[&str] = &["vfpga_top.v", "vfpga_bitmap.v"];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(vfpga_sim_unavailable)");
    println!("cargo::rerun-if-env-changed=VERILATOR");
    println!("cargo::rerun-if-env-changed=VFPGA_SIM_DISABLE");
    // VFPGA_RTL_DIR: verilate another copy of rtl/ (scripts/mutate builds
    // each mutant this way).
    println!("cargo::rerun-if-env-changed=VFPGA_RTL_DIR");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let rtl =
        std::env::var_os("VFPGA_RTL_DIR").map_or_else(|| manifest.join("../../rtl"), PathBuf::from);
    for f in RTL_FILES {
        println!("cargo::rerun-if-changed={}", rtl.join(f).display());
    }
    println!(
        "cargo::rerun-if-changed={}",
        rtl.join("generated/vfpga_regs.vh").display()
    );
    println!("cargo::rerun-if-changed=csrc/shim.cpp");

    let verilator = std::env::var("VERILATOR").unwrap_or_else(|_| "verilator".into());
    let root = if std::env::var_os("VFPGA_SIM_DISABLE").is_some() {
        None
    } else {
        verilator_root(&verilator)
    };
    let Some(root) = root else {
        println!("cargo::rustc-cfg=vfpga_sim_unavailable");
        // Rebuild once Verilator appears (a missing file always counts as changed).
        println!("cargo::rerun-if-changed=/usr/bin/verilator");
        println!(
            "cargo::warning=verilator not found: vfpga-sim is built without the RTL \
             (apt-get install verilator, or run scripts/setup)"
        );
        return;
    };

    // VFPGA_SIM_DYLIB_DIR: link the model from `libvfpga_sim_model.so` in
    // that directory instead of building it here (scripts/mutate builds one
    // harness this way, then swaps the library under it for each mutant; the
    // library is found at run time through LD_LIBRARY_PATH).
    println!("cargo::rerun-if-env-changed=VFPGA_SIM_DYLIB_DIR");
    if let Some(dir) = std::env::var_os("VFPGA_SIM_DYLIB_DIR") {
        let dir = PathBuf::from(dir);
        println!("cargo::rustc-link-search=native={}", dir.display());
        println!("cargo::rustc-link-lib=dylib=vfpga_sim_model");
        println!("cargo::rustc-link-lib=pthread");
        println!("cargo::rustc-link-lib=atomic");
        return;
    }

    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let mdir = out.join("obj_dir");
    let _ = std::fs::remove_dir_all(&mdir);
    let mut cmd = Command::new(&verilator);
    cmd.args([
        "--cc",
        "--top-module",
        "vfpga_top",
        "--prefix",
        "Vvfpga_top",
    ])
    .arg("--Mdir")
    .arg(&mdir)
    .args([
        "-O3",
        "--x-assign",
        "fast",
        // Initial values come from the runtime's random reset (the shim
        // seeds it per instance), so a register the reset forgets is not
        // hidden behind zeros.
        "--x-initial",
        "unique",
        "--noassert",
    ])
    .args(["--trace"])
    .arg(format!("-I{}", rtl.display()));
    for f in RTL_FILES {
        cmd.arg(rtl.join(f));
    }
    let st = cmd.status().expect("running verilator");
    assert!(st.success(), "verilator failed on rtl/ ({st})");

    let inc = root.join("include");
    let mut b = cc::Build::new();
    b.cpp(true)
        .std("gnu++17")
        .opt_level(2)
        .pic(false)
        .debug(false)
        .warnings(false)
        .include(&mdir)
        .include(&inc)
        .include(inc.join("vltstd"))
        .define("VM_TRACE", "1")
        .define("VM_COVERAGE", "0")
        .define("VM_SC", "0")
        .flag_if_supported("-faligned-new")
        .flag_if_supported("-fcf-protection=none")
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-unused-variable")
        .flag_if_supported("-Wno-shadow");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&mdir)
        .expect("reading obj_dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cpp"))
        .collect();
    files.sort();
    for f in &files {
        b.file(f);
    }
    for f in [
        "verilated.cpp",
        "verilated_threads.cpp",
        "verilated_vcd_c.cpp",
    ] {
        b.file(inc.join(f));
    }
    b.file(manifest.join("csrc/shim.cpp"));
    b.compile("vfpga_sim_model");
    println!("cargo::rustc-link-lib=pthread");
    println!("cargo::rustc-link-lib=atomic");
}

fn verilator_root(verilator: &str) -> Option<PathBuf> {
    let out = Command::new(verilator)
        .args(["--getenv", "VERILATOR_ROOT"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?;
    let p = PathBuf::from(s.trim());
    Path::new(&p)
        .join("include/verilated.h")
        .exists()
        .then_some(p)
}
