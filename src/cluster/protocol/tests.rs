//! The link protocol's encoding: round trips, hostile bytes, and how a node
//! reads what a newer or older node sends.

use super::*;

fn id() -> Arc<NodeId> {
    Arc::new(NodeId::new(
        "a",
        "10.0.0.1:7946".parse().unwrap(),
        5,
        [("dc".to_string(), "ams".to_string())].into(),
    ))
}

fn record() -> Record {
    Record {
        id: id(),
        incarnation: 3,
        status: Status::Suspect,
    }
}

#[test]
fn frames_round_trip_and_bad_ones_are_named() {
    let entry = Arc::new(Entry {
        key: "k".into(),
        version: Version {
            clock: 7,
            origin: "a".into(),
        },
        body: Bytes::from_static(b"{}"),
    });
    let frames = [
        Frame::Hello(Hello {
            protocol: ProtocolRange { min: 3, max: 5 },
            cluster: "c".into(),
            id: id(),
            incarnation: 2,
            identity: None,
            admission: None,
            proof: None,
        }),
        Frame::Msgs(vec![
            Msg::Probe(ProbeMsg::Ping { seq: 1 }),
            Msg::Tree(TreeMsg::Gossip {
                id: u128::MAX,
                hops: 3,
                payload: Payload::Update {
                    record: record(),
                    accuser: Some("b".into()),
                },
            }),
            Msg::Tree(TreeMsg::Gossip {
                id: 9,
                hops: 0,
                payload: Payload::Envelope(Bytes::from_static(b"{}")),
            }),
            Msg::Tree(TreeMsg::Gossip {
                id: 10,
                hops: 1,
                payload: Payload::Entry {
                    set: SET_DEPLOYMENTS,
                    entry: entry.clone(),
                },
            }),
            Msg::Link(LinkMsg::JoinTable {
                records: vec![record()],
            }),
            Msg::Sync(SyncMsg::Digest {
                sets: vec![(SET_MEMBERS, vec![1, 2, 3]), (SET_STATES, vec![4])],
            }),
            Msg::Sync(SyncMsg::Differ {
                set: SET_STATES,
                buckets: vec![1],
                have: Items::Versions(vec![("a".into(), 9)]),
            }),
            Msg::Sync(SyncMsg::Items {
                set: SET_DEPLOYMENTS,
                items: Items::Entries(vec![entry]),
            }),
            Msg::Link(LinkMsg::Refused(Refusal::NameTaken {
                name: "a".into(),
                holder: "10.0.0.2:7946".parse().unwrap(),
                holder_boot: 1,
            })),
            Msg::Link(LinkMsg::Busy {
                peers: vec![("b".into(), "10.0.0.3:7946".parse().unwrap())],
            }),
        ]),
        Frame::Msgs(Vec::new()),
        Frame::Direct(Bytes::from_static(b"{\"v\":1}")),
    ];
    for f in frames {
        let bytes = f.encode();
        assert_eq!(bytes.len(), f.encoded_len(), "{}", f.kind());
        assert_eq!(Frame::decode(bytes).unwrap(), f);
    }
    assert!(matches!(Frame::decode(Bytes::new()), Err(ProtocolError::Empty)));
    assert!(matches!(
        Frame::decode(Bytes::from_static(b"\x09x")),
        Err(ProtocolError::UnknownKind(9))
    ));
    let err = Frame::decode(Bytes::from_static(b"\x01\xff\xff")).unwrap_err();
    assert!(err.to_string().starts_with("malformed hello frame"), "{err}");
}

#[test]
fn a_truncated_or_hostile_batch_is_an_error_not_a_panic() {
    let good = Frame::Msgs(vec![
        Msg::Tree(TreeMsg::IHave {
            ids: vec![(1, 1), (2, 2)],
        }),
        Msg::Probe(ProbeMsg::Ack { seq: 4 }),
    ])
    .encode();
    for cut in 1..good.len() {
        let _ = Frame::decode(good.slice(..cut));
    }
    // A count that claims four billion messages.
    let hostile = Bytes::from_static(b"\x02\xff\xff\xff\xff\x0f");
    assert!(Frame::decode(hostile).is_err());
    // A message longer than what is left.
    assert!(Frame::decode(Bytes::from_static(b"\x02\x01\x09\x01")).is_err());
    // Bytes after the last message.
    let mut tail = good.to_vec();
    tail.push(0);
    assert!(Frame::decode(Bytes::from(tail)).is_err());
}

