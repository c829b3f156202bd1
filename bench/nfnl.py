"""Reads nf_tables state over netlink, for the benchmarks (root, Linux).

`nft` 1.0.6 fetches every element of every set in the table before it answers
`nft get element` (1.2-3.4 s at 10,000 Services x 5 in our table) and `nft list
map` prints and parses the whole map (0.24 s for 10,000 elements), so polling
with the nft binary would measure nft, not the proxy. This module asks the
kernel directly, from a socket opened inside the proxy's network namespace:

  Nfnl(netns).chain_exists(family, table, chain)      one NFT_MSG_GETCHAIN
  Nfnl(netns).get_elements(family, table, set, keys)  one NFT_MSG_GETSETELEM
                                                      for the given keys ->
                                                      {key: data or None}
  Nfnl(netns).dump_elements(family, table, set)       a dump of the set:
                                                      [(key, data)]
  Nfnl(netns).count_elements(family, table, set, keep) the same, counting the
                                                      keys with keep(key) true

Keys and data are the kernel's bytes: each field of a concatenation padded
to 4 bytes (see `concat`). Only reads; nothing here changes the ruleset.
"""
import contextlib
import ctypes
import errno
import os
import socket
import struct

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETCHAIN = 4
NFT_MSG_GETSETELEM = 13
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR = 0x1, 0x4, 0x300, 0x10
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLA_F_NESTED = 0x8000
# NFTA_CHAIN_*, NFTA_SET_ELEM_LIST_*, NFTA_LIST_ELEM, NFTA_SET_ELEM_*, NFTA_DATA_VALUE
CHAIN_TABLE, CHAIN_NAME = 1, 3
LIST_TABLE, LIST_SET, LIST_ELEMENTS = 1, 2, 3
LIST_ELEM = 1
ELEM_KEY, ELEM_DATA = 1, 2
DATA_VALUE = 1
FAMILY = {"ip": socket.AF_INET, "ip6": socket.AF_INET6}
CLONE_NEWNET = 0x40000000


def attr(kind, data):
    n = 4 + len(data)
    return struct.pack("HH", n, kind) + data + b"\0" * (-n % 4)


def nested(kind, *parts):
    return attr(kind | NLA_F_NESTED, b"".join(parts))


def strz(s):
    return s.encode() + b"\0"


def attrs(buf):
    """{type: payload} of a run of attributes (flags stripped from the type)."""
    out, off = [], 0
    while off + 4 <= len(buf):
        n, kind = struct.unpack_from("HH", buf, off)
        if n < 4:
            break
        out.append((kind & 0x3FFF, buf[off + 4:off + n]))
        off += (n + 3) & ~3
    return out


def concat(*fields):
    """The kernel's bytes of a concatenated key or value: each field padded
    to 4 bytes. Fields: an IP address string, ("proto", "tcp"), ("port", 80),
    ("u32", n) (host byte order, as `numgen` writes it)."""
    out = b""
    for f in fields:
        if isinstance(f, str):
            fam = socket.AF_INET6 if ":" in f else socket.AF_INET
            b = socket.inet_pton(fam, f)
        elif f[0] == "proto":
            b = bytes([{"tcp": 6, "udp": 17, "sctp": 132}[f[1]]])
        elif f[0] == "port":
            b = struct.pack(">H", f[1])
        else:
            b = struct.pack("=I", f[1])
        out += b + b"\0" * (-len(b) % 4)
    return out


def setns(path):
    """Moves this thread into the network namespace at `path`."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


@contextlib.contextmanager
def inside(netns):
    """This thread in network namespace `netns` for the block: sockets made
    and children started there live there (setns only, as a proxy's own
    children: no `ip netns exec` mount namespace, no extra process)."""
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        if netns:
            setns(f"/run/netns/{netns}")
        yield
    finally:
        if netns:
            setns(f"/proc/self/fd/{own}")
        os.close(own)


class Nfnl:
    def __init__(self, netns=None):
        with inside(netns):
            # The socket stays in the namespace it was made in.
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self):
        self.sock.close()

    def request(self, msg, family, flags, body):
        """Sends one request; returns the answers' payloads (after nfgenmsg)
        and whether a dump was interrupted by a commit. Raises OSError on a
        netlink error."""
        self.seq += 1
        payload = struct.pack("BBH", FAMILY[family], 0, 0) + body
        self.sock.send(struct.pack("IHHII", 16 + len(payload), (NFNL_SUBSYS_NFTABLES << 8) | msg,
                                   NLM_F_REQUEST | flags, self.seq, 0) + payload)
        out, intr = [], False
        while True:
            buf = self.sock.recv(1 << 20)
            off = 0
            while off + 16 <= len(buf):
                n, kind, fl, seq, _ = struct.unpack_from("IHHII", buf, off)
                data = buf[off + 16:off + n]
                off += (n + 3) & ~3
                if seq != self.seq:
                    continue
                if kind == NLMSG_ERROR:
                    err = struct.unpack_from("i", data)[0]
                    if err:
                        raise OSError(-err, os.strerror(-err))
                    return out, intr
                if kind == NLMSG_DONE:
                    return out, intr
                intr |= bool(fl & NLM_F_DUMP_INTR)
                out.append(data[4:])

    def chain_exists(self, family, table, chain):
        try:
            self.request(NFT_MSG_GETCHAIN, family, NLM_F_ACK,
                         attr(CHAIN_TABLE, strz(table)) + attr(CHAIN_NAME, strz(chain)))
            return True
        except OSError as e:
            if e.errno == errno.ENOENT:
                return False
            raise

    @staticmethod
    def _elements(payloads):
        """(key bytes, data bytes or None) of each element in the answers."""
        for p in payloads:
            for kind, v in attrs(p):
                if kind != LIST_ELEMENTS:
                    continue
                for _, elem in attrs(v):
                    key = data = None
                    for k, a in attrs(elem):
                        if k in (ELEM_KEY, ELEM_DATA):
                            value = dict(attrs(a)).get(DATA_VALUE)
                            key, data = (value, data) if k == ELEM_KEY else (key, value)
                    yield key, data

    def get_elements(self, family, table, set_, keys):
        """{key: data} for the keys present ({} when one is missing: the
        kernel answers the whole request with ENOENT then)."""
        elems = b"".join(nested(LIST_ELEM, nested(ELEM_KEY, attr(DATA_VALUE, k))) for k in keys)
        body = attr(LIST_TABLE, strz(table)) + attr(LIST_SET, strz(set_)) + nested(LIST_ELEMENTS, elems)
        try:
            out, _ = self.request(NFT_MSG_GETSETELEM, family, NLM_F_ACK, body)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return {}
            raise
        return dict(self._elements(out))

    def dump_elements(self, family, table, set_):
        """Every (key, data) of the set; None when a commit interrupted the
        dump (ask again) or the set does not exist."""
        try:
            out, intr = self.request(NFT_MSG_GETSETELEM, family, NLM_F_DUMP,
                                     attr(LIST_TABLE, strz(table)) + attr(LIST_SET, strz(set_)))
        except OSError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        return None if intr else [(k, d) for k, d in self._elements(out) if k is not None]

    def count_elements(self, family, table, set_, keep=lambda key: True):
        """Elements of the set whose key passes `keep` (None as dump_elements)."""
        elems = self.dump_elements(family, table, set_)
        return None if elems is None else sum(1 for key, _ in elems if keep(key))
