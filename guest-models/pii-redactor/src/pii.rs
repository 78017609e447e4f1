//! Finds personal data in text: email addresses, phone numbers, payment
//! card numbers and IBANs.
//!
//! This file is self-contained on purpose (nothing but `core` and `alloc`
//! through `std`'s prelude): the `pii-redactor` guard uses it as a module,
//! and the host's tests include the very same file with `#[path = "..."]` to
//! measure precision and recall on a corpus natively.
//!
//! # Why hand-written scanners
//!
//! Every pattern is ASCII, so the scanners work on bytes: text that is not
//! valid UTF-8 is scanned too, a replacement never splits a multi-byte
//! character (spans start and end at ASCII bytes or run over whole non-ASCII
//! sequences), and no regex engine (hundreds of KB of wasm and a compile per
//! fresh instance) is needed. Each kind is a linear scan.
//!
//! # What counts as what
//!
//! - **Email**: `local@domain.tld`, the local part of letters, digits and
//!   `._%+-` (or non-ASCII), the domain of dot-separated labels with an
//!   alphabetic top-level label of 2+ letters. `icon@2x.png` (an image
//!   file name) and `pkg@1.2.3` (a version) are not emails.
//! - **IBAN**: two capital letters, two check digits, 11–30 capitals or
//!   digits, written solid or in groups of four separated by single spaces,
//!   15–34 characters in all, and the ISO 13616 mod-97 checksum must hold.
//! - **Card**: 13–19 digits, solid or in groups separated by single spaces
//!   or dashes, starting with 2–6 (the issuer ranges of the card networks:
//!   Mastercard 2/5, Amex, Diners and JCB 3, Visa 4, Discover, UnionPay and
//!   Maestro 6), passing the Luhn check. Random digit runs fail Luhn nine
//!   times in ten and the prefix rule removes half of what is left.
//! - **Phone**: `+` and 8–15 digits (E.164), `00` and 11–15 digits, North
//!   American `(415) 555-0132` / `415-555-0132` / `1-800-555-0199` (area
//!   code and exchange starting 2–9), national numbers with a trunk `0`
//!   (`020 7946 0958`, `06 12 34 56 78`, `0612345678`, 10–11 digits or 12
//!   when grouped, an area code of 2–5 digits, not shaped like a date), and 10–11 solid digits right after a word such as
//!   "phone", "tel" or "call".
//!
//! Numbers glued to letters (`ID4111111111111111`, `v1.2.3`) are never
//! matched: a match must start and end at a word boundary.

/// A kind of personal data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// An email address.
    Email,
    /// A phone number.
    Phone,
    /// A payment card number.
    Card,
    /// An International Bank Account Number.
    Iban,
}

impl Kind {
    /// Every kind, in the order the scanners run: earlier kinds win
    /// overlaps (an IBAN's digits are not also a card number).
    pub const ALL: [Kind; 4] = [Kind::Email, Kind::Iban, Kind::Card, Kind::Phone];

    /// The upper-case name, as in the placeholders and the guard's config.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Email => "EMAIL",
            Kind::Phone => "PHONE",
            Kind::Card => "CARD",
            Kind::Iban => "IBAN",
        }
    }

    /// Parses a name as given by [`Kind::name`] (case-insensitive).
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(name))
    }

    /// The text that replaces a match: `[EMAIL]`, `[PHONE]`, ….
    pub fn placeholder(self) -> &'static str {
        match self {
            Kind::Email => "[EMAIL]",
            Kind::Phone => "[PHONE]",
            Kind::Card => "[CARD]",
            Kind::Iban => "[IBAN]",
        }
    }
}

/// A match: `text[start..end]` is personal data of kind `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
    /// What was found.
    pub kind: Kind,
}

