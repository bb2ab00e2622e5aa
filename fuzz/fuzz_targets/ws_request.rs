//! Fuzzes the WebSocket request parser: any text must parse or be refused
//! with a code and a message, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = hostpulse_aggregator::ws::protocol::parse(text) {
            assert!(!e.code.is_empty() && !e.message.is_empty());
        }
    }
});
