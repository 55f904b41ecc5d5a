//! A network namespace of the test's own (needs root, i.e. CAP_NET_ADMIN and CAP_SYS_ADMIN):
//! a separate network stack linked to the test's namespace by one veth pair, for tests where
//! isolation is the point (an edge node that nobody can reach inbound).

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use nix::sched::{CloneFlags, setns};

/// The namespace, deleted on drop (its end of the veth pair goes with it).
pub struct NetNs {
    pub name: String,
    /// This (the test's) end of the veth pair.
    pub outside: Ipv4Addr,
    /// The namespace's end.
    pub inside: Ipv4Addr,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip` (Debian package iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetNs {
    /// Creates the namespace with its loopback up and a /30 from 198.18.0.0/15 (the range set
    /// aside for network tests, RFC 2544) on the veth pair. Panics, saying why, when this
    /// process may not (not root): the test fails rather than pass without having run.
    pub fn create() -> NetNs {
        let r: u32 = rand::random();
        let name = format!("mm{:06x}", r & 0xff_ffff);
        let (x, y) = (((r >> 8) & 1) as u8, ((r >> 9) & 0x3f) as u8 * 4);
        let outside = Ipv4Addr::new(198, 18 + x, (r & 0xff) as u8, y + 1);
        let inside = Ipv4Addr::new(198, 18 + x, (r & 0xff) as u8, y + 2);
        if let Err(e) = ip(&["netns", "add", &name]) {
            panic!(
                "this test needs root to create a network namespace (scripts/test.sh runs as \
                 root in CI; run it with sudo): {e}"
            );
        }
        let ns = NetNs {
            name,
            outside,
            inside,
        };
        let (va, vb) = (format!("{}a", ns.name), format!("{}b", ns.name));
        let (o, i) = (format!("{outside}/30"), format!("{inside}/30"));
        let n = ns.name.as_str();
        for args in [
            vec!["link", "add", &va, "type", "veth", "peer", "name", &vb],
            vec!["link", "set", &vb, "netns", n],
            vec!["addr", "add", &o, "dev", &va],
            vec!["link", "set", &va, "up"],
            vec!["-n", n, "addr", "add", &i, "dev", &vb],
            vec!["-n", n, "link", "set", &vb, "up"],
            vec!["-n", n, "link", "set", "lo", "up"],
        ] {
            ip(&args).unwrap();
        }
        ns
    }

    /// Runs `f` on a thread that has entered the namespace: sockets it creates live there.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).unwrap();
            setns(&fd, CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    }

    /// A listener on the namespace's loopback.
    pub fn listen_loopback(&self) -> TcpListener {
        self.run(|| TcpListener::bind("127.0.0.1:0").unwrap())
    }

    /// A connection made from inside the namespace.
    pub fn connect(&self, to: SocketAddr) -> std::io::Result<TcpStream> {
        self.run(move || TcpStream::connect_timeout(&to, Duration::from_secs(2)))
    }

    /// `ip netns exec NAME program`: a process inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// `ss` inside the namespace: TCP sockets as (local, peer) address pairs; `listening` for
    /// listeners, else established connections.
    pub fn tcp_sockets(&self, listening: bool) -> Vec<(String, String)> {
        let mut c = self.command("ss");
        c.arg("-Htn");
        if listening {
            c.arg("-l");
        } else {
            c.args(["state", "established"]);
        }
        let out = c.output().expect("run ss (iproute2)");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                // LISTEN lines have a State column; `state established` drops it.
                let at = f.len().checked_sub(2)?;
                Some((f[at].to_string(), f[at + 1].to_string()))
            })
            .collect()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}
