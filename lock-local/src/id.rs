//! A locker's id, stored inside the locker when short so that `new_locker` allocates once.

/// Ids up to this many bytes are stored inline.
const INLINE: usize = 38;

/// A copy of a locker's id: inline up to [`INLINE`] bytes, boxed beyond.
pub(crate) enum IdBuf {
    Inline { len: u8, bytes: [u8; INLINE] },
    Boxed(Box<str>),
}

impl IdBuf {
    pub(crate) fn new(id: &str) -> Self {
        match u8::try_from(id.len()) {
            Ok(len) if id.len() <= INLINE => {
                let mut bytes = [0; INLINE];
                bytes[..id.len()].copy_from_slice(id.as_bytes());
                IdBuf::Inline { len, bytes }
            }
            _ => IdBuf::Boxed(id.into()),
        }
    }

    /// Makes this the buffer of `id`, in place when it fits inline (a reused slot).
    pub(crate) fn set(&mut self, id: &str) {
        match self {
            IdBuf::Inline { len, bytes } if id.len() <= INLINE => {
                bytes[..id.len()].copy_from_slice(id.as_bytes());
                // At most INLINE (38) bytes: fits.
                *len = id.len() as u8;
            }
            _ => *self = IdBuf::new(id),
        }
    }

    /// The id's bytes: what the table compares.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            IdBuf::Inline { len, bytes } => &bytes[..usize::from(*len)],
            IdBuf::Boxed(id) => id.as_bytes(),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            // Copied whole from a `&str`, so always valid; the check costs a pass over at most
            // 38 bytes, and only `Locker::id` and `Debug` read the id as text.
            IdBuf::Inline { .. } => std::str::from_utf8(self.as_bytes()).unwrap_or_default(),
            IdBuf::Boxed(id) => id,
        }
    }
}

impl std::fmt::Debug for IdBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::IdBuf;

    #[test]
    fn short_and_long_ids_keep_their_text() {
        for id in [
            "a",
            "jobs/nightly",
            "ключ/🔒",
            &"x".repeat(38),
            &"y".repeat(39),
            &"z".repeat(4096),
        ] {
            let buf = IdBuf::new(id);
            assert_eq!(buf.as_str(), id);
            assert_eq!(buf.as_bytes(), id.as_bytes());
            assert_eq!(matches!(buf, IdBuf::Inline { .. }), id.len() <= 38, "{id}");
            // Reused for every other id, in place or not.
            for other in ["b", &"w".repeat(38), &"v".repeat(39), ""] {
                let mut reused = IdBuf::new(other);
                reused.set(id);
                assert_eq!(reused.as_str(), id, "{other} then {id}");
            }
        }
    }
}
