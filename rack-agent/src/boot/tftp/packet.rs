//! TFTP wire format: parsing and encoding of RFC 1350 packets with RFC 2347 options, and the
//! netascii transform (RFC 764 newline rules) applied to files sent in netascii mode.

use std::fmt;

/// Read request (RFC 1350).
pub const OP_RRQ: u16 = 1;
/// Write request (RFC 1350).
pub const OP_WRQ: u16 = 2;
/// Data block (RFC 1350).
pub const OP_DATA: u16 = 3;
/// Acknowledgement (RFC 1350).
pub const OP_ACK: u16 = 4;
/// Error (RFC 1350).
pub const OP_ERROR: u16 = 5;
/// Option acknowledgement (RFC 2347).
pub const OP_OACK: u16 = 6;

/// Largest datagram a TFTP peer can send us (the UDP payload limit).
pub const MAX_DATAGRAM: usize = 65_536;

/// RFC 1350 error codes (plus RFC 2347's 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// Not defined, see error message.
    Undefined = 0,
    /// File not found.
    FileNotFound = 1,
    /// Access violation.
    AccessViolation = 2,
    /// Disk full or allocation exceeded.
    DiskFull = 3,
    /// Illegal TFTP operation.
    IllegalOperation = 4,
    /// Unknown transfer ID.
    UnknownTid = 5,
    /// File already exists.
    FileExists = 6,
    /// No such user.
    NoSuchUser = 7,
    /// Option negotiation refused (RFC 2347).
    OptionRefused = 8,
}

impl ErrorCode {
    /// The wire value.
    pub fn code(self) -> u16 {
        self as u16
    }
}

/// Transfer mode of a request (RFC 1350 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bytes as they are.
    Octet,
    /// Lines converted to the network's CR LF convention.
    Netascii,
}

/// A read or write request: file name, mode and options in the order the client sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The file name exactly as sent (not yet confined to the root).
    pub filename: String,
    /// Transfer mode.
    pub mode: Mode,
    /// Options (name lower-cased, value as sent), RFC 2347.
    pub options: Vec<(String, String)>,
}

/// A parsed TFTP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// RRQ.
    Rrq(Request),
    /// WRQ.
    Wrq(Request),
    /// DATA with its block number.
    Data {
        /// Block number (wraps at 65535).
        block: u16,
        /// Payload.
        data: &'a [u8],
    },
    /// ACK of a block number.
    Ack(u16),
    /// ERROR.
    Error {
        /// Error code as sent.
        code: u16,
        /// Message (lossily decoded).
        message: String,
    },
    /// OACK (only ever sent by servers; parsed so a confused peer can be counted).
    Oack,
    /// An opcode this server does not know.
    Unknown(u16),
}

/// Why a datagram is not a valid TFTP packet (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Malformed {
    /// Fewer than the 2 (or 4) bytes the opcode needs.
    Short,
    /// A string field without its NUL terminator.
    Unterminated,
    /// The file name or an option is not UTF-8 or is empty.
    BadString,
    /// A mode other than octet or netascii (e.g. the obsolete `mail`).
    BadMode,
    /// An option name without a value.
    OddOptions,
    /// A packet valid in itself but not expected where it arrived (DATA/ACK/OACK to the
    /// listen port, RRQ to a transfer port, ...).
    Unexpected,
    /// An opcode outside RFC 1350/2347.
    UnknownOpcode,
    /// A request from a peer that already has a transfer running (a retransmitted RRQ).
    Duplicate,
}

impl Malformed {
    /// Every reason, in metrics order.
    pub const ALL: [Malformed; 8] = [
        Malformed::Short,
        Malformed::Unterminated,
        Malformed::BadString,
        Malformed::BadMode,
        Malformed::OddOptions,
        Malformed::Unexpected,
        Malformed::UnknownOpcode,
        Malformed::Duplicate,
    ];

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Malformed::Short => "short",
            Malformed::Unterminated => "unterminated",
            Malformed::BadString => "bad_string",
            Malformed::BadMode => "bad_mode",
            Malformed::OddOptions => "odd_options",
            Malformed::Unexpected => "unexpected_opcode",
            Malformed::UnknownOpcode => "unknown_opcode",
            Malformed::Duplicate => "duplicate_request",
        }
    }
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

fn read_u16(buf: &[u8], at: usize) -> Option<u16> {
    let b = buf.get(at..at + 2)?;
    Some(u16::from_be_bytes([*b.first()?, *b.get(1)?]))
}

/// Splits the NUL-terminated strings of a request body.
fn split_strings(body: &[u8]) -> Result<Vec<&[u8]>, Malformed> {
    if body.is_empty() {
        return Err(Malformed::Unterminated);
    }
    if body.last() != Some(&0) {
        return Err(Malformed::Unterminated);
    }
    let inner = body.get(..body.len() - 1).unwrap_or_default();
    Ok(inner.split(|b| *b == 0).collect())
}

