//! The listener registry: the master's `SO_REUSEPORT` sockets, one per
//! (address, slot).
//!
//! A worker never owns a listening socket. It gets a duplicate (`dup(2)`) of
//! the one its slot holds here, so when the worker dies the socket, and the
//! connections the kernel has queued on it, stay. The slot's next generation
//! gets a duplicate of the same socket and accepts them. Closing a
//! `SO_REUSEPORT` socket drops its accept queue on Linux (unless
//! `net.ipv4.tcp_migrate_req` is set, which it is not by default), and the
//! kernel keeps queueing new connections on a socket for as long as it is
//! open. So a slot's sockets never close while the cluster runs: when a slot
//! retires (a shrink) or gives up, a surviving slot *adopts* them, and its
//! workers' listeners accept from them too; a slot that comes back takes
//! them back. They close when the cluster stops.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use forkless_worker::rt::host::{Adopted, Listening};
use forkless_worker::rt::Errors as _;
use forkless_worker::Error;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;

use super::local_addr;

/// A listening socket as an upgrade hands it to the next process: the
/// address asked for and the one bound, the slot it belongs to (`None`: one
/// socket every slot shares, as systemd passed it), and the socket.
pub(crate) struct Handed {
    pub(crate) requested: SocketAddr,
    pub(crate) bound: SocketAddr,
    pub(crate) slot: Option<usize>,
    pub(crate) socket: Socket,
}

pub(crate) struct Registry {
    backlog: i32,
    groups: Vec<Group>,
    /// Sockets the process this one upgraded handed over, not yet claimed
    /// by a `listen`: a `listen` of their address takes them, every slot's
    /// at once, instead of binding.
    handed: Vec<Handed>,
    /// Listening sockets inherited through systemd socket activation
    /// (`LISTEN_FDS`), not yet claimed by a `listen`.
    inherited: Vec<(SocketAddr, Socket)>,
    /// Retired slots, with the slots that may adopt their sockets: a worker
    /// of a retired slot that listens late (it was still starting when its
    /// slot retired) must not leave a socket that nobody accepts from.
    retired: HashMap<usize, Vec<usize>>,
    /// Steering by CPU ([`super::steering`]): slot `i`'s sockets take the
    /// connections that arrive on `cores[i % cores.len()]`, the core its
    /// worker is pinned to. Empty: off, the kernel's hash decides.
    cores: Vec<usize>,
    closed: bool,
}

/// The sockets of one address, one per slot, all in one reuseport group;
/// or one inherited socket that every slot shares.
struct Group {
    /// The address as asked for (port 0 stays 0 here).
    requested: SocketAddr,
    /// The address bound (with the port the kernel picked for port 0).
    bound: SocketAddr,
    sockets: HashMap<usize, Socket>,
    /// An inherited socket: every slot accepts from it (one shared queue).
    shared: Option<Socket>,
    /// Retired slot -> the slot that accepts from its socket for it.
    adopted: HashMap<usize, usize>,
    /// Per slot, what it adopts, as its listeners watch it.
    adopters: HashMap<usize, watch::Sender<Adopted>>,
}

impl Group {
    fn new(requested: SocketAddr, bound: SocketAddr) -> Group {
        Group {
            requested,
            bound,
            sockets: HashMap::new(),
            shared: None,
            adopted: HashMap::new(),
            adopters: HashMap::new(),
        }
    }

    /// Tells `adopter`'s listeners which sockets it accepts from now.
    fn publish(&mut self, adopter: usize) {
        let mut retired: Vec<usize> = self
            .adopted
            .iter()
            .filter(|(_, a)| **a == adopter)
            .map(|(r, _)| *r)
            .collect();
        retired.sort_unstable();
        let list: Adopted = retired
            .iter()
            .filter_map(|r| self.sockets.get(r))
            .filter_map(|socket| match socket.try_clone() {
                Ok(dup) => Some(Arc::new(std::net::TcpListener::from(dup))),
                Err(e) => {
                    tracing::error!(error = %e, "cannot duplicate a socket to hand over");
                    None
                }
            })
            .collect();
        self.adopters
            .entry(adopter)
            .or_insert_with(|| watch::channel(Adopted::from([])).0)
            .send_replace(list);
    }

