//! The registry: parties, members, allocations and a version counter. Pure state with the
//! time passed in (`now` in Unix seconds); the file backend (and later the control server)
//! load it, call one operation and store it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::ipam;
use super::{ControlError, Reach, Roster, RosterMember};
use crate::identity::Key;

/// Value of the `format` field that marks a file as ours.
pub const FORMAT: &str = "lanparty-lite-registry";
/// Schema revision of the stored JSON.
pub const SCHEMA: u32 = 1;
/// A member without a heartbeat for this long is removed (LANrage's 5 minutes).
pub const STALE_AFTER_S: u64 = 300;
/// A party that has had no members for this long is removed.
pub const EMPTY_PARTY_TTL_S: u64 = 300;
/// Default party subnet.
pub const DEFAULT_SUBNET: &str = "10.66.0.0/16";
/// Default member limit per party.
pub const DEFAULT_MAX_PEERS: u32 = 64;
/// Longest party or member name.
pub const MAX_NAME_LEN: usize = 64;
/// Most endpoints one member may register.
pub const MAX_ENDPOINTS: usize = 16;

/// Everything the control plane knows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Registry {
    /// Always [`FORMAT`]; anything else is a foreign file.
    pub format: String,
    /// Always [`SCHEMA`].
    pub schema: u32,
    /// Bumped on every change a roster reader must see.
    pub version: u64,
    /// Parties by id.
    pub parties: BTreeMap<String, Party>,
}

/// One party.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Party {
    /// Random identifier carried by the join code.
    pub id: String,
    /// Human name given at creation.
    pub name: String,
    /// Subnet members' virtual IPs come from.
    pub subnet: Ipv4Net,
    /// Most members at once.
    pub max_peers: u32,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds since the party has had no members (None while it has some).
    pub empty_since: Option<u64>,
    /// Current members by member id.
    pub members: BTreeMap<String, Member>,
    /// Sticky addresses: public key (base64) → allocation, kept after a member leaves.
    pub allocations: BTreeMap<String, Allocation>,
    /// Registry version of this party's last change; roster long-polls wait for it to move.
    #[serde(default)]
    pub version: u64,
    /// Join secret a control server requires (none for `file:` parties).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// A current member of a party.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Member {
    /// Stable id derived from the public key.
    pub id: String,
    /// Display name.
    pub name: String,
    /// WireGuard public key, base64.
    pub public_key: String,
    /// Address on the party subnet.
    pub virtual_ip: Ipv4Addr,
    /// Addresses the member's UDP socket can be reached at.
    pub endpoints: Vec<SocketAddr>,
    /// Unix seconds.
    pub joined_at: u64,
    /// Unix seconds of the last join or heartbeat.
    pub last_seen: u64,
    /// NAT, public address and relay (absent in registries written before they existed).
    #[serde(default, flatten)]
    pub reach: Reach,
}

/// An address reserved for a public key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Allocation {
    /// The address.
    pub ip: Ipv4Addr,
    /// Unix seconds the key last held it.
    pub last_used: u64,
}

/// What `create_party` needs.
#[derive(Debug, Clone)]
pub struct NewParty {
    /// Display name.
    pub name: String,
    /// Subnet for virtual IPs.
    pub subnet: Ipv4Net,
    /// Member limit.
    pub max_peers: u32,
    /// Join secret, for parties on a control server.
    pub secret: Option<String>,
}

/// What `join` needs.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// Display name.
    pub name: String,
    /// The member's public key.
    pub public_key: Key,
    /// Where the member can be reached.
    pub endpoints: Vec<SocketAddr>,
    /// NAT, public address and relay.
    pub reach: Reach,
}

/// Validates a party or member name.
pub fn validate_name(name: &str) -> Result<(), ControlError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(ControlError::Invalid(format!(
            "name must be 1 to {MAX_NAME_LEN} bytes"
        )));
    }
    if name.chars().any(|c| c.is_control()) {
        return Err(ControlError::Invalid(
            "name must not contain control characters".into(),
        ));
    }
    Ok(())
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            format: FORMAT.into(),
            schema: SCHEMA,
            version: 0,
            parties: BTreeMap::new(),
        }
    }
}

