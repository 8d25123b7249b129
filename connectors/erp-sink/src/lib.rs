//! erp-sink (being written).
