//! What every declaration target checks: parsing never panics, and its
//! result is consistent.
#![allow(dead_code)] // Each target uses a part of it.

use lrpm_core::decl::{Declaration, Document, Format, SourceError, parse_documents};

/// The largest input worth fuzzing: parsing is linear, so longer inputs
/// only slow the fuzzer down (libFuzzer's `-max_len` caps it as well).
pub const MAX_INPUT: usize = 64 * 1024;

/// Parses `data` as the file source would (after its UTF-8 check), in
/// `format`, and checks the result.
pub fn parse_as(format: Format, data: &[u8]) {
    if data.len() > MAX_INPUT {
        return;
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check(parse_documents(&[Document {
        origin: "fuzz",
        format,
        text,
    }]));
}

/// A declaration has no job that is both valid and invalid, and every
/// invalid job and every error says why.
pub fn check(result: Result<Declaration, SourceError>) {
    match result {
        Ok(decl) => {
            for id in decl.jobs.keys() {
                assert!(!decl.invalid.contains_key(id), "{id} valid and invalid");
            }
            for reason in decl.invalid.values() {
                assert!(!reason.is_empty());
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}
