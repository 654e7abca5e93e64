//! Splitting a Postgres byte stream into frames by the 5-byte header (tag + big-endian length that counts
//! itself), with size limits. Pure and zero-copy: the relay scans headers in place and forwards runs of
//! untouched frames as one slice of its read buffer, so nothing here allocates.

/// Bytes of a regular (post-startup) message header: one tag byte and an i32 length.
pub const HEADER_LEN: usize = 5;

/// Header of one regular message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub tag: u8,
    /// The length field: body plus the 4 bytes of the field itself (not the tag).
    pub len: u32,
}

impl FrameHeader {
    /// Bytes the whole frame occupies on the wire, tag included.
    #[inline]
    pub fn total_len(&self) -> usize {
        1 + self.len as usize
    }

    /// Bytes of the body after the header.
    #[inline]
    pub fn body_len(&self) -> usize {
        self.len as usize - 4
    }
}

/// A header that cannot be relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length field is below 4 (it counts itself), so the stream cannot be trusted past it.
    #[error("invalid message length {len} for message type {:?}", *.tag as char)]
    InvalidLength { tag: u8, len: i32 },
    /// The message is larger than the configured limit.
    #[error("message of type {:?} is {len} bytes, above the limit of {limit} bytes", *.tag as char)]
    TooLarge { tag: u8, len: usize, limit: usize },
}

/// Reads the header at the start of `buf` without consuming it. `Ok(None)` when fewer than 5 bytes are
/// buffered. `max_len` bounds the whole frame (tag included).
#[inline]
pub fn peek_header(buf: &[u8], max_len: usize) -> Result<Option<FrameHeader>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let tag = buf[0];
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(FrameError::InvalidLength { tag, len });
    }
    let header = FrameHeader { tag, len: len as u32 };
    if header.total_len() > max_len {
        return Err(FrameError::TooLarge { tag, len: header.total_len(), limit: max_len });
    }
    Ok(Some(header))
}

/// A bounds-checked reader over a frame body, for the few fields the relay reads in place
/// (statement and portal names, SQL text, SQLSTATE). Every accessor returns `None` instead of panicking.
#[derive(Debug, Clone)]
pub struct BodyReader<'a> {
    rest: &'a [u8],
}

impl<'a> BodyReader<'a> {
    pub fn new(body: &'a [u8]) -> Self {
        BodyReader { rest: body }
    }

    /// A NUL-terminated string, without its terminator.
    pub fn cstr(&mut self) -> Option<&'a [u8]> {
        let end = self.rest.iter().position(|&b| b == 0)?;
        let (s, tail) = self.rest.split_at(end);
        self.rest = &tail[1..];
        Some(s)
    }

    /// [`Self::cstr`] for a string that is usually long (SQL text): `memchr` finds its end in a few
    /// instructions per 32 bytes, where the byte loop costs several per byte; for the short names of a
    /// Bind or Execute its setup costs more than the loop (bench/REPORT.md, "three waits").
    pub fn long_cstr(&mut self) -> Option<&'a [u8]> {
        let end = memchr::memchr(0, self.rest)?;
        let (s, tail) = self.rest.split_at(end);
        self.rest = &tail[1..];
        Some(s)
    }

    pub fn u8(&mut self) -> Option<u8> {
        let (&b, tail) = self.rest.split_first()?;
        self.rest = tail;
        Some(b)
    }

    pub fn i16(&mut self) -> Option<i16> {
        let bytes = self.take(2)?;
        Some(i16::from_be_bytes([bytes[0], bytes[1]]))
    }

    pub fn i32(&mut self) -> Option<i32> {
        let b = self.take(4)?;
        Some(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.rest.len() < n {
            return None;
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Some(head)
    }

    pub fn remaining(&self) -> &'a [u8] {
        self.rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_needs_five_bytes() {
        assert_eq!(peek_header(b"Q\0\0\0", 100), Ok(None));
        let h = peek_header(b"Q\0\0\0\x09abcd\0", 100).unwrap().unwrap();
        assert_eq!(h, FrameHeader { tag: b'Q', len: 9 });
        assert_eq!(h.total_len(), 10);
        assert_eq!(h.body_len(), 5);
    }

    #[test]
    fn lying_lengths_are_rejected() {
        assert!(matches!(peek_header(b"Q\0\0\0\x03", 100), Err(FrameError::InvalidLength { .. })));
        assert!(matches!(peek_header(b"Q\xff\xff\xff\xff", 100), Err(FrameError::InvalidLength { .. })));
        assert!(matches!(
            peek_header(b"Q\0\0\x01\0", 100),
            Err(FrameError::TooLarge { tag: b'Q', len: 257, limit: 100 })
        ));
    }

    #[test]
    fn body_reader_never_panics() {
        let mut r = BodyReader::new(b"name\0sql\0\x00\x01");
        assert_eq!(r.cstr(), Some(&b"name"[..]));
        assert_eq!(r.cstr(), Some(&b"sql"[..]));
        assert_eq!(r.i16(), Some(1));
        assert_eq!(r.i16(), None);
        assert_eq!(r.cstr(), None);
        assert_eq!(r.i32(), None);
        assert_eq!(r.u8(), None);
    }
}
