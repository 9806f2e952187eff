"""Register offsets and constants for the shell testbench, parsed from the
generated Verilog include (rtl/generated/vfpga_regs.vh, itself generated from
bitstream-docs/regmap.yaml). No offset is written by hand here."""

import pathlib
import re

VH = pathlib.Path(__file__).resolve().parents[3] / "generated" / "vfpga_regs.vh"

_DEF = re.compile(r"^`define VFPGA_(\w+)\s+(?:(\d+)'([hdb]))?([0-9a-fA-F_]+)")


def _load():
    out = {}
    for line in VH.read_text().splitlines():
        m = _DEF.match(line)
        if not m:
            continue
        name, _width, base, digits = m.groups()
        radix = {"h": 16, "d": 10, "b": 2, None: 10}[base]
        out[name] = int(digits.replace("_", ""), radix)
    return out


V = _load()


def reg(name):
    """Byte offset of BAR0 register NAME."""
    return V["REG_" + name]


def const(name):
    return V[name]


def field(reg_name, field_name):
    """(lsb, width) of a register field."""
    return V[f"{reg_name}_{field_name}_LSB"], V[f"{reg_name}_{field_name}_WIDTH"]


def bit(reg_name, field_name):
    lsb, _ = field(reg_name, field_name)
    return 1 << lsb


def opcode(name):
    return V["OPCODE_" + name]


def status(name):
    return V["CPLSTATUS_" + name]


def state_index(name):
    return V["ST_" + name]