    /// Hands the sockets of `retired` (its own, and those it adopted) to the
    /// slot of `survivors` that adopts the fewest.
    fn retire(&mut self, retired: usize, survivors: &[usize]) {
        let mut orphans: Vec<usize> = self
            .adopted
            .iter()
            .filter(|(_, a)| **a == retired)
            .map(|(r, _)| *r)
            .collect();
        if self.sockets.contains_key(&retired) {
            orphans.push(retired);
        }
        if orphans.is_empty() {
            return;
        }
        let mut touched = vec![retired];
        for orphan in orphans {
            let adopter = survivors
                .iter()
                .copied()
                .filter(|s| *s != retired)
                .min_by_key(|s| self.adopted.values().filter(|a| *a == s).count());
            match adopter {
                Some(adopter) => {
                    tracing::info!(bound = %self.bound, slot = orphan, adopter, "a surviving worker accepts for a retired slot");
                    self.adopted.insert(orphan, adopter);
                    touched.push(adopter);
                }
                None => {
                    // Nobody left to accept: close it.
                    self.adopted.remove(&orphan);
                    self.sockets.remove(&orphan);
                }
            }
        }
        for slot in touched {
            self.publish(slot);
        }
    }

    /// A retired slot runs again: it takes its socket back.
    fn restore(&mut self, slot: usize) {
        if let Some(adopter) = self.adopted.remove(&slot) {
            self.publish(adopter);
        }
    }
}

impl Registry {
    /// A registry whose sockets have a backlog of `backlog`; `steer_to`:
    /// the cores to steer connections to, one per slot (wrapping around),
    /// as the workers are pinned; empty for no steering.
    pub(crate) fn new(backlog: u32, steer_to: Vec<usize>) -> Registry {
        Registry {
            backlog: i32::try_from(backlog).unwrap_or(i32::MAX),
            groups: Vec::new(),
            handed: Vec::new(),
            inherited: super::activation::inherited_sockets(),
            retired: HashMap::new(),
            cores: steer_to,
            closed: false,
        }
    }

    /// Marks `slot`'s socket of `group` with the slot's core, or clears the
    /// mark: of a retired slot (whichever survivor accepts for it may be on
    /// another core, so the hash had better spread what arrives there), and
    /// when steering is off (a socket handed over by a process that steered
    /// keeps its mark otherwise).
    fn steer(&self, group: usize, slot: usize) {
        let group = &self.groups[group];
        let Some(socket) = group.sockets.get(&slot) else {
            return;
        };
        let core = (!self.cores.is_empty() && !self.retired.contains_key(&slot))
            .then(|| self.cores[slot % self.cores.len()]);
        if let Err(e) = super::steering::set(socket, core) {
            if self.cores.is_empty() {
                tracing::debug!(bound = %group.bound, slot, error = %e, "cannot clear SO_INCOMING_CPU");
            } else {
                tracing::warn!(bound = %group.bound, slot, error = %e, "cannot set SO_INCOMING_CPU: connections to this slot's socket are not steered by CPU");
            }
        }
    }

    /// Marks every slot socket of `group` as [`steer`](Self::steer) does.
    fn steer_group(&self, group: usize) {
        for slot in self.groups[group].sockets.keys() {
            self.steer(group, *slot);
        }
    }

    /// Marks every socket again as this process steers. The sockets an
    /// upgrade hands over are the same sockets in both processes, so their
    /// marks are the last writer's: the new process calls this once the old
    /// one has handed over, and the old one when an upgrade fails.
    pub(crate) fn steer_all(&self) {
        for group in 0..self.groups.len() {
            self.steer_group(group);
        }
    }

