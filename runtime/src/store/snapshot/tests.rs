//! The snapshot's format: what is written reads back the same and nothing
//! past its end, and every stream that is not a whole snapshot of this
//! version (truncated anywhere, garbage, another version, absurd lengths
//! and counts, fields that do not hold together) is a clear error, never a
//! panic or an allocation of what a length claims.

use std::io::{self, ErrorKind};
use std::time::Duration;

use bytes::Bytes;
use forkless_worker::CollectionOptions;

use super::wire::{END, MAGIC, MAX_NAME, VERSION};
use super::{CollectionSnapshot, KeySnapshot, Snapshot};

const HOUR: Duration = Duration::from_secs(3600);

fn key(key: &str, value: &[u8], expires_in: Option<Duration>) -> KeySnapshot {
    KeySnapshot {
        key: key.to_owned(),
        value: Bytes::copy_from_slice(value),
        expires_in,
    }
}

/// A snapshot with every kind of field: default and full options, an
/// empty collection, empty and binary values, keys that are not ASCII,
/// remaining times from a nanosecond to the whole expiry.
fn sample() -> Snapshot {
    let every_byte: Vec<u8> = (0..=255).collect();
    Snapshot {
        collections: vec![
            CollectionSnapshot {
                name: "plain".into(),
                options: CollectionOptions::default(),
                keys: vec![
                    key("counter", b"-41", None),
                    key("empty", b"", None),
                    key("clé ✓", &every_byte, None),
                ],
            },
            CollectionSnapshot {
                name: "sessions ✓".into(),
                options: CollectionOptions {
                    expire_keys: Some(HOUR),
                    max_key_size: 64,
                    max_value_size: 1024,
                    max_hold: Some(Duration::from_millis(1500)),
                    max_keys: Some(10),
                    max_bytes: Some(4096),
                },
                keys: vec![
                    key("a", b"1", Some(Duration::from_nanos(1))),
                    key("b", b"22", Some(HOUR)),
                    key("c", b"333", Some(Duration::from_secs(1799))),
                ],
            },
            CollectionSnapshot {
                name: String::new(),
                options: CollectionOptions::default(),
                keys: Vec::new(),
            },
        ],
    }
}

fn encode(snapshot: &Snapshot) -> Vec<u8> {
    let mut bytes = Vec::new();
    snapshot.write_to(&mut bytes).expect("write");
    bytes
}

fn read(bytes: &[u8]) -> io::Result<Snapshot> {
    Snapshot::read_from(&mut &bytes[..])
}

/// The error of reading `bytes`, which must fail with `kind`.
fn refused(bytes: &[u8], kind: ErrorKind) -> String {
    match read(bytes) {
        Ok(s) => panic!("read a snapshot out of bad bytes: {s:?}"),
        Err(e) => {
            assert_eq!(e.kind(), kind, "{e}");
            let message = e.to_string();
            assert!(message.starts_with("store snapshot: "), "{message}");
            message
        }
    }
}

#[test]
fn a_snapshot_reads_back_as_written_and_not_a_byte_further() {
    let snapshot = sample();
    let mut bytes = encode(&snapshot);
    bytes.extend_from_slice(b"what the socket says next");
    let mut rest = &bytes[..];
    assert_eq!(Snapshot::read_from(&mut rest).expect("read"), snapshot);
    assert_eq!(rest, b"what the socket says next");
    assert_eq!(snapshot.keys(), 6);
    assert!(!snapshot.is_empty());

    let empty = Snapshot::default();
    assert_eq!(read(&encode(&empty)).expect("read"), empty);
    assert!(empty.is_empty());
}

#[test]
fn a_stream_cut_anywhere_is_an_unexpected_eof() {
    let bytes = encode(&sample());
    for cut in 0..bytes.len() {
        let message = refused(&bytes[..cut], ErrorKind::UnexpectedEof);
        assert!(message.contains("ended inside"), "cut at {cut}: {message}");
    }
}

