//! An incremental Server-Sent Events parser: bytes in (split anywhere), events out.
//! Handles `\n`, `\r\n` and `\r` line ends, multi-line `data`, `event` names, and
//! comment lines (keep-alives), per the WHATWG spec.
//!
//! Memory is bounded: a line longer than the cap (`with_max_line`, default
//! [`DEFAULT_MAX_LINE`]), or one event whose data lines add up to more than it, fails
//! the stream with [`SseError::LineTooLong`] instead of being buffered; nothing is
//! buffered past the cap, and the parser stays failed.

use std::fmt;

/// The default cap on one line and on one event's data: 1 MiB.
pub const DEFAULT_MAX_LINE: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Why a stream cannot be parsed further.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseError {
    /// A line, or one event's data, passed the cap (in bytes).
    LineTooLong { max: usize },
}

impl fmt::Display for SseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SseError::LineTooLong { max } => write!(
                f,
                "an SSE line or event is longer than the {max}-byte limit"
            ),
        }
    }
}

impl std::error::Error for SseError {}

pub struct SseParser {
    buf: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
    /// Bytes in `data` (with the newlines that will join them).
    data_len: usize,
    /// A `\r` ended the last line: a following `\n` belongs to it.
    after_cr: bool,
    max_line: usize,
    failed: Option<SseError>,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::with_max_line(DEFAULT_MAX_LINE)
    }
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// A parser whose lines and events may be at most `max_line` bytes.
    pub fn with_max_line(max_line: usize) -> Self {
        SseParser {
            buf: Vec::new(),
            event: None,
            data: Vec::new(),
            data_len: 0,
            after_cr: false,
            max_line,
            failed: None,
        }
    }

    /// Bytes held for the line in progress (at most the cap).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Feeds bytes; returns the events completed by them, or the error once a line or
    /// event passes the cap (then and on every later call).
    pub fn try_push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let mut out = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if rest[0] == b'\n' {
                    rest = &rest[1..];
                    continue;
                }
            }
            let Some(end) = rest.iter().position(|&b| b == b'\n' || b == b'\r') else {
                self.extend_line(rest)?;
                break;
            };
            self.extend_line(&rest[..end])?;
            self.after_cr = rest[end] == b'\r';
            rest = &rest[end + 1..];
            let line = std::mem::take(&mut self.buf);
            if let Some(ev) = self.line(&String::from_utf8_lossy(&line))? {
                out.push(ev);
            }
        }
        Ok(out)
    }

    /// Like `try_push` for callers that only read well-formed streams: past the cap,
    /// the stream simply ends (no more events).
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.try_push(bytes).unwrap_or_default()
    }

    fn extend_line(&mut self, part: &[u8]) -> Result<(), SseError> {
        if self.buf.len() + part.len() > self.max_line {
            return Err(self.fail());
        }
        self.buf.extend_from_slice(part);
        Ok(())
    }

    /// Enters the failed state, freeing what was buffered.
    fn fail(&mut self) -> SseError {
        let e = SseError::LineTooLong { max: self.max_line };
        self.failed = Some(e);
        self.buf = Vec::new();
        self.data = Vec::new();
        self.data_len = 0;
        e
    }

    /// The stream ended: an event without its blank line is still delivered.
    pub fn finish(&mut self) -> Option<SseEvent> {
        if self.failed.is_some() {
            return None;
        }
        if !self.buf.is_empty() {
            let line = std::mem::take(&mut self.buf);
            match self.line(&String::from_utf8_lossy(&line)) {
                Ok(Some(ev)) => return Some(ev),
                Ok(None) => {}
                Err(_) => return None,
            }
        }
        self.dispatch()
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = self.event.take();
        self.data_len = 0;
        if self.data.is_empty() {
            return None;
        }
        Some(SseEvent {
            event,
            data: std::mem::take(&mut self.data).join("\n"),
        })
    }

    fn line(&mut self, line: &str) -> Result<Option<SseEvent>, SseError> {
        if line.is_empty() {
            return Ok(self.dispatch());
        }
        if line.starts_with(':') {
            return Ok(None); // comment / keep-alive
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                self.data_len += value.len() + usize::from(!self.data.is_empty());
                if self.data_len > self.max_line {
                    return Err(self.fail());
                }
                self.data.push(value.to_string())
            }
            "event" => self.event = Some(value.to_string()),
            _ => {} // id, retry, unknown fields
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = ": keep-alive\r\n\r\nevent: message_start\ndata: {\"a\":1}\n\ndata: line1\ndata: line2\r\n\r\nid: 7\nretry: 10\ndata: [DONE]\n\n";

    fn want() -> Vec<SseEvent> {
        vec![
            SseEvent {
                event: Some("message_start".into()),
                data: "{\"a\":1}".into(),
            },
            SseEvent {
                event: None,
                data: "line1\nline2".into(),
            },
            SseEvent {
                event: None,
                data: "[DONE]".into(),
            },
        ]
    }

    #[test]
    fn parses_whole_and_split_at_every_byte() {
        assert_eq!(SseParser::new().push(STREAM.as_bytes()), want());
        for cut in 0..STREAM.len() {
            let mut p = SseParser::new();
            let mut got = p.push(&STREAM.as_bytes()[..cut]);
            got.extend(p.push(&STREAM.as_bytes()[cut..]));
            assert_eq!(got, want(), "cut at {cut}");
        }
    }

    #[test]
    fn lone_cr_line_ends_and_unterminated_last_event() {
        let mut p = SseParser::new();
        assert_eq!(p.push(b"data: a\r\rdata: b").len(), 1);
        assert_eq!(p.finish().unwrap().data, "b");
    }

    #[test]
    fn a_line_past_the_cap_fails_without_buffering_it() {
        let mut p = SseParser::with_max_line(64);
        assert_eq!(p.try_push(b"data: ok\n\n").unwrap().len(), 1);
        let chunk = [b'a'; 40];
        assert!(p.try_push(b"data: ").is_ok());
        assert!(p.try_push(&chunk).is_ok());
        assert!(p.buffered() <= 64);
        assert_eq!(p.try_push(&chunk), Err(SseError::LineTooLong { max: 64 }));
        assert_eq!(p.buffered(), 0, "the long line is dropped, not kept");
        // The parser stays failed; `push` ends the stream quietly.
        assert!(p.try_push(b"\ndata: x\n\n").is_err());
        assert!(p.push(b"data: x\n\n").is_empty());
        assert!(p.finish().is_none());
        // Many short data lines of one event count together.
        let mut p = SseParser::with_max_line(64);
        let many = b"data: 0123456789\n".repeat(10);
        assert!(p.try_push(&many).is_err());
        // A line exactly at the cap is fine.
        let mut p = SseParser::with_max_line(64);
        let line = format!("data: {}\n\n", "b".repeat(58));
        assert_eq!(p.try_push(line.as_bytes()).unwrap()[0].data.len(), 58);
    }

    mod fuzz {
        use super::super::*;
        use proptest::prelude::*;

        /// Bytes that look like SSE: fields, comments, every line end, and noise.
        fn sse_bytes() -> impl Strategy<Value = Vec<u8>> {
            let piece = prop_oneof![
                Just(b"data: ".to_vec()),
                Just(b"data:".to_vec()),
                Just(b"event: e".to_vec()),
                Just(b": ping".to_vec()),
                Just(b"id: 1".to_vec()),
                Just(b"\n".to_vec()),
                Just(b"\r".to_vec()),
                Just(b"\r\n".to_vec()),
                Just(b"\n\n".to_vec()),
                "[a-z{}\":\\[\\] ]{0,12}".prop_map(String::into_bytes),
                proptest::collection::vec(any::<u8>(), 0..6),
            ];
            proptest::collection::vec(piece, 0..40).prop_map(|v| v.concat())
        }

        fn parse_in(
            bytes: &[u8],
            cuts: &[usize],
            max: usize,
        ) -> (Vec<SseEvent>, Option<SseEvent>, bool) {
            let mut p = SseParser::with_max_line(max);
            let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
            bounds.push(bytes.len());
            bounds.sort_unstable();
            let (mut out, mut at, mut failed) = (Vec::new(), 0, false);
            for b in bounds {
                match p.try_push(&bytes[at..b]) {
                    Ok(evs) => out.extend(evs),
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
                assert!(p.buffered() <= max);
                at = b;
            }
            (out, if failed { None } else { p.finish() }, failed)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Any chunking gives the events of one chunk (and the same failure).
            #[test]
            fn chunking_does_not_change_events(
                bytes in sse_bytes(),
                cuts in proptest::collection::vec(0usize..1000, 0..16),
            ) {
                let whole = parse_in(&bytes, &[], DEFAULT_MAX_LINE);
                prop_assert_eq!(parse_in(&bytes, &cuts, DEFAULT_MAX_LINE), whole);
            }

            /// With a small cap, chunking changes at most how many events came before
            /// the failure; the cap always holds.
            #[test]
            fn the_cap_holds_under_any_chunking(
                bytes in sse_bytes(),
                cuts in proptest::collection::vec(0usize..1000, 0..16),
                max in 1usize..40,
            ) {
                let (whole, _, whole_failed) = parse_in(&bytes, &[], max);
                let (split, _, split_failed) = parse_in(&bytes, &cuts, max);
                prop_assert_eq!(whole_failed, split_failed);
                if !whole_failed {
                    prop_assert_eq!(&split, &whole);
                }
                for ev in whole.iter().chain(&split) {
                    prop_assert!(ev.data.len() <= max);
                }
            }

            /// Arbitrary bytes in arbitrary pieces never panic.
            #[test]
            fn arbitrary_bytes_never_panic(
                chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16),
            ) {
                let mut p = SseParser::with_max_line(32);
                for c in &chunks {
                    let _ = p.try_push(c);
                    prop_assert!(p.buffered() <= 32);
                }
                let _ = p.finish();
            }
        }
    }
}
