//! Acknowledges the broker's TCP segments at once (Linux `TCP_QUICKACK`).
//!
//! Why: the broker sends the bridge PUBACKs for its publishes, which the bridge answers
//! with nothing, so the kernel delays their ACK by up to 40 ms. A broker with Nagle on
//! (mosquitto's default) holds its next small write (a command for a vehicle) until that
//! ACK comes: a LOCK right after another command's result waited ~40 ms
//! (`cargo bench --bench command_rtt`). rumqttc owns the socket and offers no hook, so
//! the bridge finds its broker socket once per connection and, after a packet it does not
//! answer, asks the kernel to send the pending ACK now (`TCP_QUICKACK` sends it at once
//! and leaves the delayed-ACK mode). Every such packet, one `setsockopt` each (well under
//! a microsecond): skipping any (tried: at most once a millisecond) left the last
//! segment of a burst unacknowledged and brought the 40 ms back at p90.

use std::net::SocketAddr;

#[derive(Default)]
pub struct QuickAck {
    /// This process's TCP sockets whose peer is the broker.
    fds: Vec<i32>,
}

impl QuickAck {
    /// After a CONNACK: finds the sockets connected to `host:port`.
    pub async fn connected(&mut self, host: &str, port: u16) {
        self.fds.clear();
        let Ok(addrs) = tokio::net::lookup_host((host, port)).await else {
            return;
        };
        let peers: Vec<SocketAddr> = addrs.collect();
        self.fds = sockets_connected_to(&peers);
    }

    /// After an incoming packet the bridge sends nothing back for (PUBACK, SUBACK,
    /// PINGRESP...): the broker's segment is acknowledged now.
    pub fn ack_now(&self) {
        for fd in &self.fds {
            quick_ack(*fd);
        }
    }
}

#[cfg(target_os = "linux")]
fn quick_ack(fd: i32) {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads `one` for its size; on a descriptor that is no longer a
    // TCP socket it fails and nothing happens.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn quick_ack(_fd: i32) {}

#[cfg(target_os = "linux")]
fn sockets_connected_to(peers: &[SocketAddr]) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
        })
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|fd| peer_of(*fd).is_some_and(|p| peers.contains(&p)))
        .collect()
}

#[cfg(not(target_os = "linux"))]
fn sockets_connected_to(_peers: &[SocketAddr]) -> Vec<i32> {
    Vec::new()
}

#[cfg(target_os = "linux")]
fn peer_of(fd: i32) -> Option<SocketAddr> {
    // SAFETY: `storage` is large enough for any address and `len` says so; getpeername
    // writes at most `len` bytes and fails on a descriptor that is not a connected socket.
    unsafe {
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if libc::getpeername(fd, &mut storage as *mut _ as *mut libc::sockaddr, &mut len) != 0 {
            return None;
        }
        match storage.ss_family as libc::c_int {
            libc::AF_INET => {
                let a = &*(&storage as *const _ as *const libc::sockaddr_in);
                let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                Some(SocketAddr::from((ip, u16::from_be(a.sin_port))))
            }
            libc::AF_INET6 => {
                let a = &*(&storage as *const _ as *const libc::sockaddr_in6);
                let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
                Some(SocketAddr::from((ip, u16::from_be(a.sin6_port))))
            }
            _ => None,
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn finds_the_socket_connected_to_the_broker_and_only_that_one() {
        let broker = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = broker.local_addr().unwrap().port();
        let ours = tokio::net::TcpStream::connect(broker.local_addr().unwrap())
            .await
            .unwrap();
        let _theirs = tokio::net::TcpStream::connect(other.local_addr().unwrap())
            .await
            .unwrap();
        let mut q = QuickAck::default();
        q.connected("127.0.0.1", port).await;
        use std::os::fd::AsRawFd;
        assert_eq!(q.fds, vec![ours.as_raw_fd()]);
        q.ack_now(); // a real TCP socket takes the option
    }
}
