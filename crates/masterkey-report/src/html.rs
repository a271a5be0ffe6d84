//! The page: inline CSS, no script, every image embedded.

use std::path::Path;

use base64::Engine;

use crate::sections::Section;

pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A PNG as an `<img>` with a data URI.
pub fn png_img(bytes: &[u8], alt: &str) -> String {
    let data = base64::engine::general_purpose::STANDARD.encode(bytes);
    format!(r#"<img alt="{}" src="data:image/png;base64,{data}">"#, escape(alt))
}

/// A figure with a caption naming the data and settings behind it.
pub fn figure(body: &str, caption: &str) -> String {
    format!("<figure>{body}<figcaption>{}</figcaption></figure>\n", escape(caption))
}

/// A table of already-escaped cells; numeric-looking cells are right-aligned by CSS class.
pub fn table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut out = String::from("<table>\n<thead><tr>");
    for h in header {
        out.push_str(&format!("<th>{}</th>", escape(h)));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let numeric = cell.chars().next().is_some_and(|c| c.is_ascii_digit() || c == '-' || c == '+');
            let class = if numeric { r#" class="num""# } else { "" };
            out.push_str(&format!("<td{class}>{}</td>", escape(cell)));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table>\n");
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}\
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}\
table{border-collapse:collapse;margin:1em 0;font-size:.9em}th,td{border:1px solid #ddd;padding:.25em .6em}\
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}\
figure{margin:1.2em 0}figcaption{font-size:.85em;color:#555;max-width:900px}img,svg{max-width:100%;height:auto}\
nav a{margin-right:1em}";

pub fn page(dir: &Path, sections: &[Section]) -> String {
    let mut out = String::from("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<title>masterkey report</title>\n");
    out.push_str(&format!("<style>{STYLE}</style>\n</head>\n<body>\n"));
    out.push_str(&format!(
        "<h1>masterkey report</h1>\n<p>Results folder: <code>{}</code></p>\n",
        escape(&dir.display().to_string())
    ));
    out.push_str("<nav>");
    for s in sections {
        out.push_str(&format!(r##"<a href="#{}">{}</a>"##, s.id, escape(&s.title)));
    }
    out.push_str("</nav>\n");
    for s in sections {
        out.push_str(&format!(r#"<section id="{}"><h2>{}</h2>"#, s.id, escape(&s.title)));
        out.push_str(&s.body);
        out.push_str("</section>\n");
    }
    out.push_str(
        "<footer><p>The published8 bank: Babaiee, Kiasari, Rus, Grosu (NeurIPS 2025) and Lindeberg, Babaiee, \
Kiasari (arXiv 2509.12746), CC BY 4.0.</p></footer>\n</body>\n</html>\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_numeric_cells() {
        assert_eq!(escape(r#"<a href="x">&'"#), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        let t = table(&["name".into()], &[vec!["<b>".into(), "12.5%".into()]]);
        assert!(t.contains("<td>&lt;b&gt;</td>") && t.contains(r#"<td class="num">12.5%</td>"#));
    }
}
