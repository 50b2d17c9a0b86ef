//! Parsing a configuration again after a change, checking again only the
//! jobs whose text changed.
//!
//! # Theory of operation
//!
//! A source that pushes changes (a file rewritten, a command printing a new
//! map) hands over the whole configuration every time, while a change
//! usually touches one job among thousands. Building every job's value and
//! validating it again costs milliseconds per thousand jobs (TOML the most:
//! its parser builds every table). A [`Reparser`] does that once, and then
//! only for what changed:
//!
//! 1. **Split.** Each JSON or TOML document is cut, without building any
//!    value, into its jobs' *fragments*: the exact text that declares each
//!    job. In JSON that is the job's value (a `serde_json` `RawValue`); in
//!    TOML, every item of the document whose key path starts with the job's
//!    key (its `[42]` and `[42.env]` sections, a root-level `42.name = …`),
//!    in document order, found by `toml_parser`'s event parser, which checks
//!    the grammar of the whole document on the way (with `toml`'s own
//!    whitespace rules and nesting limit). A TOML document that was cut
//!    before is cut again only where its text changed: from the item the
//!    first changed byte is in, up to an item of the unchanged end of the
//!    text (`split_items`); the items around are the last cut's. A
//!    rewrite of one job in a file of thousands costs that job's text, two
//!    comparisons of the text with the last one, and the bookkeeping.
//! 2. **Reuse or check.** A fragment equal, byte for byte, to the one the
//!    same document had for the same key last time gets last time's
//!    verdict: the very same `Arc<JobSpec>` (so the supervisor sees an
//!    unchanged job by its pointer), or the same reason it is invalid. Any
//!    other fragment is parsed alone and checked by
//!    [`validate_job`](crate::decl::validate_job).
//!
//! The declaration is equal to what [`parse_documents`] makes of the same
//! documents, which the property tests below check on generated documents
//! and edits. Where the split cannot vouch for that, a document goes the
//! whole way, through [`parse_documents`]' own parse: a YAML document, one
//! with a syntax error (whose message, and its line, come from the whole
//! document's parse) or whose top level is not a map, a TOML fragment that
//! does not parse alone.
//!
//! Why a TOML document can be cut so: TOML's rules (a key is defined once,
//! a table is not defined twice, …) are about key paths, and paths that
//! start with different keys never meet. A document is valid if and only
//! if each of its jobs' fragments is, and a fragment parsed alone gives its
//! job's value. Items at the root level come before the first `[table]`
//! header, so a fragment in document order is itself a well-formed
//! document.
//!
//! [`parse_documents`]: crate::decl::parse_documents

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;
use toml_parser::decoder::Encoding;
use toml_parser::lexer::TokenKind;
use toml_parser::parser::{EventReceiver, RecursionGuard, ValidateWhitespace};
use toml_parser::{ErrorSink, ParseError, Raw, Source, Span};

use crate::decl::{self, Declaration, Document, Format, SourceError, Verdict};
use crate::job::JobId;

/// Parses a source's configuration again and again, checking only the jobs
/// whose declaration changed since the last time (see the module's docs).
#[derive(Debug, Default)]
pub struct Reparser {
    /// Per document (its origin): its jobs' last fragments.
    known: HashMap<String, KnownDocument>,
    /// Whether the last parse succeeded.
    succeeded: bool,
    /// Whether the last parse succeeded and declared what the one before
    /// it did, to the byte.
    unchanged: bool,
}

/// How many bytes of documents a reparser remembers at most (an 8 MiB
/// configuration, about 50,000 jobs); a document beyond is checked whole
/// at every parse, and the memory it took is given back.
const MAX_REMEMBERED: usize = 8 << 20;

/// What a document declared last time.
#[derive(Debug, Default)]
struct KnownDocument {
    /// Its last text (`None` when nothing of it is remembered), which the
    /// fragments' spans point into.
    text: Option<Box<str>>,
    /// Its top-level items, for a TOML document: where the next split of
    /// a changed text starts from.
    items: Vec<Item>,
    /// Per job key: the job's last fragment.
    jobs: HashMap<String, Known>,
    /// How many fragments it had (a key may come twice in JSON); `None`
    /// for a document new to this parse.
    fragments: Option<usize>,
}

impl KnownDocument {
    /// Forgets everything: the next parse checks every job.
    fn forget(&mut self) {
        *self = Self::default();
    }
}

/// A fragment seen before, and what it declares.
#[derive(Debug)]
struct Known {
    fragment: Stored,
    id: JobId,
    verdict: Verdict,
    /// Whether the current parse has seen it (the others are forgotten
    /// after it).
    seen: bool,
}

/// Where a remembered fragment's text is.
#[derive(Debug)]
enum Stored {
    /// A slice of the document's text (the usual case): its byte range.
    Span(usize, usize),
    /// Pieces of the text joined (a TOML job whose items do not follow
    /// each other).
    Joined(Box<str>),
}

impl Stored {
    /// Remembers `fragment`, a fragment of `text`.
    fn new(text: &str, fragment: Cow<'_, str>) -> Self {
        match fragment {
            Cow::Borrowed(slice) => {
                // Every borrowed fragment is a slice of its document.
                let start = (slice.as_ptr() as usize).wrapping_sub(text.as_ptr() as usize);
                debug_assert!(text.get(start..start + slice.len()) == Some(slice));
                Self::Span(start, start + slice.len())
            }
            Cow::Owned(joined) => Self::Joined(joined.into_boxed_str()),
        }
    }

    /// The fragment, `text` being the document it was remembered from.
    fn get<'a>(&'a self, text: &'a str) -> Option<&'a str> {
        match self {
            Self::Span(start, end) => text.get(*start..*end),
            Self::Joined(joined) => Some(joined),
        }
    }

