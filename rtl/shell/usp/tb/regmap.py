"""Register offsets and constants for the shell testbench, parsed from the
generated Verilog include (rtl/generated/vfpga_regs.vh, itself generated from
bitstream-docs/regmap.yaml). No offset is written by hand here."""

import pathlib
import re
import struct

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


def descriptor(op, src=0, dst=0, length=0, pattern=0, tag=0, irq=False):
    """One submission-ring descriptor (datasheet layout, from the map)."""
    w = [0] * (const("DESC_BYTES") // 4)
    w[V["DESC_CTL_WORD"]] = (op << V["DESC_CTL_OPCODE_LSB"]) | (int(irq) << V["DESC_CTL_IRQ_LSB"])
    w[V["DESC_TAG_WORD"]] = tag
    w[V["DESC_SRC_LO_WORD"]] = src & 0xFFFFFFFF
    w[V["DESC_SRC_HI_WORD"]] = src >> 32
    w[V["DESC_DST_LO_WORD"]] = dst & 0xFFFFFFFF
    w[V["DESC_DST_HI_WORD"]] = dst >> 32
    w[V["DESC_LEN_WORD"]] = length
    w[V["DESC_PATTERN_WORD"]] = pattern
    return struct.pack("<%dI" % len(w), *w)
