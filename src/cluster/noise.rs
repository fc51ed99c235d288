//! Encrypted links: a Noise `XXpsk3` handshake keyed by a cluster key, then
//! frames carried in Noise transport messages.
//!
//! The key is picked in the handshake itself, from the two nodes' keyrings:
//! the dialer's first message names the keys it holds by id (a hash, never
//! the key), the answer names the one both hold, and the third message,
//! which mixes the key in (`psk3`), uses it. So a node accepting several
//! keys during a rotation pays one handshake, and a node with no key in
//! common learns so by name. A peer of an earlier release sends and reads
//! empty payloads: both sides then use their primary key, as before.
//!
//! On the wire every Noise message is a 4-byte big-endian length and that many
//! bytes, at most 65,535 (the Noise limit); a larger length is refused before
//! anything is read. A frame (one envelope or one membership packet) is its
//! own 4-byte length and payload, split over as many Noise messages as it
//! needs, so frames up to `max_frame` bytes fit. The frame length is checked
//! against `max_frame` as soon as the first chunk is decrypted.

use super::key::ClusterKey;
use super::keyring::{key_id, show_id, KeyId, Keyring, MAX_KEYS};
use super::node_key::NodeKey;
use bytes::{Bytes, BytesMut};
use snow::{HandshakeState, StatelessTransportState};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The Noise protocol every link speaks.
pub const NOISE_PARAMS: &str = "Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s";
/// Bound into the handshake, so nodes of another protocol version fail it.
pub const PROLOGUE: &[u8] = b"conjoiner link v2";
/// The largest Noise message (ciphertext, with its 16-byte tag).
pub const MAX_NOISE_MESSAGE: usize = 65_535;
const TAG_LEN: usize = 16;
/// The most plaintext one Noise message carries.
pub const MAX_CHUNK: usize = MAX_NOISE_MESSAGE - TAG_LEN;
/// Receive buffers larger than this are released after the frame that
/// needed them, so idle links stay small.
const KEEP_BUFFER: usize = 8 * 1024;
/// Room for one handshake message or its payload. XX messages with empty
/// payloads are at most 96 bytes; buffers of the Noise maximum (64 KiB
/// each) made every connection waiting for its handshake cost 130 KB.
const HANDSHAKE_BUFFER: usize = 1024;
/// How long a peer has to finish the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a link failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("link i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("handshake failed: {0} (wrong cluster key, or not a conjoiner node)")]
    Handshake(String),
    #[error("handshake timed out after {0:?}")]
    HandshakeTimeout(Duration),
    #[error("the peer closed the connection during the handshake")]
    ClosedDuringHandshake,
    #[error("noise message of {size} bytes exceeds the limit of {MAX_NOISE_MESSAGE} bytes")]
    MessageTooLarge { size: usize },
    #[error("frame of {size} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { size: usize, max: usize },
    #[error("cannot decrypt a message: {0}")]
    Decrypt(String),
    #[error("peer closed the link in the middle of a frame")]
    Truncated,
    #[error("no cluster key in common: this node holds {ours}, the peer {theirs} (install one of the peer's keys in the keyring, or give the peer one of these)")]
    NoCommonKey { ours: String, theirs: String },
}

fn noise_error(e: snow::Error) -> LinkError {
    LinkError::Handshake(e.to_string())
}

/// Reads one length-prefixed Noise message. `Ok(None)` is a clean end of stream.
async fn read_message<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut Vec<u8>) -> Result<Option<()>, LinkError> {
    let mut header = [0u8; 4];
    match reader.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let size = u32::from_be_bytes(header) as usize;
    if size > MAX_NOISE_MESSAGE {
        return Err(LinkError::MessageTooLarge { size });
    }
    buf.resize(size, 0);
    reader.read_exact(buf).await?;
    Ok(Some(()))
}

async fn write_message<W: AsyncWrite + Unpin>(writer: &mut W, message: &[u8]) -> Result<(), LinkError> {
    writer.write_all(&(message.len() as u32).to_be_bytes()).await?;
    writer.write_all(message).await?;
    Ok(())
}

