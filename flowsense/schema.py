"""Every column and its dtype, declared once.

Three layouts live here:

* ``RECORD_COLUMNS``: what a container walker (pcap, pcapng) finds per record.
* ``PACKET_COLUMNS``: the decoded packet batch, the one format every reader feeds the flow table.
* The flow table's hot blocks: integer and float fields per flow, laid out so that one packet's
  update touches one or two cache lines. Per-direction fields repeat with a stride; direction 0 is
  client to server (``src2dst``), direction 1 server to client (``dst2src``).

Kernels import the integer constants below; numba freezes them at compile time, and
``flowsense._numba_env`` keys the compile cache on this file's contents so an edit here recompiles.
"""

from __future__ import annotations

import numpy as np

# --- records, as walked out of a container -------------------------------------------------------
RECORD_COLUMNS: dict[str, np.dtype] = {
    "data_off": np.dtype(np.int64),  # byte offset of the frame in the buffer
    "caplen": np.dtype(np.uint32),  # bytes captured
    "wirelen": np.dtype(np.uint32),  # bytes on the wire
    "ts_ns": np.dtype(np.int64),  # capture time, ns since the epoch
    "linktype": np.dtype(np.uint16),  # DLT of the interface the record came from
    "rec_off": np.dtype(np.int64),  # byte offset of the record header in the file
}

# --- decoded packets ----------------------------------------------------------------------------
PACKET_COLUMNS: dict[str, np.dtype] = {
    "ts_ns": np.dtype(np.int64),
    "status": np.dtype(np.uint8),  # ST_* below
    "pflags": np.dtype(np.uint8),  # PF_* bits below
    "fam": np.dtype(np.uint8),  # 4 or 6; 0 when not IP
    "proto": np.dtype(np.uint8),
    "src_hi": np.dtype(np.uint64),  # IPv6 high 64 bits; 0 for IPv4
    "src_lo": np.dtype(np.uint64),  # IPv6 low 64 bits; the IPv4 address for IPv4
    "dst_hi": np.dtype(np.uint64),
    "dst_lo": np.dtype(np.uint64),
    "sport": np.dtype(np.uint16),  # ICMP: type; see flows/kernels.py for the pairing
    "dport": np.dtype(np.uint16),  # ICMP: code
    "tcp_flags": np.dtype(np.uint8),
    "ip_len": np.dtype(np.uint32),  # size counted: IP total length (v6: 40 + payload length)
    "payload_len": np.dtype(np.uint32),  # L4 payload from the IP lengths
    "pay_off": np.dtype(np.int64),  # offset of the L4 payload in the buffer
    "pay_cap": np.dtype(np.uint32),  # payload bytes actually captured
    "seq": np.dtype(np.uint32),
    "vlan": np.dtype(np.uint16),  # outermost 802.1Q id, 0 when untagged
    "tunnel": np.dtype(np.uint8),  # TUN_* of the outermost encapsulation removed
    "rec_off": np.dtype(np.int64),
    "wirelen": np.dtype(np.uint32),
}

# packet status
ST_OK = 0  # an IP packet, fed to the flow table
ST_NOT_IP = 1  # ARP, LLDP, ...: counted only
ST_TRUNCATED = 2  # headers cut short by the snap length
ST_BAD_IP = 3  # impossible lengths or version
ST_BAD_LINK = 4  # link type we do not decode
ST_TOO_DEEP = 5  # more encapsulation layers than we follow
N_STATUS = 6
STATUS_NAMES = ("ok", "not_ip", "truncated", "bad_ip", "unknown_linktype", "too_deep")
ST_TICK = 255  # parallel engines only: another partition's IP packet; it only moves the clock

# packet flags
PF_FRAGMENT = 1  # a non-first fragment (ports from the fragment table)
PF_FRAG_ORPHAN = 2  # a non-first fragment whose first fragment was not seen
PF_FIRST_FRAGMENT = 4  # the first fragment of a fragmented datagram
PF_TRUNC_L4 = 8  # the L4 header was cut by the snap length: no ports

