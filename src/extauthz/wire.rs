//! Envoy's `CheckRequest`, read straight from its protobuf bytes: only the fields a decision
//! needs (the `authorization`, host, path and request-id headers, the `http` request's own
//! `host`, `path` and `id`, and `context_extensions`), borrowed from the buffer, in one pass.
//! Every other field is skipped unread, so a Check never builds Envoy's header map.
//!
//! Protobuf's merge rules hold: a message field that appears more than once is read as the
//! merge of its occurrences (the last scalar wins, map entries and repeated fields add up), so
//! the reader sees what a full decoder would. It is laxer only where the bytes are never used:
//! a skipped field is not checked for UTF-8 or for its declared wire type.

use super::request::Collected;

/// Why the bytes are not a `CheckRequest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The message ends inside a field.
    #[error("the message is truncated")]
    Truncated,
    /// A varint longer than ten bytes, or beyond 64 bits.
    #[error("a varint is malformed")]
    Varint,
    /// Field number 0, a tag beyond 32 bits or an unknown wire type.
    #[error("a field tag is malformed")]
    Tag,
    /// A field that is read has another wire type than its declaration.
    #[error("field {0} has the wrong wire type")]
    WireType(&'static str),
    /// A string field that is read holds bytes that are not UTF-8.
    #[error("field {0} is not valid UTF-8")]
    Utf8(&'static str),
    /// A group without its end, or groups nested too deeply.
    #[error("a group is malformed")]
    Group,
}

/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;

/// Nesting of skipped groups allowed (a full decoder stops at 100 levels of messages).
const MAX_GROUP_DEPTH: u32 = 64;

/// Field numbers on the way to what is read.
mod field {
    /// `CheckRequest.attributes`.
    pub const ATTRIBUTES: u32 = 1;
    /// `AttributeContext.request`.
    pub const REQUEST: u32 = 4;
    /// `AttributeContext.context_extensions`.
    pub const CONTEXT_EXTENSIONS: u32 = 10;
    /// `AttributeContext.Request.http`.
    pub const HTTP: u32 = 2;
    /// `HttpRequest.id`, `.headers`, `.path`, `.host`, `.header_map`.
    pub const ID: u32 = 1;
    pub const HEADERS: u32 = 3;
    pub const PATH: u32 = 4;
    pub const HOST: u32 = 5;
    pub const HEADER_MAP: u32 = 13;
    /// `HeaderMap.headers`.
    pub const HEADER_VALUES: u32 = 1;
    /// Map entries' and `HeaderValue`'s `key`, `value`; `HeaderValue.raw_value`.
    pub const KEY: u32 = 1;
    pub const VALUE: u32 = 2;
    pub const RAW_VALUE: u32 = 3;
}

/// A cursor over protobuf bytes.
#[derive(Clone, Copy)]
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn varint(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for i in 0..10 {
            let Some((&b, rest)) = self.rest.split_first() else {
                return Err(WireError::Truncated);
            };
            self.rest = rest;
            // The tenth byte may carry only the 64th bit.
            if i == 9 && b > 1 {
                return Err(WireError::Varint);
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(value);
            }
        }
        Err(WireError::Varint)
    }

    /// The next field's number and wire type, or `None` at the end.
    fn tag(&mut self) -> Result<Option<(u32, u8)>, WireError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let key = u32::try_from(key).map_err(|_| WireError::Tag)?;
        let (number, wire_type) = (key >> 3, (key & 7) as u8);
        if number == 0 || wire_type > FIXED32 {
            return Err(WireError::Tag);
        }
        Ok(Some((number, wire_type)))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.rest.len() {
            return Err(WireError::Truncated);
        }
        let (taken, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(taken)
    }

    fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.varint()?;
        self.take(usize::try_from(n).map_err(|_| WireError::Truncated)?)
    }

    /// A length-delimited field that is read: its bytes, or the wire-type error naming it.
    fn expect_bytes(&mut self, wire_type: u8, name: &'static str) -> Result<&'a [u8], WireError> {
        if wire_type != LEN {
            return Err(WireError::WireType(name));
        }
        self.bytes()
    }

    fn expect_str(&mut self, wire_type: u8, name: &'static str) -> Result<&'a str, WireError> {
        let bytes = self.expect_bytes(wire_type, name)?;
        std::str::from_utf8(bytes).map_err(|_| WireError::Utf8(name))
    }

    /// Skips a field that is not read.
    fn skip(&mut self, number: u32, wire_type: u8, depth: u32) -> Result<(), WireError> {
        match wire_type {
            VARINT => self.varint().map(drop),
            FIXED64 => self.take(8).map(drop),
            LEN => self.bytes().map(drop),
            FIXED32 => self.take(4).map(drop),
            START_GROUP => {
                if depth >= MAX_GROUP_DEPTH {
                    return Err(WireError::Group);
                }
                loop {
                    match self.tag()? {
                        None => return Err(WireError::Group),
                        Some((n, END_GROUP)) if n == number => return Ok(()),
                        Some((_, END_GROUP)) => return Err(WireError::Group),
                        Some((n, w)) => self.skip(n, w, depth + 1)?,
                    }
                }
            }
            // An end without its start.
            _ => Err(WireError::Group),
        }
    }

    /// Runs `each` on every field, skipping the ones it leaves alone (it returns `false`).
    fn fields(
        mut self,
        mut each: impl FnMut(&mut Cursor<'a>, u32, u8) -> Result<bool, WireError>,
    ) -> Result<(), WireError> {
        while let Some((number, wire_type)) = self.tag()? {
            if !each(&mut self, number, wire_type)? {
                self.skip(number, wire_type, 0)?;
            }
        }
        Ok(())
    }
}

fn cursor(bytes: &[u8]) -> Cursor<'_> {
    Cursor { rest: bytes }
}

/// Reads a `CheckRequest`'s bytes into what a decision needs.
pub(super) fn read(bytes: &[u8]) -> Result<Collected<'_>, WireError> {
    let mut out = Collected::default();
    cursor(bytes).fields(|c, number, wire_type| {
        if number != field::ATTRIBUTES {
            return Ok(false);
        }
        attributes(c.expect_bytes(wire_type, "attributes")?, &mut out)?;
        Ok(true)
    })?;
    Ok(out)
}

