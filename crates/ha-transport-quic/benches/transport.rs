//! QUIC transport vs a TCP + TLS baseline with the same framing, on
//! loopback, in one run:
//!
//! * `oneway/{quic,tcp_tls}/{64,1024,65536}`: node 1 sends a batch of
//!   messages of that size to node 2 and the batch counts when node 2's
//!   consumer has received all of it. Throughput is messages/s; MB/s is
//!   messages/s × size.
//! * `rr/{quic,tcp_tls}/64`: one 64-byte request and its 64-byte response,
//!   sequentially (round trips/s).
//!
//! The baseline is tokio TCP (`TCP_NODELAY`) + tokio-rustls with the same
//! certificates, TLS 1.3, the same frame encoder/decoder, the same bounded
//! send queue (4096) and inbound queue (8192), the same write batching
//! (up to 256 KiB per write). Requests over TCP reuse one connection
//! (no per-request stream), which favours the baseline.
//!
//! After criterion's report, the bench prints each benchmark's CPU time
//! per message (user + system time of the whole process, both endpoints,
//! from `/proc/self/stat`, Linux only). On a shared machine wall-clock
//! throughput follows whatever CPU share the bench gets, while CPU time
//! per message is the cost of the data path itself, so the two transports
//! can be compared under load too.
//!
//! Last, paired rounds (see [`paired`]) give a QUIC / TCP+TLS throughput
//! ratio per size from batches run back to back.
//!
//! Run: `cargo bench -p ha-transport-quic --bench transport`

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ha_core::transport::{Frame, FrameKind};
use ha_core::{GroupId, NodeId};
use ha_transport_quic::frame::{FrameDecoder, WireKind, encode_frame};
use ha_transport_quic::identity::{client_tls_config, node_dns_name, server_tls_config};
use ha_transport_quic::{DevCa, QuicConfig, QuicTransport, Validity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, oneshot};

const SIZES: [usize; 3] = [64, 1024, 64 << 10];
const QUEUE_FRAMES: usize = 4096;
const INBOUND_FRAMES: usize = 8192;
const BATCH_BYTES_MAX: usize = 256 << 10;
const MAX_FRAME_BYTES: usize = 1 << 20;

/// An optional numeric override from the environment (exploration only;
/// the recorded numbers use the crate defaults unless stated).
fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// CPU time (user + system) this process has used so far, from
/// `/proc/self/stat` in clock ticks of 10 ms (Linux's `USER_HZ` of 100);
/// `None` where that file is missing or unreadable.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces), `)` ends it:
    // state is field 3, utime field 14, stime field 15.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// CPU time and messages per benchmark, summed over all its iterations
/// (warm-up included).
#[derive(Default)]
struct CpuMeter {
    runs: std::sync::Mutex<Vec<(String, Duration, u64)>>,
}

impl CpuMeter {
    /// Runs `f` (which moves `msgs` messages) and adds its CPU time to `id`.
    fn measure<T>(&self, id: &str, msgs: u64, f: impl FnOnce() -> T) -> T {
        let before = process_cpu();
        let out = f();
        if let (Some(a), Some(b)) = (before, process_cpu()) {
            let mut runs = self.runs.lock().unwrap();
            match runs.iter_mut().find(|(k, _, _)| k == id) {
                Some((_, cpu, n)) => {
                    *cpu += b.saturating_sub(a);
                    *n += msgs;
                }
                None => runs.push((id.to_string(), b.saturating_sub(a), msgs)),
            }
        }
        out
    }

    /// Prints µs of CPU per message, and QUIC's cost relative to TCP+TLS.
    fn report(&self) {
        let runs = self.runs.lock().unwrap();
        if runs.is_empty() {
            return;
        }
        let per_msg = |id: &str| {
            runs.iter()
                .find(|(k, _, _)| k == id)
                .filter(|(_, cpu, n)| *n > 0 && !cpu.is_zero())
                .map(|(_, cpu, n)| cpu.as_secs_f64() * 1e6 / *n as f64)
        };
        println!("\nCPU time per message (user + system, whole process):");
        for (id, cpu, n) in runs.iter() {
            let us = per_msg(id).unwrap_or(0.0);
            let vs_tcp = if id.contains("/quic/") {
                per_msg(&id.replace("/quic/", "/tcp_tls/"))
                    .zip(per_msg(id))
                    .map(|(t, q)| format!("  (QUIC / TCP+TLS CPU: {:.2}x)", q / t))
                    .unwrap_or_default()
            } else {
                String::new()
            };
            println!(
                "  {id:<24} {us:>9.3} us/msg over {n} msgs ({:.2} s CPU){vs_tcp}",
                cpu.as_secs_f64()
            );
        }
    }
}

