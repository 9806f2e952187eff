//! Exit statuses of every subcommand (one place; the subcommand modules and
//! the dispatcher import them from here, not from each other).

/// Success.
pub const OK: u8 = 0;
/// The check or migration failed.
pub const FAILED: u8 = 1;
/// Usage or setup error (clap's own usage errors exit 2 too).
pub const USAGE: u8 = 2;
