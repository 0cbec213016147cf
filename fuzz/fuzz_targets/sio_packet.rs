//! Fuzzes the Socket.IO v5 packet decoder with arbitrary Engine.IO message text.
//!
//! Decoding must never panic. Whatever decodes must survive a round trip (encode, decode again,
//! same packet), the event and argument helpers must rebuild an equivalent event, and the binary
//! assembler must complete the packet after exactly its announced number of attachments.

#![no_main]

use imks::socketio::packet::{
    args_raw, args_tail, check_placeholders, decode, encode_event, encode_packet, encoded_len, event_name,
    BinaryAssembler, SioError,
};
use libfuzzer_sys::fuzz_target;

/// Small, so the attachment limit is reachable.
const MAX_ATTACHMENTS: usize = 4;

fuzz_target!(|data: &[u8]| {
    // Socket.IO packets are the text of Engine.IO messages, which is UTF-8.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(packet) = decode(text, MAX_ATTACHMENTS) else {
        return;
    };
    assert!(packet.attachments <= MAX_ATTACHMENTS);
    assert!(packet.nsp.starts_with('/') && !packet.nsp.contains(','));

    // Round trip.
    let encoded = encode_packet(&packet);
    assert_eq!(encoded.len(), encoded_len(packet.kind, &packet.nsp, packet.id, packet.data_json(), packet.attachments));
    let again = decode(&encoded, MAX_ATTACHMENTS).expect("a re-encoded packet decodes");
    assert_eq!(again, packet);

    // Helpers: an event rebuilt from its name and raw arguments decodes to the same name and
    // arguments.
    if let Some(data) = packet.data.as_deref() {
        if packet.kind.is_binary() {
            assert_eq!(check_placeholders(data, packet.attachments), Ok(()));
        }
    }
    if let (Some(name), Some(tail)) = (event_name(&packet), args_tail(&packet)) {
        let rebuilt = encode_event(&packet.nsp, packet.id, &name, tail, packet.attachments);
        let rebuilt = decode(&rebuilt, MAX_ATTACHMENTS).expect("a rebuilt event decodes");
        assert_eq!(event_name(&rebuilt).as_deref(), Some(name.as_ref()));
        assert_eq!(args_tail(&rebuilt), Some(tail));
        assert_eq!(rebuilt.id, packet.id);
    }
    if let Ok(args) = args_raw(&packet) {
        let _ = args.iter().map(|a| a.get().len()).sum::<usize>();
    }

    // Assembler: complete after exactly `attachments` binary messages; a text packet in
    // between is refused.
    let mut assembler = BinaryAssembler::new();
    let pending = packet.kind.is_binary() && packet.attachments > 0;
    let first = assembler.push_packet(packet.clone()).expect("an idle assembler takes a packet");
    assert_eq!(first.is_none(), pending);
    if pending {
        assert_eq!(assembler.push_text(text, MAX_ATTACHMENTS), Err(SioError::UnexpectedText));
        for i in 0..packet.attachments {
            let done = assembler.push_binary(vec![i as u8].into()).expect("an expected attachment");
            assert_eq!(done.is_some(), i + 1 == packet.attachments);
            if let Some((complete, buffers)) = done {
                assert_eq!(complete, packet);
                assert_eq!(buffers.len(), packet.attachments);
            }
        }
    }
    assert!(!assembler.is_pending());
    assert_eq!(assembler.push_binary(Vec::new().into()), Err(SioError::UnexpectedBinary));
});
