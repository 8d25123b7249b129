//! crm-sink (being written).
