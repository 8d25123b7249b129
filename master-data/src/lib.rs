//! Master data as processors read it: records of the compacted master topics, held whole in
//! global tables and decoded on lookup.
//!
//! A master record that does not decode, or says something the backbone cannot use, is no fault
//! of the input that needed it, but the input cannot be processed without it: the input is
//! dead-lettered under the master data's own reason (`invalid_legal_entity`, ...), naming the
//! record, to be replayed once the record is fixed. An unreachable registry stays an outage.

use std::sync::Arc;

use backbone_calendar::Zone;
use backbone_core::{ProcessError, State};
use backbone_schemas::types::{Contract, LegalEntity};
use backbone_schemas::{WireCodec, WireError};

/// `err`, met decoding the master record `key`, as the error of the input that needed it:
/// permanent under `reason`, or the outage it was.
pub fn undecodable(reason: &'static str, key: &str, err: WireError) -> ProcessError {
    match ProcessError::from(err) {
        ProcessError::Permanent { detail, .. } => {
            ProcessError::permanent(reason, format!("`{key}` does not decode: {detail}"))
        }
        outage => outage,
    }
}

/// The time zone of legal entity `entity` of `tenant`, from the global table `table` (keyed
/// `<tenant>:<legal entity>`): the zone its calendar days, billing periods and accounting
/// months are counted in. UTC when the table does not hold the entity; `invalid_legal_entity`
/// when its record does not decode or names no IANA zone.
pub fn legal_entity_zone(
    state: &State<'_>,
    table: &str,
    codec: &WireCodec,
    tenant: &str,
    entity: &str,
) -> Result<Zone, ProcessError> {
    let key = format!("{tenant}:{entity}");
    let Some(value) = state.global(table, key.as_bytes())? else {
        return Ok(Zone::utc());
    };
    let entity: Arc<LegalEntity> = codec
        .decode_shared(&value, LegalEntity::schema())
        .map_err(|e| undecodable("invalid_legal_entity", &key, e))?;
    Zone::named(&entity.time_zone).map_err(|e| {
        ProcessError::permanent("invalid_legal_entity", format!("legal entity `{key}`: {e}"))
    })
}