fn builder(key: &ClusterKey) -> Result<snow::Builder<'_>, LinkError> {
    let params = NOISE_PARAMS.parse().map_err(noise_error)?;
    snow::Builder::new(params)
        .psk(3, key.as_bytes())
        .and_then(|b| b.prologue(PROLOGUE))
        .map_err(noise_error)
}

/// Marks a handshake payload of this release (an earlier one sends none).
const KEYS_MAGIC: &[u8; 4] = b"CJK1";

/// The dialer's first payload: the ids of the keys it holds, primary first.
fn offer(keyring: &Keyring) -> Vec<u8> {
    let ids = keyring.ids();
    let mut payload = KEYS_MAGIC.to_vec();
    payload.push(ids.len() as u8);
    ids.iter().for_each(|id| payload.extend_from_slice(id));
    payload
}

/// The key ids in a payload after its magic: a count, then 4 bytes each.
fn read_ids(bytes: &[u8]) -> Option<Vec<KeyId>> {
    let (&count, rest) = bytes.split_first()?;
    let count = usize::from(count);
    if count > MAX_KEYS || rest.len() != count * 4 {
        return None;
    }
    Some(rest.chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]).collect())
}

fn show_ids(ids: &[KeyId]) -> String {
    format!("[{}]", ids.iter().map(show_id).collect::<Vec<_>>().join(", "))
}

/// What the accepting side makes of the dialer's offer.
#[derive(Debug, PartialEq, Eq)]
enum Pick {
    /// A peer of an earlier release: the primary key, no payload back.
    Legacy,
    /// The key both hold: this node's primary if the dialer holds it,
    /// else the first of the dialer's that this node holds.
    Key(KeyId),
    /// None in common; the dialer's ids, to name them.
    NoneInCommon(Vec<KeyId>),
}

fn pick(keyring: &Keyring, offer: &[u8]) -> Pick {
    let Some(ids) = offer.strip_prefix(KEYS_MAGIC).and_then(read_ids) else {
        return Pick::Legacy;
    };
    let primary = key_id(keyring.primary());
    if ids.contains(&primary) {
        return Pick::Key(primary);
    }
    match ids.iter().find(|id| keyring.by_id(id).is_some()) {
        Some(id) => Pick::Key(*id),
        None => Pick::NoneInCommon(ids),
    }
}

/// [`handshake_as`] for a party with no lasting identity (a key of its
/// own for this one link): tools and tests that stand in for a peer.
pub async fn handshake<S>(stream: &mut S, keyring: &Keyring, initiator: bool) -> Result<Transport, LinkError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    handshake_as(stream, keyring, &NodeKey::generate(), initiator).await
}

