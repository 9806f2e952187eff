//! The schema of `regmap.yaml` and its resolution into a checked model.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

/// A number or the name of a constant.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum NumOrName {
    /// Literal value.
    Num(u64),
    /// Constant name, or `param` for an instance parameter.
    Name(String),
}

/// Top level of regmap.yaml.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegMap {
    pub name: String,
    pub layout_version: u32,
    pub constants: Vec<Constant>,
    pub enums: Vec<EnumDef>,
    pub structs: Vec<StructDef>,
    pub registers: Vec<RegisterDef>,
    pub state: Vec<StateDef>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constant {
    pub name: String,
    pub value: u64,
    pub doc: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnumDef {
    pub name: String,
    pub doc: String,
    pub values: Vec<EnumValue>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnumValue {
    pub name: String,
    pub value: u32,
    pub doc: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StructDef {
    pub name: String,
    pub doc: String,
    pub bytes: u32,
    pub words: Vec<StructWord>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StructWord {
    pub name: String,
    pub word: u32,
    #[serde(default)]
    pub doc: String,
    #[serde(default)]
    pub fields: Vec<FieldDef>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldDef {
    pub name: String,
    pub lsb: u32,
    pub width: u32,
    #[serde(default)]
    pub access: Option<String>,
    #[serde(default)]
    pub doc: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterDef {
    pub name: String,
    pub offset: u32,
    pub access: String,
    pub reset: NumOrName,
    pub doc: String,
    #[serde(default)]
    pub flags: bool,
    #[serde(default)]
    pub fields: Vec<FieldDef>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateDef {
    pub name: String,
    #[serde(default)]
    pub reg: Option<String>,
    pub mask: u32,
    #[serde(default)]
    pub timing: bool,
    #[serde(default)]
    pub doc: String,
}

/// Reset value of a register after resolution.
#[derive(Debug, Clone, Copy)]
pub enum Reset {
    /// Fixed value.
    Value(u32),
    /// Set per instance (build parameter).
    Param,
}

/// A register with its reset resolved.
#[derive(Debug, Clone)]
pub struct Register {
    pub def: RegisterDef,
    pub reset: Reset,
}

/// A state word with its reset value.
#[derive(Debug, Clone)]
pub struct StateWord {
    pub def: StateDef,
    pub reset: u32,
}

/// The checked model the emitters work from.
#[derive(Debug)]
pub struct Model {
    pub name: String,
    pub layout_version: u32,
    pub constants: Vec<Constant>,
    pub enums: Vec<EnumDef>,
    pub structs: Vec<StructDef>,
    pub registers: Vec<Register>,
    pub state: Vec<StateWord>,
}

const ACCESS: [&str; 6] = ["ro", "rw", "wo", "w1c", "rc", "wc"];

fn check_fields(owner: &str, fields: &[FieldDef]) -> Result<(), String> {
    let mut used = 0u64;
    let mut names = BTreeSet::new();
    for f in fields {
        if f.width == 0 || f.lsb + f.width > 32 {
            return Err(format!("{owner}.{}: bits outside 31:0", f.name));
        }
        let m = ((1u64 << f.width) - 1) << f.lsb;
        if used & m != 0 {
            return Err(format!("{owner}.{}: overlaps another field", f.name));
        }
        used |= m;
        if !names.insert(f.name.clone()) {
            return Err(format!("{owner}.{}: duplicate field", f.name));
        }
        if let Some(a) = &f.access
            && !ACCESS.contains(&a.as_str())
        {
            return Err(format!("{owner}.{}: unknown access {a}", f.name));
        }
    }
    Ok(())
}

fn is_ident(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some('A'..='Z'))
        && c.all(|ch| ch.is_ascii_uppercase() || ch.is_ascii_digit() || ch == '_')
}

/// Checks the map and derives the generated constants.
pub fn resolve(map: RegMap) -> Result<Model, String> {
    let mut consts: BTreeMap<String, u64> = BTreeMap::new();
    let mut constants = map.constants.clone();
    for c in &map.constants {
        if !is_ident(&c.name) {
            return Err(format!("constant {}: not an UPPER_CASE identifier", c.name));
        }
        if c.value > u64::from(u32::MAX) {
            return Err(format!("constant {}: does not fit 32 bits", c.name));
        }
        if consts.insert(c.name.clone(), c.value).is_some() {
            return Err(format!("constant {}: defined twice", c.name));
        }
    }
    let get = |n: &str| -> Result<u64, String> {
        map.constants
            .iter()
            .find(|c| c.name == n)
            .map(|c| c.value)
            .ok_or_else(|| format!("constant {n} is required"))
    };
    let words = map.state.len() as u64;
    let derived = [
        (
            "PCI_ID_VALUE",
            (get("PCI_DEVICE_ID")? << 16) | get("PCI_VENDOR_ID")?,
            "Value of the PCI_ID register: device ID in [31:16], vendor ID in [15:0]",
        ),
        ("STATE_WORDS", words, "Number of architectural state words"),
        (
            "STATE_BYTES",
            words * 4,
            "Size of the architectural state in bytes",
        ),
        (
            "STATE_LAYOUT_VERSION",
            u64::from(map.layout_version),
            "Version of the state-word layout",
        ),
        (
            "STATE_INFO_VALUE",
            (u64::from(map.layout_version) << 16) | words,
            "Value of the STATE_INFO register",
        ),
    ];
    for (n, v, d) in derived {
        if consts.insert(n.to_string(), v).is_some() {
            return Err(format!("constant {n} is generated; do not define it"));
        }
        constants.push(Constant {
            name: n.to_string(),
            value: v,
            doc: d.to_string(),
        });
    }
    if get("STATE_HEADER")? & 0xffff != u64::from(map.layout_version) {
        return Err("STATE_HEADER[15:0] must equal layout_version".into());
    }

    let mut enum_names = BTreeSet::new();
    for e in &map.enums {
        if !enum_names.insert(e.name.clone()) {
            return Err(format!("enum {}: defined twice", e.name));
        }
        let mut vals = BTreeSet::new();
        let mut names = BTreeSet::new();
        for v in &e.values {
            if !vals.insert(v.value) || !names.insert(v.name.clone()) || !is_ident(&v.name) {
                return Err(format!(
                    "enum {}.{}: duplicate or bad name/value",
                    e.name, v.name
                ));
            }
            if v.value > 255 {
                return Err(format!("enum {}.{}: values are 8 bits", e.name, v.name));
            }
        }
    }
    for s in &map.structs {
        let mut words_seen = BTreeSet::new();
        for w in &s.words {
            if w.word * 4 >= s.bytes || !words_seen.insert(w.word) {
                return Err(format!(
                    "struct {}.{}: bad or duplicate word index",
                    s.name, w.name
                ));
            }
            check_fields(&format!("{}.{}", s.name, w.name), &w.fields)?;
        }
    }

    let mut offsets = BTreeSet::new();
    let mut reg_names = BTreeSet::new();
    let mut registers = Vec::new();
    for r in &map.registers {
        if !is_ident(&r.name) || !reg_names.insert(r.name.clone()) {
            return Err(format!("register {}: duplicate or bad name", r.name));
        }
        if r.offset % 4 != 0 || r.offset >= 0x1000 || !offsets.insert(r.offset) {
            return Err(format!(
                "register {}: offset {:#x} unaligned, above 0xfff or used twice",
                r.name, r.offset
            ));
        }
        if !ACCESS.contains(&r.access.as_str()) {
            return Err(format!("register {}: unknown access {}", r.name, r.access));
        }
        if r.flags && r.fields.iter().any(|f| f.width != 1) {
            return Err(format!(
                "register {}: flags registers have 1-bit fields",
                r.name
            ));
        }
        check_fields(&r.name, &r.fields)?;
        let reset = match &r.reset {
            NumOrName::Num(v) => Reset::Value(
                u32::try_from(*v).map_err(|_| format!("register {}: reset > 32 bits", r.name))?,
            ),
            NumOrName::Name(n) if n == "param" => Reset::Param,
            NumOrName::Name(n) => Reset::Value(
                consts
                    .get(n)
                    .copied()
                    .and_then(|v| u32::try_from(v).ok())
                    .ok_or_else(|| format!("register {}: unknown reset constant {n}", r.name))?,
            ),
        };
        registers.push(Register {
            def: r.clone(),
            reset,
        });
    }

    let mut state = Vec::new();
    let mut state_names = BTreeSet::new();
    for (i, s) in map.state.iter().enumerate() {
        if !is_ident(&s.name) || !state_names.insert(s.name.clone()) {
            return Err(format!("state word {}: duplicate or bad name", s.name));
        }
        let reset = if i == 0 {
            if s.name != "HEADER" {
                return Err("state word 0 must be HEADER".into());
            }
            u32::try_from(get("STATE_HEADER")?).map_err(|_| "STATE_HEADER > 32 bits")?
        } else if let Some(rn) = &s.reg {
            let reg = registers
                .iter()
                .find(|r| &r.def.name == rn)
                .ok_or_else(|| format!("state word {}: unknown register {rn}", s.name))?;
            match reg.reset {
                Reset::Value(v) => v & s.mask,
                Reset::Param => {
                    return Err(format!(
                        "state word {}: register {rn} is a parameter",
                        s.name
                    ));
                }
            }
        } else {
            0
        };
        state.push(StateWord {
            def: s.clone(),
            reset,
        });
    }
    if state.len() > 255 {
        return Err("at most 255 state words (STATE_ERR.WORD is 8 bits)".into());
    }

    Ok(Model {
        name: map.name,
        layout_version: map.layout_version,
        constants,
        enums: map.enums,
        structs: map.structs,
        registers,
        state,
    })
}
