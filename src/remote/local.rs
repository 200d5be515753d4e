//! A [`super::Remote`] that runs scripts on this machine under a scratch root (tests).
