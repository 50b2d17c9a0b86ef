//! A directory source: several documents of mixed formats merged into one
//! declaration (an id declared in two of them is invalid). The first byte
//! chooses the formats, and 0xff bytes separate the documents.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lrpm_core::decl::{Document, Format, parse_documents};

mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&formats, rest)) = data.split_first() else {
        return;
    };
    if rest.len() > common::MAX_INPUT {
        return;
    }
    let texts: Vec<&str> = rest
        .split(|b| *b == 0xff)
        .take(8)
        .filter_map(|part| std::str::from_utf8(part).ok())
        .collect();
    let names: Vec<String> = (0..texts.len()).map(|i| format!("doc{i}")).collect();
    let docs: Vec<Document<'_>> = texts
        .iter()
        .zip(&names)
        .enumerate()
        .map(|(i, (text, name))| Document {
            origin: name,
            format: match (formats >> (i % 4 * 2)) & 3 {
                0 => Format::Json,
                1 => Format::Toml,
                _ => Format::Yaml,
            },
            text,
        })
        .collect();
    common::check(parse_documents(&docs));
});