/// Appends one raw message (its length, then its bytes) to a batch.
fn batch(raw: &[&[u8]]) -> Bytes {
    let mut out = vec![KIND_MSGS];
    put_varint(&mut out, raw.len() as u64);
    for m in raw {
        put_varint(&mut out, m.len() as u64);
        out.extend_from_slice(m);
    }
    Bytes::from(out)
}

#[test]
fn messages_a_node_does_not_know_are_skipped_and_the_rest_read() {
    let ping = postcard::to_allocvec(&Msg::Probe(ProbeMsg::Ping { seq: 7 })).unwrap();
    let ack = postcard::to_allocvec(&Msg::Probe(ProbeMsg::Ack { seq: 8 })).unwrap();
    // A group this node does not have (9), a kind past the probe group's
    // four (1, 99), and a known kind whose payload is cut short.
    let new_group: &[u8] = &[9, 0, 1, 2, 3];
    let new_kind: &[u8] = &[1, 99, 42];
    let cut: &[u8] = &[2, 0]; // a beacon with no fields
    let frame = Frame::decode(batch(&[&ping, new_group, new_kind, cut, &ack])).unwrap();
    let Frame::Msgs(msgs) = frame else { panic!() };
    assert_eq!(msgs.len(), 5);
    assert_eq!(msgs[0], Msg::Probe(ProbeMsg::Ping { seq: 7 }));
    assert!(matches!(&msgs[1], Msg::Skipped { group: 9, kind: 0, reason } if reason.contains("does not know")));
    assert!(matches!(&msgs[2], Msg::Skipped { group: 1, kind: 99, reason } if reason.contains("does not know")));
    assert!(matches!(&msgs[3], Msg::Skipped { group: 2, kind: 0, reason } if reason.contains("unreadable")));
    assert_eq!(msgs[4], Msg::Probe(ProbeMsg::Ack { seq: 8 }));
}

#[test]
fn fields_appended_by_a_newer_node_are_ignored() {
    let mut ping = postcard::to_allocvec(&Msg::Probe(ProbeMsg::Ping { seq: 7 })).unwrap();
    ping.extend_from_slice(&[0xaa, 0xbb]);
    let Frame::Msgs(msgs) = Frame::decode(batch(&[&ping])).unwrap() else {
        panic!()
    };
    assert_eq!(msgs, [Msg::Probe(ProbeMsg::Ping { seq: 7 })]);
}

#[test]
fn hellos_carry_a_range_and_a_version_2_hello_reads_as_two_to_two() {
    // Version 2's hello: protocol, cluster, id, incarnation, nothing more.
    #[derive(Serialize)]
    struct V2Hello {
        protocol: u32,
        cluster: String,
        id: Arc<NodeId>,
        incarnation: u32,
    }
    let v2 = V2Hello {
        protocol: 2,
        cluster: "c".into(),
        id: id(),
        incarnation: 4,
    };
    let mut bytes = vec![KIND_HELLO];
    bytes.extend(postcard::to_allocvec(&v2).unwrap());
    let Frame::Hello(hello) = Frame::decode(Bytes::from(bytes)).unwrap() else {
        panic!()
    };
    assert_eq!(hello.protocol, ProtocolRange { min: 2, max: 2 });
    assert_eq!((hello.cluster.as_str(), hello.incarnation), ("c", 4));
    assert_eq!(ProtocolRange::OURS.agree(hello.protocol), None);

    // A version-2 node reads our hello's first field as the version it
    // checks, so it refuses us by version rather than by garbage.
    let ours = Frame::Hello(Hello {
        protocol: ProtocolRange::OURS,
        cluster: "c".into(),
        id: id(),
        incarnation: 1,
        identity: Some(crate::cluster::node_key::NodeKey::generate().public()),
        admission: None,
        proof: None,
    })
    .encode();
    let (seen, _): (V2HelloRead, _) = postcard::take_from_bytes(&ours[1..]).unwrap();
    assert_eq!(seen.protocol, PROTOCOL_MAX);
    assert_eq!(seen.cluster, "c");

    // Fields a later version appends after the identity are ignored.
    let mut later = Frame::Hello(Hello {
        protocol: ProtocolRange { min: 3, max: 4 },
        cluster: "c".into(),
        id: id(),
        incarnation: 1,
        identity: None,
        admission: None,
        proof: None,
    })
    .encode()
    .to_vec();
    later.extend_from_slice(&[1, 2, 3]);
    let Frame::Hello(hello) = Frame::decode(Bytes::from(later)).unwrap() else {
        panic!()
    };
    assert_eq!(hello.protocol, ProtocolRange { min: 3, max: 4 });
    assert_eq!(hello.identity, None);
}

