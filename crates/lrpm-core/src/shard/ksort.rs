//! PHP's `ksort($array)` (PHP ≥ 8.2, `SORT_REGULAR`) over job ids, so that
//! the `balanced` strategy orders ids exactly as php-lrpm-cluster does.
//!
//! # Theory of operation
//!
//! A PHP array key is an integer when its text is an integer in canonical
//! form (`0`, `-7`, `42`, never `007`, `-0` or `+1`) that fits 64 bits;
//! any other key is a string. `ksort` compares two keys as PHP 8's `<=>`
//! does: two integers by value; two strings numerically when both are
//! numeric strings (`" 12"`, `"1e3"`, `"007"`, `".5"`), else byte by byte;
//! an integer and a string numerically when the string is numeric, else
//! the integer's decimal text byte by byte against the string. Keys that
//! compare equal (`7` and `"007"`) keep their order in the array.
//!
//! That comparison is not a total order when numeric and other strings mix
//! (`9 < 10`, `"10" < "1a"`, `"1a" < "9"`), so the order `ksort` gives then
//! depends on its algorithm and on the order it started from. [`ksort`]
//! therefore runs the Zend engine's own sort (a hybrid insertion sort up to
//! 16 elements, else a quicksort with a median of three or five pivot),
//! comparison for comparison; the golden test runs PHP itself on the same
//! ids and compares.

use std::cmp::Ordering;

/// How PHP holds a key: an integer key or a string key.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Key<'a> {
    Int(i64),
    Str(&'a [u8]),
}

impl<'a> Key<'a> {
    /// The key PHP makes of `text` in an array (`ZEND_HANDLE_NUMERIC_STR`).
    fn of(text: &'a str) -> Self {
        match canonical_int(text.as_bytes()) {
            Some(n) => Key::Int(n),
            None => Key::Str(text.as_bytes()),
        }
    }
}

