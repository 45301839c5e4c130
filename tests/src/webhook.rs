//! A webhook receiver for notification tests: a real HTTP server on loopback that answers
//! every POST with 200 and hands the test each (path, JSON body).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::Duration;

use serde_json::Value;

/// A webhook receiver: every POST's (path, JSON body); answers 200.
pub fn webhook_receiver() -> (String, Receiver<(String, Value)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks/kura", listener.local_addr().unwrap());
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { break };
            let tx = tx.clone();
            std::thread::spawn(move || serve_http(conn, tx));
        }
    });
    (url, rx)
}

fn serve_http(conn: TcpStream, tx: Sender<(String, Value)>) {
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut request_line = String::new();
    r.read_line(&mut request_line).unwrap();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        if h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).unwrap();
    let mut w = conn;
    w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut parts = request_line.split_whitespace();
    assert_eq!(parts.next(), Some("POST"), "{request_line}");
    let path = parts.next().unwrap().to_string();
    let _ = tx.send((path, serde_json::from_slice(&body).expect("a JSON body")));
}
