//! Rendering of one man page: clap_mangen's title, NAME, SYNOPSIS,
//! DESCRIPTION and OPTIONS sections, then a COMMANDS section that walks every
//! subcommand at every depth (clap_mangen lists only the first level), then
//! the binary's hand-written sections.

use clap::Command;
use clap_mangen::roff::{bold, roman, Roff};
use clap_mangen::Man;

use crate::{ClidocError, Page};

fn io(e: std::io::Error) -> ClidocError {
    ClidocError::Io(e)
}

/// A hand-written section of a man page.
#[derive(Debug, Clone, Copy)]
pub struct Section<'a> {
    /// Its heading, e.g. "EXIT STATUS".
    pub title: &'a str,
    /// Paragraphs separated by blank lines; a paragraph whose lines start
    /// with two spaces is printed as is (commands, file layouts), and a
    /// line "TERM: text" in an ordinary paragraph becomes a tagged item.
    pub body: &'a str,
}

/// The whole man page of `cmd` in roff.
pub fn render_page(cmd: Command, page: &Page) -> Result<String, ClidocError> {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let name = cmd.get_name().to_string();
    let man = Man::new(cmd.clone())
        .section(page.section)
        .title(name.to_uppercase())
        .manual("krg manual")
        .source(format!("krg {}", cmd.get_version().unwrap_or_default()));
    let mut out = Vec::new();
    man.render_title(&mut out).map_err(io)?;
    man.render_name_section(&mut out).map_err(io)?;
    man.render_synopsis_section(&mut out).map_err(io)?;
    man.render_description_section(&mut out).map_err(io)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut out).map_err(io)?;
    }
    let mut roff = Roff::new();
    if cmd.has_subcommands() {
        roff.control("SH", ["COMMANDS"]);
        for sub in visible_subcommands(&cmd) {
            commands(&mut roff, sub, &name);
        }
    }
    for section in page.sections {
        hand_written(&mut roff, section);
    }
    roff.to_writer(&mut out).map_err(io)?;
    String::from_utf8(out)
        .map_err(|e| ClidocError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

fn visible_subcommands(cmd: &Command) -> impl Iterator<Item = &Command> {
    cmd.get_subcommands().filter(|s| !s.is_hide_set())
}

/// One subcommand (`parent sub`), its usage, help and own options, then its
/// subcommands.
fn commands(roff: &mut Roff, cmd: &Command, parent: &str) {
    let path = format!("{parent} {}", cmd.get_name());
    roff.control("SS", [path.as_str()]);
    let usage = cmd
        .clone()
        .bin_name(&path)
        .render_usage()
        .to_string()
        .trim_start_matches("Usage: ")
        .to_string();
    roff.control("PP", []).text([bold(usage)]);
    let help = cmd.get_long_about().or(cmd.get_about());
    for para in help
        .map(|h| h.to_string())
        .unwrap_or_default()
        .split("\n\n")
    {
        // clap's help is prose: no tagged items, lines joined.
        let joined = para.lines().map(str::trim).collect::<Vec<_>>().join(" ");
        if !joined.is_empty() {
            roff.control("PP", []).text([roman(joined)]);
        }
    }
    let args: Vec<_> = cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set() && !a.is_global_set())
        .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
        .collect();
    for arg in args {
        roff.control("TP", []).text([bold(arg_spec(arg))]);
        let help = arg.get_long_help().or(arg.get_help());
        roff.text([roman(help.map(|h| h.to_string()).unwrap_or_default())]);
    }
    for sub in visible_subcommands(cmd) {
        commands(roff, sub, &path);
    }
}

/// `-n, --nodes <LIST>` or `<PID>`: how an argument is written.
fn arg_spec(arg: &clap::Arg) -> String {
    let value = arg
        .get_value_names()
        .map(|v| {
            v.iter()
                .map(|n| format!("<{n}>"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| format!("<{}>", arg.get_id().as_str().to_uppercase()));
    let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
    let mut names = Vec::new();
    if let Some(s) = arg.get_short() {
        names.push(format!("-{s}"));
    }
    if let Some(l) = arg.get_long() {
        names.push(format!("--{l}"));
    }
    match (names.is_empty(), takes_value) {
        (true, _) => value,
        (false, true) => format!("{} {value}", names.join(", ")),
        (false, false) => names.join(", "),
    }
}

fn hand_written(roff: &mut Roff, section: &Section<'_>) {
    roff.control("SH", [section.title]);
    paragraphs(roff, section.body);
}

/// Blank-line separated paragraphs; indented ones are kept verbatim and
/// "TERM: text" lines become tagged paragraphs.
fn paragraphs(roff: &mut Roff, text: &str) {
    for para in text.split("\n\n").filter(|p| !p.trim().is_empty()) {
        if para.lines().all(|l| l.starts_with("  ") || l.is_empty()) {
            roff.control("PP", [])
                .control("RS", ["4"])
                .control("nf", []);
            for line in para.lines() {
                roff.text([roman(line.trim_start())]);
            }
            roff.control("fi", []).control("RE", []);
        } else if para.lines().all(is_tagged) {
            for line in para.lines() {
                if let Some((term, text)) = line.split_once(": ") {
                    roff.control("TP", []).text([bold(term)]);
                    roff.text([roman(text)]);
                }
            }
        } else {
            roff.control("PP", []);
            let joined = para.lines().map(str::trim).collect::<Vec<_>>().join(" ");
            roff.text([roman(joined)]);
        }
    }
}

fn is_tagged(line: &str) -> bool {
    line.split_once(": ")
        .is_some_and(|(term, _)| !term.is_empty() && !term.contains(". ") && term.len() <= 40)
}

/// A page written by hand (a file format, a helper without flags): title,
/// NAME line, then `sections`.
pub fn render_hand_page(
    name: &str,
    section: &str,
    about: &str,
    sections: &[Section<'_>],
) -> String {
    let mut roff = Roff::new();
    let source = format!("krg {}", env!("CARGO_PKG_VERSION"));
    roff.control(
        "TH",
        [
            name.to_uppercase().as_str(),
            section,
            "",
            &source,
            "krg manual",
        ],
    );
    roff.control("SH", ["NAME"]);
    roff.text([roman(format!("{name} - {about}"))]);
    for s in sections {
        hand_written(&mut roff, s);
    }
    roff.render()
}
