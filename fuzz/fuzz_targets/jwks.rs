//! Key-set parsing on arbitrary bytes: never a panic, and the same document parses to the
//! same keys twice (a refresh that serves it again is recognised as unchanged).
#![no_main]

use cedargate::identity::jwks::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let first = parse(data);
    let second = parse(data);
    match (first, second) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.len(), b.len());
            let mut kids_a: Vec<_> = a.kids().collect();
            let mut kids_b: Vec<_> = b.kids().collect();
            kids_a.sort_unstable();
            kids_b.sort_unstable();
            assert_eq!(kids_a, kids_b);
        }
        (Err(_), Err(_)) => {}
        _ => panic!("the same document parsed two ways"),
    }
});
