//! The stream a member's push sends to `agent receive` on the backup target,
//! one backup per SSH session:
//!
//! ```text
//! {"version":1,"file":"prod-cp1-20261130T060000Z.db.age","manifestSize":412,"size":3309731}\n
//! <manifestSize bytes: the manifest, JSON>
//! <size bytes: the ciphertext>
//! EOF
//! ```
//!
//! The sizes up front let the receiver tell a short stream (a dropped
//! connection) from a complete one without trusting the end of the stream,
//! and bound what it keeps in memory. Its answer is one JSON line on stdout,
//! a [`ReceiveReport`].

use std::io::{self, BufRead, Read};

use serde::{Deserialize, Serialize};

/// The only version there is; a receiver refuses any other.
pub(crate) const VERSION: u32 = 1;
/// The header line, newline included, is at most this long.
pub(crate) const MAX_HEADER: usize = 1024;
/// Manifests are a few hundred bytes; this bounds what a sender can make the
/// receiver hold in memory.
pub(crate) const MAX_MANIFEST: u64 = 64 << 10;

/// The first line of the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Header {
    pub version: u32,
    /// The backup's file name, no directory.
    pub file: String,
    /// Bytes of the manifest that follows the header.
    pub manifest_size: u64,
    /// Bytes of the ciphertext that follows the manifest.
    pub size: u64,
}

impl Header {
    /// The header as sent: one JSON line.
    pub(crate) fn line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("plain struct serializes");
        line.push(b'\n');
        line
    }

    /// Reads the header line, at most [`MAX_HEADER`] bytes. The error is a
    /// reason for [`super::ReceiveError::Header`] (or the input's I/O error).
    pub(crate) fn read(input: &mut impl BufRead) -> io::Result<Result<Header, String>> {
        let mut line = Vec::new();
        Read::take(&mut *input, MAX_HEADER as u64).read_until(b'\n', &mut line)?;
        if line.last() != Some(&b'\n') {
            return Ok(Err(if line.len() == MAX_HEADER {
                format!("no header line within {MAX_HEADER} bytes")
            } else if line.is_empty() {
                "the stream is empty".into()
            } else {
                "the stream ended inside the header".into()
            }));
        }
        let header: Header = match serde_json::from_slice(&line) {
            Ok(h) => h,
            Err(e) => return Ok(Err(format!("not a header: {e}"))),
        };
        if header.version != VERSION {
            return Ok(Err(format!(
                "protocol version {}, this rampart speaks {VERSION}; install the same rampart on the members and the target",
                header.version
            )));
        }
        if header.manifest_size > MAX_MANIFEST {
            return Ok(Err(format!(
                "a manifest of {} bytes, more than {MAX_MANIFEST}",
                header.manifest_size
            )));
        }
        Ok(Ok(header))
    }
}

/// What `agent receive` stored, printed as one JSON line on success.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReceiveReport {
    /// The backup's file name.
    pub file: String,
    /// sha256 of the ciphertext as received (equal to the manifest's).
    pub sha256: String,
    pub size: u64,
    /// The same backup was there already (a re-send); nothing was written.
    pub already_stored: bool,
    /// This member's older backups deleted by the target's retention (file names).
    #[serde(default)]
    pub pruned: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &[u8]) -> Result<Header, String> {
        Header::read(&mut &bytes[..]).unwrap()
    }

    #[test]
    fn header_round_trips_and_leaves_the_rest_unread() {
        let h = Header {
            version: VERSION,
            file: "c-m-20260101T000000Z.db.age".into(),
            manifest_size: 3,
            size: 5,
        };
        let mut stream = h.line();
        assert_eq!(
            String::from_utf8_lossy(&stream),
            "{\"version\":1,\"file\":\"c-m-20260101T000000Z.db.age\",\"manifestSize\":3,\"size\":5}\n"
        );
        stream.extend_from_slice(b"abcdefgh");
        let mut input = &stream[..];
        assert_eq!(Header::read(&mut input).unwrap().unwrap(), h);
        assert_eq!(input, b"abcdefgh");
    }

    #[test]
    fn bad_headers_say_why() {
        let long = vec![b' '; MAX_HEADER + 10];
        #[rustfmt::skip]
        let cases: &[(&[u8], &str)] = &[
            (b"", "the stream is empty"),
            (b"{\"version\":1", "the stream ended inside the header"),
            (&long, "no header line within 1024 bytes"),
            (b"cat /etc/hostname\n", "not a header"),
            (b"{\"version\":2,\"file\":\"x\",\"manifestSize\":1,\"size\":1}\n", "protocol version 2"),
            (b"{\"version\":1,\"file\":\"x\",\"manifestSize\":1,\"size\":1,\"path\":\"/\"}\n", "unknown field `path`"),
            (b"{\"version\":1,\"file\":\"x\",\"manifestSize\":99999999,\"size\":1}\n", "a manifest of 99999999 bytes"),
            (b"{\"version\":1,\"file\":\"x\",\"manifestSize\":-1,\"size\":1}\n", "not a header"),
        ];
        for (input, want) in cases {
            let got = read(input).unwrap_err();
            assert!(got.contains(want), "{got} (want {want})");
        }
    }
}
