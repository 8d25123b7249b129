//! Plain aligned tables for the terminal.

use std::io::Write;

/// Writes `rows` under `headings`, each column as wide as its widest cell, two spaces apart.
pub fn write<const N: usize>(
    out: &mut dyn Write,
    headings: &[&str; N],
    rows: &[[String; N]],
) -> std::io::Result<()> {
    let mut widths: Vec<usize> = headings.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        text.trim_end().to_owned()
    };
    writeln!(out, "{}", line(headings.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_align() {
        let mut out = Vec::new();
        super::write(
            &mut out,
            &["A", "LONGER"],
            &[["wide cell".into(), "x".into()], ["b".into(), "y".into()]],
        )
        .expect("write");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "A          LONGER\nwide cell  x\nb          y\n"
        );
    }
}