#[test]
fn garbage_and_other_versions_are_invalid_data() {
    let message = refused(b"HTTP/1.1 400 Bad Request\r\n\r\n", ErrorKind::InvalidData);
    assert!(message.contains("magic"), "{message}");

    let mut bytes = encode(&sample());
    bytes[8..12].copy_from_slice(&(VERSION + 1).to_le_bytes());
    let message = refused(&bytes, ErrorKind::InvalidData);
    assert!(
        message.contains(&format!("version {}", VERSION + 1)),
        "{message}"
    );

    let mut bytes = encode(&sample());
    let at = bytes.len() - 8;
    bytes[at..].copy_from_slice(b"FKLSENX\0");
    let message = refused(&bytes, ErrorKind::InvalidData);
    assert!(message.contains("end"), "{message}");

    // Every byte flipped in turn: an error or another valid snapshot,
    // never a panic.
    let bytes = encode(&sample());
    for i in 0..bytes.len() {
        let mut flipped = bytes.clone();
        flipped[i] ^= 0xA5;
        let _ = read(&flipped);
    }
}

/// Bytes of a snapshot, written field by field, for streams `write_to`
/// would never make.
struct Raw(Vec<u8>);

impl Raw {
    /// The magic and version, and `count` collections to come.
    fn header(count: u32) -> Raw {
        Raw(MAGIC.to_vec()).u32(VERSION).u32(count)
    }

    fn u8(mut self, n: u8) -> Raw {
        self.0.push(n);
        self
    }

    fn u32(mut self, n: u32) -> Raw {
        self.0.extend_from_slice(&n.to_le_bytes());
        self
    }

    fn u64(mut self, n: u64) -> Raw {
        self.0.extend_from_slice(&n.to_le_bytes());
        self
    }

    fn bytes(mut self, b: &[u8]) -> Raw {
        self.0.extend_from_slice(b);
        self
    }

    /// A collection's name and options (`expire_keys` in nanoseconds, or
    /// none), up to its longest key and value and its count of keys.
    fn collection(self, name: &str, expire: Option<u64>, longest: u64, count: u64) -> Raw {
        let raw = self.u32(name.len() as u32).bytes(name.as_bytes());
        let raw = match expire {
            None => raw.u8(0),
            Some(nanos) => raw.u8(1).u64(nanos),
        };
        raw.u64(4096)
            .u64(1 << 20)
            .u8(0)
            .u8(0)
            .u8(0)
            .u64(longest)
            .u64(longest)
            .u64(count)
    }

    /// A key and its value, with no remaining time.
    fn key(self, key: &[u8], value: &[u8]) -> Raw {
        self.u64(key.len() as u64)
            .bytes(key)
            .u64(value.len() as u64)
            .bytes(value)
            .u8(0)
    }

    fn end(self) -> Vec<u8> {
        self.bytes(&END).0
    }
}

#[test]
fn the_raw_writer_agrees_with_write_to() {
    let snapshot = Snapshot {
        collections: vec![CollectionSnapshot {
            name: "c".into(),
            options: CollectionOptions::default(),
            keys: vec![key("k", b"vv", None)],
        }],
    };
    let raw = Raw::header(1).collection("c", None, 1, 1);
    // The longest value is 2, the longest key 1: patch the second.
    let mut raw = raw.0;
    let at = raw.len() - 16;
    raw[at..at + 8].copy_from_slice(&2u64.to_le_bytes());
    let bytes = Raw(raw).key(b"k", b"vv").end();
    assert_eq!(bytes, encode(&snapshot));
}