/// Finds the personal data of the kinds in `kinds` in `text`: sorted,
/// non-overlapping spans.
pub fn find(text: &[u8], kinds: &[Kind]) -> Vec<Span> {
    let mut spans: Vec<Span> = Vec::new();
    for kind in Kind::ALL {
        if !kinds.contains(&kind) {
            continue;
        }
        let found = match kind {
            Kind::Email => emails(text),
            Kind::Iban => ibans(text),
            Kind::Card => numbers(text, Kind::Card),
            Kind::Phone => numbers(text, Kind::Phone),
        };
        for span in found {
            if !spans
                .iter()
                .any(|s| s.start < span.end && span.start < s.end)
            {
                spans.push(span);
            }
        }
    }
    spans.sort_by_key(|s| s.start);
    spans
}

/// Replaces every match of `kinds` in `text` by its placeholder; `None`
/// when there was nothing to replace.
pub fn redact(text: &[u8], kinds: &[Kind]) -> Option<Vec<u8>> {
    let spans = find(text, kinds);
    if spans.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(text.len());
    let mut at = 0;
    for span in spans {
        out.extend_from_slice(&text[at..span.start]);
        out.extend_from_slice(span.kind.placeholder().as_bytes());
        at = span.end;
    }
    out.extend_from_slice(&text[at..]);
    Some(out)
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Whether a match may start at `i`: the byte before is not part of a word.
fn starts_word(text: &[u8], i: usize) -> bool {
    i == 0 || !is_word(text[i - 1])
}

/// Whether a match may end at `i`: the byte there is not part of a word.
fn ends_word(text: &[u8], i: usize) -> bool {
    i >= text.len() || !is_word(text[i])
}

// ---------------------------------------------------------------- email

fn is_local(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-') || b >= 0x80
}

fn is_domain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-') || b >= 0x80
}

/// Top-level labels that are file extensions: `icon@2x.png` is an image.
const FILE_EXTENSIONS: &[&[u8]] = &[
    b"png", b"jpg", b"jpeg", b"gif", b"svg", b"webp", b"bmp", b"ico", b"pdf",
];

fn emails(text: &[u8]) -> Vec<Span> {
    let mut spans = Vec::new();
    let mut search_from = 0;
    for at in 0..text.len() {
        if text[at] != b'@' || at < search_from {
            continue;
        }
        // Local part: back from '@', then drop leading dots.
        let mut start = at;
        while start > search_from && is_local(text[start - 1]) {
            start -= 1;
        }
        while start < at && text[start] == b'.' {
            start += 1;
        }
        if start == at || text[at - 1] == b'.' || has_double_dot(&text[start..at]) {
            continue;
        }
        // Domain: forward from '@', then drop trailing dots and dashes
        // (the end of a sentence).
        let mut end = at + 1;
        while end < text.len() && is_domain(text[end]) {
            end += 1;
        }
        while end > at + 1 && matches!(text[end - 1], b'.' | b'-') {
            end -= 1;
        }
        if !valid_domain(&text[at + 1..end]) {
            continue;
        }
        spans.push(Span {
            start,
            end,
            kind: Kind::Email,
        });
        search_from = end;
    }
    spans
}

fn has_double_dot(s: &[u8]) -> bool {
    s.windows(2).any(|w| w == b"..")
}

fn valid_domain(domain: &[u8]) -> bool {
    let labels: Vec<&[u8]> = domain.split(|b| *b == b'.').collect();
    if labels.len() < 2 {
        return false;
    }
    if labels
        .iter()
        .any(|l| l.is_empty() || l.len() > 63 || l[0] == b'-' || l[l.len() - 1] == b'-')
    {
        return false;
    }
    let tld = labels[labels.len() - 1];
    let alphabetic = tld.len() >= 2 && tld.iter().all(|b| b.is_ascii_alphabetic() || *b >= 0x80);
    let punycode = tld.len() > 4 && tld[..4].eq_ignore_ascii_case(b"xn--");
    (alphabetic || punycode)
        && !FILE_EXTENSIONS
            .iter()
            .any(|ext| tld.eq_ignore_ascii_case(ext))
}

// ----------------------------------------------------------------- IBAN

