//! Length-prefixed postcard frames: the byte format of every message on a fleet link.
//!
//! Wire format of one frame:
//!
//! ```text
//! +----------------------+--------------------------------------------------+
//! | N: u32, big-endian   | N bytes: postcard(Frame { version: u16, body })  |
//! +----------------------+--------------------------------------------------+
//! ```
//!
//! Every frame carries the protocol version it was encoded with, so a decoder can refuse a
//! version it does not speak before it tries to interpret the body. `N` is at most
//! [`MAX_FRAME_LEN`]; a larger declared length is refused as soon as the 4-byte prefix is seen,
//! before any buffer for it is allocated.
//!
//! This module is synchronous and transport-agnostic: [`encode`]/[`decode`] work on byte
//! slices (for callers that keep their own receive buffer), [`read_frame`]/[`write_frame`] on
//! [`std::io::Read`]/[`std::io::Write`], and [`parse_len`]/[`decode_body`] serve callers that
//! read the prefix and then exactly `N` bytes themselves (QUIC streams under tokio).

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::ErrorCode;
use crate::version::{self, ProtocolVersion};

/// Size of the big-endian length prefix in bytes.
pub const LEN_PREFIX: usize = 4;

/// Largest payload (the bytes after the prefix) a frame may carry: 16 MiB.
///
/// Big enough for a whole rack's desired-state snapshot; small enough that a corrupt or
/// hostile length cannot make a peer reserve gigabytes.
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// One decoded frame: the protocol version the sender used and the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame<T> {
    /// Protocol version the body was encoded with; always within [`version::SUPPORTED`] for a
    /// frame returned by a decoder of this module.
    pub version: ProtocolVersion,
    /// The message itself.
    pub body: T,
}

/// Borrowing twin of [`Frame`] for encoding; postcard encodes both identically.
#[derive(Serialize)]
struct FrameRef<'a, T: ?Sized> {
    version: ProtocolVersion,
    body: &'a T,
}

/// Why a frame could not be encoded, read or decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The payload is (or declares itself) larger than [`MAX_FRAME_LEN`].
    #[error("frame payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Payload length declared by the prefix or produced by the encoder.
        len: usize,
        /// The limit, [`MAX_FRAME_LEN`].
        max: usize,
    },
    /// The frame was encoded with a protocol version this build does not speak.
    #[error(
        "frame has protocol version {0}, this build speaks {min}..={max}",
        min = version::MIN_SUPPORTED,
        max = version::CURRENT
    )]
    UnsupportedVersion(ProtocolVersion),
    /// The payload is not a valid postcard encoding of the expected type (or the body could
    /// not be encoded).
    #[error("malformed frame payload")]
    Malformed(#[source] postcard::Error),
    /// The body decoded but left bytes unused inside the declared length: the peer encoded
    /// a different type or the stream is out of step.
    #[error("frame payload has {extra} unused bytes after the body")]
    TrailingBytes {
        /// Number of bytes left over.
        extra: usize,
    },
    /// Reading or writing the underlying stream failed.
    #[error("frame I/O failed")]
    Io(#[source] io::Error),
    /// The stream ended before a complete frame arrived. [`read_frame`] also returns this when
    /// the peer closes cleanly between frames; a reader loop treats it as the peer hanging up.
    #[error("stream ended before a complete frame")]
    UnexpectedEof,
}

impl FrameError {
    /// The stable error code to report for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::TooLarge { .. } => ErrorCode::PayloadTooLarge,
            FrameError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            FrameError::Malformed(_) | FrameError::TrailingBytes { .. } => ErrorCode::BadRequest,
            FrameError::Io(_) | FrameError::UnexpectedEof => ErrorCode::Unavailable,
        }
    }
}

impl From<io::Error> for FrameError {
    /// Maps [`io::ErrorKind::UnexpectedEof`] (what `read_exact` reports on a short read) to
    /// [`FrameError::UnexpectedEof`] and every other error to [`FrameError::Io`].
    fn from(err: io::Error) -> Self {
        if err.kind() == io::ErrorKind::UnexpectedEof {
            FrameError::UnexpectedEof
        } else {
            FrameError::Io(err)
        }
    }
}

impl From<postcard::Error> for FrameError {
    fn from(err: postcard::Error) -> Self {
        FrameError::Malformed(err)
    }
}