# tunnels
TUN_NONE = 0
TUN_VXLAN = 1
TUN_GRE = 2
TUN_IPIP = 3
TUN_GENEVE = 4
TUN_ERSPAN = 5
TUNNEL_NAMES = ("", "vxlan", "gre", "ipip", "geneve", "erspan")

# TCP flag bits
TH_FIN = 0x01
TH_SYN = 0x02
TH_RST = 0x04
TH_PSH = 0x08
TH_ACK = 0x10
TH_URG = 0x20
TH_ECE = 0x40
TH_CWR = 0x80

# --- the flow table's row: fi[slot, field] (int64) and ff = fi.view(float64) ----------------------
# One 512-byte row a flow, eight cache lines: two for the flow (what every packet touches), three
# for each direction (line-aligned: measured 10% faster than straddling). The flow's rarely
# touched fields fill the directions' spare words. Float fields (FF_*, DF_*) share the row.
FI_LAST_TS = 0  # ns: the latest packet time (the idle clock)
FI_PREV_TS = 1  # ns: the flow's previous packet in capture order (for inter-arrival times)
FI_STATE = 2  # FS_* bits
FI_SPLT_N = 3  # packets recorded in the first-N arrays
FI_BI_MIN_PS = 4
FI_BI_MAX_PS = 5
FI_BI_MIN_PIAT = 6
FI_BI_MAX_PIAT = 7
FF_BI_MEAN_PS = 8
FF_BI_M2_PS = 9
FF_BI_MEAN_PIAT = 10
FF_BI_M2_PIAT = 11
FI_LIST = 12  # which idle list the flow is on (L_*)
FI_WATCH = 13  # watch id, -1 when not watched
FI_FIRST_TS = 14  # ns
FI_ENQ_TS = 15  # ns: when the flow was (re)queued on its idle list (lists are lazy LRU)
FI_DIR0 = 16  # first per-direction field; direction d starts at FI_DIR0 + d * FI_DSTRIDE
FI_ACTIVE_MARK = 37  # ns: start of the current active-timeout period
FI_COUNTS = 38  # interim records emitted (low 32 bits) and non-first fragments (high 32 bits)
FI_META = 39  # VLAN id (bits 0-15), TUN_* (16-23), OR_* (24-31)
FI_HASH = 61  # the keyed hash (rehash and delete without recomputing)
FI_SEQ = 62  # creation order (stable ordering of output)
FF_DIR0 = FI_DIR0
D_PKTS = 0
D_BYTES = 1
D_PAYLOAD = 2
D_LAST = 3  # previous packet of this direction in capture order
D_MIN_PS = 4
D_MAX_PS = 5
D_MIN_PIAT = 6
D_MAX_PIAT = 7
DF_MEAN_PS = 8
DF_M2_PS = 9
DF_MEAN_PIAT = 10
DF_M2_PIAT = 11
D_ISN = 12  # sequence number of payload byte 0, -1 until known
D_NEXT = 13  # highest relative sequence end seen
D_HEAD_LEN = 14  # bytes of payload head filled (highest offset written)
# TCP flag counters, two to a field: the first named in the low 32 bits, the second in the high
D_SYN_ACK = 15
D_CWR_ECE = 16
D_URG_PSH = 17
D_RST_FIN = 18
D_FIRST = 19
D_RETRANS = 20  # TCP segments whose payload lay wholly below the highest sequence seen
FI_DSTRIDE = 24  # words 21-23 of each direction hold the flow's cold fields above
FF_DSTRIDE = FI_DSTRIDE
FI_NFIELDS = FI_DIR0 + 2 * FI_DSTRIDE  # 64
HIGH = 1 << 32  # one count in the high half of a packed flag field

