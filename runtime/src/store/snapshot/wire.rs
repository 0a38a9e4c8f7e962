//! A [`Snapshot`]'s bytes, as one process writes them to another: version
//! 1 of the format, hand-framed (every field has a fixed size or a length
//! before it), integers little-endian.
//!
//! ```text
//! snapshot    = "FKLSNAP\0" version:u32 count:u32 collection{count} "FKLSEND\0"
//! collection  = name_len:u32 name options longest_key:u64 longest_value:u64
//!               count:u64 key{count}
//! options     = expire_keys:dur? max_key_size:u64 max_value_size:u64
//!               max_hold:dur? max_keys:u64? max_bytes:u64?
//! key         = key_len:u64 key value_len:u64 value expires_in:dur?
//! x?          = 0:u8 | 1:u8 x
//! dur         = nanoseconds:u64
//! ```
//!
//! Names and keys are UTF-8. A name is at most [`MAX_NAME`] bytes; a key at
//! most its collection's `longest_key` and a value at most its
//! `longest_value`, declared before them (the longest the collection holds:
//! within its `max_key_size` and `max_value_size`, unless those were
//! lowered after a longer one was written). The options and each key's
//! remaining time are checked as they are read ([`Snapshot::check`]).
//!
//! Reading never trusts a length or a count with memory: nothing is
//! reserved ahead of what arrived, and bytes are read in chunks of at most
//! [`CHUNK`], so a stream that claims more than it holds fails at its end
//! having cost at most what it sent. A wrong magic, another version, a
//! length over its limit, a tag that is not 0 or 1, text that is not UTF-8,
//! options `configure` would refuse and a repeated collection are
//! [`io::ErrorKind::InvalidData`]; a stream that ends early is
//! [`io::ErrorKind::UnexpectedEof`]. Reading stops at the end marker and
//! reads nothing after it. A reader that waits on a peer that stops
//! writing without closing waits as its stream does: give a socket a read
//! timeout.
//!
//! A new field in `CollectionOptions` does not compile here until the
//! format carries it (the options are destructured whole): then bump
//! [`VERSION`].

use std::collections::HashSet;
use std::io::{self, BufWriter, Read, Write};
use std::time::Duration;

use bytes::Bytes;
use forkless_worker::CollectionOptions;

use super::{CollectionSnapshot, KeySnapshot, Snapshot};
use crate::store::checks::shorten;

/// The first bytes of a snapshot.
pub(super) const MAGIC: [u8; 8] = *b"FKLSNAP\0";
/// The last bytes of a snapshot.
pub(super) const END: [u8; 8] = *b"FKLSEND\0";
/// The version this build writes and reads.
pub(super) const VERSION: u32 = 1;
/// The longest collection name, in bytes.
pub(super) const MAX_NAME: usize = 64 * 1024;
/// The most bytes read into memory in one step.
const CHUNK: usize = 64 * 1024;
/// The most entries reserved ahead of reading them.
const RESERVE: usize = 1024;