/// `text` as an integer key: `0`, or an optional `-` and a digit string
/// without a leading zero, within `i64`.
fn canonical_int(text: &[u8]) -> Option<i64> {
    let digits = text.strip_prefix(b"-").unwrap_or(text);
    let canonical = match digits {
        [b'0'] => text.len() == 1,
        [b'1'..=b'9', rest @ ..] => rest.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    if !canonical {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// A numeric string's value, as `is_numeric_string_ex` reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Number {
    Long(i64),
    Double(f64),
}

/// A numeric string: its value and whether it is an integer too large for
/// 64 bits (`1` above, `-1` below; PHP's `oflow_info`).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Numeric {
    value: Number,
    overflow: i8,
}

/// The whitespace PHP skips around a numeric string.
fn is_php_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// The number of digits of an integer that PHP reads as a `long` at most
/// (`MAX_LENGTH_OF_LONG - 1` on 64 bits), and the smallest such digit
/// string that does not fit.
const LONG_DIGITS: usize = 19;
const LONG_MIN_DIGITS: &[u8] = b"9223372036854775808";

/// `text` read as PHP 8 reads a numeric string without allowing errors:
/// whitespace, a sign, digits with an optional fraction and exponent,
/// whitespace; `None` for anything else.
fn numeric(text: &[u8]) -> Option<Numeric> {
    let at = |i: usize| text.get(i).copied().unwrap_or(0);
    let mut start = 0;
    while start < text.len() && is_php_space(text[start]) {
        start += 1;
    }
    let mut p = start;
    let negative = at(p) == b'-';
    if matches!(at(p), b'-' | b'+') {
        p += 1;
    }
    let mut double = false;
    let mut overflow = 0i8;
    let mut digits = 0usize;
    if at(p).is_ascii_digit() {
        while at(p) == b'0' {
            p += 1;
        }
        while at(p).is_ascii_digit() && digits < LONG_DIGITS + 1 {
            p += 1;
            digits += 1;
        }
        if digits > LONG_DIGITS {
            overflow = if negative { -1 } else { 1 };
            double = true;
        } else if at(p) == b'.' || (matches!(at(p), b'e' | b'E') && exponent_follows(text, p)) {
            double = true;
        }
    } else if at(p) == b'.' && at(p + 1).is_ascii_digit() {
        double = true;
    } else {
        return None;
    }
    let end = if double { strtod_end(text, start) } else { p };
    let mut rest = end;
    while rest < text.len() && is_php_space(text[rest]) {
        rest += 1;
    }
    if rest != text.len() {
        return None;
    }
    let number = &text[start..end];
    if !double {
        if digits == LONG_DIGITS {
            let too_big = match text[p - digits..p].cmp(LONG_MIN_DIGITS) {
                Ordering::Less => false,
                Ordering::Equal => !negative,
                Ordering::Greater => true,
            };
            if too_big {
                return Some(Numeric {
                    value: Number::Double(parse_double(number)),
                    overflow: if negative { -1 } else { 1 },
                });
            }
        }
        let magnitude = number
            .iter()
            .filter(|b| b.is_ascii_digit())
            .fold(0u64, |acc, b| {
                acc.wrapping_mul(10).wrapping_add(u64::from(b - b'0'))
            });
        let value = if negative {
            magnitude.wrapping_neg()
        } else {
            magnitude
        };
        return Some(Numeric {
            value: Number::Long(value as i64),
            overflow: 0,
        });
    }
    Some(Numeric {
        value: Number::Double(parse_double(number)),
        overflow,
    })
}

/// Whether an exponent's digits follow the `e` at `e`.
fn exponent_follows(text: &[u8], e: usize) -> bool {
    let mut p = e + 1;
    if matches!(text.get(p), Some(b'-' | b'+')) {
        p += 1;
    }
    text.get(p).is_some_and(u8::is_ascii_digit)
}

/// Where `strtod` stops reading a decimal number that begins at `start`:
/// sign, digits, fraction, exponent.
fn strtod_end(text: &[u8], start: usize) -> usize {
    let mut p = start;
    if matches!(text.get(p), Some(b'-' | b'+')) {
        p += 1;
    }
    while text.get(p).is_some_and(u8::is_ascii_digit) {
        p += 1;
    }
    if text.get(p) == Some(&b'.') {
        p += 1;
        while text.get(p).is_some_and(u8::is_ascii_digit) {
            p += 1;
        }
    }
    if matches!(text.get(p), Some(b'e' | b'E')) && exponent_follows(text, p) {
        p += 1;
        if matches!(text.get(p), Some(b'-' | b'+')) {
            p += 1;
        }
        while text.get(p).is_some_and(u8::is_ascii_digit) {
            p += 1;
        }
    }
    p
}

/// A decimal number's value, correctly rounded as `zend_strtod` gives it.
fn parse_double(number: &[u8]) -> f64 {
    // Rust's parser wants digits on both sides of the point.
    let mut text = String::with_capacity(number.len() + 2);
    let mut previous = 0u8;
    for &b in number {
        if b == b'.' && !previous.is_ascii_digit() {
            text.push('0');
        }
        if matches!(b, b'e' | b'E') && previous == b'.' {
            text.push('0');
        }
        text.push(char::from(b));
        previous = b;
    }
    if previous == b'.' {
        text.push('0');
    }
    text.parse()
        .expect("invariant: strtod_end delimits a decimal number")
}

/// `a <=> b` as a three-way integer, PHP's `ZEND_NORMALIZE_BOOL`.
fn sign<T: PartialOrd>(a: T, b: T) -> i32 {
    match a.partial_cmp(&b) {
        Some(Ordering::Less) => -1,
        Some(Ordering::Greater) => 1,
        _ => 0,
    }
}

/// Two string keys: `zendi_smart_strcmp`.
fn compare_strings(a: &[u8], b: &[u8]) -> i32 {
    let (Some(x), Some(y)) = (numeric(a), numeric(b)) else {
        return sign(a, b);
    };
    match (x.value, y.value) {
        (Number::Long(p), Number::Long(q)) => sign(p, q),
        (Number::Double(p), Number::Double(q)) => {
            let same_overflow = x.overflow != 0 && x.overflow == y.overflow && p - q == 0.0;
            if same_overflow || (p == q && !p.is_finite()) {
                sign(a, b)
            } else {
                sign(p - q, 0.0)
            }
        }
        (Number::Long(p), Number::Double(q)) => {
            if y.overflow != 0 {
                -i32::from(y.overflow)
            } else {
                sign(p as f64 - q, 0.0)
            }
        }
        (Number::Double(p), Number::Long(q)) => {
            if x.overflow != 0 {
                i32::from(x.overflow)
            } else {
                sign(p - q as f64, 0.0)
            }
        }
    }
}

/// An integer key against a string key: `zend_compare_long_to_string`.
fn compare_int_string(n: i64, s: &[u8]) -> i32 {
    match numeric(s).map(|x| x.value) {
        Some(Number::Long(m)) => sign(n, m),
        Some(Number::Double(d)) => sign(n as f64, d),
        None => sign(n.to_string().as_bytes(), s),
    }
}

/// Two keys, as `ksort`'s comparison without its tie-break.
fn compare_keys(a: Key<'_>, b: Key<'_>) -> i32 {
    match (a, b) {
        (Key::Int(x), Key::Int(y)) => {
            if x > y {
                1
            } else {
                -1
            }
        }
        (Key::Str(x), Key::Str(y)) => compare_strings(x, y),
        (Key::Int(x), Key::Str(y)) => compare_int_string(x, y),
        (Key::Str(x), Key::Int(y)) => -compare_int_string(y, x),
    }
}

/// The order in which PHP's `ksort` leaves the keys `ids`, given in the
/// order the array held them: the indices into `ids`, first to last.
pub fn ksort(ids: &[&str]) -> Vec<usize> {
    let keys: Vec<Key<'_>> = ids.iter().map(|id| Key::of(id)).collect();
    let mut order: Vec<usize> = (0..ids.len()).collect();
    // Equal keys keep their order in the array (PHP 8's stable sort).
    let mut cmp = |a: &usize, b: &usize| match compare_keys(keys[*a], keys[*b]) {
        0 => sign(*a, *b),
        c => c,
    };
    zend_sort(&mut order, &mut cmp);
    order
}

/// A three-way comparison as the Zend sort calls it: positive when the
/// first element goes after the second.
type Compare<'c, T> = dyn FnMut(&T, &T) -> i32 + 'c;

/// The Zend engine's `zend_sort`: insertion sort up to 16 elements, else a
/// quicksort step on a median pivot, recursing into the smaller part and
/// looping on the larger one.
fn zend_sort<T>(v: &mut [T], cmp: &mut Compare<'_, T>) {
    let mut v = v;
    loop {
        let n = v.len();
        if n <= 16 {
            insert_sort(v, cmp);
            return;
        }
        let offset = n >> 1;
        if n >> 10 != 0 {
            let delta = offset >> 1;
            sort5(v, [0, delta, offset, offset + delta, n - 1], cmp);
        } else {
            sort3(v, [0, offset, n - 1], cmp);
        }
        v.swap(1, offset);
        let pivot = 1;
        let mut i = pivot + 1;
        let mut j = n - 1;
        'partition: loop {
            while cmp(&v[pivot], &v[i]) > 0 {
                i += 1;
                if i == j {
                    break 'partition;
                }
            }
            j -= 1;
            if j == i {
                break 'partition;
            }
            while cmp(&v[j], &v[pivot]) > 0 {
                j -= 1;
                if j == i {
                    break 'partition;
                }
            }
            v.swap(i, j);
            i += 1;
            if i == j {
                break 'partition;
            }
        }
        v.swap(pivot, i - 1);
        let (left, right) = std::mem::take(&mut v).split_at_mut(i);
        let left = &mut left[..i - 1];
        if left.len() < right.len() {
            zend_sort(left, cmp);
            v = right;
        } else {
            zend_sort(right, cmp);
            v = left;
        }
    }
}

