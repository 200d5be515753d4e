//! The SSH transport (russh): connect, verify host keys, authenticate, run scripts.
