//! Request normalisation on arbitrary method, target and header bytes: never a panic, and an
//! accepted path never holds a dot-segment, a backslash or a control character.
#![no_main]

use cedargate::request::{RawHeader, RawHttp, normalise};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let headers = parts
        .next()
        .unwrap_or_default()
        .split('\n')
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| RawHeader {
            name: name.to_owned(),
            value: value.as_bytes().to_vec(),
        })
        .collect();
    let raw = RawHttp {
        method,
        target,
        headers,
        ..RawHttp::default()
    };
    if let Ok(request) = normalise(raw, 8192) {
        assert!(request.path.starts_with('/'));
        assert!(!request.path.contains('\\'));
        assert!(!request.path.chars().any(char::is_control));
        assert!(request.path.split('/').all(|s| {
            let head = s.split(';').next().unwrap_or_default();
            head != "." && head != ".."
        }));
    }
});
