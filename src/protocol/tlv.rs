//! The TLV entry layout shared by SUBSCRIBE and CREATE_TOPIC options: `tag: u8`, `len: u16`
//! (big-endian), `value: [u8; len]`. A length prefix lets a reader find the next entry even
//! when it does not know a tag, though this broker refuses unknown tags instead of skipping
//! them, so no client believes it got something it did not.

use super::subscribe_options::OptionError;

/// Appends one entry whose value is `parts` concatenated.
pub fn put_entry(out: &mut Vec<u8>, tag: u8, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|part| part.len()).sum();
    let len = u16::try_from(len).expect("option values are at most a few hundred bytes");
    out.push(tag);
    out.extend_from_slice(&len.to_be_bytes());
    for part in parts {
        out.extend_from_slice(part);
    }
}

/// Splits the first entry off `bytes`: its tag, its value and what follows.
pub fn split_entry(bytes: &[u8]) -> Result<(u8, &[u8], &[u8]), OptionError> {
    let [tag, len_hi, len_lo, rest @ ..] = bytes else {
        return Err(OptionError::Malformed(
            "option entry shorter than its header",
        ));
    };
    let len = usize::from(u16::from_be_bytes([*len_hi, *len_lo]));
    let Some((value, rest)) = rest.split_at_checked(len) else {
        return Err(OptionError::Malformed("option value runs past the frame"));
    };
    Ok((*tag, value, rest))
}

/// A value that must be exactly one big-endian `u64`.
pub fn u64_value(value: &[u8], wrong_length: &'static str) -> Result<u64, OptionError> {
    <[u8; 8]>::try_from(value)
        .map(u64::from_be_bytes)
        .map_err(|_| OptionError::Malformed(wrong_length))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_split_in_order_and_overruns_are_malformed() {
        let mut bytes = Vec::new();
        put_entry(&mut bytes, 7, &[b"ab", b"c"]);
        put_entry(&mut bytes, 9, &[]);
        assert_eq!(bytes, [7, 0, 3, b'a', b'b', b'c', 9, 0, 0]);
        let (tag, value, rest) = split_entry(&bytes).unwrap();
        assert_eq!((tag, value), (7, &b"abc"[..]));
        assert_eq!(split_entry(rest).unwrap(), (9, &[][..], &[][..]));
        assert!(matches!(
            split_entry(&[1, 0]),
            Err(OptionError::Malformed(_))
        ));
        assert!(matches!(
            split_entry(&[1, 0, 2, 0]),
            Err(OptionError::Malformed(_))
        ));
        assert_eq!(u64_value(&[0, 0, 0, 0, 0, 0, 1, 0], "x"), Ok(256));
        assert_eq!(u64_value(&[1], "x"), Err(OptionError::Malformed("x")));
    }
}
