//! A Linux TAP device, opened through /dev/net/tun, optionally inside a network namespace.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

/// `_IOW('T', 202, int)` from <linux/if_tun.h>.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
/// No 4-byte packet-information prefix: reads and writes are bare Ethernet frames.
const IFF_NO_PI: libc::c_short = 0x1000;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags of the union.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _rest: [u8; 22],
}

/// Opens (creating if needed) TAP device `name`. With `netns`, the device is opened inside
/// that namespace (a name under /run/netns) from a short-lived thread, so this process
/// keeps its own namespace for its sockets.
pub(super) fn open(name: &str, netns: Option<&str>) -> io::Result<File> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "TAP device name {name:?} is invalid: use 1 to {} characters, such as tap0",
                libc::IFNAMSIZ - 1
            ),
        ));
    }
    match netns {
        None => open_here(name),
        Some(ns) => {
            let path = format!("/run/netns/{ns}");
            let ns_file = File::open(&path).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot open network namespace {path}: {e}; create it with `ip netns add {ns}`"),
                )
            })?;
            let name = name.to_owned();
            std::thread::spawn(move || {
                nix::sched::setns(&ns_file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                    io::Error::other(format!("cannot enter network namespace: {e} (needs root)"))
                })?;
                open_here(&name)
            })
            .join()
            .map_err(|_| io::Error::other("TAP opener thread panicked"))?
        }
    }
}

fn open_here(name: &str) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open /dev/net/tun: {e} (needs root or CAP_NET_ADMIN)"),
            )
        })?;
    let mut request = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI,
        _rest: [0; 22],
    };
    request.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads a `struct ifreq`, which `IfReq` lays out (40 bytes, C layout);
    // the fd is open and `request` outlives the call.
    #[allow(unsafe_code)]
    let result = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut request) };
    if result < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!(
                "cannot attach TAP device {name}: {e} (a TUN device of that name, or missing CAP_NET_ADMIN?)"
            ),
        ));
    }
    Ok(file)
}

/// Registers the device with the tokio reactor.
pub(super) fn into_async(file: File) -> io::Result<tokio::io::unix::AsyncFd<File>> {
    // SAFETY: `file` is moved in, so the AsyncFd owns the only handle to the descriptor and
    // it stays open until the AsyncFd (and its registration) is dropped.
    #[allow(unsafe_code)]
    let registered = unsafe { tokio::io::unix::AsyncFd::register(file) };
    registered.map_err(|e| e.into())
}
