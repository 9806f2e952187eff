"""Builds the UltraScale+ shell for Icarus and runs the cocotb suite.

    run.py [--testcase NAME[,NAME...]] [--define NAME]... [--stop-on-fail]
    run.py --print-params      # the two builds' parameters, JSON, run nothing

Runs two builds: the default shell (WRITE_CONFIRM=1) with every test, and a
WRITE_CONFIRM=0 build with the write-fault tests that differ. Prints the
summary and the run time; exits non-zero on any failure. --stop-on-fail
skips the second build when the first already failed (scripts/mutate
--target shell: a killed mutant needs no more).

Environment: SHELL_BUILD, the output directory (default target/shell-sim);
SHELL_RTL_DIR, the RTL tree to simulate instead of the repository's rtl/
(laid out like it: shell/usp/*.v, vfpga_top.v, vfpga_bitmap.v,
generated/vfpga_regs.vh; scripts/mutate --target shell points it at a
mutant's copy). The tests themselves always come from this directory.
"""

import argparse
import json
import os
import pathlib
import sys
import time
import xml.etree.ElementTree as ET

from cocotb_tools.runner import get_runner

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[3]
RTL = pathlib.Path(os.environ.get("SHELL_RTL_DIR") or REPO / "rtl").resolve()
SOURCES = [
    RTL / "shell/usp/vfpga_usp_shell.v",
    RTL / "shell/usp/vfpga_usp_cq.v",
    RTL / "shell/usp/vfpga_usp_rq.v",
    RTL / "shell/usp/vfpga_usp_msix.v",
    RTL / "shell/usp/vfpga_usp_devmem.v",
    RTL / "vfpga_top.v",
    RTL / "vfpga_bitmap.v",
]


def regs():
    sys.path.insert(0, str(HERE))
    import regmap
    return regmap


def params(write_confirm):
    rm = regs()
    # Non-default IDs: the suite checks they reach config space and PCI_ID.
    return {
        "DEVMEM_PAGES": 16,
        "DMALOG_PAGES_MAX": 64,
        "WRITE_CONFIRM": write_confirm,
        "CPL_TIMEOUT": 2000,
        "VENDOR_ID": rm.const("PCI_VENDOR_ID"),
        "DEVICE_ID": rm.const("PCI_DEVICE_ID") + 0x10,
        "SUBSYS_VENDOR_ID": 0x1AF4,
        "SUBSYS_ID": 0x0B0B,
    }


def run(name, p, testcases, defines, out):
    runner = get_runner("icarus")
    build_dir = out / name
    log = build_dir / "sim.log"
    runner.build(
        log_file=build_dir / "build.log",
        sources=SOURCES,
        includes=[RTL],
        hdl_toplevel="vfpga_usp_shell",
        parameters=p,
        defines={d: 1 for d in defines},
        build_dir=build_dir,
        always=True,
        timescale=("1ns", "1ps"),
    )
    env = {"SHELL_PARAMS": json.dumps(p), "SHELL_OUT": str(out), "PYTHONPATH": str(HERE)}
    xml = runner.test(
        test_module="test_usp_shell",
        hdl_toplevel="vfpga_usp_shell",
        build_dir=build_dir,
        test_dir=HERE,
        testcase=testcases,
        extra_env=env,
        results_xml=str(build_dir / "results.xml"),
        timescale=("1ns", "1ps"),
        log_file=log,
    )
    root = ET.parse(xml).getroot()
    # The simulator's output goes to sim.log; show the summary table and
    # every failure's traceback here.
    lines = log.read_text(errors="replace").splitlines()
    for i, line in enumerate(lines):
        if " failed" in line and "cocotb.regression" in line:
            print("\n".join(lines[i:i + 30]))
    for line in lines:
        if line.strip().startswith("**"):
            print(line.strip())
    print("%s: full simulator log in %s" % (name, log))
    passed, failed = [], []
    for tc in root.iter("testcase"):
        if tc.find("skipped") is not None:
            continue
        (failed if tc.find("failure") is not None or tc.find("error") is not None else passed).append(tc.get("name"))
    return passed, failed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--testcase", default=None)
    ap.add_argument("--define", action="append", default=[])
    ap.add_argument("--only", choices=["confirm", "noconfirm"], default=None)
    ap.add_argument("--stop-on-fail", action="store_true")
    ap.add_argument("--print-params", action="store_true")
    a = ap.parse_args()
    if a.print_params:
        print(json.dumps({"confirm": params(1), "noconfirm": params(0)}))
        return
    out = pathlib.Path(os.environ.get("SHELL_BUILD", REPO / "target" / "shell-sim")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    tcs = a.testcase.split(",") if a.testcase else None
    allp, allf = [], []
    if a.only in (None, "confirm"):
        p, f = run("confirm", params(1), tcs, a.define, out)
        allp += p
        allf += f
    if a.only in (None, "noconfirm") and not (a.stop_on_fail and allf):
        p, f = run("noconfirm", params(0), tcs or ["test_write_fault_noconfirm", "test_write_cost"], a.define, out)
        allp += ["noconfirm:" + x for x in p]
        allf += ["noconfirm:" + x for x in f]
    dt = time.time() - t0
    print("shell: cocotb %d passed, %d failed (%s) in %.0f s" % (len(allp), len(allf), ", ".join(allf) or "none", dt))
    sys.exit(1 if allf or not allp else 0)


if __name__ == "__main__":
    main()