#[test]
fn a_hello_names_its_identity_and_a_version_3_hello_reads_without_one() {
    let key = crate::cluster::node_key::NodeKey::generate().public();
    let hello = |identity| Hello {
        protocol: ProtocolRange { min: 3, max: 3 },
        cluster: "c".into(),
        id: id(),
        incarnation: 1,
        identity,
        admission: None,
        proof: None,
    };
    let Frame::Hello(back) = Frame::decode(Frame::Hello(hello(Some(key))).encode()).unwrap() else {
        panic!()
    };
    assert_eq!(back.identity, Some(key));
    // An admission travels as its text.
    let admitted = Hello {
        admission: Some("{\"name\":\"n4\"}".into()),
        proof: None,
        ..hello(Some(key))
    };
    let Frame::Hello(back) = Frame::decode(Frame::Hello(admitted.clone()).encode()).unwrap() else {
        panic!()
    };
    assert_eq!(back, admitted);
    // A hello carries its sender's proof; the release before proofs ends
    // its hello after the admission, and the proof reads as none.
    let signer = crate::cluster::node_key::NodeKey::generate();
    let proof = Arc::new(crate::cluster::member_proof::MemberProof::sign(
        "c",
        &signer,
        id(),
        1,
        false,
    ));
    let proven = Hello {
        proof: Some(proof),
        ..hello(Some(signer.public()))
    };
    let Frame::Hello(back) = Frame::decode(Frame::Hello(proven.clone()).encode()).unwrap() else {
        panic!()
    };
    assert_eq!(back, proven);
    assert_eq!(back.proof.unwrap().verify("c"), Ok(()));
    let mut before_proofs = Frame::Hello(hello(Some(key))).encode().to_vec();
    assert_eq!(before_proofs.pop(), Some(0), "an absent proof is one byte");
    let Frame::Hello(back) = Frame::decode(Bytes::from(before_proofs)).unwrap() else {
        panic!()
    };
    assert_eq!((back.identity, back.proof), (Some(key), None));
    // The hello of the release before identities ends after `min`.
    let mut v3 = Frame::Hello(hello(None)).encode().to_vec();
    assert_eq!(v3.pop(), Some(0), "an absent proof is one byte");
    assert_eq!(v3.pop(), Some(0), "an absent admission is one byte");
    assert_eq!(v3.pop(), Some(0), "an absent identity is one byte");
    let Frame::Hello(back) = Frame::decode(Bytes::from(v3)).unwrap() else {
        panic!()
    };
    assert_eq!((back.identity, back.admission), (None, None));
    // Bytes that are not a key are a malformed hello, not an identity.
    let mut bad = Frame::Hello(hello(None)).encode().to_vec();
    bad.truncate(bad.len() - 3);
    bad.push(1);
    let not_a_point = (0..=255u8)
        .map(|b| [b; 32])
        .find(|k| crate::cluster::node_key::NodePublicKey::from_bytes(*k).is_none())
        .expect("some 32 equal bytes are no curve point");
    bad.extend_from_slice(&not_a_point);
    assert!(Frame::decode(Bytes::from(bad)).is_err());
}

#[derive(Deserialize)]
struct V2HelloRead {
    protocol: u32,
    cluster: String,
}

#[test]
fn two_ranges_use_the_highest_version_both_speak() {
    let r = |min, max| ProtocolRange { min, max };
    assert_eq!(r(3, 3).agree(r(3, 4)), Some(3));
    assert_eq!(r(3, 5).agree(r(4, 6)), Some(5));
    assert_eq!(r(3, 3).agree(r(4, 4)), None);
    assert_eq!(r(4, 6).agree(r(2, 3)), None);
    let refusal = Refusal::Protocol { min: 2, max: 2 };
    let text = refusal.to_string();
    assert!(text.contains("speaks link protocol 2, this one 3"), "{text}");
}

#[test]
fn varints_round_trip_and_overlong_ones_are_refused() {
    for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
        let mut out = Vec::new();
        put_varint(&mut out, v);
        assert_eq!(out.len(), varint_len(v), "{v}");
        let mut slice = &out[..];
        assert_eq!(take_varint(&mut slice), Some(v));
        assert!(slice.is_empty());
    }
    let mut overlong: &[u8] = &[0xff; 11];
    assert_eq!(take_varint(&mut overlong), None);
}
