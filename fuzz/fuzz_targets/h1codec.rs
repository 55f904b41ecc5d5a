//! The HTTP/1.1 response codec a workload's answers pass through (`edge_agent::workload::h1codec`).
//!
//! Property: whatever the bytes, the codec never panics, and the outcome does not depend on
//! how the bytes were cut by the network. The same stream is fed whole and in pieces of a size
//! the input chooses; the response head, the body bytes, the trailers and whether (not why) it
//! failed must be the same.
#![no_main]

use bytes::BytesMut;
use edge_agent::workload::h1codec::{ChunkedDecoder, Decoded, Framing, parse_response_head};
use http::Method;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The input ended before the message did.
    Incomplete,
    /// The codec refused the bytes.
    Refused,
    /// The head framed no chunked body.
    HeadOnly,
    /// The chunked body ended, with these trailers.
    Body(String),
}

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    head: Option<String>,
    body: Vec<u8>,
    end: End,
}

fn run(stream: &[u8], piece: usize, method: &Method) -> Outcome {
    let mut out = Outcome {
        head: None,
        body: Vec::new(),
        end: End::Incomplete,
    };
    let mut buf = BytesMut::new();
    let mut decoder: Option<ChunkedDecoder> = None;
    for part in stream.chunks(piece) {
        buf.extend_from_slice(part);
        loop {
            if out.head.is_none() {
                match parse_response_head(&mut buf, method) {
                    Err(_) => {
                        out.end = End::Refused;
                        return out;
                    }
                    Ok(None) => break,
                    Ok(Some(h)) => {
                        out.head = Some(format!(
                            "{} {:?} {:?} keep_alive={}",
                            h.status, h.headers, h.framing, h.keep_alive
                        ));
                        if h.framing != Framing::Chunked {
                            out.end = End::HeadOnly;
                            return out;
                        }
                        decoder = Some(ChunkedDecoder::default());
                    }
                }
            }
            let Some(d) = decoder.as_mut() else { break };
            match d.decode(&mut buf) {
                Err(_) => {
                    out.end = End::Refused;
                    return out;
                }
                Ok(Decoded::NeedMore) => break,
                Ok(Decoded::Data(bytes)) => {
                    assert!(
                        !bytes.is_empty(),
                        "the decoder returned an empty data slice"
                    );
                    out.body.extend_from_slice(&bytes);
                }
                Ok(Decoded::End(trailers)) => {
                    out.end = End::Body(format!("{trailers:?}"));
                    return out;
                }
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let [flags, cut, stream @ ..] = data else {
        return;
    };
    let method = if flags & 1 == 0 {
        Method::GET
    } else {
        Method::HEAD
    };
    let whole = run(stream, stream.len().max(1), &method);
    let pieces = run(stream, usize::from(*cut % 32) + 1, &method);
    assert_eq!(
        whole, pieces,
        "the outcome depends on how the bytes were cut"
    );
});
