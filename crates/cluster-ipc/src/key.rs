//! Connection keys: random, single-use, compared in constant time, never printed.

use std::fmt;

/// Length of a [`Key`] in bytes (256 bits).
pub const KEY_LEN: usize = 32;

/// A secret that a child presents to an [`IpcHub`](crate::IpcHub) to claim its connection.
///
/// `Debug` and `Display` never show the bytes; [`Key::to_hex`] is the one deliberate way out,
/// for handing the key to a child (in its environment, say).
#[derive(Clone, PartialEq, Eq)]
pub struct Key([u8; KEY_LEN]);

impl Key {
    /// A fresh key from the operating system's random source (`getrandom`).
    ///
    /// # Panics
    /// Never in practice: `getrandom` only fails on kernels older than Linux 3.17.
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_LEN];
        let mut filled = 0;
        while filled < KEY_LEN {
            match rustix::rand::getrandom(
                &mut bytes[filled..],
                rustix::rand::GetRandomFlags::empty(),
            ) {
                Ok(n) => filled += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => panic!("the OS random source failed: {e}"),
            }
        }
        Self(bytes)
    }

    /// The key as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 64 hex digits.
    ///
    /// # Errors
    /// [`KeyParseError`] for any other length or a non-hex digit.
    pub fn from_hex(hex: &str) -> Result<Self, KeyParseError> {
        let digits = hex.as_bytes();
        if digits.len() != 2 * KEY_LEN {
            return Err(KeyParseError);
        }
        let mut bytes = [0u8; KEY_LEN];
        for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
            let text = std::str::from_utf8(pair).map_err(|_| KeyParseError)?;
            *byte = u8::from_str_radix(text, 16).map_err(|_| KeyParseError)?;
        }
        Ok(Self(bytes))
    }

    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    pub(crate) fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Compares without an early exit, so timing says nothing about how many bytes matched.
    pub(crate) fn ct_eq(&self, other: &Self) -> bool {
        let diff = self
            .0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

/// A string that is not a key: it must be exactly 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a key is exactly 64 hex digits")]
pub struct KeyParseError;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_round_trip_through_hex_and_never_print() {
        let (a, b) = (Key::generate(), Key::generate());
        assert!(!a.ct_eq(&b));
        let parsed = Key::from_hex(&a.to_hex()).unwrap();
        assert!(parsed.ct_eq(&a));
        assert!(!format!("{a:?}").contains(&a.to_hex()[..8]));
        assert_eq!(Key::from_hex("abc"), Err(KeyParseError));
        assert_eq!(Key::from_hex(&"zz".repeat(32)), Err(KeyParseError));
    }
}
