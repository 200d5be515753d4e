//! Bytes that must never be printed: private keys, encryption keys, kubeconfigs with keys.
//!
//! `Debug` and `Serialize` both say `[redacted]`, so a stray `{:?}`, a plan dump
//! or `--output json` cannot leak one. Memory is zeroed on drop.

use std::fmt;

use zeroize::Zeroizing;

/// Secret bytes. Reach the contents only through [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(Zeroizing::new(bytes))
    }
    /// The secret itself; call sites are the places to audit.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
    /// The secret as UTF-8 text (PEM, YAML); lossless for the text secrets rampart makes.
    pub fn expose_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret::new(s.into_bytes())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_json_never_show_the_bytes() {
        let s = Secret::from("-----BEGIN PRIVATE KEY-----".to_string());
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"[redacted]\"");
    }
}
