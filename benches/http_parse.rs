//! Request-head parsing cost: a typical browser GET, and a WebSocket upgrade including the
//! handshake check (which hashes the key). Both run once per request on the shard thread, so
//! they bound how many requests a core can answer.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use imks::http::parse::{parse_head, Limits, Parsed};
use imks::ws::handshake::validate_upgrade;

const LIMITS: Limits = Limits { max_head_bytes: 8192, max_headers: 64, max_body_bytes: 1 << 20 };

const BROWSER_GET: &[u8] = b"GET /health?verbose=1&shard=3 HTTP/1.1\r\n\
Host: chat.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n\
Accept-Language: en-US,en;q=0.5\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Connection: keep-alive\r\n\
Cookie: session=4f2a9c1e7b3d4a5f8e6c; theme=dark\r\n\
Upgrade-Insecure-Requests: 1\r\n\
Cache-Control: max-age=0\r\n\
Referer: https://chat.example.com/\r\n\
\r\n";

const WS_UPGRADE: &[u8] = b"GET /ws-echo HTTP/1.1\r\n\
Host: chat.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
Origin: https://chat.example.com\r\n\
Connection: keep-alive, Upgrade\r\n\
Upgrade: websocket\r\n\
Sec-WebSocket-Version: 13\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n";

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("http_parse");

    g.throughput(Throughput::Bytes(BROWSER_GET.len() as u64));
    g.bench_function("browser_get", |b| {
        b.iter(|| match parse_head(black_box(BROWSER_GET), &LIMITS) {
            Ok(Parsed::Complete(head)) => head,
            _ => unreachable!("the benchmark request is valid"),
        })
    });

    g.throughput(Throughput::Bytes(WS_UPGRADE.len() as u64));
    g.bench_function("ws_upgrade_and_validate", |b| {
        b.iter(|| match parse_head(black_box(WS_UPGRADE), &LIMITS) {
            Ok(Parsed::Complete(head)) => validate_upgrade(&head),
            _ => unreachable!("the benchmark request is valid"),
        })
    });

    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
