//! The exit codes of `lrpm` and `lrpmctl`, from BSD's `sysexits.h` where one
//! fits, so that scripts and service managers can tell the cases apart.

/// Refused: `lrpmctl` was answered with an error (an unknown job…), or lrpm
/// failed at run time.
pub const EX_REFUSED: u8 = 1;
/// The command line is wrong (EX_USAGE).
pub const EX_USAGE: u8 = 64;
/// lrpm's file source does not exist (EX_NOINPUT).
pub const EX_NOINPUT: u8 = 66;
/// lrpm cannot be reached (EX_UNAVAILABLE).
pub const EX_UNAVAILABLE: u8 = 69;
/// The output cannot be written (EX_IOERR).
pub const EX_IOERR: u8 = 74;
/// lrpm's answer makes no sense (EX_PROTOCOL).
pub const EX_PROTOCOL: u8 = 76;
