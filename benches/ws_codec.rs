//! Throughput of the WebSocket codec: decoding client frames (small text batches and one large
//! binary frame) and encoding server frames, the two halves of every echoed message.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use imks::ws::codec::{encode_frame, CodecLimits, Opcode, WsCodec};
use tungstenite::Message;

/// A masked client frame with FIN set, built by hand as a browser would send it.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let len = payload.len();
    let mut out = Vec::with_capacity(len + 14);
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

fn limits() -> CodecLimits {
    CodecLimits { max_message_bytes: 1 << 20, max_frame_bytes: 1 << 20 }
}

/// Feeds `input` and decodes every message in it, as the session driver does per socket read.
fn decode_all(codec: &mut WsCodec, input: &[u8]) -> usize {
    codec.feed(input);
    let mut n = 0;
    while let Ok(Some(msg)) = codec.next_message() {
        if matches!(msg, Message::Text(_) | Message::Binary(_)) {
            n += 1;
        }
        black_box(msg);
    }
    n
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("ws_decode");

    let text = "x".repeat(64);
    let batch: Vec<u8> = (0..100).flat_map(|_| client_frame(0x1, text.as_bytes())).collect();
    group.throughput(Throughput::Bytes(batch.len() as u64));
    group.bench_function("text_64B_x100", |b| {
        let mut codec = WsCodec::new(limits());
        b.iter(|| {
            let n = decode_all(&mut codec, black_box(&batch));
            assert_eq!(n, 100);
        })
    });

    let big = client_frame(0x2, &vec![0xA5; 64 * 1024]);
    group.throughput(Throughput::Bytes(big.len() as u64));
    group.bench_function("binary_64KiB", |b| {
        let mut codec = WsCodec::new(limits());
        b.iter(|| {
            let n = decode_all(&mut codec, black_box(&big));
            assert_eq!(n, 1);
        })
    });

    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("ws_encode");
    for size in [64usize, 4096] {
        let payload = vec![b'y'; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(format!("text_{size}B"), |b| b.iter(|| encode_frame(Opcode::Text, black_box(&payload))));
    }
    group.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