/// Messages per measured batch for a payload size (about 1–8 MB a batch).
fn batch_len(size: usize) -> u64 {
    if size >= 64 << 10 { 128 } else { 4096 }
}

/// Counts `n` received frames per request, then answers.
type CountReq = (u64, oneshot::Sender<()>);

/// Must run inside the runtime.
fn spawn_counter<T: Send + 'static>(mut rx: mpsc::Receiver<T>) -> mpsc::Sender<CountReq> {
    let (tx, mut reqs) = mpsc::channel::<CountReq>(1);
    tokio::spawn(async move {
        while let Some((n, done)) = reqs.recv().await {
            for _ in 0..n {
                if rx.recv().await.is_none() {
                    return;
                }
            }
            let _ = done.send(());
        }
    });
    tx
}

struct QuicPair {
    t1: Arc<QuicTransport>,
    t2: Arc<QuicTransport>,
    counter: mpsc::Sender<CountReq>,
}

fn quic_pair(rt: &Runtime, ca: &DevCa) -> QuicPair {
    rt.block_on(async {
        let cfg = |id| {
            let mut c = QuicConfig::new("127.0.0.1:0".parse().unwrap());
            c.max_frame_bytes = MAX_FRAME_BYTES;
            c.peer_queue_frames = QUEUE_FRAMES;
            c.inbound_queue_frames = INBOUND_FRAMES;
            c.write_batch_bytes_max = BATCH_BYTES_MAX;
            if let Some(v) = env_u64("HA_QUIC_BENCH_MAX_UDP_PAYLOAD") {
                c.max_udp_payload_bytes = v as u16;
            }
            let ident = ca.issue(NodeId(id), Validity::days_from_now(1)).unwrap();
            QuicTransport::bind(ident, c).unwrap()
        };
        let b1 = cfg(1);
        let b2 = cfg(2);
        b1.transport
            .add_peer(NodeId(2), b2.transport.local_addr().unwrap())
            .unwrap();
        // Node 2 echoes requests.
        let mut requests = b2.requests;
        tokio::spawn(async move {
            while let Some(r) = requests.recv().await {
                let p = r.payload.clone();
                r.responder.respond(p);
            }
        });
        let t1 = Arc::new(b1.transport);
        let t2 = Arc::new(b2.transport);
        // Warm the connection up.
        t1.request(NodeId(2), GroupId(0), Bytes::from_static(b"hi"), 10_000)
            .await
            .unwrap();
        QuicPair {
            counter: spawn_counter(b2.inbound),
            t1,
            t2,
        }
    })
}

/// The baseline: one TLS-over-TCP connection from node 1 to node 2.
struct TcpPair {
    /// Send queue of the writer task (same bound as QUIC's peer queue).
    tx: mpsc::Sender<(GroupId, Bytes)>,
    counter: mpsc::Sender<CountReq>,
    /// Request/response connection (sequential use).
    rr: tokio::sync::Mutex<tokio_rustls::client::TlsStream<TcpStream>>,
}

async fn tls_connect(ca: &DevCa, addr: SocketAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
    let ident = ca.issue(NodeId(1), Validity::days_from_now(1)).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls_config(&ident).unwrap()));
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = rustls::pki_types::ServerName::try_from(node_dns_name(NodeId(2))).unwrap();
    connector.connect(name, tcp).await.unwrap()
}

