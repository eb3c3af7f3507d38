//! Reading the values of a DataRow, for the few queries the proxy runs itself.

/// The values of a DataRow body, as text; `None` for NULL or a malformed row.
pub fn parse_data_row(body: &[u8]) -> Option<Vec<Option<String>>> {
    let (count, mut rest) = body.split_first_chunk::<2>()?;
    let mut values = Vec::new();
    for _ in 0..i16::from_be_bytes(*count) {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let len = i32::from_be_bytes(*len);
        if len < 0 {
            values.push(None);
            rest = tail;
            continue;
        }
        let (value, tail) = tail.split_at_checked(len as usize)?;
        values.push(Some(String::from_utf8_lossy(value).into_owned()));
        rest = tail;
    }
    Some(values)
}

#[cfg(test)]
mod tests {
    use super::parse_data_row;

    #[test]
    fn data_rows_parse() {
        let body = b"\x00\x02\x00\x00\x00\x01a\xff\xff\xff\xff";
        assert_eq!(parse_data_row(body), Some(vec![Some("a".to_string()), None]));
        assert_eq!(parse_data_row(b"\x00\x01\x00\x00\x00\x05ab"), None);
        assert_eq!(parse_data_row(b"\x00"), None);
    }
}
