//! Bearer credentials from an `Authorization` value, per RFC 6750 §2.1: scheme matched without
//! regard to case, exactly one `b64token`, nothing else.

/// Longest token accepted; far above any real access or ID token, far below Envoy's header limit.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Why a request carries no usable bearer token (all are `invalid_request`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BearerError {
    /// No `Authorization` header.
    #[error("the request has no Authorization header")]
    Missing,
    /// Several values (Envoy joins repeated headers with commas).
    #[error("the request has more than one Authorization value")]
    Multiple,
    /// Another scheme, e.g. `Basic`.
    #[error("the Authorization scheme is not Bearer")]
    NotBearer,
    /// `Bearer` with nothing after it.
    #[error("the Bearer token is empty")]
    Empty,
    /// Characters outside RFC 6750's b64token.
    #[error("the Bearer token is malformed")]
    Malformed,
    /// Longer than [`MAX_TOKEN_LEN`].
    #[error("the Bearer token is too long")]
    TooLong,
}

/// RFC 6750 `b64token` characters (the trailing `=`s apart): letters, digits, `-._~+/`.
const B64TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] =
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        i += 1;
    }
    table
};

/// Extracts the token from one `Authorization` header value.
pub fn parse(value: &str) -> Result<&str, BearerError> {
    let value = value.trim_matches([' ', '\t']);
    if value.len() > MAX_TOKEN_LEN + 7 {
        return Err(BearerError::TooLong);
    }
    let (scheme, rest) = value.split_once([' ', '\t']).unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        // "Basic x, Bearer y" is still two values, but the first one decides the message.
        return Err(if scheme.contains(',') {
            BearerError::Multiple
        } else {
            BearerError::NotBearer
        });
    }
    let token = rest.trim_start_matches([' ', '\t']);
    if token.is_empty() {
        return Err(BearerError::Empty);
    }
    if token.contains(',') {
        return Err(BearerError::Multiple);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(BearerError::TooLong);
    }
    let body = token.trim_end_matches('=');
    // One table lookup per byte, without an early exit: a token is hundreds of bytes on every
    // Check, and a bad one is rare.
    if body.is_empty() || !body.bytes().fold(true, |ok, b| ok & B64TOKEN[b as usize]) {
        return Err(BearerError::Malformed);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheme_is_case_insensitive_and_whitespace_trimmed() {
        assert_eq!(parse("bearer abc.def"), Ok("abc.def"));
        assert_eq!(parse("BEARER  abc "), Ok("abc"));
        // The seed document's curl sends `Bearer $TOKEN ` with a trailing space.
        assert_eq!(parse("Bearer ya29.a0AfH6= "), Ok("ya29.a0AfH6="));
    }

    #[test]
    fn the_table_admits_exactly_the_b64token_characters() {
        // RFC 6750's b64token, spelled out rather than computed the way the table is.
        const ALPHABET: &[u8] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/";
        for b in 0..=255u8 {
            let expected = ALPHABET.contains(&b);
            assert_eq!(B64TOKEN[b as usize], expected, "byte {b:#04x}");
        }
        assert_eq!(parse("Bearer aZ09-._~+/=="), Ok("aZ09-._~+/=="));
    }

    #[test]
    fn every_bad_form_is_refused_with_its_reason() {
        assert_eq!(parse("Bearer"), Err(BearerError::Empty));
        assert_eq!(parse("Bearer    "), Err(BearerError::Empty));
        assert_eq!(parse("Basic dXNlcjpwYXNz"), Err(BearerError::NotBearer));
        assert_eq!(parse("Bearer a, Bearer b"), Err(BearerError::Multiple));
        assert_eq!(parse("Bearer a,Bearer b"), Err(BearerError::Multiple));
        assert_eq!(parse("Bearer a b"), Err(BearerError::Malformed));
        assert_eq!(parse("Bearer ==="), Err(BearerError::Malformed));
        assert_eq!(parse("Bearer a=b"), Err(BearerError::Malformed));
        assert_eq!(parse("Bearer abc\u{e9}"), Err(BearerError::Malformed));
        assert_eq!(parse("Bearer abc\"def"), Err(BearerError::Malformed));
        assert_eq!(parse("Bearer a;b"), Err(BearerError::Malformed));
        assert_eq!(
            parse(&format!("Bearer {}", "a".repeat(MAX_TOKEN_LEN + 1))),
            Err(BearerError::TooLong)
        );
    }
}
