//! The argument list written into an XCPU session's `argv` file: words
//! separated by blanks, with '…' and "…" quoting and backslash escapes, as
//! a shell splits a simple command (no expansion of any kind).

/// Split `text` into words; Err when a quote or escape is left open.
pub fn split(text: &[u8]) -> Result<Vec<Vec<u8>>, &'static str> {
    let mut words = Vec::new();
    let mut cur: Option<Vec<u8>> = None;
    let mut i = 0;
    while i < text.len() {
        let c = text[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                if let Some(w) = cur.take() {
                    words.push(w);
                }
            }
            b'\'' => {
                let w = cur.get_or_insert_with(Vec::new);
                let end = text[i + 1..]
                    .iter()
                    .position(|b| *b == b'\'')
                    .ok_or("unterminated ' quote")?;
                w.extend_from_slice(&text[i + 1..i + 1 + end]);
                i += end + 1;
            }
            b'"' => {
                let w = cur.get_or_insert_with(Vec::new);
                i += 1;
                loop {
                    match text.get(i) {
                        None => return Err("unterminated \" quote"),
                        Some(b'"') => break,
                        Some(b'\\')
                            if matches!(text.get(i + 1), Some(b'"' | b'\\' | b'$' | b'`')) =>
                        {
                            w.push(text[i + 1]);
                            i += 2;
                        }
                        Some(b) => {
                            w.push(*b);
                            i += 1;
                        }
                    }
                }
            }
            b'\\' => {
                let next = *text.get(i + 1).ok_or("a backslash at the end")?;
                if next != b'\n' {
                    cur.get_or_insert_with(Vec::new).push(next);
                }
                i += 1;
            }
            _ => cur.get_or_insert_with(Vec::new).push(c),
        }
        i += 1;
    }
    if let Some(w) = cur {
        words.push(w);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: &str) -> Vec<String> {
        split(t.as_bytes())
            .unwrap()
            .into_iter()
            .map(|w| String::from_utf8(w).unwrap())
            .collect()
    }

    #[test]
    fn words_quotes_and_escapes() {
        assert_eq!(
            s("sh -c 'echo hi; exit 3'\n"),
            vec!["sh", "-c", "echo hi; exit 3"]
        );
        assert_eq!(s(r#"a "b c" d\ e ''"#), vec!["a", "b c", "d e", ""]);
        assert_eq!(s(r#"x"y\"z"w"#), vec!["xy\"zw"]);
        assert!(s("  \n").is_empty());
        for bad in ["'open", "\"open", "end\\"] {
            assert!(split(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