impl Registry {
    /// Checks the invariants a loaded registry must hold; `Err` names the first broken one.
    pub fn check(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("format is {:?}, not {FORMAT:?}", self.format));
        }
        if self.schema != SCHEMA {
            return Err(format!(
                "schema {} is not supported (expected {SCHEMA})",
                self.schema
            ));
        }
        for (id, party) in &self.parties {
            if *id != party.id {
                return Err(format!("party key {id} does not match its id"));
            }
            party.check().map_err(|why| format!("party {id}: {why}"))?;
        }
        Ok(())
    }

    /// Creates a party with a caller-chosen random id.
    pub fn create_party(
        &mut self,
        id: String,
        new: NewParty,
        now: u64,
    ) -> Result<&Party, ControlError> {
        validate_name(&new.name)?;
        if new.max_peers == 0 {
            return Err(ControlError::Invalid("max peers must be at least 1".into()));
        }
        if new.subnet.prefix_len() > 30 {
            return Err(ControlError::Invalid("subnet must be /30 or larger".into()));
        }
        let private: [Ipv4Net; 4] = [
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "100.64.0.0/10",
        ]
        .map(|n| n.parse().expect("valid private range"));
        if !private.iter().any(|p| p.contains(&new.subnet)) {
            return Err(ControlError::Invalid(format!(
                "subnet {} must lie inside 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 or 100.64.0.0/10",
                new.subnet
            )));
        }
        if self.parties.contains_key(&id) {
            return Err(ControlError::Invalid(format!(
                "party id {id} already exists"
            )));
        }
        self.version += 1;
        let party = Party {
            id: id.clone(),
            name: new.name,
            subnet: new.subnet.trunc(),
            max_peers: new.max_peers,
            created_at: now,
            empty_since: Some(now),
            members: BTreeMap::new(),
            allocations: BTreeMap::new(),
            version: self.version,
            secret: new.secret,
        };
        Ok(self.parties.entry(id).or_insert(party))
    }

    /// Bumps the registry version and records it as `party_id`'s last change.
    fn touch(&mut self, party_id: &str) {
        self.version += 1;
        if let Some(party) = self.parties.get_mut(party_id) {
            party.version = self.version;
        }
    }

    /// Adds a member (or refreshes it if its key is already in), assigning its virtual IP.
    pub fn join(
        &mut self,
        party_id: &str,
        req: JoinRequest,
        now: u64,
    ) -> Result<Member, ControlError> {
        validate_name(&req.name)?;
        if req.endpoints.len() > MAX_ENDPOINTS {
            return Err(ControlError::Invalid(format!(
                "at most {MAX_ENDPOINTS} endpoints"
            )));
        }
        self.expire(now);
        let party = party_mut(&mut self.parties, party_id)?;
        let key_text = req.public_key.to_string();
        let id = req.public_key.short_id();
        if let Some(existing) = party.members.get_mut(&id) {
            if existing.public_key != key_text {
                return Err(ControlError::Invalid("member id collision".into()));
            }
            existing.name = req.name;
            existing.endpoints = req.endpoints;
            existing.reach = req.reach;
            existing.last_seen = now;
            let member = existing.clone();
            self.touch(party_id);
            return Ok(member);
        }
        if party.members.len() as u64 >= u64::from(party.max_peers) {
            return Err(ControlError::PartyFull(party.max_peers));
        }
        let ip = party.allocate(&key_text, now)?;
        let member = Member {
            id: id.clone(),
            name: req.name,
            public_key: key_text,
            virtual_ip: ip,
            endpoints: req.endpoints,
            joined_at: now,
            last_seen: now,
            reach: req.reach,
        };
        party.members.insert(id, member.clone());
        party.empty_since = None;
        self.touch(party_id);
        Ok(member)
    }

    /// Refreshes a member's liveness and endpoints. Bumps the version only if endpoints changed.
    pub fn heartbeat(
        &mut self,
        party_id: &str,
        member_id: &str,
        endpoints: Vec<SocketAddr>,
        reach: Reach,
        now: u64,
    ) -> Result<(), ControlError> {
        if endpoints.len() > MAX_ENDPOINTS {
            return Err(ControlError::Invalid(format!(
                "at most {MAX_ENDPOINTS} endpoints"
            )));
        }
        self.expire(now);
        let party = party_mut(&mut self.parties, party_id)?;
        let member = party
            .members
            .get_mut(member_id)
            .ok_or_else(|| ControlError::UnknownMember(member_id.into()))?;
        member.last_seen = now;
        if let Some(a) = party.allocations.get_mut(&member.public_key) {
            a.last_used = now;
        }
        if member.endpoints != endpoints || member.reach != reach {
            member.endpoints = endpoints;
            member.reach = reach;
            self.touch(party_id);
        }
        Ok(())
    }

    /// Removes a member. Its address stays reserved for its key.
    pub fn leave(&mut self, party_id: &str, member_id: &str, now: u64) -> Result<(), ControlError> {
        let party = party_mut(&mut self.parties, party_id)?;
        let member = party
            .members
            .remove(member_id)
            .ok_or_else(|| ControlError::UnknownMember(member_id.into()))?;
        if let Some(a) = party.allocations.get_mut(&member.public_key) {
            a.last_used = now;
        }
        if party.members.is_empty() {
            party.empty_since = Some(now);
        }
        self.touch(party_id);
        self.expire(now);
        Ok(())
    }

    /// The party as members see it, without members that are already stale.
    pub fn roster(&self, party_id: &str, now: u64) -> Result<Roster, ControlError> {
        let party = self
            .parties
            .get(party_id)
            .filter(|p| !p.is_expired(now))
            .ok_or_else(|| ControlError::UnknownParty(party_id.into()))?;
        let members = party
            .members
            .values()
            .filter(|m| !is_stale(m, now))
            .map(|m| RosterMember {
                id: m.id.clone(),
                name: m.name.clone(),
                public_key: m.public_key.clone(),
                virtual_ip: m.virtual_ip,
                endpoints: m.endpoints.clone(),
                last_seen: m.last_seen,
                reach: m.reach,
            })
            .collect();
        Ok(Roster {
            version: party.version,
            party_id: party.id.clone(),
            party_name: party.name.clone(),
            subnet: party.subnet,
            members,
        })
    }

    /// The party's roster version without building the roster (`None`: no such party, or
    /// it has expired).
    pub fn party_version(&self, party_id: &str, now: u64) -> Option<u64> {
        self.parties
            .get(party_id)
            .filter(|p| !p.is_expired(now))
            .map(|p| p.version)
    }

    /// Removes stale members and long-empty parties. Returns whether anything changed.
    pub fn expire(&mut self, now: u64) -> bool {
        let next = self.version + 1;
        let mut changed = false;
        for party in self.parties.values_mut() {
            let before = party.members.len();
            party.members.retain(|_, m| !is_stale(m, now));
            if party.members.len() != before {
                changed = true;
                party.version = next;
                if party.members.is_empty() {
                    party.empty_since = Some(now);
                }
            }
        }
        let before = self.parties.len();
        self.parties.retain(|_, p| !p.is_expired(now));
        changed |= self.parties.len() != before;
        if changed {
            self.version = next;
        }
        changed
    }
}