fn parse_request(body: &[u8]) -> Result<Request, Malformed> {
    let fields = split_strings(body)?;
    let mut it = fields.into_iter();
    let filename = it.next().ok_or(Malformed::Unterminated)?;
    let mode = it.next().ok_or(Malformed::Unterminated)?;
    let filename = std::str::from_utf8(filename).map_err(|_| Malformed::BadString)?;
    if filename.is_empty() {
        return Err(Malformed::BadString);
    }
    let mode = match std::str::from_utf8(mode)
        .map_err(|_| Malformed::BadMode)?
        .to_ascii_lowercase()
        .as_str()
    {
        "octet" => Mode::Octet,
        "netascii" => Mode::Netascii,
        _ => return Err(Malformed::BadMode),
    };
    let rest: Vec<&[u8]> = it.collect();
    // Some clients pad requests with an extra NUL; a trailing empty field is harmless.
    let rest = match rest.split_last() {
        Some((last, init)) if last.is_empty() && init.len() % 2 == 0 => init.to_vec(),
        _ => rest,
    };
    if rest.len() % 2 != 0 {
        return Err(Malformed::OddOptions);
    }
    let mut options = Vec::with_capacity(rest.len() / 2);
    for pair in rest.chunks_exact(2) {
        let (Some(name), Some(value)) = (pair.first(), pair.get(1)) else {
            return Err(Malformed::OddOptions);
        };
        let name = std::str::from_utf8(name).map_err(|_| Malformed::BadString)?;
        let value = std::str::from_utf8(value).map_err(|_| Malformed::BadString)?;
        if name.is_empty() {
            return Err(Malformed::BadString);
        }
        options.push((name.to_ascii_lowercase(), value.to_owned()));
    }
    Ok(Request {
        filename: filename.to_owned(),
        mode,
        options,
    })
}

/// Parses one datagram.
pub fn parse(buf: &[u8]) -> Result<Packet<'_>, Malformed> {
    let op = read_u16(buf, 0).ok_or(Malformed::Short)?;
    let body = buf.get(2..).unwrap_or_default();
    match op {
        OP_RRQ => parse_request(body).map(Packet::Rrq),
        OP_WRQ => parse_request(body).map(Packet::Wrq),
        OP_DATA => {
            let block = read_u16(buf, 2).ok_or(Malformed::Short)?;
            Ok(Packet::Data {
                block,
                data: buf.get(4..).unwrap_or_default(),
            })
        }
        OP_ACK => read_u16(buf, 2).map(Packet::Ack).ok_or(Malformed::Short),
        OP_ERROR => {
            let code = read_u16(buf, 2).ok_or(Malformed::Short)?;
            let msg = buf.get(4..).unwrap_or_default();
            // Lenient: a missing terminator still ends the transfer.
            let msg = msg.split(|b| *b == 0).next().unwrap_or_default();
            Ok(Packet::Error {
                code,
                message: String::from_utf8_lossy(msg).into_owned(),
            })
        }
        OP_OACK => Ok(Packet::Oack),
        other => Ok(Packet::Unknown(other)),
    }
}

/// Writes a DATA packet for `block` with `data` into `out` (cleared first).
pub fn encode_data(out: &mut Vec<u8>, block: u16, data: &[u8]) {
    out.clear();
    out.extend_from_slice(&OP_DATA.to_be_bytes());
    out.extend_from_slice(&block.to_be_bytes());
    out.extend_from_slice(data);
}

/// An ERROR packet.
pub fn encode_error(code: ErrorCode, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + message.len());
    out.extend_from_slice(&OP_ERROR.to_be_bytes());
    out.extend_from_slice(&code.code().to_be_bytes());
    // A NUL inside the message would end it early on the client; none of ours has one.
    out.extend(message.bytes().filter(|b| *b != 0));
    out.push(0);
    out
}

