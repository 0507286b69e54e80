//! The UDP socket under the QUIC endpoint: quinn's own Tokio socket, with
//! segmentation-offload batches kept within what the kernel accepts.
//!
//! quinn hands the socket up to 10 datagrams per send as one GSO batch,
//! whatever their size. The kernel refuses a batch above 64 KiB of UDP
//! payload (`EMSGSIZE`, which quinn-udp swallows, so every datagram of it
//! is lost). [`SplitGso`] sends a batch that large as several sends of whole
//! datagrams, each within the limit. That lets path-MTU discovery go above
//! 6,548 bytes (10 × 6,548 is the largest batch that always fits) with GSO
//! still on: fewer, larger packets mean fewer encryptions, headers,
//! acknowledgements and per-packet bookkeeping per byte, which is most of
//! what QUIC costs beyond the copies themselves.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// Most UDP payload bytes one GSO send may carry: 65,535 (the IP length
/// field) minus the IPv6 and UDP headers. IPv4 allows 20 bytes more; one
/// bound for both keeps it simple.
pub(crate) const GSO_SEND_BYTES_MAX: usize = 65_535 - 40 - 8;

/// A UDP socket that splits GSO batches above [`GSO_SEND_BYTES_MAX`] into
/// several sends (see the module docs). Everything else goes straight to
/// the wrapped socket.
pub(crate) struct SplitGso {
    inner: Arc<dyn AsyncUdpSocket>,
}

impl SplitGso {
    pub(crate) fn new(inner: Arc<dyn AsyncUdpSocket>) -> Self {
        Self { inner }
    }
}

impl fmt::Debug for SplitGso {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SplitGso")
            .field("inner", &self.inner)
            .finish()
    }
}

/// Whether `t` is a GSO batch too large for one send.
fn needs_split(t: &Transmit<'_>) -> bool {
    t.segment_size.is_some_and(|seg| seg > 0) && t.contents.len() > GSO_SEND_BYTES_MAX
}

/// The sends of a batch that [`needs_split`]: runs of whole datagrams of at
/// most [`GSO_SEND_BYTES_MAX`] bytes each (one datagram per send if a
/// single one is larger), in order.
fn parts<'a>(t: &'a Transmit<'a>) -> impl Iterator<Item = Transmit<'a>> + 'a {
    let seg = t.segment_size.unwrap_or(t.contents.len()).max(1);
    let per_send = (GSO_SEND_BYTES_MAX / seg).max(1) * seg;
    t.contents.chunks(per_send).map(move |part| Transmit {
        destination: t.destination,
        ecn: t.ecn,
        contents: part,
        segment_size: t.segment_size.filter(|&seg| part.len() > seg),
        src_ip: t.src_ip,
    })
}

impl AsyncUdpSocket for SplitGso {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Arc::clone(&self.inner).create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        if !needs_split(transmit) {
            return self.inner.try_send(transmit);
        }
        for (i, part) in parts(transmit).enumerate() {
            match self.inner.try_send(&part) {
                Ok(()) => {}
                // Nothing sent yet: quinn waits for the socket and retries.
                Err(e) if i == 0 => return Err(e),
                // Part of the batch is out. The rest counts as lost, like
                // any UDP datagram, and QUIC's loss recovery resends it
                // (retrying the whole batch would duplicate the sent part).
                Err(_) => return Ok(()),
            }
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transmit(contents: &[u8], segment_size: Option<usize>) -> Transmit<'_> {
        Transmit {
            destination: "127.0.0.1:9".parse().unwrap(),
            ecn: None,
            contents,
            segment_size,
            src_ip: None,
        }
    }

    #[test]
    fn large_batches_split_on_datagram_boundaries_within_the_limit() {
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        for (len, seg) in [
            (10 * 16_000, 16_000),
            (10 * 6_549, 6_549),
            (9 * 8_952 + 100, 8_952),
            (3 * 65_000, 65_000),
            (65_487 + 1, 1_200),
        ] {
            let t = transmit(&data[..len], Some(seg));
            assert!(needs_split(&t), "{len}/{seg}");
            let ps: Vec<_> = parts(&t).collect();
            let mut joined = Vec::new();
            for p in &ps {
                assert!(
                    p.contents.len() <= GSO_SEND_BYTES_MAX.max(seg),
                    "{len}/{seg}"
                );
                // Whole datagrams: every part but the last is a multiple of
                // the segment size, and a part of one datagram is no batch.
                if p.contents.len() > seg {
                    assert_eq!(p.segment_size, Some(seg));
                } else {
                    assert_eq!(p.segment_size, None);
                }
                joined.extend_from_slice(p.contents);
            }
            for p in &ps[..ps.len() - 1] {
                assert_eq!(p.contents.len() % seg, 0, "{len}/{seg}");
            }
            assert_eq!(joined, &data[..len]);
            assert!(ps.len() > 1, "{len}/{seg} should be split");
        }
        // Within the limit, or not a batch: sent as it is.
        for (len, seg) in [
            (10 * 6_548, Some(6_548)),
            (65_000, None),
            (1_200, Some(1_200)),
        ] {
            assert!(!needs_split(&transmit(&data[..len], seg)), "{len}/{seg:?}");
        }
    }
}