fn party_mut<'a>(
    parties: &'a mut BTreeMap<String, Party>,
    party_id: &str,
) -> Result<&'a mut Party, ControlError> {
    parties
        .get_mut(party_id)
        .ok_or_else(|| ControlError::UnknownParty(party_id.into()))
}

fn is_stale(member: &Member, now: u64) -> bool {
    now.saturating_sub(member.last_seen) >= STALE_AFTER_S
}

impl Party {
    /// Members and reservations agree: every reserved address is assignable and reserved
    /// once, and every member holds the address reserved for its key.
    fn check(&self) -> Result<(), String> {
        let mut reserved = BTreeSet::new();
        for (key, a) in &self.allocations {
            if !ipam::is_assignable(self.subnet, a.ip) || !reserved.insert(a.ip) {
                return Err(format!(
                    "reservation of {key} ({}) is invalid or duplicated",
                    a.ip
                ));
            }
        }
        for (mid, m) in &self.members {
            let held = self.allocations.get(&m.public_key).map(|a| a.ip);
            if *mid != m.id || held != Some(m.virtual_ip) {
                return Err(format!("member {mid} does not hold its reserved address"));
            }
        }
        Ok(())
    }

    fn is_expired(&self, now: u64) -> bool {
        self.members.is_empty()
            && self
                .empty_since
                .is_some_and(|t| now.saturating_sub(t) >= EMPTY_PARTY_TTL_S)
    }

