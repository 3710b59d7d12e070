//! The key layout: `<prefix><encoded id>/<lease>-<locker>`.
//!
//! Ids are percent-encoded so they contain no `/`: the keys of id `a` (`<prefix>a/…`) and of
//! id `a/b` (`<prefix>a%2Fb/…`) never share a prefix, and every id maps to exactly one range.

use std::fmt::Write;

/// The key range of one id: `<prefix><encoded id>/`.
pub(crate) fn id_prefix(prefix: &str, id: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + id.len() + 1);
    out.push_str(prefix);
    for c in id.chars() {
        match c {
            '%' | '/' => {
                let _ = write!(out, "%{:02X}", c as u32);
            }
            c if c.is_control() => {
                let mut buf = [0; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "%{b:02X}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('/');
    out
}

/// The key of one locker within an id's range.
pub(crate) fn locker_key(id_prefix: &str, lease: i64, locker: u64) -> String {
    format!("{id_prefix}{lease:016x}-{locker:x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inverse of the id encoding: proof that it loses nothing.
    fn decode_id(encoded: &str) -> Option<String> {
        let mut bytes = Vec::with_capacity(encoded.len());
        let mut it = encoded.bytes();
        while let Some(b) = it.next() {
            if b == b'%' {
                let hex = [it.next()?, it.next()?];
                bytes.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            } else {
                bytes.push(b);
            }
        }
        String::from_utf8(bytes).ok()
    }

    #[test]
    fn ids_never_share_a_range() {
        let ids = ["a", "a/b", "a/", "a%2Fb", "a%", "/", "", "x\ny", "ünï ✓"];
        let ranges: Vec<String> = ids.iter().map(|id| id_prefix("p/", id)).collect();
        for (i, a) in ranges.iter().enumerate() {
            for (j, b) in ranges.iter().enumerate() {
                if i != j {
                    assert!(
                        !b.starts_with(a.as_str()),
                        "{:?} is inside {:?}",
                        ids[j],
                        ids[i]
                    );
                }
            }
        }
    }

    #[test]
    fn encoding_round_trips() {
        for id in ["a", "a/b", "a%2Fb", "x\ny\u{0}", "ünï ✓ 🔒", "100%"] {
            let range = id_prefix("", id);
            let encoded = range.strip_suffix('/').unwrap();
            assert!(!encoded.contains('/'));
            assert_eq!(decode_id(encoded).as_deref(), Some(id));
        }
    }
}