fn tcp_pair(rt: &Runtime, ca: &DevCa) -> TcpPair {
    rt.block_on(async {
        let ident = ca.issue(NodeId(2), Validity::days_from_now(1)).unwrap();
        let acceptor =
            tokio_rustls::TlsAcceptor::from(Arc::new(server_tls_config(&ident).unwrap()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (inbound_tx, inbound_rx) = mpsc::channel::<Frame>(INBOUND_FRAMES);
        // Server: first connection is the one-way stream, second serves
        // requests.
        tokio::spawn(async move {
            for conn_no in 0..2 {
                let (tcp, _) = listener.accept().await.unwrap();
                tcp.set_nodelay(true).unwrap();
                let mut tls = acceptor.accept(tcp).await.unwrap();
                let inbound_tx = inbound_tx.clone();
                tokio::spawn(async move {
                    let dec = FrameDecoder::new(MAX_FRAME_BYTES);
                    let mut buf = BytesMut::with_capacity(64 << 10);
                    let mut out = BytesMut::new();
                    loop {
                        buf.reserve(64 << 10);
                        match tls.read_buf(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        while let Some(f) = dec.decode(&mut buf).unwrap() {
                            if conn_no == 0 {
                                let frame = Frame {
                                    group: f.group,
                                    kind: FrameKind::Protocol,
                                    payload: f.payload,
                                };
                                if inbound_tx.send(frame).await.is_err() {
                                    return;
                                }
                            } else {
                                encode_frame(
                                    &mut out,
                                    WireKind::Response,
                                    f.group,
                                    &f.payload,
                                    MAX_FRAME_BYTES,
                                )
                                .unwrap();
                                tls.write_all(&out).await.unwrap();
                                tls.flush().await.unwrap();
                                out.clear();
                            }
                        }
                    }
                });
            }
        });
        let mut oneway = tls_connect(ca, addr).await;
        let rr = tls_connect(ca, addr).await;
        let (tx, mut rx) = mpsc::channel::<(GroupId, Bytes)>(QUEUE_FRAMES);
        // Writer: same batching as the QUIC protocol writer.
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(BATCH_BYTES_MAX);
            while let Some((g, p)) = rx.recv().await {
                encode_frame(&mut buf, WireKind::Protocol, g, &p, MAX_FRAME_BYTES).unwrap();
                let mut n = 1;
                while buf.len() < BATCH_BYTES_MAX && n < 1024 {
                    match rx.try_recv() {
                        Ok((g, p)) => {
                            encode_frame(&mut buf, WireKind::Protocol, g, &p, MAX_FRAME_BYTES)
                                .unwrap();
                            n += 1;
                        }
                        Err(_) => break,
                    }
                }
                if oneway.write_all(&buf).await.is_err() {
                    return;
                }
                let _ = oneway.flush().await;
                buf.clear();
            }
        });
        TcpPair {
            tx,
            counter: spawn_counter(inbound_rx),
            rr: tokio::sync::Mutex::new(rr),
        }
    })
}

async fn tcp_round_trip(
    conn: &mut tokio_rustls::client::TlsStream<TcpStream>,
    payload: &Bytes,
    buf: &mut BytesMut,
) {
    let mut out = BytesMut::new();
    encode_frame(
        &mut out,
        WireKind::Request,
        GroupId(0),
        payload,
        MAX_FRAME_BYTES,
    )
    .unwrap();
    conn.write_all(&out).await.unwrap();
    conn.flush().await.unwrap();
    let dec = FrameDecoder::only(WireKind::Response, MAX_FRAME_BYTES);
    loop {
        if let Some(f) = dec.decode(buf).unwrap() {
            assert_eq!(f.payload.len(), payload.len());
            return;
        }
        buf.reserve(4096);
        assert!(conn.read_buf(buf).await.unwrap() > 0, "server closed");
    }
}

/// Sends `iters` batches of `n` frames over QUIC, each waited for until
/// node 2's consumer has it all; returns the time taken.
async fn quic_batches(quic: &QuicPair, iters: u64, n: u64, payload: &Bytes) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        let (done_tx, done) = oneshot::channel();
        quic.counter.send((n, done_tx)).await.unwrap();
        for i in 0..n {
            let f = Frame {
                group: GroupId(i % 4),
                kind: FrameKind::Protocol,
                payload: payload.clone(),
            };
            quic.t1.send_wait(NodeId(2), f).await.unwrap();
        }
        done.await.unwrap();
    }
    start.elapsed()
}

/// The same as [`quic_batches`] over the TCP + TLS baseline.
async fn tcp_batches(tcp: &TcpPair, iters: u64, n: u64, payload: &Bytes) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        let (done_tx, done) = oneshot::channel();
        tcp.counter.send((n, done_tx)).await.unwrap();
        for i in 0..n {
            tcp.tx
                .send((GroupId(i % 4), payload.clone()))
                .await
                .unwrap();
        }
        done.await.unwrap();
    }
    start.elapsed()
}

