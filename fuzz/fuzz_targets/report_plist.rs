//! `Report::decode` (`PUT /mdm` bodies).
#![no_main]

use cloudvpp_mdmwire::Report;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((r, _status)) = Report::decode(data) {
        let _ = r.keys().resolve();
    }
});