#[test]
fn absurd_lengths_and_counts_fail_without_reserving_what_they_claim() {
    // A name over the format's limit is refused before it is read.
    let bytes = Raw::header(1).u32(u32::MAX).end();
    let message = refused(&bytes, ErrorKind::InvalidData);
    assert!(message.contains(&MAX_NAME.to_string()), "{message}");

    // Counts that claim more than follows: the stream ends first.
    refused(&Raw::header(u32::MAX).0, ErrorKind::UnexpectedEof);
    let bytes = Raw::header(1).collection("c", None, 8, u64::MAX).0;
    refused(&bytes, ErrorKind::UnexpectedEof);

    // A value that claims almost 2^64 bytes, within a declared longest
    // of as much, ends with the stream, having reserved what arrived.
    let bytes = Raw::header(1)
        .collection("c", None, u64::MAX, 1)
        .u64(1)
        .bytes(b"k")
        .u64(u64::MAX - 1)
        .bytes(&[7; 100_000])
        .0;
    refused(&bytes, ErrorKind::UnexpectedEof);

    // A key longer than the collection declared.
    let bytes = Raw::header(1)
        .collection("c", None, 4, 1)
        .key(b"longer", b"v")
        .end();
    let message = refused(&bytes, ErrorKind::InvalidData);
    assert!(message.contains("over its limit of 4"), "{message}");
}

#[test]
fn fields_that_do_not_hold_together_are_invalid_data() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "a tag neither 0 nor 1",
            Raw::header(1).u32(1).bytes(b"c").u8(7).end(),
            "tagged 7",
        ),
        (
            "a key that is not UTF-8",
            Raw::header(1)
                .collection("c", None, 8, 1)
                .key(&[0xff, 0xfe], b"v")
                .end(),
            "UTF-8",
        ),
        (
            "a remaining time in a collection without expiry",
            Raw::header(1)
                .collection("c", None, 8, 1)
                .u64(1)
                .bytes(b"k")
                .u64(1)
                .bytes(b"v")
                .u8(1)
                .u64(1_000)
                .end(),
            "expire_keys",
        ),
        (
            "a remaining time longer than the expiry",
            Raw::header(1)
                .collection("c", Some(1_000), 8, 1)
                .u64(1)
                .bytes(b"k")
                .u64(1)
                .bytes(b"v")
                .u8(1)
                .u64(2_000)
                .end(),
            "expire_keys",
        ),
        (
            "a key without a remaining time in a collection with expiry",
            Raw::header(1)
                .collection("c", Some(1_000), 8, 1)
                .key(b"k", b"v")
                .end(),
            "expire_keys",
        ),
        (
            "options configure refuses",
            Raw::header(1).collection("c", Some(0), 8, 0).end(),
            "expire_keys must be more than zero",
        ),
        (
            "a collection twice",
            Raw::header(2)
                .collection("c", None, 0, 0)
                .collection("c", None, 0, 0)
                .end(),
            "appears twice",
        ),
    ];
    for (what, bytes, says) in cases {
        let message = refused(&bytes, ErrorKind::InvalidData);
        assert!(message.contains(says), "{what}: {message}");
        assert!(
            !message.contains("store snapshot: store snapshot"),
            "{message}"
        );
    }
}

#[test]
fn what_the_format_cannot_carry_is_refused_at_write() {
    let snapshot = Snapshot {
        collections: vec![CollectionSnapshot {
            name: "n".repeat(MAX_NAME + 1),
            options: CollectionOptions::default(),
            keys: Vec::new(),
        }],
    };
    let e = snapshot.write_to(&mut Vec::new()).expect_err("refused");
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
}

#[test]
fn check_refuses_what_an_import_cannot_load() {
    assert!(sample().check().is_ok());
    let mut twice = sample();
    twice.collections.push(twice.collections[0].clone());
    let e = twice.check().expect_err("refused");
    assert!(
        e.is_invalid_value() && e.to_string().contains("twice"),
        "{e}"
    );
    let mut zero = sample();
    zero.collections[1].keys[0].expires_in = Some(Duration::ZERO);
    let e = zero.check().expect_err("refused");
    assert!(e.is_invalid_value(), "{e}");
    let mut options = sample();
    options.collections[0].options.max_key_size = 0;
    assert!(options.check().is_err());
}