# flow state bits
FS_SYN = 1  # SYN without ACK seen from the client
FS_SYNACK = 2  # SYN+ACK seen from the server
FS_FIN0 = 4
FS_FIN1 = 8
FS_RST = 16
FS_ESTABLISHED = 32  # TCP with packets both ways and no FIN/RST yet
FS_CLOSING = 64  # FIN both ways or RST: lingers for the close delay
FS_LIVE = 128  # slot holds a live flow (in the index)
FS_ENDED = 256  # slot holds an ended flow awaiting export
FS_DIRTY = 512  # touched since the last snapshot
FS_PROMPT = 1024  # a prompt rule matched the client's first payload: the reply is an event

# orientation
OR_GUESSED = 0
OR_SYN = 1
OR_SYNACK = 2
ORIENT_NAMES = ("guessed", "syn", "syn-ack")

# idle lists
L_SHORT = 0  # idle timeout (default 120 s)
L_EST = 1  # established TCP (default 3600 s)
L_CLOSING = 2  # FIN/RST seen: close delay

# why a flow ended
END_IDLE = 1
END_ACTIVE = 2  # interim record only: the flow lives on
END_FIN = 3
END_RST = 4
END_EOF = 5  # input ended with the flow still open
END_EVICTED = 6  # the bounded table made room
END_REUSE = 7  # a new SYN on the tuple of a closing flow
END_NAMES = ("", "idle", "active", "fin", "rst", "end", "evicted", "reuse")
EV_PROMPT = 8  # event kind, not an end: a prompt-ruled flow got its first reply payload

# table status scalars: st[...]
S_NLIVE = 0
S_NFREE = 1
S_NEV = 2
S_NDIRTY = 3
S_CLOCK = 4  # highest packet time seen (ns)
S_SEQ = 5  # flows created so far
S_EVICTED = 6
S_RETRANS = 7
S_WATCH_FULL = 8  # watch leases refused by the quota
S_NWATCH = 9  # watches in use
S_REUSED = 10
S_DEADLINE = 11  # ns: no idle or active timeout can fire before this
S_NFIELDS = 16

# kernel parameters: prm[...]
P_IDLE_NS = 0
P_EST_IDLE_NS = 1
P_ACTIVE_NS = 2
P_CLOSE_NS = 3
P_MAX_FLOWS = 4  # 0: grow without bound
P_NFIELDS = 8

# kernel return status
K_DONE = 0
K_GROW = 1  # the table is full: grow (or evict) and resume at the returned index
K_EVENTS = 2  # the event list is full or an interim record is due: drain and resume
K_TIMEJUMP = 3  # time went back by more than the idle timeout: end every flow, then resume

# --- flow records (FeatureFrame columns, nfstream names; units in the names) --------------------
_DIR_STATS = (
    ("first_seen_ms", "i8"), ("last_seen_ms", "i8"), ("duration_ms", "i8"),
    ("packets", "i8"), ("bytes", "i8"), ("payload_bytes", "i8"),
    ("min_ps", "i8"), ("mean_ps", "f8"), ("stddev_ps", "f8"), ("max_ps", "i8"),
    ("min_piat_ms", "f8"), ("mean_piat_ms", "f8"), ("stddev_piat_ms", "f8"), ("max_piat_ms", "f8"),
    ("syn_packets", "i8"), ("cwr_packets", "i8"), ("ece_packets", "i8"), ("urg_packets", "i8"),
    ("ack_packets", "i8"), ("psh_packets", "i8"), ("rst_packets", "i8"), ("fin_packets", "i8"),
)
FLOW_COLUMNS: dict[str, str] = {
    "flow_id": "i8",
    "community_id": "U",
    "src_ip": "U",
    "src_port": "i8",
    "dst_ip": "U",
    "dst_port": "i8",
    "protocol": "i8",
    "ip_version": "i8",
    "vlan_id": "i8",
    "tunnel": "U",
    "orientation": "U",
    "app_proto": "U",
    "expiration": "U",
    "interim": "?",
    **{f"bidirectional_{name}": dt for name, dt in _DIR_STATS},
    **{f"src2dst_{name}": dt for name, dt in _DIR_STATS},
    **{f"dst2src_{name}": dt for name, dt in _DIR_STATS},
    "src2dst_retransmissions": "i8",
    "dst2src_retransmissions": "i8",
    "fragments": "i8",
}
