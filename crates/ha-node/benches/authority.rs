//! Cost of the `:authority` repair filter on the client read path.
//!
//! A client byte stream shaped like etcd gRPC traffic (HTTP/2 preface, then
//! per request a HEADERS block as grpc-go sends it — the first with
//! literals, later ones mostly indexed — and one DATA frame) is read through
//! `AuthorityFix` and, as the baseline, directly, from memory. Memory is the
//! worst case for the ratio: a real socket read costs far more than the copy.
//!
//! `cargo bench -p ha-node --bench authority`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ha_node::api::authority::AuthorityFix;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Requests in one measured stream.
const REQUESTS: usize = 1_000;

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

fn literal(out: &mut Vec<u8>, name_index: u8, name: &[u8], value: &[u8]) {
    // Literal with incremental indexing; plain strings (lengths < 127).
    out.push(0x40 | name_index);
    if name_index == 0 {
        out.push(name.len() as u8);
        out.extend_from_slice(name);
    }
    out.push(value.len() as u8);
    out.extend_from_slice(value);
}

/// The stream: `REQUESTS` puts with `value_bytes` of payload each.
fn stream(authority: &[u8], value_bytes: usize) -> Vec<u8> {
    let mut s = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut s, 0x4, 0, 0, &[]);
    let data = vec![b'v'; value_bytes];
    for i in 0..REQUESTS {
        let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
        if i == 0 {
            literal(&mut block, 4, b"", b"/etcdserverpb.KV/Put");
            literal(&mut block, 1, b"", authority);
            literal(&mut block, 31, b"", b"application/grpc");
            literal(&mut block, 0, b"te", b"trailers");
            literal(&mut block, 58, b"", b"grpc-go/1.26.0");
        } else {
            // The five literals above, by dynamic index (newest first).
            block.extend_from_slice(&[0xc2, 0xc1, 0xc0, 0xbf, 0xbe]);
        }
        let id = 1 + 2 * i as u32;
        frame(&mut s, 0x1, 0x4, id, &block);
        frame(&mut s, 0x0, 0x1, id, &data);
    }
    s
}

async fn drain<R: AsyncRead + Unpin>(mut r: R, buf: &mut [u8]) -> usize {
    let mut total = 0;
    loop {
        let n = r.read(buf).await.expect("read");
        if n == 0 {
            return total;
        }
        total += n;
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("authority_filter");
    for (name, value_bytes) in [("put_100B", 100), ("put_64KiB", 64 * 1024)] {
        let url = stream(b"http://127.0.0.1:2379", value_bytes);
        let bare = stream(b"127.0.0.1:2379", value_bytes);
        let mut buf = vec![0u8; 64 * 1024];
        g.throughput(Throughput::Elements(REQUESTS as u64));
        g.bench_function(format!("{name}/direct"), |b| {
            b.iter(|| rt.block_on(drain(black_box(&bare[..]), &mut buf)))
        });
        g.bench_function(format!("{name}/filtered_bare_authority"), |b| {
            b.iter(|| rt.block_on(drain(AuthorityFix::new(black_box(&bare[..])), &mut buf)))
        });
        g.bench_function(format!("{name}/filtered_url_authority"), |b| {
            b.iter(|| rt.block_on(drain(AuthorityFix::new(black_box(&url[..])), &mut buf)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
