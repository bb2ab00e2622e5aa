//! Pieces the hostpulse agent and aggregator share, so each exists once.
//!
//! # Layout
//! - [`config`]: loading a TOML file into a config struct, the error that
//!   names the file, the key and the reason, and bounded reads of the files a
//!   config points at (tokens, certificates).
//! - [`logging`]: `RUST_LOG` filtering, text or JSON lines.
//! - [`signal`]: SIGTERM and Ctrl-C as one shutdown token.

pub mod config;
pub mod logging;
pub mod signal;
