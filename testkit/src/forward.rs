//! The runtime's pass-through: the baseline every processor's throughput and latency are
//! measured against.

use backbone_core::{InputRecord, OutputRecord, ProcessError, Processor, State};

/// Forwards each record of `input` to `output` unchanged (key and value, a tombstone as a
/// tombstone; headers are dropped).
#[derive(Debug, Clone)]
pub struct Forward {
    /// Topic read.
    pub input: String,
    /// Topic written.
    pub output: String,
}

impl Processor for Forward {
    fn name(&self) -> &str {
        "bench-forward"
    }

    fn input_topics(&self) -> Vec<String> {
        vec![self.input.clone()]
    }

    fn output_topics(&self) -> Vec<String> {
        vec![self.output.clone()]
    }

    fn process(
        &mut self,
        record: &InputRecord<'_>,
        _state: &mut State<'_>,
    ) -> Result<Vec<OutputRecord>, ProcessError> {
        Ok(vec![OutputRecord {
            topic: self.output.clone(),
            key: record.key.map(<[u8]>::to_vec),
            value: record.value.map(<[u8]>::to_vec),
            headers: Vec::new(),
        }])
    }
}
