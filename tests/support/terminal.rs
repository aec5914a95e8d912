//! A pseudo-terminal for the binary's stderr (`nix::pty::openpty`), so that
//! it believes a person is watching, and what it drew there, read back.

use std::fs::File;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::thread::JoinHandle;

use nix::pty::{Winsize, openpty};

/// The terminal's width.
pub const COLUMNS: usize = 160;

/// A terminal [`COLUMNS`] wide: the child writes to `side`, the test reads
/// everything it wrote from `screen`.
pub struct Terminal {
    pub side: OwnedFd,
    screen: File,
}

impl Terminal {
    pub fn open() -> Terminal {
        let size = Winsize {
            ws_row: 50,
            ws_col: COLUMNS as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = openpty(&size, None).expect("openpty");
        Terminal {
            side: pty.slave,
            screen: File::from(pty.master),
        }
    }

    /// Reads what the terminal shows until every writer has closed its side
    /// (the child's exit; the caller drops its own `side` first): then a
    /// read of the master fails (EIO), which ends it.
    pub fn record(self) -> JoinHandle<String> {
        let Terminal { side, mut screen } = self;
        drop(side);
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let mut buf = [0u8; 8192];
            while let Ok(n) = screen.read(&mut buf) {
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
            String::from_utf8_lossy(&out).into_owned()
        })
    }
}

/// The rows a terminal showed, without escape sequences (CSI: `ESC [`,
/// parameters, a final byte from `@` to `~`), trailing blanks trimmed:
/// every `\r` or `\n` ends one, and so does the terminal's edge (progress
/// bars are padded to the width and wrap there instead of writing a
/// newline), so a row redrawn in place is each of its versions.
pub fn rows(shown: &str) -> Vec<String> {
    let mut plain = String::with_capacity(shown.len());
    let mut chars = shown.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
            continue;
        }
        plain.push(c);
    }
    let mut lines = Vec::new();
    for segment in plain.split(['\r', '\n']) {
        let chars: Vec<char> = segment.chars().collect();
        for row in chars.chunks(COLUMNS) {
            let row: String = row.iter().collect();
            if !row.trim().is_empty() {
                lines.push(row.trim_end().to_string());
            }
        }
    }
    lines
}