fn attributes<'a>(bytes: &'a [u8], out: &mut Collected<'a>) -> Result<(), WireError> {
    cursor(bytes).fields(|c, number, wire_type| match number {
        field::REQUEST => {
            request(c.expect_bytes(wire_type, "attributes.request")?, out)?;
            Ok(true)
        }
        field::CONTEXT_EXTENSIONS => {
            let entry = c.expect_bytes(wire_type, "attributes.context_extensions")?;
            let (key, value) = map_entry(entry, "attributes.context_extensions")?;
            out.extensions.insert(key, value);
            Ok(true)
        }
        _ => Ok(false),
    })
}

fn request<'a>(bytes: &'a [u8], out: &mut Collected<'a>) -> Result<(), WireError> {
    cursor(bytes).fields(|c, number, wire_type| {
        if number != field::HTTP {
            return Ok(false);
        }
        http(c.expect_bytes(wire_type, "request.http")?, out)?;
        Ok(true)
    })
}

fn http<'a>(bytes: &'a [u8], out: &mut Collected<'a>) -> Result<(), WireError> {
    out.has_http = true;
    cursor(bytes).fields(|c, number, wire_type| {
        match number {
            field::ID => out.id = c.expect_str(wire_type, "http.id")?,
            field::PATH => out.path = c.expect_str(wire_type, "http.path")?,
            field::HOST => out.host = c.expect_str(wire_type, "http.host")?,
            field::HEADERS => {
                let entry = c.expect_bytes(wire_type, "http.headers")?;
                header_entry(entry, out)?;
            }
            field::HEADER_MAP => {
                let map = c.expect_bytes(wire_type, "http.header_map")?;
                header_map(map, out)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    })
}

/// A `map<string, string>` entry: absent key or value read as empty, the last occurrence wins.
fn map_entry<'a>(bytes: &'a [u8], name: &'static str) -> Result<(&'a str, &'a str), WireError> {
    let (mut key, mut value) = ("", "");
    cursor(bytes).fields(|c, number, wire_type| {
        match number {
            field::KEY => key = c.expect_str(wire_type, name)?,
            field::VALUE => value = c.expect_str(wire_type, name)?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok((key, value))
}

/// One entry of `http.headers`. Only the headers a decision reads have their value checked
/// for UTF-8; the key is compared as bytes, so a key that is not UTF-8 matches none of them.
fn header_entry<'a>(bytes: &'a [u8], out: &mut Collected<'a>) -> Result<(), WireError> {
    let (mut key, mut value): (&[u8], &[u8]) = (b"", b"");
    cursor(bytes).fields(|c, number, wire_type| {
        match number {
            field::KEY => key = c.expect_bytes(wire_type, "http.headers")?,
            field::VALUE => value = c.expect_bytes(wire_type, "http.headers")?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    let Some(header) = super::request::Wanted::of(key) else {
        return Ok(());
    };
    // Matched a header name, so the key is ASCII.
    let key = std::str::from_utf8(key).map_err(|_| WireError::Utf8("http.headers"))?;
    let value = std::str::from_utf8(value).map_err(|_| WireError::Utf8("http.headers"))?;
    out.headers.map_entry(header, key, value);
    Ok(())
}

/// `http.header_map` (Envoy's `encode_raw_headers`): repeated `HeaderValue`s, in order.
fn header_map<'a>(bytes: &'a [u8], out: &mut Collected<'a>) -> Result<(), WireError> {
    cursor(bytes).fields(|c, number, wire_type| {
        if number != field::HEADER_VALUES {
            return Ok(false);
        }
        let bytes = c.expect_bytes(wire_type, "http.header_map.headers")?;
        let (mut key, mut value, mut raw): (&[u8], &[u8], &[u8]) = (b"", b"", b"");
        cursor(bytes).fields(|c, number, wire_type| {
            match number {
                field::KEY => key = c.expect_bytes(wire_type, "http.header_map.headers")?,
                field::VALUE => value = c.expect_bytes(wire_type, "http.header_map.headers")?,
                field::RAW_VALUE => raw = c.expect_bytes(wire_type, "http.header_map.headers")?,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        if let Some(header) = super::request::Wanted::of(key) {
            let value = if raw.is_empty() {
                std::str::from_utf8(value).map_err(|_| WireError::Utf8("http.header_map"))?
            } else {
                // Non-UTF-8 bytes cannot be a valid bearer token; they become a malformed value.
                std::str::from_utf8(raw).unwrap_or("\u{fffd}")
            };
            out.headers.raw_entry(header, value);
        }
        Ok(true)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_longer_than_ten_bytes_or_64_bits_are_refused() {
        let mut c = cursor(&[0xff; 11]);
        assert_eq!(c.varint(), Err(WireError::Varint));
        let mut c = cursor(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]);
        assert_eq!(c.varint(), Err(WireError::Varint));
        let mut c = cursor(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert_eq!(c.varint(), Ok(u64::MAX));
        let mut c = cursor(&[0x80]);
        assert_eq!(c.varint(), Err(WireError::Truncated));
    }

    #[test]
    fn field_zero_and_unknown_wire_types_are_refused() {
        assert_eq!(read(&[0x00]).err(), Some(WireError::Tag));
        assert_eq!(read(&[0x0e]).err(), Some(WireError::Tag));
        assert_eq!(read(&[0x0f]).err(), Some(WireError::Tag));
    }

    #[test]
    fn groups_are_skipped_when_closed_and_refused_otherwise() {
        // Field 2 as a group holding a varint field, closed: skipped.
        assert!(read(&[0x13, 0x08, 0x01, 0x14]).is_ok());
        // Closed with another field's end.
        assert_eq!(read(&[0x13, 0x1c]).err(), Some(WireError::Group));
        // Never closed.
        assert_eq!(read(&[0x13, 0x08, 0x01]).err(), Some(WireError::Group));
        // An end with no start.
        assert_eq!(read(&[0x14]).err(), Some(WireError::Group));
        // Nested past the bound.
        let deep: Vec<u8> = std::iter::repeat_n(0x13, 100).collect();
        assert_eq!(read(&deep).err(), Some(WireError::Group));
    }

    #[test]
    fn a_read_field_with_another_wire_type_is_refused() {
        // attributes (field 1) as a varint.
        assert_eq!(
            read(&[0x08, 0x01]).err(),
            Some(WireError::WireType("attributes"))
        );
    }

    #[test]
    fn a_length_past_the_end_is_truncated() {
        assert_eq!(read(&[0x0a, 0x05, 0x00]).err(), Some(WireError::Truncated));
    }
}