    /// The bytes it takes beyond the document's text.
    fn extra(&self) -> usize {
        match self {
            Self::Span(..) => 0,
            Self::Joined(joined) => joined.len(),
        }
    }
}

impl Reparser {
    /// A reparser that knows nothing yet: its first parse checks every job.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses `docs` as [`parse_documents`](crate::decl::parse_documents)
    /// does, reusing the verdict of every job whose declaration is, byte for
    /// byte, the one the same document had in an earlier call.
    pub fn parse(&mut self, docs: &[Document<'_>]) -> Result<Declaration, SourceError> {
        // Compared with a parse that failed (which may have remembered some
        // of its fragments) or with none, everything is new.
        let mut unchanged = std::mem::take(&mut self.succeeded);
        self.unchanged = false;
        let mut remembered = 0;
        let mut declared = Vec::new();
        for doc in docs {
            let (verdicts, reused) = match self.verdicts(doc, &mut remembered) {
                Ok(done) => done,
                Err(error) => {
                    // What this parse saw is compared again next time.
                    for doc in self.known.values_mut() {
                        doc.jobs.values_mut().for_each(|job| job.seen = false);
                    }
                    return Err(error);
                }
            };
            unchanged &= reused;
            for (id, verdict) in verdicts {
                declared.push((id, doc.origin, verdict));
            }
        }
        // What these documents no longer declare is forgotten.
        let before = self.known.len();
        self.known
            .retain(|origin, _| docs.iter().any(|doc| doc.origin == origin));
        for doc in self.known.values_mut() {
            doc.jobs.retain(|_, known| std::mem::take(&mut known.seen));
        }
        self.succeeded = true;
        self.unchanged = unchanged && self.known.len() == before;
        Ok(decl::merge(declared))
    }

    /// Whether the last parse succeeded and found the documents of the
    /// one before it, job for job, to the byte (a source may then skip
    /// delivering what it already delivered). False after the first parse,
    /// and whenever a job came, went or changed, or could not be compared
    /// (a YAML document, one with a syntax error, a job whose declaration
    /// is too large to remember).
    pub fn unchanged(&self) -> bool {
        self.unchanged
    }

    /// The jobs `doc` declares, in document order, with their verdicts;
    /// and whether every one of them was reused. Documents are remembered
    /// while `remembered` stays under [`MAX_REMEMBERED`].
    fn verdicts(
        &mut self,
        doc: &Document<'_>,
        remembered: &mut usize,
    ) -> Result<(Vec<(JobId, Verdict)>, bool), SourceError> {
        let text = doc.text;
        let whole = || Ok((decl::verdicts(doc)?, false));
        let known = match doc.format {
            Format::Json | Format::Toml => self.known.entry(doc.origin.to_owned()).or_default(),
            Format::Yaml => return whole(),
        };
        let split = match doc.format {
            Format::Toml => {
                let cut = match known.text.as_deref() {
                    Some(last) => resplit(text, last, &mut known.items),
                    None => split_items(text).map(|items| known.items = items).is_some(),
                };
                cut.then(|| group(text, &known.items))
            }
            _ => split_json(text),
        };
        let Some(fragments) = split else {
            return whole();
        };
        // The same number of fragments as last time, and all of them
        // reused, one per key: the same jobs.
        let count = Some(fragments.len());
        let mut reused = std::mem::replace(&mut known.fragments, count) == count;
        let last = known.text.take();
        let last = last.as_deref().unwrap_or_default();
        let mut size = text.len();
        let mut verdicts = Vec::with_capacity(fragments.len());
        let mut alone = true;
        for (key, fragment) in fragments {
            if let Some(job) = known.jobs.get_mut(&*key) {
                // Seen already: a key twice in one document. Its fragment
                // now points into the new text: it is checked again.
                reused &= !job.seen;
                if !job.seen && job.fragment.get(last) == Some(&*fragment) {
                    job.seen = true;
                    job.fragment = Stored::new(text, fragment);
                    size += job.fragment.extra();
                    verdicts.push((job.id.clone(), job.verdict.clone()));
                    continue;
                }
            }
            reused = false;
            let Some((id, verdict)) = check(doc, &key, &fragment) else {
                alone = false;
                break;
            };
            verdicts.push((id.clone(), verdict.clone()));
            let fragment = Stored::new(text, fragment);
            size += fragment.extra();
            let seen = true;
            known.jobs.insert(
                key.into_owned(),
                Known {
                    fragment,
                    id,
                    verdict,
                    seen,
                },
            );
        }
        if !alone {
            // A fragment that does not parse alone: the whole document's
            // parse says why.
            known.forget();
            return whole();
        }
        // The fragments now point into the new text: those that it no
        // longer has are forgotten now.
        known.jobs.retain(|_, known| known.seen);
        if *remembered + size > MAX_REMEMBERED {
            known.forget();
            known.fragments = count;
        } else {
            *remembered += size;
            known.text = Some(text.into());
        }
        Ok((verdicts, reused))
    }
}

/// The job that fragment `text` of `doc` declares under `key`, checked; or
/// `None` if the fragment does not parse alone (the whole document's parse
/// then says why).
fn check(doc: &Document<'_>, key: &str, text: &str) -> Option<(JobId, Verdict)> {
    // Parsed even when the key cannot be an id: the whole document is
    // valid only if this fragment is.
    let body = match doc.format {
        // Inside a list, to be as deep as in the document's map: the
        // parser's nesting limit must fail it here if it fails it there.
        Format::Json => {
            let [body] = serde_json::from_str::<[Value; 1]>(&format!("[{text}]")).ok()?;
            body
        }
        Format::Toml => {
            let alone = Document { text, ..*doc };
            let mut entries = decl::parse_document(&alone).ok()?.into_iter();
            match (entries.next(), entries.next()) {
                (Some((Value::String(k), body)), None) if k == key => body,
                _ => return None,
            }
        }
        Format::Yaml => return None,
    };
    Some(decl::verdict(Value::String(key.to_owned()), &body))
}

/// A document's jobs: each key with its fragment, in document order.
type Fragments<'a> = Vec<(Cow<'a, str>, Cow<'a, str>)>;

/// Cuts a JSON document into its jobs' values; `None` if it is not a valid
/// JSON map.
fn split_json(text: &str) -> Option<Fragments<'_>> {
    /// The top-level map's entries, values left as text.
    struct Entries<'a>(Vec<(String, &'a RawValue)>);

    impl<'de> Deserialize<'de> for Entries<'de> {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct EntriesVisitor;
            impl<'de> Visitor<'de> for EntriesVisitor {
                type Value = Entries<'de>;

                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a map of job id to job")
                }

                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                    let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
                    while let Some(entry) = map.next_entry()? {
                        entries.push(entry);
                    }
                    Ok(Entries(entries))
                }
            }
            deserializer.deserialize_map(EntriesVisitor)
        }
    }

    let Entries(entries) = serde_json::from_str(text).ok()?;
    Some(
        entries
            .into_iter()
            .map(|(key, raw)| (Cow::Owned(key), Cow::Borrowed(raw.get())))
            .collect(),
    )
}

