"""The simulated board: builds the UltraScale+ shell + core for Icarus (cached
per parameter set) and runs the cocotb module board_server, which connects to
the UNIX socket PATH (the client listens there) and serves the protocol of
board_proto.py until BYE or EOF.

    .venv/bin/python rtl/shell/usp/tb/board.py --socket PATH [--devmem-pages N]
        [--dmalog-pages M] [--write-confirm 0|1] [--build-dir DIR] [--wave]
    .venv/bin/python rtl/shell/usp/tb/board.py --self-test [...]

Quiet: one line on stderr saying where the simulator's log is, nothing else
unless something fails (then one line on stderr, the last one). Exits 2 when
a prerequisite is missing, otherwise with the simulation's status (0 = the
server ended cleanly)."""

import argparse
import fcntl
import importlib.util
import json
import logging
import os
import pathlib
import shutil
import signal
import sys
import xml.etree.ElementTree as ET

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[3]
PREFIX = "simulated board: "


def die(msg, code=2):
    sys.stderr.write(PREFIX + msg + "\n")
    sys.stderr.flush()
    sys.exit(code)


def check_prereqs():
    """One clear line and exit 2 for the first thing missing."""
    if importlib.util.find_spec("cocotb") is None:
        die("cocotb is not installed in this Python (%s) (run scripts/setup)" % sys.executable)
    if importlib.util.find_spec("cocotb_tools") is None:
        die("cocotb_tools (cocotb >= 2) is not installed in this Python (%s) (run scripts/setup)" % sys.executable)
    if importlib.util.find_spec("cocotbext") is None or importlib.util.find_spec("cocotbext.pcie") is None:
        die("cocotbext-pcie missing in this Python (%s) (run scripts/setup)" % sys.executable)
    if importlib.util.find_spec("cocotbext.axi") is None:
        die("cocotbext-axi missing in this Python (%s) (run scripts/setup)" % sys.executable)
    for tool in ("iverilog", "vvp"):
        if shutil.which(tool) is None:
            die("Icarus Verilog (%s) not found (run scripts/setup)" % tool)
    vh = REPO / "rtl" / "generated" / "vfpga_regs.vh"
    if not vh.is_file():
        die("%s missing (run scripts/regen)" % vh)


def params(a):
    sys.path.insert(0, str(HERE))
    import regmap as rm
    vid, did = rm.const("PCI_VENDOR_ID"), rm.const("PCI_DEVICE_ID")
    return {
        "DEVMEM_PAGES": a.devmem_pages,
        "DMALOG_PAGES_MAX": a.dmalog_pages,
        "WRITE_CONFIRM": a.write_confirm,
        "CPL_TIMEOUT": 25_000,                  # 100 us at 250 MHz (the board: 50 ms)
        "VENDOR_ID": vid,
        "DEVICE_ID": did,
        "SUBSYS_VENDOR_ID": vid,
        "SUBSYS_ID": did,
    }


def build(a, p):
    """Builds (only when missing or a source is newer) and returns (runner, build_dir)."""
    from cocotb_tools.runner import get_runner
    from run import RTL, SOURCES
    name = "pages%d-log%d-wc%d%s" % (p["DEVMEM_PAGES"], p["DMALOG_PAGES_MAX"], p["WRITE_CONFIRM"],
                                     "-wave" if a.wave else "")
    bdir = (pathlib.Path(a.build_dir) / name).resolve()
    bdir.mkdir(parents=True, exist_ok=True)
    vvp = bdir / "sim.vvp"
    deps = list(SOURCES) + [RTL / "generated" / "vfpga_regs.vh"]
    stamp = bdir / "params.json"
    runner = get_runner("icarus")
    # Launches may run in parallel (cargo test): one builds, the others wait.
    with open(bdir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stale = (not vvp.is_file() or max(d.stat().st_mtime for d in deps) > vvp.stat().st_mtime
                 or not stamp.is_file() or json.loads(stamp.read_text()) != p)
        try:
            runner.build(
                log_file=bdir / "build.log" if stale else None,     # (nothing to log when up to date)
                sources=SOURCES,
                includes=[RTL],
                hdl_toplevel="vfpga_usp_shell",
                parameters=p,
                build_dir=bdir,
                always=stale,
                waves=a.wave,
                timescale=("1ns", "1ps"),
            )
        except Exception as e:  # noqa: BLE001 - reported as one line
            die("build failed (%s): see %s" % (e, bdir / "build.log"), 1)
        if stale:
            stamp.write_text(json.dumps(p))
    return runner, bdir


def prune_logs(bdir, keep=20):
    """Each launch has its own log (launches may overlap); keep the newest."""
    logs = sorted(bdir.glob("sim-*.log"), key=lambda f: f.stat().st_mtime, reverse=True)
    for f in logs[keep:]:
        for g in (f, f.with_name(f.name.replace("sim-", "results-").replace(".log", ".xml"))):
            try:
                g.unlink()
            except OSError:
                pass


def kill_children(signum, _frame):
    """SIGTERM / SIGHUP to the launcher also stops the simulator it started
    (the runner gives no handle on it: find it by parent pid)."""
    me = str(os.getpid())
    for d in pathlib.Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2:].split()[1] == me:
            try:
                os.kill(int(d.name), signal.SIGTERM)
            except OSError:
                pass
    sys.exit(128 + signum)


