//! Peer certificates as Envoy forwards them (URL-encoded PEM), from arbitrary DER: never a panic.
#![no_main]

use cedargate::identity::peer::parse_certificate;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let body: String = data
        .chunks(48)
        .map(|c| format!("{}\n", base64_line(c)))
        .collect();
    let pem = format!("-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n");
    let _ = parse_certificate(&pem, 1_700_000_000);
    let _ = parse_certificate(&String::from_utf8_lossy(data), 1_700_000_000);
});

/// Standard base64 of one line (no dependency just for this).
fn base64_line(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |acc, b| acc << 8 | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
