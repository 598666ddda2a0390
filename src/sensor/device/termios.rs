//! Opening a serial device through classic termios (`tcsetattr` with a
//! `Bnnnn` speed) when the terminal lacks termios2.
//!
//! serialport sets every line through the termios2 ioctls (`TCGETS2`,
//! `TCSETS2`), which allow any baud rate. qemu-user does not emulate them
//! (ENOSYS in 7.2, ENOTTY in 10.0) and kernels built without them answer
//! the same, so there the port would never open. Classic termios reaches
//! the same line settings for the standard rates (50 to 4000000 baud).

use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::config::{FlowControl, LineSettings, Parity};

/// Whether the terminal at `path` lacks termios2: `TCGETS2` fails with
/// ENOSYS or ENOTTY while classic `tcgetattr` works. False when the device
/// does not open or is no terminal at all.
pub(crate) fn lacks_termios2(path: &Path) -> bool {
    let Ok(fd) = open_tty(path) else {
        return false;
    };
    let mut t2 = MaybeUninit::<libc::termios2>::uninit();
    // SAFETY: TCGETS2 writes one termios2 into the buffer it is given.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TCGETS2 as _, t2.as_mut_ptr()) };
    if r == 0 {
        return false;
    }
    let errno = io::Error::last_os_error().raw_os_error();
    if !matches!(errno, Some(libc::ENOSYS) | Some(libc::ENOTTY)) {
        return false;
    }
    get_attr(&fd).is_ok()
}

/// Opens `path` exclusively (TIOCEXCL and flock, as serialport does) in
/// raw mode with `line`'s settings, through classic termios only. The
/// descriptor is left non-blocking.
pub(crate) fn open_classic(path: &Path, line: &LineSettings) -> io::Result<OwnedFd> {
    let speed = speed_constant(line.baud).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} baud is not a standard rate, and this kernel lacks termios2 (TCGETS2), \
                 which other rates need",
                line.baud
            ),
        )
    })?;
    let fd = open_tty(path)?;
    // SAFETY: plain ioctl/flock on a descriptor we own.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCEXCL as _) })?;
    if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        return Err(if e.kind() == io::ErrorKind::WouldBlock {
            io::Error::new(
                io::ErrorKind::ResourceBusy,
                "the device is locked by another process",
            )
        } else {
            e
        });
    }
    let mut t = get_attr(&fd)?;
    apply_line(&mut t, line, speed)?;
    // TCSETS itself rather than tcsetattr: glibc's tcsetattr reads the
    // flags back and fails with EINVAL when a pseudo-terminal dropped
    // PARENB, which a pty always does from its second open on. serialport
    // calls TCSETS2 directly, so this keeps its behaviour. The kernel reads
    // the leading fields glibc's termios shares with its own.
    // SAFETY: `t` is a valid termios read from this descriptor.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TCSETS as _, &t) })?;
    Ok(fd)
}

/// Raw mode plus `line`'s frame, flow control and speed.
fn apply_line(t: &mut libc::termios, line: &LineSettings, speed: libc::speed_t) -> io::Result<()> {
    // SAFETY: cfmakeraw only rewrites the flags of the termios it is given.
    unsafe { libc::cfmakeraw(t) };
    t.c_cflag |= libc::CREAD | libc::CLOCAL;
    t.c_cflag &= !libc::CSIZE;
    t.c_cflag |= match line.data_bits {
        5 => libc::CS5,
        6 => libc::CS6,
        7 => libc::CS7,
        _ => libc::CS8,
    };
    match line.parity {
        Parity::None => {
            t.c_cflag &= !(libc::PARENB | libc::PARODD);
            t.c_iflag &= !libc::INPCK;
            t.c_iflag |= libc::IGNPAR;
        }
        Parity::Odd => {
            t.c_cflag |= libc::PARENB | libc::PARODD;
            t.c_iflag |= libc::INPCK;
            t.c_iflag &= !libc::IGNPAR;
        }
        Parity::Even => {
            t.c_cflag &= !libc::PARODD;
            t.c_cflag |= libc::PARENB;
            t.c_iflag |= libc::INPCK;
            t.c_iflag &= !libc::IGNPAR;
        }
    }
    if line.stop_bits == 2 {
        t.c_cflag |= libc::CSTOPB;
    } else {
        t.c_cflag &= !libc::CSTOPB;
    }
    match line.flow_control {
        FlowControl::None => {
            t.c_iflag &= !(libc::IXON | libc::IXOFF);
            t.c_cflag &= !libc::CRTSCTS;
        }
        FlowControl::Software => {
            t.c_iflag |= libc::IXON | libc::IXOFF;
            t.c_cflag &= !libc::CRTSCTS;
        }
        FlowControl::Hardware => {
            t.c_iflag &= !(libc::IXON | libc::IXOFF);
            t.c_cflag |= libc::CRTSCTS;
        }
    }
    // SAFETY: the speed is one of the B constants.
    cvt(unsafe { libc::cfsetispeed(t, speed) })?;
    cvt(unsafe { libc::cfsetospeed(t, speed) })?;
    Ok(())
}

