//! Fuzzes the check of envelopes from other nodes (rkyv with bytecheck, behind a two-byte
//! header) with arbitrary bytes.
//!
//! Checking must never panic, whatever the bytes. An envelope that passes is whole: it copies
//! out, encodes again, and the encoding checks as the same envelope.

#![no_main]

use imks::cluster::envelope::{decode, encode, to_owned};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(env) = decode(data) else {
        return;
    };
    let owned = to_owned(env).expect("a checked envelope copies out");
    let again = encode(&owned);
    let back = decode(&again).expect("an encoded envelope checks");
    assert_eq!(to_owned(back).expect("and copies out"), owned);
});