/// Encodes `body` as one complete frame (prefix and payload) tagged with `version`.
///
/// `version` is not checked against [`version::SUPPORTED`]: the caller passes the version it
/// negotiated, and tests may deliberately forge frames of other versions. Decoders check it.
pub fn encode<T: Serialize + ?Sized>(
    version: ProtocolVersion,
    body: &T,
) -> Result<Vec<u8>, FrameError> {
    let mut out = postcard::to_extend(&FrameRef { version, body }, vec![0u8; LEN_PREFIX])?;
    let len = out.len() - LEN_PREFIX;
    let declared = u32::try_from(len)
        .ok()
        .filter(|_| len <= MAX_FRAME_LEN)
        .ok_or(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        })?;
    out[..LEN_PREFIX].copy_from_slice(&declared.to_be_bytes());
    Ok(out)
}

/// Decodes the first frame in `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of a frame (read more and call again),
/// `Ok(Some((frame, consumed)))` when a whole frame was decoded from the first `consumed`
/// bytes. A declared length over [`MAX_FRAME_LEN`] is an error as soon as the prefix is
/// present, so a receive loop can drop the link without waiting for the bytes.
pub fn decode<T: DeserializeOwned>(buf: &[u8]) -> Result<Option<(Frame<T>, usize)>, FrameError> {
    let Some((prefix, rest)) = buf.split_first_chunk::<LEN_PREFIX>() else {
        return Ok(None);
    };
    let len = parse_len(*prefix)?;
    let Some(payload) = rest.get(..len) else {
        return Ok(None);
    };
    let frame = decode_body(payload)?;
    Ok(Some((frame, LEN_PREFIX + len)))
}

/// Parses a 4-byte big-endian length prefix, refusing lengths over [`MAX_FRAME_LEN`].
pub fn parse_len(prefix: [u8; LEN_PREFIX]) -> Result<usize, FrameError> {
    // A u32 always fits in usize on the platforms we build for; saturate rather than panic.
    let len = usize::try_from(u32::from_be_bytes(prefix)).unwrap_or(usize::MAX);
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    Ok(len)
}

/// Decodes a frame payload: exactly the `N` bytes after the prefix, nothing more.
///
/// The version is decoded and checked first, so a frame from a newer peer is reported as
/// [`FrameError::UnsupportedVersion`] rather than as a confusing body error.
pub fn decode_body<T: DeserializeOwned>(payload: &[u8]) -> Result<Frame<T>, FrameError> {
    let (version, rest) = postcard::take_from_bytes::<ProtocolVersion>(payload)?;
    if !version::SUPPORTED.contains(&version) {
        return Err(FrameError::UnsupportedVersion(version));
    }
    let (body, rest) = postcard::take_from_bytes::<T>(rest)?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes { extra: rest.len() });
    }
    Ok(Frame { version, body })
}

/// Reads exactly one frame from `r`, blocking until it is complete.
///
/// Memory grows with the bytes actually received, not with the declared length, so a peer
/// that announces 16 MiB and sends nothing costs nothing. Returns
/// [`FrameError::UnexpectedEof`] if the stream ends before the frame does.
pub fn read_frame<T: DeserializeOwned, R: Read + ?Sized>(
    r: &mut R,
) -> Result<Frame<T>, FrameError> {
    /// Initial buffer reservation; larger frames grow the buffer as bytes arrive.
    const INITIAL_CAPACITY: usize = 64 * 1024;

    let mut prefix = [0u8; LEN_PREFIX];
    r.read_exact(&mut prefix)?;
    let len = parse_len(prefix)?;
    let mut payload = Vec::with_capacity(len.min(INITIAL_CAPACITY));
    // `len` fits in u64 because it is at most MAX_FRAME_LEN.
    let limit = u64::try_from(len).unwrap_or(u64::MAX);
    r.take(limit).read_to_end(&mut payload)?;
    if payload.len() < len {
        return Err(FrameError::UnexpectedEof);
    }
    decode_body(&payload)
}

