//! `x-forwarded-client-cert` on arbitrary text: never a panic, at most one URI.
#![no_main]

use cedargate::identity::peer::parse_xfcc;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_xfcc(&String::from_utf8_lossy(data));
});
