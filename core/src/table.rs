//! Plain aligned tables for the terminal, as the operator tools print them: each column as
//! wide as its widest cell, two spaces apart, text to the left and figures to the right.

/// Where a column's cells sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text.
    Left,
    /// Figures.
    Right,
}

/// A table of `N` columns, rendered once all rows are in.
#[derive(Debug, Clone)]
pub struct Table<const N: usize> {
    headings: [&'static str; N],
    align: [Align; N],
    rows: Vec<[String; N]>,
}

impl<const N: usize> Table<N> {
    /// An empty table with these headings, each column aligned as given.
    pub fn new(headings: [&'static str; N], align: [Align; N]) -> Self {
        Self {
            headings,
            align,
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: [String; N]) {
        self.rows.push(cells);
    }

    /// The table with `rows` added.
    pub fn with_rows(mut self, rows: impl IntoIterator<Item = [String; N]>) -> Self {
        self.rows.extend(rows);
        self
    }

    /// The heading line, then one line per row, each ending in a newline.
    pub fn render(&self) -> String {
        let mut widths = self.headings.map(|h| h.chars().count());
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let line = |cells: [&str; N]| {
            let mut text = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i > 0 {
                    text.push_str("  ");
                }
                let pad = " ".repeat(widths[i].saturating_sub(cell.chars().count()));
                match self.align[i] {
                    Align::Left => text.push_str(&format!("{cell}{pad}")),
                    Align::Right => text.push_str(&format!("{pad}{cell}")),
                }
            }
            format!("{}\n", text.trim_end())
        };
        let mut out = line(self.headings);
        for row in &self.rows {
            out.push_str(&line(std::array::from_fn(|i| row[i].as_str())));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_text_left_and_figures_right() {
        let mut table = Table::new(["name", "count"], [Align::Left, Align::Right]);
        table.row(["wide cell".to_owned(), "7".to_owned()]);
        table.row(["b".to_owned(), "1234567".to_owned()]);
        assert_eq!(
            table.render(),
            "name         count\nwide cell        7\nb          1234567\n"
        );
        let mut text = Table::new(["A", "LONGER"], [Align::Left; 2]);
        text.row(["wide cell".to_owned(), "x".to_owned()]);
        assert_eq!(text.render(), "A          LONGER\nwide cell  x\n");
    }
}