/// The nesting limit of the `toml` crate's parser (arrays and inline
/// tables), which a document must respect to be split.
const TOML_DEPTH: u32 = 80;

/// A top-level item of a TOML document: a table header, or a key-value
/// at the root level.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Item {
    /// Where it starts: its `[`, or its first key.
    start: usize,
    /// The job key it belongs to (its first key, decoded).
    key: String,
    /// Whether it is a table header (after the first one, every item is).
    header: bool,
}

/// Cuts a TOML document into its jobs' fragments; `None` if its grammar is
/// wrong.
#[cfg(test)]
fn split_toml(text: &str) -> Option<Vec<(String, String)>> {
    let items = split_items(text)?;
    let fragments = group(text, &items).into_iter();
    Some(
        fragments
            .map(|(k, f)| (k.into_owned(), f.into_owned()))
            .collect(),
    )
}

/// The top-level items of TOML document `text`; `None` if its grammar is
/// wrong.
fn split_items(text: &str) -> Option<Vec<Item>> {
    scan(text, 0, text.len(), false)
}

/// Makes `items`, the items of TOML document `old`, those of `text`, cutting
/// again only the part of the text that changed; false, leaving them as
/// they are, if the grammar of `text` is wrong.
///
/// The text is cut from the last item that starts before the first byte
/// that changed, up to an item of the last text that starts, at the start
/// of a line, in the part of the text that did not change at its end (its
/// common suffix with the last text). That part is cut alone, as a
/// document, and spliced between the items before it and those after it.
/// That gives the items of a cut of the whole text: the lexer of TOML reads
/// each token from its first byte on, without context, and an item starts
/// a statement, so the tokens and the events are the same up to the first
/// item of the changed part as in the last text; and if the changed part
/// parses alone, without a grammar error, and ends with a newline token of
/// its own (not one inside a string it leaves open, which the grammar does
/// not see), at the root level, it ends with its last statement, so the
/// rest of the text is read as it was in the last text, where it was
/// valid. The state of the root level is checked too: an item at the root
/// level after the changed part stays one only if that part did not open
/// a table. A changed part that does not parse alone is cut again with
/// the whole text (a change may open a multi-line string that the rest of
/// the text closes).
fn resplit(text: &str, old: &str, items: &mut Vec<Item>) -> bool {
    let whole = |items: &mut Vec<Item>| match split_items(text) {
        Some(new) => {
            *items = new;
            true
        }
        None => false,
    };
    let (old_bytes, bytes) = (old.as_bytes(), text.as_bytes());
    let prefix = common_prefix(old_bytes, bytes);
    if prefix == old.len() && prefix == text.len() {
        return true;
    }
    let suffix = common_suffix(&old_bytes[prefix..], &bytes[prefix..]);
    // The items before the one the change starts in are kept; that one is
    // cut again, from its start, with the root level's state there.
    let first = items.partition_point(|item| item.start < prefix);
    let (keep, from, in_tables) = match first.checked_sub(1) {
        None | Some(0) => (0, 0, false),
        Some(i) => (i, items[i].start, items[i - 1].header),
    };
    // The first item that starts a line in the common suffix.
    let tail = old.len() - suffix;
    let end = (first..items.len())
        .find(|&i| items[i].start > tail && old_bytes[items[i].start - 1] == b'\n')
        .unwrap_or(items.len());
    // (An item after `tail` starts after the same byte of `text`.)
    let moved = |start: usize| start + text.len() - old.len();
    let to = items.get(end).map_or(text.len(), |item| moved(item.start));
    let Some(middle) = scan(text, from, to, in_tables) else {
        return whole(items);
    };
    if items
        .get(end)
        .is_some_and(|item| !item.header && middle.iter().any(|item| item.header))
    {
        return whole(items);
    }
    for item in &mut items[end..] {
        item.start = moved(item.start);
    }
    items.splice(keep..end, middle);
    true
}

