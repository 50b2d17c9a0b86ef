//! The job declaration in TOML, as a file source reads it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lrpm_core::decl::Format;

mod common;

fuzz_target!(|data: &[u8]| common::parse_as(Format::Toml, data));