fn ibans(text: &[u8]) -> Vec<Span> {
    let mut spans = Vec::new();
    let mut i = 0;
    while i + 4 <= text.len() {
        let head = &text[i..i + 4];
        let plausible = head[0].is_ascii_uppercase()
            && head[1].is_ascii_uppercase()
            && head[2].is_ascii_digit()
            && head[3].is_ascii_digit()
            && starts_word(text, i);
        if plausible && let Some(end) = iban_at(text, i) {
            spans.push(Span {
                start: i,
                end,
                kind: Kind::Iban,
            });
            i = end;
            continue;
        }
        i += 1;
    }
    spans
}

fn is_iban_char(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit()
}

/// The end of a valid IBAN starting at `start`, if there is one.
fn iban_at(text: &[u8], start: usize) -> Option<usize> {
    // Solid: the whole word.
    let mut end = start;
    while end < text.len() && is_iban_char(text[end]) {
        end += 1;
    }
    if ends_word(text, end) && iban_valid(text[start..end].iter().copied()) {
        return Some(end);
    }
    // Grouped: "DE89 3704 0044 0532 0130 00", fours and a last group of 1-4.
    if end - start != 4 {
        return None;
    }
    let mut last_end = end;
    let mut best = None;
    loop {
        if last_end + 1 >= text.len() || text[last_end] != b' ' || !is_iban_char(text[last_end + 1])
        {
            break;
        }
        let group_start = last_end + 1;
        let mut group_end = group_start;
        while group_end < text.len() && is_iban_char(text[group_end]) {
            group_end += 1;
        }
        let len = group_end - group_start;
        if len > 4 || !ends_word(text, group_end) {
            break;
        }
        last_end = group_end;
        let chars = text[start..last_end].iter().copied().filter(|b| *b != b' ');
        if iban_valid(chars) {
            best = Some(last_end);
        }
        if len < 4 {
            break;
        }
    }
    best
}

/// ISO 13616: 15–34 characters, and moving the first four to the end and
/// reading letters as 10..=35 gives a number that is 1 modulo 97.
fn iban_valid(chars: impl Iterator<Item = u8> + Clone) -> bool {
    let len = chars.clone().count();
    if !(15..=34).contains(&len) {
        return false;
    }
    let mut head = chars.clone().take(4);
    let (Some(a), Some(b), Some(c), Some(d)) = (head.next(), head.next(), head.next(), head.next())
    else {
        return false;
    };
    if !(a.is_ascii_uppercase()
        && b.is_ascii_uppercase()
        && c.is_ascii_digit()
        && d.is_ascii_digit())
    {
        return false;
    }
    let mut remainder: u32 = 0;
    for ch in chars.clone().skip(4).chain([a, b, c, d]) {
        remainder = match ch {
            b'0'..=b'9' => (remainder * 10 + u32::from(ch - b'0')) % 97,
            b'A'..=b'Z' => (remainder * 100 + u32::from(ch - b'A' + 10)) % 97,
            _ => return false,
        };
    }
    remainder == 1
}

// ------------------------------------------------------- cards and phones

/// A run of digits with separators, as written in text.
struct Run {
    start: usize,
    end: usize,
    /// The digits alone.
    digits: Vec<u8>,
    /// Lengths of the digit groups between separators.
    groups: Vec<usize>,
    /// The separators used (spaces, dashes, dots), in order.
    separators: Vec<u8>,
    /// Starts with `+`.
    plus: bool,
    /// Has a parenthesised group, as in `(415) 555-0132`.
    parens: bool,
}

/// Scans `text` for digit runs and keeps those that are of `kind`.
fn numbers(text: &[u8], kind: Kind) -> Vec<Span> {
    let mut spans = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        let opens = b.is_ascii_digit()
            || ((b == b'+' || b == b'(') && text.get(i + 1).is_some_and(u8::is_ascii_digit));
        if !opens || !starts_word(text, i) {
            i += 1;
            continue;
        }
        let run = read_run(text, i);
        i = run.end.max(i + 1);
        if !ends_word(text, run.end) {
            // Glued to a word ("4111…1111abc"): skip the rest of that word.
            while i < text.len() && is_word(text[i]) {
                i += 1;
            }
            continue;
        }
        let found = match kind {
            Kind::Card => is_card(&run) && !after_iban_head(text, run.start),
            Kind::Phone => is_phone(&run, text),
            _ => false,
        };
        if found {
            spans.push(Span {
                start: run.start,
                end: run.end,
                kind,
            });
        }
    }
    spans
}

