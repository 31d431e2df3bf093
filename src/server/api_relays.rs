//! The relay endpoints of the API: relay registration (signed with the relay secret) and
//! relay tickets for members. Errors map to statuses here, next to the rest of `api.rs`'s.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;

use super::api::{json, Api, ApiError, Outcome};
use super::relays::{Registration, RelayError};
use crate::control::http_api::RelayTicketReply;
use crate::wire::http::Request;

impl Api {
    /// `POST /v1/relays`: a relay registers or refreshes itself.
    pub(super) fn register_relay(
        &mut self,
        reg: Registration,
        now: u64,
    ) -> Result<Outcome, ApiError> {
        self.relays.register(reg, now).map_err(|e| match e {
            RelayError::Disabled => ApiError::Forbidden(
                "relay registration is disabled on this server (no --relay-secret-file)".into(),
            ),
            RelayError::BadMac => ApiError::Forbidden(
                "relay registration is not signed with this server's relay secret".into(),
            ),
            RelayError::Stale => ApiError::Forbidden(
                "relay registration timestamp is more than 60 s off; check the relay's clock"
                    .into(),
            ),
            RelayError::Invalid => ApiError::BadRequest(
                "relay address, region (1-32 of [A-Za-z0-9_-]) or capacity is invalid".into(),
            ),
            RelayError::Full => ApiError::Full("this server lists its maximum of relays".into()),
        })?;
        Ok(Outcome::Reply(200, b"{\"ok\":true}".to_vec()))
    }

    /// A relay ticket for the member whose token this is.
    pub(super) fn relay_ticket(
        &self,
        req: &Request,
        party_id: &str,
        now: u64,
    ) -> Result<Outcome, ApiError> {
        let (member_id, public_key) = self.verified(req, party_id, now)?;
        let (issued, expires_at) = self
            .relays
            .issue_ticket(party_id, &member_id, &public_key, now)
            .map_err(|e| match e {
                RelayError::Disabled => ApiError::Forbidden(
                    "this server issues no relay tickets (started without --relay-secret-file)"
                        .into(),
                ),
                _ => ApiError::Unavailable(
                    "cannot issue a relay ticket for this member record".into(),
                ),
            })?;
        Ok(json(
            200,
            &RelayTicketReply {
                ticket: URL_SAFE_NO_PAD.encode(&issued.ticket),
                bind_key: STANDARD.encode(issued.bind_key),
                expires_at,
                time: now,
                member_id,
            },
        ))
    }
}
