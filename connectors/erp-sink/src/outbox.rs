//! File drops: each batch also as a CSV file, for ERPs that import files, and the write that
//! puts any file in place whole.

use std::io::Write;
use std::path::Path;

use backbone_calendar::format_date;
use backbone_schemas::types::JournalBatch;

/// Writes `batch` as `<batch_id>.csv` in `dir`, through a temporary file renamed into place so
/// an importer never reads half a file. Rewriting the same batch gives the same file.
pub(crate) fn write_csv(dir: &Path, batch: &JournalBatch) -> std::io::Result<()> {
    let mut text = String::from(
        "batch_id,legal_entity_id,period_start,posting_date,batch_type,adjusts_batch_id,line_number,gl_account,debit,credit,currency,description,source_rating_id,customer_id\n",
    );
    let batch_type = serde_json::to_value(batch.batch_type)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    for line in &batch.lines {
        let fields = [
            batch.batch_id.clone(),
            batch.legal_entity_id.clone(),
            format_date(batch.period_start),
            format_date(batch.posting_date),
            batch_type.clone(),
            batch.adjusts_batch_id.clone().unwrap_or_default(),
            line.line_number.to_string(),
            line.gl_account.clone(),
            line.debit.to_string(),
            line.credit.to_string(),
            line.currency.clone(),
            line.description.clone(),
            line.source_rating_id.clone().unwrap_or_default(),
            line.customer_id.clone().unwrap_or_default(),
        ];
        let row: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        text.push_str(&row.join(","));
        text.push('\n');
    }
    drop_file(dir, &format!("{}.csv", batch.batch_id), &text)
}

/// Writes `text` as `name` in `dir` through a hidden temporary file, synced, then renamed into
/// place, so an importer never reads half a file and a crash leaves none.
pub(crate) fn drop_file(dir: &Path, name: &str, text: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let partial = dir.join(format!(".{name}.partial"));
    let mut file = std::fs::File::create(&partial)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(partial, dir.join(name))
}

/// RFC 4180 quoting: a field with a comma, quote or line break is quoted, quotes doubled.
fn csv_field(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
