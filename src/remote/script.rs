//! Shell scripts rampart runs on hosts (filled in by the install engine).