/// Runs the XXpsk3 handshake as the dialing side or the accepting side,
/// with this node's identity as the static key (so the peer learns which
/// key holds this end: [`Transport::peer_static`]), and a cluster key both
/// keyrings hold (which admits the link at all).
pub async fn handshake_as<S>(
    stream: &mut S,
    keyring: &Keyring,
    me: &NodeKey,
    initiator: bool,
) -> Result<Transport, LinkError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let run = async {
        let key = keyring.primary();
        let private = me.noise_private();
        let b = builder(key)?.local_private_key(&private).map_err(noise_error)?;
        let mut state: HandshakeState = if initiator {
            b.build_initiator()
        } else {
            b.build_responder()
        }
        .map_err(noise_error)?;
        let mut message = vec![0u8; HANDSHAKE_BUFFER];
        let mut payload = vec![0u8; HANDSHAKE_BUFFER];
        let mut incoming = Vec::new();
        let ours_shown = || show_ids(&keyring.ids());
        // XX has three messages: initiator, responder, initiator. The
        // first two carry the keys' ids; the third mixes the key in.
        if initiator {
            let n = state
                .write_message(&offer(keyring), &mut message)
                .map_err(noise_error)?;
            write_message(stream, &message[..n]).await?;
            stream.flush().await?;
            read_message(stream, &mut incoming)
                .await?
                .ok_or(LinkError::ClosedDuringHandshake)?;
            let n = state.read_message(&incoming, &mut payload).map_err(noise_error)?;
            if let Some(answer) = payload[..n].strip_prefix(KEYS_MAGIC) {
                match answer {
                    [1, id @ ..] if id.len() == 4 => {
                        let id: KeyId = [id[0], id[1], id[2], id[3]];
                        let key = keyring.by_id(&id).ok_or_else(|| {
                            LinkError::Handshake(format!(
                                "the peer picked key {}, which this node does not hold",
                                show_id(&id)
                            ))
                        })?;
                        state.set_psk(3, key.as_bytes()).map_err(noise_error)?;
                    }
                    [0, ids @ ..] => {
                        let theirs =
                            read_ids(ids).map_or_else(|| "no key this node reads".into(), |ids| show_ids(&ids));
                        return Err(LinkError::NoCommonKey {
                            ours: ours_shown(),
                            theirs,
                        });
                    }
                    _ => return Err(LinkError::Handshake("the peer's key answer does not read".into())),
                }
            }
            let n = state.write_message(&[], &mut message).map_err(noise_error)?;
            write_message(stream, &message[..n]).await?;
            stream.flush().await?;
        } else {
            read_message(stream, &mut incoming)
                .await?
                .ok_or(LinkError::ClosedDuringHandshake)?;
            let n = state.read_message(&incoming, &mut payload).map_err(noise_error)?;
            let answer = match pick(keyring, &payload[..n]) {
                Pick::Legacy => Vec::new(),
                Pick::Key(id) => {
                    let key = keyring.by_id(&id).expect("picked among this keyring's keys");
                    state.set_psk(3, key.as_bytes()).map_err(noise_error)?;
                    [KEYS_MAGIC.as_slice(), &[1], &id].concat()
                }
                Pick::NoneInCommon(theirs) => {
                    let mut answer = [KEYS_MAGIC.as_slice(), &[0]].concat();
                    answer.extend_from_slice(&offer(keyring)[KEYS_MAGIC.len()..]);
                    let n = state.write_message(&answer, &mut message).map_err(noise_error)?;
                    write_message(stream, &message[..n]).await?;
                    stream.flush().await?;
                    return Err(LinkError::NoCommonKey {
                        ours: ours_shown(),
                        theirs: show_ids(&theirs),
                    });
                }
            };
            let n = state.write_message(&answer, &mut message).map_err(noise_error)?;
            write_message(stream, &message[..n]).await?;
            stream.flush().await?;
            read_message(stream, &mut incoming)
                .await?
                .ok_or(LinkError::ClosedDuringHandshake)?;
            state.read_message(&incoming, &mut payload).map_err(noise_error)?;
        }
        let peer_static = peer_static(&state)?;
        let transport = state.into_stateless_transport_mode().map_err(noise_error)?;
        Ok(Transport {
            state: Arc::new(transport),
            peer_static,
        })
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, run)
        .await
        .map_err(|_| LinkError::HandshakeTimeout(HANDSHAKE_TIMEOUT))?
}

/// The X25519 static key the peer showed in a finished handshake.
fn peer_static(state: &HandshakeState) -> Result<[u8; 32], LinkError> {
    state
        .get_remote_static()
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| LinkError::Handshake("the peer showed no static key".into()))
}

/// The keys of an established link, shared by its sending and receiving
/// halves, and the static key the peer proved it holds.
#[derive(Clone)]
pub struct Transport {
    state: Arc<StatelessTransportState>,
    peer_static: [u8; 32],
}

impl Transport {
    /// The X25519 static key of the other end: the Noise form of its node
    /// identity (see `NodePublicKey::noise_static`).
    pub fn peer_static(&self) -> [u8; 32] {
        self.peer_static
    }

    pub fn sender<W: AsyncWrite + Unpin>(&self, writer: W) -> FrameSender<W> {
        FrameSender {
            transport: self.clone(),
            nonce: 0,
            writer,
            cipher: Vec::new(),
        }
    }