/// `zend_sort_2`.
fn sort2<T>(v: &mut [T], [a, b]: [usize; 2], cmp: &mut Compare<'_, T>) {
    if cmp(&v[a], &v[b]) > 0 {
        v.swap(a, b);
    }
}

/// `zend_sort_3`.
fn sort3<T>(v: &mut [T], [a, b, c]: [usize; 3], cmp: &mut Compare<'_, T>) {
    if cmp(&v[a], &v[b]) <= 0 {
        if cmp(&v[b], &v[c]) <= 0 {
            return;
        }
        v.swap(b, c);
        sort2(v, [a, b], cmp);
        return;
    }
    if cmp(&v[c], &v[b]) <= 0 {
        v.swap(a, c);
        return;
    }
    v.swap(a, b);
    sort2(v, [b, c], cmp);
}

/// `zend_sort_4` and `zend_sort_5`: the first ones sorted, then the last
/// one sunk into place.
fn sort_sink<T>(v: &mut [T], at: &[usize], cmp: &mut Compare<'_, T>) {
    for k in (1..at.len()).rev() {
        if cmp(&v[at[k - 1]], &v[at[k]]) <= 0 {
            return;
        }
        v.swap(at[k - 1], at[k]);
    }
}

/// `zend_sort_4`.
fn sort4<T>(v: &mut [T], at: [usize; 4], cmp: &mut Compare<'_, T>) {
    sort3(v, [at[0], at[1], at[2]], cmp);
    sort_sink(v, &at, cmp);
}

/// `zend_sort_5`.
fn sort5<T>(v: &mut [T], at: [usize; 5], cmp: &mut Compare<'_, T>) {
    sort4(v, [at[0], at[1], at[2], at[3]], cmp);
    sort_sink(v, &at, cmp);
}

