//! The one spelling of a request path that the route table is matched against. Backends read
//! paths in many ways (Spring and Tomcat drop `;` parameters, Windows servers trim a trailing
//! `.` or space, most decode `%61` to `a` and merge `//`), so a route decided on the raw path
//! could be bypassed by any spelling the backend reads as a more specific path. Here the path is
//! normalised (every printable ASCII byte whose decoding cannot change the path's structure is
//! percent-decoded, slashes merged, letters folded to lower case), and every path that has no
//! single reading is refused: among them any `.` or `..` segment, which backends resolve in
//! different places (before or after routing, before or after decoding).
//!
//! Decoding covers the reserved sub-delimiters (`: @ ! $ & ' ( ) * + , =`) too: Werkzeug/Flask and
//! the JDK's HttpServer decode `%3A` to `:` before routing, while Envoy's `normalize_path` leaves
//! it encoded, so `/orders%3Acancel` must meet the route `/orders:cancel`. Decoding them for the
//! comparison only (the request goes on as sent) keeps legitimate clients working (an e-mail
//! address in a path is `alice%40example.com`), and since route prefixes are normalised the same
//! way, a path can only ever meet the route of its decoded form, which is at least as specific
//! as the route of its literal form.

use std::fmt::Write as _;

/// Why a path has no single reading. The message names the problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not an absolute path.
    #[error("the path must start with '/'")]
    NotAbsolute,
    /// `%2F`: one backend splits segments on it, another does not.
    #[error("the path holds an encoded '/' (%2F)")]
    EncodedSlash,
    /// `%5C`.
    #[error("the path holds an encoded '\\' (%5C)")]
    EncodedBackslash,
    /// A raw backslash, read as `/` by some servers.
    #[error("the path holds a '\\'")]
    Backslash,
    /// `;` parameters (raw or `%3B`), dropped by some servers before routing.
    #[error("the path holds ';' parameters")]
    Parameters,
    /// `%25`: a second decoding would read something else.
    #[error("the path holds an encoded '%' (%25), which a second decoding would change")]
    EncodedPercent,
    /// `%` not followed by two hex digits.
    #[error("the path holds invalid percent-encoding")]
    BadPercent,
    /// A control character, raw whitespace or a raw non-ASCII byte.
    #[error("the path holds a control character, raw whitespace or a raw non-ASCII byte")]
    Control,
    /// A `.` or `..` segment, raw or encoded: resolved before routing by some servers, after it
    /// (or never) by others.
    #[error("the path holds a '.' or '..' segment")]
    DotSegment,
    /// A segment ending in `.` (other than the dot segments themselves).
    #[error("a path segment ends in '.'")]
    TrailingDot,
    /// A segment ending in (encoded) whitespace.
    #[error("a path segment ends in whitespace")]
    TrailingSpace,
}