impl Snapshot {
    /// Writes the snapshot to `w`, buffered, and flushes it.
    ///
    /// # Errors
    ///
    /// The errors of `w`; [`io::ErrorKind::InvalidInput`] for a collection
    /// name over [`MAX_NAME`] bytes or a duration that does not fit the
    /// format (neither comes out of an export: names are made by code, and
    /// durations are at most a year).
    pub(crate) fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        let mut w = BufWriter::new(w);
        w.write_all(&MAGIC)?;
        w.write_all(&VERSION.to_le_bytes())?;
        let count = u32::try_from(self.collections.len())
            .map_err(|_| unwritable("more than 4,294,967,295 collections".into()))?;
        w.write_all(&count.to_le_bytes())?;
        for c in &self.collections {
            write_collection(&mut w, c)?;
        }
        w.write_all(&END)?;
        w.flush()
    }

    /// Reads a snapshot written by [`write_to`](Snapshot::write_to) from
    /// `r`, up to its end marker and not a byte further. Reads field by
    /// field: give it a buffered reader.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidData`] for bytes that are not a snapshot of
    /// this version (the message says what and where),
    /// [`io::ErrorKind::UnexpectedEof`] for a stream that ends inside one,
    /// and the errors of `r`.
    pub(crate) fn read_from(r: &mut impl Read) -> io::Result<Snapshot> {
        let mut r = Reader { r };
        if r.array::<8>("the magic")? != MAGIC {
            return Err(garbage("it does not start with the magic FKLSNAP".into()));
        }
        let version = r.u32("the version")?;
        if version != VERSION {
            return Err(garbage(format!(
                "it is version {version}; this build reads version {VERSION} (were the two \
                 processes built from releases too far apart?)"
            )));
        }
        let count = r.u32("the number of collections")?;
        let mut collections =
            Vec::with_capacity(usize::try_from(count).unwrap_or(RESERVE).min(RESERVE));
        let mut names = HashSet::new();
        for _ in 0..count {
            let c = r.collection()?;
            if !names.insert(c.name.clone()) {
                return Err(garbage(format!(
                    "collection {:?} appears twice",
                    shorten(&c.name)
                )));
            }
            collections.push(c);
        }
        if r.array::<8>("the end marker")? != END {
            return Err(garbage("it does not end with the marker FKLSEND".into()));
        }
        Ok(Snapshot { collections })
    }
}

fn write_collection(w: &mut impl Write, c: &CollectionSnapshot) -> io::Result<()> {
    if c.name.len() > MAX_NAME {
        return Err(unwritable(format!(
            "collection {:?} has a name of {} bytes, over the format's {MAX_NAME}",
            shorten(&c.name),
            c.name.len()
        )));
    }
    w.write_all(&(c.name.len() as u32).to_le_bytes())?;
    w.write_all(c.name.as_bytes())?;
    let CollectionOptions {
        expire_keys,
        max_key_size,
        max_value_size,
        max_hold,
        max_keys,
        max_bytes,
    } = &c.options;
    write_duration(w, *expire_keys)?;
    write_u64(w, *max_key_size as u64)?;
    write_u64(w, *max_value_size as u64)?;
    write_duration(w, *max_hold)?;
    write_option(w, max_keys.map(|n| n as u64))?;
    write_option(w, max_bytes.map(|n| n as u64))?;
    let longest_key = c.keys.iter().map(|k| k.key.len()).max().unwrap_or(0);
    let longest_value = c.keys.iter().map(|k| k.value.len()).max().unwrap_or(0);
    write_u64(w, longest_key as u64)?;
    write_u64(w, longest_value as u64)?;
    write_u64(w, c.keys.len() as u64)?;
    for k in &c.keys {
        write_u64(w, k.key.len() as u64)?;
        w.write_all(k.key.as_bytes())?;
        write_u64(w, k.value.len() as u64)?;
        w.write_all(&k.value)?;
        write_duration(w, k.expires_in)?;
    }
    Ok(())
}

fn write_u64(w: &mut impl Write, n: u64) -> io::Result<()> {
    w.write_all(&n.to_le_bytes())
}

fn write_option(w: &mut impl Write, n: Option<u64>) -> io::Result<()> {
    match n {
        None => w.write_all(&[0]),
        Some(n) => {
            w.write_all(&[1])?;
            write_u64(w, n)
        }
    }
}

fn write_duration(w: &mut impl Write, d: Option<Duration>) -> io::Result<()> {
    let nanos = match d {
        None => None,
        Some(d) => Some(u64::try_from(d.as_nanos()).map_err(|_| {
            unwritable(format!(
                "a duration of {d:?} is over the format's 584 years"
            ))
        })?),
    };
    write_option(w, nanos)
}

fn unwritable(message: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("store snapshot: {message}"),
    )
}

/// The error of bytes that are not a snapshot.
fn garbage(message: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("store snapshot: {message}"),
    )
}

/// The error of a snapshot whose fields are read but do not fit together
/// ([`Snapshot::check`]'s message says what).
fn invalid_data(e: forkless_worker::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Reads the fields of a snapshot, each named for the errors.
struct Reader<'a, R: Read> {
    r: &'a mut R,
}