    /// Returns a duplicate of the socket of (`addr`, `slot`), creating it on
    /// first use, and what the slot adopts.
    pub(crate) fn listen(
        &mut self,
        slot: usize,
        addr: SocketAddr,
        shown: &str,
    ) -> Result<Listening, Error> {
        if self.closed {
            return Err(Error::stopped(&format!("listen on {shown}")));
        }
        let backlog = self.backlog;
        let index = self
            .groups
            .iter()
            .position(|g| g.requested == addr || g.bound == addr);
        // A group made of sockets handed over: every slot's socket gets this
        // process's mark now, not only the one that listens.
        let mut fresh_from_handover = false;
        let index = match index {
            Some(i) => i,
            None => {
                let inherited = self.inherited.iter().position(|(a, _)| *a == addr);
                let handed = self
                    .handed
                    .iter()
                    .any(|h| h.requested == addr || h.bound == addr);
                let group = if handed {
                    fresh_from_handover = true;
                    self.take_handed(addr)
                } else if let Some(i) = inherited {
                    let (bound, socket) = self.inherited.swap_remove(i);
                    tracing::info!(%bound, "listening on a socket inherited from systemd");
                    let mut group = Group::new(addr, bound);
                    group.shared = Some(socket);
                    group
                } else {
                    // First socket for this address: make sure nobody else
                    // holds it. A socket that has SO_REUSEPORT would
                    // otherwise silently join another process's group (a
                    // second instance of the same service, say) and split
                    // its traffic.
                    if addr.port() != 0 {
                        probe(addr).map_err(|e| Error::bind(shown, e))?;
                    }
                    let socket = bind(addr, backlog).map_err(|e| Error::bind(shown, e))?;
                    let bound = local_addr(&socket).map_err(|e| Error::bind(shown, e))?;
                    tracing::debug!(%bound, slot, "listening");
                    let mut group = Group::new(addr, bound);
                    group.sockets.insert(slot, socket);
                    group
                };
                self.groups.push(group);
                self.groups.len() - 1
            }
        };
        let group = &mut self.groups[index];
        if group.shared.is_none() && !group.sockets.contains_key(&slot) {
            let socket = bind(group.bound, backlog).map_err(|e| Error::bind(shown, e))?;
            group.sockets.insert(slot, socket);
            if let Some(survivors) = self.retired.get(&slot) {
                // Too late for this slot: a survivor accepts from it at once.
                group.retire(slot, survivors);
            }
        }
        if fresh_from_handover {
            self.steer_group(index);
        } else {
            self.steer(index, slot);
        }
        let group = &mut self.groups[index];
        let socket = match &group.shared {
            Some(shared) => shared,
            None => &group.sockets[&slot],
        };
        let dup = socket.try_clone().map_err(|e| Error::bind(shown, e))?;
        let adopted = group
            .adopters
            .entry(slot)
            .or_insert_with(|| watch::channel(Adopted::from([])).0)
            .subscribe();
        Ok(Listening {
            listener: dup.into(),
            adopted,
        })
    }

    /// Duplicates of every socket this registry holds, for the process an
    /// upgrade starts: each slot's (retired slots' included), the shared
    /// ones systemd passed, and those handed to this process and not claimed
    /// yet.
    pub(crate) fn hand_over(&self) -> io::Result<Vec<Handed>> {
        let mut out = Vec::new();
        for group in &self.groups {
            if let Some(shared) = &group.shared {
                out.push(Handed {
                    requested: group.requested,
                    bound: group.bound,
                    slot: None,
                    socket: shared.try_clone()?,
                });
            }
            for (slot, socket) in &group.sockets {
                out.push(Handed {
                    requested: group.requested,
                    bound: group.bound,
                    slot: Some(*slot),
                    socket: socket.try_clone()?,
                });
            }
        }
        for handed in &self.handed {
            out.push(Handed {
                requested: handed.requested,
                bound: handed.bound,
                slot: handed.slot,
                socket: handed.socket.try_clone()?,
            });
        }
        for (bound, socket) in &self.inherited {
            out.push(Handed {
                requested: *bound,
                bound: *bound,
                slot: None,
                socket: socket.try_clone()?,
            });
        }
        Ok(out)
    }