/// Paired one-way rounds, printed after criterion's report: each round
/// sends one batch over QUIC and one over TCP + TLS back to back (which
/// goes first alternates), so both see the same machine load, and the
/// ratio of the summed times is QUIC's throughput relative to the
/// baseline. On a shared machine this is far steadier than the ratio of
/// two criterion estimates taken seconds apart. Rounds per size:
/// `HA_QUIC_BENCH_PAIRED_ROUNDS` (default 100; 0 skips).
fn paired(rt: &Runtime, quic: &QuicPair, tcp: &TcpPair) {
    let rounds = env_u64("HA_QUIC_BENCH_PAIRED_ROUNDS").unwrap_or(100);
    if rounds == 0 {
        return;
    }
    println!(
        "\nPaired rounds ({rounds} per size; one QUIC and one TCP+TLS batch back to back per round):"
    );
    for size in SIZES {
        let n = batch_len(size);
        let payload = Bytes::from(vec![0xab; size]);
        let (mut q_total, mut t_total) = (Duration::ZERO, Duration::ZERO);
        let mut ratios = Vec::with_capacity(rounds as usize);
        for r in 0..rounds {
            let (q, t) = rt.block_on(async {
                if r % 2 == 0 {
                    let q = quic_batches(quic, 1, n, &payload).await;
                    (q, tcp_batches(tcp, 1, n, &payload).await)
                } else {
                    let t = tcp_batches(tcp, 1, n, &payload).await;
                    (quic_batches(quic, 1, n, &payload).await, t)
                }
            });
            q_total += q;
            t_total += t;
            // Same message count: QUIC msgs/s ÷ TCP msgs/s = t / q.
            ratios.push(t.as_secs_f64() / q.as_secs_f64().max(1e-9));
        }
        ratios.sort_by(f64::total_cmp);
        let msgs = (n * rounds) as f64;
        println!(
            "  oneway/{size:<6} QUIC {:>10.0} msgs/s  TCP+TLS {:>10.0} msgs/s  QUIC/TCP {:.2}x  (per round: median {:.2}x, {:.2}x..{:.2}x)",
            msgs / q_total.as_secs_f64(),
            msgs / t_total.as_secs_f64(),
            t_total.as_secs_f64() / q_total.as_secs_f64(),
            ratios[ratios.len() / 2],
            ratios[0],
            ratios[ratios.len() - 1],
        );
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ca = DevCa::generate("bench", Validity::days_from_now(1)).unwrap();
    let quic = quic_pair(&rt, &ca);
    let tcp = tcp_pair(&rt, &ca);
    let cpu = CpuMeter::default();

    let mut g = c.benchmark_group("oneway");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for size in SIZES {
        let n = batch_len(size);
        let payload = Bytes::from(vec![0xab; size]);
        g.throughput(Throughput::Elements(n));
        g.bench_with_input(BenchmarkId::new("quic", size), &size, |b, _| {
            b.iter_custom(|iters| {
                cpu.measure(&format!("oneway/quic/{size}"), iters * n, || {
                    rt.block_on(quic_batches(&quic, iters, n, &payload))
                })
            })
        });
        g.bench_with_input(BenchmarkId::new("tcp_tls", size), &size, |b, _| {
            b.iter_custom(|iters| {
                cpu.measure(&format!("oneway/tcp_tls/{size}"), iters * n, || {
                    rt.block_on(tcp_batches(&tcp, iters, n, &payload))
                })
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("rr");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    let payload = Bytes::from(vec![0xcd; 64]);
    g.bench_function(BenchmarkId::new("quic", 64), |b| {
        b.iter_custom(|iters| {
            cpu.measure("rr/quic/64", iters, || {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let r = quic
                            .t1
                            .request(NodeId(2), GroupId(0), payload.clone(), 10_000)
                            .await
                            .unwrap();
                        assert_eq!(r.len(), 64);
                    }
                    start.elapsed()
                })
            })
        })
    });
    g.bench_function(BenchmarkId::new("tcp_tls", 64), |b| {
        b.iter_custom(|iters| {
            cpu.measure("rr/tcp_tls/64", iters, || {
                rt.block_on(async {
                    let mut conn = tcp.rr.lock().await;
                    let mut buf = BytesMut::new();
                    let start = Instant::now();
                    for _ in 0..iters {
                        tcp_round_trip(&mut conn, &payload, &mut buf).await;
                    }
                    start.elapsed()
                })
            })
        })
    });
    g.finish();

    cpu.report();
    paired(&rt, &quic, &tcp);
    let s1 = quic.t1.stats();
    let s2 = quic.t2.stats();
    assert_eq!(s1.dropped_queue_full + s1.dropped_disconnected, 0);
    assert_eq!(s2.frame_errors, 0);
    rt.block_on(async {
        quic.t1.shutdown(1_000).await;
        quic.t2.shutdown(1_000).await;
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
