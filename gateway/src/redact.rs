//! Keeping upstream keys out of everything the gateway says: error messages, logs and
//! completion text. A key is caught in any letter case, percent-encoded (either hex
//! case), and in part: any run of 8 or more of its characters (so a key cut short by a
//! truncation, or quoted only in part, is still caught). Keys shorter than 8 characters
//! are caught whole, in any case and encoding; keys under 4 characters are not redacted.
//!
//! Matching works on a normalized view of the text (ASCII lower case, `%XX` decoded)
//! and replaces the original bytes of every match with `[redacted]`. Everything is
//! precomputed per key: the set of its lower-cased 8-grams as `u64`s, so a scan is one
//! rolling window and one hash probe per byte, and text without a match is returned
//! without copying. `StreamRedactor` does the same for text that arrives in pieces (a
//! key split across two deltas is still caught) while holding back only what could
//! still turn into a match.

use std::borrow::Cow;
use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

/// What a match is replaced with.
pub const REDACTED: &str = "[redacted]";

/// The longest run of key characters matched as a unit (and the shortest part of a
/// longer key that is redacted).
const GRAM: usize = 8;

/// Keys shorter than this are not redacted (they would match ordinary text).
const MIN_KEY: usize = 4;

/// The keys of one upstream, precomputed for matching; cheap to clone (shared).
#[derive(Clone)]
pub struct Redactor {
    tables: std::sync::Arc<Tables>,
}

struct Tables {
    /// One set per window length in use: `(len, windows)`. Keys of 8+ bytes add their
    /// 8-grams to the `len = 8` set; a shorter key adds itself to the set of its length.
    sets: Vec<(usize, GramSet)>,
    /// Every substring of length 1..8 of a key (lower case), packed with its length:
    /// what a stream's tail must match to be held back.
    prefixes: GramSet,
    /// The bytes keys are made of (lower case): a window is only looked up once its
    /// bytes all are, which skips nearly every probe in ordinary text.
    alphabet: [bool; 256],
    /// The shortest window length in `sets`.
    min_len: usize,
}

type GramSet = HashSet<u64, BuildHasherDefault<GramHasher>>;

/// A multiply-shift hash for `u64` windows (the std SipHash costs more than the scan).
#[derive(Default)]
struct GramHasher(u64);

impl Hasher for GramHasher {
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 32)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (v ^ (v >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A window of `len` bytes packed into a `u64` (first byte highest).
fn pack(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |w, &b| (w << 8) | b as u64)
}

/// A window of under 8 bytes tagged with its length, so `ab` and `\0ab` differ.
fn tagged(len: usize, w: u64) -> u64 {
    w | ((len as u64) << 56)
}

fn mask(len: usize) -> u64 {
    if len >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * len)) - 1
    }
}

