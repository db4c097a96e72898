//! Stop strings over a token stream: text is released only once no stop string can
//! still begin inside it, so a stop string never leaks into the output, even when it
//! spans several tokens.

pub struct StopMatcher {
    stops: Vec<String>,
    /// Characters held back: the longest stop string minus one.
    hold: usize,
    pending: String,
    stopped: bool,
    /// The stop string that matched.
    matched: Option<String>,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        let stops: Vec<String> = stops.into_iter().filter(|s| !s.is_empty()).collect();
        let hold = stops.iter().map(|s| s.chars().count()).max().unwrap_or(1) - 1;
        StopMatcher {
            stops,
            hold,
            pending: String::new(),
            stopped: false,
            matched: None,
        }
    }

    /// Adds decoded text; returns the text now safe to emit and whether a stop matched.
    pub fn push(&mut self, delta: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.pending.push_str(delta);
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()).map(|at| (at, s)))
            .min_by_key(|(at, _)| *at);
        if let Some((at, s)) = first {
            self.matched = Some(s.clone());
            let out = self.pending[..at].to_string();
            self.pending.clear();
            self.stopped = true;
            return (out, true);
        }
        let n = self.pending.chars().count();
        if n <= self.hold {
            return (String::new(), false);
        }
        let cut = self
            .pending
            .char_indices()
            .nth(n - self.hold)
            .map_or(self.pending.len(), |(i, _)| i);
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }

    /// The stop string that ended the text, if one did.
    pub fn matched(&self) -> Option<&str> {
        self.matched.as_deref()
    }

    /// At the end of generation: whatever is held back (it contains no stop string).
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], deltas: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for d in deltas {
            let (t, stop) = m.push(d);
            out.push_str(&t);
            if stop {
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn stop_strings_across_token_boundaries_never_leak() {
        assert_eq!(
            run(&["END"], &["Hello E", "N", "D more"]),
            ("Hello ".into(), true)
        );
        assert_eq!(run(&["\n\n", "x"], &["a\n", "\nb"]), ("a".into(), true));
        assert_eq!(
            run(&["stop"], &["no ", "match", " here"]),
            ("no match here".into(), false)
        );
        assert_eq!(run(&[], &["plain"]), ("plain".into(), false));
        assert_eq!(run(&["é!"], &["caf", "é", "!"]), ("caf".into(), true));
    }

    /// The earliest match is the one reported, whichever stop string it is.
    #[test]
    fn the_matched_stop_string_is_reported() {
        let mut m = StopMatcher::new(vec!["world".into(), "lo w".into()]);
        assert_eq!(m.matched(), None);
        assert_eq!(m.push("hello world"), ("hel".into(), true));
        assert_eq!(m.matched(), Some("lo w"));
    }
}