/// How many bytes `a` and `b` have in common at their start.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    const CHUNK: usize = 128;
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + CHUNK <= n && a[i..i + CHUNK] == b[i..i + CHUNK] {
        i += CHUNK;
    }
    i + a[i..n]
        .iter()
        .zip(&b[i..n])
        .take_while(|(x, y)| x == y)
        .count()
}

/// How many bytes `a` and `b` have in common at their end.
fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    const CHUNK: usize = 128;
    let n = a.len().min(b.len());
    let (a, b) = (&a[a.len() - n..], &b[b.len() - n..]);
    let mut i = n;
    while i >= CHUNK && a[i - CHUNK..i] == b[i - CHUNK..i] {
        i -= CHUNK;
    }
    let same = a[..i].iter().rev().zip(b[..i].iter().rev());
    n - i + same.take_while(|(x, y)| x == y).count()
}

/// The items of `text[from..to]`, cut alone, as a document; `from` is the
/// start of the text or of an item, after a table header if `in_tables`.
fn scan(text: &str, from: usize, to: usize, in_tables: bool) -> Option<Vec<Item>> {
    let part = text.get(from..to)?;
    let source = Source::new(part);
    let tokens = source.lex().into_vec();
    // Cut before the end of the text, the part must end with a newline of
    // its own (not one inside a string that the part leaves open, which
    // the grammar does not see).
    if to < text.len() {
        let last = tokens.iter().rev().find(|t| t.kind() != TokenKind::Eof);
        if !last.is_some_and(|t| t.kind() == TokenKind::Newline && t.span().end() == part.len()) {
            return None;
        }
    }
    let mut items = Items {
        source,
        offset: from,
        starts: Vec::new(),
        depth: 0,
        next_key: if in_tables {
            NextKey::Inner
        } else {
            NextKey::Item
        },
        in_tables,
        failed: false,
    };
    let mut error: Option<ParseError> = None;
    {
        let mut whitespace = ValidateWhitespace::new(&mut items, source);
        let mut guarded = RecursionGuard::new(&mut whitespace, TOML_DEPTH);
        toml_parser::parser::parse_document(&tokens, &mut guarded, &mut error);
    }
    if error.is_some() || items.failed || items.depth > 0 {
        return None;
    }
    Some(items.starts)
}

/// Joins the items of each key, in document order: one slice of the text
/// when they follow each other (the usual `[42]`, `[42.env]`), a copy
/// otherwise.
fn group<'a>(text: &'a str, items: &'a [Item]) -> Fragments<'a> {
    let mut fragments: Fragments<'a> = Vec::with_capacity(items.len());
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(items.len());
    let mut i = 0;
    while i < items.len() {
        // A run of items of one key.
        let key = items[i].key.as_str();
        let mut next = i + 1;
        while items.get(next).is_some_and(|item| item.key == key) {
            next += 1;
        }
        let end = items.get(next).map_or(text.len(), |item| item.start);
        let run = &text[items[i].start..end];
        match index.entry(key) {
            Entry::Vacant(entry) => {
                entry.insert(fragments.len());
                fragments.push((Cow::Borrowed(key), Cow::Borrowed(run)));
            }
            Entry::Occupied(entry) => fragments[*entry.get()].1.to_mut().push_str(run),
        }
        i = next;
    }
    fragments
}

/// What the next key of the document's top level begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NextKey {
    /// A root-level item (`42.name = …`): only before the first header, at
    /// the start of a line.
    Item,
    /// The header just opened (`[42.env]`).
    Header,
    /// Nothing: a key inside an item.
    Inner,
}

/// Receives the parser's events and notes where each top-level item starts
/// and which job key it belongs to.
struct Items<'i> {
    source: Source<'i>,
    /// Where the source starts in the document.
    offset: usize,
    /// The items found.
    starts: Vec<Item>,
    /// How deep inside arrays and inline tables the parser is.
    depth: u32,
    next_key: NextKey,
    /// Whether a `[table]` header has been seen: every later key-value
    /// belongs to a table.
    in_tables: bool,
    /// A key did not decode.
    failed: bool,
}

impl Items<'_> {
    fn key(&mut self, span: Span, encoding: Option<Encoding>) -> Option<String> {
        let raw = self.source.input().get(span.start()..span.end())?;
        let mut key = Cow::Borrowed("");
        let mut error: Option<ParseError> = None;
        Raw::new_unchecked(raw, encoding, span).decode_key(&mut key, &mut error);
        error.is_none().then(|| key.into_owned())
    }
}

