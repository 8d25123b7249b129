//! analytics-sink (being written).
