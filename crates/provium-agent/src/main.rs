//! Provium guest agent: runs as `rdinit` (PID 1) in the guest, chains to the
//! profile's init, and serves the host's requests over virtio-serial (or ttyS1).
//!
//! `provium-agent --serve-unix PATH` instead listens on a unix socket on the host,
//! one connection at a time, so the protocol and the operations can be tested
//! without a VM; there, `shutdown` and `mount_vfs` are refused.

#![deny(clippy::undocumented_unsafe_blocks)]

mod boot;
mod channel;
mod exec;
mod files;
mod log;
mod net;
mod port;
mod router;
mod serve;
mod session;
mod sys;
mod syscall;

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;

use crate::channel::Mode;
use crate::log::log;
use crate::router::{LinkKind, Router};

const USAGE: &str = "usage: provium-agent            (as the guest's rdinit, PID 1)
       provium-agent --serve-unix PATH   (host testing: serve on a unix socket)";

fn main() {
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    match args.get(1).map(String::as_str) {
        Some("--serve-unix") => match args.get(2) {
            Some(path) => serve_unix(path),
            None => usage_error(),
        },
        _ if std::process::id() == 1 => boot::run_as_init(args),
        _ => usage_error(),
    }
}

fn usage_error() -> ! {
    eprintln!("{USAGE}");
    std::process::exit(2);
}

fn serve_unix(path: &str) -> ! {
    let _ = std::fs::remove_file(path);
    let listener = match UnixListener::bind(path) {
        Ok(l) => l,
        Err(e) => {
            log!("cannot listen on {path}: {e}");
            std::process::exit(1);
        }
    };
    let mut router = match Router::new(Mode::Host) {
        Ok(r) => r,
        Err(e) => {
            log!("{e}");
            std::process::exit(1);
        }
    };
    log!("listening on {path}");
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => router.serve_link(File::from(OwnedFd::from(stream)), LinkKind::Unix),
            Err(e) => log!("accept on {path} failed: {e}"),
        }
    }
    std::process::exit(1);
}
