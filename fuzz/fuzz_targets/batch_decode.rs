//! Fuzzes the MessagePack batch decoder and sample validation: any bytes and
//! any declared count must decode or be refused, never panic or allocate
//! beyond the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let declared = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
    let _ = hostpulse_proto::decode_batch(&data[4..], declared, 1000);
});