/// An OACK packet with `options` (name, value) in order.
pub fn encode_oack(options: &[(String, String)]) -> Vec<u8> {
    let mut out = OP_OACK.to_be_bytes().to_vec();
    for (name, value) in options {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out
}

/// An ACK packet (used by tests and clients).
pub fn encode_ack(block: u16) -> Vec<u8> {
    let mut out = OP_ACK.to_be_bytes().to_vec();
    out.extend_from_slice(&block.to_be_bytes());
    out
}

/// An RRQ packet (used by tests and clients).
pub fn encode_rrq(filename: &str, mode: &str, options: &[(&str, &str)]) -> Vec<u8> {
    let mut out = OP_RRQ.to_be_bytes().to_vec();
    for s in [filename, mode] {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }
    for (n, v) in options {
        out.extend_from_slice(n.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// The netascii form of `data`: LF becomes CR LF and a bare CR becomes CR NUL (RFC 764), the
/// same transform tftp-hpa applies, so a netascii client restores the original bytes.
pub fn to_netascii(data: &[u8]) -> Vec<u8> {
    let extra = data.iter().filter(|b| **b == b'\n' || **b == b'\r').count();
    let mut out = Vec::with_capacity(data.len() + extra);
    for b in data {
        match *b {
            b'\n' => out.extend_from_slice(b"\r\n"),
            b'\r' => out.extend_from_slice(b"\r\0"),
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_rrq_with_options() {
        let raw = encode_rrq(
            "/pxelinux.0",
            "OCTET",
            &[("BlkSize", "1428"), ("tsize", "0")],
        );
        let Ok(Packet::Rrq(req)) = parse(&raw) else {
            panic!("not an RRQ: {:?}", parse(&raw));
        };
        assert_eq!(req.filename, "/pxelinux.0");
        assert_eq!(req.mode, Mode::Octet);
        assert_eq!(
            req.options,
            vec![
                ("blksize".to_owned(), "1428".to_owned()),
                ("tsize".to_owned(), "0".to_owned())
            ]
        );
    }

    #[test]
    fn parses_netascii_and_wrq() {
        let mut raw = encode_rrq("a.txt", "netascii", &[]);
        raw[1] = OP_WRQ as u8;
        let Ok(Packet::Wrq(req)) = parse(&raw) else {
            panic!("not a WRQ");
        };
        assert_eq!(req.mode, Mode::Netascii);
        assert!(req.options.is_empty());
    }

    #[test]
    fn tolerates_trailing_padding_nul() {
        let mut raw = encode_rrq("f", "octet", &[("tsize", "0")]);
        raw.push(0);
        assert!(matches!(parse(&raw), Ok(Packet::Rrq(_))));
    }

    #[test]
    fn rejects_malformed_requests() {
        assert_eq!(parse(&[]), Err(Malformed::Short));
        assert_eq!(parse(&[0]), Err(Malformed::Short));
        assert_eq!(parse(&[0, 1]), Err(Malformed::Unterminated));
        assert_eq!(
            parse(b"\x00\x01file\x00octet"),
            Err(Malformed::Unterminated)
        );
        assert_eq!(parse(b"\x00\x01file\x00"), Err(Malformed::Unterminated));
        assert_eq!(parse(b"\x00\x01\x00octet\x00"), Err(Malformed::BadString));
        assert_eq!(parse(b"\x00\x01f\x00mail\x00"), Err(Malformed::BadMode));
        assert_eq!(
            parse(b"\x00\x01f\x00octet\x00blksize\x00"),
            Err(Malformed::OddOptions)
        );
        assert_eq!(
            parse(b"\x00\x01\xff\xfe\x00octet\x00"),
            Err(Malformed::BadString)
        );
        assert_eq!(parse(&[0, 4, 1]), Err(Malformed::Short));
    }

    #[test]
    fn parses_data_ack_error_unknown() {
        assert_eq!(parse(&[0, 4, 0xff, 0xff]), Ok(Packet::Ack(65535)));
        assert_eq!(
            parse(&[0, 3, 0, 7, 1, 2]),
            Ok(Packet::Data {
                block: 7,
                data: &[1, 2]
            })
        );
        let err = encode_error(ErrorCode::OptionRefused, "no");
        assert_eq!(
            parse(&err),
            Ok(Packet::Error {
                code: 8,
                message: "no".to_owned()
            })
        );
        assert_eq!(parse(&[0, 99]), Ok(Packet::Unknown(99)));
    }

    #[test]
    fn encodes_data_and_oack() {
        let mut out = Vec::new();
        encode_data(&mut out, 0x0102, b"xy");
        assert_eq!(out, vec![0, 3, 1, 2, b'x', b'y']);
        let oack = encode_oack(&[("blksize".into(), "1428".into())]);
        assert_eq!(oack, b"\x00\x06blksize\x001428\x00".to_vec());
        assert_eq!(
            encode_error(ErrorCode::FileNotFound, "x"),
            b"\x00\x05\x00\x01x\x00"
        );
    }

    #[test]
    fn netascii_converts_newlines() {
        assert_eq!(to_netascii(b"a\nb\rc\r\n"), b"a\r\nb\r\0c\r\0\r\n".to_vec());
        assert_eq!(to_netascii(b""), Vec::<u8>::new());
        assert_eq!(to_netascii(b"plain"), b"plain".to_vec());
    }
}