impl Redactor {
    /// A redactor for `keys`; keys under 4 bytes are ignored.
    pub fn new<'a>(keys: impl IntoIterator<Item = &'a str>) -> Redactor {
        let mut r = Tables {
            sets: Vec::new(),
            prefixes: GramSet::default(),
            alphabet: [false; 256],
            min_len: GRAM,
        };
        for key in keys {
            let k = key.to_ascii_lowercase().into_bytes();
            if k.len() < MIN_KEY {
                continue;
            }
            for &b in &k {
                r.alphabet[b as usize] = true;
            }
            let len = k.len().min(GRAM);
            r.min_len = r.min_len.min(len);
            let set = match r.sets.iter_mut().find(|(l, _)| *l == len) {
                Some((_, s)) => s,
                None => {
                    r.sets.push((len, GramSet::default()));
                    &mut r.sets.last_mut().expect("just pushed").1
                }
            };
            for w in k.windows(len) {
                set.insert(pack(w));
            }
            for n in 1..len {
                for w in k.windows(n) {
                    r.prefixes.insert(tagged(n, pack(w)));
                }
            }
        }
        Redactor {
            tables: std::sync::Arc::new(r),
        }
    }

    /// Whether there is any key to look for.
    pub fn is_empty(&self) -> bool {
        self.tables.sets.is_empty()
    }

    /// `text` with every match replaced; borrowed when nothing matched.
    pub fn redact<'t>(&self, text: &'t str) -> Cow<'t, str> {
        if self.is_empty() {
            return Cow::Borrowed(text);
        }
        let ranges = self.ranges(text.as_bytes());
        if ranges.is_empty() {
            return Cow::Borrowed(text);
        }
        Cow::Owned(replace(text, &ranges))
    }

    /// Redacts, then cuts to at most `max` bytes (at a char boundary): the order that
    /// keeps a key cut by the truncation from slipping through.
    pub fn redact_truncated(&self, text: &str, max: usize) -> String {
        let r = self.redact(text);
        let mut end = r.len().min(max);
        while !r.is_char_boundary(end) {
            end -= 1;
        }
        r[..end].to_string()
    }

    /// The byte ranges of `text` to replace, merged and in order: matches in the
    /// decoded view, and, when the text has a `%`, in the raw view too (so a `%` that
    /// happens to precede key characters cannot hide them).
    fn ranges(&self, text: &[u8]) -> Vec<(usize, usize)> {
        let decoded = self.scan(text, true).ranges;
        if !text.contains(&b'%') {
            return decoded;
        }
        merge(decoded, self.scan(text, false).ranges)
    }

    /// Finds the byte ranges of `text` to replace in one view (`decode`: `%XX`
    /// escapes decoded), and the view's tail.
    fn scan(&self, text: &[u8], decode: bool) -> Scan {
        let mut ranges: Vec<(usize, usize)> = Vec::new();
        // The original start offset of the last 8 normalized bytes, by count mod 8.
        let mut starts = [0usize; GRAM];
        let t = &*self.tables;
        let mut w = 0u64;
        let mut n = 0usize;
        let mut i = 0usize;
        // Normalized bytes in a row that occur in some key.
        let mut run = 0usize;
        while i < text.len() {
            let start = i;
            let (b, used) = normalized(&text[i..], decode);
            i += used;
            w = (w << 8) | b as u64;
            starts[n % GRAM] = start;
            n += 1;
            run = if t.alphabet[b as usize] { run + 1 } else { 0 };
            if run < t.min_len {
                continue;
            }
            for (len, set) in &t.sets {
                if run >= *len && set.contains(&(w & mask(*len))) {
                    let s = starts[(n - len) % GRAM];
                    match ranges.last_mut() {
                        Some(last) if s <= last.1 => last.1 = last.1.max(i),
                        _ => ranges.push((s, i)),
                    }
                }
            }
        }
        Scan {
            ranges,
            window: w,
            count: n,
            starts,
        }
    }

    /// Where a stream may be cut so that what comes before it can be sent: before the
    /// longest normalized tail (under 8 bytes) that is part of a key, before a match
    /// running to the end, and before a `%` escape not complete yet.
    fn safe_end(&self, text: &[u8], scan: &Scan) -> usize {
        let mut cut = text.len();
        if let Some(&(s, e)) = scan.ranges.last() {
            if e == text.len() {
                cut = s;
            }
        }
        let max_tail = (GRAM - 1).min(scan.count);
        for len in (1..=max_tail).rev() {
            let w = scan.window & mask(len);
            if self.tables.prefixes.contains(&tagged(len, w)) {
                cut = cut.min(scan.starts[(scan.count - len) % GRAM]);
                break;
            }
        }
        let tail = &text[text.len().saturating_sub(2)..];
        if let Some(p) = tail.iter().rposition(|&b| b == b'%') {
            if tail[p + 1..].iter().all(u8::is_ascii_hexdigit) {
                cut = cut.min(text.len() - tail.len() + p);
            }
        }
        cut
    }
}

struct Scan {
    /// Merged, ordered byte ranges of matches.
    ranges: Vec<(usize, usize)>,
    /// The last normalized bytes, packed.
    window: u64,
    /// Normalized bytes seen.
    count: usize,
    /// Original offsets of the last normalized bytes, by count mod 8.
    starts: [usize; GRAM],
}

