//! `CheckinMessage::decode` (`PUT /checkin` bodies), plus the bounded parser it uses,
//! checked against the unbounded one on whatever it accepts.
#![no_main]

use cloudvpp_mdmwire::{parse_bounded, CheckinMessage, PlistLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = CheckinMessage::decode(data) {
        let _ = m.keys().resolve();
    }
    if let Ok(v) = parse_bounded(data, &PlistLimits::DEFAULT) {
        // Within the limits, the unbounded reader is safe to run and must agree: the
        // bounded one only cuts off, it never changes what it reads.
        let plain: plist::Value = plist::from_bytes(data).expect("bounded parse accepted it");
        let text = format!("{v:?}");
        if !text.contains("NaN") {
            assert_eq!(v, plain);
        }
    }
});