/// Encodes `body` with `version` and writes the whole frame to `w`.
///
/// Does not flush: wrap `w` in a [`std::io::BufWriter`] to batch frames and flush when done.
pub fn write_frame<T: Serialize + ?Sized, W: Write + ?Sized>(
    w: &mut W,
    version: ProtocolVersion,
    body: &T,
) -> Result<(), FrameError> {
    let bytes = encode(version, body)?;
    w.write_all(&bytes).map_err(FrameError::Io)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::version::CURRENT;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Hello {
        rack: String,
        seq: u64,
        ports: Vec<u16>,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Msg {
        Ping,
        Ack(u64),
        Hello(Hello),
        Power { node: u32, on: bool },
    }

    fn hello() -> Hello {
        Hello {
            rack: "dc1-r07".to_owned(),
            seq: 300,
            ports: vec![1, 2, 48],
        }
    }

    /// Builds a frame by hand, bypassing `encode`, so tests can forge any payload.
    fn raw_frame(payload: &[u8]) -> Vec<u8> {
        let mut out = u32::try_from(payload.len()).unwrap().to_be_bytes().to_vec();
        out.extend_from_slice(payload);
        out
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn bytes(&mut self, max_len: usize) -> Vec<u8> {
            let len = usize::try_from(self.next()).unwrap() % (max_len + 1);
            (0..len).map(|_| self.next().to_le_bytes()[0]).collect()
        }
    }

    #[test]
    fn round_trip_struct() {
        let bytes = encode(CURRENT, &hello()).unwrap();
        assert_eq!(
            parse_len(bytes[..4].try_into().unwrap()).unwrap(),
            bytes.len() - 4
        );
        let (frame, used) = decode::<Hello>(&bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(
            frame,
            Frame {
                version: CURRENT,
                body: hello()
            }
        );
    }

    #[test]
    fn round_trip_enum() {
        for msg in [
            Msg::Ping,
            Msg::Ack(u64::MAX),
            Msg::Hello(hello()),
            Msg::Power { node: 7, on: true },
        ] {
            let bytes = encode(CURRENT, &msg).unwrap();
            let (frame, used) = decode::<Msg>(&bytes).unwrap().unwrap();
            assert_eq!(used, bytes.len());
            assert_eq!(frame.version, CURRENT);
            assert_eq!(frame.body, msg);
        }
    }

    #[test]
    fn frame_layout_is_prefix_version_body() {
        // Pin the wire format: prefix 2, version varint 1, then the body (u8 = 9).
        assert_eq!(encode(1, &9u8).unwrap(), [0, 0, 0, 2, 1, 9]);
        // Frame<T> and the borrowed encoder agree byte for byte.
        let owned = Frame {
            version: CURRENT,
            body: hello(),
        };
        let bytes = encode(CURRENT, &hello()).unwrap();
        assert_eq!(postcard::to_stdvec(&owned).unwrap(), bytes[4..]);
    }

    #[test]
    fn incomplete_buffer_needs_more() {
        let bytes = encode(CURRENT, &Msg::Hello(hello())).unwrap();
        for cut in 0..bytes.len() {
            assert!(
                decode::<Msg>(&bytes[..cut]).unwrap().is_none(),
                "prefix of {cut} bytes"
            );
        }
        assert!(decode::<Msg>(&bytes).unwrap().is_some());
    }

    #[test]
    fn oversize_declared_length_rejected_early() {
        let declared = u32::try_from(MAX_FRAME_LEN + 1).unwrap().to_be_bytes();
        // Only the prefix is present: refused without waiting for (or allocating) the body.
        match decode::<Msg>(&declared) {
            Err(FrameError::TooLarge { len, max }) => {
                assert_eq!(len, MAX_FRAME_LEN + 1);
                assert_eq!(max, MAX_FRAME_LEN);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(matches!(
            parse_len([0xff; 4]),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(
            parse_len(u32::try_from(MAX_FRAME_LEN).unwrap().to_be_bytes()).unwrap(),
            MAX_FRAME_LEN
        );
        // A reader that would panic if asked for anything past the prefix.
        let mut r = io::Cursor::new(declared.to_vec()).chain(PanicReader);
        assert!(matches!(
            read_frame::<Msg, _>(&mut r),
            Err(FrameError::TooLarge { .. })
        ));
    }

    struct PanicReader;

    impl Read for PanicReader {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            panic!("read past the length prefix");
        }
    }

    #[test]
    fn oversize_body_rejected_on_encode() {
        let big = vec![0u8; MAX_FRAME_LEN];
        assert!(matches!(
            encode(CURRENT, &big),
            Err(FrameError::TooLarge {
                max: MAX_FRAME_LEN,
                ..
            })
        ));
    }

    #[test]
    fn unsupported_versions_rejected() {
        for v in [0, CURRENT + 1, u16::MAX] {
            let bytes = encode(v, &Msg::Ping).unwrap();
            match decode::<Msg>(&bytes) {
                Err(FrameError::UnsupportedVersion(got)) => assert_eq!(got, v),
                other => panic!("version {v}: expected UnsupportedVersion, got {other:?}"),
            }
            let err = read_frame::<Msg, _>(&mut bytes.as_slice()).unwrap_err();
            assert!(matches!(err, FrameError::UnsupportedVersion(got) if got == v));
            assert_eq!(err.code(), ErrorCode::UnsupportedVersion);
        }
    }

    #[test]
    fn trailing_bytes_rejected() {
        let mut payload = postcard::to_stdvec(&Frame {
            version: CURRENT,
            body: 5u32,
        })
        .unwrap();
        payload.extend_from_slice(&[0xaa, 0xbb]);
        assert!(matches!(
            decode::<u32>(&raw_frame(&payload)),
            Err(FrameError::TrailingBytes { extra: 2 })
        ));
    }

    #[test]
    fn wrong_type_is_malformed() {
        let bytes = encode(CURRENT, &1u8).unwrap();
        assert!(matches!(
            decode::<Hello>(&bytes),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            decode::<Msg>(&raw_frame(&[])),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn back_to_back_frames_decode_in_order() {
        let mut buf = encode(CURRENT, &Msg::Ack(1)).unwrap();
        buf.extend(encode(CURRENT, &Msg::Hello(hello())).unwrap());
        buf.extend(encode(CURRENT, &Msg::Ping).unwrap());

        let mut seen = Vec::new();
        let mut at = 0;
        while let Some((frame, used)) = decode::<Msg>(&buf[at..]).unwrap() {
            seen.push(frame.body);
            at += used;
        }
        assert_eq!(at, buf.len());
        assert_eq!(seen, [Msg::Ack(1), Msg::Hello(hello()), Msg::Ping]);

        let mut r = buf.as_slice();
        assert_eq!(read_frame::<Msg, _>(&mut r).unwrap().body, Msg::Ack(1));
        assert_eq!(
            read_frame::<Msg, _>(&mut r).unwrap().body,
            Msg::Hello(hello())
        );
        assert_eq!(read_frame::<Msg, _>(&mut r).unwrap().body, Msg::Ping);
        assert!(matches!(
            read_frame::<Msg, _>(&mut r),
            Err(FrameError::UnexpectedEof)
        ));
    }

    #[test]
    fn write_then_read() {
        let mut wire = Vec::new();
        write_frame(&mut wire, CURRENT, &hello()).unwrap();
        write_frame(&mut wire, CURRENT, &Msg::Power { node: 3, on: false }).unwrap();
        let mut r = io::Cursor::new(wire);
        assert_eq!(read_frame::<Hello, _>(&mut r).unwrap().body, hello());
        assert_eq!(
            read_frame::<Msg, _>(&mut r).unwrap().body,
            Msg::Power { node: 3, on: false }
        );
    }

    #[test]
    fn truncated_stream_is_unexpected_eof() {
        let bytes = encode(CURRENT, &hello()).unwrap();
        for cut in 0..bytes.len() {
            let mut r = &bytes[..cut];
            assert!(
                matches!(
                    read_frame::<Hello, _>(&mut r),
                    Err(FrameError::UnexpectedEof)
                ),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn io_errors_pass_through() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset"))
            }
        }
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::BrokenPipe, "pipe"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let err = read_frame::<Msg, _>(&mut Broken).unwrap_err();
        assert!(matches!(&err, FrameError::Io(e) if e.kind() == io::ErrorKind::ConnectionReset));
        assert!(std::error::Error::source(&err).is_some());
        let err = write_frame(&mut Broken, CURRENT, &Msg::Ping).unwrap_err();
        assert!(matches!(&err, FrameError::Io(e) if e.kind() == io::ErrorKind::BrokenPipe));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..5000 {
            // Arbitrary buffers: mostly huge declared lengths.
            let junk = rng.bytes(64);
            let _ = decode::<Msg>(&junk);
            let _ = decode::<Hello>(&junk);
            let _ = read_frame::<Msg, _>(&mut junk.as_slice());
            // Plausible prefix, random payload: exercises the version and body decoders.
            let payload = rng.bytes(48);
            let framed = raw_frame(&payload);
            let _ = decode::<Msg>(&framed);
            let _ = decode::<Hello>(&framed);
            let _ = decode_body::<Vec<String>>(&payload);
            // Valid version, random body.
            let mut versioned = vec![1u8];
            versioned.extend_from_slice(&payload);
            let _ = decode_body::<Msg>(&versioned);
            let _ = decode_body::<Hello>(&versioned);
        }
    }
}