/// The next normalized byte of `s` (not empty) and how many bytes of `s` it used: a
/// `%XX` escape decodes to its byte (when `decode`); letters are lower-cased.
fn normalized(s: &[u8], decode: bool) -> (u8, usize) {
    if decode && s[0] == b'%' && s.len() >= 3 {
        if let (Some(h), Some(l)) = (hex(s[1]), hex(s[2])) {
            return ((h << 4 | l).to_ascii_lowercase(), 3);
        }
    }
    (s[0].to_ascii_lowercase(), 1)
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Two ordered range lists as one, overlapping and touching ranges joined.
fn merge(a: Vec<(usize, usize)>, b: Vec<(usize, usize)>) -> Vec<(usize, usize)> {
    let mut all = a;
    all.extend(b);
    all.sort_unstable();
    let mut out: Vec<(usize, usize)> = Vec::with_capacity(all.len());
    for (s, e) in all {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// `text` with `ranges` replaced. Ranges may cut a multi-byte character (a key is
/// ASCII, text around it need not be): the cut is widened to whole characters.
fn replace(text: &str, ranges: &[(usize, usize)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for &(mut s, mut e) in ranges {
        while !text.is_char_boundary(s) {
            s -= 1;
        }
        while !text.is_char_boundary(e) {
            e += 1;
        }
        if e <= at {
            continue; // inside the last replacement once widened
        }
        let s = s.max(at);
        out.push_str(&text[at..s]);
        out.push_str(REDACTED);
        at = e;
    }
    out.push_str(&text[at..]);
    out
}

/// Where a `%` escape cut short by the end of `text` starts (`%` or `%X`); the
/// length when there is none.
fn incomplete_escape(text: &[u8]) -> usize {
    let n = text.len();
    if n >= 1 && text[n - 1] == b'%' {
        return n - 1;
    }
    if n >= 2 && text[n - 2] == b'%' && text[n - 1].is_ascii_hexdigit() {
        return n - 2;
    }
    n
}

/// Redacts text that arrives in pieces: `push` returns what can be sent now, holding
/// back a tail that could still become part of a key; `finish` returns the rest.
pub struct StreamRedactor {
    redactor: Redactor,
    pending: String,
}

impl StreamRedactor {
    pub fn new(redactor: Redactor) -> Self {
        StreamRedactor {
            redactor,
            pending: String::new(),
        }
    }

    /// Adds `text`; returns the redacted text that is safe to send (maybe empty).
    pub fn push(&mut self, text: &str) -> String {
        if self.redactor.is_empty() {
            return text.to_string();
        }
        self.pending.push_str(text);
        // A `%` escape not complete yet is held and left out of the scan (read as
        // two literal bytes it would hide the key bytes before it).
        let all = self.pending.as_bytes();
        let hold = incomplete_escape(all);
        let bytes = &all[..hold];
        let decoded = self.redactor.scan(bytes, true);
        let mut cut = self.redactor.safe_end(bytes, &decoded);
        let ranges = if bytes.contains(&b'%') {
            let raw = self.redactor.scan(bytes, false);
            cut = cut.min(self.redactor.safe_end(bytes, &raw));
            merge(decoded.ranges, raw.ranges)
        } else {
            decoded.ranges
        };
        // A match reaching past the cut is held whole.
        for &(s, e) in &ranges {
            if s < cut && e > cut {
                cut = s;
            }
        }
        while !self.pending.is_char_boundary(cut) {
            cut -= 1;
        }
        let done: Vec<(usize, usize)> = ranges.into_iter().filter(|&(_, e)| e <= cut).collect();
        let out = replace(&self.pending[..cut], &done);
        self.pending.drain(..cut);
        out
    }

    /// Whether text is held back.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The end of the text: everything held back, redacted.
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.pending);
        self.redactor.redact(&rest).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &str = "sk-live-Q7vX2mNp9RtLw4Zc";

    fn r() -> Redactor {
        Redactor::new([KEY])
    }

    fn url_encode(s: &str, upper_hex: bool) -> String {
        s.bytes()
            .map(|b| {
                if upper_hex {
                    format!("%{b:02X}")
                } else {
                    format!("%{b:02x}")
                }
            })
            .collect()
    }

    #[test]
    fn catches_the_key_in_every_form() {
        let forms = [
            KEY.to_string(),
            KEY.to_uppercase(),
            KEY.to_lowercase(),
            url_encode(KEY, true),
            url_encode(KEY, false),
            // Only some characters escaped, as URL encoders do for `-`-free alphabets.
            KEY.replace('-', "%2D"),
            KEY[..10].to_string(),
            KEY[KEY.len() - 8..].to_string(),
            KEY[5..15].to_uppercase(),
        ];
        for f in forms {
            let text = format!("bad key «{f}» given");
            let out = r().redact(&text);
            assert_eq!(out, "bad key «[redacted]» given", "{f}");
        }
    }

    #[test]
    fn leaves_other_text_alone_and_borrows_it() {
        let r = r();
        for t in [
            "",
            "nothing here",
            "sk-live",
            "Q7vX2mN",
            "%%%%%4",
            "héllo wörld 東京",
        ] {
            assert!(matches!(r.redact(t), Cow::Borrowed(_)), "{t}");
        }
        // Seven characters of the key are not enough.
        assert_eq!(r.redact("x Q7vX2mN y"), "x Q7vX2mN y");
    }

    #[test]
    fn short_keys_are_caught_whole_and_tiny_ones_ignored() {
        let r = Redactor::new(["abc12", "xy"]);
        assert_eq!(r.redact("k=ABC12;xy"), "k=[redacted];xy");
        assert_eq!(r.redact("abc1"), "abc1");
        assert!(Redactor::new(["xy"]).is_empty());
    }

    #[test]
    fn redaction_comes_before_truncation() {
        // The key straddles the cut: the kept part is a prefix of the key.
        let text = format!("{}{KEY} trailing", "x".repeat(290));
        let out = r().redact_truncated(&text, 300);
        assert!(out.ends_with(REDACTED), "{out}");
        assert!(!out.contains("sk-live"));
        // Without the key, truncation alone.
        assert_eq!(r().redact_truncated("ééé", 3), "é");
    }

    #[test]
    fn a_stream_split_anywhere_is_redacted_like_the_whole() {
        let text = format!("Your key is {KEY}, or {}. Bye", url_encode(KEY, false));
        let whole = r().redact(&text).into_owned();
        assert!(!whole.contains("Q7vX"), "{whole}");
        for size in 1..12 {
            let mut s = StreamRedactor::new(r());
            let mut out = String::new();
            let chars: Vec<char> = text.chars().collect();
            for piece in chars.chunks(size) {
                out += &s.push(&piece.iter().collect::<String>());
            }
            out += &s.finish();
            assert_eq!(out, whole, "pieces of {size}");
        }
    }

    #[test]
    fn a_stream_holds_back_only_what_could_be_a_key() {
        let mut s = StreamRedactor::new(r());
        // `o` is in no key: nothing held.
        assert_eq!(s.push("Hello"), "Hello");
        assert!(!s.has_pending());
        // `sk-l` could start the key: held until the next piece shows it is not.
        assert_eq!(s.push(" sk-l"), " ");
        assert_eq!(s.push("atoo"), "sk-latoo");
        assert_eq!(s.finish(), "");
    }

    fn key_form(key: &str, form: u8, from: usize, len: usize) -> String {
        let part = &key[from..(from + len).min(key.len())];
        match form % 4 {
            0 => part.to_string(),
            1 => part.to_uppercase(),
            2 => url_encode(part, false),
            _ => url_encode(part, true),
        }
    }

    proptest! {
        /// Any 8+ character part of a key, in any form, between any text, never
        /// survives; text without key parts is unchanged.
        #[test]
        fn no_part_of_a_key_survives(
            key in "[A-Za-z0-9_-]{8,48}",
            before in "[ -~]{0,40}",
            after in "[ -~]{0,40}",
            from in 0usize..40,
            len in 8usize..48,
            form in 0u8..4,
        ) {
            let from = from % (key.len() - 7);
            let len = len.min(key.len() - from);
            let part = key_form(&key, form, from, len);
            let text = format!("{before}{part}{after}");
            let r = Redactor::new([key.as_str()]);
            let out = r.redact(&text);
            let plain = &key[from..from + len];
            prop_assert!(!out.to_lowercase().contains(&plain.to_lowercase()), "{out}");
            prop_assert!(!out.contains(&part), "{out}");
            prop_assert!(out.contains(REDACTED));
        }

        /// Cut into pieces anywhere, a stream gives the same text as one redaction.
        #[test]
        fn streams_match_whole_redaction(
            key in "[A-Za-z0-9]{8,32}",
            text in "[ -~é]{0,60}",
            at in 0usize..60,
            form in 0u8..4,
            cuts in proptest::collection::vec(0usize..200, 0..12),
        ) {
            let mut s: String = text.chars().take(at).collect();
            s += &key_form(&key, form, 0, key.len());
            s.extend(text.chars().skip(at));
            let r = Redactor::new([key.as_str()]);
            let whole = r.redact(&s).into_owned();
            let mut bounds: Vec<usize> = cuts
                .into_iter()
                .map(|c| c % (s.len() + 1))
                .filter(|&c| s.is_char_boundary(c))
                .collect();
            bounds.push(s.len());
            bounds.sort_unstable();
            let mut sr = StreamRedactor::new(r);
            let (mut out, mut at) = (String::new(), 0);
            for b in bounds {
                out += &sr.push(&s[at..b]);
                at = b;
            }
            out += &sr.finish();
            prop_assert_eq!(out, whole);
        }

        /// Arbitrary text never panics and keys in no form leave it unchanged.
        #[test]
        fn arbitrary_text_is_safe(text in "\\PC{0,80}", key in "[a-z0-9]{8,20}") {
            let r = Redactor::new([key.as_str()]);
            let out = r.redact(&text);
            if !text.to_lowercase().contains(&key[..8]) && !text.contains('%') {
                prop_assert_eq!(out.as_ref(), text.as_str());
            }
        }
    }
}
