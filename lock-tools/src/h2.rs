//! A rewriter for `lock_testkit::proxy` ([`first_keep_alive_ttl_zero`], under
//! `Fault::Rewrite`): it reads the HTTP/2 frames of one etcd client connection (plain
//! `http://`, gRPC) in both directions, to answer the first keep-alive of each lease with TTL
//! 0: what etcd before 3.5.3 could answer for a lease granted moments ago (etcd issue 13675),
//! while the lease was alive.
//! Everything else passes unchanged, byte for byte; only a TTL's varint is overwritten, in
//! place and at the same length, so no framing changes.
//!
//! A keep-alive stream is recognised by its requests: gRPC messages whose only field is field 1
//! holding a lease id (a varint ≥ 2³²: etcd's ids carry the member's id in their high bits, so a
//! TTL in a grant request never looks like one). Its answers have fields 1 (header), 2 (the
//! lease id) and 3 (the TTL), and no other.

use std::collections::HashSet;
use std::sync::Arc;

use lock_testkit::proxy::{Rewrite, Rewriter};

/// The rewriter that answers the first keep-alive of each lease with TTL 0: set it with
/// `FaultProxy::set_rewriter`, then `proxy.set(Fault::Rewrite)`.
pub fn first_keep_alive_ttl_zero() -> Rewriter {
    Arc::new(|| Box::new(Connection::default()))
}

/// The client's connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What both directions of one connection know.
#[derive(Default)]
struct Connection {
    /// Streams that carry keep-alive requests.
    keep_alive_streams: HashSet<u32>,
    /// Leases whose first keep-alive was answered already (with TTL 0).
    answered: HashSet<i64>,
    up: Direction,
    down: Direction,
}

/// The frame reader of one direction: bytes not yet forwarded (an incomplete frame).
#[derive(Default)]
struct Direction {
    pending: Vec<u8>,
    preface_seen: bool,
    /// Streams whose DATA no longer starts at a gRPC message boundary: not inspected.
    lost: HashSet<u32>,
}

impl Rewrite for Connection {
    fn pass(&mut self, upstream: bool, bytes: &[u8]) -> Vec<u8> {
        self.frames(upstream, bytes)
    }
}

impl Connection {
    /// Bytes read from the client (`upstream`) or from the server: returns what to forward now
    /// (whole frames; an incomplete one waits for the rest).
    fn frames(&mut self, upstream: bool, bytes: &[u8]) -> Vec<u8> {
        let dir = if upstream {
            &mut self.up
        } else {
            &mut self.down
        };
        dir.pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        if upstream && !dir.preface_seen {
            if dir.pending.len() < PREFACE.len() {
                return out;
            }
            out.extend(dir.pending.drain(..PREFACE.len()));
            dir.preface_seen = true;
        }
        loop {
            let dir = if upstream {
                &mut self.up
            } else {
                &mut self.down
            };
            if dir.pending.len() < 9 {
                return out;
            }
            let len = usize::from(dir.pending[0]) << 16
                | usize::from(dir.pending[1]) << 8
                | usize::from(dir.pending[2]);
            if dir.pending.len() < 9 + len {
                return out;
            }
            let mut frame: Vec<u8> = dir.pending.drain(..9 + len).collect();
            let (kind, flags) = (frame[3], frame[4]);
            let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
            if kind == 0 {
                self.data(upstream, stream, flags, &mut frame[9..]);
            }
            out.extend(frame);
        }
    }

    /// A DATA frame's payload (padding included).
    fn data(&mut self, upstream: bool, stream: u32, flags: u8, payload: &mut [u8]) {
        let payload = if flags & 0x8 != 0 {
            let Some((&mut pad, rest)) = payload.split_first_mut() else {
                return;
            };
            let end = rest.len().saturating_sub(usize::from(pad));
            &mut rest[..end]
        } else {
            payload
        };
        let dir = if upstream { &self.up } else { &self.down };
        if dir.lost.contains(&stream) {
            return;
        }
        let mut at = 0;
        while at < payload.len() {
            // gRPC: compressed flag, 4-byte length, message.
            if payload.len() < at + 5 || payload[at] != 0 {
                break;
            }
            let len = u32::from_be_bytes([
                payload[at + 1],
                payload[at + 2],
                payload[at + 3],
                payload[at + 4],
            ]) as usize;
            let Some(message) = payload.get_mut(at + 5..at + 5 + len) else {
                break;
            };
            if upstream {
                if is_keep_alive_request(message) {
                    self.keep_alive_streams.insert(stream);
                }
            } else if self.keep_alive_streams.contains(&stream) {
                self.zero_first_ttl(message);
            }
            at += 5 + len;
        }
        if at != payload.len() {
            // A message split across frames: the stream's later frames are not inspected.
            let dir = if upstream {
                &mut self.up
            } else {
                &mut self.down
            };
            dir.lost.insert(stream);
        }
    }