fn read_run(text: &[u8], start: usize) -> Run {
    let mut run = Run {
        start,
        end: start,
        digits: Vec::new(),
        groups: vec![0],
        separators: Vec::new(),
        plus: false,
        parens: false,
    };
    let mut i = start;
    if text[i] == b'+' {
        run.plus = true;
        i += 1;
    }
    let digit_at = |j: usize| text.get(j).is_some_and(u8::is_ascii_digit);
    let mut open_paren = false;
    loop {
        match text.get(i) {
            Some(&d) if d.is_ascii_digit() => {
                run.digits.push(d);
                *run.groups.last_mut().unwrap() += 1;
                i += 1;
                run.end = i;
            }
            Some(b'(') if !open_paren && digit_at(i + 1) => {
                if *run.groups.last().unwrap() > 0 {
                    run.groups.push(0);
                    run.separators.push(b' ');
                }
                open_paren = true;
                run.parens = true;
                i += 1;
            }
            Some(b')') if open_paren && *run.groups.last().unwrap() > 0 => {
                open_paren = false;
                i += 1;
                run.end = i;
                // "(415) 555" or "(415)555": the group ends here.
                if text.get(i) == Some(&b' ') && (digit_at(i + 1) || text.get(i + 1) == Some(&b'('))
                {
                    i += 1;
                }
                if digit_at(i) {
                    run.groups.push(0);
                    run.separators.push(b' ');
                }
            }
            Some(&sep) if matches!(sep, b' ' | b'-' | b'.') && !open_paren => {
                let next_opens =
                    digit_at(i + 1) || (text.get(i + 1) == Some(&b'(') && digit_at(i + 2));
                if !next_opens || *run.groups.last().unwrap() == 0 {
                    break;
                }
                if digit_at(i + 1) {
                    run.groups.push(0);
                    run.separators.push(sep);
                }
                i += 1;
            }
            _ => break,
        }
    }
    if open_paren {
        // An unclosed "(": keep what came before it.
        while run.groups.last() == Some(&0) && run.groups.len() > 1 {
            run.groups.pop();
            run.separators.pop();
        }
    }
    run.groups.retain(|g| *g > 0);
    run
}

fn is_card(run: &Run) -> bool {
    let n = run.digits.len();
    !run.plus
        && !run.parens
        && (13..=19).contains(&n)
        && run.separators.iter().all(|s| matches!(s, b' ' | b'-'))
        && matches!(run.digits[0], b'2'..=b'6')
        && luhn(&run.digits)
}

/// Whether `start` follows the head of an IBAN ("DE89 "): the digits are
/// then the rest of an account number whose checksum failed (a typo), not
/// a card number that happens to pass Luhn.
fn after_iban_head(text: &[u8], start: usize) -> bool {
    start >= 5
        && text[start - 1] == b' '
        && text[start - 5].is_ascii_uppercase()
        && text[start - 4].is_ascii_uppercase()
        && text[start - 3].is_ascii_digit()
        && text[start - 2].is_ascii_digit()
        && starts_word(text, start - 5)
}

/// The Luhn check: doubling every second digit from the right, the digit
/// sum is a multiple of ten.
fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// Words that announce a phone number, lower-case, in the languages of the
/// corpus.
const PHONE_WORDS: &[&[u8]] = &[
    b"phone",
    b"tel",
    b"call",
    b"mobile",
    b"cell",
    b"fax",
    b"sms",
    b"whatsapp",
    b"telefon",
    b"handy",
    b"mobil",
    b"portable",
    b"ring",
];