/// `zend_insert_sort`: fixed networks up to five elements; beyond, the
/// first six by linear insertion, the rest by a search two steps at a time.
fn insert_sort<T>(v: &mut [T], cmp: &mut Compare<'_, T>) {
    let n = v.len();
    match n {
        0 | 1 => return,
        2 => return sort2(v, [0, 1], cmp),
        3 => return sort3(v, [0, 1, 2], cmp),
        4 => return sort4(v, [0, 1, 2, 3], cmp),
        5 => return sort5(v, [0, 1, 2, 3, 4], cmp),
        _ => {}
    }
    for i in 1..6 {
        let mut j = i - 1;
        if cmp(&v[j], &v[i]) <= 0 {
            continue;
        }
        while j != 0 {
            j -= 1;
            if cmp(&v[j], &v[i]) <= 0 {
                j += 1;
                break;
            }
        }
        v[j..=i].rotate_right(1);
    }
    for i in 6..n {
        let mut j = i - 1;
        if cmp(&v[j], &v[i]) <= 0 {
            continue;
        }
        loop {
            j -= 2;
            if cmp(&v[j], &v[i]) <= 0 {
                j += 1;
                if cmp(&v[j], &v[i]) <= 0 {
                    j += 1;
                }
                break;
            }
            if j == 0 {
                break;
            }
            if j == 1 {
                j -= 1;
                if cmp(&v[i], &v[j]) > 0 {
                    j += 1;
                }
                break;
            }
        }
        v[j..=i].rotate_right(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(ids: &[&str]) -> Vec<String> {
        ksort(ids).into_iter().map(|i| ids[i].to_owned()).collect()
    }

    #[test]
    fn integer_keys_are_canonical_decimal_within_64_bits() {
        assert_eq!(Key::of("42"), Key::Int(42));
        assert_eq!(Key::of("-7"), Key::Int(-7));
        assert_eq!(Key::of("0"), Key::Int(0));
        assert_eq!(Key::of("-9223372036854775808"), Key::Int(i64::MIN));
        for text in [
            "007",
            "-0",
            "+1",
            " 1",
            "1 ",
            "9223372036854775808",
            "",
            "-",
            "1e3",
        ] {
            assert_eq!(Key::of(text), Key::Str(text.as_bytes()), "{text:?}");
        }
    }

    #[test]
    fn numeric_strings_as_php_8_reads_them() {
        let long = |n| {
            Some(Numeric {
                value: Number::Long(n),
                overflow: 0,
            })
        };
        let double = |d, overflow| {
            Some(Numeric {
                value: Number::Double(d),
                overflow,
            })
        };
        assert_eq!(numeric(b"007"), long(7));
        assert_eq!(numeric(b" -12 "), long(-12));
        assert_eq!(numeric(b"+5"), long(5));
        assert_eq!(numeric(b"1e3"), double(1000.0, 0));
        assert_eq!(numeric(b".5"), double(0.5, 0));
        assert_eq!(numeric(b"1."), double(1.0, 0));
        assert_eq!(numeric(b"1.e2"), double(100.0, 0));
        assert_eq!(
            numeric(b"9223372036854775808"),
            double(9.223372036854776e18, 1)
        );
        assert_eq!(numeric(b"-9223372036854775808"), long(i64::MIN));
        assert_eq!(
            numeric(b"123456789012345678901"),
            double(1.2345678901234568e20, 1)
        );
        for text in [
            "", " ", "-", "1e", "1e+", "0x1A", "1_000", "abc", "1a", ".", "inf", "1.5.3", "--1",
        ] {
            assert_eq!(numeric(text.as_bytes()), None, "{text:?}");
        }
    }

    #[test]
    fn ksort_orders_integers_by_value_and_equal_keys_by_position() {
        assert_eq!(
            sorted(&["10", "9", "-1", "b", "a"]),
            ["-1", "9", "10", "a", "b"]
        );
        assert_eq!(sorted(&["007", "7"]), ["007", "7"]);
        assert_eq!(sorted(&["7", "007"]), ["7", "007"]);
    }

    #[test]
    fn zend_sort_sorts_a_total_order_of_any_length() {
        let lengths = (0..40).chain([300, 1023, 1024, 1025, 2049]);
        for n in lengths {
            let mut v: Vec<u64> = (0..n).map(|i| (i * 7919 + 13) % 1009).collect();
            let mut expected = v.clone();
            expected.sort();
            zend_sort(&mut v, &mut |a: &u64, b: &u64| sign(*a, *b));
            assert_eq!(v, expected, "length {n}");
        }
    }
}