impl EventReceiver for Items<'_> {
    fn std_table_open(&mut self, span: Span, _error: &mut dyn ErrorSink) {
        self.starts.push(Item {
            start: self.offset + span.start(),
            key: String::new(),
            header: true,
        });
        self.next_key = NextKey::Header;
        self.in_tables = true;
    }

    fn array_table_open(&mut self, span: Span, error: &mut dyn ErrorSink) {
        self.std_table_open(span, error);
    }

    fn inline_table_open(&mut self, _span: Span, _error: &mut dyn ErrorSink) -> bool {
        self.depth += 1;
        true
    }

    fn inline_table_close(&mut self, _span: Span, _error: &mut dyn ErrorSink) {
        self.depth = self.depth.saturating_sub(1);
    }

    fn array_open(&mut self, span: Span, error: &mut dyn ErrorSink) -> bool {
        self.inline_table_open(span, error)
    }

    fn array_close(&mut self, span: Span, error: &mut dyn ErrorSink) {
        self.inline_table_close(span, error);
    }

    fn simple_key(&mut self, span: Span, encoding: Option<Encoding>, _error: &mut dyn ErrorSink) {
        if self.depth > 0 {
            return;
        }
        let next = std::mem::replace(&mut self.next_key, NextKey::Inner);
        if next == NextKey::Inner {
            return;
        }
        let Some(key) = self.key(span, encoding) else {
            self.failed = true;
            return;
        };
        match next {
            NextKey::Header => match self.starts.last_mut() {
                Some(item) => item.key = key,
                None => self.failed = true,
            },
            _ => self.starts.push(Item {
                start: self.offset + span.start(),
                key,
                header: false,
            }),
        }
    }

    fn newline(&mut self, _span: Span, _error: &mut dyn ErrorSink) {
        if self.depth == 0 && !self.in_tables {
            self.next_key = NextKey::Item;
        }
    }

    fn error(&mut self, _span: Span, _error: &mut dyn ErrorSink) {
        self.failed = true;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap.
mod tests {
    use super::*;
    use crate::decl::parse_documents;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn toml(text: &str) -> Document<'_> {
        Document {
            origin: "jobs.toml",
            format: Format::Toml,
            text,
        }
    }

    fn fragments(text: &str) -> Vec<(String, String)> {
        split_toml(text).unwrap()
    }

    fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        expected
            .iter()
            .map(|&(k, f)| (k.to_owned(), f.to_owned()))
            .collect()
    }

    #[test]
    fn a_toml_document_is_cut_at_its_items_and_grouped_by_first_key() {
        let text = "# jobs\n\
                    a = { name = \"A\", command = [\"true\"] }\n\
                    \"b.c\".name = 'B'\n\
                    \"b.c\".command = [\n  [\"x\"],\n  \"[y]\",\n]\n\
                    [d]\nname = \"\"\"\n[not a header]\n\"\"\"\n\
                    [e]\nname = \"E\"\n\
                    [d.env]\nX = \"1\"\n\
                    [[f]]\nname = \"F\"";
        assert_eq!(
            fragments(text),
            pairs(&[
                ("a", "a = { name = \"A\", command = [\"true\"] }\n"),
                (
                    "b.c",
                    "\"b.c\".name = 'B'\n\"b.c\".command = [\n  [\"x\"],\n  \"[y]\",\n]\n"
                ),
                (
                    "d",
                    "[d]\nname = \"\"\"\n[not a header]\n\"\"\"\n[d.env]\nX = \"1\"\n"
                ),
                ("e", "[e]\nname = \"E\"\n"),
                ("f", "[[f]]\nname = \"F\""),
            ])
        );
    }

    #[test]
    fn quoted_and_bare_spellings_of_a_key_are_one_job() {
        let text = "[\"42\"]\nname = \"x\"\n[ 42 . env ]\nA = \"1\"\n";
        assert_eq!(fragments(text), pairs(&[("42", text)]));
    }

    #[test]
    fn a_grammar_error_is_left_to_the_whole_documents_parse() {
        for text in [
            "[a\nname = 1\n",
            "a = [1, 2\n",
            "a = 1 b = 2\n",
            "a = 1\n\u{1}",
        ] {
            assert!(
                split_toml(text).is_none(),
                "{text:?}: {:?}",
                split_toml(text)
            );
        }
        let deep = format!("a = {}{}\n", "[".repeat(100), "]".repeat(100));
        assert!(split_toml(&deep).is_none());
        assert!(split_json("[1, 2]").is_none());
        assert!(split_json("{\"a\": 1").is_none());
    }

    #[test]
    fn a_fragment_that_does_not_parse_alone_fails_as_the_whole_document_does() {
        let text = "[a]\nname = \"A\"\ncommand = [\"true\"]\n[b]\nname = \n";
        assert!(split_toml(text).is_some());
        let error = Reparser::new().parse(&[toml(text)]).unwrap_err();
        assert_eq!(error, parse_documents(&[toml(text)]).unwrap_err());
        assert!(error.to_string().contains("line 5"), "{error}");
        // Also under a key that cannot be an id.
        let text = "[\"\".env]\nB = \"A\"\nB = \"x\"\n";
        let error = Reparser::new().parse(&[toml(text)]).unwrap_err();
        assert_eq!(error, parse_documents(&[toml(text)]).unwrap_err());
    }

    #[test]
    fn a_job_nested_as_deep_as_the_parser_allows_alone_fails_as_in_its_document() {
        for depth in [79, 80, 81] {
            let body = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            let text = format!("[a]\nname = \"A\"\nworkerConfig = {body}\n");
            assert_eq!(
                Reparser::new().parse(&[toml(&text)]),
                parse_documents(&[toml(&text)]),
                "{depth}"
            );
        }
        for depth in [126, 127, 128] {
            let body = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            let text = format!("{{\"a\": {{\"name\": \"A\", \"workerConfig\": {body}}}}}");
            let doc = Document {
                origin: "jobs.json",
                format: Format::Json,
                text: &text,
            };
            assert_eq!(
                Reparser::new().parse(&[doc]),
                parse_documents(&[doc]),
                "{depth}"
            );
        }
    }

    #[test]
    fn an_unchanged_job_keeps_its_declaration_and_a_changed_one_is_checked_again() {
        let mut reparser = Reparser::new();
        let before = "[a]\nname = \"A\"\ncommand = [\"true\"]\n\n\
                      [b]\nname = \"B\"\ncommand = [\"true\"]\n\n\
                      [c]\nname = \"C\"\n";
        let first = reparser.parse(&[toml(before)]).unwrap();
        let after = before.replace("\"B\"", "\"B2\"");
        let second = reparser.parse(&[toml(&after)]).unwrap();
        assert_eq!(second, parse_documents(&[toml(&after)]).unwrap());
        assert!(Arc::ptr_eq(
            &first.jobs[&"a".into()],
            &second.jobs[&"a".into()]
        ));
        assert!(!Arc::ptr_eq(
            &first.jobs[&"b".into()],
            &second.jobs[&"b".into()]
        ));
        assert_eq!(second.jobs[&"b".into()].name, "B2");
        assert_eq!(second.invalid[&"c".into()], first.invalid[&"c".into()]);
    }

    #[test]
    fn what_a_document_no_longer_declares_is_forgotten() {
        let mut reparser = Reparser::new();
        let one = "[a]\nname = \"A\"\ncommand = [\"true\"]\n";
        let two = format!("{one}[b]\nname = \"B\"\ncommand = [\"true\"]\n");
        reparser.parse(&[toml(&two)]).unwrap();
        reparser.parse(&[toml(one)]).unwrap();
        assert_eq!(reparser.known["jobs.toml"].jobs.len(), 1);
        reparser.parse(&[]).unwrap();
        assert!(reparser.known.is_empty());
    }

    #[test]
    fn a_broken_document_changes_nothing_it_knows() {
        let mut reparser = Reparser::new();
        let good = "{\"a\": {\"name\": \"A\", \"command\": [\"true\"]}}";
        let doc = |text| Document {
            origin: "jobs.json",
            format: Format::Json,
            text,
        };
        let first = reparser.parse(&[doc(good)]).unwrap();
        let broken = reparser.parse(&[doc("{\"a\": ")]).unwrap_err();
        assert_eq!(broken, parse_documents(&[doc("{\"a\": ")]).unwrap_err());
        let again = reparser.parse(&[doc(good)]).unwrap();
        assert!(Arc::ptr_eq(
            &first.jobs[&"a".into()],
            &again.jobs[&"a".into()]
        ));
    }

    #[test]
    fn unchanged_says_whether_a_parse_found_what_the_last_good_one_did() {
        let json = |text| Document {
            origin: "jobs.json",
            format: Format::Json,
            text,
        };
        let a = "{\"a\": {\"name\": \"A\", \"command\": [\"true\"]}}";
        let ab = "{\"a\": {\"name\": \"A\", \"command\": [\"true\"]}, \"b\": {}}";
        let mut reparser = Reparser::new();
        let mut unchanged = |docs: &[Document<'_>]| {
            let parsed = reparser.parse(docs).is_ok();
            parsed && reparser.unchanged()
        };
        assert!(!unchanged(&[json(a)]), "the first parse");
        assert!(unchanged(&[json(a)]));
        assert!(!unchanged(&[json(ab)]), "a job came");
        assert!(unchanged(&[json(ab)]));
        assert!(!unchanged(&[json(a)]), "a job went");
        assert!(!unchanged(&[json("{\"a\": 1")]), "a failure");
        assert!(!unchanged(&[json(a)]), "after a failure");
        assert!(!unchanged(&[json(a), toml("")]), "a document came");
        let yaml = Document {
            origin: "jobs.yaml",
            format: Format::Yaml,
            text: "a: {name: A, command: [\"true\"]}",
        };
        assert!(!unchanged(&[yaml]));
        assert!(!unchanged(&[yaml]), "YAML is parsed whole");
        let huge = format!(
            "{{\"a\": {{\"name\": \"{}\", \"command\": [\"true\"]}}}}",
            "x".repeat(MAX_REMEMBERED)
        );
        assert!(!unchanged(&[json(&huge)]));
        assert!(!unchanged(&[json(&huge)]), "too large to remember");
    }

    /// One job of a generated configuration.
    #[derive(Debug, Clone)]
    struct GenJob {
        key: &'static str,
        name: String,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        short_run: Option<f64>,
        extra: Option<(String, i64)>,
        style: Style,
        /// Whether its key is written bare where TOML allows.
        bare: bool,
    }

    /// How a generated job is written in TOML.
    #[derive(Debug, Clone, Copy)]
    enum Style {
        /// `[key]`, and its `env` as a `[key.env]` table at the end.
        Section,
        /// `key = { … }` at the root.
        Inline,
        /// `key.name = …` lines at the root.
        Dotted,
    }

    const KEYS: [&str; 6] = ["a", "b", "42", "x y", "a.b", "-7"];

    fn text() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "A", "", "[z]", "x\ny", "q\"uote", "tab\t", "\\", "é", "[[w]]", "#h",
        ])
        .prop_map(str::to_owned)
    }

    fn gen_job() -> impl Strategy<Value = GenJob> {
        (
            prop::sample::select(KEYS.to_vec()),
            text(),
            prop::collection::vec(text(), 0..3),
            prop::collection::vec(("[A-C]", text()), 0..3),
            prop::option::of(prop::sample::select(vec![0.0, 1.5, -1.0])),
            prop::option::of(("[a-z]{1,3}", any::<i64>())),
            prop::sample::select(vec![Style::Section, Style::Inline, Style::Dotted]),
            any::<bool>(),
        )
            .prop_map(
                |(key, name, argv, env, short_run, extra, style, bare)| GenJob {
                    key,
                    name,
                    argv,
                    env,
                    short_run,
                    extra,
                    style,
                    bare,
                },
            )
    }

    fn quote(s: &str) -> String {
        serde_json::to_string(s).unwrap()
    }

    /// The job's fields as TOML key-value pairs (`env` apart).
    fn fields(job: &GenJob) -> Vec<String> {
        let argv: Vec<String> = job.argv.iter().map(|a| quote(a)).collect();
        let mut fields = vec![
            format!("name = {}", quote(&job.name)),
            format!("command = [\n  {},\n]", argv.join(",\n  ")),
        ];
        if let Some(s) = job.short_run {
            fields.push(format!("shortRunTimeSeconds = {s:?}"));
        }
        if let Some((k, v)) = &job.extra {
            fields.push(format!("{k} = {v}"));
        }
        fields
    }

    fn env(job: &GenJob) -> Vec<String> {
        job.env
            .iter()
            .map(|(k, v)| format!("{k} = {}", quote(v)))
            .collect()
    }

    /// The jobs as a TOML document; repeated keys make it invalid, as they
    /// should.
    fn render_toml(jobs: &[GenJob]) -> String {
        let mut root = String::from("# generated\n");
        let mut tables = String::new();
        let mut env_tables = String::new();
        for job in jobs {
            let bare = job
                .key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-');
            let key = if job.bare && bare {
                job.key.to_owned()
            } else {
                quote(job.key)
            };
            match job.style {
                Style::Inline => {
                    let mut all = fields(job);
                    all.push(format!("env = {{ {} }}", env(job).join(", ")));
                    let all = all.join(", ").replace('\n', "");
                    root.push_str(&format!("{key} = {{ {all} }}\n"));
                }
                Style::Dotted => {
                    for field in fields(job).iter().chain(&env(job)) {
                        let prefix = if env(job).contains(field) {
                            format!("{key}.env.")
                        } else {
                            format!("{key}.")
                        };
                        root.push_str(&format!("{prefix}{field}\n"));
                    }
                }
                Style::Section => {
                    tables.push_str(&format!("\n[{key}] # job\n{}\n", fields(job).join("\n")));
                    if !job.env.is_empty() {
                        env_tables.push_str(&format!("[{key}.env]\n{}\n", env(job).join("\n")));
                    }
                }
            }
        }
        root + &tables + &env_tables
    }

    fn render_json(jobs: &[GenJob]) -> String {
        let mut out = String::from("{");
        for (i, job) in jobs.iter().enumerate() {
            let mut map = serde_json::Map::new();
            map.insert("name".into(), job.name.clone().into());
            map.insert("command".into(), job.argv.clone().into());
            if let Some(s) = job.short_run {
                map.insert("shortRunTimeSeconds".into(), s.into());
            }
            let env: serde_json::Map<String, Value> = job
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().into()))
                .collect();
            map.insert("env".into(), env.into());
            if i > 0 {
                out.push_str(",\n");
            }
            out.push_str(&format!("{}: {}", quote(job.key), Value::Object(map)));
        }
        out + "}"
    }

    /// A step of a configuration's life: a change of one job, or a
    /// keystroke anywhere in the text (which may break it).
    #[derive(Debug, Clone)]
    enum Step {
        Replace(usize, GenJob),
        Remove(usize),
        Add(GenJob),
        Delete(usize),
        Insert(usize, char),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (any::<usize>(), gen_job()).prop_map(|(i, job)| Step::Replace(i, job)),
            1 => any::<usize>().prop_map(Step::Remove),
            1 => gen_job().prop_map(Step::Add),
            1 => any::<usize>().prop_map(Step::Delete),
            1 => (any::<usize>(), prop::sample::select(vec!['[', ']', '"', '\n', '=', 'x', '.', ',', '{']))
                .prop_map(|(at, c)| Step::Insert(at, c)),
        ]
    }

    /// Applies `step` to the jobs, or to `edited` (the text, once a
    /// keystroke has made it more than a rendering of the jobs).
    fn apply(
        step: &Step,
        jobs: &mut Vec<GenJob>,
        edited: &mut Option<String>,
        render: &dyn Fn(&[GenJob]) -> String,
    ) {
        let n = jobs.len();
        match step {
            Step::Replace(i, job) if n > 0 => jobs[i % n] = job.clone(),
            Step::Remove(i) if n > 0 => drop(jobs.remove(i % n)),
            Step::Add(job) => jobs.push(job.clone()),
            Step::Delete(at) => {
                let text = edited.get_or_insert_with(|| render(jobs));
                let chars: Vec<char> = text.chars().collect();
                if !chars.is_empty() {
                    let at = at % chars.len();
                    *text = chars[..at].iter().chain(&chars[at + 1..]).collect();
                }
                return;
            }
            Step::Insert(at, c) => {
                let text = edited.get_or_insert_with(|| render(jobs));
                let chars: Vec<char> = text.chars().collect();
                let at = at % (chars.len() + 1);
                *text = chars[..at].iter().chain([c]).chain(&chars[at..]).collect();
                return;
            }
            _ => {}
        }
        *edited = None;
    }

    fn same_as_a_whole_parse(
        format: Format,
        render: &dyn Fn(&[GenJob]) -> String,
        jobs: Vec<GenJob>,
        steps: Vec<Step>,
    ) -> Result<(), TestCaseError> {
        let mut jobs = jobs;
        let mut reparser = Reparser::new();
        let mut edited = None;
        let mut last: Option<Declaration> = None;
        for step in std::iter::once(None).chain(steps.iter().map(Some)) {
            if let Some(step) = step {
                apply(step, &mut jobs, &mut edited, render);
            }
            let text = edited.clone().unwrap_or_else(|| render(&jobs));
            let doc = Document {
                origin: "jobs",
                format,
                text: &text,
            };
            let reparsed = reparser.parse(&[doc]);
            prop_assert_eq!(&reparsed, &parse_documents(&[doc]), "{}", text);
            // Unchanged means the declaration of the last successful parse.
            if let Ok(now) = &reparsed {
                if reparser.unchanged() {
                    prop_assert_eq!(Some(now), last.as_ref());
                }
            }
            // The same text again: every job is the same declaration.
            if let Ok(first) = reparsed {
                let again = reparser.parse(&[doc]).unwrap();
                // (Unless a key comes twice: that is never taken as unchanged.)
                let twice = again.invalid.values().any(|r| r.starts_with("declared "));
                prop_assert!(reparser.unchanged() || twice, "{}", text);
                last = Some(again.clone());
                prop_assert_eq!(first.jobs.len(), again.jobs.len());
                for (old, new) in first.jobs.values().zip(again.jobs.values()) {
                    prop_assert!(Arc::ptr_eq(old, new), "{}", text);
                }
            }
        }
        Ok(())
    }

    /// Lines of TOML that stand alone.
    const LINES: [&str; 17] = [
        "[a]\n",
        "[b.env]\n",
        "[[c]]\n",
        "[\"d e\"]\n",
        "x = 1\n",
        "a.name = \"A\"\n",
        "\"k y\".z = 2 # c\n",
        "q = { a = 1, b = [2] }\n",
        "# [a]\n",
        "\n",
        "\r\n",
        "  \n",
        "y = \"[z]\"\n",
        "b = true\n",
        "c = 'x'\n",
        "m = \"\"\"x\"\"\"\n",
        "n = [ 1,\n  2, # two\n]\n",
    ];

    /// Lines of TOML that open what a later one closes (a multi-line
    /// string, an array), or close it.
    const OPEN_CLOSE: [&str; 8] = [
        "s = \"\"\"\n",
        "[not a header]\n",
        "\"\"\"\n",
        "t = '''\n",
        "'''\n",
        "arr = [\n",
        "  1, # one\n",
        "]\n",
    ];

    /// What a keystroke or a paste can put in a document.
    const PASTES: [&str; 12] = [
        "\"", "'", "\"\"\"", "'''", "[", "]", "\n", "#", "=", "x", ".", "[b]\n",
    ];

    fn lines() -> impl Strategy<Value = String> {
        let line = prop_oneof![
            6 => prop::sample::select(LINES.to_vec()),
            1 => prop::sample::select(OPEN_CLOSE.to_vec()),
        ];
        prop::collection::vec(line, 0..24).prop_map(|lines| lines.concat())
    }

    /// Replaces the bytes `at..at + len` of `text` with `with`; both ends
    /// are moved to character boundaries, and to line starts if `lines`.
    fn edit(text: &str, at: usize, len: usize, with: &str, lines: bool) -> String {
        let boundary = |mut i: usize| {
            i = i.min(text.len());
            if lines {
                i = text[..i].rfind('\n').map_or(0, |n| n + 1);
            }
            while !text.is_char_boundary(i) {
                i -= 1;
            }
            i
        };
        let start = boundary(at % (text.len() + 1));
        let end = boundary(start + len).max(start);
        format!("{}{with}{}", &text[..start], &text[end..])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// The common prefix and suffix, found a chunk at a time, are
        /// those found a byte at a time.
        #[test]
        fn common_ends_are_found_by_chunks_as_by_bytes(
            base in prop::collection::vec(0..3u8, 0..600),
            at in any::<usize>(),
            cut in 0..4usize,
            with in prop::collection::vec(0..3u8, 0..4),
        ) {
            let at = at % (base.len() + 1);
            let end = (at + cut).min(base.len());
            let other = [&base[..at], &with, &base[end..]].concat();
            let bytes = |a: &[u8], b: &[u8]| a.iter().zip(b).take_while(|(x, y)| x == y).count();
            prop_assert_eq!(common_prefix(&base, &other), bytes(&base, &other));
            let reversed = |v: &[u8]| v.iter().rev().copied().collect::<Vec<u8>>();
            prop_assert_eq!(
                common_suffix(&base, &other),
                bytes(&reversed(&base), &reversed(&other))
            );
        }

        /// Cutting a changed text from the last one's items gives the items
        /// of a cut of the whole text, whatever the change.
        #[test]
        fn a_cut_of_the_changed_part_equals_a_cut_of_the_whole_text(
            old in lines(),
            edits in prop::collection::vec(
                (any::<usize>(), 0..40usize, prop_oneof![
                    prop::sample::select(PASTES.to_vec()).prop_map(str::to_owned),
                    lines(),
                ], any::<bool>()),
                1..4,
            ),
        ) {
            let mut text = old;
            let mut last = split_items(&text);
            for (at, len, with, lines) in edits {
                let new = edit(&text, at, len, &with, lines);
                let whole = split_items(&new);
                if let Some(items) = &last {
                    let mut cut = items.clone();
                    let cut = resplit(&new, &text, &mut cut).then_some(cut);
                    prop_assert_eq!(&cut, &whole, "{:?} → {:?}", text, new);
                    // A text that does not split leaves the items as they were.
                    if cut.is_none() {
                        let mut kept = items.clone();
                        resplit(&new, &text, &mut kept);
                        prop_assert_eq!(&kept, items);
                    }
                }
                text = new;
                last = whole;
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Through any life of a TOML configuration, what a reparser makes
        /// of each text is what a whole parse makes of it.
        #[test]
        fn a_reparse_of_toml_equals_a_whole_parse(
            jobs in prop::collection::vec(gen_job(), 0..6),
            steps in prop::collection::vec(step(), 1..12),
        ) {
            same_as_a_whole_parse(Format::Toml, &render_toml, jobs, steps)?;
        }

        /// The same for JSON.
        #[test]
        fn a_reparse_of_json_equals_a_whole_parse(
            jobs in prop::collection::vec(gen_job(), 0..6),
            steps in prop::collection::vec(step(), 1..12),
        ) {
            same_as_a_whole_parse(Format::Json, &render_json, jobs, steps)?;
        }
    }
}