/// The classic termios constant of a standard baud rate.
pub(crate) fn speed_constant(baud: u32) -> Option<libc::speed_t> {
    Some(match baud {
        50 => libc::B50,
        75 => libc::B75,
        110 => libc::B110,
        134 => libc::B134,
        150 => libc::B150,
        200 => libc::B200,
        300 => libc::B300,
        600 => libc::B600,
        1200 => libc::B1200,
        1800 => libc::B1800,
        2400 => libc::B2400,
        4800 => libc::B4800,
        9600 => libc::B9600,
        19200 => libc::B19200,
        38400 => libc::B38400,
        57600 => libc::B57600,
        115200 => libc::B115200,
        230400 => libc::B230400,
        460800 => libc::B460800,
        500000 => libc::B500000,
        576000 => libc::B576000,
        921600 => libc::B921600,
        1000000 => libc::B1000000,
        1152000 => libc::B1152000,
        1500000 => libc::B1500000,
        2000000 => libc::B2000000,
        2500000 => libc::B2500000,
        3000000 => libc::B3000000,
        3500000 => libc::B3500000,
        4000000 => libc::B4000000,
        _ => return None,
    })
}

fn open_tty(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in the path"))?;
    // SAFETY: a NUL-terminated path; the descriptor is owned below.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    cvt(fd)?;
    // SAFETY: `fd` was just opened and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn get_attr(fd: &OwnedFd) -> io::Result<libc::termios> {
    let mut t = MaybeUninit::<libc::termios>::uninit();
    // SAFETY: tcgetattr fills the whole termios on success.
    cvt(unsafe { libc::tcgetattr(fd.as_raw_fd(), t.as_mut_ptr()) })?;
    Ok(unsafe { t.assume_init() })
}

