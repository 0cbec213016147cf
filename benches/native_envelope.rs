//! Cost of the native protocol's envelope codec on what a chat session exchanges: decoding a
//! client `chat` and an application message, and encoding the `ack` and the delivered `chat`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use imks::chat::envelope::{decode, encode, encode_ack, AckStatus};

const CHAT: &str = r#"{"type":"chat","id":"17","data":{"msgId":"c-8f3a","toUserId":"bob","content":"hello world","contentType":"text/plain"}}"#;
const CUSTOM: &str = r#"{"type":"app:cursor","data":{"x":120,"y":48,"doc":"d-1"}}"#;

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Delivered<'a> {
    msg_id: &'a str,
    from_user_id: &'a str,
    to_user_id: &'a str,
    content: &'a str,
    content_type: &'a str,
    created_at: i64,
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("native_envelope");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode_chat", |b| b.iter(|| decode(black_box(CHAT)).is_ok()));
    g.bench_function("decode_custom", |b| b.iter(|| decode(black_box(CUSTOM)).is_ok()));
    g.bench_function("encode_ack", |b| {
        b.iter(|| {
            encode_ack(
                Some("17"),
                black_box("0192f3c5-6a1e-7c3b-9d2f-5b7e8a9c0d1e"),
                Some("c-8f3a"),
                AckStatus::Sent,
                1,
            )
        })
    });
    g.bench_function("encode_chat", |b| {
        let d = Delivered {
            msg_id: "0192f3c5-6a1e-7c3b-9d2f-5b7e8a9c0d1e",
            from_user_id: "alice",
            to_user_id: "bob",
            content: "hello world",
            content_type: "text/plain",
            created_at: 1_764_361_234_567,
        };
        b.iter(|| encode("chat", None, black_box(&d)))
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
