//! Cost of the Engine.IO / Socket.IO packet codecs on the messages a chat-like application
//! exchanges: decoding a client event and encoding the server's event, decoding an ack,
//! splitting and joining a long-polling payload, and, for comparison, what turning the same
//! event into `serde_json` values or typed structs and back costs (the work the codec avoids
//! by keeping arguments as raw JSON).

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use imks::engineio::packet::{self as eio, Packet as EioPacket, Payload};
use imks::socketio::packet::{self as sio, DEFAULT_MAX_ATTACHMENTS};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A typical client event as it arrives in a WebSocket text frame.
const EVENT_FRAME: &str = r#"42["chat",{"room":"r1","text":"hello world","ts":1700000000}]"#;
/// A typical ack as it arrives in a WebSocket text frame.
const ACK_FRAME: &str = r#"43123["ok"]"#;
/// The Socket.IO part of the event (what the JSON benchmarks parse).
const EVENT_DATA: &str = r#"["chat",{"room":"r1","text":"hello world","ts":1700000000}]"#;

/// The event's argument as an application would model it.
#[derive(Debug, Serialize, Deserialize)]
struct Chat {
    room: String,
    text: String,
    ts: u64,
}

/// The text of an Engine.IO message, as the Socket.IO decoder takes it.
fn message_text(packet: &EioPacket) -> Option<&str> {
    match packet {
        EioPacket::Message(payload) => payload.as_str(),
        _ => None,
    }
}

/// Ten packets as a busy polling client batches them: events, an ack, a binary attachment,
/// a pong.
fn polling_batch() -> Vec<EioPacket> {
    let mut packets = Vec::new();
    for i in 0..6 {
        packets.push(EioPacket::text(&format!(r#"2["chat",{{"room":"r1","text":"message {i}","ts":1700000000}}]"#)));
    }
    packets.push(EioPacket::text(r#"3123["ok"]"#));
    packets.push(EioPacket::text(r#"51-["file",{"_placeholder":true,"num":0}]"#));
    packets.push(EioPacket::binary(Bytes::from(vec![0xab; 256])));
    packets.push(EioPacket::Pong(None));
    packets
}

fn socketio(c: &mut Criterion) {
    let mut group = c.benchmark_group("sio");

    let frame = Bytes::from_static(EVENT_FRAME.as_bytes());
    group.throughput(Throughput::Bytes(frame.len() as u64));
    group.bench_function("decode_event", |b| {
        b.iter(|| {
            let eio_packet = eio::decode_ws_text(black_box(frame.clone())).ok()?;
            let packet = sio::decode(message_text(&eio_packet)?, DEFAULT_MAX_ATTACHMENTS).ok()?;
            let name = sio::event_name(&packet)?;
            black_box((name.len(), sio::args_tail(&packet)?.len()));
            Some(())
        })
    });

    let packet = sio::decode(&EVENT_FRAME[1..], DEFAULT_MAX_ATTACHMENTS).expect("the sample event decodes");
    let tail = sio::args_tail(&packet).expect("the sample event has arguments").to_owned();
    let mut sample = String::from("4");
    sio::encode_event_into(&mut sample, "/", None, "chat", &tail, 0);
    assert_eq!(sample, EVENT_FRAME);
    group.bench_function("encode_event", |b| {
        b.iter(|| {
            // The Engine.IO `4` and the Socket.IO packet in one exactly sized buffer.
            let mut out = String::from("4");
            sio::encode_event_into(&mut out, black_box("/"), None, black_box("chat"), black_box(&tail), 0);
            black_box(Bytes::from(out))
        })
    });

    let ack = Bytes::from_static(ACK_FRAME.as_bytes());
    let ack_packet = sio::decode(&ACK_FRAME[1..], DEFAULT_MAX_ATTACHMENTS).expect("the sample ack decodes");
    assert_eq!(ack_packet.id, Some(123));
    group.throughput(Throughput::Bytes(ack.len() as u64));
    group.bench_function("decode_ack", |b| {
        b.iter(|| {
            let eio_packet = eio::decode_ws_text(black_box(ack.clone())).ok()?;
            let packet = sio::decode(message_text(&eio_packet)?, DEFAULT_MAX_ATTACHMENTS).ok()?;
            black_box((packet.id, sio::args_tail(&packet)?.len()));
            Some(())
        })
    });
    group.bench_function("encode_ack", |b| {
        b.iter(|| {
            let mut out = String::from("4");
            sio::encode_ack_into(&mut out, black_box("/"), black_box(123), black_box(r#""ok""#), 0);
            black_box(Bytes::from(out))
        })
    });
    group.finish();
}

fn polling(c: &mut Criterion) {
    let mut group = c.benchmark_group("eio_polling");
    let packets = polling_batch();
    let mut body = Vec::new();
    eio::encode_payload(&packets, &mut body);
    let body = Bytes::from(body);
    assert_eq!(eio::decode_payload(body.clone(), 1_000_000).expect("the batch decodes"), packets);
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("decode_payload_10", |b| {
        b.iter(|| {
            let decoded = eio::decode_payload(black_box(body.clone()), 1_000_000).ok()?;
            let text = decoded.iter().filter(|p| matches!(p, EioPacket::Message(Payload::Text(_)))).count();
            black_box(text);
            Some(())
        })
    });
    group.bench_function("encode_payload_10", |b| {
        let mut out = Vec::with_capacity(body.len());
        b.iter(|| {
            out.clear();
            eio::encode_payload(black_box(&packets), &mut out);
            black_box(out.len())
        })
    });
    group.finish();
}

fn json(c: &mut Criterion) {
    let mut group = c.benchmark_group("json_event");
    group.throughput(Throughput::Bytes(EVENT_DATA.len() as u64));
    group.bench_function("value_decode", |b| {
        b.iter(|| black_box(serde_json::from_str::<serde_json::Value>(black_box(EVENT_DATA)).ok()))
    });
    let value: serde_json::Value = serde_json::from_str(EVENT_DATA).expect("valid JSON");
    group.bench_function("value_encode", |b| b.iter(|| black_box(serde_json::to_string(black_box(&value)).ok())));
    group.bench_function("typed_decode", |b| {
        b.iter(|| black_box(serde_json::from_str::<(String, Chat)>(black_box(EVENT_DATA)).ok()))
    });
    let typed: (String, Chat) = serde_json::from_str(EVENT_DATA).expect("matches the struct");
    group.bench_function("typed_encode", |b| b.iter(|| black_box(serde_json::to_string(black_box(&typed)).ok())));
    group.bench_function("raw_args_decode", |b| {
        b.iter(|| black_box(serde_json::from_str::<Vec<&RawValue>>(black_box(EVENT_DATA)).map(|v| v.len()).ok()))
    });
    group.finish();
}

criterion_group!(benches, socketio, polling, json);
criterion_main!(benches);
