//! Man pages and shell completions of every krg binary, generated from the
//! binary's own clap definition, so that they can never disagree with
//! `--help`.
//!
//! Each binary calls [`intercept`] first thing in `main`: run as
//! `PROG --generate man|bash|zsh|fish` it prints its man page or a completion
//! script and exits; otherwise nothing happens. The Debian package and
//! `tests/local-cluster.sh` build their man pages and completions that way
//! (see docs/operations.md). The hand-written sections a page needs beyond
//! the flags (FILES, EXIT STATUS, EXAMPLES, SEE ALSO) come with the [`Page`]
//! each binary declares.

mod man;

use std::io::Write;

use clap::CommandFactory;

pub use man::{render_hand_page, render_page, Section};

/// What the hand-written part of a binary's man page says.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    /// Manual section: "1" for user commands, "8" for administration.
    pub section: &'static str,
    /// Extra sections after the generated ones, in order.
    pub sections: &'static [Section<'static>],
}

/// The argument that asks a binary for its documentation.
pub const FLAG: &str = "--generate";

/// What `--generate` can produce.
pub const KINDS: &[&str] = &["man", "bash", "zsh", "fish"];

/// One kind of generated output, or an error the caller prints.
#[derive(Debug, thiserror::Error)]
pub enum ClidocError {
    /// `--generate` with nothing after it.
    #[error("--generate needs one of: {}", KINDS.join(", "))]
    MissingKind,
    /// A kind this binary does not produce.
    #[error("--generate {kind}: unknown kind (one of: {all})", kind = .0, all = KINDS.join(", "))]
    UnknownKind(String),
    /// Writing the document failed.
    #[error("writing the output: {0}")]
    Io(#[from] std::io::Error),
}

/// If the process was started as `PROG --generate KIND`, print that
/// document for the clap definition `C` and exit (0, or 2 with one line on
/// a bad kind). Any other command line returns at once.
pub fn intercept<C: CommandFactory>(page: &Page) {
    intercept_with::<C>(page, &[]);
}

/// An extra document a binary serves: (kind, renderer).
pub type Extra = (&'static str, fn() -> String);

/// Like [`intercept`], with extra documents the binary also serves (e.g.
/// krgd's `krgd.toml` page).
pub fn intercept_with<C: CommandFactory>(page: &Page, extra: &[Extra]) {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(std::ffi::OsStr::new(FLAG)) {
        return;
    }
    let kind = args.next().map(|k| k.to_string_lossy().into_owned());
    let prog = std::env::args_os()
        .next()
        .map(|p| {
            std::path::Path::new(&p)
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .unwrap_or_default();
    let mut out = std::io::stdout().lock();
    let result = match kind.as_deref() {
        Some(k) => match extra.iter().find(|(name, _)| *name == k) {
            Some((_, render)) => out.write_all(render().as_bytes()).map_err(ClidocError::Io),
            None => generate(&mut C::command(), page, k, &mut out),
        },
        None => Err(ClidocError::MissingKind),
    };
    match result.and_then(|()| out.flush().map_err(ClidocError::Io)) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "{prog}: {e}");
            std::process::exit(2);
        }
    }
}

/// Write the document `kind` of `cmd` to `out`.
pub fn generate(
    cmd: &mut clap::Command,
    page: &Page,
    kind: &str,
    out: &mut dyn Write,
) -> Result<(), ClidocError> {
    let name = cmd.get_name().to_string();
    let shell = match kind {
        "man" => return Ok(out.write_all(render_page(cmd.clone(), page)?.as_bytes())?),
        "bash" => clap_complete::Shell::Bash,
        "zsh" => clap_complete::Shell::Zsh,
        "fish" => clap_complete::Shell::Fish,
        other => return Err(ClidocError::UnknownKind(other.to_string())),
    };
    let mut buf = Vec::new();
    clap_complete::generate(shell, cmd, name, &mut buf);
    Ok(out.write_all(&buf)?)
}
