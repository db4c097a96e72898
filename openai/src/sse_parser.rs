//! An incremental Server-Sent Events parser: bytes in (split anywhere), events out.
//! Handles `\n`, `\r\n` and `\r` line ends, multi-line `data`, `event` names, and
//! comment lines (keep-alives), per the WHATWG spec.

#[derive(Debug, Clone, PartialEq, Default)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
    /// A `\r` ended the last line: a following `\n` belongs to it.
    after_cr: bool,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; returns the events completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        for &b in bytes {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.buf);
                    if let Some(ev) = self.line(&String::from_utf8_lossy(&line)) {
                        out.push(ev);
                    }
                }
                _ => self.buf.push(b),
            }
        }
        out
    }

    /// The stream ended: an event without its blank line is still delivered.
    pub fn finish(&mut self) -> Option<SseEvent> {
        if !self.buf.is_empty() {
            let line = std::mem::take(&mut self.buf);
            if let Some(ev) = self.line(&String::from_utf8_lossy(&line)) {
                return Some(ev);
            }
        }
        self.dispatch()
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = self.event.take();
        if self.data.is_empty() {
            return None;
        }
        Some(SseEvent {
            event,
            data: std::mem::take(&mut self.data).join("\n"),
        })
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None; // comment / keep-alive
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => self.data.push(value.to_string()),
            "event" => self.event = Some(value.to_string()),
            _ => {} // id, retry, unknown fields
        }
        None
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
}
