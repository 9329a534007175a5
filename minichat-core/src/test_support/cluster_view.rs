//! What a test reads off a Redis Cluster without starting one: the slot of a key (as Redis
//! computes it) and the lines of `CLUSTER NODES`. Split from [`redis_cluster`](super::redis_cluster),
//! which starts and stops the servers.

/// How many hash slots a Redis Cluster has.
pub const CLUSTER_SLOTS: u16 = 16384;

/// The hash slot of `key`, as Redis Cluster computes it (CRC16/XMODEM of the key, or of its
/// hash tag, the part between the first `{` and the next `}` when that is not empty, modulo
/// 16384): `key_slot(b"minichat:user:{42}") == key_slot(b"42")`.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16(hashed) % CLUSTER_SLOTS
}

/// CRC16/XMODEM (polynomial 0x1021, initial value 0), the checksum Redis Cluster hashes with.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// One line of `CLUSTER NODES`: a node as one node of the cluster sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterNodeView {
    pub id: String,
    /// 0 for a node whose address is not known yet.
    pub port: u16,
    /// The line's flags (`myself`, `master`, `slave`, `fail?`, `fail`, `handshake`, ...).
    pub flags: Vec<String>,
    /// The id of its master, for a replica.
    pub master_id: Option<String>,
    /// The link state: `connected` or `disconnected`.
    pub connected: bool,
    /// The slot ranges it serves (inclusive), for a master.
    pub slots: Vec<(u16, u16)>,
}

impl ClusterNodeView {
    pub(super) fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    pub fn is_master(&self) -> bool {
        self.has_flag("master")
    }

    /// Marked `fail?` (suspected by this node) or `fail` (agreed by the masters).
    pub fn is_failing(&self) -> bool {
        self.has_flag("fail") || self.has_flag("fail?")
    }

    pub fn slot_count(&self) -> usize {
        self.slots
            .iter()
            .map(|&(first, last)| usize::from(last - first) + 1)
            .sum()
    }

    pub(super) fn serves(&self, slot: u16) -> bool {
        self.slots
            .iter()
            .any(|&(first, last)| (first..=last).contains(&slot))
    }
}

/// Parses the answer of `CLUSTER NODES`:
/// `<id> <ip:port@cport[,hostname]> <flags> <master> <ping> <pong> <epoch> <link> <slot>...`.
/// Slots being migrated or imported (`[slot->-id]`) are left out.
pub fn parse_cluster_nodes(text: &str) -> Vec<ClusterNodeView> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return None;
            }
            let address = fields[1].split(['@', ',']).next().unwrap_or("");
            let port = address
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            let slots = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((first, last)) => Some((first.parse().ok()?, last.parse().ok()?)),
                    None => s.parse().ok().map(|slot| (slot, slot)),
                })
                .collect();
            Some(ClusterNodeView {
                id: fields[0].to_owned(),
                port,
                flags: fields[2].split(',').map(str::to_owned).collect(),
                master_id: (fields[3] != "-").then(|| fields[3].to_owned()),
                connected: fields[7] == "connected",
                slots,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{key_slot, parse_cluster_nodes};

    #[test]
    fn slots_follow_redis_cluster_hashing() {
        // The reference values of the Redis Cluster specification and of CLUSTER KEYSLOT.
        assert_eq!(super::crc16(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"somekey"), 11058);
        assert_eq!(key_slot(b"prefix:user:{42}"), key_slot(b"42"));
        assert_eq!(key_slot(b"a{}b"), super::crc16(b"a{}b") % 16384);
        assert_ne!(key_slot(b"{}x"), key_slot(b"x"));
        assert_eq!(key_slot(b"{a}{b}"), key_slot(b"a"));
    }

    #[test]
    fn cluster_nodes_lines_are_parsed() {
        let text = "\
07c3 127.0.0.1:30004@31004 slave e7d1 0 1426238317239 4 connected
e7d1 127.0.0.1:30001@31001,host myself,master - 0 0 1 connected 0-5460 5999 [93-<-292f]
292f :0@0 master,fail?,noaddr - 1426238316232 1426238315000 2 disconnected
";
        let nodes = parse_cluster_nodes(text);
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[0].port, 30004);
        assert_eq!(nodes[0].master_id.as_deref(), Some("e7d1"));
        assert!(!nodes[0].is_master());
        assert_eq!(nodes[1].port, 30001);
        assert!(nodes[1].is_master() && nodes[1].connected);
        assert_eq!(nodes[1].slots, vec![(0, 5460), (5999, 5999)]);
        assert_eq!(nodes[1].slot_count(), 5462);
        assert_eq!(nodes[2].port, 0);
        assert!(nodes[2].is_failing() && !nodes[2].connected);
    }
}