    /// The key's sticky address if it is still free, else the lowest free address, reclaiming
    /// the least recently used reservation of a departed key when the subnet is exhausted.
    fn allocate(&mut self, key: &str, now: u64) -> Result<Ipv4Addr, ControlError> {
        let in_use: BTreeSet<Ipv4Addr> = self.members.values().map(|m| m.virtual_ip).collect();
        if let Some(a) = self.allocations.get_mut(key) {
            if !in_use.contains(&a.ip) && ipam::is_assignable(self.subnet, a.ip) {
                a.last_used = now;
                return Ok(a.ip);
            }
        }
        let reserved: BTreeSet<Ipv4Addr> = self.allocations.values().map(|a| a.ip).collect();
        let ip = match ipam::lowest_free(self.subnet, &reserved.union(&in_use).copied().collect()) {
            Some(ip) => ip,
            None => {
                let held: BTreeSet<&str> = self
                    .members
                    .values()
                    .map(|m| m.public_key.as_str())
                    .collect();
                let victim = self
                    .allocations
                    .iter()
                    .filter(|(k, _)| !held.contains(k.as_str()))
                    .min_by_key(|(_, a)| a.last_used)
                    .map(|(k, a)| (k.clone(), a.ip))
                    .ok_or(ControlError::PartyFull(self.max_peers))?;
                self.allocations.remove(&victim.0);
                victim.1
            }
        };
        self.allocations
            .insert(key.into(), Allocation { ip, last_used: now });
        Ok(ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Key {
        let mut k = [0u8; 32];
        k[0] = n;
        k[31] = 0x5a;
        Key(k)
    }

    fn req(n: u8) -> JoinRequest {
        JoinRequest {
            name: format!("m{n}"),
            public_key: key(n),
            endpoints: vec![],
            reach: Default::default(),
        }
    }

    fn registry_with(subnet: &str, max_peers: u32) -> Registry {
        let mut r = Registry::default();
        r.create_party(
            "p".into(),
            NewParty {
                name: "friday".into(),
                subnet: subnet.parse().unwrap(),
                max_peers,
                secret: None,
            },
            0,
        )
        .unwrap();
        r
    }

    #[test]
    fn members_get_consecutive_addresses() {
        let mut r = registry_with("10.66.0.0/16", 64);
        let ips: Vec<_> = (1..=3)
            .map(|n| r.join("p", req(n), 10).unwrap().virtual_ip)
            .collect();
        assert_eq!(
            ips,
            vec![
                Ipv4Addr::new(10, 66, 0, 1),
                Ipv4Addr::new(10, 66, 0, 2),
                Ipv4Addr::new(10, 66, 0, 3)
            ]
        );
    }

    #[test]
    fn rejoining_key_gets_same_address() {
        let mut r = registry_with("10.66.0.0/16", 64);
        r.join("p", req(1), 10).unwrap();
        let m2 = r.join("p", req(2), 10).unwrap();
        r.leave("p", &m2.id, 20).unwrap();
        r.join("p", req(3), 30).unwrap();
        let again = r.join("p", req(2), 40).unwrap();
        assert_eq!(again.virtual_ip, Ipv4Addr::new(10, 66, 0, 2));
    }

    #[test]
    fn joining_twice_keeps_one_member() {
        let mut r = registry_with("10.66.0.0/16", 64);
        let a = r.join("p", req(1), 10).unwrap();
        let b = r.join("p", req(1), 11).unwrap();
        assert_eq!(a.virtual_ip, b.virtual_ip);
        assert_eq!(r.roster("p", 12).unwrap().members.len(), 1);
    }

    #[test]
    fn max_peers_is_enforced() {
        let mut r = registry_with("10.66.0.0/16", 2);
        r.join("p", req(1), 0).unwrap();
        r.join("p", req(2), 0).unwrap();
        assert_eq!(r.join("p", req(3), 0), Err(ControlError::PartyFull(2)));
    }

    #[test]
    fn full_subnet_reclaims_departed_reservation() {
        let mut r = registry_with("192.168.9.0/30", 8);
        let a = r.join("p", req(1), 0).unwrap();
        r.join("p", req(2), 0).unwrap();
        assert_eq!(r.join("p", req(3), 0), Err(ControlError::PartyFull(8)));
        r.leave("p", &a.id, 5).unwrap();
        assert_eq!(r.join("p", req(3), 6).unwrap().virtual_ip, a.virtual_ip);
    }

    #[test]
    fn stale_members_and_empty_parties_expire() {
        let mut r = registry_with("10.66.0.0/16", 64);
        let a = r.join("p", req(1), 0).unwrap();
        r.join("p", req(2), 0).unwrap();
        r.heartbeat("p", &a.id, vec![], Reach::default(), 200)
            .unwrap();
        assert_eq!(
            r.roster("p", 300).unwrap().members.len(),
            1,
            "m2 is stale at 300 s"
        );
        r.expire(499);
        assert_eq!(r.parties["p"].members.len(), 1);
        r.expire(500);
        assert!(r.parties["p"].members.is_empty());
        r.expire(799);
        assert!(r.parties.contains_key("p"));
        r.expire(800);
        assert!(r.parties.is_empty());
        assert!(matches!(
            r.roster("p", 800),
            Err(ControlError::UnknownParty(_))
        ));
    }

    #[test]
    fn version_moves_on_membership_changes_only() {
        let mut r = registry_with("10.66.0.0/16", 64);
        let a = r.join("p", req(1), 0).unwrap();
        let v = r.version;
        r.heartbeat("p", &a.id, vec![], Reach::default(), 10)
            .unwrap();
        assert_eq!(r.version, v);
        r.heartbeat(
            "p",
            &a.id,
            vec!["192.0.2.1:5000".parse().unwrap()],
            Reach::default(),
            11,
        )
        .unwrap();
        assert_eq!(r.version, v + 1);
    }

    #[test]
    fn roster_version_moves_only_with_its_own_party() {
        let mut r = registry_with("10.66.0.0/16", 64);
        let other = NewParty {
            name: "other".into(),
            subnet: "10.67.0.0/16".parse().unwrap(),
            max_peers: 8,
            secret: None,
        };
        r.create_party("q".into(), other, 0).unwrap();
        r.join("p", req(1), 1).unwrap();
        let seen = r.roster("p", 2).unwrap().version;
        r.join("q", req(2), 3).unwrap();
        assert_eq!(
            r.roster("p", 4).unwrap().version,
            seen,
            "q's join does not wake p's readers"
        );
        r.join("p", req(3), 5).unwrap();
        assert!(r.roster("p", 6).unwrap().version > seen);
    }

    #[test]
    fn only_private_subnets_are_accepted() {
        let mut r = Registry::default();
        for bad in ["0.0.0.0/0", "127.0.0.0/8", "8.8.8.0/24", "10.0.0.0/7"] {
            let new = NewParty {
                name: "x".into(),
                subnet: bad.parse().unwrap(),
                max_peers: 8,
                secret: None,
            };
            assert!(
                matches!(
                    r.create_party("p".into(), new, 0),
                    Err(ControlError::Invalid(_))
                ),
                "{bad}"
            );
        }
        let ok = NewParty {
            name: "x".into(),
            subnet: "100.64.7.0/24".parse().unwrap(),
            max_peers: 8,
            secret: None,
        };
        assert!(r.create_party("p".into(), ok, 0).is_ok());
    }

    #[test]
    fn unknown_party_and_member_are_errors() {
        let mut r = registry_with("10.66.0.0/16", 64);
        assert!(matches!(
            r.join("nope", req(1), 0),
            Err(ControlError::UnknownParty(_))
        ));
        assert!(matches!(
            r.heartbeat("p", "ffff", vec![], Reach::default(), 0),
            Err(ControlError::UnknownMember(_))
        ));
    }

    #[test]
    fn check_rejects_foreign_and_duplicate_addresses() {
        let mut r = registry_with("10.66.0.0/16", 64);
        r.join("p", req(1), 0).unwrap();
        r.join("p", req(2), 0).unwrap();
        assert!(r.check().is_ok());
        let mut dup = r.clone();
        let ip = dup.parties["p"].members.values().next().unwrap().virtual_ip;
        for m in dup.parties.get_mut("p").unwrap().members.values_mut() {
            m.virtual_ip = ip;
        }
        assert!(dup.check().is_err());
        let mut stale_reservation = r.clone();
        let party = stale_reservation.parties.get_mut("p").unwrap();
        let taken = party.members.values().next().unwrap().virtual_ip;
        party.allocations.insert(
            "departed".into(),
            Allocation {
                ip: taken,
                last_used: 0,
            },
        );
        assert!(
            stale_reservation.check().is_err(),
            "a reservation may not shadow a member"
        );
        let mut foreign = r.clone();
        foreign.format = "other".into();
        assert!(foreign.check().is_err());
    }
}