fn cvt(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A pseudo-terminal pair: the master and the slave's path.
    fn pty() -> (std::fs::File, std::path::PathBuf) {
        // SAFETY: posix_openpt/grantpt/unlockpt/ptsname_r on a descriptor we own.
        unsafe {
            let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
            assert!(m >= 0, "posix_openpt: {}", io::Error::last_os_error());
            assert_eq!(libc::grantpt(m), 0);
            assert_eq!(libc::unlockpt(m), 0);
            let mut buf = [0 as libc::c_char; 128];
            assert_eq!(libc::ptsname_r(m, buf.as_mut_ptr(), buf.len()), 0);
            let name = std::ffi::CStr::from_ptr(buf.as_ptr()).to_str().unwrap();
            (std::fs::File::from_raw_fd(m), name.into())
        }
    }

    fn line(baud: u32, data_bits: u8, parity: Parity, stop_bits: u8) -> LineSettings {
        LineSettings {
            baud,
            data_bits,
            parity,
            stop_bits,
            flow_control: FlowControl::None,
        }
    }

    #[test]
    fn the_line_settings_become_termios_flags() {
        // SAFETY: an all-zero termios is a valid value to start from.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        apply_line(&mut t, &line(19200, 7, Parity::Odd, 2), libc::B19200).unwrap();
        assert_eq!(t.c_cflag & libc::CSIZE, libc::CS7);
        assert_eq!(
            t.c_cflag & (libc::PARENB | libc::PARODD),
            libc::PARENB | libc::PARODD
        );
        assert_ne!(t.c_iflag & libc::INPCK, 0);
        assert_ne!(t.c_cflag & libc::CSTOPB, 0);
        assert_ne!(t.c_cflag & (libc::CREAD | libc::CLOCAL), 0);
        assert_eq!(unsafe { libc::cfgetospeed(&t) }, libc::B19200);
        let mut hw = line(9600, 8, Parity::Even, 1);
        hw.flow_control = FlowControl::Hardware;
        apply_line(&mut t, &hw, libc::B9600).unwrap();
        assert_eq!(t.c_cflag & libc::CSIZE, libc::CS8);
        assert_eq!(t.c_cflag & (libc::PARENB | libc::PARODD), libc::PARENB);
        assert_eq!(t.c_cflag & libc::CSTOPB, 0);
        assert_ne!(t.c_cflag & libc::CRTSCTS, 0);
        assert_eq!(unsafe { libc::cfgetispeed(&t) }, libc::B9600);
    }

    #[test]
    fn the_line_settings_reach_the_terminal() {
        let (_master, slave) = pty();
        let fd = open_classic(&slave, &line(19200, 8, Parity::Even, 2)).unwrap();
        let t = get_attr(&fd).unwrap();
        // A pseudo-terminal keeps the speed, the stop bits and the input
        // flags; it forces CS8 without parity bits in c_cflag.
        // SAFETY: reading the speed of a valid termios.
        assert_eq!(unsafe { libc::cfgetospeed(&t) }, libc::B19200);
        assert_eq!(unsafe { libc::cfgetispeed(&t) }, libc::B19200);
        assert_ne!(t.c_cflag & libc::CSTOPB, 0);
        assert_ne!(t.c_iflag & libc::INPCK, 0);
        assert_eq!(t.c_lflag & (libc::ICANON | libc::ECHO), 0, "not raw");
    }

    #[test]
    fn a_pty_opens_again_with_parity_after_a_close() {
        let (_master, slave) = pty();
        for round in 0..3 {
            let fd = open_classic(&slave, &line(19200, 8, Parity::Even, 1))
                .unwrap_or_else(|e| panic!("open {round}: {e}"));
            drop(fd);
        }
    }

    #[test]
    fn bytes_pass_both_ways_unchanged() {
        let (mut master, slave) = pty();
        let fd = open_classic(&slave, &line(9600, 8, Parity::None, 1)).unwrap();
        let mut port = std::fs::File::from(fd);
        // Raw mode: a CR stays a CR and nothing is echoed back.
        master.write_all(b"$GPGGA,1\r\n").unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while got.len() < 10 {
            match port.read(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // SAFETY: poll on one valid descriptor.
                    let mut p = libc::pollfd {
                        fd: port.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    assert!(unsafe { libc::poll(&mut p, 1, 30_000) } > 0, "no input");
                }
                Err(e) => panic!("read: {e}"),
            }
        }
        assert_eq!(got, b"$GPGGA,1\r\n");
        port.write_all(b"ok\n").unwrap();
        let mut back = [0u8; 3];
        master.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"ok\n");
    }

    #[test]
    fn a_second_open_is_refused_while_the_first_holds_the_lock() {
        let (_master, slave) = pty();
        let _first = open_classic(&slave, &line(9600, 8, Parity::None, 1)).unwrap();
        let e = open_classic(&slave, &line(9600, 8, Parity::None, 1)).unwrap_err();
        assert!(
            e.kind() == io::ErrorKind::ResourceBusy || e.raw_os_error() == Some(libc::EBUSY),
            "{e}"
        );
    }

    #[test]
    fn a_non_standard_rate_is_refused_with_the_reason() {
        let (_master, slave) = pty();
        let e = open_classic(&slave, &line(250_000, 8, Parity::None, 1)).unwrap_err();
        assert!(
            e.to_string().contains("250000 baud is not a standard rate"),
            "{e}"
        );
    }

    #[test]
    fn termios2_is_detected_where_it_exists() {
        let (_master, slave) = pty();
        // SAFETY: TCGETS2 on a fresh pty; the answer decides what to expect.
        let fd = open_tty(&slave).unwrap();
        let mut t2 = MaybeUninit::<libc::termios2>::uninit();
        let has = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TCGETS2 as _, t2.as_mut_ptr()) } == 0;
        assert_eq!(lacks_termios2(&slave), !has);
        // A regular file is no terminal: nothing to fall back to.
        let f = tempfile::NamedTempFile::new().unwrap();
        assert!(!lacks_termios2(f.path()));
    }
}