impl<R: Read> Reader<'_, R> {
    fn fill(&mut self, buf: &mut [u8], what: &str) -> io::Result<()> {
        self.r.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("store snapshot: the stream ended inside {what}"),
            ),
            kind => io::Error::new(kind, format!("store snapshot: reading {what}: {e}")),
        })
    }

    fn array<const N: usize>(&mut self, what: &str) -> io::Result<[u8; N]> {
        let mut buf = [0; N];
        self.fill(&mut buf, what)?;
        Ok(buf)
    }

    fn u32(&mut self, what: &str) -> io::Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> io::Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A `u64` that must fit a `usize`.
    fn size(&mut self, what: &str) -> io::Result<usize> {
        let n = self.u64(what)?;
        usize::try_from(n).map_err(|_| garbage(format!("{what} of {n} does not fit this machine")))
    }

    fn option<T>(
        &mut self,
        what: &str,
        value: impl FnOnce(&mut Self) -> io::Result<T>,
    ) -> io::Result<Option<T>> {
        match self.array::<1>(what)? {
            [0] => Ok(None),
            [1] => value(self).map(Some),
            [tag] => Err(garbage(format!(
                "{what} is tagged {tag}, neither 0 (none) nor 1 (some)"
            ))),
        }
    }

    fn duration(&mut self, what: &str) -> io::Result<Option<Duration>> {
        self.option(what, |r| r.u64(what).map(Duration::from_nanos))
    }

    /// `len` bytes, `len` at most `max`, read a chunk at a time.
    fn bytes(&mut self, len: usize, max: usize, what: &str) -> io::Result<Vec<u8>> {
        if len > max {
            return Err(garbage(format!(
                "{what} is {len} bytes long, over its limit of {max}"
            )));
        }
        let mut buf = Vec::new();
        while buf.len() < len {
            let start = buf.len();
            buf.resize(start + (len - start).min(CHUNK), 0);
            self.fill(&mut buf[start..], what)?;
        }
        Ok(buf)
    }

    fn text(&mut self, len: usize, max: usize, what: &str) -> io::Result<String> {
        String::from_utf8(self.bytes(len, max, what)?)
            .map_err(|_| garbage(format!("{what} is not UTF-8")))
    }

    fn collection(&mut self) -> io::Result<CollectionSnapshot> {
        let len = self.u32("a collection's name length")? as usize;
        let name = self.text(len, MAX_NAME, "a collection's name")?;
        let label = shorten(&name);
        let what = |field: &str| format!("the {field} of collection {label:?}");
        let options = CollectionOptions {
            expire_keys: self.duration(&what("expire_keys"))?,
            max_key_size: self.size(&what("max_key_size"))?,
            max_value_size: self.size(&what("max_value_size"))?,
            max_hold: self.duration(&what("max_hold"))?,
            max_keys: self.option(&what("max_keys"), |r| r.size(&what("max_keys")))?,
            max_bytes: self.option(&what("max_bytes"), |r| r.size(&what("max_bytes")))?,
        };
        let mut c = CollectionSnapshot {
            name,
            options,
            keys: Vec::new(),
        };
        c.check().map_err(invalid_data)?;
        let longest_key = self.size(&what("longest key"))?;
        let longest_value = self.size(&what("longest value"))?;
        let count = self.u64(&what("number of keys"))?;
        c.keys
            .reserve(usize::try_from(count).unwrap_or(RESERVE).min(RESERVE));
        for _ in 0..count {
            let len = self.size(&what("next key's length"))?;
            let key = self.text(len, longest_key, &what("next key"))?;
            let what = |field: &str| format!("the {field} of key {:?}", shorten(&key));
            let len = self.size(&what("value length"))?;
            let value = Bytes::from(self.bytes(len, longest_value, &what("value"))?);
            let expires_in = self.duration(&what("remaining time"))?;
            let k = KeySnapshot {
                key,
                value,
                expires_in,
            };
            k.check(&c.name, c.options.expire_keys)
                .map_err(invalid_data)?;
            c.keys.push(k);
        }
        Ok(c)
    }
}
