//! The control protocol, both ways: what a client may send the server
//! (framing and request decoding), and what a server may answer `lrpmctl`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lrpm_proto::codec::{MAX_REQUEST_LEN, Request, Response, split_line, split_line_from};

fuzz_target!(|data: &[u8]| {
    // The server frames lines with a bound and decodes each.
    let mut rest = data;
    while let Ok(Some((len, used))) = split_line(rest, MAX_REQUEST_LEN) {
        assert!(len <= MAX_REQUEST_LEN && used <= rest.len());
        if let Ok(request) = Request::decode(&rest[..len]) {
            // What decodes encodes and decodes to the same request.
            let line = request.encode();
            let again = Request::decode(&line[..line.len() - 1]).expect("round trip");
            assert_eq!(again, request);
        }
        rest = &rest[used..];
    }
    let _ = split_line_from(data, data.len() / 2, 64);
    // The client decodes a response to each kind of request.
    for request in [
        Request::Status,
        Request::Help,
        Request::Stop,
        Request::Reload { force: true },
        Request::Restart { id: "1".into() },
        Request::StatusOf {
            ids: vec!["1".into()],
        },
        Request::Pause {
            ids: vec!["1".into()],
        },
    ] {
        let _ = Response::decode(data, &request);
    }
});
