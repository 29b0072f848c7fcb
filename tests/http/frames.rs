//! Raw HTTP/2 frames for tests that must write what no client library
//! would, or read exactly what the server wrote: frame types, flags and
//! error codes, a frame builder and a parser.
#![allow(dead_code)]

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const GOAWAY: u8 = 7;
pub const WINDOW_UPDATE: u8 = 8;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 4;
pub const END_STREAM: u8 = 1;
pub const END_HEADERS: u8 = 4;
pub const REFUSED_STREAM: u32 = 7;
pub const CANCEL: u32 = 8;

/// (type, flags, stream, payload).
pub type Frame = (u8, u8, u32, Vec<u8>);

/// A frame of `kind` with a payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The complete frames at the start of `buf`.
pub fn parse_frames(buf: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut at = 0;
    while at + 9 <= buf.len() {
        let len = ((buf[at] as usize) << 16) | ((buf[at + 1] as usize) << 8) | buf[at + 2] as usize;
        if at + 9 + len > buf.len() {
            break;
        }
        let id =
            u32::from_be_bytes([buf[at + 5], buf[at + 6], buf[at + 7], buf[at + 8]]) & 0x7fff_ffff;
        frames.push((
            buf[at + 3],
            buf[at + 4],
            id,
            buf[at + 9..at + 9 + len].to_vec(),
        ));
        at += 9 + len;
    }
    frames
}
