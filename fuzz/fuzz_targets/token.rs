//! Bearer-token extraction and structural inspection on arbitrary text: never a panic.
#![no_main]

use std::collections::BTreeMap;

use cedargate::config::TokenSource;
use cedargate::identity::token::{extract, inspect};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let headers = BTreeMap::from([("authorization".to_owned(), text.to_string())]);
    let _ = extract(&headers, &BTreeMap::new(), &TokenSource::default());
    let _ = inspect(&text, 8192);
});