/// Whether an encoded byte is decoded in the normal form: every printable ASCII byte but those
/// whose raw form would change the path's structure (`/`, `?`, `#`), those refused outright
/// (`\\`, `;`, `%`) and the space (raw, it is refused; encoded, it stays `%20`).
fn decoded(b: u8) -> bool {
    b.is_ascii_graphic() && !matches!(b, b'/' | b'?' | b'#' | b'\\' | b';' | b'%')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The normal form of the path part of `raw` (everything before `?` or `#`): lower case,
/// printable ASCII decoded (sub-delimiters such as `:` and `@` included), other encoded bytes
/// kept as `%xx`, empty segments dropped, a trailing `/` kept. A `.` or `..` segment, raw or
/// encoded, is refused rather than resolved.
pub fn normalize(raw: &str) -> Result<String, PathError> {
    let raw = raw.as_bytes();
    let end = raw
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(raw.len());
    let raw = &raw[..end];
    if raw.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // One pass, one allocation: each segment is decoded straight into `out` after its '/', then
    // kept, dropped (empty) or refused when it ends.
    let mut out = String::with_capacity(end + 1);
    let mut start = out.len();
    out.push('/');
    // Whether the current segment's last character is (encoded) whitespace.
    let mut ends_in_space = false;
    let mut trailing_slash = false;
    let mut i = 1;
    loop {
        let Some(b) = raw.get(i).copied() else {
            close(&mut out, start, ends_in_space)?;
            break;
        };
        if b == b'/' {
            close(&mut out, start, ends_in_space)?;
            start = out.len();
            out.push('/');
            ends_in_space = false;
            trailing_slash = true;
            i += 1;
            continue;
        }
        trailing_slash = false;
        match b {
            b'%' => {
                let (Some(h), Some(l)) = (
                    raw.get(i + 1).copied().and_then(hex),
                    raw.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadPercent);
                };
                let d = h << 4 | l;
                match d {
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::EncodedBackslash),
                    b';' => return Err(PathError::Parameters),
                    b'%' => return Err(PathError::EncodedPercent),
                    0..0x20 | 0x7f => return Err(PathError::Control),
                    d if decoded(d) => {
                        out.push(d.to_ascii_lowercase() as char);
                        ends_in_space = false;
                    }
                    d => {
                        let _ = write!(out, "%{d:02x}");
                        ends_in_space = d == b' ';
                    }
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            b';' => return Err(PathError::Parameters),
            0..=0x20 | 0x7f.. => return Err(PathError::Control),
            b => {
                out.push(b.to_ascii_lowercase() as char);
                ends_in_space = false;
                i += 1;
            }
        }
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

/// Ends the segment written at `out[start..]` (its leading '/' included): keeps it, drops it
/// (empty), or refuses it (a dot segment, or ending in `.` or whitespace).
fn close(out: &mut String, start: usize, ends_in_space: bool) -> Result<(), PathError> {
    match &out[start + 1..] {
        "" => out.truncate(start),
        "." | ".." => return Err(PathError::DotSegment),
        s if s.ends_with('.') => return Err(PathError::TrailingDot),
        _ if ends_in_space => return Err(PathError::TrailingSpace),
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize(p)
    }

    #[test]
    fn empty_segments_are_merged_and_a_trailing_slash_kept() {
        assert_eq!(n("//orders///admin").as_deref(), Ok("/orders/admin"));
        assert_eq!(n("/").as_deref(), Ok("/"));
        assert_eq!(n("//").as_deref(), Ok("/"));
        assert_eq!(n("/orders/").as_deref(), Ok("/orders/"));
        assert_eq!(n("/orders//").as_deref(), Ok("/orders/"));
    }

    #[test]
    fn dot_segments_raw_or_encoded_in_any_case_are_refused() {
        for p in [
            "/orders/..",
            "/orders/../",
            "/orders/x/../admin",
            "/../../orders",
            "/..",
            "/.",
            "/./orders",
            "/orders/.",
            "/orders/./admin",
            "/orders/%2e",
            "/orders/%2E",
            "/orders/%2e%2e",
            "/orders/%2E%2E",
            "/orders/%2e%2E/admin",
            "/orders/.%2e",
            "/orders/%2e.",
            "/orders/.%2E/",
            "/orders/..?x=1",
        ] {
            assert_eq!(n(p), Err(PathError::DotSegment), "{p:?}");
        }
        assert!(
            PathError::DotSegment
                .to_string()
                .contains("'.' or '..' segment")
        );
    }

    #[test]
    fn dots_inside_a_segment_and_in_the_query_are_data() {
        assert_eq!(n("/v1.2/x").as_deref(), Ok("/v1.2/x"));
        assert_eq!(n("/.well-known").as_deref(), Ok("/.well-known"));
        assert_eq!(n("/a..b").as_deref(), Ok("/a..b"));
        assert_eq!(n("/%2ewell-known").as_deref(), Ok("/.well-known"));
        assert_eq!(n("/x?p=/../admin").as_deref(), Ok("/x"));
    }

    #[test]
    fn unreserved_characters_are_decoded_and_letters_folded() {
        assert_eq!(n("/orders/%61dmin").as_deref(), Ok("/orders/admin"));
        assert_eq!(n("/Orders/ADMIN").as_deref(), Ok("/orders/admin"));
        assert_eq!(n("/a%7Eb").as_deref(), Ok("/a~b"));
    }

    #[test]
    fn sub_delimiters_are_decoded_however_they_are_spelled() {
        for (c, hex) in [
            (':', "3a"),
            ('@', "40"),
            ('!', "21"),
            ('$', "24"),
            ('&', "26"),
            ('\'', "27"),
            ('(', "28"),
            (')', "29"),
            ('*', "2a"),
            ('+', "2b"),
            (',', "2c"),
            ('=', "3d"),
        ] {
            let normal = format!("/x{c}y");
            for spelling in [
                format!("/x{c}y"),
                format!("/x%{hex}y"),
                format!("/x%{}y", hex.to_ascii_uppercase()),
                format!("/X%{}Y", hex.to_ascii_uppercase()),
            ] {
                assert_eq!(n(&spelling).as_deref(), Ok(normal.as_str()), "{spelling:?}");
            }
        }
        assert_eq!(
            n("/api/v1/orders%3Acancel").as_deref(),
            Ok("/api/v1/orders:cancel")
        );
        assert_eq!(n("/users/%40admin").as_deref(), Ok("/users/@admin"));
        // Other printable ASCII compares the same way.
        assert_eq!(n("/%5B1%5D%7Bx%7D").as_deref(), Ok("/[1]{x}"));
    }

    #[test]
    fn bytes_that_would_change_the_structure_stay_encoded_in_one_spelling() {
        assert_eq!(n("/caf%C3%A9").as_deref(), Ok("/caf%c3%a9"));
        assert_eq!(n("/a%3Fb").as_deref(), Ok("/a%3fb"));
        assert_eq!(n("/a%23b").as_deref(), Ok("/a%23b"));
        assert_eq!(n("/my%20file.txt").as_deref(), Ok("/my%20file.txt"));
    }

    #[test]
    fn query_and_fragment_are_not_part_of_the_path() {
        assert_eq!(n("/orders?x=/admin").as_deref(), Ok("/orders"));
        assert_eq!(n("/orders#/admin").as_deref(), Ok("/orders"));
    }

    #[test]
    fn ambiguous_paths_are_refused_naming_the_problem() {
        for (p, e) in [
            ("orders", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
            ("/a%2Fb", PathError::EncodedSlash),
            ("/a%2fb", PathError::EncodedSlash),
            ("/a%5cb", PathError::EncodedBackslash),
            ("/a\\b", PathError::Backslash),
            ("/a;b=1", PathError::Parameters),
            ("/a%3Bb", PathError::Parameters),
            ("/a%252F", PathError::EncodedPercent),
            ("/a%zz", PathError::BadPercent),
            ("/a%4", PathError::BadPercent),
            ("/a%", PathError::BadPercent),
            ("/a%0a", PathError::Control),
            ("/a\tb", PathError::Control),
            ("/a b", PathError::Control),
            ("/a\u{e9}", PathError::Control),
            ("/admin.", PathError::TrailingDot),
            ("/admin./x", PathError::TrailingDot),
            ("/admin%2E", PathError::TrailingDot),
            ("/...", PathError::TrailingDot),
            ("/admin%20", PathError::TrailingSpace),
            ("/admin%20/x", PathError::TrailingSpace),
        ] {
            assert_eq!(n(p), Err(e), "{p:?}");
        }
    }

    #[test]
    fn normal_forms_are_fixed_points() {
        for p in [
            "/",
            "/orders",
            "/orders/",
            "/a%40b/c",
            "/caf%c3%a9",
            "/a%3f%23%20b",
            "/x:y@z",
        ] {
            let once = n(p).unwrap();
            assert_eq!(n(&once).as_deref(), Ok(once.as_str()), "{p}");
        }
    }
}
