//! Fuzzes the WebSocket codec with arbitrary client bytes delivered in two reads.
//!
//! The first input byte picks where the rest is split, so the fuzzer also explores frames cut
//! at every point of their header and payload, as a socket may deliver them. The codec must
//! never panic, and after an error or a close it must stay terminated.

#![no_main]

use imks::ws::codec::{CodecLimits, WsCodec, WsError};
use libfuzzer_sys::fuzz_target;

/// Decodes everything available; returns whether the codec can take more input.
fn drain(codec: &mut WsCodec) -> bool {
    loop {
        match codec.next_message() {
            Ok(Some(_)) => {}
            Ok(None) => return true,
            Err(_) => {
                assert!(codec.is_terminated());
                assert!(matches!(codec.next_message(), Err(WsError::Closed)));
                return false;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let split = usize::from(selector >> 1) % (rest.len() + 1);
    let (first, second) = rest.split_at(split);

    // Small limits so the size checks are reachable with short inputs.
    let mut codec = WsCodec::new(CodecLimits { max_message_bytes: 4096, max_frame_bytes: 1024 });
    codec.feed(first);
    if drain(&mut codec) {
        let _ = codec.take_output();
        // As a session does before it waits for more: the decoder may be let go here.
        if selector & 1 != 0 {
            codec.release_if_idle();
        }
        codec.feed(second);
        drain(&mut codec);
    }
    let _ = codec.take_output();
});
