//! The Noise layer, from both ends a stranger can reach: the handshake of an
//! accepting node reading any bytes, and the encrypted frame reader of an
//! established link reading any bytes (after a real handshake, so the keys
//! are right and only the stream is hostile). The first byte picks which.
#![no_main]
use conjoiner::cluster::noise::{handshake, Transport};
use conjoiner::cluster::ClusterKey;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap())
}

fn key() -> &'static ClusterKey {
    static KEY: OnceLock<ClusterKey> = OnceLock::new();
    KEY.get_or_init(ClusterKey::generate)
}

/// The receiving keys of one real link, made once.
fn link() -> &'static Transport {
    static LINK: OnceLock<Transport> = OnceLock::new();
    LINK.get_or_init(|| {
        runtime().block_on(async {
            let (mut a, mut b) = tokio::io::duplex(64 * 1024);
            let (dialer, acceptor) = tokio::join!(handshake(&mut a, key(), true), handshake(&mut b, key(), false));
            dialer.unwrap();
            acceptor.unwrap()
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    // Made before entering the runtime: the first call runs a handshake on it.
    let link = link();
    runtime().block_on(async {
        if mode % 2 == 0 {
            let mut stream = tokio::io::join(rest, tokio::io::sink());
            let _ = tokio::time::timeout(std::time::Duration::from_millis(50), handshake(&mut stream, key(), false)).await;
        } else {
            let mut receiver = link.receiver(rest, 64 * 1024);
            while let Ok(Some(frame)) = receiver.recv().await {
                assert!(frame.len() <= 64 * 1024);
            }
        }
    });
});
