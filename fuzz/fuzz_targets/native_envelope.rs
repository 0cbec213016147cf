//! Fuzzes the native protocol's envelope decoder with arbitrary WebSocket text.
//!
//! Decoding must never panic. A decoded message's type and id, re-encoded through the server's
//! encoder, are valid JSON, and a `ping` or an application type decodes back to the same id.

#![no_main]

use imks::chat::envelope::{decode, encode, ClientMsg};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match decode(text) {
        Err(_) => {}
        Ok(inbound) => {
            let kind = match &inbound.msg {
                ClientMsg::Ping => "ping".to_string(),
                ClientMsg::Chat { .. } => "chat".to_string(),
                ClientMsg::Read { .. } => "read".to_string(),
                ClientMsg::PresenceSubscribe { .. } => "presence:subscribe".to_string(),
                ClientMsg::PresenceUnsubscribe { .. } => "presence:unsubscribe".to_string(),
                ClientMsg::Join { .. } => "join".to_string(),
                ClientMsg::Leave { .. } => "leave".to_string(),
                ClientMsg::History { .. } => "history".to_string(),
                ClientMsg::Custom { kind, data } => {
                    // JSON syntax, not necessarily numbers an f64 holds (see the unit test
                    // `raw_data_is_checked_for_json_syntax_not_for_number_range`).
                    assert!(serde_json::from_str::<serde::de::IgnoredAny>(data).is_ok(), "raw data is JSON");
                    kind.to_string()
                }
            };
            let out = encode(&kind, inbound.id.as_deref(), &serde_json::json!({}));
            let v: serde_json::Value = serde_json::from_str(&out).expect("the encoder writes JSON");
            assert_eq!(v["type"].as_str(), Some(kind.as_str()));
            if matches!(inbound.msg, ClientMsg::Ping | ClientMsg::Custom { .. }) {
                let again = decode(&out).expect("an encoded envelope decodes");
                assert_eq!(again.id, inbound.id);
            }
        }
    }
});
