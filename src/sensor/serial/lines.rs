//! Splitting a device's byte stream into bounded lines.

/// What the line splitter found.
#[derive(Debug, Clone, PartialEq)]
pub enum LineEvent {
    Line(Vec<u8>),
    /// A line grew past the limit: it is dropped up to its end.
    Overlong,
}

/// Splits a byte stream into lines ended by `\n` or `\r` (so `\r\n` works
/// too; empty lines are skipped), keeping at most `max` bytes of a line.
#[derive(Debug)]
pub struct LineSplitter {
    buf: Vec<u8>,
    max: usize,
    discarding: bool,
}

impl LineSplitter {
    pub fn new(max: usize) -> Self {
        LineSplitter {
            buf: Vec::with_capacity(max.min(4096) + 1),
            max,
            discarding: false,
        }
    }

    pub fn push(&mut self, mut data: &[u8]) -> Vec<LineEvent> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let end = data.iter().position(|b| *b == b'\n' || *b == b'\r');
            let (chunk, rest, ended) = match end {
                Some(i) => (&data[..i], &data[i + 1..], true),
                None => (data, &[][..], false),
            };
            data = rest;
            if !self.discarding {
                let room = self.max + 1 - self.buf.len();
                self.buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if self.buf.len() > self.max {
                    self.buf.clear();
                    self.discarding = true;
                    out.push(LineEvent::Overlong);
                }
            }
            if ended {
                if self.discarding {
                    self.discarding = false;
                } else if !self.buf.is_empty() {
                    out.push(LineEvent::Line(std::mem::take(&mut self.buf)));
                    self.buf.reserve(self.max.min(4096) + 1);
                }
            }
        }
        out
    }

    /// Bytes held for the current line (memory bound checks).
    pub fn held(&self) -> usize {
        self.buf.capacity()
    }
}

/// A short, printable piece of a bad line for logs.
pub(crate) fn excerpt(line: &[u8]) -> String {
    let s = String::from_utf8_lossy(&line[..line.len().min(60)]);
    let mut e: String = s.chars().filter(|c| !c.is_control()).take(60).collect();
    if line.len() > 60 {
        e.push('…');
    }
    format!("{e:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(ev: &[LineEvent]) -> Vec<String> {
        ev.iter()
            .map(|e| match e {
                LineEvent::Line(l) => String::from_utf8_lossy(l).into_owned(),
                LineEvent::Overlong => "<overlong>".into(),
            })
            .collect()
    }

    #[test]
    fn splits_on_any_line_end_across_chunks() {
        let mut s = LineSplitter::new(64);
        assert_eq!(lines(&s.push(b"ab")), Vec::<String>::new());
        assert_eq!(lines(&s.push(b"c\r\nde\nf\rg")), ["abc", "de", "f"]);
        assert_eq!(lines(&s.push(b"\n\n\n")), ["g"]);
    }

    #[test]
    fn overlong_lines_are_dropped_and_memory_stays_bounded() {
        let mut s = LineSplitter::new(100);
        let junk = vec![b'x'; 4096];
        let mut events = Vec::new();
        for _ in 0..256 {
            // 1 MiB without a newline.
            events.extend(s.push(&junk));
            assert!(s.held() <= 4096 + 1, "held {}", s.held());
        }
        assert_eq!(lines(&events), ["<overlong>"]);
        assert_eq!(lines(&s.push(b"tail\nok\n")), ["ok"]);
        // Exactly max fits.
        let mut s = LineSplitter::new(4);
        assert_eq!(lines(&s.push(b"1234\n12345\n")), ["1234", "<overlong>"]);
    }

    #[test]
    fn excerpts_are_short_and_printable() {
        assert_eq!(excerpt(b"a\x00b\r"), "\"ab\"");
        let long = excerpt(&[b'x'; 100]);
        assert_eq!(long, format!("\"{}…\"", "x".repeat(60)));
        assert_eq!(excerpt(&[0xff, b'a']), "\"\u{fffd}a\"");
    }
}
