//! Checks a saved architectural state with the datasheet's validation rules
//! (`vfpga_device::validate_arch`, §9.3). Used by the PCIe shell's cocotb
//! suite (`scripts/test.d/25-shell`): the state words read over PCIe from the
//! RTL behind the UltraScale+ shell must be accepted by the host software.
//!
//! Usage: `validate_state FILE DEVMEM_BYTES`, where FILE holds the state
//! words in index order, one hexadecimal word per line.

use std::process::ExitCode;

use vfpga_device::validate_arch;
use vfpga_regs::{ArchState, consts::STATE_WORDS};

const N: usize = STATE_WORDS as usize;

fn run() -> Result<String, String> {
    let mut args = std::env::args().skip(1);
    let (Some(path), Some(size)) = (args.next(), args.next()) else {
        return Err("usage: validate_state FILE DEVMEM_BYTES".into());
    };
    let devmem_bytes: u64 = size.parse().map_err(|e| format!("DEVMEM_BYTES: {e}"))?;
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let words: Vec<u32> = text
        .split_whitespace()
        .map(|w| u32::from_str_radix(w, 16).map_err(|e| format!("{path}: {w}: {e}")))
        .collect::<Result<_, _>>()?;
    let words: [u32; N] = words
        .try_into()
        .map_err(|w: Vec<u32>| format!("{path}: {} words, expected {N}", w.len()))?;
    let arch = ArchState::from_words(&words);
    validate_arch(&arch, devmem_bytes).map_err(|v| format!("{path}: state refused: {v:?}"))?;
    Ok(format!(
        "{path}: {} state words accepted by validate_arch (CUR_DONE {} of CUR_LEN {})",
        words.len(),
        arch.cur_done,
        arch.cur_len
    ))
}

fn main() -> ExitCode {
    match run() {
        Ok(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("validate_state: {e}");
            ExitCode::FAILURE
        }
    }
}