    /// Takes the sockets the upgraded process handed over. Slots of theirs
    /// that this cluster does not have (it has `size` slots) are retired at
    /// once: a surviving slot accepts from their sockets, so the
    /// connections queued there are served.
    pub(crate) fn take_over(&mut self, handed: Vec<Handed>, size: usize) {
        let survivors: Vec<usize> = (0..size).collect();
        for slot in handed.iter().filter_map(|h| h.slot).filter(|s| *s >= size) {
            self.retired.insert(slot, survivors.clone());
        }
        self.handed = handed;
    }

    /// Closes the sockets handed over that no `listen` claimed: the new
    /// build listens on none of their addresses (said once its first
    /// workers are ready). Left open, they would queue connections that
    /// nobody accepts once the old process closes its copies; closed, a
    /// client is refused. A retired slot's socket of an address that is
    /// listened on was claimed with it, and is drained by a survivor.
    pub(crate) fn close_unclaimed(&mut self) {
        for handed in self.handed.drain(..) {
            tracing::info!(bound = %handed.bound, slot = ?handed.slot, "this build does not listen on a socket of the old process's: it closes");
        }
    }

    /// Makes the group of `addr` from the sockets handed over for it.
    fn take_handed(&mut self, addr: SocketAddr) -> Group {
        let (mine, rest): (Vec<Handed>, Vec<Handed>) = std::mem::take(&mut self.handed)
            .into_iter()
            .partition(|h| h.requested == addr || h.bound == addr);
        self.handed = rest;
        let bound = mine.first().map_or(addr, |h| h.bound);
        let mut group = Group::new(addr, bound);
        for handed in mine {
            match handed.slot {
                Some(slot) => {
                    group.sockets.insert(slot, handed.socket);
                }
                None => group.shared = Some(handed.socket),
            }
        }
        tracing::info!(%bound, sockets = group.sockets.len() + usize::from(group.shared.is_some()), "listening on sockets handed over by the upgraded process");
        let retired: Vec<(usize, Vec<usize>)> = self
            .retired
            .iter()
            .filter(|(slot, _)| group.sockets.contains_key(slot))
            .map(|(slot, survivors)| (*slot, survivors.clone()))
            .collect();
        for (slot, survivors) in retired {
            group.retire(slot, &survivors);
        }
        group
    }

    /// A slot stops running (a shrink, or it gave up): a surviving slot
    /// accepts from its sockets from now on, so that nothing the kernel
    /// queues there is lost. With no survivor, its sockets close.
    pub(crate) fn retire_slot(&mut self, slot: usize, survivors: &[usize]) {
        self.retired.insert(slot, survivors.to_vec());
        for group in &mut self.groups {
            group.retire(slot, survivors);
        }
        for group in 0..self.groups.len() {
            self.steer(group, slot);
        }
    }

    /// A retired slot runs again and takes its sockets back.
    pub(crate) fn restore_slot(&mut self, slot: usize) {
        self.retired.remove(&slot);
        for group in &mut self.groups {
            group.restore(slot);
        }
        for group in 0..self.groups.len() {
            self.steer(group, slot);
        }
    }

    /// The ports the cluster listens on.
    pub(crate) fn ports(&self) -> std::collections::HashSet<u16> {
        self.groups.iter().map(|g| g.bound.port()).collect()
    }

    /// Closes every socket; `listen` fails from now on.
    pub(crate) fn close_all(&mut self) {
        self.closed = true;
        self.groups.clear();
        self.handed.clear();
        self.inherited.clear();
    }
}

fn new_socket(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // Rebinding over connections in TIME_WAIT after a restart must work.
    socket.set_reuse_address(true)?;
    Ok(socket)
}

/// Binds a throwaway socket without SO_REUSEPORT: it fails with EADDRINUSE if
/// any socket is listening on `addr`, reuseport or not.
fn probe(addr: SocketAddr) -> io::Result<()> {
    let socket = new_socket(addr)?;
    socket.bind(&addr.into())
}

fn bind(addr: SocketAddr, backlog: i32) -> io::Result<Socket> {
    let socket = new_socket(addr)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    // Shared by every duplicate: what tokio needs.
    socket.set_nonblocking(true)?;
    Ok(socket)
}

#[cfg(test)]
mod tests;
