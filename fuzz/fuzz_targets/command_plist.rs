//! `decode_command` (raw command plists from the admin API).
#![no_main]

use cloudvpp_mdmwire::decode_command;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = decode_command(data) {
        assert!(!info.command_uuid.trim().is_empty());
        assert!(!info.request_type.trim().is_empty());
    }
});