fn is_phone(run: &Run, text: &[u8]) -> bool {
    let d = &run.digits;
    let n = d.len();
    if run.plus {
        return (8..=15).contains(&n) && d[0] != b'0';
    }
    if n >= 11 && d[0] == b'0' && d[1] == b'0' {
        return n <= 15 && d[2] != b'0';
    }
    let g = &run.groups[..];
    // German mobile numbers reach 12 digits with the trunk 0 ("0151
    // 23456789"); written solid, 12 digits are more likely something else.
    let longest = if d[0] == b'0' && g.len() >= 2 { 12 } else { 11 };
    if !(10..=longest).contains(&n) {
        return false;
    }
    let same_separators = run.separators.windows(2).all(|w| w[0] == w[1]);
    // North American Numbering Plan: [1] NXX NXX XXXX.
    let nanp = match (n, g) {
        (10, [3, 3, 4]) => Some(0),
        (11, [1, 3, 3, 4]) if d[0] == b'1' => Some(1),
        _ => None,
    };
    if let Some(at) = nanp {
        return matches!(d[at], b'2'..=b'9') && matches!(d[at + 3], b'2'..=b'9');
    }
    if run.parens {
        return false;
    }
    let dotted = run.separators.contains(&b'.');
    let date_like = g.starts_with(&[2, 2, 4]) || g.starts_with(&[4, 2, 2]);
    // A national area code with its trunk 0 has 2–5 digits.
    let area_code = g.len() == 1 || g[0] <= 5;
    if d[0] == b'0' && d[1] != b'0' && area_code && same_separators && !date_like {
        // Dots only in the French style, 01.23.45.67.89.
        return !dotted || g.iter().all(|len| *len == 2);
    }
    g.len() == 1 && after_phone_word(text, run.start)
}

/// Whether one of [`PHONE_WORDS`] appears in the 16 bytes before `start`
/// ("Tel: ", "call me on ", "telephone number "). A substring test: cheap,
/// and it only decides about solid 10–11 digit runs, which have no other
/// phone shape.
fn after_phone_word(text: &[u8], start: usize) -> bool {
    let window = text[start.saturating_sub(16)..start].to_ascii_lowercase();
    PHONE_WORDS
        .iter()
        .any(|word| window.windows(word.len()).any(|w| w == *word))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<(Kind, String)> {
        find(text.as_bytes(), &Kind::ALL)
            .into_iter()
            .map(|s| (s.kind, text[s.start..s.end].to_owned()))
            .collect()
    }

    #[test]
    fn finds_each_kind() {
        assert_eq!(
            kinds("mail jane.doe+x@example.co.uk now"),
            [(Kind::Email, "jane.doe+x@example.co.uk".into())]
        );
        assert_eq!(
            kinds("IBAN DE89 3704 0044 0532 0130 00."),
            [(Kind::Iban, "DE89 3704 0044 0532 0130 00".into())]
        );
        assert_eq!(
            kinds("card 4111 1111 1111 1111, thanks"),
            [(Kind::Card, "4111 1111 1111 1111".into())]
        );
        assert_eq!(
            kinds("call +44 20 7946 0958 today"),
            [(Kind::Phone, "+44 20 7946 0958".into())]
        );
        assert_eq!(
            kinds("(415) 555-0132"),
            [(Kind::Phone, "(415) 555-0132".into())]
        );
    }

    #[test]
    fn leaves_near_misses_alone() {
        for text in [
            "card 4111 1111 1111 1112",
            "IBAN DE89 3704 0044 0532 0130 01",
            "icon@2x.png",
            "left-pad@1.3.0",
            "released 2024-01-15 10:30",
            "host 192.168.100.200",
            "ISBN 978-3-16-148410-0",
            "ID4111111111111111",
        ] {
            assert_eq!(kinds(text), [], "{text}");
        }
    }

    #[test]
    fn redacts_in_place() {
        let out = redact(b"Write to a@b.io or call 020 7946 0958.", &Kind::ALL).unwrap();
        assert_eq!(out, b"Write to [EMAIL] or call [PHONE].");
        assert_eq!(redact(b"nothing here", &Kind::ALL), None);
    }
}
