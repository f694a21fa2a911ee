//! `--until` of `krgadm nodes checkout`: a duration from now (`+4h`,
//! `+30m`, `+90s`, `+2d`, `+1h30m`) or an RFC 3339 time
//! (`2026-12-24T18:00:00+01:00`), and how the UNTIL column shows a deadline.

use krg_proto::cluster::Until;

/// Parse `--until`. The checkout's krgd turns a duration into a deadline
/// by its clock, and refuses a deadline that has passed.
pub fn parse(text: &str) -> Result<Until, String> {
    let t = text.trim();
    if let Some(rel) = t.strip_prefix('+') {
        let ms = duration_ms(rel).map_err(|why| format!("bad --until '{text}': {why}"))?;
        if ms == 0 {
            return Err(format!(
                "bad --until '{text}': a checkout must last some time"
            ));
        }
        return Ok(Until::After { ms });
    }
    let at = chrono::DateTime::parse_from_rfc3339(t).map_err(|e| {
        format!("bad --until '{text}': {e} (give +4h, +30m, +90s, +2d or an RFC 3339 time such as 2026-12-24T18:00:00Z)")
    })?;
    let unix_ms = u64::try_from(at.timestamp_millis())
        .map_err(|_| format!("bad --until '{text}': before 1970"))?;
    Ok(Until::At { unix_ms })
}

/// `4h`, `30m`, `1h30m`, `90s`, `2d` in milliseconds.
fn duration_ms(s: &str) -> Result<u64, String> {
    if s.is_empty() {
        return Err("no duration after '+'".into());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1_000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => 86_400_000,
            other => return Err(format!("unknown unit '{other}' (s, m, h or d)")),
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("a number must come before '{c}'"))?;
        digits.clear();
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or("the duration is too long")?;
    }
    if !digits.is_empty() {
        return Err(format!("'{digits}' has no unit (s, m, h or d)"));
    }
    Ok(total)
}

/// A deadline (ms since the Unix epoch) as RFC 3339 UTC to the second.
pub fn show(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(chrono::DateTime::<chrono::Utc>::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn durations_and_times() {
        assert_eq!(parse("+4h").unwrap(), Until::After { ms: 4 * 3_600_000 });
        assert_eq!(parse("+30m").unwrap(), Until::After { ms: 1_800_000 });
        assert_eq!(parse("+90s").unwrap(), Until::After { ms: 90_000 });
        assert_eq!(parse("+1h30m").unwrap(), Until::After { ms: 5_400_000 });
        assert_eq!(parse("+2d").unwrap(), Until::After { ms: 172_800_000 });
        assert_eq!(
            parse("2026-12-24T18:00:00+01:00").unwrap(),
            Until::At {
                unix_ms: 1_798_131_600_000
            }
        );
        assert_eq!(show(1_798_131_600_000), "2026-12-24T17:00:00Z");
        for bad in [
            "+0s",
            "+",
            "+4",
            "+4x",
            "+h",
            "tomorrow",
            "2026-13-01T00:00:00Z",
            "+99999999999999999d",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