def serve(a):
    check_prereqs()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, kill_children)
    logging.disable(logging.CRITICAL)           # the runner's own chatter
    sys.path.insert(0, str(HERE))
    p = params(a)
    if p["DEVMEM_PAGES"] < 1 or p["DEVMEM_PAGES"] & (p["DEVMEM_PAGES"] - 1):
        die("--devmem-pages %d: must be a power of two" % p["DEVMEM_PAGES"])
    if p["DMALOG_PAGES_MAX"] < 32 or p["DMALOG_PAGES_MAX"] % 32:
        die("--dmalog-pages %d: must be a multiple of 32" % p["DMALOG_PAGES_MAX"])
    runner, bdir = build(a, p)
    prune_logs(bdir)
    log = bdir / ("sim-%d.log" % os.getpid())
    sys.stderr.write(PREFIX + "simulator log in %s\n" % log)
    sys.stderr.flush()
    env = {
        "SIMBOARD_PARAMS": json.dumps(p),
        "VFPGA_SIMBOARD_SOCKET": str(pathlib.Path(a.socket).resolve()),
    }
    # The runner lays os.environ over extra_env and sets PYTHONPATH from
    # sys.path (which holds HERE): put ours in os.environ too.
    os.environ.update(env)
    xml = bdir / ("results-%d.xml" % os.getpid())
    try:
        runner.test(
            test_module="board_server",
            hdl_toplevel="vfpga_usp_shell",
            build_dir=bdir,
            test_dir=bdir,
            extra_env=env,
            results_xml=str(xml),
            timescale=("1ns", "1ps"),
            waves=a.wave,
            log_file=log,
        )
    except SystemExit as e:
        die("simulator exited with status %s: see %s" % (e.code, log), e.code if isinstance(e.code, int) and e.code else 1)
    except Exception as e:  # noqa: BLE001
        die("simulator failed (%s): see %s" % (e, log), 1)
    try:
        root = ET.parse(xml).getroot()
    except (OSError, ET.ParseError):
        die("no test result from the simulator: see %s" % log, 1)
    for tc in root.iter("testcase"):
        if tc.find("failure") is not None or tc.find("error") is not None:
            last = ""
            for line in log.read_text(errors="replace").splitlines():
                if "Error" in line or "error" in line:
                    last = line.strip()
            die("the server failed: %s (see %s)" % (last[-200:] or "no message", log), 1)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--socket", help="UNIX socket the client listens on")
    ap.add_argument("--devmem-pages", type=int, default=64)
    ap.add_argument("--dmalog-pages", type=int, default=1024)
    ap.add_argument("--write-confirm", type=int, choices=(0, 1), default=1)
    ap.add_argument("--build-dir", default=str(REPO / "target" / "simboard"))
    ap.add_argument("--wave", action="store_true", help="dump an FST waveform in the build directory")
    ap.add_argument("--self-test", action="store_true", help="run the Python client self-test against a server")
    a = ap.parse_args()
    if a.self_test:
        check_prereqs()
        sys.path.insert(0, str(HERE))
        import board_selftest
        sys.exit(board_selftest.main(a, pathlib.Path(__file__).resolve()))
    if not a.socket:
        die("--socket PATH is required")
    sys.exit(serve(a))


if __name__ == "__main__":
    main()