    /// In a keep-alive answer for a lease not answered before, overwrites the TTL with 0.
    fn zero_first_ttl(&mut self, message: &mut [u8]) {
        let Some(fields) = fields(message) else {
            return;
        };
        let (mut id, mut ttl) = (None, None);
        for (number, value, span) in fields {
            match number {
                1 => {}
                2 => id = value,
                3 => ttl = value.map(|v| (v, span)),
                _ => return, // not a keep-alive answer
            }
        }
        let (Some(id), Some((ttl, (start, end)))) = (id, ttl) else {
            return;
        };
        if ttl == 0 || !self.answered.insert(id as i64) {
            return;
        }
        // A varint of the same length whose value is 0: 0x80 … 0x80 0x00.
        for byte in &mut message[start..end - 1] {
            *byte = 0x80;
        }
        message[end - 1] = 0;
    }
}

/// Whether a request message is `{1: lease id}` and nothing else.
fn is_keep_alive_request(message: &[u8]) -> bool {
    matches!(fields(message).as_deref(), Some([(1, Some(id), _)]) if *id >= 1 << 32)
}

/// The fields of a protobuf message: number, value (varints only), and the span of a varint
/// value. `None` if it does not parse.
#[allow(clippy::type_complexity)]
fn fields(message: &[u8]) -> Option<Vec<(u64, Option<u64>, (usize, usize))>> {
    let mut at = 0;
    let mut out = Vec::new();
    while at < message.len() {
        let (tag, next) = varint(message, at)?;
        at = next;
        match tag & 7 {
            0 => {
                let (value, next) = varint(message, at)?;
                out.push((tag >> 3, Some(value), (at, next)));
                at = next;
            }
            2 => {
                let (len, next) = varint(message, at)?;
                at = next.checked_add(usize::try_from(len).ok()?)?;
                if at > message.len() {
                    return None;
                }
                out.push((tag >> 3, None, (next, at)));
            }
            _ => return None,
        }
    }
    Some(out)
}

/// A varint at `at`: its value and where it ends.
fn varint(bytes: &[u8], mut at: usize) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(at)?;
        at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some((value, at));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grpc(message: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend((message.len() as u32).to_be_bytes());
        out.extend(message);
        out
    }

    fn data_frame(stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, 0, 0];
        out.extend(stream.to_be_bytes());
        out.extend(payload);
        out
    }

    fn encode(mut v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    }

    #[test]
    fn the_first_keep_alive_of_a_lease_is_answered_with_ttl_0_and_only_that_one() {
        let lease = 0x753d_a22c_bc8a_5fd5u64;
        let mut conn = Connection::default();
        let mut up = PREFACE.to_vec();
        up.extend(data_frame(
            3,
            &grpc(&[[0x08].as_slice(), &encode(lease)].concat()),
        ));
        // Split across reads: nothing is lost or reordered.
        let mut forwarded = conn.pass(true, &up[..10]);
        forwarded.extend(conn.pass(true, &up[10..]));
        assert_eq!(forwarded, up);
        let answer = [
            [0x0a, 0x02, 0x08, 0x01].as_slice(),
            &[0x10],
            &encode(lease),
            &[0x18, 0x03],
        ]
        .concat();
        let down = data_frame(3, &grpc(&answer));
        let first = conn.pass(false, &down);
        assert_eq!(first.len(), down.len());
        assert_eq!(first[first.len() - 1], 0, "TTL 0");
        assert_eq!(conn.pass(false, &down), down, "the second answer passes");
        // A grant answer (no keep-alive stream) passes.
        let mut other = Connection::default();
        other.pass(true, PREFACE);
        assert_eq!(
            other.pass(false, &data_frame(1, &grpc(&answer))),
            data_frame(1, &grpc(&answer))
        );
    }
}
