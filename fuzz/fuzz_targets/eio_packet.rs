//! Fuzzes the Engine.IO v4 codec with arbitrary client bytes, read both as a WebSocket text
//! frame and as a long-polling `POST` body.
//!
//! Decoding must never panic, and whatever decodes must survive a round trip: re-encoding the
//! packets (as a text or binary frame, or as a payload) and decoding them again gives the same
//! packets. A small `maxPayload` keeps the size check reachable with short inputs.

#![no_main]

use imks::engineio::packet::{
    decode_payload, decode_ws_binary, decode_ws_text, encode_payload, encode_ws, encoded_len, EioError, WsOut,
};
use libfuzzer_sys::fuzz_target;

/// Small enough that the fuzzer easily produces bodies over it.
const MAX_PAYLOAD: usize = 256;

fuzz_target!(|data: &[u8]| {
    // WebSocket text frame (the WebSocket layer has not necessarily validated UTF-8 here).
    if let Ok(packet) = decode_ws_text(data.to_vec().into()) {
        let again = match encode_ws(&packet) {
            WsOut::Text(frame) => {
                assert_eq!(frame.len(), encoded_len(&packet));
                decode_ws_text(frame).expect("an encoded text frame decodes")
            }
            WsOut::Binary(frame) => decode_ws_binary(frame),
        };
        assert_eq!(again, packet);
    }

    // A binary frame is always a message holding exactly the frame.
    let binary = decode_ws_binary(data.to_vec().into());
    assert!(matches!(encode_ws(&binary), WsOut::Binary(frame) if frame.as_ref() == data));

    // Long-polling body.
    match decode_payload(data.to_vec().into(), MAX_PAYLOAD) {
        Ok(packets) => {
            assert!(!packets.is_empty());
            assert!(data.len() <= MAX_PAYLOAD);
            let mut body = Vec::new();
            encode_payload(&packets, &mut body);
            assert_eq!(body.len(), packets.iter().map(encoded_len).sum::<usize>() + packets.len() - 1);
            // Canonical base64 may be longer than the lenient input, hence no limit here.
            let again = decode_payload(body.into(), usize::MAX).expect("a re-encoded payload decodes");
            assert_eq!(again, packets);
        }
        Err(err) => {
            assert_eq!(data.len() > MAX_PAYLOAD, matches!(err, EioError::PayloadTooLarge { .. }));
            assert!(matches!(err.http_status(), 400 | 413));
        }
    }
});
