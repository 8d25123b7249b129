//! A trace for people: one line per step (time, who, what, which record, which schema) and
//! its detail below it.

use std::io::{self, Write};

use super::{SchemaRef, Trace, Traced};

fn schema_text(schema: Option<&SchemaRef>) -> String {
    match schema {
        None => "-".to_owned(),
        Some(SchemaRef {
            id,
            registration: Some(r),
        }) => format!("id {id}, {} v{}", r.subject, r.version),
        Some(SchemaRef { id, .. }) => format!("id {id}, unregistered"),
    }
}

/// Writes `trace` as a table; a trace that found nothing says where it looked.
pub fn print_table(trace: &Trace, out: &mut dyn Write) -> io::Result<()> {
    let traced = match &trace.traced {
        Traced::Event { event_id, source } => match source {
            Some(source) => format!("event {event_id} from {source}"),
            None => format!("event {event_id}"),
        },
        Traced::Rating { rating_id } => format!("rating {rating_id}"),
    };
    writeln!(
        out,
        "{traced} of tenant {}: searched from {} to {}, {} records read",
        trace.tenant, trace.searched_since, trace.searched_until, trace.records_read
    )?;
    if !trace.missing_topics.is_empty() {
        writeln!(
            out,
            "topics that do not exist (nothing was written to them): {}",
            trace.missing_topics.join(", ")
        )?;
    }
    if !trace.found {
        writeln!(
            out,
            "never seen: no record of it in that time; an older one needs an earlier --since"
        )?;
        return Ok(());
    }
    let rows: Vec<[String; 5]> = trace
        .steps
        .iter()
        .map(|s| {
            [
                s.at.clone().unwrap_or_else(|| "-".to_owned()),
                s.by.clone(),
                s.what.clone(),
                format!("{} {}@{}", s.topic, s.partition, s.offset),
                schema_text(s.schema.as_ref()),
            ]
        })
        .collect();
    let headings = ["AT", "BY", "WHAT", "RECORD", "SCHEMA"];
    let mut widths = headings.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: [&str; 5]| {
        let mut text = String::new();
        for (n, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if n + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        text
    };
    writeln!(out)?;
    writeln!(out, "{}", line(headings))?;
    let indent = " ".repeat(widths[0] + 2);
    for (row, step) in rows.iter().zip(&trace.steps) {
        writeln!(out, "{}", line(row.each_ref().map(String::as_str)))?;
        match &step.id {
            Some(id) => writeln!(out, "{indent}{} [{id}]", step.detail)?,
            None => writeln!(out, "{indent}{}", step.detail)?,
        }
    }
    Ok(())
}
