//! HTTP/1.1 as a client speaks it to a workload (RFC 9112): the request head and body framing
//! it writes, the response head it parses, and the chunked decoder. Pure functions over
//! buffers; the connection I/O is in `workload::pool`.

use std::fmt::Write as _;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

/// The longest response head (status line and header fields) accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most header fields accepted in a response head or a chunked trailer.
pub const MAX_HEADERS: usize = 128;
/// The longest chunk-size line (size, extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;

/// A workload that does not speak HTTP/1.1 as it should. The message names what was wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("workload sent invalid HTTP/1.1: {0}")]
pub struct CodecError(pub String);

fn bad(what: impl Into<String>) -> CodecError {
    CodecError(what.into())
}

/// How a message's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// `content-length` bytes.
    Length(u64),
    /// `transfer-encoding: chunked`.
    Chunked,
    /// Until the connection closes (responses only; the connection cannot be reused).
    UntilClose,
}

/// Whether a request with this method carries a body by meaning, so that an empty one is
/// still sent with `content-length: 0` (servers answer 411 otherwise).
fn expects_body(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
}

/// How to frame a request body: its exact length when known (from `content-length` at the
/// caller, or a body that is already complete), chunked otherwise.
pub fn request_framing(method: &Method, body_done: bool, exact_len: Option<u64>) -> Framing {
    match (body_done, exact_len) {
        (true, _) | (false, Some(0)) if !expects_body(method) => Framing::Empty,
        (true, _) => Framing::Length(0),
        (false, Some(n)) => Framing::Length(n),
        (false, None) => Framing::Chunked,
    }
}

/// Writes a request head: request line (origin-form `target`), `headers` (hop-by-hop ones are
/// expected to be gone already; framing fields are replaced by `framing`'s), blank line.
pub fn encode_request_head(
    out: &mut BytesMut,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    framing: Framing,
) {
    out.reserve(64 + target.len() + headers.len() * 32);
    out.put_slice(method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(target.as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    match framing {
        Framing::Empty | Framing::UntilClose => {}
        Framing::Length(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        Framing::Chunked => out.put_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.put_slice(b"\r\n");
}

/// Writes one chunk of a chunked body (`data` must not be empty: an empty chunk ends a body).
pub fn encode_chunk(out: &mut BytesMut, data: &[u8]) {
    out.reserve(20 + data.len());
    let _ = write!(out, "{:x}\r\n", data.len());
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

/// Writes the end of a chunked body, with `trailers` as trailer fields.
pub fn encode_last_chunk(out: &mut BytesMut, trailers: Option<&HeaderMap>) {
    out.put_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    /// Status.
    pub status: StatusCode,
    /// Header fields, as sent (framing fields included).
    pub headers: HeaderMap,
    /// How the body is delimited.
    pub framing: Framing,
    /// Whether the connection may carry another request after this response.
    pub keep_alive: bool,
}

/// Parses a response head at the start of `buf`. `Ok(None)`: not complete yet. On success the
/// head's bytes are consumed from `buf`; header values share its memory. A 1xx head other
/// than 101 is returned like any other (the caller skips it).
pub fn parse_response_head(
    buf: &mut BytesMut,
    request_method: &Method,
) -> Result<Option<ResponseHead>, CodecError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut fields);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => {
            return Err(bad(format!("response head longer than {MAX_HEAD} bytes")));
        }
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(bad(format!("response head longer than {MAX_HEAD} bytes")));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(bad(format!("more than {MAX_HEADERS} header fields")));
        }
        Err(e) => return Err(bad(format!("response head: {e}"))),
    };
    let code = resp.code.unwrap_or(0);
    let status =
        StatusCode::from_u16(code).map_err(|_| bad(format!("status code {code} out of range")))?;
    let http10 = resp.version == Some(0);
    // Offsets of each field in `buf`, so that values can share the frozen head's memory.
    let base = buf.as_ptr() as usize;
    let spans: Vec<(usize, usize, usize, usize)> = resp
        .headers
        .iter()
        .map(|f| {
            let n = f.name.as_ptr() as usize - base;
            let v = f.value.as_ptr() as usize - base;
            (n, f.name.len(), v, f.value.len())
        })
        .collect();
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(spans.len());
    let mut connection_close = http10;
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    for (n, nl, v, vl) in spans {
        let name = HeaderName::from_bytes(&head[n..n + nl])
            .map_err(|_| bad(format!("invalid header name {:?}", lossy(&head[n..n + nl]))))?;
        let value = HeaderValue::from_maybe_shared(head.slice(v..v + vl))
            .map_err(|_| bad(format!("invalid value of header {name}")))?;
        if name == header::CONTENT_LENGTH {
            let parsed = value
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    bad(format!(
                        "content-length {:?} is not a number",
                        lossy(value.as_bytes())
                    ))
                })?;
            if content_length.is_some_and(|c| c != parsed) {
                return Err(bad("conflicting content-length fields"));
            }
            content_length = Some(parsed);
        } else if name == header::TRANSFER_ENCODING {
            // Only chunked is understood: another transfer coding could not be relayed (the
            // field is hop-by-hop), so it is refused rather than passed on undecoded.
            for coding in value.as_bytes().split(|b| *b == b',') {
                let coding = coding.trim_ascii();
                if coding.eq_ignore_ascii_case(b"chunked") {
                    chunked = true;
                } else if !coding.is_empty() {
                    return Err(bad(format!(
                        "unsupported transfer-coding {:?}",
                        lossy(coding)
                    )));
                }
            }
        } else if name == header::CONNECTION {
            for token in value.as_bytes().split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    connection_close = true;
                } else if http10 && token.eq_ignore_ascii_case(b"keep-alive") {
                    connection_close = false;
                }
            }
        }
        headers.append(name, value);
    }
    // RFC 9112 §6.3, in order.
    let framing = if *request_method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else {
        match content_length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    Ok(Some(ResponseHead {
        status,
        headers,
        framing,
        // Both framings at once: chunked wins, and the connection is not trusted again.
        keep_alive: !connection_close
            && framing != Framing::UntilClose
            && !(chunked && content_length.is_some()),
    }))
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(64)]).into_owned()
}