    pub fn receiver<R: AsyncRead + Unpin>(&self, reader: R, max_frame: usize) -> FrameReceiver<R> {
        FrameReceiver {
            transport: self.clone(),
            nonce: 0,
            reader,
            max_frame,
            incoming: Vec::new(),
            plain: Vec::new(),
        }
    }
}

/// Encrypts and writes frames. Not flushed until [`FrameSender::flush`], so a
/// burst of frames goes out in few writes.
pub struct FrameSender<W> {
    transport: Transport,
    nonce: u64,
    writer: W,
    cipher: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> FrameSender<W> {
    pub async fn send(&mut self, frame: &[u8]) -> Result<(), LinkError> {
        let mut plain = Vec::with_capacity(4 + frame.len());
        plain.extend_from_slice(&(frame.len() as u32).to_be_bytes());
        plain.extend_from_slice(frame);
        for chunk in plain.chunks(MAX_CHUNK) {
            self.cipher.resize(chunk.len() + TAG_LEN, 0);
            let n = self
                .transport
                .state
                .write_message(self.nonce, chunk, &mut self.cipher)
                .map_err(|e| LinkError::Decrypt(e.to_string()))?;
            self.nonce += 1;
            write_message(&mut self.writer, &self.cipher[..n]).await?;
        }
        if self.cipher.capacity() > KEEP_BUFFER {
            self.cipher = Vec::new();
        }
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<(), LinkError> {
        self.writer.flush().await?;
        Ok(())
    }

    /// Writes raw bytes past the encryption, for tests that play a broken peer.
    pub async fn send_raw_noise_message(&mut self, plain: &[u8]) -> Result<(), LinkError> {
        self.cipher.resize(plain.len() + TAG_LEN, 0);
        let n = self
            .transport
            .state
            .write_message(self.nonce, plain, &mut self.cipher)
            .map_err(|e| LinkError::Decrypt(e.to_string()))?;
        self.nonce += 1;
        write_message(&mut self.writer, &self.cipher[..n]).await?;
        self.flush().await
    }
}

/// Reads and decrypts frames, refusing any larger than `max_frame`.
pub struct FrameReceiver<R> {
    transport: Transport,
    nonce: u64,
    reader: R,
    max_frame: usize,
    incoming: Vec<u8>,
    plain: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReceiver<R> {
    async fn next_chunk(&mut self) -> Result<Option<usize>, LinkError> {
        if read_message(&mut self.reader, &mut self.incoming).await?.is_none() {
            return Ok(None);
        }
        self.plain.resize(self.incoming.len(), 0);
        let n = self
            .transport
            .state
            .read_message(self.nonce, &self.incoming, &mut self.plain)
            .map_err(|e| LinkError::Decrypt(e.to_string()))?;
        self.nonce += 1;
        Ok(Some(n))
    }

    /// The next frame; `Ok(None)` when the peer closed the link cleanly.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, LinkError> {
        let Some(n) = self.next_chunk().await? else {
            return Ok(None);
        };
        if n < 4 {
            return Err(LinkError::Decrypt(
                "first chunk of a frame is shorter than its header".into(),
            ));
        }
        let size = u32::from_be_bytes([self.plain[0], self.plain[1], self.plain[2], self.plain[3]]) as usize;
        if size > self.max_frame {
            return Err(LinkError::FrameTooLarge {
                size,
                max: self.max_frame,
            });
        }
        let mut frame = BytesMut::with_capacity(size);
        frame.extend_from_slice(&self.plain[4..n]);
        while frame.len() < size {
            let n = self.next_chunk().await?.ok_or(LinkError::Truncated)?;
            frame.extend_from_slice(&self.plain[..n]);
        }
        // A big frame should not pin 64 KiB buffers per link for good.
        if self.plain.capacity() > KEEP_BUFFER {
            self.plain = Vec::new();
            self.incoming = Vec::new();
        }
        if frame.len() != size {
            return Err(LinkError::Decrypt(format!(
                "frame announced {size} bytes but carried {}",
                frame.len()
            )));
        }
        Ok(Some(frame.freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair(a: &ClusterKey, b: &ClusterKey) -> (Result<Transport, LinkError>, Result<Transport, LinkError>) {
        let (mut left, mut right) = tokio::io::duplex(1 << 20);
        let (ka, kb) = (a.clone(), b.clone());
        let dial = tokio::spawn(async move { (handshake(&mut left, &Keyring::new(ka.clone()), true).await, left) });
        let accept =
            tokio::spawn(async move { (handshake(&mut right, &Keyring::new(kb.clone()), false).await, right) });
        let (d, a) = (dial.await.unwrap(), accept.await.unwrap());
        (d.0, a.0)
    }

    #[tokio::test]
    async fn frames_of_every_size_cross_a_link_in_order() {
        let key = ClusterKey::generate();
        let (mut left, mut right) = tokio::io::duplex(1 << 16);
        let k2 = key.clone();
        let accept = tokio::spawn(async move {
            let t = handshake(&mut right, &Keyring::new(k2.clone()), false).await.unwrap();
            let mut rx = t.receiver(right, 1 << 20);
            let mut got = Vec::new();
            while let Some(frame) = rx.recv().await.unwrap() {
                got.push(frame);
            }
            got
        });
        let t = handshake(&mut left, &Keyring::new(key.clone()), true).await.unwrap();
        let sizes = [
            0usize,
            1,
            MAX_CHUNK - 4,
            MAX_CHUNK - 3,
            MAX_CHUNK,
            3 * MAX_CHUNK + 7,
            1 << 20,
        ];
        let mut tx = t.sender(left);
        for (i, size) in sizes.iter().enumerate() {
            let frame: Vec<u8> = (0..*size).map(|j| (i + j) as u8).collect();
            tx.send(&frame).await.unwrap();
        }
        tx.flush().await.unwrap();
        drop(tx);
        let got = accept.await.unwrap();
        assert_eq!(got.len(), sizes.len());
        for (i, (frame, size)) in got.iter().zip(sizes).enumerate() {
            assert_eq!(frame.len(), size);
            assert!(frame.iter().enumerate().all(|(j, b)| *b == (i + j) as u8));
        }
    }

    #[tokio::test]
    async fn a_wrong_key_fails_the_handshake_on_both_sides_naming_the_keys() {
        let (a, b) = (ClusterKey::generate(), ClusterKey::generate());
        let (dial, accept) = pair(&a, &b).await;
        for (side, result, ours, theirs) in [("dial", dial, &a, &b), ("accept", accept, &b, &a)] {
            match result {
                Err(e @ LinkError::NoCommonKey { .. }) => {
                    let text = e.to_string();
                    assert!(
                        text.contains(&show_id(&key_id(ours))) && text.contains(&show_id(&key_id(theirs))),
                        "{side}: {text}"
                    );
                }
                other => panic!("{side}: expected NoCommonKey, got {:?}", other.err()),
            }
        }
    }

    /// Runs a handshake both of whose keyrings are given, and sends one
    /// frame across, so that a key picked wrong fails here.
    async fn talk(a: Keyring, b: Keyring) -> Result<(), String> {
        let (mut left, mut right) = tokio::io::duplex(1 << 16);
        let accept = tokio::spawn(async move {
            let t = handshake(&mut right, &b, false).await.map_err(|e| e.to_string())?;
            t.receiver(right, 1000).recv().await.map_err(|e| e.to_string())
        });
        let t = handshake(&mut left, &a, true).await.map_err(|e| e.to_string())?;
        let mut tx = t.sender(left);
        tx.send(b"hello").await.map_err(|e| e.to_string())?;
        tx.flush().await.map_err(|e| e.to_string())?;
        match accept.await.unwrap()? {
            Some(frame) if &frame[..] == b"hello" => Ok(()),
            other => Err(format!("got {other:?}")),
        }
    }

    /// Each side of a link learns the Noise form of the other's identity
    /// key, which is what a hello's named key is checked against.
    #[tokio::test]
    async fn a_handshake_shows_each_side_the_others_identity() {
        let key = ClusterKey::generate();
        let (a, b) = (Arc::new(NodeKey::generate()), Arc::new(NodeKey::generate()));
        let (mut left, mut right) = tokio::io::duplex(1 << 16);
        let (ring_a, ring_b) = (Keyring::new(key.clone()), Keyring::new(key));
        let b2 = b.clone();
        let accept = tokio::spawn(async move { handshake_as(&mut right, &ring_b, &b2, false).await.unwrap() });
        let dialed = handshake_as(&mut left, &ring_a, &a, true).await.unwrap();
        let accepted = accept.await.unwrap();
        assert_eq!(Some(dialed.peer_static()), b.public().noise_static());
        assert_eq!(Some(accepted.peer_static()), a.public().noise_static());
        assert_ne!(a.public().noise_static(), b.public().noise_static());
    }

    fn ring(primary: &ClusterKey, others: &[&ClusterKey]) -> Keyring {
        let mut ring = Keyring::new(primary.clone());
        for k in others {
            ring.install((*k).clone()).unwrap();
        }
        ring
    }

    /// Mid-rotation every pair that shares a key links, whichever side
    /// dials and whichever key is each one's primary.
    #[tokio::test]
    async fn nodes_whose_keyrings_share_any_key_link_in_one_handshake() {
        let (k1, k2, k3) = (ClusterKey::generate(), ClusterKey::generate(), ClusterKey::generate());
        let cases = [
            (ring(&k1, &[]), ring(&k1, &[])),
            (ring(&k2, &[&k1]), ring(&k1, &[])),
            (ring(&k1, &[]), ring(&k2, &[&k1])),
            (ring(&k2, &[&k1]), ring(&k1, &[&k2])),
            (ring(&k3, &[&k1, &k2]), ring(&k1, &[&k2])),
            (ring(&k1, &[&k3]), ring(&k2, &[&k3])),
        ];
        for (i, (a, b)) in cases.into_iter().enumerate() {
            assert_eq!(talk(a.clone(), b.clone()).await, Ok(()), "case {i}: {a:?} dials {b:?}");
            assert_eq!(talk(b.clone(), a.clone()).await, Ok(()), "case {i}: {b:?} dials {a:?}");
        }
        let refused = talk(ring(&k1, &[&k2]), ring(&k3, &[])).await.unwrap_err();
        assert!(refused.contains("no cluster key in common"), "{refused}");
    }

    /// The handshake of the release before keyrings: empty payloads, the
    /// one key mixed in.
    async fn legacy_handshake<S: AsyncRead + AsyncWrite + Unpin>(
        stream: &mut S,
        key: &ClusterKey,
        initiator: bool,
    ) -> Result<Transport, LinkError> {
        let keypair = builder(key)?.generate_keypair().map_err(noise_error)?;
        let b = builder(key)?.local_private_key(&keypair.private).map_err(noise_error)?;
        let mut state = if initiator {
            b.build_initiator()
        } else {
            b.build_responder()
        }
        .map_err(noise_error)?;
        let (mut message, mut payload, mut incoming) = (vec![0u8; 1024], vec![0u8; 1024], Vec::new());
        for turn in 0..3 {
            if (turn % 2 == 0) == initiator {
                let n = state.write_message(&[], &mut message).map_err(noise_error)?;
                write_message(stream, &message[..n]).await?;
                stream.flush().await?;
            } else {
                read_message(stream, &mut incoming)
                    .await?
                    .ok_or(LinkError::ClosedDuringHandshake)?;
                state.read_message(&incoming, &mut payload).map_err(noise_error)?;
            }
        }
        let peer_static = peer_static(&state)?;
        Ok(Transport {
            state: Arc::new(state.into_stateless_transport_mode().map_err(noise_error)?),
            peer_static,
        })
    }

    /// A fleet is upgraded one host at a time: a node of this release and
    /// one of the last link both ways on the primary key.
    #[tokio::test]
    async fn a_node_of_the_release_before_keyrings_links_both_ways() {
        let key = ClusterKey::generate();
        for new_dials in [true, false] {
            let (mut left, mut right) = tokio::io::duplex(1 << 16);
            let (ring, old_key) = (ring(&key, &[&ClusterKey::generate()]), key.clone());
            let old = tokio::spawn(async move {
                let t = legacy_handshake(&mut right, &old_key, !new_dials).await.unwrap();
                t.receiver(right, 1000).recv().await.unwrap()
            });
            let t = handshake(&mut left, &ring, new_dials).await.unwrap();
            let mut tx = t.sender(left);
            tx.send(b"hi").await.unwrap();
            tx.flush().await.unwrap();
            assert_eq!(
                old.await.unwrap().as_deref(),
                Some(&b"hi"[..]),
                "new dials: {new_dials}"
            );
        }
    }

    #[test]
    fn an_offer_that_does_not_read_is_taken_for_an_earlier_release() {
        let k = ClusterKey::generate();
        let ring = ring(&k, &[]);
        assert_eq!(pick(&ring, b""), Pick::Legacy);
        assert_eq!(pick(&ring, b"CJK1\x09"), Pick::Legacy, "more ids than a keyring holds");
        assert_eq!(pick(&ring, b"CJK1\x01abc"), Pick::Legacy, "a short id");
        assert_eq!(pick(&ring, &offer(&ring)), Pick::Key(key_id(&k)));
    }

    /// A peer that hangs up mid-handshake is a busy or departing node as
    /// often as a stranger; only a failed check is a refusal (a key).
    #[tokio::test]
    async fn a_wrong_key_is_a_refusal_and_a_hang_up_is_an_unfinished_handshake() {
        use crate::cluster::link::FailedAt;
        let (_, accept) = pair(&ClusterKey::generate(), &ClusterKey::generate()).await;
        assert_eq!(
            FailedAt::of_handshake(&accept.err().unwrap()),
            FailedAt::HandshakeRefused
        );

        let key = ClusterKey::generate();
        let (left, mut right) = tokio::io::duplex(1 << 16);
        drop(left);
        let hung_up = handshake(&mut right, &Keyring::new(key.clone()), false)
            .await
            .err()
            .unwrap();
        assert!(matches!(hung_up, LinkError::ClosedDuringHandshake), "{hung_up:?}");
        assert_eq!(FailedAt::of_handshake(&hung_up), FailedAt::HandshakeUnfinished);
        assert_eq!(
            FailedAt::of_handshake(&LinkError::HandshakeTimeout(HANDSHAKE_TIMEOUT)),
            FailedAt::HandshakeUnfinished
        );
    }

    #[tokio::test]
    async fn oversized_frames_and_messages_are_refused() {
        let key = ClusterKey::generate();
        let (mut left, mut right) = tokio::io::duplex(1 << 16);
        let k2 = key.clone();
        let accept = tokio::spawn(async move {
            let t = handshake(&mut right, &Keyring::new(k2.clone()), false).await.unwrap();
            t.receiver(right, 1000).recv().await
        });
        let t = handshake(&mut left, &Keyring::new(key.clone()), true).await.unwrap();
        let mut tx = t.sender(left);
        tx.send(&[7u8; 1001]).await.unwrap();
        tx.flush().await.unwrap();
        match accept.await.unwrap() {
            Err(LinkError::FrameTooLarge { size: 1001, max: 1000 }) => {}
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }

        // Before the handshake, a length over the Noise limit is refused unread.
        let (mut left, mut right) = tokio::io::duplex(1 << 16);
        left.write_all(&(10u32 << 20).to_be_bytes()).await.unwrap();
        match handshake(&mut right, &Keyring::new(key.clone()), false).await {
            Err(LinkError::MessageTooLarge { size }) => assert_eq!(size, 10 << 20),
            other => panic!("expected MessageTooLarge, got {:?}", other.err()),
        }
        // Garbage of a plausible length never completes a handshake.
        let (mut left, mut right) = tokio::io::duplex(1 << 16);
        left.write_all(&40u32.to_be_bytes()).await.unwrap();
        left.write_all(&[0xAB; 40]).await.unwrap();
        drop(left);
        assert!(handshake(&mut right, &Keyring::new(key.clone()), false).await.is_err());
    }
}
