//! The console serves at most 256 connections at once: clients that open
//! many and hold them wait in the kernel's backlog instead of taking the
//! file descriptors of the engine in the same process. A process of its
//! own, for the descriptors it opens.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use workflow::prelude::*;
use workflow::MemoryStore;
use workflow_console::ConsoleExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_wait_for_a_free_slot() {
    let engine = Engine::builder()
        .store(MemoryStore::new())
        .build()
        .await
        .unwrap();
    let server = engine.console().bind("127.0.0.1:0").await.unwrap();
    let addr = server.local_addr();
    let mut held = Vec::new();
    for _ in 0..256 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    let mut extra = TcpStream::connect(addr).await.unwrap();
    extra
        .write_all(b"GET /api/overview HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = vec![0; 4096];
    let early = tokio::time::timeout(Duration::from_millis(500), extra.read(&mut answer)).await;
    assert!(early.is_err(), "answered past the cap: {early:?}");
    // One of the held connections closes: its slot goes to the waiting one.
    drop(held.pop());
    let n = tokio::time::timeout(Duration::from_secs(10), extra.read(&mut answer))
        .await
        .expect("still waiting after a slot freed")
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    server.shutdown();
}