/// What the chunked decoder found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The buffer ends inside a chunk-size line, a chunk's CRLF or the trailer section.
    NeedMore,
    /// The body ended; its trailer fields, if any.
    End(Option<HeaderMap>),
}

/// Decoder of a chunked body (RFC 9112 §7.1), fed from the connection's read buffer.
#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    state: Chunk,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk's data: this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields, then a blank line.
    Trailers,
    /// Done.
    End,
}

impl ChunkedDecoder {
    /// Takes what it can from `buf`: at most one data slice, or the end of the body.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, CodecError> {
        loop {
            match self.state {
                Chunk::Size => {
                    let Some(eol) = find_crlf(buf) else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err(bad("chunk-size line too long"));
                        }
                        return Ok(Decoded::NeedMore);
                    };
                    // The same limit whether or not the CRLF came in the same read.
                    if eol + 2 > MAX_CHUNK_LINE {
                        return Err(bad("chunk-size line too long"));
                    }
                    let line = &buf[..eol];
                    let digits = line
                        .split(|b| *b == b';')
                        .next()
                        .unwrap_or_default()
                        .trim_ascii();
                    if digits.is_empty() || digits.len() > 15 {
                        return Err(bad(format!("chunk size {:?}", lossy(line))));
                    }
                    let mut size = 0u64;
                    for d in digits {
                        let v = (*d as char)
                            .to_digit(16)
                            .ok_or_else(|| bad(format!("chunk size {:?}", lossy(line))))?;
                        size = size * 16 + u64::from(v);
                    }
                    buf.advance(eol + 2);
                    self.state = if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    };
                }
                Chunk::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let data = buf.split_to(n).freeze();
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left)
                    };
                    return Ok(Decoded::Data(data));
                }
                Chunk::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(bad("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.state = Chunk::Size;
                }
                Chunk::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        self.state = Chunk::End;
                        return Ok(Decoded::End(None));
                    }
                    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    match httparse::parse_headers(buf, &mut fields) {
                        Ok(httparse::Status::Complete((len, _))) if len > MAX_HEAD => {
                            return Err(bad("trailer section too long"));
                        }
                        Ok(httparse::Status::Complete((len, fields))) => {
                            let mut trailers = HeaderMap::with_capacity(fields.len());
                            for f in fields.iter() {
                                let name =
                                    HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| {
                                        bad(format!("invalid trailer name {:?}", f.name))
                                    })?;
                                let value = HeaderValue::from_bytes(f.value)
                                    .map_err(|_| bad(format!("invalid value of trailer {name}")))?;
                                trailers.append(name, value);
                            }
                            buf.advance(len);
                            self.state = Chunk::End;
                            return Ok(Decoded::End(Some(trailers)));
                        }
                        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                            return Err(bad("trailer section too long"));
                        }
                        Ok(httparse::Status::Partial) => return Ok(Decoded::NeedMore),
                        Err(e) => return Err(bad(format!("trailer section: {e}"))),
                    }
                }
                Chunk::End => return Ok(Decoded::End(None)),
            }
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn parse(raw: &str, method: &Method) -> Result<Option<ResponseHead>, CodecError> {
        parse_response_head(&mut BytesMut::from(raw), method)
    }

    #[test]
    fn a_request_head_carries_its_framing() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("payment:8080"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        h.insert("traceparent", HeaderValue::from_static("00-1-2-01"));
        let mut out = BytesMut::new();
        encode_request_head(&mut out, &Method::POST, "/pay?x=1", &h, Framing::Length(12));
        assert_eq!(
            &out[..],
            b"POST /pay?x=1 HTTP/1.1\r\nhost: payment:8080\r\ntraceparent: 00-1-2-01\r\ncontent-length: 12\r\n\r\n"
        );
        out.clear();
        encode_request_head(
            &mut out,
            &Method::GET,
            "/",
            &HeaderMap::new(),
            Framing::Chunked,
        );
        assert_eq!(
            &out[..],
            b"GET / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn request_framing_follows_what_is_known_of_the_body() {
        assert_eq!(request_framing(&Method::GET, true, Some(0)), Framing::Empty);
        assert_eq!(
            request_framing(&Method::POST, true, Some(0)),
            Framing::Length(0)
        );
        assert_eq!(
            request_framing(&Method::POST, false, Some(7)),
            Framing::Length(7)
        );
        assert_eq!(request_framing(&Method::PUT, false, None), Framing::Chunked);
        assert_eq!(
            request_framing(&Method::GET, false, Some(0)),
            Framing::Empty
        );
    }

    #[test]
    fn chunks_round_trip_through_the_decoder() {
        let mut wire = BytesMut::new();
        encode_chunk(&mut wire, b"hello ");
        encode_chunk(&mut wire, &[b'x'; 300]);
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        encode_last_chunk(&mut wire, Some(&t));
        assert!(wire.starts_with(b"6\r\nhello \r\n12c\r\n"));
        // Fed one byte at a time: every split point must work.
        let mut d = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut trailers = None;
        for b in wire.iter() {
            buf.put_u8(*b);
            loop {
                match d.decode(&mut buf).unwrap() {
                    Decoded::Data(x) => body.extend_from_slice(&x),
                    Decoded::NeedMore => break,
                    Decoded::End(t) => {
                        trailers = Some(t);
                        break;
                    }
                }
            }
        }
        assert_eq!(body.len(), 306);
        assert!(body.starts_with(b"hello x"));
        assert_eq!(trailers.unwrap().unwrap()["grpc-status"], "0");
        assert!(buf.is_empty());
    }

    /// Decodes `raw` as far as it goes; the first error, if any.
    fn decode_all(raw: &str) -> Result<(), CodecError> {
        let (mut d, mut buf) = (ChunkedDecoder::default(), BytesMut::from(raw));
        while let Decoded::Data(_) = d.decode(&mut buf)? {}
        Ok(())
    }

    /// Decodes `raw` fed `piece` bytes at a time: the body, or the first error.
    fn decode_in_pieces(raw: &[u8], piece: usize) -> Result<Vec<u8>, CodecError> {
        let (mut d, mut buf, mut body) = (ChunkedDecoder::default(), BytesMut::new(), Vec::new());
        for part in raw.chunks(piece) {
            buf.extend_from_slice(part);
            loop {
                match d.decode(&mut buf)? {
                    Decoded::Data(x) => body.extend_from_slice(&x),
                    Decoded::NeedMore => break,
                    Decoded::End(_) => return Ok(body),
                }
            }
        }
        Ok(body)
    }

    /// A line's length limit holds however the bytes arrive: a line over the limit is refused
    /// even when its CRLF came in the same read (found by the h1codec fuzz target).
    #[test]
    fn line_limits_do_not_depend_on_how_bytes_arrive() {
        let long_ext = [
            b"5;".as_slice(),
            &[b'a'; MAX_CHUNK_LINE],
            b"\r\nhello\r\n0\r\n\r\n",
        ]
        .concat();
        let mut long_trailer = b"0\r\nx-t: ".to_vec();
        long_trailer.extend(std::iter::repeat_n(b'b', MAX_HEAD));
        long_trailer.extend_from_slice(b"\r\n\r\n");
        for raw in [long_ext, long_trailer] {
            for piece in [raw.len(), 1000, 7] {
                assert!(decode_in_pieces(&raw, piece).is_err(), "piece {piece}");
            }
        }
        let mut long_head = b"HTTP/1.1 200 OK\r\nx-h: ".to_vec();
        long_head.extend(std::iter::repeat_n(b'c', MAX_HEAD));
        long_head.extend_from_slice(b"\r\n\r\n");
        assert!(parse_response_head(&mut BytesMut::from(&long_head[..]), &Method::GET).is_err());
    }

    #[test]
    fn bad_chunks_are_named() {
        for (raw, why) in [
            ("zz\r\n", "chunk size"),
            ("3\r\nabcXY", "CRLF"),
            ("ffffffffffffffff0\r\n", "chunk size"),
            ("0\r\nbad trailer\r\n\r\n", "trailer"),
        ] {
            let err = decode_all(raw).unwrap_err();
            assert!(err.to_string().contains(why), "{raw:?}: {err}");
        }
        assert!(decode_all(&"1".repeat(MAX_CHUNK_LINE + 1)).is_err());
        assert!(
            decode_all("3\r\nabc\r\n0\r\n").is_ok(),
            "incomplete is not an error"
        );
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let get = Method::GET;
        let h = |raw: &str, m: &Method| parse(raw, m).unwrap().unwrap();
        let r = h(
            "HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 3\r\n\r\nok\n",
            &get,
        );
        assert_eq!(
            (r.status, r.framing, r.keep_alive),
            (StatusCode::OK, Framing::Length(3), true)
        );
        assert_eq!(r.headers["server"], "nginx");
        let r = h(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
            &Method::HEAD,
        );
        assert_eq!(r.framing, Framing::Empty);
        let r = h("HTTP/1.1 204 No Content\r\n\r\n", &get);
        assert_eq!((r.framing, r.keep_alive), (Framing::Empty, true));
        let r = h(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            &get,
        );
        assert_eq!((r.framing, r.keep_alive), (Framing::Chunked, true));
        let r = h(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            &get,
        );
        assert_eq!((r.framing, r.keep_alive), (Framing::Chunked, false));
        let r = h("HTTP/1.1 200 OK\r\n\r\n", &get);
        assert_eq!((r.framing, r.keep_alive), (Framing::UntilClose, false));
        let r = h(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            &get,
        );
        assert_eq!((r.framing, r.keep_alive), (Framing::Empty, false));
        let r = h("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n", &get);
        assert!(!r.keep_alive);
        let r = h(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n",
            &get,
        );
        assert!(r.keep_alive);
        let r = h("HTTP/1.1 100 Continue\r\n\r\n", &get);
        assert!(r.status.is_informational());
    }

    #[test]
    fn a_head_is_consumed_and_the_body_left_in_the_buffer() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\nHTTP");
        assert!(
            parse_response_head(&mut buf, &Method::GET)
                .unwrap()
                .is_some()
        );
        assert_eq!(&buf[..], b"ok\nHTTP");
        let mut part = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Le");
        assert!(
            parse_response_head(&mut part, &Method::GET)
                .unwrap()
                .is_none()
        );
        assert_eq!(part.len(), 27, "a partial head is left as it was");
    }

    #[test]
    fn bad_response_heads_are_named() {
        let get = Method::GET;
        for (raw, why) in [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                "content-length",
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "conflicting",
            ),
            ("HTTP/1.1 042 What\r\n\r\n", "42"),
            ("SMTP ready\r\n\r\n", "response head"),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                "gzip",
            ),
        ] {
            let err = parse(raw, &get).unwrap_err();
            assert!(err.to_string().contains(why), "{raw:?}: {err}");
        }
        let huge = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD));
        assert!(
            parse(&huge, &get)
                .unwrap_err()
                .to_string()
                .contains("longer than")
        );
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: 1\r\n")).collect();
        let err = parse(&format!("HTTP/1.1 200 OK\r\n{many}\r\n"), &get).unwrap_err();
        assert!(err.to_string().contains("header fields"), "{err}");
    }
}
