//! Fuzzes both configuration loaders: any text must give a config or an error
//! naming the file, never panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let path = Path::new("fuzz.toml");
        if let Err(e) = hostpulse_aggregator::AggregatorConfig::parse(text, path) {
            assert!(e.to_string().contains("fuzz.toml"));
        }
        if let Err(e) = hostpulse_agent::AgentConfig::parse(text, path) {
            assert!(e.to_string().contains("fuzz.toml"));
        }
    }
});
